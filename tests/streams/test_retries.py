"""streamsentinel's own retries (``layer="sentinel"``), sync and async, chat and Responses, over real
loopback HTTP with the real SDK.

The rule under test: a stream is re-issued only while nothing has reached the consumer (items without
output are held back until the first output item), only for transient failures, within the attempts,
the per-request time budget and the retry budget across requests; never on top of the SDK's own
retries. The chaos server's scripted plan decides each HTTP request in arrival order and its records
are the ground truth of what was sent. Backoff sleeps are recorded, never slept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pytest
import structlog

import streamsentinel
import streamsentinel.testing
from streamsentinel import StreamTimeoutError, StreamTruncatedError
from streamsentinel._sdk import proxy
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

from ..defect_servers import DONE, Gate, ScriptedServer, chat_chunk, responses_event, sse
from ..scripted import COMPLETED, CREATED, IN_PROGRESS, ROLE, STOP, receive_while_gated
from ..support import TIMEOUT, Telemetry, chat_kwargs, chat_text, reinstrument, responses_kwargs

MODES = ["sync", "async"]
APIS = ["chat", "responses"]
OK = FaultSpec()
ITEMS = {"chat": 8, "responses": 13}  # a clean stream of 5 pieces
# Data events without output: chat's role chunk; Responses' created, in_progress, output_item.added,
# content_part.added. The next event carries the first output.
HELD = {"chat": 1, "responses": 4}
DELIVERED = {"chat": 3, "responses": 6}  # fault points well inside the output
# The chaos server's in-stream rate_limit_exceeded says "Please try again in 644ms"
# (chaos/payloads.py: _in_stream_error_fields -> http_error_body(..., retry_after_ms=644)).
SERVER_DELAY = 0.644
# first_token_timeout / stall_timeout, seconds: the clean attempt after a stall must show its first
# output within it, on a loaded machine too (Responses sends four events before its first delta).
WATCHDOG = 1.0
STALL_SECONDS = 60.0  # the server's stall outlasts the test: only the watchdog (the client) ends it
CLIENT_ID = "req-logical-1"  # X-Client-Request-Id: the server records it per HTTP request
# Retries on, no backoff, no retry budget to speak of: each test narrows what it is about.
RETRYING: dict[str, Any] = {
    "retry_attempts": 3,
    "retry_base_delay": 0.0,
    "retry_max_delay": 0.0,
    "retry_budget_min_retries": 1000,
}


# -- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def scripted() -> Iterator[Callable[..., ChaosServer]]:
    """Start a chaos server whose HTTP requests get ``script`` in order (then clean streams)."""
    with contextlib.ExitStack() as stack:

        def start(*script: FaultSpec) -> ChaosServer:
            return stack.enter_context(ChaosServer(FaultPlan(script=list(script)), chunks=5))

        yield start


@pytest.fixture
def instrument() -> Iterator[Callable[..., Telemetry]]:
    """``instrument(**options)``: (re)instrument with retries on (``RETRYING``) and ``options``."""

    def start(**options: Any) -> Telemetry:
        return reinstrument(**{**RETRYING, **options})

    yield start
    streamsentinel.uninstrument()


@pytest.fixture(autouse=True)
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays the proxy asked for, in order; nothing is waited for."""
    recorded: list[float] = []

    def pause(ctl: Any, seconds: float) -> None:
        recorded.append(seconds)

    async def apause(ctl: Any, seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(proxy, "_pause", pause)
    monkeypatch.setattr(proxy, "_apause", apause)
    return recorded


def request(api: str) -> dict[str, Any]:
    make = chat_kwargs if api == "chat" else responses_kwargs
    return make(extra_headers={"X-Client-Request-Id": CLIENT_ID})


def create_for(client: openai.OpenAI | openai.AsyncOpenAI, api: str) -> Callable[..., Any]:
    return client.chat.completions.create if api == "chat" else client.responses.create


def _normalised(value: Any) -> Any:
    # Timestamps are whole seconds of the wall clock; ids are derived from the request's arrival
    # order on its server, so they are compared.
    if isinstance(value, dict):
        return {
            k: 0 if k in ("created", "created_at", "completed_at") else _normalised(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def dumps(items: list[Any]) -> list[Any]:
    return [_normalised(item.model_dump()) for item in items]


def text_of(api: str, items: list[Any]) -> str:
    if api == "chat":
        return chat_text(items)
    return "".join(i.delta for i in items if i.type == "response.output_text.delta")


@pytest.fixture(scope="module")
def clean() -> dict[str, list[list[Any]]]:
    """``clean[api][seq]``: the items an un-instrumented client gets from the clean stream a server
    sends as its request number ``seq`` (0, 1, 2)."""
    streamsentinel.uninstrument()
    runs: dict[str, list[list[Any]]] = {}
    for api in APIS:
        with (
            ChaosServer(chunks=5) as server,
            openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT) as c,
        ):
            runs[api] = [dumps(list(create_for(c, api)(**request(api)))) for _ in range(3)]
            assert [len(run) for run in runs[api]] == [ITEMS[api]] * 3
    return runs


@dataclass
class Seen:
    items: list[Any]
    exc: BaseException | None
    raised_by_create: bool
    logs: list[MutableMapping[str, Any]]

    def lines(self, event: str) -> list[MutableMapping[str, Any]]:
        return [e for e in self.logs if e["event"] == event]


def consume_sync(server: ChaosServer, api: str, max_retries: int, timeout: httpx2.Timeout) -> Seen:
    items: list[Any] = []
    with (
        structlog.testing.capture_logs() as logs,
        openai.OpenAI(
            base_url=server.base_url, api_key="test-key", max_retries=max_retries, timeout=timeout
        ) as client,
    ):
        try:
            stream = create_for(client, api)(**request(api))
        except Exception as exc:
            return Seen(items, exc, True, logs)
        try:
            with stream:
                for item in stream:
                    items.append(item)
        except Exception as exc:
            return Seen(items, exc, False, logs)
    return Seen(items, None, False, logs)


async def consume_async(server: ChaosServer, api: str, max_retries: int, timeout: httpx2.Timeout) -> Seen:
    items: list[Any] = []
    with structlog.testing.capture_logs() as logs:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test-key", max_retries=max_retries, timeout=timeout
        ) as client:
            try:
                stream = await create_for(client, api)(**request(api))
            except Exception as exc:
                return Seen(items, exc, True, logs)
            try:
                async with stream:
                    async for item in stream:
                        items.append(item)
            except Exception as exc:
                return Seen(items, exc, False, logs)
    return Seen(items, None, False, logs)


async def consume(
    mode: str, server: ChaosServer, api: str, *, max_retries: int = 0, timeout: httpx2.Timeout = TIMEOUT
) -> Seen:
    # The sync client blocks the test's event loop; the server runs on its own thread.
    if mode == "sync":
        return consume_sync(server, api, max_retries, timeout)
    return await consume_async(server, api, max_retries, timeout)


def retry_events(telemetry: Telemetry) -> list[tuple[str, str, int]]:
    """The span's ``streamsentinel.retry`` events as (layer, reason, attempt)."""
    return [
        (
            str(attrs["streamsentinel.retry.layer"]),
            str(attrs["streamsentinel.retry.reason"]),
            int(attrs["streamsentinel.retry.attempt"]),  # type: ignore[arg-type]
        )
        for e in telemetry.only_span().events
        if e.name == "streamsentinel.retry" and (attrs := e.attributes) is not None
    ]


def retry_lines(seen: Seen) -> list[tuple[str, str, int, float | None]]:
    return [(e["layer"], e["reason"], e["attempt"], e["delay_seconds"]) for e in seen.lines("stream.retry")]


def assert_clean_books(telemetry: Telemetry) -> None:
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0


def failure_facts(exc: BaseException | None) -> tuple[Any, ...]:
    """What identifies the exception the consumer got (request ids differ between servers)."""
    if isinstance(exc, StreamTruncatedError):
        return (type(exc), exc.reason, exc.chunks_received, exc.partial_text)
    if isinstance(exc, openai.APIError):
        return (type(exc), exc.message, exc.code)
    return (type(exc),)


# -- 1. a failure before any output is retried -----------------------------------------------------

PRE_OUTPUT: list[tuple[str, FaultSpec, str]] = [
    ("reset", FaultSpec(fault=Fault.RESET), "connection_error"),
    ("fin_in_chunk", FaultSpec(fault=Fault.FIN_IN_CHUNK), "connection_error"),
    ("eof_chunked", FaultSpec(fault=Fault.EOF_CHUNKED), "truncated"),
    ("eof_close", FaultSpec(fault=Fault.EOF_CLOSE), "truncated"),
    ("partial_event", FaultSpec(fault=Fault.PARTIAL_EVENT), "truncated"),
    ("malformed_json", FaultSpec(fault=Fault.MALFORMED_JSON), "malformed_event"),
    ("error_event-server_error", FaultSpec(fault=Fault.ERROR_EVENT), "server_error"),
    ("error_event_flat-server_error", FaultSpec(fault=Fault.ERROR_EVENT_FLAT), "server_error"),
    (
        "error_event-rate_limit_exceeded",
        FaultSpec(fault=Fault.ERROR_EVENT, error_code="rate_limit_exceeded"),
        "rate_limited",
    ),
    (
        "stall_before_first_token",
        FaultSpec(fault=Fault.STALL_BEFORE_FIRST_TOKEN, stall_seconds=STALL_SECONDS),
        "first_token_timeout",
    ),
]


def _pre_output_params() -> list[Any]:
    params = []
    for name, spec, reason in PRE_OUTPUT:
        for api in APIS:
            for mode in MODES:
                params.append(pytest.param(spec, reason, api, mode, id=f"{name}-{api}-{mode}"))
    return params


@pytest.mark.parametrize(("first", "reason", "api", "mode"), _pre_output_params())
async def test_failure_before_output_is_retried_into_the_clean_stream(
    first: FaultSpec,
    reason: str,
    api: str,
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
    clean: dict[str, list[list[Any]]],
) -> None:
    watchdog = first.fault is Fault.STALL_BEFORE_FIRST_TOKEN
    # A client read timeout far beyond the watchdog: the watchdog is what ends the stall.
    telemetry = instrument(first_token_timeout=WATCHDOG if watchdog else 0)
    server = scripted(first.with_(after=HELD[api]), OK)
    seen = await consume(mode, server, api)

    # The consumer got exactly the clean second attempt, as an un-instrumented client would.
    assert seen.exc is None, repr(seen.exc)
    assert dumps(seen.items) == clean[api][1]
    assert text_of(api, seen.items) == server.expected_text(request(api))

    # Two HTTP requests, the same request twice, each a new SDK call (retry count 0).
    records = server.wait_for_records(2)
    assert server.arrivals == 2
    assert [r.fault for r in records] == [first.fault, Fault.NONE]
    assert [r.retry_count for r in records] == [0, 0]
    assert [r.client_request_id for r in records] == [CLIENT_ID, CLIENT_ID]
    assert [(r.path, r.model, r.stream) for r in records] == [(records[0].path, "gpt-4o-mini", True)] * 2
    assert records[0].data_events == (0 if watchdog else HELD[api])

    # One logical request, completed, after one sentinel retry.
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sentinel") == {reason: 1}
    assert telemetry.value("openai_stream_retries_total") == 1
    assert telemetry.by("openai_stream_errors_total", "error_type") == {}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {}
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == (
        {"in_stream": 1} if reason == "rate_limited" else {}
    )
    assert telemetry.value("openai_stream_chunks_total") == ITEMS[api]  # the delivered attempt's
    assert_clean_books(telemetry)
    span = telemetry.only_span()
    assert span.attributes is not None
    assert span.attributes["streamsentinel.outcome"] == "completed"
    assert span.attributes["streamsentinel.request_id"] == records[1].request_id
    assert retry_events(telemetry) == [("sentinel", reason, 2)]

    # The backoff: zero, except that the server's requested delay is honoured exactly.
    delay = SERVER_DELAY if reason == "rate_limited" else 0.0
    assert delays == [delay]
    assert retry_lines(seen) == [("sentinel", reason, 2, delay)]
    assert [e["outcome"] for e in seen.lines("stream.finished")] == ["completed"]
    assert seen.lines("stream.retry_denied") == []


@pytest.mark.parametrize("mode", MODES)
async def test_server_delay_wins_over_a_shorter_jittered_backoff(
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
) -> None:
    # Backoff ceiling 0.5 s < the server's 0.644 s: whatever the jitter draws, the server's delay.
    telemetry = instrument(retry_base_delay=0.5, retry_max_delay=0.5)
    in_stream_429 = FaultSpec(fault=Fault.ERROR_EVENT, error_code="rate_limit_exceeded", after=HELD["chat"])
    server = scripted(in_stream_429, in_stream_429, OK)
    seen = await consume(mode, server, "chat")

    assert seen.exc is None
    assert len(seen.items) == ITEMS["chat"]
    assert len(server.wait_for_records(3)) == 3
    assert delays == [SERVER_DELAY, SERVER_DELAY]
    assert [line[3] for line in retry_lines(seen)] == [SERVER_DELAY, SERVER_DELAY]
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sentinel") == {"rate_limited": 2}
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"in_stream": 2}


