"""Resuming a stream after output reached the consumer (``resume="replay"`` / ``"responses"``),
against the fault server's deterministic content: over many seeds the consumer sees every character
exactly once (no duplicate, no gap), and a replay that differs raises ``StreamDivergedError``."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import streamsentinel
from streamsentinel import StreamDivergedError
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

from ..support import RECORDINGS_DIR, STALL_TIMEOUT, TIMEOUT, Telemetry, reinstrument

CHUNKS = 8
PROMPT = "Tell me about streams"
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": PROMPT}]}
RESPONSES: dict[str, Any] = {"input": PROMPT}
# Faults that break a stream after output started, and a first-output index per API: chat's
# event 1 is the role chunk; Responses' first output delta is event 5.
BREAKS = [
    Fault.RESET,
    Fault.FIN_IN_CHUNK,
    Fault.EOF_CHUNKED,
    Fault.EOF_CLOSE,
    Fault.PARTIAL_EVENT,
    Fault.MALFORMED_JSON,
]
FIRST_OUTPUT = {"chat": 2, "responses": 5}
LAST_OUTPUT = {"chat": 1 + CHUNKS, "responses": 4 + CHUNKS}


def fast(**options: Any) -> Telemetry:
    return reinstrument(
        retry_attempts=3,
        retry_base_delay=0.0,
        retry_max_delay=0.0,
        retry_budget_min_retries=1000,
        **options,
    )


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    streamsentinel.uninstrument()


def text_of(api: str, items: list[Any]) -> str:
    if api == "chat":
        return "".join(i.choices[0].delta.content or "" for i in items if i.choices)
    return "".join(i.delta for i in items if i.type == "response.output_text.delta")


def consume(server: ChaosServer, api: str, *, timeout: Any = TIMEOUT, **extra: Any) -> list[Any]:
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=timeout) as client:
        kwargs: dict[str, Any] = {
            "model": "m",
            "stream": True,
            **(CHAT if api == "chat" else RESPONSES),
            **extra,
        }
        create: Any = client.chat.completions.create if api == "chat" else client.responses.create
        stream = create(**kwargs)
        with stream:
            return list(stream)


def expected(server: ChaosServer, api: str) -> str:
    return server.expected_text(CHAT if api == "chat" else RESPONSES)


def _normalised(value: Any) -> Any:
    # Ids derive from a request's arrival order on its server, timestamps from the wall clock: a
    # replay's items differ from the first attempt's only there.
    if isinstance(value, dict):
        return {
            k: 0 if k in ("id", "item_id", "created", "created_at", "completed_at") else _normalised(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def sequence(items: list[Any]) -> list[Any]:
    """The items as the consumer saw them, in order, ids and timestamps aside."""
    return [_normalised(item.model_dump()) for item in items]


async def consume_in(mode: str, server: ChaosServer, api: str) -> list[Any]:
    if mode == "sync":
        return consume(server, api)
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as c:
        create: Any = c.chat.completions.create if api == "chat" else c.responses.create
        stream = await create(model="m", stream=True, **(CHAT if api == "chat" else RESPONSES))
        async with stream:
            return [item async for item in stream]


@pytest.mark.parametrize("seed", range(40))
def test_replay_delivers_every_character_exactly_once(seed: int) -> None:
    rng = random.Random(seed)
    api = rng.choice(["chat", "responses"])
    fault = rng.choice(BREAKS)
    after = rng.randint(FIRST_OUTPUT[api], LAST_OUTPUT[api] - 1)
    telemetry = fast(resume="replay")
    plan = FaultPlan(script=[FaultSpec(fault=fault, after=after)])
    with ChaosServer(plan, chunks=CHUNKS, seed=seed) as server:
        items = consume(server, api)
        assert text_of(api, items) == expected(server, api)
        assert server.arrivals == 2
    assert telemetry.by("openai_stream_resumes_total", "result") == {"resumed": 1}
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total") == len(items)


@pytest.mark.parametrize("seed", range(10))
async def test_replay_async(seed: int) -> None:
    rng = random.Random(1000 + seed)
    api = rng.choice(["chat", "responses"])
    after = rng.randint(FIRST_OUTPUT[api], LAST_OUTPUT[api] - 1)
    telemetry = fast(resume="replay")
    plan = FaultPlan(script=[FaultSpec(fault=rng.choice(BREAKS), after=after)])
    with ChaosServer(plan, chunks=CHUNKS, seed=seed) as server:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
        ) as c:
            create: Any = c.chat.completions.create if api == "chat" else c.responses.create
            stream = await create(model="m", stream=True, **(CHAT if api == "chat" else RESPONSES))
            items = [item async for item in stream]
        assert text_of(api, items) == expected(server, api)
    assert telemetry.by("openai_stream_resumes_total", "result") == {"resumed": 1}


@pytest.mark.parametrize("seed", range(10))
def test_responses_resume_continues_from_the_last_sequence_number(seed: int) -> None:
    rng = random.Random(2000 + seed)
    after = rng.randint(FIRST_OUTPUT["responses"], LAST_OUTPUT["responses"] - 1)
    telemetry = fast(resume="responses")
    plan = FaultPlan(script=[FaultSpec(fault=rng.choice(BREAKS), after=after)])
    with ChaosServer(plan, chunks=CHUNKS, seed=seed) as server:
        items = consume(server, "responses", background=True)
        assert text_of("responses", items) == expected(server, "responses")
        numbers = [i.sequence_number for i in items]
        assert numbers == sorted(set(numbers))  # no event twice, in order
        records = server.wait_for_records(2)
        assert [r.method for r in records] == ["POST", "GET"]  # create, then retrieve
    assert telemetry.by("openai_stream_resumes_total", "strategy") == {"responses": 1}


def test_stall_mid_output_resumes_by_replay() -> None:
    telemetry = fast(resume="replay", stall_timeout=0.3)
    plan = FaultPlan(script=[FaultSpec(fault=Fault.STALL_MID_STREAM, after=4, stall_seconds=30)])
    with ChaosServer(plan, chunks=CHUNKS) as server:
        items = consume(server, "chat")
        assert text_of("chat", items) == expected(server, "chat")
    assert telemetry.by("openai_stream_resumes_total", "result") == {"resumed": 1}


def test_a_shorter_replay_diverges() -> None:
    telemetry = fast(resume="replay")
    # The replay carries 3 words where 4 were already delivered: it cannot continue.
    plan = FaultPlan(script=[FaultSpec(fault=Fault.RESET, after=5), FaultSpec(chunks=3)])
    with ChaosServer(plan, chunks=CHUNKS) as server, pytest.raises(StreamDivergedError) as caught:
        consume(server, "chat")
    assert caught.value.delivered.startswith(caught.value.received)
    assert len(caught.value.received) < len(caught.value.delivered)
    assert telemetry.by("openai_stream_resumes_total", "result") == {"diverged": 1}
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"truncated": 1}


def test_a_different_replay_diverges() -> None:
    telemetry = fast(resume="replay")
    recording = next(p.stem for p in RECORDINGS_DIR.glob("*chat_completion_streaming__0.json"))
    plan = FaultPlan(script=[FaultSpec(fault=Fault.RESET, after=4), FaultSpec(replay=recording)])
    with ChaosServer(plan, chunks=CHUNKS, recordings=_recordings()) as server:
        with pytest.raises(StreamDivergedError) as caught:
            consume(server, "chat")
        assert caught.value.received != caught.value.delivered[: len(caught.value.received)]
    assert telemetry.by("openai_stream_resumes_total", "result") == {"diverged": 1}


def _recordings() -> list[Any]:
    from streamsentinel.chaos import load_recordings

    return load_recordings(RECORDINGS_DIR)


def test_resume_off_lets_the_failure_through() -> None:
    telemetry = fast()
    plan = FaultPlan(script=[FaultSpec(fault=Fault.RESET, after=4)])
    with ChaosServer(plan, chunks=CHUNKS) as server, pytest.raises(openai.APIConnectionError):
        consume(server, "chat")
    assert server.arrivals == 1
    assert telemetry.by("openai_stream_resumes_total", "result") == {}


def test_responses_strategy_does_not_apply_to_chat() -> None:
    fast(resume="responses")
    plan = FaultPlan(script=[FaultSpec(fault=Fault.RESET, after=4)])
    with ChaosServer(plan, chunks=CHUNKS) as server, pytest.raises(openai.APIConnectionError):
        consume(server, "chat", timeout=STALL_TIMEOUT)
    assert server.arrivals == 1


# Cuts after output ended: chat's event 10 is the finish chunk (then [DONE]); Responses' event 13 is
# response.output_text.done (the whole text), 14 content_part.done, 15 output_item.done (then
# response.completed). Several cuts: the replays skip what every earlier attempt delivered.
LATE_CUTS = [
    ("chat", [(Fault.RESET, 10)]),
    ("chat", [(Fault.EOF_CHUNKED, 10)]),
    ("chat", [(Fault.RESET, 5), (Fault.RESET, 10)]),
    ("responses", [(Fault.RESET, 13)]),
    ("responses", [(Fault.EOF_CLOSE, 14)]),
    ("responses", [(Fault.RESET, 15)]),
    ("responses", [(Fault.RESET, 7), (Fault.RESET, 13)]),
]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("api", "cuts"), LATE_CUTS, ids=[f"{a}-{c}" for a, c in LATE_CUTS])
async def test_replay_delivers_the_uncut_item_sequence(mode: str, api: str, cuts: list[Any]) -> None:
    """Issue 15, defect 2: a replay skips by position every item already delivered, the items
    without text after the output (finish chunk, output_text.done, ...) included."""
    streamsentinel.uninstrument()
    with ChaosServer(chunks=CHUNKS) as server:
        uncut = sequence(await consume_in(mode, server, api))
    telemetry = fast(resume="replay")
    plan = FaultPlan(script=[FaultSpec(fault=fault, after=after) for fault, after in cuts])
    with ChaosServer(plan, chunks=CHUNKS) as server:
        items = await consume_in(mode, server, api)
        assert server.arrivals == len(cuts) + 1
    assert sequence(items) == uncut
    assert telemetry.by("openai_stream_resumes_total", "result") == {"resumed": len(cuts)}
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert telemetry.value("openai_stream_chunks_total") == len(uncut)
