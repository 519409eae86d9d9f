"""How a stream ends other than by its reads: ``create()`` raised, the consumer closed, dropped or
cancelled it, a raw body was read to its end, or it was not a stream after all; and the exceptions
the controller raises on purpose (``StreamTruncatedError``, ``StreamTimeoutError``). A base of the
stream controller (``controller.py``), whose ``_finish`` records every ending once.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import httpx2
import openai

from .. import errors
from ..instrumentation._data import GapEvent
from .reopen import Reopening
from .taxonomy import (
    Failure,
    abandon_outcome,
    classify_request_exception,
    given_up_failure,
    is_cancellation,
    outcome_of,
)


class Endings(Reopening):
    """The endings of a stream besides its reads (see the module docstring)."""

    __slots__ = ("ended", "raw_mode")
    ended: bool  # the stream was recorded (set once, by ``_finish`` or ``discard``)
    raw_mode: bool  # a raw response not parsed into a stream: its body's end ends it

    def _raised_failure(self, exc: BaseException) -> Failure:
        raise NotImplementedError

    def _give_back(self, result: Any, duration: float = 0.0) -> None:
        raise NotImplementedError

    # -- other endings -----------------------------------------------------------------------------

    def request_failed(self, exc: BaseException) -> None:
        """``create()`` raised: no stream (``failed``), or it was cancelled (``abandoned``)."""
        if self.ended:
            return
        failure = classify_request_exception(exc)
        if failure is None:
            self._finish("abandoned", None)
            return
        if failure.rate_limit_kind is not None and not self.saw_429:
            self.rate_limited(failure.rate_limit_kind, 429)  # the attempt hook did not see it
        self._finish("failed", failure)

    def closing(self) -> None:
        """The consumer is closing the stream (maybe from another thread or task, while a read is
        pending): that wins over any decision still to come. No reopening starts from now on, a
        wait before one ends at once (``wake``), and a read the close breaks ends the stream."""
        self.closed = True
        wake = self.wake
        if wake is not None:
            try:
                wake()
            except Exception as exc:
                self.rt.errors("close", exc)

    def on_close(self) -> None:
        """The consumer closed, dropped or cancelled the stream: a failure if the server had sent an
        error event or a read had stalled (``taxonomy.given_up_failure``); else ``completed`` if
        the answer was already whole, else ``abandoned``."""
        self.closing()
        if self.ended:
            return
        s = self.s
        try:
            pending = perf_counter() - s.read_at if s.read_at else 0.0
            failure = given_up_failure(s.in_stream_failure(), pending, self.rt.stall_threshold)
            if failure is not None:
                self._note_stall(failure)
                self._finish(outcome_of(failure, s.payload_chunks > 0), failure)
                return
            outcome = abandon_outcome(s.complete(self.stream.operation, closed_early=True), None)
        except Exception as exc:
            self.rt.errors("classify", exc)
            outcome = "abandoned"
        self._finish(outcome, None)

    def _note_stall(self, failure: Failure) -> None:
        if failure.reason == "stall":
            self.s.events.append(GapEvent(perf_counter() - self.start, perf_counter() - self.s.read_at))

    def raw_ended(self, exc: BaseException | None) -> None:
        """A raw body (not decoded by the SDK) was read to its end (``exc`` None) or broke."""
        if self.ended or not self.raw_mode:
            return
        if exc is None:
            self._finish("completed", None)
        elif is_cancellation(exc):
            self.on_close()
        else:
            failure = self._raised_failure(exc)
            self._finish(outcome_of(failure, False), failure)

    def discard(self) -> None:
        """Not a stream we observe after all (e.g. a mock): undo the start, record nothing."""
        if self.ended:
            return
        self.ended = True
        self.rt.watchdog.unwatch(self)  # it may have been adopted: a watched stream keeps a thread
        self._give_back("ignored")
        self.rt.emitter.discard(self.stream, self.handles)

    # -- classification helpers --------------------------------------------------------------------

    def _timed_out(self, kind: str, cause: BaseException | None) -> BaseException:
        """``StreamTimeoutError`` from the settings of the stream's own runtime; ``cause``: what the
        SDK raised when the socket was shut (None: a close-delimited body just ended)."""
        settings = self.rt.settings
        timeout = settings.first_token_timeout if kind == "first_token_timeout" else settings.stall_timeout
        error = errors.StreamTimeoutError(kind=kind, timeout=timeout, request=self._request())
        error.__cause__ = cause
        return error

    def _closed_read(self) -> BaseException:
        """What a read pending when the consumer closed the stream raises: what the SDK's read
        raises when its stream's connection is closed under it (``APIConnectionError`` from an
        ``httpx2.ReadError``, tests/test_lifecycle.py)."""
        request = self._request()
        error = openai.APIConnectionError(request=request)
        error.__cause__ = httpx2.ReadError("the stream was closed", request=request)
        return error

    def _request(self) -> Any:
        try:
            return self.response.request
        except Exception:
            return errors.NO_REQUEST

    def _truncated(self, failure: Failure) -> BaseException:
        s = self.s
        try:
            text = s.joined(s.text)
        except Exception:
            text = ""
        return errors.StreamTruncatedError(
            reason=failure.reason or "eof_before_done",
            chunks_received=s.chunks,
            partial_text=text,
            request_id=self.request_id,
            request=self._request(),
        )
