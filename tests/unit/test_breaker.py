"""The circuit breaker: every transition, the windows, the timeout-streak rule, generations,
listeners, the registry, and permits under thread and task concurrency. A fake clock drives time:
no sleeps, no timing assertions."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import structlog.testing

from streamsentinel._resilience.breaker import CircuitBreaker
from streamsentinel._resilience.breaker_config import (
    BreakerConfig,
    BreakerSnapshot,
    Permit,
    SlidingWindowType,
    State,
)
from streamsentinel._resilience.breaker_window import CountWindow, TimeWindow, WindowTotals
from streamsentinel._resilience.store import BreakerRegistry

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
DISABLED, FORCED_OPEN, METRICS_ONLY = State.DISABLED, State.FORCED_OPEN, State.METRICS_ONLY


class FakeClock:
    """A clock that moves only when told (thread-safe ``advance``)."""

    def __init__(self, now: float = 1000.0, *, yielding: bool = False) -> None:
        self.now = now
        self.yielding = yielding
        self._lock = threading.Lock()

    def __call__(self) -> float:
        if self.yielding:
            # The breaker reads its clock inside its critical sections: hand the GIL over right
            # there, so a missing lock shows up as a race instead of hiding behind the GIL.
            os.sched_yield()
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class Recorder:
    """A listener that keeps every event (list.append is atomic: safe from any thread)."""

    def __init__(self) -> None:
        self.transitions: list[tuple[State, State]] = []
        self.rejected = 0
        self.rates: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def on_state_transition(self, breaker: CircuitBreaker, from_state: State, to_state: State) -> None:
        self.transitions.append((from_state, to_state))

    def on_call_not_permitted(self, breaker: CircuitBreaker) -> None:
        with self._lock:
            self.rejected += 1

    def on_rates(self, breaker: CircuitBreaker, failure_rate: float, slow_call_rate: float) -> None:
        self.rates.append((failure_rate, slow_call_rate))


class Raising:
    """A listener whose every method raises."""

    def on_state_transition(self, breaker: CircuitBreaker, from_state: State, to_state: State) -> None:
        raise RuntimeError("boom")

    def on_call_not_permitted(self, breaker: CircuitBreaker) -> None:
        raise RuntimeError("boom")

    def on_rates(self, breaker: CircuitBreaker, failure_rate: float, slow_call_rate: float) -> None:
        raise RuntimeError("boom")


@pytest.fixture
def tight_switching() -> Iterator[None]:
    """Switch threads as often as possible, so races show up."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def make(clock: FakeClock | None = None, **overrides: Any) -> tuple[CircuitBreaker, FakeClock, Recorder]:
    clock = clock or FakeClock()
    rec = Recorder()
    breaker = CircuitBreaker("test", BreakerConfig(**overrides), clock=clock, listeners=[rec])
    return breaker, clock, rec


def acquire(breaker: CircuitBreaker) -> Permit:
    permit = breaker.try_acquire()
    assert permit is not None
    return permit


def succeed(breaker: CircuitBreaker, n: int = 1, *, duration: float = 1.0, ttft: float | None = None) -> None:
    for _ in range(n):
        breaker.on_success(acquire(breaker), duration=duration, ttft=ttft)


def fail(breaker: CircuitBreaker, n: int = 1, *, duration: float = 1.0, timeout: bool = False) -> None:
    for _ in range(n):
        breaker.on_failure(acquire(breaker), duration=duration, timeout=timeout)


def open_then_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.transition_to_open()
    clock.advance(breaker.retry_after())
    assert breaker.state is HALF_OPEN


# -- config ------------------------------------------------------------------------------------


