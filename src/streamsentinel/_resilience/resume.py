"""Resuming a stream after output has reached the consumer (opt-in ``resume=``).

- ``replay``: re-issue the same request and read the new stream from the start; its output must
  begin with exactly what was already delivered (choice 0's text, then separately its tool-call
  arguments). Items wholly inside the delivered output are skipped, the item that crosses the
  boundary is cut to its new part, and the rest flows on: the consumer sees every character exactly
  once. A difference raises :class:`~streamsentinel.errors.StreamDivergedError`. Useful with
  deterministic backends (``temperature=0`` with a ``seed``, caches, replaying proxies).
- ``responses``: a Responses API stream created with ``background=True`` is continued with
  ``responses.retrieve(id, stream=True, starting_after=<last sequence_number>)`` (OpenAI keeps such
  responses for about five minutes); the server sends only what came after.

Counted in ``openai_stream_resumes_total{strategy,result}`` (``resumed``, ``diverged``,
``failed``).
"""

from __future__ import annotations

from typing import Any, Literal

ResumeStrategy = Literal["off", "replay", "responses"]

# Channels of output compared separately: 0 = text, 1 = tool-call arguments.
TEXT, ARGS = 0, 1


def output_piece(operation: str, item: Any) -> tuple[int, str] | None:
    """The (channel, piece) of output ``item`` carries for choice 0, or None."""
    if operation == "responses":
        typ = item.type
        if typ == "response.output_text.delta":
            return TEXT, item.delta
        if typ == "response.function_call_arguments.delta":
            return ARGS, item.delta
        return None
    choices = item.choices
    if not choices:
        return None
    for choice in choices:
        if choice.index != 0:
            continue
        if operation == "text_completion":
            return (TEXT, choice.text) if choice.text else None
        delta = choice.delta
        if delta.content:
            return TEXT, delta.content
        if delta.tool_calls:
            arguments = "".join((call.function.arguments or "") for call in delta.tool_calls if call.function)
            return (ARGS, arguments) if arguments else None
    return None


def _cut(operation: str, item: Any, channel: int, keep_from: int) -> Any:
    """A copy of ``item`` whose piece in ``channel`` starts at ``keep_from``."""
    copy = item.model_copy(deep=True)
    if operation == "responses":
        copy.delta = copy.delta[keep_from:]
        return copy
    for choice in copy.choices:
        if choice.index != 0:
            continue
        if operation == "text_completion":
            choice.text = choice.text[keep_from:]
        elif channel == TEXT:
            choice.delta.content = choice.delta.content[keep_from:]
        else:  # one tool call per chunk in practice; cut the first that carries arguments
            for call in choice.delta.tool_calls:
                if call.function and call.function.arguments:
                    call.function.arguments = call.function.arguments[keep_from:]
                    break
    return copy


class Diverged(Exception):
    """The replay's output differs from what was delivered (carries both, for the public error)."""

    def __init__(self, delivered: str, received: str) -> None:
        super().__init__("diverged")
        self.delivered = delivered
        self.received = received


class ReplaySkipper:
    """Skips a replayed stream's items up to the output already delivered.

    ``feed(item)`` returns the item to deliver (possibly cut), or None to skip it; raises
    :class:`Diverged` on the first difference. ``done`` once every channel passed its delivered end.
    """

    def __init__(self, operation: str, delivered: tuple[str, str]) -> None:
        self.operation = operation
        self.delivered = delivered
        self.positions = [0, 0]

    @property
    def done(self) -> bool:
        return all(p >= len(d) for p, d in zip(self.positions, self.delivered, strict=True))

    def feed(self, item: Any) -> Any | None:
        found = output_piece(self.operation, item)
        if found is None:
            # No output: before the replay catches up it repeats what was delivered (role chunk,
            # response.created); after, it is new (finish reason, usage, done events).
            return item if self.done else None
        channel, piece = found
        delivered = self.delivered[channel]
        pos = self.positions[channel]
        if pos >= len(delivered):
            return item
        overlap = delivered[pos : pos + len(piece)]
        if not piece.startswith(overlap):
            raise Diverged(delivered, delivered[:pos] + piece)
        self.positions[channel] = pos + len(piece)
        if pos + len(piece) <= len(delivered):
            return None
        return _cut(self.operation, item, channel, len(delivered) - pos)

    def unfinished(self) -> Diverged | None:
        """At the replay's end: a replay shorter than what was delivered also diverged."""
        for channel, delivered in enumerate(self.delivered):
            if self.positions[channel] < len(delivered):
                return Diverged(delivered, delivered[: self.positions[channel]])
        return None
