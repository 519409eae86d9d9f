"""The watchdog (``first_token_timeout``, ``stall_timeout``) across the life of a runtime and across
body framings: real openai SDK, real loopback servers (``tests/defect_servers.ScriptedServer``,
the chaos server), sync and async.

Deadlines are short (0.3-0.5 s) and the client's read timeout is long (30 s): only the watchdog can
end a stall before the test's safety net. The assertions are about classification (what the
consumer gets, what the record says) and about the watchdog's threads, never about elapsed time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2
import openai
import pytest

import streamsentinel
from streamsentinel import StreamTimeoutError
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

from ..defect_servers import DONE, Gate, ScriptedServer, chat_chunk, responses_event, sse
from ..scripted import run_sync
from ..support import OBSERVE_ONLY, Telemetry, chat_kwargs, chat_text, reinstrument, responses_kwargs

MODES = ["sync", "async"]
STALL = 0.5  # stall_timeout of the streams under test, seconds
# Far beyond the watchdog's deadlines: an SDK timeout would be the test's failure, not its pass.
CLIENT_TIMEOUT = httpx2.Timeout(30.0, connect=2.0)
SAFETY = 60.0  # a consumer that never ends fails the test after this (a safety net, not a clock)
WATCHDOG_THREAD = "streamsentinel-watchdog"
REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")

ROLE = sse(chat_chunk({"role": "assistant", "content": ""}))
HELLO = sse(chat_chunk({"content": "Hello"}))
STOP = sse(chat_chunk({}, finish_reason="stop"))
_RESPONSE: dict[str, Any] = {
    "id": "resp_watchdog",
    "object": "response",
    "created_at": 1700000000,
    "model": "gpt-4o-mini",
    "output": [],
    "status": "in_progress",
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
}
CREATED = responses_event({"type": "response.created", "response": _RESPONSE, "sequence_number": 0})
DELTA = responses_event(
    {
        "type": "response.output_text.delta",
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": "Hello",
        "logprobs": [],
        "sequence_number": 1,
    }
)
COMPLETED = responses_event(
    {"type": "response.completed", "response": {**_RESPONSE, "status": "completed"}, "sequence_number": 2}
)
# What each API's server sends before its stall, and after it.
BEFORE = {"chat": [ROLE, HELLO], "responses": [CREATED, DELTA]}
AFTER = {"chat": [STOP, DONE], "responses": [COMPLETED]}


@pytest.fixture(autouse=True)
def _uninstrument_after() -> Iterator[None]:
    yield
    streamsentinel.uninstrument()


def _watchdog_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == WATCHDOG_THREAD and t.is_alive()}


@pytest.fixture
def new_watchdog_threads() -> Callable[[], set[threading.Thread]]:
    """The watchdog threads started during the test that are still alive once each has been given
    a generous while to end (a bounded wait on the thread's end, not a sleep)."""
    before = _watchdog_threads()

    def alive() -> set[threading.Thread]:
        for thread in _watchdog_threads() - before:
            thread.join(timeout=10)
        return _watchdog_threads() - before

    return alive


@dataclass
class Seen:
    items: list[Any] = field(default_factory=list)
    exc: BaseException | None = None

    def text(self, api: str) -> str:
        if api == "chat":
            return chat_text(self.items)
        return "".join(getattr(i, "delta", "") for i in self.items if i.type == "response.output_text.delta")


def _request(api: str) -> dict[str, Any]:
    return chat_kwargs() if api == "chat" else responses_kwargs()


def _consume_sync(base_url: str, api: str, after: int | None, action: Callable[[], None]) -> Seen:
    """Reads a stream to its end; calls ``action`` once ``after`` items were received."""
    seen = Seen()
    with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=CLIENT_TIMEOUT) as client:
        resource: Any = client.chat.completions if api == "chat" else client.responses
        try:
            for item in resource.create(**_request(api)):
                seen.items.append(item)
                if len(seen.items) == after:
                    action()
        except Exception as exc:
            seen.exc = exc
    return seen


