"""The side effects a stream controller asks for, as a typed Protocol the runtime implements.

The controller holds an ``Effects`` (the runtime, ``lifecycle.Runtime``, or a test's recorder),
never the runtime's collaborators: sinks, the breaker store, the watchdog, the retry budget, the
fleet and the done-marker table are reached only through these methods. Each is called on a rare
path (a start, an end, a failure, a retry), never per item except ``emit`` under DEBUG logging.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..instrumentation._data import Event, StreamRecord, StreamStart
from .ratelimit import RateLimitKind


class Effects(Protocol):
    """What a controller may ask of the outside world (all calls catch nothing: the caller does)."""

    def emit(self, stream: StreamStart | None, event: Event, handles: tuple[Any, ...], /) -> None:
        """Hand ``event`` to every sink (``handles``: the stream's per-sink handles)."""

    def end(self, record: StreamRecord, handles: tuple[Any, ...], /) -> None:
        """Hand the stream's one record to every sink."""

    def discard(self, stream: StreamStart, handles: tuple[Any, ...], /) -> None:
        """Undo a stream's start: record nothing."""

    def activate(self, handles: tuple[Any, ...], /) -> Any:
        """Make the sinks' contexts of the stream current; returns what ``deactivate`` restores."""

    def deactivate(self, active: Any, /) -> None:
        """Restore what ``activate`` (or the runtime's ``begin``) replaced."""

    def count_error(self, where: str, exc: BaseException, /) -> None:
        """Count (and log once) an internal error of streamsentinel's own code."""

    def release(self, name: str, permit: Any, result: Any, duration: float, ttft: float | None, /) -> None:
        """Give the breaker ``name`` its ``permit`` back with the call's ``result``."""

    def watch(self, ctl: Any, /) -> None:
        """The watchdog starts checking ``ctl``'s first-token and stall deadlines."""

    def unwatch(self, ctl: Any, /) -> None:
        """The watchdog stops checking ``ctl``."""

    def spend_retry(self, stream: StreamStart, kind: str, reason: str, /) -> bool:
        """Take one retry from the retry budget (``kind``: ``retry`` or ``resume``); False: denied
        (a denied retry is logged)."""

    def rate_limit_headers(
        self, stream: StreamStart, found: Any, at: float, handles: tuple[Any, ...], /
    ) -> None:
        """An attempt's ``x-ratelimit-*`` headers (``ratelimit.scan_headers``'s ``found``)."""

    def report_429(self, kind: RateLimitKind, delay: float | None, stream: StreamStart, /) -> None:
        """A 429: in fleet mode every process pauses (README "Running a fleet")."""

    def saw_done(self, server: str, /) -> None:
        """``server`` sent ``data: [DONE]``."""

    def accepts_missing_done(self, server: str, /) -> bool:
        """Whether a whole stream from ``server`` without ``[DONE]`` is complete."""

    def close_response(self, response: Any, /) -> None:
        """Close a failed attempt's HTTP response (nothing more is read from it)."""
