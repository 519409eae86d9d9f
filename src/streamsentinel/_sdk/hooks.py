"""Where the ``openai`` package is patched: the streaming entry points and the SDK's private hooks.

Entry points (sync and async): ``chat.completions.create`` (``chat.completions.stream()`` goes
through it), legacy ``completions.create``, ``responses.create`` and ``responses.retrieve`` (which
``responses.stream()`` uses). A ``stream=True`` call opens a ``StreamController`` (through
``Runtime.begin``) and gets an observed stream; other calls run under a light context that only
lets the attempt hooks count their 429s, SDK retries and rate-limit headers. The private hooks
(names in ``compat``) see every HTTP attempt, each SDK retry, the late responses of calls that
bypassed the entry points, and the SSE decoder.

The hooks read the active runtime at call time (``set_runtime``): a reconfiguring ``instrument()``
swaps it without patching again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .._core.apis import ADAPTERS
from .._core.context import CURRENT, IN_FALLBACK
from .._core.controller import StreamController
from .._core.lifecycle import Runtime
from .._core.ratelimit import json_or_none
from . import compat
from .body import apreread, preread
from .calls import acall, call
from .patching import original, patch, remove
from .sse import ObservedSSEDecoder

__all__ = ["install", "remove", "set_runtime"]

_Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

# (module, class, method, operation); async-ness is known from the class name.
ENTRY_POINTS: tuple[tuple[str, str, str, str], ...] = (
    ("openai.resources.chat.completions.completions", "Completions", "create", "chat"),
    ("openai.resources.chat.completions.completions", "AsyncCompletions", "create", "chat"),
    ("openai.resources.completions", "Completions", "create", "text_completion"),
    ("openai.resources.completions", "AsyncCompletions", "create", "text_completion"),
    ("openai.resources.responses.responses", "Responses", "create", "responses"),
    ("openai.resources.responses.responses", "Responses", "retrieve", "responses"),
    ("openai.resources.responses.responses", "AsyncResponses", "create", "responses"),
    ("openai.resources.responses.responses", "AsyncResponses", "retrieve", "responses"),
)

_runtime: Runtime | None = None


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime


# -- opening and wrapping a call (shared by the sync and async entries) ---------------------------


def _begin(
    rt: Runtime, operation: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any], wrapped: Any
) -> StreamController | None:
    try:
        retry_kwargs = compat.without_raw_header(kwargs)
        retrieve = None
        if ADAPTERS[operation].continuable:  # resume="responses" continues it
            retrieve_fn = original(type(instance), "retrieve").__get__(instance)

            def retrieve(response_id: str, starting_after: int) -> Any:
                return retrieve_fn(response_id, stream=True, starting_after=starting_after)

        return rt.begin(
            operation,
            compat.base_url(instance),
            kwargs,
            compat.provider(compat.resource_client(instance)),
            reissue=(wrapped, args, retry_kwargs),
            retrieve=retrieve,
        )
    except Exception as exc:
        rt.errors("begin", exc)
        return None


def _serve(
    rt: Runtime, ctl: StreamController, rejected: Any, instance: Any, method: str, kwargs: Any
) -> Callable[[], Any]:
    return rt.fallback(ctl, rejected, getattr(instance, method), kwargs)


def _entry(operation: str, method: str, is_async: bool) -> _Wrapper:
    def sync_observed(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        rt = _runtime
        ctl = None if rt is None else _begin(rt, operation, instance, args, kwargs, wrapped)
        if rt is None or ctl is None:
            return wrapped(*args, **kwargs)
        try:
            rejected = rt.admit(ctl, kwargs)
        except BaseException:
            ctl.leave()
            raise
        if rejected is not None:
            ctl.leave()
            serve = _serve(rt, ctl, rejected, instance, method, kwargs)
            token = IN_FALLBACK.set(True)
            try:
                served = serve()
            finally:
                IN_FALLBACK.reset(token)
            rt.served_by_fallback(ctl)
            return served
        return call(ctl, wrapped, args, kwargs)

    async def async_observed(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        rt = _runtime
        ctl = None if rt is None else _begin(rt, operation, instance, args, kwargs, wrapped)
        if rt is None or ctl is None:
            return await wrapped(*args, **kwargs)
        try:
            rejected = await rt.admit_async(ctl, kwargs)
        except BaseException:
            ctl.leave()
            raise
        if rejected is not None:
            ctl.leave()
            serve = _serve(rt, ctl, rejected, instance, method, kwargs)
            token = IN_FALLBACK.set(True)
            try:
                served = serve()
                if inspect.isawaitable(served):
                    served = await served
            finally:
                IN_FALLBACK.reset(token)
            rt.served_by_fallback(ctl)
            return served
        return await acall(ctl, wrapped, args, kwargs)

    def sync_plain(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call = _plain_call(operation, instance, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        tokens = call.enter()
        try:
            return wrapped(*args, **kwargs)
        finally:
            call.exit(tokens)

    async def async_plain(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call = _plain_call(operation, instance, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        tokens = call.enter()
        try:
            return await wrapped(*args, **kwargs)
        finally:
            call.exit(tokens)

    observed, plain = (async_observed, async_plain) if is_async else (sync_observed, sync_plain)

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # AsyncCompletions.create is not a coroutine function (a sync decorator wraps it): both
        # async paths return a coroutine, as the SDK's method does.
        return (observed if kwargs.get("stream") is True else plain)(wrapped, instance, args, kwargs)

    return wrapper


def _plain_call(operation: Any, instance: Any, kwargs: Mapping[str, Any]) -> Any:
    rt = _runtime
    if rt is None:
        return None
    try:
        client = compat.resource_client(instance)
        return rt.begin_call(operation, compat.base_url(instance), kwargs, compat.provider(client))
    except Exception as exc:
        rt.errors("begin", exc)
        return None


# -- the private hooks ------------------------------------------------------------------------------


def _response_seen(call: Any, response: Any, readable: bool) -> None:
    body = json_or_none(response.content) if readable else None
    headers = response.headers
    call.on_response(response.status_code, headers, body, compat.header_triples(headers))


def _send(is_async: bool) -> _Wrapper:
    """``_send_request``: every HTTP attempt (status, rate-limit headers, a 429's body)."""

    def sync_send(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call = CURRENT.get()
        if call is None:
            return wrapped(*args, **kwargs)
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.on_transport_error(exc)
            raise
        readable = response.status_code == 429 and preread(response)  # tells requests/tokens/quota apart
        _response_seen(call, response, readable)
        return response

    async def async_send(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call = CURRENT.get()
        if call is None:
            return await wrapped(*args, **kwargs)
        try:
            response = await wrapped(*args, **kwargs)
        except BaseException as exc:
            call.on_transport_error(exc)
            raise
        readable = response.status_code == 429 and await apreread(response)
        _response_seen(call, response, readable)
        return response

    return async_send if is_async else sync_send


def _retry_seen(kwargs: Mapping[str, Any]) -> None:
    call = CURRENT.get()
    if call is not None:
        response = kwargs.get("response")
        call.on_sdk_retry(kwargs.get("retries_taken", 0), None if response is None else response.headers)


def _sleep(is_async: bool) -> _Wrapper:
    """``_sleep_for_retry``: each SDK retry."""

    def sync_sleep(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        _retry_seen(kwargs)
        return wrapped(*args, **kwargs)

    async def async_sleep(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        _retry_seen(kwargs)
        return await wrapped(*args, **kwargs)

    return async_sleep if is_async else sync_sleep


def _install_all(rt: Runtime) -> None:
    from .late import late_hooks

    def deferred_failed(exc: BaseException) -> None:
        # A deferred module's name moved: counted and logged once; the host's import goes on.
        active = _runtime or rt
        active.errors("patch", exc)

    for module_name, class_name, method, operation in ENTRY_POINTS:
        wrapper = _entry(operation, method, class_name.startswith("Async"))
        patch(module_name, class_name, method, wrapper, deferred_failed)
    base = compat.BASE_CLIENT
    for class_name, is_async in (("SyncAPIClient", False), ("AsyncAPIClient", True)):
        patch(base, class_name, compat.SEND_REQUEST, _send(is_async))
        patch(base, class_name, compat.SLEEP_FOR_RETRY, _sleep(is_async))
    late_hooks(lambda: _runtime, deferred_failed)
    compat.check_sse_decoder_factory()
    patch(
        base,
        "BaseClient",
        compat.MAKE_SSE_DECODER,
        lambda wrapped, instance, args, kwargs: ObservedSSEDecoder(),
    )


def install(rt: Runtime) -> None:
    """Apply every patch (once) and make ``rt`` the active runtime. Raises if the SDK lacks a
    patched name of an imported module, after undoing what was applied: a moved private name is
    loud, never half-installed. Patches of modules not imported yet wait for their import
    (``patching``); a name missing there is counted (stage ``patch``) and logged once."""
    from .patching import installed

    if not installed():
        try:
            _install_all(rt)
        except Exception:
            remove()
            raise
    set_runtime(rt)