async def _consume_async(base_url: str, api: str, after: int | None, action: Callable[[], None]) -> Seen:
    seen = Seen()
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="k", max_retries=0, timeout=CLIENT_TIMEOUT
    ) as client:
        resource: Any = client.chat.completions if api == "chat" else client.responses
        try:
            async for item in await resource.create(**_request(api)):
                seen.items.append(item)
                if len(seen.items) == after:
                    action()
        except Exception as exc:
            seen.exc = exc
    return seen


def _nothing() -> None:
    pass


async def consume(
    mode: str,
    base_url: str,
    api: str = "chat",
    *,
    after: int | None = None,
    action: Callable[[], None] = _nothing,
) -> Seen:
    """:func:`_consume_sync` (on a thread of its own: the test's loop stays free) or its async twin,
    bounded by the safety net."""
    if mode == "sync":
        work: Any = asyncio.to_thread(_consume_sync, base_url, api, after, action)
    else:
        work = _consume_async(base_url, api, after, action)
    return await asyncio.wait_for(work, SAFETY)


def assert_stalled(seen: Seen, telemetry: Telemetry, api: str = "chat") -> None:
    """The consumer got what the server sent, then streamsentinel's stall error; the record: a
    stall (not an SDK timeout, not a truncation)."""
    assert type(seen.exc) is StreamTimeoutError, repr(seen.exc)
    assert (seen.exc.kind, seen.exc.timeout) == ("stall", STALL)
    assert seen.text(api) == "Hello"
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"stall": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"stall": 1}
    span = telemetry.only_span()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "stall"
    assert span.attributes["streamsentinel.truncation.reason"] == "stall"


def _reconfigure(telemetry: Telemetry) -> Callable[[], None]:
    """``instrument()`` again with other options (a new runtime; same sinks' registry and spans)."""

    def again() -> None:
        streamsentinel.instrument(
            registry=telemetry.registry,
            tracer_provider=telemetry.provider,
            **{**OBSERVE_ONLY, "stall_timeout": 20.0, "chunk_events": "all"},
        )
        assert streamsentinel._runtime() is not telemetry.runtime

    return again


ACTIONS: dict[str, Callable[[Telemetry], Callable[[], None]]] = {
    "reconfigure": _reconfigure,
    "uninstrument": lambda telemetry: streamsentinel.uninstrument,
}


# -- 6. streams open across instrument()/uninstrument() keep their timeouts ---------------------------


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("mode", MODES)
async def test_open_stream_keeps_its_stall_timeout_across_reconfiguration(
    mode: str, action: str, new_watchdog_threads: Callable[[], set[threading.Thread]]
) -> None:
    """Issue 15, defect 6: a stream open across a reconfiguration or uninstrument() keeps its stall_timeout.

    It gets ``StreamTimeoutError`` (stall, its 0.5 s: not the new runtime's 20 s), recorded as a
    stall, instead of the SDK's ``APITimeoutError`` after the client's read timeout; and the old
    runtime's watchdog thread ends once the stream has ended.
    """
    telemetry = reinstrument(stall_timeout=STALL)
    gate = Gate()
    with ScriptedServer([ROLE, HELLO, gate, STOP, DONE]) as server:
        seen = await consume(mode, server.base_url, after=2, action=ACTIONS[action](telemetry))
    assert_stalled(seen, telemetry)
    assert new_watchdog_threads() == set()


# -- 7. a stall on a close-delimited body is a stall, not a truncation --------------------------------


@pytest.mark.parametrize("where", ["between_events", "inside_event"])
@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("mode", MODES)
async def test_stall_on_close_delimited_body_is_a_stall(mode: str, api: str, where: str) -> None:
    """Issue 15, defect 7: a stall on a close-delimited body is StreamTimeoutError/stall, not a truncation.

    The watchdog's socket shutdown reads as the end of such a body (no exception from the SDK):
    we ended it, so the reason is ours, not ``eof_before_done`` (between events) or
    ``partial_event`` (the server stalled inside one).
    """
    telemetry = reinstrument(stall_timeout=STALL)
    gate = Gate()
    started = [b'data: {"id": "cut'] if where == "inside_event" else []
    with ScriptedServer([*BEFORE[api], *started, gate, *AFTER[api]], framing="close") as server:
        seen = await consume(mode, server.base_url, api)
    assert_stalled(seen, telemetry, api)
    assert seen.exc is not None and seen.exc.__cause__ is None  # the SDK raised nothing


