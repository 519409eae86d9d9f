"""Recorded real OpenAI streams (`NAME.sse` body + `NAME.json` metadata) for byte-exact replay."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .payloads import Api, SseEvent, parse_event

__all__ = ["Recording", "load_recordings", "split_events"]

_BLANK_LINE = re.compile(rb"(?:\r?\n){2,}")


def split_events(body: bytes) -> list[bytes]:
    """Split an SSE body into events, each keeping its own bytes up to and including the blank
    line(s) after it; trailing bytes without a blank line form a last, unterminated piece."""
    pieces: list[bytes] = []
    start = 0
    for match in _BLANK_LINE.finditer(body):
        pieces.append(body[start : match.end()])
        start = match.end()
    if start < len(body):
        pieces.append(body[start:])
    return pieces


@dataclass(frozen=True, slots=True)
class Recording:
    """One recorded streamed response.

    Attributes:
        name: file stem shared by `NAME.sse` and `NAME.json`.
        api: `chat`, `completions` or `responses`.
        request: `{"method", "path", "json"}` the client sent.
        status: HTTP status recorded.
        headers: response headers worth replaying (lower-case names), in recorded order.
        body: the response body, byte for byte.
        expected: what a complete stream shows: `events` (data events, `[DONE]` not counted), `done`,
            `finish_reasons`, `usage`, `terminal_event`.
        source: provenance (repository, commit, path).
    """

    name: str
    api: Api
    request: Mapping[str, Any]
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    expected: Mapping[str, Any]
    source: Mapping[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> list[SseEvent]:
        """The body split into events, parsed."""
        return [parse_event(raw) for raw in split_events(self.body)]

    @property
    def request_json(self) -> dict[str, Any]:
        """The request's JSON body (empty dict if none was recorded)."""
        body = self.request.get("json")
        return dict(body) if isinstance(body, Mapping) else {}


def load_recordings(directory: str | Path) -> list[Recording]:
    """Load every `NAME.json` + `NAME.sse` pair in `directory`, sorted by name.

    Raises:
        FileNotFoundError: a `.json` has no matching `.sse`.
        ValueError: a `.json` has an unknown `api`.
    """
    recordings = []
    for meta_path in sorted(Path(directory).glob("*.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        api = meta.get("api")
        if api not in ("chat", "completions", "responses"):
            raise ValueError(f"{meta_path}: unknown api {api!r}")
        response = meta.get("response", {})
        recordings.append(
            Recording(
                name=meta_path.stem,
                api=cast(Api, api),
                request=meta.get("request", {}),
                status=int(response.get("status", 200)),
                headers=tuple((str(k).lower(), str(v)) for k, v in response.get("headers", {}).items()),
                body=meta_path.with_suffix(".sse").read_bytes(),
                expected=meta.get("expected", {}),
                source=meta.get("source", {}),
            )
        )
    return recordings
