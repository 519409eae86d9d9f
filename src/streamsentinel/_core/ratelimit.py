"""OpenAI rate-limit headers and 429 bodies.

Header format (OpenAI API reference, "Rate limits"): ``x-ratelimit-limit-{requests,tokens}``,
``x-ratelimit-remaining-{requests,tokens}`` (integers) and ``x-ratelimit-reset-{requests,tokens}``
(a Go ``time.Duration`` string such as ``12ms``, ``1s``, ``6m0s``, ``23h47m36.648s``: the time until
the bucket is full again).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, NamedTuple

from .._vocab import RateLimitKind as RateLimitKind  # re-exported: the core's modules import it here

RESOURCES = ("requests", "tokens")

# "ms" must be tried before "m"; Go also emits "us"/"µs" and "ns".
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)(ms|s)\b", re.IGNORECASE)


@lru_cache(maxsize=1024)  # reset values repeat across responses; parsing is a regex walk
def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go duration string (``"6m0s"`` -> 360.0, ``"12ms"`` -> 0.012), or None if invalid."""
    text = text.strip()
    if not text:
        return None
    if text == "0":
        return 0.0
    pos = 0
    total = 0.0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


class RateLimitSnapshot(NamedTuple):
    """One resource's rate-limit headers: ``limit`` and ``remaining`` in requests or tokens,
    ``reset_seconds`` until full; each None when its header is absent or malformed."""

    resource: str
    limit: int | None
    remaining: int | None
    reset_seconds: float | None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


# The headers parse_raw reads (a set lookup per header, not a prefix test).
_RATE_LIMIT_NAMES = frozenset(
    f"x-ratelimit-{what}-{resource}".encode()
    for what in ("limit", "remaining", "reset")
    for resource in RESOURCES
)

RawHeaders = tuple[tuple[bytes, bytes], ...]
"""The ``x-ratelimit-*`` headers of one response as sent: ``((lower-case name, value), ...)``."""


def scan_headers(
    headers: Mapping[str, str], triples: list[tuple[bytes, bytes, bytes]] | None = None
) -> tuple[str | None, RawHeaders]:
    """``(x-request-id, the x-ratelimit-* headers)`` of a response, in one pass. ``triples``: the
    headers as ``(name, lower-case name, value)`` bytes (how ``httpx2.Headers`` keeps them; the SDK
    layer passes them), else read from ``headers``. Nothing is parsed: a caller that saw the same
    headers before (the usual case) has nothing more to do."""
    if triples is None:
        raw = getattr(headers, "raw", None)
        if raw is None:
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        triples = [(k, k.lower(), v) for k, v in raw]
    request_id: str | None = None
    found: list[tuple[bytes, bytes]] = []
    for _, key, value in triples:
        if key in _RATE_LIMIT_NAMES:
            found.append((key, value))
        elif key == b"x-request-id" and request_id is None:
            request_id = value.decode("latin-1")
    return request_id, tuple(found)


def parse_raw(found: RawHeaders) -> list[RateLimitSnapshot]:
    """The snapshots for ``requests`` and ``tokens`` in :func:`scan_headers`' second value."""
    if not found:
        return []
    text = {k.decode("latin-1"): v.decode("latin-1") for k, v in found}
    out: list[RateLimitSnapshot] = []
    for resource in RESOURCES:
        limit = _int(text.get(f"x-ratelimit-limit-{resource}"))
        remaining = _int(text.get(f"x-ratelimit-remaining-{resource}"))
        reset_raw = text.get(f"x-ratelimit-reset-{resource}")
        reset = parse_go_duration(reset_raw) if reset_raw is not None else None
        if limit is None and remaining is None and reset is None:
            continue
        out.append(RateLimitSnapshot(resource, limit, remaining, reset))
    return out


def parse_headers(headers: Mapping[str, str]) -> list[RateLimitSnapshot]:
    """The snapshots for ``requests`` and ``tokens`` present in ``headers`` (an ``httpx2.Headers``
    or any mapping; names compared case-insensitively)."""
    return parse_raw(scan_headers(headers)[1])


def error_fields(body: object) -> tuple[str | None, str | None, str]:
    """``(code, type, message)`` of an OpenAI error body, nested (``{"error": {...}}``) or flat."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if not isinstance(body, Mapping):
        return None, None, ""
    code = body.get("code")
    typ = body.get("type")
    message = body.get("message")
    return (
        code if isinstance(code, str) else None,
        typ if isinstance(typ, str) else None,
        message if isinstance(message, str) else "",
    )


def classify_429(body: object, headers: Mapping[str, str] | None = None) -> RateLimitKind:
    """Which limit a 429 hit: ``quota`` (``insufficient_quota``), ``too_large`` ("Request too large":
    Requested > Limit, never retryable), ``tokens`` or ``requests``.

    The body decides when present; without one, the ``x-ratelimit-remaining-*`` header that is 0.
    """
    code, typ, message = error_fields(body)
    if code == "insufficient_quota" or typ == "insufficient_quota":
        return "quota"
    if message.startswith("Request too large"):
        return "too_large"
    if typ == "tokens" or "tokens per min" in message or "(TPM)" in message or "(TPD)" in message:
        return "tokens"
    if typ == "requests" or "requests per" in message:
        return "requests"
    if headers is not None and headers.get("x-ratelimit-remaining-tokens", "").strip() == "0":
        return "tokens"
    return "requests"


def retry_delay_seconds(headers: Mapping[str, str] | None, message: str = "") -> float | None:
    """The server's requested delay: ``retry-after-ms``, else ``retry-after`` (seconds), else the
    message's "try again in 644ms" / "3.1s"; None when none is given. HTTP-date ``retry-after`` is
    not parsed (OpenAI sends seconds)."""
    if headers is not None:
        for name, scale in (("retry-after-ms", 1e-3), ("x-ms-retry-after-ms", 1e-3), ("retry-after", 1.0)):
            raw = headers.get(name)
            if raw is not None:
                try:
                    return float(raw) * scale
                except ValueError:
                    pass
    match = _TRY_AGAIN.search(message)
    if match:
        return float(match.group(1)) * (1e-3 if match.group(2) == "ms" else 1.0)
    return None


def json_or_none(content: bytes) -> Any:
    """Parsed JSON of an error body, or None when it is not JSON."""
    import json

    try:
        return json.loads(content)
    except ValueError:
        return None
