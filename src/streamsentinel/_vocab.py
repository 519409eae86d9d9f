"""streamsentinel's shared vocabulary: the closed sets of label values and the one frozen
:class:`Failure`, as a leaf that imports nothing of ours and no third-party package.

Sinks (``instrumentation``), records and ``_resilience`` import these names from here; the rules
that produce them (classifying SDK exceptions, 429 bodies, completeness) live in
``_core.taxonomy``, which imports them too. Every value is bounded, so label cardinality is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEADLINE_ERRORS",
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

Operation = Literal["chat", "text_completion", "responses"]
"""The API a stream belongs to (the ``operation`` label): chat completions, legacy completions, or
the Responses API (``create`` and ``retrieve``)."""

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

RateLimitKind = Literal["requests", "tokens", "quota", "too_large", "in_stream"]
"""Bounded values of the ``kind`` label of ``openai_stream_rate_limit_events_total``."""

BreakerResult = Literal["success", "failure", "timeout", "ignored"]
"""What a circuit breaker records for a call that ended."""

WatchdogKind = Literal["first_token_timeout", "stall"]
"""streamsentinel's own deadlines (the watchdog's kinds of timeout)."""

REJECTED_ERROR_TYPE = "circuit_open"
"""``error.type`` of a call an open breaker rejected (a span/metric attribute, not an ``ErrorType``:
no request was made, so nothing failed upstream)."""

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
# Failures the circuit breaker records as timeouts (its timeout-streak rule).
TIMEOUT_ERRORS: frozenset[str] = frozenset({"timeout", "connect_timeout", "first_token_timeout", "stall"})
# streamsentinel's own deadlines (the watchdog's kinds of timeout).
DEADLINE_ERRORS: frozenset[str] = frozenset({"first_token_timeout", "stall"})


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

    @property
    def is_timeout(self) -> bool:
        """A timeout of any kind (the breaker's timeout-streak rule)."""
        return self.error_type in TIMEOUT_ERRORS

    @property
    def deadline(self) -> bool:
        """One of streamsentinel's own deadlines ran out (``StreamTimeoutError`` surfaces it)."""
        return self.error_type in DEADLINE_ERRORS

    @property
    def silent(self) -> bool:
        """The SDK raised nothing for it (``StreamTruncatedError`` surfaces it in raise mode)."""
        return self.reason in SILENT_REASONS
