"""streamsentinel's own telemetry names, in one place: every ``streamsentinel.*`` span attribute,
span event, OTel metric attribute and OTel instrument name (the semantic conventions' names are in
``_semconv``). Every sink imports them from here (``tests/unit/test_layering.py`` fails on an inline
``"streamsentinel.…"`` string in a sink).

One spelling per concept: OTel style, dotted by subject (``streamsentinel.truncation.reason`` on
spans and on metrics alike), and a name is never both an attribute and an event.

:data:`PROMETHEUS_TWINS` and :data:`PROMETHEUS_LABELS` say how an OTLP series maps onto the
Prometheus sink's families and labels (the shipped dashboard's names); ``docs/metrics.md`` prints
them and ``tests/ops/test_sinks_agree.py`` checks both against the two sinks.
"""

from __future__ import annotations

NAMESPACE = "streamsentinel"
"""The tracer's and the meter's name."""

# -- attributes (span, span events, metric points) -----------------------------------------------
OPERATION = "streamsentinel.operation"
"""The API (``chat``, ``text_completion``, ``responses``); on metric points."""
OUTCOME = "streamsentinel.outcome"
TRUNCATION_REASON = "streamsentinel.truncation.reason"
"""Why a stream ended early (a ``TruncationReason``): span, truncated event, metric points."""
CHUNK_COUNT = "streamsentinel.chunk.count"
"""Items delivered to the consumer (int): span, truncated event."""
MAX_CHUNK_GAP = "streamsentinel.max_chunk_gap"
SDK_RETRY_COUNT = "streamsentinel.retry.sdk_count"
"""HTTP retries the openai SDK made (its ``max_retries``), on the span when nonzero."""
SENTINEL_RETRY_COUNT = "streamsentinel.retry.sentinel_count"
"""Attempts streamsentinel reopened itself, on the span when nonzero."""
DONE_SEEN = "streamsentinel.done_seen"
REQUEST_ID = "streamsentinel.request_id"
TIME_TO_FIRST_TOKEN = "streamsentinel.time_to_first_token"
PARTIAL_TEXT = "streamsentinel.partial_text"
CHUNK_OFFSETS = "streamsentinel.chunk.offsets"
"""Seconds from the span's start at which each item reached the consumer, in order (float[])."""
CHUNK_TEXTS = "streamsentinel.chunk.texts"
"""The text each item carried (string[], ``""`` for none), aligned with :data:`CHUNK_OFFSETS`."""
GAP_DURATION = "streamsentinel.gap.duration"
"""Seconds between two consecutive items (the gap event)."""
RETRY_LAYER = "streamsentinel.retry.layer"
RETRY_REASON = "streamsentinel.retry.reason"
RETRY_ATTEMPT = "streamsentinel.retry.attempt"
RATE_LIMIT_KIND = "streamsentinel.rate_limit.kind"
RESUME_STRATEGY = "streamsentinel.resume.strategy"
RESUME_RESULT = "streamsentinel.resume.result"
ERROR_CODE = "streamsentinel.error.code"
"""The error code of an in-stream error event (its type is ``error.type``)."""
TOKEN_TYPE = "streamsentinel.token.type"
FINISH_REASON = "streamsentinel.finish_reason"
BREAKER_NAME = "streamsentinel.breaker.name"
BREAKER_STATE = "streamsentinel.breaker.state"
BREAKER_FROM_STATE = "streamsentinel.breaker.from_state"
BREAKER_TO_STATE = "streamsentinel.breaker.to_state"
REJECT_REASON = "streamsentinel.reject.reason"
STORE_OPERATION = "streamsentinel.store.operation"

# -- span events ----------------------------------------------------------------------------------
CHUNKS_EVENT = "streamsentinel.chunks"
"""The item timeline (``chunk_events="all"``), at the last item's time."""
GAP_EVENT = "streamsentinel.gap"
RETRY_EVENT = "streamsentinel.retry"
RATE_LIMITED_EVENT = "streamsentinel.rate_limited"
RESUME_EVENT = "streamsentinel.resume"
IN_STREAM_ERROR_EVENT = "streamsentinel.in_stream_error"
TRUNCATED_EVENT = "streamsentinel.truncated"

