"""Send a list of SSE events over a connection, breaking it as a `FaultSpec` says.

Works the same for generated events and replayed recordings. The fault always strikes before the
terminal event (`[DONE]`, or `response.completed|incomplete|failed`): `after` is clamped to the
number of events before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .faults import Fault
from .payloads import DONE, Api, SseEvent, error_event, malformed_event
from .plan import FaultSpec
from .wire import HttpConnection

__all__ = [
    "DEFAULT_AFTER",
    "STREAM_FAULTS",
    "StreamProgress",
    "first_response_id",
    "play_stream",
    "resolve_after",
]

DEFAULT_AFTER: Mapping[str, int] = MappingProxyType({"chat": 4, "completions": 3, "responses": 7})
"""`after` when a spec leaves it None: three content events in (chat: role chunk + 3; responses:
created, in_progress, output_item.added, content_part.added + 3 deltas)."""

STREAM_FAULTS = frozenset(
    {
        Fault.NONE,
        Fault.EOF_CHUNKED,
        Fault.EOF_CLOSE,
        Fault.PARTIAL_EVENT,
        Fault.FIN_IN_CHUNK,
        Fault.RESET,
        Fault.STALL_BEFORE_FIRST_TOKEN,
        Fault.STALL_MID_STREAM,
        Fault.ERROR_EVENT,
        Fault.ERROR_EVENT_FLAT,
        Fault.MALFORMED_JSON,
    }
)
"""Faults `play_stream` applies after 200 headers (the others never start an event stream)."""

_CLEAN_END_FAULTS = frozenset(
    {
        Fault.NONE,
        Fault.EOF_CHUNKED,
        Fault.PARTIAL_EVENT,
        Fault.ERROR_EVENT,
        Fault.ERROR_EVENT_FLAT,
        Fault.MALFORMED_JSON,
    }
)


@dataclass
class StreamProgress:
    """What `play_stream` managed to write; filled in as it goes, so it is accurate on errors."""

    status: int | None = None
    sent: list[SseEvent] = field(default_factory=list)
    client_disconnected: bool = False
    stall_expired: bool = False
    stall_seconds: float | None = None
    done_omitted: bool = False

    async def stall(self, conn: HttpConnection, seconds: float) -> None:
        """Send nothing for up to `seconds`: note who ended the stall (the client by leaving, or the
        server when the time ran out; the caller then closes) and how long it lasted."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            self.client_disconnected = await conn.wait_for_disconnect(seconds)
        finally:
            self.stall_seconds = loop.time() - started
        self.stall_expired = not self.client_disconnected

    @property
    def data_events(self) -> int:
        """Payload data events fully written (`[DONE]` excluded)."""
        return sum(1 for event in self.sent if event.is_data)

    @property
    def terminal_sent(self) -> bool:
        return any(event.terminal for event in self.sent)


def resolve_after(spec: FaultSpec, api: str, events: Sequence[SseEvent]) -> int:
    """Events sent whole before the fault: `spec.after` (or the API default) clamped to the index
    of the first terminal event."""
    terminal_index = next((i for i, event in enumerate(events) if event.terminal), len(events))
    after = DEFAULT_AFTER.get(api, 3) if spec.after is None else spec.after
    return min(after, terminal_index)


async def play_stream(
    conn: HttpConnection,
    *,
    api: Api,
    events: Sequence[SseEvent],
    spec: FaultSpec,
    headers: Sequence[tuple[str, str]],
    model: str,
    progress: StreamProgress,
    status: int = 200,
) -> None:
    """Write status + headers and the events, applying `spec.fault` (one of `STREAM_FAULTS`).

    Leaves the connection reusable only when the response ended with a clean chunked terminator.
    Raises `PeerGone` if the client goes away while writing (progress says how far it got).
    """
    fault = spec.fault
    if fault not in STREAM_FAULTS:
        raise ValueError(f"{fault} is not a stream fault")
    if fault is Fault.NONE:
        cut = len(events)
    elif fault is Fault.STALL_BEFORE_FIRST_TOKEN:
        cut = 0
    else:
        cut = resolve_after(spec, api, events)

    send: Callable[[bytes], Awaitable[None]]
    if fault is Fault.EOF_CLOSE:
        await conn.start_close_delimited(status, headers)
        send = conn.send_raw
    else:
        await conn.start_chunked(status, headers)
        send = conn.send_chunk
    progress.status = status

    for event in events[:cut]:
        if event.is_done and spec.no_done:
            progress.done_omitted = True  # an OpenAI-compatible server that never sends [DONE]
            continue
        await send(event.raw)
        progress.sent.append(event)

    following = events[cut] if cut < len(events) else DONE
    if fault in (Fault.STALL_BEFORE_FIRST_TOKEN, Fault.STALL_MID_STREAM):
        await progress.stall(conn, spec.stall_seconds)
        return  # caller closes: FIN inside the chunked body
    if fault is Fault.EOF_CLOSE:
        return  # caller closes: FIN ends the close-delimited body
    if fault is Fault.RESET:
        await conn.reset()
        return
    if fault is Fault.FIN_IN_CHUNK:
        raw = following.raw
        keep = len(raw) // 2 if spec.cut_bytes is None else spec.cut_bytes
        await conn.cut_chunk(raw, max(0, min(keep, len(raw) - 1)))
        return  # caller closes: FIN inside the announced chunk
    if fault is Fault.PARTIAL_EVENT:
        whole = following.raw.rstrip(b"\r\n") + b"\n"  # the event without its blank line
        keep = len(whole) if spec.cut_bytes is None else min(spec.cut_bytes, len(whole))
        if keep:
            await send(whole[:keep])
    elif fault in (Fault.ERROR_EVENT, Fault.ERROR_EVENT_FLAT):
        seq = following.sequence_number
        await send(
            error_event(
                api,
                spec.error_code,
                model=model,
                flat=fault is Fault.ERROR_EVENT_FLAT,
                sequence_number=cut if seq is None else seq,
            ).raw
        )
    elif fault is Fault.MALFORMED_JSON:
        await send(malformed_event().raw)
    assert fault in _CLEAN_END_FAULTS
    await conn.end_chunked()


def first_response_id(events: Sequence[SseEvent]) -> str | None:
    """The `response.id` carried by the first Responses event that has one."""
    for event in events:
        payload: Any = event.payload
        if isinstance(payload, dict) and isinstance(payload.get("response"), dict):
            response_id = payload["response"].get("id")
            if isinstance(response_id, str):
                return response_id
    return None