# -- 2. a failure after output reached the consumer is not retried --------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("where", ["first_output", "well_inside"])
async def test_failure_after_output_is_not_retried(
    where: str,
    api: str,
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
    clean: dict[str, list[list[Any]]],
) -> None:
    after = HELD[api] + 1 if where == "first_output" else DELIVERED[api]
    telemetry = instrument()
    server = scripted(FaultSpec(fault=Fault.RESET, after=after), OK)
    seen = await consume(mode, server, api)

    assert type(seen.exc) is openai.APIConnectionError, repr(seen.exc)
    assert not seen.raised_by_create
    assert dumps(seen.items) == clean[api][0][:after]
    assert [r.fault for r in server.wait_for_records(1)] == [Fault.RESET]
    assert server.arrivals == 1
    assert server.plan.pending_script == 1

    assert telemetry.value("openai_stream_retries_total") == 0
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"connection_error": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"connection_lost": 1}
    assert telemetry.value("openai_stream_chunks_total") == after
    assert_clean_books(telemetry)
    assert retry_events(telemetry) == []
    assert delays == []
    assert seen.lines("stream.retry") == []


# -- 3. failures that would fail the same way again ------------------------------------------------

NOT_RETRYABLE = [
    pytest.param(
        FaultSpec(fault=Fault.ERROR_EVENT, error_code="insufficient_quota"), id="insufficient_quota"
    ),
    pytest.param(FaultSpec(fault=Fault.ERROR_EVENT_FLAT, error_code="insufficient_quota"), id="quota_flat"),
    pytest.param(FaultSpec(fault=Fault.ERROR_EVENT, error_code="mystery_code"), id="unknown_code"),
    pytest.param(FaultSpec(fault=Fault.JSON_BODY_200), id="json_body_200"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("first", NOT_RETRYABLE)
async def test_non_retryable_failure_before_output_is_not_retried(
    first: FaultSpec,
    api: str,
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
) -> None:
    spec = first.with_(after=HELD[api])
    baseline = instrument(retry_attempts=1)
    without = await consume(mode, scripted(spec, OK), api)
    telemetry = instrument()
    server = scripted(spec, OK)
    seen = await consume(mode, server, api)

    # Exactly what a client without retries gets: same items, same exception.
    assert without.exc is not None
    assert failure_facts(seen.exc) == failure_facts(without.exc)
    assert seen.raised_by_create is without.raised_by_create is False
    assert dumps(seen.items) == dumps(without.items)
    # The SDK yields an in-stream error as one more item unless it is chat's nested form (it raises).
    yielded = first.fault is Fault.ERROR_EVENT_FLAT or (
        api == "responses" and first.fault is Fault.ERROR_EVENT
    )
    assert len(seen.items) == (0 if first.fault is Fault.JSON_BODY_200 else HELD[api] + yielded)
    # ... and the server saw that request once.
    assert [r.fault for r in server.wait_for_records(1)] == [first.fault]
    assert server.arrivals == 1
    assert server.plan.pending_script == 1

    assert telemetry.value("openai_stream_retries_total") == 0
    for name, label in (
        ("openai_stream_requests_total", "outcome"),
        ("openai_stream_errors_total", "error_type"),
        ("openai_stream_truncations_total", "reason"),
        ("openai_stream_rate_limit_events_total", "kind"),
    ):
        assert telemetry.by(name, label) == baseline.by(name, label), name
    assert telemetry.by("openai_stream_requests_total", "outcome") != {}
    assert_clean_books(telemetry)
    assert retry_events(telemetry) == []
    assert delays == []
    assert seen.lines("stream.retry") == seen.lines("stream.retry_denied") == []


# -- 4. the attempts cap ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("api", APIS)
async def test_attempts_cap_ends_with_the_last_failure(
    api: str,
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
    clean: dict[str, list[list[Any]]],
) -> None:
    held = HELD[api]
    last = FaultSpec(fault=Fault.MALFORMED_JSON, after=held)
    baseline = instrument(retry_attempts=1)
    without = await consume(mode, scripted(last), api)
    telemetry = instrument()
    server = scripted(
        FaultSpec(fault=Fault.RESET, after=held), FaultSpec(fault=Fault.EOF_CHUNKED, after=held), last, OK
    )
    seen = await consume(mode, server, api)

    # The third attempt's held items, then its error: what a client without retries gets from it.
    assert type(seen.exc) is type(without.exc) is json.JSONDecodeError
    assert dumps(seen.items) == clean[api][2][:held]
    assert dumps(without.items) == clean[api][0][:held]
    records = server.wait_for_records(3)
    assert [r.fault for r in records] == [Fault.RESET, Fault.EOF_CHUNKED, Fault.MALFORMED_JSON]
    assert [r.retry_count for r in records] == [0, 0, 0]
    assert server.arrivals == 3
    assert server.plan.pending_script == 1

    assert telemetry.by("openai_stream_retries_total", "reason", layer="sentinel") == {
        "connection_error": 1,
        "truncated": 1,
    }
    assert telemetry.value("openai_stream_retries_total") == 2
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"malformed_event": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"malformed_event": 1}
    for name, label in (
        ("openai_stream_requests_total", "outcome"),
        ("openai_stream_errors_total", "error_type"),
        ("openai_stream_truncations_total", "reason"),
    ):
        assert telemetry.by(name, label) == baseline.by(name, label), name
    assert telemetry.value("openai_stream_chunks_total") == held
    assert_clean_books(telemetry)
    assert retry_events(telemetry) == [("sentinel", "connection_error", 2), ("sentinel", "truncated", 3)]
    span = telemetry.only_span()
    assert span.attributes is not None
    assert span.attributes["streamsentinel.truncation.reason"] == "malformed_event"
    assert span.attributes["error.type"] == "malformed_event"
    assert delays == [0.0, 0.0]
    assert [(line[1], line[2]) for line in retry_lines(seen)] == [("connection_error", 2), ("truncated", 3)]
    assert [e["outcome"] for e in seen.lines("stream.finished")] == ["truncated"]


# -- 5. the retry budget across requests -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_retry_budget_caps_retries_across_requests(
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
) -> None:
    telemetry = instrument(retry_budget_ratio=0.0, retry_budget_min_retries=2, retry_budget_window=600.0)
    fail = FaultSpec(fault=Fault.RESET, after=HELD["chat"])
    # Requests 1 and 2 fail once and are retried into a clean stream; 3 to 5 fail and are not.
    server = scripted(fail, OK, fail, OK, fail, fail, fail, OK)
    seen = [await consume(mode, server, "chat") for _ in range(5)]

    assert [s.exc is None for s in seen] == [True, True, False, False, False]
    assert all(type(s.exc) is openai.APIConnectionError for s in seen[2:])
    assert [len(s.items) for s in seen] == [ITEMS["chat"]] * 2 + [HELD["chat"]] * 3
    records = server.wait_for_records(7)
    assert [r.fault for r in records] == [Fault.RESET, Fault.NONE] * 2 + [Fault.RESET] * 3
    assert server.arrivals == 7
    assert server.plan.pending_script == 1

    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 2, "truncated": 3}
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sentinel") == {"connection_error": 2}
    assert telemetry.value("openai_stream_retries_total") == 2
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"connection_error": 3}
    assert_clean_books(telemetry)
    assert delays == [0.0, 0.0]
    assert [len(s.lines("stream.retry")) for s in seen] == [1, 1, 0, 0, 0]
    denied = [[(e["reason"], e["why"]) for e in s.lines("stream.retry_denied")] for s in seen]
    assert denied == [[], [], *[[("connection_error", "retry_budget")]] * 3]
    assert all(e["log_level"] == "warning" for s in seen for e in s.lines("stream.retry_denied"))


