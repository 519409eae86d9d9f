"""The SSE decoder hook: tells whether ``data: [DONE]`` arrived and whether the last event was dropped.

The SDK swallows ``[DONE]`` and silently drops an event whose blank line never came, so neither is
visible from the items of a ``Stream``. ``BaseClient._make_sse_decoder`` is patched to return this
subclass; ``Stream.__init__`` stores it as ``stream._decoder``, where the stream proxy finds it.
It is the controller's view of the wire (``_core.state.Wire``): completeness is judged from what
arrived here, not from the items (whose type the consumer may have chosen).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator

from openai._streaming import ServerSentEvent, SSEDecoder

__all__ = ["ObservedSSEDecoder"]

RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_TYPE = re.compile(r'"type"\s*:\s*"([^"]*)"')


class ObservedSSEDecoder(SSEDecoder):
    """An ``SSEDecoder`` that remembers the last event it emitted and whether the body ended inside
    an event.

    Per event it costs one generator step and one attribute store; per network read, one more
    generator step (to keep a reference to the last bytes read). Events and bytes pass unchanged.
    """

    last: ServerSentEvent | None = None
    partial: bool = False
    _last_read: bytes = b""
    # Class-level defaults so _reset() (first called from SSEDecoder.__init__) can read them.
    _data: list[str] = []  # noqa: RUF012 (never mutated: _reset() assigns a fresh list)
    _event: str | None = None

    def _reset(self) -> None:
        # Runs when the byte iterator ends: fields left over are an event the SDK drops.
        if self._data or self._event:
            self.partial = True
        super()._reset()

    @property
    def done(self) -> bool:
        """True once ``data: [DONE]`` was decoded (the SDK stops at it)."""
        last = self.last
        return last is not None and last.data.startswith("[DONE]")

    @property
    def saw_event(self) -> bool:
        """At least one event was decoded."""
        return self.last is not None

    @property
    def terminal_seen(self) -> bool:
        """The last event was a Responses terminal event (by its ``event:`` name, else the
        ``type`` of its data: the first ``"type"`` key, which OpenAI writes first). Read once, at
        the end of a stream."""
        last = self.last
        if last is None:
            return False
        if last.event in RESPONSES_TERMINAL:
            return True
        match = _TYPE.search(last.data, 0, 256)
        if match is not None:
            return match.group(1) in RESPONSES_TERMINAL
        try:
            data = json.loads(last.data)
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("type") in RESPONSES_TERMINAL

    @property
    def ended_inside_event(self) -> bool:
        """The body's end cut an event: fields were pending, or the last byte did not end a line
        (a cut in an event's first bytes, such as ``dat``, leaves no field behind)."""
        return self.partial or self._last_read[-1:] not in (b"", b"\n", b"\r")

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[ServerSentEvent]:
        for sse in SSEDecoder.iter_bytes(self, _Reads(self, iterator)):
            self.last = sse
            yield sse

    async def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
        async for sse in SSEDecoder.aiter_bytes(self, _AsyncReads(self, iterator)):
            self.last = sse
            yield sse


class _Reads:
    """The body's byte iterator, keeping the last non-empty bytes read on the decoder. A class,
    not a generator: an open stream keeps it, and it is a quarter of a suspended generator's size."""

    __slots__ = ("_decoder", "_next")

    def __init__(self, decoder: ObservedSSEDecoder, iterator: Iterator[bytes]) -> None:
        self._decoder = decoder
        self._next = iter(iterator).__next__

    def __iter__(self) -> _Reads:
        return self

    def __next__(self) -> bytes:
        chunk = self._next()
        if chunk:
            self._decoder._last_read = chunk
        return chunk


class _AsyncReads:
    """:class:`_Reads` for an async body."""

    __slots__ = ("_decoder", "_iterator")

    def __init__(self, decoder: ObservedSSEDecoder, iterator: AsyncIterator[bytes]) -> None:
        self._decoder = decoder
        self._iterator = iterator.__aiter__()  # not its bound __anext__: one object fewer

    def __aiter__(self) -> _AsyncReads:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._iterator.__anext__()
        if chunk:
            self._decoder._last_read = chunk
        return chunk
