"""Adopting streamsentinel safely: the ``mode`` switch, options checked at ``instrument()`` (never
first during an outage), environment variables that are logged and ignored, ``run`` serving
``/metrics`` beside an application that serves its own, and finding a truncation through a
framework's wrapper exception. Real SDK, real fault server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

import streamsentinel
from streamsentinel import BreakerConfig, StreamTruncatedError, find_truncation
from streamsentinel.chaos import ChaosServer
from streamsentinel.instrumentation import BaseSink, StreamRecord
from streamsentinel.metrics_server import RUN_SERVES_ENV, start_metrics_server
from streamsentinel.testing import capture

from ..support import MODEL, chat_kwargs

CUT = {"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"}
BEFORE_OUTPUT = {"x-chaos-fault": "reset", "x-chaos-after": "0"}


@pytest.fixture(autouse=True)
def _uninstrumented() -> Iterator[None]:
    streamsentinel.uninstrument()
    yield
    streamsentinel.uninstrument()


def _drain(stream: Any) -> tuple[int, BaseException | None]:
    items = 0
    try:
        with stream:
            for _ in stream:
                items += 1
    except Exception as exc:
        return items, exc
    return items, None


# -- mode -------------------------------------------------------------------------------------------


def test_observe_mode_changes_nothing_the_consumer_sees(chaos: ChaosServer, client: openai.OpenAI) -> None:
    """A cut stream ends as the SDK ends it (recorded, not raised); a failure before output is not
    retried (one HTTP request); the breaker computes but rejects nothing."""
    breaker = BreakerConfig(minimum_number_of_calls=2, sliding_window_size=2, timeout_streak_min_seconds=0)
    streamsentinel.instrument(mode="observe", registry=CollectorRegistry(), breaker=breaker)
    with capture() as records:
        cut = _drain(client.chat.completions.create(**chat_kwargs(extra_headers=CUT)))
        failures = [
            _drain(client.chat.completions.create(**chat_kwargs(extra_headers=BEFORE_OUTPUT)))
            for _ in range(4)
        ]
        streamsentinel.testing.settle()
    assert cut == (3, None)  # 3 data events, then a silent end, as the plain SDK ends it
    assert [type(exc).__name__ for _, exc in failures] == ["APIConnectionError"] * 4
    assert len(chaos.records) == 5  # no retry, and no call rejected by the (shadow) breaker
    assert (records[0].outcome, records[0].reason) == ("truncated", "eof_before_done")
    assert [r.outcome for r in records[1:]] == ["failed"] * 4
    runtime = streamsentinel._runtime()
    assert runtime.settings.mode == "observe"
    assert runtime.settings.on_truncation == "record"
    assert runtime.settings.retry_attempts == 1
    assert runtime.circuits.store.get(f"127.0.0.1/{MODEL}").config.mode == "shadow"


def test_protect_mode_is_todays_defaults(chaos: ChaosServer, client: openai.OpenAI) -> None:
    streamsentinel.instrument(mode="protect", registry=CollectorRegistry(), done_marker="strict")
    items, exc = _drain(client.chat.completions.create(**chat_kwargs(extra_headers=CUT)))
    assert (items, type(exc)) == (3, StreamTruncatedError)
    settings = streamsentinel._runtime().settings
    assert (settings.on_truncation, settings.retry_attempts) == ("raise", 3)


def test_options_refine_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSENTINEL_MODE", "observe")
    monkeypatch.setenv("STREAMSENTINEL_RETRY_ATTEMPTS", "2")  # a variable wins over the mode
    streamsentinel.instrument(registry=CollectorRegistry(), on_truncation="raise")  # so does an option
    settings = streamsentinel._runtime().settings
    assert (settings.mode, settings.on_truncation, settings.retry_attempts, settings.resume) == (
        "observe",
        "raise",
        2,
        "off",
    )


def test_the_opentelemetry_entry_point_defaults_to_observe(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamsentinel.otel_instrumentor import StreamSentinelInstrumentor

    monkeypatch.delenv("STREAMSENTINEL_MODE", raising=False)
    instrumentor = StreamSentinelInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider())
    try:
        assert streamsentinel._runtime().settings.mode == "observe"
    finally:
        instrumentor.uninstrument()
    monkeypatch.setenv("STREAMSENTINEL_MODE", "protect")
    instrumentor.instrument(tracer_provider=TracerProvider())
    try:
        assert streamsentinel._runtime().settings.mode == "protect"
    finally:
        instrumentor.uninstrument()


# -- options checked when instrument() is called -----------------------------------------------------


class _RaisingName:
    @property
    def name(self) -> str:
        raise RuntimeError("no")

    def start(self, stream: Any) -> None:
        return None

    def event(self, stream: Any, event: Any, handle: Any) -> None:
        return None

    def end(self, record: Any, handle: Any) -> None:
        return None


class _NoName:
    def start(self, stream: Any) -> None:
        return None

    def event(self, stream: Any, event: Any, handle: Any) -> None:
        return None

    def end(self, record: Any, handle: Any) -> None:
        return None


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"breaker_fallback": 42}, TypeError, "breaker_fallback=42: expected a model name or"),
        ({"breaker_key": 7}, TypeError, "breaker_key=7: expected (operation, server, model, request)"),
        (
            {"breaker_key": "{tenant}/{model}"},
            ValueError,
            "breaker_key='{tenant}/{model}': unknown field(s) tenant",
        ),
        ({"breaker_key": "{server"}, ValueError, "breaker_key='{server': not a format template"),
        (
            {"sinks": [object()]},
            TypeError,
            "sinks[0]=<builtins.object>: expected a streamsentinel.instrumentation.Sink",
        ),
        (
            {"sinks": [_NoName()]},
            TypeError,
            f"sinks[0]=<{__name__}._NoName>: name must be a non-empty str",
        ),
        ({"sinks": "prometheus"}, TypeError, "sinks='prometheus': expected a list"),
        (
            {"sinks": [_RaisingName()]},
            TypeError,
            f"sinks[0]=<{__name__}._RaisingName>: reading .name raised RuntimeError",
        ),
        ({"registry": "x"}, TypeError, "registry='x': expected a prometheus_client.CollectorRegistry"),
        (
            {"tracer_provider": object()},
            TypeError,
            "tracer_provider=<builtins.object>: expected an OpenTelemetry",
        ),
        ({"meter_provider": 3}, TypeError, "meter_provider=3: expected an OpenTelemetry MeterProvider"),
        ({"breaker_store": object()}, TypeError, "breaker_store=<builtins.object>: expected a BreakerStore"),
        (
            {"retry_base_delay": 10, "retry_max_delay": 1},
            ValueError,
            "retry_base_delay=10 and retry_max_delay=1: expected retry_base_delay <= retry_max_delay",
        ),
        ({"mode": "shadow"}, ValueError, "option mode='shadow': expected one of observe, protect"),
    ],
)
def test_a_bad_option_is_one_line_at_instrument(options: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error) as raised:
        streamsentinel.instrument(**{"registry": CollectorRegistry(), **options})
    text = str(raised.value)
    assert message in text and "\n" not in text, text
    assert not streamsentinel.is_instrumented()  # nothing was patched


def test_a_breaker_key_template_keys_the_breakers(chaos: ChaosServer, client: openai.OpenAI) -> None:
    streamsentinel.instrument(registry=CollectorRegistry(), breaker_key="{model}@{server}")
    assert _drain(client.chat.completions.create(**chat_kwargs())) == (8, None)
    names = sorted(b.name for b in streamsentinel._runtime().circuits.store.breakers())
    assert names == [f"{MODEL}@127.0.0.1"]


class Counting(BaseSink):
    def __init__(self) -> None:
        self.records: list[StreamRecord] = []

    def end(self, record: StreamRecord, handle: Any) -> None:
        self.records.append(record)


def test_a_base_sink_subclass_needs_only_what_it_uses(chaos: ChaosServer, client: openai.OpenAI) -> None:
    sink = Counting()
    assert sink.name == "counting"
    streamsentinel.instrument(registry=CollectorRegistry(), sinks=[sink])
    assert _drain(client.chat.completions.create(**chat_kwargs())) == (8, None)
    assert [r.outcome for r in sink.records] == ["completed"]


# -- environment variables: logged and ignored -------------------------------------------------------


@pytest.mark.parametrize("url", ["not-a-url://x", "redis://:secret-pw@127.0.0.1:1/0?bogus=1&db=x"])
def test_a_bad_redis_url_variable_leaves_fleet_mode_off(
    url: str, chaos: ChaosServer, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSENTINEL_REDIS_URL", url)
    with structlog.testing.capture_logs() as logs:
        streamsentinel.instrument(registry=CollectorRegistry())
    assert _drain(client.chat.completions.create(**chat_kwargs())) == (8, None)
    assert streamsentinel._runtime().fleet is None
    if url.startswith("not"):
        [line] = [e for e in logs if e["event"] == "config.invalid_env"]
        assert line["variable"] == "STREAMSENTINEL_REDIS_URL"
    assert "secret-pw" not in repr(logs)


def test_a_redis_url_variable_without_the_extra_leaves_fleet_mode_off(chaos: ChaosServer) -> None:
    """In a process where ``import redis`` fails (the extra is not installed)."""
    script = (
        "import sys; sys.modules['redis'] = None\n"
        "import openai, streamsentinel\n"
        "streamsentinel.instrument()\n"
        "c = openai.OpenAI(base_url=sys.argv[1], api_key='k', max_retries=0)\n"
        "s = c.chat.completions.create(model='m', messages=[], stream=True)\n"
        "print(type(s).__name__, sum(1 for _ in s), streamsentinel._runtime().fleet)\n"
    )
    env = {**os.environ, "STREAMSENTINEL_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run(
        [sys.executable, "-c", script, chaos.base_url], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ObservedStream 7 None\n"
    assert done.stderr.count("config.invalid_env") == 1
    assert "streamsentinel[redis]" in done.stderr


def test_rate_limit_pause_without_redis_says_so_once() -> None:
    with structlog.testing.capture_logs() as logs:
        streamsentinel.instrument(registry=CollectorRegistry(), rate_limit_pause="wait")
    assert [e["option"] for e in logs if e["event"] == "config.needs_fleet"] == ["rate_limit_pause"]


# -- run serves /metrics; the application's own start_metrics_server() does not crash -------------------


def test_start_metrics_server_under_run_serves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamsentinel import metrics_server

    monkeypatch.setattr(metrics_server, "_told", False)
    monkeypatch.setenv(RUN_SERVES_ENV, "http://127.0.0.1:9464/metrics")
    with structlog.testing.capture_logs() as logs:
        first = start_metrics_server(9464)
        second = start_metrics_server(9464)  # a second worker in the same process: still no bind
    for server, thread in (first, second):
        assert server.server_port == 9464
        thread.join(timeout=5)
        server.shutdown()
        server.server_close()
    assert [e["event"] for e in logs] == ["metrics.served_by_run"]


def test_start_metrics_server_errors_name_the_port() -> None:
    with pytest.raises(ValueError, match=r"start_metrics_server\(port='abc'\): expected an integer port"):
        start_metrics_server("abc")  # type: ignore[arg-type]
    server, _ = start_metrics_server(0)
    try:
        port = server.server_port
        with pytest.raises(OSError, match=f"cannot serve /metrics on 127.0.0.1:{port}"):
            start_metrics_server(port)
    finally:
        server.shutdown()
        server.server_close()


def test_an_app_serving_its_own_metrics_runs_under_run(chaos: ChaosServer) -> None:
    """The README's snippet (instrument() + start_metrics_server(9464)) under `run` on the same port."""
    from .test_launcher import _env, _free_port, _launcher

    port = _free_port()
    app = (
        "import sys, openai, streamsentinel\n"
        "streamsentinel.instrument()\n"
        f"streamsentinel.start_metrics_server({port})\n"
        "c = openai.OpenAI(base_url=sys.argv[1], api_key='k', max_retries=0)\n"
        "s = c.chat.completions.create(model='m', messages=[], stream=True)\n"
        "print(sum(1 for _ in s))\n"
    )
    argv = [*_launcher(), "run", "--metrics-port", str(port), "--", sys.executable, "-c", app, chaos.base_url]
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(chaos), timeout=120)
    assert (done.returncode, done.stdout) == (0, "7\n"), done.stderr
    assert "Address already in use" not in done.stderr
    assert done.stderr.count("metrics.served_by_run") == 1


