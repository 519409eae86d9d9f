"""Running the SDK's call under a stream controller and wrapping what it returns: shared by the
entry points (``hooks.py``) and the request-level observation (``late.py``), sync and async."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._core.controller import StreamController
from .._log import log
from . import compat
from .proxy import ObservedAsyncStream, ObservedStream, adopt
from .raw import observe_raw


def wrap(ctl: StreamController, result: Any) -> Any:
    """Put what the SDK returned under observation; anything else passes through as is."""
    try:
        kind = compat.stream_kind(result)
        if kind == "sync" or kind == "async":
            adopt(ctl, result)
            return (ObservedStream if kind == "sync" else ObservedAsyncStream)(result, ctl)
        if kind == "raw":
            return observe_raw(ctl, result)
        ctl.discard()
        log.debug("stream.not_observed", type=type(result).__qualname__)
        return result
    except Exception as exc:
        ctl.fx.count_error("wrap", exc)
        ctl.discard()
        return result


def call(ctl: StreamController, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """``wrapped(*args, **kwargs)`` with ``ctl`` current; its failure recorded, its stream wrapped."""
    calls = ctl.calls
    tokens = calls.enter()
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        ctl.request_failed(exc)
        raise
    finally:
        calls.exit(tokens)
    return wrap(ctl, result)


async def acall(ctl: StreamController, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """:func:`call` for an async client."""
    calls = ctl.calls
    tokens = calls.enter()
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        ctl.request_failed(exc)
        raise
    finally:
        calls.exit(tokens)
    return wrap(ctl, result)
