"""Where streamsentinel's telemetry goes: the :class:`Sink` protocol, the records sinks receive, and
the built-in sinks (one module each: ``_prometheus``, ``_otel_trace``, ``_otel_metrics``,
``_structlog``).

A sink is three calls, each made once and behind one guard (a sink that raises is counted in
``openai_stream_instrumentation_errors_total{stage=<sink.name>}``, logged once, and changes nothing
else: not another sink, not a decision, not the consumer's stream):

- ``start(stream) -> handle``: a streaming call began; the handle (anything, or None) is the sink's
  own per-stream state, handed back to ``event`` and ``end`` and never seen by the core or another
  sink;
- ``event(stream, event, handle)``: something happened (a retry, a 429, a breaker transition...);
  ``stream`` is None for events of no stream (breaker events), and ``handle`` None for plain calls;
- ``end(record, handle)``: the stream ended, classified once, as a frozen :class:`StreamRecord`.

Add a sink by writing one module with a class of this shape (subclass :class:`BaseSink` for no-op
defaults of everything you do not need) and passing an instance to
``instrument(sinks=[...])`` (added to the defaults), or registering it in ``default_sinks``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ._data import (
    BreakerCall,
    BreakerRates,
    BreakerState,
    BreakerTransition,
    ChunkEvent,
    DoneMarkerEvent,
    Event,
    GapEvent,
    InStreamErrorEvent,
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

__all__ = [
    "BaseSink",
    "BreakerCall",
    "BreakerRates",
    "BreakerState",
    "BreakerTransition",
    "ChunkEvent",
    "DoneMarkerEvent",
    "Event",
    "GapEvent",
    "InStreamErrorEvent",
    "PauseEvent",
    "RateLimitEvent",
    "RateLimitHeaders",
    "Rejection",
    "ResumeEvent",
    "RetryEvent",
    "Sink",
    "StoreError",
    "StoreFallback",
    "StreamRecord",
    "StreamStart",
]


@runtime_checkable
class Sink(Protocol):
    """What the core calls; see the module docstring.

    Attributes:
        name: the ``stage`` label of this sink's failures (``prometheus``, ``otel_trace``...;
            without a string ``name``, the class name).
        wants_chunk_gaps: True to receive every inter-item gap in ``StreamRecord.chunk_gaps``
            (costs one list append per item; False keeps the per-chunk path free of it). Read
            once by ``instrument()``, or before each stream when the class defines it as a
            ``property`` (the OTel metrics sink: only once a ``MeterProvider`` is set).

    Every method is looked up once, when ``instrument()`` builds the sinks: a sink lacking one is
    not called for it (one whose lookup raises is counted once and skipped). Optional:
        ``activate(handle) -> token`` / ``deactivate(token)``: make the stream's context current
        while the SDK's ``create()`` runs (the trace sink: so HTTP spans nest under the stream's).
        ``discard(stream, handle)``: the call turned out not to be a stream streamsentinel observes
        (e.g. a mock); undo ``start`` without recording anything.
        ``close()``: ``uninstrument()`` was called.
    """

    name: str
    wants_chunk_gaps: bool

    def start(self, stream: StreamStart) -> Any: ...

    def event(self, stream: StreamStart | None, event: Event, handle: Any) -> None: ...

    def end(self, record: StreamRecord, handle: Any) -> None: ...


class BaseSink:
    """A :class:`Sink` that does nothing: subclass it and override what you need.

    ``name`` defaults to the class name in lower case; ``wants_chunk_gaps`` to False.
    ``instrument(sinks=[...])`` checks every sink against the protocol (a ``name`` that is a
    non-empty ``str``, callable ``start``/``event``/``end``), so a malformed one fails at start-up,
    not during an outage.
    """

    wants_chunk_gaps: bool = False

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def start(self, stream: StreamStart) -> Any:
        return None

    def event(self, stream: StreamStart | None, event: Event, handle: Any) -> None:
        return None

    def end(self, record: StreamRecord, handle: Any) -> None:
        return None
