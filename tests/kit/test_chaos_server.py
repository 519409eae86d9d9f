"""The chaos server, driven by the real openai SDK over loopback HTTP/1.1.

For every fault: what the SDK's consumer sees (items, silent end or the exact exception and its
`__cause__`) and what the server recorded. Synchronisation is by `wait_for_records` /
`wait_for_arrivals` only; stall tests rely on a 0.5 s client read timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from streamsentinel.chaos import (
    DEFAULT_AFTER,
    FAULT_TABLE,
    ChaosServer,
    DecisionSource,
    Fault,
    FaultPlan,
    FaultSpec,
    Outcome,
    Phase,
    RateLimitKind,
    Recording,
    RequestRecord,
    TruncationReason,
    expected_outcome,
    expected_pieces,
    expected_text,
    fault_names,
    go_duration,
    load_recordings,
    parse_fault_weights,
)
from streamsentinel.chaos.cli import build_parser, build_server, format_record, main

from ..support import RECORDINGS_DIR

# Real recorded streams (read in place, not vendored); the replay tests skip when absent.
MODEL = "gpt-4o-mini"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something deterministic"}]
CHAT_BODY: dict[str, Any] = {"messages": MESSAGES}
RESPONSES_INPUT = "Say something deterministic"
RESPONSES_BODY: dict[str, Any] = {"input": RESPONSES_INPUT}
CHUNKS = 6
STALL_TIMEOUT = httpx2.Timeout(0.5, connect=2.0)
NORMAL_TIMEOUT = httpx2.Timeout(10.0, connect=2.0)
STALLS = frozenset({Fault.STALL_BEFORE_HEADERS, Fault.STALL_BEFORE_FIRST_TOKEN, Fault.STALL_MID_STREAM})

Api = Literal["chat", "responses"]


# ---- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ChaosServer]:
    with ChaosServer() as srv:
        yield srv


def sync_client(
    server: ChaosServer, *, timeout: httpx2.Timeout = NORMAL_TIMEOUT, retries: int = 0
) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=retries, timeout=timeout)


def async_client(
    server: ChaosServer, *, timeout: httpx2.Timeout = NORMAL_TIMEOUT, retries: int = 0
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=retries, timeout=timeout)


def chaos_headers(fault: Fault, **options: object) -> dict[str, str]:
    headers = {"x-chaos-fault": fault.value, "x-chaos-chunks": str(CHUNKS)}
    headers.update({f"x-chaos-{name.replace('_', '-')}": str(value) for name, value in options.items()})
    return headers


@dataclass
class Observed:
    """What a stream consumer saw."""

    items: list[Any]
    error: BaseException | None
    in_create: bool  # the error came from create(), before any iteration


def consume_sync(client: openai.OpenAI, api: Api, headers: dict[str, str]) -> Observed:
    items: list[Any] = []
    try:
        stream: openai.Stream[Any]
        if api == "chat":
            stream = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, extra_headers=headers
            )
        else:
            stream = client.responses.create(
                model=MODEL, input=RESPONSES_INPUT, stream=True, extra_headers=headers
            )
    except Exception as err:
        return Observed(items, err, True)
    try:
        with stream:
            for item in stream:
                items.append(item)
    except Exception as err:
        return Observed(items, err, False)
    return Observed(items, None, False)


async def consume_async(client: openai.AsyncOpenAI, api: Api, headers: dict[str, str]) -> Observed:
    items: list[Any] = []
    try:
        stream: openai.AsyncStream[Any]
        if api == "chat":
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, extra_headers=headers
            )
        else:
            stream = await client.responses.create(
                model=MODEL, input=RESPONSES_INPUT, stream=True, extra_headers=headers
            )
    except Exception as err:
        return Observed(items, err, True)
    try:
        async with stream:
            async for item in stream:
                items.append(item)
    except Exception as err:
        return Observed(items, err, False)
    return Observed(items, None, False)


def streamed_text(api: Api, items: list[Any]) -> str:
    if api == "chat":
        return "".join(
            c.delta.content or ""
            for i in items
            if isinstance(i, ChatCompletionChunk)
            for c in i.choices or []
        )
    return "".join(i.delta for i in items if isinstance(i, ResponseTextDeltaEvent))


def only_record(server: ChaosServer) -> RequestRecord:
    records = server.wait_for_records(1)
    assert len(records) == 1
    return records[0]


# ---- the per-fault contract ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What the consumer sees (openai 3.52, max_retries=0) and what the server records."""

    items: int
    outcome: Outcome
    error: type[BaseException] | None = None
    cause: type[BaseException] | None = None
    in_create: bool = False
    data_events: int | None = None  # server-side count when it differs from `items`

    @property
    def sent(self) -> int:
        return self.items if self.data_events is None else self.data_events


def _expectations(api: Api) -> dict[Fault, Expect]:
    after = DEFAULT_AFTER[api]  # chat: role + 3 pieces, responses: 4 preamble events + 3 deltas
    clean = CHUNKS + 2 if api == "chat" else CHUNKS + 8
    trunc, failed = Outcome.TRUNCATED, Outcome.FAILED
    conn_err, timeout = openai.APIConnectionError, openai.APITimeoutError
    http_429 = Expect(0, failed, openai.RateLimitError, in_create=True)
    in_stream_error = (
        Expect(after, trunc, openai.APIError)  # nested error: a bare APIError, no status
        if api == "chat"
        else Expect(after + 1, trunc, data_events=after)  # ResponseErrorEvent is yielded
    )
    return {
        Fault.NONE: Expect(clean, Outcome.COMPLETED),
        Fault.EOF_CHUNKED: Expect(after, trunc),
        Fault.EOF_CLOSE: Expect(after, trunc),
        Fault.PARTIAL_EVENT: Expect(after, trunc),
        Fault.FIN_IN_CHUNK: Expect(after, trunc, conn_err, httpx2.RemoteProtocolError),
        Fault.RESET: Expect(after, trunc, conn_err, httpx2.ReadError),
        Fault.STALL_BEFORE_HEADERS: Expect(0, failed, timeout, httpx2.ReadTimeout, in_create=True),
        Fault.STALL_BEFORE_FIRST_TOKEN: Expect(0, failed, timeout, httpx2.ReadTimeout),
        Fault.STALL_MID_STREAM: Expect(after, trunc, timeout, httpx2.ReadTimeout),
        Fault.ERROR_EVENT: in_stream_error,
        # chat: the flat error is one more item; responses: the same ResponseErrorEvent
        Fault.ERROR_EVENT_FLAT: Expect(after + 1, trunc, data_events=after),
        Fault.MALFORMED_JSON: Expect(after, trunc, json.JSONDecodeError),
        Fault.JSON_BODY_200: Expect(0, failed),
        Fault.RATE_LIMIT_REQUESTS: http_429,
        Fault.RATE_LIMIT_TOKENS: http_429,
        Fault.INSUFFICIENT_QUOTA: http_429,
        Fault.REQUEST_TOO_LARGE: http_429,
        Fault.SERVER_ERROR: Expect(0, failed, openai.InternalServerError, in_create=True),
    }


