"""The OpenTelemetry metrics sink: GenAI semantic-convention client metrics plus streamsentinel's own
families, recorded through a ``MeterProvider`` (for OTLP users and short jobs that end before a scrape).

Meter ``streamsentinel`` (the package version, schema 1.37.0 like the official util-genai). Nothing is
recorded per chunk: a stream is recorded once, in ``end()``; retries, 429s, resumes and breaker
events are counted as they happen.

GenAI semantic conventions (the released names, ``opentelemetry-semantic-conventions``):
histograms ``gen_ai.client.operation.duration`` (s), ``gen_ai.client.operation.time_to_first_chunk``
(s), ``gen_ai.client.operation.time_per_output_chunk`` (s, one value per gap between consecutive
items, from ``StreamRecord.chunk_gaps``, buffered by the core and recorded at the end) and
``gen_ai.client.token.usage`` ({token}, ``gen_ai.token.type`` ``input``/``output``), with the
conventions' bucket advice. Attributes: ``gen_ai.operation.name`` (``chat``, ``text_completion``;
the Responses API is ``chat``), ``gen_ai.provider.name``, ``gen_ai.request.model`` (the bounded
label value), ``gen_ai.response.model`` (when known, and not once request models overflowed to
``_other``), ``server.address`` (bounded), ``server.port`` (not once servers overflowed to
``_other``), ``error.type`` (the ``ErrorType``) on a ``failed`` or ``truncated`` stream. Every
outcome is recorded except ``rejected``: an open breaker made no GenAI call (its count is
``streamsentinel.stream.requests{streamsentinel.outcome="rejected"}``). An ``abandoned`` stream is
recorded without ``error.type`` (the consumer let go; nothing failed).

Double counting: when an official OpenAI instrumentation is active (its ``BaseInstrumentor``
singleton ``is_instrumented_by_opentelemetry``; looked up in ``sys.modules`` at each stream end,
never imported), it records ``gen_ai.client.*`` for the calls it wraps and this sink does not:
``opentelemetry-instrumentation-genai-openai`` wraps chat and Responses (not legacy completions, so
``text_completion`` streams stay ours); ``opentelemetry-instrumentation-openai-v2`` is taken to wrap
all three. ``streamsentinel.*`` is always recorded. ``semconv_metrics=True``/``False`` overrides the
detection (e.g. True when the other instrumentor exports to another MeterProvider).

streamsentinel's own families (no semconv exists for them) share the namespace ``streamsentinel.``
and mirror the Prometheus ``openai_stream_*`` families: OTel naming (dots, unit in ``unit``, no
``_total``; after OTLP ingestion into Prometheus ``streamsentinel.stream.requests`` becomes
``streamsentinel_stream_requests_total``). Stream families carry ``streamsentinel.operation`` (the
API: ``chat``, ``text_completion``, ``responses``; not ``gen_ai.operation.name``, which has no
``responses`` value), ``gen_ai.request.model`` and ``server.address`` (both bounded by the core);
breaker families carry ``streamsentinel.breaker.name``.

Semconv switch: the semconv main branch renamed these to ``gen_ai.client.inference.*`` (token usage
split into counters, ``responses.retrieve`` as ``fetch_response``) but no release ships them; this
module emits what the released package ships and does not implement the new names. A switch would be
an option defaulting to ``OTEL_SEMCONV_STABILITY_OPT_IN`` containing ``gen_ai_latest_experimental``,
read once in ``__init__`` to pick which pre-created instrument set ``end()`` records into, with the
names imported from the semconv release that ships them.
"""

from __future__ import annotations

import importlib.metadata
import math
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
from opentelemetry.metrics import _internal as _metrics_internal
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as gm
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.schemas import Schemas
from opentelemetry.util.types import AttributeValue

from .. import _forksafe as forksafe
from . import _names as nm
from ._data import (
    BreakerCall,
    BreakerRates,
    BreakerState,
    BreakerTransition,
    Event,
    RateLimitEvent,
    Rejection,
    ResumeEvent,
    RetryEvent,
    StoreError,
    StoreFallback,
    StreamRecord,
    StreamStart,
)
from ._semconv import _OPERATIONS

__all__ = ["OTelMetricsSink", "official_instrumentor_active"]

