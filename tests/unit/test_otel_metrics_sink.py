"""The OpenTelemetry metrics sink, on constructed records: semconv histograms (names, units, buckets,
attributes), streamsentinel.* counters and gauges, and the double-counting rule with the official
OpenAI instrumentor. No HTTP, no conftest fixture."""

from __future__ import annotations

import importlib.metadata
import math
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, Metric, NumberDataPoint

from streamsentinel.instrumentation import Sink, _names
from streamsentinel.instrumentation._data import (
    BreakerCall,
    BreakerRates,
    BreakerState,
    BreakerTransition,
    ChunkEvent,
    GapEvent,
    InStreamErrorEvent,
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
from streamsentinel.instrumentation._otel_metrics import OTelMetricsSink, official_instrumentor_active
from streamsentinel.instrumentation._prometheus import Metrics

SEMCONV_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION = "gen_ai.client.operation.duration"
TTFC = "gen_ai.client.operation.time_to_first_chunk"
TPOC = "gen_ai.client.operation.time_per_output_chunk"
TOKENS = "gen_ai.client.token.usage"
GAUGES = (
    "streamsentinel.breaker.state",
    "streamsentinel.breaker.failure_rate",
    "streamsentinel.breaker.slow_call_rate",
)

START = StreamStart(
    operation="chat",
    provider="openai",
    request_model="gpt-4o-mini-raw",
    model="gpt-4o-mini",
    server="api.openai.com",
    server_address="api.openai.com",
    server_port=443,
    start_ns=1_700_000_000_000_000_000,
)
RECORD = StreamRecord(
    start=START,
    outcome="completed",
    error_type=None,
    reason=None,
    error_code=None,
    duration=1.5,
    time_to_first_chunk=0.25,
    time_to_first_token=0.3,
    chunks=4,
    payload_chunks=3,
    max_gap=0.5,
    chunk_gaps=(0.1, 0.5, 0.2),
    finish_reasons=("stop",),
    done_seen=True,
    input_tokens=12,
    output_tokens=34,
    reasoning_tokens=None,
    cached_input_tokens=None,
    request_id="req_1",
    response_id="chatcmpl-1",
    response_model="gpt-4o-mini-2024-07-18",
    sdk_retries=0,
    sentinel_retries=0,
    breaker=None,
    events=(),
    partial_text=None,
    partial_chars=0,
)
SEMCONV_ATTRS = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "server.address": "api.openai.com",
    "server.port": 443,
}
OWN = {
    "streamsentinel.operation": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "server.address": "api.openai.com",
}


def record(start: dict[str, Any] | None = None, **changes: Any) -> StreamRecord:
    """``RECORD`` with ``changes`` (and ``start`` changes applied to its ``StreamStart``)."""
    return RECORD._replace(start=START._replace(**(start or {})), **changes)


class Harness:
    def __init__(self, **kwargs: Any) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.sink = OTelMetricsSink(self.provider, **kwargs)

    def collect(self) -> dict[str, Metric]:
        """streamsentinel's metrics by name (cumulative)."""
        data = self.reader.get_metrics_data()
        out: dict[str, Metric] = {}
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                if scope_metrics.scope.name == "streamsentinel":
                    out.update((m.name, m) for m in scope_metrics.metrics)
        return out

    def histograms(self, name: str) -> dict[frozenset[tuple[str, Any]], HistogramDataPoint]:
        points = self.collect()[name].data.data_points
        assert all(isinstance(p, HistogramDataPoint) for p in points)
        return {frozenset((p.attributes or {}).items()): p for p in points}  # type: ignore[misc]

    def numbers(self, name: str) -> dict[frozenset[tuple[str, Any]], float]:
        points = self.collect()[name].data.data_points
        assert all(isinstance(p, NumberDataPoint) for p in points)
        return {frozenset((p.attributes or {}).items()): p.value for p in points}  # type: ignore[union-attr]


def key(attrs: dict[str, Any]) -> frozenset[tuple[str, Any]]:
    return frozenset(attrs.items())


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.provider.shutdown()


