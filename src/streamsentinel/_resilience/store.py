"""Where breaker state lives: the :class:`BreakerStore` protocol and the in-process store.

The core asks a store for a permit before a call's first request and gives the permit back with
the call's result when the stream ends; it never touches a breaker's state otherwise. A store
shared across processes (Redis) implements the same protocol in one more module. ``acquire_async``
exists so an event loop never blocks on a store that does I/O; the in-memory store answers both
at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .. import _forksafe as forksafe
from .._vocab import BreakerResult
from .breaker import CircuitBreaker
from .breaker_config import DEFAULT_CONFIG, BreakerConfig, BreakerListener, Permit, State, is_int

OTHER = "_other"
"""The breaker that every key past ``max_breakers`` shares (bounded ``breaker`` label values)."""


@runtime_checkable
class BreakerStore(Protocol):
    """Breaker state by key (a key names one breaker: by default ``"{server}/{model}"``).

    Every method is thread-safe and never raises for a known key; ``release`` is called exactly
    once per permit. ``duration`` and ``ttft`` are seconds (``ttft`` None: no output came).
    """

    def acquire(self, key: str) -> tuple[str, Permit | None]:
        """``(breaker name, permit)``; permit None: the call is not permitted (it was counted)."""

    async def acquire_async(self, key: str) -> tuple[str, Permit | None]:
        """:meth:`acquire` for an event loop: never blocks the loop."""

    def release(
        self, name: str, permit: Permit, result: BreakerResult, *, duration: float, ttft: float | None
    ) -> None:
        """Give ``permit`` back with the call's result (``success``, ``failure``, ``timeout``,
        ``ignored``; see ``taxonomy.breaker_result``)."""

    def state(self, name: str) -> State:
        """The breaker's current state."""

    def retry_after(self, name: str) -> float:
        """Seconds until the breaker permits a probe (``math.inf``: forced open; 0.0: permits)."""

    def breakers(self) -> list[CircuitBreaker]:
        """The breakers held in this process (for inspection and manual transitions)."""


class InMemoryBreakerStore:
    """One :class:`CircuitBreaker` per key in this process, created on first use with one config.

    Keys come from callers, so their number is bounded: past ``max_breakers`` distinct keys, every
    new key shares one breaker named ``_other`` (so ``breaker`` label values stay bounded, too).
    Unrelated keys folded into ``_other`` trip together: size ``max_breakers`` for the real keys.
    """

    def __init__(
        self,
        config: BreakerConfig = DEFAULT_CONFIG,
        *,
        clock: Callable[[], float] = time.monotonic,
        listeners: Sequence[BreakerListener] = (),
        max_breakers: int = 1000,
    ) -> None:
        if not is_int(max_breakers) or max_breakers < 1:
            raise ValueError(f"max_breakers must be an integer >= 1, got {max_breakers!r}")
        self.config = config
        self.max_breakers = max_breakers
        self._clock = clock
        self._listeners = tuple(listeners)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._named = 0  # breakers other than _other
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def get(self, key: str) -> CircuitBreaker:
        """The breaker for ``key`` (thread-safe; ``_other`` once ``max_breakers`` keys exist)."""
        breaker = self._breakers.get(key)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                if key != OTHER and self._named >= self.max_breakers:
                    key = OTHER  # folded keys are not remembered: memory stays bounded too
                    breaker = self._breakers.get(key)
                if breaker is None:
                    breaker = CircuitBreaker(key, self.config, clock=self._clock, listeners=self._listeners)
                    self._breakers[key] = breaker
                    self._named += key != OTHER
            return breaker

    def acquire(self, key: str) -> tuple[str, Permit | None]:
        breaker = self.get(key)
        return breaker.name, breaker.try_acquire()

    async def acquire_async(self, key: str) -> tuple[str, Permit | None]:
        return self.acquire(key)  # in-memory bookkeeping only: nothing to wait for

    def release(
        self, name: str, permit: Permit, result: BreakerResult, *, duration: float, ttft: float | None
    ) -> None:
        breaker = self.get(name)
        if result == "success":
            breaker.on_success(permit, duration=duration, ttft=ttft)
        elif result == "ignored":
            breaker.on_ignored(permit)
        else:
            breaker.on_failure(permit, duration=duration, ttft=ttft, timeout=result == "timeout")

    def state(self, name: str) -> State:
        return self.get(name).state

    def retry_after(self, name: str) -> float:
        return self.get(name).retry_after()

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker created so far (``_other`` included once it exists)."""
        with self._lock:
            return list(self._breakers.values())


# The registry's former name, kept for code that built breakers directly.
BreakerRegistry = InMemoryBreakerStore
