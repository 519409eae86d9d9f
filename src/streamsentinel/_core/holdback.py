"""Hold-back: while a retry is still possible, items known to carry no output (the role chunk,
``response.created``) are held, so a retry cannot duplicate anything the consumer saw. A component
the stream controller owns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HoldBack:
    """The held items of one attempt. ``holding``: still possible (no other item came yet)."""

    __slots__ = ("held", "holding", "preamble")

    def __init__(self, holding: bool, preamble: Callable[[Any], bool]) -> None:
        self.holding = holding
        self.preamble = preamble
        self.held: list[Any] = []

    def hold(self, item: Any, out: list[Any]) -> bool:
        """Whether ``item`` is held (call only while ``holding``). The first item not known to
        carry no output ends the hold: what was held goes to ``out`` ahead of it."""
        try:
            hold = self.preamble(item)
        except Exception:
            hold = False
        if hold:
            self.held.append(item)
            return True
        self.holding = False
        if self.held:
            out.extend(self.held)
            self.held.clear()
        return False

    def flush(self, out: list[Any]) -> None:
        """The stream ends: what was held goes to ``out`` (the plain SDK had delivered it)."""
        if self.held:
            out.extend(self.held)
            self.held.clear()

    def drop(self) -> None:
        """A cancellation or a retry: the held items are not delivered."""
        self.held.clear()

    def restart(self, holding: bool) -> None:
        """A retry's new attempt: nothing of it reached the consumer."""
        self.holding = holding
        self.held.clear()