def test_shape_and_scope(h: Harness) -> None:
    assert isinstance(h.sink, Sink)
    assert (h.sink.name, h.sink.wants_chunk_gaps) == ("otel_metrics", True)
    sink: Sink = h.sink
    assert sink.start(START) is None
    h.sink.end(RECORD, None)
    data = h.reader.get_metrics_data()
    assert data is not None
    (scope,) = [s.scope for rm in data.resource_metrics for s in rm.scope_metrics]
    assert scope.name == "streamsentinel"
    assert scope.version == importlib.metadata.version("streamsentinel")
    assert scope.schema_url == "https://opentelemetry.io/schemas/1.37.0"


def test_semconv_histograms_of_a_completed_stream(h: Harness) -> None:
    h.sink.end(RECORD, None)
    metrics = h.collect()
    units = {name: metrics[name].unit for name in (DURATION, TTFC, TPOC, TOKENS)}
    assert units == {DURATION: "s", TTFC: "s", TPOC: "s", TOKENS: "{token}"}

    (duration,) = h.histograms(DURATION).values()
    assert dict(duration.attributes or {}) == SEMCONV_ATTRS
    assert (duration.count, duration.sum, list(duration.explicit_bounds)) == (1, 1.5, SEMCONV_BUCKETS)
    (ttfc,) = h.histograms(TTFC).values()
    assert dict(ttfc.attributes or {}) == SEMCONV_ATTRS
    assert (ttfc.count, ttfc.sum, list(ttfc.explicit_bounds)) == (1, 0.25, SEMCONV_BUCKETS)

    (tpoc,) = h.histograms(TPOC).values()  # one point per gap: 0.1, 0.5, 0.2
    assert dict(tpoc.attributes or {}) == SEMCONV_ATTRS
    assert tpoc.count == 3
    assert tpoc.sum == pytest.approx(0.8)
    assert list(tpoc.explicit_bounds) == SEMCONV_BUCKETS
    expected = [0] * (len(SEMCONV_BUCKETS) + 1)
    for bucket in (4, 5, 6):  # (0.08, 0.16], (0.16, 0.32], (0.32, 0.64]
        expected[bucket] = 1
    assert list(tpoc.bucket_counts) == expected

    tokens = h.histograms(TOKENS)
    assert set(tokens) == {
        key({**SEMCONV_ATTRS, "gen_ai.token.type": "input"}),
        key({**SEMCONV_ATTRS, "gen_ai.token.type": "output"}),
    }
    by_type = {dict(p.attributes or {})["gen_ai.token.type"]: p for p in tokens.values()}
    assert (by_type["input"].count, by_type["input"].sum) == (1, 12)
    assert (by_type["output"].count, by_type["output"].sum) == (1, 34)
    assert list(by_type["input"].explicit_bounds) == TOKEN_BUCKETS


def test_one_time_per_output_chunk_point_per_gap(h: Harness) -> None:
    gaps = tuple(0.001 * (i % 7) for i in range(1000))
    h.sink.end(record(chunk_gaps=gaps, chunks=1001), None)
    h.sink.end(record(chunk_gaps=()), None)
    (tpoc,) = h.histograms(TPOC).values()
    assert tpoc.count == len(gaps)
    assert tpoc.sum == pytest.approx(sum(gaps))
    (duration,) = h.histograms(DURATION).values()
    assert duration.count == 2


def test_failed_stream_carries_error_type(h: Harness) -> None:
    truncated = record(
        outcome="truncated",
        error_type="connection_error",
        reason="connection_lost",
        response_model=None,
        input_tokens=None,
        output_tokens=None,
        time_to_first_chunk=None,
        chunk_gaps=(),
    )
    h.sink.end(truncated, None)
    attrs = {**SEMCONV_ATTRS, "error.type": "connection_error"}
    del attrs["gen_ai.response.model"]
    assert set(h.histograms(DURATION)) == {key(attrs)}
    metrics = h.collect()
    assert TOKENS not in metrics and TTFC not in metrics and TPOC not in metrics
    assert h.numbers("streamsentinel.stream.errors") == {key({**OWN, "error.type": "connection_error"}): 1}
    assert h.numbers("streamsentinel.stream.truncations") == {
        key({**OWN, "streamsentinel.truncation.reason": "connection_lost"}): 1
    }
    assert h.numbers("streamsentinel.stream.requests") == {
        key({**OWN, "streamsentinel.outcome": "truncated"}): 1
    }


