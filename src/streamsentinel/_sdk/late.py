"""Streams whose call bypassed the entry wrappers, and helper streams.

Every request of the SDK goes through ``SyncAPIClient.request``/``AsyncAPIClient.request``. A
streaming request that no entry wrapper opened is observed from there, from the request on: a
``create`` captured before ``instrument()`` (``instructor.from_openai(client)``, a
``with_raw_response`` wrapper the SDK built early), or the SDK's low-level
``client.post(..., stream=True)`` (litellm). Its HTTP errors, 429s and SDK retries are counted,
its breaker asked and its retries made like any other; only a breaker fallback is not served (no
``create`` to call with another model).

The SDK's stream helpers (``chat.completions.stream()``, ``responses.stream()``) close the HTTP
response directly, never the stream we returned: their ``close()`` ends our observation too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._core.context import CURRENT
from . import compat
from .calls import acall, call
from .patching import OnError, patch

# Path suffixes of the streaming endpoints observed late, most specific first.
_LATE_OPERATIONS: tuple[tuple[str, str], ...] = (
    ("/chat/completions", "chat"),
    ("/completions", "text_completion"),
    ("/responses", "responses"),
)


def late_operation(url: str) -> str | None:
    path = url.split("?", 1)[0].rstrip("/")
    for suffix, operation in _LATE_OPERATIONS:
        if path.endswith(suffix):
            return operation
    # responses.retrieve(id, stream=True): .../responses/{id}
    head, _, last = path.rpartition("/")
    return "responses" if last and head.endswith("/responses") else None


def _begin(rt: Any, client: Any, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``(controller, request body)`` for a streaming request no entry wrapper opened, else None."""
    if kwargs.get("stream") is not True or CURRENT.get() is not None:
        return None
    try:
        url, body = compat.request_target(args, kwargs)
        operation = late_operation(url)
        if operation is None:
            return None
        request = body if isinstance(body, Mapping) else {}
        # A raw-response request would reissue into a response wrapper, not a stream: no retry.
        raw = compat.is_raw_options(args, kwargs)
        ctl = rt.begin(
            operation,
            client.base_url,
            request,
            compat.provider(client),
            reissue=None if raw else (wrapped, args, kwargs),
        )
        return ctl, request
    except Exception as exc:
        rt.errors("late", exc)
        return None


def late_hooks(runtime: Callable[[], Any], on_error: OnError) -> None:
    """Patch ``request`` (sync and async) and the helpers' ``close`` (deferred until the helper
    modules are imported; ``on_error``: a name missing then)."""

    def sync_request(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        rt = runtime()
        opened = None if rt is None else _begin(rt, instance, wrapped, args, kwargs)
        if opened is None:
            return wrapped(*args, **kwargs)
        ctl, request = opened
        try:
            rejected = rt.admit(ctl, request)
        except BaseException:
            ctl.leave()
            raise
        if rejected is not None:
            ctl.leave()
            raise rejected
        return call(ctl, wrapped, args, kwargs)

    async def async_request(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        rt = runtime()
        opened = None if rt is None else _begin(rt, instance, wrapped, args, kwargs)
        if opened is None:
            return await wrapped(*args, **kwargs)
        ctl, request = opened
        try:
            rejected = await rt.admit_async(ctl, request)
        except BaseException:
            ctl.leave()
            raise
        if rejected is not None:
            ctl.leave()
            raise rejected
        return await acall(ctl, wrapped, args, kwargs)

    def helper_close(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return wrapped(*args, **kwargs)
        finally:
            _end_helper(instance)

    async def async_helper_close(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return await wrapped(*args, **kwargs)
        finally:
            _end_helper(instance)

    patch(compat.BASE_CLIENT, "SyncAPIClient", compat.REQUEST, sync_request)
    patch(compat.BASE_CLIENT, "AsyncAPIClient", compat.REQUEST, async_request)
    for module_name, class_name in compat.HELPER_STREAMS:
        patch(
            module_name,
            class_name,
            "close",
            async_helper_close if class_name.startswith("Async") else helper_close,
            on_error,
        )


def _end_helper(helper: Any) -> None:
    ctl = getattr(compat.helper_raw_stream(helper), "_self_ctl", None)
    if ctl is not None:
        ctl.on_close()
