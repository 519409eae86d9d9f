"""Builders for what the chaos server sends: SSE events, JSON bodies and error payloads.

All shapes follow the real OpenAI API (chat.completion.chunk, text_completion, Responses events).
JSON is compact (`,`/`:` separators) like OpenAI's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .faults import Fault
from .ratelimit import go_duration

__all__ = [
    "DONE",
    "RESPONSES_TERMINAL_TYPES",
    "Api",
    "Generation",
    "SseEvent",
    "StreamFacts",
    "build_events",
    "encode_event",
    "error_event",
    "http_error_body",
    "malformed_event",
    "non_stream_body",
    "parse_event",
    "stream_facts",
]

Api = Literal["chat", "completions", "responses"]
RESPONSES_TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event as it goes on the wire.

    Attributes:
        raw: the event's bytes including its terminating blank line.
        payload: the parsed `data:` JSON; None for `[DONE]` or data that is not JSON.
        is_done: the `data: [DONE]` sentinel (chat / completions).
        terminal: the event that completes a stream: `[DONE]`, or a Responses
            `response.completed|incomplete|failed` event.
    """

    raw: bytes
    payload: Any
    is_done: bool = False
    terminal: bool = False

    @property
    def is_data(self) -> bool:
        """A data event the SDK turns into an item (everything but `[DONE]`)."""
        return not self.is_done

    @property
    def sequence_number(self) -> int | None:
        """Responses events' `sequence_number`, else None."""
        if isinstance(self.payload, dict):
            value = self.payload.get("sequence_number")
            if isinstance(value, int):
                return value
        return None


DONE = SseEvent(raw=b"data: [DONE]\n\n", payload=None, is_done=True, terminal=True)


def encode_event(payload: Mapping[str, Any], event: str | None = None) -> SseEvent:
    """`[event: NAME\\n]data: JSON\\n\\n`; Responses events are terminal by type."""
    head = f"event: {event}\n" if event else ""
    raw = f"{head}data: {_dumps(payload)}\n\n".encode()
    terminal = payload.get("type") in RESPONSES_TERMINAL_TYPES
    return SseEvent(raw=raw, payload=dict(payload), terminal=terminal)