@pytest.mark.parametrize("mode", MODES)
async def test_first_token_timeout_on_close_delimited_body(mode: str) -> None:
    """Issue 15, defect 7: no first token on a close-delimited body is a first_token_timeout.

    The consumer gets ``StreamTimeoutError``, not ``StreamTruncatedError``.
    """
    telemetry = reinstrument(first_token_timeout=STALL)
    gate = Gate()
    with ScriptedServer([gate, ROLE, HELLO, STOP, DONE], framing="close") as server:
        seen = await consume(mode, server.base_url)
    assert type(seen.exc) is StreamTimeoutError, repr(seen.exc)
    assert (seen.exc.kind, seen.exc.timeout) == ("first_token_timeout", STALL)
    assert seen.items == []
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"failed": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"first_token_timeout": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"first_token_timeout": 1}


@pytest.mark.parametrize("mode", MODES)
async def test_close_delimited_body_read_to_its_end_is_completed(mode: str) -> None:
    """Issue 15, defect 7: a close-delimited body the server ends after [DONE] is completed.

    The control case: the same framing, no stall, nothing for the watchdog to do.
    """
    telemetry = reinstrument(stall_timeout=STALL)
    with ScriptedServer([ROLE, HELLO, STOP, DONE], framing="close") as server:
        seen = await consume(mode, server.base_url)
    assert seen.exc is None, repr(seen.exc)
    assert chat_text(seen.items) == "Hello"
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}


# -- 11. a stream adopted while its runtime closes: enforced, and no thread outlives it ---------------


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("mode", MODES)
async def test_stream_adopted_after_close_is_watched_and_leaves_no_thread(
    mode: str, action: str, new_watchdog_threads: Callable[[], set[threading.Thread]]
) -> None:
    """Issue 15, defect 11: a create() under way while its runtime closes leaves no watchdog thread.

    The server holds the response headers until the runtime the call began on has been closed (a
    reconfiguring instrument(), or uninstrument());
    the stream is then adopted by that runtime's watchdog: its stall is still enforced, and once it
    has ended no watchdog thread is left running (before: one polling thread per such race, for
    the life of the process).
    """
    telemetry = reinstrument(stall_timeout=STALL)
    head, gate = Gate(), Gate()
    with ScriptedServer([ROLE, HELLO, gate, STOP, DONE], head=head) as server:
        consumer = asyncio.ensure_future(consume(mode, server.base_url))
        await asyncio.to_thread(head.wait_reached)  # create() is under way on the runtime
        ACTIONS[action](telemetry)()
        head.release()
        seen = await consumer
    assert_stalled(seen, telemetry)
    assert new_watchdog_threads() == set()


@pytest.mark.parametrize("mode", MODES)
async def test_stream_adopted_after_uninstrument_completes_and_leaves_no_thread(
    mode: str, new_watchdog_threads: Callable[[], set[threading.Thread]]
) -> None:
    """Issue 15, defect 11: a stream adopted after uninstrument() that completes leaves no watchdog thread."""
    telemetry = reinstrument(stall_timeout=STALL)
    head = Gate()
    with ScriptedServer([ROLE, HELLO, STOP, DONE], head=head) as server:
        consumer = asyncio.ensure_future(consume(mode, server.base_url))
        await asyncio.to_thread(head.wait_reached)
        streamsentinel.uninstrument()
        head.release()
        seen = await consumer
    assert seen.exc is None, repr(seen.exc)
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert new_watchdog_threads() == set()


