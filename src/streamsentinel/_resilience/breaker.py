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

from .. import _forksafe as forksafe
from .._log import log
from .breaker_config import (
    DEFAULT_CONFIG,
    INITIAL_STATE,
    BreakerConfig,
    BreakerListener,
    BreakerSnapshot,
    Permit,
    SlidingWindowType,
    State,
)
from .breaker_window import CountWindow, SlidingWindow, TimeWindow, WindowTotals

_log = log

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
        self._last_rates = (math.nan, math.nan)  # the rates last reported to listeners
        self._state = INITIAL_STATE[config.mode]
        self._window, self._min_calls = self._main_window()
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        # The state and window are what this process knows of the backend: kept. The parent's
        # queued events and its probes' permits are the parent's to deliver and give back.
        self._lock = threading.Lock()
        self._dispatching = threading.Lock()
        self._events.clear()
        self._probes_out = 0

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
            state = self._state
            if state is State.OPEN:
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

    def report_rates_again(self) -> None:
        """The next result reports its rates to the listeners even if they did not change (a
        listener was added: it has not heard them yet)."""
        with self._lock:
            self._last_rates = (math.nan, math.nan)

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
            if self._listeners and (failure_rate, slow_rate) != self._last_rates:
                self._last_rates = (failure_rate, slow_rate)
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
                        except Exception as exc:
                            self._listener_failed(listener, exc)
            finally:
                self._dispatching.release()

    def _listener_failed(self, listener: BreakerListener, exc: Exception) -> None:
        """Log a listener's first exception only (``_dispatching`` is held): listeners run once per
        result. Its type and message, never a traceback (frame locals may hold requests)."""
        if id(listener) in self._broken_listeners:
            return
        self._broken_listeners.add(id(listener))
        try:
            _log.error(
                "breaker.listener_error",
                breaker=self.name,
                listener=type(listener).__name__,
                error_type=type(exc).__qualname__,
                error=str(exc)[:200],
                note="logged once per listener; later exceptions are swallowed silently",
            )
        except Exception:
            pass  # logging must not break the caller either
