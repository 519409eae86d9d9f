"""The Prometheus sink: every metric streamsentinel exports, defined in one place, and how a stream
is recorded.

Naming follows Prometheus conventions: one prefix ``openai_stream_``, base units (seconds),
``_total`` on counters. Every stream series carries ``operation`` (``chat``, ``text_completion``,
``responses``), ``model`` and ``server`` (bounded by the core: past ``max_model_labels`` distinct
values, ``_other``; past ``max_label_sets`` combinations, both ``_other``). Nothing is touched per
chunk: a stream is recorded once, when it ends (and ``openai_stream_in_flight`` goes up at its
start); retries and 429s are counted as they happen.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .. import _forksafe as forksafe
from ._data import (
    BreakerCall,
    BreakerRates,
    BreakerState,
    BreakerTransition,
    DoneMarkerEvent,
    Event,
    PauseEvent,
    RateLimitEvent,
    RateLimitHeaders,
    Rejection,
    ResumeEvent,
    RetryEvent,
    StoreError,
    StoreFallback,
    StreamRecord,
    StreamStart,
)

BASE_LABELS = ("operation", "model", "server")
BREAKER_STATES = ("closed", "open", "half_open", "disabled", "forced_open", "metrics_only")

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0)
GAP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metric families of one ``CollectorRegistry`` (created once per registry)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        b = BASE_LABELS
        kw: dict[str, Any] = {"registry": None}  # registered together, below
        self.requests = Counter(
            "openai_stream_requests_total",
            "Streaming requests by outcome (completed, truncated, failed, abandoned, rejected).",
            [*b, "outcome"],
            **kw,
        )
        self.truncations = Counter(
            "openai_stream_truncations_total",
            "Streams that ended after their 200 without the terminal marker, by reason.",
            [*b, "reason"],
            **kw,
        )
        self.errors = Counter(
            "openai_stream_errors_total",
            "Failed or truncated streams by error_type (see the README's failure taxonomy).",
            [*b, "error_type"],
            **kw,
        )
        self.retries = Counter(
            "openai_stream_retries_total",
            "Retries of streaming requests by layer (sdk, sentinel) and reason.",
            [*b, "layer", "reason"],
            **kw,
        )
        self.rate_limit_events = Counter(
            "openai_stream_rate_limit_events_total",
            "429 responses and in-stream rate-limit errors by kind (requests, tokens, quota, "
            "too_large, in_stream).",
            [*b, "kind"],
            **kw,
        )
        self.finish_reasons = Counter(
            "openai_stream_finish_reasons_total",
            "Finish reasons reported by the server, one per choice.",
            [*b, "finish_reason"],
            **kw,
        )
        self.chunks = Counter("openai_stream_chunks_total", "Items delivered to consumers.", list(b), **kw)
        self.tokens = Counter(
            "openai_stream_tokens_total",
            "Tokens reported in stream usage, by token_type (input, output, reasoning, cached_input).",
            [*b, "token_type"],
            **kw,
        )
        self.ttft = Histogram(
            "openai_stream_time_to_first_token_seconds",
            "Time from the request to the first item carrying output.",
            list(b),
            buckets=TTFT_BUCKETS,
            **kw,
        )
        self.duration = Histogram(
            "openai_stream_duration_seconds",
            "Time from the request to the end of the stream, by outcome.",
            [*b, "outcome"],
            buckets=DURATION_BUCKETS,
            **kw,
        )
        self.max_gap = Histogram(
            "openai_stream_max_chunk_gap_seconds",
            "Longest gap between two consecutive items of a stream (one observation per stream).",
            list(b),
            buckets=GAP_BUCKETS,
            **kw,
        )
        self.in_flight = Gauge(
            "openai_stream_in_flight",
            "Streams opened and not yet ended.",
            list(b),
            multiprocess_mode="livesum",
            **kw,
        )
        self.rl_remaining = Gauge(
            "openai_stream_ratelimit_remaining",
            "x-ratelimit-remaining-* of the latest response, by resource (requests, tokens).",
            [*b, "resource"],
            multiprocess_mode="mostrecent",
            **kw,
        )
        self.rl_limit = Gauge(
            "openai_stream_ratelimit_limit",
            "x-ratelimit-limit-* of the latest response, by resource.",
            [*b, "resource"],
            multiprocess_mode="mostrecent",
            **kw,
        )
        self.rl_reset = Gauge(
            "openai_stream_ratelimit_reset_seconds",
            "x-ratelimit-reset-* of the latest response (time until full), by resource.",
            [*b, "resource"],
            multiprocess_mode="mostrecent",
            **kw,
        )
        self.instrumentation_errors = Counter(
            "openai_stream_instrumentation_errors_total",
            "Failures inside streamsentinel itself, caught before they reached the service, by stage.",
            ["stage"],
            **kw,
        )
        self.resumes = Counter(
            "openai_stream_resumes_total",
            "Streams continued after output had started (resume=replay|responses), by result "
            "(resumed, diverged, failed).",
            [*b, "strategy", "result"],
            **kw,
        )
        self.server_sends_done = Gauge(
            "openai_stream_server_sends_done",
            "Whether the server ends chat/completions streams with data: [DONE] (1) or only with the "
            "finish reasons (0; see the done_marker option). Absent until a stream of it ended.",
            ["server"],
            multiprocess_mode="mostrecent",
            **kw,
        )
        # Circuit breaker (label ``breaker``: the breaker key, bounded by the breaker registry).
        self.circuit_state = Gauge(
            "openai_stream_circuit_state",
            "Circuit breaker state: 1 for the current state, 0 for the others.",
            ["breaker", "state"],
            multiprocess_mode="livemax",
            **kw,
        )
        self.circuit_transitions = Counter(
            "openai_stream_circuit_transitions_total",
            "Circuit breaker state transitions.",
            ["breaker", "from_state", "to_state"],
            **kw,
        )
        self.circuit_rejected = Counter(
            "openai_stream_circuit_rejected_total",
            "Calls rejected by an open circuit breaker (no HTTP request was made).",
            ["breaker"],
            **kw,
        )
        self.circuit_fallbacks = Counter(
            "openai_stream_circuit_fallbacks_total",
            "Rejected calls served by the configured fallback instead.",
            ["breaker"],
            **kw,
        )
        self.circuit_failure_rate = Gauge(
            "openai_stream_circuit_failure_rate",
            "Failure rate of the breaker's sliding window, 0..1 (NaN below the minimum number of calls).",
            ["breaker"],
            multiprocess_mode="mostrecent",
            **kw,
        )
        self.circuit_slow_call_rate = Gauge(
            "openai_stream_circuit_slow_call_rate",
            "Slow-call rate of the breaker's sliding window, 0..1 (NaN below the minimum number of calls).",
            ["breaker"],
            multiprocess_mode="mostrecent",
            **kw,
        )
        # Fleet mode (README "Running a fleet").
        self.rejections = Counter(
            "openai_stream_rejections_total",
            "Requests rejected without an HTTP request, by reason (circuit_open, rate_limit_pause, "
            'quota_pause); each is also an openai_stream_requests_total{outcome="rejected"}.',
            [*b, "reason"],
            **kw,
        )
        self.store_errors = Counter(
            "openai_stream_store_errors_total",
            "Failed calls to the shared state store (Redis), by operation (refresh, lease, write, "
            "queue_full).",
            ["operation"],
            **kw,
        )
        self.store_fallback = Gauge(
            "openai_stream_store_fallback",
            "1 while this process runs on local state because the shared store (Redis) is unreachable.",
            multiprocess_mode="livemax",
            **kw,
        )
        self.rate_limit_paused = Gauge(
            "openai_stream_rate_limit_paused",
            "1 while a fleet-wide pause holds a server/model (kind rate_limit: a 429 with a server "
            "delay; quota: insufficient_quota, model *).",
            ["server", "model", "kind"],
            multiprocess_mode="livemax",
            **kw,
        )
        self.families = [v for v in vars(self).values() if isinstance(v, (Counter, Gauge, Histogram))]
        if registry is not None:
            self.register(registry)

    def register(self, registry: CollectorRegistry) -> None:
        """Register every family, or none: on a collision the ones registered are taken out again
        and the ``ValueError`` propagates (so a later attempt, once the collider is gone, works)."""
        done: list[Any] = []
        try:
            for family in self.families:
                registry.register(family)
                done.append(family)
        except Exception:
            for family in done:
                registry.unregister(family)
            raise


_TOKENS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("reasoning", "reasoning_tokens"),
    ("cached_input", "cached_input_tokens"),
)


def _adder(child: Any) -> Any:
    """``amount -> None`` adding to a counter or gauge child: its value's ``inc``, which is what
    ``Counter.inc``/``Gauge.inc`` call after checks a labelled child of ours always passes (three
    Python frames fewer per update; ``prometheus_client`` keeps the value there, multiprocess mode
    included). Falls back to the public ``inc`` if a release keeps it elsewhere."""
    inc = getattr(getattr(child, "_value", None), "inc", None)
    return inc if callable(inc) else child.inc


class _Bound:
    """The children of one ``(operation, model, server)`` label set, created on first use. The
    children every stream touches are kept in slots, so a stream's end does no key building."""

    __slots__ = (
        "_children",
        "by_outcome",
        "chunks",
        "finish_reasons",
        "in_flight",
        "key",
        "m",
        "max_gap",
        "ttft",
    )

    def __init__(self, m: Metrics, key: tuple[str, str, str]) -> None:
        self.m = m
        self.key = key
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.in_flight: Any = None  # adder, made by the first stream (a plain call has none)
        self.by_outcome: dict[str, tuple[Any, Any]] = {}  # outcome -> (requests adder, duration)
        self.finish_reasons: dict[str, Any] = {}  # reason -> adder
        self.chunks: Any = None  # adder
        self.max_gap: Any = None
        self.ttft: Any = None

    def __call__(self, family: Any, *extra: str) -> Any:
        cache_key = (family, extra)
        child = self._children.get(cache_key)
        if child is None:
            child = self._children[cache_key] = family.labels(*self.key, *extra)
        return child

    def outcome(self, outcome: str) -> tuple[Any, Any]:
        pair = self.by_outcome.get(outcome)
        if pair is None:
            requests = _adder(self(self.m.requests, outcome))
            pair = self.by_outcome[outcome] = (requests, self(self.m.duration, outcome))
        return pair

    def finish_reason(self, reason: str) -> Any:
        add = self.finish_reasons.get(reason)
        if add is None:
            add = self.finish_reasons[reason] = _adder(self(self.m.finish_reasons, reason))
        return add


