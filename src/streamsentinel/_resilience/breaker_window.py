"""Sliding windows of call results for the circuit breaker (:mod:`streamsentinel.breaker`).

Both follow Resilience4j's ``SlidingWindowType``:

- :class:`CountWindow` (``COUNT_BASED``): the last ``size`` results, as Resilience4j's
  ``FixedSizeSlidingWindowMetrics``: a ring buffer plus running totals.
- :class:`TimeWindow` (``TIME_BASED``): the results of the last ``size`` seconds, as Resilience4j's
  ``SlidingTimeWindowMetrics``: one bucket per clock second plus running totals.

Recording and reading are O(1) (the time window also clears the buckets of the seconds that passed
since it last moved: at most ``size``, amortised O(1) per elapsed second). Neither is thread-safe:
the breaker calls them under its lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

# Bits of one slot of the count window.
_FILLED = 1
_FAILED = 2
_SLOW = 4


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """Totals over a window: ``calls`` (buffered results), of which ``failed`` and ``slow`` (a call
    can be both)."""

    calls: int
    failed: int
    slow: int


class SlidingWindow(Protocol):
    """What the breaker needs from a window. ``now`` is the breaker's clock, in seconds."""

    size: int

    def record(self, failed: bool, slow: bool, now: float) -> WindowTotals: ...

    def totals(self, now: float) -> WindowTotals: ...


class CountWindow:
    """The last ``size`` results."""

    __slots__ = ("_calls", "_failed", "_next", "_ring", "_slow", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring = bytearray(size)  # one slot per call: _FILLED | _FAILED | _SLOW bits
        self._next = 0
        self._calls = 0
        self._failed = 0
        self._slow = 0

    def record(self, failed: bool, slow: bool, now: float) -> WindowTotals:
        i = self._next
        evicted = self._ring[i]
        if evicted:
            self._calls -= 1
            self._failed -= (evicted & _FAILED) >> 1
            self._slow -= (evicted & _SLOW) >> 2
        self._ring[i] = _FILLED | (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self._next = i + 1 if i + 1 < self.size else 0
        self._calls += 1
        self._failed += failed
        self._slow += slow
        return WindowTotals(self._calls, self._failed, self._slow)

    def totals(self, now: float) -> WindowTotals:
        return WindowTotals(self._calls, self._failed, self._slow)


class TimeWindow:
    """The results of the last ``size`` seconds, in per-second buckets.

    A result recorded at clock time ``t`` falls in the bucket of second ``floor(t)`` and leaves the
    window when the clock reaches ``floor(t) + size``. A clock that goes back (never the case for
    ``time.monotonic``) records into the newest bucket.
    """

    __slots__ = ("_b_calls", "_b_failed", "_b_slow", "_calls", "_failed", "_head", "_slow", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._b_calls = [0] * size
        self._b_failed = [0] * size
        self._b_slow = [0] * size
        self._head: int | None = None  # the second of the newest bucket
        self._calls = 0
        self._failed = 0
        self._slow = 0

    def _advance(self, now: float) -> int:
        """Move the window to ``now``; return the index of the current bucket."""
        second = math.floor(now)
        head = self._head
        if head is None:
            self._head = second
            return second % self.size
        if second > head:
            # Clear the buckets of the seconds that passed; past ``size`` of them, all of them.
            for s in range(head + 1, head + 1 + min(second - head, self.size)):
                i = s % self.size
                self._calls -= self._b_calls[i]
                self._failed -= self._b_failed[i]
                self._slow -= self._b_slow[i]
                self._b_calls[i] = self._b_failed[i] = self._b_slow[i] = 0
            self._head = head = second
        return head % self.size

    def record(self, failed: bool, slow: bool, now: float) -> WindowTotals:
        i = self._advance(now)
        self._b_calls[i] += 1
        self._b_failed[i] += failed
        self._b_slow[i] += slow
        self._calls += 1
        self._failed += failed
        self._slow += slow
        return WindowTotals(self._calls, self._failed, self._slow)

    def totals(self, now: float) -> WindowTotals:
        self._advance(now)
        return WindowTotals(self._calls, self._failed, self._slow)
