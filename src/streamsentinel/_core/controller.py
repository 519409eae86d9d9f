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

from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

import openai

from .. import errors
from .._resilience.resume import Diverged, ReplaySkipper
from .._resilience.retry import Plan
from ..instrumentation._data import (
    ChunkEvent,
    GapEvent,
    InStreamErrorEvent,
    ResumeEvent,
    RetryEvent,
)
from .attempts import Attempts
from .record import build_record
from .state import StreamState
from .taxonomy import (
    Failure,
    abandon_outcome,
    breaker_result,
    classify_in_stream_event,
    classify_request_exception,
    classify_stream_exception,
    end_failure,
    is_cancellation,
    is_complete,
    outcome_of,
    silent_reason,
    watchdog_failure,
)

SKIP: Any = object()
"""``on_item``'s answer for an item not delivered now (held, or a replay's already-seen part)."""
STOP: Any = StopIteration
"""``final`` for a stream that ends without an exception."""
_ODD = (AttributeError, TypeError, KeyError, IndexError, ValueError)
_CHUNK_EVENTS_KEPT = 128  # the OTel SDK keeps 128 events per span by default: no more are made


class StreamController(Attempts):
    """One logical stream request, from ``create()`` to its record. Not thread-safe: one consumer."""

    __slots__ = (
        "_broken",
        "_broken_exc",
        "_debug",
        "_extras",
        "_is_sse",
        "_pending",
        "_preamble",
        "_read",
        "_skipper",
        "attempt",
        "attempt_start",
        "breaker_name",
        "ended",
        "final",
        "held",
        "holding",
        "out",
        "permit",
        "raw_mode",
        "reissue",
        "response",
        "retrieve",
        "s",
    )

    def __init__(
        self,
        rt: Any,
        stream: Any,
        start: float,
        handles: tuple[Any, ...],
        *,
        reissue: Callable[[], Any] | None,
        retrieve: Callable[[str, int], Any] | None,
    ) -> None:
        super().__init__(rt, stream, start, handles)
        self.s = StreamState(keep_gaps=rt.emitter.wants_chunk_gaps)
        self.timeline = self.s.events
        self._read = rt.readers[stream.operation]
        self._preamble = rt.preambles[stream.operation]
        self._debug = rt.debug()  # DEBUG logging on: asked once per stream, never per chunk
        self._extras = rt.chunk_extras or self._debug
        self.reissue = reissue  # opens the same request again (None: late observation, no retry)
        self.retrieve = retrieve  # Responses: continues a background response from a sequence number
        self.permit: Any = None  # (breaker name, Permit) while a breaker guards the call
        self.breaker_name: str | None = None
        self.attempt = 1
        self.attempt_start = start
        self.ended = False
        self.response: Any = None  # the current attempt's httpx2.Response
        self.raw_mode = False  # a raw response not parsed into a stream: its body's end ends it
        self.holding = rt.policy.attempts > 1
        self.held: list[Any] = []
        self.out: deque[Any] = deque()  # items the driver hands out before reading again
        self.final: Any = None  # after ``out``: STOP or an exception instance to raise
        self._skipper: ReplaySkipper | None = None
        self._broken: Failure | None = None  # the failure a resume repairs
        self._broken_exc: BaseException | None = None  # and what the SDK raised for it, if anything
        self._pending = "retry"  # what the planned reopening is
        self._is_sse = True

    # -- the response of an attempt ---------------------------------------------------------------

    def adopt(self, response: Any, wire: Any, is_sse: bool) -> None:
        """A new attempt's stream: its HTTP response, the decoder hook's view of the wire (None:
        hook absent) and whether the body is declared SSE. Starts the watchdog's deadlines."""
        self.response = response
        self.attempt_start = perf_counter()
        self._is_sse = is_sse
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
            if s.gaps is not None and gap >= 0.0:
                s.gaps.append(gap)
            if self._extras:
                self._chunk_extras(item, now, gap)
            else:
                self._read(s, item, now)
        except _ODD:
            s.odd_items += 1  # a shape we cannot read: the server's business, delivered as is
        except Exception as exc:
            self.rt.errors("chunk", exc)
        if self.holding:
            try:
                hold = self._preamble(item)
            except Exception:
                hold = False
            if hold:
                self.held.append(item)
                return SKIP
            self.holding = False
            if self.held:
                self.out.extend(self.held)
                self.held.clear()
        return item

    def _chunk_extras(self, item: Any, now: float, gap: float) -> None:
        s = self.s
        texts, before = len(s.text), s.first_at
        self._read(s, item, now)
        rt = self.rt
        text = s.joined(s.text[texts:]) if rt.settings.capture_content else None
        first = before is None and s.first_at is not None
        event = ChunkEvent(now - self.start, s.chunks, gap if gap >= 0.0 else None, text, first)
        if rt.settings.chunk_events == "all" and len(s.events) < _CHUNK_EVENTS_KEPT:
            s.events.append(event)
        if self._debug:
            rt.emitter.event(self.stream, event, self.handles)

    def _replayed(self, item: Any) -> Any:
        skipper = self._skipper
        assert skipper is not None
        try:
            kept = skipper.feed(item)
        except Diverged as diverged:
            raise self._divergence(diverged) from None
        except Exception as exc:  # an item the skipper cannot compare: stop skipping
            self.rt.errors("resume", exc)
            self._skipper = None
            return item
        if kept is None:
            return SKIP
        if skipper.done:
            self._resumed("resumed")
            self._skipper = None
        return kept

    # -- the end of a read: decide -----------------------------------------------------------------

    def on_eof(self) -> float | None:
        """The SDK's iterator ended without error. Returns a delay to open the stream again after,
        or None (then hand out ``out``, then ``final``)."""
        if self._skipper is not None:
            short = self._skipper.unfinished()
            if short is not None:
                self._end_with(self._divergence(short))
                return None
        try:
            complete = self._complete()
            failure = end_failure(complete, self._in_stream_failure(), self._silent_reason())
        except Exception as exc:
            self.rt.errors("classify", exc)
            complete, failure = True, None
        return self._after(failure, None, complete)

    def on_error(self, exc: BaseException) -> float | None:
        """The SDK raised while the consumer iterated: a cancellation propagates at once; a failure
        may be retried or resumed, else it propagates unchanged."""
        if is_cancellation(exc):
            self.held.clear()
            self.on_close()
            self._end_with(exc)
            return None
        try:
            failure = self._raised_failure(exc)
        except Exception as classify_exc:
            self.rt.errors("classify", classify_exc)
            failure = Failure("other", "other")
        return self._after(failure, exc, False)

    def _raised_failure(self, exc: BaseException) -> Failure:
        kind = self.s.timeout_kind
        if kind is not None and isinstance(exc, openai.APIConnectionError):
            return watchdog_failure(kind)  # type: ignore[arg-type]
        failure = classify_stream_exception(exc)
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
        if exc is not None:
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

    def _plan(self, failure: Failure) -> float | None:
        """A delay when the policy and the budget allow opening the stream again."""
        rt = self.rt
        if self.reissue is None or self.ended or self.s.odd_items:
            return None  # late observation, or items of a type a reissue would not give back
        try:
            delivered = not self.holding
            s = self.s
            resumable = rt.policy.resume == "replay" or (
                self.retrieve is not None and s.response_id is not None and s.last_seq is not None
            )
            plan: Plan | None = rt.policy.decide(
                failure,
                attempt=self.attempt,
                elapsed=perf_counter() - self.start,
                delivered=delivered,
                resumable=resumable,
            )
            if plan is None:
                return None
            if not rt.budget.try_spend():
                if plan.kind == "retry":
                    rt.log_retry_denied(self.stream, failure.error_type)
                return None
            at = perf_counter() - self.start
            if plan.kind == "retry":
                self.sentinel_retries += 1
                self._emit(RetryEvent(at, "sentinel", failure.error_type, self.attempt + 1, plan.delay))
            else:
                self._broken = failure
                strategy = rt.policy.resume
                self._emit(ResumeEvent(at, strategy, "started", failure.error_type, self.attempt + 1))
            self._pending = plan.kind
            return plan.delay
        except Exception as exc:
            rt.errors("retry", exc)
            return None

    # -- opening the stream again ------------------------------------------------------------------

    def next_call(self) -> Callable[[], Any]:
        """What the driver calls (and awaits, for an async client) to open the next stream, after
        the delay ``on_eof``/``on_error`` returned. Its result goes to :meth:`reopened`, its
        exception to :meth:`reopen_failed`."""
        rt = self.rt
        if self.response is not None:
            try:
                self.response.close()  # the failed attempt's connection: nothing more is read
            except Exception:
                pass
        rt.watchdog.unwatch(self)
        self.attempt += 1
        if self._pending == "retry":
            self.s.new_attempt(keep_gaps=rt.emitter.wants_chunk_gaps)
            self.holding = rt.policy.attempts > 1
            self.held.clear()
            reissue = self.reissue
            assert reissue is not None
            return reissue
        self.s.new_connection()
        if rt.policy.resume == "responses":
            retrieve, s = self.retrieve, self.s
            assert retrieve is not None and s.response_id is not None and s.last_seq is not None
            response_id, last_seq = s.response_id, s.last_seq
            return lambda: retrieve(response_id, last_seq)
        delivered = (self.s.joined(self.s.text), self.s.joined(self.s.tool_args))
        self._skipper = ReplaySkipper(self.stream.operation, delivered)
        reissue = self.reissue
        assert reissue is not None
        return reissue

    def reopened(self, stream: Any) -> None:
        """The next stream opened (the driver has adopted it through the SDK layer)."""
        if self._pending == "resume" and self._skipper is None:
            self._resumed("resumed")  # a continuation: nothing to skip

    def reopen_failed(self, exc: BaseException) -> None:
        """Opening the next stream raised. A retry's failure (or a cancellation) ends the request
        with it; a resume's leaves the original failure to end the stream."""
        if self._pending == "retry" or is_cancellation(exc):
            self.request_failed(exc)
            self._end_with(exc)
            return
        self._resumed("failed")
        broken = self._broken or Failure("other", "other")
        self._finish(outcome_of(broken, self.s.payload_chunks > 0), broken)
        self._end_failed(broken, self._broken_exc, False)

    def _resumed(self, result: str) -> None:
        strategy = self.rt.policy.resume
        self._emit(ResumeEvent(perf_counter() - self.start, strategy, result))  # type: ignore[arg-type]

    def _divergence(self, diverged: Diverged) -> errors.StreamDivergedError:
        self._skipper = None
        self._resumed("diverged")
        self._finish("truncated", self._broken or Failure("other", "other"))
        return errors.StreamDivergedError(
            delivered=diverged.delivered, received=diverged.received, request=self._request()
        )

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

    def on_close(self) -> None:
        """The consumer closed or dropped the stream: ``completed`` if the answer was already whole,
        else ``abandoned``."""
        if self.ended:
            return
        try:
            outcome = abandon_outcome(self._complete(closed_early=True), self._in_stream_failure())
        except Exception as exc:
            self.rt.errors("classify", exc)
            outcome = "abandoned"
        self._finish(outcome, None)

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
        self._give_back("ignored")
        self.rt.emitter.discard(self.stream, self.handles)

    # -- classification helpers --------------------------------------------------------------------

    def _complete(self, closed_early: bool = False) -> bool:
        s = self.s
        wire = s.wire
        return is_complete(
            self.stream.operation,
            wire.done if wire is not None else None,
            s.terminal is not None or (wire is not None and wire.terminal_seen),
            bool(s.finish_reasons),
            closed_early=closed_early,
        )

    def _in_stream_failure(self) -> Failure | None:
        error = self.s.in_stream_error
        return classify_in_stream_event(*error) if error is not None else None

    def _silent_reason(self) -> Any:
        s = self.s
        wire = s.wire
        saw_event = wire.saw_event if wire is not None else s.chunks > 0
        return silent_reason(saw_event, self._is_sse, wire is not None and wire.ended_inside_event)

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

    # -- the one ending --------------------------------------------------------------------------

    def _give_back(self, result: Any, duration: float = 0.0) -> None:
        if self.permit is None:
            return
        name, permit = self.permit
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
