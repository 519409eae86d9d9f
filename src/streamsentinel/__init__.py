"""streamsentinel: observability and resilience for the OpenAI SDK's streaming calls.

``instrument()`` patches the ``openai`` package once; every ``stream=True`` call is then observed:
truncations detected and classified, Prometheus metrics, one OpenTelemetry span per stream and
structlog events. ``uninstrument()`` restores the SDK exactly.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from .breaker import BreakerConfig, SlidingWindowType, State
from .circuit import BreakerKey, Fallback
from .config import ChunkEvents, OnTruncation, Settings, resolve
from .errors import CircuitOpenError, StreamDivergedError, StreamTruncatedError
from .metrics_server import start_metrics_server
from .resume import ResumeStrategy
from .sentinel import Sentinel

__version__ = "0.1.0"

__all__ = [
    "BreakerConfig",
    "CircuitOpenError",
    "Sentinel",
    "Settings",
    "SlidingWindowType",
    "State",
    "StreamDivergedError",
    "StreamTruncatedError",
    "__version__",
    "active",
    "instrument",
    "start_metrics_server",
    "uninstrument",
]

_lock = threading.Lock()
_active: Sentinel | None = None


def instrument(
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    on_truncation: OnTruncation | None = None,
    capture_content: bool | None = None,
    chunk_events: ChunkEvents | None = None,
    gap_anomaly_seconds: float | None = None,
    max_model_labels: int | None = None,
    retry_attempts: int | None = None,
    retry_base_delay: float | None = None,
    retry_max_delay: float | None = None,
    retry_time_budget: float | None = None,
    retry_budget_ratio: float | None = None,
    retry_budget_window: float | None = None,
    retry_budget_min_retries: int | None = None,
    first_token_timeout: float | None = None,
    stall_timeout: float | None = None,
    resume: ResumeStrategy | None = None,
    breaker: BreakerConfig | None = None,
    breaker_key: BreakerKey | None = None,
    breaker_fallback: Fallback | None = None,
) -> Sentinel:
    """Patch the ``openai`` package so every streaming call is observed. Idempotent.

    Args:
        registry: the ``prometheus_client.CollectorRegistry`` to register metrics in (default: the
            global ``REGISTRY``).
        tracer_provider: OpenTelemetry ``TracerProvider`` (default: the global one).
        on_truncation: ``"raise"`` (default) raises :class:`StreamTruncatedError` where the SDK would
            end a truncated stream silently; ``"record"`` only records it.
        capture_content: put completion text on spans/logs (default False: never).
        chunk_events: ``"anomalies"`` (default), ``"all"`` (a span event per chunk) or ``"none"``.
        gap_anomaly_seconds: an inter-chunk gap at least this long (s) becomes a span event.
        max_model_labels: distinct ``model``/``server`` label values kept before ``_other``.
        retry_attempts: attempts per logical request, the first included (1: streamsentinel never
            retries). A stream is retried only while nothing was delivered to the consumer.
        retry_base_delay, retry_max_delay: full-jitter backoff bounds, seconds.
        retry_time_budget: seconds from a request's start after which no retry begins.
        retry_budget_ratio, retry_budget_window, retry_budget_min_retries: the retry budget
            across requests (retries <= max(min, ratio * requests) per window of seconds).
        first_token_timeout: seconds from a request to its first output item (0: off).
        stall_timeout: longest gap between items, seconds (0: off).
        resume: after output started, ``"replay"`` re-issues a broken stream and skips what was
            delivered (``StreamDivergedError`` if the new output differs); ``"responses"``
            continues a ``background=True`` Responses stream from its last sequence number;
            ``"off"`` (default) lets the failure reach the consumer.
        breaker: the circuit breaker's ``BreakerConfig`` (mode ``enforce``, ``shadow`` or ``off``;
            Resilience4j's settings); default: ``STREAMSENTINEL_BREAKER_*`` variables over defaults.
        breaker_key: ``(operation, server, model, request kwargs) -> key`` choosing the breaker
            (default ``"{server}/{model}"``).
        breaker_fallback: when a breaker rejects a call: another model name to call instead, or a
            callable ``(request kwargs) -> stream``; default: raise ``CircuitOpenError``.

    Each option falls back to its ``STREAMSENTINEL_*`` variable (see :mod:`streamsentinel.config`).

    Returns:
        The active :class:`Sentinel`. Calling again while active returns the same one unchanged.

    Raises:
        TypeError, ValueError: invalid options. ``KeyError``/``AttributeError`` if the installed
        ``openai`` lacks a hooked name (nothing is left patched then).
    """
    global _active
    with _lock:
        if _active is not None:
            return _active
        from . import patches

        options: dict[str, Any] = {
            "on_truncation": on_truncation,
            "capture_content": capture_content,
            "chunk_events": chunk_events,
            "gap_anomaly_seconds": gap_anomaly_seconds,
            "max_model_labels": max_model_labels,
            "retry_attempts": retry_attempts,
            "retry_base_delay": retry_base_delay,
            "retry_max_delay": retry_max_delay,
            "retry_time_budget": retry_time_budget,
            "retry_budget_ratio": retry_budget_ratio,
            "retry_budget_window": retry_budget_window,
            "retry_budget_min_retries": retry_budget_min_retries,
            "first_token_timeout": first_token_timeout,
            "stall_timeout": stall_timeout,
            "resume": resume,
        }
        sentinel = Sentinel(
            resolve(options),
            registry=registry,
            tracer_provider=tracer_provider,
            breaker=breaker,
            breaker_key=breaker_key,
            breaker_fallback=breaker_fallback,
        )
        patches.install(sentinel)
        _active = sentinel
        return sentinel


def uninstrument() -> None:
    """Restore the ``openai`` package exactly; new streams are plain ``openai.Stream`` objects again.
    Streams opened before still finish their accounting. Idempotent."""
    global _active
    with _lock:
        from . import patches

        patches.remove()
        _active = None


def active() -> Sentinel | None:
    """The active :class:`Sentinel`, or None when not instrumented."""
    return _active
