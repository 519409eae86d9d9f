"""Grouped, frozen options of :func:`streamsentinel.instrument` (as :class:`~streamsentinel.BreakerConfig`
and urllib3's ``Retry``): :class:`RetryConfig`, :class:`TimeoutConfig`, :class:`FleetConfig`,
:class:`TelemetryConfig`. Also importable from ``streamsentinel``.

A field left ``None`` is not set: it falls back to its ``STREAMSENTINEL_*`` variable, then to what
``mode`` sets, then to the default (the configuration page has the table). A field given wins over
all of these. Each object checks its fields when it is built: ``ValueError`` (or ``TypeError`` for
a Redis client), one line naming the field, the value and what is allowed, with the same domains as
the variables.

Durations are seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ._domains import check_delays, explicit

__all__ = ["FleetConfig", "RetryConfig", "TelemetryConfig", "TimeoutConfig"]


class _Options:
    """Shared by the option objects: ``OPTIONS`` maps a field to its flat option (and variable)."""

    __slots__ = ()
    OPTIONS: ClassVar[dict[str, str]]

    def _check(self) -> None:
        for name, option in self.OPTIONS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, explicit(option, value, f"{type(self).__name__}.{name}"))

    def options(self) -> dict[str, Any]:
        """The fields given, by flat option name (``RetryConfig(attempts=2)`` ->
        ``{"retry_attempts": 2}``)."""
        return {
            option: getattr(self, name)
            for name, option in self.OPTIONS.items()
            if getattr(self, name) is not None
        }


@dataclass(frozen=True, slots=True)
class RetryConfig(_Options):
    """How streamsentinel retries a failed stream, and resumes one cut after output started.

    - ``attempts``: per logical request, the first included (1: never retry); int >= 1, default 3
      (1 under ``mode="observe"``). A stream is retried only while nothing was delivered.
    - ``base_delay``, ``max_delay``: full-jitter backoff bounds, seconds >= 0 (0.5, 8.0);
      ``base_delay <= max_delay``.
    - ``time_budget``: seconds from a request's start after which no retry begins (60.0).
    - ``budget_ratio``, ``budget_window``, ``budget_min_retries``: the retry budget across requests,
      retries <= max(min, ratio * requests) per window of seconds (0.2 in 0..1, 10.0 > 0, 3 >= 0).
    - ``resume``: after output started, ``"replay"``, ``"responses"`` or ``"off"`` (default).
    """

    attempts: int | None = None
    base_delay: float | None = None
    max_delay: float | None = None
    time_budget: float | None = None
    budget_ratio: float | None = None
    budget_window: float | None = None
    budget_min_retries: int | None = None
    resume: Literal["off", "replay", "responses"] | None = None

    OPTIONS: ClassVar[dict[str, str]] = {
        "attempts": "retry_attempts",
        "base_delay": "retry_base_delay",
        "max_delay": "retry_max_delay",
        "time_budget": "retry_time_budget",
        "budget_ratio": "retry_budget_ratio",
        "budget_window": "retry_budget_window",
        "budget_min_retries": "retry_budget_min_retries",
        "resume": "resume",
    }

    def __post_init__(self) -> None:
        self._check()
        check_delays(self.base_delay, self.max_delay, ("base_delay", "max_delay"), "RetryConfig")


@dataclass(frozen=True, slots=True)
class TimeoutConfig(_Options):
    """Deadlines of a stream, seconds >= 0 (0: off, the default).

    - ``first_token``: from a request to its first output item.
    - ``stall``: the longest gap between two items.

    A stream keeps the deadlines it started with when ``instrument()`` reconfigures.
    """

    first_token: float | None = None
    stall: float | None = None

    OPTIONS: ClassVar[dict[str, str]] = {"first_token": "first_token_timeout", "stall": "stall_timeout"}

    def __post_init__(self) -> None:
        self._check()


@dataclass(frozen=True, slots=True)
class FleetConfig(_Options):
    """Fleet mode (the "Running a fleet" page): share the breakers' OPEN decisions and probes, the
    retry budget and rate-limit pauses with every process using the same Redis.

    - ``redis_url``: ``redis://``, ``rediss://`` or ``unix://`` (default: ``STREAMSENTINEL_REDIS_URL``;
      unset: nothing is shared). Never logged nor shown in ``repr`` (it may hold a password).
    - ``redis_client``: a ``redis.Redis`` you built (Sentinel, Cluster, TLS, Valkey), instead of
      ``redis_url`` (it wins over it); its own socket timeout bounds the inline probe lease.
    - ``prefix``: put before every Redis key, 1..100 printable characters (``streamsentinel:``).
    - ``timeout``: seconds any one Redis call may take in total before the process falls back to
      its local state (> 0, default 0.25).
    - ``min_processes``: processes whose own windows must trip before a breaker opens fleet-wide
      (int >= 1, default 1).
    - ``refresh_interval``: seconds between background reads of the fleet's state (> 0, default 1).
    - ``rate_limit_pause``: what a call does while a fleet-wide pause holds its server/model:
      ``"off"`` (default: sent anyway), ``"wait"`` (sleep it out, within the retry time budget)
      or ``"reject"`` (raise ``openai.RateLimitError`` at once, no request).
    - ``quota_pause``: how long an ``insufficient_quota`` pauses its server (> 0, default 60).

    Needs the ``streamsentinel[redis]`` extra when ``redis_url`` is given.
    """

    redis_url: str | None = field(default=None, repr=False)
    redis_client: Any = field(default=None, repr=False)
    prefix: str | None = None
    timeout: float | None = None
    min_processes: int | None = None
    refresh_interval: float | None = None
    rate_limit_pause: Literal["off", "wait", "reject"] | None = None
    quota_pause: float | None = None

    OPTIONS: ClassVar[dict[str, str]] = {
        "prefix": "redis_prefix",
        "timeout": "redis_timeout",
        "min_processes": "fleet_min_processes",
        "refresh_interval": "fleet_refresh_interval",
        "rate_limit_pause": "rate_limit_pause",
        "quota_pause": "quota_pause_seconds",
    }

    def __post_init__(self) -> None:
        self._check()
        if self.redis_url is not None and not isinstance(self.redis_url, str):
            raise TypeError("FleetConfig.redis_url: expected a string such as redis://host:6379/0")
        client = self.redis_client
        if client is not None and not callable(getattr(client, "register_script", None)):
            raise TypeError(
                f"FleetConfig.redis_client={type(client).__qualname__}: expected a redis.Redis client"
            )


@dataclass(frozen=True, slots=True)
class TelemetryConfig(_Options):
    """What streamsentinel exports; nothing here changes what the application sees.

    - ``capture_content``: put completion text on spans and logs (default False: never).
    - ``chunk_events``: ``"anomalies"`` (default), ``"all"`` (every chunk's time, in seconds from
      the span's start, in one ``streamsentinel.chunks`` span event) or ``"none"``.
    - ``gap_anomaly``: an inter-chunk gap at least this long (seconds > 0, default 5) becomes a
      span event.
    - ``max_model_labels``: distinct ``model``/``server`` label values kept before ``_other``
      (int > 0, default 100).
    - ``max_label_sets``: distinct (server, port, model) combinations kept (int > 0, default 500);
      a new one past it is counted as ``server="_other", model="_other"`` (and shares that breaker).
    """

    capture_content: bool | None = None
    chunk_events: Literal["anomalies", "all", "none"] | None = None
    gap_anomaly: float | None = None
    max_model_labels: int | None = None
    max_label_sets: int | None = None

    OPTIONS: ClassVar[dict[str, str]] = {
        "capture_content": "capture_content",
        "chunk_events": "chunk_events",
        "gap_anomaly": "gap_anomaly_seconds",
        "max_model_labels": "max_model_labels",
        "max_label_sets": "max_label_sets",
    }

    def __post_init__(self) -> None:
        self._check()


GROUPS: dict[str, type[_Options]] = {
    "retry": RetryConfig,
    "timeouts": TimeoutConfig,
    "fleet": FleetConfig,
    "telemetry": TelemetryConfig,
}
"""``instrument()``'s parameter for each option object (private to the package)."""


def _flat() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for parameter, cls in GROUPS.items():
        names = dict(cls.OPTIONS)
        if cls is FleetConfig:
            names.update(redis_url="redis_url", redis_client="redis_client")
        for name, option in names.items():
            out[option] = (parameter, name)
    return out


FLAT = _flat()
"""Each flat keyword still accepted by ``instrument()`` -> (parameter, field), e.g.
``"retry_attempts" -> ("retry", "attempts")``."""


def fields_of(cls: type[_Options]) -> list[str]:
    """The field names of an option object, in order."""
    return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