# -- a truncation through a framework's wrapper ------------------------------------------------------


class FrameworkError(Exception):
    """What a client framework raises from the SDK's error (as litellm, langchain or pydantic-ai do)."""


def test_find_truncation_walks_causes_contexts_and_groups(chaos: ChaosServer, client: openai.OpenAI) -> None:
    streamsentinel.instrument(registry=CollectorRegistry(), done_marker="strict", retry_attempts=1)
    _, truncation = _drain(client.chat.completions.create(**chat_kwargs(extra_headers=CUT)))
    assert isinstance(truncation, StreamTruncatedError)
    try:
        try:
            raise truncation
        except StreamTruncatedError as exc:
            raise FrameworkError("stream failed") from exc
    except FrameworkError as wrapped:
        by_cause = wrapped
    try:
        try:
            raise truncation
        except StreamTruncatedError:
            raise FrameworkError("while handling") from None  # context kept, cause suppressed
    except FrameworkError as wrapped:
        by_context = wrapped
    assert find_truncation(by_cause) is truncation
    assert find_truncation(by_context) is truncation
    if sys.version_info >= (3, 11):
        group = ExceptionGroup("tasks", [ValueError("other"), FrameworkError("x")])  # noqa: F821
        group.exceptions[1].__cause__ = truncation
        assert find_truncation(group) is truncation
    assert find_truncation(FrameworkError("unrelated")) is None
    assert find_truncation(None) is None
    assert truncation.reason == "eof_before_done" and truncation.chunks_received == 3


def test_find_truncation_survives_a_cycle() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert find_truncation(a) is None
