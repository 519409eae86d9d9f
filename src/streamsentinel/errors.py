"""Exceptions streamsentinel raises to the consumer of a stream."""

from __future__ import annotations

import httpx2
import openai

__all__ = [
    "CircuitOpenError",
    "StreamDivergedError",
    "StreamTimeoutError",
    "StreamTruncatedError",
    "find_truncation",
]


class StreamTruncatedError(openai.APIConnectionError):
    """A stream ended without its terminal marker where the SDK would have ended it silently.

    Raised from the stream's iterator in place of ``StopIteration`` when ``on_truncation="raise"``
    (the default) and the server ended the body cleanly before ``data: [DONE]`` (chat and legacy
    completions) or before a terminal Responses event (``response.completed``,
    ``response.incomplete``, ``response.failed``), dropped the last event's blank line, or answered
    a stream request with a 200 non-SSE body. Where the SDK raises on its own (connection lost,
    timeout, in-stream error, malformed JSON) that exception reaches the consumer unchanged instead.

    A subclass of ``openai.APIConnectionError``, so code that already handles dropped connections
    handles this too.

    Attributes:
        reason: truncation reason, one of the values of ``streamsentinel.taxonomy.TruncationReason``
            (``eof_before_done``, ``partial_event``, ``non_sse_body``, ``in_stream_error``).
        chunks_received: items the consumer received before the end (int, >= 0).
        partial_text: the output text delivered so far (choice 0 for chat; all output text deltas
            for Responses). Never logged unless ``capture_content`` is on.
        request_id: the response's ``x-request-id`` header, or None.
    """

    def __init__(
        self,
        *,
        reason: str,
        chunks_received: int,
        partial_text: str,
        request_id: str | None,
        request: httpx2.Request,
    ) -> None:
        super().__init__(
            message=f"Stream truncated ({reason}) after {chunks_received} chunks",
            request=request,
        )
        self.reason = reason
        self.chunks_received = chunks_received
        self.partial_text = partial_text
        self.request_id = request_id


class StreamTimeoutError(openai.APITimeoutError):
    """streamsentinel's own ``first_token_timeout`` or ``stall_timeout`` ran out, and it closed the
    stream (the SDK then saw a connection cut, which is ``__cause__``; None when the body was
    close-delimited: without Content-Length or chunked framing the cut reads as its end).

    A subclass of ``openai.APITimeoutError``: code that handles the SDK's timeouts handles this.

    Attributes:
        kind: ``first_token_timeout`` or ``stall`` (the truncation reason recorded).
        timeout: the setting that ran out, seconds.
    """

    def __init__(self, *, kind: str, timeout: float, request: httpx2.Request) -> None:
        setting = "first_token_timeout" if kind == "first_token_timeout" else "stall_timeout"
        waited = "for the first token" if kind == "first_token_timeout" else "between two chunks"
        openai.APIConnectionError.__init__(
            self,
            message=f"streamsentinel {setting}={timeout:g} s ran out waiting {waited}; it closed the stream",
            request=request,
        )
        self.kind = kind
        self.timeout = timeout


class CircuitOpenError(openai.APIConnectionError):
    """The circuit breaker for this call's key is open: the call was rejected without any HTTP request.

    A subclass of ``openai.APIConnectionError``, so code that handles an unreachable upstream
    handles this too.

    Attributes:
        breaker: the breaker's key (default ``"{server}/{model}"``).
        retry_after: seconds until the breaker lets a probe through (``math.inf`` when forced open).
    """

    def __init__(self, *, breaker: str, retry_after: float, request: httpx2.Request) -> None:
        super().__init__(
            message=f"Circuit breaker {breaker!r} is open; retry after {retry_after:.1f} s",
            request=request,
        )
        self.breaker = breaker
        self.retry_after = retry_after


class StreamDivergedError(openai.APIConnectionError):
    """A resumed stream (``resume="replay"``) did not begin with what the consumer already received,
    so it cannot continue seamlessly.

    Attributes:
        delivered: the output already delivered (text, then tool-call arguments), before the break.
        received: the replayed output up to the first difference.
    """

    def __init__(self, *, delivered: str, received: str, request: httpx2.Request) -> None:
        super().__init__(
            message=f"Replayed stream diverged after {_common_prefix(delivered, received)} characters",
            request=request,
        )
        self.delivered = delivered
        self.received = received


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


NO_REQUEST = httpx2.Request("POST", "http://unknown")
"""The request of an error raised where no response's request is known (private)."""


def find_truncation(exc: BaseException | None) -> StreamTruncatedError | None:
    """The :class:`StreamTruncatedError` behind ``exc``, wherever a framework wrapped it.

    Client frameworks (langchain-openai, litellm, instructor, pydantic-ai...) re-raise the SDK's
    errors as their own, so ``except StreamTruncatedError`` does not match there; this walks
    ``exc`` itself, its ``__cause__`` and ``__context__`` chain and the members of exception
    groups, depth first, each exception once. Returns None when no truncation is in it.

    Example::

        try:
            answer = chain.invoke(question)
        except Exception as exc:
            truncation = streamsentinel.find_truncation(exc)
            if truncation is None:
                raise
            ...  # truncation.reason, truncation.partial_text
    """
    seen: set[int] = set()
    todo: list[BaseException] = [] if exc is None else [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, StreamTruncatedError):
            return current
        for linked in (current.__context__, current.__cause__):  # popped cause first
            if linked is not None:
                todo.append(linked)
        members = getattr(current, "exceptions", None)  # ExceptionGroup (3.11+, or the backport)
        if isinstance(members, (list, tuple)):
            todo.extend(m for m in reversed(members) if isinstance(m, BaseException))
    return None
