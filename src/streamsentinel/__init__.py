"""streamsentinel: observability and resilience for the OpenAI SDK's streaming calls.

``instrument()`` patches the ``openai`` package once; every ``stream=True`` call is then observed:
truncations detected and classified, Prometheus and OpenTelemetry metrics, one OpenTelemetry span
per stream and structlog events. ``uninstrument()`` restores the SDK exactly.

Public surface: :func:`instrument`, :func:`uninstrument`, :func:`is_instrumented`,
:func:`start_metrics_server`, the errors and :func:`find_truncation`, the option objects
:class:`RetryConfig`, :class:`TimeoutConfig`, :class:`FleetConfig`, :class:`TelemetryConfig`
(``streamsentinel.config``) and :class:`BreakerConfig` (and its ``State`` and ``SlidingWindowType``),
``__version__``; ``streamsentinel.resilience`` (the breaker store protocol and the types its options
take), ``streamsentinel.instrumentation`` (the ``Sink`` protocol and the records),
``streamsentinel.testing`` and ``streamsentinel.otel_instrumentor``.
Every other module is private.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

# Light: importing the package imports neither openai, OpenTelemetry nor prometheus_client (a
# process started under `streamsentinel run` pays nothing until it uses them).
from . import _domains
from . import _forksafe as forksafe
from . import config as _config
from ._resilience.breaker_config import BreakerConfig, SlidingWindowType, State
from .config import FleetConfig, RetryConfig, TelemetryConfig, TimeoutConfig

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ._core.config import Mode, OnTruncation
    from ._resilience.circuit import BreakerKey, Fallback
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
    "FleetConfig",
    "RetryConfig",
    "SlidingWindowType",
    "State",
    "StreamDivergedError",
    "StreamTimeoutError",
    "StreamTruncatedError",
    "TelemetryConfig",
    "TimeoutConfig",
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
_attached: list[Any] = []  # sinks attached for a block (testing.capture()): every new runtime gets them
_joined: dict[int, list[Any]] = {}  # id(attached sink) -> the runtimes it was attached to at _attach


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
    on_truncation: OnTruncation | None = None,
    done_marker: str | Mapping[str, str] | None = None,
    retry: RetryConfig | None = None,
    timeouts: TimeoutConfig | None = None,
    breaker: BreakerConfig | None = None,
    breaker_key: BreakerKey | str | None = None,
    breaker_fallback: Fallback | None = None,
    breaker_store: BreakerStore | None = None,
    fleet: FleetConfig | None = None,
    telemetry: TelemetryConfig | None = None,
    sinks: Sequence[Any] = (),
    builtin_sinks: Collection[str] | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    **flat: Any,
) -> None:
    """Patch the ``openai`` package so every streaming call is observed.

    Calling it again with the same options does nothing; with different options it reconfigures:
    streams opened from then on use the new options (and sinks), streams already open finish with
    the ones they started with (their timeouts included).

    Args:
        mode: ``"protect"`` (default) or ``"observe"``: observe changes nothing the consumer sees
            (no raised truncation, no retries, no resume, no pauses, the breaker in ``shadow``);
            the options below still refine it (``STREAMSENTINEL_MODE``). Adopt with ``observe``,
            read the dashboard, then protect.
        on_truncation: ``"raise"`` (default) raises :class:`StreamTruncatedError` where the SDK would
            end a truncated stream silently; ``"record"`` only records it.
        done_marker: whether a chat/completions stream that ends after every finish reason but
            without ``data: [DONE]`` is a truncation: ``"strict"`` (yes), ``"lenient"`` (no: some
            OpenAI-compatible servers never send it) or ``"auto"`` (default: lenient for a server
            until it has sent ``[DONE]`` once, strict after); or a mapping of server host to policy
            (key ``"*"``: the others).
        retry: a :class:`RetryConfig`: attempts, backoff, time budget, retry budget, resume.
        timeouts: a :class:`TimeoutConfig`: first-token and stall deadlines.
        breaker: the circuit breaker's ``BreakerConfig`` (default: ``STREAMSENTINEL_BREAKER_*``
            variables over Resilience4j's defaults).
        breaker_key: ``(operation, server, model, request kwargs) -> key`` choosing the breaker,
            or a template of those fields: ``"{server}/{model}"`` (the default), ``"{model}"``...
        breaker_fallback: another model name, or ``(request kwargs) -> stream``, serving rejected
            calls; default: raise ``CircuitOpenError``.
        breaker_store: where breaker state lives (a ``streamsentinel.resilience.BreakerStore``;
            default: in this process, or in Redis with a :class:`FleetConfig`).
        fleet: a :class:`FleetConfig`: fleet mode through Redis (default: on when
            ``STREAMSENTINEL_REDIS_URL`` is set). Needs ``streamsentinel[redis]``.
        telemetry: a :class:`TelemetryConfig`: content capture, chunk events, label bounds.
        sinks: more sinks (``streamsentinel.instrumentation.Sink``, e.g. subclasses of ``BaseSink``)
            besides the built-in ones; each is checked against the protocol here.
        builtin_sinks: the names of the built-in sinks to keep, among ``"otel_trace"``,
            ``"prometheus"``, ``"otel_metrics"``, ``"structlog"`` (default None: all; ``()``: none).
        registry: the ``prometheus_client.CollectorRegistry`` for the Prometheus sink (default:
            the global ``REGISTRY``).
        tracer_provider: OpenTelemetry ``TracerProvider`` for spans (default: the global one).
        meter_provider: OpenTelemetry ``MeterProvider`` for the GenAI semconv client metrics and
            streamsentinel's own (default: the global one).
        **flat: the flat keywords of earlier versions are still accepted, each the field of one
            object (``retry_attempts=2`` is ``retry=RetryConfig(attempts=2)``; the configuration
            page lists them). A flat keyword and its object both given is a ``TypeError``.

    Each option left out falls back to its ``STREAMSENTINEL_*`` variable, then to what ``mode``
    sets, then to its default.

    Raises:
        TypeError, ValueError: invalid options (nothing changes then): one line naming the option,
            the value and what is allowed; options are checked here, never first during an
            outage. ``STREAMSENTINEL_*`` variables are never fatal: a bad one is logged once and
            ignored (a bad ``STREAMSENTINEL_REDIS_URL``, or one without the ``redis`` extra, leaves
            fleet mode off). ``ImportError``: a ``FleetConfig`` Redis URL without the ``redis``
            extra. ``ValueError`` also when a metric name is already registered in ``registry`` by
            someone else (nothing is left registered). ``KeyError``/``AttributeError`` if the
            installed ``openai`` lacks a hooked name of a module already imported (nothing is left
            patched); the SDK modules not imported yet (its resources, imported on a client's first
            ``.chat``/``.responses``) are patched when the application imports them, and a name
            missing there never fails that import: the module stays unpatched, counted (stage
            ``patch``) and logged once. A provider or registry that fails otherwise at set-up
            raises nothing: its sink is left out, counted in
            ``openai_stream_instrumentation_errors_total`` and logged once.
    """
    global _active, _busy
    options = _canonical(
        {
            "mode": mode,
            "on_truncation": on_truncation,
            "done_marker": done_marker,
            "retry": retry,
            "timeouts": timeouts,
            "breaker": breaker,
            "breaker_key": breaker_key,
            "breaker_fallback": breaker_fallback,
            "breaker_store": breaker_store,
            "fleet": fleet,
            "telemetry": telemetry,
            "sinks": sinks,
            "builtin_sinks": builtin_sinks,
            "registry": registry,
            "tracer_provider": tracer_provider,
            "meter_provider": meter_provider,
            **flat,
        }
    )
    with _lock:
        if _active is not None and _same(_active[0], options):
            return
        _busy = True
        try:
            from ._build import build_runtime
            from ._sdk import hooks

            runtime = build_runtime(options)
            for sink in _attached:
                runtime.emitter.attach(sink)
                _joined.setdefault(id(sink), []).append(runtime)
            hooks.install(runtime)
        finally:
            _busy = False
        previous, _active = _active, (options, runtime)
        if previous is not None:
            previous[1].close()


# instrument()'s own keyword parameters, from its signature (no list to keep in step by hand).
_PARAMETERS = frozenset(instrument.__code__.co_varnames[: instrument.__code__.co_kwonlyargcount])


def _canonical(given: Mapping[str, Any]) -> dict[str, Any]:
    """``instrument()``'s keywords as one dict of its parameters (flat keywords folded into their
    objects, None, ``()`` and empty objects left out): equal dicts mean the same configuration.

    Raises:
        TypeError: an unknown keyword, an object of the wrong type, or a flat keyword given with
            its object.
        ValueError: a flat keyword's value outside its domain (named by the flat keyword).
    """
    options = {
        k: v
        for k, v in given.items()
        if k in _PARAMETERS and v is not None and (v != () or k == "builtin_sinks")  # (): no sinks
    }
    keep = options.get("builtin_sinks")
    if isinstance(keep, (list, tuple, set, frozenset)) and all(isinstance(n, str) for n in keep):
        options["builtin_sinks"] = tuple(sorted(set(keep)))  # the same names, the same configuration
    unknown = sorted(k for k in given if k not in _PARAMETERS and k not in _config.FLAT)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], [*_PARAMETERS, *_config.FLAT], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"instrument() got an unexpected keyword argument {unknown[0]!r}{hint}")
    fields: dict[str, dict[str, Any]] = {}
    for name, value in given.items():
        if name in _PARAMETERS or value is None:
            continue
        parameter, field = _config.FLAT[name]
        if parameter in options:
            group = _config.GROUPS[parameter].__name__
            raise TypeError(
                f"{name}= and {parameter}= both given: set {field} in {parameter}={group}(...) only"
            )
        if name in _domains.PARSERS:
            value = _domains.explicit(name, value)
        fields.setdefault(parameter, {})[field] = value
    if "retry" in fields:
        retry = fields["retry"]
        _domains.check_delays(
            retry.get("base_delay"),
            retry.get("max_delay"),
            ("retry_base_delay", "retry_max_delay"),
            "streamsentinel options",
        )
    for parameter, cls in _config.GROUPS.items():
        if parameter in fields:
            options[parameter] = cls(**fields[parameter])
        elif parameter in options and not isinstance(options[parameter], cls):
            raise TypeError(
                f"{parameter}={_shown(options[parameter])}: expected a streamsentinel.{cls.__name__}"
            )
        if parameter in options and options[parameter] == cls():
            del options[parameter]
    return options


def _shown(value: Any) -> str:
    from ._options import _shown as shown

    return shown(value)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] or a[k] == b[k] for k in a)


def _attach(sink: Any) -> None:
    """Give ``sink`` the record of every stream that ends from now on, under the active runtime and
    any later one, until :func:`_detach` (private: ``streamsentinel.testing.capture()``)."""
    with _lock:
        _attached.append(sink)
        if _active is not None:
            _active[1].emitter.attach(sink)
            _joined.setdefault(id(sink), []).append(_active[1])


def _detach(sink: Any) -> None:
    with _lock:
        _attached.remove(sink)
        for runtime in _joined.pop(id(sink), []):
            runtime.emitter.detach(sink)


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
