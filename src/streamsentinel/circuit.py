"""The circuit breaker wired into streaming calls: one breaker per key, permits, results, rejections.

A call acquires a permit before its first HTTP request; a rejected call raises
:class:`~streamsentinel.errors.CircuitOpenError` at once (or is served by the fallback) and no
request is made. The result is reported when the STREAM ends: ``completed`` -> success; ``failed``
or ``truncated`` with a failure that counts for the breaker (``taxonomy.NOT_FOR_BREAKER``:
quota, request too large and 4xx are not the upstream's fault) -> failure, timeout-only kinds
marked as timeouts; anything else (abandoned, cancelled) -> ignored. Semantics: ``breaker.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from .breaker import BreakerConfig, BreakerRegistry, CircuitBreaker, Permit, State

if TYPE_CHECKING:
    from .metrics import Metrics
    from .observation import StreamObservation
    from .taxonomy import Failure

BreakerKey = Callable[[str, str, str, Mapping[str, Any]], str]
"""``(operation, server, model, request kwargs) -> key``: which breaker guards a call."""

Fallback = str | Callable[[Mapping[str, Any]], Any]
"""A model name to call instead, or ``(request kwargs) -> stream`` (may return an awaitable)."""

TIMEOUT_ERRORS = frozenset({"timeout", "connect_timeout", "first_token_timeout", "stall"})

_log = structlog.get_logger("streamsentinel")


def default_key(operation: str, server: str, model: str, request: Mapping[str, Any]) -> str:
    """``"{server}/{model}"``: one breaker per upstream and model (both labels already bounded)."""
    return f"{server}/{model}"


class _Exporter:
    """Breaker events -> Prometheus series and structlog events."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def set_state(self, breaker: CircuitBreaker, state: State) -> None:
        gauge = self._metrics.circuit_state
        for candidate in State:
            gauge.labels(breaker.name, candidate.value).set(1 if candidate is state else 0)

    def on_state_transition(self, breaker: CircuitBreaker, from_state: State, to_state: State) -> None:
        self.set_state(breaker, to_state)
        self._metrics.circuit_transitions.labels(breaker.name, from_state.value, to_state.value).inc()
        log = _log.warning if to_state in (State.OPEN, State.FORCED_OPEN) else _log.info
        log(
            "circuit.state_changed",
            breaker=breaker.name,
            from_state=from_state.value,
            to_state=to_state.value,
            retry_after_seconds=round(breaker.retry_after(), 3),
        )

    def on_call_not_permitted(self, breaker: CircuitBreaker) -> None:
        self._metrics.circuit_rejected.labels(breaker.name).inc()

    def on_rates(self, breaker: CircuitBreaker, failure_rate: float, slow_call_rate: float) -> None:
        # Prometheus wants ratios; below the minimum number of calls there is no rate (NaN).
        self._metrics.circuit_failure_rate.labels(breaker.name).set(
            failure_rate / 100 if failure_rate >= 0 else math.nan
        )
        self._metrics.circuit_slow_call_rate.labels(breaker.name).set(
            slow_call_rate / 100 if slow_call_rate >= 0 else math.nan
        )


class Circuits:
    """The breakers of one Sentinel."""

    def __init__(
        self,
        config: BreakerConfig,
        metrics: Metrics,
        *,
        key: BreakerKey | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        self.enabled = config.mode != "off"
        self.key = key or default_key
        self.fallback = fallback
        self._exporter = _Exporter(metrics)
        self._metrics = metrics
        self.registry = BreakerRegistry(config, listeners=[self._exporter])
        self._seen: set[str] = set()

    def breaker_for(self, obs: StreamObservation, request: Mapping[str, Any]) -> CircuitBreaker:
        breaker = self.registry.get(self.key(obs.operation, obs.server, obs.model, request))
        if breaker.name not in self._seen:  # a new breaker: export its initial state
            self._seen.add(breaker.name)
            self._exporter.set_state(breaker, breaker.state)
        return breaker

    def acquire(self, breaker: CircuitBreaker) -> Permit | None:
        return breaker.try_acquire()

    def count_fallback(self, breaker: CircuitBreaker) -> None:
        self._metrics.circuit_fallbacks.labels(breaker.name).inc()

    @staticmethod
    def report(
        breaker: CircuitBreaker,
        permit: Permit,
        outcome: str,
        failure: Failure | None,
        obs: StreamObservation,
        end: float,
    ) -> None:
        """Give the permit back with the stream's result (exactly once per permit)."""
        duration = end - obs.start
        ttft = None if obs.first_at is None else obs.first_at - obs.start
        if outcome == "completed":
            breaker.on_success(permit, duration=duration, ttft=ttft)
        elif failure is not None and outcome in ("failed", "truncated") and failure.counts_for_breaker:
            breaker.on_failure(
                permit, duration=duration, ttft=ttft, timeout=failure.error_type in TIMEOUT_ERRORS
            )
        else:
            breaker.on_ignored(permit)
