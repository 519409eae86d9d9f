"""streamsentinel: observability and resilience for the OpenAI SDK's streaming calls.

``instrument()`` patches the ``openai`` package once; every ``stream=True`` call is then observed:
truncations detected and classified, Prometheus and OpenTelemetry metrics, one OpenTelemetry span
per stream and structlog events. ``uninstrument()`` restores the SDK exactly.

Public surface: :func:`instrument`, :func:`uninstrument`, :func:`is_instrumented`,
:func:`start_metrics_server`, the errors and :func:`find_truncation`, :class:`BreakerConfig` (and
its ``State`` and ``SlidingWindowType``), ``__version__``; ``streamsentinel.instrumentation`` (the ``Sink``
protocol and the records), ``streamsentinel.testing`` and ``streamsentinel.otel_instrumentor``.
Every other module is private.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

# Light: importing the package imports neither openai, OpenTelemetry nor prometheus_client (a
# process started under `streamsentinel run` pays nothing until it uses them).
from . import _forksafe as forksafe
from ._resilience.breaker_config import BreakerConfig, SlidingWindowType, State

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ._core.config import ChunkEvents, Mode, OnTruncation
    from ._resilience.circuit import BreakerKey, Fallback
    from ._resilience.resume import ResumeStrategy
    from ._resilience.store import BreakerStore
    from .errors import (
        CircuitOpenError,
        StreamDivergedError,
        StreamTimeoutError,
        StreamTruncatedError,
        find_truncation,
    )
    from .metrics_server import start_metrics_server

_LAZY = {
    "CircuitOpenError": "errors",
    "StreamDivergedError": "errors",
    "StreamTimeoutError": "errors",
    "StreamTruncatedError": "errors",
    "find_truncation": "errors",
    "start_metrics_server": "metrics_server",
}

__all__ = [
    "BreakerConfig",
    "CircuitOpenError",
    "SlidingWindowType",
    "State",
    "StreamDivergedError",
    "StreamTimeoutError",
    "StreamTruncatedError",
    "__version__",
    "find_truncation",
    "instrument",
    "is_instrumented",
    "start_metrics_server",
    "uninstrument",
]

_lock = threading.Lock()
_busy = False  # an instrument() call is under way (its imports may trigger run's start-up hook)
_active: tuple[dict[str, Any], Any] | None = None  # (the options, the Runtime)


def _after_fork_in_child() -> None:
    global _lock, _busy
    _lock, _busy = threading.Lock(), False  # no instrument() call is under way in the child


forksafe.register_function(_after_fork_in_child)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("streamsentinel")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def instrument(
    *,
    mode: Mode | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    sinks: Sequence[Any] = (),
    on_truncation: OnTruncation | None = None,
    capture_content: bool | None = None,
    chunk_events: ChunkEvents | None = None,
    gap_anomaly_seconds: float | None = None,
    max_model_labels: int | None = None,
    max_label_sets: int | None = None,
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
    done_marker: str | Mapping[str, str] | None = None,
    breaker: BreakerConfig | None = None,
    breaker_key: BreakerKey | str | None = None,
    breaker_fallback: Fallback | None = None,
    breaker_store: BreakerStore | None = None,
    redis_url: str | None = None,
    redis_client: Any = None,
    redis_prefix: str | None = None,
    redis_timeout: float | None = None,
    fleet_min_processes: int | None = None,
    fleet_refresh_interval: float | None = None,
    rate_limit_pause: Literal["off", "wait", "reject"] | None = None,
    quota_pause_seconds: float | None = None,
) -> None:
    """Patch the ``openai`` package so every streaming call is observed.

    Calling it again with the same options does nothing; with different options it reconfigures:
    streams opened from then on use the new options (and sinks), streams already open finish with
    the ones they started with (their ``first_token_timeout``/``stall_timeout`` included).

    Args:
        mode: ``"protect"`` (default) or ``"observe"``: observe changes nothing the consumer sees
            (no raised truncation, no retries, no resume, no pauses, the breaker in ``shadow``);
            the options below still refine it (``STREAMSENTINEL_MODE``). Adopt with ``observe``,
            read the dashboard, then protect.
        registry: the ``prometheus_client.CollectorRegistry`` for the Prometheus sink (default:
            the global ``REGISTRY``).
        tracer_provider: OpenTelemetry ``TracerProvider`` for spans (default: the global one).
        meter_provider: OpenTelemetry ``MeterProvider`` for the GenAI semconv client metrics and
            streamsentinel's own (default: the global one).
        sinks: more sinks (``streamsentinel.instrumentation.Sink``, e.g. subclasses of ``BaseSink``)
            besides the built-in ones; each is checked against the protocol here.
        on_truncation: ``"raise"`` (default) raises :class:`StreamTruncatedError` where the SDK would
            end a truncated stream silently; ``"record"`` only records it.
        capture_content: put completion text on spans/logs (default False: never).
        chunk_events: ``"anomalies"`` (default), ``"all"`` (every chunk's time, in seconds from the
            span's start, in one ``streamsentinel.chunks`` span event) or ``"none"``.
        gap_anomaly_seconds: an inter-chunk gap at least this long (s) becomes a span event.
        max_model_labels: distinct ``model``/``server`` label values kept before ``_other``.
        max_label_sets: distinct (server, port, model) combinations kept (default 500); a new
            one past it is counted as ``server="_other", model="_other"`` (and shares the
            ``_other/_other`` breaker), so every count is kept and the series stay bounded.
        retry_attempts: attempts per logical request, the first included (1: streamsentinel never
            retries). A stream is retried only while nothing was delivered to the consumer.
        retry_base_delay, retry_max_delay: full-jitter backoff bounds, seconds.
        retry_time_budget: seconds from a request's start after which no retry begins.
        retry_budget_ratio, retry_budget_window, retry_budget_min_retries: the retry budget
            across requests (retries <= max(min, ratio * requests) per window of seconds).
        first_token_timeout: seconds from a request to its first output item (0: off).
        stall_timeout: longest gap between items, seconds (0: off).
        resume: after output started, ``"replay"``, ``"responses"`` or ``"off"`` (default).
        done_marker: whether a chat/completions stream that ends after every finish reason but
            without ``data: [DONE]`` is a truncation: ``"strict"`` (yes), ``"lenient"`` (no: some
            OpenAI-compatible servers never send it) or ``"auto"`` (default: lenient for a server
            until it has sent ``[DONE]`` once, strict after); or a mapping of server host to policy
            (key ``"*"``: the others).
        breaker: the circuit breaker's ``BreakerConfig`` (default: ``STREAMSENTINEL_BREAKER_*``
            variables over Resilience4j's defaults).
        breaker_key: ``(operation, server, model, request kwargs) -> key`` choosing the breaker,
            or a template of those fields: ``"{server}/{model}"`` (the default), ``"{model}"``...
        breaker_fallback: another model name, or ``(request kwargs) -> stream``, serving rejected
            calls; default: raise ``CircuitOpenError``.
        breaker_store: where breaker state lives (default: in this process; in Redis with
            ``redis_url``/``redis_client``).
        redis_url: fleet mode (README "Running a fleet"): share the breakers' OPEN decisions and
            probes, the retry budget and rate-limit pauses with every process using the same Redis
            (default: ``STREAMSENTINEL_REDIS_URL``; unset: nothing is shared). Needs
            ``streamsentinel[redis]``. Never logged (it may hold a password).
        redis_client: a ``redis.Redis`` you built (Sentinel, Cluster, TLS, Valkey), instead of
            ``redis_url``; its own socket timeout bounds the inline probe lease.
        redis_prefix: put before every Redis key (default ``streamsentinel:``).
        redis_timeout: seconds any one Redis call may take in total (connection, retries and
            all) before the process falls back to its local state (default 0.25).
        fleet_min_processes: processes whose own windows must trip before a breaker opens
            fleet-wide (default 1).
        fleet_refresh_interval: seconds between background reads of the fleet's state (default 1).
        rate_limit_pause: what a call does while a fleet-wide pause (a 429 with a server delay,
            ``insufficient_quota``) holds its server/model: ``"off"`` (default: sent anyway; the
            pause is only shared and exported), ``"wait"`` (sleep it out, if within
            ``retry_time_budget``) or ``"reject"`` (raise ``openai.RateLimitError`` at once, no
            request).
        quota_pause_seconds: how long an ``insufficient_quota`` pauses its server (default 60).

    Each option falls back to its ``STREAMSENTINEL_*`` variable (see ``streamsentinel._core.config``).

    Raises:
        TypeError, ValueError: invalid options (nothing changes then): one line naming the option,
            the value and what is allowed; options are checked here, never first during an
            outage. ``STREAMSENTINEL_*`` variables are never fatal: a bad one is logged once and
            ignored (a bad ``STREAMSENTINEL_REDIS_URL``, or one without the ``redis`` extra, leaves
            fleet mode off). ``ImportError``: ``redis_url``/``redis_client`` without the ``redis``
            extra. ``ValueError`` also when a
        metric name is already registered in ``registry`` by someone else (nothing is left
        registered). ``KeyError``/``AttributeError`` if the installed ``openai`` lacks a hooked name
        of a module already imported (nothing is left patched); the SDK modules not imported yet
        (its resources, imported on a client's first ``.chat``/``.responses``) are patched when
        the application imports them, and a name missing there never fails that import: the
        module stays unpatched, counted (stage ``patch``) and logged once. A provider or registry
        that fails otherwise at set-up raises nothing: its sink is left out, counted in
        ``openai_stream_instrumentation_errors_total`` and logged once.
    """
    global _active, _busy
    options = {k: v for k, v in locals().items() if v is not None and v != ()}
    with _lock:
        if _active is not None and _same(_active[0], options):
            return
        _busy = True
        try:
            from ._build import build_runtime
            from ._sdk import hooks

            runtime = build_runtime(options)
            hooks.install(runtime)
        finally:
            _busy = False
        previous, _active = _active, (options, runtime)
        if previous is not None:
            previous[1].close()


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] or a[k] == b[k] for k in a)


def uninstrument() -> None:
    """Restore the ``openai`` package exactly; new streams are plain ``openai.Stream`` objects again.
    Streams opened before (or being opened) still finish their accounting, and keep their
    ``first_token_timeout``/``stall_timeout``: streamsentinel's watchdog thread ends after the last
    of them (before this returns when none is open). Idempotent."""
    global _active
    with _lock:
        from ._sdk import hooks, patching

        patching.remove()
        hooks.set_runtime(None)
        if _active is not None:
            _active[1].close()
        _active = None


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _active is not None


def _instrumenting() -> bool:
    """Whether an :func:`instrument` call is under way (private: for ``streamsentinel run``'s hook)."""
    return _busy


def _runtime() -> Any:
    """The active runtime (private: for ``streamsentinel.testing`` and the tests)."""
    return None if _active is None else _active[1]
