"""Every private name of the ``openai`` package streamsentinel uses, in one place (and the one of
its transport, ``Headers._list``, the same in ``httpx2`` and legacy ``httpx``, read with a fallback
to the public ``raw``). Which HTTP library built a response (the SDK runs on either):
``streamsentinel._core.httplib``.

Verified against openai 3.51 to 3.60 (``SUPPORTED``; ``tests/sdk/test_sdk_hooks.py`` checks each
name and signature and fails loudly if one moves). An SDK upgrade is checked here and in
``pyproject.toml``'s ``openai`` range, nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2
import openai
from openai._legacy_response import LegacyAPIResponse
from openai._response import APIResponse, AsyncAPIResponse
from openai._streaming import ServerSentEvent, SSEDecoder

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "PRIVATE_NAMES",
    "RAW_RESPONSES",
    "SUPPORTED",
    "APIResponse",
    "AsyncAPIResponse",
    "LegacyAPIResponse",
    "SSEDecoder",
    "ServerSentEvent",
]

SUPPORTED = "openai >= 3.51, < 4"
"""The openai versions whose private names below were verified (mirrors ``pyproject.toml``)."""

BASE_CLIENT = "openai._base_client"
SEND_REQUEST = "_send_request"  # Sync/AsyncAPIClient: every HTTP attempt
SLEEP_FOR_RETRY = "_sleep_for_retry"  # Sync/AsyncAPIClient: each SDK retry (retries_taken, response)
REQUEST = "request"  # Sync/AsyncAPIClient: every request (cast_to, options, *, stream, stream_cls)
MAKE_SSE_DECODER = "_make_sse_decoder"  # BaseClient: the SSE decoder of every Stream

RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
"""Set by ``with_raw_response``/``with_streaming_response``: ``create()`` then returns a response
wrapper (``RAW_RESPONSES``), not a ``Stream``."""

RAW_RESPONSES = (LegacyAPIResponse, APIResponse, AsyncAPIResponse)

# The SDK's stream helpers (`chat.completions.stream()`, `responses.stream()`) close the HTTP
# response directly, never the stream we returned: their close() must end our observation too.
HELPER_STREAMS: tuple[tuple[str, str], ...] = (
    ("openai.lib.streaming.chat._completions", "ChatCompletionStream"),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream"),
    ("openai.lib.streaming.responses._responses", "ResponseStream"),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStream"),
)


def base_url(resource: Any) -> httpx2.URL:
    """The base URL of an API resource's client (``resource._client``)."""
    url: httpx2.URL = resource._client.base_url
    return url


def provider(client: Any) -> str:
    """``gen_ai.provider.name`` of a client: ``azure.ai.openai`` for Azure clients, else ``openai``."""
    return (
        "azure.ai.openai" if isinstance(client, (openai.AzureOpenAI, openai.AsyncAzureOpenAI)) else "openai"
    )


def resource_client(resource: Any) -> Any:
    return resource._client


def _real_type(obj: Any) -> type:
    """The type of ``obj``, or of what a proxy (another instrumentation's ``wrapt`` wrapper) wraps."""
    for _ in range(8):  # a proxy class defines __wrapped__ itself; a mock's class does not
        if not hasattr(type(obj), "__wrapped__"):
            break
        obj = obj.__wrapped__
    return type(obj)


_KIND_OF_TYPE: dict[type, str] = {}  # types that are no proxies, by kind (a few SDK classes)


def stream_kind(result: Any) -> str | None:
    """``sync``/``async`` for a real SDK stream (by its real type: a ``MagicMock(spec=Stream)``
    only passes ``isinstance``), ``raw`` for a response wrapper, else None."""
    kind = _KIND_OF_TYPE.get(type(result))
    if kind is not None:
        return kind
    cls = _real_type(result)
    kind = _kind(cls)
    if kind is not None and cls is type(result) and len(_KIND_OF_TYPE) < 64:
        _KIND_OF_TYPE[cls] = kind
    return kind


def _kind(cls: type) -> str | None:
    if issubclass(cls, openai.Stream):
        return "sync"
    if issubclass(cls, openai.AsyncStream):
        return "async"
    if issubclass(cls, RAW_RESPONSES):
        return "raw"
    return None


def header_triples(headers: Any) -> list[tuple[bytes, bytes, bytes]] | None:
    """``Headers._list`` (``httpx2``'s or legacy ``httpx``'s, alike): ``(name, lower-case name,
    value)`` bytes, as received (None when absent: ``ratelimit.scan_headers`` then reads the public
    ``raw``)."""
    triples: list[tuple[bytes, bytes, bytes]] | None = getattr(headers, "_list", None)
    return triples if isinstance(triples, list) else None


def header(headers: Any, lower_name: bytes) -> str | None:
    """One header's value (``lower_name``: lower-case bytes), read off ``Headers._list`` without
    the public lookup's copies; through ``get`` when that list is absent."""
    triples = header_triples(headers)
    if triples is None:
        value: str | None = headers.get(lower_name.decode("latin-1"))
        return value
    for _, key, raw in triples:
        if key == lower_name:
            return raw.decode("latin-1")
    return None


