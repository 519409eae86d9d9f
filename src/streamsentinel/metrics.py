"""Every Prometheus metric streamsentinel exports, defined in one place, and how a stream is recorded.

Naming follows Prometheus conventions: one prefix ``openai_stream_``, base units (seconds), ``_total``
on counters. Every series carries ``operation`` (``chat``, ``text_completion``, ``responses``),
``model`` (the request's model, bounded: past ``max_model_labels`` distinct values, ``_other``) and
``server`` (the host of the client's base URL, bounded the same way). No metric is touched per chunk:
a stream is recorded once, when it ends.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .observation import StreamObservation
    from .ratelimit import RateLimitSnapshot

BASE_LABELS = ("operation", "model", "server")
OTHER = "_other"

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0)
GAP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BoundedLabel:
    """Admits the first ``limit`` distinct values of a label; later ones become ``_other``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
            return value


class Metrics:
    """The metric families of one ``CollectorRegistry`` (created once per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        b = BASE_LABELS
        kw: dict[str, Any] = {"registry": registry}
        self.requests = Counter(
            "openai_stream_requests_total",
            "Streaming requests by outcome (completed, truncated, failed, abandoned; rejected later).",
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
        self._bound: dict[tuple[str, str, str], BoundMetrics] = {}
        self._lock = threading.Lock()

    def bind(self, operation: str, model: str, server: str) -> BoundMetrics:
        """The pre-bound children for one label set (cached; label values must be bounded)."""
        key = (operation, model, server)
        bound = self._bound.get(key)
        if bound is None:
            with self._lock:
                bound = self._bound.get(key)
                if bound is None:
                    bound = self._bound[key] = BoundMetrics(self, key)
        return bound


class BoundMetrics:
    """Children of the metrics for one ``(operation, model, server)``, bound once and cached, so
    recording a stream costs no label lookup."""

    __slots__ = ("_by_label", "families", "key")

    def __init__(self, metrics: Metrics, key: tuple[str, str, str]) -> None:
        self.families = metrics
        self.key = key
        # (family, extra label values) -> child, created on first use: a label set seen only by
        # non-streaming calls (429s, retries) gets no empty stream series.
        self._by_label: dict[tuple[Any, tuple[str, ...]], Any] = {}

    @property
    def in_flight(self) -> Any:
        return self.child(self.families.in_flight)

    def child(self, family: Any, *extra: str) -> Any:
        """The child of ``family`` for this label set plus ``extra`` label values (cached)."""
        cache_key = (family, extra)
        child = self._by_label.get(cache_key)
        if child is None:
            child = self._by_label[cache_key] = family.labels(*self.key, *extra)
        return child

    def record_stream(self, obs: StreamObservation, end: float) -> None:
        """Record a finished stream: one call per metric, never per chunk."""
        m = self.families
        child = self.child
        outcome = obs.outcome or "completed"
        child(m.requests, outcome).inc()
        child(m.duration, outcome).observe(end - obs.start)
        if obs.reason is not None:
            child(m.truncations, obs.reason).inc()
        if obs.error_type is not None:
            child(m.errors, obs.error_type).inc()
        if obs.chunks:
            child(m.chunks).inc(obs.chunks)
            child(m.max_gap).observe(obs.max_gap)
        if obs.first_at is not None:
            child(m.ttft).observe(obs.first_at - obs.start)
        for finish_reason in obs.finish_reasons.values():
            child(m.finish_reasons, finish_reason).inc()
        for token_type, count in (
            ("input", obs.input_tokens),
            ("output", obs.output_tokens),
            ("reasoning", obs.reasoning_tokens),
            ("cached_input", obs.cached_tokens),
        ):
            if count:
                child(m.tokens, token_type).inc(count)
        self.in_flight.dec()

    def record_retry(self, layer: str, reason: str) -> None:
        self.child(self.families.retries, layer, reason).inc()

    def record_resume(self, strategy: str, result: str) -> None:
        self.child(self.families.resumes, strategy, result).inc()

    def record_rate_limit(self, kind: str) -> None:
        self.child(self.families.rate_limit_events, kind).inc()

    def record_rate_limit_headers(self, snapshots: list[RateLimitSnapshot]) -> None:
        m = self.families
        for snap in snapshots:
            if snap.remaining is not None:
                self.child(m.rl_remaining, snap.resource).set(snap.remaining)
            if snap.limit is not None:
                self.child(m.rl_limit, snap.resource).set(snap.limit)
            if snap.reset_seconds is not None:
                self.child(m.rl_reset, snap.resource).set(snap.reset_seconds)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
_BY_REGISTRY_LOCK = threading.Lock()


def metrics_for(registry: CollectorRegistry | None) -> Metrics:
    """The ``Metrics`` of ``registry`` (default: the global one), created on first use only, so
    instrumenting again never registers a family twice."""
    registry = REGISTRY if registry is None else registry
    with _BY_REGISTRY_LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = Metrics(registry)
        return metrics