EXPECT: dict[Api, dict[Fault, Expect]] = {
    "chat": _expectations("chat"),
    "responses": _expectations("responses"),
}


def check_observed(server: ChaosServer, api: Api, fault: Fault, seen: Observed) -> None:
    expect = EXPECT[api][fault]
    assert len(seen.items) == expect.items
    if expect.error is None:
        assert seen.error is None
    else:
        assert type(seen.error) is expect.error, repr(seen.error)
        assert seen.in_create is expect.in_create
        if expect.cause is not None:
            assert type(seen.error.__cause__) is expect.cause, repr(seen.error.__cause__)

    # Content is the deterministic text, cut where the fault struck.
    body = CHAT_BODY if api == "chat" else RESPONSES_BODY
    pieces = expected_pieces(body, seed=server.seed, chunks=CHUNKS)
    preamble = 1 if api == "chat" else 4
    text_items = min(CHUNKS, max(0, expect.sent - preamble))
    assert streamed_text(api, seen.items) == "".join(pieces[:text_items])

    rec = only_record(server)
    assert rec.fault is fault
    assert rec.source is DecisionSource.HEADER
    assert rec.api == api and rec.stream and rec.model == MODEL
    assert rec.retry_count == 0
    assert rec.status == FAULT_TABLE[fault].status
    assert rec.data_events == expect.sent
    assert rec.terminal_sent is (fault is Fault.NONE)
    assert rec.expected_outcome is expect.outcome
    assert rec.client_disconnected is (fault in STALLS)
    assert rec.stall_expired is False  # 0.5 s read timeout, 30 s stalls: the client always leaves first
    assert (rec.stall_seconds is not None) is (fault in STALLS)
    assert rec.no_done is False
    assert rec.truncation_reason == (None if fault is Fault.NONE else FAULT_TABLE[fault].reason)
    if rec.status is not None:
        assert rec.request_id is not None and rec.request_id.startswith("req_")


def _client_timeout(fault: Fault) -> httpx2.Timeout:
    return STALL_TIMEOUT if fault in STALLS else NORMAL_TIMEOUT


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("fault", list(Fault))
def test_fault_sync(server: ChaosServer, fault: Fault, api: Api) -> None:
    with sync_client(server, timeout=_client_timeout(fault)) as client:
        seen = consume_sync(client, api, chaos_headers(fault))
    check_observed(server, api, fault, seen)


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("fault", list(Fault))
async def test_fault_async(server: ChaosServer, fault: Fault, api: Api) -> None:
    async with async_client(server, timeout=_client_timeout(fault)) as client:
        seen = await consume_async(client, api, chaos_headers(fault))
    await server.wait_for_records_async(1)
    check_observed(server, api, fault, seen)


def test_clean_chat_stream_shape(server: ChaosServer) -> None:
    with sync_client(server) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-chaos-chunks": str(CHUNKS)},
        )
        items = list(stream)
    role, *content, finish, usage = items
    assert role.choices[0].delta.role == "assistant" and role.choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in content] == expected_pieces(CHAT_BODY, chunks=CHUNKS)
    assert all(
        i.object == "chat.completion.chunk" and i.model == MODEL and i.id.startswith("chatcmpl-")
        for i in items
    )
    assert len({i.id for i in items}) == 1
    assert finish.choices[0].finish_reason == "stop" and finish.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == CHUNKS
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + CHUNKS
    assert (
        usage.usage.prompt_tokens_details is not None and usage.usage.prompt_tokens_details.cached_tokens == 0
    )
    rec = only_record(server)
    assert rec.finish_reasons == ("stop",)
    assert rec.usage == usage.usage.model_dump(exclude_unset=True)
    assert rec.data_events == CHUNKS + 3 and rec.terminal_sent


