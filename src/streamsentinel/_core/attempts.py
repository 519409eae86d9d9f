"""What the SDK's HTTP attempts tell about a call, streaming or not: each response's rate-limit
headers and 429 kind, transport errors, and the SDK's own retries (before any stream exists).

:class:`Attempts` is a component the stream controller owns and, alone, the light context of a
plain (``stream=False``) call, so a 429 or an SDK retry is counted whatever the call. Every 429 is counted
here, once per HTTP response; an in-stream rate-limit error is counted by the controller.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import perf_counter
from typing import Any

from ..instrumentation._data import Event, RateLimitEvent, RetryEvent
from .context import CURRENT
from .effects import Effects
from .ratelimit import RateLimitKind, classify_429, retry_delay_seconds, scan_headers
from .taxonomy import ErrorType, rate_limit_error_type, status_error_type, transport_error_type


class Attempts:
    """The HTTP attempts of one call. ``fx`` is what it may ask of the outside (the runtime),
    ``stream`` the call's ``StreamStart``, ``handles`` the sinks' per-stream handles (empty for a
    plain call)."""

    __slots__ = (
        "active",
        "fx",
        "handles",
        "last_reason",
        "request_id",
        "saw_429",
        "sdk_retries",
        "sentinel_retries",
        "start",
        "stream",
        "timeline",
    )

    def __init__(self, fx: Effects, stream: Any, start: float, handles: tuple[Any, ...] = ()) -> None:
        self.fx = fx
        self.stream = stream
        self.start = start
        self.handles = handles
        self.active: list[Any] | None = None  # context tokens Runtime.begin left current
        self.request_id: str | None = None
        self.sdk_retries = 0
        self.sentinel_retries = 0
        self.saw_429 = False
        self.last_reason: ErrorType = "connection_error"  # the latest failed attempt's ErrorType
        self.timeline: list[Any] | None = None  # a stream's events, kept for its record

    def enter(self) -> tuple[Any, Any]:
        """Make this call current while the SDK's ``create()`` runs (and the sinks' contexts, e.g.
        the stream's span, so HTTP spans nest under it); returns what :meth:`exit` restores."""
        active = self.active
        if active is not None:  # still current since Runtime.begin: not attached a second time
            self.active = None
            return CURRENT.set(self), active
        return CURRENT.set(self), self.fx.activate(self.handles) if self.handles else None

    def leave(self) -> None:
        """No call is made after all (refused, served by a fallback, or interrupted before it):
        the contexts ``Runtime.begin`` left current stop being so."""
        active = self.active
        if active is not None:
            self.active = None
            self.fx.deactivate(active)

    def exit(self, tokens: tuple[Any, Any]) -> None:
        current, activated = tokens
        if activated:
            self.fx.deactivate(activated)
        CURRENT.reset(current)

    def _emit(self, event: Event) -> None:
        if self.timeline is not None:
            self.timeline.append(event)
        self.fx.emit(self.stream, event, self.handles)

    def rate_limited(self, kind: RateLimitKind, status: int | None) -> None:
        """Count one rate-limit event (a 429 response, or an in-stream rate-limit error)."""
        if status == 429:
            self.saw_429 = True
        self._emit(RateLimitEvent(perf_counter() - self.start, kind, status, self.request_id))

    def on_response(
        self,
        status: int,
        headers: Mapping[str, str],
        body: object,
        triples: list[tuple[bytes, bytes, bytes]] | None = None,
    ) -> None:
        """One HTTP response inside ``create()`` (``body``: the parsed JSON of a 429, else None;
        ``triples``: the headers as ``ratelimit.scan_headers`` takes them, when at hand)."""
        try:
            self.request_id, found = scan_headers(headers, triples)
            if found:
                self.fx.rate_limit_headers(self.stream, found, perf_counter() - self.start, self.handles)
            if status == 429:
                kind = classify_429(body, headers)
                self.last_reason = rate_limit_error_type(kind)
                self.rate_limited(kind, 429)
                self.fx.report_429(kind, retry_delay_seconds(headers), self.stream)
            elif status >= 400:
                self.last_reason = status_error_type(status)
        except Exception as exc:
            self.fx.count_error("attempt", exc)

    def on_transport_error(self, exc: BaseException) -> None:
        """An HTTP attempt raised before any response (timeout or transport error)."""
        try:
            self.last_reason = transport_error_type(exc)
        except Exception as error:
            self.fx.count_error("attempt", error)

    def on_sdk_retry(self, retries_taken: int, headers: Mapping[str, str] | None) -> None:
        """The SDK is about to sleep and retry (``headers``: the failed response's, None when the
        attempt raised)."""
        try:
            self.sdk_retries += 1
            reason = self.last_reason
            if headers is None and reason not in ("timeout", "connection_error"):
                reason = "connection_error"  # the attempt hook did not run
            delay = retry_delay_seconds(headers) if headers is not None else None
            self._emit(RetryEvent(perf_counter() - self.start, "sdk", reason, retries_taken + 1, delay))
        except Exception as exc:
            self.fx.count_error("retry", exc)