def parse_event(raw: bytes) -> SseEvent:
    """Parse one recorded event (its bytes up to and including the blank line)."""
    data_lines = [
        line[5:].removeprefix(b" ")
        for line in raw.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    data = b"\n".join(data_lines)
    if data.startswith(b"[DONE]"):
        return SseEvent(raw=raw, payload=None, is_done=True, terminal=True)
    try:
        payload = json.loads(data)
    except ValueError:
        return SseEvent(raw=raw, payload=None)
    terminal = isinstance(payload, dict) and payload.get("type") in RESPONSES_TERMINAL_TYPES
    return SseEvent(raw=raw, payload=payload, terminal=terminal)


@dataclass(frozen=True, slots=True)
class Generation:
    """Everything that determines one generated answer.

    Attributes:
        api: which endpoint's shapes to use.
        model: echoed as `model`.
        object_id: `chatcmpl-...`, `cmpl-...` or `resp_...`.
        item_id: Responses message id (`msg_...`) / chat tool call id (`call_...`).
        created: unix seconds.
        pieces: content pieces per choice (Responses uses choice 0 only).
        finish_reason: `stop`, `length`, `content_filter`, `tool_calls`, ...
        include_usage: chat/completions: send the usage chunk (`stream_options.include_usage`).
        prompt_tokens: reported input tokens.
        tool_name: chat: stream a tool call to this function instead of text; its arguments are
            `{"text": <the text>}` split into as many pieces as there are content pieces.
        instructions: Responses `instructions`, echoed.
    """

    api: Api
    model: str
    object_id: str
    item_id: str
    created: int
    pieces: tuple[tuple[str, ...], ...]
    finish_reason: str
    include_usage: bool
    prompt_tokens: int
    tool_name: str | None = None
    instructions: str | None = None

    @property
    def completion_tokens(self) -> int:
        """One token per piece."""
        if self.api == "responses":
            return len(self.pieces[0])
        return sum(len(p) for p in self.pieces)

    def text(self, choice: int = 0) -> str:
        """The complete content of one choice."""
        return "".join(self.pieces[choice])

    def tool_arguments(self, choice: int = 0) -> list[str]:
        """Tool-call argument pieces for one choice (joined: `{"text": ...}` JSON)."""
        args = _dumps({"text": self.text(choice)})
        count = len(self.pieces[choice])
        size = math.ceil(len(args) / count)
        return [args[i * size : (i + 1) * size] for i in range(count)]

    def chat_usage(self) -> dict[str, Any]:
        """Chat / completions `usage` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def responses_usage(self) -> dict[str, Any]:
        """Responses `response.usage` object."""
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


# ---- chat ---------------------------------------------------------------------------------------


def _chat_chunk(gen: Generation, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": gen.object_id,
        "object": "chat.completion.chunk",
        "created": gen.created,
        "model": gen.model,
        "service_tier": "default",
        "system_fingerprint": "fp_chaos",
        "choices": choices,
    }
    if gen.include_usage:
        chunk["usage"] = None
    chunk.update(extra)
    return chunk


def _chat_choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _chat_events(gen: Generation) -> list[SseEvent]:
    n = len(gen.pieces)
    tool = gen.tool_name is not None
    first_content = None if tool else ""
    events = [
        encode_event(
            _chat_chunk(
                gen, [_chat_choice(i, {"role": "assistant", "content": first_content, "refusal": None})]
            )
        )
        for i in range(n)
    ]
    if tool:
        for i in range(n):
            call = {
                "index": 0,
                "id": f"{gen.item_id}_{i}",
                "type": "function",
                "function": {"name": gen.tool_name, "arguments": ""},
            }
            events.append(encode_event(_chat_chunk(gen, [_chat_choice(i, {"tool_calls": [call]})])))
    per_choice = [gen.tool_arguments(i) if tool else list(gen.pieces[i]) for i in range(n)]
    for k in range(max(len(p) for p in per_choice)):
        for i in range(n):
            if k >= len(per_choice[i]):
                continue
            piece = per_choice[i][k]
            delta: dict[str, Any] = (
                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                if tool
                else {"content": piece}
            )
            events.append(encode_event(_chat_chunk(gen, [_chat_choice(i, delta)])))
    for i in range(n):
        events.append(encode_event(_chat_chunk(gen, [_chat_choice(i, {}, gen.finish_reason)])))
    if gen.include_usage:
        events.append(encode_event(_chat_chunk(gen, [], usage=gen.chat_usage())))
    events.append(DONE)
    return events


def _chat_body(gen: Generation) -> dict[str, Any]:
    choices = []
    for i in range(len(gen.pieces)):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": gen.text(i),
            "refusal": None,
            "annotations": [],
        }
        if gen.tool_name is not None:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"{gen.item_id}_{i}",
                    "type": "function",
                    "function": {"name": gen.tool_name, "arguments": "".join(gen.tool_arguments(i))},
                }
            ]
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": gen.finish_reason})
    return {
        "id": gen.object_id,
        "object": "chat.completion",
        "created": gen.created,
        "model": gen.model,
        "choices": choices,
        "usage": gen.chat_usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_chaos",
    }


# ---- legacy completions -------------------------------------------------------------------------


def _completion_chunk(gen: Generation, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": gen.object_id,
        "object": "text_completion",
        "created": gen.created,
        "model": gen.model,
        "system_fingerprint": "fp_chaos",
        "choices": choices,
    }
    chunk.update(extra)
    return chunk


def _completion_choice(index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


def _completion_events(gen: Generation) -> list[SseEvent]:
    n = len(gen.pieces)
    events = [
        encode_event(_completion_chunk(gen, [_completion_choice(i, gen.pieces[i][k])]))
        for k in range(max(len(p) for p in gen.pieces))
        for i in range(n)
        if k < len(gen.pieces[i])
    ]
    events += [
        encode_event(_completion_chunk(gen, [_completion_choice(i, "", gen.finish_reason)])) for i in range(n)
    ]
    if gen.include_usage:
        events.append(encode_event(_completion_chunk(gen, [], usage=gen.chat_usage())))
    events.append(DONE)
    return events


def _completion_body(gen: Generation) -> dict[str, Any]:
    return _completion_chunk(
        gen,
        [_completion_choice(i, gen.text(i), gen.finish_reason) for i in range(len(gen.pieces))],
        usage=gen.chat_usage(),
    )


# ---- responses ----------------------------------------------------------------------------------

_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _response_object(gen: Generation, *, final: bool) -> dict[str, Any]:
    incomplete = _INCOMPLETE_REASONS.get(gen.finish_reason)
    status = ("incomplete" if incomplete else "completed") if final else "in_progress"
    return {
        "id": gen.object_id,
        "object": "response",
        "created_at": gen.created,
        "status": status,
        "background": False,
        "completed_at": gen.created if final else None,
        "error": None,
        "incomplete_details": {"reason": incomplete} if (final and incomplete) else None,
        "instructions": gen.instructions,
        "max_output_tokens": None,
        "model": gen.model,
        "output": [_message_item(gen, done=True, status=status)] if final else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": gen.responses_usage() if final else None,
        "user": None,
        "metadata": {},
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message_item(gen: Generation, *, done: bool, status: str = "completed") -> dict[str, Any]:
    return {
        "id": gen.item_id,
        "type": "message",
        "status": status if done else "in_progress",
        "content": [_text_part(gen.text())] if done else [],
        "role": "assistant",
    }


def _responses_events(gen: Generation) -> list[SseEvent]:
    text = gen.text()
    final = _response_object(gen, final=True)
    where = {"item_id": gen.item_id, "output_index": 0, "content_index": 0}
    bodies: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response_object(gen, final=False)},
        {"type": "response.in_progress", "response": _response_object(gen, final=False)},
        {"type": "response.output_item.added", "output_index": 0, "item": _message_item(gen, done=False)},
        {"type": "response.content_part.added", **where, "part": _text_part("")},
        *(
            {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
            for piece in gen.pieces[0]
        ),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": _text_part(text)},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
        {
            "type": "response.incomplete" if final["status"] == "incomplete" else "response.completed",
            "response": final,
        },
    ]
    return [encode_event({**body, "sequence_number": seq}, body["type"]) for seq, body in enumerate(bodies)]


def azure_prompt_filter_event() -> SseEvent:
    """Azure OpenAI's first chunk of a chat stream: no choices, only the prompt's content-filter
    results (``prompt_filter_results``), empty id, model and object."""
    severity = {"filtered": False, "severity": "safe"}
    return encode_event(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [
                {
                    "prompt_index": 0,
                    "content_filter_results": {
                        "hate": severity,
                        "self_harm": severity,
                        "sexual": severity,
                        "violence": severity,
                    },
                }
            ],
        }
    )


def build_events(gen: Generation) -> list[SseEvent]:
    """The complete event stream of a clean answer, `[DONE]` included for chat / completions."""
    if gen.api == "chat":
        return _chat_events(gen)
    if gen.api == "completions":
        return _completion_events(gen)
    return _responses_events(gen)


def non_stream_body(gen: Generation) -> dict[str, Any]:
    """The JSON body of a non-streamed answer: chat.completion, text_completion or response."""
    if gen.api == "chat":
        return _chat_body(gen)
    if gen.api == "completions":
        return _completion_body(gen)
    return _response_object(gen, final=True)


# ---- errors -------------------------------------------------------------------------------------

_RATE_LIMIT_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)
_SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! You can retry your request."
)


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def http_error_body(fault: Fault, model: str, retry_after_ms: int) -> dict[str, Any]:
    """The JSON error body of an HTTP error fault (429 flavours, 500)."""
    wait = go_duration(retry_after_ms / 1000)
    if fault is Fault.RATE_LIMIT_REQUESTS:
        return _error(
            f"Rate limit reached for {model} in organization org-chaos on requests per min (RPM): "
            f"Limit 3, Used 3, Requested 1. Please try again in {wait}. {_RATE_LIMIT_URL}",
            "requests",
            "rate_limit_exceeded",
        )
    if fault is Fault.RATE_LIMIT_TOKENS:
        return _error(
            f"Rate limit reached for {model} in organization org-chaos on tokens per min (TPM): "
            f"Limit 30000, Used 29000, Requested 1500. Please try again in {wait}. {_RATE_LIMIT_URL}",
            "tokens",
            "rate_limit_exceeded",
        )
    if fault is Fault.INSUFFICIENT_QUOTA:
        return _error(_QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota")
    if fault is Fault.REQUEST_TOO_LARGE:
        return _error(
            f"Request too large for {model} in organization org-chaos on tokens per min (TPM): "
            "Limit 30000, Requested 50000. The input or output tokens must be reduced in order to run "
            f"successfully. {_RATE_LIMIT_URL}",
            "tokens",
            "rate_limit_exceeded",
        )
    return _error(_SERVER_ERROR_MESSAGE, "server_error", None)


def _in_stream_error_fields(code: str, model: str) -> tuple[str, str]:
    """(message, type) of an in-stream error with this code."""
    if code == "rate_limit_exceeded":
        body = http_error_body(Fault.RATE_LIMIT_REQUESTS, model, 644)["error"]
        return body["message"], body["type"]
    if code == "insufficient_quota":
        return _QUOTA_MESSAGE, "insufficient_quota"
    if code == "server_error":
        return _SERVER_ERROR_MESSAGE, "server_error"
    return f"chaos: injected in-stream error {code}", "server_error"


def error_event(api: Api, code: str, *, model: str, flat: bool, sequence_number: int) -> SseEvent:
    """An in-stream error event.

    chat / completions: nested `data: {"error": {...}}`, or flat `data: {"type": "error", ...}`.
    responses: always the `ResponseErrorEvent` (`event: error`, flat, with `sequence_number`).
    """
    message, type_ = _in_stream_error_fields(code, model)
    if api == "responses":
        payload = {
            "type": "error",
            "code": code,
            "message": message,
            "param": None,
            "sequence_number": sequence_number,
        }
        return encode_event(payload, "error")
    if flat:
        return encode_event({"type": "error", "code": code, "message": message, "param": None})
    return encode_event(_error(message, type_, code))


def malformed_event() -> SseEvent:
    """`data: {"id": broken` + blank line: not JSON."""
    return SseEvent(raw=b'data: {"id": broken\n\n', payload=None)


# ---- facts about what was sent ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamFacts:
    """What a sequence of sent events carried: finish reasons, usage, terminal event type."""

    finish_reasons: tuple[str, ...]
    usage: dict[str, Any] | None
    terminal_event: str | None


def stream_facts(events: Sequence[SseEvent]) -> StreamFacts:
    """Extract finish reasons (chat/completions, in order), the last usage, and the Responses
    terminal event type from events that were fully sent."""
    reasons: list[str] = []
    usage: dict[str, Any] | None = None
    terminal: str | None = None
    for event in events:
        payload = event.payload
        if not isinstance(payload, dict):
            continue
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                reasons.append(str(choice["finish_reason"]))
        if isinstance(payload.get("usage"), dict):
            usage = payload["usage"]
        if event.terminal:
            terminal = str(payload.get("type"))
            response = payload.get("response")
            if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                usage = response["usage"]
    return StreamFacts(tuple(reasons), usage, terminal)