def test_clean_responses_stream_is_typed(server: ChaosServer) -> None:
    with sync_client(server) as client:
        items = list(
            client.responses.create(
                model=MODEL, input=RESPONSES_INPUT, stream=True, extra_headers={"x-chaos-chunks": str(CHUNKS)}
            )
        )
    assert [type(i) for i in items] == [
        ResponseCreatedEvent, ResponseInProgressEvent, ResponseOutputItemAddedEvent,
        ResponseContentPartAddedEvent, *[ResponseTextDeltaEvent] * CHUNKS, ResponseTextDoneEvent,
        ResponseContentPartDoneEvent, ResponseOutputItemDoneEvent, ResponseCompletedEvent,
    ]  # fmt: skip
    assert [i.sequence_number for i in items] == list(range(len(items)))
    completed = items[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.output_text == expected_text(RESPONSES_BODY, chunks=CHUNKS)
    assert completed.response.usage is not None and completed.response.usage.output_tokens == CHUNKS
    assert completed.response.usage.output_tokens_details.reasoning_tokens == 0
    rec = only_record(server)
    assert rec.terminal_event == "response.completed" and rec.response_id == completed.response.id
    assert rec.usage == completed.response.usage.model_dump(exclude_unset=True)


def test_error_event_codes_and_flat_error_item(server: ChaosServer) -> None:
    with sync_client(server) as client:
        for code in ("server_error", "rate_limit_exceeded", "insufficient_quota"):
            seen = consume_sync(client, "chat", chaos_headers(Fault.ERROR_EVENT, error_code=code, after=2))
            assert type(seen.error) is openai.APIError and seen.error.code == code
            assert not isinstance(seen.error, openai.APIStatusError)
        seen = consume_sync(
            client, "chat", chaos_headers(Fault.ERROR_EVENT_FLAT, error_code="server_error", after=2)
        )
        assert seen.error is None and len(seen.items) == 3
        assert (
            seen.items[-1].model_extra["type"] == "error"
            and seen.items[-1].model_extra["code"] == "server_error"
        )
        seen = consume_sync(
            client, "responses", chaos_headers(Fault.ERROR_EVENT, error_code="rate_limit_exceeded")
        )
        error = seen.items[-1]
        assert isinstance(error, ResponseErrorEvent)
        assert error.code == "rate_limit_exceeded" and error.sequence_number == DEFAULT_AFTER["responses"]
    assert [r.fault for r in server.wait_for_records(5)] == [Fault.ERROR_EVENT] * 3 + [
        Fault.ERROR_EVENT_FLAT,
        Fault.ERROR_EVENT,
    ]


@pytest.mark.parametrize("fault", [Fault.EOF_CHUNKED, Fault.RESET, Fault.PARTIAL_EVENT, Fault.ERROR_EVENT])
def test_after_zero_is_failed(server: ChaosServer, fault: Fault) -> None:
    with sync_client(server) as client:
        seen = consume_sync(client, "chat", chaos_headers(fault, after=0))
    assert seen.items == [] and not seen.in_create
    rec = only_record(server)
    assert rec.data_events == 0 and rec.expected_outcome is Outcome.FAILED


def test_after_is_clamped_before_the_terminal_event(server: ChaosServer) -> None:
    with sync_client(server) as client:
        chat = consume_sync(client, "chat", chaos_headers(Fault.EOF_CHUNKED, after=999))
        resp = consume_sync(client, "responses", chaos_headers(Fault.EOF_CHUNKED, after=999))
    assert chat.error is None and len(chat.items) == CHUNKS + 2  # everything but [DONE]
    assert chat.items[-1].choices[0].finish_reason == "stop"
    assert resp.error is None and len(resp.items) == CHUNKS + 7  # everything but response.completed
    chat_rec, resp_rec = server.wait_for_records(2)
    assert chat_rec.finish_reasons == ("stop",) and not chat_rec.terminal_sent
    assert resp_rec.terminal_event is None and not resp_rec.terminal_sent
    assert chat_rec.expected_outcome is resp_rec.expected_outcome is Outcome.TRUNCATED


def test_stall_ends_at_stall_seconds_with_fin(server: ChaosServer) -> None:
    with sync_client(server) as client:
        before = consume_sync(client, "chat", chaos_headers(Fault.STALL_BEFORE_HEADERS, stall_seconds=0))
        mid = consume_sync(client, "chat", chaos_headers(Fault.STALL_MID_STREAM, stall_seconds=0))
    assert type(before.error) is openai.APIConnectionError and before.in_create
    assert type(before.error.__cause__) is httpx2.RemoteProtocolError  # closed without a response
    assert type(mid.error) is openai.APIConnectionError and len(mid.items) == DEFAULT_AFTER["chat"]
    assert type(mid.error.__cause__) is httpx2.RemoteProtocolError  # FIN inside the chunked body
    records = server.wait_for_records(2)
    assert [r.client_disconnected for r in records] == [False, False]
    assert [r.stall_expired for r in records] == [True, True]  # the server closed: ground truth knows


@pytest.mark.parametrize("fault", sorted(STALLS))
def test_stall_shorter_than_the_read_timeout_is_a_lost_connection(server: ChaosServer, fault: Fault) -> None:
    """The server closes the stalled connection (FIN) while the client still waits: the client sees
    a lost connection, not a timeout, and the record says the server ended the stall."""
    with sync_client(server, timeout=httpx2.Timeout(600.0, connect=60.0)) as client:
        seen = consume_sync(client, "chat", chaos_headers(fault, stall_seconds=0.2))
    assert type(seen.error) is openai.APIConnectionError, repr(seen.error)
    assert type(seen.error.__cause__) is httpx2.RemoteProtocolError
    rec = only_record(server)
    assert rec.stall_expired and not rec.client_disconnected
    assert rec.stall_seconds is not None and rec.stall_seconds >= 0.2


def test_stall_before_headers_is_retried_by_the_sdk(server: ChaosServer) -> None:
    with sync_client(server, timeout=STALL_TIMEOUT, retries=1) as client:
        seen = consume_sync(client, "chat", chaos_headers(Fault.STALL_BEFORE_HEADERS))
    assert type(seen.error) is openai.APITimeoutError and seen.in_create
    records = server.wait_for_records(2)
    assert [r.retry_count for r in records] == [0, 1]
    assert all(r.fault is Fault.STALL_BEFORE_HEADERS and r.client_disconnected for r in records)
    assert not any(r.stall_expired for r in records)  # the client's read timeout ended each stall


def test_two_choices_stream(server: ChaosServer) -> None:
    with sync_client(server) as client:
        items = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, stream=True))
    texts = [
        "".join(i.choices[0].delta.content or "" for i in items if i.choices[0].index == k) for k in (0, 1)
    ]
    assert texts == [server.expected_text(CHAT_BODY, choice=k) for k in (0, 1)]
    assert only_record(server).finish_reasons == ("stop", "stop")


def test_cut_bytes_inside_event(server: ChaosServer) -> None:
    with sync_client(server) as client:
        partial = consume_sync(client, "chat", chaos_headers(Fault.PARTIAL_EVENT, after=2, cut_bytes=9))
        fin = consume_sync(client, "chat", chaos_headers(Fault.FIN_IN_CHUNK, after=2, cut_bytes=0))
    assert partial.error is None and len(partial.items) == 2
    assert type(fin.error) is openai.APIConnectionError and len(fin.items) == 2
    assert type(fin.error.__cause__) is httpx2.RemoteProtocolError


# ---- HTTP errors and headers ---------------------------------------------------------------------

RATE_LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


@pytest.mark.parametrize(
    ("fault", "code", "type_", "message_start"),
    [
        (Fault.RATE_LIMIT_REQUESTS, "rate_limit_exceeded", "requests", "Rate limit reached for gpt-4o-mini"),
        (Fault.RATE_LIMIT_TOKENS, "rate_limit_exceeded", "tokens", "Rate limit reached for gpt-4o-mini"),
        (
            Fault.INSUFFICIENT_QUOTA,
            "insufficient_quota",
            "insufficient_quota",
            "You exceeded your current quota",
        ),
        (Fault.REQUEST_TOO_LARGE, "rate_limit_exceeded", "tokens", "Request too large for gpt-4o-mini"),
    ],
)
def test_429_bodies_and_headers(
    server: ChaosServer, fault: Fault, code: str, type_: str, message_start: str
) -> None:
    with sync_client(server) as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            extra_headers=chaos_headers(fault, retry_after_ms=1500),
        )
    err = info.value
    assert err.status_code == 429 and err.code == code and err.type == type_
    assert err.message.startswith(f"Error code: 429 - {message_start}")
    headers = err.response.headers
    assert headers["retry-after-ms"] == "1500" and headers["retry-after"] == "2"
    assert headers["content-type"] == "application/json"
    assert all(name in headers for name in RATE_LIMIT_HEADERS)
    assert headers["x-ratelimit-remaining-requests"] == (
        "0" if fault is Fault.RATE_LIMIT_REQUESTS else "4999"
    )
    exhausted_tokens = fault in (Fault.RATE_LIMIT_TOKENS, Fault.REQUEST_TOO_LARGE)
    assert (headers["x-ratelimit-remaining-tokens"] == "0") is exhausted_tokens
    kind = FAULT_TABLE[fault].rate_limit_kind
    assert kind is not None and (kind is RateLimitKind.TOO_LARGE) is (fault is Fault.REQUEST_TOO_LARGE)
    if fault is Fault.RATE_LIMIT_TOKENS:
        assert "Please try again in 1.5s." in err.message


