"""Drop-in without surprises: logs off stdout, every call path observed, every stream failure
counted, timeouts that say whose they are, the SDK's own errors, options that explain themselves.
All over real loopback HTTP with the real SDK."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock

import openai
import pytest
import structlog
from openai._base_client import AsyncAPIClient, SyncAPIClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import streamsentinel
from streamsentinel import StreamTruncatedError
from streamsentinel._core import config
from streamsentinel.chaos import ChaosServer

from ..scripted import MODES, async_client, instrumentation_errors, sync_client
from ..support import TIMEOUT, Telemetry, breaker, chat_kwargs, reinstrument

CUT = {"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"}

# -- logs never land on the application's stdout -----------------------------------------------------

APP = """
import openai, streamsentinel
streamsentinel.instrument(retry_attempts=1)
client = openai.OpenAI(base_url={base_url!r}, api_key="k", max_retries=0)
try:
    for _ in client.chat.completions.create(
        model="m", messages=[{{"role": "user", "content": "hi"}}], stream=True,
        extra_headers={{"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"}},
    ):
        pass
except streamsentinel.StreamTruncatedError:
    print("APP-OUTPUT")
"""


def test_logs_never_reach_stdout_when_the_app_configured_nothing(chaos: ChaosServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSENTINEL_")}
    proc = subprocess.run(
        [sys.executable, "-c", APP.format(base_url=chaos.base_url)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "APP-OUTPUT\n"  # nothing of ours in the application's output
    # The truncation is a WARNING through `logging` (its last-resort handler: stderr).
    assert "stream.truncated" in proc.stderr
    assert "\x1b[" not in proc.stderr  # no colour console renderer


def test_unconfigured_structlog_logs_through_logging(
    telemetry: Telemetry, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    assert not structlog.is_configured()
    with caplog.at_level(logging.INFO, logger="streamsentinel"):
        list(client.chat.completions.create(**chat_kwargs()))
    finished = [
        r
        for r in caplog.records
        if r.name == "streamsentinel" and r.getMessage().startswith("stream.finished")
    ]
    assert len(finished) == 1
    fields = finished[0].streamsentinel  # type: ignore[attr-defined]
    assert (fields["event"], fields["outcome"], fields["chunks"]) == ("stream.finished", "completed", 8)
    assert finished[0].levelno == logging.INFO


# -- every call path is observed ------------------------------------------------------------------------


def _low_level(client: openai.OpenAI, headers: dict[str, str] | None = None) -> Any:
    """What litellm does: the SDK's low-level post with stream=True."""
    return client.post(
        "/chat/completions",
        body=chat_kwargs(),
        options={"headers": headers or {}},
        cast_to=ChatCompletion,
        stream=True,
        stream_cls=openai.Stream[ChatCompletionChunk],
    )


def test_low_level_post_stream_is_observed_with_its_429s_and_retries(chaos: ChaosServer) -> None:
    telemetry = reinstrument()
    with openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=2, timeout=TIMEOUT) as client:
        with pytest.raises(openai.RateLimitError):
            _low_level(client, {"x-chaos-fault": "insufficient_quota"})
        items = list(_low_level(client))
    assert len(items) == 8
    assert chaos.arrivals == 4  # 3 attempts of the quota failure, 1 clean
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"failed": 1, "completed": 1}
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"quota": 3}
    assert telemetry.by("openai_stream_retries_total", "layer") == {"sdk": 2}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"quota_exhausted": 1}


def test_create_captured_before_instrument_is_observed_from_the_request(chaos: ChaosServer) -> None:
    streamsentinel.uninstrument()
    with openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=1, timeout=TIMEOUT) as client:
        create = client.chat.completions.create  # as instructor.from_openai(client) keeps it
        telemetry = reinstrument()
        with pytest.raises(openai.RateLimitError):
            create(**chat_kwargs(extra_headers={"x-chaos-fault": "rate_limit_requests"}))
        with pytest.raises(StreamTruncatedError):
            list(create(**chat_kwargs(extra_headers=CUT)))
    assert chaos.arrivals == 3
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"failed": 1, "truncated": 1}
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"requests": 2}
    assert telemetry.by("openai_stream_retries_total", "layer") == {"sdk": 1}
    assert len(telemetry.spans()) == 2


# -- a stream whose server sent an error event is a failure, whatever the consumer does next ---------


def test_error_event_then_consumer_typeerror_is_a_failure(chaos: ChaosServer, client: openai.OpenAI) -> None:
    telemetry = reinstrument()
    headers = {
        "x-chaos-fault": "error_event_flat",
        "x-chaos-after": "3",
        "x-chaos-error-code": "server_error",
    }
    seen = 0
    stream = client.chat.completions.create(**chat_kwargs(extra_headers=headers))
    with pytest.raises(TypeError), stream:  # typical code: chunk.choices[0] on the error item
        for chunk in stream:
            _ = chunk.choices[0]
            seen += 1
    assert seen == 3
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"server_error": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"in_stream_error": 1}
    assert breaker(telemetry, "127.0.0.1/gpt-4o-mini").snapshot().failed_calls == 1


