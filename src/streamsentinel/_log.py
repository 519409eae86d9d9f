"""streamsentinel's one logger: structlog when the application configured structlog, else the
standard ``logging`` module (logger ``streamsentinel``), so the application's logging config decides
where lines go and at what level. streamsentinel never writes to stdout by itself and never
configures either library.

Through ``logging``, a line's message is ``event key=value ...`` and the fields are also on the
record as ``record.streamsentinel`` (a dict), for JSON formatters.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

LOGGER_NAME = "streamsentinel"
STRUCTLOG = structlog.get_logger(LOGGER_NAME)
STDLIB = logging.getLogger(LOGGER_NAME)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _stdlib(level: int, event: str, fields: dict[str, Any]) -> None:
    if STDLIB.isEnabledFor(level):
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        STDLIB.log(level, "%s %s", event, text, extra={"streamsentinel": {"event": event, **fields}})


class Log:
    """``debug``/``info``/``warning``/``error(event, **fields)``: to structlog if configured, else
    to ``logging``. Decided at each call (a reconfiguration takes effect at once)."""

    __slots__ = ()

    def debug(self, event: str, **fields: Any) -> None:
        if structlog.is_configured():
            STRUCTLOG.debug(event, **fields)
        else:
            _stdlib(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        if structlog.is_configured():
            STRUCTLOG.info(event, **fields)
        else:
            _stdlib(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        if structlog.is_configured():
            STRUCTLOG.warning(event, **fields)
        else:
            _stdlib(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        if structlog.is_configured():
            STRUCTLOG.error(event, **fields)
        else:
            _stdlib(logging.ERROR, event, fields)


log = Log()


def enabled(level: int) -> bool:
    """Whether a line at ``level`` may be emitted: False only when it surely is not (structlog not
    configured and ``logging``'s level above it), so callers skip building its fields."""
    return structlog.is_configured() or STDLIB.isEnabledFor(level)


def debug_enabled() -> bool:
    """Whether streamsentinel's DEBUG lines would be emitted: asked once per stream, never per
    chunk, never cached across streams."""
    if not structlog.is_configured():
        return STDLIB.isEnabledFor(logging.DEBUG)
    try:
        logger = STRUCTLOG.bind()
        is_enabled_for = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
        return bool(is_enabled_for(logging.DEBUG)) if is_enabled_for is not None else True
    except Exception:
        return False
