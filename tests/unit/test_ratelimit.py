"""Rate limits without I/O (``_core/ratelimit.py``): Go durations, the ``x-ratelimit-*`` headers,
429 bodies, retry delays."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from streamsentinel._core.ratelimit import (
    RateLimitSnapshot,
    classify_429,
    error_fields,
    parse_go_duration,
    parse_headers,
    retry_delay_seconds,
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