def test_rate_limit_headers_on_streams_count_down(server: ChaosServer) -> None:
    request_ids = []
    remaining = []
    with sync_client(server) as client:
        for _ in range(3):
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            headers = stream.response.headers
            list(stream)
            assert headers["content-type"] == "text/event-stream; charset=utf-8"
            assert all(name in headers for name in RATE_LIMIT_HEADERS)
            assert int(headers["openai-processing-ms"]) >= 1
            assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
            request_ids.append(headers["x-request-id"])
            remaining.append(int(headers["x-ratelimit-remaining-requests"]))
            assert headers["x-ratelimit-reset-requests"].endswith("ms")
    assert len(set(request_ids)) == 3 and all(r.startswith("req_") for r in request_ids)
    assert remaining == [4999, 4998, 4997]
    assert [r.request_id for r in server.wait_for_records(3)] == request_ids


def test_eof_close_has_no_framing_headers(server: ChaosServer) -> None:
    with sync_client(server) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=chaos_headers(Fault.EOF_CLOSE)
        )
        headers = stream.response.headers
        assert len(list(stream)) == DEFAULT_AFTER["chat"]
    assert "content-length" not in headers and "transfer-encoding" not in headers
    assert headers["connection"] == "close"


def test_json_body_200_is_a_chat_completion(server: ChaosServer) -> None:
    with sync_client(server) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers=chaos_headers(Fault.JSON_BODY_200)
        )
        assert stream.response.headers["content-type"] == "application/json"
        body = json.loads(stream.response.read())
        assert list(stream) == []
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == expected_text(CHAT_BODY, chunks=CHUNKS)


def test_go_duration() -> None:
    assert [go_duration(s) for s in (0, 0.012, 1, 1.5, 360, 85656.648)] == [
        "0s", "12ms", "1s", "1.5s", "6m0s", "23h47m36.648s",
    ]  # fmt: skip


# ---- plans --------------------------------------------------------------------------------------

FAST_MIX = {
    Fault.NONE: 3.0,
    Fault.EOF_CHUNKED: 1.0,
    Fault.RESET: 1.0,
    Fault.ERROR_EVENT: 1.0,
    Fault.MALFORMED_JSON: 1.0,
    Fault.RATE_LIMIT_REQUESTS: 1.0,
    Fault.SERVER_ERROR: 1.0,
}


def test_seeded_plan_draws_are_deterministic() -> None:
    def draws(seed: int) -> list[tuple[Fault, int | None]]:
        plan = FaultPlan(weights=FAST_MIX, seed=seed, after_range=(1, 9))
        return [(d.spec.fault, d.spec.after) for d in (plan.draw() for _ in range(200))]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert {fault for fault, _ in draws(7)} == set(FAST_MIX)
    assert all(after is None for fault, after in draws(7) if fault is Fault.NONE)


def test_seeded_plan_gives_the_same_sequence_through_the_server() -> None:
    def run(seed: int) -> list[Fault]:
        with ChaosServer(FaultPlan(weights=FAST_MIX, seed=seed)) as srv, sync_client(srv) as client:
            for _ in range(25):
                consume_sync(client, "chat", {})
            records = srv.wait_for_records(25)
        assert all(r.source is DecisionSource.RANDOM for r in records)
        return [r.fault for r in records]

    first = run(11)
    assert first == run(11)
    assert len(set(first)) > 3


def test_a_seed_decides_each_request_ids_faults_whatever_the_arrival_order() -> None:
    """The demo's logical requests carry ``x-client-request-id``; concurrent workers send them in
    an order that changes from run to run: the same seed still gives each the same faults, and a
    retry of the same id (its next attempt) a fresh draw."""

    def decide(
        order: list[tuple[str, int]], seed: int = 5
    ) -> dict[tuple[str, int], tuple[Fault, int | None]]:
        plan = FaultPlan(weights=FAST_MIX, seed=seed, after_range=(1, 9))
        out = {}
        for request_id, attempt in order:
            spec = plan.decide({"x-client-request-id": request_id}).spec
            out[(request_id, attempt)] = (spec.fault, spec.after)
        return out

    arrivals = [(f"demo-{i}", attempt) for attempt in range(3) for i in range(60)]
    # Another interleaving: the ids in reverse, each id's attempts still in their order.
    shuffled = [(f"demo-{i}", attempt) for i in reversed(range(60)) for attempt in range(3)]
    first = decide(arrivals)
    assert first == decide(shuffled)
    assert first != decide(arrivals, seed=6)
    assert len({fault for fault, _ in first.values()}) > 3
    assert any(first[(f"demo-{i}", 0)] != first[(f"demo-{i}", 1)] for i in range(60))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "argument --port: not a port (0-65535): 99999"),
        (["--port", "x"], "argument --port: not an integer: 'x'"),
        (["--after-min", "5", "--after-max", "2"], "--after-min 5 is above --after-max 2"),
        (["--chunks", "0"], "argument --chunks: must be >= 1, got 0"),
        (["--stall-seconds", "-1"], "argument --stall-seconds: must be >= 0 seconds, got -1"),
    ],
)
def test_bad_arguments_are_one_usage_error(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"streamsentinel chaos-server: error: {message}"
    assert "Traceback" not in err


def test_script_then_random_and_sdk_retries_get_fresh_decisions() -> None:
    plan = FaultPlan(script=[FaultSpec(Fault.RATE_LIMIT_REQUESTS), Fault.SERVER_ERROR])
    with ChaosServer(plan) as srv, sync_client(srv, retries=2) as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        records = srv.wait_for_records(3)
    assert completion.choices[0].message.content == srv.expected_text(CHAT_BODY)
    assert [r.fault for r in records] == [Fault.RATE_LIMIT_REQUESTS, Fault.SERVER_ERROR, Fault.NONE]
    assert [r.status for r in records] == [429, 500, 200]
    assert [r.retry_count for r in records] == [0, 1, 2]
    assert [r.source for r in records] == [
        DecisionSource.SCRIPT,
        DecisionSource.SCRIPT,
        DecisionSource.RANDOM,
    ]
    assert plan.pending_script == 0


def test_headers_win_over_the_script(server: ChaosServer) -> None:
    server.plan = FaultPlan(script=[Fault.SERVER_ERROR])
    with sync_client(server) as client:
        seen = consume_sync(client, "chat", chaos_headers(Fault.NONE))
        assert seen.error is None
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert [r.source for r in server.wait_for_records(2)] == [DecisionSource.HEADER, DecisionSource.SCRIPT]


def test_default_plan_and_weights_parsing() -> None:
    plan = FaultPlan.default(3)
    assert set(plan.weights) == set(Fault)
    assert max(plan.weights, key=lambda f: plan.weights[f]) is Fault.NONE
    assert plan.template.stall_seconds < 30 and plan.template.retry_after_ms <= 10
    assert parse_fault_weights("none=80, reset=5") == {Fault.NONE: 80.0, Fault.RESET: 5.0}
    with pytest.raises(ValueError):
        parse_fault_weights("nope=1")


def test_bad_chaos_header_and_unknown_path(server: ChaosServer) -> None:
    with sync_client(server) as client:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, extra_headers={"x-chaos-fault": "bogus"}
            )
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, extra_headers={"x-chaos-replay": "missing"}
            )
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="text-embedding-3-small", input="x")
    assert [r.status for r in server.wait_for_records(3)] == [400, 400, 404]


