"""The per-stream observation record: plain fields filled by the stream proxy, classified once at the end.

One ``StreamObservation`` flows one way: the patched ``create()`` opens it, the proxy fills it chunk by
chunk (``streamsentinel.chunks``), ``Sentinel.finish`` classifies it once and hands it to the sinks
(``metrics``, ``tracing``, ``logs``), which know nothing of each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx2
    from opentelemetry.trace import Span

    from .breaker import CircuitBreaker, Permit
    from .metrics import BoundMetrics
    from .ratelimit import RateLimitKind
    from .sse import ObservedSSEDecoder
    from .taxonomy import ErrorType, Outcome, TruncationReason


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A notable moment of a stream, kept for the span: ``name`` (``gap``, ``in_stream_error``, ...),
    ``at`` (seconds since the stream started) and small, content-free ``attributes``."""

    name: str
    at: float
    attributes: dict[str, Any]


class CallObservation:
    """A non-streaming call while its ``create()`` runs: only what the HTTP-attempt hooks touch (its
    429s, the SDK's retries, rate-limit headers share the quota with the streams). No span, no
    request counted, nothing in flight."""

    __slots__ = (
        "anomalies",
        "debug",
        "labels",
        "last_attempt_reason",
        "model",
        "operation",
        "rate_limit_kinds",
        "request_id",
        "sdk_retries",
        "server",
        "span",
        "start",
    )

    def __init__(
        self, operation: str, model: str, server: str, labels: BoundMetrics, span: Span, start: float
    ) -> None:
        self.operation = operation
        self.model = model
        self.server = server
        self.labels = labels
        self.span = span
        self.start = start
        self.debug = False
        self.request_id: str | None = None
        self.rate_limit_kinds: list[RateLimitKind] = []
        self.last_attempt_reason = "other"
        self.sdk_retries = 0
        self.anomalies: list[Anomaly] = []


def _read_nothing(obs: StreamObservation, item: Any, now: float) -> None:
    """Placeholder reader until the proxy sets the operation's one."""


class StreamObservation:
    """What streamsentinel knows about one logical stream request.

    Times are ``time.perf_counter()`` seconds unless named ``*_ns`` (wall clock, ns since epoch).
    Token counts are None until the server reports usage.
    """

    __slots__ = (
        "anomalies",
        "attempt",
        "attempt_start",
        "breaker",
        "cached_tokens",
        "call",
        "chunks",
        "debug",
        "decoder",
        "ended",
        "error_items",
        "error_type",
        "extras",
        "finish_reasons",
        "first_at",
        "headers_at",
        "in_stream_error",
        "input_tokens",
        "labels",
        "last_at",
        "last_attempt_reason",
        "last_seq",
        "max_gap",
        "model",
        "operation",
        "outcome",
        "output_tokens",
        "permit",
        "rate_limit_kinds",
        "read_at",
        "reader",
        "reason",
        "reasoning_tokens",
        "request_id",
        "response",
        "response_id",
        "response_model",
        "sdk_retries",
        "sentinel_retries",
        "server",
        "server_port",
        "span",
        "start",
        "start_ns",
        "terminal",
        "text",
        "timeout_kind",
        "tool_args",
    )

    def __init__(
        self,
        *,
        operation: str,
        model: str,
        server: str,
        server_port: int | None,
        labels: BoundMetrics,
        span: Span,
        start: float,
        start_ns: int,
        debug: bool,
    ) -> None:
        self.operation = operation
        self.model = model
        self.server = server
        self.server_port = server_port
        self.labels = labels
        self.span = span
        self.start = start
        self.start_ns = start_ns
        self.debug = debug
        self.reader: Callable[[StreamObservation, Any, float], None] = _read_nothing
        self.extras = False  # per-chunk DEBUG lines / span events wanted
        self.anomalies: list[Anomaly] = []
        # Filled by the HTTP-attempt hooks.
        self.sdk_retries = 0
        self.last_attempt_reason = "other"
        self.rate_limit_kinds: list[RateLimitKind] = []
        # streamsentinel's own attempts: the SDK call to re-issue, and how many were made.
        self.call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = None
        self.attempt = 1
        self.sentinel_retries = 0
        # The circuit breaker guarding this call and its permit (None: no breaker, or rejected).
        self.breaker: CircuitBreaker | None = None
        self.permit: Permit | None = None
        # Set once, at the end.
        self.ended = False
        self.outcome: Outcome | None = None
        self.error_type: ErrorType | None = None
        self.reason: TruncationReason | None = None
        self.new_attempt(start)

    def new_connection(self, at: float) -> None:
        """A new HTTP stream for the same request: forget the previous one's connection facts."""
        self.attempt_start = at
        self.headers_at = at
        self.timeout_kind: str | None = None  # set by the watchdog when it closed the stream
        self.read_at = 0.0  # when the consumer's pending read began (0: not reading); watchdog only
        self.terminal: str | None = None
        self.in_stream_error: tuple[str | None, str] | None = None
        self.finish_reasons: dict[int, str] = {}
        self.response: httpx2.Response | None = None
        self.request_id: str | None = None
        self.decoder: ObservedSSEDecoder | None = None

    def new_attempt(self, at: float) -> None:
        """Forget what the previous attempt's stream delivered (nothing reached the consumer)."""
        self.new_connection(at)
        self.chunks = 0
        self.error_items = 0  # error events the SDK yielded as items (not payload)
        self.first_at: float | None = None
        self.last_at = at
        self.max_gap = 0.0
        self.text: list[str] = []
        self.tool_args: list[str] = []  # choice 0's tool-call argument pieces, as delivered
        self.last_seq: int | None = None  # Responses: sequence_number of the last event
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.cached_tokens: int | None = None

    @property
    def done_seen(self) -> bool | None:
        """Whether ``data: [DONE]`` arrived; None when the decoder hook is not in place."""
        return self.decoder.done if self.decoder is not None else None

    @property
    def payload_chunks(self) -> int:
        """Items delivered that carried the response (error items excluded)."""
        return self.chunks - self.error_items

    @property
    def partial_text(self) -> str:
        """The output text delivered so far (joined on demand, never per chunk)."""
        return "".join(self.text)

    @property
    def finish_reason_list(self) -> list[str]:
        """Finish reasons by choice index (Responses: the terminal status mapped to a reason)."""
        return [self.finish_reasons[i] for i in sorted(self.finish_reasons)]

    def seconds_since_start(self, t: float | None) -> float | None:
        return None if t is None else t - self.start
