"""A :class:`~streamsentinel._resilience.store.BreakerStore` whose OPEN decision, open-until time and
HALF_OPEN probe permits are shared by every process through Redis (README "Running a fleet").

What is shared and what stays local (interlock-cb's design):

- The sliding windows stay in each process (an in-memory :class:`CircuitBreaker` per key, as without
  Redis): counting every call's result in Redis would cost a round trip per stream (Resilience4j's
  maintainers' objection to a central window).
- When a process's window trips, it *votes* (background write, Lua ``REPORT_OPEN``); the breaker opens
  fleet-wide once ``min_processes`` distinct processes have voted within the open wait. With the
  default 1, one process's outage opens the breaker everywhere (fast, but one bad host - its own
  network, its own event-loop stall - gates the whole fleet); with N > 1 it takes N processes, and a
  process whose window tripped alone is still protected by its own local breaker.
- The open wait runs on the Redis server's clock; the first lease after it moves the breaker to
  HALF_OPEN once fleet-wide (``LEASE``) and hands out exactly
  ``permitted_number_of_calls_in_half_open_state`` probe permits fleet-wide; their results
  (``RESULT``, version-fenced) decide CLOSED (every process then resets its local window) or OPEN
  again with the longer wait.

Hot path: a process's first call through a breaker reads it from Redis first (one round trip shared
by concurrent first calls, bounded by the fleet's ``timeout``), so a process started while the fleet's
breaker is OPEN sends nothing. Then ``acquire`` reads the fleet's view kept by the background refresh
(``fleet.py``): CLOSED ->
the local breaker decides, no Redis call; OPEN before its end -> rejected, no Redis call; OPEN past
its end or HALF_OPEN -> one inline ``LEASE`` (bounded by the fleet's ``timeout``; an error or timeout
falls back to the local breaker). Results of probes are written in the background.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._vocab import BreakerResult
from ..instrumentation._data import BreakerCall, BreakerTransition, Event
from .breaker import CircuitBreaker
from .breaker_config import DEFAULT_CONFIG, BreakerConfig, BreakerListener, Permit, State
from .fleet import Fleet, View
from .store import InMemoryBreakerStore

_FULL_CACHE = 0.2  # seconds a refused HALF_OPEN lease (every probe out) is not asked again


@dataclass(frozen=True, slots=True)
class FleetPermit(Permit):
    """A HALF_OPEN probe permit leased from Redis (``generation`` is the fleet breaker's version)."""


class _Forward:
    """The local breakers' listener: forwards to the runtime's listeners, and votes in Redis when a
    local window trips."""

    def __init__(self, store: RedisBreakerStore) -> None:
        self.store = store
        self.listeners: list[BreakerListener] = []

    def on_state_transition(self, breaker: CircuitBreaker, from_state: State, to_state: State) -> None:
        if to_state is State.OPEN and from_state is State.CLOSED:
            self.store.report(breaker.name)
        for listener in self.listeners:
            listener.on_state_transition(breaker, from_state, to_state)

    def on_call_not_permitted(self, breaker: CircuitBreaker) -> None:
        for listener in self.listeners:
            listener.on_call_not_permitted(breaker)

    def on_rates(self, breaker: CircuitBreaker, failure_rate: float, slow_call_rate: float) -> None:
        for listener in self.listeners:
            listener.on_rates(breaker, failure_rate, slow_call_rate)


class RedisBreakerStore:
    """Breakers shared through ``fleet`` (see the module docstring); same protocol and key folding
    (``max_breakers``) as :class:`InMemoryBreakerStore`. In ``shadow``/``off`` modes nothing is
    shared (those never reject)."""

    def __init__(
        self,
        fleet: Fleet,
        config: BreakerConfig = DEFAULT_CONFIG,
        *,
        listeners: Sequence[BreakerListener] = (),
        max_breakers: int = 1000,
        lease_ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.config = config
        self._forward = _Forward(self)
        self._forward.listeners.extend(listeners)
        self._local = InMemoryBreakerStore(
            config, clock=clock, listeners=[self._forward], max_breakers=max_breakers
        )
        self._clock = clock
        self._shared = config.mode == "enforce"
        self._permitted = config.permitted_number_of_calls_in_half_open_state
        # A round whose probes never came back (a prober died) is restarted after this long.
        self.lease_ttl = (
            lease_ttl if lease_ttl is not None else max(2 * config.slow_call_duration_threshold, 60.0)
        )
        self._emit: Callable[[Event], None] = lambda event: None
        fleet.on_view = self._on_view
        fleet.on_recovered = self._on_recovered

    def attach_events(self, emit: Callable[[Event], None], listener: BreakerListener) -> None:
        """Called by ``Circuits``: where fleet events go, and the listener of the local breakers."""
        self._emit = emit
        self._forward.listeners.append(listener)
        for breaker in self._local.breakers():  # a store used again by a new runtime
            breaker.report_rates_again()

    # -- BreakerStore ---------------------------------------------------------------------------

    def acquire(self, key: str) -> tuple[str, Permit | None]:
        breaker = self._local.get(key)
        name = breaker.name
        if self._shared and name not in self.fleet.views and not self.fleet.fallback:
            self.fleet.read_first(name)  # this process's first call through it: read it first (bounded)
        view = self._fleet_view(name)
        if view is None:
            return name, breaker.try_acquire()
        now = self._clock()
        if self._refused(name, view, now):
            return name, None
        try:
            answer = self.fleet.lease(name, self._permitted, self.lease_ttl)
        except Exception as exc:
            self.fleet.failed("lease", exc)
            return name, breaker.try_acquire()
        return name, self._leased(breaker, answer, now)

    async def acquire_async(self, key: str) -> tuple[str, Permit | None]:
        breaker = self._local.get(key)
        name = breaker.name
        if self._shared and name not in self.fleet.views and not self.fleet.fallback:
            await self.fleet.read_first_async(
                name
            )  # this process's first call through it: read it first (bounded)
        view = self._fleet_view(name)
        if view is None:
            return name, breaker.try_acquire()
        now = self._clock()
        if self._refused(name, view, now):
            return name, None
        try:
            answer = await self.fleet.lease_async(name, self._permitted, self.lease_ttl)
        except Exception as exc:
            self.fleet.failed("lease", exc)
            return name, breaker.try_acquire()
        return name, self._leased(breaker, answer, now)

    def release(
        self, name: str, permit: Permit, result: BreakerResult, *, duration: float, ttft: float | None
    ) -> None:
        if isinstance(permit, FleetPermit):
            outcome = result if result in ("success", "ignored") else "failure"
            self.fleet.queue_result(
                name, permit.generation, outcome, self._is_slow(duration, ttft), self.config
            )
            return
        self._local.release(name, permit, result, duration=duration, ttft=ttft)

    def state(self, name: str) -> State:
        view = self._fleet_view(name)
        if view is None:
            return self._local.state(name)
        if view.state == "open":
            return State.OPEN if self._clock() < view.open_until else State.HALF_OPEN
        return State.HALF_OPEN

    def retry_after(self, name: str) -> float:
        view = self._fleet_view(name)
        if view is None:
            return self._local.retry_after(name)
        if view.state == "open":
            return max(view.open_until - self._clock(), 0.0)
        return 0.0

    def breakers(self) -> list[CircuitBreaker]:
        """The local breakers (their windows); the fleet's state is :meth:`state`."""
        return self._local.breakers()

    # -- fleet ----------------------------------------------------------------------------------

    def _fleet_view(self, name: str, *, track: bool = True) -> View | None:
        """The fleet's view of ``name`` when it decides (OPEN or HALF_OPEN, Redis reachable)."""
        if not self._shared:
            return None
        fleet = self.fleet
        if track and name not in fleet._names:
            fleet.track(name)
        view = fleet.views.get(name)
        if view is None or view.state == "closed" or fleet.fallback:
            return None
        return view

    def _refused(self, name: str, view: View, now: float) -> bool:
        """True (refused without asking Redis) while OPEN or while every probe is out."""
        if (view.state == "open" and now < view.open_until) or now < view.full_until:
            self._emit(BreakerCall(name, "rejected"))
            return True
        return False

    def _leased(self, breaker: CircuitBreaker, answer: Any, now: float) -> Permit | None:
        granted = int(answer[0]) == 1
        view = self.fleet.set_view(breaker.name, answer[1:])
        if granted and view.state == "closed":
            return breaker.try_acquire()
        if granted:
            return FleetPermit(view.version, State.HALF_OPEN, now)
        if view.state == "half_open":
            self.fleet.mark_full(breaker.name, view, now + _FULL_CACHE)
        self._emit(BreakerCall(breaker.name, "rejected"))
        return None

    def _is_slow(self, duration: float, ttft: float | None) -> bool:
        c = self.config
        if duration > c.slow_call_duration_threshold:
            return True
        return c.slow_ttft_threshold is not None and ttft is not None and ttft > c.slow_ttft_threshold

    def report(self, name: str) -> None:
        """This process's window for ``name`` tripped: vote in Redis (background)."""
        if not self._shared:
            return
        view = self.fleet.views.get(name)
        self.fleet.queue_report(name, view.version if view is not None else -1, self.config)

    def _on_view(self, name: str, old: View | None, new: View) -> None:
        before = old.state if old is not None else "closed"
        if before != new.state and self._local.get(name).state.value != new.state:
            # (a transition this process's own breaker made is already reported by its listener)
            self._emit(BreakerTransition(name, before, new.state))
        if new.state == "closed" and before != "closed":
            # The fleet closed after its probes: this process's window starts afresh too.
            local = self._local.get(name)
            if local.state in (State.OPEN, State.HALF_OPEN):
                local.transition_to_closed()

    def _on_recovered(self) -> None:
        """Redis is back: vote again for the breakers whose local window is open."""
        for breaker in self._local.breakers():
            if breaker.state is State.OPEN:
                self.report(breaker.name)
