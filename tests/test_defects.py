"""Regression tests for the defects of issue "streamsentinel: sixteen defects" (one or more per defect).

Every test drives the real openai SDK over real HTTP on 127.0.0.1: the chaos server (the ``chaos``,
``client``, ``aclient`` and ``telemetry`` fixtures) or, for bodies it cannot produce,
``tests/defect_servers.ScriptedServer``, which serves a fixed body and can stop at a ``Gate`` until
the test releases it. Assertions are on what the consumer receives, the Prometheus samples, the
finished spans, the log events and the threads: nothing of streamsentinel's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import queue
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol
from unittest import mock

import httpx2
import openai
import pytest
import structlog
from openai._base_client import AsyncAPIClient, SyncAPIClient
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, NoOpTracerProvider, Span, Tracer
from opentelemetry.trace import TracerProvider as ApiTracerProvider
from prometheus_client import CollectorRegistry, Counter

import streamsentinel
from streamsentinel import BreakerConfig, StreamTruncatedError
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

from .defect_servers import DONE, Gate, ScriptedServer, chat_chunk, responses_event, sse
from .support import (
    OBSERVE_ONLY,
    TIMEOUT,
    Telemetry,
    chat_kwargs,
    chat_text,
    reinstrument,
    responses_kwargs,
)

MODES = ["sync", "async"]
APIS = ["chat", "responses"]
RECEIVE_TIMEOUT = 10.0  # how long a consumer may wait for an item the server has already sent
ITEMS = {"chat": 8, "responses": 13}  # items of a clean chaos stream of 5 pieces (chat: with usage)
# Retries on, without backoff or retry budget to speak of.
RETRYING: dict[str, Any] = {
    "retry_attempts": 3,
    "retry_base_delay": 0.0,
    "retry_max_delay": 0.0,
    "retry_budget_min_retries": 1000,
}

ROLE = sse(chat_chunk({"role": "assistant", "content": ""}))
HELLO = sse(chat_chunk({"content": "Hello"}))
STOP = sse(chat_chunk({}, finish_reason="stop"))
_RESPONSE: dict[str, Any] = {
    "id": "resp_defect",
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
IN_PROGRESS = responses_event({"type": "response.in_progress", "response": _RESPONSE, "sequence_number": 1})
COMPLETED = responses_event(
    {"type": "response.completed", "response": {**_RESPONSE, "status": "completed"}, "sequence_number": 9}
)


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _uninstrument_after() -> Iterator[None]:
    yield
    streamsentinel.uninstrument()


def sync_client(base_url: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT, **kwargs)


def async_client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT)


def request(api: str, **extra: Any) -> dict[str, Any]:
    return chat_kwargs(**extra) if api == "chat" else responses_kwargs(**extra)


def open_sync(client: openai.OpenAI, api: str, *, as_dict: bool = False, **extra: Any) -> Any:
    """A stream of ``api``; ``as_dict``: through ``with_raw_response ... parse(to=Stream[dict])``."""
    resource: Any = client.chat.completions if api == "chat" else client.responses
    if as_dict:
        raw = resource.with_raw_response.create(**request(api, **extra))
        return raw.parse(to=openai.Stream[dict[str, Any]])
    return resource.create(**request(api, **extra))


async def open_async(client: openai.AsyncOpenAI, api: str, *, as_dict: bool = False, **extra: Any) -> Any:
    resource: Any = client.chat.completions if api == "chat" else client.responses
    if as_dict:
        raw = await resource.with_raw_response.create(**request(api, **extra))
        return raw.parse(to=openai.AsyncStream[dict[str, Any]])
    return await resource.create(**request(api, **extra))


@dataclass
class Run:
    items: list[Any]
    exc: BaseException | None


def run_sync(base_url: str, api: str, **extra: Any) -> Run:
    items: list[Any] = []
    with sync_client(base_url) as client:
        try:
            stream = open_sync(client, api, **extra)
            for item in stream:
                items.append(item)
        except Exception as exc:
            return Run(items, exc)
    return Run(items, None)


async def run_async(base_url: str, api: str, **extra: Any) -> Run:
    items: list[Any] = []
    async with async_client(base_url) as client:
        try:
            stream = await open_async(client, api, **extra)
            async for item in stream:
                items.append(item)
        except Exception as exc:
            return Run(items, exc)
    return Run(items, None)


async def run(mode: str, base_url: str, api: str = "chat", **extra: Any) -> Run:
    # The sync client blocks the test's event loop; every server runs on its own thread.
    if mode == "sync":
        return run_sync(base_url, api, **extra)
    return await run_async(base_url, api, **extra)


@dataclass
class Exported:
    """What streamsentinel exported into a registry and span exporter of the test's own."""

    registry: CollectorRegistry
    exporter: InMemorySpanExporter

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0.0 when none)."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def by(self, name: str, label: str) -> dict[str, float]:
        """Non-zero values of ``name`` per value of ``label``."""
        out: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    key = sample.labels.get(label, "")
                    out[key] = out.get(key, 0.0) + sample.value
        return {k: v for k, v in out.items() if v}