_STREAM_NEXT = openai.Stream.__next__
_ASYNC_STREAM_ANEXT = openai.AsyncStream.__anext__


def items_of(stream: Any) -> Any:
    """What to read ``stream``'s items from: its item generator (``Stream._iterator``), which the
    SDK's ``__next__``/``__anext__`` only delegate to (a Python frame per item saved, and an
    open async stream keeps one coroutine fewer); the stream itself when its class overrides them
    or the generator is missing."""
    cls = type(stream)
    sdk_next = getattr(cls, "__next__", None) is _STREAM_NEXT
    if sdk_next or getattr(cls, "__anext__", None) is _ASYNC_STREAM_ANEXT:
        return getattr(stream, "_iterator", stream)
    return stream


def decoder_of(stream: Any) -> Any:
    """The stream's SSE decoder (``Stream._decoder``)."""
    return getattr(stream, "_decoder", None)


def is_raw_request(kwargs: Mapping[str, Any]) -> bool:
    headers = kwargs.get("extra_headers")
    if not headers:
        return False
    # The SDK's helpers set this exact spelling; a user-set header may be lower-case.
    return RAW_RESPONSE_HEADER in headers or RAW_RESPONSE_HEADER.lower() in headers


def without_raw_header(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What a retry re-issues: a raw-response call without its raw header, so the retry returns a
    plain stream for the proxy the consumer already holds."""
    if not is_raw_request(kwargs):
        return kwargs
    headers = {k: v for k, v in kwargs["extra_headers"].items() if k.lower() != RAW_RESPONSE_HEADER.lower()}
    return {**kwargs, "extra_headers": headers}


def is_raw_options(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether a ``request(cast_to, options, ...)`` call is a raw-response one (its headers)."""
    options = kwargs["options"] if "options" in kwargs else args[1]
    headers = options.headers
    return bool(headers) and is_raw_request({"extra_headers": headers})


def request_target(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[str, Any]:
    """``(url, json body)`` of a ``request(cast_to, options, ...)`` call (its ``FinalRequestOptions``)."""
    options = kwargs["options"] if "options" in kwargs else args[1]
    return str(options.url), options.json_data


def helper_raw_stream(helper: Any) -> Any:
    """The stream a ``ChatCompletionStream``/``ResponseStream`` helper reads (``_raw_stream``)."""
    return getattr(helper, "_raw_stream", None)


def check_sse_decoder_factory() -> None:
    """Raise unless ``BaseClient._make_sse_decoder`` returns exactly the SDK's ``SSEDecoder``
    (our subclass replaces it only then)."""
    from openai._base_client import BaseClient

    made = BaseClient.__dict__[MAKE_SSE_DECODER](None)
    if type(made) is not SSEDecoder:
        raise TypeError(f"BaseClient._make_sse_decoder returns {type(made)!r}, expected SSEDecoder")


PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("openai._base_client", "SyncAPIClient." + SEND_REQUEST),
    ("openai._base_client", "AsyncAPIClient." + SEND_REQUEST),
    ("openai._base_client", "SyncAPIClient." + SLEEP_FOR_RETRY),
    ("openai._base_client", "AsyncAPIClient." + SLEEP_FOR_RETRY),
    ("openai._base_client", "SyncAPIClient." + REQUEST),
    ("openai._base_client", "AsyncAPIClient." + REQUEST),
    ("openai._base_client", "BaseClient." + MAKE_SSE_DECODER),
    ("openai._streaming", "SSEDecoder"),
    ("openai._streaming", "SSEDecoder._reset"),
    ("openai._streaming", "ServerSentEvent"),
    ("openai._legacy_response", "LegacyAPIResponse"),
    ("openai._response", "APIResponse"),
    ("openai._response", "AsyncAPIResponse"),
    *HELPER_STREAMS,
)
"""Every private module-level or class-level name used, as ``(module, dotted attribute path)``
(``tests/sdk/test_sdk_hooks.py`` resolves each in the installed SDK)."""

PRIVATE_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("openai.Stream", "_iterator"),
    ("openai.Stream", "_decoder"),
    ("openai.AsyncStream", "_iterator"),
    ("openai.AsyncStream", "_decoder"),
    ("a resource (client.chat.completions)", "_client"),
    ("openai.lib.streaming.chat._completions.ChatCompletionStream", "_raw_stream"),
    ("openai.lib.streaming.responses._responses.ResponseStream", "_raw_stream"),
    ("openai._streaming.SSEDecoder", "_data"),
    ("openai._streaming.SSEDecoder", "_event"),
    ("httpx2.Headers", "_list"),
)
"""Private instance attributes read, as ``(the object's type, attribute)`` (checked on real
instances by ``tests/sdk/test_sdk_hooks.py``)."""