# -- 6. the per-request time budget ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("api", APIS)
async def test_no_retry_without_time_budget(
    api: str,
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
    clean: dict[str, list[list[Any]]],
) -> None:
    telemetry = instrument(retry_time_budget=0.0)
    server = scripted(FaultSpec(fault=Fault.RESET, after=HELD[api]), OK)
    seen = await consume(mode, server, api)

    assert type(seen.exc) is openai.APIConnectionError
    assert dumps(seen.items) == clean[api][0][: HELD[api]]
    assert len(server.wait_for_records(1)) == 1
    assert server.arrivals == 1
    assert telemetry.value("openai_stream_retries_total") == 0
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"connection_lost": 1}
    assert_clean_books(telemetry)
    assert delays == []
    assert seen.lines("stream.retry") == []


@pytest.mark.parametrize("mode", MODES)
async def test_server_delay_beyond_the_time_budget_is_not_waited_for(
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
) -> None:
    # The server asks for 0.644 s; the whole request may take 0.5 s: no retry, the 429 is final.
    telemetry = instrument(retry_time_budget=0.5)
    in_stream_429 = FaultSpec(fault=Fault.ERROR_EVENT, error_code="rate_limit_exceeded", after=HELD["chat"])
    server = scripted(in_stream_429, OK)
    seen = await consume(mode, server, "chat")

    assert type(seen.exc) is openai.APIError
    assert len(seen.items) == HELD["chat"]
    assert len(server.wait_for_records(1)) == 1
    assert server.arrivals == 1
    assert telemetry.value("openai_stream_retries_total") == 0
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"rate_limited": 1}
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"in_stream": 1}
    assert_clean_books(telemetry)
    assert delays == []