class Readable(Protocol):
    def value(self, name: str, **labels: str) -> float: ...


def instrument_with(provider: ApiTracerProvider, **options: Any) -> Exported:
    """Instrument into a fresh registry with ``provider`` (retries off unless ``options`` say so);
    an SDK ``TracerProvider`` also gets an in-memory exporter."""
    streamsentinel.uninstrument()
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    streamsentinel.instrument(registry=registry, tracer_provider=provider, **{**OBSERVE_ONLY, **options})
    return Exported(registry, exporter)


def instrumentation_errors(telemetry: Readable) -> float:
    return telemetry.value("openai_stream_instrumentation_errors_total")


async def receive_while_gated(
    mode: str, server: ScriptedServer, gate: Gate, api: str, count: int, *, as_dict: bool = False
) -> list[Any]:
    """The first ``count`` items the consumer receives while the server waits at ``gate`` (fewer if
    they do not arrive within ``RECEIVE_TIMEOUT`` each); the gate is released afterwards."""
    got: list[Any] = []
    if mode == "sync":
        inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        with sync_client(server.base_url) as client:
            stream = open_sync(client, api, as_dict=as_dict)

            def consume() -> None:
                try:
                    for item in stream:
                        inbox.put(("item", item))
                    inbox.put(("end", None))
                except BaseException as exc:
                    inbox.put(("exc", exc))

            consumer = threading.Thread(target=consume, name="defect-consumer", daemon=True)
            consumer.start()
            try:
                while len(got) < count:
                    kind, value = inbox.get(timeout=RECEIVE_TIMEOUT)
                    if kind != "item":
                        break
                    got.append(value)
            except queue.Empty:
                pass
            finally:
                gate.release()
                consumer.join(timeout=30)
        return got
    async with async_client(server.base_url) as aclient:
        astream = await open_async(aclient, api, as_dict=as_dict)
        pending: asyncio.Future[Any] | None = None
        try:
            while len(got) < count:
                # asyncio.wait, not wait_for: a read that is late must not be cancelled (a
                # cancelled read may hand out what it held back), only left unfinished.
                read = asyncio.ensure_future(anext(astream))
                done, _ = await asyncio.wait({read}, timeout=RECEIVE_TIMEOUT)
                if not done:
                    pending = read
                    break
                if read.exception() is not None:
                    break
                got.append(read.result())
        finally:
            gate.release()
            if pending is not None:
                await asyncio.wait({pending}, timeout=30)
                if pending.done() and not pending.cancelled():
                    pending.exception()  # retrieved: never "exception was never retrieved"
            with contextlib.suppress(Exception):
                await astream.close()
    return got