def test_rejected_has_no_semconv_metrics_but_a_request_count(h: Harness) -> None:
    rejected = record(
        outcome="rejected",
        duration=0.0001,
        time_to_first_chunk=None,
        time_to_first_token=None,
        chunks=0,
        payload_chunks=0,
        max_gap=0.0,
        chunk_gaps=(),
        finish_reasons=(),
        input_tokens=None,
        output_tokens=None,
        response_model=None,
        breaker="api.openai.com/gpt-4o-mini",
    )
    h.sink.end(rejected, None)
    metrics = h.collect()
    assert not [name for name in metrics if name.startswith("gen_ai.")]
    assert h.numbers("streamsentinel.stream.requests") == {
        key({**OWN, "streamsentinel.outcome": "rejected"}): 1
    }
    (duration,) = h.histograms("streamsentinel.stream.duration").values()  # Prometheus parity
    assert duration.count == 1
    assert "streamsentinel.stream.errors" not in metrics


def test_abandoned_is_recorded_without_error_type(h: Harness) -> None:
    h.sink.end(record(outcome="abandoned", response_model=None), None)
    attrs = dict(SEMCONV_ATTRS)
    del attrs["gen_ai.response.model"]
    assert set(h.histograms(DURATION)) == {key(attrs)}


def test_operations_providers_and_bounded_models(h: Harness) -> None:
    h.sink.end(
        record(start={"operation": "responses", "provider": "azure.ai.openai", "server_port": None}), None
    )
    h.sink.end(record(start={"operation": "text_completion", "model": "_other"}), None)
    responses = {**SEMCONV_ATTRS, "gen_ai.provider.name": "azure.ai.openai"}
    del responses["server.port"]
    legacy = {**SEMCONV_ATTRS, "gen_ai.operation.name": "text_completion", "gen_ai.request.model": "_other"}
    del legacy["gen_ai.response.model"]  # request models overflowed: response models are not kept either
    assert set(h.histograms(DURATION)) == {key(responses), key(legacy)}
    assert h.numbers("streamsentinel.stream.requests") == {
        key({**OWN, "streamsentinel.operation": "responses", "streamsentinel.outcome": "completed"}): 1,
        key(
            {
                **OWN,
                "streamsentinel.operation": "text_completion",
                "gen_ai.request.model": "_other",
                "streamsentinel.outcome": "completed",
            }
        ): 1,
    }


def test_stream_counters(h: Harness) -> None:
    h.sink.end(RECORD, None)
    h.sink.end(record(finish_reasons=("length", "error"), reasoning_tokens=5, cached_input_tokens=0), None)
    h.sink.end(record(outcome="failed", error_type="timeout", chunks=0, time_to_first_token=None), None)
    outcome = "streamsentinel.outcome"
    assert h.numbers("streamsentinel.stream.requests") == {
        key({**OWN, outcome: "completed"}): 2,
        key({**OWN, outcome: "failed"}): 1,
    }
    assert h.numbers("streamsentinel.stream.chunks") == {key(OWN): 8}
    assert h.numbers("streamsentinel.stream.finish_reasons") == {
        key({**OWN, "streamsentinel.finish_reason": "stop"}): 2,
        key({**OWN, "streamsentinel.finish_reason": "length"}): 1,
    }
    token_type = "streamsentinel.token.type"
    assert h.numbers("streamsentinel.stream.tokens") == {
        key({**OWN, token_type: "input"}): 36,
        key({**OWN, token_type: "output"}): 102,
        key({**OWN, token_type: "reasoning"}): 5,
    }
    durations = h.histograms("streamsentinel.stream.duration")
    assert {k: (p.count, p.sum) for k, p in durations.items()} == {
        key({**OWN, outcome: "completed"}): (2, 3.0),
        key({**OWN, outcome: "failed"}): (1, 1.5),
    }
    assert list(durations[key({**OWN, outcome: "failed"})].explicit_bounds)[:2] == [0.1, 0.25]
    (ttft,) = h.histograms("streamsentinel.stream.time_to_first_token").values()
    assert (ttft.count, ttft.sum) == (2, 0.6)
    (max_gap,) = h.histograms("streamsentinel.stream.max_chunk_gap").values()
    assert (max_gap.count, max_gap.sum) == (2, 1.0)
    assert h.collect()["streamsentinel.stream.requests"].unit == "{request}"


