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

import openai

from .._vocab import (
    DEADLINE_ERRORS,
    NOT_FOR_BREAKER,
    REJECTED_ERROR_TYPE,
    RETRYABLE,
    SILENT_REASONS,
    TIMEOUT_ERRORS,
    BreakerResult,
    ErrorType,
    Failure,
    Operation,
    Outcome,
    RateLimitKind,
    TruncationReason,
    WatchdogKind,
)
from . import httplib
from .ratelimit import classify_429, error_fields, retry_delay_seconds

# The vocabulary lives in the leaf ``_vocab``; re-exported for the core's modules.
__all__ = [
    "DEADLINE_ERRORS",
    "FINISH_REASONS",
    "NOT_FOR_BREAKER",
    "REJECTED_ERROR_TYPE",
    "RETRYABLE",
    "SILENT_REASONS",
    "TIMEOUT_ERRORS",
    "BreakerResult",
    "ErrorType",
    "Failure",
    "Operation",
    "Outcome",
    "RateLimitKind",
    "TruncationReason",
    "WatchdogKind",
]

# Finish reasons kept as label values; any other value is reported as "other" (bounded labels).
FINISH_REASONS: frozenset[str] = frozenset(
    {"stop", "length", "tool_calls", "content_filter", "function_call", "incomplete"}
)


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


_KIND_ERROR: dict[str, ErrorType] = {"quota": "quota_exhausted", "too_large": "request_too_large"}


def rate_limit_error_type(kind: RateLimitKind) -> ErrorType:
    """The ``ErrorType`` of a 429 of ``kind``."""
    return _KIND_ERROR.get(kind, "rate_limited")


def status_error_type(status: int) -> ErrorType:
    """The ``ErrorType`` of an HTTP error status other than 429 (one vocabulary for the final
    failure and for the reason of an SDK retry): >= 500 ``server_error``, 408 ``timeout``, other
    4xx ``client_error``."""
    if status >= 500:
        return "server_error"
    if status == 408:
        return "timeout"
    return "client_error"


def transport_error_type(exc: BaseException) -> ErrorType:
    """An HTTP attempt that raised before any response (an ``httpx2`` or legacy ``httpx``
    exception): ``timeout`` or ``connection_error``."""
    return (
        "timeout"
        if isinstance(exc, openai.APITimeoutError) or httplib.is_timeout(exc)
        else "connection_error"
    )


def _status_failure(exc: openai.APIStatusError) -> Failure:
    status = exc.status_code
    if status == 429:
        kind = classify_429(exc.body, exc.response.headers)
        return Failure(rate_limit_error_type(kind), None, kind)
    return Failure(status_error_type(status))


def is_cancellation(exc: BaseException) -> bool:
    """True for a cancellation or any other ``BaseException`` that is not an ``Exception``
    (``CancelledError``, ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``): never a stream
    failure, never retried, and it propagates at once."""
    return isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception)


def classify_request_exception(exc: BaseException) -> Failure | None:
    """An exception raised by ``create()`` (before any stream existed). None for a cancellation."""
    if is_cancellation(exc):
        return None
    if isinstance(exc, openai.APIStatusError):
        return _status_failure(exc)
    if isinstance(exc, openai.APITimeoutError):
        connect = httplib.is_connect_timeout(exc.__cause__)  # of either library
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


def watchdog_failure(kind: WatchdogKind) -> Failure:
    """streamsentinel's own ``first_token_timeout`` or ``stall_timeout`` closed the stream."""
    return Failure(kind, kind)


def watchdog_cut(
    timeout_kind: WatchdogKind | None, exc: BaseException | None, *, done_seen: bool = False
) -> Failure | None:
    """The failure of a read that ended after the watchdog marked the stream (``timeout_kind``)
    and shut its socket: who ended the stream decides the reason. The SDK then raises
    ``APIConnectionError`` (a body framed by chunks or a length, cut short), or ends cleanly
    (``exc`` None: on a close-delimited body the shutdown reads as the body's end). None when no
    deadline ran out, the read raised something else, or ``data: [DONE]`` had arrived
    (``done_seen``: the SDK had ended the stream; it only drains the body then, errors ignored)."""
    if timeout_kind is None or done_seen:
        return None
    if exc is not None and not isinstance(exc, openai.APIConnectionError):
        return None
    return watchdog_failure(timeout_kind)