# -- OTel instruments -----------------------------------------------------------------------------
STREAM_REQUESTS = "streamsentinel.stream.requests"
STREAM_TRUNCATIONS = "streamsentinel.stream.truncations"
STREAM_ERRORS = "streamsentinel.stream.errors"
STREAM_RETRIES = "streamsentinel.stream.retries"
STREAM_RATE_LIMIT_EVENTS = "streamsentinel.stream.rate_limit_events"
STREAM_RESUMES = "streamsentinel.stream.resumes"
STREAM_CHUNKS = "streamsentinel.stream.chunks"
STREAM_TOKENS = "streamsentinel.stream.tokens"
STREAM_FINISH_REASONS = "streamsentinel.stream.finish_reasons"
STREAM_DURATION = "streamsentinel.stream.duration"
STREAM_TIME_TO_FIRST_TOKEN = "streamsentinel.stream.time_to_first_token"
STREAM_MAX_CHUNK_GAP = "streamsentinel.stream.max_chunk_gap"
STREAM_REJECTIONS = "streamsentinel.stream.rejections"
BREAKER_TRANSITIONS = "streamsentinel.breaker.transitions"
BREAKER_REJECTED = "streamsentinel.breaker.rejected"
"""Calls an open breaker rejected (``BreakerCall(kind="rejected")``,
``openai_stream_circuit_rejected_total``)."""
BREAKER_FALLBACKS = "streamsentinel.breaker.fallbacks"
BREAKER_STATE_GAUGE = "streamsentinel.breaker.state"
BREAKER_FAILURE_RATE = "streamsentinel.breaker.failure_rate"
BREAKER_SLOW_CALL_RATE = "streamsentinel.breaker.slow_call_rate"
STORE_ERRORS = "streamsentinel.store.errors"
STORE_FALLBACK = "streamsentinel.store.fallback"

# -- OTLP -> the Prometheus sink's names ------------------------------------------------------------
PROMETHEUS_TWINS: dict[str, str] = {
    STREAM_REQUESTS: "openai_stream_requests_total",
    STREAM_TRUNCATIONS: "openai_stream_truncations_total",
    STREAM_ERRORS: "openai_stream_errors_total",
    STREAM_RETRIES: "openai_stream_retries_total",
    STREAM_RATE_LIMIT_EVENTS: "openai_stream_rate_limit_events_total",
    STREAM_RESUMES: "openai_stream_resumes_total",
    STREAM_CHUNKS: "openai_stream_chunks_total",
    STREAM_TOKENS: "openai_stream_tokens_total",
    STREAM_FINISH_REASONS: "openai_stream_finish_reasons_total",
    STREAM_DURATION: "openai_stream_duration_seconds",
    STREAM_TIME_TO_FIRST_TOKEN: "openai_stream_time_to_first_token_seconds",
    STREAM_MAX_CHUNK_GAP: "openai_stream_max_chunk_gap_seconds",
    STREAM_REJECTIONS: "openai_stream_rejections_total",
    BREAKER_TRANSITIONS: "openai_stream_circuit_transitions_total",
    BREAKER_REJECTED: "openai_stream_circuit_rejected_total",
    BREAKER_FALLBACKS: "openai_stream_circuit_fallbacks_total",
    BREAKER_STATE_GAUGE: "openai_stream_circuit_state",
    BREAKER_FAILURE_RATE: "openai_stream_circuit_failure_rate",
    BREAKER_SLOW_CALL_RATE: "openai_stream_circuit_slow_call_rate",
    STORE_ERRORS: "openai_stream_store_errors_total",
    STORE_FALLBACK: "openai_stream_store_fallback",
}
"""Each ``streamsentinel.*`` instrument -> the Prometheus sink's family it mirrors (same values)."""

PROMETHEUS_LABELS: dict[str, str] = {
    OPERATION: "operation",
    "gen_ai.request.model": "model",
    "server.address": "server",
    OUTCOME: "outcome",
    TRUNCATION_REASON: "reason",
    "error.type": "error_type",
    RETRY_LAYER: "layer",
    RETRY_REASON: "reason",
    RATE_LIMIT_KIND: "kind",
    RESUME_STRATEGY: "strategy",
    RESUME_RESULT: "result",
    TOKEN_TYPE: "token_type",
    FINISH_REASON: "finish_reason",
    REJECT_REASON: "reason",
    BREAKER_NAME: "breaker",
    BREAKER_STATE: "state",
    BREAKER_FROM_STATE: "from_state",
    BREAKER_TO_STATE: "to_state",
    STORE_OPERATION: "operation",
}
"""Each attribute of a ``streamsentinel.*`` instrument -> the Prometheus sink's label for it."""