def test_stream_events(h: Harness) -> None:
    nonstream = START._replace(streaming=False)
    h.sink.event(START, RetryEvent(at=0.1, layer="sdk", reason="rate_limited", attempt=2, delay=None), None)
    h.sink.event(START, RetryEvent(at=0.2, layer="sentinel", reason="stall", attempt=2, delay=0.5), None)
    h.sink.event(
        nonstream, RetryEvent(at=0.1, layer="sdk", reason="rate_limited", attempt=2, delay=1.0), None
    )
    h.sink.event(START, RateLimitEvent(at=0.1, kind="tokens", status=429), None)
    h.sink.event(START, ResumeEvent(at=1.0, strategy="replay", result="started", reason="stall"), None)
    h.sink.event(START, ResumeEvent(at=1.5, strategy="replay", result="resumed", attempt=1), None)
    layer, reason = "streamsentinel.retry.layer", "streamsentinel.retry.reason"
    assert h.numbers("streamsentinel.stream.retries") == {
        key({**OWN, layer: "sdk", reason: "rate_limited"}): 2,
        key({**OWN, layer: "sentinel", reason: "stall"}): 1,
    }
    assert h.numbers("streamsentinel.stream.rate_limit_events") == {
        key({**OWN, "streamsentinel.rate_limit.kind": "tokens"}): 1
    }
    assert h.numbers("streamsentinel.stream.resumes") == {
        key({**OWN, "streamsentinel.resume.strategy": "replay", "streamsentinel.resume.result": "resumed"}): 1
    }


def test_ignored_events_record_nothing(h: Harness) -> None:
    h.sink.event(START, RateLimitHeaders(at=0.1, snapshots=(("requests", 10, 100, 1.0),)), None)
    h.sink.event(START, ChunkEvent(at=0.2, index=1, gap=None), None)
    h.sink.event(START, GapEvent(at=3.0, gap=2.5), None)
    h.sink.event(START, InStreamErrorEvent(at=3.1, error_type="server_error", code="server_error"), None)
    assert h.collect() == {}


def test_breaker_events_and_gauges(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    breaker = "api.openai.com/gpt-4o-mini"
    name = "streamsentinel.breaker.name"
    h.sink.event(None, BreakerState(breaker=breaker, state="closed"), None)
    h.sink.event(None, BreakerRates(breaker=breaker, failure_rate=math.nan, slow_call_rate=math.nan), None)
    h.sink.event(None, BreakerRates(breaker="other", failure_rate=0.75, slow_call_rate=0.0), None)
    h.sink.event(None, BreakerTransition(breaker=breaker, from_state="closed", to_state="open"), None)
    h.sink.event(None, BreakerCall(breaker=breaker, kind="rejected"), None)
    h.sink.event(None, BreakerCall(breaker=breaker, kind="rejected"), None)
    h.sink.event(None, BreakerCall(breaker=breaker, kind="fallback"), None)
    states = h.numbers("streamsentinel.breaker.state")
    assert len(states) == 6
    assert {dict(k)["streamsentinel.breaker.state"] for k, v in states.items() if v == 1} == {"open"}
    assert h.numbers("streamsentinel.breaker.transitions") == {
        key(
            {
                name: breaker,
                "streamsentinel.breaker.from_state": "closed",
                "streamsentinel.breaker.to_state": "open",
            }
        ): 1
    }
    assert h.numbers("streamsentinel.breaker.rejected") == {key({name: breaker}): 2}
    assert h.numbers("streamsentinel.breaker.fallbacks") == {key({name: breaker}): 1}
    assert h.numbers("streamsentinel.breaker.failure_rate") == {key({name: "other"}): 0.75}
    assert "non-finite" not in caplog.text  # NaN skipped by the sink (the SDK would drop it with a warning)
    assert h.numbers("streamsentinel.breaker.slow_call_rate") == {key({name: "other"}): 0.0}
    assert h.collect()["streamsentinel.breaker.state"].unit == "1"
    h.sink.close()  # uninstrument(): the gauges stop reporting
    assert not [name for name in h.collect() if name in GAUGES]


def _fake_instrumentor(monkeypatch: pytest.MonkeyPatch, module: str, instrumented: bool) -> None:
    instance = types.SimpleNamespace(is_instrumented_by_opentelemetry=instrumented)
    fake = types.ModuleType(module)
    fake.OpenAIInstrumentor = type("OpenAIInstrumentor", (), {"_instance": instance})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module, fake)


