"""Where the ``openai`` package is patched: the streaming entry points and the SDK's private hooks.

Entry points (sync and async): ``chat.completions.create`` (``chat.completions.stream()`` goes
through it), legacy ``completions.create``, ``responses.create`` and ``responses.retrieve`` (which
``responses.stream()`` uses). Calls with ``stream=True`` are observed (also through
``with_raw_response`` / ``with_streaming_response``); other calls run under a light context that
only lets the attempt hooks count their 429s, SDK retries and rate-limit headers.

Private hooks, verified on openai 3.51-3.52 (``tests/test_sdk_hooks.py`` fails loudly if one moves):
``SyncAPIClient/AsyncAPIClient._send_request`` (every HTTP attempt: status, rate-limit headers,
429 bodies), ``_sleep_for_retry`` (each SDK retry), ``_process_response`` (a catch-all: a stream
whose ``create()`` bypassed the entry wrappers, e.g. through a ``with_raw_response`` /
``with_streaming_response`` wrapper built before ``instrument()``, is observed late, without
breaker or retries) and ``BaseClient._make_sse_decoder`` (``[DONE]``).
Patches are class attributes replaced by ``wrapt`` wrappers and restored exactly by :func:`remove`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import wrapt
from openai._streaming import SSEDecoder
from opentelemetry import context as otel_context
from opentelemetry import trace

from .proxy import ObservedBase
from .sentinel import CURRENT, IN_FALLBACK, Sentinel
from .sse import ObservedSSEDecoder

# The header the SDK's with_raw_response / with_streaming_response helpers set: create() then returns
# an (Async)APIResponse / LegacyAPIResponse, which ``streamsentinel.raw`` proxies.
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"

# (module, class, method, operation); async-ness is known from the class.
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

# The SDK's stream helpers (`chat.completions.stream()`, `responses.stream()`) close the HTTP
# response directly, never the stream we returned: their close() must end our observation too.
HELPER_STREAMS: tuple[tuple[str, str], ...] = (
    ("openai.lib.streaming.chat._completions", "ChatCompletionStream"),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream"),
    ("openai.lib.streaming.responses._responses", "ResponseStream"),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStream"),
)


class _Switch:
    """Turns one applied patch into a pass-through when it cannot be taken out (another
    instrumentation wrapped the same method on top of ours after we did)."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True


# (owner, method, original attribute, our FunctionWrapper, its switch)
_applied: list[tuple[type, str, Any, Any, _Switch]] = []
# Our switched-off wrappers left inside another instrumentation's chain: id -> (owner, method,
# wrapper, what it wraps). Once one is on top again (theirs was removed), it is taken out too.
_inert: dict[int, tuple[type, str, Any, Any]] = {}


def _is_layer(attribute: Any, function_wrapper: Any) -> bool:
    # Another instrumentation that wrapped ours read it through the class, which gives wrapt's
    # BoundFunctionWrapper (its `_self_parent` is our FunctionWrapper); unwrapping puts that back.
    return attribute is function_wrapper or getattr(attribute, "_self_parent", None) is function_wrapper


def _strip_inert() -> None:
    for key, (owner, method, function_wrapper, wrapped) in list(_inert.items()):
        if _is_layer(owner.__dict__.get(method), function_wrapper):
            setattr(owner, method, wrapped)
            del _inert[key]


def _is_raw(kwargs: Mapping[str, Any]) -> bool:
    headers = kwargs.get("extra_headers")
    if not headers:
        return False
    # The SDK's helpers set this exact spelling; a user-set header may be lower-case.
    return _RAW_RESPONSE_HEADER in headers or _RAW_RESPONSE_HEADER.lower() in headers


def _observed(kwargs: Mapping[str, Any]) -> bool:
    return kwargs.get("stream") is True


