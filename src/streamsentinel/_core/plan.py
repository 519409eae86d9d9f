"""What a stream controller is told once, before its stream opens: a frozen, typed plan.

A :class:`StreamPlan` is built by the runtime once per (operation, DEBUG logging on) and shared
by every stream of that kind; the controller reads its rules from it and never asks the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .._resilience.retry import RetryPolicy
from .apis import ApiAdapter, ChunkReader


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """The rules of one kind of stream.

    Attributes:
        api: what the stream's API means (``apis.ADAPTERS``).
        policy: streamsentinel's own retries and resumes.
        read: ``api.read``, copied (the hot path reads one attribute less).
        gap_alert: seconds; an inter-item gap at least this long is a ``GapEvent``.
        stall_threshold: seconds; a read a consumer gave up on after this long was a stall.
        chunk_extras: a ``ChunkEvent`` with its text for each item (``chunk_events="all"`` with
            content captured).
        debug: DEBUG logging is on (a ``ChunkEvent`` per item is logged).
        capture_content: the record carries the partial text.
        on_truncation: ``raise`` a ``StreamTruncatedError`` for a silent truncation, or ``end``.
        first_token_timeout: seconds (0: none), for ``StreamTimeoutError``.
        stall_timeout: seconds (0: none), for ``StreamTimeoutError``.
        watchdog: a watchdog deadline exists (first-token or stall timeout set).
    """

    api: ApiAdapter
    policy: RetryPolicy
    read: ChunkReader
    gap_alert: float
    stall_threshold: float
    chunk_extras: bool
    debug: bool
    capture_content: bool
    on_truncation: Literal["raise", "end"] | str
    first_token_timeout: float
    stall_timeout: float
    watchdog: bool

    @property
    def holds(self) -> bool:
        """Items known to carry no output are held while a retry is possible."""
        return self.policy.attempts > 1
