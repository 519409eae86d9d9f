"""Ends streams that were garbage-collected without ``close()``, off the finalizer.

A finalizer (``__del__``) may run at any allocation, in any thread, while that thread holds any
lock: a breaker's, a metric child's, a logging handler's. So a finalizer never ends a stream itself:
it puts the controller on a ``queue.SimpleQueue`` (whose ``put`` is safe to call from a finalizer)
and this module's thread ends it. :meth:`Reaper.drain` waits until everything queued so far has
been ended (tests use it). One reaper serves the process (``REAPER``), so instrumenting again
starts no new thread, and a stream that outlives ``uninstrument()`` is still ended.

After a fork the child's reaper is new (``_forksafe``): the inherited queue's lock may be held by
the parent's reaper thread, which the child has not, and the controllers queued in the parent, or
opened there and garbage-collected in the child, are the parent's to end (it records them).
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any

from .. import _forksafe as forksafe


class Reaper:
    """One daemon thread ending abandoned streams (started on first use)."""

    def __init__(self) -> None:
        self._reset()
        forksafe.register(self)

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = itertools.count(1)  # next() is atomic: safe in a finalizer
        self._last_queued = 0
        self._done = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    def _after_fork_in_child(self) -> None:
        self._reset()  # the parent's queued controllers go with its queue, unended

    def start(self) -> None:
        if self._thread is not None:  # every stream asks: no lock once it runs
            return
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="streamsentinel-reaper", daemon=True)
                self._thread.start()

    def put(self, ctl: Any) -> None:
        """From a finalizer: queue ``ctl`` to be ended as abandoned (never blocks, never raises)."""
        try:
            if ctl.generation != forksafe.generation:
                return  # opened before a fork: the parent's stream, ended by the parent
            self._last_queued = next(self._queued)
            self._queue.put(ctl)
        except Exception:
            pass

    def _run(self) -> None:
        while True:
            ctl = self._queue.get()
            try:
                ctl.on_close()
            except Exception:
                pass
            finally:
                with self._cond:
                    self._done += 1
                    self._cond.notify_all()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every stream queued before this call has been ended. False on timeout."""
        target = self._last_queued
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= target, timeout)


REAPER = Reaper()
