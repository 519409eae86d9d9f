"""Reading a 429's small error body before the SDK does, without changing what the SDK then sees.

The body tells a requests/tokens 429 from quota exhaustion, and the SDK never reads the body of a
429 it retries. So the attempt hook reads it first, from the response's byte stream, and puts back
a stream that gives the SDK the same bytes: all of them when the body was whole (then read and
decoded as usual, cached on the response); when the body broke (reset, short ``Content-Length``,
stall), the bytes that came and then the very exception, so the consumer sees exactly the SDK's
own error (not ``ResponseNotRead``). The stream put back is one of the library that built the
response (``httpx2``, or a legacy ``httpx`` client's: each refuses the other's); a response of
neither is left unread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from .._core import httplib

_LIMIT = 64 * 1024  # an error body is small: past this, stop reading ahead and pass the rest on


class _Replay:
    """The bytes read ahead, then the exception the read raised, or the rest of the body (made a
    sync and async byte stream of the response's library by :func:`_replay_class`)."""

    def __init__(self, chunks: list[bytes], error: BaseException | None, rest: Any, inner: Any) -> None:
        self._chunks = chunks
        self._error = error
        self._rest = rest  # the body's iterator, read no further than ``chunks`` (None: at its end)
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks
        if self._error is not None:
            raise self._error
        if self._rest is not None:
            yield from self._rest

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        if self._error is not None:
            raise self._error
        if self._rest is not None:
            async for chunk in self._rest:
                yield chunk

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _replay_class(response: Any) -> type[_Replay] | None:
    library = httplib.of_response(response)
    return None if library is None else library.byte_stream(_Replay, sync=True, async_=True)


def _already_read(response: Any) -> bool | None:
    """True when the body was read already (a non-streaming call: the SDK's ``send`` read it), so
    ``response.content`` is readable; False when it was consumed without being kept; None when it
    is still to be read. Reading a consumed stream again would wait on the socket for bytes that
    never come (until the read timeout)."""
    if not getattr(response, "is_stream_consumed", False):
        return None
    try:
        response.content  # noqa: B018 (raises ResponseNotRead when the bytes were not kept)
    except Exception:
        return False
    return True


def preread(response: Any) -> bool:
    """Read ahead the body of ``response`` (a sync ``httpx2``/``httpx`` ``Response`` being
    streamed) and read it whole through the replay when nothing broke. True when
    ``response.content`` is then readable; False when it is not (also for a response of another
    library, left unread)."""
    done = _already_read(response)
    if done is not None:
        return done
    replay = _replay_class(response)
    if replay is None:
        return False
    inner = response.stream
    chunks: list[bytes] = []
    size = 0
    rest = iter(inner)
    try:
        for chunk in rest:
            chunks.append(chunk)
            size += len(chunk)
            if size > _LIMIT:
                response.stream = replay(chunks, None, rest, inner)
                return False
    except Exception as exc:
        response.stream = replay(chunks, exc, None, inner)
        return False
    response.stream = replay(chunks, None, None, inner)
    response.read()
    return True


async def apreread(response: Any) -> bool:
    """:func:`preread` for an async response."""
    done = _already_read(response)
    if done is not None:
        return done
    replay = _replay_class(response)
    if replay is None:
        return False
    inner = response.stream
    chunks: list[bytes] = []
    size = 0
    rest = aiter(inner)
    try:
        async for chunk in rest:
            chunks.append(chunk)
            size += len(chunk)
            if size > _LIMIT:
                response.stream = replay(chunks, None, rest, inner)
                return False
    except Exception as exc:
        response.stream = replay(chunks, exc, None, inner)
        return False
    response.stream = replay(chunks, None, None, inner)
    await response.aread()
    return True
