"""The stream controller driven without I/O, as h11's ``tests/test_connection.py`` drives its
``Connection``: real SDK item objects (built as the SDK builds them, from the recorded streams in
../shared or from literal payloads), a fake wire, a recorder of the effects; no socket, no server,
no SDK client (a sentinel fails any socket construction). Each test names the decision the
loopback suites prove end to end (hold, release, retry, resume, truncate, timeout, cancel, close
during a pending reopen, reject, in-stream error, done-marker policy)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import httpx2
import openai
import pytest
from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent

from streamsentinel import StreamDivergedError, StreamTimeoutError, StreamTruncatedError
from streamsentinel._core.apis import ADAPTERS
from streamsentinel._core.controller import SKIP, STOP, StreamController
from streamsentinel._core.plan import StreamPlan
from streamsentinel._resilience.retry import RetryPolicy
from streamsentinel.instrumentation._data import (
    Event,
    Rejection,
    ResumeEvent,
    RetryEvent,
    StreamRecord,
    StreamStart,
)

from ..support import RECORDINGS_DIR


@pytest.fixture(autouse=True)
def no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs with sockets forbidden: the controller does no I/O."""

    class NoSocket(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("the controller opened a socket")

    monkeypatch.setattr(socket, "socket", NoSocket)


# -- the fakes --------------------------------------------------------------------------------------


@dataclass
class FakeWire:
    """What the SSE decoder hook would have seen (``state.Wire``)."""

    done: bool = False
    saw_event: bool = True
    ended_inside_event: bool = False
    terminal_seen: bool = False


@dataclass
class Effects:
    """Records every effect the controller asks for (``effects.Effects``)."""

    budget: bool = True  # the retry budget admits a retry
    accepts_missing: bool = False  # the server's [DONE] policy
    events: list[Event] = field(default_factory=list)
    records: list[StreamRecord] = field(default_factory=list)
    released: list[tuple[str, Any, Any]] = field(default_factory=list)
    watched: list[str] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    done_seen: list[str] = field(default_factory=list)
    closed: list[Any] = field(default_factory=list)
    limited: list[Any] = field(default_factory=list)

    def emit(self, stream: Any, event: Event, handles: tuple[Any, ...]) -> None:
        self.events.append(event)

    def end(self, record: StreamRecord, handles: tuple[Any, ...]) -> None:
        self.records.append(record)

    def discard(self, stream: Any, handles: tuple[Any, ...]) -> None:
        self.watched.append("discard")

    def activate(self, handles: tuple[Any, ...]) -> Any:
        return None

    def deactivate(self, active: Any) -> None:
        pass

    def count_error(self, where: str, exc: BaseException) -> None:
        self.errors.append((where, exc))

    def release(self, name: str, permit: Any, result: Any, duration: float, ttft: float | None) -> None:
        self.released.append((name, permit, result))

    def watch(self, ctl: Any) -> None:
        self.watched.append("watch")

    def unwatch(self, ctl: Any) -> None:
        self.watched.append("unwatch")

    def spend_retry(self, stream: Any, kind: str, reason: str) -> bool:
        return self.budget

    def rate_limit_headers(self, stream: Any, found: Any, at: float, handles: tuple[Any, ...]) -> None:
        pass

    def report_429(self, kind: Any, delay: float | None, stream: Any) -> None:
        self.limited.append(kind)

    def saw_done(self, server: str) -> None:
        self.done_seen.append(server)

    def accepts_missing_done(self, server: str) -> bool:
        return self.accepts_missing

    def close_response(self, response: Any) -> None:
        self.closed.append(response)

    @property
    def record(self) -> StreamRecord:
        assert len(self.records) == 1, self.records
        return self.records[0]


# -- items, as the SDK builds them ------------------------------------------------------------------


def _sse_payloads(path: Path) -> list[dict[str, Any]]:
    out = []
    for block in path.read_text().split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.splitlines() if line.startswith("data:"))
        if data and data != "[DONE]":
            out.append(json.loads(data))
    return out


