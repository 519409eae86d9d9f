"""The mutable per-stream state the controller and the chunk readers fill: plain slots, no sink
handle, no SDK object. Only the controller writes it (and the readers it calls), plus one field the
watchdog thread sets (``timeout_kind``, a single reference store).

Times are ``time.perf_counter()`` seconds. Token counts are None until the server reports usage.
"""

from __future__ import annotations

from typing import Any, Protocol

from .taxonomy import (
    Failure,
    TruncationReason,
    WatchdogKind,
    classify_in_stream_event,
    is_complete,
    silent_reason,
)

_NEVER = float("inf")


class Wire(Protocol):
    """What the SSE decoder hook saw on the wire (``streamsentinel._sdk.sse.ObservedSSEDecoder``)."""

    @property
    def done(self) -> bool:
        """``data: [DONE]`` arrived."""

    @property
    def saw_event(self) -> bool:
        """At least one SSE event was decoded."""

    @property
    def ended_inside_event(self) -> bool:
        """The body ended inside an event (the SDK dropped it)."""

    @property
    def terminal_seen(self) -> bool:
        """The last event was a Responses terminal event."""


class StreamState:
    """What one logical stream has delivered so far (reset for each retry: nothing of a retried
    attempt reached the consumer)."""

    __slots__ = (
        "cached_tokens",
        "chunks",
        "error_items",
        "events",
        "finish_reasons",
        "first_at",
        "first_item_at",
        "gaps",
        "in_stream_error",
        "input_tokens",
        "is_sse",
        "last_at",
        "last_seq",
        "max_gap",
        "odd_items",
        "output_tokens",
        "read_at",
        "reasoning_tokens",
        "response_id",
        "response_model",
        "terminal",
        "text",
        "timeout_kind",
        "tool_args",
        "wire",
    )

    def __init__(self, *, keep_gaps: bool) -> None:
        self.events: list[Any] = []  # the stream's timeline (frozen events), kept across attempts
        self.new_attempt(keep_gaps=keep_gaps)

    def new_connection(self) -> None:
        """A new HTTP stream for the same request (a resume): forget the connection's facts."""
        self.wire: Wire | None = None
        self.is_sse = True  # the response declared text/event-stream
        self.timeout_kind: WatchdogKind | None = None  # set by the watchdog when it closed the stream
        # When the consumer's pending read began (0: not reading): the one field the drivers write,
        # stamped around each read (two controller calls per read instead cost +61 ns, +70 %).
        self.read_at = 0.0
        self.terminal: str | None = None
        self.in_stream_error: tuple[str | None, str] | None = None
        # Made by the first finish reason: most of an open stream's life has none.
        self.finish_reasons: dict[int, str] | None = None

    def new_attempt(self, *, keep_gaps: bool) -> None:
        """A retry: nothing the previous attempt read reached the consumer."""
        self.new_connection()
        self.chunks = 0
        self.error_items = 0  # error events the SDK yielded as items (not payload)
        self.odd_items = 0  # items of a shape the readers could not read (never our error)
        self.first_item_at: float | None = None
        self.first_at: float | None = None  # the first item that carried output
        self.last_at = _NEVER  # the first item's gap is -inf: it has none
        self.max_gap = 0.0
        self.gaps: list[float] | None = [] if keep_gaps else None
        self.text: list[Any] = []  # choice 0's text pieces, as delivered (joined at the end)
        self.tool_args: list[Any] | None = None  # choice 0's tool-call argument pieces (made by the first)
        self.last_seq: int | None = None  # Responses: sequence_number of the last event
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.cached_tokens: int | None = None

    def finished(self, index: int, reason: Any) -> None:
        """Choice ``index`` reported its finish ``reason``."""
        reasons = self.finish_reasons
        if reasons is None:
            reasons = self.finish_reasons = {}
        reasons[index] = reason

    def tool_pieces(self) -> list[Any]:
        """Choice 0's tool-call argument pieces, to append to."""
        pieces = self.tool_args
        if pieces is None:
            pieces = self.tool_args = []
        return pieces

    @property
    def payload_chunks(self) -> int:
        """Items delivered that carried the response (error items excluded)."""
        return self.chunks - self.error_items

    def joined(self, pieces: list[Any]) -> str:
        """Pieces joined as text; a non-string piece (the SDK does not validate) is converted."""
        try:
            return "".join(pieces)  # the usual case, in C
        except TypeError:
            return "".join(p if isinstance(p, str) else str(p) for p in pieces)

    # -- what the wire says (the rules are taxonomy's) -------------------------------------------------

    def complete(self, terminal_event: bool, *, closed_early: bool = False) -> bool:
        """Whether the stream reached its terminal marker (``taxonomy.is_complete``);
        ``terminal_event``: the API ends with a terminal event (``ApiAdapter.terminal_event``)."""
        wire = self.wire
        # The terminal event matters to such an API only (and reading it off the wire costs).
        terminal = terminal_event and (self.terminal is not None or (wire is not None and wire.terminal_seen))
        return is_complete(
            terminal_event,
            wire.done if wire is not None else None,
            terminal,
            bool(self.finish_reasons),
            closed_early=closed_early,
        )

    def all_finished(self, choices: int) -> bool:
        """Every one of ``choices`` choices reported its finish reason."""
        reasons = self.finish_reasons
        return reasons is not None and bool(reasons) and all(i in reasons for i in range(choices))

    def in_stream_failure(self) -> Failure | None:
        """The failure of an error event the SDK yielded as an item, if one came."""
        error = self.in_stream_error
        return classify_in_stream_event(*error) if error is not None else None

    def silent_reason(self) -> TruncationReason:
        """Why a stream the SDK ended without error was short (``taxonomy.silent_reason``)."""
        wire = self.wire
        saw_event = wire.saw_event if wire is not None else self.chunks > 0
        return silent_reason(saw_event, self.is_sse, wire is not None and wire.ended_inside_event)
