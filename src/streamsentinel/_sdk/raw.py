"""``with_raw_response`` / ``with_streaming_response`` results of an observed ``stream=True`` call
(``LegacyAPIResponse``, ``APIResponse``, ``AsyncAPIResponse``).

``parse()`` hands out the observed stream proxy (built once), so a parsed stream is observed like
any other. Raw access is observed at the body: the response's byte stream is wrapped (in one of the
library that built it: ``httpx2``, or a legacy ``httpx`` client's), so
every way of reading it (the wrapper's ``iter_bytes``/``read``/``text``/``json``, legacy
``content``/``text``, or ``http_response.iter_bytes()`` directly) records the request once:
``completed`` when the body was read to its end (a raw read does not decode SSE, so a body that
ended before ``[DONE]`` is still ``completed``), else the classified failure; a response closed or
dropped before either is ``abandoned``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import wrapt

from .._core import httplib
from .._core.controller import StreamController
from .._core.reaper import REAPER
from . import compat
from .proxy import ObservedAsyncStream, ObservedStream, adopt

_UNPARSED: Any = object()


class _Body:
    """The response body, read through: its end (or failure) ends a raw read (made a sync byte
    stream of the response's library by :func:`watch_body`)."""

    def __init__(self, inner: Any, ctl: StreamController) -> None:
        self._inner = inner
        self._ctl = ctl

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except BaseException as exc:
            self._ctl.raw_ended(exc)
            raise
        self._ctl.raw_ended(None)

    def close(self) -> None:
        self._inner.close()


class _AsyncBody:
    def __init__(self, inner: Any, ctl: StreamController) -> None:
        self._inner = inner
        self._ctl = ctl

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except BaseException as exc:
            self._ctl.raw_ended(exc)
            raise
        self._ctl.raw_ended(None)

    async def aclose(self) -> None:
        await self._inner.aclose()


def watch_body(ctl: StreamController, response: Any) -> None:
    """Read ``response``'s body through a wrapper that reports its end to ``ctl`` (a response or
    body stream of another library is left as it is: the request then ends when it is closed or
    collected)."""
    library = httplib.of_response(response)
    if library is None:
        return
    inner = response.stream
    if isinstance(inner, library.async_byte_stream):
        response.stream = library.byte_stream(_AsyncBody, sync=False, async_=True)(inner, ctl)
    elif isinstance(inner, library.sync_byte_stream):
        response.stream = library.byte_stream(_Body, sync=True, async_=False)(inner, ctl)


def _observed(ctl: StreamController, stream: Any) -> Any:
    kind = compat.stream_kind(stream)
    if kind == "sync":
        adopt(ctl, stream)
        return ObservedStream(stream, ctl)
    if kind == "async":
        adopt(ctl, stream)
        return ObservedAsyncStream(stream, ctl)
    return stream


class _RawBase(wrapt.ObjectProxy):  # type: ignore[type-arg]
    def __init__(self, wrapped: Any, ctl: StreamController) -> None:
        super().__init__(wrapped)
        self._self_ctl = ctl
        self._self_parsed: Any = _UNPARSED
        ctl.raw_mode = True
        watch_body(ctl, wrapped.http_response)

    def _self_parse(self, stream: Any) -> Any:
        if self._self_parsed is _UNPARSED:
            self._self_ctl.raw_mode = False  # the parsed stream's proxy records it from now on
            self._self_parsed = _observed(self._self_ctl, stream)
        return self._self_parsed

    def __del__(self) -> None:
        # Dropped unread: abandoned (a parsed stream's own proxy ends it).
        ctl = self._self_ctl
        if self._self_parsed is _UNPARSED and not ctl.ended:
            REAPER.put(ctl)


class ObservedLegacyResponse(_RawBase):
    """``LegacyAPIResponse`` (``with_raw_response``): ``parse()`` is sync for both clients."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_parse(self.__wrapped__.parse(*args, **kwargs))


class ObservedAPIResponse(_RawBase):
    """``APIResponse`` (``with_streaming_response`` of a sync client)."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_parse(self.__wrapped__.parse(*args, **kwargs))

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_ctl.on_close()


class ObservedAsyncAPIResponse(_RawBase):
    """``AsyncAPIResponse`` (``with_streaming_response`` of an async client): async ``parse()``."""

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_parse(await self.__wrapped__.parse(*args, **kwargs))

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_ctl.on_close()


def observe_raw(ctl: StreamController, result: Any) -> Any:
    """The proxy for a response wrapper ``create()`` returned."""
    ctl.adopt(result.http_response, None, True)
    if isinstance(result, compat.LegacyAPIResponse):
        return ObservedLegacyResponse(result, ctl)
    if isinstance(result, compat.AsyncAPIResponse):
        return ObservedAsyncAPIResponse(result, ctl)
    return ObservedAPIResponse(result, ctl)
