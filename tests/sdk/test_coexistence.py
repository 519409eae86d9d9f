"""Coexistence with another OpenAI instrumentation installed and active (OpenTelemetry's official
``opentelemetry-instrumentation-genai-openai``, entry point ``openai``): in either order, our
metrics count each stream exactly once, the consumer's items are unchanged, the other
instrumentation keeps working, and taking ours out leaves theirs intact."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.resources.chat.completions.completions import Completions
from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import streamsentinel
from streamsentinel.chaos import ChaosServer

from ..support import Telemetry, chat_kwargs, reinstrument


@pytest.fixture
def theirs() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    instrumentor = OpenAIInstrumentor()
    yield instrumentor, InMemorySpanExporter()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def _instrument_theirs(instrumentor: Any, exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor.instrument(tracer_provider=provider)


def stream_text(client: openai.OpenAI) -> tuple[int, str]:
    with client.chat.completions.create(**chat_kwargs()) as stream:
        items = list(stream)
    return len(items), "".join(i.choices[0].delta.content or "" for i in items if i.choices)


@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "theirs-first"])
def test_both_active_count_once_and_keep_working(
    ours_first: bool,
    chaos: ChaosServer,
    client: openai.OpenAI,
    theirs: tuple[Any, InMemorySpanExporter],
) -> None:
    instrumentor, their_spans = theirs
    streamsentinel.uninstrument()
    expected_text = chaos.expected_text(chat_kwargs())
    telemetry: Telemetry
    if ours_first:
        telemetry = reinstrument(retry_attempts=1)
        _instrument_theirs(instrumentor, their_spans)
    else:
        _instrument_theirs(instrumentor, their_spans)
        telemetry = reinstrument(retry_attempts=1)

    items, text = stream_text(client)
    assert text == expected_text
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total") == items
    assert len(telemetry.spans()) == 1
    assert len(their_spans.get_finished_spans()) == 1  # theirs saw the stream too

    # Take ours out: theirs keeps working, our metrics no longer move.
    streamsentinel.uninstrument()
    again_items, again_text = stream_text(client)
    assert (again_items, again_text) == (items, expected_text)
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert len(their_spans.get_finished_spans()) == 2

    # And theirs out too: the plain SDK (no layer of ours left behind once streamsentinel is
    # instrumented and taken out again).
    instrumentor.uninstrument()
    reinstrument(retry_attempts=1)
    streamsentinel.uninstrument()
    assert type(Completions.__dict__["create"]).__name__ == "function"
    with client.chat.completions.create(**chat_kwargs()) as stream:
        assert type(stream) is openai.Stream
        assert "".join(i.choices[0].delta.content or "" for i in stream if i.choices) == expected_text
    assert len(their_spans.get_finished_spans()) == 2
