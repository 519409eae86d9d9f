"""The failure taxonomy without I/O (``_core/taxonomy.py``): request and stream exceptions,
cancellations, in-stream error codes, silent ends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import openai
import pytest

from streamsentinel import StreamTruncatedError
from streamsentinel._core.ratelimit import RateLimitKind
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

from .test_ratelimit import QUOTA, REQUEST, RPM, TOO_LARGE, TPM

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
