"""When streamsentinel retries a stream, and after how long.

The rule that makes retries safe: a stream is retried only while **nothing has been delivered to
the consumer** (the proxy holds back items until the first one that carries output), so a retry can
never duplicate output. streamsentinel never retries what the SDK already retries (HTTP errors
before the stream: those attempts stay as the client configured them), so attempts never multiply.

Delays: exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
Jitter"): ``uniform(0, min(max_delay, base * 2**retry))``, but never less than a delay the server
asked for. A per-request time budget caps the total, and a retry budget across requests (Envoy's
``retry_budget``: retries at most ``ratio`` of the requests of a sliding window, with a floor of
``min_retries`` per window) stops an outage from becoming a retry storm.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .. import _forksafe as forksafe
from .._vocab import Failure
from .resume import ResumeStrategy

PlanKind = Literal["retry", "resume"]


@dataclass(frozen=True, slots=True)
class Plan:
    """Open the stream again: ``retry`` (re-issue; nothing was delivered) or ``resume`` (continue
    after output started) after ``delay`` seconds."""

    kind: PlanKind
    delay: float


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """streamsentinel's own retries (``layer="sentinel"``) and resumes: one object owns the
    attempts, the backoff, the server's delay and the time budget (urllib3's ``Retry`` is the
    model); the retry budget across requests is :class:`RetryBudget`.

    Attributes:
        attempts: total attempts per logical request, the first included (1 = never retry).
        base_delay: seconds, the first backoff ceiling.
        max_delay: seconds, the largest backoff ceiling.
        time_budget: seconds from the request's start after which no retry begins.
        resume: what to do after output started (``off``, ``replay``, ``responses``).
    """

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    time_budget: float = 60.0
    resume: ResumeStrategy = "off"

    def decide(
        self,
        failure: Failure,
        *,
        attempt: int,
        elapsed: float,
        delivered: bool,
        resumable: bool,
        rand: Callable[[], float] = random.random,
    ) -> Plan | None:
        """Whether to open the stream again after ``failure`` on attempt number ``attempt``
        (1-based), ``elapsed`` seconds after the request began. ``delivered``: output reached the
        consumer (only a resume can help then); ``resumable``: the stream can be continued (for
        ``resume="responses"``, a Responses stream with an id and a sequence number). None: let the
        failure end the stream (not retryable, attempts or time budget used up, resume off)."""
        if not failure.retryable or attempt >= self.attempts:
            return None
        if delivered and (self.resume == "off" or not resumable):
            return None
        delay = self.backoff(attempt - 1, failure.retry_after, rand)
        if elapsed + delay > self.time_budget:
            return None
        return Plan("resume" if delivered else "retry", delay)

    def backoff(
        self, retry: int, server_delay: float | None, rand: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait before retry number ``retry`` (0-based): full jitter, at least the
        server's requested delay."""
        ceiling = min(self.max_delay, self.base_delay * (2.0**retry))
        delay = ceiling * rand()
        return max(delay, server_delay) if server_delay is not None else delay


_EXPIRE_EVERY = 4096  # requests recorded between expirations, at most


class RetryBudget:
    """Envoy-style retry budget: admits a retry while retries in the last ``window`` seconds stay
    under ``max(min_retries, ratio * requests)``. Thread-safe; O(1) amortised per call."""

    def __init__(
        self, ratio: float, window: float, min_retries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ratio = ratio
        self._window = window
        self._min = min_retries
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        # The parent's requests and retries are its budget's, not the child's.
        self._lock = threading.Lock()
        self._requests = deque()
        self._retries = deque()

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        for times in (self._requests, self._retries):
            while times and times[0] <= horizon:
                times.popleft()

    def record_request(self) -> None:
        """Count one logical request (call once per request, not per attempt). No lock: a deque's
        append is atomic, and only ``_expire`` (under the lock) removes, from the other end."""
        self._requests.append(self._clock())
        if len(self._requests) > _EXPIRE_EVERY:  # bounded memory even when no retry asks
            with self._lock:
                self._expire(self._clock())

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when the budget is exhausted."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            allowed = max(self._min, int(self._ratio * len(self._requests)))
            if len(self._retries) >= allowed:
                return False
            self._retries.append(now)
            return True
