"""The sans-IO stream controller: every decision about one logical stream request.

It takes events (an item arrived, the body ended, the SDK raised, the consumer closed, a reissue
opened or failed) and answers with decisions: deliver this item (or hold it, or skip it), end, raise
this exception, or open the stream again after a delay. The drivers (``streamsentinel._sdk.proxy``,
one sync, one async) do the I/O and nothing else: they call the SDK, sleep when told to, and hand
out ``out`` then ``final``. When the stream ends the controller builds one frozen ``StreamRecord``
and hands it to the sinks, once (``_finish``).

Rules it applies, all read from ``taxonomy`` and the ``RetryPolicy``: what is a failure and what
kind; whether an item may be held (only items known to carry no output, ``chunks.PREAMBLE``); when
to retry or resume; what the circuit breaker records. A ``BaseException`` that is not an
``Exception`` (cancellation, ``KeyboardInterrupt``) propagates at once, held items dropped: the
consumer sees it exactly when it would without streamsentinel.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

import openai

from .. import _forksafe as forksafe
from ..instrumentation._data import (
    ChunkEvent,
    GapEvent,
    InStreamErrorEvent,
)
from .endings import Endings
from .record import build_record
from .reopen import SKIP, Reissue
from .state import StreamState
from .taxonomy import (
    Failure,
    breaker_result,
    classify_stream_exception,
    end_failure,
    is_cancellation,
    outcome_of,
    watchdog_cut,
)

STOP: Any = StopIteration
"""``final`` for a stream that ends without an exception."""
__all__ = ["SKIP", "STOP", "StreamController"]

_ODD = (AttributeError, TypeError, KeyError, IndexError, ValueError)


class StreamController(Endings):
    """One logical stream request, from ``create()`` to its record. Not thread-safe: one consumer."""

    __slots__ = (
        "_debug",
        "_extras",
        "_preamble",
        "_read",
        "attempt_start",
        "breaker_name",
        "final",
        "generation",
        "out",
        "permit",
        "response",
        "s",
    )

    def __init__(
        self,
        rt: Any,
        stream: Any,
        start: float,
        handles: tuple[Any, ...],
        *,
        reissue: Reissue | None,
        retrieve: Callable[[str, int], Any] | None,
    ) -> None:
        super().__init__(rt, stream, start, handles, reissue, retrieve)
        self.s = StreamState(keep_gaps=rt.emitter.wants_chunk_gaps)
        self.timeline = self.s.events
        self._read = rt.readers[stream.operation]
        self._preamble = rt.preambles[stream.operation]
        self._debug = rt.debug()  # DEBUG logging on: asked once per stream, never per chunk
        # Per item beyond the reader: the gaps, a ChunkEvent (content, DEBUG). One flag, one test.
        self._extras = rt.chunk_extras or self._debug or self.s.gaps is not None
        self.permit: Any = None  # the Permit of breaker ``breaker_name`` while it guards the call
        self.breaker_name: str | None = None
        self.attempt_start = start
        self.generation = forksafe.generation  # a copy in a forked child is the parent's stream
        self.ended = False
        self.response: Any = None  # the current attempt's httpx2.Response
        self.raw_mode = False  # a raw response not parsed into a stream: its body's end ends it
        # Items the driver hands out before reading again (a few at most: a list, a fifth of a
        # deque's size for each open stream).
        self.out: list[Any] = []
        self.final: Any = None  # after ``out``: STOP or an exception instance to raise

    # -- the response of an attempt ---------------------------------------------------------------

    def adopt(self, response: Any, wire: Any, is_sse: bool) -> None:
        """A new attempt's stream: its HTTP response, the decoder hook's view of the wire (None:
        hook absent) and whether the body is declared SSE. Starts the watchdog's deadlines."""
        self.response = response
        self.attempt_start = perf_counter()
        self.s.is_sse = is_sse
        self.s.wire = wire
        if self.request_id is None:
            try:
                self.request_id = response.headers.get("x-request-id")
            except Exception:
                pass
        rt = self.rt
        if rt.watchdog.enabled:
            rt.watchdog.watch(self)

    # -- per item (the hot path) -------------------------------------------------------------------

    def on_item(self, item: Any) -> Any:
        """An item from the SDK: returns it to deliver, or ``SKIP``. Items known to carry no output
        are held while a retry is possible; the first other item releases them into ``out``."""
        if self._skipper is not None:
            item = self._replayed(item)
            if item is SKIP:
                return SKIP
        now = perf_counter()
        s = self.s
        try:
            gap = now - s.last_at
            s.last_at = now
            s.chunks += 1
            if gap > s.max_gap:
                s.max_gap = gap
                if gap >= self.rt.gap_alert:
                    s.events.append(GapEvent(now - self.start, gap))
            elif gap < 0.0:  # the first item (last_at starts at +inf)
                s.first_item_at = now
            if self._extras:
                self._chunk_extras(item, now, gap)
            else:
                self._read(s, item, now)
        except _ODD:
            s.odd_items += 1  # a shape we cannot read: the server's business, delivered as is
        except Exception as exc:
            self.rt.errors("chunk", exc)
        if self.holding and self._hold(item, self._preamble):
            return SKIP
        return item

    def _chunk_extras(self, item: Any, now: float, gap: float) -> None:
        s = self.s
        if s.gaps is not None and gap >= 0.0:
            s.gaps.append(gap)
        if not self._debug and not self.rt.chunk_extras:
            self._read(s, item, now)
            return
        texts, before = len(s.text), s.first_at
        self._read(s, item, now)
        rt = self.rt
        text = s.joined(s.text[texts:]) if rt.settings.capture_content else None
        first = before is None and s.first_at is not None
        event = ChunkEvent(now - self.start, s.chunks, gap if gap >= 0.0 else None, text, first)
        if rt.chunk_extras:  # the text of each item, for the trace sink's chunk timeline
            s.events.append(event)
        if self._debug:
            rt.emitter.event(self.stream, event, self.handles)

    # -- the end of a read: decide -----------------------------------------------------------------

    def on_eof(self) -> float | None:
        """The SDK's iterator ended without error. Returns a delay to open the stream again after,
        or None (then hand out ``out``, then ``final``)."""
        if self.closed:  # the consumer's close ended it
            self._closed_under_read(None)
            return None
        s = self.s
        try:
            wire = s.wire
            cut = watchdog_cut(s.timeout_kind, None, done_seen=wire is not None and wire.done)
        except Exception as exc:
            self.rt.errors("classify", exc)
            cut = None
        if cut is not None:  # our socket shutdown ended a close-delimited body: not the server's end
            return self._after(cut, None, False)
        if self._skipper is not None:
            short = self._skipper.unfinished()
            if short is not None:
                self._end_with(self._divergence(short))
                return None
        try:
            complete = self._done_marker(self.s.complete(self.stream.operation))
            failure = end_failure(complete, self.s.in_stream_failure(), self.s.silent_reason())
        except Exception as exc:
            self.rt.errors("classify", exc)
            complete, failure = True, None
        return self._after(failure, None, complete)

    def _done_marker(self, complete: bool) -> bool:
        """Apply the server's ``[DONE]`` policy (``done_marker.py``) to a chat/completions stream."""
        s, stream = self.s, self.stream
        wire = s.wire
        if wire is None or stream.operation == "responses":
            return complete
        if wire.done:
            self.rt.done_markers.saw_done(stream.server)
            return complete
        choices = int(dict(stream.params).get("n", 1))
        if s.in_stream_error is None and s.all_finished(choices):
            accepted: bool = self.rt.done_markers.accepts_missing(stream.server)
            return accepted
        return complete

    def on_error(self, exc: BaseException) -> float | None:
        """The SDK raised while the consumer iterated: a cancellation propagates at once; a failure
        may be retried or resumed, else it propagates unchanged. After the consumer's close (from
        another thread or task: the close broke the read), the stream ends with it as closed."""
        if self.closed or is_cancellation(exc):
            self._closed_under_read(exc)
            return None
        try:
            failure = self._raised_failure(exc)
        except Exception as classify_exc:
            self.rt.errors("classify", classify_exc)
            failure = Failure("other", "other")
        return self._after(failure, exc, False)

    def _closed_under_read(self, exc: BaseException | None) -> None:
        """The consumer closed (or cancelled) the stream while a read was pending: recorded as
        its close, and the read ends as the SDK's did (``exc``, None: the iterator's end). Held
        items are handed out first after a close (the plain SDK had delivered them before the
        read), dropped for a cancellation (it propagates at once)."""
        if exc is not None and is_cancellation(exc):
            self.held.clear()
        self.on_close()
        self._end_with(exc)

    def _raised_failure(self, exc: BaseException) -> Failure:
        failure = watchdog_cut(self.s.timeout_kind, exc) or classify_stream_exception(exc)
        assert failure is not None  # cancellations were handled
        if failure.reason == "in_stream_error" and isinstance(exc, openai.APIError):
            code = exc.code if isinstance(exc.code, str) else None
            self.s.in_stream_error = (code, "")
        return failure

    def _after(self, failure: Failure | None, exc: BaseException | None, complete: bool) -> float | None:
        if failure is None:
            self._finish("completed", None)
            self._end_with(None)
            return None
        self._note(failure)
        delay = self._plan(failure)
        if delay is not None:
            self._broken_exc = exc
            return delay
        self._finish(outcome_of(failure, self.s.payload_chunks > 0), failure)
        self._end_failed(failure, exc, complete)
        return None

    def _end_failed(self, failure: Failure, exc: BaseException | None, complete: bool) -> None:
        # Decided from the failure (``watchdog_cut`` made it), not from the connection's state: a
        # resume that failed to open has already forgotten the broken connection's.
        if failure.deadline:
            self._end_with(self._timed_out(failure.error_type, exc))  # our watchdog cut it: say so
        elif exc is not None:
            self._end_with(exc)  # what the SDK raised, unchanged
        elif not complete and self.rt.settings.on_truncation == "raise":
            self._end_with(self._truncated(failure))
        else:
            self._end_with(None)

    def _end_with(self, final: BaseException | None) -> None:
        """Hand out what was held (what the consumer would have had before the end), then ``final``."""
        if self.held:
            self.out.extend(self.held)
            self.held.clear()
        self.final = STOP if final is None else final

    def _note(self, failure: Failure) -> None:
        """Events of a failure as it happens: an in-stream error and its rate-limit kind (counted here
        only; HTTP 429s are counted per attempt)."""
        if failure.reason != "in_stream_error":
            return
        at = perf_counter() - self.start
        code = self.s.in_stream_error[0] if self.s.in_stream_error else None
        self.s.events.append(InStreamErrorEvent(at, failure.error_type, code))
        if failure.rate_limit_kind is not None:
            self.rate_limited(failure.rate_limit_kind, None)

    # -- the one ending --------------------------------------------------------------------------

    def _give_back(self, result: Any, duration: float = 0.0) -> None:
        permit, name = self.permit, self.breaker_name
        if permit is None or name is None:
            return
        self.permit = None
        s = self.s
        ttft = None if s.first_at is None else s.first_at - self.start
        try:
            self.rt.circuits.store.release(name, permit, result, duration=duration, ttft=ttft)
        except Exception as exc:
            self.rt.errors("breaker", exc)

    def _finish(self, outcome: Any, failure: Failure | None) -> None:
        """Classified once: give the permit back, build the record, hand it to every sink."""
        if self.ended:
            return
        self.ended = True
        end = perf_counter()
        rt = self.rt
        try:
            if rt.watchdog.enabled:
                rt.watchdog.unwatch(self)
        except Exception as exc:
            rt.errors("watchdog", exc)
        self._give_back(breaker_result(outcome, failure), end - self.start)
        record = build_record(self, outcome, failure, end, rt.settings.capture_content, rt.errors)
        rt.emitter.end(record, self.handles)
