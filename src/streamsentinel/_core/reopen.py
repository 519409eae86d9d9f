"""Opening a stream again: streamsentinel's retries (nothing delivered yet) and resumes (after
output started), as the ``RetryPolicy`` and the retry budget decide. The base of the stream
controller: it plans the reopening, says what to call, and how the new stream continues (a replay
skips what the consumer already has; a divergence ends the stream).
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from .. import errors
from .._resilience.resume import Diverged, ReplaySkipper
from .._resilience.retry import Plan
from ..instrumentation._data import ResumeEvent, RetryEvent
from .attempts import Attempts
from .state import StreamState
from .taxonomy import Failure, Outcome, is_cancellation, outcome_of

Reissue = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
"""``(function, args, kwargs)``: the SDK call that opens the same stream request again."""

SKIP: Any = object()
"""``on_item``'s answer for an item not delivered now (held, or a replay's already-seen part)."""


class Reopening(Attempts):
    """Retry and resume state of a stream (see the module docstring)."""

    __slots__ = (
        "_broken",
        "_broken_exc",
        "_pending",
        "_skipper",
        "attempt",
        "closed",
        "held",
        "holding",
        "reissue",
        "retrieve",
        "wake",
    )

    # Kept by the controller (StreamController), used here.
    s: StreamState
    response: Any
    out: Any
    ended: bool

    def __init__(
        self,
        rt: Any,
        stream: Any,
        start: float,
        handles: tuple[Any, ...],
        reissue: Reissue | None,
        retrieve: Callable[[str, int], Any] | None,
    ) -> None:
        super().__init__(rt, stream, start, handles)
        # (function, args, kwargs) opening the same request again (None: no retry); a tuple,
        # not a closure: every open stream keeps it.
        self.reissue = reissue
        self.retrieve = retrieve  # Responses: continues a background response from a sequence number
        self.attempt = 1
        # While a retry is possible, items known to carry no output are held: until the first
        # other item the consumer has seen nothing, so a retry cannot duplicate output.
        self.holding = rt.policy.attempts > 1
        self.held: list[Any] = []
        self._skipper: ReplaySkipper | None = None
        self._broken: Failure | None = None  # the failure a resume repairs
        self._broken_exc: BaseException | None = None  # and what the SDK raised for it, if anything
        self._pending = "retry"  # what the planned reopening is
        # The consumer closed the stream (maybe from another thread or task): that wins over any
        # pending reopening. ``wake`` ends the driver's wait before one (None: not waiting).
        self.closed = False
        self.wake: Callable[[], None] | None = None

    def _hold(self, item: Any, preamble: Callable[[Any], bool]) -> bool:
        """Whether ``item`` is held (while holding). The first item that is not known to carry no
        output ends the hold: what was held is released into ``out`` ahead of it."""
        try:
            hold = preamble(item)
        except Exception:
            hold = False
        if hold:
            self.held.append(item)
            return True
        self.holding = False
        if self.held:
            self.out.extend(self.held)
            self.held.clear()
        return False

    def _finish(self, outcome: Outcome, failure: Failure | None) -> None:
        raise NotImplementedError

    def _end_failed(self, failure: Failure, exc: BaseException | None, complete: bool) -> None:
        raise NotImplementedError

    def _end_with(self, final: BaseException | None) -> None:
        raise NotImplementedError

    def _request(self) -> Any:
        raise NotImplementedError

    def request_failed(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _closed_read(self) -> BaseException:
        raise NotImplementedError

    def _replayed(self, item: Any) -> Any:
        """A replay's item: ``SKIP`` while it repeats what was delivered, else the item."""
        skipper = self._skipper
        assert skipper is not None
        try:
            skipper.feed(item)
        except Diverged as diverged:
            raise self._divergence(diverged) from None
        except Exception as exc:  # an item the skipper cannot compare: skipped, unchecked
            self.rt.errors("resume", exc)
        if skipper.done:
            self._resumed("resumed")
            self._skipper = None
        return SKIP

    def _plan(self, failure: Failure) -> float | None:
        """A delay when the policy and the budget allow opening the stream again."""
        rt = self.rt
        if self.reissue is None or self.ended or self.closed or self.s.odd_items:
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

    def next_call(self) -> Callable[[], Any] | None:
        """What the driver calls (and awaits, for an async client) to open the next stream, after
        the delay ``on_eof``/``on_error`` returned. Its result goes to :meth:`reopened`, its
        exception to :meth:`reopen_failed`. None: the consumer closed the stream meanwhile (then
        hand out ``out`` and ``final``)."""
        if self.closed:
            self._closed_while_reopening()
            return None
        rt = self.rt
        if self.response is not None:
            try:
                self.response.close()  # the failed attempt's connection: nothing more is read
            except Exception:
                pass
        rt.watchdog.unwatch(self)
        self.attempt += 1
        self._skipper = None
        if self._pending == "retry":
            self.s.new_attempt(keep_gaps=self.s.gaps is not None)  # asked once per stream
            self.holding = rt.policy.attempts > 1
            self.held.clear()
            return self._reissue()
        self.s.new_connection()
        if rt.policy.resume == "responses":
            retrieve, s = self.retrieve, self.s
            assert retrieve is not None and s.response_id is not None and s.last_seq is not None
            response_id, last_seq = s.response_id, s.last_seq
            return lambda: retrieve(response_id, last_seq)
        # Every item counted so far reached the consumer (a replay's skipped ones are not counted).
        s = self.s
        if s.chunks:
            delivered = (s.joined(s.text), s.joined(s.tool_args or []))
            self._skipper = ReplaySkipper(self.stream.operation, delivered, s.chunks)
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
        self._end_with(self._closed_read())

    def wait_interrupted(self, exc: BaseException) -> None:
        """The wait before reopening raised (a cancellation, or a signal handler's exception): the
        request ends with that exception at once (the failed attempt's held items dropped, as for
        a cancellation mid-read), recorded."""
        self.held.clear()
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
        strategy = self.rt.policy.resume
        self._emit(ResumeEvent(perf_counter() - self.start, strategy, result))  # type: ignore[arg-type]

    def _divergence(self, diverged: Diverged) -> errors.StreamDivergedError:
        self._skipper = None
        self._resumed("diverged")
        self._finish("truncated", self._broken or Failure("other", "other"))
        return errors.StreamDivergedError(
            delivered=diverged.delivered, received=diverged.received, request=self._request()
        )
