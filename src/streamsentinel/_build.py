"""Building a runtime from ``instrument()``'s options: settings resolved, sinks chosen.

The built-in sinks, in order: the OpenTelemetry trace sink (first: its span is current while the
others start), Prometheus, OpenTelemetry metrics, structlog (``builtin_sinks`` keeps a subset);
then the user's ``sinks``. Adding a built-in sink is one line in :func:`default_sinks`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import _options
from ._core.config import Settings, breaker_config, resolve, warn_unknown_variables
from ._core.done_marker import POLICIES
from ._core.lifecycle import Runtime
from ._log import debug_enabled, log
from .config import GROUPS

if TYPE_CHECKING:
    from ._resilience.fleet import Fleet

REDIS_URL_VARIABLE = "STREAMSENTINEL_REDIS_URL"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamsentinel")
    except PackageNotFoundError:
        return "0+unknown"


# A failure of these at set-up is an invalid option, raised by instrument() (a metric name taken in
# the registry); any other failure of a back-end disables its sink only.
_INVALID_OPTION: dict[str, tuple[type[Exception], ...]] = {"prometheus": (ValueError,)}


def default_sinks(
    options: dict[str, Any], settings: Settings
) -> tuple[list[Any], list[tuple[str, Exception]]]:
    """The built-in sinks for ``options``, and ``(stage, exception)`` for each one whose set-up
    failed (a provider's ``get_meter()``/``get_tracer()`` or a registry's ``register()`` raised):
    that sink is left out, the others work.

    Raises:
        ValueError: a metric name is already registered in ``registry`` (nothing is patched then).
    """
    sinks: list[Any] = []
    failed: list[tuple[str, Exception]] = []
    keep = options.get("builtin_sinks")
    for stage, build in _builders(options, settings):
        if keep is not None and stage not in keep:
            continue
        try:
            sinks.append(build())
        except _INVALID_OPTION.get(stage, ()):
            raise
        except Exception as exc:
            failed.append((stage, exc))
    return sinks, failed


def _builders(options: Mapping[str, Any], settings: Settings) -> list[tuple[str, Callable[[], Any]]]:
    from .instrumentation._otel_metrics import OTelMetricsSink
    from .instrumentation._otel_trace import OTelTraceSink
    from .instrumentation._prometheus import PrometheusSink, prometheus_sink
    from .instrumentation._structlog import StructlogSink

    return [
        (
            OTelTraceSink.name,
            lambda: OTelTraceSink(
                options.get("tracer_provider"),
                version=_version(),
                chunk_timeline=settings.chunk_events == "all",
            ),
        ),
        (PrometheusSink.name, lambda: prometheus_sink(options.get("registry"))),
        (OTelMetricsSink.name, lambda: OTelMetricsSink(options.get("meter_provider"))),
        (StructlogSink.name, lambda: StructlogSink(debug_enabled)),
    ]


def build_runtime(options: dict[str, Any]) -> Runtime:
    """A :class:`Runtime` for ``instrument()``'s options (as ``streamsentinel._canonical`` gives them:
    flat keywords already folded into the option objects).

    A built-in sink whose back-end fails at set-up is left out, counted in
    ``openai_stream_instrumentation_errors_total{stage=<its name>}`` and logged once.

    Raises:
        TypeError, ValueError: an invalid option, or a metric name taken in the registry.
        ImportError: a ``FleetConfig`` Redis URL given without the ``redis`` extra.
    """
    options = _options.check(options)
    done_marker = options.get("done_marker")
    by_server: dict[str, str] = {}
    settings_options: dict[str, Any] = {k: options[k] for k in ("mode", "on_truncation") if k in options}
    for parameter in GROUPS:
        if parameter in options:
            settings_options.update(options[parameter].options())
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
    breaker = breaker_config(options.get("breaker"), mode=settings.mode)
    sinks, failed = default_sinks(options, settings)
    sinks.extend(options.get("sinks", ()))
    fleet_config = options.get("fleet")
    fleet = build_fleet(
        {
            "redis_client": getattr(fleet_config, "redis_client", None),
            "redis_url": getattr(fleet_config, "redis_url", None),
        },
        settings,
    )
    if fleet is None and settings.rate_limit_pause != "off":
        log.warning(
            "config.needs_fleet",
            option="rate_limit_pause",
            value=settings.rate_limit_pause,
            why="pauses are shared through Redis: without redis_url/redis_client nothing pauses",
        )
    runtime = Runtime(
        settings,
        sinks,
        breaker=breaker,
        breaker_key=options.get("breaker_key"),
        breaker_fallback=options.get("breaker_fallback"),
        breaker_store=options.get("breaker_store"),
        fleet=fleet,
        done_marker_servers=by_server,  # type: ignore[arg-type]  # checked against POLICIES
    )
    for stage, exc in failed:  # counted by the sinks that work, logged once
        runtime.errors(stage, exc)
    return runtime


def build_fleet(options: Mapping[str, Any], settings: Settings) -> Fleet | None:
    """The shared state of fleet mode (README "Running a fleet"), or None without Redis: the option
    ``redis_client`` (a ``redis.Redis`` the user built), else ``redis_url``, else the variable
    ``STREAMSENTINEL_REDIS_URL``. Never connects here (the background thread does), so a Redis that
    is down does not stop ``instrument()``; the URL is never logged."""
    client = options.get("redis_client")
    url = options.get("redis_url")
    kwargs = _fleet_kwargs(settings)
    if client is None and url is None:
        return _fleet_from_environment(kwargs)
    from ._resilience.fleet import Fleet, import_redis

    if client is not None:
        if not callable(getattr(client, "register_script", None)):
            raise TypeError(f"redis_client={type(client).__qualname__}: expected a redis.Redis client")
        return Fleet(client, **kwargs)
    if not isinstance(url, str):
        raise TypeError("redis_url: expected a string such as redis://host:6379/0")
    redis = import_redis()
    _check_url(redis, url, "redis_url")
    return Fleet.from_url(url, **kwargs)


def _fleet_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "prefix": settings.redis_prefix,
        "refresh_interval": settings.fleet_refresh_interval,
        "timeout": settings.redis_timeout,
        "min_processes": settings.fleet_min_processes,
        "quota_pause": settings.quota_pause_seconds,
        "pause_mode": settings.rate_limit_pause,
    }


def _check_url(redis: Any, url: str, source: str) -> None:
    try:
        redis.connection.parse_url(url)
    except ValueError:
        # The message would hold the URL (and its password): say what is wrong, not what it was.
        raise ValueError(f"{source}: not a Redis URL (redis://, rediss:// or unix://)") from None


def _fleet_from_environment(kwargs: dict[str, Any]) -> Fleet | None:
    """Fleet mode from ``STREAMSENTINEL_REDIS_URL``; a bad value or a missing ``redis`` extra is
    logged (never the URL) and leaves fleet mode off, everything else on."""
    url = os.environ.get(REDIS_URL_VARIABLE, "").strip()
    if not url:
        return None
    try:
        from ._resilience.fleet import Fleet, import_redis

        redis = import_redis()
        _check_url(redis, url, REDIS_URL_VARIABLE)
        return Fleet.from_url(url, **kwargs)
    except Exception as exc:
        log.warning(
            "config.invalid_env",
            variable=REDIS_URL_VARIABLE,
            allowed=str(exc)[:200],
            using_default="no fleet mode (breakers, budget and pauses per process)",
        )
        return None
