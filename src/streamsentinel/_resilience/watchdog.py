"""Enforces ``first_token_timeout`` and ``stall_timeout`` on open streams, sync and async alike.

One daemon thread looks at the streams it watches every ``interval`` seconds (a tenth of the
shortest timeout, 10 ms at the least). A stream past its deadline is marked with the kind of
timeout and its socket is shut down (``SHUT_RDWR``): the read the consumer is blocked in, in a
thread or in an event loop, returns at once, the SDK raises ``APIConnectionError``, and the stream's
failure is classified from the mark. Nothing is added to the per-chunk path: the deadlines are
computed from fields the proxy already keeps.

Deadlines (``time.perf_counter()`` seconds), checked only while the consumer is blocked in a read
(``state.read_at``: a slow consumer with data waiting in the socket is not a stalled server):
first token, the current attempt's start + ``first_token_timeout``; stall, the start of the read
+ ``stall_timeout``. Before the response headers the SDK's own timeouts apply.

The thread only reads the controllers' fields and sets one (``state.timeout_kind``, a single
reference store, before it shuts the socket); ``uninstrument()`` stops it (:meth:`Watchdog.stop`).
The clock is injectable for tests.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .. import _forksafe as forksafe


def _socket_of(response: Any) -> Any:
    """The response's socket: a ``socket.socket`` (sync) or asyncio's ``TransportSocket``."""
    stream = getattr(response, "extensions", {}).get("network_stream")
    if stream is None:
        return None
    sock = stream.get_extra_info("socket")
    return sock if callable(getattr(sock, "shutdown", None)) else None


class Watchdog:
    """The deadline thread; start it with :meth:`watch`, stop it with :meth:`stop`."""

    def __init__(
        self,
        first_token_timeout: float | None,
        stall_timeout: float | None,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        self.clock = clock
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        timeouts = [t for t in (first_token_timeout, stall_timeout) if t is not None]
        self.interval = max(0.01, min(timeouts) / 10) if timeouts else 1.0
        self._watched: set[Any] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        # The watched streams are the parent's: shutting their sockets (shared with the parent)
        # down would cut the parent's streams.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._watched = set()

    @property
    def enabled(self) -> bool:
        return self.first_token_timeout is not None or self.stall_timeout is not None

    def watch(self, ctl: Any) -> None:
        """Start enforcing the deadlines of ``ctl`` (its response headers have arrived)."""
        with self._lock:
            self._watched.add(ctl)
            if self._thread is None:
                self._wake.clear()
                self._thread = threading.Thread(target=self._run, name="streamsentinel-watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, ctl: Any) -> None:
        with self._lock:
            self._watched.discard(ctl)

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
            now = self.clock()
            for ctl in watched:
                kind = self.expired(ctl, now)
                if kind is not None:
                    self._trip(ctl, kind)

    def expired(self, ctl: Any, now: float) -> str | None:
        """Which deadline of ``ctl`` (a ``StreamController``) has passed at ``now``, if any."""
        s = ctl.s
        read_at = s.read_at
        if not read_at or ctl.ended or s.timeout_kind is not None:
            return None  # not waiting in a read, or already handled
        first = self.first_token_timeout
        if first is not None and s.first_at is None and now - ctl.attempt_start >= first:
            return "first_token_timeout"
        stall = self.stall_timeout
        if stall is not None and now - read_at >= stall:
            return "stall"
        return None

    def _trip(self, ctl: Any, kind: str) -> None:
        sock = _socket_of(ctl.response)
        if sock is None:  # an in-process transport has no socket: nothing to interrupt
            return
        ctl.s.timeout_kind = kind
        with self._lock:
            self._watched.discard(ctl)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the read has ended anyway
