"""The one guard between the core and the sinks, and streamsentinel's own failures.

Every sink call goes through :class:`Emitter`: a sink that raises is counted once in
``openai_stream_instrumentation_errors_total{stage=<sink.name>}`` (the type's name for a sink
without one; counted by every sink that counts internal errors: ``internal_error(stage)``), logged
once per stage, and changes nothing else. The guard itself never raises, whatever a sink lacks. The
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
from .._log import log
from ..instrumentation._data import Event, StreamRecord, StreamStart

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


class _Lookups:
    """A sink's attributes, each looked up once and safely: a missing one is None, and one whose
    lookup raises is None too, its failure kept to be counted once the counters exist."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, Exception]] = []

    def get(self, sink: Any, attr: str, stage: str, default: Any = None) -> Any:
        try:
            return getattr(sink, attr, default)
        except Exception as exc:
            self.failures.append((stage, exc))
            return default

    def stage(self, sink: Any) -> str:
        """The ``stage`` label of a sink's failures: its ``name`` when that is a non-empty string,
        else its type's name (a sink may lack ``name``, or have one that raises)."""
        fallback = type(sink).__name__
        name = self.get(sink, "name", fallback)
        return name if isinstance(name, str) and name else fallback

    def method(self, sink: Any, attr: str, stage: str) -> Any:
        value = self.get(sink, attr, stage)
        return value if callable(value) else None


class Emitter:
    """Fans the core's records and events out to the sinks, each call behind one guard.

    Total: whatever a sink lacks or raises (its ``name``, a method, a property), no method of the
    emitter raises and every other sink gets every call. Each sink's stage and bound methods are
    looked up once, here; a sink lacking a method is skipped for it.
    """

    def __init__(self, sinks: Sequence[Any], errors: InternalErrors) -> None:
        self.sinks = tuple(sinks)
        self.errors = errors
        self._attached: tuple[Any, ...] = ()  # attach(): records only, replaced whole (no lock to read)
        found = _Lookups()
        self.stages = tuple(found.stage(sink) for sink in self.sinks)

        def plan(attr: str) -> tuple[tuple[int, Any, str], ...]:
            """``(index, bound method or None, stage)`` per sink."""
            return tuple(
                (i, found.method(s, attr, self.stages[i]), self.stages[i]) for i, s in enumerate(self.sinks)
            )

        def having(attr: str) -> tuple[tuple[int, Any, str], ...]:
            return tuple(entry for entry in plan(attr) if entry[1] is not None)

        for _, counter, _ in having("internal_error"):
            errors.count_with(counter)
        self._events = having("event")
        self._ends = having("end")
        self._discards = having("discard")
        self._closes = having("close")
        self._activating = tuple(
            (i, activate, deactivate, stage)
            for (i, activate, stage), (_, deactivate, _) in zip(
                plan("activate"), plan("deactivate"), strict=True
            )
            if activate is not None and deactivate is not None
        )
        contexts = {i: (activate, deactivate) for i, activate, deactivate, _ in self._activating}
        self._start_plan = tuple((start, stage, contexts.get(i)) for i, start, stage in plan("start"))
        # Sinks whose wants_chunk_gaps may change (a property); the others are read once, here.
        self._gaps_always = False
        gaps_dynamic: list[tuple[Any, str]] = []
        for sink, stage in zip(self.sinks, self.stages, strict=True):
            if isinstance(found.get(type(sink), "wants_chunk_gaps", stage), property):
                gaps_dynamic.append((sink, stage))
            elif found.get(sink, "wants_chunk_gaps", stage, False) is True:
                self._gaps_always = True
        self._gaps_dynamic = tuple(gaps_dynamic)
        for stage, exc in found.failures:
            errors(stage, exc)

    @property
    def wants_chunk_gaps(self) -> bool:
        """Whether a sink wants every inter-item gap of the next stream (asked once per stream)."""
        if self._gaps_always:
            return True
        for sink, stage in self._gaps_dynamic:
            try:
                if sink.wants_chunk_gaps:
                    return True
            except Exception as exc:
                self.errors(stage, exc)
        return False

    def start(self, stream: StreamStart) -> tuple[tuple[Any, ...], list[tuple[Any, Any]] | None]:
        """Every sink's handle for a new stream (None for a sink that failed or has no ``start``),
        and the tokens of the contexts made current (None: none). A sink with a context (the trace
        sink) is started first and its context is current while the others start, so they can
        correlate (trace and span ids in log lines). The contexts stay current: the caller hands
        the tokens to :meth:`deactivate` once the SDK's ``create()`` returned
        (``Attempts.enter``/``exit``), or at once when no call is made, so a context is attached
        once per stream, not twice."""
        handles: list[Any] = []
        tokens: list[tuple[Any, Any]] | None = None
        for start, stage, context in self._start_plan:
            handle = None
            if start is not None:
                try:
                    handle = start(stream)
                except Exception as exc:
                    self.errors(stage, exc)
            handles.append(handle)
            if context is not None and handle is not None:
                try:
                    token = context[0](handle)
                    tokens = [] if tokens is None else tokens
                    tokens.append((context[1], token))
                except Exception as exc:
                    self.errors(stage, exc)
        return tuple(handles), tokens

    def event(self, stream: StreamStart | None, event: Event, handles: tuple[Any, ...] = _NO_HANDLES) -> None:
        for i, method, stage in self._events:
            try:
                method(stream, event, handles[i] if handles else None)
            except Exception as exc:
                self.errors(stage, exc)

    def end(self, record: StreamRecord, handles: tuple[Any, ...]) -> None:
        for i, method, stage in self._ends:
            try:
                method(record, handles[i])
            except Exception as exc:
                self.errors(stage, exc)
        for sink in self._attached:
            try:
                sink.end(record, None)
            except Exception as exc:
                self.errors("attached", exc)

    def attach(self, sink: Any) -> None:
        """From now on, call ``sink.end(record, None)`` for every stream that ends (started before
        or after), until :meth:`detach`; the sink gets no ``start`` nor events. For a block's
        observer (``streamsentinel.testing.capture()``), not for production sinks."""
        self._attached = (*self._attached, sink)

    def detach(self, sink: Any) -> None:
        """Undo :meth:`attach` (no-op for a sink not attached)."""
        self._attached = tuple(s for s in self._attached if s is not sink)

    def discard(self, stream: StreamStart, handles: tuple[Any, ...]) -> None:
        for i, method, stage in self._discards:
            try:
                method(stream, handles[i])
            except Exception as exc:
                self.errors(stage, exc)

    def activate(self, handles: tuple[Any, ...]) -> list[tuple[Any, Any]]:
        """Make the stream's contexts current (around the SDK's ``create()``); returns the tokens."""
        tokens: list[tuple[Any, Any]] = []
        for i, activate, deactivate, stage in self._activating:
            if handles[i] is None:
                continue
            try:
                tokens.append((deactivate, activate(handles[i])))
            except Exception as exc:
                self.errors(stage, exc)
        return tokens

    def deactivate(self, tokens: list[tuple[Any, Any]]) -> None:
        for deactivate, token in reversed(tokens):
            try:
                deactivate(token)
            except Exception as exc:
                self.errors("context", exc)

    def close(self) -> None:
        for _, method, stage in self._closes:
            try:
                method()
            except Exception as exc:
                self.errors(stage, exc)