def test_defaults_are_resilience4j_s() -> None:
    c = BreakerConfig()
    assert (c.failure_rate_threshold, c.slow_call_rate_threshold, c.slow_call_duration_threshold) == (
        50.0,
        100.0,
        60.0,
    )
    assert (c.sliding_window_type, c.sliding_window_size, c.minimum_number_of_calls) == (
        SlidingWindowType.COUNT_BASED,
        100,
        20,
    )
    assert c.permitted_number_of_calls_in_half_open_state == 5
    assert c.mode == "enforce"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.mode = "off"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("failure_rate_threshold", 0.0, "failure_rate_threshold must be a percentage in (0, 100]"),
        ("failure_rate_threshold", 100.5, "failure_rate_threshold must be a percentage"),
        ("failure_rate_threshold", math.nan, "failure_rate_threshold must be a percentage"),
        ("slow_call_rate_threshold", -1.0, "slow_call_rate_threshold must be a percentage"),
        ("slow_call_duration_threshold", 0.0, "slow_call_duration_threshold must be > 0"),
        ("slow_ttft_threshold", 0.0, "slow_ttft_threshold must be None or > 0"),
        (
            "sliding_window_type",
            "sliding",
            "sliding_window_type must be one of ['count_based', 'time_based']",
        ),
        ("sliding_window_size", 0, "sliding_window_size must be an integer >= 1"),
        ("sliding_window_size", 2.5, "sliding_window_size must be an integer >= 1"),
        ("minimum_number_of_calls", True, "minimum_number_of_calls must be an integer >= 1"),
        ("permitted_number_of_calls_in_half_open_state", 0, "permitted_number_of_calls_in_half_open_state"),
        ("wait_duration_in_open_state", 0.0, "wait_duration_in_open_state must be finite and > 0"),
        ("max_wait_duration_in_open_state", 10.0, "max_wait_duration_in_open_state must be finite and >= "),
        ("max_wait_duration_in_open_state", math.inf, "max_wait_duration_in_open_state must be finite"),
        ("wait_interval_multiplier", 0.5, "wait_interval_multiplier must be >= 1"),
        ("timeout_streak_min_seconds", -1.0, "timeout_streak_min_seconds must be finite and >= 0"),
        ("mode", "on", "mode must be one of ['enforce', 'shadow', 'off']"),
    ],
)
def test_config_validation(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        BreakerConfig(**{field: value})
    assert str(info.value).startswith(message)


def test_window_type_accepts_its_string_value() -> None:
    c = BreakerConfig(sliding_window_type="time_based")  # type: ignore[arg-type]
    assert c.sliding_window_type is SlidingWindowType.TIME_BASED


def test_enum_values_are_label_values() -> None:
    assert [str(s) for s in State] == [
        "closed",
        "open",
        "half_open",
        "disabled",
        "forced_open",
        "metrics_only",
    ]
    assert f"{State.HALF_OPEN}" == "half_open"
    assert State("forced_open") is FORCED_OPEN
    assert str(SlidingWindowType.TIME_BASED) == "time_based"


@pytest.mark.parametrize(
    ("mode", "state"), [("enforce", CLOSED), ("shadow", METRICS_ONLY), ("off", DISABLED)]
)
def test_mode_sets_the_initial_state(mode: Any, state: State) -> None:
    breaker, _, rec = make(mode=mode)
    assert breaker.state is state
    assert breaker.snapshot().generation == 0
    assert rec.transitions == []


# -- windows -----------------------------------------------------------------------------------


def test_count_window_ring_buffer_evicts_the_oldest() -> None:
    w = CountWindow(3)
    assert w.record(True, False, 0.0) == WindowTotals(1, 1, 0)
    assert w.record(False, True, 0.0) == WindowTotals(2, 1, 1)
    assert w.record(True, True, 0.0) == WindowTotals(3, 2, 2)
    assert w.record(False, False, 0.0) == WindowTotals(3, 1, 2)  # evicts (failed)
    assert w.record(False, False, 0.0) == WindowTotals(3, 1, 1)  # evicts (slow)
    assert w.record(False, False, 0.0) == WindowTotals(3, 0, 0)  # evicts (failed, slow)
    assert w.totals(1e9) == WindowTotals(3, 0, 0)  # time plays no part


def test_time_window_buckets_expire_with_the_clock() -> None:
    w = TimeWindow(10)
    w.record(True, False, 1000.0)
    w.record(True, True, 1000.9)
    w.record(False, False, 1005.5)
    assert w.totals(1009.999) == WindowTotals(3, 2, 1)  # bucket 1000 is still in 1000..1009
    assert w.totals(1010.0) == WindowTotals(1, 0, 0)  # bucket 1000 left; 1005 stays
    assert w.totals(1014.999) == WindowTotals(1, 0, 0)
    assert w.totals(1015.0) == WindowTotals(0, 0, 0)
    w.record(True, False, 1016.0)
    assert w.totals(5000.0) == WindowTotals(0, 0, 0)  # a gap longer than the window clears all
    w.record(True, False, 5000.0)
    assert w.totals(4999.0) == WindowTotals(1, 1, 0)  # a clock going back does not corrupt totals


# -- closed -> open --------------------------------------------------------------------------


def test_trips_on_failure_rate_after_the_result_that_reaches_it() -> None:
    breaker, _, rec = make(minimum_number_of_calls=20)
    succeed(breaker, 10)
    fail(breaker, 9)
    assert breaker.state is CLOSED
    assert breaker.snapshot().failure_rate == -1.0  # 19 < 20 calls: no rate
    fail(breaker)
    snap = breaker.snapshot()
    assert snap.state is OPEN
    assert (snap.failure_rate, snap.buffered_calls, snap.failed_calls) == (50.0, 20, 10)
    assert rec.transitions == [(CLOSED, OPEN)]


def test_minimum_number_of_calls() -> None:
    breaker, _, rec = make(minimum_number_of_calls=20)
    fail(breaker, 19)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate, snap.slow_call_rate, snap.buffered_calls) == (
        CLOSED,
        -1.0,
        -1.0,
        19,
    )
    assert rec.rates[-1] == (-1.0, -1.0)
    fail(breaker)
    assert breaker.state is OPEN
    assert rec.rates[-1] == (100.0, 0.0)


