"""Resuming a stream after output has reached the consumer (opt-in ``resume=``).

- ``replay``: re-issue the same request and read the new stream from the start. The server sends
  the same items again, so the replay's first N items, N the items already delivered (across every
  earlier attempt), are skipped by position, and every later one flows on: the consumer sees each
  item exactly once, those without text included (finish reasons, ``*.done`` events). The skipped
  items must carry exactly the output delivered (choice 0's text, and separately its tool-call
  arguments); any difference raises :class:`~streamsentinel.errors.StreamDivergedError`. Useful
  with deterministic backends (``temperature=0`` with a ``seed``, caches, replaying proxies).
- ``responses``: a Responses API stream created with ``background=True`` is continued with
  ``responses.retrieve(id, stream=True, starting_after=<last sequence_number>)`` (OpenAI keeps such
  responses for about five minutes); the server sends only what came after.

Counted in ``openai_stream_resumes_total{strategy,result}`` (``resumed``, ``diverged``,
``failed``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

ResumeStrategy = Literal["off", "replay", "responses"]

# Channels of output compared separately: 0 = text, 1 = tool-call arguments (an API adapter's
# ``output_piece`` says which piece of which an item carries).
TEXT, ARGS = 0, 1


class Diverged(Exception):
    """The replay's output differs from what was delivered (carries both, for the public error)."""

    def __init__(self, delivered: str, received: str) -> None:
        super().__init__("diverged")
        self.delivered = delivered
        self.received = received


class ReplaySkipper:
    """Skips a replayed stream's first ``count`` items (those already delivered), checking that they
    carry exactly the ``delivered`` output.

    ``feed(item)`` is called for each of them; it raises :class:`Diverged` on the first difference
    (or, at the last one, when the replay's output is longer or shorter than what was delivered).
    ``done`` once ``count`` items were fed: the next items are new.
    """

    def __init__(
        self, output_piece: Callable[[Any], tuple[int, str] | None], delivered: tuple[str, str], count: int
    ) -> None:
        self.output_piece = output_piece
        self.delivered = delivered
        self.positions = [0, 0]
        self.left = count

    @property
    def done(self) -> bool:
        return self.left <= 0

    def feed(self, item: Any) -> None:
        self.left -= 1
        found = self.output_piece(item)
        if found is not None:
            channel, piece = found
            delivered = self.delivered[channel]
            pos = self.positions[channel]
            if delivered[pos : pos + len(piece)] != piece:
                raise Diverged(delivered, delivered[:pos] + piece)
            self.positions[channel] = pos + len(piece)
        if self.left <= 0:
            short = self.unfinished()
            if short is not None:
                raise short

    def unfinished(self) -> Diverged | None:
        """At the replay's end (or its last skipped item): the divergence of a replay that gave back
        less than was delivered (less output, or fewer items), else None."""
        for channel, delivered in enumerate(self.delivered):
            if self.positions[channel] < len(delivered):
                return Diverged(delivered, delivered[: self.positions[channel]])
        if self.left > 0:
            return Diverged(self.delivered[TEXT], self.delivered[TEXT])
        return None
