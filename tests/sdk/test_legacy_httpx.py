"""An ``openai`` client on a legacy ``httpx`` client (``http_client=httpx.Client()``, as litellm passes
on every call): every place streamsentinel touches a response body, a header or a transport exception
works on what that library built, and the consumer sees what the plain SDK gives it. Real loopback
HTTP against the chaos server (its scripted plan answers each HTTP attempt in arrival order)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

import streamsentinel
from streamsentinel import StreamTimeoutError
from streamsentinel._core.ratelimit import scan_headers
from streamsentinel._core.taxonomy import Failure, classify_request_exception, transport_error_type
from streamsentinel._sdk import compat
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec, RequestRecord

from ..support import Telemetry, chat_kwargs, legacy_http_client, make_telemetry, reinstrument, settle

MODES = ["sync", "async"]
CHAT_ITEMS = 8


@dataclass
class Seen:
    items: list[dict[str, Any]]  # each chunk's model_dump(), without its clock (``_timeless``)
    exc: BaseException | None


def _timeless(item: Any) -> dict[str, Any]:
    """A chunk's fields but ``created`` (the server's clock in whole seconds: two runs compared
    item by item may straddle a second on a slow machine)."""
    dumped: dict[str, Any] = item.model_dump()
    dumped.pop("created", None)
    return dumped


def run_sync(server: ChaosServer) -> Seen:
    items: list[dict[str, Any]] = []
    with (
        legacy_http_client("sync") as http,
        openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=2, http_client=http) as client,
    ):
        try:
            with client.chat.completions.create(**chat_kwargs()) as stream:
                items.extend(_timeless(item) for item in stream)
        except openai.APIError as exc:
            return Seen(items, exc)
    return Seen(items, None)


async def run_async(server: ChaosServer) -> Seen:
    items: list[dict[str, Any]] = []
    async with (
        legacy_http_client("async") as http,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=2, http_client=http) as client,
    ):
        try:
            async with await client.chat.completions.create(**chat_kwargs()) as stream:
                async for item in stream:
                    items.append(_timeless(item))
        except openai.APIError as exc:
            return Seen(items, exc)
    return Seen(items, None)


async def run(mode: str, server: ChaosServer) -> Seen:
    # The sync client blocks the test's event loop; the server runs on its own thread.
    return run_sync(server) if mode == "sync" else await run_async(server)


def scripted(*script: FaultSpec) -> Callable[[], ChaosServer]:
    return lambda: ChaosServer(FaultPlan(script=list(script)), chunks=5)


@dataclass
class Compared:
    plain: Seen
    observed: Seen
    records: list[RequestRecord]  # of the observed run
    telemetry: Telemetry  # of the observed run


async def plain_and_observed(mode: str, server: Callable[[], ChaosServer], attempts: int) -> Compared:
    """The same scenario run by the plain SDK, then observed (with the ``telemetry`` fixture's
    options); each makes ``attempts`` HTTP requests."""
    streamsentinel.uninstrument()
    with server() as plain_server:
        plain = await run(mode, plain_server)
        assert len(plain_server.wait_for_records(attempts)) == attempts
    telemetry = make_telemetry()
    with server() as observed_server:
        observed = await run(mode, observed_server)
        records = observed_server.wait_for_records(attempts)
    return Compared(plain, observed, records, telemetry)


RATE_LIMITED = FaultSpec(fault=Fault.RATE_LIMIT_REQUESTS, retry_after_ms=1)
QUOTA = FaultSpec(fault=Fault.INSUFFICIENT_QUOTA, retry_after_ms=1)


@pytest.mark.parametrize("mode", MODES)
async def test_a_429_then_a_stream_is_retried_by_the_sdk(mode: str, telemetry: Telemetry) -> None:
    """Issue 15, defect 1: over a legacy httpx client, a 429 before the stream is retried by the SDK
    and the consumer gets the stream exactly as without streamsentinel (the 429 body read ahead is
    put back as the legacy library's own byte stream)."""
    seen = await plain_and_observed(mode, scripted(RATE_LIMITED, FaultSpec()), 2)
    tel = seen.telemetry

    assert seen.plain.exc is None and len(seen.plain.items) == CHAT_ITEMS
    assert seen.observed.exc is None
    assert seen.observed.items == seen.plain.items
    assert [r.fault for r in seen.records] == [Fault.RATE_LIMIT_REQUESTS, Fault.NONE]
    assert tel.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert tel.by("openai_stream_rate_limit_events_total", "kind") == {"requests": 1}
    assert tel.by("openai_stream_retries_total", "reason", layer="sdk") == {"rate_limited": 1}
    assert tel.by("openai_stream_errors_total", "error_type") == {}
    assert tel.value("openai_stream_in_flight") == 0
    assert tel.value("openai_stream_instrumentation_errors_total") == 0


@pytest.mark.parametrize("mode", MODES)
async def test_a_quota_429_is_retried_then_the_sdks_error(mode: str, telemetry: Telemetry) -> None:
    """Issue 15, defect 1: over a legacy httpx client, a quota 429 makes the SDK's 3 HTTP requests
    (max_retries=2) and ends in the SDK's own ``RateLimitError``, each 429 counted as ``quota``."""
    seen = await plain_and_observed(mode, scripted(QUOTA, QUOTA, QUOTA), 3)
    tel = seen.telemetry

    assert type(seen.plain.exc) is openai.RateLimitError
    assert type(seen.observed.exc) is openai.RateLimitError
    assert seen.observed.exc.args == seen.plain.exc.args
    assert seen.observed.items == seen.plain.items == []
    assert [r.fault for r in seen.records] == [Fault.INSUFFICIENT_QUOTA] * 3
    assert tel.by("openai_stream_requests_total", "outcome") == {"failed": 1}
    assert tel.by("openai_stream_errors_total", "error_type") == {"quota_exhausted": 1}
    assert tel.by("openai_stream_rate_limit_events_total", "kind") == {"quota": 3}
    assert tel.by("openai_stream_retries_total", "reason", layer="sdk") == {"quota_exhausted": 2}
    assert tel.value("openai_stream_in_flight") == 0
    assert tel.value("openai_stream_instrumentation_errors_total") == 0


# -- raw reads of the body ---------------------------------------------------------------------------


def raw_bytes_sync(server: ChaosServer, api: str) -> bytes:
    with (
        legacy_http_client("sync") as http,
        openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, http_client=http) as client,
    ):
        if api == "with_raw_response":
            raw = client.chat.completions.with_raw_response.create(**chat_kwargs())
            body = b"".join(raw.http_response.iter_bytes())
            del raw
            return body
        with client.chat.completions.with_streaming_response.create(**chat_kwargs()) as response:
            return b"".join(response.iter_bytes())