# -- a consumer that gives up on a stalled read leaves a stall ----------------------------------------


STALLED = {"x-chaos-fault": "stall_mid_stream", "x-chaos-after": "3", "x-chaos-stall-seconds": "60"}


async def test_framework_timeout_on_a_stalled_read_is_a_stall(chaos: ChaosServer) -> None:
    telemetry = reinstrument(gap_anomaly_seconds=0.2)
    async with openai.AsyncOpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as c:
        stream = await c.chat.completions.create(**chat_kwargs(extra_headers=STALLED))
        got = [await anext(stream) for _ in range(3)]
        # A framework's chunk timeout (langchain's stream_chunk_timeout): longer than the threshold.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.5)
        await stream.close()
    assert len(got) == 3
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"stall": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {"stall": 1}


async def test_giving_up_before_the_stall_threshold_is_an_abandon(chaos: ChaosServer) -> None:
    telemetry = reinstrument()  # threshold: gap_anomaly_seconds, 5 s
    async with openai.AsyncOpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as c:
        stream = await c.chat.completions.create(**chat_kwargs(extra_headers=STALLED))
        for _ in range(3):
            await anext(stream)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.05)
        await stream.close()
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"abandoned": 1}
    assert telemetry.value("openai_stream_errors_total") == 0


# -- a 429 whose body is cut reaches the consumer as the SDK's own error ------------------------------


class _Cut429(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "500")  # promised, never sent in full
        self.end_headers()
        self.wfile.write(b'{"error": {"code": "insufficient_qu')
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def cut_429() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Cut429)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _cut_429_error(base_url: str) -> BaseException:
    with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
        try:
            client.chat.completions.create(**chat_kwargs())
        except BaseException as exc:
            return exc
    raise AssertionError("no error")


def test_a_429_with_a_cut_body_raises_what_the_sdk_raises(cut_429: str) -> None:
    streamsentinel.uninstrument()
    plain = _cut_429_error(cut_429)
    telemetry = reinstrument()
    observed = _cut_429_error(cut_429)
    assert type(observed) is type(plain)
    assert str(observed) == str(plain)
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"failed": 1}
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"requests": 1}


# -- options and variables that explain themselves ------------------------------------------------------


def test_a_bad_option_names_itself_its_value_and_what_is_allowed() -> None:
    streamsentinel.uninstrument()
    with pytest.raises(ValueError, match=r"on_truncation='bogus': expected one of raise, record"):
        streamsentinel.instrument(on_truncation="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"retry_attempts=0: expected an integer >= 1"):
        streamsentinel.instrument(retry_attempts=0)
    with pytest.raises(TypeError, match=r"breaker=42: expected a streamsentinel.BreakerConfig"):
        streamsentinel.instrument(breaker=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"breaker: unknown field\(s\) threshold"):
        streamsentinel.instrument(breaker={"threshold": 5})  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"done_marker\['a'\]='maybe': expected one of auto, strict, lenient"
    ):
        streamsentinel.instrument(done_marker={"a": "maybe"})
    assert not streamsentinel.is_instrumented()


def test_a_breaker_given_as_a_mapping_is_a_breaker_config() -> None:
    assert config.breaker_config({"failure_rate_threshold": 25}).failure_rate_threshold == 25


def test_a_bad_variable_is_logged_with_its_value_and_what_is_allowed() -> None:
    with structlog.testing.capture_logs() as logs:
        settings = config.resolve({}, {"STREAMSENTINEL_RETRY_ATTEMPTS": "lots"})
    assert settings.retry_attempts == 3
    assert [(e["event"], e["variable"], e["value"], e["allowed"], e["using_default"]) for e in logs] == [
        ("config.invalid_env", "STREAMSENTINEL_RETRY_ATTEMPTS", "lots", "an integer >= 1", 3)
    ]


def test_unknown_variables_are_warned_once_with_the_closest_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_warned_unknown", False)
    environ = {"STREAMSENTINEL_RETRY_ATEMPTS": "2", "STREAMSENTINEL_ON_TRUNCATION": "record"}
    with structlog.testing.capture_logs() as logs:
        assert config.warn_unknown_variables(environ) == ["STREAMSENTINEL_RETRY_ATEMPTS"]
        assert config.warn_unknown_variables(environ) == ["STREAMSENTINEL_RETRY_ATEMPTS"]
    assert [(e["event"], e["variable"], e["did_you_mean"]) for e in logs] == [
        ("config.unknown_variable", "STREAMSENTINEL_RETRY_ATEMPTS", "STREAMSENTINEL_RETRY_ATTEMPTS")
    ]


# -- "sixteen defects" issue, defect 15: objects that only look like streams ---------------------------------


@pytest.mark.usefixtures("uninstrument_after")
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