# -- 7. a stall after output: classified, not retried ----------------------------------------------


def _watchdog_params() -> list[Any]:
    return [pytest.param(api, mode, id=f"{api}-{mode}") for api in APIS for mode in MODES]


@pytest.mark.parametrize(("api", "mode"), _watchdog_params())
async def test_stall_after_output_is_classified_and_not_retried(
    api: str,
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
    clean: dict[str, list[list[Any]]],
) -> None:
    after = DELIVERED[api]
    telemetry = instrument(stall_timeout=WATCHDOG)
    server = scripted(FaultSpec(fault=Fault.STALL_MID_STREAM, after=after, stall_seconds=STALL_SECONDS), OK)
    seen = await consume(mode, server, api)  # client read timeout 10 s: the watchdog ends it

    # An SDK timeout that says which of streamsentinel's settings ran out (not a "connection error").
    assert type(seen.exc) is StreamTimeoutError, repr(seen.exc)
    assert isinstance(seen.exc, openai.APITimeoutError)
    assert (seen.exc.kind, seen.exc.timeout) == ("stall", WATCHDOG)
    assert f"stall_timeout={WATCHDOG:g} s" in str(seen.exc)
    assert type(seen.exc.__cause__) is openai.APIConnectionError
    assert dumps(seen.items) == clean[api][0][:after]
    records = server.wait_for_records(1)
    assert [r.fault for r in records] == [Fault.STALL_MID_STREAM]
    assert records[0].client_disconnected  # the client hung up before the server's stall ended
    assert server.arrivals == 1

    assert telemetry.value("openai_stream_retries_total") == 0
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"stall": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"stall": 1}
    assert_clean_books(telemetry)
    span = telemetry.only_span()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "stall"
    assert span.attributes["streamsentinel.truncation.reason"] == "stall"
    assert delays == []