# -- the same rule when a resume after a stall fails to open ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_stall_whose_resume_fails_to_open_is_a_stall(mode: str) -> None:
    """Issue 15, defect 7: a stall whose resume could not open ends with StreamTimeoutError/stall.

    The end is decided from the failure, not from the broken connection's state (which the
    reopening had already reset): before, the consumer got the bare ``APIConnectionError``.
    """
    telemetry = reinstrument(
        stall_timeout=STALL,
        resume="replay",
        retry_attempts=3,
        retry_base_delay=0.0,
        retry_max_delay=0.0,
        retry_budget_min_retries=1000,
    )
    plan = FaultPlan(
        script=[
            FaultSpec(fault=Fault.STALL_MID_STREAM, after=4, stall_seconds=30.0),
            FaultSpec(fault=Fault.SERVER_ERROR),
        ]
    )
    with ChaosServer(plan, chunks=5) as server:
        seen = await consume(mode, server.base_url)
        assert server.arrivals == 2
    assert type(seen.exc) is StreamTimeoutError, repr(seen.exc)
    assert (seen.exc.kind, seen.exc.timeout) == ("stall", STALL)
    assert type(seen.exc.__cause__) is openai.APIConnectionError
    assert len(seen.items) == 4
    assert telemetry.by("openai_stream_resumes_total", "result") == {"failed": 1}
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"stall": 1}


@pytest.mark.parametrize("framing", ["chunked", "close"])
@pytest.mark.parametrize("mode", MODES)
async def test_responses_stall_after_its_terminal_event_is_a_stall_on_any_framing(
    mode: str, framing: Literal["chunked", "close"]
) -> None:
    """Issue 15, defect 7: a Responses stream hanging after response.completed stalls out on any framing.

    The SDK reads on after the terminal event (to the body's end): the read the watchdog cut is
    the consumer's, so the reason is the watchdog's, whether the cut raised or read as the end.
    """
    telemetry = reinstrument(stall_timeout=STALL)
    with ScriptedServer([CREATED, DELTA, COMPLETED, Gate()], framing=framing) as server:
        seen = await consume(mode, server.base_url, "responses")
    assert type(seen.exc) is StreamTimeoutError, repr(seen.exc)
    assert seen.exc.kind == "stall"
    assert [i.type for i in seen.items][-1] == "response.completed"
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"stall": 1}


def test_a_cut_after_done_ended_nothing() -> None:
    """Issue 15, defect 7: a watchdog cut after data: [DONE] is no stall.

    The SDK had ended the stream there and only drains the body, errors ignored. (The async SDK
    drains an HTTP/1.1 body for at most 0.1 s after [DONE]; whether the watchdog cuts that drain
    is a race no loopback test can decide, so the rule is checked here.)
    """
    from streamsentinel._core.taxonomy import Failure, watchdog_cut

    assert watchdog_cut("stall", None, done_seen=True) is None
    assert watchdog_cut("stall", None) == Failure("stall", "stall")
    assert watchdog_cut("first_token_timeout", openai.APIConnectionError(request=REQUEST)) == Failure(
        "first_token_timeout", "first_token_timeout"
    )
    assert watchdog_cut(None, None) is None
    assert watchdog_cut("stall", ValueError("not ours")) is None


# -- "sixteen defects" issue, defect 12: uninstrument() stops the watchdog; instrument() again reconfigures


@pytest.mark.parametrize("timeout_option", ["stall_timeout", "first_token_timeout"])
def test_defect_12_uninstrument_stops_the_watchdog(timeout_option: str, chaos: ChaosServer) -> None:
    """After each instrument(timeout)/stream/uninstrument cycle no streamsentinel-watchdog thread is alive."""
    for _ in range(3):
        reinstrument(**{timeout_option: 5})
        result = run_sync(chaos.base_url, "chat")
        assert result.exc is None, repr(result.exc)
        streamsentinel.uninstrument()
        for thread in _watchdog_threads():
            thread.join(timeout=10)
        assert _watchdog_threads() == set()


def test_defect_12_instrument_again_reconfigures(chaos: ChaosServer) -> None:
    """instrument(on_truncation="record") after on_truncation="raise" applies: a cut stream does not raise."""
    telemetry = reinstrument(on_truncation="raise")
    streamsentinel.instrument(registry=telemetry.registry, on_truncation="record", **OBSERVE_ONLY)
    result = run_sync(chaos.base_url, "chat", extra_headers={"x-chaos-fault": "eof_chunked"})
    assert result.exc is None, repr(result.exc)
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
