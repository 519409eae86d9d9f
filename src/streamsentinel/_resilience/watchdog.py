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
reference store, before it shuts the socket). Its life follows the streams it watches, not the
runtime's: a closed watchdog (``uninstrument()``, a reconfiguring ``instrument()``:
:meth:`Watchdog.close`) goes on enforcing the deadlines of the streams it watches, including one
adopted after the close by a ``create()`` that was under way, and its thread ends once it watches
none. The clock is injectable for tests.
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
    """The deadline thread; :meth:`watch` starts it, it ends after :meth:`close` and the last
    :meth:`unwatch`."""

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
        self._closed = False
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
        """Start enforcing the deadlines of ``ctl`` (its response headers have arrived); closed or
        not: a stream that began before the close keeps its deadlines."""
        with self._lock:
            self._watched.add(ctl)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="streamsentinel-watchdog", daemon=True)
                self._thread.start()

    def unwatch(self, ctl: Any) -> None:
        with self._lock:
            self._watched.discard(ctl)
            if not self._closed or self._watched or self._thread is None:
                return
        self._wake.set()  # closed and nothing left to watch: the thread ends now

    def close(self) -> None:
        """No new stream begins on this watchdog's runtime. The streams it watches keep their
        deadlines; its thread ends after the last of them (at once when none: joined here)."""
        with self._lock:
            self._closed = True
            idle = None if self._watched else self._thread
        self._wake.set()
        if idle is not None:
            idle.join(timeout=5)

    def _run(self) -> None:
        wake = self._wake
        while True:
            if wake.wait(self.interval):
                wake.clear()  # a close() or the last unwatch(): look at once, then poll on
            with self._lock:
                if self._closed and not self._watched:
                    self._thread = None  # under the lock: a later watch() starts another thread
                    return
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