def recorded(name: str) -> list[Any]:
    """The items the SDK yields for a recorded stream (``construct_type``: the SDK's own builder)."""
    path = RECORDINGS_DIR / f"opentelemetry-python-contrib__{name}__0.sse"
    kind: Any = ResponseStreamEvent if name.startswith("test_responses") else ChatCompletionChunk
    return [construct_type(type_=kind, value=p) for p in _sse_payloads(path)]


def chunk(content: str | None = None, *, role: str | None = None, finish: str | None = None) -> Any:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    payload = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return construct_type(type_=ChatCompletionChunk, value=payload)


ROLE = chunk(role="assistant", content="")


def stream_start(operation: Any = "chat") -> StreamStart:
    return StreamStart(operation, "openai", "m", "m", "upstream", "upstream", 8080, 0)


def make_plan(operation: Any = "chat", **policy: Any) -> StreamPlan:
    options: dict[str, Any] = {"attempts": 1, "base_delay": 0.0, "max_delay": 0.0}
    options.update(policy)
    return StreamPlan(
        api=ADAPTERS[operation],
        policy=RetryPolicy(**options),
        read=ADAPTERS[operation].read,
        gap_alert=1e9,
        stall_threshold=5.0,
        chunk_extras=False,
        debug=False,
        capture_content=True,
        on_truncation="raise",
        first_token_timeout=3.0,
        stall_timeout=4.0,
        watchdog=True,
    )


RESPONSE = httpx2.Response(
    200,
    headers={"content-type": "text/event-stream", "x-request-id": "req-1"},
    request=httpx2.Request("POST", "http://upstream:8080/v1/chat/completions"),
)


@dataclass
class Run:
    """A controller with its fake effects and wire, and what its consumer received."""

    ctl: StreamController
    fx: Effects
    wire: FakeWire
    seen: list[Any] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def feed(self, *items: Any) -> list[Any]:
        """Items from the SDK; returns what each answered (item or SKIP), queues the consumer's."""
        answers = []
        for item in items:
            answer = self.ctl.on_item(item)
            answers.append(answer)
            self.seen.extend(self.ctl.out)
            self.ctl.out.clear()
            if answer is not SKIP:
                self.seen.append(answer)
        return answers

    def ended(self) -> Any:
        """Hand out ``out``; return ``final`` (STOP or the exception the consumer gets)."""
        self.seen.extend(self.ctl.out)
        self.ctl.out.clear()
        return self.ctl.final

    def reopen(self, wire: FakeWire | None = None) -> None:
        """Open the next attempt as the driver would (the call recorded, no I/O)."""
        call = self.ctl.next_call()
        assert call is not None
        opened = call()
        assert self.ctl.reopened(opened)
        self.wire = wire or FakeWire()
        self.ctl.adopt(RESPONSE, self.wire, True)


def start(
    operation: Any = "chat",
    *,
    fx: Effects | None = None,
    retrieve: Callable[[str, int], Any] | None = None,
    **policy: Any,
) -> Run:
    fx = fx or Effects()
    calls: list[tuple[Any, ...]] = []

    def reissue(*args: Any, **kwargs: Any) -> str:
        calls.append(("reissue", args, kwargs))
        return "stream"

    ctl = StreamController(
        make_plan(operation, **policy),
        fx,
        stream_start(operation),
        perf_counter(),
        (),
        reissue=(reissue, (), {"model": "m"}),
        retrieve=retrieve,
    )
    wire = FakeWire()
    ctl.adopt(RESPONSE, wire, True)
    return Run(ctl, fx, wire, calls=calls)


# -- the sentinel itself ----------------------------------------------------------------------------


def test_sockets_are_forbidden_here() -> None:
    """The autouse sentinel is live: constructing a socket fails (so no test below used one)."""
    with pytest.raises(AssertionError, match="opened a socket"):
        socket.socket()


