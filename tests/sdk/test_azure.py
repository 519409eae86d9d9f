"""Azure OpenAI: ``AzureOpenAI`` / ``AsyncAzureOpenAI`` against the fault server's Azure routes
(``/openai/deployments/{deployment}/chat/completions?api-version=...``, a first chunk with no
choices and only ``prompt_filter_results``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

import streamsentinel
from streamsentinel import StreamTruncatedError
from streamsentinel._core.ratelimit import retry_delay_seconds
from streamsentinel.chaos import ChaosServer

from ..support import Telemetry, reinstrument

DEPLOYMENT = "prod-gpt-4o-mini"
API_VERSION = "2024-10-21"
MESSAGES: Any = [{"role": "user", "content": "Tell me about streams"}]
ITEMS = 1 + 1 + 3 + 1  # Azure's filter chunk, role chunk, 3 words, finish chunk


@pytest.fixture
def azure_server() -> Iterator[ChaosServer]:
    with ChaosServer(chunks=3) as server:
        yield server


def azure(server: ChaosServer) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=server.url, api_key="k", api_version=API_VERSION, max_retries=0)


def consume(server: ChaosServer, **extra: Any) -> list[Any]:
    with azure(server) as client:
        stream = client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True, **extra)
        with stream:
            return list(stream)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    yield reinstrument()
    streamsentinel.uninstrument()


def test_azure_stream_is_observed_like_any_other(azure_server: ChaosServer, telemetry: Telemetry) -> None:
    items = consume(azure_server)
    assert len(items) == ITEMS
    assert items[0].choices == [] and "prompt_filter_results" in (items[0].model_extra or {})
    text = "".join(i.choices[0].delta.content or "" for i in items if i.choices)
    assert text == azure_server.expected_text({"messages": MESSAGES})
    labels = {"operation": "chat", "model": DEPLOYMENT, "server": "127.0.0.1"}
    assert telemetry.by("openai_stream_requests_total", "outcome", **labels) == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total", **labels) == ITEMS
    assert telemetry.value("openai_stream_errors_total") == 0  # the filter-only chunk is no error
    # Time to first token comes from the first content, not the filter chunk.
    assert telemetry.value("openai_stream_time_to_first_token_seconds_count", **labels) == 1
    record = azure_server.wait_for_records(1)[0]
    assert record.path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    # Semconv: the provider of an Azure client is azure.ai.openai.
    attributes = telemetry.only_span().attributes or {}
    assert attributes["gen_ai.provider.name"] == "azure.ai.openai"


def test_azure_items_equal_the_plain_sdk(azure_server: ChaosServer) -> None:
    streamsentinel.uninstrument()
    plain = [i.model_dump(exclude={"created"}) for i in consume(azure_server)]
    reinstrument()
    try:
        observed = [i.model_dump(exclude={"created"}) for i in consume(azure_server)]
    finally:
        streamsentinel.uninstrument()
    # The second request has another id (the server numbers requests): compare all but ids.
    for item in (*plain, *observed):
        item.pop("id", None)
    assert observed == plain


def test_azure_cut_stream_raises(azure_server: ChaosServer, telemetry: Telemetry) -> None:
    with pytest.raises(StreamTruncatedError) as caught:
        consume(azure_server, extra_headers={"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"})
    assert caught.value.chunks_received == 3
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"eof_before_done": 1}


async def test_async_azure(azure_server: ChaosServer, telemetry: Telemetry) -> None:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=azure_server.url, api_key="k", api_version=API_VERSION, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        items = [item async for item in stream]
    assert len(items) == ITEMS
    assert telemetry.by("openai_stream_requests_total", "outcome", model=DEPLOYMENT) == {"completed": 1}
    assert (telemetry.only_span().attributes or {})["gen_ai.provider.name"] == "azure.ai.openai"


def test_azure_retry_after_header_is_read() -> None:
    assert retry_delay_seconds({"x-ms-retry-after-ms": "250"}) == 0.25