def test_count_window_smaller_than_minimum_calls_uses_the_window_size() -> None:
    breaker, _, _ = make(sliding_window_size=10, minimum_number_of_calls=20)
    fail(breaker, 9)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is OPEN  # Resilience4j: min(minimumNumberOfCalls, slidingWindowSize)


def test_threshold_boundary_49_99_does_not_trip_50_does() -> None:
    breaker, _, _ = make(sliding_window_size=10_000, minimum_number_of_calls=10_000)
    succeed(breaker, 5001)
    fail(breaker, 4999)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate) == (CLOSED, 49.99)
    fail(breaker)  # evicts the oldest success: 5000 / 10000
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate) == (OPEN, 50.0)


def test_count_based_window_evicts_old_results() -> None:
    breaker, _, _ = make(sliding_window_size=4, minimum_number_of_calls=4, failure_rate_threshold=60.0)
    fail(breaker)
    succeed(breaker, 3)
    assert breaker.snapshot().failure_rate == 25.0
    succeed(breaker)  # the failure leaves the window
    snap = breaker.snapshot()
    assert (snap.buffered_calls, snap.failed_calls, snap.failure_rate) == (4, 0, 0.0)
    fail(breaker, 2)
    assert (breaker.state, breaker.snapshot().failure_rate) == (CLOSED, 50.0)
    fail(breaker)
    assert (breaker.state, breaker.snapshot().failure_rate) == (OPEN, 75.0)


def test_time_based_window_counts_only_the_last_seconds() -> None:
    breaker, clock, _ = make(
        sliding_window_type=SlidingWindowType.TIME_BASED, sliding_window_size=10, minimum_number_of_calls=4
    )
    fail(breaker, 3)
    clock.advance(9.999)
    assert breaker.snapshot().buffered_calls == 3
    clock.advance(0.001)  # t = 10 s: the failures' bucket leaves the window
    assert breaker.snapshot().buffered_calls == 0
    fail(breaker)
    succeed(breaker, 3)  # 1 of 4 (it would be 4 of 7 = 57 % without expiry)
    snap = breaker.snapshot()
    assert (snap.state, snap.buffered_calls, snap.failure_rate) == (CLOSED, 4, 25.0)
    fail(breaker)
    assert (breaker.state, breaker.snapshot().failure_rate) == (CLOSED, 40.0)
    fail(breaker)
    assert (breaker.state, breaker.snapshot().failure_rate) == (OPEN, 50.0)


def test_trips_on_slow_call_rate_by_duration() -> None:
    breaker, _, rec = make(
        minimum_number_of_calls=4, slow_call_rate_threshold=50.0, slow_call_duration_threshold=10.0
    )
    succeed(breaker, 2, duration=10.0)  # not slow: slow means longer than the threshold
    succeed(breaker, duration=10.001)
    assert (breaker.state, breaker.snapshot().slow_call_rate) == (CLOSED, -1.0)
    succeed(breaker, duration=30.0)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate, snap.slow_call_rate, snap.slow_calls) == (OPEN, 0.0, 50.0, 2)
    assert rec.rates[-1] == (0.0, 50.0)


def test_trips_on_slow_call_rate_by_time_to_first_token() -> None:
    breaker, _, _ = make(minimum_number_of_calls=4, slow_call_rate_threshold=50.0, slow_ttft_threshold=2.0)
    succeed(breaker, duration=5.0, ttft=2.0)
    succeed(breaker, duration=5.0)  # no first token reported: judged by duration alone
    succeed(breaker, duration=5.0, ttft=2.5)
    assert breaker.state is CLOSED
    succeed(breaker, duration=5.0, ttft=9.0)
    assert (breaker.state, breaker.snapshot().slow_calls) == (OPEN, 2)


def test_a_call_can_be_failed_and_slow() -> None:
    breaker, _, _ = make(minimum_number_of_calls=2, slow_call_duration_threshold=1.0)
    breaker.on_failure(acquire(breaker), duration=2.0)
    succeed(breaker, duration=0.5)
    snap = breaker.snapshot()
    assert (snap.buffered_calls, snap.failed_calls, snap.slow_calls) == (2, 1, 1)
    assert (snap.failure_rate, snap.slow_call_rate) == (50.0, 50.0)