def test_a_recorded_chat_stream_completes_without_io() -> None:
    run = start()
    items = recorded("test_chat_completion_streaming")
    run.feed(*items)
    run.wire.done = True
    assert run.ctl.on_eof() is None
    assert run.ended() is STOP
    assert run.seen == items
    record = run.fx.record
    assert (record.outcome, record.chunks, record.done_seen, record.request_id) == (
        "completed",
        len(items),
        True,
        "req-1",
    )
    assert run.fx.done_seen == ["upstream"]
    assert run.fx.watched == ["watch", "unwatch"]


def test_a_recorded_responses_stream_completes_on_its_terminal_event() -> None:
    run = start("responses")
    items = recorded("test_responses_create_streaming_content_mode0_")
    run.feed(*items)
    run.wire.terminal_seen = True
    assert run.ctl.on_eof() is None
    assert run.ended() is STOP
    assert run.seen == items
    record = run.fx.record
    assert (record.outcome, record.done_seen, record.response_id) == ("completed", None, items[0].response.id)
    assert run.fx.done_seen == []  # the [DONE] policy is chat's and completions'


# -- hold and release -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "answers"),
    [(3, [SKIP, SKIP, "lo"]), (1, [ROLE, "Hel", "lo"])],
    ids=["held-while-a-retry-is-possible", "not-held-without-retries"],
)
def test_role_chunk_hold_and_release(attempts: int, answers: list[Any]) -> None:
    run = start(attempts=attempts)
    hel, lo = chunk("Hel"), chunk("lo")
    got = run.feed(ROLE, hel, lo)
    assert [a if a is SKIP or a is ROLE else a.choices[0].delta.content for a in got] == answers
    # Released ahead of the first content chunk, which is queued behind it in ``out`` (one channel).
    assert run.seen == [ROLE, hel, lo]


def test_held_items_are_handed_out_before_the_end() -> None:
    """A stream that ends while holding: the plain SDK had delivered the role chunk."""
    run = start(attempts=1)
    run.ctl.holding = run.ctl.hold  # holding, as with attempts > 1
    assert run.feed(ROLE) == [SKIP]
    run.ctl.on_eof()
    assert isinstance(run.ended(), StreamTruncatedError)
    assert run.seen == [ROLE]


# -- retry ------------------------------------------------------------------------------------------


def test_retry_before_output_takes_the_policys_delay_and_reissues() -> None:
    run = start(attempts=3, base_delay=2.0, max_delay=8.0)
    run.feed(ROLE)
    random.seed(17)
    expected = RetryPolicy(base_delay=2.0, max_delay=8.0).backoff(0, None, random.Random(17).random)
    delay = run.ctl.on_eof()  # no [DONE], nothing but the role chunk: a retry
    assert delay == expected
    assert run.seen == []  # the held role chunk is not delivered: the retry gives it again
    run.reopen()
    assert run.calls == [("reissue", (), {"model": "m"})]
    assert run.fx.closed == [RESPONSE]  # the failed attempt's connection
    run.feed(ROLE, chunk("Hi", finish="stop"))
    run.wire.done = True
    assert run.ctl.on_eof() is None and run.ended() is STOP
    assert [type(e) for e in run.ctl.s.events] == [RetryEvent]
    retry = run.ctl.s.events[0]
    assert (retry.layer, retry.reason, retry.attempt, retry.delay) == ("sentinel", "truncated", 2, expected)
    record = run.fx.record
    assert (record.outcome, record.sentinel_retries, record.chunks) == ("completed", 1, 2)


def test_retry_denied_by_the_budget_truncates() -> None:
    run = start(attempts=3, fx=Effects(budget=False))
    run.feed(ROLE)
    assert run.ctl.on_eof() is None
    final = run.ended()
    assert isinstance(final, StreamTruncatedError) and final.reason == "eof_before_done"
    assert run.seen == [ROLE]
    assert run.fx.record.sentinel_retries == 0


