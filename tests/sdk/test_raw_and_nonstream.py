"""``with_raw_response`` / ``with_streaming_response`` on streaming calls (the parsed stream is observed
like any other; raw reads are counted once), and non-streaming calls (only their 429s, SDK retries
and rate-limit headers are counted). Real loopback HTTP against the chaos server."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion

from streamsentinel import StreamTruncatedError
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

from ..scripted import MODES, async_client, sync_client
from ..support import MODEL, Telemetry, chat_kwargs, chat_text, http_library, sdk_client, settle

CHAT_ITEMS = 8  # role chunk, 5 content chunks, finish chunk, usage chunk
CUT = {"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about streams"}]


def outcomes(telemetry: Telemetry) -> dict[str, float]:
    return telemetry.by("openai_stream_requests_total", "outcome")


def assert_clean(telemetry: Telemetry) -> None:
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0
    assert len(telemetry.spans()) == 1


# -- with_raw_response ------------------------------------------------------------------------------


def test_raw_response_parse_is_observed(
    chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(**chat_kwargs())
    assert type(raw).__name__ == "ObservedLegacyResponse"
    assert isinstance(raw, openai._legacy_response.LegacyAPIResponse)
    assert raw.status_code == 200
    parsed = raw.parse()
    assert isinstance(parsed, openai.Stream)
    assert raw.parse() is parsed  # built once
    items = list(parsed)
    assert len(items) == CHAT_ITEMS
    assert chat_text(items) == chaos.expected_text(chat_kwargs())
    del raw  # the parsed stream, not the raw response, ends the observation
    settle()
    assert outcomes(telemetry) == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total") == CHAT_ITEMS
    assert_clean(telemetry)


def test_raw_response_parse_cut(telemetry: Telemetry, client: openai.OpenAI) -> None:
    parsed = client.chat.completions.with_raw_response.create(**chat_kwargs(extra_headers=CUT)).parse()
    with pytest.raises(StreamTruncatedError):
        list(parsed)
    assert outcomes(telemetry) == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"eof_before_done": 1}
    assert_clean(telemetry)


async def test_raw_response_parse_async(telemetry: Telemetry, aclient: openai.AsyncOpenAI) -> None:
    raw = await aclient.chat.completions.with_raw_response.create(**chat_kwargs())
    parsed = raw.parse()  # LegacyAPIResponse.parse() is sync on the async client too
    assert isinstance(parsed, openai.AsyncStream)
    items = [item async for item in parsed]
    assert len(items) == CHAT_ITEMS
    assert outcomes(telemetry) == {"completed": 1}
    assert_clean(telemetry)


def test_raw_response_dropped_unread_is_abandoned(telemetry: Telemetry, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(**chat_kwargs())
    raw.http_response.close()
    del raw
    settle()
    assert outcomes(telemetry) == {"abandoned": 1}
    assert_clean(telemetry)


# -- with_streaming_response ------------------------------------------------------------------------


def test_streaming_response_parse(chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(**chat_kwargs()) as response:
        assert isinstance(response, openai._response.APIResponse)
        parsed = response.parse()
        assert isinstance(parsed, openai.Stream)
        items = list(parsed)
    assert chat_text(items) == chaos.expected_text(chat_kwargs())
    assert outcomes(telemetry) == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total") == CHAT_ITEMS
    assert_clean(telemetry)


def test_streaming_response_iter_lines_counts_one_request(
    telemetry: Telemetry, client: openai.OpenAI
) -> None:
    with client.chat.completions.with_streaming_response.create(**chat_kwargs()) as response:
        lines = list(response.iter_lines())
    assert "data: [DONE]" in lines
    assert outcomes(telemetry) == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total") == 0  # raw lines are not decoded
    assert_clean(telemetry)


def test_streaming_response_raw_read_error_is_failed(telemetry: Telemetry, client: openai.OpenAI) -> None:
    reset = {"x-chaos-fault": "reset", "x-chaos-after": "3"}
    with (
        pytest.raises(http_library(client).ReadError),  # the plain SDK's, of the client's library
        client.chat.completions.with_streaming_response.create(
            **chat_kwargs(extra_headers=reset)
        ) as response,
    ):
        list(response.iter_lines())
    assert outcomes(telemetry) == {"failed": 1}
    assert_clean(telemetry)


def test_streaming_response_closed_unread_is_abandoned(telemetry: Telemetry, client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(**chat_kwargs()):
        pass
    assert outcomes(telemetry) == {"abandoned": 1}
    assert_clean(telemetry)


async def test_streaming_response_parse_async(
    chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    async with aclient.chat.completions.with_streaming_response.create(**chat_kwargs()) as response:
        assert isinstance(response, openai._response.AsyncAPIResponse)
        parsed = await response.parse()
        assert isinstance(parsed, openai.AsyncStream)
        items = [item async for item in parsed]
    assert chat_text(items) == chaos.expected_text(chat_kwargs())
    assert outcomes(telemetry) == {"completed": 1}
    assert_clean(telemetry)


async def test_streaming_response_iter_lines_async(telemetry: Telemetry, aclient: openai.AsyncOpenAI) -> None:
    async with aclient.chat.completions.with_streaming_response.create(**chat_kwargs()) as response:
        lines = [line async for line in response.iter_lines()]
    assert "data: [DONE]" in lines
    assert outcomes(telemetry) == {"completed": 1}
    assert_clean(telemetry)


# -- non-streaming calls ----------------------------------------------------------------------------


def rate_limited_then_ok() -> ChaosServer:
    return ChaosServer(
        FaultPlan(script=[FaultSpec(fault=Fault.RATE_LIMIT_REQUESTS, retry_after_ms=1), FaultSpec()]),
        chunks=5,
    )


def assert_non_streaming_counted(telemetry: Telemetry) -> None:
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"requests": 1}
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sdk") == {"rate_limited": 1}
    labels = {"operation": "chat", "model": MODEL, "server": "127.0.0.1"}
    for resource in ("requests", "tokens"):
        assert telemetry.value("openai_stream_ratelimit_limit", resource=resource, **labels) > 0
    assert telemetry.value("openai_stream_requests_total") == 0  # not a stream request
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0
    assert telemetry.spans() == ()


def test_non_streaming_429_and_retry_are_counted(telemetry: Telemetry, library: str) -> None:
    with (
        rate_limited_then_ok() as server,
        sdk_client("sync", library, base_url=server.base_url, api_key="test-key", max_retries=2) as client,
    ):
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert [r.fault for r in server.wait_for_records(2)] == [Fault.RATE_LIMIT_REQUESTS, Fault.NONE]
    assert type(completion) is ChatCompletion
    assert_non_streaming_counted(telemetry)


async def test_non_streaming_429_and_retry_are_counted_async(telemetry: Telemetry, library: str) -> None:
    with rate_limited_then_ok() as server:
        async with sdk_client(
            "async", library, base_url=server.base_url, api_key="k", max_retries=2
        ) as client:
            completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert type(completion) is ChatCompletion
    assert_non_streaming_counted(telemetry)


def test_non_streaming_final_429_is_the_sdks_error(telemetry: Telemetry, library: str) -> None:
    plan = FaultPlan(script=[FaultSpec(fault=Fault.RATE_LIMIT_REQUESTS, retry_after_ms=1)])
    with (
        ChaosServer(plan, chunks=5) as server,
        sdk_client("sync", library, base_url=server.base_url, api_key="test-key", max_retries=0) as client,
        pytest.raises(openai.RateLimitError),
    ):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"requests": 1}
    assert telemetry.by("openai_stream_retries_total", "reason") == {}
    assert telemetry.value("openai_stream_requests_total") == 0
    assert telemetry.spans() == ()


@pytest.mark.parametrize("api", ["sync", "async"])
async def test_a_non_streaming_429_body_is_not_read_twice(
    telemetry: Telemetry, api: str, library: str
) -> None:
    """The SDK's send() has read a non-streaming 429's body already: reading it again (to tell the
    429's kind) would wait on the socket until the read timeout, and lose the connection. The next
    call goes out on the same connection, as without streamsentinel."""
    plan = FaultPlan(script=[FaultSpec(fault=Fault.RATE_LIMIT_REQUESTS, retry_after_ms=1)])
    timeout = httpx2.Timeout(10.0, connect=2.0, read=3.0)  # broken: waits this long, then fails
    with ChaosServer(plan, chunks=5) as server:
        if api == "sync":
            with sdk_client(
                "sync", library, base_url=server.base_url, api_key="k", max_retries=0, timeout=timeout
            ) as c:
                with pytest.raises(openai.RateLimitError) as raised:
                    c.chat.completions.create(model=MODEL, messages=MESSAGES)
                completion = c.chat.completions.create(model=MODEL, messages=MESSAGES)
        else:
            async with sdk_client(
                "async", library, base_url=server.base_url, api_key="k", max_retries=0, timeout=timeout
            ) as ac:
                with pytest.raises(openai.RateLimitError) as raised:
                    await ac.chat.completions.create(model=MODEL, messages=MESSAGES)
                completion = await ac.chat.completions.create(model=MODEL, messages=MESSAGES)
        records = server.wait_for_records(2)
    assert type(completion) is ChatCompletion
    # The SDK's response as it left send(): its body stream untouched (not wrapped for a re-read).
    assert type(raised.value.response.stream).__module__.startswith(f"{library}.")
    assert raised.value.body == json.loads(raised.value.response.content)["error"]
    assert [r.connection for r in records] == [records[0].connection] * 2
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"requests": 1}
    # Plain calls only: no stream was ever in flight, so there is no in-flight series.
    in_flight = [
        s for f in telemetry.registry.collect() for s in f.samples if s.name == "openai_stream_in_flight"
    ]
    assert in_flight == []


# -- "sixteen defects" issue, defect 16: a raw body read to its end is completed -----------------------------


@pytest.mark.usefixtures("uninstrument_after")
@pytest.mark.parametrize("mode", MODES)
async def test_defect_16_raw_http_response_read_to_the_end_is_completed(
    mode: str, chaos: ChaosServer, telemetry: Telemetry
) -> None:
    """with_streaming_response + http_response.iter_bytes() read to the end: outcome completed."""
    received = b""
    if mode == "sync":
        with (
            sync_client(chaos.base_url) as c,
            c.chat.completions.with_streaming_response.create(**chat_kwargs()) as response,
        ):
            for data in response.http_response.iter_bytes():
                received += data
    else:
        async with (
            async_client(chaos.base_url) as ac,
            ac.chat.completions.with_streaming_response.create(**chat_kwargs()) as aresponse,
        ):
            async for data in aresponse.http_response.aiter_bytes():
                received += data
    assert received.rstrip().endswith(b"data: [DONE]")
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