def test_ttft_is_ignored_without_a_ttft_threshold() -> None:
    breaker, _, _ = make(minimum_number_of_calls=1)
    succeed(breaker, duration=1.0, ttft=59.0)
    assert breaker.snapshot().slow_calls == 0


# -- open, half-open, waits ---------------------------------------------------------------------


def test_open_rejects_until_exactly_the_wait_then_half_open() -> None:
    breaker, clock, rec = make(minimum_number_of_calls=1)
    fail(breaker)
    assert breaker.state is OPEN
    assert breaker.try_acquire() is None
    assert breaker.retry_after() == 30.0
    clock.now = 1029.999
    assert breaker.try_acquire() is None
    assert breaker.state is OPEN
    assert breaker.retry_after() == pytest.approx(0.001)
    clock.now = 1030.0  # exactly 30 s after opening
    assert breaker.retry_after() == 0.0
    assert breaker.state is HALF_OPEN
    assert rec.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]
    assert breaker.snapshot().not_permitted_calls == 2
    assert rec.rejected == 2


def test_try_acquire_moves_open_to_half_open_and_takes_a_probe() -> None:
    breaker, clock, rec = make(minimum_number_of_calls=1)
    fail(breaker)
    clock.advance(30.0)
    permit = breaker.try_acquire()
    assert permit is not None
    assert (permit.state, permit.generation, permit.acquired_at) == (HALF_OPEN, 2, 1030.0)
    assert rec.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_half_open_permits_exactly_n_and_closes_with_a_fresh_window() -> None:
    breaker, clock, rec = make(minimum_number_of_calls=1)
    fail(breaker)
    clock.advance(30.0)
    permits = [breaker.try_acquire() for _ in range(7)]
    granted = [p for p in permits if p is not None]
    assert len(granted) == 5
    assert permits[5:] == [None, None]
    for p in granted[:4]:
        breaker.on_success(p, duration=1.0)
    snap = breaker.snapshot()
    assert (snap.state, snap.buffered_calls, snap.failure_rate) == (HALF_OPEN, 4, -1.0)
    assert breaker.try_acquire() is None  # 4 recorded + 1 out: no more probes
    breaker.on_failure(granted[4], duration=1.0)  # 1 of 5 = 20 % < 50 %
    snap = breaker.snapshot()
    assert (snap.state, snap.buffered_calls, snap.open_wait) == (CLOSED, 0, 30.0)
    assert rec.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert rec.rejected == 3


def test_half_open_reopens_at_the_threshold() -> None:
    breaker, clock, rec = make(minimum_number_of_calls=1, permitted_number_of_calls_in_half_open_state=4)
    fail(breaker)
    clock.advance(30.0)
    succeed(breaker, 2)
    fail(breaker, 2)  # 2 of 4 = 50 %
    assert breaker.state is OPEN
    snap = breaker.snapshot()
    assert (snap.failure_rate, snap.buffered_calls, snap.open_wait) == (
        50.0,
        4,
        60.0,
    )  # keeps the probes' window
    assert rec.transitions[-1] == (HALF_OPEN, OPEN)


def test_half_open_reopens_on_slow_probes() -> None:
    breaker, clock, _ = make(minimum_number_of_calls=1, slow_call_rate_threshold=60.0)
    fail(breaker)
    clock.advance(30.0)
    succeed(breaker, 2)
    succeed(breaker, 3, duration=61.0)
    assert breaker.state is OPEN


def test_open_wait_doubles_on_each_reopening_caps_and_resets_after_closing() -> None:
    breaker, clock, rec = make(minimum_number_of_calls=1, permitted_number_of_calls_in_half_open_state=1)
    fail(breaker)
    waits = [breaker.retry_after()]
    for _ in range(5):
        opened_at = clock.now
        clock.now = opened_at + waits[-1] - 0.001
        assert breaker.state is OPEN
        clock.now = opened_at + waits[-1]
        fail(breaker)  # the single probe fails: open again, longer
        waits.append(breaker.retry_after())
    assert waits == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    assert breaker.snapshot().open_wait == 300.0
    clock.advance(300.0)
    succeed(breaker)  # the probe succeeds: closed, wait back to base
    assert breaker.state is CLOSED
    assert breaker.snapshot().open_wait == 30.0
    fail(breaker)
    assert breaker.retry_after() == 30.0
    assert rec.transitions.count((HALF_OPEN, OPEN)) == 5
    assert rec.transitions.count((HALF_OPEN, CLOSED)) == 1


