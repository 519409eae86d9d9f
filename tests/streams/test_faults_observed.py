"""Every fault of the chaos server, sync and async, chat and Responses, over real loopback HTTP with
the real SDK: the exact items and exception the consumer sees, and the exact telemetry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from opentelemetry.trace import StatusCode

from streamsentinel import StreamTruncatedError
from streamsentinel.chaos import ChaosServer

from ..defect_servers import Gate, ScriptedServer, chat_chunk, sse
from ..scripted import HELLO, MODES, ROLE, run
from ..support import STALL_TIMEOUT, Telemetry, chat_kwargs, reinstrument, responses_kwargs

AFTER = 3
CHAT_ITEMS = 8  # role chunk, 5 content chunks, finish chunk, usage chunk
RESPONSES_ITEMS = 13  # created, in_progress, item added, part added, 5 deltas, 4 done/completed


@dataclass(frozen=True)
class Expect:
    """What one fault must produce for one API."""

    items: int
    exc: type[BaseException] | None
    outcome: str
    reason: str | None = None
    error_type: str | None = None
    rate_limit: str | None = None
    raised_by_create: bool = False


def expectations(api: str) -> dict[str, Expect]:
    full = CHAT_ITEMS if api == "chat" else RESPONSES_ITEMS
    # The SDK yields the Responses error event (and chat's flat one) as one more item.
    in_stream_nested = (
        Expect(AFTER, openai.APIError, "truncated", "in_stream_error", "server_error")
        if api == "chat"
        else Expect(AFTER + 1, StreamTruncatedError, "truncated", "in_stream_error", "server_error")
    )
    return {
        "none": Expect(full, None, "completed"),
        "eof_chunked": Expect(AFTER, StreamTruncatedError, "truncated", "eof_before_done", "truncated"),
        "eof_close": Expect(AFTER, StreamTruncatedError, "truncated", "eof_before_done", "truncated"),
        "partial_event": Expect(AFTER, StreamTruncatedError, "truncated", "partial_event", "truncated"),
        "fin_in_chunk": Expect(
            AFTER, openai.APIConnectionError, "truncated", "connection_lost", "connection_error"
        ),
        "reset": Expect(AFTER, openai.APIConnectionError, "truncated", "connection_lost", "connection_error"),
        "stall_mid_stream": Expect(AFTER, openai.APITimeoutError, "truncated", "timeout", "timeout"),
        "stall_before_first_token": Expect(0, openai.APITimeoutError, "failed", "timeout", "timeout"),
        "stall_before_headers": Expect(
            0, openai.APITimeoutError, "failed", None, "timeout", raised_by_create=True
        ),
        "error_event": in_stream_nested,
        "error_event_flat": Expect(
            AFTER + 1, StreamTruncatedError, "truncated", "in_stream_error", "server_error"
        ),
        "malformed_json": Expect(
            AFTER, json.JSONDecodeError, "truncated", "malformed_event", "malformed_event"
        ),
        "json_body_200": Expect(0, StreamTruncatedError, "failed", "non_sse_body", "truncated"),
        "rate_limit_requests": Expect(
            0, openai.RateLimitError, "failed", None, "rate_limited", "requests", raised_by_create=True
        ),
        "rate_limit_tokens": Expect(
            0, openai.RateLimitError, "failed", None, "rate_limited", "tokens", raised_by_create=True
        ),
        "insufficient_quota": Expect(
            0, openai.RateLimitError, "failed", None, "quota_exhausted", "quota", raised_by_create=True
        ),
        "request_too_large": Expect(
            0, openai.RateLimitError, "failed", None, "request_too_large", "too_large", raised_by_create=True
        ),
        "server_error": Expect(
            0, openai.InternalServerError, "failed", None, "server_error", raised_by_create=True
        ),
    }


FAULTS = list(expectations("chat"))
STALLS = {"stall_mid_stream", "stall_before_first_token", "stall_before_headers"}


@dataclass
class Seen:
    items: list[Any]
    exc: BaseException | None
    raised_by_create: bool


def _kwargs(api: str, fault: str) -> dict[str, Any]:
    headers = {"x-chaos-fault": fault, "x-chaos-after": str(AFTER)}
    make = chat_kwargs if api == "chat" else responses_kwargs
    return make(extra_headers=headers)


def consume_sync(client: openai.OpenAI, api: str, fault: str) -> Seen:
    create = client.chat.completions.create if api == "chat" else client.responses.create
    items: list[Any] = []
    try:
        stream = create(**_kwargs(api, fault))
    except Exception as exc:
        return Seen(items, exc, True)
    try:
        with stream:
            for item in stream:
                items.append(item)
    except Exception as exc:
        return Seen(items, exc, False)
    return Seen(items, None, False)


async def consume_async(client: openai.AsyncOpenAI, api: str, fault: str) -> Seen:
    create = client.chat.completions.create if api == "chat" else client.responses.create
    items: list[Any] = []
    try:
        stream = await create(**_kwargs(api, fault))
    except Exception as exc:
        return Seen(items, exc, True)
    try:
        async with stream:
            async for item in stream:
                items.append(item)
    except Exception as exc:
        return Seen(items, exc, False)
    return Seen(items, None, False)


def check(seen: Seen, fault: str, telemetry: Telemetry, chaos: ChaosServer, api: str) -> None:
    expect = expectations(api)[fault]
    operation = "chat" if api == "chat" else "responses"
    # What the consumer saw.
    assert len(seen.items) == expect.items
    if expect.exc is None:
        assert seen.exc is None
    else:
        assert type(seen.exc) is expect.exc, repr(seen.exc)
    assert seen.raised_by_create is expect.raised_by_create
    # Exactly one logical request, with its outcome.
    assert telemetry.by("openai_stream_requests_total", "outcome") == {expect.outcome: 1}
    assert telemetry.value("openai_stream_requests_total", operation=operation, model="gpt-4o-mini") == 1
    assert telemetry.by("openai_stream_truncations_total", "reason") == (
        {expect.reason: 1} if expect.reason else {}
    )
    assert telemetry.by("openai_stream_errors_total", "error_type") == (
        {expect.error_type: 1} if expect.error_type else {}
    )
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == (
        {expect.rate_limit: 1} if expect.rate_limit else {}
    )
    assert telemetry.value("openai_stream_chunks_total") == expect.items
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_retries_total") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0
    # One span, ended, with the outcome.
    span = telemetry.only_span()
    assert span.attributes is not None
    assert span.attributes["streamsentinel.outcome"] == expect.outcome
    if expect.error_type is None:
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in span.attributes
    else:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == expect.error_type
    # The server did that fault to exactly one request.
    records = chaos.wait_for_records(1)
    assert [str(r.fault) for r in records] == [fault]


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("fault", FAULTS)
def test_fault_sync(
    fault: str, api: str, chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    if fault in STALLS:
        client = client.with_options(timeout=STALL_TIMEOUT)
    seen = consume_sync(client, api, fault)
    check(seen, fault, telemetry, chaos, api)


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("fault", FAULTS)
async def test_fault_async(
    fault: str, api: str, chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    if fault in STALLS:
        aclient = aclient.with_options(timeout=STALL_TIMEOUT)
    seen = await consume_async(aclient, api, fault)
    check(seen, fault, telemetry, chaos, api)


# -- "sixteen defects" issue, defect 7: non-string content does not stop StreamTruncatedError ----------------


@pytest.mark.usefixtures("uninstrument_after")
@pytest.mark.parametrize("content", [{"text": "Hello"}, 42], ids=["object", "number"])
@pytest.mark.parametrize("mode", MODES)
async def test_defect_07_non_string_content_still_raises_truncation(mode: str, content: Any) -> None:
    """An eof-before-[DONE] body whose chunks carry non-string content raises StreamTruncatedError."""
    telemetry = reinstrument()
    body: list[bytes | Gate] = [ROLE, sse(chat_chunk({"content": content})), HELLO]
    with ScriptedServer(body) as server:
        result = await run(mode, server.base_url, "chat")
    assert len(result.items) == 3
    assert isinstance(result.exc, StreamTruncatedError), repr(result.exc)
    assert result.exc.reason == "eof_before_done"
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