METER_NAME = nm.NAMESPACE
SCHEMA_URL = Schemas.V1_37_0.value
# The semantic conventions' bucket advice (what the official util-genai uses).
DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01, 0.02, 0.04 ... 81.92 (exact)
TOKEN_BUCKETS = [4**i for i in range(14)]  # 1, 4, 16 ... 67108864
# The Prometheus sink's buckets, for the streamsentinel.* histograms (parity).
STREAM_DURATION_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0]
TTFT_BUCKETS = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0]
GAP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_SEMCONV_HISTOGRAMS = (  # (name, unit, description, buckets), in the order __init__ unpacks them
    (gm.GEN_AI_CLIENT_OPERATION_DURATION, "s", "GenAI operation duration.", DURATION_BUCKETS),
    (gm.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK, "s", "Time to the first chunk.", DURATION_BUCKETS),
    (gm.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK, "s", "Time per output chunk.", DURATION_BUCKETS),
    (gm.GEN_AI_CLIENT_TOKEN_USAGE, "{token}", "Number of input and output tokens used.", TOKEN_BUCKETS),
)
BREAKER_STATES = ("closed", "open", "half_open", "disabled", "forced_open", "metrics_only")
OVERFLOW_LABEL = "_other"  # the core's bounded-label value past max_model_labels or max_label_sets

SEMCONV_OPERATION = _OPERATIONS  # one table, _semconv's
_INPUT = gen_ai.GenAiTokenTypeValues.INPUT.value
_OUTPUT = gen_ai.GenAiTokenTypeValues.OUTPUT.value
_TOKENS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("reasoning", "reasoning_tokens"),
    ("cached_input", "cached_input_tokens"),
)
_ALL_OPERATIONS = frozenset(SEMCONV_OPERATION)
# The official instrumentations: module, and the operations whose gen_ai.client.* metrics they record.
OFFICIAL_INSTRUMENTORS = (
    ("opentelemetry.instrumentation.genai.openai", frozenset({"chat", "responses"})),
    ("opentelemetry.instrumentation.openai_v2", _ALL_OPERATIONS),
)


def _global_provider_set() -> bool:
    """Whether the application set the global ``MeterProvider`` (until then the API's proxy records
    nothing). Reads the API's module state: there is no public question for it."""
    return getattr(_metrics_internal, "_METER_PROVIDER", True) is not None


def official_instrumentor_active(operation: str) -> bool:
    """Whether an official OpenAI instrumentation that records ``operation`` is instrumented (a
    ``sys.modules`` lookup: a module nobody imported is not active)."""
    for module_name, operations in OFFICIAL_INSTRUMENTORS:
        module = sys.modules.get(module_name)
        if module is None or operation not in operations:
            continue
        instance = getattr(getattr(module, "OpenAIInstrumentor", None), "_instance", None)
        if instance is not None and getattr(instance, "is_instrumented_by_opentelemetry", False) is True:
            return True
    return False


def _own(stream: StreamStart) -> dict[str, AttributeValue]:
    """The attributes of every streamsentinel.stream.* point (bounded values)."""
    return {
        nm.OPERATION: stream.operation,
        gen_ai.GEN_AI_REQUEST_MODEL: stream.model,
        SERVER_ADDRESS: stream.server,
    }


def _version() -> str:
    try:
        return importlib.metadata.version("streamsentinel")
    except importlib.metadata.PackageNotFoundError:
        return "0"


