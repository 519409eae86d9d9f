"""The SSE decoder hook: tells whether ``data: [DONE]`` arrived and whether the last event was dropped.

The SDK swallows ``[DONE]`` and silently drops an event whose blank line never came, so neither is
visible from the items of a ``Stream``. ``BaseClient._make_sse_decoder`` is patched to return this
subclass; ``Stream.__init__`` stores it as ``stream._decoder``, where the stream proxy finds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from openai._streaming import ServerSentEvent, SSEDecoder

__all__ = ["ObservedSSEDecoder"]


class ObservedSSEDecoder(SSEDecoder):
    """An ``SSEDecoder`` that remembers the last event it emitted and whether an event was cut.

    Per event it costs one generator step and one attribute store; the events are passed through
    unchanged.
    """

    last: ServerSentEvent | None = None
    partial: bool = False
    # Class-level defaults so _reset() (first called from SSEDecoder.__init__) can read them.
    _data: list[str] = []  # noqa: RUF012 (never mutated: _reset() assigns a fresh list)
    _event: str | None = None

    def _reset(self) -> None:
        # Runs when the byte iterator ends: leftover fields are an event the SDK drops.
        if self._data or self._event:
            self.partial = True
        super()._reset()

    @property
    def done(self) -> bool:
        """True once ``data: [DONE]`` was decoded (the SDK stops at it)."""
        last = self.last
        return last is not None and last.data.startswith("[DONE]")

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[ServerSentEvent]:
        for sse in SSEDecoder.iter_bytes(self, iterator):
            self.last = sse
            yield sse

    async def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
        async for sse in SSEDecoder.aiter_bytes(self, iterator):
            self.last = sse
            yield sse
