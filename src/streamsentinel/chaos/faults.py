"""The faults the chaos server can inject, and what each one means for a client.

`FAULT_TABLE` is the ground truth other code compares its own classification with. It is one
row per `Fault`; `expected_outcome()` turns a row plus the number of data events the server
fully wrote (`RequestRecord.data_events`) into the outcome a client sees when it does not retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

__all__ = [
    "FAULT_TABLE",
    "Fault",
    "FaultInfo",
    "Outcome",
    "Phase",
    "RateLimitKind",
    "TruncationReason",
    "expected_outcome",
]


class Named(str, Enum):
    """A string enum that prints as its value (``StrEnum`` before Python 3.11)."""

    def __str__(self) -> str:
        return str(self.value)


class Fault(Named):
    """One wire behaviour, applied to exactly one HTTP request. The value is the header spelling."""

    NONE = "none"
    EOF_CHUNKED = "eof_chunked"
    EOF_CLOSE = "eof_close"
    PARTIAL_EVENT = "partial_event"
    FIN_IN_CHUNK = "fin_in_chunk"
    RESET = "reset"
    STALL_BEFORE_HEADERS = "stall_before_headers"
    STALL_BEFORE_FIRST_TOKEN = "stall_before_first_token"
    STALL_MID_STREAM = "stall_mid_stream"
    ERROR_EVENT = "error_event"
    ERROR_EVENT_FLAT = "error_event_flat"
    MALFORMED_JSON = "malformed_json"
    JSON_BODY_200 = "json_body_200"
    RATE_LIMIT_REQUESTS = "rate_limit_requests"
    RATE_LIMIT_TOKENS = "rate_limit_tokens"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    REQUEST_TOO_LARGE = "request_too_large"
    SERVER_ERROR = "server_error"


class Outcome(Named):
    """What a non-retrying client ends up with for one streamed request."""

    COMPLETED = "completed"  # the terminal marker ([DONE] / response.completed|incomplete) arrived
    TRUNCATED = "truncated"  # some data events arrived, then the stream broke
    FAILED = "failed"  # no data event arrived (HTTP error, stall, non-SSE body, fault at after=0)


class TruncationReason(Named):
    """Fixed vocabulary for why a stream did not complete."""

    EOF_BEFORE_DONE = "eof_before_done"
    PARTIAL_EVENT = "partial_event"
    CONNECTION_LOST = "connection_lost"
    TIMEOUT = "timeout"
    IN_STREAM_ERROR = "in_stream_error"
    MALFORMED_EVENT = "malformed_event"
    NON_SSE_BODY = "non_sse_body"


class RateLimitKind(Named):
    """Which 429 flavour an HTTP error fault sends."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    QUOTA = "quota"
    TOO_LARGE = "too_large"


class Phase(Named):
    """When a fault strikes."""

    NONE = "none"  # no fault
    BEFORE_HEADERS = "before_headers"  # no byte of a response reaches the client
    HTTP_ERROR = "http_error"  # a complete non-200 JSON response
    BODY = "body"  # 200 headers sent, then the body misbehaves


@dataclass(frozen=True, slots=True)
class FaultInfo:
    """One row of the fault table.

    Attributes:
        fault: the fault.
        phase: when it strikes.
        wire: exactly what the server writes.
        sdk_sees: what the openai SDK (3.52, max_retries=0) shows the consumer of a stream.
        reason: truncation reason for a client that sees the fault; None for `none` and HTTP errors.
        status: HTTP status the server sends (None: no status line at all).
        rate_limit_kind: for 429 faults, which flavour.
        always_failed: no data event can reach the client whatever `after` is.
    """

    fault: Fault
    phase: Phase
    wire: str
    sdk_sees: str
    reason: TruncationReason | None = None
    status: int | None = 200
    rate_limit_kind: RateLimitKind | None = None
    always_failed: bool = False


