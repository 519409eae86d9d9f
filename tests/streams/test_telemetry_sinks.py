"""What each sink exports for real streams: the OpenTelemetry span (GenAI attributes, events), the
structlog lines, the Prometheus series; that content and secrets stay out of all of them by default;
and that a failing sink never reaches the consumer."""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import openai
import pytest
import structlog
from openai.types.chat import ChatCompletionChunk
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, NoOpTracerProvider, Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace import TracerProvider as ApiTracerProvider
from prometheus_client import CollectorRegistry

import streamsentinel.testing
from streamsentinel import StreamTruncatedError
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

from ..defect_servers import DONE, Gate, ScriptedServer, chat_chunk, sse
from ..scripted import (
    APIS,
    HELLO,
    ITEMS,
    MODES,
    RETRYING,
    ROLE,
    instrument_with,
    instrumentation_errors,
    request,
    run,
)
from ..support import (
    MODEL,
    OBSERVE_ONLY,
    TIMEOUT,
    Telemetry,
    chat_kwargs,
    chat_text,
    reinstrument,
    responses_kwargs,
)

CHAT_ITEMS = 8  # role chunk, 5 content chunks, finish chunk, usage chunk
AFTER = 3
CUT = {"x-chaos-fault": "eof_chunked", "x-chaos-after": str(AFTER)}
API_KEY = "sk-proj-streamsentinel-SECRET-7f3a9c0d1e2b"

EventDict = MutableMapping[str, Any]


@pytest.fixture
def secret_client(chaos: ChaosServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=chaos.base_url, api_key=API_KEY, max_retries=0, timeout=TIMEOUT) as c:
        yield c


def open_chat(client: openai.OpenAI, **extra: Any) -> openai.Stream[ChatCompletionChunk]:
    stream = client.chat.completions.create(**chat_kwargs(**extra))
    assert isinstance(stream, openai.Stream)
    return stream


def consume_cut(client: openai.OpenAI) -> list[ChatCompletionChunk]:
    items: list[ChatCompletionChunk] = []
    stream = open_chat(client, extra_headers=CUT)
    with pytest.raises(StreamTruncatedError):
        for item in stream:
            items.append(item)
    assert len(items) == AFTER
    return items


def attrs(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    assert mapping is not None
    return dict(mapping)


def span_strings(span: ReadableSpan) -> list[str]:
    """Every string value on the span: attributes, event names and event attributes."""
    values: list[Any] = [span.name, *attrs(span.attributes).values()]
    for event in span.events:
        values.append(event.name)
        values.extend(attrs(event.attributes).values())
    out: list[str] = []
    for value in values:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, (tuple, list)):
            out.extend(v for v in value if isinstance(v, str))
    return out


def content_pieces(items: list[ChatCompletionChunk]) -> list[str]:
    pieces = [c.choices[0].delta.content or "" for c in items if c.choices]
    return [p for p in pieces if p.strip()]


def assert_no_content(strings: list[str], items: list[ChatCompletionChunk]) -> None:
    text = chat_text(items)
    assert text
    for s in strings:
        assert text not in s
        for piece in content_pieces(items):
            assert piece not in s, (piece, s)


