"""Late observation and helper streams.

``_process_response`` sees the response of every request: a stream whose ``create()`` ran without
our entry wrapper (a ``with_raw_response``/``with_streaming_response`` wrapper the SDK built before
``instrument()`` holds the SDK's original bound method) is observed from there, late: no breaker,
no retries, and the time before the response headers is not in its duration.

The SDK's stream helpers (``chat.completions.stream()``, ``responses.stream()``) close the HTTP
response directly, never the stream we returned: their ``close()`` ends our observation too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._core.context import CURRENT
from . import compat
from .patching import patch

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


def _late(
    rt: Any, wrap: Callable[[Any, Any], Any], client: Any, kwargs: Mapping[str, Any], result: Any
) -> Any:
    """Observe a stream no entry wrapper opened. Any failure here hands back the SDK's result."""
    try:
        url, body = compat.late_request(kwargs)
        operation = late_operation(url)
        if operation is None:
            return result
        request = body if isinstance(body, Mapping) else {}
        ctl = rt.begin(operation, client.base_url, request, compat.provider(client), reissue=None)
    except Exception as exc:
        rt.errors("late", exc)
        return result
    response = kwargs["response"]
    ctl.on_response(response.status_code, response.headers, None)
    return wrap(ctl, result)


def late_hooks(runtime: Callable[[], Any], wrap: Callable[[Any, Any], Any]) -> None:
    """Patch ``_process_response`` (sync and async) and the helpers' ``close``."""

    def sync_process(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = wrapped(*args, **kwargs)
        rt = runtime()
        if rt is None or kwargs.get("stream") is not True or CURRENT.get() is not None:
            return result
        return _late(rt, wrap, instance, kwargs, result)

    async def async_process(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = await wrapped(*args, **kwargs)
        rt = runtime()
        if rt is None or kwargs.get("stream") is not True or CURRENT.get() is not None:
            return result
        return _late(rt, wrap, instance, kwargs, result)

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

    patch(compat.BASE_CLIENT, "SyncAPIClient", compat.PROCESS_RESPONSE, sync_process)
    patch(compat.BASE_CLIENT, "AsyncAPIClient", compat.PROCESS_RESPONSE, async_process)
    for module_name, class_name in compat.HELPER_STREAMS:
        patch(
            module_name,
            class_name,
            "close",
            async_helper_close if class_name.startswith("Async") else helper_close,
        )


def _end_helper(helper: Any) -> None:
    ctl = getattr(compat.helper_raw_stream(helper), "_self_ctl", None)
    if ctl is not None:
        ctl.on_close()