def test_huge_number_of_reopenings_stays_at_the_cap() -> None:
    c = BreakerConfig(wait_interval_multiplier=10.0, max_wait_duration_in_open_state=600.0)
    assert c.open_wait(1) == 30.0
    assert c.open_wait(2) == 300.0
    assert c.open_wait(10_000) == 600.0  # no OverflowError


def test_on_ignored_releases_a_half_open_permit_and_counts_nothing() -> None:
    breaker, clock, rec = make(minimum_number_of_calls=1, permitted_number_of_calls_in_half_open_state=2)
    fail(breaker)
    clock.advance(30.0)
    a, b = acquire(breaker), acquire(breaker)
    assert breaker.try_acquire() is None
    breaker.on_ignored(a)
    c = acquire(breaker)
    assert breaker.try_acquire() is None
    n_rates = len(rec.rates)
    assert breaker.snapshot().buffered_calls == 0
    breaker.on_success(b, duration=1.0)
    breaker.on_success(c, duration=1.0)
    assert breaker.state is CLOSED
    assert len(rec.rates) == n_rates + 2


def test_on_ignored_in_closed_records_nothing() -> None:
    breaker, _, rec = make()
    breaker.on_ignored(acquire(breaker))
    assert breaker.snapshot().buffered_calls == 0
    assert rec.rates == []


# -- generations -------------------------------------------------------------------------------


def test_late_result_from_an_earlier_state_is_ignored() -> None:
    breaker, clock, rec = make(minimum_number_of_calls=2)
    long_stream = acquire(breaker)  # started while closed
    fail(breaker, 2)
    assert breaker.state is OPEN
    before = breaker.snapshot()
    breaker.on_success(long_stream, duration=120.0)  # ends after the breaker opened
    assert breaker.snapshot() == before
    clock.advance(30.0)
    probe = acquire(breaker)
    breaker.on_failure(long_stream, duration=150.0)  # must not count as a half-open probe
    breaker.on_ignored(long_stream)  # nor release one
    snap = breaker.snapshot()
    assert (snap.state, snap.buffered_calls, snap.generation) == (HALF_OPEN, 0, 2)
    assert len(rec.rates) == 2
    breaker.on_success(probe, duration=1.0)
    assert breaker.snapshot().buffered_calls == 1


def test_generation_counts_every_transition_including_self_transitions() -> None:
    breaker, _, rec = make(minimum_number_of_calls=1)
    permit = acquire(breaker)
    breaker.transition_to_closed()  # fresh closed state: no event, new generation
    assert rec.transitions == []
    assert breaker.snapshot().generation == 1
    breaker.on_failure(permit, duration=1.0)
    assert (breaker.state, breaker.snapshot().buffered_calls) == (CLOSED, 0)


# -- timeout-streak rule -----------------------------------------------------------------------


def streak_breaker() -> tuple[CircuitBreaker, FakeClock, Recorder]:
    return make(clock=FakeClock(0.0), minimum_number_of_calls=4, sliding_window_size=20)


def test_timeout_burst_within_a_second_does_not_trip() -> None:
    breaker, clock, rec = streak_breaker()
    for _ in range(5):  # t = 0, 0.25, ..., 1.0
        fail(breaker, timeout=True)
        clock.advance(0.25)
    assert (breaker.state, breaker.snapshot().failure_rate) == (CLOSED, 100.0)
    clock.now = 4.999
    fail(breaker, timeout=True)
    assert breaker.state is CLOSED
    clock.now = 5.0  # the streak has lasted 5 s
    fail(breaker, timeout=True)
    assert breaker.state is OPEN
    assert rec.transitions == [(CLOSED, OPEN)]


def test_a_success_resets_the_timeout_streak() -> None:
    breaker, clock, _ = streak_breaker()
    for t in (0.0, 0.5, 1.0, 1.5):
        clock.now = t
        fail(breaker, timeout=True)
    clock.now = 4.0
    succeed(breaker)  # ends the streak; a burst followed by a success never trips
    assert breaker.state is CLOSED
    clock.now = 5.0
    fail(breaker, timeout=True)  # a new streak starts at 5 s
    clock.now = 9.999
    fail(breaker, timeout=True)
    assert breaker.state is CLOSED
    clock.now = 10.0
    fail(breaker, timeout=True)
    assert breaker.state is OPEN


def test_a_non_timeout_failure_trips_at_once() -> None:
    breaker, clock, _ = streak_breaker()
    for t in (0.0, 0.5, 1.0, 1.0):
        clock.now = t
        fail(breaker, timeout=True)
    assert breaker.state is CLOSED
    fail(breaker, timeout=False)  # mixed failures trip normally
    assert breaker.state is OPEN