# ---- keep-alive, concurrency, shutdown ----------------------------------------------------------


def test_keep_alive_reuses_one_connection(server: ChaosServer) -> None:
    with sync_client(server) as client:
        for fault in (Fault.EOF_CHUNKED, Fault.PARTIAL_EVENT, Fault.ERROR_EVENT_FLAT):
            consume_sync(client, "chat", chaos_headers(fault))
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        client.responses.create(model=MODEL, input=RESPONSES_INPUT)
        consume_sync(client, "responses", {})  # no [DONE]: read to the chunked end
        records = server.wait_for_records(6)
    assert {r.connection for r in records} == {records[0].connection}
    assert [r.status for r in records] == [200] * 6


def test_sync_sdk_drops_the_connection_after_done(server: ChaosServer) -> None:
    """The sync Stream stops reading at [DONE] and closes the response before the chunked
    terminator is consumed, so httpx2 cannot reuse the connection (the async Stream drains)."""
    with sync_client(server) as client:
        consume_sync(client, "chat", {})
        consume_sync(client, "chat", {})
    first, second = server.wait_for_records(2)
    assert first.connection != second.connection


async def test_async_sdk_reuses_the_connection_after_done(server: ChaosServer) -> None:
    async with async_client(server) as client:
        for _ in range(3):
            assert (await consume_async(client, "chat", {})).error is None
    records = await server.wait_for_records_async(3)
    assert {r.connection for r in records} == {records[0].connection}


def test_connection_faults_do_not_poison_the_next_request(server: ChaosServer) -> None:
    with sync_client(server) as client:
        for fault in (Fault.RESET, Fault.FIN_IN_CHUNK, Fault.EOF_CLOSE, Fault.MALFORMED_JSON):
            consume_sync(client, "chat", chaos_headers(fault))
            assert consume_sync(client, "chat", {}).error is None
    records = server.wait_for_records(8)
    assert [r.terminal_sent for r in records] == [False, True] * 4


async def test_hundreds_of_concurrent_streams_and_a_stall_does_not_block(server: ChaosServer) -> None:
    streams = 300
    # No read timeout for the stalled stream and a 600 s stall: only the cancel below can end it.
    # Every other stream holds its connection open until all of them have their first item, so
    # they are all open at once (one connection each), whatever the machine's speed.
    no_timeout = httpx2.Timeout(None, connect=60.0)
    generous = httpx2.Timeout(60.0, connect=60.0)
    async with (
        async_client(server, timeout=no_timeout) as stall_client,
        async_client(server, timeout=generous) as client,
    ):
        stalled = asyncio.create_task(
            consume_async(
                stall_client, "chat", chaos_headers(Fault.STALL_BEFORE_FIRST_TOKEN, stall_seconds=600)
            )
        )
        await asyncio.to_thread(server.wait_for_arrivals, 1, 60.0)
        all_open = asyncio.Event()
        opened = 0

        async def held_open() -> list[ChatCompletionChunk]:
            nonlocal opened
            items: list[ChatCompletionChunk] = []
            stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            async with stream:
                async for item in stream:
                    items.append(item)
                    if len(items) == 1:
                        opened += 1
                        if opened == streams:
                            all_open.set()
                        await all_open.wait()
            return items

        results = await asyncio.gather(*(held_open() for _ in range(streams)))
        assert [len(items) for items in results] == [server.chunks + 2] * streams
        assert not stalled.done()  # the stall went on while all of them were served
        served = await server.wait_for_records_async(streams, timeout=60.0)
        assert len(served) == streams and all(r.fault is Fault.NONE and r.terminal_sent for r in served)
        assert len({r.connection for r in served}) == streams  # all open at once: one connection each
        stalled.cancel()  # the client goes away: the server's stall ends at once
        with pytest.raises(asyncio.CancelledError):
            await stalled
        records = await server.wait_for_records_async(streams + 1, timeout=60.0)
    stall = next(r for r in records if r.fault is Fault.STALL_BEFORE_FIRST_TOKEN)
    assert stall.client_disconnected and not stall.stall_expired
    assert stall.status == 200 and stall.data_events == 0
    assert stall.connection not in {r.connection for r in served}


def test_stop_cancels_stalls_and_leaves_no_thread() -> None:
    errors: list[BaseException] = []
    srv = ChaosServer().start()
    client = sync_client(srv, timeout=httpx2.Timeout(60.0, connect=2.0))

    def call() -> None:
        try:
            client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                extra_headers=chaos_headers(Fault.STALL_BEFORE_HEADERS, stall_seconds=60),
            )
        except Exception as err:
            errors.append(err)

    caller = threading.Thread(target=call)
    caller.start()
    srv.wait_for_arrivals(1)
    srv.stop()
    caller.join()
    client.close()
    assert len(errors) == 1 and type(errors[0]) is openai.APIConnectionError
    assert not [t for t in threading.enumerate() if t.name == "chaos-server"]


# ---- other endpoints and options ----------------------------------------------------------------


def test_non_stream_calls(server: ChaosServer) -> None:
    with sync_client(server) as client:
        chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
        resp = client.responses.create(model=MODEL, input=RESPONSES_INPUT, instructions="Be brief.")
        legacy = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once")
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, extra_headers=chaos_headers(Fault.INSUFFICIENT_QUOTA)
            )
        # a stream-only fault on a non-stream call serves the normal body
        ok = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_headers=chaos_headers(Fault.EOF_CHUNKED)
        )
    assert [c.message.content for c in chat.choices] == [
        server.expected_text({**CHAT_BODY}, choice=i) for i in range(2)
    ]
    assert chat.choices[0].message.content != chat.choices[1].message.content
    assert chat.usage is not None and chat.usage.completion_tokens == 2 * server.chunks
    assert resp.output_text == server.expected_text({"input": RESPONSES_INPUT, "instructions": "Be brief."})
    assert resp.status == "completed" and resp.instructions == "Be brief."
    assert legacy.choices[0].text == server.expected_text({"prompt": "Once"})
    assert ok.choices[0].message.content == expected_text(CHAT_BODY, chunks=CHUNKS)
    records = server.wait_for_records(5)
    assert [r.fault for r in records] == [
        Fault.NONE,
        Fault.NONE,
        Fault.NONE,
        Fault.INSUFFICIENT_QUOTA,
        Fault.NONE,
    ]
    assert not any(r.stream for r in records)