def events_named(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [attrs(e.attributes) for e in span.events if e.name == name]


def go_seconds(text: str) -> float:
    """An independent reading of a Go duration (only the shapes the chaos server emits)."""
    assert re.fullmatch(r"(\d+h)?(\d+m(?!s))?([\d.]+(ms|s))?", text), text
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", text))


# -- spans ---------------------------------------------------------------------------------------


def test_chat_span(chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI) -> None:
    items = list(open_chat(client, temperature=0.5, max_tokens=100))
    record = chaos.wait_for_records(1)[0]
    assert record.usage is not None
    span = telemetry.only_span()
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    a = attrs(span.attributes)
    first_chunk = a.pop("gen_ai.response.time_to_first_chunk")
    max_gap = a.pop("streamsentinel.max_chunk_gap")
    ttft = a.pop("streamsentinel.time_to_first_token")
    details = record.usage.get("completion_tokens_details") or {}
    cached = (record.usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    assert a == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.stream": True,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.max_tokens": 100,
        "gen_ai.response.model": items[0].model,
        "gen_ai.response.id": items[0].id,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": record.usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": record.usage["completion_tokens"],
        "gen_ai.usage.cache_read.input_tokens": cached,
        "gen_ai.usage.reasoning.output_tokens": details.get("reasoning_tokens"),
        "server.address": "127.0.0.1",
        "server.port": chaos.port,
        "streamsentinel.outcome": "completed",
        "streamsentinel.chunk.count": CHAT_ITEMS,
        "streamsentinel.done_seen": True,
        "streamsentinel.request_id": record.request_id,
    }
    assert span.start_time is not None and span.end_time is not None
    # Semconv: the first chunk of any kind (the role chunk); the first output token comes with or
    # after it.
    assert 0 < first_chunk <= ttft <= (span.end_time - span.start_time) / 1e9
    assert 0 <= max_gap <= (span.end_time - span.start_time) / 1e9
    # Default chunk_events="anomalies": no event on a clean, fast stream.
    assert list(span.events) == []


def test_responses_span(chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI) -> None:
    stream = client.responses.create(**responses_kwargs())
    assert isinstance(stream, openai.Stream)
    events = list(stream)
    record = chaos.wait_for_records(1)[0]
    assert record.usage is not None
    span = telemetry.only_span()
    assert span.name == f"chat {MODEL}"
    a = attrs(span.attributes)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.response.id"] == record.response_id
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.input_tokens"] == record.usage["input_tokens"]
    assert a["gen_ai.usage.output_tokens"] == record.usage["output_tokens"]
    assert a["streamsentinel.chunk.count"] == len(events)
    assert a["streamsentinel.outcome"] == "completed"
    assert "gen_ai.response.time_to_first_chunk" in a


def test_truncated_span(telemetry: Telemetry, client: openai.OpenAI) -> None:
    consume_cut(client)
    span = telemetry.only_span()
    assert span.status.status_code is StatusCode.ERROR
    a = attrs(span.attributes)
    assert a["streamsentinel.outcome"] == "truncated"
    assert a["streamsentinel.truncation.reason"] == "eof_before_done"
    assert a["error.type"] == "truncated"
    assert a["streamsentinel.done_seen"] is False
    # Semconv: a finish reason expected but never received reports "error" for its position.
    assert a["gen_ai.response.finish_reasons"] == ("error",)
    assert events_named(span, "streamsentinel.truncated") == [
        {"streamsentinel.truncation.reason": "eof_before_done", "streamsentinel.chunk.count": AFTER}
    ]
    assert [e.name for e in span.events] == ["streamsentinel.truncated"]


@pytest.mark.parametrize(("chunk_events", "expected"), [("all", 1), ("anomalies", 0), ("none", 0)])
def test_chunk_events(telemetry: Telemetry, client: openai.OpenAI, chunk_events: str, expected: int) -> None:
    telemetry = reinstrument(chunk_events=chunk_events)
    list(open_chat(client))
    span = telemetry.only_span()
    timeline = events_named(span, "streamsentinel.chunks")
    assert len(timeline) == expected
    # One event for the stream, never one per chunk (the SDK keeps only 128 events a span).
    assert [e.name for e in span.events] == ["streamsentinel.chunks"] * expected
    if expected:
        assert set(timeline[0]) == {"streamsentinel.chunk.offsets"}  # no content by default
        assert len(timeline[0]["streamsentinel.chunk.offsets"]) == CHAT_ITEMS


def test_chunk_offsets_are_the_chunk_times_of_the_record(telemetry: Telemetry, client: openai.OpenAI) -> None:
    telemetry = reinstrument(chunk_events="all")
    with streamsentinel.testing.capture() as records:
        list(open_chat(client))
    (record,) = records
    span = telemetry.only_span()
    (event,) = [e for e in span.events if e.name == "streamsentinel.chunks"]
    assert event.attributes is not None
    offsets: Any = event.attributes["streamsentinel.chunk.offsets"]
    assert record.time_to_first_chunk is not None and len(record.chunk_gaps) == CHAT_ITEMS - 1
    assert offsets[0] == record.time_to_first_chunk
    assert offsets[0] == (span.attributes or {})["gen_ai.response.time_to_first_chunk"]
    assert [b - a for a, b in itertools.pairwise(offsets)] == pytest.approx(record.chunk_gaps, abs=1e-9)
    assert list(offsets) == sorted(offsets)
    assert span.start_time is not None and span.end_time is not None
    # The event is stamped with the last chunk's time.
    assert event.timestamp == span.start_time + int(offsets[-1] * 1e9) <= span.end_time


def test_chunk_offsets_keep_every_chunk_of_a_long_stream(telemetry: Telemetry, client: openai.OpenAI) -> None:
    telemetry = reinstrument(chunk_events="all")
    items = list(open_chat(client, extra_headers={"x-chaos-chunks": "300"}))
    assert len(items) == 303  # role, 300 content chunks, finish, usage
    (event,) = events_named(telemetry.only_span(), "streamsentinel.chunks")
    assert len(event["streamsentinel.chunk.offsets"]) == 303


def test_no_content_on_spans_by_default(telemetry: Telemetry, client: openai.OpenAI) -> None:
    telemetry = reinstrument(chunk_events="all")
    clean = list(open_chat(client))
    cut = consume_cut(client)
    spans = telemetry.spans()
    assert len(spans) == 2
    assert_no_content(span_strings(spans[0]), clean)
    assert_no_content(span_strings(spans[1]), cut)
    assert all(
        "streamsentinel.partial_text" not in e for e in events_named(spans[1], "streamsentinel.truncated")
    )


def test_content_on_spans_only_with_capture_content(telemetry: Telemetry, client: openai.OpenAI) -> None:
    telemetry = reinstrument(capture_content=True)
    cut = consume_cut(client)
    span = telemetry.only_span()
    assert events_named(span, "streamsentinel.truncated") == [
        {
            "streamsentinel.truncation.reason": "eof_before_done",
            "streamsentinel.chunk.count": AFTER,
            "streamsentinel.partial_text": chat_text(cut),
        }
    ]


def test_chunk_texts_are_each_chunks_own_text(telemetry: Telemetry, client: openai.OpenAI) -> None:
    telemetry = reinstrument(capture_content=True, chunk_events="all")
    items = list(open_chat(client))
    (event,) = events_named(telemetry.only_span(), "streamsentinel.chunks")
    own = [(item.choices[0].delta.content or "") if item.choices else "" for item in items]
    assert list(event["streamsentinel.chunk.texts"]) == own
    assert len(event["streamsentinel.chunk.offsets"]) == len(items) == CHAT_ITEMS


# -- structlog -----------------------------------------------------------------------------------


def only(logs: list[EventDict], event: str) -> EventDict:
    found = [e for e in logs if e["event"] == event]
    assert len(found) == 1, [e["event"] for e in logs]
    return found[0]


def test_finished_log_line(chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI) -> None:
    with structlog.testing.capture_logs() as logs:
        items = list(open_chat(client))
    record = chaos.wait_for_records(1)[0]
    assert record.usage is not None
    span = telemetry.only_span()
    assert span.context is not None
    finished = only(logs, "stream.finished")
    assert finished["log_level"] == "info"
    assert finished["outcome"] == "completed"
    assert finished["operation"] == "chat"
    assert finished["model"] == MODEL
    assert finished["server"] == "127.0.0.1"
    assert finished["trace_id"] == format(span.context.trace_id, "032x")
    assert finished["span_id"] == format(span.context.span_id, "016x")
    assert finished["chunks"] == CHAT_ITEMS
    assert finished["finish_reasons"] == ["stop"]
    assert finished["request_id"] == record.request_id
    assert finished["response_id"] == items[0].id
    assert finished["input_tokens"] == record.usage["prompt_tokens"]
    assert finished["output_tokens"] == record.usage["completion_tokens"]
    assert finished["duration_seconds"] >= finished["ttft_seconds"] > 0
    assert "error_type" not in finished
    assert not [e for e in logs if e["event"] == "stream.truncated"]


def test_debug_lines_when_debug_is_enabled(telemetry: Telemetry, client: openai.OpenAI) -> None:
    with structlog.testing.capture_logs() as logs:
        list(open_chat(client))
    span = telemetry.only_span()
    assert span.context is not None
    chunk_lines = [e for e in logs if e["event"] == "stream.chunk"]
    assert [e["chunk"] for e in chunk_lines] == list(range(1, CHAT_ITEMS + 1))
    assert all(e["log_level"] == "debug" for e in chunk_lines)
    assert all(e["span_id"] == format(span.context.span_id, "016x") for e in chunk_lines)
    assert only(logs, "stream.started")["log_level"] == "debug"
    assert only(logs, "stream.first_token")["log_level"] == "debug"
    assert logs[0]["event"] == "stream.started" and logs[-1]["event"] == "stream.finished"


def test_no_debug_lines_at_info(telemetry: Telemetry, client: openai.OpenAI) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    with structlog.testing.capture_logs() as logs:
        list(open_chat(client))
    assert [e["event"] for e in logs] == ["stream.finished"]


def test_debug_lines_follow_a_reconfiguration(
    telemetry: Telemetry, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deterministic stand-in for "within the same second".
    list(open_chat(client))  # structlog not configured: DEBUG lines off
    with structlog.testing.capture_logs() as logs:
        list(open_chat(client))
    assert len([e for e in logs if e["event"] == "stream.chunk"]) == CHAT_ITEMS


def test_truncated_log_lines(telemetry: Telemetry, client: openai.OpenAI) -> None:
    with structlog.testing.capture_logs() as logs:
        cut = consume_cut(client)
    span = telemetry.only_span()
    assert span.context is not None
    truncated = only(logs, "stream.truncated")
    assert truncated["log_level"] == "warning"
    assert truncated["reason"] == "eof_before_done"
    assert truncated["error_type"] == "truncated"
    assert truncated["chunks"] == AFTER
    assert truncated["partial_chars"] == len(chat_text(cut))
    assert truncated["span_id"] == format(span.context.span_id, "016x")
    assert "partial_text" not in truncated
    finished = only(logs, "stream.finished")
    assert (finished["outcome"], finished["error_type"], finished["log_level"]) == (
        "truncated",
        "truncated",
        "warning",
    )
    assert finished["done_seen"] is False


def test_truncated_log_line_carries_text_only_with_capture_content(
    telemetry: Telemetry, client: openai.OpenAI
) -> None:
    reinstrument(capture_content=True)
    with structlog.testing.capture_logs() as logs:
        cut = consume_cut(client)
    assert only(logs, "stream.truncated")["partial_text"] == chat_text(cut)


def test_no_secret_or_content_in_logs(telemetry: Telemetry, secret_client: openai.OpenAI) -> None:
    with structlog.testing.capture_logs() as logs:
        clean = list(open_chat(secret_client))
        cut = consume_cut(secret_client)
    assert len(logs) > CHAT_ITEMS  # the DEBUG lines are in too
    lines = [json.dumps(e, default=str) for e in logs]
    for line in lines:
        assert API_KEY not in line
        assert "SECRET" not in line
    assert_no_content(lines, clean)
    assert_no_content(lines, cut)
    # Nor on the spans.
    for span in telemetry.spans():
        assert all(API_KEY not in s for s in span_strings(span))


# -- metrics -------------------------------------------------------------------------------------


def test_stream_histograms_and_counters(
    chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    list(open_chat(client))
    record = chaos.wait_for_records(1)[0]
    assert record.usage is not None
    base = {"operation": "chat", "model": MODEL, "server": "127.0.0.1"}
    assert telemetry.value("openai_stream_time_to_first_token_seconds_count", **base) == 1
    assert telemetry.value("openai_stream_duration_seconds_count", outcome="completed", **base) == 1
    assert telemetry.by("openai_stream_duration_seconds_count", "outcome") == {"completed": 1}
    assert telemetry.value("openai_stream_max_chunk_gap_seconds_count", **base) == 1
    assert telemetry.value("openai_stream_chunks_total", **base) == CHAT_ITEMS
    assert telemetry.by("openai_stream_finish_reasons_total", "finish_reason") == {"stop": 1}
    assert telemetry.by("openai_stream_tokens_total", "token_type") == {
        "input": record.usage["prompt_tokens"],
        "output": record.usage["completion_tokens"],
    }
    assert telemetry.value("openai_stream_requests_total", outcome="completed", **base) == 1
    assert telemetry.value("openai_stream_in_flight", **base) == 0


def test_stream_without_chunks_observes_no_ttft_or_gap(telemetry: Telemetry, client: openai.OpenAI) -> None:
    stream = open_chat(client)
    stream.close()
    assert telemetry.value("openai_stream_time_to_first_token_seconds_count") == 0
    assert telemetry.value("openai_stream_max_chunk_gap_seconds_count") == 0
    assert telemetry.by("openai_stream_duration_seconds_count", "outcome") == {"abandoned": 1}


def test_rate_limit_gauges_follow_the_headers(telemetry: Telemetry, client: openai.OpenAI) -> None:
    for _ in range(2):  # the gauges hold the latest response's values
        with open_chat(client) as stream:
            headers = stream.response.headers
            list(stream)
    for resource in ("requests", "tokens"):
        expected = {
            "openai_stream_ratelimit_limit": float(headers[f"x-ratelimit-limit-{resource}"]),
            "openai_stream_ratelimit_remaining": float(headers[f"x-ratelimit-remaining-{resource}"]),
            "openai_stream_ratelimit_reset_seconds": go_seconds(headers[f"x-ratelimit-reset-{resource}"]),
        }
        for name, value in expected.items():
            got = telemetry.value(name, resource=resource, operation="chat", model=MODEL, server="127.0.0.1")
            assert got == pytest.approx(value), (name, resource)
    assert float(headers["x-ratelimit-remaining-requests"]) < float(headers["x-ratelimit-limit-requests"])


def test_model_label_is_bounded(chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI) -> None:
    telemetry = reinstrument(max_model_labels=2)
    for model in ("model-a", "model-b", "model-c", "model-a", "model-d"):
        list(open_chat(client, model=model))
    assert telemetry.by("openai_stream_requests_total", "model") == {"model-a": 2, "model-b": 1, "_other": 2}
    assert telemetry.by("openai_stream_chunks_total", "model") == {
        "model-a": 2 * CHAT_ITEMS,
        "model-b": CHAT_ITEMS,
        "_other": 2 * CHAT_ITEMS,
    }
    # Spans keep the real model: they are not label-bounded.
    assert [s.name for s in telemetry.spans()] == [
        "chat model-a",
        "chat model-b",
        "chat model-c",
        "chat model-a",
        "chat model-d",
    ]
    assert [attrs(s.attributes)["gen_ai.request.model"] for s in telemetry.spans()][2] == "model-c"


# -- a failing sink ------------------------------------------------------------------------------


class ExplodingSink:
    """A sink whose every call raises (a broken exporter)."""

    name = "exploding"
    wants_chunk_gaps = False

    def start(self, stream: object) -> None:
        raise RuntimeError("exporter exploded")

    def event(self, stream: object, event: object, handle: object) -> None:
        pass

    def end(self, record: object, handle: object) -> None:
        raise RuntimeError("exporter exploded")


def test_failing_sink_never_reaches_the_consumer(chaos: ChaosServer, client: openai.OpenAI) -> None:
    telemetry = reinstrument(sinks=[ExplodingSink()])
    with structlog.testing.capture_logs() as logs:
        items = list(open_chat(client))
    assert len(items) == CHAT_ITEMS
    assert chat_text(items) == chaos.expected_text(chat_kwargs())
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    # start and end both failed: counted each time, logged once.
    assert telemetry.by("openai_stream_instrumentation_errors_total", "stage") == {"exploding": 2}
    assert telemetry.value("openai_stream_in_flight") == 0
    assert only(logs, "stream.finished")["outcome"] == "completed"
    error = only(logs, "instrumentation.error")
    assert (error["stage"], error["log_level"], error["error_type"]) == ("exploding", "error", "RuntimeError")
    assert "exc_info" not in error
    assert attrs(telemetry.only_span().attributes)["streamsentinel.outcome"] == "completed"

    # A second stream: counted again, logged once only.
    with structlog.testing.capture_logs() as logs:
        assert len(list(open_chat(client))) == CHAT_ITEMS
    assert telemetry.by("openai_stream_instrumentation_errors_total", "stage") == {"exploding": 4}
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 2}
    assert [e for e in logs if e["event"] == "instrumentation.error"] == []


def test_failing_log_sink_never_reaches_the_consumer(telemetry: Telemetry, client: openai.OpenAI) -> None:
    def broken(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event.get("event") == "stream.finished":
            raise RuntimeError("renderer exploded")
        return event

    structlog.configure(processors=[broken, structlog.processors.KeyValueRenderer()])
    cut: list[ChatCompletionChunk] = []
    stream = open_chat(client, extra_headers=CUT)
    with pytest.raises(StreamTruncatedError) as excinfo:
        for item in stream:
            cut.append(item)
    assert excinfo.value.reason == "eof_before_done"  # our own exception, unchanged
    assert len(cut) == AFTER
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_instrumentation_errors_total", "stage") == {"structlog": 1}
    assert telemetry.value("openai_stream_in_flight") == 0
    assert attrs(telemetry.only_span().attributes)["streamsentinel.outcome"] == "truncated"


# -- a malformed sink (Issue 15, defect 8) ---------------------------------------------------------


class Nameless:
    """No ``name``; every call raises."""

    wants_chunk_gaps = False

    def start(self, stream: object) -> None:
        raise RuntimeError("nameless start")

    def event(self, stream: object, event: object, handle: object) -> None:
        raise RuntimeError("nameless event")

    def end(self, record: object, handle: object) -> None:
        raise RuntimeError("nameless end")


class RaisingName:
    """``name`` is a property that raises; ``start`` works, ``event`` and ``end`` raise."""

    @property
    def name(self) -> str:
        raise RuntimeError("no name today")

    def start(self, stream: object) -> object:
        return object()

    def event(self, stream: object, event: object, handle: object) -> None:
        raise RuntimeError("raising-name event")

    def end(self, record: object, handle: object) -> None:
        raise RuntimeError("raising-name end")


class StartOnly:
    """Lacks ``event``, ``end`` and ``wants_chunk_gaps``."""

    name = "start_only"

    def start(self, stream: object) -> object:
        return object()


class Hostile:
    """Every method raises, ``wants_chunk_gaps`` (a property) and ``internal_error`` too; ``start``
    returns a handle so ``activate``, ``deactivate`` and ``discard`` are reached."""

    name = "hostile"

    @property
    def wants_chunk_gaps(self) -> bool:
        raise RuntimeError("hostile wants_chunk_gaps")

    def internal_error(self, stage: str) -> None:
        raise RuntimeError("hostile internal_error")

    def start(self, stream: object) -> object:
        return object()

    def activate(self, handle: object) -> object:
        raise RuntimeError("hostile activate")

    def deactivate(self, token: object) -> None:
        raise RuntimeError("hostile deactivate")

    def event(self, stream: object, event: object, handle: object) -> None:
        raise RuntimeError("hostile event")

    def end(self, record: object, handle: object) -> None:
        raise RuntimeError("hostile end")

    def discard(self, stream: object, handle: object) -> None:
        raise RuntimeError("hostile discard")

    def close(self) -> None:
        raise RuntimeError("hostile close")


class Opaque:
    """Every attribute lookup raises something other than AttributeError (a broken proxy)."""

    def __getattr__(self, attr: str) -> Any:
        raise RuntimeError(f"opaque {attr}")


async def _one_chat(mode: str, chaos: ChaosServer) -> list[ChatCompletionChunk]:
    if mode == "sync":
        with openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as c:
            return list(c.chat.completions.create(**chat_kwargs()))
    async with openai.AsyncOpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as a:
        return [item async for item in await a.chat.completions.create(**chat_kwargs())]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_malformed_sinks_never_disable_the_others(
    chaos: ChaosServer, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15, defect 8: sinks lacking a name or methods, or raising everywhere, leave every other
    sink observing every stream; the guard itself never raises. (``instrument()`` refuses such
    sinks up front, tests/kit/test_adoption.py; the guard must hold without that check too: it is
    switched off here.)"""
    monkeypatch.setattr(streamsentinel._options, "check", dict)
    before, after = streamsentinel.testing.RecordingSink(), streamsentinel.testing.RecordingSink()
    hostile = [Nameless(), RaisingName(), StartOnly(), Hostile(), Opaque()]
    with structlog.testing.capture_logs() as logs:
        telemetry = reinstrument(sinks=[before, *hostile, after])
        for _ in range(2):
            items = await _one_chat(mode, chaos)
            assert len(items) == CHAT_ITEMS
            assert chat_text(items) == chaos.expected_text(chat_kwargs())
    streamsentinel.uninstrument()  # close() reaches every sink, through the guard

    # Every other sink saw both streams, exactly.
    assert [r.outcome for r in after.records] == ["completed", "completed"]
    assert after.records == before.records
    assert after.events == before.events and len(before.events) > 0
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 2}
    assert telemetry.value("openai_stream_in_flight") == 0
    assert [attrs(s.attributes)["streamsentinel.outcome"] for s in telemetry.spans()] == ["completed"] * 2

    # Each failure counted under the sink's own stage, or its type's name when it has none.
    events = len(before.events)
    errors = telemetry.by("openai_stream_instrumentation_errors_total", "stage")
    assert errors.pop("Nameless") == 2 * 2 + events  # start and end per stream, every event
    assert errors.pop("RaisingName") == 1 + 2 + events  # its name once, end per stream, every event
    # Per stream wants_chunk_gaps, activate and end; every event; close() at uninstrument().
    assert errors.pop("hostile") == 2 * 3 + events + 1
    # Its name and nine other lookups (start, event, end, activate, deactivate, discard, close,
    # internal_error, wants_chunk_gaps), once, at instrument().
    assert errors.pop("Opaque") == 10
    assert errors == {}  # StartOnly: nothing to call, nothing failed
    logged = sorted(e["stage"] for e in logs if e["event"] == "instrumentation.error")
    assert logged == ["Nameless", "Opaque", "RaisingName", "hostile"]  # once per stage


# -- a telemetry back-end that fails at set-up (Issue 15, defect 10) -------------------------------


class BrokenMeterProvider(otel_metrics.MeterProvider):
    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> otel_metrics.Meter:
        raise RuntimeError("meter provider misconfigured")


class BrokenTracerProvider(otel_trace.TracerProvider):
    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> otel_trace.Tracer:
        raise RuntimeError("tracer provider misconfigured")


class BrokenRegistry(CollectorRegistry):
    def register(self, collector: Any) -> None:
        raise RuntimeError("registry backend down")


def errors_logged(logs: list[EventDict]) -> list[str]:
    return sorted(e["stage"] for e in logs if e["event"] == "instrumentation.error")


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_failing_providers_disable_only_their_sinks(chaos: ChaosServer, mode: str) -> None:
    """Issue 15, defect 10: a MeterProvider/TracerProvider that raises at set-up disables its sink,
    counted and logged once; instrument() returns and the other sinks observe every stream."""
    streamsentinel.uninstrument()
    registry, recorder = CollectorRegistry(), streamsentinel.testing.RecordingSink()
    with structlog.testing.capture_logs() as logs:
        streamsentinel.instrument(
            registry=registry,
            tracer_provider=BrokenTracerProvider(),
            meter_provider=BrokenMeterProvider(),
            sinks=[recorder],
            **OBSERVE_ONLY,
        )
        for _ in range(2):
            items = await _one_chat(mode, chaos)
            assert len(items) == CHAT_ITEMS
            assert chat_text(items) == chaos.expected_text(chat_kwargs())
    telemetry = Telemetry(registry, InMemorySpanExporter(), SdkTracerProvider(), streamsentinel._runtime())
    assert [r.outcome for r in recorder.records] == ["completed", "completed"]
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 2}
    assert telemetry.value("openai_stream_chunks_total") == 2 * CHAT_ITEMS
    assert [e["outcome"] for e in logs if e["event"] == "stream.finished"] == ["completed", "completed"]
    assert telemetry.by("openai_stream_instrumentation_errors_total", "stage") == {
        "otel_trace": 1,
        "otel_metrics": 1,
    }
    assert errors_logged(logs) == ["otel_metrics", "otel_trace"]
    line = next(e for e in logs if e.get("stage") == "otel_metrics")
    assert (line["error_type"], line["error"]) == ("RuntimeError", "meter provider misconfigured")
    streamsentinel.uninstrument()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_failing_registry_disables_only_the_prometheus_sink(chaos: ChaosServer, mode: str) -> None:
    """Issue 15, defect 10: a registry whose register() raises (other than a name collision, which
    is a ValueError of instrument()) disables the Prometheus sink only, logged once."""
    streamsentinel.uninstrument()
    reader = InMemoryMetricReader()
    meters = SdkMeterProvider(metric_readers=[reader])
    tracers, exporter = SdkTracerProvider(), InMemorySpanExporter()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    with structlog.testing.capture_logs() as logs:
        streamsentinel.instrument(
            registry=BrokenRegistry(), tracer_provider=tracers, meter_provider=meters, **OBSERVE_ONLY
        )
        for _ in range(2):
            assert len(await _one_chat(mode, chaos)) == CHAT_ITEMS
    data = reader.get_metrics_data()
    assert data is not None
    requests = [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "streamsentinel.stream.requests"
        for point in metric.data.data_points
    ]
    assert all(isinstance(p, NumberDataPoint) for p in requests)
    assert sum(p.value for p in requests if isinstance(p, NumberDataPoint)) == 2
    assert [dict(s.attributes or {})["streamsentinel.outcome"] for s in exporter.get_finished_spans()] == [
        "completed",
        "completed",
    ]
    assert [e["outcome"] for e in logs if e["event"] == "stream.finished"] == ["completed", "completed"]
    assert errors_logged(logs) == ["prometheus"]
    streamsentinel.uninstrument()
    meters.shutdown()


# -- "sixteen defects" issue, defect 3: no secrets or prompts in internal-error logs -------------------------
def raising_processor(levels: frozenset[str] | None = None) -> Callable[..., Any]:
    """A structlog processor that raises for events of ``levels`` (None: every event) and drops
    the others."""

    def processor(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        if levels is None or method_name in levels:
            raise RuntimeError("log sink down")
        raise structlog.DropEvent

    return processor


class ExplodingOnStart(SpanProcessor):
    """A span processor whose ``on_start`` raises."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        raise RuntimeError("span processor exploded")


class RaisingTracer(NoOpTracer):
    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        raise RuntimeError("tracer exploded")


class RaisingTracerProvider(NoOpTracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        return RaisingTracer()


SECRET_HEADER = "Bearer sk-HEADERSECRET42"
SECRET_PROMPT = "PROMPTSECRET77"


@pytest.mark.usefixtures("uninstrument_after")
@pytest.mark.parametrize("mode", MODES)
async def test_defect_03_internal_error_log_carries_no_locals(mode: str, chaos: ChaosServer) -> None:
    """An instrumentation.error log line has no traceback with locals: no header secret, no prompt."""
    rendered: list[str] = []
    events: list[MutableMapping[str, Any]] = []

    def keep(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        events.append(dict(event_dict))
        rendered.append(json.dumps(event_dict, default=repr))
        raise structlog.DropEvent

    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.dict_tracebacks, keep],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    provider = TracerProvider()
    provider.add_span_processor(ExplodingOnStart())
    instrument_with(provider)
    extra = {
        "extra_headers": {"Authorization": SECRET_HEADER},
        "messages": [{"role": "user", "content": f"my password is {SECRET_PROMPT}"}],
    }
    result = await run(mode, chaos.base_url, "chat", **extra)
    assert result.exc is None, repr(result.exc)

    errors = [e for e in events if e.get("event") == "instrumentation.error"]
    assert errors, "the failing span processor was not reported"
    assert any("span processor exploded" in line for line in rendered), "the exception's message is missing"
    for line in rendered:
        assert SECRET_HEADER not in line and "HEADERSECRET42" not in line, line[:2000]
        assert SECRET_PROMPT not in line, line[:2000]
    for e in errors:
        assert "exception" not in e and "exc_info" not in e, sorted(e)


# -- "sixteen defects" issue, defect 4: ending a stream is exception-proof -----------------------------------


@pytest.mark.usefixtures("uninstrument_after")
@pytest.mark.parametrize("mode", MODES)
async def test_defect_04_debug_log_sink_failure_leaks_nothing(mode: str, chaos: ChaosServer) -> None:
    """A structlog processor that raises at DEBUG: in_flight back to 0 and exactly one span ended."""
    structlog.configure(
        processors=[raising_processor(frozenset({"debug"}))],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    telemetry = reinstrument()
    result = await run(mode, chaos.base_url, "chat")
    assert result.exc is None, repr(result.exc)
    assert len(result.items) == ITEMS["chat"]
    assert telemetry.value("openai_stream_in_flight") == 0
    assert len(telemetry.spans()) == 1
    assert telemetry.value("openai_stream_requests_total") == 1


@pytest.mark.usefixtures("uninstrument_after")
@pytest.mark.parametrize("mode", MODES)
async def test_defect_04_object_finish_reason_leaks_nothing(mode: str) -> None:
    """A finish_reason that is a JSON object: in_flight back to 0 and exactly one span ended."""
    telemetry = reinstrument()
    body: list[bytes | Gate] = [ROLE, HELLO, sse(chat_chunk({}, finish_reason={"type": "stop"})), DONE]
    with ScriptedServer(body) as server:
        result = await run(mode, server.base_url, "chat")
    assert result.exc is None, repr(result.exc)
    assert len(result.items) == 3
    assert telemetry.value("openai_stream_in_flight") == 0
    assert len(telemetry.spans()) == 1


# -- "sixteen defects" issue, defect 5: a broken tracer does not switch off metrics or truncation detection


def _broken_provider(kind: str) -> ApiTracerProvider:
    if kind == "span_processor":
        provider = TracerProvider()
        provider.add_span_processor(ExplodingOnStart())
        return provider
    return BrokenTracerProvider()


@pytest.mark.usefixtures("uninstrument_after")
@pytest.mark.parametrize("broken", ["span_processor", "start_span"])
@pytest.mark.parametrize("mode", MODES)
async def test_defect_05_broken_tracer_keeps_truncation_and_metrics(
    mode: str, broken: str, chaos: ChaosServer
) -> None:
    """start_span/on_start raising: a cut stream still raises and is counted; one internal error."""
    telemetry = instrument_with(_broken_provider(broken))
    result = await run(mode, chaos.base_url, "chat", extra_headers={"x-chaos-fault": "eof_chunked"})
    assert isinstance(result.exc, StreamTruncatedError), repr(result.exc)
    assert result.exc.reason == "eof_before_done"
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"eof_before_done": 1}
    assert telemetry.value("openai_stream_in_flight") == 0
    assert instrumentation_errors(telemetry) == 1


# -- "sixteen defects" issue, defect 6: a broken logger does not switch off retries --------------------------

HELD = {"chat": 1, "responses": 4}  # data events without output before the first output


@pytest.mark.usefixtures("uninstrument_after")
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("mode", MODES)
async def test_defect_06_broken_logger_keeps_retries(mode: str, api: str) -> None:
    """With every log call raising, a stream cut before output is retried: full text, 2 requests."""
    structlog.configure(
        processors=[raising_processor()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    telemetry = reinstrument(**RETRYING)
    plan = FaultPlan(script=[FaultSpec(fault=Fault.EOF_CHUNKED, after=HELD[api]), FaultSpec()])
    with ChaosServer(plan, chunks=5) as server:
        result = await run(mode, server.base_url, api)
        assert result.exc is None, repr(result.exc)
        if api == "chat":
            text = chat_text(result.items)
        else:
            text = "".join(i.delta for i in result.items if i.type == "response.output_text.delta")
        assert text == server.expected_text(request(api))
        assert server.arrivals == 2
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
