"""Building a runtime from ``instrument()``'s options: settings resolved, sinks chosen.

The default sinks, in order: the OpenTelemetry trace sink (first: its span is current while the
others start), Prometheus, OpenTelemetry metrics, structlog; then the user's ``sinks``. Adding a
built-in sink is one line in :func:`default_sinks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._core.config import breaker_config, resolve, warn_unknown_variables
from ._core.done_marker import POLICIES
from ._core.lifecycle import Runtime
from ._core.log import debug_enabled

_NOT_SETTINGS = frozenset(
    {
        "registry",
        "tracer_provider",
        "meter_provider",
        "sinks",
        "breaker",
        "breaker_key",
        "breaker_fallback",
        "breaker_store",
        "done_marker",
    }
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamsentinel")
    except PackageNotFoundError:
        return "0+unknown"


def default_sinks(options: dict[str, Any]) -> list[Any]:
    """The built-in sinks for ``options`` (raises if one cannot be set up: nothing is patched then)."""
    from .instrumentation._otel_metrics import OTelMetricsSink
    from .instrumentation._otel_trace import OTelTraceSink
    from .instrumentation._prometheus import prometheus_sink
    from .instrumentation._structlog import StructlogSink
    from .testing import CAPTURE_SINK

    return [
        OTelTraceSink(options.get("tracer_provider"), version=_version()),
        prometheus_sink(options.get("registry")),
        OTelMetricsSink(options.get("meter_provider")),
        StructlogSink(debug_enabled),
        CAPTURE_SINK,  # streamsentinel.testing.capture()
    ]


def build_runtime(options: dict[str, Any]) -> Runtime:
    """A :class:`Runtime` for ``instrument()``'s non-None ``options``.

    Raises:
        TypeError, ValueError: an invalid option, or a metric name taken in the registry.
    """
    done_marker = options.get("done_marker")
    by_server: dict[str, str] = {}
    settings_options = {k: v for k, v in options.items() if k not in _NOT_SETTINGS}
    if isinstance(done_marker, Mapping):
        by_server = {str(k): str(v) for k, v in done_marker.items() if k != "*"}
        if "*" in done_marker:
            settings_options["done_marker"] = done_marker["*"]
    elif done_marker is not None:
        settings_options["done_marker"] = done_marker
    settings = resolve(settings_options)
    warn_unknown_variables()
    for server, policy in by_server.items():
        if policy not in POLICIES:
            raise ValueError(f"done_marker[{server!r}]={policy!r}: expected one of {', '.join(POLICIES)}")
    breaker = breaker_config(options.get("breaker"))
    sinks = [*default_sinks(options), *options.get("sinks", ())]
    return Runtime(
        settings,
        sinks,
        breaker=breaker,
        breaker_key=options.get("breaker_key"),
        breaker_fallback=options.get("breaker_fallback"),
        breaker_store=options.get("breaker_store"),
        done_marker_servers=by_server,  # type: ignore[arg-type]  # checked against POLICIES
    )
