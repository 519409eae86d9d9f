"""The circuit breaker wired into streaming calls: which breaker guards a call, its fallback, and
its events turned into sink events.

A call acquires a permit before its first HTTP request; a rejected call raises
:class:`~streamsentinel.errors.CircuitOpenError` at once (or is served by the fallback) and no
request is made. The result is given back when the STREAM ends, as ``taxonomy.breaker_result``
classifies it. Semantics: ``breaker.py``; state: a ``BreakerStore`` (``store.py``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .. import _forksafe as forksafe
from ..instrumentation._data import BreakerCall, BreakerRates, BreakerState, BreakerTransition, Event
from .breaker import CircuitBreaker
from .breaker_config import BreakerConfig, State
from .store import BreakerStore, InMemoryBreakerStore

BreakerKey = Callable[[str, str, str, Mapping[str, Any]], str]
"""``(operation, server, model, request kwargs) -> key``: which breaker guards a call."""

Fallback = str | Callable[[Mapping[str, Any]], Any]
"""A model name to call instead, or ``(request kwargs) -> stream`` (may return an awaitable)."""


def default_key(operation: str, server: str, model: str, request: Mapping[str, Any]) -> str:
    """``"{server}/{model}"``: one breaker per upstream and model (both labels already bounded)."""
    return f"{server}/{model}"


def _ratio(percent: float) -> float:
    # Sinks get ratios; below the minimum number of calls there is no rate (NaN).
    return percent / 100 if percent >= 0 else math.nan


class _ToEvents:
    """A ``BreakerListener`` that turns breaker events into sink events."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._emit = emit
        self._rates: dict[str, tuple[float, float]] = {}  # latest per breaker (bounded by the store)

    def on_state_transition(self, breaker: CircuitBreaker, from_state: State, to_state: State) -> None:
        self._emit(BreakerTransition(breaker.name, from_state.value, to_state.value))

    def on_call_not_permitted(self, breaker: CircuitBreaker) -> None:
        self._emit(BreakerCall(breaker.name, "rejected"))

    def on_rates(self, breaker: CircuitBreaker, failure_rate: float, slow_call_rate: float) -> None:
        rates = (failure_rate, slow_call_rate)
        if self._rates.get(breaker.name) == rates:
            return  # the gauges already show them (a window of successes stays at 0: no event)
        self._rates[breaker.name] = rates
        self._emit(BreakerRates(breaker.name, _ratio(failure_rate), _ratio(slow_call_rate)))


class Circuits:
    """The breakers of one instrumentation: key, fallback and store."""

    def __init__(
        self,
        config: BreakerConfig,
        emit: Callable[[Event], None],
        *,
        key: BreakerKey | None = None,
        fallback: Fallback | None = None,
        store: BreakerStore | None = None,
    ) -> None:
        self.enabled = config.mode != "off"
        self.key = key or default_key
        self.fallback = fallback
        self._emit = emit
        self.store: BreakerStore = store or InMemoryBreakerStore(config, listeners=[_ToEvents(emit)])
        attach = getattr(self.store, "attach_events", None)
        if store is not None and attach is not None:  # a store that emits (RedisBreakerStore)
            attach(emit, _ToEvents(emit))
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._seen = set()  # exported again by the child ("the first time this process uses it")

    def first_use(self, name: str) -> None:
        """Export a breaker's state the first time this process uses it."""
        if name in self._seen:
            return
        with self._lock:
            if name in self._seen:
                return
            self._seen.add(name)
        self._emit(BreakerState(name, self.store.state(name).value))

    def served_by_fallback(self, name: str) -> None:
        self._emit(BreakerCall(name, "fallback"))