async def test_first_token_deadline_restarts_with_each_attempt(
    scripted: Callable[..., ChaosServer], instrument: Callable[..., Telemetry]
) -> None:
    telemetry = instrument(first_token_timeout=WATCHDOG)
    server = scripted(
        # Ended by the watchdog after WATCHDOG seconds.
        FaultSpec(fault=Fault.STALL_BEFORE_FIRST_TOKEN, stall_seconds=30.0),
        # Ended by the server after 0.1 s, well inside this attempt's own WATCHDOG seconds.
        FaultSpec(fault=Fault.STALL_BEFORE_FIRST_TOKEN, stall_seconds=0.1),
        OK,
    )
    seen = await consume("sync", server, "chat")

    assert seen.exc is None
    assert len(server.wait_for_records(3)) == 3
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sentinel") == {
        "first_token_timeout": 1,
        "connection_error": 1,
    }


# -- 8. retry_attempts=1: nothing is held back -----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("api", APIS)
async def test_one_attempt_delivers_items_at_once(
    api: str,
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    clean: dict[str, list[list[Any]]],
) -> None:
    held = HELD[api]
    fail = FaultSpec(fault=Fault.RESET, after=held)

    # The same script: with 3 attempts the failure is retried; with 1 it reaches the consumer.
    retrying = instrument()
    server = scripted(fail, OK)
    seen = await consume(mode, server, api)
    assert seen.exc is None and len(seen.items) == ITEMS[api]
    assert len(server.wait_for_records(2)) == 2
    assert retrying.value("openai_stream_retries_total") == 1

    single = instrument(retry_attempts=1)
    server = scripted(fail, OK)
    seen = await consume(mode, server, api)
    assert type(seen.exc) is openai.APIConnectionError
    assert dumps(seen.items) == clean[api][0][:held]
    assert len(server.wait_for_records(1)) == 1
    assert server.arrivals == 1
    assert single.value("openai_stream_retries_total") == 0
    assert single.by("openai_stream_requests_total", "outcome") == {"truncated": 1}

    # The items without output reach the consumer while the server is still sending the stream.
    single = instrument(retry_attempts=1)
    server = scripted(FaultSpec(fault=Fault.STALL_MID_STREAM, after=held, stall_seconds=30.0))
    create_kwargs = request(api)
    if mode == "sync":
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
            stream = create_for(client, api)(**create_kwargs)
            got = [next(stream) for _ in range(held)]
            assert server.records == []  # still stalling
            stream.close()
    else:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
        ) as aclient:
            astream = await create_for(aclient, api)(**create_kwargs)
            got = [await astream.__anext__() for _ in range(held)]
            assert server.records == []  # still stalling
            await astream.close()
    assert dumps(got) == clean[api][0][:held]
    records = server.wait_for_records(1)
    assert records[0].client_disconnected
    assert single.by("openai_stream_requests_total", "outcome") == {"abandoned": 1}
    assert single.value("openai_stream_chunks_total") == held


