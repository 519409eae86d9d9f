"""Typed configuration (issue 17): the public option objects (``RetryConfig``, ``TimeoutConfig``,
``FleetConfig``, ``TelemetryConfig``) check themselves over the same domains as the
``STREAMSENTINEL_*`` variables, keep today's precedence (explicit > variable > mode > default), are
the same configuration as the flat keywords still accepted (both given: ``TypeError``); built-in
sinks can be dropped; ``capture()`` attaches its recording sink for its block only, so a runtime
carries no testing sink. Real SDK, real fault server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry

import streamsentinel
from streamsentinel import FleetConfig, RetryConfig, TelemetryConfig, TimeoutConfig
from streamsentinel.chaos import ChaosServer
from streamsentinel.testing import RecordingSink, capture

from ..support import chat_kwargs

CUT = {"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"}


@pytest.fixture(autouse=True)
def _uninstrumented(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("STREAMSENTINEL_"):
            monkeypatch.delenv(name)
    streamsentinel.uninstrument()
    yield
    streamsentinel.uninstrument()


def _drain(stream: Any) -> int:
    items = 0
    with stream:
        for _ in stream:
            items += 1
    return items


def _settings() -> Any:
    return streamsentinel._runtime().settings


# -- each object checks itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: RetryConfig(attempts=0), ValueError, "RetryConfig.attempts=0: expected an integer >= 1"),
        (
            lambda: RetryConfig(attempts=True),
            ValueError,
            "RetryConfig.attempts=True: expected an integer >= 1",
        ),
        (
            lambda: RetryConfig(attempts=1.5),  # type: ignore[arg-type]
            ValueError,
            "RetryConfig.attempts=1.5: expected an integer >= 1",
        ),
        (lambda: RetryConfig(base_delay=-1), ValueError, "RetryConfig.base_delay=-1: expected a number >= 0"),
        (
            lambda: RetryConfig(budget_ratio=1.5),
            ValueError,
            "RetryConfig.budget_ratio=1.5: expected a number >= 0 and <= 1",
        ),
        (
            lambda: RetryConfig(budget_window=0),
            ValueError,
            "RetryConfig.budget_window=0: expected a number > 0",
        ),
        (
            lambda: RetryConfig(resume="later"),  # type: ignore[arg-type]
            ValueError,
            "RetryConfig.resume='later': expected one of off, replay, responses",
        ),
        (
            lambda: RetryConfig(base_delay=3, max_delay=1),
            ValueError,
            "RetryConfig base_delay=3 and max_delay=1: expected base_delay <= max_delay",
        ),
        (lambda: TimeoutConfig(stall=-1), ValueError, "TimeoutConfig.stall=-1: expected a number >= 0"),
        (
            lambda: TimeoutConfig(first_token="soon"),  # type: ignore[arg-type]
            ValueError,
            "TimeoutConfig.first_token='soon': expected a number >= 0",
        ),
        (
            lambda: FleetConfig(prefix="a b"),
            ValueError,
            "FleetConfig.prefix='a b': expected 1 to 100 printable characters without spaces",
        ),
        (lambda: FleetConfig(timeout=0), ValueError, "FleetConfig.timeout=0: expected a number > 0"),
        (
            lambda: FleetConfig(min_processes=0),
            ValueError,
            "FleetConfig.min_processes=0: expected an integer >= 1",
        ),
        (
            lambda: FleetConfig(rate_limit_pause="maybe"),  # type: ignore[arg-type]
            ValueError,
            "FleetConfig.rate_limit_pause='maybe': expected one of off, wait, reject",
        ),
        (
            lambda: FleetConfig(quota_pause=-5),
            ValueError,
            "FleetConfig.quota_pause=-5: expected a number > 0",
        ),
        (
            lambda: FleetConfig(redis_url=5),  # type: ignore[arg-type]
            TypeError,
            "FleetConfig.redis_url: expected a string such as redis://host:6379/0",
        ),
        (
            lambda: FleetConfig(redis_client=object()),
            TypeError,
            "FleetConfig.redis_client=object: expected a redis.Redis client",
        ),
        (
            lambda: TelemetryConfig(capture_content="maybe"),  # type: ignore[arg-type]
            ValueError,
            "TelemetryConfig.capture_content='maybe': expected true or false (1/0, yes/no, on/off)",
        ),
        (
            lambda: TelemetryConfig(chunk_events="every"),  # type: ignore[arg-type]
            ValueError,
            "TelemetryConfig.chunk_events='every': expected one of anomalies, all, none",
        ),
        (
            lambda: TelemetryConfig(gap_anomaly=0),
            ValueError,
            "TelemetryConfig.gap_anomaly=0: expected a number > 0",
        ),
        (
            lambda: TelemetryConfig(max_label_sets=1.5),  # type: ignore[arg-type]
            ValueError,
            "TelemetryConfig.max_label_sets=1.5: expected an integer > 0",
        ),
    ],
)
def test_an_option_object_names_the_field_the_value_and_what_is_allowed(
    build: Any, error: type[Exception], message: str
) -> None:
    """Issue 17, typed configuration: each object validates itself in one line."""
    with pytest.raises(error) as raised:
        build()
    assert str(raised.value) == message


def test_option_objects_normalise_like_the_variables_and_are_frozen() -> None:
    """Issue 17, typed configuration: one domain per option (text read as a variable would be,
    an int where a float goes made a float), frozen, the Redis URL never in ``repr``."""
    assert RetryConfig(attempts="2", resume=" Replay ").options() == {  # type: ignore[arg-type]
        "retry_attempts": 2,
        "resume": "replay",
    }
    stall = TimeoutConfig(stall=5).stall
    assert stall == 5.0 and isinstance(stall, float)
    assert TelemetryConfig(capture_content=True, gap_anomaly=2).options() == {
        "capture_content": True,
        "gap_anomaly_seconds": 2.0,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryConfig().attempts = 3  # type: ignore[misc]
    assert "secret" not in repr(FleetConfig(redis_url="redis://:secret@127.0.0.1:1/0"))


# -- precedence: explicit > variable > mode > default ---------------------------------------------------


def test_a_field_left_out_reads_its_variable_and_a_field_given_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, typed configuration: a ``None`` field falls back to ``STREAMSENTINEL_*``."""
    monkeypatch.setenv("STREAMSENTINEL_RETRY_ATTEMPTS", "4")
    monkeypatch.setenv("STREAMSENTINEL_STALL_TIMEOUT", "7")
    monkeypatch.setenv("STREAMSENTINEL_REDIS_PREFIX", "env:")
    monkeypatch.setenv("STREAMSENTINEL_MAX_LABEL_SETS", "11")
    streamsentinel.instrument(
        registry=CollectorRegistry(),
        retry=RetryConfig(base_delay=0.1),
        timeouts=TimeoutConfig(first_token=3),
        fleet=FleetConfig(timeout=0.5),
        telemetry=TelemetryConfig(max_model_labels=9),
    )
    s = _settings()
    assert (s.retry_attempts, s.retry_base_delay, s.stall_timeout, s.first_token_timeout) == (
        4,
        0.1,
        7.0,
        3.0,
    )
    assert (s.redis_prefix, s.redis_timeout, s.max_label_sets, s.max_model_labels) == ("env:", 0.5, 11, 9)
    streamsentinel.instrument(
        registry=CollectorRegistry(),
        retry=RetryConfig(attempts=2),
        timeouts=TimeoutConfig(stall=1),
        fleet=FleetConfig(prefix="code:"),
        telemetry=TelemetryConfig(max_label_sets=5),
    )
    s = _settings()
    assert (s.retry_attempts, s.stall_timeout, s.redis_prefix, s.max_label_sets) == (2, 1.0, "code:", 5)


