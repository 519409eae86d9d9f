"""After ``os.fork()``, the child's locks, queues, conditions and threads of ours are new, and the
parent's pending work is not the child's.

``fork()`` copies memory as it is, but only the forking thread goes on in the child: a lock, a
queue's or a condition's internal lock held at that moment by another thread (the reaper, the
watchdog, a consumer in a breaker) stays held forever in the child, and work queued by the parent
(controllers to end, events to deliver, counts to flush) would be done a second time there. So each
object of ours holding such things calls :func:`register` (held weakly: registering keeps nothing
alive), and in the child its ``_after_fork_in_child()`` re-creates them and drops what was pending;
module-level state registers a function with :func:`register_function`. ``generation`` counts the
forks since the interpreter started, so a stream opened before the fork is recognised as the
parent's when the child garbage-collects its copy.

The resets run from ``os.register_at_fork(after_in_child=...)`` (``os.fork()`` and
multiprocessing's ``fork`` start method), in the child only, while it is still single-threaded.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Protocol


class ForkSafe(Protocol):
    def _after_fork_in_child(self) -> None:
        """Re-create every lock, queue, condition and thread; forget the parent's pending work."""


_OBJECTS: weakref.WeakSet[ForkSafe] = weakref.WeakSet()  # identity-hashed objects only
_FUNCTIONS: list[Callable[[], None]] = []

generation = 0
"""Forks this process descends from (0 in the process that imported streamsentinel first)."""


def register(obj: ForkSafe) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked while ``obj`` is alive."""
    _OBJECTS.add(obj)


def register_function(reset: Callable[[], None]) -> None:
    """Call ``reset()`` in every child forked from now on (module-level state; kept for good)."""
    _FUNCTIONS.append(reset)


def _after_fork_in_child() -> None:
    global generation
    generation += 1
    for reset in [*_FUNCTIONS, *(obj._after_fork_in_child for obj in list(_OBJECTS))]:
        try:
            reset()
        except Exception:
            pass  # one object's reset must not leave the others unreset


os.register_at_fork(after_in_child=_after_fork_in_child)
