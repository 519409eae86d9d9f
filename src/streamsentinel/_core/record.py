"""Building the one frozen ``StreamRecord`` of a stream from the controller's state, whatever
that state holds: a field that cannot be read is left out (None, empty), never an exception, so
every sink always gets its record (and in-flight gauges always come down)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..instrumentation._data import StreamRecord
from .taxonomy import Failure, Outcome, finish_reason_value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _chars(pieces: list[Any]) -> int:
    """Characters in the text pieces, without joining them (as ``StreamState.joined`` would count
    them: a piece that is not a string counts as its ``str()``)."""
    if set(map(type, pieces)) <= _STR:  # the usual case, in C
        return sum(map(len, pieces))
    return sum(len(p if isinstance(p, str) else str(p)) for p in pieces)


_STR = frozenset({str})


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def finish_reasons(reasons: dict[int, Any], failed: bool) -> tuple[str, ...]:
    """Finish reasons by choice index, as bounded values; on a failed stream a position whose
    reason never came reports ``error`` (semconv ``gen_ai.response.finish_reasons``)."""
    if len(reasons) == 1 and 0 in reasons:  # one choice, the usual case
        return (finish_reason_value(reasons[0]),)
    indexes = [i for i in reasons if isinstance(i, int) and 0 <= i < 128]
    if not indexes:
        return ("error",) if failed else ()
    values = [reasons.get(i) for i in range(max(indexes) + 1)]
    return tuple("error" if v is None else finish_reason_value(v) for v in values)


def build_record(
    ctl: Any,
    outcome: Outcome,
    failure: Failure | None,
    end: float,
    capture_content: bool,
    errors: Callable[[str, BaseException], None],
) -> StreamRecord:
    """The record of ``ctl`` (a ``StreamController``) ended at ``end`` (``perf_counter`` seconds)."""
    start = ctl.start
    error_type = failure.error_type if failure is not None else None
    reason = failure.reason if failure is not None else None
    try:
        s, calls = ctl.s, ctl.calls
        wire = s.wire
        text = s.joined(s.text) if capture_content else None
        code = _str(s.in_stream_error[0]) if s.in_stream_error is not None else None
        return StreamRecord(
            start=ctl.stream,
            outcome=outcome,
            error_type=error_type,
            reason=reason,
            error_code=code,
            duration=end - start,
            time_to_first_chunk=None if s.first_item_at is None else s.first_item_at - start,
            time_to_first_token=None if s.first_at is None else s.first_at - start,
            chunks=s.chunks,
            payload_chunks=s.payload_chunks,
            max_gap=s.max_gap,
            chunk_gaps=tuple(s.gaps) if s.gaps else (),
            finish_reasons=finish_reasons(s.finish_reasons or {}, error_type is not None),
            done_seen=wire.done if wire is not None and ctl.plan.api.done_marker else None,
            # The SDK does not validate: a field of another type is left out (None).
            input_tokens=None if s.input_tokens is None else _int(s.input_tokens),
            output_tokens=None if s.output_tokens is None else _int(s.output_tokens),
            reasoning_tokens=None if s.reasoning_tokens is None else _int(s.reasoning_tokens),
            cached_input_tokens=None if s.cached_tokens is None else _int(s.cached_tokens),
            request_id=calls.request_id if type(calls.request_id) is str else None,
            response_id=s.response_id if type(s.response_id) is str else _str(s.response_id),
            response_model=s.response_model if type(s.response_model) is str else _str(s.response_model),
            sdk_retries=calls.sdk_retries,
            sentinel_retries=calls.sentinel_retries,
            breaker=ctl.breaker_name,
            events=tuple(s.events),
            partial_text=text,
            partial_chars=len(text) if text is not None else _chars(s.text),
        )
    except Exception as exc:
        errors("record", exc)
        return minimal_record(ctl.stream, outcome, error_type, reason, end - start)


def minimal_record(
    stream: Any, outcome: Outcome, error_type: Any, reason: Any, duration: float
) -> StreamRecord:
    """A record with only the outcome and duration (when the state could not be read)."""
    return StreamRecord(
        start=stream,
        outcome=outcome,
        error_type=error_type,
        reason=reason,
        error_code=None,
        duration=duration,
        time_to_first_chunk=None,
        time_to_first_token=None,
        chunks=0,
        payload_chunks=0,
        max_gap=0.0,
        chunk_gaps=(),
        finish_reasons=(),
        done_seen=None,
        input_tokens=None,
        output_tokens=None,
        reasoning_tokens=None,
        cached_input_tokens=None,
        request_id=None,
        response_id=None,
        response_model=None,
        sdk_retries=0,
        sentinel_retries=0,
        breaker=None,
        events=(),
        partial_text=None,
        partial_chars=0,
    )