def test_reissue_failure_ends_the_request_with_it() -> None:
    run = start(attempts=3)
    assert run.ctl.on_error(openai.APIConnectionError(request=RESPONSE.request)) is not None
    assert run.ctl.next_call() is not None
    error = openai.APIConnectionError(request=RESPONSE.request)
    run.ctl.reopen_failed(error)
    assert run.ended() is error
    assert (run.fx.record.outcome, run.fx.record.error_type, run.fx.record.reason) == (
        "failed",
        "connection_error",
        None,
    )


# -- resume -----------------------------------------------------------------------------------------


def test_replay_resume_skips_what_was_delivered() -> None:
    run = start(attempts=3, resume="replay")
    run.feed(ROLE, chunk("Hel"))
    assert run.ctl.on_error(openai.APIConnectionError(request=RESPONSE.request)) is not None
    run.reopen()
    lo = chunk("lo", finish="stop")
    assert run.feed(chunk(role="assistant", content=""), chunk("Hel"), lo) == [SKIP, SKIP, lo]
    run.wire.done = True
    assert run.ctl.on_eof() is None and run.ended() is STOP
    resumes = [(e.result, e.strategy) for e in run.ctl.s.events if isinstance(e, ResumeEvent)]
    assert resumes == [("started", "replay"), ("resumed", "replay")]
    assert run.fx.record.outcome == "completed"
    assert run.fx.record.partial_text == "Hello"


def test_replay_divergence_raises_and_truncates() -> None:
    run = start(attempts=3, resume="replay")
    run.feed(ROLE, chunk("Hel"))
    run.ctl.on_error(openai.APIConnectionError(request=RESPONSE.request))
    run.reopen()
    run.ctl.on_item(chunk(role="assistant", content=""))
    with pytest.raises(StreamDivergedError) as raised:
        run.ctl.on_item(chunk("Hxx"))
    assert (raised.value.delivered, raised.value.received) == ("Hel", "Hxx")
    assert run.fx.record.outcome == "truncated"


def test_replay_shorter_than_delivered_diverges_at_eof() -> None:
    run = start(attempts=3, resume="replay")
    run.feed(ROLE, chunk("Hel"))
    run.ctl.on_error(openai.APIConnectionError(request=RESPONSE.request))
    run.reopen()
    run.ctl.on_item(chunk(role="assistant", content=""))
    assert run.ctl.on_eof() is None
    assert isinstance(run.ended(), StreamDivergedError)


def test_responses_resume_continues_from_the_sequence_number() -> None:
    asked: list[tuple[str, int]] = []

    def retrieve(response_id: str, after: int) -> str:
        asked.append((response_id, after))
        return "continuation"

    run = start("responses", retrieve=retrieve, attempts=3, resume="responses")
    items = recorded("test_responses_create_streaming_content_mode0_")
    run.feed(*items[:5])
    assert run.ctl.on_error(openai.APIConnectionError(request=RESPONSE.request)) is not None
    run.reopen()
    assert asked == [(items[0].response.id, items[4].sequence_number)]
    assert run.calls == []
    run.feed(*items[5:])
    run.wire.terminal_seen = True
    assert run.ctl.on_eof() is None and run.ended() is STOP
    assert run.seen == items
    resumes = [e.result for e in run.ctl.s.events if isinstance(e, ResumeEvent)]
    assert resumes == ["started", "resumed"]


def test_resume_whose_reopen_fails_ends_with_the_original_failure() -> None:
    run = start(attempts=3, resume="replay")
    run.feed(ROLE, chunk("Hel"))
    broken = openai.APIConnectionError(request=RESPONSE.request)
    run.ctl.on_error(broken)
    assert run.ctl.next_call() is not None
    run.ctl.reopen_failed(openai.APIConnectionError(request=RESPONSE.request))
    assert run.ended() is broken
    assert (run.fx.record.outcome, run.fx.record.reason) == ("truncated", "connection_lost")