def _retry_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What a retry of the call re-issues: a raw-response call without its raw header, so the retry
    returns a plain stream for the proxy the consumer already holds."""
    if not _is_raw(kwargs):
        return kwargs
    headers = {k: v for k, v in kwargs["extra_headers"].items() if k.lower() != _RAW_RESPONSE_HEADER.lower()}
    return {**kwargs, "extra_headers": headers}


def _sync_plain(
    sentinel: Sentinel, operation: str, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
) -> Any:
    # A non-streaming call: only its 429s, SDK retries and rate-limit headers are counted.
    try:
        call = sentinel.begin_call(operation, instance, kwargs)
    except Exception:
        sentinel.internal_error("begin")
        return wrapped(*args, **kwargs)
    token = CURRENT.set(call)
    try:
        return wrapped(*args, **kwargs)
    finally:
        CURRENT.reset(token)


async def _async_plain(
    sentinel: Sentinel, operation: str, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
) -> Any:
    try:
        call = sentinel.begin_call(operation, instance, kwargs)
    except Exception:
        sentinel.internal_error("begin")
        return await wrapped(*args, **kwargs)
    token = CURRENT.set(call)
    try:
        return await wrapped(*args, **kwargs)
    finally:
        CURRENT.reset(token)


def _sync_entry(sentinel: Sentinel, operation: str, method: str) -> Callable[..., Any]:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not _observed(kwargs):
            return _sync_plain(sentinel, operation, wrapped, instance, args, kwargs)
        try:
            obs = sentinel.begin(operation, instance, kwargs)
            obs.call = (wrapped, args, _retry_kwargs(kwargs))  # what a retry re-issues
        except Exception:
            sentinel.internal_error("begin")
            return wrapped(*args, **kwargs)
        rejected = sentinel.admit(obs, kwargs, instance)
        if rejected is not None:
            serve = sentinel.fallback_call(obs, rejected, getattr(instance, method), kwargs)
            token = IN_FALLBACK.set(True)
            try:
                served = serve()
            finally:
                IN_FALLBACK.reset(token)
            sentinel.served_by_fallback(obs)
            return served
        var_token = CURRENT.set(obs)
        ctx_token = otel_context.attach(trace.set_span_in_context(obs.span))
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            sentinel.request_raised(obs, exc)
            raise
        finally:
            otel_context.detach(ctx_token)
            CURRENT.reset(var_token)
        return sentinel.wrap_stream(obs, result)

    return wrapper


def _async_entry(sentinel: Sentinel, operation: str, method: str) -> Callable[..., Any]:
    async def observed(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            obs = sentinel.begin(operation, instance, kwargs)
            obs.call = (wrapped, args, _retry_kwargs(kwargs))  # what a retry re-issues
        except Exception:
            sentinel.internal_error("begin")
            return await wrapped(*args, **kwargs)
        rejected = sentinel.admit(obs, kwargs, instance)
        if rejected is not None:
            serve = sentinel.fallback_call(obs, rejected, getattr(instance, method), kwargs)
            token = IN_FALLBACK.set(True)
            try:
                served = serve()
                if inspect.isawaitable(served):
                    served = await served
            finally:
                IN_FALLBACK.reset(token)
            sentinel.served_by_fallback(obs)
            return served
        var_token = CURRENT.set(obs)
        ctx_token = otel_context.attach(trace.set_span_in_context(obs.span))
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            sentinel.request_raised(obs, exc)
            raise
        finally:
            otel_context.detach(ctx_token)
            CURRENT.reset(var_token)
        return sentinel.wrap_stream(obs, result)

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # AsyncCompletions.create is not a coroutine function (a sync decorator wraps it): both
        # paths return a coroutine, as the SDK's method does.
        if not _observed(kwargs):
            return _async_plain(sentinel, operation, wrapped, instance, args, kwargs)
        return observed(wrapped, instance, args, kwargs)

    return wrapper


def _sync_send(sentinel: Sentinel) -> Callable[..., Any]:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        obs = CURRENT.get()
        if obs is None:
            return wrapped(*args, **kwargs)
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as exc:
            sentinel.attempt_raised(obs, exc)
            raise
        if response.status_code == 429:
            try:
                response.read()  # small JSON error body: tells requests/tokens/quota apart
            except Exception:
                pass
        sentinel.attempt_response(obs, response)
        return response

    return wrapper


def _async_send(sentinel: Sentinel) -> Callable[..., Any]:
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        obs = CURRENT.get()
        if obs is None:
            return await wrapped(*args, **kwargs)
        try:
            response = await wrapped(*args, **kwargs)
        except BaseException as exc:
            sentinel.attempt_raised(obs, exc)
            raise
        if response.status_code == 429:
            try:
                await response.aread()
            except Exception:
                pass
        sentinel.attempt_response(obs, response)
        return response

    return wrapper


def _sync_sleep(sentinel: Sentinel) -> Callable[..., Any]:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        obs = CURRENT.get()
        if obs is not None:
            sentinel.sdk_retry(obs, kwargs.get("retries_taken", 0), kwargs.get("response"))
        return wrapped(*args, **kwargs)

    return wrapper


def _async_sleep(sentinel: Sentinel) -> Callable[..., Any]:
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        obs = CURRENT.get()
        if obs is not None:
            sentinel.sdk_retry(obs, kwargs.get("retries_taken", 0), kwargs.get("response"))
        return await wrapped(*args, **kwargs)

    return wrapper


# Path suffixes of the streaming endpoints observed late, most specific first.
_LATE_OPERATIONS: tuple[tuple[str, str], ...] = (
    ("/chat/completions", "chat"),
    ("/completions", "text_completion"),
    ("/responses", "responses"),
)


def _late_operation(url: str) -> str | None:
    path = url.split("?", 1)[0].rstrip("/")
    for suffix, operation in _LATE_OPERATIONS:
        if path.endswith(suffix):
            return operation
    # responses.retrieve(id, stream=True): .../responses/{id}
    head, _, last = path.rpartition("/")
    return "responses" if last and head.endswith("/responses") else None


def _late(sentinel: Sentinel, client: Any, kwargs: Mapping[str, Any], result: Any) -> Any:
    """Observe a stream whose ``create()`` ran without our entry wrapper (no observation open): a
    ``with_raw_response`` / ``with_streaming_response`` wrapper built before ``instrument()`` holds
    the SDK's original bound method. Any failure here hands back the SDK's own result."""
    try:
        options = kwargs["options"]
        operation = _late_operation(str(options.url))
        if operation is None:
            return result
        body = options.json_data
        obs = sentinel.begin_late(operation, client, body if isinstance(body, Mapping) else {})
    except Exception:
        sentinel.internal_error("late")
        return result
    try:
        sentinel.attempt_response(obs, kwargs["response"])
        return sentinel.wrap_stream(obs, result)
    except Exception:
        sentinel.internal_error("late")
        sentinel.discard(obs)
        return result


def _sync_process(sentinel: Sentinel) -> Callable[..., Any]:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = wrapped(*args, **kwargs)
        if kwargs.get("stream") is not True or CURRENT.get() is not None:
            return result
        return _late(sentinel, instance, kwargs, result)

    return wrapper


def _async_process(sentinel: Sentinel) -> Callable[..., Any]:
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = await wrapped(*args, **kwargs)
        if kwargs.get("stream") is not True or CURRENT.get() is not None:
            return result
        return _late(sentinel, instance, kwargs, result)

    return wrapper


def _end_helper_stream(helper: Any) -> None:
    raw = getattr(helper, "_raw_stream", None)
    if isinstance(raw, ObservedBase):
        raw._self_sentinel.abandoned(raw._self_obs)


def _helper_close(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        _end_helper_stream(instance)


async def _async_helper_close(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    finally:
        _end_helper_stream(instance)


def _make_sse_decoder(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    # install() checked that the SDK's own method returns a plain SSEDecoder: no need to build one.
    return ObservedSSEDecoder()


def _check_sse_decoder_factory() -> None:
    from openai._base_client import BaseClient

    made = BaseClient.__dict__["_make_sse_decoder"](None)
    if type(made) is not SSEDecoder:
        raise TypeError(f"BaseClient._make_sse_decoder returns {type(made)!r}, expected SSEDecoder")


def _patch(module_name: str, class_name: str, method: str, wrapper: Callable[..., Any]) -> None:
    owner = getattr(importlib.import_module(module_name), class_name)
    _strip_inert()
    original_attribute = owner.__dict__[method]
    switch = _Switch()

    def guarded(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not switch.on:
            return wrapped(*args, **kwargs)
        return wrapper(wrapped, instance, args, kwargs)

    function_wrapper = wrapt.FunctionWrapper(original_attribute, guarded)
    setattr(owner, method, function_wrapper)
    _applied.append((owner, method, original_attribute, function_wrapper, switch))


def install(sentinel: Sentinel) -> None:
    """Apply every patch for ``sentinel``. Raises if the SDK lacks a patched name (after undoing
    what was applied), so a moved private name is loud, never half-installed."""
    try:
        for module_name, class_name, method, operation in ENTRY_POINTS:
            is_async = class_name.startswith("Async")
            wrapper = (_async_entry if is_async else _sync_entry)(sentinel, operation, method)
            _patch(module_name, class_name, method, wrapper)
        base = "openai._base_client"
        _patch(base, "SyncAPIClient", "_send_request", _sync_send(sentinel))
        _patch(base, "AsyncAPIClient", "_send_request", _async_send(sentinel))
        _patch(base, "SyncAPIClient", "_sleep_for_retry", _sync_sleep(sentinel))
        _patch(base, "AsyncAPIClient", "_sleep_for_retry", _async_sleep(sentinel))
        _patch(base, "SyncAPIClient", "_process_response", _sync_process(sentinel))
        _patch(base, "AsyncAPIClient", "_process_response", _async_process(sentinel))
        for module_name, class_name in HELPER_STREAMS:
            close = _async_helper_close if class_name.startswith("Async") else _helper_close
            _patch(module_name, class_name, "close", close)
        _check_sse_decoder_factory()
        _patch(base, "BaseClient", "_make_sse_decoder", _make_sse_decoder)
    except Exception:
        remove()
        raise


def remove() -> None:
    """Take every patch out: the attribute is restored to the exact object it was, unless another
    instrumentation wrapped it after us; then our layer stays in its chain as a pass-through, so
    theirs keeps working."""
    while _applied:
        owner, method, original_attribute, function_wrapper, switch = _applied.pop()
        switch.on = False
        if owner.__dict__.get(method) is function_wrapper:
            setattr(owner, method, original_attribute)
        else:
            _inert[id(function_wrapper)] = (owner, method, function_wrapper, original_attribute)
    _strip_inert()


def original(owner: type, method: str) -> Any:
    """The SDK's function behind ``owner.method``, below our patch (and any wrapped over it)."""
    attribute = owner.__dict__[method]
    ours = [(fw, orig) for (o, m, orig, fw, _sw) in _applied if o is owner and m == method]
    node = attribute
    while node is not None:
        for function_wrapper, original_attribute in ours:
            if _is_layer(node, function_wrapper):
                return original_attribute
        node = getattr(node, "__wrapped__", None)
    return getattr(attribute, "__wrapped__", attribute)


def installed() -> bool:
    return bool(_applied)
