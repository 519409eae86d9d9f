"""The relay service (examples/relay_service) against broken upstream streams, with the pytest
fixtures streamsentinel installs (docs/testing.md: "Testing your service against broken streams")."""

import json

import pytest
from examples.relay_service.app import app
from starlette.testclient import TestClient

from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec
from streamsentinel.instrumentation import StreamRecord

PROMPT = {"messages": [{"role": "user", "content": "hi"}]}  # what the relay sends upstream


def relay(monkeypatch: pytest.MonkeyPatch, server: ChaosServer, prompt: str = "hi") -> list[tuple[str, str]]:
    """POST /chat to the relay, its upstream being the fault server; the SSE events it answered."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("RELAY_MAX_RETRIES", "0")
    with TestClient(app) as http:  # runs the app's lifespan: its AsyncOpenAI client
        response = http.post("/chat", json={"prompt": prompt, "request_id": "r1"})
    events = []
    for block in response.text.split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event", "message"), fields["data"]))
    return events


def test_cut_stream_reaches_the_client_as_an_error(
    monkeypatch: pytest.MonkeyPatch,
    streamsentinel_server: ChaosServer,
    streamsentinel_records: list[StreamRecord],
) -> None:
    # The upstream sends the role chunk and two content chunks, then ends the body without [DONE].
    streamsentinel_server.plan = FaultPlan(script=[FaultSpec(Fault.EOF_CHUNKED, after=3)])

    events = relay(monkeypatch, streamsentinel_server)

    # Without streamsentinel the relay would end with [DONE], as if the answer were complete.
    text = "".join(json.loads(data)["content"] for event, data in events[:-1])
    assert text == streamsentinel_server.expected_text(PROMPT, chunks=2)
    assert events[-1] == ("error", '{"error": "StreamTruncatedError"}')
    assert [(r.outcome, r.reason, r.chunks) for r in streamsentinel_records] == [
        ("truncated", "eof_before_done", 3)
    ]


@pytest.mark.streamsentinel(retry_attempts=3, retry_base_delay=0.0)
def test_reset_before_output_is_retried(
    monkeypatch: pytest.MonkeyPatch,
    streamsentinel_server: ChaosServer,
    streamsentinel_records: list[StreamRecord],
) -> None:
    # The first attempt is reset before any content; streamsentinel re-issues it (nothing reached
    # the relay yet), the second attempt is clean.
    streamsentinel_server.plan = FaultPlan(script=[FaultSpec(Fault.RESET, after=0), Fault.NONE])

    events = relay(monkeypatch, streamsentinel_server)

    text = "".join(json.loads(data)["content"] for event, data in events[:-1])
    assert text == streamsentinel_server.expected_text(PROMPT)
    assert events[-1] == ("message", "[DONE]")
    assert [r.fault for r in streamsentinel_server.wait_for_records(2)] == [Fault.RESET, Fault.NONE]
    [record] = streamsentinel_records
    assert (record.outcome, record.reason, record.sentinel_retries) == ("completed", None, 1)