def test_non_stream_stall_and_reset(server: ChaosServer) -> None:
    with sync_client(server, timeout=STALL_TIMEOUT) as client:
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, extra_headers=chaos_headers(Fault.STALL_MID_STREAM)
            )
        with pytest.raises(openai.APIConnectionError) as info:
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, extra_headers=chaos_headers(Fault.RESET)
            )
    assert type(info.value) is openai.APIConnectionError
    stall, reset = server.wait_for_records(2)
    assert stall.fault is Fault.STALL_BEFORE_HEADERS and stall.status is None and stall.client_disconnected
    assert reset.fault is Fault.RESET and reset.status is None


def test_legacy_completions_stream(server: ChaosServer) -> None:
    with sync_client(server) as client:
        items = list(
            client.completions.create(
                model="gpt-3.5-turbo-instruct",
                prompt="Once",
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        with pytest.raises(openai.APIError) as info:
            list(
                client.completions.create(
                    model="gpt-3.5-turbo-instruct",
                    prompt="Once",
                    stream=True,
                    extra_headers=chaos_headers(Fault.ERROR_EVENT, after=2),
                )
            )
    assert type(info.value) is openai.APIError
    *content, finish, usage = items
    assert all(i.object == "text_completion" for i in items)
    assert "".join(c.choices[0].text for c in content) == server.expected_text({"prompt": "Once"})
    assert finish.choices[0].finish_reason == "stop" and usage.choices == []
    assert usage.usage is not None and usage.usage.completion_tokens == server.chunks
    clean, errored = server.wait_for_records(2)
    assert clean.api == "completions" and clean.data_events == server.chunks + 2 and clean.terminal_sent
    assert errored.data_events == 2 and errored.fault is Fault.ERROR_EVENT


@pytest.mark.parametrize("reason", ["length", "content_filter"])
def test_finish_reason_option(server: ChaosServer, reason: str) -> None:
    with sync_client(server) as client:
        chat = consume_sync(client, "chat", chaos_headers(Fault.NONE, finish_reason=reason))
        resp = consume_sync(client, "responses", chaos_headers(Fault.NONE, finish_reason=reason))
    assert chat.items[-1].choices[0].finish_reason == reason
    terminal = resp.items[-1]
    assert isinstance(terminal, ResponseIncompleteEvent)
    assert terminal.response.incomplete_details is not None
    assert terminal.response.incomplete_details.reason == {"length": "max_output_tokens"}.get(reason, reason)
    chat_rec, resp_rec = server.wait_for_records(2)
    assert chat_rec.finish_reasons == (reason,) and chat_rec.expected_outcome is Outcome.COMPLETED
    assert resp_rec.terminal_event == "response.incomplete" and resp_rec.terminal_sent


def test_tool_call_arguments_stream_in_pieces(server: ChaosServer) -> None:
    with (
        sync_client(server) as client,
        client.chat.completions.stream(
            model=MODEL,
            messages=MESSAGES,
            tools=[
                {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
            ],
            extra_headers={"x-chaos-tool-call": "1", "x-chaos-chunks": str(CHUNKS)},
        ) as stream,
    ):
        deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert len([d for d in deltas if d.arguments_delta]) == CHUNKS
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"text": expected_text(CHAT_BODY, chunks=CHUNKS)}


def test_expected_text_is_deterministic() -> None:
    body = {"model": "x", "messages": [{"role": "user", "content": "hello"}]}
    assert expected_text(body) == expected_text(dict(body, model="other", stream=True))
    assert expected_text(body, chunks=5) == "".join(expected_pieces(body, chunks=20)[:5])
    assert expected_text(body, seed=1) != expected_text(body)
    assert expected_text(body, choice=1) != expected_text(body)
    assert all(p.endswith(" ") and p.count(" ") == 1 for p in expected_pieces(body))


def test_same_request_same_bytes(server: ChaosServer) -> None:
    with sync_client(server) as client:
        first = consume_sync(client, "chat", {})
        second = consume_sync(client, "chat", {})
    assert streamed_text("chat", first.items) == streamed_text("chat", second.items) != ""


# ---- Responses resume ---------------------------------------------------------------------------


def test_responses_resume_with_starting_after(server: ChaosServer) -> None:
    with sync_client(server) as client:
        broken = consume_sync(client, "responses", chaos_headers(Fault.RESET, after=9))
        assert type(broken.error) is openai.APIConnectionError
        first = broken.items[0]
        assert isinstance(first, ResponseCreatedEvent)
        last_seq = broken.items[-1].sequence_number
        resumed = list(client.responses.retrieve(first.response.id, stream=True, starting_after=last_seq))
        stored = client.responses.retrieve(first.response.id)
    assert [e.sequence_number for e in resumed] == list(range(last_seq + 1, CHUNKS + 8))
    assert streamed_text("responses", broken.items + resumed) == expected_text(RESPONSES_BODY, chunks=CHUNKS)
    assert stored.output_text == expected_text(RESPONSES_BODY, chunks=CHUNKS)
    create, resume, get = server.wait_for_records(3)
    assert create.response_id == resume.response_id == get.response_id == first.response.id
    assert resume.method == "GET" and resume.stream and resume.terminal_sent
    assert not get.stream


def test_retrieve_unknown_response_is_404(server: ChaosServer) -> None:
    with sync_client(server) as client, pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing", stream=True)


# ---- recorded streams ---------------------------------------------------------------------------

RECORDINGS: list[Recording] = load_recordings(RECORDINGS_DIR)


@pytest.fixture
def replay_server() -> Iterator[ChaosServer]:
    with ChaosServer(recordings=RECORDINGS) as srv:
        yield srv


def open_recorded(client: openai.OpenAI, recording: Recording, headers: dict[str, str]) -> openai.Stream[Any]:
    body = recording.request_json
    resource: Any = client.chat.completions if recording.api == "chat" else client.responses
    if recording.api == "completions":
        resource = client.completions
    return cast("openai.Stream[Any]", resource.create(**body, extra_headers=headers))


def recorded_finish_reasons(items: list[Any]) -> list[str]:
    return [c.finish_reason for i in items for c in getattr(i, "choices", []) or [] if c.finish_reason]


@pytest.mark.parametrize("recording", RECORDINGS, ids=[r.name.split("__")[1] for r in RECORDINGS])
def test_recording_replays_whole(replay_server: ChaosServer, recording: Recording) -> None:
    expected = recording.expected
    with sync_client(replay_server) as client:
        stream = open_recorded(client, recording, {"x-chaos-replay": recording.name})
        headers = stream.response.headers
        items = list(stream)
    assert len(items) == expected["events"]
    assert headers["x-request-id"] == dict(recording.headers)["x-request-id"]
    assert all(name in headers for name in RATE_LIMIT_HEADERS)
    if recording.api == "responses":
        assert items[-1].type == expected["terminal_event"]
        assert items[-1].response.usage.model_dump(exclude_unset=True) == expected["usage"]
    else:
        assert recorded_finish_reasons(items) == expected["finish_reasons"]
        usage = items[-1].usage
        assert (usage.model_dump(exclude_unset=True) if usage else None) == expected["usage"]
    rec = only_record(replay_server)
    assert rec.replay == recording.name and rec.fault is Fault.NONE
    assert rec.data_events == expected["events"] and rec.terminal_sent
    assert rec.terminal_sent is (expected["done"] or expected["terminal_event"] is not None)
    assert list(rec.finish_reasons) == expected["finish_reasons"] and rec.usage == expected["usage"]
    assert rec.request_id == headers["x-request-id"]


CUT_RECORDINGS = [
    r
    for r in RECORDINGS
    if r.name.endswith(
        ("test_chat_completion_streaming__0", "test_responses_create_streaming_content_mode0___0")
    )
]


@pytest.mark.parametrize("recording", CUT_RECORDINGS, ids=[r.api for r in CUT_RECORDINGS])
@pytest.mark.parametrize(
    ("fault", "options", "error", "cause"),
    [
        (Fault.EOF_CHUNKED, {}, None, None),
        (Fault.EOF_CLOSE, {}, None, None),
        (Fault.PARTIAL_EVENT, {}, None, None),
        (Fault.PARTIAL_EVENT, {"cut_bytes": 17}, None, None),  # cut inside the event, then clean end
        (Fault.FIN_IN_CHUNK, {}, openai.APIConnectionError, httpx2.RemoteProtocolError),
        (Fault.RESET, {}, openai.APIConnectionError, httpx2.ReadError),
    ],
    ids=["eof_chunked", "eof_close", "partial_event", "cut_inside_event", "fin_in_chunk", "reset"],
)
def test_recording_cut_variants(
    replay_server: ChaosServer,
    recording: Recording,
    fault: Fault,
    options: dict[str, int],
    error: type[BaseException] | None,
    cause: type[BaseException] | None,
) -> None:
    headers = chaos_headers(fault, replay=recording.name, after=3, **options)
    items: list[Any] = []
    raised: BaseException | None = None
    with sync_client(replay_server) as client:
        try:
            for item in open_recorded(client, recording, headers):
                items.append(item)
        except Exception as err:
            raised = err
    assert len(items) == 3
    if error is None:
        assert raised is None
    else:
        assert type(raised) is error and raised is not None and type(raised.__cause__) is cause
    rec = only_record(replay_server)
    assert rec.replay == recording.name and rec.fault is fault
    assert rec.data_events == 3 and not rec.terminal_sent and rec.expected_outcome is Outcome.TRUNCATED


def test_plan_replay_round_robin_per_api() -> None:
    chats = [r for r in RECORDINGS if r.api == "chat"][:2]
    responses = [r for r in RECORDINGS if r.api == "responses"][:1]
    with ChaosServer(FaultPlan(replay=True), recordings=chats + responses) as srv, sync_client(srv) as client:
        for _ in range(3):
            list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        list(client.responses.create(model=MODEL, input=RESPONSES_INPUT, stream=True))
        client.chat.completions.create(model=MODEL, messages=MESSAGES)  # non-stream: generated
        records = srv.wait_for_records(5)
    names = [c.name for c in chats]
    assert [r.replay for r in records] == [names[0], names[1], names[0], responses[0].name, None]


# ---- the fault table ----------------------------------------------------------------------------


def test_fault_table_is_complete_and_consistent() -> None:
    assert set(FAULT_TABLE) == set(Fault)
    for fault, info in FAULT_TABLE.items():
        assert info.fault is fault
        if info.phase is Phase.HTTP_ERROR:
            assert info.status in (429, 500) and info.reason is None and info.always_failed
            assert (info.rate_limit_kind is not None) is (info.status == 429)
        elif fault is not Fault.NONE:
            assert isinstance(info.reason, TruncationReason)
    assert expected_outcome(Fault.NONE, 0) is Outcome.COMPLETED
    assert expected_outcome(Fault.RESET, 3) is Outcome.TRUNCATED
    assert expected_outcome(Fault.RESET, 0) is Outcome.FAILED
    assert expected_outcome(Fault.STALL_BEFORE_FIRST_TOKEN, 0) is Outcome.FAILED
    assert expected_outcome(Fault.SERVER_ERROR, 0) is Outcome.FAILED
    assert {str(r) for r in TruncationReason} == {
        "eof_before_done", "partial_event", "connection_lost", "timeout", "in_stream_error",
        "malformed_event", "non_sse_body",
    }  # fmt: skip


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_builds_the_configured_server() -> None:
    args = build_parser().parse_args(
        ["--port", "0", "--seed", "5", "--fault-weights", "none=8,reset=2", "--stall-seconds", "1.5"]
        + (["--replay", str(RECORDINGS_DIR)] if RECORDINGS else [])
    )
    srv = build_server(args)
    assert srv.host == "127.0.0.1" and srv.seed == 5
    assert srv.plan.weights == {Fault.NONE: 8.0, Fault.RESET: 2.0} and srv.plan.seed == 5
    assert srv.plan.template.stall_seconds == 1.5
    assert srv.plan.replay is bool(RECORDINGS) and len(srv.recordings) == len(RECORDINGS)


def test_cli_rejects_bad_weights(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--fault-weights", "bogus=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown fault 'bogus'" in err
    assert all(fault.value in err for fault in Fault)  # the error lists every fault
    with pytest.raises(SystemExit) as info:
        main(["--fail-first", "1", "--fault", "bogus"])
    assert info.value.code == 2
    assert f"unknown fault 'bogus' (faults: {fault_names()})" in capsys.readouterr().err


def test_cli_help_lists_every_fault() -> None:
    text = " ".join(build_parser().format_help().split())  # argparse wraps the epilog
    assert f"faults: {fault_names()}." in text
    assert fault_names().split(", ") == [fault.value for fault in Fault]


def test_unknown_fault_header_names_the_faults(server: ChaosServer) -> None:
    with sync_client(server) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers={"x-chaos-fault": "bogus"}
        )
    assert f"unknown fault 'bogus' (faults: {fault_names()})" in str(info.value)


def test_cli_rejects_a_missing_or_empty_replay_folder(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as info:
            main(["--port", "0", "--replay", str(folder)])
        assert info.value.code == 2
        assert f"--replay {folder}: " in capsys.readouterr().err


def test_cli_logs_each_request_and_fails_the_first_n() -> None:
    """`chaos-server --fail-first 2 --fault server_error`: one stderr line per request (number,
    fault), the first two get a 500, then every request succeeds."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamsentinel.cli", "chaos-server", "--port", "0"),
            *("--chunks", "3", "--fail-first", "2", "--fault", "server_error"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.startswith("chaos-server listening: base_url=http://127.0.0.1:"), first
        base_url = first.strip().split("base_url=", 1)[1]
        assert proc.stdout.readline() == "failing the first 2 requests with server_error\n"
        client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=NORMAL_TIMEOUT)
        with client:
            for _ in range(2):
                with pytest.raises(openai.InternalServerError):
                    client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            items = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        assert len(items) == 3 + 2
        # Each line is written once the server is done with the request: read all three first.
        lines = [proc.stderr.readline() for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert lines == [
        "chaos-server: #0 POST /v1/chat/completions stream fault=server_error status=500\n",
        "chaos-server: #1 POST /v1/chat/completions stream fault=server_error status=500\n",
        "chaos-server: #2 POST /v1/chat/completions stream fault=none status=200\n",
    ]
    assert err == "" and proc.returncode == 0
    assert out.strip().endswith("served 3 requests: server_error=2, none=1")


def test_plan_fail_first_then_succeed() -> None:
    plan = FaultPlan(fail_first=2, fail_fault=Fault.RATE_LIMIT_REQUESTS)
    assert plan.pending_script == 2
    with ChaosServer(plan) as srv, sync_client(srv) as client:
        for _ in range(2):
            assert type(consume_sync(client, "chat", {}).error) is openai.RateLimitError
        assert consume_sync(client, "chat", {}).error is None
        records = srv.wait_for_records(3)
    assert [r.fault for r in records] == [Fault.RATE_LIMIT_REQUESTS] * 2 + [Fault.NONE]
    assert [r.source for r in records] == [DecisionSource.SCRIPT] * 2 + [DecisionSource.RANDOM]
    with pytest.raises(ValueError):
        FaultPlan(fail_first=-1)


def test_fail_first_header_counts_the_attempts_of_one_request(server: ChaosServer) -> None:
    """`x-chaos-fail-first: 2`: the SDK's first two attempts get a 500 (`x-chaos-fault` or the
    plan's `fail_fault`), its second retry succeeds; per X-Client-Request-Id, else per the SDK's
    retry count."""
    with sync_client(server, retries=2) as client:
        by_id = consume_sync(client, "chat", {"x-chaos-fail-first": "2", "X-Client-Request-Id": "one"})
        by_retry_count = consume_sync(
            client, "chat", {"x-chaos-fail-first": "2", "x-chaos-fault": "rate_limit_tokens"}
        )
        again = consume_sync(client, "chat", {"x-chaos-fail-first": "2", "X-Client-Request-Id": "one"})
    assert by_id.error is None and by_retry_count.error is None and again.error is None
    records = server.wait_for_records(7)
    assert [(r.fault, r.retry_count) for r in records] == [
        (Fault.SERVER_ERROR, 0),
        (Fault.SERVER_ERROR, 1),
        (Fault.NONE, 2),
        (Fault.RATE_LIMIT_TOKENS, 0),
        (Fault.RATE_LIMIT_TOKENS, 1),
        (Fault.NONE, 2),
        (Fault.NONE, 0),  # the id "one" already failed twice
    ]


def _raw_stream(server: ChaosServer, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    with httpx2.Client(timeout=NORMAL_TIMEOUT) as http:
        response = http.post(f"{server.base_url}{path}", json={**body, "stream": True}, headers=headers)
        assert response.status_code == 200
        content: bytes = response.content
        return content


@pytest.mark.parametrize("how", ["plan", "header"])
def test_no_done_streams_end_silently_after_every_item(how: str) -> None:
    """Some OpenAI-compatible servers (vLLM, MLX builds) never send `data: [DONE]`: the plain SDK
    gets every item (the finish chunk and the usage chunk) and the iterator just ends."""
    plan = FaultPlan(no_done=how == "plan")
    headers = {"x-chaos-no-done": "1"} if how == "header" else {}
    with ChaosServer() as normal_server, ChaosServer(plan) as server:
        kwargs: dict[str, Any] = {
            "model": MODEL,
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with sync_client(normal_server) as client:
            normal = list(client.chat.completions.create(**kwargs))
        with sync_client(server) as client:
            chat = list(client.chat.completions.create(**kwargs, extra_headers=headers))
            legacy = list(
                client.completions.create(
                    model="gpt-3.5-turbo-instruct", prompt="Once", stream=True, extra_headers=headers
                )
            )
            responses = consume_sync(client, "responses", headers)
        raw = _raw_stream(server, "/chat/completions", {"model": MODEL, "messages": MESSAGES}, headers)
        records = server.wait_for_records(4)
    assert len(chat) == len(normal) == server.chunks + 3  # role, pieces, finish, usage
    assert streamed_text("chat", chat) == streamed_text("chat", normal)
    assert chat[-2].choices[0].finish_reason == "stop"
    assert chat[-1].usage is not None and chat[-1].usage == normal[-1].usage
    assert "".join(c.choices[0].text for c in legacy if c.choices) == server.expected_text({"prompt": "Once"})
    assert b"[DONE]" not in raw and raw.rstrip().endswith(b"}")
    assert responses.error is None and isinstance(responses.items[-1], ResponseCompletedEvent)
    chat_rec, legacy_rec, responses_rec, raw_rec = records
    for rec in (chat_rec, legacy_rec, raw_rec):
        assert rec.no_done and not rec.terminal_sent and rec.fault is Fault.NONE
        assert rec.finish_reasons == ("stop",)
    assert chat_rec.usage is not None
    assert not responses_rec.no_done and responses_rec.terminal_sent  # Responses has no [DONE]


def test_format_record_line() -> None:
    with ChaosServer() as srv, sync_client(srv) as client:
        consume_sync(client, "chat", chaos_headers(Fault.RESET))
        line = format_record(only_record(srv))
    assert line == "chaos-server: #0 POST /v1/chat/completions stream fault=reset status=200"
