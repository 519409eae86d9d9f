"""The exceptions a stream controller raises on purpose, built from plain values (no controller):
``StreamTruncatedError``, ``StreamTimeoutError``, and what a read broken by the consumer's close
raises (as the SDK's own read does)."""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from .. import errors
from .state import StreamState
from .taxonomy import Failure


def request_of(response: Any) -> Any:
    """The ``httpx2.Request`` of an attempt's response (``errors.NO_REQUEST`` when unknown)."""
    try:
        return response.request
    except Exception:
        return errors.NO_REQUEST


def timed_out(kind: str, timeout: float, request: Any, cause: BaseException | None) -> BaseException:
    """``StreamTimeoutError``; ``cause``: what the SDK raised when the socket was shut (None: a
    close-delimited body just ended)."""
    error = errors.StreamTimeoutError(kind=kind, timeout=timeout, request=request)
    error.__cause__ = cause
    return error


def closed_read(request: Any) -> BaseException:
    """What a read pending when the consumer closed the stream raises: what the SDK's read raises
    when its stream's connection is closed under it (``APIConnectionError`` from an
    ``httpx2.ReadError``, tests/test_lifecycle.py)."""
    error = openai.APIConnectionError(request=request)
    error.__cause__ = httpx2.ReadError("the stream was closed", request=request)
    return error


def truncated(s: StreamState, failure: Failure, request_id: str | None, request: Any) -> BaseException:
    try:
        text = s.joined(s.text)
    except Exception:
        text = ""
    return errors.StreamTruncatedError(
        reason=failure.reason or "eof_before_done",
        chunks_received=s.chunks,
        partial_text=text,
        request_id=request_id,
        request=request,
    )
