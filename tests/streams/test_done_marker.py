"""OpenAI-compatible servers that never send ``data: [DONE]``: the per-server ``done_marker`` policy,
against the fault server's "never sends [DONE]" mode, with the real SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import structlog

from streamsentinel import StreamTruncatedError
from streamsentinel.chaos import ChaosServer, FaultPlan

from ..support import TIMEOUT, Telemetry, chat_kwargs, reinstrument

ITEMS = 8  # role, 5 content, finish, usage: everything but [DONE]
NO_DONE = {"x-chaos-no-done": "1"}
CUT_BEFORE_FINISH = {"x-chaos-no-done": "1", "x-chaos-fault": "eof_chunked", "x-chaos-after": "4"}


def _read(client: openai.OpenAI, headers: dict[str, str]) -> tuple[int, BaseException | None]:
    items = 0
    try:
        for _ in client.chat.completions.create(**chat_kwargs(extra_headers=headers)):
            items += 1
    except StreamTruncatedError as exc:
        return items, exc
    return items, None


def _sends_done(telemetry: Telemetry) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in telemetry.registry.collect():
        for sample in family.samples:
            if sample.name == "openai_stream_server_sends_done":
                out[sample.labels["server"]] = sample.value
    return out


@pytest.fixture
def no_done_server() -> Any:
    with ChaosServer(FaultPlan(no_done=True), chunks=5) as server:
        yield server


def _client(server: ChaosServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT)


def test_plain_sdk_reads_every_item_and_ends_silently(no_done_server: ChaosServer) -> None:
    import streamsentinel

    streamsentinel.uninstrument()
    with _client(no_done_server) as client:
        assert _read(client, {}) == (ITEMS, None)
    assert no_done_server.wait_for_records(1)[0].no_done


def test_auto_treats_a_server_that_never_sends_done_as_complete(no_done_server: ChaosServer) -> None:
    telemetry = reinstrument(done_marker="auto")
    with structlog.testing.capture_logs() as logs, _client(no_done_server) as client:
        results = [_read(client, {}) for _ in range(3)]
        cut = _read(client, {"x-chaos-fault": "eof_chunked", "x-chaos-after": "4"})
    assert results == [(ITEMS, None)] * 3
    # A cut before the finish reasons is still a truncation.
    assert cut[0] == 4 and isinstance(cut[1], StreamTruncatedError)
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 3, "truncated": 1}
    assert _sends_done(telemetry) == {"127.0.0.1": 0.0}
    omits = [e for e in logs if e["event"] == "stream.server_omits_done"]
    assert [(e["server"], e["policy"], e["log_level"]) for e in omits] == [("127.0.0.1", "auto", "warning")]


def test_auto_is_strict_for_a_server_once_it_sent_done(chaos: ChaosServer, client: openai.OpenAI) -> None:
    telemetry = reinstrument(done_marker="auto")
    assert _read(client, {}) == (ITEMS, None)  # with [DONE]: the server is known to send it
    items, exc = _read(client, NO_DONE)
    assert items == ITEMS and isinstance(exc, StreamTruncatedError) and exc.reason == "eof_before_done"
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1, "truncated": 1}
    assert _sends_done(telemetry) == {"127.0.0.1": 1.0}


def test_strict_makes_every_missing_done_a_truncation(no_done_server: ChaosServer) -> None:
    telemetry = reinstrument(done_marker="strict")
    with _client(no_done_server) as client:
        items, exc = _read(client, {})
    assert items == ITEMS and isinstance(exc, StreamTruncatedError) and exc.reason == "eof_before_done"
    assert telemetry.by("openai_stream_truncations_total", "reason") == {"eof_before_done": 1}


def test_lenient_per_server_and_a_cut_before_the_finish_reasons(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    telemetry = reinstrument(done_marker={"127.0.0.1": "lenient", "*": "strict"})
    assert _read(client, {}) == (ITEMS, None)
    assert _read(client, NO_DONE) == (ITEMS, None)  # lenient even after a [DONE]: the user chose
    items, exc = _read(client, CUT_BEFORE_FINISH)
    assert items == 4 and isinstance(exc, StreamTruncatedError)
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 2, "truncated": 1}