# -- 9. the SDK's own retries are not stacked ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("api", APIS)
async def test_http_errors_are_left_to_the_sdk(
    api: str,
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
) -> None:
    telemetry = instrument()
    error = FaultSpec(fault=Fault.SERVER_ERROR, retry_after_ms=1)
    server = scripted(error, error, error, OK)
    seen = await consume(mode, server, api, max_retries=2)

    assert type(seen.exc) is openai.InternalServerError
    assert seen.raised_by_create
    assert seen.items == []
    records = server.wait_for_records(3)
    assert [r.retry_count for r in records] == [0, 1, 2]  # all three are the SDK's
    assert server.arrivals == 3
    assert server.plan.pending_script == 1

    assert telemetry.by("openai_stream_retries_total", "reason", layer="sdk") == {"server_error": 2}
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sentinel") == {}
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"failed": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"server_error": 1}
    assert_clean_books(telemetry)
    assert [(layer, attempt) for layer, _, attempt in retry_events(telemetry)] == [("sdk", 1), ("sdk", 2)]
    assert delays == []


@pytest.mark.parametrize("mode", MODES)
async def test_reissued_request_gets_the_sdk_retries_once(
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    delays: list[float],
) -> None:
    # A stream failure (sentinel retry), then HTTP 500s on the re-issued call: the SDK retries those
    # inside that one call, and when it gives up the request has failed (no further sentinel retry).
    telemetry = instrument()
    error = FaultSpec(fault=Fault.SERVER_ERROR, retry_after_ms=1)
    server = scripted(FaultSpec(fault=Fault.RESET, after=HELD["chat"]), error, error, error, OK)
    seen = await consume(mode, server, "chat", max_retries=2)

    assert type(seen.exc) is openai.InternalServerError
    assert not seen.raised_by_create
    assert seen.items == []  # the first attempt's role chunk was never delivered
    records = server.wait_for_records(4)
    assert [r.fault for r in records] == [Fault.RESET, *[Fault.SERVER_ERROR] * 3]
    assert [r.retry_count for r in records] == [0, 0, 1, 2]
    assert server.arrivals == 4

    assert telemetry.by("openai_stream_retries_total", "reason", layer="sentinel") == {"connection_error": 1}
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sdk") == {"server_error": 2}
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"failed": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"server_error": 1}
    assert_clean_books(telemetry)
    assert delays == [0.0]


