"""The SDK's own retries (``max_retries``) inside one streaming ``create()``: each retry is counted with
its reason, every 429 with its kind, and the logical request is still counted once. Non-streaming
calls are not stream requests (their 429s and retries: tests/sdk/test_raw_and_nonstream.py). Real
loopback HTTP; the chaos server's scripted plan decides each HTTP attempt in arrival order, and its
``retry-after-ms`` keeps the SDK's waits at 1 ms."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pytest
import structlog
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

from ..support import (
    MODEL,
    STALL_TIMEOUT,
    TIMEOUT,
    Telemetry,
    chat_kwargs,
    chat_text,
    sdk_client,
)

CHAT_ITEMS = 8
OK = FaultSpec()


def fault(kind: Fault) -> FaultSpec:
    if kind is Fault.STALL_BEFORE_HEADERS:
        return FaultSpec(fault=kind, stall_seconds=5.0)  # ends early when the client gives up
    return FaultSpec(fault=kind, retry_after_ms=1)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ChaosServer]]:
    """Start a chaos server whose HTTP attempts get ``script`` in order (then clean streams)."""
    with contextlib.ExitStack() as stack:

        def start(*script: FaultSpec) -> ChaosServer:
            return stack.enter_context(ChaosServer(FaultPlan(script=list(script)), chunks=5))

        yield start


@dataclass
class Seen:
    items: list[ChatCompletionChunk]
    exc: BaseException | None
    logs: list[MutableMapping[str, Any]]


def consume_sync(server: ChaosServer, timeout: httpx2.Timeout, library: str) -> Seen:
    items: list[ChatCompletionChunk] = []
    with (
        structlog.testing.capture_logs() as logs,
        sdk_client(
            "sync", library, base_url=server.base_url, api_key="k", max_retries=2, timeout=timeout
        ) as client,
    ):
        try:
            stream = client.chat.completions.create(**chat_kwargs())
            with stream:
                items.extend(stream)
        except openai.APIError as exc:
            return Seen(items, exc, logs)
    return Seen(items, None, logs)


async def consume_async(server: ChaosServer, timeout: httpx2.Timeout, library: str) -> Seen:
    items: list[ChatCompletionChunk] = []
    with structlog.testing.capture_logs() as logs:
        async with sdk_client(
            "async", library, base_url=server.base_url, api_key="k", max_retries=2, timeout=timeout
        ) as client:
            try:
                stream = await client.chat.completions.create(**chat_kwargs())
                async with stream:
                    async for item in stream:
                        items.append(item)
            except openai.APIError as exc:
                return Seen(items, exc, logs)
    return Seen(items, None, logs)


async def consume(mode: str, server: ChaosServer, library: str, timeout: httpx2.Timeout = TIMEOUT) -> Seen:
    """Read a chat stream over ``library`` (``HTTP_LIBRARIES``), as the ``client`` fixtures do."""
    # The sync client blocks the test's event loop; the server runs on its own thread.
    if mode == "sync":
        return consume_sync(server, timeout, library)
    return await consume_async(server, timeout, library)


def span_retry_events(telemetry: Telemetry) -> list[dict[str, Any]]:
    span = telemetry.only_span()
    return [dict(e.attributes or {}) for e in span.events if e.name == "streamsentinel.retry"]


def log_lines(seen: Seen, event: str) -> list[MutableMapping[str, Any]]:
    return [e for e in seen.logs if e["event"] == event]


MODES = ["sync", "async"]

# first attempt's fault -> (retry reason, rate-limit kind counted for it)
RECOVERED = {
    Fault.RATE_LIMIT_REQUESTS: ("rate_limited", "requests"),
    Fault.RATE_LIMIT_TOKENS: ("rate_limited", "tokens"),
    Fault.INSUFFICIENT_QUOTA: ("quota_exhausted", "quota"),
    Fault.REQUEST_TOO_LARGE: ("request_too_large", "too_large"),
    Fault.SERVER_ERROR: ("server_error", None),
    Fault.STALL_BEFORE_HEADERS: ("timeout", None),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("first", list(RECOVERED), ids=str)
async def test_one_retry_then_clean_stream(
    first: Fault, mode: str, library: str, scripted: Callable[..., ChaosServer], telemetry: Telemetry
) -> None:
    reason, kind = RECOVERED[first]
    server = scripted(fault(first), OK)
    stall = first is Fault.STALL_BEFORE_HEADERS
    seen = await consume(mode, server, library, STALL_TIMEOUT if stall else TIMEOUT)

    # The consumer got the whole stream of the second attempt.
    assert seen.exc is None
    assert len(seen.items) == CHAT_ITEMS
    assert chat_text(seen.items) == server.expected_text(chat_kwargs())
    records = server.wait_for_records(2)
    assert [r.fault for r in records] == [first, Fault.NONE]
    assert [r.retry_count for r in records] == [0, 1]

    # One logical request, completed, with one SDK retry.
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sdk") == {reason: 1}
    assert telemetry.value("openai_stream_retries_total") == 1
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == ({kind: 1} if kind else {})
    assert telemetry.by("openai_stream_errors_total", "error_type") == {}
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0

    span = telemetry.only_span()
    assert span.attributes is not None
    assert span.attributes["streamsentinel.retry.sdk_count"] == 1
    assert span.attributes["streamsentinel.outcome"] == "completed"
    assert span.attributes["streamsentinel.request_id"] == records[1].request_id
    assert span_retry_events(telemetry) == [
        {
            "streamsentinel.retry.layer": "sdk",
            "streamsentinel.retry.reason": reason,
            "streamsentinel.retry.attempt": 1,
        }
    ]

    retries = log_lines(seen, "stream.retry")
    assert [(e["layer"], e["reason"], e["attempt"]) for e in retries] == [("sdk", reason, 1)]
    # The server asked for 1 ms; a timeout has no response to ask with.
    assert retries[0]["delay_seconds"] == (None if stall else pytest.approx(0.001))
    assert retries[0]["log_level"] == "info"
    limited = log_lines(seen, "stream.rate_limited")
    if kind is None:
        assert limited == []
    else:
        assert [(e["kind"], e["status"]) for e in limited] == [(kind, 429)]
        assert limited[0]["log_level"] == ("error" if kind == "quota" else "warning")
        assert limited[0]["request_id"] == records[0].request_id
    finished = [e for e in seen.logs if e["event"] == "stream.finished"]
    assert [(e["outcome"], e["sdk_retries"]) for e in finished] == [("completed", 1)]


@pytest.mark.parametrize("mode", MODES)
async def test_retries_exhausted(
    mode: str, library: str, scripted: Callable[..., ChaosServer], telemetry: Telemetry
) -> None:
    limited = fault(Fault.RATE_LIMIT_REQUESTS)
    server = scripted(limited, limited, limited)
    seen = await consume(mode, server, library)

    assert type(seen.exc) is openai.RateLimitError
    assert seen.items == []
    assert len(server.wait_for_records(3)) == 3
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"failed": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"rate_limited": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {}
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"requests": 3}
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sdk") == {"rate_limited": 2}
    assert telemetry.value("openai_stream_in_flight") == 0
    span = telemetry.only_span()
    assert span.attributes is not None
    assert span.attributes["streamsentinel.retry.sdk_count"] == 2
    assert span.attributes["error.type"] == "rate_limited"
    assert [e["streamsentinel.retry.attempt"] for e in span_retry_events(telemetry)] == [1, 2]
    assert [e["attempt"] for e in log_lines(seen, "stream.retry")] == [1, 2]
    assert len(log_lines(seen, "stream.rate_limited")) == 3


@pytest.mark.parametrize("mode", MODES)
async def test_retries_with_different_reasons(
    mode: str, library: str, scripted: Callable[..., ChaosServer], telemetry: Telemetry
) -> None:
    server = scripted(fault(Fault.SERVER_ERROR), fault(Fault.RATE_LIMIT_TOKENS), OK)
    seen = await consume(mode, server, library)

    assert seen.exc is None and len(seen.items) == CHAT_ITEMS
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert telemetry.by("openai_stream_retries_total", "reason") == {"server_error": 1, "rate_limited": 1}
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"tokens": 1}
    assert [
        (e["streamsentinel.retry.reason"], e["streamsentinel.retry.attempt"])
        for e in span_retry_events(telemetry)
    ] == [
        ("server_error", 1),
        ("rate_limited", 2),
    ]
    assert [(e["reason"], e["attempt"]) for e in log_lines(seen, "stream.retry")] == [
        ("server_error", 1),
        ("rate_limited", 2),
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_retry_into_a_truncated_stream(
    mode: str, library: str, scripted: Callable[..., ChaosServer], telemetry: Telemetry
) -> None:
    server = scripted(fault(Fault.SERVER_ERROR), FaultSpec(fault=Fault.EOF_CHUNKED, after=3))
    seen = await consume(mode, server, library)

    assert type(seen.exc).__name__ == "StreamTruncatedError"
    assert len(seen.items) == 3
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"eof_before_done": 1}
    assert telemetry.by("openai_stream_retries_total", "reason") == {"server_error": 1}


# -- non-streaming calls ---------------------------------------------------------------------------


def assert_untouched(telemetry: Telemetry) -> None:
    # A non-streaming call's rate-limit headers do update the gauges (they share the quota), and its
    # label set is bound (zero-valued series, with their `_created` timestamps).
    moved = [
        (sample.name, sample.labels, sample.value)
        for family in telemetry.registry.collect()
        for sample in family.samples
        if sample.name.startswith("openai_stream_")
        and not sample.name.startswith("openai_stream_ratelimit_")
        and not sample.name.endswith("_created")
        and sample.value
    ]
    assert moved == []
    assert telemetry.spans() == ()


MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about streams"}]


def test_non_streaming_calls_are_untouched(
    chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    with structlog.testing.capture_logs() as logs:
        absent = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        explicit = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=False)
        response = client.responses.create(model=MODEL, input="Tell me about streams")
        explicit_response = client.responses.create(model=MODEL, input="Tell me about streams", stream=False)
    assert type(absent) is ChatCompletion
    assert type(explicit) is ChatCompletion
    assert type(response) is Response
    assert type(explicit_response) is Response
    assert absent.choices[0].message.content == chaos.expected_text({"messages": MESSAGES})
    assert len(chaos.wait_for_records(4)) == 4
    assert logs == []
    assert_untouched(telemetry)


async def test_non_streaming_calls_are_untouched_async(
    chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    with structlog.testing.capture_logs() as logs:
        absent = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES)
        explicit = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES, stream=False)
        response = await aclient.responses.create(model=MODEL, input="Tell me about streams")
    assert type(absent) is ChatCompletion
    assert type(explicit) is ChatCompletion
    assert type(response) is Response
    assert logs == []
    assert_untouched(telemetry)