def test_mode_sets_the_defaults_under_the_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, typed configuration: ``observe``'s defaults, refined by a field or a variable."""
    streamsentinel.instrument(registry=CollectorRegistry(), mode="observe")
    s = _settings()
    assert (s.mode, s.on_truncation, s.retry_attempts, s.resume, s.rate_limit_pause) == (
        "observe",
        "record",
        1,
        "off",
        "off",
    )
    assert streamsentinel._runtime().circuits.store.config.mode == "shadow"
    streamsentinel.instrument(
        registry=CollectorRegistry(), mode="observe", retry=RetryConfig(attempts=3, resume="replay")
    )
    assert (_settings().retry_attempts, _settings().resume) == (3, "replay")
    monkeypatch.setenv("STREAMSENTINEL_MODE", "observe")
    monkeypatch.setenv("STREAMSENTINEL_RETRY_ATTEMPTS", "2")
    streamsentinel.instrument(registry=CollectorRegistry(), retry=RetryConfig(max_delay=1))
    assert (_settings().mode, _settings().retry_attempts, _settings().retry_max_delay) == ("observe", 2, 1.0)


# -- the flat keywords: the same configuration ------------------------------------------------------------


def test_flat_keywords_are_the_fields_of_the_objects() -> None:
    """Issue 17, typed configuration: ``retry_attempts=2`` is ``retry=RetryConfig(attempts=2)``:
    instrumenting with one then the other is a no-op (the same runtime)."""
    registry = CollectorRegistry()
    streamsentinel.instrument(
        registry=registry,
        retry_attempts=2,
        resume="replay",
        stall_timeout=5,
        redis_prefix="p:",
        quota_pause_seconds=9,
        capture_content=True,
        gap_anomaly_seconds=2,
    )
    runtime = streamsentinel._runtime()
    streamsentinel.instrument(
        registry=registry,
        retry=RetryConfig(attempts=2, resume="replay"),
        timeouts=TimeoutConfig(stall=5.0),
        fleet=FleetConfig(prefix="p:", quota_pause=9),
        telemetry=TelemetryConfig(capture_content=True, gap_anomaly=2),
    )
    assert streamsentinel._runtime() is runtime
    s = runtime.settings
    assert (s.retry_attempts, s.resume, s.stall_timeout, s.redis_prefix, s.quota_pause_seconds) == (
        2,
        "replay",
        5.0,
        "p:",
        9.0,
    )
    assert (s.capture_content, s.gap_anomaly_seconds) == (True, 2.0)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"retry_attempts": 2, "retry": RetryConfig()},
            TypeError,
            "retry_attempts= and retry= both given: set attempts in retry=RetryConfig(...) only",
        ),
        (
            {"stall_timeout": 2, "timeouts": TimeoutConfig(first_token=1)},
            TypeError,
            "stall_timeout= and timeouts= both given: set stall in timeouts=TimeoutConfig(...) only",
        ),
        (
            {"redis_url": "redis://127.0.0.1:1/0", "fleet": FleetConfig(prefix="x:")},
            TypeError,
            "redis_url= and fleet= both given: set redis_url in fleet=FleetConfig(...) only",
        ),
        (
            {"max_label_sets": 3, "telemetry": TelemetryConfig(max_label_sets=3)},
            TypeError,
            "max_label_sets= and telemetry= both given",
        ),
        (
            {"retry": {"attempts": 2}},
            TypeError,
            "retry=<builtins.dict>: expected a streamsentinel.RetryConfig",
        ),
        ({"retry_atempts": 2}, TypeError, "unexpected keyword argument 'retry_atempts' (did you mean"),
        (
            {"retry_attempts": 0},
            ValueError,
            "streamsentinel option retry_attempts=0: expected an integer >= 1",
        ),
        (
            {"builtin_sinks": ("prom",)},
            ValueError,
            "builtin_sinks: unknown sink 'prom'; built-in: otel_trace",
        ),
        ({"builtin_sinks": "prometheus"}, TypeError, "builtin_sinks='prometheus': expected a collection"),
    ],
)
def test_a_flat_keyword_and_its_object_both_given_is_a_type_error(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Issue 17, typed configuration: one way per option at a time; nothing is patched then."""
    with pytest.raises(error) as raised:
        streamsentinel.instrument(registry=CollectorRegistry(), **options)
    text = str(raised.value)
    assert message in text and "\n" not in text, text
    assert not streamsentinel.is_instrumented()


# -- built-in sinks can be dropped ---------------------------------------------------------------------


def test_builtin_sinks_keeps_only_the_named_ones(chaos: ChaosServer, client: openai.OpenAI) -> None:
    """Issue 17, typed configuration: ``builtin_sinks`` drops Prometheus (no family registered,
    no sample) while the other sinks and the user's still get every record."""
    registry = CollectorRegistry()
    mine = RecordingSink()
    streamsentinel.instrument(
        registry=registry, builtin_sinks=("otel_trace", "otel_metrics", "structlog"), sinks=[mine]
    )
    names = [sink.name for sink in streamsentinel._runtime().emitter.sinks]
    assert names == ["otel_trace", "otel_metrics", "structlog", "recording"]
    assert _drain(client.chat.completions.create(**chat_kwargs())) == 8
    assert [r.outcome for r in mine.records] == ["completed"]
    assert list(registry.collect()) == []
    streamsentinel.instrument(registry=registry, builtin_sinks=(), sinks=[mine])
    assert streamsentinel._runtime().emitter.sinks == (mine,)
    assert _drain(client.chat.completions.create(**chat_kwargs())) == 8
    assert [r.outcome for r in mine.records] == ["completed", "completed"]
    assert list(registry.collect()) == []
    streamsentinel.instrument(registry=registry)  # the default: all four again
    names = [sink.name for sink in streamsentinel._runtime().emitter.sinks]
    assert names == ["otel_trace", "prometheus", "otel_metrics", "structlog"]


# -- capture(): a recording sink for its block only ----------------------------------------------------


def test_a_runtime_carries_no_testing_sink_and_capture_still_records(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    """Issue 17, typed configuration: ``capture()`` attaches its sink for the block: records of
    the streams that end inside it (one opened before the block included, one under an
    ``instrument()`` made inside it too), nothing after it, no sink left behind."""
    streamsentinel.instrument(registry=CollectorRegistry(), on_truncation="record")
    runtime = streamsentinel._runtime()
    assert not [s for s in runtime.emitter.sinks if type(s).__module__ == "streamsentinel.testing"]
    assert _drain(client.chat.completions.create(**chat_kwargs())) == 8  # ends before any block
    early = client.chat.completions.create(**chat_kwargs(extra_headers=CUT))
    next(iter(early))  # open, not ended
    with capture() as records:
        assert len(runtime.emitter._attached) == 1
        for _ in early:
            pass
        early.close()
        streamsentinel.instrument(registry=CollectorRegistry(), on_truncation="record", stall_timeout=60)
        assert streamsentinel._runtime() is not runtime
        assert _drain(client.chat.completions.create(**chat_kwargs())) == 8  # under the new runtime
    assert [(r.outcome, r.reason) for r in records] == [("truncated", "eof_before_done"), ("completed", None)]
    assert runtime.emitter._attached == () and streamsentinel._runtime().emitter._attached == ()
    assert _drain(client.chat.completions.create(**chat_kwargs())) == 8  # after the block
    assert len(records) == 2


def test_instrument_does_not_import_the_testing_module() -> None:
    """Issue 17, typed configuration: runtime code does not import ``streamsentinel.testing``."""
    code = (
        "import sys, streamsentinel\n"
        "from prometheus_client import CollectorRegistry\n"
        "streamsentinel.instrument(registry=CollectorRegistry())\n"
        "print('streamsentinel.testing' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_the_resilience_types_are_public() -> None:
    """Issue 17, typed configuration: every type a user passes is importable from a public module."""
    from streamsentinel import resilience
    from streamsentinel._resilience import circuit, resume, store

    assert resilience.BreakerStore is store.BreakerStore
    assert resilience.BreakerKey is circuit.BreakerKey and resilience.Fallback is circuit.Fallback
    assert resilience.ResumeStrategy is resume.ResumeStrategy
    assert {"Permit", "BreakerResult", "BreakerConfig", "State"} <= set(resilience.__all__)
    assert {"RetryConfig", "TimeoutConfig", "FleetConfig", "TelemetryConfig"} <= set(streamsentinel.__all__)