def raising_processor(levels: frozenset[str] | None = None) -> Callable[..., Any]:
    """A structlog processor that raises for events of ``levels`` (None: every event) and drops
    the others."""

    def processor(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        if levels is None or method_name in levels:
            raise RuntimeError("log sink down")
        raise structlog.DropEvent

    return processor


class ExplodingOnStart(SpanProcessor):
    """A span processor whose ``on_start`` raises."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        raise RuntimeError("span processor exploded")


class BrokenTracer(NoOpTracer):
    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        raise RuntimeError("tracer exploded")


class BrokenTracerProvider(NoOpTracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        return BrokenTracer()


# -- 1. a cancellation / KeyboardInterrupt propagates at once --------------------------------------


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


# -- 2. items not known to carry no output are not held ---------------------------------------------

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


# -- 3. no secrets or prompts in internal-error logs ------------------------------------------------

SECRET_HEADER = "Bearer sk-HEADERSECRET42"
SECRET_PROMPT = "PROMPTSECRET77"


@pytest.mark.parametrize("mode", MODES)
async def test_defect_03_internal_error_log_carries_no_locals(mode: str, chaos: ChaosServer) -> None:
    """An instrumentation.error log line has no traceback with locals: no header secret, no prompt."""
    rendered: list[str] = []
    events: list[MutableMapping[str, Any]] = []

    def keep(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        events.append(dict(event_dict))
        rendered.append(json.dumps(event_dict, default=repr))
        raise structlog.DropEvent

    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.dict_tracebacks, keep],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    provider = TracerProvider()
    provider.add_span_processor(ExplodingOnStart())
    instrument_with(provider)
    extra = {
        "extra_headers": {"Authorization": SECRET_HEADER},
        "messages": [{"role": "user", "content": f"my password is {SECRET_PROMPT}"}],
    }
    result = await run(mode, chaos.base_url, "chat", **extra)
    assert result.exc is None, repr(result.exc)

    errors = [e for e in events if e.get("event") == "instrumentation.error"]
    assert errors, "the failing span processor was not reported"
    assert any("span processor exploded" in line for line in rendered), "the exception's message is missing"
    for line in rendered:
        assert SECRET_HEADER not in line and "HEADERSECRET42" not in line, line[:2000]
        assert SECRET_PROMPT not in line, line[:2000]
    for e in errors:
        assert "exception" not in e and "exc_info" not in e, sorted(e)


# -- 4. ending a stream is exception-proof -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_defect_04_debug_log_sink_failure_leaks_nothing(mode: str, chaos: ChaosServer) -> None:
    """A structlog processor that raises at DEBUG: in_flight back to 0 and exactly one span ended."""
    structlog.configure(
        processors=[raising_processor(frozenset({"debug"}))],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    telemetry = reinstrument()
    result = await run(mode, chaos.base_url, "chat")
    assert result.exc is None, repr(result.exc)
    assert len(result.items) == ITEMS["chat"]
    assert telemetry.value("openai_stream_in_flight") == 0
    assert len(telemetry.spans()) == 1
    assert telemetry.value("openai_stream_requests_total") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_defect_04_object_finish_reason_leaks_nothing(mode: str) -> None:
    """A finish_reason that is a JSON object: in_flight back to 0 and exactly one span ended."""
    telemetry = reinstrument()
    body: list[bytes | Gate] = [ROLE, HELLO, sse(chat_chunk({}, finish_reason={"type": "stop"})), DONE]
    with ScriptedServer(body) as server:
        result = await run(mode, server.base_url, "chat")
    assert result.exc is None, repr(result.exc)
    assert len(result.items) == 3
    assert telemetry.value("openai_stream_in_flight") == 0
    assert len(telemetry.spans()) == 1


# -- 5. a broken tracer does not switch off metrics or truncation detection -------------------------


def _broken_provider(kind: str) -> ApiTracerProvider:
    if kind == "span_processor":
        provider = TracerProvider()
        provider.add_span_processor(ExplodingOnStart())
        return provider
    return BrokenTracerProvider()


@pytest.mark.parametrize("broken", ["span_processor", "start_span"])
@pytest.mark.parametrize("mode", MODES)
async def test_defect_05_broken_tracer_keeps_truncation_and_metrics(
    mode: str, broken: str, chaos: ChaosServer
) -> None:
    """start_span/on_start raising: a cut stream still raises and is counted; one internal error."""
    telemetry = instrument_with(_broken_provider(broken))
    result = await run(mode, chaos.base_url, "chat", extra_headers={"x-chaos-fault": "eof_chunked"})
    assert isinstance(result.exc, StreamTruncatedError), repr(result.exc)
    assert result.exc.reason == "eof_before_done"
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"eof_before_done": 1}
    assert telemetry.value("openai_stream_in_flight") == 0
    assert instrumentation_errors(telemetry) == 1


# -- 6. a broken logger does not switch off retries --------------------------------------------------

HELD = {"chat": 1, "responses": 4}  # data events without output before the first output


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("mode", MODES)
async def test_defect_06_broken_logger_keeps_retries(mode: str, api: str) -> None:
    """With every log call raising, a stream cut before output is retried: full text, 2 requests."""
    structlog.configure(
        processors=[raising_processor()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    telemetry = reinstrument(**RETRYING)
    plan = FaultPlan(script=[FaultSpec(fault=Fault.EOF_CHUNKED, after=HELD[api]), FaultSpec()])
    with ChaosServer(plan, chunks=5) as server:
        result = await run(mode, server.base_url, api)
        assert result.exc is None, repr(result.exc)
        if api == "chat":
            text = chat_text(result.items)
        else:
            text = "".join(i.delta for i in result.items if i.type == "response.output_text.delta")
        assert text == server.expected_text(request(api))
        assert server.arrivals == 2
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}


# -- 7. non-string content does not stop StreamTruncatedError ----------------------------------------


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


# -- 8. odd but valid JSON is not our bug ------------------------------------------------------------

ODD_BODIES: dict[str, tuple[str, list[bytes | Gate]]] = {
    "delta_null": ("chat", [ROLE, HELLO, sse(chat_chunk(None)), STOP, DONE]),
    "top_level_list": ("chat", [ROLE, HELLO, sse([1, 2]), STOP, DONE]),
    "usage_string": (
        "chat",
        [ROLE, HELLO, sse({**chat_chunk({}), "choices": [], "usage": "plenty"}), STOP, DONE],
    ),
    "choices_object": ("chat", [ROLE, HELLO, sse({**chat_chunk({}), "choices": {"index": 0}}), STOP, DONE]),
    "response_null": (
        "responses",
        [
            responses_event({"type": "response.created", "response": None, "sequence_number": 0}),
            responses_event(
                {
                    "type": "response.output_text.delta",
                    "delta": "Hello",
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "logprobs": [],
                    "sequence_number": 1,
                }
            ),
            COMPLETED,
        ],
    ),
}


def _seen(result: Run) -> tuple[list[str], str | None]:
    return [f"{type(i).__name__}:{i!r}" for i in result.items], (
        None if result.exc is None else type(result.exc).__name__
    )


@pytest.mark.parametrize("body", sorted(ODD_BODIES))
@pytest.mark.parametrize("mode", MODES)
async def test_defect_08_odd_valid_json_is_no_instrumentation_error(mode: str, body: str) -> None:
    """Odd-but-valid JSON: 0 instrumentation errors; the consumer gets what the plain SDK yields."""
    api, parts = ODD_BODIES[body]
    with ScriptedServer(parts) as server:
        streamsentinel.uninstrument()
        plain = await run(mode, server.base_url, api)
        telemetry = reinstrument()
        observed = await run(mode, server.base_url, api)
    assert _seen(observed) == _seen(plain)
    assert instrumentation_errors(telemetry) == 0


# -- 9. instrument() is atomic -----------------------------------------------------------------------


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


# -- 10. a finalizer never takes a lock the user path can hold ---------------------------------------


def test_defect_10_stream_finalized_under_the_breaker_lock_does_not_deadlock(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    """An open stream dropped (finalized) while its breaker trips, inside the breaker, must not deadlock."""
    held: list[Any] = []
    hook_ran: list[bool] = []

    class DropStreamOnOpen(BreakerConfig):
        # Called by the breaker when it opens; drops the last reference to an un-closed stream
        # guarded by the same breaker, so its finalizer runs right here.
        def open_wait(self, attempts: int) -> float:
            if held:
                held.clear()
                gc.collect()
                hook_ran.append(True)
            return super().open_wait(attempts)

    config = DropStreamOnOpen(
        minimum_number_of_calls=1, sliding_window_size=1, timeout_streak_min_seconds=0.0
    )
    telemetry = reinstrument(breaker=config)
    held.append(client.chat.completions.create(**chat_kwargs()))
    next(held[0])  # the stream is open, its answer unfinished
    raised: list[BaseException] = []

    def failing_call() -> None:
        try:
            client.chat.completions.create(**chat_kwargs(extra_headers={"x-chaos-fault": "server_error"}))
        except Exception as exc:
            raised.append(exc)

    worker = threading.Thread(target=failing_call, name="defect-10-failing-call", daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():
        frames = sys._current_frames()
        stack = "".join(traceback.format_stack(frames[worker.ident])) if worker.ident in frames else ""
        pytest.fail(f"deadlock: the stream's finalizer waits for the breaker's lock\n{stack}")
    assert hook_ran, "the breaker never opened: the scenario was not exercised"
    assert len(raised) == 1 and isinstance(raised[0], openai.InternalServerError), raised
    assert telemetry.value("openai_stream_requests_total", outcome="failed") == 1


# -- 11. no asyncio noise from abandoned async streams -----------------------------------------------


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


# -- 12. uninstrument() stops the watchdog; instrument() again reconfigures --------------------------

WATCHDOG_THREAD = "streamsentinel-watchdog"


def _watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WATCHDOG_THREAD and t.is_alive()]


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
        assert _watchdog_threads() == []


def test_defect_12_instrument_again_reconfigures(chaos: ChaosServer) -> None:
    """instrument(on_truncation="record") after on_truncation="raise" applies: a cut stream does not raise."""
    telemetry = reinstrument(on_truncation="raise")
    streamsentinel.instrument(registry=telemetry.registry, on_truncation="record", **OBSERVE_ONLY)
    result = run_sync(chaos.base_url, "chat", extra_headers={"x-chaos-fault": "eof_chunked"})
    assert result.exc is None, repr(result.exc)
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}


# -- 13. a stream of items of a type we do not know --------------------------------------------------

DICT_OPTIONS: dict[str, dict[str, Any]] = {
    "retrying": RETRYING,
    "record": {"retry_attempts": 1, "on_truncation": "record"},
}


@pytest.mark.parametrize("options", sorted(DICT_OPTIONS))
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("mode", MODES)
async def test_defect_13_dict_stream_passes_through(mode: str, api: str, options: str) -> None:
    """parse(to=Stream[dict]): dicts, one HTTP request, outcome completed, no instrumentation error."""
    telemetry = reinstrument(**DICT_OPTIONS[options])
    with ChaosServer(chunks=5) as server:
        result = await run(mode, server.base_url, api, as_dict=True)
        assert result.exc is None, repr(result.exc)
        assert [type(i) for i in result.items] == [dict] * ITEMS[api]
        assert server.arrivals == 1
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert instrumentation_errors(telemetry) == 0


@pytest.mark.parametrize("mode", MODES)
async def test_defect_13_dict_items_are_not_held(mode: str) -> None:
    """parse(to=Stream[dict]) with retries on: items reach the consumer while the server still waits."""
    reinstrument(**RETRYING)
    gate = Gate()
    with ScriptedServer([ROLE, HELLO, gate, STOP, DONE]) as server:
        got = await receive_while_gated(mode, server, gate, "chat", 2, as_dict=True)
    assert len(got) == 2, f"only {len(got)} of 2 items reached the consumer before the rest"
    assert [type(i) for i in got] == [dict, dict]


# -- 14. a failure through the stream loop has repr()-able locals ------------------------------------


def _unreprable_locals(exc: BaseException) -> list[str]:
    """The locals of ``exc``'s traceback whose repr() raises, or returns while leaving an exception
    set in the interpreter (a C-level bug that surfaces at a later call: pytest's INTERNALERROR)."""
    failures: list[str] = []
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for name, value in list(frame.f_locals.items()):
            try:
                repr(value)
                sys.exc_info()  # a plain builtin call: fails (SystemError) if repr() left an error set
            except Exception as error:
                failures.append(f"{frame.f_code.co_name}: {name} ({type(value).__name__}): {error!r}")
    return failures


@pytest.mark.parametrize("mode", MODES)
async def test_defect_14_traceback_locals_are_reprable(
    mode: str, chaos: ChaosServer, telemetry: Telemetry
) -> None:
    """Every local of every frame of a mid-stream failure's traceback can be repr()'d."""
    extra = {"extra_headers": {"x-chaos-fault": "reset", "x-chaos-after": "2"}}
    caught: BaseException | None = None
    if mode == "sync":
        with sync_client(chaos.base_url) as c:
            stream = c.chat.completions.create(**chat_kwargs(**extra))
            try:
                for _ in stream:
                    pass
            except openai.APIConnectionError as exc:
                caught = exc
            assert caught is not None
            failures = _unreprable_locals(caught)  # while the consumer still holds the stream
            del stream
    else:
        async with async_client(chaos.base_url) as ac:
            astream = await ac.chat.completions.create(**chat_kwargs(**extra))
            try:
                async for _ in astream:
                    pass
            except openai.APIConnectionError as exc:
                caught = exc
            assert caught is not None
            failures = _unreprable_locals(caught)
            del astream
    assert failures == []


# -- 15. objects that only look like streams ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_defect_15_stream_lookalike_passes_through_quietly(mode: str, chaos: ChaosServer) -> None:
    """A MagicMock(spec=Stream) from create(): passed as is; no internal error, error log or bare span."""
    telemetry = reinstrument()
    with structlog.testing.capture_logs() as logs:
        if mode == "sync":
            fake: Any = mock.MagicMock(spec=openai.Stream)
            with (
                mock.patch.object(SyncAPIClient, "post", return_value=fake),
                sync_client(chaos.base_url) as c,
            ):
                result = c.chat.completions.create(**chat_kwargs())
        else:
            fake = mock.MagicMock(spec=openai.AsyncStream)
            with mock.patch.object(AsyncAPIClient, "post", new=mock.AsyncMock(return_value=fake)):
                async with async_client(chaos.base_url) as ac:
                    result = await ac.chat.completions.create(**chat_kwargs())
    assert result is fake
    assert instrumentation_errors(telemetry) == 0
    assert [e for e in logs if e.get("log_level") in ("error", "critical", "exception")] == []
    for span in telemetry.spans():
        assert span.attributes is not None and "streamsentinel.outcome" in span.attributes, span.name


# -- 16. a raw body read to its end is completed ------------------------------------------------------


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