def test_mixed_failures_trip_normally_even_when_a_timeout_comes_first() -> None:
    breaker, _, _ = streak_breaker()
    fail(breaker, timeout=True)
    fail(breaker, 3)
    assert breaker.state is OPEN


def test_non_timeout_failures_then_a_success_trip() -> None:
    breaker, _, _ = make(minimum_number_of_calls=4)
    fail(breaker, 3)
    succeed(breaker)  # the 4th result reaches the minimum: 75 %, and the failures were not timeouts
    assert breaker.state is OPEN


def test_timeout_streak_rule_disabled_with_zero() -> None:
    breaker, _, _ = make(minimum_number_of_calls=4, timeout_streak_min_seconds=0.0)
    fail(breaker, 4, timeout=True)
    assert breaker.state is OPEN


def test_timeouts_count_normally_in_half_open() -> None:
    breaker, clock, _ = make(minimum_number_of_calls=1)
    fail(breaker)
    clock.advance(30.0)
    fail(breaker, 5, timeout=True)
    assert breaker.state is OPEN


# -- disabled, forced open, metrics only, manual transitions --------------------------------------


def test_disabled_permits_everything_and_records_nothing() -> None:
    breaker, clock, rec = make(mode="off", minimum_number_of_calls=1)
    fail(breaker, 100)
    clock.advance(1e6)
    snap = breaker.snapshot()
    assert (snap.state, snap.buffered_calls, snap.failure_rate, snap.not_permitted_calls) == (
        DISABLED,
        0,
        -1.0,
        0,
    )
    assert breaker.retry_after() == 0.0
    assert rec.rates == [] and rec.transitions == []


def test_forced_open_rejects_until_a_manual_transition() -> None:
    breaker, clock, rec = make()
    permit = acquire(breaker)
    breaker.transition_to_forced_open()
    for _ in range(3):
        clock.advance(1e6)
        assert breaker.try_acquire() is None
    assert breaker.retry_after() == math.inf
    breaker.on_failure(permit, duration=1.0)  # a call from before: ignored
    snap = breaker.snapshot()
    assert (snap.state, snap.not_permitted_calls, snap.buffered_calls) == (FORCED_OPEN, 3, 0)
    breaker.transition_to_closed()
    assert breaker.try_acquire() is not None
    assert rec.transitions == [(CLOSED, FORCED_OPEN), (FORCED_OPEN, CLOSED)]
    assert rec.rejected == 3


def test_metrics_only_records_and_reports_but_never_transitions_or_rejects() -> None:
    breaker, clock, rec = make(mode="shadow", minimum_number_of_calls=10)
    fail(breaker, 100, timeout=False)
    clock.advance(1e6)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate, snap.buffered_calls, snap.not_permitted_calls) == (
        METRICS_ONLY,
        100.0,
        100,
        0,
    )
    assert rec.transitions == []
    # Reported when they change: none below the minimum, then 100 % from the 10th call on.
    assert rec.rates == [(-1.0, -1.0), (100.0, 0.0)]
    assert breaker.retry_after() == 0.0


def test_manual_transitions_and_reset() -> None:
    breaker, _, rec = make(minimum_number_of_calls=1)
    breaker.transition_to_open()
    assert breaker.retry_after() == 30.0
    breaker.transition_to_open()  # re-opening before closing: longer (Resilience4j attempts + 1)
    assert breaker.retry_after() == 60.0
    breaker.transition_to_half_open()
    breaker.transition_to_metrics_only()
    breaker.transition_to_disabled()
    breaker.transition_to_forced_open()
    breaker.transition_to_closed()
    assert rec.transitions == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, METRICS_ONLY),
        (METRICS_ONLY, DISABLED),
        (DISABLED, FORCED_OPEN),
        (FORCED_OPEN, CLOSED),
    ]
    assert breaker.snapshot().generation == 7  # the OPEN -> OPEN restart counts, unreported


def test_reset_empties_the_window_and_restores_the_base_wait() -> None:
    breaker, clock, rec = make(minimum_number_of_calls=1, permitted_number_of_calls_in_half_open_state=1)
    fail(breaker)
    clock.advance(30.0)
    fail(breaker)
    assert (breaker.state, breaker.retry_after()) == (OPEN, 60.0)
    breaker.reset()
    snap = breaker.snapshot()
    assert (snap.state, snap.buffered_calls, snap.open_wait, snap.not_permitted_calls) == (CLOSED, 0, 30.0, 0)
    fail(breaker)
    assert breaker.retry_after() == 30.0
    n = len(rec.transitions)
    breaker.transition_to_closed()
    breaker.reset()  # already closed: no event (Resilience4j), but a fresh window
    assert len(rec.transitions) == n + 1  # only the OPEN -> CLOSED of transition_to_closed
    assert breaker.snapshot().buffered_calls == 0


