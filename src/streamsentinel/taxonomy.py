"""The failure taxonomy: what happened to a stream -> ``error_type``, truncation reason, rate-limit kind.

Every label value streamsentinel emits for a failure comes from the closed sets below, so label
cardinality is bounded. The README's "Failure taxonomy" table mirrors this module.

Phases: ``request`` (``create()`` raised: no stream was returned), ``stream`` (after the 200).
A stream that fails after the 200 is *truncated* (``openai_stream_truncations_total{reason}``)
whatever its chunk count; its outcome is ``failed`` if the consumer got no item, ``truncated`` if it
got some.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Literal

import httpx2
import openai

from .ratelimit import RateLimitKind, classify_429, error_fields, retry_delay_seconds

Outcome = Literal["completed", "truncated", "failed", "abandoned", "rejected"]
"""``openai_stream_requests_total{outcome}``: exactly one per logical stream request
(``rejected``: an open circuit breaker refused it before any HTTP request)."""

ErrorType = Literal[
    "rate_limited",
    "quota_exhausted",
    "request_too_large",
    "server_error",
    "client_error",
    "timeout",
    "connect_timeout",
    "first_token_timeout",
    "stall",
    "connection_error",
    "in_stream_error",
    "malformed_event",
    "truncated",
    "other",
]
"""``openai_stream_errors_total{error_type}`` and the span's ``error.type``."""

TruncationReason = Literal[
    "eof_before_done",
    "partial_event",
    "non_sse_body",
    "connection_lost",
    "timeout",
    "first_token_timeout",
    "stall",
    "in_stream_error",
    "malformed_event",
    "other",
]
"""``openai_stream_truncations_total{reason}``: why a stream that had its 200 ended early.

- ``eof_before_done``: clean end of body before ``[DONE]`` / a terminal Responses event (SDK: silent).
- ``partial_event``: the body ended inside an event; the SDK silently dropped it.
- ``non_sse_body``: a 200 whose body held no SSE event (e.g. a JSON body; SDK: 0 items, silent).
- ``connection_lost``: the connection broke (SDK: ``APIConnectionError``).
- ``timeout``: no byte for the client's read timeout (SDK: ``APITimeoutError``).
- ``first_token_timeout`` / ``stall``: streamsentinel's own ``first_token_timeout`` /
  ``stall_timeout`` ran out and it closed the connection (SDK: ``APIConnectionError``).
- ``in_stream_error``: an error event inside the stream (nested: SDK raises ``APIError``; flat or
  Responses ``error``/``response.failed``: SDK yields it).
- ``malformed_event``: a ``data:`` line that is not JSON (SDK: ``json.JSONDecodeError``).
- ``other``: any other exception while iterating.
"""

# Silent ends: the SDK raises nothing, so these are the reasons StreamTruncatedError carries.
SILENT_REASONS: frozenset[str] = frozenset({"eof_before_done", "partial_event", "non_sse_body"})


# Failures worth another attempt when nothing was delivered yet: transient by nature. Quota, a too
# large request, client errors and unknown in-stream codes would fail the same way again.
RETRYABLE: frozenset[str] = frozenset(
    {
        "rate_limited",
        "server_error",
        "timeout",
        "connect_timeout",
        "first_token_timeout",
        "stall",
        "connection_error",
        "malformed_event",
        "truncated",
    }
)
# Failures that say nothing about the upstream's health: never counted by the circuit breaker.
NOT_FOR_BREAKER: frozenset[str] = frozenset({"quota_exhausted", "request_too_large", "client_error"})


