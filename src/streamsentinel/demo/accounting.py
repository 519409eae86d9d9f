"""The demo's accounting: what the server injected (ground truth) and what the consumers saw, beside
what streamsentinel counted. Every row must match for ``accounting: OK``."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._core.taxonomy import classify_error_code
from ..chaos import FAULT_TABLE, Fault, Outcome, Phase, RequestRecord, TruncationReason
from .scrape import Scrape
from .workload import ConsumerResult, request_id

# The error_type streamsentinel must report for a request whose final attempt had this fault.
_FAULT_ERROR_TYPE: dict[Fault, str] = {
    Fault.EOF_CHUNKED: "truncated",
    Fault.EOF_CLOSE: "truncated",
    Fault.PARTIAL_EVENT: "truncated",
    Fault.JSON_BODY_200: "truncated",
    Fault.FIN_IN_CHUNK: "connection_error",
    Fault.RESET: "connection_error",
    Fault.STALL_BEFORE_HEADERS: "timeout",
    Fault.STALL_BEFORE_FIRST_TOKEN: "timeout",
    Fault.STALL_MID_STREAM: "timeout",
    Fault.MALFORMED_JSON: "malformed_event",
    Fault.RATE_LIMIT_REQUESTS: "rate_limited",
    Fault.RATE_LIMIT_TOKENS: "rate_limited",
    Fault.INSUFFICIENT_QUOTA: "quota_exhausted",
    Fault.REQUEST_TOO_LARGE: "request_too_large",
    Fault.SERVER_ERROR: "server_error",
}
# Faults the SDK ends silently (so streamsentinel raises StreamTruncatedError), per API.
_SILENT = {
    Fault.EOF_CHUNKED,
    Fault.EOF_CLOSE,
    Fault.PARTIAL_EVENT,
    Fault.JSON_BODY_200,
    Fault.ERROR_EVENT_FLAT,
}


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the accounting: ``section``/``name``, the truth and streamsentinel's count."""

    section: str
    name: str
    expected: int
    counted: int

    @property
    def ok(self) -> bool:
        return self.expected == self.counted


def _rows(section: str, name: str, expected: Counter[str], counted: Counter[str]) -> list[Row]:
    keys = sorted(set(expected) | set(counted))
    return [Row(section, f"{name}{{{key}}}", expected[key], counted[key]) for key in keys]


def logical_requests(records: Iterable[RequestRecord]) -> list[list[RequestRecord]]:
    """HTTP attempts grouped per logical request (the demo sends one ``X-Client-Request-Id`` per
    logical request; the SDK's and streamsentinel's retries repeat it), each group in arrival order."""
    groups: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        groups[record.client_request_id or f"seq-{record.seq}"].append(record)
    return [sorted(g, key=lambda r: r.seq) for g in groups.values()]


_STALLS = {Fault.STALL_BEFORE_HEADERS, Fault.STALL_BEFORE_FIRST_TOKEN, Fault.STALL_MID_STREAM}


def _stall_seen(final: RequestRecord, seen: str | None) -> str:
    """What ended a stall for the client, from what the server and the client did: the client
    left first (its read timeout), or the server closed the stalled connection first (a client
    still waiting sees the connection lost, unless its read timeout fired just before the FIN
    reached it: then its own exception, `seen`, says so)."""
    if final.stall_expired and seen != "APITimeoutError":
        return "connection_error"
    return "timeout"


def _error_type(final: RequestRecord, seen: str | None = None) -> str | None:
    if final.expected_outcome is Outcome.COMPLETED:
        return None
    if final.fault in (Fault.ERROR_EVENT, Fault.ERROR_EVENT_FLAT):
        return classify_error_code(final.spec.error_code)[0]
    if final.fault in _STALLS:
        return _stall_seen(final, seen)
    return _FAULT_ERROR_TYPE[final.fault]


def _truncation_reason(final: RequestRecord, seen: str | None = None) -> str:
    if final.fault in _STALLS and _stall_seen(final, seen) == "connection_error":
        return str(TruncationReason.CONNECTION_LOST)
    return str(FAULT_TABLE[final.fault].reason)


def _in_stream_kind(record: RequestRecord) -> str | None:
    if record.fault not in (Fault.ERROR_EVENT, Fault.ERROR_EVENT_FLAT):
        return None
    return classify_error_code(record.spec.error_code)[1]


