"""Per-API chunk readers: what the controller learns from each item the consumer receives.

Each reader is ``(state, item, now) -> None`` and runs once per item on the hot path: attribute
reads, a list append of a reference, no metric call, no log line. Rare shapes (usage chunks, error
items, Azure's filter-only chunks) branch off to helpers. The SDK builds items without validation,
so a reader may meet any shape: it reads what it can and may raise ``AttributeError``,
``TypeError``... on an odd one, which the controller counts as an odd item (the server's problem,
never an internal error). Completeness never depends on what a reader saw: it comes from the wire.

``PREAMBLE`` says which items are known to carry no output (the role chunk, ``response.created``):
only those may be held back while a retry is still possible; any other item releases the hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .state import StreamState
from .taxonomy import Operation

ChunkReader = Callable[[StreamState, Any, float], None]

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


def _chat_usage(obs: StreamState, usage: Any) -> None:
    obs.input_tokens = usage.prompt_tokens
    obs.output_tokens = usage.completion_tokens
    details = usage.completion_tokens_details
    if details is not None and details.reasoning_tokens is not None:
        obs.reasoning_tokens = details.reasoning_tokens
    prompt_details = usage.prompt_tokens_details
    if prompt_details is not None and prompt_details.cached_tokens is not None:
        obs.cached_tokens = prompt_details.cached_tokens


def _chat_without_choices(obs: StreamState, item: Any) -> None:
    usage = item.usage
    if usage is not None:
        _chat_usage(obs, usage)
        return
    extra = item.model_extra or {}
    # A flat error event ({"type": "error", "code": ...}) is yielded by the SDK as a chunk.
    error = extra.get("error")
    if extra.get("type") == "error" or isinstance(error, dict):
        src = error if isinstance(error, dict) else extra
        obs.error_items += 1
        code = src.get("code")
        message = src.get("message")
        obs.in_stream_error = (
            code if isinstance(code, str) else None,
            message if isinstance(message, str) else "",
        )


def _has_output(delta: Any) -> bool:
    if delta.tool_calls or delta.refusal or delta.function_call:
        return True
    extra = delta.model_extra
    return bool(extra and (extra.get("reasoning_content") or extra.get("reasoning")))


def read_chat(obs: StreamState, item: Any, now: float) -> None:
    """A ``ChatCompletionChunk``."""
    choices = item.choices
    if not choices:
        _chat_without_choices(obs, item)
        return
    if obs.response_id is None:
        obs.response_id = item.id
        obs.response_model = item.model
    for choice in choices:
        delta = choice.delta
        content = delta.content
        if content:
            if choice.index == 0:
                obs.text.append(content)
            if obs.first_at is None:
                obs.first_at = now
        elif delta.tool_calls:
            if choice.index == 0:
                obs.tool_pieces().extend(
                    c.function.arguments for c in delta.tool_calls if c.function and c.function.arguments
                )
            if obs.first_at is None:
                obs.first_at = now
        elif obs.first_at is None and _has_output(delta):
            obs.first_at = now
        finish_reason = choice.finish_reason
        if finish_reason is not None:
            obs.finished(choice.index, finish_reason)
            if item.usage is not None:
                _chat_usage(obs, item.usage)


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


READERS: dict[Operation, ChunkReader] = {
    "chat": read_chat,
    "text_completion": read_completion,
    "responses": read_responses,
}

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
# Values of a chat delta field that carry nothing.
_EMPTY: tuple[object, ...] = (None, "", [])


# Deltas already found to carry nothing but a role (``vars(delta)``): the next role chunk is
# recognised by one dict comparison. Bounded: a few shapes per SDK version.
_ROLE_ONLY: list[dict[str, Any]] = []


def _chat_preamble(item: Any) -> bool:
    """The role chunk (``delta`` with only ``role``, empty content), a flat error event, or a
    choice-less chunk with nothing but Azure's ``prompt_filter_results``. Anything else may carry
    output."""
    choices = item.choices
    if choices and len(choices) == 1:
        choice = choices[0]
        fields = vars(choice.delta)
        if choice.finish_reason is None and fields in _ROLE_ONLY and not choice.delta.model_extra:
            return True
    return _chat_preamble_slow(item)


def _chat_preamble_slow(item: Any) -> bool:
    choices = item.choices
    if not choices:
        extra = item.model_extra
        if extra and (extra.get("type") == "error" or isinstance(extra.get("error"), dict)):
            return True
        return item.usage is None and (not extra or set(extra) <= {"prompt_filter_results"})
    for choice in choices:
        if choice.finish_reason is not None:
            return False
        delta = choice.delta
        if delta.content or delta.model_extra:  # content first: the usual first output
            return False
        fields = vars(delta)
        for name, value in fields.items():  # declared fields: any set beside the role is output
            if name != "role" and value not in _EMPTY:
                return False
        if len(_ROLE_ONLY) < 8 and fields not in _ROLE_ONLY:
            _ROLE_ONLY.append(dict(fields))
    return True


def _completion_preamble(item: Any) -> bool:
    return False  # legacy completions have no role chunk: every item may carry output


def _responses_preamble(item: Any) -> bool:
    return item.type in _RESPONSES_PREAMBLE


PREAMBLE: dict[Operation, Callable[[Any], bool]] = {
    "chat": _chat_preamble,
    "text_completion": _completion_preamble,
    "responses": _responses_preamble,
}
