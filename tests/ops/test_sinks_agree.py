"""The Prometheus and OpenTelemetry metrics sinks record the same streams the same way: the demo's
default plan (every fault, sync and async, chat and Responses) through the real SDK, one run, both
sinks and a recording sink side by side; durations, token counts and outcomes agree stream for
stream (as sums and counts per outcome and token type, which is what each backend keeps)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import streamsentinel
from streamsentinel.chaos import ChaosServer, FaultPlan
from streamsentinel.demo.workload import run_workload
from streamsentinel.testing import RecordingSink, settle

from ..support import TIMEOUT

REQUESTS = 80


def _prometheus(registry: CollectorRegistry, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return {k: v for k, v in out.items() if v}


def _otel_points(reader: InMemoryMetricReader, name: str) -> Iterator[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    yield from metric.data.data_points


def _otel(reader: InMemoryMetricReader, name: str, attribute: str, field: str = "value") -> dict[str, float]:
    out: dict[str, float] = {}
    for point in _otel_points(reader, name):
        key = str((point.attributes or {}).get(attribute, ""))
        out[key] = out.get(key, 0.0) + getattr(point, field)
    return {k: v for k, v in out.items() if v}


@pytest.fixture
def run() -> Iterator[tuple[CollectorRegistry, InMemoryMetricReader, RecordingSink]]:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    recording = RecordingSink()
    streamsentinel.uninstrument()
    streamsentinel.instrument(
        registry=registry,
        meter_provider=MeterProvider(metric_readers=[reader]),
        sinks=[recording],
        retry_attempts=1,
        on_truncation="record",
    )
    try:
        with ChaosServer(FaultPlan.default(7), seed=7) as server:
            run_workload(
                requests=REQUESTS,
                concurrency=4,
                make_sync=lambda: openai.OpenAI(
                    base_url=server.base_url, api_key="k", timeout=TIMEOUT, max_retries=0
                ),
                make_async=lambda: openai.AsyncOpenAI(
                    base_url=server.base_url, api_key="k", timeout=TIMEOUT, max_retries=0
                ),
                model="gpt-4o-mini",
                on_done=lambda result: None,
            )
            settle()
        yield registry, reader, recording
    finally:
        streamsentinel.uninstrument()


def test_prometheus_and_otel_metrics_agree_on_every_stream(
    run: tuple[CollectorRegistry, InMemoryMetricReader, RecordingSink],
) -> None:
    registry, reader, recording = run
    records = recording.records
    assert len(records) == REQUESTS
    outcomes = Counter(r.outcome for r in records)
    assert len(outcomes) >= 3, outcomes  # the default plan breaks streams in several ways

    # Outcomes: one count per stream, in both.
    assert _prometheus(registry, "openai_stream_requests_total", "outcome") == dict(outcomes)
    assert _otel(reader, "streamsentinel.stream.requests", "streamsentinel.outcome") == dict(outcomes)

    # Durations: the same values, per outcome (sum and count).
    durations: dict[str, float] = {}
    for r in records:
        durations[r.outcome] = durations.get(r.outcome, 0.0) + r.duration
    prom_sum = _prometheus(registry, "openai_stream_duration_seconds_sum", "outcome")
    prom_count = _prometheus(registry, "openai_stream_duration_seconds_count", "outcome")
    otel_sum = _otel(reader, "streamsentinel.stream.duration", "streamsentinel.outcome", "sum")
    otel_count = _otel(reader, "streamsentinel.stream.duration", "streamsentinel.outcome", "count")
    assert prom_count == otel_count == dict(outcomes)
    assert prom_sum == pytest.approx(durations, rel=1e-9)
    assert otel_sum == pytest.approx(durations, rel=1e-9)
    # The semconv duration: every stream that made a GenAI call (all here: no breaker rejection).
    semconv = list(_otel_points(reader, "gen_ai.client.operation.duration"))
    assert sum(p.count for p in semconv) == REQUESTS
    assert sum(p.sum for p in semconv) == pytest.approx(sum(durations.values()), rel=1e-9)

    # Tokens: what the server reported, per type.
    tokens = {
        "input": sum(r.input_tokens or 0 for r in records),
        "output": sum(r.output_tokens or 0 for r in records),
    }
    assert tokens["input"] > 0 and tokens["output"] > 0
    prom_tokens = _prometheus(registry, "openai_stream_tokens_total", "token_type")
    assert {k: prom_tokens[k] for k in tokens} == tokens
    semconv_tokens = _otel(reader, "gen_ai.client.token.usage", "gen_ai.token.type", "sum")
    assert semconv_tokens == tokens

    # Truncations and chunks.
    reasons = Counter(r.reason for r in records if r.reason is not None)
    assert _prometheus(registry, "openai_stream_truncations_total", "reason") == dict(reasons)
    assert _otel(reader, "streamsentinel.stream.truncations", "streamsentinel.truncation.reason") == dict(
        reasons
    )
    chunks = sum(r.chunks for r in records)
    assert _prometheus(registry, "openai_stream_chunks_total", "") == {"": chunks}
    assert sum(_otel(reader, "streamsentinel.stream.chunks", "").values()) == chunks
    # time_per_output_chunk: one value per gap between consecutive items, over every stream.
    gaps = list(_otel_points(reader, "gen_ai.client.operation.time_per_output_chunk"))
    assert sum(p.count for p in gaps) == sum(max(r.chunks - 1, 0) for r in records)
