"""The sans-IO stream controller: every decision about one logical stream request.

It takes events (an item arrived, the body ended, the SDK raised, the consumer closed, a reissue
opened or failed) and answers with decisions: deliver this item (or hold it, or skip it), end, raise
this exception, or open the stream again after a delay. The drivers (``streamsentinel._sdk.proxy``,
one sync, one async) do the I/O and nothing else: they call the SDK, sleep when told to, and hand
out ``out`` then ``final``. When the stream ends the controller builds one frozen ``StreamRecord``
and hands it to the sinks, once (``_finish``).

It is composed, not stacked: its rules come from a frozen ``StreamPlan`` (``plan.py``), its side
effects go through an ``Effects`` (``effects.py``, the runtime implements it), and it owns three
components: the call's HTTP ``Attempts`` (``attempts.py``), the ``HoldBack`` of items known to carry
no output (``holdback.py``) and, during a replay, the ``ReplaySkipper`` (``_resilience/resume.py``).

Rules it applies, all read from ``taxonomy`` and the ``RetryPolicy``: what is a failure and what
kind; whether an item may be held (only items known to carry no output, ``ApiAdapter.is_preamble``); when
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
from .._resilience.resume import Diverged, ReplaySkipper
from .._resilience.retry import Plan
from ..errors import StreamDivergedError
from ..instrumentation._data import (
    ChunkEvent,
    GapEvent,
    InStreamErrorEvent,
    ResumeEvent,
    RetryEvent,
)
from .attempts import Attempts
from .effects import Effects
from .endings import closed_read, request_of, timed_out, truncated
from .holdback import HoldBack
from .plan import StreamPlan
from .record import build_record
from .state import StreamState
from .taxonomy import (
    Failure,
    Outcome,
    abandon_outcome,
    breaker_result,
    classify_request_exception,
    classify_stream_exception,
    end_failure,
    given_up_failure,
    is_cancellation,
    outcome_of,
    watchdog_cut,
)

Reissue = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
"""``(function, args, kwargs)``: the SDK call that opens the same stream request again."""

SKIP: Any = object()
"""``on_item``'s answer for an item not delivered now (held, or a replay's already-seen part)."""

STOP: Any = StopIteration
"""``final`` for a stream that ends without an exception."""
__all__ = ["SKIP", "STOP", "Reissue", "StreamController"]

_ODD = (AttributeError, TypeError, KeyError, IndexError, ValueError)


class StreamController:
    """One logical stream request, from ``create()`` to its record. Not thread-safe: one consumer
    (``closing`` may come from another thread: it only sets ``closed`` and calls ``wake``)."""

    __slots__ = (
        "_broken",
        "_broken_exc",
        "_extras",
        "_pending",
        "_read",
        "_skipper",
        "attempt",
        "attempt_start",
        "breaker_name",
        "calls",
        "closed",
        "ended",
        "final",
        "fx",
        "generation",
        "hold",
        "holding",
        "out",
        "permit",
        "plan",
        "raw_mode",
        "reissue",
        "response",
        "retrieve",
        "s",
        "start",
        "stream",
        "wake",
    )

    def __init__(
        self,
        plan: StreamPlan,
        fx: Effects,
        stream: Any,
        start: float,
        handles: tuple[Any, ...],
        *,
        reissue: Reissue | None,
        retrieve: Callable[[str, int], Any] | None,
        keep_gaps: bool = False,
    ) -> None:
        self.plan = plan
        self.fx = fx
        self.stream = stream
        self.start = start
        self.calls = Attempts(fx, stream, start, handles)
        self.s = StreamState(keep_gaps=keep_gaps)
        self.calls.timeline = self.s.events
        # Per item beyond the reader: the gaps, a ChunkEvent (content, DEBUG). One flag, one test.
        self._extras = plan.chunk_extras or plan.debug or keep_gaps
        # (function, args, kwargs) opening the same request again (None: no retry); a tuple,
        # not a closure: every open stream keeps it.
        self.reissue = reissue
        self.retrieve = retrieve  # Responses: continues a background response from a sequence number
        self.attempt = 1
        # While a retry is possible, items known to carry no output are held: until the first
        # other item the consumer has seen nothing, so a retry cannot duplicate output.
        self.hold = HoldBack()
        self.holding: HoldBack | None = self.hold if plan.holds else None  # None: not holding
        self._read = plan.read  # the hot path: one attribute load
        self._skipper: ReplaySkipper | None = None
        self._broken: Failure | None = None  # the failure a resume repairs
        self._broken_exc: BaseException | None = None  # and what the SDK raised for it, if anything
        self._pending = "retry"  # what the planned reopening is
        # The consumer closed the stream (maybe from another thread or task): that wins over any
        # pending reopening. ``wake`` ends the driver's wait before one (None: not waiting).
        self.closed = False
        self.wake: Callable[[], None] | None = None
        self.permit: Any = None  # the Permit of breaker ``breaker_name`` while it guards the call
        self.breaker_name: str | None = None
        self.attempt_start = start
        self.generation = forksafe.generation  # a copy in a forked child is the parent's stream
        self.ended = False  # the stream was recorded (set once, by ``_finish`` or ``discard``)
        self.response: Any = None  # the current attempt's httpx2.Response
        self.raw_mode = False  # a raw response not parsed into a stream: its body's end ends it
        # Items the driver hands out before reading again (a few at most: a list, a fifth of a
        # deque's size for each open stream).
        self.out: list[Any] = []
        self.final: Any = None  # after ``out``: STOP or an exception instance to raise

    # -- the call's context (the SDK's create() runs inside it) -------------------------------------

    @property
    def request_id(self) -> str | None:
        return self.calls.request_id

    def enter(self) -> tuple[Any, Any]:
        """See ``Attempts.enter``: the hooks then report this call's HTTP attempts."""
        return self.calls.enter()

    def exit(self, tokens: tuple[Any, Any]) -> None:
        self.calls.exit(tokens)

    def leave(self) -> None:
        self.calls.leave()

    def _emit(self, event: Any) -> None:
        self.calls._emit(event)

    # -- the response of an attempt ---------------------------------------------------------------

    def adopt(self, response: Any, wire: Any, is_sse: bool) -> None:
        """A new attempt's stream: its HTTP response, the decoder hook's view of the wire (None:
        hook absent) and whether the body is declared SSE. Starts the watchdog's deadlines."""
        self.response = response
        self.attempt_start = perf_counter()
        self.s.is_sse = is_sse
        self.s.wire = wire
        calls = self.calls
        if calls.request_id is None:
            try:
                calls.request_id = response.headers.get("x-request-id")
            except Exception:
                pass
        if self.plan.watchdog:
            self.fx.watch(self)

    # -- per item (the hot path) -------------------------------------------------------------------

    def on_item(self, item: Any) -> Any:
        """An item from the SDK: returns it to deliver now, or ``SKIP`` (then hand out ``out``
        first: one channel). Items known to carry no output are held while a retry is possible;
        the first other item releases them into ``out``, itself queued behind them."""
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
                if gap >= self.plan.gap_alert:
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
            self.fx.count_error("chunk", exc)
        hold = self.holding
        if hold is not None:
            out = self.out
            if hold.hold(item, out, self.plan.api.is_preamble):
                return SKIP
            self.holding = None
            if out:  # held items were released: they go first, this item behind them
                out.append(item)
                return SKIP
        return item

    def _chunk_extras(self, item: Any, now: float, gap: float) -> None:
        s, plan = self.s, self.plan
        if s.gaps is not None and gap >= 0.0:
            s.gaps.append(gap)
        if not plan.debug and not plan.chunk_extras:
            plan.read(s, item, now)
            return
        texts, before = len(s.text), s.first_at
        plan.read(s, item, now)
        text = s.joined(s.text[texts:]) if plan.capture_content else None
        first = before is None and s.first_at is not None
        event = ChunkEvent(now - self.start, s.chunks, gap if gap >= 0.0 else None, text, first)
        if plan.chunk_extras:  # the text of each item, for the trace sink's chunk timeline
            s.events.append(event)
        if plan.debug:
            self.fx.emit(self.stream, event, self.calls.handles)

    def _replayed(self, item: Any) -> Any:
        """A replay's item: ``SKIP`` while it repeats what was delivered, else the item."""
        skipper = self._skipper
        assert skipper is not None
        try:
            skipper.feed(item)
        except Diverged as diverged:
            raise self._divergence(diverged) from None
        except Exception as exc:  # an item the skipper cannot compare: skipped, unchecked
            self.fx.count_error("resume", exc)
        if skipper.done:
            self._resumed("resumed")
            self._skipper = None
        return SKIP

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
            self.fx.count_error("classify", exc)
            cut = None
        if cut is not None:  # our socket shutdown ended a close-delimited body: not the server's end
            return self._after(cut, None, False)
        if self._skipper is not None:
            short = self._skipper.unfinished()
            if short is not None:
                self._end_with(self._divergence(short))
                return None
        try:
            complete = self._done_marker(self.s.complete(self.plan.api.terminal_event))
            failure = end_failure(complete, self.s.in_stream_failure(), self.s.silent_reason())
        except Exception as exc:
            self.fx.count_error("classify", exc)
            complete, failure = True, None
        return self._after(failure, None, complete)

    def _done_marker(self, complete: bool) -> bool:
        """Apply the server's ``[DONE]`` policy (``done_marker.py``) where the plan says it applies."""
        s, stream = self.s, self.stream
        wire = s.wire
        if wire is None or not self.plan.api.done_marker:
            return complete
        if wire.done:
            self.fx.saw_done(stream.server)
            return complete
        choices = int(dict(stream.params).get("n", 1))
        if s.in_stream_error is None and s.all_finished(choices):
            return self.fx.accepts_missing_done(stream.server)
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
            self.fx.count_error("classify", classify_exc)
            failure = Failure("other", "other")
        return self._after(failure, exc, False)

    def _closed_under_read(self, exc: BaseException | None) -> None:
        """The consumer closed (or cancelled) the stream while a read was pending: recorded as
        its close, and the read ends as the SDK's did (``exc``, None: the iterator's end). Held
        items are handed out first after a close (the plain SDK had delivered them before the
        read), dropped for a cancellation (it propagates at once)."""
        if exc is not None and is_cancellation(exc):
            self.hold.clear()
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
        elif not complete and self.plan.on_truncation == "raise":
            self._end_with(truncated(self.s, failure, self.calls.request_id, request_of(self.response)))
        else:
            self._end_with(None)

    def _timed_out(self, kind: str, cause: BaseException | None) -> BaseException:
        plan = self.plan
        timeout = plan.first_token_timeout if kind == "first_token_timeout" else plan.stall_timeout
        return timed_out(kind, timeout, request_of(self.response), cause)

    def _end_with(self, final: BaseException | None) -> None:
        """Hand out what was held (what the consumer would have had before the end), then ``final``."""
        self.hold.flush(self.out)
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
            self.calls.rate_limited(failure.rate_limit_kind, None)

    # -- opening the stream again ------------------------------------------------------------------

    def _plan(self, failure: Failure) -> float | None:
        """A delay when the policy and the budget allow opening the stream again."""
        if self.reissue is None or self.ended or self.closed or self.s.odd_items:
            return None  # late observation, or items of a type a reissue would not give back
        policy = self.plan.policy
        try:
            delivered = self.holding is None
            s = self.s
            resumable = policy.resume == "replay" or (
                self.retrieve is not None and s.response_id is not None and s.last_seq is not None
            )
            plan: Plan | None = policy.decide(
                failure,
                attempt=self.attempt,
                elapsed=perf_counter() - self.start,
                delivered=delivered,
                resumable=resumable,
            )
            if plan is None:
                return None
            if not self.fx.spend_retry(self.stream, plan.kind, failure.error_type):
                return None
            at = perf_counter() - self.start
            if plan.kind == "retry":
                self.calls.sentinel_retries += 1
                self._emit(RetryEvent(at, "sentinel", failure.error_type, self.attempt + 1, plan.delay))
            else:
                self._broken = failure
                strategy: Any = policy.resume  # "off" never plans a resume
                self._emit(ResumeEvent(at, strategy, "started", failure.error_type, self.attempt + 1))
            self._pending = plan.kind
            return plan.delay
        except Exception as exc:
            self.fx.count_error("retry", exc)
            return None

    def next_call(self) -> Callable[[], Any] | None:
        """What the driver calls (and awaits, for an async client) to open the next stream, after
        the delay ``on_eof``/``on_error`` returned. Its result goes to :meth:`reopened`, its
        exception to :meth:`reopen_failed`. None: the consumer closed the stream meanwhile (then
        hand out ``out`` and ``final``)."""
        if self.closed:
            self._closed_while_reopening()
            return None
        fx = self.fx
        if self.response is not None:
            fx.close_response(self.response)  # the failed attempt's connection: nothing more is read
        fx.unwatch(self)
        self.attempt += 1
        self._skipper = None
        policy = self.plan.policy
        if self._pending == "retry":
            self.s.new_attempt(keep_gaps=self.s.gaps is not None)  # asked once per stream
            self.hold.clear()
            self.holding = self.hold if self.plan.holds else None
            return self._reissue()
        self.s.new_connection()
        if policy.resume == "responses":
            retrieve, s = self.retrieve, self.s
            assert retrieve is not None and s.response_id is not None and s.last_seq is not None
            response_id, last_seq = s.response_id, s.last_seq
            return lambda: retrieve(response_id, last_seq)
        # Every item counted so far reached the consumer (a replay's skipped ones are not counted).
        s = self.s
        if s.chunks:
            delivered = (s.joined(s.text), s.joined(s.tool_args or []))
            self._skipper = ReplaySkipper(self.plan.api.output_piece, delivered, s.chunks)
        return self._reissue()

    def _reissue(self) -> Callable[[], Any]:
        reissue = self.reissue
        assert reissue is not None
        fn, args, kwargs = reissue
        return lambda: fn(*args, **kwargs)

    def reopened(self, stream: Any) -> bool:
        """The next stream opened: whether to read it. False when the consumer closed the stream
        while it opened (the driver closes it, then hands out ``final``)."""
        if self.closed:
            self._closed_while_reopening()
            return False
        if self._pending == "resume" and self._skipper is None:
            self._resumed("resumed")  # a continuation: nothing to skip
        return True

    def _closed_while_reopening(self) -> None:
        """The consumer's pending read fails as the SDK's does when its stream is closed under it,
        after the failed attempt's held items (the plain SDK had delivered them; ``on_close``
        recorded the stream)."""
        self._end_with(closed_read(request_of(self.response)))

    def wait_interrupted(self, exc: BaseException) -> None:
        """The wait before reopening raised (a cancellation, or a signal handler's exception): the
        request ends with that exception at once (the failed attempt's held items dropped, as for
        a cancellation mid-read), recorded."""
        self.hold.clear()
        self.request_failed(exc)
        self._end_with(exc)

    def reopen_failed(self, exc: BaseException) -> None:
        """Opening the next stream raised. A retry's failure (or a cancellation) ends the request
        with it; a resume's leaves the original failure to end the stream."""
        if self.closed and not is_cancellation(exc):
            self._closed_while_reopening()
            return
        if self._pending == "retry" or is_cancellation(exc):
            self.request_failed(exc)
            self._end_with(exc)
            return
        self._resumed("failed")
        broken = self._broken or Failure("other", "other")
        self._finish(outcome_of(broken, self.s.payload_chunks > 0), broken)
        self._end_failed(broken, self._broken_exc, False)

    def _resumed(self, result: str) -> None:
        strategy = self.plan.policy.resume
        self._emit(ResumeEvent(perf_counter() - self.start, strategy, result))  # type: ignore[arg-type]

    def _divergence(self, diverged: Diverged) -> StreamDivergedError:
        self._skipper = None
        self._resumed("diverged")
        self._finish("truncated", self._broken or Failure("other", "other"))
        return StreamDivergedError(
            delivered=diverged.delivered, received=diverged.received, request=request_of(self.response)
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
        if failure.rate_limit_kind is not None and not self.calls.saw_429:
            self.calls.rate_limited(failure.rate_limit_kind, 429)  # the attempt hook did not see it
        self._finish("failed", failure)

    def rejected(self, rejection: Any) -> None:
        """The call was refused before it was sent (breaker open, fleet pause): recorded as such."""
        self.s.events.append(rejection)
        self._finish("rejected", None)

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
                self.fx.count_error("close", exc)

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
            failure = given_up_failure(s.in_stream_failure(), pending, self.plan.stall_threshold)
            if failure is not None:
                if failure.reason == "stall":
                    s.events.append(GapEvent(perf_counter() - self.start, perf_counter() - s.read_at))
                self._finish(outcome_of(failure, s.payload_chunks > 0), failure)
                return
            outcome = abandon_outcome(s.complete(self.plan.api.terminal_event, closed_early=True), None)
        except Exception as exc:
            self.fx.count_error("classify", exc)
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
        self.fx.unwatch(self)  # it may have been adopted: a watched stream keeps a thread
        self._give_back("ignored")
        self.fx.discard(self.stream, self.calls.handles)

    # -- the one ending --------------------------------------------------------------------------

    def _give_back(self, result: Any, duration: float = 0.0) -> None:
        permit, name = self.permit, self.breaker_name
        if permit is None or name is None:
            return
        self.permit = None
        s = self.s
        ttft = None if s.first_at is None else s.first_at - self.start
        try:
            self.fx.release(name, permit, result, duration, ttft)
        except Exception as exc:
            self.fx.count_error("breaker", exc)

    def _finish(self, outcome: Outcome, failure: Failure | None) -> None:
        """Classified once: give the permit back, build the record, hand it to every sink."""
        if self.ended:
            return
        self.ended = True
        end = perf_counter()
        fx = self.fx
        try:
            if self.plan.watchdog:
                fx.unwatch(self)
        except Exception as exc:
            fx.count_error("watchdog", exc)
        self._give_back(breaker_result(outcome, failure), end - self.start)
        record = build_record(self, outcome, failure, end, self.plan.capture_content, fx.count_error)
        fx.end(record, self.calls.handles)