def test_official_genai_openai_instrumentor_active_skips_semconv(h: Harness) -> None:
    genai_openai = pytest.importorskip("opentelemetry.instrumentation.genai.openai")
    instrumentor = genai_openai.OpenAIInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        pytest.skip("instrumented by someone else in this process")
    instrumentor.instrument(meter_provider=h.provider)
    try:
        assert official_instrumentor_active("chat") and official_instrumentor_active("responses")
        assert not official_instrumentor_active("text_completion")  # genai-openai does not wrap it
        h.sink.end(RECORD, None)
        h.sink.end(record(start={"operation": "responses"}), None)
        metrics = h.collect()
        assert not [name for name in metrics if name.startswith("gen_ai.")]
        assert h.numbers("streamsentinel.stream.requests") == {
            key({**OWN, "streamsentinel.outcome": "completed"}): 1,
            key({**OWN, "streamsentinel.operation": "responses", "streamsentinel.outcome": "completed"}): 1,
        }
        h.sink.end(record(start={"operation": "text_completion"}), None)
        (duration,) = h.histograms(DURATION).values()
        assert dict(duration.attributes or {})["gen_ai.operation.name"] == "text_completion"
    finally:
        instrumentor.uninstrument()
    assert not official_instrumentor_active("chat")
    h.sink.end(RECORD, None)
    assert len(h.histograms(DURATION)) == 2


