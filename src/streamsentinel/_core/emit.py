"""The one guard between the core and the sinks, and streamsentinel's own failures.

Every sink call goes through :class:`Emitter`: a sink that raises is counted once in
``openai_stream_instrumentation_errors_total{stage=<sink.name>}`` (by every sink that counts
internal errors: ``internal_error(stage)``), logged once per stage, and changes nothing else. The
log line carries the exception's type, its message (cut to 200 characters) and the innermost frame
of ours (file, line, function): never a traceback, never frame locals, which may hold the request
(prompt text, ``extra_headers`` with an API key).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import _forksafe as forksafe
from ..instrumentation._data import Event, StreamRecord, StreamStart
from .log import log

_log = log
_PACKAGE = str(Path(__file__).resolve().parents[1])
_NO_HANDLES: tuple[Any, ...] = ()


def _our_frame(exc: BaseException) -> str:
    """``file:line in function`` of the innermost traceback frame inside streamsentinel."""
    where = "?"
    for frame, line in traceback.walk_tb(exc.__traceback__):
        path = frame.f_code.co_filename
        if path.startswith(_PACKAGE):
            where = f"{Path(path).relative_to(_PACKAGE).as_posix()}:{line} in {frame.f_code.co_name}"
    return where


class InternalErrors:
    """Counts and logs failures of streamsentinel's own code, by stage (each logged once)."""

    def __init__(self) -> None:
        self._counters: list[Any] = []  # sinks' internal_error(stage) methods
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def count_with(self, counter: Any) -> None:
        self._counters.append(counter)

    def __call__(self, stage: str, exc: BaseException | None = None) -> None:
        """Count one failure at ``stage``; log the first of each stage. Never raises."""
        for counter in self._counters:
            try:
                counter(stage)
            except Exception:
                pass
        try:
            with self._lock:
                if stage in self._logged:
                    return
                self._logged.add(stage)
            fields: dict[str, Any] = {"stage": stage, "note": "logged once per stage"}
            if exc is not None:
                fields["error_type"] = type(exc).__qualname__
                fields["error"] = str(exc)[:200]
                fields["where"] = _our_frame(exc)
            _log.error("instrumentation.error", **fields)
        except Exception:
            pass


class Emitter:
    """Fans the core's records and events out to the sinks, each call behind one guard."""

    def __init__(self, sinks: Sequence[Any], errors: InternalErrors) -> None:
        self.sinks = tuple(sinks)
        self.errors = errors
        self._activating = tuple(
            (i, s.activate, s.deactivate) for i, s in enumerate(self.sinks) if hasattr(s, "activate")
        )
        self._start_plan = tuple((s, hasattr(s, "activate")) for s in self.sinks)
        # Sinks whose wants_chunk_gaps may change (a property); the others are read once, here.
        self._gaps_always = any(getattr(s, "wants_chunk_gaps", False) is True for s in self.sinks)
        self._gaps_dynamic = tuple(
            s for s in self.sinks if isinstance(getattr(type(s), "wants_chunk_gaps", None), property)
        )
        for sink in self.sinks:
            counter = getattr(sink, "internal_error", None)
            if counter is not None:
                errors.count_with(counter)

    @property
    def wants_chunk_gaps(self) -> bool:
        """Whether a sink wants every inter-item gap of the next stream (asked once per stream)."""
        if self._gaps_always:
            return True
        return any(sink.wants_chunk_gaps for sink in self._gaps_dynamic)

    def start(self, stream: StreamStart) -> tuple[tuple[Any, ...], list[tuple[Any, Any]] | None]:
        """Every sink's handle for a new stream (None for a sink that failed), and the tokens of
        the contexts made current (None: none). A sink with a context (the trace sink) is started
        first and its context is current while the others start, so they can correlate (trace
        and span ids in log lines). The contexts stay current: the caller hands the tokens to
        :meth:`deactivate` once the SDK's ``create()`` returned (``Attempts.enter``/``exit``), or
        at once when no call is made, so a context is attached once per stream, not twice."""
        handles: list[Any] = []
        tokens: list[tuple[Any, Any]] | None = None
        for sink, activates in self._start_plan:
            try:
                handle = sink.start(stream)
            except Exception as exc:
                handle = None
                self.errors(sink.name, exc)
            handles.append(handle)
            if activates and handle is not None:
                try:
                    token = sink.activate(handle)
                    tokens = [] if tokens is None else tokens
                    tokens.append((sink.deactivate, token))
                except Exception as exc:
                    self.errors(sink.name, exc)
        return tuple(handles), tokens

    def event(self, stream: StreamStart | None, event: Event, handles: tuple[Any, ...] = _NO_HANDLES) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                sink.event(stream, event, handles[i] if handles else None)
            except Exception as exc:
                self.errors(sink.name, exc)

    def end(self, record: StreamRecord, handles: tuple[Any, ...]) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                sink.end(record, handles[i])
            except Exception as exc:
                self.errors(sink.name, exc)

    def discard(self, stream: StreamStart, handles: tuple[Any, ...]) -> None:
        for i, sink in enumerate(self.sinks):
            discard = getattr(sink, "discard", None)
            if discard is None:
                continue
            try:
                discard(stream, handles[i])
            except Exception as exc:
                self.errors(sink.name, exc)

    def activate(self, handles: tuple[Any, ...]) -> list[tuple[Any, Any]]:
        """Make the stream's contexts current (around the SDK's ``create()``); returns the tokens."""
        tokens: list[tuple[Any, Any]] = []
        for i, activate, deactivate in self._activating:
            if handles[i] is None:
                continue
            try:
                tokens.append((deactivate, activate(handles[i])))
            except Exception as exc:
                self.errors(self.sinks[i].name, exc)
        return tokens

    def deactivate(self, tokens: list[tuple[Any, Any]]) -> None:
        for deactivate, token in reversed(tokens):
            try:
                deactivate(token)
            except Exception as exc:
                self.errors("context", exc)

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    self.errors(sink.name, exc)
