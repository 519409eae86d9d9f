"""The log sink: one line per notable moment of a stream, never per chunk unless DEBUG. Lines go
to structlog when the application configured it, else to the standard ``logging`` module
(``streamsentinel._log``): never to stdout by streamsentinel itself.

Events: ``stream.started`` and ``stream.chunk`` (DEBUG only), ``stream.retry`` (INFO),
``stream.resume`` and ``stream.rate_limited`` (WARNING; ERROR for quota exhaustion, which needs a
human), ``stream.truncated`` (WARNING), ``stream.finished`` (INFO, WARNING when it failed),
``circuit.state_changed`` (WARNING when it opens, else INFO). Each carries ``operation``,
``model`` and ``server`` (bounded values) and, when a span is recording, ``trace_id`` and
``span_id`` (hex) for correlation. No prompt or completion content (unless ``capture_content``), no
headers, no tracebacks.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from .._log import enabled, log
from ._data import (
    BreakerTransition,
    ChunkEvent,
    DoneMarkerEvent,
    Event,
    PauseEvent,
    RateLimitEvent,
    Rejection,
    ResumeEvent,
    RetryEvent,
    StreamRecord,
    StreamStart,
)

_OPENED = ("open", "forced_open")


def _ids(stream: StreamStart, ctx: SpanContext | None = None) -> dict[str, Any]:
    """The fields every line of a stream carries (built only for a line that is emitted)."""
    fields: dict[str, Any] = {"operation": stream.operation, "model": stream.model, "server": stream.server}
    if ctx is None:
        ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        fields["trace_id"] = format(ctx.trace_id, "032x")
        fields["span_id"] = format(ctx.span_id, "016x")
    return fields


class StructlogSink:
    """Logs through logger ``streamsentinel`` (structlog if configured, else ``logging``)."""

    name = "structlog"
    wants_chunk_gaps = False

    def __init__(self, debug: Any = None) -> None:
        self._log = log
        self._debug = debug  # () -> bool: whether DEBUG lines are wanted (asked once per stream)

    def start(self, stream: StreamStart) -> SpanContext:
        ctx = trace.get_current_span().get_span_context()  # the stream's span (see Emitter.start)
        if self._debug is not None and self._debug():
            self._log.debug("stream.started", **_ids(stream, ctx))
        return ctx

    def event(self, stream: StreamStart | None, event: Event, ctx: SpanContext | None) -> None:
        log = self._log
        if stream is None:
            if isinstance(event, DoneMarkerEvent):
                if not event.sends_done:
                    log.warning(
                        "stream.server_omits_done",
                        server=event.server,
                        policy=event.policy,
                        note="this server ends streams after the finish reasons without data: [DONE]"
                        + ("; treated as complete" if event.policy != "strict" else "; truncations"),
                    )
            elif isinstance(event, BreakerTransition):
                level = log.warning if event.to_state in _OPENED else log.info
                level(
                    "circuit.state_changed",
                    breaker=event.breaker,
                    from_state=event.from_state,
                    to_state=event.to_state,
                )
            elif isinstance(event, PauseEvent):
                if event.seconds > 0:
                    log.warning(
                        "ratelimit.paused",
                        server=event.server,
                        model=event.model,
                        kind=event.kind,
                        seconds=round(event.seconds, 3),
                        note="fleet-wide (see rate_limit_pause)",
                    )
                else:
                    log.info("ratelimit.resumed", server=event.server, model=event.model, kind=event.kind)
            return
        fields = _ids(stream, ctx)
        if isinstance(event, RetryEvent):
            log.info(
                "stream.retry",
                layer=event.layer,
                reason=event.reason,
                attempt=event.attempt,
                delay_seconds=event.delay,
                **fields,
            )
        elif isinstance(event, RateLimitEvent):
            level = log.error if event.kind == "quota" else log.warning
            level(
                "stream.rate_limited",
                kind=event.kind,
                status=event.status,
                request_id=event.request_id,
                **fields,
            )
        elif isinstance(event, ResumeEvent) and event.result == "started":
            log.warning(
                "stream.resume", strategy=event.strategy, reason=event.reason, attempt=event.attempt, **fields
            )
        elif isinstance(event, ChunkEvent):
            if event.first_token:
                log.debug("stream.first_token", ttft_seconds=event.at, **fields)
            log.debug("stream.chunk", chunk=event.index, gap_seconds=event.gap, **fields)

    def end(self, record: StreamRecord, ctx: SpanContext | None) -> None:
        if not enabled(logging.INFO if record.error_type is None else logging.WARNING):
            return  # the line would be dropped: build nothing
        fields = _ids(record.start, ctx)
        if record.reason is not None:
            truncated: dict[str, Any] = {
                "reason": record.reason,
                "error_type": record.error_type,
                "chunks": record.chunks,
                "partial_chars": record.partial_chars,
                "request_id": record.request_id,
                "response_id": record.response_id,
            }
            if record.partial_text is not None:
                truncated["partial_text"] = record.partial_text
            self._log.warning("stream.truncated", **truncated, **fields)
        fields["outcome"] = record.outcome
        if record.outcome == "rejected":
            for event in record.events:
                if isinstance(event, Rejection):
                    fields["rejected_by"] = event.reason
                    break
        fields["duration_seconds"] = round(record.duration, 6)
        fields["chunks"] = record.chunks
        # Only what is known or unusual: every field costs the application's renderer.
        if record.time_to_first_token is not None:
            fields["ttft_seconds"] = round(record.time_to_first_token, 6)
        if record.chunks > 1:
            fields["max_chunk_gap_seconds"] = round(record.max_gap, 6)
        if record.finish_reasons:
            fields["finish_reasons"] = list(record.finish_reasons)
        if record.sdk_retries:
            fields["sdk_retries"] = record.sdk_retries
        if record.sentinel_retries:
            fields["sentinel_retries"] = record.sentinel_retries
        if record.done_seen is False:
            fields["done_seen"] = False
        for name in ("request_id", "response_id", "input_tokens", "output_tokens"):
            value = getattr(record, name)
            if value is not None:
                fields[name] = value
        if record.error_type is not None:
            fields["error_type"] = record.error_type
            self._log.warning("stream.finished", **fields)
        else:
            self._log.info("stream.finished", **fields)