_R = TruncationReason
_AFTER = "200 + chunked headers, `after` events (one chunk each), "
_ROWS = (
    FaultInfo(
        Fault.NONE,
        Phase.NONE,
        wire="200 + chunked headers, every event ([DONE] / terminal event included), then 0\\r\\n\\r\\n",
        sdk_sees="every item; [DONE] is swallowed by the SDK",
    ),
    FaultInfo(
        Fault.EOF_CHUNKED,
        Phase.BODY,
        reason=_R.EOF_BEFORE_DONE,
        wire=_AFTER + "then the clean chunked terminator 0\\r\\n\\r\\n (connection stays reusable)",
        sdk_sees="`after` items, then a silent stop",
    ),
    FaultInfo(
        Fault.EOF_CLOSE,
        Phase.BODY,
        reason=_R.EOF_BEFORE_DONE,
        wire="200 headers without Content-Length / Transfer-Encoding, `connection: close`, `after` "
        "events as raw bytes, then FIN",
        sdk_sees="`after` items, then a silent stop",
    ),
    FaultInfo(
        Fault.PARTIAL_EVENT,
        Phase.BODY,
        reason=_R.PARTIAL_EVENT,
        wire=_AFTER + "the next event without its blank line (or its first `cut_bytes` bytes) as one "
        "chunk, then 0\\r\\n\\r\\n",
        sdk_sees="`after` items; the cut event is silently dropped",
    ),
    FaultInfo(
        Fault.FIN_IN_CHUNK,
        Phase.BODY,
        reason=_R.CONNECTION_LOST,
        wire=_AFTER + "a chunk-size line for the next event, only `cut_bytes` (default half) of its "
        "bytes, then FIN",
        sdk_sees="`after` items, then APIConnectionError (cause httpx2.RemoteProtocolError)",
    ),
    FaultInfo(
        Fault.RESET,
        Phase.BODY,
        reason=_R.CONNECTION_LOST,
        wire=_AFTER + "wait until the peer acknowledged them (Linux), then RST (SO_LINGER 1,0 + close)",
        sdk_sees="`after` items, then APIConnectionError (cause httpx2.ReadError)",
    ),
    FaultInfo(
        Fault.STALL_BEFORE_HEADERS,
        Phase.BEFORE_HEADERS,
        reason=_R.TIMEOUT,
        status=None,
        always_failed=True,
        wire="nothing; after `stall_seconds` (or as soon as the client leaves) FIN",
        sdk_sees="create() raises APITimeoutError (cause httpx2.ReadTimeout) after the read timeout, "
        "per attempt (the SDK retries it)",
    ),
    FaultInfo(
        Fault.STALL_BEFORE_FIRST_TOKEN,
        Phase.BODY,
        reason=_R.TIMEOUT,
        always_failed=True,
        wire="200 + chunked headers only (no event, no `: ping`), silence, FIN after `stall_seconds`",
        sdk_sees="create() returns; the first next() raises APITimeoutError (cause httpx2.ReadTimeout)",
    ),
    FaultInfo(
        Fault.STALL_MID_STREAM,
        Phase.BODY,
        reason=_R.TIMEOUT,
        wire=_AFTER + "silence, FIN after `stall_seconds` (or when the client leaves)",
        sdk_sees="`after` items, then APITimeoutError (cause httpx2.ReadTimeout)",
    ),
    FaultInfo(
        Fault.ERROR_EVENT,
        Phase.BODY,
        reason=_R.IN_STREAM_ERROR,
        wire=_AFTER + 'then chat/completions `data: {"error": {message, type, param, code}}`, responses '
        '`event: error` + `data: {"type": "error", code, message, param, sequence_number}`; '
        "then 0\\r\\n\\r\\n",
        sdk_sees="chat/completions: `after` items, then a bare openai.APIError (.code = error_code, no "
        "status); responses: `after` items plus a ResponseErrorEvent item, then a silent stop",
    ),
    FaultInfo(
        Fault.ERROR_EVENT_FLAT,
        Phase.BODY,
        reason=_R.IN_STREAM_ERROR,
        wire=_AFTER + 'then chat/completions `data: {"type": "error", code, message, param}` (responses: '
        "as error_event); then 0\\r\\n\\r\\n",
        sdk_sees="`after` items plus the error as one more item (choices None, fields in model_extra), "
        "then a silent stop",
    ),
    FaultInfo(
        Fault.MALFORMED_JSON,
        Phase.BODY,
        reason=_R.MALFORMED_EVENT,
        wire=_AFTER + 'then `data: {"id": broken` + blank line, then 0\\r\\n\\r\\n',
        sdk_sees="`after` items, then json.JSONDecodeError (not an OpenAIError)",
    ),
    FaultInfo(
        Fault.JSON_BODY_200,
        Phase.BODY,
        reason=_R.NON_SSE_BODY,
        always_failed=True,
        wire="200, content-type application/json, Content-Length, the non-stream JSON body",
        sdk_sees="0 items, silent end",
    ),
    FaultInfo(
        Fault.RATE_LIMIT_REQUESTS,
        Phase.HTTP_ERROR,
        status=429,
        always_failed=True,
        rate_limit_kind=RateLimitKind.REQUESTS,
        wire="429 JSON error (type requests, code rate_limit_exceeded), retry-after-ms, retry-after, "
        "x-ratelimit-remaining-requests: 0",
        sdk_sees="openai.RateLimitError, .code rate_limit_exceeded (the SDK retries it)",
    ),
    FaultInfo(
        Fault.RATE_LIMIT_TOKENS,
        Phase.HTTP_ERROR,
        status=429,
        always_failed=True,
        rate_limit_kind=RateLimitKind.TOKENS,
        wire="429 JSON error (type tokens, code rate_limit_exceeded), retry-after-ms, retry-after, "
        "x-ratelimit-remaining-tokens: 0",
        sdk_sees="openai.RateLimitError, .code rate_limit_exceeded (the SDK retries it)",
    ),
    FaultInfo(
        Fault.INSUFFICIENT_QUOTA,
        Phase.HTTP_ERROR,
        status=429,
        always_failed=True,
        rate_limit_kind=RateLimitKind.QUOTA,
        wire="429 JSON error (type and code insufficient_quota), retry-after-ms, retry-after",
        sdk_sees="openai.RateLimitError, .code insufficient_quota (the SDK still retries it)",
    ),
    FaultInfo(
        Fault.REQUEST_TOO_LARGE,
        Phase.HTTP_ERROR,
        status=429,
        always_failed=True,
        rate_limit_kind=RateLimitKind.TOO_LARGE,
        wire="429 JSON error 'Request too large ...' (type tokens, code rate_limit_exceeded), "
        "x-ratelimit-remaining-tokens: 0",
        sdk_sees="openai.RateLimitError, .code rate_limit_exceeded (the SDK still retries it)",
    ),
    FaultInfo(
        Fault.SERVER_ERROR,
        Phase.HTTP_ERROR,
        status=500,
        always_failed=True,
        wire="500 JSON error (type server_error, code null), retry-after-ms, retry-after",
        sdk_sees="openai.InternalServerError (the SDK retries it)",
    ),
)

FAULT_TABLE: Mapping[Fault, FaultInfo] = MappingProxyType({row.fault: row for row in _ROWS})
"""Fault -> `FaultInfo`; one row per `Fault`."""


def expected_outcome(fault: Fault, data_events: int) -> Outcome:
    """The outcome a non-retrying client sees for one request.

    Args:
        fault: the fault the server applied (`RequestRecord.fault`).
        data_events: payload data events the server fully wrote before the fault struck
            (`RequestRecord.data_events`; injected error/malformed/cut events not counted).
    """
    info = FAULT_TABLE[fault]
    if fault is Fault.NONE:
        return Outcome.COMPLETED
    if info.always_failed or data_events == 0:
        return Outcome.FAILED
    return Outcome.TRUNCATED
