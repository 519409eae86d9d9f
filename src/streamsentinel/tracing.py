"""OpenTelemetry: one CLIENT span per stream, named and attributed after the GenAI semantic conventions.

Names follow the OpenTelemetry GenAI semantic conventions (client spans): span name
``{gen_ai.operation.name} {gen_ai.request.model}``; ``gen_ai.*``, ``server.*`` and ``error.type``
attributes. streamsentinel's own attributes live under ``streamsentinel.*``. The span is started by
the patched ``create()``, made current only while ``create()`` runs, and ended when the stream ends;
events that happened mid-stream are added at the end with their own timestamps, so nothing is done
per chunk unless ``chunk_events="all"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from .observation import StreamObservation

# GenAI semantic-convention attribute names (semantic-conventions-genai, client spans).
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"

# The API's operation -> gen_ai.operation.name (the Responses API is a chat operation).
SEMCONV_OPERATION = {"chat": "chat", "text_completion": "text_completion", "responses": "chat"}

_REQUEST_PARAMS = (
    ("max_tokens", GEN_AI_REQUEST_MAX_TOKENS),
    ("max_completion_tokens", GEN_AI_REQUEST_MAX_TOKENS),
    ("max_output_tokens", GEN_AI_REQUEST_MAX_TOKENS),
    ("temperature", GEN_AI_REQUEST_TEMPERATURE),
    ("top_p", GEN_AI_REQUEST_TOP_P),
)

TRACER_NAME = "streamsentinel"


def get_tracer(provider: TracerProvider | None) -> Tracer:
    from . import __version__

    return trace.get_tracer(TRACER_NAME, __version__, tracer_provider=provider)


def start_span(
    tracer: Tracer,
    *,
    operation: str,
    request_model: str,
    server: str,
    server_port: int | None,
    request: Mapping[str, Any],
    start_ns: int,
) -> Span:
    """Start (not activate) the stream's span; the caller makes it current around ``create()`` only."""
    semconv_op = SEMCONV_OPERATION.get(operation, operation)
    attributes: dict[str, Any] = {
        GEN_AI_OPERATION_NAME: semconv_op,
        GEN_AI_PROVIDER_NAME: "openai",
        GEN_AI_REQUEST_MODEL: request_model,
        GEN_AI_REQUEST_STREAM: True,
        SERVER_ADDRESS: server,
    }
    if server_port is not None:
        attributes[SERVER_PORT] = server_port
    for key, name in _REQUEST_PARAMS:
        value = request.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[name] = value
    return tracer.start_span(
        f"{semconv_op} {request_model}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        start_time=start_ns,
    )


def _ns(obs: StreamObservation, at: float) -> int:
    return obs.start_ns + int(at * 1e9)


def end_span(obs: StreamObservation, end: float, *, capture_content: bool) -> None:
    """Set the stream's figures on its span, add the deferred events and end it (once)."""
    span = obs.span
    if not span.is_recording():
        span.end()
        return
    attrs: dict[str, Any] = {
        "streamsentinel.outcome": obs.outcome or "completed",
        "streamsentinel.chunks": obs.chunks,
        "streamsentinel.max_chunk_gap": obs.max_gap,
        "streamsentinel.retries": obs.sdk_retries,
        "streamsentinel.sentinel_retries": obs.sentinel_retries,
    }
    done = obs.done_seen
    if done is not None:
        attrs["streamsentinel.done_seen"] = done
    if obs.reason is not None:
        attrs["streamsentinel.truncation_reason"] = obs.reason
    if obs.response_id:
        attrs[GEN_AI_RESPONSE_ID] = obs.response_id
    if obs.response_model:
        attrs[GEN_AI_RESPONSE_MODEL] = obs.response_model
    if obs.finish_reasons:
        attrs[GEN_AI_RESPONSE_FINISH_REASONS] = obs.finish_reason_list
    if obs.input_tokens is not None:
        attrs[GEN_AI_USAGE_INPUT_TOKENS] = obs.input_tokens
    if obs.output_tokens is not None:
        attrs[GEN_AI_USAGE_OUTPUT_TOKENS] = obs.output_tokens
    if obs.request_id:
        attrs["streamsentinel.request_id"] = obs.request_id
    if obs.first_at is not None:
        ttft = obs.first_at - obs.start
        attrs[GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttft
        span.add_event("streamsentinel.first_token", {"streamsentinel.ttft": ttft}, _ns(obs, ttft))
    for anomaly in obs.anomalies:
        span.add_event(f"streamsentinel.{anomaly.name}", anomaly.attributes, _ns(obs, anomaly.at))
    if obs.reason == "in_stream_error":
        error: dict[str, Any] = {"streamsentinel.error_type": obs.error_type or "in_stream_error"}
        if obs.in_stream_error is not None and obs.in_stream_error[0]:
            error["streamsentinel.error_code"] = obs.in_stream_error[0]
        span.add_event(
            "streamsentinel.in_stream_error",
            error,
            _ns(obs, (obs.last_at if obs.chunks else end) - obs.start),
        )
    if obs.reason is not None:
        event: dict[str, Any] = {"streamsentinel.reason": obs.reason, "streamsentinel.chunks": obs.chunks}
        if capture_content:
            event["streamsentinel.partial_text"] = obs.partial_text
        span.add_event("streamsentinel.truncated", event, _ns(obs, end - obs.start))
    error_type = obs.error_type or ("circuit_open" if obs.outcome == "rejected" else None)
    if error_type is not None:
        attrs[ERROR_TYPE] = error_type
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.set_attributes(attrs)
    span.end(end_time=_ns(obs, end - obs.start))
