"""Deterministic completion text: a function of (server seed, request body, piece count).

The same request always streams byte-identical text, so a client that retries can replay the
request and compare or skip what it already has. Pieces are `word + " "`; the text for `chunks`
pieces is a prefix of the text for more pieces.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_CHUNKS", "expected_pieces", "expected_text", "prompt_key", "prompt_tokens"]

DEFAULT_CHUNKS = 20
"""Content pieces per choice when neither the fault spec nor the server says otherwise."""

_VOCABULARY = (
    "stream",
    "token",
    "chunk",
    "event",
    "server",
    "client",
    "socket",
    "buffer",
    "signal",
    "packet",
    "reset",
    "retry",
    "window",
    "header",
    "payload",
    "latency",
    "backoff",
    "quota",
    "model",
    "prompt",
    "river",
    "stone",
    "cloud",
    "lantern",
    "harbor",
    "meadow",
    "copper",
    "violet",
    "falcon",
    "ember",
    "north",
    "quiet",
    "rapid",
    "gentle",
    "bright",
    "hollow",
    "steady",
    "silver",
    "amber",
    "cedar",
)
_PROMPT_FIELDS = ("messages", "prompt", "input", "instructions")


def prompt_key(request_body: Mapping[str, Any]) -> str:
    """Canonical JSON of the fields that select the text: messages / prompt / input / instructions."""
    picked = {name: request_body[name] for name in _PROMPT_FIELDS if name in request_body}
    return json.dumps(picked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_tokens(request_body: Mapping[str, Any]) -> int:
    """A stable stand-in for the prompt's token count (about 4 characters per token)."""
    return max(1, len(prompt_key(request_body)) // 4)


def expected_pieces(
    request_body: Mapping[str, Any], *, seed: int = 0, chunks: int = DEFAULT_CHUNKS, choice: int = 0
) -> list[str]:
    """The `chunks` content pieces (each `word + " "`) streamed for choice `choice` of this request."""
    material = f"{seed}\x00{choice}\x00{prompt_key(request_body)}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))
    return [rng.choice(_VOCABULARY) + " " for _ in range(chunks)]


def expected_text(
    request_body: Mapping[str, Any], *, seed: int = 0, chunks: int = DEFAULT_CHUNKS, choice: int = 0
) -> str:
    """The full text a clean stream of this request carries (the pieces joined)."""
    return "".join(expected_pieces(request_body, seed=seed, chunks=chunks, choice=choice))
