"""The life of one observed stream, sync and async, over real loopback HTTP with the real SDK: how it
ends (consumed, closed early, dropped, broken by the consumer), what the consumer keeps seeing
(types, attributes, resumable iteration, the SDK's stream helpers), instrument/uninstrument, and
the tracing context."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pytest
from openai.resources.chat.completions.completions import AsyncCompletions, Completions
from openai.types.chat import ChatCompletionChunk
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, Counter

import streamsentinel
from streamsentinel import StreamTruncatedError
from streamsentinel._resilience.retry import RetryPolicy
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec
from streamsentinel.instrumentation import ResumeEvent, RetryEvent
from streamsentinel.testing import RecordingSink, capture

from ..defect_servers import DONE, Gate, ScriptedServer, chat_chunk, sse
from ..scripted import HELLO, RETRYING, STOP, Exported, async_client, run_sync, sync_client
from ..support import (
    MODEL,
    OBSERVE_ONLY,
    TIMEOUT,
    Telemetry,
    chat_kwargs,
    chat_text,
    make_telemetry,
    reinstrument,
    responses_kwargs,
    settle,
    wait_blocked_in_read,
)

CHAT_ITEMS = 8  # role chunk, 5 content chunks, finish chunk, usage chunk
CUT = {"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"}
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about streams"}]


def open_chat(client: openai.OpenAI, **extra: Any) -> openai.Stream[ChatCompletionChunk]:
    stream = client.chat.completions.create(**chat_kwargs(**extra))
    assert isinstance(stream, openai.Stream)
    return stream


async def aopen_chat(client: openai.AsyncOpenAI, **extra: Any) -> openai.AsyncStream[ChatCompletionChunk]:
    stream = await client.chat.completions.create(**chat_kwargs(**extra))
    assert isinstance(stream, openai.AsyncStream)
    return stream


def expected_text(chaos: ChaosServer) -> str:
    return chaos.expected_text(chat_kwargs())


def assert_one_stream(telemetry: Telemetry, outcome: str) -> ReadableSpan:
    """Exactly one logical request with ``outcome``; nothing counted as a failure; nothing in flight;
    exactly one ended span."""
    assert telemetry.by("openai_stream_requests_total", "outcome") == {outcome: 1}
    if outcome in ("completed", "abandoned"):
        assert telemetry.by("openai_stream_errors_total", "error_type") == {}
        assert telemetry.by("openai_stream_truncations_total", "reason") == {}
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_duration_seconds_count", outcome=outcome) == 1
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0
    span = telemetry.only_span()
    assert span.attributes is not None
    assert span.attributes["streamsentinel.outcome"] == outcome
    return span


def assert_no_otel_complaints(caplog: pytest.LogCaptureFixture) -> None:
    """No "Calling end() on an ended span", no "Failed to detach context", nothing else either."""
    complaints = [
        r for r in caplog.records if r.name.startswith("opentelemetry") or r.levelno >= logging.ERROR
    ]
    assert complaints == [], [r.getMessage() for r in complaints]


# -- endings ---------------------------------------------------------------------------------------


def test_full_consumption_sync(
    chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stream = open_chat(client)
    assert telemetry.value("openai_stream_in_flight") == 1
    items = list(stream)
    assert len(items) == CHAT_ITEMS
    assert chat_text(items) == expected_text(chaos)
    span = assert_one_stream(telemetry, "completed")
    assert span.attributes is not None and span.attributes["streamsentinel.chunk.count"] == CHAT_ITEMS
    # Closing or dropping a finished stream changes nothing.
    stream.close()
    del stream
    settle()
    assert_one_stream(telemetry, "completed")
    assert_no_otel_complaints(caplog)


async def test_full_consumption_async(
    chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await aopen_chat(aclient)
    assert telemetry.value("openai_stream_in_flight") == 1
    items = [item async for item in stream]
    assert len(items) == CHAT_ITEMS
    assert chat_text(items) == expected_text(chaos)
    assert_one_stream(telemetry, "completed")
    await stream.close()
    del stream
    settle()
    assert_one_stream(telemetry, "completed")
    assert_no_otel_complaints(caplog)


def test_break_then_close_is_abandoned_sync(
    telemetry: Telemetry, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stream = open_chat(client)
    for n, _item in enumerate(stream, 1):
        if n == 3:
            break
    # Breaking alone ends nothing: the stream could be resumed.
    assert telemetry.value("openai_stream_in_flight") == 1
    assert telemetry.spans() == ()
    stream.close()
    span = assert_one_stream(telemetry, "abandoned")
    assert span.attributes is not None and span.attributes["streamsentinel.chunk.count"] == 3
    stream.close()  # idempotent
    del stream
    settle()
    assert_one_stream(telemetry, "abandoned")
    assert_no_otel_complaints(caplog)


async def test_break_then_aclose_is_abandoned_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await aopen_chat(aclient)
    n = 0
    async for _item in stream:
        n += 1
        if n == 3:
            break
    assert telemetry.value("openai_stream_in_flight") == 1
    assert telemetry.spans() == ()
    await stream.aclose()
    span = assert_one_stream(telemetry, "abandoned")
    assert span.attributes is not None and span.attributes["streamsentinel.chunk.count"] == 3
    await stream.close()
    del stream
    settle()
    assert_one_stream(telemetry, "abandoned")
    assert_no_otel_complaints(caplog)


def test_break_after_finish_chunk_then_close_is_completed_sync(
    telemetry: Telemetry, client: openai.OpenAI
) -> None:
    stream = open_chat(client)
    for item in stream:
        if item.choices and item.choices[0].finish_reason is not None:
            break  # the usage chunk and [DONE] are never read
    stream.close()
    span = assert_one_stream(telemetry, "completed")
    assert span.attributes is not None
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert span.attributes["streamsentinel.done_seen"] is False


async def test_break_after_finish_chunk_then_aclose_is_completed_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    stream = await aopen_chat(aclient)
    async for item in stream:
        if item.choices and item.choices[0].finish_reason is not None:
            break
    await stream.aclose()
    assert_one_stream(telemetry, "completed")


def test_with_exit_mid_stream_is_abandoned_sync(telemetry: Telemetry, client: openai.OpenAI) -> None:
    with open_chat(client) as stream:
        next(stream)
        next(stream)
    assert_one_stream(telemetry, "abandoned")


async def test_async_with_exit_mid_stream_is_abandoned_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    async with await aopen_chat(aclient) as stream:
        await stream.__anext__()
        await stream.__anext__()
    assert_one_stream(telemetry, "abandoned")


def test_dropped_without_close_is_abandoned_once_sync(
    telemetry: Telemetry, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stream = open_chat(client)
    next(stream)
    next(stream)
    del stream
    settle()
    span = assert_one_stream(telemetry, "abandoned")
    assert span.end_time is not None
    settle()
    assert_one_stream(telemetry, "abandoned")
    assert_no_otel_complaints(caplog)


def test_dropped_before_iterating_is_abandoned_sync(telemetry: Telemetry, client: openai.OpenAI) -> None:
    stream = open_chat(client)
    del stream
    settle()
    span = assert_one_stream(telemetry, "abandoned")
    assert span.attributes is not None and span.attributes["streamsentinel.chunk.count"] == 0


async def test_dropped_without_close_is_abandoned_once_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await aopen_chat(aclient)
    await stream.__anext__()
    await stream.__anext__()
    del stream
    settle()
    span = assert_one_stream(telemetry, "abandoned")
    assert span.end_time is not None
    await asyncio.sleep(0)  # let the loop run the async generators' finalizers
    settle()
    assert_one_stream(telemetry, "abandoned")
    assert_no_otel_complaints(caplog)


class ConsumerError(Exception):
    pass


def test_consumer_exception_in_with_is_abandoned_and_propagates_sync(
    telemetry: Telemetry, client: openai.OpenAI
) -> None:
    error = ConsumerError("the application's own bug")
    with pytest.raises(ConsumerError) as excinfo, open_chat(client) as stream:
        for n, _item in enumerate(stream, 1):
            if n == 2:
                raise error
    assert excinfo.value is error
    assert excinfo.value.__cause__ is None and excinfo.value.__context__ is None
    assert_one_stream(telemetry, "abandoned")


async def test_consumer_exception_in_async_with_is_abandoned_and_propagates_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    error = ConsumerError("the application's own bug")
    with pytest.raises(ConsumerError) as excinfo:
        async with await aopen_chat(aclient) as stream:
            n = 0
            async for _item in stream:
                n += 1
                if n == 2:
                    raise error
    assert excinfo.value is error
    assert excinfo.value.__cause__ is None and excinfo.value.__context__ is None
    assert_one_stream(telemetry, "abandoned")


async def test_cancelled_consumer_task_is_abandoned(
    chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    got_three = asyncio.Event()
    stall = {"x-chaos-fault": "stall_mid_stream", "x-chaos-after": "3", "x-chaos-stall-seconds": "10"}

    async def consume() -> None:
        async with await aopen_chat(aclient, extra_headers=stall) as stream:
            n = 0
            async for _item in stream:
                n += 1
                if n == 3:
                    got_three.set()  # the next read waits on the stalled server

    task = asyncio.create_task(consume())
    await got_three.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = assert_one_stream(telemetry, "abandoned")
    assert span.attributes is not None and span.attributes["streamsentinel.chunk.count"] == 3
    assert (await chaos.wait_for_records_async(1))[0].client_disconnected


async def test_consumed_in_another_task(
    chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="opentelemetry")
    stream = await asyncio.create_task(aopen_chat(aclient))

    async def consume() -> list[ChatCompletionChunk]:
        return [item async for item in stream]

    items = await asyncio.create_task(consume())
    assert chat_text(items) == expected_text(chaos)
    assert_one_stream(telemetry, "completed")
    assert_no_otel_complaints(caplog)


async def test_consumption_handed_between_tasks(
    chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="opentelemetry")

    async def open_and_start() -> tuple[openai.AsyncStream[ChatCompletionChunk], list[ChatCompletionChunk]]:
        stream = await aopen_chat(aclient)
        return stream, [await stream.__anext__(), await stream.__anext__()]

    stream, first = await asyncio.create_task(open_and_start())

    async def finish() -> list[ChatCompletionChunk]:
        rest = [item async for item in stream]
        await stream.aclose()
        return rest

    rest = await asyncio.create_task(finish())
    assert chat_text(first + rest) == expected_text(chaos)
    assert_one_stream(telemetry, "completed")
    assert_no_otel_complaints(caplog)


# `for chunk in create(stream=True)`: nothing but the loop holds the stream (regression: the proxy
# used to hand out its inner generator, got finalized at once and recorded `abandoned`).


def test_unreferenced_stream_is_observed_sync(
    chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    items = [item for item in client.chat.completions.create(**chat_kwargs())]
    assert chat_text(items) == expected_text(chaos)
    assert_one_stream(telemetry, "completed")


def test_unreferenced_truncated_stream_raises_sync(telemetry: Telemetry, client: openai.OpenAI) -> None:
    with pytest.raises(StreamTruncatedError):
        for _item in client.chat.completions.create(**chat_kwargs(extra_headers=CUT)):
            pass


async def test_unreferenced_stream_is_observed_async(
    chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    items = [item async for item in await aclient.chat.completions.create(**chat_kwargs())]
    assert chat_text(items) == expected_text(chaos)
    assert_one_stream(telemetry, "completed")


async def test_unreferenced_truncated_stream_raises_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    with pytest.raises(StreamTruncatedError):
        async for _item in await aclient.chat.completions.create(**chat_kwargs(extra_headers=CUT)):
            pass


# -- what the consumer keeps -------------------------------------------------------------------------


def _break_and_resume(stream: openai.Stream[ChatCompletionChunk]) -> tuple[list[str], list[str]]:
    def key(item: ChatCompletionChunk) -> str:
        if not item.choices:
            return "usage"
        choice = item.choices[0]
        return f"{choice.delta.role}|{choice.delta.content}|{choice.finish_reason}"

    first: list[str] = []
    for item in stream:
        first.append(key(item))
        if len(first) == 3:
            break
    rest = [key(item) for item in stream]
    return first, rest


def test_break_and_resume_continues_like_the_plain_sdk(telemetry: Telemetry, client: openai.OpenAI) -> None:
    observed = _break_and_resume(open_chat(client))
    assert_one_stream(telemetry, "completed")
    streamsentinel.uninstrument()
    plain = client.chat.completions.create(**chat_kwargs())
    assert type(plain) is openai.Stream
    assert _break_and_resume(plain) == observed
    assert (len(observed[0]), len(observed[1])) == (3, CHAT_ITEMS - 3)


async def test_break_and_resume_continues_like_the_plain_sdk_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    async def run(stream: openai.AsyncStream[ChatCompletionChunk]) -> tuple[list[str], list[str]]:
        first: list[str] = []
        async for item in stream:
            first.append(item.id + str(len(first)))
            if len(first) == 3:
                break
        rest = [item.id async for item in stream]
        return first, rest

    observed = await run(await aopen_chat(aclient))
    assert_one_stream(telemetry, "completed")
    streamsentinel.uninstrument()
    plain = await aclient.chat.completions.create(**chat_kwargs())
    assert type(plain) is openai.AsyncStream
    first, rest = await run(plain)
    assert (len(first), len(rest)) == (len(observed[0]), len(observed[1])) == (3, CHAT_ITEMS - 3)


def test_stream_keeps_its_type_and_attributes_sync(telemetry: Telemetry, client: openai.OpenAI) -> None:
    with open_chat(client) as stream:
        assert isinstance(stream, openai.Stream)
        assert not isinstance(stream, openai.AsyncStream)
        request_id = stream.response.headers["x-request-id"]
        assert request_id.startswith("req_")
        assert stream.response.status_code == 200
        list(stream)
    span = assert_one_stream(telemetry, "completed")
    assert span.attributes is not None and span.attributes["streamsentinel.request_id"] == request_id


async def test_stream_keeps_its_type_and_attributes_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    async with await aopen_chat(aclient) as stream:
        assert isinstance(stream, openai.AsyncStream)
        assert not isinstance(stream, openai.Stream)
        request_id = stream.response.headers["x-request-id"]
        assert request_id.startswith("req_")
        [item async for item in stream]
    span = assert_one_stream(telemetry, "completed")
    assert span.attributes is not None and span.attributes["streamsentinel.request_id"] == request_id


# -- instrument / uninstrument ----------------------------------------------------------------------


def _patched_attributes() -> dict[tuple[type, str], Any]:
    from openai._base_client import AsyncAPIClient, BaseClient, SyncAPIClient
    from openai.resources import completions
    from openai.resources.responses.responses import AsyncResponses, Responses

    owners: list[tuple[type, str]] = [
        (Completions, "create"),
        (AsyncCompletions, "create"),
        (completions.Completions, "create"),
        (completions.AsyncCompletions, "create"),
        (Responses, "create"),
        (Responses, "retrieve"),
        (AsyncResponses, "create"),
        (AsyncResponses, "retrieve"),
        (SyncAPIClient, "_send_request"),
        (AsyncAPIClient, "_send_request"),
        (SyncAPIClient, "_sleep_for_retry"),
        (AsyncAPIClient, "_sleep_for_retry"),
        (BaseClient, "_make_sse_decoder"),
    ]
    return {(owner, name): owner.__dict__[name] for owner, name in owners}


def test_instrument_again_keeps_or_reconfigures_and_patches_once(
    telemetry: Telemetry, client: openai.OpenAI
) -> None:
    patched = _patched_attributes()
    same = {"registry": telemetry.registry, "tracer_provider": telemetry.provider, **OBSERVE_ONLY}
    streamsentinel.instrument(**same)
    assert streamsentinel._runtime() is telemetry.runtime  # same options: nothing changes
    streamsentinel.instrument(**same, chunk_events="all")
    assert streamsentinel._runtime() is not telemetry.runtime  # new options: reconfigured
    assert streamsentinel.is_instrumented()
    assert _patched_attributes() == patched
    assert all(v1 is v2 for v1, v2 in zip(patched.values(), _patched_attributes().values(), strict=True))
    # One layer of wrapping: the wrapped function is the SDK's own.
    assert type(Completions.__dict__["create"].__wrapped__).__name__ == "function"
    list(open_chat(client))
    span = assert_one_stream(telemetry, "completed")
    assert telemetry.value("openai_stream_requests_total") == 1
    # The second call's options are in effect: the chunk timeline, an offset per chunk.
    timeline = [e for e in span.events if e.name == "streamsentinel.chunks"]
    assert len(timeline) == 1 and timeline[0].attributes is not None
    offsets: Any = timeline[0].attributes["streamsentinel.chunk.offsets"]
    assert len(offsets) == CHAT_ITEMS


def test_uninstrument_restores_the_exact_originals(telemetry: Telemetry, client: openai.OpenAI) -> None:
    streamsentinel.uninstrument()
    originals = _patched_attributes()
    fresh = make_telemetry()
    instrumented = _patched_attributes()
    assert all(instrumented[k] is not v for k, v in originals.items())
    streamsentinel.uninstrument()
    assert not streamsentinel.is_instrumented()
    restored = _patched_attributes()
    assert all(restored[k] is v for k, v in originals.items())
    streamsentinel.uninstrument()  # idempotent
    assert all(_patched_attributes()[k] is v for k, v in originals.items())

    stream = client.chat.completions.create(**chat_kwargs())
    assert type(stream) is openai.Stream
    assert type(stream._decoder).__name__ == "SSEDecoder"
    assert len(list(stream)) == CHAT_ITEMS
    for t in (telemetry, fresh):
        assert t.value("openai_stream_requests_total") == 0
        assert t.value("openai_stream_in_flight") == 0
        assert t.spans() == ()


def test_stream_opened_before_uninstrument_finishes_its_accounting(
    telemetry: Telemetry, client: openai.OpenAI
) -> None:
    stream = open_chat(client)
    next(stream)
    streamsentinel.uninstrument()
    rest = list(stream)
    assert len(rest) == CHAT_ITEMS - 1
    span = assert_one_stream(telemetry, "completed")
    assert span.attributes is not None and span.attributes["streamsentinel.chunk.count"] == CHAT_ITEMS


async def test_stream_opened_before_uninstrument_finishes_its_accounting_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    stream = await aopen_chat(aclient)
    streamsentinel.uninstrument()
    assert len([item async for item in stream]) == CHAT_ITEMS
    assert_one_stream(telemetry, "completed")


# -- the SDK's stream helpers -------------------------------------------------------------------------


def test_chat_stream_manager_clean(chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.done" in events
    assert final.choices[0].message.content == expected_text(chaos)
    assert final.choices[0].finish_reason == "stop"
    span = assert_one_stream(telemetry, "completed")
    assert span.attributes is not None
    assert span.attributes["gen_ai.response.id"] == final.id
    assert span.attributes["streamsentinel.done_seen"] is True


async def test_chat_stream_manager_clean_async(
    chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    async with aclient.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        [event async for event in stream]
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == expected_text(chaos)
    span = assert_one_stream(telemetry, "completed")
    assert span.attributes is not None and span.attributes["gen_ai.response.id"] == final.id


def test_chat_stream_manager_truncated_raises(telemetry: Telemetry, client: openai.OpenAI) -> None:
    seen: list[str] = []
    with (
        pytest.raises(StreamTruncatedError) as excinfo,
        client.chat.completions.stream(model=MODEL, messages=MESSAGES, extra_headers=CUT) as stream,
    ):
        for event in stream:
            seen.append(event.type)
    assert excinfo.value.reason == "eof_before_done"
    assert excinfo.value.chunks_received == 3
    assert "content.done" not in seen
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"eof_before_done": 1}
    assert telemetry.value("openai_stream_in_flight") == 0


async def test_chat_stream_manager_truncated_raises_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    with pytest.raises(StreamTruncatedError) as excinfo:
        async with aclient.chat.completions.stream(
            model=MODEL, messages=MESSAGES, extra_headers=CUT
        ) as stream:
            [event async for event in stream]
    assert excinfo.value.reason == "eof_before_done"
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}


def test_responses_stream_manager_clean(
    chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    kwargs = responses_kwargs()
    with client.responses.stream(model=MODEL, input=kwargs["input"]) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_response()
    assert events[-1] == "response.completed"
    assert final.output_text == chaos.expected_text(kwargs)
    span = assert_one_stream(telemetry, "completed")
    assert span.attributes is not None
    assert span.attributes["gen_ai.response.id"] == final.id
    assert span.name == f"chat {MODEL}"


async def test_responses_stream_manager_clean_async(
    chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    kwargs = responses_kwargs()
    async with aclient.responses.stream(model=MODEL, input=kwargs["input"]) as stream:
        [event async for event in stream]
        final = await stream.get_final_response()
    assert final.output_text == chaos.expected_text(kwargs)
    span = assert_one_stream(telemetry, "completed")
    assert span.attributes is not None and span.attributes["gen_ai.response.id"] == final.id


def test_responses_stream_manager_truncated_raises(telemetry: Telemetry, client: openai.OpenAI) -> None:
    with (
        pytest.raises(StreamTruncatedError) as excinfo,
        client.responses.stream(model=MODEL, input="Tell me about streams", extra_headers=CUT) as stream,
    ):
        for _event in stream:
            pass
    assert excinfo.value.reason == "eof_before_done"
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"eof_before_done": 1}
    assert telemetry.value("openai_stream_in_flight") == 0


async def test_responses_stream_manager_truncated_raises_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    with pytest.raises(StreamTruncatedError):
        async with aclient.responses.stream(
            model=MODEL, input="Tell me about streams", extra_headers=CUT
        ) as stream:
            [event async for event in stream]
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}


def test_chat_stream_manager_early_exit_is_abandoned_when_dropped(
    telemetry: Telemetry, client: openai.OpenAI
) -> None:
    with client.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        for _event in stream:
            break
    del stream
    settle()
    assert_one_stream(telemetry, "abandoned")


def test_chat_stream_manager_early_exit_is_abandoned_at_exit(
    telemetry: Telemetry, client: openai.OpenAI
) -> None:
    with client.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        for _event in stream:
            break
    # The application still holds the helper stream here (documented SDK usage).
    at_exit = (
        telemetry.value("openai_stream_in_flight"),
        telemetry.by("openai_stream_requests_total", "outcome"),
        len(telemetry.spans()),
    )
    del stream  # release it before asserting, so a failure cannot leak it into later tests
    settle()
    assert at_exit == (0, {"abandoned": 1}, 1)


# -- tracing context ------------------------------------------------------------------------------


def test_span_is_not_left_current_sync(telemetry: Telemetry, client: openai.OpenAI) -> None:
    stream = open_chat(client)
    assert trace.get_current_span() is trace.INVALID_SPAN
    for _item in stream:
        assert trace.get_current_span() is trace.INVALID_SPAN
    assert trace.get_current_span() is trace.INVALID_SPAN
    span = assert_one_stream(telemetry, "completed")
    assert span.parent is None


async def test_span_is_not_left_current_async(telemetry: Telemetry, aclient: openai.AsyncOpenAI) -> None:
    stream = await aopen_chat(aclient)
    assert trace.get_current_span() is trace.INVALID_SPAN
    async for _item in stream:
        assert trace.get_current_span() is trace.INVALID_SPAN
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert telemetry.only_span().parent is None


def _check_parent(telemetry: Telemetry, app: trace.Span) -> None:
    spans = {s.name: s for s in telemetry.spans()}
    ours = spans[f"chat {MODEL}"]
    assert ours.parent is not None
    assert ours.parent.span_id == app.get_span_context().span_id
    assert ours.context is not None
    assert ours.context.trace_id == app.get_span_context().trace_id
    assert spans["app.handle"].parent is None


def test_app_span_is_the_parent_sync(telemetry: Telemetry, client: openai.OpenAI) -> None:
    tracer = telemetry.provider.get_tracer("app")
    with tracer.start_as_current_span("app.handle") as app:
        stream = open_chat(client)
        assert trace.get_current_span() is app
        for _item in stream:
            assert trace.get_current_span() is app
    _check_parent(telemetry, app)


async def test_app_span_is_the_parent_async(telemetry: Telemetry, aclient: openai.AsyncOpenAI) -> None:
    tracer = telemetry.provider.get_tracer("app")
    with tracer.start_as_current_span("app.handle") as app:
        stream = await aopen_chat(aclient)
        assert trace.get_current_span() is app
        async for _item in stream:
            assert trace.get_current_span() is app
    _check_parent(telemetry, app)


def test_app_span_closed_before_consumption_is_still_the_parent(
    telemetry: Telemetry, client: openai.OpenAI
) -> None:
    tracer = telemetry.provider.get_tracer("app")
    with tracer.start_as_current_span("app.handle") as app:
        stream = open_chat(client)
    list(stream)
    _check_parent(telemetry, app)


# -- closing while streamsentinel waits to open the stream again ------------------------------------

WAIT = 10.0  # the backoff before the reissue: far longer than a close takes to arrive
ROLE = sse(chat_chunk({"role": "assistant", "content": ""}))
WHOLE: list[bytes | Gate] = [
    ROLE,
    sse(chat_chunk({"content": "hi"})),
    sse(chat_chunk({}, finish_reason="stop")),
    DONE,
]


@dataclass(frozen=True, slots=True)
class _FixedBackoff(RetryPolicy):
    """The retry policy with a fixed backoff (the default's full jitter can draw ~0)."""

    def backoff(self, retry: int, server_delay: float | None, rand: Any = None) -> float:
        return WAIT


class _ReopenSpy(RecordingSink):
    """Sets ``reopening`` when streamsentinel decides to retry or resume (then it waits ``WAIT``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reopening = threading.Event()

    def event(self, stream: Any, event: Any, handle: Any) -> None:
        retry = isinstance(event, RetryEvent) and event.layer == "sentinel"
        if retry or (isinstance(event, ResumeEvent) and event.result == "started"):
            self.reopening.set()


# (phase, fault point): before output (a retry) and after output (a replay resume).
PENDING = [("retry", 1), ("resume", 3)]


def _instrument_reopening(phase: str) -> _ReopenSpy:
    spy = _ReopenSpy()
    streamsentinel.uninstrument()
    telemetry = make_telemetry(
        retry_attempts=3, retry_budget_min_retries=1000, retry_time_budget=600.0, sinks=[spy]
    )
    rt = telemetry.runtime
    rt.policy = _FixedBackoff(attempts=3, time_budget=600.0, resume="replay" if phase == "resume" else "off")
    return spy


def _assert_closed_read(items: list[Any], exc: BaseException | None, phase: str, after: int) -> None:
    # What the plain SDK's pending read raises when another thread/task closes its stream
    # (test_plain_sdk_pending_read_fails_when_closed): APIConnectionError from an httpx2.ReadError.
    assert type(exc) is openai.APIConnectionError
    assert isinstance(exc.__cause__, httpx2.ReadError)
    # Every item the broken attempt read, as the plain SDK delivers them (a retry's held role
    # chunk is handed out before the failing read), and none of a reopening.
    assert len(items) == after


@pytest.mark.parametrize(("phase", "after"), PENDING)
def test_close_from_another_thread_stops_a_pending_reopen(phase: str, after: int) -> None:
    """Issue 15, defect 3: close() from another thread while streamsentinel waits to retry (or
    resume) wins: no further request, the pending read fails as the plain SDK's, ``abandoned``."""
    spy = _instrument_reopening(phase)
    plan = FaultPlan(script=[FaultSpec(fault=Fault.RESET, after=after)])
    items: list[Any] = []
    failed: list[BaseException] = []
    try:
        with (
            ChaosServer(plan, chunks=5) as server,
            openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client,
            capture() as records,
        ):
            stream = open_chat(client)

            def read() -> None:
                try:
                    for item in stream:
                        items.append(item)
                except BaseException as exc:
                    failed.append(exc)

            reader = threading.Thread(target=read)
            reader.start()
            assert spy.reopening.wait(30), "streamsentinel never decided to reopen"
            stream.close()
            reader.join(30)
            assert not reader.is_alive()
            assert server.arrivals == 1
            with pytest.raises(StopIteration):
                next(stream)
        _assert_closed_read(items, failed[0] if failed else None, phase, after)
        assert [r.outcome for r in records] == ["abandoned"]
        assert server.arrivals == 1
    finally:
        streamsentinel.uninstrument()


@pytest.mark.parametrize(("phase", "after"), PENDING)
async def test_close_from_another_task_stops_a_pending_reopen(phase: str, after: int) -> None:
    """Issue 15, defect 3: close() from another task while streamsentinel waits to retry (or
    resume) wins: no further request, the pending read fails as the plain SDK's, ``abandoned``."""
    spy = _instrument_reopening(phase)
    plan = FaultPlan(script=[FaultSpec(fault=Fault.RESET, after=after)])
    items: list[Any] = []
    try:
        with ChaosServer(plan, chunks=5) as server, capture() as records:
            async with openai.AsyncOpenAI(
                base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
            ) as client:
                stream = await aopen_chat(client)

                async def read() -> BaseException | None:
                    try:
                        async for item in stream:
                            items.append(item)
                    except BaseException as exc:
                        return exc
                    return None

                reader = asyncio.create_task(read())
                assert await asyncio.to_thread(spy.reopening.wait, 30), "never decided to reopen"
                await stream.close()
                exc = await asyncio.wait_for(reader, 30)
                assert server.arrivals == 1
                with pytest.raises(StopAsyncIteration):
                    await stream.__anext__()
        _assert_closed_read(items, exc, phase, after)
        assert [r.outcome for r in records] == ["abandoned"]
        assert server.arrivals == 1
    finally:
        streamsentinel.uninstrument()


def test_plain_sdk_pending_read_fails_when_closed() -> None:
    """What the uninstrumented SDK does when another thread or task closes a stream whose read is
    pending: no further request; the read fails with APIConnectionError from an httpx2.ReadError
    (sync: once the blocked socket read returns, here when the server sends on; async: at once)."""
    streamsentinel.uninstrument()
    gate = Gate()
    parts: list[bytes | Gate] = [ROLE, gate, sse(chat_chunk({"content": "hi"})), DONE]
    with ScriptedServer(parts) as server:
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            next(stream)
            failed: list[BaseException] = []

            def read() -> None:
                try:
                    next(stream)
                except BaseException as exc:
                    failed.append(exc)

            reader = threading.Thread(target=read)
            reader.start()
            gate.wait_reached()
            wait_blocked_in_read(reader)
            stream.close()
            gate.release()
            reader.join(30)
        assert type(failed[0]) is openai.APIConnectionError
        assert isinstance(failed[0].__cause__, httpx2.ReadError)

        async def async_case() -> BaseException:
            async with openai.AsyncOpenAI(
                base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
            ) as aclient:
                astream = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
                await astream.__anext__()
                pending = asyncio.ensure_future(astream.__anext__())
                await asyncio.to_thread(second.wait_reached)
                await astream.close()
                try:
                    await asyncio.wait_for(pending, 30)
                except BaseException as exc:
                    return exc
                raise AssertionError("the pending read did not fail")

        second = Gate()
        server.parts = [parts[0], second, *parts[2:]]
        exc = asyncio.run(async_case())
        assert type(exc) is openai.APIConnectionError
        assert isinstance(exc.__cause__, httpx2.ReadError)
        assert server.requests == 2  # one per client: nothing re-sent


class _HeldReissue(ScriptedServer):
    """Request 1 gets ``first``; request 2 waits at ``gate`` before its headers, then gets ``second``."""

    def __init__(self, first: list[bytes | Gate], second: list[bytes | Gate]) -> None:
        super().__init__(first)
        self.second = second
        self.gate = Gate()

    def _arrived(self) -> None:
        super()._arrived()
        if self.requests == 2:
            self.parts = self.second
            self.gate._pass()

    def __enter__(self) -> _HeldReissue:
        super().__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.gate.release()
        super().__exit__(*exc_info)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_close_while_the_reissue_opens_wins(mode: str) -> None:
    """Issue 15, defect 3: close() while the retry's request is in flight: the stream it opens
    is closed unread, the pending read fails as the plain SDK's, ``abandoned``."""
    streamsentinel.uninstrument()
    make_telemetry(retry_attempts=3, retry_base_delay=0.0, retry_max_delay=0.0, retry_budget_min_retries=1000)
    items: list[Any] = []
    try:
        # Request 1 ends silently after its role chunk (before output, retried at once).
        with _HeldReissue([ROLE], WHOLE) as server, capture() as records:
            if mode == "sync":
                with openai.OpenAI(
                    base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
                ) as c:
                    stream = open_chat(c)
                    failed: list[BaseException] = []

                    def read() -> None:
                        try:
                            for item in stream:
                                items.append(item)
                        except BaseException as exc:
                            failed.append(exc)

                    reader = threading.Thread(target=read)
                    reader.start()
                    await asyncio.to_thread(server.gate.wait_reached)
                    await asyncio.to_thread(wait_blocked_in_read, reader)
                    stream.close()
                    server.gate.release()
                    reader.join(30)
                    assert not reader.is_alive()
                    exc: BaseException | None = failed[0] if failed else None
            else:
                async with openai.AsyncOpenAI(
                    base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
                ) as ac:
                    astream = await aopen_chat(ac)

                    async def aread() -> BaseException | None:
                        try:
                            async for item in astream:
                                items.append(item)
                        except BaseException as exc:
                            return exc
                        return None

                    task = asyncio.create_task(aread())
                    await asyncio.to_thread(server.gate.wait_reached)
                    await astream.close()
                    server.gate.release()
                    exc = await asyncio.wait_for(task, 30)
        assert items == []
        assert type(exc) is openai.APIConnectionError
        assert isinstance(exc.__cause__, httpx2.ReadError)
        assert [r.outcome for r in records] == ["abandoned"]
        assert server.requests == 2
    finally:
        streamsentinel.uninstrument()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_read_broken_by_close_is_not_retried(mode: str) -> None:
    """Issue 15, defect 3: close() from another thread or task while the SDK's read is pending
    (nothing delivered yet, so a retry would be possible): the read the close breaks fails with
    the SDK's exception, no retry is sent, ``abandoned``."""
    streamsentinel.uninstrument()
    make_telemetry(retry_attempts=3, retry_base_delay=0.0, retry_max_delay=0.0, retry_budget_min_retries=1000)
    gate = Gate()
    items: list[Any] = []
    try:
        with ScriptedServer([ROLE, gate, *WHOLE[1:]]) as server, capture() as records:
            if mode == "sync":
                with openai.OpenAI(
                    base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
                ) as c:
                    stream = open_chat(c)
                    failed: list[BaseException] = []

                    def read() -> None:
                        try:
                            for item in stream:
                                items.append(item)
                        except BaseException as exc:
                            failed.append(exc)

                    reader = threading.Thread(target=read)
                    reader.start()
                    await asyncio.to_thread(gate.wait_reached)
                    await asyncio.to_thread(wait_blocked_in_read, reader)
                    stream.close()
                    gate.release()  # the blocked socket read returns (see the plain SDK's test)
                    reader.join(30)
                    assert not reader.is_alive()
                    exc: BaseException | None = failed[0] if failed else None
            else:
                async with openai.AsyncOpenAI(
                    base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
                ) as ac:
                    astream = await aopen_chat(ac)

                    async def aread() -> BaseException | None:
                        try:
                            async for item in astream:
                                items.append(item)
                        except BaseException as exc:
                            return exc
                        return None

                    task = asyncio.create_task(aread())
                    await asyncio.to_thread(gate.wait_reached)
                    await astream.close()
                    exc = await asyncio.wait_for(task, 30)
        assert server.requests == 1
        assert type(exc) is openai.APIConnectionError
        assert isinstance(exc.__cause__, httpx2.ReadError)
        assert [r.outcome for r in records] == ["abandoned"]
        # The held role chunk is handed out before the read fails, as the plain SDK had delivered it.
        assert [item.choices[0].delta.role for item in items] == ["assistant"]
    finally:
        streamsentinel.uninstrument()


# -- "sixteen defects" issue, defect 1: a cancellation / KeyboardInterrupt propagates at once ----------------


class _InterruptingStream(httpx2.SyncByteStream):
    """The body as received, until the first complete SSE event; the next read is interrupted
    (KeyboardInterrupt: Ctrl-C while the client waits in a blocking read)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        seen = b""
        for data in self._inner:
            yield data
            seen += data
            if b"\n\n" in seen:
                raise KeyboardInterrupt

    def close(self) -> None:
        self._inner.close()


class _InterruptingTransport(httpx2.HTTPTransport):
    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        response.stream = _InterruptingStream(response.stream)
        return response


def _interrupted_reads(base_url: str) -> list[str]:
    """What three reads of a chat stream give when the read after the role chunk is interrupted."""
    outcomes: list[str] = []
    http_client = httpx2.Client(transport=_InterruptingTransport(), timeout=TIMEOUT)
    with sync_client(base_url, http_client=http_client) as client:
        stream = client.chat.completions.create(**chat_kwargs())
        for _ in range(3):
            try:
                next(stream)
            except (KeyboardInterrupt, StopIteration) as exc:
                outcomes.append(type(exc).__name__)
                if isinstance(exc, StopIteration):
                    break
            else:
                outcomes.append("item")
        with contextlib.suppress(Exception):
            stream.close()
    return outcomes


@pytest.mark.usefixtures("uninstrument_after")
def test_defect_01_keyboard_interrupt_propagates_at_once_sync() -> None:
    """A KeyboardInterrupt in the read after the held role chunk is raised by that read, as without us."""
    gate = Gate()
    with ScriptedServer([ROLE, gate, HELLO, STOP, DONE]) as server:
        streamsentinel.uninstrument()
        plain = _interrupted_reads(server.base_url)
        assert plain == ["item", "KeyboardInterrupt", "StopIteration"]
        reinstrument(**RETRYING)
        observed = _interrupted_reads(server.base_url)
    # The role chunk is held (no output yet): the interrupted read is the first one; it must raise
    # there, not hand out the held chunk and raise a stale KeyboardInterrupt on the next read.
    assert observed == plain[1:]


async def _timed_out_reads(base_url: str, gate: Gate) -> list[str]:
    """Reads of a chat stream whose server stalls after the role chunk: the first read waits for
    the role chunk to be written, the others are ``wait_for(anext(stream), 1.0)``."""
    outcomes: list[str] = []
    async with async_client(base_url) as client:
        stream = await client.chat.completions.create(**chat_kwargs())
        await asyncio.to_thread(gate.wait_reached)  # the role chunk is on the wire
        for _ in range(3):
            try:
                await asyncio.wait_for(anext(stream), 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError, StopAsyncIteration) as exc:
                outcomes.append(type(exc).__name__)
                if isinstance(exc, StopAsyncIteration):
                    break
            else:
                outcomes.append("item")
        with contextlib.suppress(Exception):
            await stream.close()
    return outcomes


@pytest.mark.usefixtures("uninstrument_after")
async def test_defect_01_cancellation_propagates_at_once_async() -> None:
    """wait_for(anext(stream)) on a stalled stream raises TimeoutError; no stale CancelledError follows."""
    gate = Gate()
    with ScriptedServer([ROLE, gate, HELLO, STOP, DONE]) as server:
        streamsentinel.uninstrument()
        plain = await _timed_out_reads(server.base_url, gate)
        assert plain == ["item", "TimeoutError", "StopAsyncIteration"]
        reinstrument(**RETRYING)
        observed = await _timed_out_reads(server.base_url, gate)
    # The role chunk is held: the first read is the one that times out; then the stream is over, as
    # the SDK's is after a cancelled read (never a CancelledError in a task nobody cancelled).
    assert observed == plain[1:]


# -- "sixteen defects" issue, defect 9: instrument() is atomic -----------------------------------------------


@pytest.mark.usefixtures("uninstrument_after")
def test_defect_09_failed_instrument_leaves_the_registry_usable(chaos: ChaosServer) -> None:
    """A registry collision raises, and once the collider is gone instrument(registry=r) works and counts."""
    streamsentinel.uninstrument()
    registry = CollectorRegistry()
    collider = Counter("openai_stream_retries", "Someone else's counter.", registry=registry)
    with pytest.raises(ValueError):
        streamsentinel.instrument(registry=registry, tracer_provider=TracerProvider(), **OBSERVE_ONLY)
    streamsentinel.uninstrument()
    registry.unregister(collider)

    streamsentinel.instrument(registry=registry, tracer_provider=TracerProvider(), **OBSERVE_ONLY)
    telemetry = Exported(registry, InMemorySpanExporter())
    result = run_sync(chaos.base_url, "chat")
    assert result.exc is None, repr(result.exc)
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}


# -- "sixteen defects" issue, defect 11: no asyncio noise from abandoned async streams -----------------------


async def _abandon_streams(base_url: str, count: int, reported: list[str]) -> None:
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        reported.append(f"{context.get('message')}: {context.get('exception')!r}")

    # Kept for the loop's whole life: asyncio.run() closes leftover async generators at its end.
    loop.set_exception_handler(handler)
    client = async_client(base_url)
    streams: list[Any] = []
    for _ in range(count):
        stream = await client.chat.completions.create(**chat_kwargs())
        await anext(stream)
        streams.append(stream)
    del stream
    streams.clear()  # dropped without close()
    gc.collect()
    for _ in range(20):
        await asyncio.sleep(0)
    await client.close()
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.mark.usefixtures("uninstrument_after")
def test_defect_11_abandoned_async_streams_make_no_loop_noise(
    chaos: ChaosServer, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 async streams read once and dropped unclosed: no loop exception-handler call, no unraisable."""
    reported: list[str] = []
    unraisable: list[str] = []

    def hook(unraisable_info: Any) -> None:
        unraisable.append(repr(unraisable_info.exc_value))

    monkeypatch.setattr(sys, "unraisablehook", hook)
    asyncio.run(_abandon_streams(chaos.base_url, 200, reported))
    gc.collect()
    assert reported == [], f"{len(reported)} loop errors, first: {reported[0]}"
    assert unraisable == [], f"{len(unraisable)} unraisable, first: {unraisable[0]}"
