"""The OpenTelemetry trace sink: one CLIENT span per stream, after the GenAI semantic conventions.

Span name ``{gen_ai.operation.name} {gen_ai.request.model}``; ``gen_ai.*``, ``server.*`` and
``error.type`` attributes (names imported from ``_semconv``, never retyped); streamsentinel's own
under ``streamsentinel.*`` (from ``_names``). The span starts with the call, is current only
while the SDK's ``create()`` runs (``activate``), and ends when the stream ends: the stream's
timeline (gaps, retries, rate limits, resumes) is added then, with each event's own time, so
nothing is done per chunk.

With ``chunk_events="all"`` every item's time is kept, in one ``streamsentinel.chunks`` event
(``streamsentinel.chunk.offsets``, and ``streamsentinel.chunk.texts`` with ``capture_content``)
rather than an event per item: a span event costs the OTel SDK about 20,000 CPU instructions
(twice that with an attribute), more than the SDK's whole parsing of a chunk's JSON, and the SDK
keeps only the last 128 events of a span (``OTEL_SPAN_EVENT_COUNT_LIMIT``) while an attribute
array keeps them all.

Semconv rules followed: ``gen_ai.response.time_to_first_chunk`` is the first chunk of any kind;
``gen_ai.response.finish_reasons`` reports ``error`` for a position whose finish reason never came
on a stream that failed; ``gen_ai.provider.name`` is ``azure.ai.openai`` for Azure clients.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from .._vocab import REJECTED_ERROR_TYPE
from . import _names as nm
from . import _semconv as sc
from ._data import (
    ChunkEvent,
    Event,
    GapEvent,
    InStreamErrorEvent,
    RateLimitEvent,
    ResumeEvent,
    RetryEvent,
    StreamRecord,
    StreamStart,
)

TRACER_NAME = nm.NAMESPACE
CHUNKS_EVENT = nm.CHUNKS_EVENT
CHUNK_OFFSETS = nm.CHUNK_OFFSETS
CHUNK_TEXTS = nm.CHUNK_TEXTS

_REQUEST_PARAMS = {
    "max_tokens": sc.GEN_AI_REQUEST_MAX_TOKENS,
    "max_completion_tokens": sc.GEN_AI_REQUEST_MAX_TOKENS,
    "max_output_tokens": sc.GEN_AI_REQUEST_MAX_TOKENS,
    "temperature": sc.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": sc.GEN_AI_REQUEST_TOP_P,
    "n": sc.GEN_AI_REQUEST_CHOICE_COUNT,
}


def _event(event: Event) -> tuple[str, dict[str, Any]] | None:
    """A timeline event as a span event ``(name, attributes)``; None for those not on spans."""
    if isinstance(event, GapEvent):
        return nm.GAP_EVENT, {nm.GAP_DURATION: event.gap}
    if isinstance(event, RetryEvent):
        return nm.RETRY_EVENT, {
            nm.RETRY_LAYER: event.layer,
            nm.RETRY_REASON: event.reason,
            nm.RETRY_ATTEMPT: event.attempt,
        }
    if isinstance(event, RateLimitEvent):
        return nm.RATE_LIMITED_EVENT, {nm.RATE_LIMIT_KIND: event.kind}
    if isinstance(event, ResumeEvent):
        return nm.RESUME_EVENT, {nm.RESUME_STRATEGY: event.strategy, nm.RESUME_RESULT: event.result}
    if isinstance(event, InStreamErrorEvent):
        attributes: dict[str, Any] = {sc.ERROR_TYPE: event.error_type}
        if event.code:
            attributes[nm.ERROR_CODE] = event.code
        return nm.IN_STREAM_ERROR_EVENT, attributes
    # Breaker events concern no one stream: they reach the metrics and log sinks, never a span.
    return None


class OTelTraceSink:
    """Starts, fills and ends each stream's span through ``tracer_provider`` (None: the global one).
    ``chunk_timeline``: add the :data:`CHUNKS_EVENT` (``chunk_events="all"``)."""

    name = "otel_trace"

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        version: str = "0",
        chunk_timeline: bool = False,
    ) -> None:
        self.tracer: Tracer = trace.get_tracer(
            TRACER_NAME, version, tracer_provider=tracer_provider, schema_url=sc.SCHEMA_URL
        )
        # The item times are the first item's time and the gaps (StreamRecord.chunk_gaps).
        self.wants_chunk_gaps = self.chunk_timeline = chunk_timeline

    def start(self, stream: StreamStart) -> Span | None:
        semconv_op = sc.operation_name(stream.operation)
        attributes: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: semconv_op,
            sc.GEN_AI_PROVIDER_NAME: stream.provider,
            sc.GEN_AI_REQUEST_MODEL: stream.request_model,
            sc.GEN_AI_REQUEST_STREAM: True,
            sc.SERVER_ADDRESS: stream.server_address,
        }
        if stream.server_port is not None:
            attributes[sc.SERVER_PORT] = stream.server_port
        for key, value in stream.params:
            attributes[_REQUEST_PARAMS[key]] = value
        span = self.tracer.start_span(
            f"{semconv_op} {stream.request_model}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=stream.start_ns,
        )
        if not span.is_recording() and not span.get_span_context().is_valid:
            return None  # no SDK and no parent: nothing to end, nothing to make current
        return span

    def activate(self, span: Span) -> object:
        return otel_context.attach(trace.set_span_in_context(span))

    def deactivate(self, token: Any) -> None:
        otel_context.detach(token)

    def discard(self, stream: StreamStart, span: Span | None) -> None:
        """Not a stream after all: the span is dropped unended, so it is never exported."""

    def event(self, stream: StreamStart | None, event: Event, span: Span | None) -> None:
        """Mid-stream events reach the span with the record (their own times), not one by one."""

    def end(self, record: StreamRecord, span: Span | None) -> None:
        if span is None:
            return
        try:
            if span.is_recording():
                self._fill(record, span)
        finally:
            span.end(end_time=record.end_ns)

    def _fill(self, record: StreamRecord, span: Span) -> None:
        start_ns = record.start.start_ns
        attrs: dict[str, Any] = {
            nm.OUTCOME: record.outcome,
            nm.CHUNK_COUNT: record.chunks,
            nm.MAX_CHUNK_GAP: record.max_gap,
        }
        # Only what happened: every attribute costs the SDK a validation and the exporter bytes.
        if record.sdk_retries:
            attrs[nm.SDK_RETRY_COUNT] = record.sdk_retries
        if record.sentinel_retries:
            attrs[nm.SENTINEL_RETRY_COUNT] = record.sentinel_retries
        if record.done_seen is not None:
            attrs[nm.DONE_SEEN] = record.done_seen
        if record.reason is not None:
            attrs[nm.TRUNCATION_REASON] = record.reason
        if record.response_id:
            attrs[sc.GEN_AI_RESPONSE_ID] = record.response_id
        if record.response_model:
            attrs[sc.GEN_AI_RESPONSE_MODEL] = record.response_model
        if record.input_tokens is not None:
            attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] = record.input_tokens
        if record.output_tokens is not None:
            attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = record.output_tokens
        if record.cached_input_tokens is not None:
            attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = record.cached_input_tokens
        if record.reasoning_tokens is not None:
            attrs[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = record.reasoning_tokens
        if record.request_id:
            attrs[nm.REQUEST_ID] = record.request_id
        if record.time_to_first_chunk is not None:
            attrs[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = record.time_to_first_chunk
        if record.time_to_first_token is not None:
            # An attribute, not an event: an event costs the SDK several times more.
            attrs[nm.TIME_TO_FIRST_TOKEN] = record.time_to_first_token
        if record.finish_reasons:
            attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] = record.finish_reasons
        if self.chunk_timeline and record.time_to_first_chunk is not None:
            _add_chunk_timeline(record, span)
        for event in record.events:
            named = _event(event)
            if named is not None:
                at = event.at if hasattr(event, "at") else record.duration
                span.add_event(named[0], named[1], start_ns + int(at * 1e9))
        if record.reason is not None:
            truncated: dict[str, Any] = {
                nm.TRUNCATION_REASON: record.reason,
                nm.CHUNK_COUNT: record.chunks,
            }
            if record.partial_text is not None:
                truncated[nm.PARTIAL_TEXT] = record.partial_text
            span.add_event(nm.TRUNCATED_EVENT, truncated, record.end_ns)
        error_type = record.error_type or (REJECTED_ERROR_TYPE if record.outcome == "rejected" else None)
        if error_type is not None:
            attrs[sc.ERROR_TYPE] = error_type
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.set_attributes(attrs)


def _add_chunk_timeline(record: StreamRecord, span: Span) -> None:
    offsets = tuple(accumulate(record.chunk_gaps, initial=record.time_to_first_chunk or 0.0))
    if len(offsets) != record.chunks:
        return  # gaps not kept for this stream (a sink's wish changed mid-stream)
    attributes: dict[str, Any] = {CHUNK_OFFSETS: offsets}
    texts = [""] * record.chunks
    found = False
    for event in record.events:  # ChunkEvents exist only with capture_content; a retry's replace
        if isinstance(event, ChunkEvent) and 0 < event.index <= record.chunks:
            texts[event.index - 1] = event.text or ""
            found = True
    if found:
        attributes[CHUNK_TEXTS] = texts
    span.add_event(CHUNKS_EVENT, attributes, record.start.start_ns + int(offsets[-1] * 1e9))
