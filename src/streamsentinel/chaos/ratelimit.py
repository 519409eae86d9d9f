"""OpenAI-style rate-limit headers (`x-ratelimit-*`), counting down per request."""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["RateLimitConfig", "RateLimitCounter", "RateLimitSnapshot", "go_duration"]


def go_duration(seconds: float) -> str:
    """Format like Go's `time.Duration.String()`: `0s`, `12ms`, `1.5s`, `6m0s`, `23h47m36.648s`."""
    if seconds <= 0:
        return "0s"
    millis = round(seconds * 1000)
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Limits advertised in the headers.

    Attributes:
        limit_requests: requests per minute (RPM).
        limit_tokens: tokens per minute (TPM).
    """

    limit_requests: int = 5000
    limit_tokens: int = 2_000_000


@dataclass(frozen=True, slots=True)
class RateLimitSnapshot:
    """The six header values for one response, before any fault overrides them."""

    limit_requests: int
    limit_tokens: int
    remaining_requests: int
    remaining_tokens: int

    def headers(
        self, *, requests_exhausted: bool = False, tokens_exhausted: bool = False
    ) -> list[tuple[str, str]]:
        """`x-ratelimit-*` header pairs; `*_exhausted` force the remaining count to 0."""
        rem_req = 0 if requests_exhausted else self.remaining_requests
        rem_tok = 0 if tokens_exhausted else self.remaining_tokens
        # Reset = time until a full refill at the per-minute rate.
        reset_req = (self.limit_requests - rem_req) * 60.0 / self.limit_requests
        reset_tok = (self.limit_tokens - rem_tok) * 60.0 / self.limit_tokens
        return [
            ("x-ratelimit-limit-requests", str(self.limit_requests)),
            ("x-ratelimit-limit-tokens", str(self.limit_tokens)),
            ("x-ratelimit-remaining-requests", str(rem_req)),
            ("x-ratelimit-remaining-tokens", str(rem_tok)),
            ("x-ratelimit-reset-requests", go_duration(reset_req)),
            ("x-ratelimit-reset-tokens", go_duration(reset_tok)),
        ]


class RateLimitCounter:
    """Counts requests and tokens down from the limits; wraps around instead of reaching 0."""

    def __init__(self, config: RateLimitConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._requests = 0
        self._tokens = 0

    def take(self, tokens: int) -> RateLimitSnapshot:
        """Account one request costing `tokens` and return the headers' values after it."""
        cfg = self._config
        with self._lock:
            self._requests = self._requests % max(1, cfg.limit_requests - 1) + 1
            self._tokens = (self._tokens + max(0, tokens)) % max(1, cfg.limit_tokens - 1)
            return RateLimitSnapshot(
                limit_requests=cfg.limit_requests,
                limit_tokens=cfg.limit_tokens,
                remaining_requests=cfg.limit_requests - self._requests,
                remaining_tokens=cfg.limit_tokens - self._tokens,
            )