async def raw_bytes_async(server: ChaosServer, api: str) -> bytes:
    async with (
        legacy_http_client("async") as http,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0, http_client=http) as client,
    ):
        if api == "with_raw_response":
            raw = await client.chat.completions.with_raw_response.create(**chat_kwargs())
            body = b"".join([chunk async for chunk in raw.http_response.aiter_bytes()])
            del raw
            return body
        async with client.chat.completions.with_streaming_response.create(**chat_kwargs()) as response:
            return b"".join([chunk async for chunk in response.iter_bytes()])


@pytest.mark.parametrize("api", ["with_raw_response", "with_streaming_response"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_raw_read_to_the_end_is_completed(
    mode: str, api: str, chaos: ChaosServer, telemetry: Telemetry
) -> None:
    """Issue 15, defect 1: over a legacy httpx client, a raw read of the body to its end records
    the request ``completed`` (the body is watched in the legacy library's byte stream), not
    ``abandoned`` when the response is collected."""
    body = raw_bytes_sync(chaos, api) if mode == "sync" else await raw_bytes_async(chaos, api)
    settle()

    assert body.endswith(b"data: [DONE]\n\n")
    assert len(chaos.wait_for_records(1)) == 1
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0
    assert len(telemetry.spans()) == 1


# -- transport exceptions of the legacy library ------------------------------------------------------


def test_legacy_transport_exceptions_are_classified() -> None:
    """Issue 15, defect 1: a legacy httpx timeout is a ``timeout`` (not a ``connection_error``),
    and an SDK timeout caused by a legacy ``ConnectTimeout`` a ``connect_timeout``."""
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert transport_error_type(httpx.ReadTimeout("slow", request=request)) == "timeout"
    assert transport_error_type(httpx.ConnectTimeout("slow", request=request)) == "timeout"
    assert transport_error_type(httpx.ConnectError("refused", request=request)) == "connection_error"
    timed_out = openai.APITimeoutError(request=httpx2.Request("POST", "http://127.0.0.1/v1"))
    timed_out.__cause__ = httpx.ConnectTimeout("slow", request=request)
    assert classify_request_exception(timed_out) == Failure("connect_timeout")
    timed_out.__cause__ = httpx.ReadTimeout("slow", request=request)
    assert classify_request_exception(timed_out) == Failure("timeout")


def never_connects(request: Any) -> Any:
    raise request_library(request).ConnectTimeout("timed out", request=request)


def request_library(request: Any) -> Any:
    return httpx if isinstance(request, httpx.Request) else httpx2


def http_client(library: str, mode: str) -> Any:
    """A client of ``library`` whose every connection attempt times out (its transport raises the
    library's own ``ConnectTimeout``, as its connection pool would)."""
    module: Any = httpx if library == "httpx" else httpx2
    if mode == "sync":
        return module.Client(transport=module.MockTransport(never_connects))
    return module.AsyncClient(transport=module.MockTransport(never_connects))


@pytest.mark.parametrize("library", ["httpx2", "httpx"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_connect_timeout_is_classified(mode: str, library: str, telemetry: Telemetry) -> None:
    """Issue 15, defect 1: over either library, connect timeouts are SDK retries for ``timeout``
    and end the request as ``connect_timeout``, with the SDK's own ``APITimeoutError``."""
    raised: BaseException | None = None
    kwargs: dict[str, Any] = {"base_url": "http://127.0.0.1:9/v1", "api_key": "k", "max_retries": 1}
    if mode == "sync":
        with http_client(library, mode) as http, openai.OpenAI(http_client=http, **kwargs) as client:
            try:
                client.chat.completions.create(**chat_kwargs())
            except openai.APIError as exc:
                raised = exc
    else:
        async with (
            http_client(library, mode) as ahttp,
            openai.AsyncOpenAI(http_client=ahttp, **kwargs) as aclient,
        ):
            try:
                await aclient.chat.completions.create(**chat_kwargs())
            except openai.APIError as exc:
                raised = exc

    assert type(raised) is openai.APITimeoutError
    assert type(raised.__cause__) is request_library(raised.request).ConnectTimeout
    assert telemetry.by("openai_stream_retries_total", "reason", layer="sdk") == {"timeout": 1}
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"failed": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"connect_timeout": 1}
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0


# -- the watchdog ------------------------------------------------------------------------------------

WATCHDOG = 0.3  # stall_timeout, seconds


@pytest.mark.parametrize("mode", MODES)
async def test_the_watchdog_ends_a_stalled_legacy_stream(mode: str, telemetry: Telemetry) -> None:
    """Issue 15, defect 1 (audit; held before the fix too): over a legacy httpx client, the watchdog
    finds the response's socket (``network_stream`` extension) and ends a stalled stream (``stall``)."""
    telemetry = reinstrument(stall_timeout=WATCHDOG)
    stall = FaultSpec(fault=Fault.STALL_MID_STREAM, after=3, stall_seconds=30.0)
    with scripted(stall)() as server:
        seen = await run(mode, server)  # client read timeout 10 s: the watchdog ends the read
        records = server.wait_for_records(1)

    assert type(seen.exc) is StreamTimeoutError, repr(seen.exc)
    assert (seen.exc.kind, seen.exc.timeout) == ("stall", WATCHDOG)
    assert len(seen.items) == 3
    assert records[0].client_disconnected
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"stall": 1}
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0


# -- headers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("library", ["httpx2", "httpx"])
def test_headers_are_read_alike(library: str) -> None:
    """Issue 15, defect 1 (audit; held before the fix too): a legacy ``httpx.Headers`` keeps the
    same ``(name, lower-case name, value)`` list as httpx2's, read for rate-limit headers and the
    content type without a copy."""
    module: Any = httpx if library == "httpx" else httpx2
    sent = [
        ("X-RateLimit-Remaining-Tokens", "7"),
        ("Content-Type", "text/event-stream"),
        ("x-request-id", "r1"),
    ]
    headers = module.Headers(sent)
    triples = compat.header_triples(headers)
    assert triples == [(k.encode(), k.lower().encode(), v.encode()) for k, v in sent]
    assert compat.header(headers, b"content-type") == "text/event-stream"
    assert scan_headers(headers, triples) == ("r1", ((b"x-ratelimit-remaining-tokens", b"7"),))
    assert scan_headers(headers) == scan_headers(headers, triples)


NO_LEGACY = """
import sys
import openai
import streamsentinel
from prometheus_client import CollectorRegistry
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

streamsentinel.instrument(registry=CollectorRegistry())
request = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
limited = FaultSpec(fault=Fault.RATE_LIMIT_REQUESTS, retry_after_ms=1)
with ChaosServer(FaultPlan(script=[limited, FaultSpec(), limited]), chunks=5) as server:
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=2) as client:
        assert len(list(client.chat.completions.create(**request))) == 7
        with client.chat.completions.with_streaming_response.create(**request) as response:
            assert b"".join(response.iter_bytes()).endswith(b"[DONE]\\n\\n")
        try:
            list(client.chat.completions.create(**request, extra_headers={"x-chaos-fault": "reset"}))
        except openai.APIConnectionError:  # its cause: an httpx2.ReadError, classified
            pass
sys.exit(3 if "httpx" in sys.modules else 0)
"""


def test_legacy_httpx_is_never_imported() -> None:
    """Issue 15, defect 1 (the fix's promise): an application on httpx2 only never gets legacy
    ``httpx`` imported by streamsentinel (a 429's body read ahead, a raw read, a cut classified)."""
    src = str(Path(streamsentinel.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", NO_LEGACY], env=env, timeout=120, check=False)
    assert done.returncode == 0