@dataclass(frozen=True, slots=True)
class Failure:
    """One classified failure: ``error_type``; ``reason`` when the stream had started (else None);
    ``rate_limit_kind`` when it was a 429 or an in-stream rate-limit/quota error; ``retry_after``
    (seconds) when the server said how long to wait."""

    error_type: ErrorType
    reason: TruncationReason | None = None
    rate_limit_kind: RateLimitKind | None = None
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """Worth retrying if nothing was delivered yet (a 200 with a non-SSE body is not: a
        misconfigured endpoint answers the same way again)."""
        return self.error_type in RETRYABLE and self.reason != "non_sse_body"

    @property
    def counts_for_breaker(self) -> bool:
        """Whether the circuit breaker records it as a failure (else: ignored)."""
        return self.error_type not in NOT_FOR_BREAKER


def classify_error_code(code: str | None, message: str = "") -> tuple[ErrorType, RateLimitKind | None]:
    """An in-stream error's ``code`` (OpenAI error codes) -> ``(error_type, rate_limit_kind)``."""
    if code == "rate_limit_exceeded":
        if message.startswith("Request too large"):
            return "request_too_large", "too_large"
        return "rate_limited", "in_stream"
    if code == "insufficient_quota":
        return "quota_exhausted", "quota"
    if code == "server_error":
        return "server_error", None
    return "in_stream_error", None


def _status_failure(exc: openai.APIStatusError) -> Failure:
    status = exc.status_code
    if status == 429:
        kind = classify_429(exc.body, exc.response.headers)
        error_type: ErrorType = {
            "quota": "quota_exhausted",
            "too_large": "request_too_large",
        }.get(kind, "rate_limited")  # type: ignore[assignment]
        return Failure(error_type, None, kind)
    if status >= 500:
        return Failure("server_error")
    if status == 408:
        return Failure("timeout")
    return Failure("client_error")


def is_cancellation(exc: BaseException) -> bool:
    """True for a consumer or task cancellation, which is never a failure."""
    return isinstance(exc, (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt))


def classify_request_exception(exc: BaseException) -> Failure | None:
    """An exception raised by ``create()`` (before any stream existed). None for a cancellation."""
    if is_cancellation(exc):
        return None
    if isinstance(exc, openai.APIStatusError):
        return _status_failure(exc)
    if isinstance(exc, openai.APITimeoutError):
        connect = isinstance(exc.__cause__, httpx2.ConnectTimeout)
        return Failure("connect_timeout" if connect else "timeout")
    if isinstance(exc, openai.APIConnectionError):
        return Failure("connection_error")
    return Failure("other")


def classify_stream_exception(exc: BaseException) -> Failure | None:
    """An exception raised by the SDK while iterating a stream. None for a cancellation."""
    if is_cancellation(exc):
        return None
    if isinstance(exc, openai.APITimeoutError):
        return Failure("timeout", "timeout")
    if isinstance(exc, openai.APIConnectionError):
        return Failure("connection_error", "connection_lost")
    if isinstance(exc, openai.APIStatusError):  # not raised mid-stream today; be safe
        failure = _status_failure(exc)
        return Failure(failure.error_type, "in_stream_error", failure.rate_limit_kind)
    if isinstance(exc, openai.APIError):
        code, _typ, message = error_fields(exc.body)
        message = message or exc.message
        error_type, kind = classify_error_code(exc.code or code, message)
        return Failure(error_type, "in_stream_error", kind, retry_delay_seconds(None, message))
    if isinstance(exc, json.JSONDecodeError):
        return Failure("malformed_event", "malformed_event")
    return Failure("other", "other")


def classify_in_stream_event(code: str | None, message: str) -> Failure:
    """An error the SDK yielded as an item (flat chat error, Responses ``error``/``response.failed``)."""
    error_type, kind = classify_error_code(code, message)
    return Failure(error_type, "in_stream_error", kind, retry_delay_seconds(None, message))


WatchdogKind = Literal["first_token_timeout", "stall"]


def watchdog_failure(kind: WatchdogKind) -> Failure:
    """streamsentinel's own ``first_token_timeout`` or ``stall_timeout`` closed the stream."""
    return Failure(kind, kind)


def silent_end_failure(reason: TruncationReason) -> Failure:
    """A stream the SDK ended without error before its terminal marker."""
    return Failure("truncated", reason)
