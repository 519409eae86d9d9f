"""structlog events: ``stream.started``, ``stream.first_token``, ``stream.chunk`` (DEBUG only),
``stream.retry``, ``stream.rate_limited``, ``stream.truncated``, ``stream.finished``.

Every event carries ``operation``, ``model``, ``server`` and, when tracing records, ``trace_id`` and
``span_id`` (hex) for correlation. No prompt or completion content (unless ``capture_content``), no
headers. streamsentinel never configures structlog; when the application has not either, events
below INFO are dropped so an unconfigured service is not flooded with per-chunk lines.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

from .observation import CallObservation, StreamObservation

LOGGER_NAME = "streamsentinel"
_log = structlog.get_logger(LOGGER_NAME)


def debug_enabled() -> bool:
    """Whether DEBUG events would be emitted: asked once per stream (a logger bind, ~2 µs), never
    per chunk, and never cached across streams, so a reconfiguration takes effect at once."""
    if not structlog.is_configured():
        return False
    try:
        logger = _log.bind()
        is_enabled_for = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
        return bool(is_enabled_for(logging.DEBUG)) if is_enabled_for is not None else True
    except Exception:
        return False


def _ids(obs: StreamObservation | CallObservation) -> dict[str, Any]:
    fields: dict[str, Any] = {"operation": obs.operation, "model": obs.model, "server": obs.server}
    ctx = obs.span.get_span_context()
    if ctx.is_valid:
        fields["trace_id"] = format(ctx.trace_id, "032x")
        fields["span_id"] = format(ctx.span_id, "016x")
    return fields


def started(obs: StreamObservation) -> None:
    if obs.debug:
        _log.debug("stream.started", **_ids(obs))


def first_token(obs: StreamObservation) -> None:
    if obs.first_at is not None:
        _log.debug("stream.first_token", ttft_seconds=obs.first_at - obs.start, **_ids(obs))


def chunk(obs: StreamObservation, gap: float | None) -> None:
    _log.debug("stream.chunk", chunk=obs.chunks, gap_seconds=gap, **_ids(obs))


def retry(
    obs: StreamObservation | CallObservation, *, layer: str, reason: str, attempt: int, delay: float | None
) -> None:
    _log.info("stream.retry", layer=layer, reason=reason, attempt=attempt, delay_seconds=delay, **_ids(obs))


def resume(obs: StreamObservation, *, strategy: str, reason: str, attempt: int) -> None:
    _log.warning(
        "stream.resume", strategy=strategy, reason=reason, attempt=attempt, chunks=obs.chunks, **_ids(obs)
    )


def retry_denied(obs: StreamObservation, *, reason: str, why: str) -> None:
    _log.warning("stream.retry_denied", reason=reason, why=why, **_ids(obs))


def rate_limited(obs: StreamObservation | CallObservation, *, kind: str, status: int | None) -> None:
    # Quota exhaustion needs a human (billing), not patience: always ERROR.
    log = _log.error if kind == "quota" else _log.warning
    log("stream.rate_limited", kind=kind, status=status, request_id=obs.request_id, **_ids(obs))


def finished(obs: StreamObservation, duration: float, *, capture_content: bool) -> None:
    fields = _ids(obs)
    fields["outcome"] = obs.outcome
    fields["duration_seconds"] = round(duration, 6)
    fields["chunks"] = obs.chunks
    # Only what is known or unusual: every field costs the application's renderer.
    if obs.first_at is not None:
        fields["ttft_seconds"] = round(obs.first_at - obs.start, 6)
    if obs.chunks > 1:
        fields["max_chunk_gap_seconds"] = round(obs.max_gap, 6)
    if obs.finish_reasons:
        fields["finish_reasons"] = obs.finish_reason_list
    if obs.sdk_retries:
        fields["sdk_retries"] = obs.sdk_retries
    if obs.sentinel_retries:
        fields["sentinel_retries"] = obs.sentinel_retries
    if obs.done_seen is False:
        fields["done_seen"] = False
    for name in ("request_id", "response_id", "input_tokens", "output_tokens"):
        value = getattr(obs, name)
        if value is not None:
            fields[name] = value
    if obs.reason is not None:
        truncated: dict[str, Any] = {
            "reason": obs.reason,
            "error_type": obs.error_type,
            "chunks": obs.chunks,
            "partial_chars": sum(map(len, obs.text)),
            "request_id": obs.request_id,
            "response_id": obs.response_id,
        }
        if capture_content:
            truncated["partial_text"] = obs.partial_text
        _log.warning("stream.truncated", **truncated, **_ids(obs))
    if obs.error_type is not None:
        fields["error_type"] = obs.error_type
        _log.warning("stream.finished", **fields)
    else:
        _log.info("stream.finished", **fields)
