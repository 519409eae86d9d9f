"""Circuit breaker settings and values, named as Resilience4j's (``CircuitBreakerConfig``,
``CircuitBreaker.State``): the vocabulary shared by the state machine (``breaker.py``), its stores
(``store.py``) and the public API (``streamsentinel.BreakerConfig``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from .breaker import CircuitBreaker


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


class _DefaultMode(str):
    """``"enforce"``, told apart from an ``"enforce"`` the user wrote: ``instrument(mode="observe")``
    turns only the default into ``shadow``."""


DEFAULT_MODE: Mode = _DefaultMode("enforce")  # type: ignore[assignment]
"""Initial state: ``enforce`` -> closed, ``shadow`` -> metrics_only, ``off`` -> disabled."""

INITIAL_STATE: dict[str, State] = {
    "enforce": State.CLOSED,
    "shadow": State.METRICS_ONLY,
    "off": State.DISABLED,
}


def is_int(value: object) -> bool:
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
    - ``mode``: the initial state (``enforce``, ``shadow``, ``off``); when not given, ``enforce``,
      or ``shadow`` under ``instrument(mode="observe")``.
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
    mode: Mode = DEFAULT_MODE

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
            if not is_int(value) or value < 1:
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
        if self.mode not in INITIAL_STATE:
            raise ValueError(f"mode must be one of {list(INITIAL_STATE)}, got {self.mode!r}")

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
        """A result was recorded and the window's rates changed: the rates after it (percent,
        -1.0 below minimum calls). Not called when a result leaves both rates as they were."""
