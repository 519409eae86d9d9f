"""Settings for :func:`streamsentinel.instrument`, from explicit options and ``STREAMSENTINEL_*`` variables.

The options are named flat here (``retry_attempts``): the fields of the public option objects
(``streamsentinel.config``, ``RetryConfig(attempts=...)``) and the flat keywords still accepted map
onto these names; their domains are defined once, in ``streamsentinel._domains``.

Precedence: an explicit option, then the environment variable, then what ``mode`` sets, then the
default. An invalid environment value never breaks the host: it is logged once and the default is
used.

| option | variable | values | default |
|---|---|---|---|
| ``mode`` | ``STREAMSENTINEL_MODE`` | ``observe``, ``protect`` | ``protect`` |
| ``on_truncation`` | ``STREAMSENTINEL_ON_TRUNCATION`` | ``raise``, ``record`` | ``raise`` |
| ``capture_content`` | ``STREAMSENTINEL_CAPTURE_CONTENT`` | ``true``/``false`` | ``false`` |
| ``chunk_events`` | ``STREAMSENTINEL_CHUNK_EVENTS`` | ``anomalies``, ``all``, ``none`` | ``anomalies`` |
| ``gap_anomaly_seconds`` | ``STREAMSENTINEL_GAP_ANOMALY_SECONDS`` | float > 0 | ``5.0`` |
| ``max_model_labels`` | ``STREAMSENTINEL_MAX_MODEL_LABELS`` | int > 0 | ``100`` |
| ``max_label_sets`` | ``STREAMSENTINEL_MAX_LABEL_SETS`` | int > 0 | ``500`` |
| ``retry_attempts`` | ``STREAMSENTINEL_RETRY_ATTEMPTS`` | int >= 1 (1: no retry) | ``3`` |
| ``retry_base_delay`` | ``STREAMSENTINEL_RETRY_BASE_DELAY`` | seconds >= 0 | ``0.5`` |
| ``retry_max_delay`` | ``STREAMSENTINEL_RETRY_MAX_DELAY`` | seconds >= 0 | ``8.0`` |
| ``retry_time_budget`` | ``STREAMSENTINEL_RETRY_TIME_BUDGET`` | seconds >= 0 | ``60.0`` |
| ``retry_budget_ratio`` | ``STREAMSENTINEL_RETRY_BUDGET_RATIO`` | 0..1 | ``0.2`` |
| ``retry_budget_window`` | ``STREAMSENTINEL_RETRY_BUDGET_WINDOW`` | seconds > 0 | ``10.0`` |
| ``retry_budget_min_retries`` | ``STREAMSENTINEL_RETRY_BUDGET_MIN_RETRIES`` | int >= 0 | ``3`` |
| ``first_token_timeout`` | ``STREAMSENTINEL_FIRST_TOKEN_TIMEOUT`` | seconds >= 0 (0: off) | ``0`` |
| ``stall_timeout`` | ``STREAMSENTINEL_STALL_TIMEOUT`` | seconds >= 0 (0: off) | ``0`` |
| ``resume`` | ``STREAMSENTINEL_RESUME`` | ``off``, ``replay``, ``responses`` | ``off`` |
| ``done_marker`` | ``STREAMSENTINEL_DONE_MARKER`` | ``auto``, ``strict``, ``lenient`` | ``auto`` |
| ``redis_prefix`` | ``STREAMSENTINEL_REDIS_PREFIX`` | 1..100 characters | ``streamsentinel:`` |
| ``rate_limit_pause`` | ``STREAMSENTINEL_RATE_LIMIT_PAUSE`` | ``off``, ``wait``, ``reject`` | ``off`` |
| ``fleet_min_processes`` | ``STREAMSENTINEL_FLEET_MIN_PROCESSES`` | int >= 1 | ``1`` |
| ``fleet_refresh_interval`` | ``STREAMSENTINEL_FLEET_REFRESH_INTERVAL`` | seconds > 0 | ``1.0`` |
| ``redis_timeout`` | ``STREAMSENTINEL_REDIS_TIMEOUT`` | seconds > 0 | ``0.25`` |
| ``quota_pause_seconds`` | ``STREAMSENTINEL_QUOTA_PAUSE_SECONDS`` | seconds > 0 | ``60.0`` |

``mode`` sets the defaults of the options below it: ``observe`` changes nothing the consumer sees
(``on_truncation="record"``, ``retry_attempts=1``, ``resume="off"``, ``rate_limit_pause="off"``, the
breaker in ``shadow``: it computes and exports its state but rejects nothing); ``protect`` is the
table's defaults. An option given, or its variable, still wins over the mode.

Fleet mode (the last six, README "Running a fleet") is on when ``redis_url``/``redis_client`` is given
or ``STREAMSENTINEL_REDIS_URL`` is set (read in ``_build.py``; its value is never logged).

The circuit breaker's settings come as one ``BreakerConfig`` (option ``breaker``) or as
``STREAMSENTINEL_BREAKER_<FIELD>`` variables, one per field (see :func:`breaker_config`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .._domains import MODE_DEFAULTS, PARSERS, explicit, parse_bool
from .._log import log
from .._resilience.breaker_config import DEFAULT_CONFIG as DEFAULT_BREAKER
from .._resilience.breaker_config import DEFAULT_MODE as DEFAULT_BREAKER_MODE
from .._resilience.breaker_config import BreakerConfig
from .._resilience.resume import ResumeStrategy
from .done_marker import DoneMarker

Mode = Literal["observe", "protect"]
OnTruncation = Literal["raise", "record"]
RateLimitPause = Literal["off", "wait", "reject"]
ChunkEvents = Literal["anomalies", "all", "none"]

__all__ = ["MODE_DEFAULTS", "Settings", "breaker_config", "parse_bool", "resolve"]

_log = log


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved settings; see the module docstring for the table of options and variables."""

    on_truncation: OnTruncation = "raise"
    capture_content: bool = False
    chunk_events: ChunkEvents = "anomalies"
    gap_anomaly_seconds: float = 5.0
    max_model_labels: int = 100
    max_label_sets: int = 500
    retry_attempts: int = 3
    retry_base_delay: float = 0.5
    retry_max_delay: float = 8.0
    retry_time_budget: float = 60.0
    retry_budget_ratio: float = 0.2
    retry_budget_window: float = 10.0
    retry_budget_min_retries: int = 3
    first_token_timeout: float = 0.0
    stall_timeout: float = 0.0
    resume: ResumeStrategy = "off"
    done_marker: DoneMarker = "auto"
    redis_prefix: str = "streamsentinel:"
    rate_limit_pause: RateLimitPause = "off"
    fleet_min_processes: int = 1
    fleet_refresh_interval: float = 1.0
    redis_timeout: float = 0.25
    quota_pause_seconds: float = 60.0
    mode: Mode = "protect"  # last: positional construction keeps its meaning


