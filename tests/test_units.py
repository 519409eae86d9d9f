"""Pure unit tests: rate-limit parsing, settings resolution, the failure taxonomy, bounded labels."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx2
import openai
import pytest
import structlog

from streamsentinel import StreamTruncatedError
from streamsentinel._core.config import Settings, env_name, resolve
from streamsentinel._core.lifecycle import OTHER, OVERFLOW, BoundedLabel, LabelSets
from streamsentinel._core.ratelimit import (
    RateLimitKind,
    RateLimitSnapshot,
    classify_429,
    error_fields,
    parse_go_duration,
    parse_headers,
    retry_delay_seconds,
)
from streamsentinel._core.taxonomy import (
    ErrorType,
    Failure,
    TruncationReason,
    classify_error_code,
    classify_in_stream_event,
    classify_request_exception,
    classify_stream_exception,
    is_cancellation,
    silent_end_failure,
)

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")

# Error bodies as the OpenAI API sends them (the SDK keeps the inner ``error`` object as ``exc.body``).
RPM = {
    "message": "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in 20s.",
    "type": "requests",
    "param": None,
    "code": "rate_limit_exceeded",
}
TPM = {
    "message": "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): "
    "Limit 30000, Used 29000, Requested 1500. Please try again in 644ms.",
    "type": "tokens",
    "param": None,
    "code": "rate_limit_exceeded",
}
QUOTA = {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota",
    "param": None,
    "code": "insufficient_quota",
}
TOO_LARGE = {
    "message": "Request too large for gpt-4o-mini in organization org-x on tokens per min (TPM): "
    "Limit 30000, Requested 50000.",
    "type": "tokens",
    "param": None,
    "code": "rate_limit_exceeded",
}


# -- parse_go_duration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12ms", 0.012),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("23h47m36.648s", 23 * 3600 + 47 * 60 + 36.648),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("250us", 250e-6),
        ("250µs", 250e-6),
        ("100ns", 100e-9),
        ("1h", 3600.0),
        (" 2m30s ", 150.0),
    ],
)
def test_parse_go_duration_valid(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("text", ["", "   ", "bad", "1x", "1", "s", "1s2", "m1s", "1.5.5s", "-1s", "1 s"])
def test_parse_go_duration_invalid(text: str) -> None:
    assert parse_go_duration(text) is None


# -- parse_headers -------------------------------------------------------------------------------


FULL_HEADERS = {
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-remaining-tokens": "1999000",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-reset-tokens": "6m0s",
}


def test_parse_headers_httpx_headers() -> None:
    headers = httpx2.Headers({"content-type": "text/event-stream", **FULL_HEADERS})
    assert parse_headers(headers) == [
        RateLimitSnapshot("requests", 5000, 4999, 0.012),
        RateLimitSnapshot("tokens", 2_000_000, 1_999_000, 360.0),
    ]


def test_parse_headers_case_insensitive() -> None:
    headers = httpx2.Headers({k.upper(): v for k, v in FULL_HEADERS.items()})
    assert [s.resource for s in parse_headers(headers)] == ["requests", "tokens"]
    assert parse_headers(headers)[0].limit == 5000


def test_parse_headers_plain_mapping() -> None:
    assert parse_headers(dict(FULL_HEADERS)) == parse_headers(httpx2.Headers(FULL_HEADERS))


def test_parse_headers_none_present() -> None:
    assert parse_headers(httpx2.Headers({"content-type": "application/json"})) == []
    assert parse_headers({}) == []


def test_parse_headers_partial_and_malformed() -> None:
    headers = httpx2.Headers(
        {
            "x-ratelimit-remaining-requests": "7",
            "x-ratelimit-limit-requests": "many",
            "x-ratelimit-reset-requests": "soon",
        }
    )
    # Only the requests resource is present; malformed values are None, never an exception.
    assert parse_headers(headers) == [RateLimitSnapshot("requests", None, 7, None)]


def test_parse_headers_resource_with_only_malformed_values_is_skipped() -> None:
    assert parse_headers(httpx2.Headers({"x-ratelimit-limit-tokens": "lots"})) == []


# -- classify_429 / error_fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (RPM, "requests"),
        (TPM, "tokens"),
        (QUOTA, "quota"),
        (TOO_LARGE, "too_large"),
        ({"error": RPM}, "requests"),
        ({"error": TPM}, "tokens"),
        ({"error": QUOTA}, "quota"),
        ({"error": TOO_LARGE}, "too_large"),
    ],
)
def test_classify_429_by_body(body: dict[str, Any], kind: str) -> None:
    assert classify_429(body) == kind


def test_classify_429_without_body_uses_headers() -> None:
    exhausted_tokens = httpx2.Headers(
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-remaining-requests": "9"}
    )
    assert classify_429(None, exhausted_tokens) == "tokens"
    assert classify_429("not json", httpx2.Headers({"x-ratelimit-remaining-requests": "0"})) == "requests"
    assert classify_429(None) == "requests"


def test_classify_429_body_wins_over_headers() -> None:
    assert classify_429(QUOTA, httpx2.Headers({"x-ratelimit-remaining-tokens": "0"})) == "quota"


def test_error_fields() -> None:
    assert error_fields({"error": QUOTA}) == ("insufficient_quota", "insufficient_quota", QUOTA["message"])
    assert error_fields({"code": 42, "type": None, "message": ["x"]}) == (None, None, "")
    assert error_fields(None) == (None, None, "")
    assert error_fields([1, 2]) == (None, None, "")


# -- retry_delay_seconds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message", "delay"),
    [
        ({"retry-after-ms": "644"}, "", 0.644),
        ({"retry-after": "3"}, "", 3.0),
        ({"retry-after": "1.5"}, "", 1.5),
        ({"retry-after-ms": "20", "retry-after": "1"}, "", 0.020),
        ({}, "Rate limit reached. Please try again in 644ms. Visit ...", 0.644),
        ({}, "Please try again in 3.1s.", 3.1),
        (None, "Please Try Again In 20s", 20.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, "", None),
        ({"retry-after-ms": "soon"}, "try again in 2s", 2.0),
        ({}, "", None),
        (None, "try again later", None),
    ],
)
def test_retry_delay_seconds(headers: dict[str, str] | None, message: str, delay: float | None) -> None:
    got = retry_delay_seconds(httpx2.Headers(headers) if headers is not None else None, message)
    if delay is None:
        assert got is None
    else:
        assert got == pytest.approx(delay)


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


# -- taxonomy ------------------------------------------------------------------------------------


def status_error(cls: type[openai.APIStatusError], status: int, body: object) -> openai.APIStatusError:
    response = httpx2.Response(status, request=REQUEST, json={"error": body} if body is not None else None)
    return cls(f"Error code: {status}", response=response, body=body)


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (status_error(openai.RateLimitError, 429, RPM), Failure("rate_limited", None, "requests")),
        (status_error(openai.RateLimitError, 429, TPM), Failure("rate_limited", None, "tokens")),
        (status_error(openai.RateLimitError, 429, QUOTA), Failure("quota_exhausted", None, "quota")),
        (
            status_error(openai.RateLimitError, 429, TOO_LARGE),
            Failure("request_too_large", None, "too_large"),
        ),
        (status_error(openai.InternalServerError, 500, None), Failure("server_error")),
        (status_error(openai.InternalServerError, 503, None), Failure("server_error")),
        (status_error(openai.APIStatusError, 408, None), Failure("timeout")),
        (status_error(openai.BadRequestError, 400, None), Failure("client_error")),
        (status_error(openai.AuthenticationError, 401, None), Failure("client_error")),
        (status_error(openai.NotFoundError, 404, None), Failure("client_error")),
        (status_error(openai.ConflictError, 409, None), Failure("client_error")),
        (openai.APITimeoutError(request=REQUEST), Failure("timeout")),
        (openai.APIConnectionError(request=REQUEST), Failure("connection_error")),
        (ValueError("boom"), Failure("other")),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_classify_request_exception(exc: BaseException, failure: Failure) -> None:
    assert classify_request_exception(exc) == failure


def test_classify_429_without_body_in_exception_uses_response_headers() -> None:
    response = httpx2.Response(429, request=REQUEST, headers={"x-ratelimit-remaining-tokens": "0"})
    exc = openai.RateLimitError("Error code: 429", response=response, body=None)
    assert classify_request_exception(exc) == Failure("rate_limited", None, "tokens")


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), GeneratorExit(), KeyboardInterrupt()])
def test_cancellations_are_not_failures(exc: BaseException) -> None:
    assert is_cancellation(exc)
    assert classify_request_exception(exc) is None
    assert classify_stream_exception(exc) is None


def test_not_cancellations() -> None:
    assert not is_cancellation(ValueError())
    assert not is_cancellation(openai.APITimeoutError(request=REQUEST))


def api_error(body: dict[str, Any]) -> openai.APIError:
    # What the SDK raises for a nested ``data: {"error": {...}}`` event mid-stream.
    return openai.APIError(str(body["message"]), REQUEST, body=body)


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (openai.APITimeoutError(request=REQUEST), Failure("timeout", "timeout")),
        (openai.APIConnectionError(request=REQUEST), Failure("connection_error", "connection_lost")),
        (
            api_error({"message": "The server had an error", "type": "server_error", "code": "server_error"}),
            Failure("server_error", "in_stream_error"),
        ),
        (api_error(RPM), Failure("rate_limited", "in_stream_error", "in_stream", retry_after=20.0)),
        (api_error(TOO_LARGE), Failure("request_too_large", "in_stream_error", "too_large")),
        (api_error(QUOTA), Failure("quota_exhausted", "in_stream_error", "quota")),
        (
            api_error({"message": "something else", "type": "invalid_request_error", "code": "weird"}),
            Failure("in_stream_error", "in_stream_error"),
        ),
        (openai.APIError("no body", REQUEST, body=None), Failure("in_stream_error", "in_stream_error")),
        (
            status_error(openai.RateLimitError, 429, TPM),
            Failure("rate_limited", "in_stream_error", "tokens"),
        ),
        (status_error(openai.InternalServerError, 500, None), Failure("server_error", "in_stream_error")),
        (json.JSONDecodeError("Expecting value", "{oops", 0), Failure("malformed_event", "malformed_event")),
        (RuntimeError("boom"), Failure("other", "other")),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_classify_stream_exception(exc: BaseException, failure: Failure) -> None:
    assert classify_stream_exception(exc) == failure


def test_stream_truncated_error_is_a_connection_error() -> None:
    exc = StreamTruncatedError(
        reason="eof_before_done", chunks_received=3, partial_text="abc", request_id="req_1", request=REQUEST
    )
    assert isinstance(exc, openai.APIConnectionError)
    assert (exc.reason, exc.chunks_received, exc.partial_text) == ("eof_before_done", 3, "abc")
    assert exc.request_id == "req_1"
    assert exc.request is REQUEST
    assert "eof_before_done" in str(exc) and "abc" not in str(exc)


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("rate_limit_exceeded", RPM["message"], ("rate_limited", "in_stream")),
        ("rate_limit_exceeded", TOO_LARGE["message"], ("request_too_large", "too_large")),
        ("insufficient_quota", "", ("quota_exhausted", "quota")),
        ("server_error", "", ("server_error", None)),
        ("context_length_exceeded", "", ("in_stream_error", None)),
        (None, "", ("in_stream_error", None)),
    ],
)
def test_classify_error_code(
    code: str | None, message: str, expected: tuple[ErrorType, RateLimitKind | None]
) -> None:
    assert classify_error_code(code, message) == expected
    error_type, kind = expected
    delay = 20.0 if message == RPM["message"] else None  # "Please try again in 20s."
    assert classify_in_stream_event(code, message) == Failure(error_type, "in_stream_error", kind, delay)


@pytest.mark.parametrize("reason", ["eof_before_done", "partial_event", "non_sse_body"])
def test_silent_end_failure(reason: TruncationReason) -> None:
    assert silent_end_failure(reason) == Failure("truncated", reason)


# -- BoundedLabel --------------------------------------------------------------------------------


def test_bounded_label_admits_first_values() -> None:
    label = BoundedLabel(2)
    seen = [label(v) for v in "abcabdc"]
    assert seen == ["a", "b", OTHER, "a", "b", OTHER, OTHER]
    assert OTHER == "_other"


def test_bounded_label_limit_one() -> None:
    label = BoundedLabel(1)
    assert (label("x"), label("y"), label("x")) == ("x", OTHER, "x")


def test_bounded_label_under_threads() -> None:
    label = BoundedLabel(10)
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(offset: int) -> None:
        barrier.wait()
        for i in range(100):
            value = label(f"m{(i + offset) % 50}")
            with lock:
                results.append(value)

    threads = [threading.Thread(target=work, args=(n * 7,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = {v for v in results if v != OTHER}
    assert len(admitted) == 10
    # An admitted value is admitted for good: every later call returns it unchanged.
    assert all(label(v) == v for v in admitted)


def _labels(sets: LabelSets, host: str, port: int, model: str) -> tuple[str, str]:
    """What ``Runtime.stream_start`` does: the table first, ``admit`` on a miss."""
    server = sets.servers(host)
    table = sets.table(server, port)
    return table.get(model) or sets.admit(table, server, port, model)


def test_label_sets_are_bounded_as_a_whole() -> None:
    """Issue 15, defect 12: each label under its own bound, their combinations under one more."""
    sets = LabelSets(max_values=3, limit=4)
    seen = [_labels(sets, h, 443, m) for h in ("h1", "h2", "h3") for m in ("a", "b")]
    assert seen == [("a", "h1"), ("b", "h1"), ("a", "h2"), ("b", "h2"), OVERFLOW, OVERFLOW]
    assert OVERFLOW == (OTHER, OTHER)
    # Admitted combinations stay admitted; a port is another combination.
    assert _labels(sets, "h1", 443, "a") == ("a", "h1")
    assert _labels(sets, "h1", 8443, "a") == OVERFLOW
    # Known combinations are found in their server's table (one dict lookup, no lock)...
    assert sets.table("h1", 443) == {"a": ("a", "h1"), "b": ("b", "h1")}
    # ... and neither the overflow nor a server first seen once full is remembered.
    assert sets.table("h3", 443) == {}
    assert sets.table("h9", 443) == {}
    assert _labels(sets, "h9", 443, "a") == OVERFLOW
    assert sets.table("h9", 443) == {}


def test_label_sets_count_a_model_overflow_as_one_combination() -> None:
    sets = LabelSets(max_values=1, limit=3)
    assert [_labels(sets, "h", 1, m) for m in ("a", "b", "c")] == [("a", "h"), (OTHER, "h"), (OTHER, "h")]
    assert sets.table("h", 1) == {"a": ("a", "h")}  # raw names past max_model_labels: not kept


def test_label_sets_under_threads() -> None:
    """Racing first uses admit exactly ``limit`` combinations, each for good."""
    sets = LabelSets(max_values=100, limit=25)
    results: list[tuple[str, str, tuple[str, str]]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(offset: int) -> None:
        barrier.wait()
        for i in range(200):
            host, model = f"h{(i + offset) % 10}", f"m{(i * 7 + offset) % 10}"
            labels = _labels(sets, host, 443, model)
            with lock:
                results.append((host, model, labels))

    threads = [threading.Thread(target=work, args=(n * 13,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = {(host, model) for host, model, labels in results if labels != OVERFLOW}
    assert len(admitted) == 25
    assert all(labels == (model, host) for host, model, labels in results if (host, model) in admitted)
    assert all(_labels(sets, h, 443, m) == (m, h) for h, m in admitted)
    assert all(labels == OVERFLOW for h, m, labels in results if (h, m) not in admitted)


def test_scan_headers_reads_the_same_from_httpx_triples_raw_and_mappings() -> None:
    from streamsentinel._core.ratelimit import scan_headers
    from streamsentinel._sdk.compat import header_triples

    headers = httpx2.Headers({**FULL_HEADERS, "X-Request-Id": "req_7", "content-type": "text/event-stream"})
    triples = header_triples(headers)
    assert triples is not None  # httpx2 keeps (name, lower-case name, value): read without copying
    via_triples = scan_headers(headers, triples)
    assert via_triples == scan_headers(headers) == scan_headers(dict(headers.items()))
    request_id, found = via_triples
    assert request_id == "req_7"
    assert [k for k, _ in found] == [
        k.lower().encode() for k in FULL_HEADERS if k.lower().startswith("x-ratelimit-")
    ]
