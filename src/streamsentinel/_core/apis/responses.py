"""The Responses API (``responses.create(stream=True)``, ``responses.retrieve(stream=True)``):
``ResponseStreamEvent`` items, a terminal event (``response.completed``/``incomplete``/``failed``)
ends the stream, a background response can be continued from a sequence number."""

from __future__ import annotations

from typing import Any

from ..state import StreamState
from .base import ARGS, TEXT, ApiAdapter

# Responses event types that carry output (first token) besides output_text.delta.
_RESPONSES_OUTPUT_DELTAS = frozenset(
    {
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.audio.delta",
        "response.audio.transcript.delta",
        "response.code_interpreter_call_code.delta",
        "response.custom_tool_call_input.delta",
        "response.mcp_call_arguments.delta",
    }
)
RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# incomplete_details.reason -> the chat finish_reason it corresponds to.
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _responses_terminal(obs: StreamState, item: Any) -> None:
    typ = item.type
    obs.terminal = typ
    response = item.response
    obs.response_id = response.id
    obs.response_model = response.model
    usage = response.usage
    if usage is not None:
        obs.input_tokens = usage.input_tokens
        obs.output_tokens = usage.output_tokens
        if usage.output_tokens_details is not None:
            obs.reasoning_tokens = usage.output_tokens_details.reasoning_tokens
        if usage.input_tokens_details is not None:
            obs.cached_tokens = usage.input_tokens_details.cached_tokens
    if typ == "response.completed":
        obs.finished(0, "stop")
    elif typ == "response.incomplete":
        details = response.incomplete_details
        reason = details.reason if details is not None else None
        obs.finished(0, _INCOMPLETE_REASONS.get(reason or "", "incomplete"))
    else:  # response.failed
        error = response.error
        obs.in_stream_error = (error.code, error.message) if error is not None else (None, "response.failed")


def read_responses(obs: StreamState, item: Any, now: float) -> None:
    """A Responses API ``ResponseStreamEvent``."""
    typ = item.type
    obs.last_seq = item.sequence_number
    if typ == "response.output_text.delta":
        obs.text.append(item.delta)
        if obs.first_at is None:
            obs.first_at = now
    elif typ in _RESPONSES_OUTPUT_DELTAS:
        if typ == "response.function_call_arguments.delta":
            obs.tool_pieces().append(item.delta)
        if obs.first_at is None:
            obs.first_at = now
    elif typ in RESPONSES_TERMINAL:
        _responses_terminal(obs, item)
    elif typ == "response.created":
        obs.response_id = item.response.id
        obs.response_model = item.response.model
    elif typ == "error":
        obs.error_items += 1
        obs.in_stream_error = (item.code, item.message or "")


# Responses events known to carry no output (status, and an output item or content part opening
# empty): they may be held while a retry is possible. Any other event releases the hold.
_RESPONSES_PREAMBLE = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.output_item.added",
        "response.content_part.added",
        "error",  # an error event: held, a retry replaces it
        "response.failed",
    }
)


def is_preamble(item: Any) -> bool:
    return item.type in _RESPONSES_PREAMBLE


def output_piece(item: Any) -> tuple[int, str] | None:
    """The text delta, else the function-call arguments delta."""
    typ = item.type
    if typ == "response.output_text.delta":
        return TEXT, item.delta
    if typ == "response.function_call_arguments.delta":
        return ARGS, item.delta
    return None


ADAPTER = ApiAdapter(
    operation="responses",
    read=read_responses,
    is_preamble=is_preamble,
    output_piece=output_piece,
    terminal_event=True,
    done_marker=False,
    continuable=True,
    semconv_operation="chat",  # the Responses API is a chat operation
)