class OTelMetricsSink:
    """Records streams, retries, 429s, resumes and breaker events into OTel instruments (see the
    module docstring); ``meter_provider`` None: the global one."""

    name = "otel_metrics"

    def __init__(self, meter_provider: MeterProvider | None = None, *, semconv_metrics: bool | None = None):
        self._semconv = semconv_metrics
        self._gaps = semconv_metrics is not False  # else nothing would read them
        self._explicit = meter_provider is not None
        meter = metrics.get_meter(METER_NAME, _version(), meter_provider, schema_url=SCHEMA_URL)
        count = meter.create_counter

        def hist(name: str, unit: str, desc: str, buckets: Sequence[float]) -> Histogram:
            return meter.create_histogram(name, unit, desc, explicit_bucket_boundaries_advisory=buckets)

        self.operation_duration, self.time_to_first_chunk, self.time_per_output_chunk, self.token_usage = (
            hist(*spec) for spec in _SEMCONV_HISTOGRAMS
        )
        self.requests = count(nm.STREAM_REQUESTS, "{request}", "Stream requests by outcome.")
        self.truncations = count(nm.STREAM_TRUNCATIONS, "{stream}", "Streams ended early after their 200.")
        self.errors = count(nm.STREAM_ERRORS, "{error}", "Failed or truncated streams by error type.")
        self.retries = count(nm.STREAM_RETRIES, "{retry}", "Retries by layer (sdk, sentinel) and reason.")
        self.rate_limit_events = count(nm.STREAM_RATE_LIMIT_EVENTS, "{event}", "429s and in-stream limits.")
        self.resumes = count(nm.STREAM_RESUMES, "{resume}", "Stream resumes by strategy and result.")
        self.chunks = count(nm.STREAM_CHUNKS, "{chunk}", "Items delivered to the consumer.")
        self.tokens = count(nm.STREAM_TOKENS, "{token}", "Tokens reported by the server, by type.")
        self.finish_reasons = count(nm.STREAM_FINISH_REASONS, "{choice}", "Finish reasons received.")
        self.duration = hist(nm.STREAM_DURATION, "s", "Stream duration by outcome.", STREAM_DURATION_BUCKETS)
        self.time_to_first_token = hist(
            nm.STREAM_TIME_TO_FIRST_TOKEN, "s", "Time to first output.", TTFT_BUCKETS
        )
        self.max_chunk_gap = hist(nm.STREAM_MAX_CHUNK_GAP, "s", "Longest gap between two items.", GAP_BUCKETS)
        self.transitions = count(nm.BREAKER_TRANSITIONS, "{transition}", "Circuit breaker state transitions.")
        self.rejected = count(nm.BREAKER_REJECTED, "{call}", "Calls an open breaker rejected.")
        self.fallbacks = count(nm.BREAKER_FALLBACKS, "{call}", "Calls a breaker's fallback served.")
        self.store_errors = count(nm.STORE_ERRORS, "{error}", "Failed calls to the shared store (Redis).")
        self.rejections = count(
            nm.STREAM_REJECTIONS, "{request}", "Requests rejected with no request, by reason."
        )
        self._fallback: int | None = None
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}
        self._rates: dict[str, tuple[float, float]] = {}
        forksafe.register(self)
        gauge = meter.create_observable_gauge
        gauge(
            nm.BREAKER_STATE_GAUGE,
            [self._observe_states],
            "1",
            "1 for the breaker's current state, 0 for others.",
        )
        gauge(nm.BREAKER_FAILURE_RATE, [self._rate_callback(0)], "1", "Sliding-window failure rate, 0..1.")
        gauge(
            nm.BREAKER_SLOW_CALL_RATE, [self._rate_callback(1)], "1", "Sliding-window slow-call rate, 0..1."
        )
        gauge(
            nm.STORE_FALLBACK, [self._observe_fallback], "1", "1 while running on local state (Redis down)."
        )

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    @property
    def recording(self) -> bool:
        """False while no ``MeterProvider`` is configured (the API's global default records nothing):
        then this sink does no work at all. Looked at once per stream."""
        return self._explicit or _global_provider_set()

    @property
    def wants_chunk_gaps(self) -> bool:
        return self._gaps and self.recording

    def start(self, stream: StreamStart) -> None:
        return None

    def end(self, record: StreamRecord, handle: Any) -> None:
        if not self.recording:
            return
        st = record.start
        own = _own(st)
        by_outcome = {**own, nm.OUTCOME: record.outcome}
        self.requests.add(1, by_outcome)
        if record.outcome == "rejected":
            for item in record.events:
                if isinstance(item, Rejection):
                    self.rejections.add(1, {**own, nm.REJECT_REASON: item.reason})
                    break
        self.duration.record(record.duration, by_outcome)
        if record.reason is not None:
            self.truncations.add(1, {**own, nm.TRUNCATION_REASON: record.reason})
        if record.error_type is not None:
            self.errors.add(1, {**own, ERROR_TYPE: record.error_type})
        if record.chunks:
            self.chunks.add(record.chunks, own)
            self.max_chunk_gap.record(record.max_gap, own)
        if record.time_to_first_token is not None:
            self.time_to_first_token.record(record.time_to_first_token, own)
        for finish_reason in record.finish_reasons:
            if finish_reason != "error":  # semconv's marker of a missing reason, not one the server sent
                self.finish_reasons.add(1, {**own, nm.FINISH_REASON: finish_reason})
        for token_type, field in _TOKENS:
            tokens = getattr(record, field)
            if tokens:
                self.tokens.add(tokens, {**own, nm.TOKEN_TYPE: token_type})
        semconv = self._semconv
        if semconv is None:  # auto: leave gen_ai.client.* to an official instrumentor recording this call
            semconv = not official_instrumentor_active(st.operation)
        if semconv and record.outcome != "rejected":  # rejected: no GenAI operation was made
            self._record_semconv(record)

    def _record_semconv(self, record: StreamRecord) -> None:
        st = record.start
        attrs: dict[str, AttributeValue] = {
            gen_ai.GEN_AI_OPERATION_NAME: SEMCONV_OPERATION.get(st.operation, st.operation),
            gen_ai.GEN_AI_PROVIDER_NAME: st.provider,
            gen_ai.GEN_AI_REQUEST_MODEL: st.model,
            SERVER_ADDRESS: st.server,
        }
        if st.server_port is not None and st.server != OVERFLOW_LABEL:  # else a port per overflowed server
            attrs[SERVER_PORT] = st.server_port
        if record.response_model and st.model != OVERFLOW_LABEL:
            attrs[gen_ai.GEN_AI_RESPONSE_MODEL] = record.response_model
        if record.error_type is not None:
            attrs[ERROR_TYPE] = record.error_type
        self.operation_duration.record(record.duration, attrs)
        if record.time_to_first_chunk is not None:
            self.time_to_first_chunk.record(record.time_to_first_chunk, attrs)
        record_gap = self.time_per_output_chunk.record
        for gap in record.chunk_gaps:
            record_gap(gap, attrs)
        for token_type, tokens in ((_INPUT, record.input_tokens), (_OUTPUT, record.output_tokens)):
            if tokens is not None:
                self.token_usage.record(tokens, {**attrs, gen_ai.GEN_AI_TOKEN_TYPE: token_type})

    def event(self, stream: StreamStart | None, event: Event, handle: Any) -> None:
        if isinstance(event, (RetryEvent, RateLimitEvent, ResumeEvent)):
            own = _own(stream) if stream is not None else {}
            if isinstance(event, RetryEvent):
                self.retries.add(1, {**own, nm.RETRY_LAYER: event.layer, nm.RETRY_REASON: event.reason})
            elif isinstance(event, RateLimitEvent):
                self.rate_limit_events.add(1, {**own, nm.RATE_LIMIT_KIND: event.kind})
            elif event.result != "started":
                self.resumes.add(
                    1, {**own, nm.RESUME_STRATEGY: event.strategy, nm.RESUME_RESULT: event.result}
                )
        elif isinstance(event, BreakerTransition):
            with self._lock:
                self._states[event.breaker] = event.to_state
            transition = {nm.BREAKER_FROM_STATE: event.from_state, nm.BREAKER_TO_STATE: event.to_state}
            self.transitions.add(1, {nm.BREAKER_NAME: event.breaker, **transition})
        elif isinstance(event, BreakerState):
            with self._lock:
                self._states[event.breaker] = event.state
        elif isinstance(event, BreakerCall):
            counter = self.rejected if event.kind == "rejected" else self.fallbacks
            counter.add(1, {nm.BREAKER_NAME: event.breaker})
        elif isinstance(event, BreakerRates):
            with self._lock:
                self._rates[event.breaker] = (event.failure_rate, event.slow_call_rate)
        elif isinstance(event, StoreError):
            self.store_errors.add(1, {nm.STORE_OPERATION: event.operation})
        elif isinstance(event, StoreFallback):
            self._fallback = 1 if event.active else 0
        # RateLimitHeaders, ChunkEvent, GapEvent, InStreamErrorEvent: nothing (the record has them).

    def close(self) -> None:
        """``uninstrument()``: the breaker gauges stop reporting."""
        with self._lock:
            self._states.clear()
            self._rates.clear()

    def _observe_fallback(self, options: CallbackOptions) -> Iterable[Observation]:
        return [] if self._fallback is None else [Observation(self._fallback)]

    def _observe_states(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            states = list(self._states.items())
        return [
            Observation(int(state == current), {nm.BREAKER_NAME: breaker, nm.BREAKER_STATE: state})
            for breaker, current in states
            for state in BREAKER_STATES
        ]

    def _rate_callback(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                rates = [(breaker, pair[index]) for breaker, pair in self._rates.items()]
            return [Observation(rate, {nm.BREAKER_NAME: b}) for b, rate in rates if not math.isnan(rate)]

        return observe