def test_snapshot_is_frozen() -> None:
    snap = make()[0].snapshot()
    assert isinstance(snap, BreakerSnapshot)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.generation = 5  # type: ignore[misc]


# -- listeners ---------------------------------------------------------------------------------


def test_listeners_see_the_exact_sequence_of_a_full_cycle() -> None:
    breaker, clock, rec = make(minimum_number_of_calls=2, permitted_number_of_calls_in_half_open_state=2)
    fail(breaker, 2)
    assert breaker.try_acquire() is None
    clock.advance(30.0)
    fail(breaker, 2)  # probes fail: open for 60 s
    clock.advance(59.0)
    assert breaker.try_acquire() is None
    clock.advance(1.0)
    succeed(breaker, 2)
    assert rec.transitions == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert rec.rejected == 2
    assert rec.rates == [(-1.0, -1.0), (100.0, 0.0), (-1.0, -1.0), (100.0, 0.0), (-1.0, -1.0), (0.0, 0.0)]


def test_a_raising_listener_breaks_nothing() -> None:
    clock = FakeClock()
    rec = Recorder()
    breaker = CircuitBreaker(
        "b", BreakerConfig(minimum_number_of_calls=1), clock=clock, listeners=[Raising(), rec, Raising()]
    )
    with structlog.testing.capture_logs() as logs:
        fail(breaker)
        assert breaker.try_acquire() is None
        clock.advance(30.0)
        succeed(breaker, 5)
    assert breaker.state is CLOSED
    assert rec.transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert (rec.rejected, rec.rates) == (1, [(100.0, 0.0), (-1.0, -1.0), (0.0, 0.0)])
    # Each broken listener is logged once, not once per event.
    assert [(e["event"], e["breaker"], e["listener"]) for e in logs] == [
        ("breaker.listener_error", "b", "Raising")
    ] * 2


def test_a_listener_may_call_back_into_the_breaker() -> None:
    clock = FakeClock()
    seen: list[tuple[State, State, BreakerSnapshot]] = []

    class Reentrant(Recorder):
        def on_state_transition(self, breaker: CircuitBreaker, from_state: State, to_state: State) -> None:
            seen.append((from_state, to_state, breaker.snapshot()))
            if to_state is OPEN:
                breaker.transition_to_forced_open()  # queued, delivered after this one

    breaker = CircuitBreaker(
        "b", BreakerConfig(minimum_number_of_calls=1), clock=clock, listeners=[Reentrant()]
    )
    worker = threading.Thread(
        target=fail, args=(breaker,), daemon=True
    )  # a deadlock fails the test, not the run
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert [(f, t) for f, t, _ in seen] == [(CLOSED, OPEN), (OPEN, FORCED_OPEN)]
    assert breaker.state is FORCED_OPEN


# -- registry ----------------------------------------------------------------------------------


def test_registry_creates_one_breaker_per_key_and_folds_past_the_bound() -> None:
    clock = FakeClock()
    rec = Recorder()
    config = BreakerConfig(minimum_number_of_calls=1)
    registry = BreakerRegistry(config, clock=clock, listeners=[rec], max_breakers=2)
    a = registry.get("gpt-4o")
    assert registry.get("gpt-4o") is a
    b = registry.get("gpt-4o-mini")
    c = registry.get("o3")
    assert c.name == "_other"
    assert registry.get("o4-mini") is c
    assert registry.get("_other") is c
    assert registry.get("gpt-4o") is a
    assert [x.name for x in registry.breakers()] == ["gpt-4o", "gpt-4o-mini", "_other"]
    assert a.config is config and b.config is config
    fail(a)
    assert (a.state, b.state) == (OPEN, CLOSED)
    assert rec.transitions == [(CLOSED, OPEN)]
    with pytest.raises(ValueError, match="max_breakers must be an integer >= 1"):
        BreakerRegistry(max_breakers=0)


def test_registry_get_is_thread_safe(tight_switching: None) -> None:
    registry = BreakerRegistry(max_breakers=10)
    barrier = threading.Barrier(50)
    got: list[CircuitBreaker] = []

    def worker(i: int) -> None:
        barrier.wait()
        got.append(registry.get(f"k{i % 20}"))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert len(got) == 50
    assert len(registry.breakers()) == 11  # 10 keys + _other
    assert len({id(b) for b in got}) == 11


# -- concurrency -------------------------------------------------------------------------------


