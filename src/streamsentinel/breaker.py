"""A failure-rate circuit breaker for streaming calls, with Resilience4j's semantics and names.

No Python breaker on PyPI trips on a failure *rate*, counts slow calls or limits half-open probes,
so this one follows Resilience4j's ``CircuitBreakerStateMachine`` (states, sliding windows,
``minimumNumberOfCalls``, exponential open waits, half-open permits) plus two lessons from LLM
gateways: a generation counter that drops late results, and a timeout-streak rule.

A *call* is one logical stream request. :meth:`CircuitBreaker.try_acquire` hands out a
:class:`Permit` (or None: reject the call); the caller reports the outcome with the permit when the
stream ENDS (:meth:`~CircuitBreaker.on_success`, :meth:`~CircuitBreaker.on_failure`,
:meth:`~CircuitBreaker.on_ignored`). The module knows nothing about HTTP or openai: the caller
classifies outcomes.

States (``State``, whose values are metric label values):

- ``closed``: every call is permitted; results go into the sliding window. After each result, once
  the window holds ``minimum_number_of_calls`` results, failure rate >= ``failure_rate_threshold``
  or slow-call rate >= ``slow_call_rate_threshold`` (percentages of the buffered calls) -> ``open``.
- ``open``: calls are rejected until the open wait has elapsed since opening; the next state read
  or ``try_acquire`` then moves to ``half_open`` (lazily, as Resilience4j without its scheduler).
  The first opening waits ``wait_duration_in_open_state``; each re-opening before the breaker has
  closed again multiplies the previous wait by ``wait_interval_multiplier``, capped at
  ``max_wait_duration_in_open_state`` (Resilience4j's exponential ``IntervalFunction``).
- ``half_open``: exactly ``permitted_number_of_calls_in_half_open_state`` probes are permitted; once
  that many results are recorded they are evaluated alone: over a threshold -> ``open`` (longer
  wait), else -> ``closed`` with a fresh window and the base wait.
- ``disabled``: always permits, records nothing, never transitions by itself.
- ``forced_open``: always rejects, until a manual transition.
- ``metrics_only`` (``mode="shadow"``): always permits, records results and reports rates
  (``on_rates``), but never transitions and never rejects (Resilience4j's ``METRICS_ONLY``). Compare
  its ``failure_rate`` with the thresholds to see what ``enforce`` would have done.

Every transition (manual ones included, and a manual transition to the current state, which starts
that state afresh) increments the generation; a result whose permit came from another generation is
ignored entirely (e.g. a long stream that started while closed and ends after the breaker opened).
As in Resilience4j, a transition to the same state is not reported to listeners.

Timeout-streak rule (one event-loop stall times out every in-flight call at once): a *failure run*
is the failures recorded since the last success (a success ends it; the next failure starts a new
one). A failure-rate trip from ``closed`` is held back while the latest run holds only timeouts
(``timeout=True``) and has not lasted ``timeout_streak_min_seconds`` from its first timeout to now
without a success; a run ended by a success never qualifies. Held back, the breaker stays closed
and keeps recording; the next result re-evaluates. A run with any non-timeout failure trips at
once. Slow-call-rate trips are not held back.

Thread- and asyncio-safe: one ``threading.Lock`` per breaker, held only for in-memory bookkeeping,
never across I/O, an ``await`` or a listener. Listeners are called after the lock is released, in
the order the events happened, possibly from another caller's thread; their exceptions are
swallowed (each listener's first one is logged).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal, Protocol

import structlog

from .breaker_window import CountWindow, SlidingWindow, TimeWindow, WindowTotals
from .metrics import OTHER

_log = structlog.get_logger("streamsentinel")


class State(str, Enum):
    """Breaker states (Resilience4j's ``CircuitBreaker.State``); values are metric label values."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"
    FORCED_OPEN = "forced_open"
    METRICS_ONLY = "metrics_only"

    def __str__(self) -> str:
        return self.value


class SlidingWindowType(str, Enum):
    """``count_based``: the last N calls; ``time_based``: the calls of the last N seconds."""

    COUNT_BASED = "count_based"
    TIME_BASED = "time_based"

    def __str__(self) -> str:
        return self.value


Mode = Literal["enforce", "shadow", "off"]
"""Initial state: ``enforce`` -> closed, ``shadow`` -> metrics_only, ``off`` -> disabled."""

_INITIAL_STATE: dict[str, State] = {
    "enforce": State.CLOSED,
    "shadow": State.METRICS_ONLY,
    "off": State.DISABLED,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Breaker settings, named and defaulted as Resilience4j's ``CircuitBreakerConfig``.

    Rates are percentages (0, 100]; durations are seconds.

    - ``failure_rate_threshold``: trip when the failure rate >= this.
    - ``slow_call_rate_threshold``: trip when the slow-call rate >= this (100: only all-slow trips).
    - ``slow_call_duration_threshold``: a call whose duration exceeds this is slow.
    - ``slow_ttft_threshold``: a call whose time to first token exceeds this is slow (None: not
      used; a call that reports no ``ttft`` is judged by its duration alone).
    - ``sliding_window_type`` / ``sliding_window_size``: the last N calls, or the last N seconds.
    - ``minimum_number_of_calls``: no rate is computed (or acted on) below this many buffered calls.
      A count-based window uses ``min(minimum_number_of_calls, sliding_window_size)``, as
      Resilience4j, so a small window can trip at all.
    - ``wait_duration_in_open_state``: the first opening's wait; ``wait_interval_multiplier``
      multiplies it at each re-opening before the breaker closes again, up to
      ``max_wait_duration_in_open_state``.
    - ``permitted_number_of_calls_in_half_open_state``: probes permitted, and evaluated together.
    - ``timeout_streak_min_seconds``: how long a timeout-only failure run must last before it may
      trip a closed breaker (0: timeouts trip like any failure). See the module docstring.
    - ``mode``: the initial state (``enforce``, ``shadow``, ``off``).
    """

    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration_threshold: float = 60.0
    slow_ttft_threshold: float | None = None
    sliding_window_type: SlidingWindowType = SlidingWindowType.COUNT_BASED
    sliding_window_size: int = 100
    minimum_number_of_calls: int = 20
    wait_duration_in_open_state: float = 30.0
    wait_interval_multiplier: float = 2.0
    max_wait_duration_in_open_state: float = 300.0
    permitted_number_of_calls_in_half_open_state: int = 5
    timeout_streak_min_seconds: float = 5.0
    mode: Mode = "enforce"

    def __post_init__(self) -> None:
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if not (0.0 < value <= 100.0):  # also rejects NaN
                raise ValueError(f"{name} must be a percentage in (0, 100], got {value!r}")
        if not self.slow_call_duration_threshold > 0.0:
            raise ValueError(
                f"slow_call_duration_threshold must be > 0 seconds, got {self.slow_call_duration_threshold!r}"
            )
        if self.slow_ttft_threshold is not None and not self.slow_ttft_threshold > 0.0:
            raise ValueError(
                f"slow_ttft_threshold must be None or > 0 seconds, got {self.slow_ttft_threshold!r}"
            )
        try:  # accept the plain string too ("time_based"), e.g. from an environment variable
            object.__setattr__(self, "sliding_window_type", SlidingWindowType(self.sliding_window_type))
        except ValueError:
            raise ValueError(
                f"sliding_window_type must be one of {[t.value for t in SlidingWindowType]}, "
                f"got {self.sliding_window_type!r}"
            ) from None
        for name in (
            "sliding_window_size",
            "minimum_number_of_calls",
            "permitted_number_of_calls_in_half_open_state",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        wait, cap = self.wait_duration_in_open_state, self.max_wait_duration_in_open_state
        if not (0.0 < wait < math.inf):
            raise ValueError(f"wait_duration_in_open_state must be finite and > 0 seconds, got {wait!r}")
        if not (wait <= cap < math.inf):
            raise ValueError(
                f"max_wait_duration_in_open_state must be finite and >= wait_duration_in_open_state "
                f"({wait!r}), got {cap!r}"
            )
        if not (1.0 <= self.wait_interval_multiplier < math.inf):
            raise ValueError(f"wait_interval_multiplier must be >= 1, got {self.wait_interval_multiplier!r}")
        if not (0.0 <= self.timeout_streak_min_seconds < math.inf):
            raise ValueError(
                f"timeout_streak_min_seconds must be finite and >= 0, got {self.timeout_streak_min_seconds!r}"
            )
        if self.mode not in _INITIAL_STATE:
            raise ValueError(f"mode must be one of {list(_INITIAL_STATE)}, got {self.mode!r}")

    def open_wait(self, attempts: int) -> float:
        """The wait of the ``attempts``-th consecutive opening (1 = the first), in seconds."""
        try:
            wait = self.wait_duration_in_open_state * self.wait_interval_multiplier ** max(attempts - 1, 0)
        except OverflowError:
            return self.max_wait_duration_in_open_state
        return min(wait, self.max_wait_duration_in_open_state)


DEFAULT_CONFIG = BreakerConfig()


@dataclass(frozen=True, slots=True)
class Permit:
    """Permission for one call, handed out by ``try_acquire`` and given back with its result.

    ``generation`` and ``state`` are the breaker's when it was acquired; ``acquired_at`` is the
    breaker's clock then (seconds).
    """

    generation: int
    state: State
    acquired_at: float


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent view of one breaker.

    - ``failure_rate``, ``slow_call_rate``: percent over the current window; -1.0 below
      ``minimum_number_of_calls`` (half-open: below the permitted probes), as Resilience4j.
    - ``buffered_calls``, ``failed_calls``, ``slow_calls``: the current window's counts. The window is
      the closed one, or the half-open probes; ``open`` keeps the window that tripped it;
      ``disabled`` and ``forced_open`` have an empty one.
    - ``not_permitted_calls``: rejected calls since the breaker was created (never reset: a counter).
    - ``generation``: the number of transitions so far.
    - ``open_wait``: seconds; in ``open``/``half_open`` the wait of the latest opening, otherwise the
      wait the next opening would use.
    """

    state: State
    failure_rate: float
    slow_call_rate: float
    buffered_calls: int
    failed_calls: int
    slow_calls: int
    not_permitted_calls: int
    generation: int
    open_wait: float


class BreakerListener(Protocol):
    """Receives a breaker's events (e.g. to export metrics). Called outside the breaker's lock, in
    event order; exceptions are swallowed (the first one of each listener is logged)."""

    def on_state_transition(self, breaker: CircuitBreaker, from_state: State, to_state: State) -> None:
        """The breaker moved from ``from_state`` to ``to_state`` (never equal)."""

    def on_call_not_permitted(self, breaker: CircuitBreaker) -> None:
        """A call was rejected."""

    def on_rates(self, breaker: CircuitBreaker, failure_rate: float, slow_call_rate: float) -> None:
        """A result was recorded; the window's rates after it (percent, -1.0 below minimum calls)."""


_Event = Callable[[BreakerListener], None]

# States whose results are recorded into a window.
_RECORDING = frozenset({State.CLOSED, State.HALF_OPEN, State.METRICS_ONLY})
_PERMITTING = frozenset({State.CLOSED, State.DISABLED, State.METRICS_ONLY})


class CircuitBreaker:
    """One failure-rate circuit breaker. See the module docstring for the semantics.

    ``clock`` is a monotonic clock in seconds (injectable for tests). ``listeners`` receive the
    breaker's events. The initial state comes from ``config.mode``.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig = DEFAULT_CONFIG,
        *,
        clock: Callable[[], float] = time.monotonic,
        listeners: Sequence[BreakerListener] = (),
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._listeners = tuple(listeners)
        self._lock = threading.Lock()
        # Events queued under _lock, delivered in order by whichever caller holds _dispatching.
        self._events: deque[_Event] = deque()
        self._dispatching = threading.Lock()
        self._broken_listeners: set[int] = set()  # ids of listeners whose exception was logged
        self._not_permitted = 0
        self._generation = 0
        self._attempts = 0  # consecutive openings since the breaker was last closed (Resilience4j)
        self._open_until = 0.0
        self._probes_out = 0  # half-open permits handed out whose result is not back yet
        # The latest failure run (timeout-streak rule).
        self._run_start: float | None = None
        self._run_timeouts_only = True
        self._run_open = False
        self._state = _INITIAL_STATE[config.mode]
        self._window, self._min_calls = self._main_window()

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value!r})"

    # -- public API ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (moves ``open`` -> ``half_open`` first if the wait has elapsed)."""
        with self._lock:
            self._maybe_half_open(self._clock())
            state = self._state
        self._dispatch()
        return state

    def try_acquire(self) -> Permit | None:
        """A permit for one call, or None: the call is not permitted (reject it; it was counted)."""
        with self._lock:
            now = self._clock()
            self._maybe_half_open(now)
            state = self._state
            if state in _PERMITTING:
                permit: Permit | None = Permit(self._generation, state, now)
            elif (
                state is State.HALF_OPEN
                and self._probes_out + self._window.totals(now).calls
                < self.config.permitted_number_of_calls_in_half_open_state
            ):
                self._probes_out += 1
                permit = Permit(self._generation, state, now)
            else:
                permit = None
                self._not_permitted += 1
                if self._listeners:
                    self._events.append(lambda listener: listener.on_call_not_permitted(self))
        if self._events:
            self._dispatch()
        return permit

    def on_success(self, permit: Permit, *, duration: float, ttft: float | None = None) -> None:
        """The call of ``permit`` succeeded after ``duration`` seconds (first token after ``ttft``)."""
        self._on_result(permit, False, self._is_slow(duration, ttft), False)

    def on_failure(
        self, permit: Permit, *, duration: float, ttft: float | None = None, timeout: bool = False
    ) -> None:
        """The call of ``permit`` failed after ``duration`` seconds; ``timeout`` if it timed out."""
        self._on_result(permit, True, self._is_slow(duration, ttft), timeout)

    def on_ignored(self, permit: Permit) -> None:
        """The call of ``permit`` counts neither way (abandoned, cancelled, not the backend's fault):
        nothing is recorded; a half-open probe permit is released so another probe may go."""
        with self._lock:
            if permit.generation == self._generation and self._state is State.HALF_OPEN:
                self._probes_out = max(self._probes_out - 1, 0)

    def retry_after(self) -> float:
        """Seconds until an open breaker permits a probe; ``math.inf`` when forced open; else 0.0."""
        with self._lock:
            now = self._clock()
            self._maybe_half_open(now)
            if self._state is State.OPEN:
                wait = max(self._open_until - now, 0.0)
            elif self._state is State.FORCED_OPEN:
                wait = math.inf
            else:
                wait = 0.0
        self._dispatch()
        return wait

    def snapshot(self) -> BreakerSnapshot:
        """The state, rates and counters, read together."""
        with self._lock:
            now = self._clock()
            self._maybe_half_open(now)
            totals = self._window.totals(now)
            failure_rate, slow_rate = self._rates(totals)
            state = self._state
            attempts = self._attempts if state in (State.OPEN, State.HALF_OPEN) else self._attempts + 1
            snap = BreakerSnapshot(
                state=state,
                failure_rate=failure_rate,
                slow_call_rate=slow_rate,
                buffered_calls=totals.calls,
                failed_calls=totals.failed,
                slow_calls=totals.slow,
                not_permitted_calls=self._not_permitted,
                generation=self._generation,
                open_wait=self.config.open_wait(attempts),
            )
        self._dispatch()
        return snap

    # Manual transitions (Resilience4j's transitionTo*State). Each starts the target state afresh.

    def transition_to_closed(self) -> None:
        self._manual(State.CLOSED)

    def transition_to_open(self) -> None:
        """Open now; the wait escalates if the breaker has not closed since its last opening."""
        self._manual(State.OPEN)

    def transition_to_half_open(self) -> None:
        self._manual(State.HALF_OPEN)

    def transition_to_forced_open(self) -> None:
        self._manual(State.FORCED_OPEN)

    def transition_to_disabled(self) -> None:
        self._manual(State.DISABLED)

    def transition_to_metrics_only(self) -> None:
        self._manual(State.METRICS_ONLY)

    def reset(self) -> None:
        """Back to ``closed`` with an empty window and the base wait (whatever the mode)."""
        self._manual(State.CLOSED)

    # -- internals (the _lock is held unless said otherwise) ------------------------------------

    def _main_window(self) -> tuple[SlidingWindow, int]:
        c = self.config
        if c.sliding_window_type is SlidingWindowType.TIME_BASED:
            return TimeWindow(c.sliding_window_size), c.minimum_number_of_calls
        return CountWindow(c.sliding_window_size), min(c.minimum_number_of_calls, c.sliding_window_size)

    def _is_slow(self, duration: float, ttft: float | None) -> bool:
        c = self.config
        if duration > c.slow_call_duration_threshold:
            return True
        return c.slow_ttft_threshold is not None and ttft is not None and ttft > c.slow_ttft_threshold

    def _rates(self, totals: WindowTotals) -> tuple[float, float]:
        if totals.calls < self._min_calls:
            return -1.0, -1.0
        return totals.failed * 100.0 / totals.calls, totals.slow * 100.0 / totals.calls

    def _maybe_half_open(self, now: float) -> None:
        if self._state is State.OPEN and now >= self._open_until:
            self._enter(State.HALF_OPEN, now)

    def _enter(self, to: State, now: float) -> None:
        """Move to ``to`` (a fresh instance of it); queue the transition event."""
        from_state = self._state
        if to is State.OPEN:
            # Keep the window that tripped (Resilience4j's OpenState keeps the metrics).
            self._attempts += 1
            self._open_until = now + self.config.open_wait(self._attempts)
        elif to is State.HALF_OPEN:
            n = self.config.permitted_number_of_calls_in_half_open_state
            self._window, self._min_calls = CountWindow(n), n
        else:
            if to is not State.FORCED_OPEN:  # forced open is manual: it neither counts nor resets openings
                self._attempts = 0
            self._window, self._min_calls = self._main_window()
        self._probes_out = 0
        self._run_start = None
        self._run_timeouts_only = True
        self._run_open = False
        self._state = to
        self._generation += 1
        if from_state is not to and self._listeners:
            self._events.append(lambda listener: listener.on_state_transition(self, from_state, to))

    def _manual(self, to: State) -> None:
        """A manual transition (the lock is not held)."""
        with self._lock:
            self._enter(to, self._clock())
        self._dispatch()

    def _on_result(self, permit: Permit, failed: bool, slow: bool, timeout: bool) -> None:
        """Record one result (the lock is not held)."""
        with self._lock:
            state = self._state
            if permit.generation != self._generation or state not in _RECORDING:
                return  # a late result from an earlier state, or a disabled breaker
            now = self._clock()
            totals = self._window.record(failed, slow, now)
            failure_rate, slow_rate = self._rates(totals)
            if self._listeners:
                self._events.append(lambda listener: listener.on_rates(self, failure_rate, slow_rate))
            c = self.config
            if state is State.CLOSED:
                self._track_run(failed, timeout, now)
                failure_trip = failure_rate >= c.failure_rate_threshold and not self._held_back(now)
                if failure_trip or slow_rate >= c.slow_call_rate_threshold:
                    self._enter(State.OPEN, now)
            elif state is State.HALF_OPEN:
                self._probes_out = max(self._probes_out - 1, 0)
                if failure_rate >= 0.0:  # all permitted probes are back: decide on them alone
                    above = (
                        failure_rate >= c.failure_rate_threshold or slow_rate >= c.slow_call_rate_threshold
                    )
                    self._enter(State.OPEN if above else State.CLOSED, now)
            # METRICS_ONLY records and reports, never transitions.
        self._dispatch()

    def _track_run(self, failed: bool, timeout: bool, now: float) -> None:
        if not failed:
            self._run_open = False  # a success ends the run
        elif not self._run_open:
            self._run_start, self._run_timeouts_only, self._run_open = now, timeout, True
        elif not timeout:
            self._run_timeouts_only = False

    def _held_back(self, now: float) -> bool:
        """Whether the timeout-streak rule holds back a failure-rate trip."""
        if self._run_start is None or not self._run_timeouts_only:
            return False
        return not self._run_open or now - self._run_start < self.config.timeout_streak_min_seconds

    def _dispatch(self) -> None:
        """Deliver queued events in order (the lock is not held). If another caller is delivering,
        leave ours to it: it loops until the queue is empty, and we re-check after it lets go."""
        events = self._events
        while events:
            if not self._dispatching.acquire(blocking=False):
                return
            try:
                while events:
                    event = events.popleft()
                    for listener in self._listeners:
                        try:
                            event(listener)
                        except Exception:
                            self._listener_failed(listener)
            finally:
                self._dispatching.release()

    def _listener_failed(self, listener: BreakerListener) -> None:
        """Log a listener's first exception only (``_dispatching`` is held): listeners run once per
        result, and a traceback per call would cost more than the call's bookkeeping."""
        if id(listener) in self._broken_listeners:
            return
        self._broken_listeners.add(id(listener))
        try:
            _log.exception(
                "breaker.listener_error",
                breaker=self.name,
                listener=type(listener).__name__,
                note="logged once per listener; later exceptions are swallowed silently",
            )
        except Exception:
            pass  # logging must not break the caller either


class BreakerRegistry:
    """One breaker per key (e.g. a model or a server), created on first use with one config.

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
        if not _is_int(max_breakers) or max_breakers < 1:
            raise ValueError(f"max_breakers must be an integer >= 1, got {max_breakers!r}")
        self.config = config
        self.max_breakers = max_breakers
        self._clock = clock
        self._listeners = tuple(listeners)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._named = 0  # breakers other than _other
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

    def breakers(self) -> list[CircuitBreaker]:
        """Every breaker created so far (``_other`` included once it exists)."""
        with self._lock:
            return list(self._breakers.values())
