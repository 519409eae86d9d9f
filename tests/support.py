"""Helpers shared by the tests: constants, request kwargs and the telemetry reader."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import httpx2
import openai
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import streamsentinel

# ../shared beside the checkout (read-only reference material; never copied into the repo).
SHARED = Path(__file__).resolve().parents[2] / "shared"
RECORDINGS_DIR = SHARED / "recorded-streams"

TIMEOUT = httpx2.Timeout(10.0, connect=2.0)
STALL_TIMEOUT = httpx2.Timeout(0.5, connect=2.0)
MODEL = "gpt-4o-mini"
LEGACY_TIMEOUT = httpx.Timeout(**TIMEOUT.as_dict())
HTTP_LIBRARIES = ["httpx2", "httpx"]
"""What an ``openai`` 3.x client can run on: its own ``httpx2`` (the default) or a legacy ``httpx``
client (``http_client=httpx.Client()``, as litellm passes on every call). The ``client`` and
``aclient`` fixtures run each test over both."""


def legacy_http_client(mode: str, **kwargs: Any) -> Any:
    """A legacy ``httpx.Client`` (``mode`` ``sync``) or ``httpx.AsyncClient`` for an ``openai``
    client's ``http_client`` (``Any``: the SDK annotates httpx2's only, though it takes both)."""
    kwargs.setdefault("timeout", LEGACY_TIMEOUT)
    return httpx.Client(**kwargs) if mode == "sync" else httpx.AsyncClient(**kwargs)


def sdk_client(mode: str, library: str, **kwargs: Any) -> Any:
    """An ``openai.OpenAI`` (``mode`` ``sync``) or ``openai.AsyncOpenAI`` over ``library``
    (``HTTP_LIBRARIES``), ``timeout`` ``TIMEOUT`` unless given; its ``close()`` closes the legacy
    client too."""
    kwargs.setdefault("timeout", TIMEOUT)
    if library == "httpx":
        timeout = kwargs["timeout"]
        legacy = httpx.Timeout(**timeout.as_dict()) if isinstance(timeout, httpx2.Timeout) else timeout
        kwargs["http_client"] = legacy_http_client(mode, timeout=legacy)
    return openai.OpenAI(**kwargs) if mode == "sync" else openai.AsyncOpenAI(**kwargs)


def http_library(client: Any) -> ModuleType:
    """The HTTP library under an ``openai`` client (its transport exceptions are that library's):
    legacy ``httpx`` when it was given one, else ``httpx2``."""
    return httpx if isinstance(client._client, (httpx.Client, httpx.AsyncClient)) else httpx2


@dataclass
class Telemetry:
    """What streamsentinel exported during a test."""

    registry: CollectorRegistry
    exporter: InMemorySpanExporter
    provider: TracerProvider
    runtime: Any  # the active streamsentinel._core.lifecycle.Runtime

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0.0 when none)."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Non-zero values of ``name`` per value of ``label``."""
        out: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    key = sample.labels.get(label, "")
                    out[key] = out.get(key, 0.0) + sample.value
        return {k: v for k, v in out.items() if v}

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def only_span(self) -> ReadableSpan:
        spans = self.spans()
        assert len(spans) == 1, [s.name for s in spans]
        return spans[0]


# Observation tests see each stream exactly as the server broke it: streamsentinel's own retries
# are off unless a test turns them on (tests/streams/test_retries.py), and a missing [DONE] is always a
# truncation (the fault server sends it; tests/streams/test_done_marker.py covers the other policies).
OBSERVE_ONLY: dict[str, Any] = {"retry_attempts": 1, "done_marker": "strict"}


def make_telemetry(**options: Any) -> Telemetry:
    options = {**OBSERVE_ONLY, **options}
    registry = CollectorRegistry()
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    streamsentinel.instrument(registry=registry, tracer_provider=provider, **options)
    return Telemetry(registry, exporter, provider, streamsentinel._runtime())


def chat_kwargs(**extra: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me about streams"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    kwargs.update(extra)
    return kwargs


def responses_kwargs(**extra: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": MODEL, "input": "Tell me about streams", "stream": True}
    kwargs.update(extra)
    return kwargs


def reinstrument(**options: Any) -> Telemetry:
    """``make_telemetry`` with non-default options (a fresh registry and span exporter)."""
    streamsentinel.uninstrument()
    return make_telemetry(**options)


def chat_text(items: Iterable[Any]) -> str:
    """The text of choice 0 carried by a list of ``ChatCompletionChunk``s."""
    return "".join(c.choices[0].delta.content or "" for c in items if c.choices and c.choices[0].index == 0)


def uncache_streamsentinel_loggers() -> None:
    """Forget the loggers structlog cached on streamsentinel's module-level ``get_logger()`` proxies.

    An application configuring ``cache_logger_on_first_use=True`` (the demo, run in-process by
    ``test_demo.py``) makes each proxy keep its first bound logger for good; ``reset_defaults()`` does
    not undo that, so later ``capture_logs()`` blocks would never see streamsentinel's events.
    """
    from streamsentinel import _log as log

    vars(log.STRUCTLOG).pop("bind", None)


def wait_blocked_in_read(thread: threading.Thread, timeout: float = 60.0) -> None:
    """Wait until ``thread`` is inside a network read of the HTTP stack (httpcore's or httpcore2's
    sync backend ``read``), so that a ``close()`` from another thread breaks that very read rather
    than landing before it begins (then the next read fails differently: ``StreamClosed``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or -1)
        while frame is not None:
            code = frame.f_code
            if code.co_name == "read" and "_backends" in code.co_filename:
                return
            frame = frame.f_back
        time.sleep(0.001)  # polling a fact, not waiting for time to pass
    raise AssertionError(f"{thread.name} never blocked in a network read")


def settle() -> None:
    """Wait until streams dropped without close() (queued by their finalizers) have been ended."""
    from streamsentinel.testing import settle as wait

    wait()


def breaker(telemetry: Telemetry, key: str) -> Any:
    """The in-process breaker for ``key`` (created on first use)."""
    return telemetry.runtime.circuits.store.get(key)