# -- truncate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "is_sse", "reason"),
    [
        (FakeWire(), True, "eof_before_done"),
        (FakeWire(ended_inside_event=True), True, "partial_event"),
        (FakeWire(saw_event=False), False, "non_sse_body"),
    ],
    ids=["eof_before_done", "partial_event", "non_sse_body"],
)
def test_silent_truncation_reasons(wire: FakeWire, is_sse: bool, reason: str) -> None:
    run = start()
    run.ctl.adopt(RESPONSE, wire, is_sse)
    if wire.saw_event:
        run.feed(ROLE, chunk("Hel"))
    assert run.ctl.on_eof() is None
    final = run.ended()
    assert isinstance(final, StreamTruncatedError)
    assert (final.reason, final.chunks_received) == (reason, 2 if wire.saw_event else 0)
    assert run.fx.record.reason == reason


@pytest.mark.parametrize(
    ("exc", "outcome", "reason"),
    [
        (openai.APIConnectionError(request=RESPONSE.request), "truncated", "connection_lost"),
        (openai.APITimeoutError(request=RESPONSE.request), "truncated", "timeout"),
        (json.JSONDecodeError("bad", "x", 0), "truncated", "malformed_event"),
    ],
    ids=["connection_lost", "timeout", "malformed_event"],
)
def test_raised_failures_propagate_unchanged(exc: BaseException, outcome: str, reason: str) -> None:
    run = start()
    run.feed(ROLE, chunk("Hel"))
    assert run.ctl.on_error(exc) is None
    assert run.ended() is exc
    assert (run.fx.record.outcome, run.fx.record.reason) == (outcome, reason)


def test_on_truncation_end_ends_quietly() -> None:
    run = start()
    run.ctl.plan = StreamPlan(**{**_fields(run.ctl.plan), "on_truncation": "end"})
    run.feed(ROLE, chunk("Hel"))
    run.ctl.on_eof()
    assert run.ended() is STOP
    assert run.fx.record.outcome == "truncated"


def _fields(plan: StreamPlan) -> dict[str, Any]:
    return {name: getattr(plan, name) for name in StreamPlan.__slots__}


# -- timeout (the watchdog's kinds) -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["first_token_timeout", "stall"])
def test_watchdog_cut_raises_stream_timeout(kind: Any) -> None:
    run = start()
    run.ctl.s.timeout_kind = kind  # what the watchdog sets before it shuts the socket
    cause = openai.APIConnectionError(request=RESPONSE.request)
    assert run.ctl.on_error(cause) is None
    final = run.ended()
    assert isinstance(final, StreamTimeoutError)
    assert (final.kind, final.timeout, final.__cause__) == (kind, 3.0 if kind != "stall" else 4.0, cause)
    assert (run.fx.record.reason, run.fx.record.error_type) == (kind, kind)


def test_watchdog_cut_of_a_close_delimited_body_is_not_the_servers_end() -> None:
    run = start()
    run.feed(ROLE, chunk("Hel"))
    run.ctl.s.timeout_kind = "stall"
    assert run.ctl.on_eof() is None
    final = run.ended()
    assert isinstance(final, StreamTimeoutError) and final.__cause__ is None
    assert run.fx.record.reason == "stall"


def test_watchdog_cut_is_retried_before_output() -> None:
    run = start(attempts=2)
    run.ctl.s.timeout_kind = "first_token_timeout"
    assert run.ctl.on_error(openai.APIConnectionError(request=RESPONSE.request)) == 0.0
    run.reopen()
    assert run.ctl.s.timeout_kind is None  # a new connection
    assert run.fx.watched == ["watch", "unwatch", "watch"]


# -- cancel and close -------------------------------------------------------------------------------


def test_cancellation_propagates_at_once_dropping_held_items() -> None:
    run = start(attempts=3)
    run.feed(ROLE)
    cancelled = asyncio.CancelledError()
    assert run.ctl.on_error(cancelled) is None
    assert run.ended() is cancelled
    assert run.seen == []
    assert run.fx.record.outcome == "abandoned"


