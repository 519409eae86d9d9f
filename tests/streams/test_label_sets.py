"""The label sets (server, model) are bounded as a whole: past ``max_label_sets`` distinct pairs, a
new pair is counted under (``_other``, ``_other``), in Prometheus, in the OTel metrics sink and in
the breakers keyed by server/model, over real loopback streams from many servers and models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from streamsentinel.chaos import ChaosServer

from ..support import TIMEOUT, Telemetry, chat_kwargs, reinstrument

OTHER = "_other"
ITEMS = 4  # role chunk, one content chunk, finish chunk, usage chunk (chunks=1)


@contextlib.contextmanager
def servers(count: int) -> Iterator[list[ChaosServer]]:
    """``count`` fault servers, each on its own loopback address (127.0.0.2, 127.0.0.3...): the
    server label is the host, so each is a distinct ``server``."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(ChaosServer(host=f"127.0.0.{i + 2}", chunks=1)) for i in range(count)]


def otel_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def prometheus_pairs(telemetry: Telemetry) -> dict[tuple[str, str], float]:
    """``openai_stream_requests_total`` per (server, model)."""
    out: dict[tuple[str, str], float] = {}
    for family in telemetry.registry.collect():
        for sample in family.samples:
            if sample.name == "openai_stream_requests_total":
                pair = (sample.labels["server"], sample.labels["model"])
                out[pair] = out.get(pair, 0.0) + sample.value
    return out


def expected(hosts: list[str], models: list[str], bound: int) -> tuple[set[tuple[str, str]], int]:
    """The pairs admitted when every host streams every model, host by host, and the overflow."""
    pairs = [(host, model) for host in hosts for model in models]
    return set(pairs[:bound]), len(pairs) - bound


def test_label_sets_are_bounded_as_a_whole() -> None:
    """Issue 15, defect 12: 30 servers x 30 models against max_label_sets=50 make 51 label sets
    (50 and the overflow) in Prometheus, the OTel sink and the breakers, and keep every count."""
    hosts, models, bound = [f"127.0.0.{i + 2}" for i in range(30)], [f"model-{j}" for j in range(30)], 50
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    with servers(len(hosts)) as started, contextlib.ExitStack() as stack:
        telemetry = reinstrument(max_label_sets=bound, meter_provider=meters)
        sent = 0
        for server in started:
            client = stack.enter_context(
                openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT)
            )
            for model in models:
                assert len(list(client.chat.completions.create(**chat_kwargs(model=model)))) == ITEMS
                sent += 1
    admitted, overflow = expected(hosts, models, bound)

    by_pair = prometheus_pairs(telemetry)
    assert set(by_pair) == admitted | {(OTHER, OTHER)}
    assert by_pair.pop((OTHER, OTHER)) == overflow
    assert set(by_pair.values()) == {1.0}
    assert sum(by_pair.values()) + overflow == sent == 900
    # Every stream family keeps the same 51 label sets (chunks counted for every stream).
    chunks = telemetry.by("openai_stream_chunks_total", "server")
    assert sum(chunks.values()) == sent * ITEMS
    assert chunks[OTHER] == overflow * ITEMS

    requests = otel_points(reader, "streamsentinel.stream.requests")
    assert all(isinstance(p, NumberDataPoint) for p in requests)
    otel_pairs = {(p.attributes["server.address"], p.attributes["gen_ai.request.model"]) for p in requests}
    assert otel_pairs == admitted | {(OTHER, OTHER)}
    assert len(requests) == bound + 1  # one outcome
    assert sum(p.value for p in requests) == sent
    # The semconv histograms too: the overflow drops server.port, which would multiply it again.
    durations = otel_points(reader, "gen_ai.client.operation.duration")
    assert len(durations) == bound + 1
    assert sum(p.count for p in durations) == sent
    assert [dict(p.attributes) for p in durations if p.attributes["server.address"] == OTHER] == [
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": OTHER,
            "server.address": OTHER,
        }
    ]

    breakers = {b.name for b in telemetry.runtime.circuits.store.breakers()}
    assert breakers == {f"{host}/{model}" for host, model in admitted} | {f"{OTHER}/{OTHER}"}
    meters.shutdown()


async def test_label_sets_are_bounded_for_async_streams() -> None:
    """Issue 15, defect 12: the same bound for AsyncOpenAI streams (3 servers x 3 models, bound 4)."""
    hosts, models, bound = [f"127.0.0.{i + 2}" for i in range(3)], ["a", "b", "c"], 4
    with servers(len(hosts)) as started:
        telemetry = reinstrument(max_label_sets=bound)
        for server in started:
            async with openai.AsyncOpenAI(
                base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
            ) as client:
                for model in models:
                    stream = await client.chat.completions.create(**chat_kwargs(model=model))
                    assert len([item async for item in stream]) == ITEMS
    admitted, overflow = expected(hosts, models, bound)
    by_pair = prometheus_pairs(telemetry)
    assert set(by_pair) == admitted | {(OTHER, OTHER)}
    assert by_pair[(OTHER, OTHER)] == overflow == 5
    assert sum(by_pair.values()) == 9


def test_max_label_sets_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15, defect 12: the bound defaults to 500 and reads STREAMSENTINEL_MAX_LABEL_SETS."""
    from streamsentinel._core.config import resolve

    assert resolve({}).max_label_sets == 500
    monkeypatch.setenv("STREAMSENTINEL_MAX_LABEL_SETS", "7")
    assert resolve({}).max_label_sets == 7
    assert resolve({"max_label_sets": 9}).max_label_sets == 9
    with pytest.raises(ValueError):
        resolve({"max_label_sets": 0})