# One definition of each domain, shared with the option objects (streamsentinel.config).
_PARSERS = PARSERS

# STREAMSENTINEL_* variables read elsewhere (not options of instrument()).
OTHER_VARIABLES = frozenset(
    {
        "STREAMSENTINEL_METRICS_PORT",
        "STREAMSENTINEL_METRICS_ADDR",
        "STREAMSENTINEL_REDIS_URL",
        "STREAMSENTINEL_RUN_METRICS",
    }
)
_warned_unknown = False


def known_variables() -> frozenset[str]:
    """Every ``STREAMSENTINEL_*`` variable streamsentinel reads."""
    breaker = {env_name("breaker_" + f.name) for f in dataclasses.fields(BreakerConfig)}
    return frozenset({env_name(o) for o in _PARSERS} | breaker | OTHER_VARIABLES)


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warn once per process about ``STREAMSENTINEL_*`` variables nobody reads (a typo is silent
    otherwise), with the closest known name; returns them."""
    global _warned_unknown
    environ = os.environ if environ is None else environ
    known = known_variables()
    unknown = sorted(v for v in environ if v.startswith("STREAMSENTINEL_") and v not in known)
    if unknown and not _warned_unknown:
        import difflib  # only for a typo: not imported by every instrument()

        _warned_unknown = True
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            _log.warning("config.unknown_variable", variable=name, did_you_mean=close[0] if close else None)
    return unknown


def breaker_config(
    explicit: BreakerConfig | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    mode: Mode = "protect",
) -> BreakerConfig:
    """The circuit breaker's settings: ``explicit`` if given, else ``BreakerConfig`` defaults
    overridden by ``STREAMSENTINEL_BREAKER_<FIELD>`` variables (e.g. ``..._BREAKER_MODE=shadow``,
    ``..._BREAKER_FAILURE_RATE_THRESHOLD=25``; ``..._SLOW_TTFT_THRESHOLD=0`` means unused). An
    invalid variable is logged and ignored. In ``observe`` mode the default breaker mode is
    ``shadow``."""
    if isinstance(explicit, BreakerConfig):
        if mode == "observe" and explicit.mode is DEFAULT_BREAKER_MODE:
            return dataclasses.replace(explicit, mode="shadow")
        return explicit
    if isinstance(explicit, Mapping):  # BreakerConfig's fields by name
        names = {f.name for f in dataclasses.fields(BreakerConfig)}
        unknown_fields = sorted(set(explicit) - names)
        if unknown_fields:
            raise TypeError(
                f"breaker: unknown field(s) {', '.join(map(str, unknown_fields))}; "
                f"BreakerConfig has {', '.join(sorted(names))}"
            )
        return breaker_config(BreakerConfig(**explicit), mode=mode)
    if explicit is not None:
        raise TypeError(
            f"breaker={explicit!r}: expected a streamsentinel.BreakerConfig (or a mapping of its fields)"
        )
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {"mode": "shadow"} if mode == "observe" else {}
    for field in dataclasses.fields(BreakerConfig):
        var = env_name("breaker_" + field.name)
        if var not in environ:
            continue
        raw = environ[var].strip()
        default = getattr(DEFAULT_BREAKER, field.name)
        try:
            if field.name == "slow_ttft_threshold":
                values[field.name] = float(raw) or None
            elif isinstance(default, str):  # the mode and the window type
                values[field.name] = raw.lower()
            elif isinstance(default, int):
                values[field.name] = int(raw)
            else:
                values[field.name] = float(raw)
            BreakerConfig(**values)  # validate as we go, to name the culprit
        except (ValueError, TypeError) as exc:
            values.pop(field.name, None)
            _log.warning(
                "config.invalid_env",
                variable=var,
                value=raw[:100],
                allowed=str(exc)[:200],
                using_default=getattr(DEFAULT_BREAKER, field.name),
            )
    return BreakerConfig(**values)


def env_name(option: str) -> str:
    """The environment variable for an option: ``STREAMSENTINEL_`` + the option in upper case."""
    return "STREAMSENTINEL_" + option.upper()


def resolve(options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from explicit ``options`` over ``STREAMSENTINEL_*`` variables.

    Raises:
        TypeError: an unknown keyword option (a programming error in the caller, raised at once).
        ValueError: an explicit option with a value outside its domain; the message names the
            option, the value and what is allowed.
    """
    environ = os.environ if environ is None else environ
    unknown = set(options) - set(_PARSERS)
    if unknown:
        raise TypeError(
            f"unknown streamsentinel option(s): {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_PARSERS))}"
        )
    values: dict[str, Any] = {}
    mode_defaults: dict[str, Any] = {}
    from_env: set[str] = set()
    for option, parser in _PARSERS.items():  # "mode" first: it sets the others' defaults
        if option in options and options[option] is not None:
            values[option] = explicit(option, options[option])
        else:
            var = env_name(option)
            if var in environ:
                try:
                    values[option] = parser.parse(environ[var])
                    from_env.add(option)
                except ValueError:
                    _log.warning(
                        "config.invalid_env",
                        variable=var,
                        value=environ[var][:100],
                        allowed=parser.allowed,
                        using_default=mode_defaults.get(option, getattr(DEFAULTS, option)),
                    )
        if option == "mode":
            mode_defaults = MODE_DEFAULTS[values.get("mode", DEFAULTS.mode)]
    settings = Settings(**{**mode_defaults, **values})
    if settings.retry_base_delay > settings.retry_max_delay:
        if {"retry_base_delay", "retry_max_delay"} <= from_env:
            _log.warning(
                "config.invalid_env",
                variable=f"{env_name('retry_base_delay')}, {env_name('retry_max_delay')}",
                value=f"{settings.retry_base_delay:g} > {settings.retry_max_delay:g}",
                allowed="retry_base_delay <= retry_max_delay",
                using_default=f"{DEFAULTS.retry_base_delay:g}, {DEFAULTS.retry_max_delay:g}",
            )
            return dataclasses.replace(
                settings, retry_base_delay=DEFAULTS.retry_base_delay, retry_max_delay=DEFAULTS.retry_max_delay
            )
        raise ValueError(
            f"streamsentinel options retry_base_delay={settings.retry_base_delay:g} and "
            f"retry_max_delay={settings.retry_max_delay:g}: expected retry_base_delay <= retry_max_delay"
        )
    return settings


DEFAULTS = Settings()
