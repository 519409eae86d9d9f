"""The frozen records the core hands to sinks: what a sink may know about a stream, and nothing else.

The core builds a :class:`StreamStart` when a streaming call begins, small frozen events as they
happen (a retry, a 429, a resume, a breaker transition) and one :class:`StreamRecord` when the
stream ends. ``StreamStart`` and ``StreamRecord`` are ``NamedTuple``s (immutable; ``_replace`` makes
a changed copy): one is built per stream, and a tuple is built in C where a frozen dataclass sets
each of its 27 fields through ``object.__setattr__``. None of them carries a sink's handle, an SDK
object or prompt/completion text (except ``StreamRecord.partial_text``, filled only when
``capture_content`` is on).

Times: ``*_ns`` fields are wall-clock nanoseconds since the epoch; durations and ``at`` offsets
are seconds (``time.perf_counter()`` differences); ``at`` is measured from the stream's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from .._vocab import ErrorType, Operation, Outcome, RateLimitKind, TruncationReason

__all__ = [
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
    "StoreError",
    "StoreFallback",
    "StreamRecord",
    "StreamStart",
]


class StreamStart(NamedTuple):
    """A streaming call that began (or, with ``stream=False``, a plain call whose HTTP attempts are
    counted: ``streaming`` False; such a call gets no ``StreamRecord``).

    ``model`` and ``server`` are the bounded label values (``_other`` past ``max_model_labels``;
    both ``_other`` past ``max_label_sets`` combinations); ``request_model`` and ``server_address``
    the raw ones, for spans. ``provider`` is the ``gen_ai.provider.name`` value (``openai``, or
    ``azure.ai.openai`` for Azure clients).
    ``params``: the request's numeric sampling parameters as ``(request key, value)`` pairs
    (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``, ``temperature``, ``top_p``,
    ``n``).
    """

    operation: Operation
    provider: str
    request_model: str
    model: str
    server: str
    server_address: str
    server_port: int | None
    start_ns: int
    streaming: bool = True
    params: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class GapEvent:
    """An inter-item gap of at least ``gap_anomaly_seconds`` (``gap`` seconds), ended at ``at``."""

    at: float
    gap: float


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """A retry about to be made. ``layer``: ``sdk`` (the openai SDK's own, before the stream) or
    ``sentinel`` (streamsentinel's); ``reason``: the failed attempt's ``ErrorType``; ``attempt``:
    the number of the attempt about to start (2 for the first retry); ``delay`` seconds (None: the
    SDK computes its own)."""

    at: float
    layer: Literal["sdk", "sentinel"]
    reason: ErrorType
    attempt: int
    delay: float | None


@dataclass(frozen=True, slots=True)
class RateLimitEvent:
    """A 429 (``status`` 429) or an in-stream rate-limit/quota error (``status`` None), by kind.
    ``request_id``: the response's ``x-request-id`` when known."""

    at: float
    kind: RateLimitKind
    status: int | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The ``x-ratelimit-*`` headers of one response: ``(resource, remaining, limit, reset_seconds)``
    per resource (``requests``, ``tokens``); None where a header was missing."""

    at: float
    snapshots: tuple[tuple[str, int | None, int | None, float | None], ...]


@dataclass(frozen=True, slots=True)
class ResumeEvent:
    """A stream continued after output started: ``started`` (a resume is about to be made, with
    ``reason``), then ``resumed``, ``diverged`` or ``failed``."""

    at: float
    strategy: Literal["replay", "responses"]
    result: Literal["started", "resumed", "diverged", "failed"]
    reason: ErrorType | None = None
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class InStreamErrorEvent:
    """An error event inside the stream (``code``: the server's error code, bounded by nothing: kept
    off metric labels)."""

    at: float
    error_type: ErrorType
    code: str | None


@dataclass(frozen=True, slots=True)
class DoneMarkerEvent:
    """What a server was seen to do at the end of its streams: ``sends_done`` False once a stream
    of it ended after every finish reason without ``data: [DONE]``, True once one had it;
    ``policy``: the ``done_marker`` policy applied to it (``auto``, ``strict``, ``lenient``)."""

    server: str
    sends_done: bool
    policy: str


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """A circuit breaker changed state (Resilience4j state names, lower case)."""

    breaker: str
    from_state: str
    to_state: str


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A breaker's state when this process first used it (so its state series exists at once)."""

    breaker: str
    state: str


@dataclass(frozen=True, slots=True)
class BreakerCall:
    """A call an open breaker rejected (``rejected``: it did not permit it), or one its fallback
    served (``fallback``)."""

    breaker: str
    kind: Literal["rejected", "fallback"]


@dataclass(frozen=True, slots=True)
class BreakerRates:
    """The breaker's sliding-window rates after a call, 0..1 (NaN below the minimum number of calls)."""

    breaker: str
    failure_rate: float
    slow_call_rate: float


@dataclass(frozen=True, slots=True)
class StoreError:
    """A call to the shared state store (Redis, fleet mode) failed; ``operation``: ``refresh``,
    ``lease``, ``write`` or ``queue_full`` (a background write dropped: the queue was full)."""

    operation: Literal["refresh", "lease", "write", "queue_full"]


@dataclass(frozen=True, slots=True)
class StoreFallback:
    """The process runs on its local state (``active``: Redis unreachable) or shares again."""

    active: bool


@dataclass(frozen=True, slots=True)
class PauseEvent:
    """A fleet-wide rate-limit pause began (``seconds`` > 0: how long) or ended (0.0). ``kind``:
    ``rate_limit`` (a 429 with a server delay: ``server``/``model``) or ``quota``
    (``insufficient_quota``: the whole ``server``, ``model`` ``*``). ``server``/``model`` are bounded
    label values."""

    server: str
    model: str
    kind: Literal["rate_limit", "quota"]
    seconds: float


RejectReason = Literal["circuit_open", "rate_limit_pause", "quota_pause"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """In a ``rejected`` stream's timeline: why no request was made (an open breaker, or a fleet-wide
    pause with ``rate_limit_pause="reject"``)."""

    reason: RejectReason


class StreamRecord(NamedTuple):
    """One logical stream request, classified once, when it ended.

    Attributes:
        start: the :class:`StreamStart` it began with.
        outcome: ``completed``, ``truncated``, ``failed``, ``abandoned`` or ``rejected``
            (see ``streamsentinel._vocab``).
        error_type, reason: the failure's ``ErrorType`` and, for a stream that had its 200, its
            ``TruncationReason``; None when it did not fail.
        error_code: an in-stream error's code, when there was one.
        duration: seconds from the call to the end.
        time_to_first_chunk: seconds from the call to the first item of any kind (semconv
            ``gen_ai.response.time_to_first_chunk``); None when no item arrived.
        time_to_first_token: seconds to the first item that carried output; None when none did.
        chunks: items delivered to the consumer (error items included); ``payload_chunks`` those
            that carried the response.
        max_gap: the longest gap between two consecutive items, seconds (0.0 below two items).
        chunk_gaps: every gap between consecutive items, seconds, in order (empty unless a sink
            asked for them: ``Sink.wants_chunk_gaps``; the trace sink does with
            ``chunk_events="all"``, the OTel metrics sink with a meter provider).
        finish_reasons: one per choice index, in order; a position whose finish reason never came
            on a stream that failed is ``error`` (semconv rule for ``gen_ai.response.finish_reasons``).
        done_seen: whether ``data: [DONE]`` arrived (None: unknown, the decoder hook is absent; and
            for the Responses API, which has none).
        input_tokens, output_tokens, reasoning_tokens, cached_input_tokens: usage as the server
            reported it (None: not reported).
        sdk_retries, sentinel_retries: retries by the SDK (before the stream) and by streamsentinel.
        breaker: the circuit breaker's key guarding the call (None: no breaker).
        events: the stream's timeline (gaps, retries, rate limits, resumes, in-stream errors,
            breaker transitions) in the order they happened.
        partial_text, partial_chars: the output text delivered (only with ``capture_content``;
            else None) and its length in characters.
    """

    start: StreamStart
    outcome: Outcome
    error_type: ErrorType | None
    reason: TruncationReason | None
    error_code: str | None
    duration: float
    time_to_first_chunk: float | None
    time_to_first_token: float | None
    chunks: int
    payload_chunks: int
    max_gap: float
    chunk_gaps: tuple[float, ...]
    finish_reasons: tuple[str, ...]
    done_seen: bool | None
    input_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    cached_input_tokens: int | None
    request_id: str | None
    response_id: str | None
    response_model: str | None
    sdk_retries: int
    sentinel_retries: int
    breaker: str | None
    events: tuple[Event, ...]
    partial_text: str | None
    partial_chars: int

    @property
    def end_ns(self) -> int:
        """Wall-clock end, ns since the epoch."""
        return self.start.start_ns + int(self.duration * 1e9)

    @property
    def failed(self) -> bool:
        """True for ``truncated`` and ``failed`` outcomes (the ones with an ``error_type``)."""
        return self.error_type is not None


@dataclass(frozen=True, slots=True)
class ChunkEvent:
    """One item delivered (to sinks live with DEBUG logging; in ``StreamRecord.events`` only with
    ``chunk_events="all"`` and ``capture_content``, to carry each item's text): its 1-based
    ``index``, the gap since the previous item (None for the first), whether it carried the first
    output (``first_token``) and, with ``capture_content``, the text it carried."""

    at: float
    index: int
    gap: float | None
    text: str | None = None
    first_token: bool = False


Event = (
    ChunkEvent
    | GapEvent
    | RetryEvent
    | RateLimitEvent
    | RateLimitHeaders
    | ResumeEvent
    | InStreamErrorEvent
    | DoneMarkerEvent
    | BreakerTransition
    | BreakerState
    | BreakerCall
    | BreakerRates
    | StoreError
    | StoreFallback
    | PauseEvent
    | Rejection
)
"""Everything a sink's ``event()`` may receive."""