def test_openai_v2_instrumentor_covers_every_operation(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_instrumentor(monkeypatch, "opentelemetry.instrumentation.openai_v2", instrumented=False)
    h.sink.end(RECORD, None)
    assert len(h.histograms(DURATION)) == 1
    _fake_instrumentor(monkeypatch, "opentelemetry.instrumentation.openai_v2", instrumented=True)
    for operation in ("chat", "text_completion", "responses"):
        assert official_instrumentor_active(operation)
        h.sink.end(record(start={"operation": operation}), None)
    (duration,) = h.histograms(DURATION).values()
    assert duration.count == 1  # only the one recorded before it was active
    assert sum(h.numbers("streamsentinel.stream.requests").values()) == 4


def test_semconv_switch_overrides_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_instrumentor(monkeypatch, "opentelemetry.instrumentation.openai_v2", instrumented=True)
    forced = Harness(semconv_metrics=True)
    forced.sink.end(RECORD, None)
    assert forced.histograms(DURATION) and forced.histograms(TPOC)
    monkeypatch.delitem(sys.modules, "opentelemetry.instrumentation.openai_v2")
    off = Harness(semconv_metrics=False)
    assert off.sink.wants_chunk_gaps is False
    off.sink.end(RECORD, None)
    metrics = off.collect()
    assert not [name for name in metrics if name.startswith("gen_ai.")]
    assert "streamsentinel.stream.requests" in metrics
    forced.provider.shutdown()
    off.provider.shutdown()


def otlp_family(kind: str, name: str, unit: str) -> str:
    """The Prometheus family an OTel instrument becomes through OTLP (Prometheus' own OTLP receiver
    and the Collector's ``prometheus``/``prometheusremotewrite`` exporters, default translation):
    invalid characters -> ``_``, ``{...}`` units dropped, ``s`` -> ``_seconds``, unit ``1`` ->
    ``_ratio`` on gauges only, ``_total`` on monotonic counters."""
    family = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    unit = re.sub(r"\{[^}]*\}", "", unit)
    suffix = "ratio" if kind == "gauge" and unit == "1" else {"s": "seconds", "1": ""}.get(unit, unit)
    if suffix and not family.endswith("_" + suffix):
        family += "_" + suffix
    return family + "_total" if kind == "counter" else family


class _Creations:
    """A meter that notes each instrument ``OTelMetricsSink`` creates: ``(kind, name, unit)``."""

    def __init__(self) -> None:
        self.created: list[tuple[str, str, str]] = []

    def get_meter(self, *args: Any, **kwargs: Any) -> _Creations:
        return self

    def _note(self, kind: str, name: str, unit: str) -> None:
        self.created.append((kind, name, unit))

    def create_counter(self, name: str, unit: str = "", description: str = "") -> None:
        self._note("counter", name, unit)

    def create_histogram(self, name: str, unit: str = "", description: str = "", **kwargs: Any) -> None:
        self._note("histogram", name, unit)

    def create_observable_gauge(
        self, name: str, callbacks: Any = None, unit: str = "", description: str = ""
    ) -> None:
        self._note("gauge", name, unit)


def _prometheus_families() -> dict[str, tuple[str, ...]]:
    """The Prometheus sink's families as exposed (``_total`` on counters) -> their label names."""
    out: dict[str, tuple[str, ...]] = {}
    for family in Metrics(None).families:
        exposed = family._name + ("_total" if family._type == "counter" else "")
        out[exposed] = tuple(family._labelnames)
    return out


def test_every_own_instrument_maps_onto_a_prometheus_family_as_documented() -> None:
    """Issue 17, naming: each ``streamsentinel.*`` instrument has a Prometheus twin (the family the
    shipped dashboard and alerts query), every attribute it records has that family's label, and
    docs/metrics.md lists both mappings with the family name an OTLP export really yields."""
    creations = _Creations()
    OTelMetricsSink(creations, semconv_metrics=True)  # type: ignore[arg-type]
    own = [c for c in creations.created if c[1].startswith("streamsentinel.")]
    families = _prometheus_families()
    assert {name for _, name, _ in own} == set(_names.PROMETHEUS_TWINS)
    assert set(_names.PROMETHEUS_TWINS.values()) <= set(families)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    for kind, name, unit in own:
        row = f"| `{name}` | `{otlp_family(kind, name, unit)}` | `{_names.PROMETHEUS_TWINS[name]}` |"
        assert row in docs
    for attribute, label in _names.PROMETHEUS_LABELS.items():
        assert f"| `{attribute}` | `{label}` |" in docs
    alone = docs.split("Prometheus families with no OTel twin")[1].split("\n\n")[0]
    assert set(re.findall(r"`(\w+)`", alone)) == set(families) - set(_names.PROMETHEUS_TWINS.values())
    # Every attribute the sink records on its own instruments is the twin family's label.
    h = Harness()
    h.sink.end(RECORD._replace(outcome="truncated", reason="stall", error_type="stall"), None)
    h.sink.end(RECORD._replace(outcome="rejected", events=(Rejection(reason="circuit_open"),)), None)
    h.sink.event(START, RetryEvent(at=0.1, layer="sdk", reason="rate_limited", attempt=2, delay=None), None)
    h.sink.event(START, RateLimitEvent(at=0.1, kind="tokens", status=429), None)
    h.sink.event(START, ResumeEvent(at=1.5, strategy="replay", result="resumed", attempt=1), None)
    h.sink.event(None, BreakerTransition(breaker="b", from_state="closed", to_state="open"), None)
    h.sink.event(None, BreakerRates(breaker="b", failure_rate=0.5, slow_call_rate=0.0), None)
    h.sink.event(None, BreakerCall(breaker="b", kind="rejected"), None)
    h.sink.event(None, BreakerCall(breaker="b", kind="fallback"), None)
    h.sink.event(None, StoreError(operation="refresh"), None)
    h.sink.event(None, StoreFallback(active=True), None)
    seen = {name: metric for name, metric in h.collect().items() if name.startswith("streamsentinel.")}
    assert set(seen) == set(_names.PROMETHEUS_TWINS)  # every instrument recorded once at least
    for name, metric in seen.items():
        labels = families[_names.PROMETHEUS_TWINS[name]]
        for point in metric.data.data_points:
            assert {_names.PROMETHEUS_LABELS[a] for a in point.attributes or {}} <= set(labels), name
    h.provider.shutdown()
