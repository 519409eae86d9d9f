"""Hold-back: while a retry is still possible, items known to carry no output (the role chunk,
``response.created``) are held, so a retry cannot duplicate anything the consumer saw. A component
the stream controller owns (``StreamController.holding`` is it while holding, else None)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HoldBack(list[Any]):
    """The held items of one attempt (a list: one object per open stream, as a plain list was)."""

    __slots__ = ()

    def hold(self, item: Any, out: list[Any], preamble: Callable[[Any], bool]) -> bool:
        """Whether ``item`` is held (``preamble``: the API's ``is_preamble``). False ends the hold:
        the first item not known to carry no output; what was held goes to ``out`` ahead of it."""
        try:
            hold = preamble(item)
        except Exception:
            hold = False
        if hold:
            self.append(item)
            return True
        if self:
            out.extend(self)
            self.clear()
        return False

    def flush(self, out: list[Any]) -> None:
        """The stream ends: what was held goes to ``out`` (the plain SDK had delivered it)."""
        if self:
            out.extend(self)
            self.clear()
