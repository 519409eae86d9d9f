"""Enforces ``first_token_timeout`` and ``stall_timeout`` on open streams, sync and async alike.

One daemon thread looks at the streams it watches every ``interval`` seconds (a tenth of the
shortest timeout, 10 ms at the least). A stream past its deadline is marked with the kind of
timeout and its socket is shut down (``SHUT_RDWR``): the read the consumer is blocked in, in a
thread or in an event loop, returns at once, the SDK raises ``APIConnectionError``, and the stream's
failure is classified from the mark. Nothing is added to the per-chunk path: the deadlines are
computed from fields the proxy already keeps.

Deadlines (``time.perf_counter()`` seconds), checked only while the consumer is blocked in a read
(``obs.read_at``: a slow consumer with data waiting in the socket is not a stalled server):
first token, the current attempt's start + ``first_token_timeout``; stall, the start of the read
+ ``stall_timeout``. Before the response headers the SDK's own timeouts apply.
"""

from __future__ import annotations

import socket
import threading
from time import perf_counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .observation import StreamObservation


def _socket_of(response: Any) -> Any:
    """The response's socket: a ``socket.socket`` (sync) or asyncio's ``TransportSocket``."""
    stream = getattr(response, "extensions", {}).get("network_stream")
    if stream is None:
        return None
    sock = stream.get_extra_info("socket")
    return sock if callable(getattr(sock, "shutdown", None)) else None


class Watchdog:
    """The deadline thread; start it with :meth:`watch`, stop it with :meth:`stop`."""

    def __init__(self, first_token_timeout: float | None, stall_timeout: float | None) -> None:
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        timeouts = [t for t in (first_token_timeout, stall_timeout) if t is not None]
        self.interval = max(0.01, min(timeouts) / 10) if timeouts else 1.0
        self._watched: set[StreamObservation] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.first_token_timeout is not None or self.stall_timeout is not None

    def watch(self, obs: StreamObservation) -> None:
        """Start enforcing the deadlines of ``obs`` (its response headers have arrived)."""
        with self._lock:
            self._watched.add(obs)
            if self._thread is None:
                self._wake.clear()
                self._thread = threading.Thread(target=self._run, name="streamsentinel-watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, obs: StreamObservation) -> None:
        with self._lock:
            self._watched.discard(obs)

    def stop(self) -> None:
        """Stop the thread (it is started again by the next :meth:`watch`)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._watched.clear()
        self._wake.set()
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._wake.wait(self.interval):
            with self._lock:
                watched = list(self._watched)
            now = perf_counter()
            for obs in watched:
                kind = self.expired(obs, now)
                if kind is not None:
                    self._trip(obs, kind)

    def expired(self, obs: StreamObservation, now: float) -> str | None:
        """Which deadline of ``obs`` has passed at ``now``, if any."""
        read_at = obs.read_at
        if not read_at or obs.ended or obs.timeout_kind is not None:
            return None  # not waiting in a read, or already handled
        first = self.first_token_timeout
        if first is not None and obs.first_at is None and now - obs.attempt_start >= first:
            return "first_token_timeout"
        stall = self.stall_timeout
        if stall is not None and now - read_at >= stall:
            return "stall"
        return None

    def _trip(self, obs: StreamObservation, kind: str) -> None:
        sock = _socket_of(obs.response)
        if sock is None:  # an in-process transport has no socket: nothing to interrupt
            return
        obs.timeout_kind = kind
        with self._lock:
            self._watched.discard(obs)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the read has ended anyway
