"""Settings resolution without I/O (``_core/config.py``): defaults, environment variables, explicit
values, invalid values."""

from __future__ import annotations

import pytest
import structlog

from streamsentinel._core.config import Settings, env_name, resolve

# -- config.resolve ------------------------------------------------------------------------------


def test_resolve_defaults() -> None:
    assert resolve({}, environ={}) == Settings()
    assert resolve({"on_truncation": None, "max_model_labels": None}, environ={}) == Settings()
    assert Settings() == Settings(
        on_truncation="raise",
        capture_content=False,
        chunk_events="anomalies",
        gap_anomaly_seconds=5.0,
        max_model_labels=100,
    )


def test_resolve_env_over_default() -> None:
    environ = {
        "STREAMSENTINEL_ON_TRUNCATION": "record",
        "STREAMSENTINEL_CAPTURE_CONTENT": "yes",
        "STREAMSENTINEL_CHUNK_EVENTS": " ALL ",
        "STREAMSENTINEL_GAP_ANOMALY_SECONDS": "0.25",
        "STREAMSENTINEL_MAX_MODEL_LABELS": "7",
    }
    assert resolve({}, environ=environ) == Settings("record", True, "all", 0.25, 7)


def test_resolve_explicit_over_env() -> None:
    environ = {
        "STREAMSENTINEL_ON_TRUNCATION": "record",
        "STREAMSENTINEL_CAPTURE_CONTENT": "true",
        "STREAMSENTINEL_CHUNK_EVENTS": "all",
        "STREAMSENTINEL_GAP_ANOMALY_SECONDS": "9",
        "STREAMSENTINEL_MAX_MODEL_LABELS": "9",
    }
    options = {
        "on_truncation": "raise",
        "capture_content": False,
        "chunk_events": "none",
        "gap_anomaly_seconds": 2.5,
        "max_model_labels": 3,
    }
    assert resolve(options, environ=environ) == Settings("raise", False, "none", 2.5, 3)


@pytest.mark.parametrize(
    ("option", "raw"),
    [
        ("on_truncation", "explode"),
        ("capture_content", "maybe"),
        ("chunk_events", "some"),
        ("gap_anomaly_seconds", "-1"),
        ("gap_anomaly_seconds", "soon"),
        ("max_model_labels", "0"),
        ("max_model_labels", "1.5"),
    ],
)
def test_resolve_invalid_env_falls_back_to_default(option: str, raw: str) -> None:
    with structlog.testing.capture_logs() as logs:
        settings = resolve({}, environ={env_name(option): raw})
    assert settings == Settings()
    assert [(e["event"], e["variable"], e["log_level"]) for e in logs] == [
        ("config.invalid_env", env_name(option), "warning")
    ]
    # The line says what was wrong and what to do: the value, what is allowed, the default used.
    [line] = logs
    assert line["value"] == raw
    assert line["allowed"] and line["using_default"] == getattr(Settings(), option)


def test_resolve_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSENTINEL_MAX_MODEL_LABELS", "11")
    assert resolve({}).max_model_labels == 11


def test_resolve_unknown_option_raises_type_error() -> None:
    with pytest.raises(TypeError, match="on_trunc"):
        resolve({"on_trunc": "raise"}, environ={})


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("on_truncation", "explode"),
        ("chunk_events", "every"),
        ("max_model_labels", 0),
        ("gap_anomaly_seconds", 0),
    ],
)
def test_resolve_invalid_explicit_option_raises_value_error(option: str, value: object) -> None:
    with pytest.raises(ValueError):
        resolve({option: value}, environ={})


def test_env_name() -> None:
    assert env_name("capture_content") == "STREAMSENTINEL_CAPTURE_CONTENT"