def ground_truth_rows(
    records: Sequence[RequestRecord], scrape: Scrape, results: Sequence[ConsumerResult] = ()
) -> list[Row]:
    """Rows comparing the chaos server's log with streamsentinel's metrics.

    A stall's error is what ended it (`RequestRecord.client_disconnected` / `stall_expired`); when
    the server closed a stalled connection, the consumer's exception in `results` (the demo's, by
    `X-Client-Request-Id`) tells whether its read timeout fired just before the FIN arrived."""
    groups = logical_requests(records)
    finals = [g[-1] for g in groups]
    seen = {request_id(r.index): r.error for r in results}

    def seen_by(final: RequestRecord) -> str | None:
        return seen.get(final.client_request_id or "")

    outcomes = Counter(str(f.expected_outcome) for f in finals)
    truncations = Counter(
        _truncation_reason(f, seen_by(f))
        for f in finals
        if f.expected_outcome is not Outcome.COMPLETED and FAULT_TABLE[f.fault].phase is Phase.BODY
    )
    errors = Counter(e for f in finals if (e := _error_type(f, seen_by(f))) is not None)
    rate_limits: Counter[str] = Counter()
    for record in records:
        kind = FAULT_TABLE[record.fault].rate_limit_kind
        if kind is not None:
            rate_limits[str(kind)] += 1
        in_stream = _in_stream_kind(record)
        if in_stream is not None:
            rate_limits[in_stream] += 1
    # Each SDK call starts its retry count at 0: a second call in a group is streamsentinel's retry.
    retries = Counter("sdk" for r in records if r.retry_count)
    retries["sentinel"] = sum(sum(1 for r in g if not r.retry_count) - 1 for g in groups)
    # Calls the breaker rejected never reached the server: the consumer rows account for them.
    rejected = scrape.total("openai_stream_requests_total", outcome="rejected")
    reached = scrape.total("openai_stream_requests_total") - rejected
    rows = [Row("server", "requests (logical)", len(groups), reached)]
    counted_outcomes = scrape.by("openai_stream_requests_total", "outcome")
    counted_outcomes.pop("rejected", None)
    rows += _rows("server", "outcome", outcomes, counted_outcomes)
    rows += _rows(
        "server", "truncations", truncations, scrape.by("openai_stream_truncations_total", "reason")
    )
    rows += _rows("server", "errors", errors, scrape.by("openai_stream_errors_total", "error_type"))
    rows += _rows(
        "server", "rate_limit_events", rate_limits, scrape.by("openai_stream_rate_limit_events_total", "kind")
    )
    rows += _rows("server", "retries", retries, scrape.by("openai_stream_retries_total", "layer"))
    return rows


def surfaced_rows(records: Sequence[RequestRecord], results: Sequence[ConsumerResult]) -> list[Row]:
    """Silent truncations injected vs ``StreamTruncatedError`` seen by consumers."""
    finals = [g[-1] for g in logical_requests(records)]
    silent = sum(
        1 for f in finals if f.fault in _SILENT or (f.fault is Fault.ERROR_EVENT and f.api == "responses")
    )
    seen = sum(1 for r in results if r.error == "StreamTruncatedError")
    return [Row("consumer", "silent truncations surfaced", silent, seen)]


def consumer_rows(results: Sequence[ConsumerResult], scrape: Scrape) -> list[Row]:
    """Rows comparing what the consumers saw with streamsentinel's metrics (any endpoint)."""
    requests = scrape.by("openai_stream_requests_total", "outcome")
    return [
        Row("consumer", "streams", len(results), scrape.total("openai_stream_requests_total")),
        Row("consumer", "ended cleanly", sum(1 for r in results if r.error is None), requests["completed"]),
        Row(
            "consumer",
            "ended with an error",
            sum(1 for r in results if r.error is not None),
            requests["truncated"] + requests["failed"] + requests["rejected"],
        ),
        Row(
            "consumer",
            "rejected by the breaker (CircuitOpenError)",
            sum(1 for r in results if r.error == "CircuitOpenError"),
            requests["rejected"],
        ),
        Row(
            "consumer",
            "items received",
            sum(r.items for r in results),
            scrape.total("openai_stream_chunks_total"),
        ),
        Row("consumer", "in flight at the end", 0, scrape.total("openai_stream_in_flight")),
        Row(
            "consumer",
            "instrumentation errors",
            0,
            scrape.total("openai_stream_instrumentation_errors_total"),
        ),
    ]


def breaker_rows(scrape: Scrape) -> list[Row]:
    """The outage scenario's expectation: the breaker opened once, probed once and closed once."""
    transitions = Counter(
        {
            f"{s.labels['from_state']}->{s.labels['to_state']}": round(s.value)
            for s in scrape.samples
            if s.name == "openai_stream_circuit_transitions_total" and s.value
        }
    )
    expected = Counter({"closed->open": 1, "open->half_open": 1, "half_open->closed": 1})
    rows = _rows("scenario", "breaker transitions", expected, transitions)
    rows.append(
        Row(
            "scenario",
            "breaker closed at the end",
            1,
            scrape.total("openai_stream_circuit_state", state="closed"),
        )
    )
    rows.append(
        Row(
            "scenario",
            "rejections counted by the breaker",
            scrape.total("openai_stream_requests_total", outcome="rejected"),
            scrape.total("openai_stream_circuit_rejected_total"),
        )
    )
    return rows
