"""The one definition of each option's domain, shared by the ``STREAMSENTINEL_*`` variables
(``_core.config.resolve``) and the public option objects (``streamsentinel.config``).

A leaf: imports only the standard library, so ``import streamsentinel`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off/""`` -> False (any case). Raises ValueError."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


class Parser:
    """One option's domain: ``parse`` reads a variable's text, ``typed`` checks a Python value
    (both raise ValueError); ``allowed`` says what is accepted, for messages."""

    __slots__ = ("allowed", "parse", "typed")

    def __init__(self, parse: Callable[[str], Any], allowed: str, typed: Callable[[Any], Any]) -> None:
        self.parse = parse
        self.allowed = allowed
        self.typed = typed

    def value(self, raw: Any) -> Any:
        """``raw`` given in code: text is read as a variable's would be, anything else checked as
        it is (never stringified). Raises ValueError."""
        return self.parse(raw) if isinstance(raw, str) else self.typed(raw)


def _choice(*allowed: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(raw)
        return value

    def typed(raw: Any) -> str:
        raise ValueError(raw)  # only text is a choice

    return Parser(parse, "one of " + ", ".join(allowed), typed)


def _bounded(kind: type, low: float, high: float = math.inf, *, open_low: bool = False) -> Parser:
    def check(value: Any) -> Any:
        number = float(value)
        if number != number or number < low or number > high or (open_low and number == low):
            raise ValueError(value)
        return value

    def typed(raw: Any) -> Any:
        if isinstance(raw, bool) or not isinstance(raw, (int, float) if kind is float else int):
            raise ValueError(raw)
        return check(kind(raw))

    name = "an integer" if kind is int else "a number"
    bounds = f"> {low:g}" if open_low else f">= {low:g}"
    if high != math.inf:
        bounds += f" and <= {high:g}"
    return Parser(lambda raw: check(kind(raw)), f"{name} {bounds}", typed)


def _positive(kind: type) -> Parser:
    return _bounded(kind, 0.0, open_low=True)


def _prefix(raw: str) -> str:
    if not isinstance(raw, str) or not 1 <= len(raw) <= 100 or not raw.isprintable() or " " in raw:
        raise ValueError(raw)
    return raw


def _typed_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise ValueError(raw)


PARSERS: dict[str, Parser] = {
    "mode": _choice("observe", "protect"),
    "on_truncation": _choice("raise", "record"),
    "capture_content": Parser(parse_bool, "true or false (1/0, yes/no, on/off)", _typed_bool),
    "chunk_events": _choice("anomalies", "all", "none"),
    "gap_anomaly_seconds": _positive(float),
    "max_model_labels": _positive(int),
    "max_label_sets": _positive(int),
    "retry_attempts": _bounded(int, 1),
    "retry_base_delay": _bounded(float, 0.0),
    "retry_max_delay": _bounded(float, 0.0),
    "retry_time_budget": _bounded(float, 0.0),
    "retry_budget_ratio": _bounded(float, 0.0, 1.0),
    "retry_budget_window": _positive(float),
    "retry_budget_min_retries": _bounded(int, 0),
    "first_token_timeout": _bounded(float, 0.0),
    "stall_timeout": _bounded(float, 0.0),
    "resume": _choice("off", "replay", "responses"),
    "done_marker": _choice("auto", "strict", "lenient"),
    "redis_prefix": Parser(_prefix, "1 to 100 printable characters without spaces", _prefix),
    "rate_limit_pause": _choice("off", "wait", "reject"),
    "fleet_min_processes": _bounded(int, 1),
    "fleet_refresh_interval": _positive(float),
    "redis_timeout": _positive(float),
    "quota_pause_seconds": _positive(float),
}
"""Every option with a ``STREAMSENTINEL_<OPTION>`` variable, by its flat name; ``mode`` first (it
sets the others' defaults)."""

MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "observe": {"on_truncation": "record", "retry_attempts": 1, "resume": "off", "rate_limit_pause": "off"},
    "protect": {},
}
"""What each ``mode`` sets, under explicit options and their variables (the breaker's ``shadow``
is applied by ``_core.config.breaker_config``)."""


def explicit(option: str, raw: Any, label: str | None = None) -> Any:
    """``raw`` given in code for ``option`` (a key of :data:`PARSERS`), checked and normalised.

    Raises:
        ValueError: one line naming ``label`` (default ``streamsentinel option <option>``), the
            value and what is allowed.
    """
    parser = PARSERS[option]
    try:
        return parser.value(raw)
    except (ValueError, TypeError, OverflowError):
        where = label or f"streamsentinel option {option}"
        raise ValueError(f"{where}={raw!r}: expected {parser.allowed}") from None


def check_delays(base: float | None, cap: float | None, names: tuple[str, str], where: str) -> None:
    """Raises ValueError when both delays are given and ``base > cap``."""
    if base is not None and cap is not None and base > cap:
        raise ValueError(
            f"{where} {names[0]}={base:g} and {names[1]}={cap:g}: expected {names[0]} <= {names[1]}"
        )