@pytest.mark.parametrize(
    ("items", "outcome"),
    [([ROLE, chunk("Hel")], "abandoned"), ([ROLE, chunk("Hi", finish="stop")], "completed")],
    ids=["mid-answer", "after-the-finish-chunk"],
)
def test_consumer_close(items: list[Any], outcome: str) -> None:
    run = start()
    run.feed(*items)
    run.ctl.on_close()
    assert run.fx.record.outcome == outcome
    assert run.ctl.on_eof() is None  # a late read after the close records nothing more
    assert len(run.fx.records) == 1


def test_close_during_a_pending_reopen_wins() -> None:
    run = start(attempts=3)
    run.feed(ROLE)
    assert run.ctl.on_eof() is not None  # a retry is planned: the driver waits
    woken: list[bool] = []
    run.ctl.wake = lambda: woken.append(True)
    run.ctl.closing()  # the consumer's close(), from another thread
    run.ctl.wake = None
    assert woken == [True]
    assert run.ctl.next_call() is None
    final = run.ended()
    assert isinstance(final, openai.APIConnectionError)
    assert isinstance(final.__cause__, httpx2.ReadError)
    assert run.seen == [ROLE]  # the failed attempt's held item, as the plain SDK had delivered it
    run.ctl.on_close()
    assert run.fx.record.outcome == "abandoned"
    assert run.calls == []


def test_close_while_the_reissue_opened() -> None:
    run = start(attempts=3)
    run.ctl.on_eof()
    call = run.ctl.next_call()
    assert call is not None
    call()
    run.ctl.closing()
    assert run.ctl.reopened("stream") is False
    assert isinstance(run.ended(), openai.APIConnectionError)


# -- reject, in-stream error, breaker permit --------------------------------------------------------


def test_rejected_call_is_recorded_once() -> None:
    run = start()
    run.ctl.rejected(Rejection("circuit_open"))
    assert run.fx.record.outcome == "rejected"
    assert run.fx.record.events == (Rejection("circuit_open"),)


def test_in_stream_error_is_noted_and_propagates() -> None:
    run = start()
    run.feed(ROLE, chunk("Hel"))
    error = openai.APIError("Rate limit reached", RESPONSE.request, body={"code": "rate_limit_exceeded"})
    assert run.ctl.on_error(error) is None
    assert run.ended() is error
    record = run.fx.record
    assert (record.outcome, record.reason, record.error_type) == (
        "truncated",
        "in_stream_error",
        "rate_limited",
    )
    assert [type(e).__name__ for e in record.events] == ["InStreamErrorEvent", "RateLimitEvent"]


@pytest.mark.parametrize(
    ("end", "result"),
    [("done", "success"), ("cut", "failure")],
)
def test_breaker_permit_is_given_back_with_the_result(end: str, result: str) -> None:
    run = start()
    run.ctl.breaker_name, run.ctl.permit = "b", "permit"
    run.feed(ROLE, chunk("Hi", finish="stop"))
    run.wire.done = end == "done"
    if end == "cut":
        run.ctl.on_error(openai.APIConnectionError(request=RESPONSE.request))
    else:
        run.ctl.on_eof()
    assert run.fx.released == [("b", "permit", result)]


# -- the done-marker policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accepts", "outcome"), [(True, "completed"), (False, "truncated")], ids=["accepted", "required"]
)
def test_missing_done_marker_after_every_finish_reason(accepts: bool, outcome: str) -> None:
    run = start(fx=Effects(accepts_missing=accepts))
    run.feed(ROLE, chunk("Hi", finish="stop"))
    run.ctl.on_eof()
    assert run.fx.record.outcome == outcome
    assert run.fx.record.done_seen is False


def test_controller_module_uses_no_network_client() -> None:
    """The controller's modules import no HTTP client and no SDK client class."""
    import streamsentinel._core.controller as controller

    names = set(vars(controller))
    assert not names & {"socket", "httpx", "OpenAI", "AsyncOpenAI", "Client", "AsyncClient"}