def half_open_breaker() -> tuple[CircuitBreaker, FakeClock, Recorder]:
    breaker, clock, rec = make(minimum_number_of_calls=1, permitted_number_of_calls_in_half_open_state=5)
    fail(breaker)
    clock.advance(30.0)
    assert breaker.state is HALF_OPEN
    return breaker, clock, rec


def test_200_threads_get_exactly_5_half_open_permits(tight_switching: None) -> None:
    breaker, clock, rec = half_open_breaker()
    clock.yielding = True
    barrier = threading.Barrier(200)
    permits: list[Permit | None] = []

    def worker() -> None:
        barrier.wait()
        permits.append(breaker.try_acquire())

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    granted = [p for p in permits if p is not None]
    assert (len(permits), len(granted)) == (200, 5)
    assert breaker.snapshot().not_permitted_calls == 195
    assert rec.rejected == 195
    for p in granted:
        breaker.on_success(p, duration=1.0)
    assert breaker.state is CLOSED


async def test_2000_tasks_get_exactly_5_half_open_permits() -> None:
    breaker, _, rec = half_open_breaker()
    start = asyncio.Event()

    async def task() -> Permit | None:
        await start.wait()
        await asyncio.sleep(0)
        return breaker.try_acquire()

    pending = asyncio.gather(*(task() for _ in range(2000)))
    await asyncio.sleep(0)
    start.set()
    permits = await pending
    granted = [p for p in permits if p is not None]
    assert len(granted) == 5
    assert breaker.snapshot().not_permitted_calls == 1995
    assert rec.rejected == 1995

    async def finish(p: Permit) -> None:
        await asyncio.sleep(0)
        breaker.on_success(p, duration=1.0)

    await asyncio.gather(*(finish(p) for p in granted))
    assert breaker.state is CLOSED


def test_threads_recording_while_others_acquire_do_not_deadlock(tight_switching: None) -> None:
    clock = FakeClock(yielding=True)
    rec = Recorder()
    config = BreakerConfig(
        sliding_window_size=50, minimum_number_of_calls=10, wait_duration_in_open_state=1.0
    )
    breaker = CircuitBreaker("mixed", config, clock=clock, listeners=[rec])
    rounds = 400
    barrier = threading.Barrier(16)
    lock = threading.Lock()
    counts = {"attempts": 0, "granted": 0, "recorded": 0}

    def recorder(seed: int) -> None:
        barrier.wait()
        for i in range(rounds):
            permit = breaker.try_acquire()
            with lock:
                counts["attempts"] += 1
                counts["granted"] += permit is not None
            if permit is None:
                continue
            kind = (seed + i) % 4
            if kind == 0:
                breaker.on_ignored(permit)
            elif kind == 1:
                breaker.on_success(permit, duration=1.0)
            else:
                breaker.on_failure(permit, duration=1.0, timeout=kind == 3)
            with lock:
                counts["recorded"] += kind != 0

    def acquirer() -> None:
        barrier.wait()
        for _ in range(rounds):
            clock.advance(0.01)  # time moves with the work: open waits elapse, probes go out
            permit = breaker.try_acquire()
            with lock:
                counts["attempts"] += 1
                counts["granted"] += permit is not None
            if permit is not None:
                breaker.on_ignored(permit)
            breaker.snapshot()
            breaker.retry_after()

    threads = [threading.Thread(target=recorder, args=(s,), daemon=True) for s in range(8)]
    threads += [threading.Thread(target=acquirer, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)

    snap = breaker.snapshot()
    assert counts["attempts"] == 16 * rounds
    assert snap.not_permitted_calls == counts["attempts"] - counts["granted"] == rec.rejected
    assert snap.buffered_calls <= 50
    assert 0 <= snap.failed_calls <= snap.buffered_calls
    assert len(rec.rates) <= counts["recorded"]
    # Events arrive in order: each transition starts where the previous one ended.
    assert rec.transitions[0] == (CLOSED, OPEN)
    for (_, prev_to), (nxt_from, _) in zip(rec.transitions[:-1], rec.transitions[1:], strict=True):
        assert nxt_from is prev_to
    assert rec.transitions[-1][1] is snap.state
    assert snap.generation == len(rec.transitions)


def test_rates_are_reported_when_they_change_and_again_on_request() -> None:
    """Listeners hear the window's rates when a result changes them; a listener added later (a
    store used by a new runtime) hears the current ones with the next result after
    report_rates_again()."""
    breaker, _clock, rec = make(minimum_number_of_calls=2)
    succeed(breaker, 4)
    assert rec.rates == [(-1.0, -1.0), (0.0, 0.0)]
    breaker.report_rates_again()
    succeed(breaker)
    assert rec.rates == [(-1.0, -1.0), (0.0, 0.0), (0.0, 0.0)]
