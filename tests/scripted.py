"""Running the real openai SDK against a ``ScriptedServer`` (``defect_servers.py``) or the chaos
server and keeping what the consumer saw: clients, one stream read to its end (``run``), the first
items received while the server waits at a ``Gate`` (``receive_while_gated``), the scripted bodies
shared by several feature files, and instrumenting into a registry and span exporter of the test's
own (``instrument_with``). Assertions stay in the tests: on what the consumer receives, the
Prometheus samples, the finished spans, the log events and the threads."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import openai
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import TracerProvider as ApiTracerProvider
from prometheus_client import CollectorRegistry

import streamsentinel

from .defect_servers import Gate, ScriptedServer, chat_chunk, responses_event, sse
from .support import OBSERVE_ONLY, TIMEOUT, chat_kwargs, responses_kwargs

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
