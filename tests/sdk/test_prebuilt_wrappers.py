"""``with_raw_response`` / ``with_streaming_response`` wrappers the SDK built (and cached) before
``instrument()`` hold the original ``create``: the SDK's ``request`` hook observes their
streams late, once, without double-counting the normal patched path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

import streamsentinel
from streamsentinel import StreamTruncatedError
from streamsentinel.chaos import ChaosServer

from ..support import TIMEOUT, Telemetry, chat_kwargs, chat_text, reinstrument

CHAT_ITEMS = 8  # role chunk, 5 content chunks, finish chunk, usage chunk
CUT = {"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"}


@pytest.fixture
def prebuilt(chaos: ChaosServer) -> Iterator[tuple[openai.OpenAI, Telemetry]]:
    streamsentinel.uninstrument()
    with openai.OpenAI(base_url=chaos.base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT) as c:
        # Built and cached by the SDK before instrument(): they capture the unpatched create.
        _ = c.chat.completions.with_raw_response
        _ = c.chat.completions.with_streaming_response
        telemetry = reinstrument(retry_attempts=1)
        try:
            yield c, telemetry
        finally:
            streamsentinel.uninstrument()


@pytest.fixture
async def aprebuilt(chaos: ChaosServer) -> AsyncIterator[tuple[openai.AsyncOpenAI, Telemetry]]:
    streamsentinel.uninstrument()
    async with openai.AsyncOpenAI(
        base_url=chaos.base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT
    ) as c:
        _ = c.chat.completions.with_raw_response
        _ = c.chat.completions.with_streaming_response
        telemetry = reinstrument(retry_attempts=1)
        try:
            yield c, telemetry
        finally:
            streamsentinel.uninstrument()


def outcomes(telemetry: Telemetry) -> dict[str, float]:
    return telemetry.by("openai_stream_requests_total", "outcome")


def assert_clean(telemetry: Telemetry) -> None:
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0
    assert len(telemetry.spans()) == 1


def test_prebuilt_raw_response_is_observed(
    chaos: ChaosServer, prebuilt: tuple[openai.OpenAI, Telemetry]
) -> None:
    client, telemetry = prebuilt
    raw = client.chat.completions.with_raw_response.create(**chat_kwargs())
    assert type(raw).__name__ == "ObservedLegacyResponse"
    parsed = raw.parse()
    assert type(parsed).__name__ == "ObservedStream"
    items = list(parsed)
    assert len(items) == CHAT_ITEMS
    assert chat_text(items) == chaos.expected_text(chat_kwargs())
    assert outcomes(telemetry) == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total") == CHAT_ITEMS
    assert_clean(telemetry)


def test_prebuilt_raw_response_cut_is_truncated(prebuilt: tuple[openai.OpenAI, Telemetry]) -> None:
    client, telemetry = prebuilt
    parsed = client.chat.completions.with_raw_response.create(**chat_kwargs(extra_headers=CUT)).parse()
    with pytest.raises(StreamTruncatedError):
        list(parsed)
    assert outcomes(telemetry) == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"eof_before_done": 1}
    assert_clean(telemetry)


def test_prebuilt_streaming_response_is_observed(prebuilt: tuple[openai.OpenAI, Telemetry]) -> None:
    client, telemetry = prebuilt
    with client.chat.completions.with_streaming_response.create(**chat_kwargs()) as response:
        assert type(response).__name__ == "ObservedAPIResponse"
        items = list(response.parse())
    assert len(items) == CHAT_ITEMS
    assert outcomes(telemetry) == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total") == CHAT_ITEMS
    assert_clean(telemetry)


def test_prebuilt_streaming_response_cut_is_truncated(prebuilt: tuple[openai.OpenAI, Telemetry]) -> None:
    client, telemetry = prebuilt
    with client.chat.completions.with_streaming_response.create(**chat_kwargs(extra_headers=CUT)) as response:
        parsed = response.parse()
        with pytest.raises(StreamTruncatedError):
            list(parsed)
    assert outcomes(telemetry) == {"truncated": 1}
    assert_clean(telemetry)


def test_patched_path_is_observed_once(prebuilt: tuple[openai.OpenAI, Telemetry]) -> None:
    client, telemetry = prebuilt
    items = list(client.chat.completions.create(**chat_kwargs()))
    assert len(items) == CHAT_ITEMS
    assert telemetry.value("openai_stream_requests_total") == 1
    assert outcomes(telemetry) == {"completed": 1}
    assert_clean(telemetry)


def test_non_stream_call_is_not_observed_late(prebuilt: tuple[openai.OpenAI, Telemetry]) -> None:
    client, telemetry = prebuilt
    kwargs = chat_kwargs(stream=False)
    kwargs.pop("stream_options")
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    raw.parse()
    assert telemetry.value("openai_stream_requests_total") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0
    assert telemetry.spans() == ()


def test_uninstrument_restores_request() -> None:
    from openai._base_client import AsyncAPIClient, SyncAPIClient

    streamsentinel.uninstrument()
    pristine = (SyncAPIClient.__dict__["request"], AsyncAPIClient.__dict__["request"])
    reinstrument()
    assert SyncAPIClient.__dict__["request"] is not pristine[0]
    streamsentinel.uninstrument()
    assert SyncAPIClient.__dict__["request"] is pristine[0]
    assert AsyncAPIClient.__dict__["request"] is pristine[1]


async def test_prebuilt_async_raw_response_is_observed(
    aprebuilt: tuple[openai.AsyncOpenAI, Telemetry],
) -> None:
    client, telemetry = aprebuilt
    raw = await client.chat.completions.with_raw_response.create(**chat_kwargs())
    parsed = raw.parse()
    assert type(parsed).__name__ == "ObservedAsyncStream"
    items = [item async for item in parsed]
    assert len(items) == CHAT_ITEMS
    assert outcomes(telemetry) == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total") == CHAT_ITEMS
    assert_clean(telemetry)


async def test_prebuilt_async_streaming_response_cut_is_truncated(
    aprebuilt: tuple[openai.AsyncOpenAI, Telemetry],
) -> None:
    client, telemetry = aprebuilt
    async with client.chat.completions.with_streaming_response.create(
        **chat_kwargs(extra_headers=CUT)
    ) as response:
        parsed = await response.parse()
        with pytest.raises(StreamTruncatedError):
            [item async for item in parsed]
    assert outcomes(telemetry) == {"truncated": 1}
    assert_clean(telemetry)


async def test_async_patched_path_is_observed_once(aprebuilt: tuple[openai.AsyncOpenAI, Telemetry]) -> None:
    client, telemetry = aprebuilt
    items = [item async for item in await client.chat.completions.create(**chat_kwargs())]
    assert len(items) == CHAT_ITEMS
    assert telemetry.value("openai_stream_requests_total") == 1
    assert_clean(telemetry)


def test_prebuilt_responses_retrieve_is_observed(chaos: ChaosServer) -> None:
    streamsentinel.uninstrument()
    with openai.OpenAI(base_url=chaos.base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT) as c:
        created = c.responses.create(model="gpt-4o-mini", input="Tell me about streams", stream=True)
        first: Any = next(iter(created))  # response.created
        response_id = first.response.id
        created.close()
        retrieve = c.responses.with_raw_response.retrieve  # built before instrument()
        telemetry = reinstrument(retry_attempts=1)
        try:
            parsed = retrieve(response_id, stream=True, starting_after=2).parse()
            assert type(parsed).__name__ == "ObservedStream"
            items = list(parsed)
            assert items[0].sequence_number == 3  # continued after the 3rd event
            assert outcomes(telemetry) == {"completed": 1}
            assert telemetry.by("openai_stream_requests_total", "operation") == {"responses": 1}
        finally:
            streamsentinel.uninstrument()