def silent_end_failure(reason: TruncationReason) -> Failure:
    """A stream the SDK ended without error before its terminal marker."""
    return Failure("truncated", reason)


# -- completeness and outcome: the rules every ending uses ----------------------------------------


def is_complete(
    terminal_event: bool,
    done_seen: bool | None,
    terminal_seen: bool,
    finished: bool,
    *,
    closed_early: bool = False,
) -> bool:
    """Whether a stream reached its terminal marker, judged from the wire.

    Chat and legacy completions: ``data: [DONE]`` arrived (``done_seen``); when the decoder hook is
    absent (``done_seen`` None), the choices having reported finish reasons (``finished``) stands
    in, and so it does when the consumer closed the stream itself (``closed_early``) after the
    finish chunk: ``[DONE]`` was simply never read. Responses: a terminal event
    (``response.completed``/``incomplete``/``failed``) arrived.
    """
    if terminal_event:
        return terminal_seen
    if done_seen is None or (closed_early and not done_seen):
        return finished
    return done_seen


def silent_reason(saw_event: bool, is_sse: bool, ended_inside_event: bool) -> TruncationReason:
    """Why a stream the SDK ended without error was short: no SSE event in a non-SSE body
    (``non_sse_body``), a body cut inside an event (``partial_event``), else ``eof_before_done``."""
    if not saw_event and not is_sse:
        return "non_sse_body"
    if ended_inside_event:
        return "partial_event"
    return "eof_before_done"


def end_failure(complete: bool, in_stream: Failure | None, silent: TruncationReason) -> Failure | None:
    """The failure of a stream whose iterator ended without error (None: it completed). An error
    event inside the stream is a failure whether or not the terminal marker followed it."""
    if in_stream is not None:
        return in_stream
    return None if complete else silent_end_failure(silent)


def outcome_of(failure: Failure | None, payload_delivered: bool) -> Outcome:
    """``completed`` without a failure; else ``truncated`` once the consumer got a payload item,
    ``failed`` before."""
    if failure is None:
        return "completed"
    return "truncated" if payload_delivered else "failed"


def given_up_failure(
    in_stream: Failure | None, pending_read: float, stall_threshold: float
) -> Failure | None:
    """The failure of a stream the consumer closed, dropped or cancelled: an error event the
    server sent (a failure whatever the consumer does next), else a read that had been waiting
    ``pending_read`` seconds (0.0: none) for at least ``stall_threshold`` (a stall: e.g. a
    framework's own chunk timeout gave up on it), else None (a plain abandon)."""
    if in_stream is not None:
        return in_stream
    if stall_threshold > 0.0 and pending_read >= stall_threshold:
        return watchdog_failure("stall")
    return None


def abandon_outcome(complete: bool, in_stream: Failure | None) -> Outcome:
    """The consumer closed or dropped the stream: ``completed`` if the answer was already whole
    (terminal marker seen, no error event), else ``abandoned`` (never a failure)."""
    return "completed" if complete and in_stream is None else "abandoned"


def breaker_result(outcome: Outcome, failure: Failure | None) -> BreakerResult:
    """What the circuit breaker records for a call that ended: ``success`` (completed),
    ``failure``/``timeout`` (failed or truncated by a failure that counts, see ``NOT_FOR_BREAKER``),
    else ``ignored`` (abandoned, cancelled, not the upstream's fault)."""
    if outcome == "completed":
        return "success"
    if failure is not None and outcome in ("failed", "truncated") and failure.counts_for_breaker:
        return "timeout" if failure.is_timeout else "failure"
    return "ignored"


def finish_reason_value(value: object) -> str:
    """A finish reason as a bounded label value: a known one, else ``other``."""
    return value if isinstance(value, str) and value in FINISH_REASONS else "other"