class PrometheusSink:
    """Records streams, retries, 429s, resumes and breaker events into one registry's families."""

    name = "prometheus"
    wants_chunk_gaps = False

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self._bound: dict[tuple[str, str, str], _Bound] = {}
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def bound(self, stream: StreamStart) -> _Bound:
        key = (stream.operation, stream.model, stream.server)
        bound = self._bound.get(key)
        if bound is None:
            with self._lock:
                bound = self._bound.setdefault(key, _Bound(self.m, key))
        return bound

    def internal_error(self, stage: str) -> None:
        self.m.instrumentation_errors.labels(stage).inc()

    def start(self, stream: StreamStart) -> _Bound:
        bound = self.bound(stream)
        if bound.in_flight is None:
            bound.in_flight = _adder(self.m.in_flight.labels(*bound.key))
        bound.in_flight(1)
        return bound

    def discard(self, stream: StreamStart, bound: _Bound | None) -> None:
        if bound is not None:
            bound.in_flight(-1)

    def end(self, record: StreamRecord, bound: _Bound | None) -> None:
        m = self.m
        if bound is None:  # start() failed: nothing in flight to take back
            bound = self.bound(record.start)
        else:
            bound.in_flight(-1)  # first: whatever follows, the stream is no longer in flight
        outcome = record.outcome
        requests, duration = bound.outcome(outcome)
        requests(1)
        if outcome == "rejected":
            for event in record.events:
                if isinstance(event, Rejection):
                    bound(m.rejections, event.reason).inc()
                    break
        duration.observe(record.duration)
        if record.reason is not None:
            bound(m.truncations, record.reason).inc()
        if record.error_type is not None:
            bound(m.errors, record.error_type).inc()
        if record.chunks:
            if bound.chunks is None:
                bound.chunks, bound.max_gap = _adder(bound(m.chunks)), bound(m.max_gap)
            bound.chunks(record.chunks)
            bound.max_gap.observe(record.max_gap)
        if record.time_to_first_token is not None:
            if bound.ttft is None:
                bound.ttft = bound(m.ttft)
            bound.ttft.observe(record.time_to_first_token)
        for finish_reason in record.finish_reasons:
            if finish_reason != "error":  # semconv's marker of a missing reason, not one the server sent
                bound.finish_reason(finish_reason)(1)
        if (
            record.input_tokens
            or record.output_tokens
            or record.cached_input_tokens
            or record.reasoning_tokens
        ):
            # usage came (the last chunk, when the request asked for it)
            for token_type, field in _TOKENS:
                count = getattr(record, field)
                if count:
                    bound(m.tokens, token_type).inc(count)

    def event(self, stream: StreamStart | None, event: Event, bound: _Bound | None) -> None:
        m = self.m
        if stream is not None:
            b = bound if bound is not None else self.bound(stream)
            if isinstance(event, RetryEvent):
                b(m.retries, event.layer, event.reason).inc()
            elif isinstance(event, RateLimitEvent):
                b(m.rate_limit_events, event.kind).inc()
            elif isinstance(event, RateLimitHeaders):
                for resource, remaining, limit, reset in event.snapshots:
                    if remaining is not None:
                        b(m.rl_remaining, resource).set(remaining)
                    if limit is not None:
                        b(m.rl_limit, resource).set(limit)
                    if reset is not None:
                        b(m.rl_reset, resource).set(reset)
            elif isinstance(event, ResumeEvent) and event.result != "started":
                b(m.resumes, event.strategy, event.result).inc()
            return
        if isinstance(event, DoneMarkerEvent):
            m.server_sends_done.labels(event.server).set(1 if event.sends_done else 0)
        elif isinstance(event, BreakerTransition):
            self._set_state(event.breaker, event.to_state)
            m.circuit_transitions.labels(event.breaker, event.from_state, event.to_state).inc()
        elif isinstance(event, BreakerState):
            self._set_state(event.breaker, event.state)
        elif isinstance(event, BreakerCall):
            family = m.circuit_rejected if event.kind == "rejected" else m.circuit_fallbacks
            family.labels(event.breaker).inc()
        elif isinstance(event, BreakerRates):
            m.circuit_failure_rate.labels(event.breaker).set(event.failure_rate)
            m.circuit_slow_call_rate.labels(event.breaker).set(event.slow_call_rate)
        elif isinstance(event, StoreError):
            m.store_errors.labels(event.operation).inc()
        elif isinstance(event, StoreFallback):
            m.store_fallback.set(1 if event.active else 0)
        elif isinstance(event, PauseEvent):
            m.rate_limit_paused.labels(event.server, event.model, event.kind).set(
                1 if event.seconds > 0 else 0
            )

    def _set_state(self, breaker: str, state: str) -> None:
        for candidate in BREAKER_STATES:
            self.m.circuit_state.labels(breaker, candidate).set(1 if candidate == state else 0)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
_BY_REGISTRY_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _BY_REGISTRY_LOCK
    _BY_REGISTRY_LOCK = threading.Lock()


forksafe.register_function(_after_fork_in_child)


def metrics_for(registry: CollectorRegistry | None) -> Metrics:
    """The ``Metrics`` of ``registry`` (default: the global one), created and registered on first use
    only, so instrumenting again never registers a family twice.

    Raises:
        ValueError: a family's name is already registered by someone else (nothing is left
            registered then).
    """
    registry = REGISTRY if registry is None else registry
    with _BY_REGISTRY_LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = Metrics(registry)
            _BY_REGISTRY[registry] = metrics
        return metrics


def prometheus_sink(registry: CollectorRegistry | None) -> PrometheusSink:
    return PrometheusSink(metrics_for(registry))
