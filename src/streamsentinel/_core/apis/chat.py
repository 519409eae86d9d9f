"""Chat completions (``chat.completions.create(stream=True)``): ``ChatCompletionChunk`` items,
``data: [DONE]`` ends the stream, the role chunk carries no output."""

from __future__ import annotations

from typing import Any

from ..state import StreamState
from .base import ARGS, TEXT, ApiAdapter


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


# Values of a chat delta field that carry nothing.
_EMPTY: tuple[object, ...] = (None, "", [])


# Deltas already found to carry nothing but a role (``vars(delta)``): the next role chunk is
# recognised by one dict comparison. Bounded: a few shapes per SDK version.
_ROLE_ONLY: list[dict[str, Any]] = []


def is_preamble(item: Any) -> bool:
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


def output_piece(item: Any) -> tuple[int, str] | None:
    """Choice 0's text, else its tool-call arguments."""
    choices = item.choices
    if not choices:
        return None
    for choice in choices:
        if choice.index != 0:
            continue
        delta = choice.delta
        if delta.content:
            return TEXT, delta.content
        if delta.tool_calls:
            arguments = "".join((call.function.arguments or "") for call in delta.tool_calls if call.function)
            return (ARGS, arguments) if arguments else None
    return None


ADAPTER = ApiAdapter(
    operation="chat",
    read=read_chat,
    is_preamble=is_preamble,
    output_piece=output_piece,
    terminal_event=False,
    done_marker=True,
    continuable=False,
    semconv_operation="chat",
)
