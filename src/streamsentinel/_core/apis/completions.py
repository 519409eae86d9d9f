"""Legacy completions (``completions.create(stream=True)``): ``Completion`` items, ``data: [DONE]``
ends the stream, no role chunk (every item may carry output)."""

from __future__ import annotations

from typing import Any

from ..state import StreamState
from .base import TEXT, ApiAdapter
from .chat import _chat_usage


def read_completion(obs: StreamState, item: Any, now: float) -> None:
    """A legacy ``Completion`` chunk (``text_completion``)."""
    choices = item.choices
    if not choices:
        if item.usage is not None:
            _chat_usage(obs, item.usage)
        return
    if obs.response_id is None:
        obs.response_id = item.id
        obs.response_model = item.model
    for choice in choices:
        text = choice.text
        if text:
            if choice.index == 0:
                obs.text.append(text)
            if obs.first_at is None:
                obs.first_at = now
        if choice.finish_reason is not None:
            obs.finished(choice.index, choice.finish_reason)


def is_preamble(item: Any) -> bool:
    return False  # legacy completions have no role chunk: every item may carry output


def output_piece(item: Any) -> tuple[int, str] | None:
    """Choice 0's text."""
    choices = item.choices
    if not choices:
        return None
    for choice in choices:
        if choice.index == 0:
            return (TEXT, choice.text) if choice.text else None
    return None


ADAPTER = ApiAdapter(
    operation="text_completion",
    read=read_completion,
    is_preamble=is_preamble,
    output_piece=output_piece,
    terminal_event=False,
    done_marker=True,
    continuable=False,
    semconv_operation="text_completion",
)
