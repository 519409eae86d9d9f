"""Helpers for testing a service that streams through streamsentinel (as ``structlog.testing``).

``capture()`` collects the :class:`~streamsentinel.instrumentation.StreamRecord` of every stream
that ends inside the block, so a test can assert what was recorded without Prometheus::

    import streamsentinel
    from streamsentinel.testing import capture

    streamsentinel.instrument(on_truncation="record")
    with capture() as records:
        for _chunk in client.chat.completions.create(..., stream=True):
            pass
    assert [(r.outcome, r.reason) for r in records] == [("truncated", "eof_before_done")]

Records are collected while streamsentinel is instrumented (``capture()`` attaches a recording
sink to the runtime for its block only); a stream dropped without ``close()`` is ended by a background thread:
:func:`settle` waits for it. :func:`instrumented` instruments for a block unless something else
already did.

Installed with the package, ``streamsentinel.pytest_plugin`` (a pytest plugin, loaded through the
``pytest11`` entry point) turns these into fixtures: ``streamsentinel_server`` (a started fault
server), ``streamsentinel_client`` / ``streamsentinel_async_client`` (OpenAI clients pointed at
it) and ``streamsentinel_records`` (``capture()`` around the test, instrumented).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .instrumentation import Event, StreamRecord, StreamStart

__all__ = ["RecordingSink", "capture", "instrumented", "settle"]


class RecordingSink:
    """A sink that keeps every record and event it receives (``records``, ``events``), in order.
    Pass one to ``instrument(sinks=[...])`` to keep everything, or use :func:`capture`."""

    name = "recording"
    wants_chunk_gaps = False

    def __init__(self) -> None:
        self.records: list[StreamRecord] = []
        self.events: list[Event] = []

    def start(self, stream: StreamStart) -> None:
        return None

    def event(self, stream: StreamStart | None, event: Event, handle: Any) -> None:
        self.events.append(event)

    def end(self, record: StreamRecord, handle: Any) -> None:
        self.records.append(record)


@contextmanager
def capture() -> Iterator[list[StreamRecord]]:
    """Collect the records of the streams that end inside the block (in the order they end),
    streams opened before the block and under an ``instrument()`` made inside it included.

    A :class:`RecordingSink` is attached to the active runtime (and to any runtime built during the
    block) for the block only: runtimes carry no testing sink otherwise."""
    import streamsentinel

    sink = RecordingSink()
    streamsentinel._attach(sink)
    try:
        yield sink.records
    finally:
        try:
            settle()
        finally:
            streamsentinel._detach(sink)


@contextmanager
def instrumented(**options: Any) -> Iterator[bool]:
    """Instrument streamsentinel with ``options`` (``instrument()``'s keyword arguments) for the
    block, unless it already is; at the end, uninstrument only if this block instrumented.

    Yields:
        True if this block instrumented (and will uninstrument), False if streamsentinel was
        already instrumented (by the application, a broader fixture...), which is then left alone.

    Raises:
        RuntimeError: streamsentinel is already instrumented with options other than ``options``
            (``options`` empty: whatever it was instrumented with is accepted).
        TypeError, ValueError: as ``instrument()``, for invalid options.
    """
    import streamsentinel

    active = streamsentinel._active
    if active is not None:
        given = streamsentinel._canonical(options)  # as instrument() compares them
        if given and not streamsentinel._same(active[0], given):
            raise RuntimeError(
                f"streamsentinel is already instrumented with {active[0]!r}, not {options!r}: "
                "instrument it with these options where it is instrumented, or uninstrument it first"
            )
        yield False
        return
    streamsentinel.instrument(**options)
    try:
        yield True
    finally:
        streamsentinel.uninstrument()


def settle(timeout: float = 30.0) -> None:
    """Collect garbage and wait until streams dropped without ``close()`` have been recorded.

    Raises:
        TimeoutError: they were not recorded within ``timeout`` seconds.
    """
    from ._core.reaper import REAPER

    gc.collect()
    if not REAPER.drain(timeout):
        raise TimeoutError(f"abandoned streams were not recorded within {timeout} s")