@pytest.mark.parametrize("mode", MODES)
async def test_an_interrupted_backoff_ends_the_request_with_it(
    mode: str,
    scripted: Callable[..., ChaosServer],
    instrument: Callable[..., Telemetry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C (sync) or a cancellation (async) while waiting to retry: that read raises it at
    once, the request is recorded as abandoned (in flight back to 0), and the stream is over."""
    interrupt: type[BaseException] = KeyboardInterrupt if mode == "sync" else asyncio.CancelledError

    def pause(ctl: Any, seconds: float) -> None:
        raise KeyboardInterrupt

    async def apause(ctl: Any, seconds: float) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(proxy, "_pause", pause)
    monkeypatch.setattr(proxy, "_apause", apause)
    telemetry = instrument()
    server = scripted(FaultSpec(fault=Fault.RESET, after=HELD["chat"]), OK)
    outcomes: list[str] = []
    with streamsentinel.testing.capture() as records:
        if mode == "sync":
            with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as c:
                stream = c.chat.completions.create(**request("chat"))
                for _ in range(2):
                    try:
                        next(stream)
                        outcomes.append("item")
                    except (KeyboardInterrupt, StopIteration) as exc:
                        outcomes.append(type(exc).__name__)
                recorded = [r.outcome for r in records]  # while the consumer still holds the stream
                stream.close()
        else:
            async with openai.AsyncOpenAI(
                base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
            ) as ac:
                astream = await ac.chat.completions.create(**request("chat"))
                for _ in range(2):
                    try:
                        await anext(astream)
                        outcomes.append("item")
                    except (asyncio.CancelledError, StopAsyncIteration) as exc:
                        outcomes.append(type(exc).__name__)
                recorded = [r.outcome for r in records]
                await astream.close()
    stop = "StopIteration" if mode == "sync" else "StopAsyncIteration"
    assert outcomes == [interrupt.__name__, stop]
    assert recorded == ["abandoned"]
    assert server.arrivals == 1  # no retry was made
    assert telemetry.value("openai_stream_in_flight") == 0


# -- "sixteen defects" issue, defect 2: items not known to carry no output are not held ----------------------

AUDIO = sse(chat_chunk({"audio": {"id": "audio_1", "data": "UklGRg==", "expires_at": 1700000000}}))
PARTIAL_IMAGE = responses_event(
    {
        "type": "response.image_generation_call.partial_image",
        "item_id": "ig_1",
        "output_index": 0,
        "partial_image_b64": "iVBORw0KGgo=",
        "partial_image_index": 0,
        "sequence_number": 2,
    }
)


@pytest.mark.usefixtures("uninstrument_after")
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("mode", MODES)
async def test_defect_02_unknown_output_is_delivered_at_once(mode: str, api: str) -> None:
    """An item not known to be output-free (delta.audio, partial_image) reaches the consumer at once."""
    gate = Gate()
    if api == "chat":
        parts: list[bytes | Gate] = [ROLE, AUDIO, gate, STOP, DONE]
        expected = 2
    else:
        parts = [CREATED, IN_PROGRESS, PARTIAL_IMAGE, gate, COMPLETED]
        expected = 3
    reinstrument(**RETRYING)
    with ScriptedServer(parts) as server:
        got = await receive_while_gated(mode, server, gate, api, expected)
    assert len(got) == expected, f"only {len(got)} of {expected} items reached the consumer before the rest"
