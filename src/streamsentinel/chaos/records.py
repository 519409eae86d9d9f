"""Ground truth: one `RequestRecord` per HTTP request the chaos server answered."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .faults import FAULT_TABLE, Fault, Outcome, TruncationReason, expected_outcome
from .plan import DecisionSource, FaultSpec

__all__ = ["RecordLog", "RequestRecord"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What the server did with one HTTP request, written when it is done with it.

    Attributes:
        seq: arrival order, from 0 (per server; `clear()` does not restart it).
        connection: which TCP connection carried it (numbered from 0 in accept order).
        method: HTTP method.
        path: request path without query.
        api: `chat`, `completions`, `responses` (create or retrieve), None for unknown paths.
        model: the request's `model` (None for retrieve / unknown).
        stream: the request asked for SSE.
        retry_count: the `x-stainless-retry-count` header as int (None if absent).
        client_request_id: the `X-Client-Request-Id` header (OpenAI's client-chosen request id);
            a client that sets it per logical request lets the SDK's retries be grouped.
        fault: the fault actually applied (non-stream requests: see `ChaosServer`).
        spec: the plan's full decision.
        source: which plan rule decided (header / script / random).
        status: HTTP status sent; None when no status line was sent (stall/reset before headers).
        data_events: payload data events fully written (`[DONE]` and injected error / malformed /
            cut events not counted).
        terminal_sent: `[DONE]` (chat/completions) or the terminal Responses event was written.
        finish_reasons: non-null `finish_reason`s sent, in order (chat / completions).
        usage: the last usage object sent (usage chunk, or `response.usage` of the terminal event).
        terminal_event: type of the terminal Responses event sent, if any.
        request_id: `x-request-id` sent (None if no headers were sent).
        response_id: Responses id (`resp_...`) of a create / retrieve.
        replay: name of the recording served, if any.
        client_disconnected: the client went away before the server finished (ended a stall early,
            or a write failed).
        stall_expired: a stall ran its whole `spec.stall_seconds` with the client still connected,
            so the server itself closed the connection (FIN): a client whose read timeout is longer
            than the stall sees a lost connection, not a timeout.
        stall_seconds: how long the stall lasted (until the client left or the server closed),
            seconds; None when the request did not stall.
        no_done: `[DONE]` was left out on purpose (`FaultPlan.no_done` / `x-chaos-no-done`): the
            chat/completions stream ended cleanly after its last chunk without it.
        started_at / finished_at: `time.monotonic()` seconds.
    """

    seq: int
    connection: int
    method: str
    path: str
    api: str | None
    model: str | None
    stream: bool
    retry_count: int | None
    client_request_id: str | None
    fault: Fault
    spec: FaultSpec
    source: DecisionSource | None
    status: int | None
    data_events: int
    terminal_sent: bool
    finish_reasons: tuple[str, ...]
    usage: dict[str, Any] | None
    terminal_event: str | None
    request_id: str | None
    response_id: str | None
    replay: str | None
    client_disconnected: bool
    stall_expired: bool
    stall_seconds: float | None
    no_done: bool
    started_at: float
    finished_at: float

    @property
    def expected_outcome(self) -> Outcome:
        """`expected_outcome(self.fault, self.data_events)` (a client that does not retry)."""
        return expected_outcome(self.fault, self.data_events)

    @property
    def truncation_reason(self) -> TruncationReason | None:
        """The fault table's reason, or None when the request completed or was an HTTP error."""
        if self.expected_outcome is Outcome.COMPLETED:
            return None
        return FAULT_TABLE[self.fault].reason


class RecordLog:
    """Thread-safe, append-only list of records with a wait."""

    def __init__(self) -> None:
        self._records: list[RequestRecord] = []
        self._cond = threading.Condition()
        self._next_seq = 0

    def next_seq(self) -> int:
        """Allocate the next arrival sequence number."""
        with self._cond:
            seq = self._next_seq
            self._next_seq += 1
            self._cond.notify_all()
            return seq

    @property
    def arrivals(self) -> int:
        with self._cond:
            return self._next_seq

    def wait_for_arrivals(self, count: int, timeout: float) -> None:
        """Block until `count` requests have arrived (records are written later, when done).

        Raises:
            TimeoutError: fewer arrivals after `timeout` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._next_seq >= count, timeout):
                raise TimeoutError(f"{self._next_seq} of {count} requests arrived after {timeout}s")

    def append(self, record: RequestRecord) -> None:
        with self._cond:
            self._records.append(record)
            self._records.sort(key=lambda r: r.seq)
            self._cond.notify_all()

    def snapshot(self) -> list[RequestRecord]:
        with self._cond:
            return list(self._records)

    def clear(self) -> None:
        with self._cond:
            self._records.clear()

    def wait_for(self, count: int, timeout: float) -> list[RequestRecord]:
        """Block until at least `count` records exist; returns them.

        Raises:
            TimeoutError: fewer than `count` records after `timeout` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._records) >= count, timeout):
                raise TimeoutError(f"{len(self._records)} of {count} request records after {timeout}s")
            return list(self._records)

    def summary(self) -> Counter[Fault]:
        """How many requests got each fault."""
        with self._cond:
            return Counter(r.fault for r in self._records)
