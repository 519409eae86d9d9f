"""The circuit breaker wired into real streaming calls: the real SDK against the chaos server over
loopback, sync and async. A rejected call makes no HTTP request (the server's arrival count is the
proof); results count when the stream ends; quota, 4xx, abandoned and late results never count;
half-open admits exactly its permitted probes under 200 threads and 2000 tasks; fallbacks, shadow
mode, mode off and the STREAMSENTINEL_BREAKER_* variables. No sleeps: the open wait is skipped with
manual transitions, and probes are held open by not consuming their streams."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import streamsentinel
from streamsentinel import BreakerConfig, CircuitOpenError, State
from streamsentinel._resilience.breaker import CircuitBreaker
from streamsentinel.chaos import ChaosServer

from ..support import MODEL, TIMEOUT, Telemetry, chat_kwargs, reinstrument

KEY = f"127.0.0.1/{MODEL}"
FALLBACK_MODEL = "gpt-4o"
FALLBACK_KEY = f"127.0.0.1/{FALLBACK_MODEL}"
CONFIG = BreakerConfig(
    minimum_number_of_calls=4,
    sliding_window_size=4,
    timeout_streak_min_seconds=0,
    permitted_number_of_calls_in_half_open_state=2,
)
CHAT_ITEMS = 8  # role chunk, 5 content chunks (the `chaos` fixture), finish chunk, usage chunk
AFTER = 3
REJECTED = 3  # calls made while the breaker is open

STATE = "openai_stream_circuit_state"
TRANSITIONS = "openai_stream_circuit_transitions_total"
REJECTED_TOTAL = "openai_stream_circuit_rejected_total"
FALLBACKS = "openai_stream_circuit_fallbacks_total"
FAILURE_RATE = "openai_stream_circuit_failure_rate"
SLOW_CALL_RATE = "openai_stream_circuit_slow_call_rate"
REQUESTS = "openai_stream_requests_total"
CIRCUIT_FAMILIES = (STATE, TRANSITIONS, REJECTED_TOTAL, FALLBACKS, FAILURE_RATE, SLOW_CALL_RATE)


@pytest.fixture(autouse=True)
def _uninstrumented() -> Iterator[None]:
    streamsentinel.uninstrument()
    yield
    streamsentinel.uninstrument()


# -- requests ---------------------------------------------------------------------------------------


def request(fault: str | None = None, *, model: str = MODEL, after: int | None = None) -> dict[str, Any]:
    headers: dict[str, str] = {}
    if fault is not None:
        headers["x-chaos-fault"] = fault
    if after is not None:
        headers["x-chaos-after"] = str(after)
    return chat_kwargs(model=model, extra_headers=headers) if headers else chat_kwargs(model=model)


def consume(stream: Any) -> tuple[int, BaseException | None]:
    """Iterate an (already created) sync stream to its end: (items, exception or None)."""
    items = 0
    try:
        with stream:
            for _ in stream:
                items += 1
    except Exception as exc:
        return items, exc
    return items, None


async def aconsume(stream: Any) -> tuple[int, BaseException | None]:
    items = 0
    try:
        async with stream:
            async for _ in stream:
                items += 1
    except Exception as exc:
        return items, exc
    return items, None


def call(
    client: openai.OpenAI, fault: str | None = None, *, model: str = MODEL, after: int | None = None
) -> tuple[int, BaseException | None]:
    """One streaming call consumed to its end: (items, the exception create() or iteration raised)."""
    try:
        stream = client.chat.completions.create(**request(fault, model=model, after=after))
    except Exception as exc:
        return 0, exc
    return consume(stream)


async def acall(
    client: openai.AsyncOpenAI, fault: str | None = None, *, model: str = MODEL, after: int | None = None
) -> tuple[int, BaseException | None]:
    try:
        stream = await client.chat.completions.create(**request(fault, model=model, after=after))
    except Exception as exc:
        return 0, exc
    return await aconsume(stream)


# -- telemetry --------------------------------------------------------------------------------------


def breaker_of(telemetry: Telemetry, key: str = KEY) -> CircuitBreaker:
    found: CircuitBreaker = telemetry.runtime.circuits.store.get(key)
    return found


def current(breaker: CircuitBreaker) -> State:
    """The breaker's state (a call, so mypy does not narrow it across transitions)."""
    return breaker.state


def samples(telemetry: Telemetry, name: str, **labels: str) -> list[float]:
    """Every sample value of ``name`` whose labels include ``labels`` (no series: [])."""
    return [
        sample.value
        for family in telemetry.registry.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def failure_rate(telemetry: Telemetry, key: str = KEY) -> float:
    values = samples(telemetry, FAILURE_RATE, breaker=key)
    assert len(values) == 1, values
    return values[0]


def transitions(telemetry: Telemetry, key: str = KEY) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in telemetry.registry.collect():
        for sample in family.samples:
            if sample.name == TRANSITIONS and sample.labels["breaker"] == key and sample.value:
                out[sample.labels["from_state"], sample.labels["to_state"]] = sample.value
    return out


def states(telemetry: Telemetry, key: str = KEY) -> dict[str, float]:
    """The state gauge: every state's series exists, exactly one of them at 1."""
    values = {
        sample.labels["state"]: sample.value
        for family in telemetry.registry.collect()
        for sample in family.samples
        if sample.name == STATE and sample.labels["breaker"] == key
    }
    assert set(values) == {s.value for s in State}, values
    return {state: value for state, value in values.items() if value}


def outcomes(telemetry: Telemetry, model: str = MODEL) -> dict[str, float]:
    return telemetry.by(REQUESTS, "outcome", model=model)


def spans_with(telemetry: Telemetry, outcome: str) -> list[ReadableSpan]:
    return [
        s for s in telemetry.spans() if s.attributes and s.attributes.get("streamsentinel.outcome") == outcome
    ]


def assert_rejected_spans(telemetry: Telemetry, count: int, model: str = MODEL) -> None:
    rejected = spans_with(telemetry, "rejected")
    assert len(rejected) == count
    for span in rejected:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == "circuit_open"
        assert span.attributes["gen_ai.request.model"] == model
        assert span.attributes["streamsentinel.chunk.count"] == 0


def assert_open_error(exc: BaseException | None, key: str = KEY, *, half_open: bool = False) -> None:
    assert isinstance(exc, CircuitOpenError), exc
    assert isinstance(exc, openai.APIConnectionError)
    assert exc.breaker == key
    assert exc.retry_after <= CONFIG.max_wait_duration_in_open_state  # open, not forced open
    # Open: the rest of the open wait. Half-open with every probe out: 0.0 (the breaker's
    # retry_after() is documented so, although no probe is free until one of them ends).
    assert exc.retry_after == 0.0 if half_open else exc.retry_after > 0


def is_nan_or_zero(value: float) -> bool:
    return math.isnan(value) or value == 0.0


# -- 1. an outage opens the breaker; rejections make no request; half-open probes decide -------------


def test_outage_opens_after_the_fourth_failure_rejects_without_requests_and_recovers_sync(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    for n in range(1, 5):
        items, exc = call(client, "server_error")
        assert (items, type(exc)) == (0, openai.InternalServerError)
        assert current(breaker) is (State.OPEN if n == 4 else State.CLOSED), n
        if n < 4:
            assert math.isnan(failure_rate(telemetry))  # below minimum_number_of_calls: no rate
    assert failure_rate(telemetry) == 1.0
    assert chaos.arrivals == 4
    assert transitions(telemetry) == {("closed", "open"): 1}
    assert states(telemetry) == {"open": 1}

    for _ in range(REJECTED):
        items, exc = call(client)
        assert items == 0
        assert_open_error(exc)
    assert chaos.arrivals == 4  # no HTTP request for a rejected call
    assert telemetry.value(REJECTED_TOTAL, breaker=KEY) == REJECTED
    assert outcomes(telemetry) == {"failed": 4, "rejected": REJECTED}
    assert breaker.snapshot().not_permitted_calls == REJECTED
    assert_rejected_spans(telemetry, REJECTED)
    assert samples(telemetry, FALLBACKS) == []  # no fallback configured: the error was raised

    breaker.transition_to_half_open()
    assert call(client) == (CHAT_ITEMS, None)
    assert current(breaker) is State.HALF_OPEN  # one of the two probes is back: no decision yet
    assert call(client) == (CHAT_ITEMS, None)
    assert current(breaker) is State.CLOSED
    assert chaos.arrivals == 6
    assert transitions(telemetry) == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "closed"): 1,
    }
    assert states(telemetry) == {"closed": 1}
    assert failure_rate(telemetry) == 0.0  # the probes' rate, the last one reported
    assert telemetry.value(REJECTED_TOTAL, breaker=KEY) == REJECTED
    assert outcomes(telemetry) == {"failed": 4, "rejected": REJECTED, "completed": 2}
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0


async def test_outage_of_mid_stream_resets_opens_after_the_fourth_and_recovers_async(
    chaos: ChaosServer, aclient: openai.AsyncOpenAI
) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    for n in range(1, 5):
        items, exc = await acall(aclient, "reset", after=AFTER)
        assert items == AFTER  # the failure came after output
        assert type(exc) is openai.APIConnectionError
        assert current(breaker) is (State.OPEN if n == 4 else State.CLOSED), n
    assert failure_rate(telemetry) == 1.0
    assert chaos.arrivals == 4

    for _ in range(REJECTED):
        items, exc = await acall(aclient)
        assert items == 0
        assert_open_error(exc)
    assert chaos.arrivals == 4
    assert telemetry.value(REJECTED_TOTAL, breaker=KEY) == REJECTED
    assert outcomes(telemetry) == {"truncated": 4, "rejected": REJECTED}
    assert_rejected_spans(telemetry, REJECTED)

    breaker.transition_to_half_open()
    assert await acall(aclient) == (CHAT_ITEMS, None)
    assert current(breaker) is State.HALF_OPEN
    assert await acall(aclient) == (CHAT_ITEMS, None)
    assert current(breaker) is State.CLOSED
    assert chaos.arrivals == 6
    assert transitions(telemetry) == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "closed"): 1,
    }
    assert states(telemetry) == {"closed": 1}
    assert outcomes(telemetry) == {"truncated": 4, "rejected": REJECTED, "completed": 2}


def test_a_failing_half_open_probe_reopens_and_extra_callers_are_rejected_sync(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    for _ in range(4):
        call(client, "server_error")
    assert current(breaker) is State.OPEN
    breaker.transition_to_half_open()

    # Both permits are out while their streams are open: a third caller is rejected, no request.
    good = client.chat.completions.create(**request())
    bad = client.chat.completions.create(**request("error_event", after=AFTER))
    assert chaos.arrivals == 6
    _, exc = call(client)
    assert_open_error(exc, half_open=True)
    assert chaos.arrivals == 6

    assert consume(good) == (CHAT_ITEMS, None)
    assert current(breaker) is State.HALF_OPEN
    items, exc = consume(bad)
    assert items == AFTER
    assert isinstance(exc, openai.APIError) and exc.code == "server_error"
    assert current(breaker) is State.OPEN  # 1 of 2 probes failed: 50% >= the 50% threshold
    assert transitions(telemetry) == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "open"): 1,
    }
    assert states(telemetry) == {"open": 1}
    assert failure_rate(telemetry) == 0.5

    _, exc = call(client)
    assert_open_error(exc)
    assert chaos.arrivals == 6
    assert telemetry.value(REJECTED_TOTAL, breaker=KEY) == 2
    assert outcomes(telemetry) == {"failed": 4, "rejected": 2, "completed": 1, "truncated": 1}


async def test_a_failing_half_open_probe_reopens_async(
    chaos: ChaosServer, aclient: openai.AsyncOpenAI
) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    for _ in range(4):
        await acall(aclient, "server_error")
    breaker.transition_to_half_open()
    _, exc = await acall(aclient, "server_error")
    assert type(exc) is openai.InternalServerError
    assert current(breaker) is State.HALF_OPEN
    _, exc = await acall(aclient, "server_error")
    assert current(breaker) is State.OPEN
    _, exc = await acall(aclient)
    assert_open_error(exc)
    assert chaos.arrivals == 6
    assert transitions(telemetry) == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "open"): 1,
    }
    assert states(telemetry) == {"open": 1}
    assert outcomes(telemetry) == {"failed": 6, "rejected": 1}


# -- 2. what never counts: quota, 4xx, abandoned streams, late results ------------------------------


def test_quota_and_client_errors_never_trip_the_breaker(chaos: ChaosServer, client: openai.OpenAI) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    for _ in range(10):
        _, exc = call(client, "insufficient_quota")
        assert isinstance(exc, openai.RateLimitError) and exc.code == "insufficient_quota"
        _, exc = call(client, "request_too_large")
        assert isinstance(exc, openai.RateLimitError)
        _, exc = call(client, "no_such_fault")  # the chaos server answers 400
        assert isinstance(exc, openai.BadRequestError)
    assert chaos.arrivals == 30
    assert current(breaker) is State.CLOSED
    snapshot = breaker.snapshot()
    assert (snapshot.buffered_calls, snapshot.failed_calls, snapshot.generation) == (0, 0, 0)
    assert all(is_nan_or_zero(v) for v in samples(telemetry, FAILURE_RATE, breaker=KEY))
    assert samples(telemetry, TRANSITIONS) == []
    assert states(telemetry) == {"closed": 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {
        "quota_exhausted": 10,
        "request_too_large": 10,
        "client_error": 10,
    }

    # The window is still empty: a real outage trips it after exactly four failures.
    for n in range(1, 5):
        call(client, "server_error")
        assert current(breaker) is (State.OPEN if n == 4 else State.CLOSED)
    assert breaker.snapshot().buffered_calls == 4


def test_abandoned_streams_are_ignored_and_an_abandoned_probe_frees_its_permit(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    for _ in range(10):
        # Each of these would fail if read to the end; the consumer leaves after one item.
        stream = client.chat.completions.create(**request("error_event", after=AFTER))
        for _item in stream:
            break
        stream.close()
    assert chaos.arrivals == 10
    assert outcomes(telemetry) == {"abandoned": 10}
    assert current(breaker) is State.CLOSED
    assert breaker.snapshot().buffered_calls == 0
    assert samples(telemetry, FAILURE_RATE) == []

    for _ in range(4):
        call(client, "server_error")
    assert current(breaker) is State.OPEN
    breaker.transition_to_half_open()
    first = client.chat.completions.create(**request())
    second = client.chat.completions.create(**request())
    _, exc = call(client)
    assert_open_error(exc, half_open=True)
    assert chaos.arrivals == 16
    first.close()  # abandoned: the permit comes back, nothing is recorded
    assert breaker.snapshot().buffered_calls == 0
    third = client.chat.completions.create(**request())
    assert chaos.arrivals == 17
    assert consume(second) == (CHAT_ITEMS, None)
    assert consume(third) == (CHAT_ITEMS, None)
    assert current(breaker) is State.CLOSED
    assert outcomes(telemetry) == {"abandoned": 11, "failed": 4, "rejected": 1, "completed": 2}


async def test_abandoned_async_streams_are_ignored(chaos: ChaosServer, aclient: openai.AsyncOpenAI) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    for _ in range(10):
        stream = await aclient.chat.completions.create(**request("error_event", after=AFTER))
        async for _item in stream:
            break
        await stream.close()
    assert outcomes(telemetry) == {"abandoned": 10}
    assert current(breaker) is State.CLOSED
    assert breaker.snapshot().buffered_calls == 0


def test_a_late_result_from_an_earlier_state_is_ignored(chaos: ChaosServer, client: openai.OpenAI) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    # Two long streams start while the breaker is closed; both will fail.
    ends_while_open = client.chat.completions.create(**request("error_event", after=AFTER))
    ends_while_half_open = client.chat.completions.create(**request("error_event", after=AFTER))
    for _ in range(4):
        call(client, "server_error")
    assert current(breaker) is State.OPEN
    before = breaker.snapshot()
    assert (before.buffered_calls, before.failed_calls) == (4, 4)

    items, exc = consume(ends_while_open)
    assert (items, type(exc)) == (AFTER, openai.APIError)
    assert breaker.snapshot() == before

    breaker.transition_to_half_open()
    items, exc = consume(ends_while_half_open)
    assert (items, type(exc)) == (AFTER, openai.APIError)
    # Not a probe result: both probes are still permitted, and they alone decide.
    assert breaker.snapshot().buffered_calls == 0
    assert call(client) == (CHAT_ITEMS, None)
    assert call(client) == (CHAT_ITEMS, None)
    assert current(breaker) is State.CLOSED
    assert transitions(telemetry) == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "closed"): 1,
    }
    assert outcomes(telemetry) == {"failed": 4, "truncated": 2, "completed": 2}


# -- 3. half-open under concurrency: exactly the permitted probes reach the server -------------------

PROBES = 5
PROBE_CONFIG = dataclasses.replace(CONFIG, permitted_number_of_calls_in_half_open_state=PROBES)


def test_half_open_admits_exactly_five_of_200_threads(chaos: ChaosServer, client: openai.OpenAI) -> None:
    callers = 200
    telemetry = reinstrument(breaker=PROBE_CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    breaker.transition_to_half_open()
    barrier = threading.Barrier(callers)
    lock = threading.Lock()
    streams: list[Any] = []
    rejected: list[CircuitOpenError] = []
    unexpected: list[BaseException] = []

    def caller() -> None:
        try:
            barrier.wait(timeout=30)
            # A probe's stream is held, not consumed: its permit stays out until every caller ran.
            stream = client.chat.completions.create(**request())
        except CircuitOpenError as exc:
            with lock:
                rejected.append(exc)
        except BaseException as exc:
            with lock:
                unexpected.append(exc)
        else:
            with lock:
                streams.append(stream)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0))
    assert not any(thread.is_alive() for thread in threads), "deadlock: callers still running"
    assert unexpected == []
    assert (len(streams), len(rejected)) == (PROBES, callers - PROBES)
    assert {(exc.breaker, exc.retry_after) for exc in rejected} == {(KEY, 0.0)}
    assert chaos.arrivals == PROBES
    assert current(breaker) is State.HALF_OPEN
    assert telemetry.value(REJECTED_TOTAL, breaker=KEY) == callers - PROBES
    assert outcomes(telemetry) == {"rejected": callers - PROBES}

    for stream in streams:
        assert consume(stream) == (CHAT_ITEMS, None)
    assert current(breaker) is State.CLOSED
    assert chaos.arrivals == PROBES
    assert transitions(telemetry) == {("closed", "half_open"): 1, ("half_open", "closed"): 1}
    assert states(telemetry) == {"closed": 1}
    assert outcomes(telemetry) == {"rejected": callers - PROBES, "completed": PROBES}
    assert len(spans_with(telemetry, "rejected")) == callers - PROBES


async def test_half_open_admits_exactly_five_of_2000_tasks(chaos: ChaosServer) -> None:
    callers = 2000
    telemetry = reinstrument(breaker=PROBE_CONFIG, retry_attempts=1)
    breaker = breaker_of(telemetry)
    breaker.transition_to_half_open()
    async with openai.AsyncOpenAI(
        base_url=chaos.base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT
    ) as aclient:

        async def caller() -> Any:
            try:
                return await aclient.chat.completions.create(**request())
            except CircuitOpenError as exc:
                return exc

        results = await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(callers))), timeout=60)
        streams = [r for r in results if isinstance(r, openai.AsyncStream)]
        rejected = [r for r in results if isinstance(r, CircuitOpenError)]
        assert (len(streams), len(rejected)) == (PROBES, callers - PROBES)
        assert chaos.arrivals == PROBES
        assert current(breaker) is State.HALF_OPEN
        assert telemetry.value(REJECTED_TOTAL, breaker=KEY) == callers - PROBES

        consumed = await asyncio.wait_for(asyncio.gather(*(aconsume(s) for s in streams)), timeout=30)
    assert consumed == [(CHAT_ITEMS, None)] * PROBES
    assert current(breaker) is State.CLOSED
    assert chaos.arrivals == PROBES
    assert transitions(telemetry) == {("closed", "half_open"): 1, ("half_open", "closed"): 1}
    assert states(telemetry) == {"closed": 1}
    assert outcomes(telemetry) == {"rejected": callers - PROBES, "completed": PROBES}


# -- 4. fallbacks --------------------------------------------------------------------------------------


def test_model_fallback_serves_a_rejected_call_sync(chaos: ChaosServer, client: openai.OpenAI) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1, breaker_fallback=FALLBACK_MODEL)
    for _ in range(4):
        call(client, "server_error")
    assert current(breaker_of(telemetry)) is State.OPEN

    stream = client.chat.completions.create(**request())
    chunks = list(stream)
    assert len(chunks) == CHAT_ITEMS
    assert {c.model for c in chunks} == {FALLBACK_MODEL}
    records = chaos.wait_for_records(5)
    assert chaos.arrivals == 5
    assert [r.model for r in records] == [MODEL] * 4 + [FALLBACK_MODEL]
    assert telemetry.value(FALLBACKS, breaker=KEY) == 1
    assert telemetry.value(REJECTED_TOTAL, breaker=KEY) == 1
    assert outcomes(telemetry) == {"failed": 4, "rejected": 1}
    assert outcomes(telemetry, FALLBACK_MODEL) == {"completed": 1}
    # The fallback call is observed and guarded by its own breaker.
    assert current(breaker_of(telemetry, FALLBACK_KEY)) is State.CLOSED
    assert breaker_of(telemetry, FALLBACK_KEY).snapshot().buffered_calls == 1
    assert states(telemetry, FALLBACK_KEY) == {"closed": 1}
    assert_rejected_spans(telemetry, 1)
    [completed] = spans_with(telemetry, "completed")
    assert completed.attributes is not None
    assert completed.attributes["gen_ai.request.model"] == FALLBACK_MODEL


async def test_model_fallback_serves_a_rejected_call_async(
    chaos: ChaosServer, aclient: openai.AsyncOpenAI
) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1, breaker_fallback=FALLBACK_MODEL)
    breaker_of(telemetry).transition_to_open()
    stream = await aclient.chat.completions.create(**request())
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == CHAT_ITEMS
    assert {c.model for c in chunks} == {FALLBACK_MODEL}
    [record] = await chaos.wait_for_records_async(1)
    assert record.model == FALLBACK_MODEL
    assert telemetry.value(FALLBACKS, breaker=KEY) == 1
    assert outcomes(telemetry) == {"rejected": 1}
    assert outcomes(telemetry, FALLBACK_MODEL) == {"completed": 1}


def test_a_fallback_model_whose_own_breaker_is_open_is_rejected_too(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1, breaker_fallback=FALLBACK_MODEL)
    breaker_of(telemetry).transition_to_open()
    breaker_of(telemetry, FALLBACK_KEY).transition_to_open()
    _, exc = call(client)
    assert_open_error(exc, FALLBACK_KEY)  # no fallback of the fallback
    _, exc = call(client, model=FALLBACK_MODEL)
    assert_open_error(exc, FALLBACK_KEY)  # a call for the fallback model itself: raised
    assert chaos.arrivals == 0
    assert telemetry.value(REJECTED_TOTAL, breaker=KEY) == 1
    assert telemetry.value(REJECTED_TOTAL, breaker=FALLBACK_KEY) == 2
    assert outcomes(telemetry) == {"rejected": 1}
    assert outcomes(telemetry, FALLBACK_MODEL) == {"rejected": 2}
    assert samples(telemetry, FALLBACKS) == []  # counted only when the fallback did serve the call


def test_a_callable_fallback_that_is_rejected_again_does_not_recurse(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    def same_model(kwargs: Mapping[str, Any]) -> Any:
        return client.chat.completions.create(**kwargs)  # the same, still open, breaker

    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1, breaker_fallback=same_model)
    breaker_of(telemetry).transition_to_open()
    _, exc = call(client)
    assert_open_error(exc, KEY)
    assert chaos.arrivals == 0
    assert outcomes(telemetry) == {"rejected": 2}  # the call, then its fallback: no third try
    assert samples(telemetry, FALLBACKS) == []


def test_a_callable_fallback_is_used_sync(chaos: ChaosServer, client: openai.OpenAI) -> None:
    seen: list[Mapping[str, Any]] = []
    canned = iter(["from the cache"])

    def fallback(kwargs: Mapping[str, Any]) -> Any:
        seen.append(kwargs)
        return canned

    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1, breaker_fallback=fallback)
    breaker_of(telemetry).transition_to_open()
    kwargs = request()
    assert client.chat.completions.create(**kwargs) is canned
    assert seen == [kwargs]
    assert chaos.arrivals == 0
    assert telemetry.value(FALLBACKS, breaker=KEY) == 1
    assert telemetry.value(REJECTED_TOTAL, breaker=KEY) == 1
    assert outcomes(telemetry) == {"rejected": 1}


async def test_a_callable_fallback_is_used_async(chaos: ChaosServer, aclient: openai.AsyncOpenAI) -> None:
    seen: list[Mapping[str, Any]] = []

    async def fallback(kwargs: Mapping[str, Any]) -> Any:
        seen.append(kwargs)
        # A real stream from another model, opened by the fallback itself.
        return await aclient.chat.completions.create(**{**kwargs, "model": FALLBACK_MODEL})

    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1, breaker_fallback=fallback)
    breaker_of(telemetry).transition_to_open()
    stream = await aclient.chat.completions.create(**request())
    assert isinstance(stream, openai.AsyncStream)
    assert await aconsume(stream) == (CHAT_ITEMS, None)
    assert len(seen) == 1 and seen[0]["model"] == MODEL
    [record] = await chaos.wait_for_records_async(1)
    assert record.model == FALLBACK_MODEL
    assert telemetry.value(FALLBACKS, breaker=KEY) == 1
    assert outcomes(telemetry) == {"rejected": 1}
    assert outcomes(telemetry, FALLBACK_MODEL) == {"completed": 1}


# -- 5. shadow mode and mode off ---------------------------------------------------------------------


def test_shadow_mode_never_rejects_and_reports_the_failure_rate(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    telemetry = reinstrument(breaker=dataclasses.replace(CONFIG, mode="shadow"), retry_attempts=1)
    breaker = breaker_of(telemetry)
    for n in range(1, 9):
        fault = "server_error" if n % 2 else "reset"
        _, exc = call(client, fault, after=AFTER)
        assert isinstance(exc, openai.APIError) and not isinstance(exc, CircuitOpenError)
        assert current(breaker) is State.METRICS_ONLY
        rate = failure_rate(telemetry)
        assert math.isnan(rate) if n < 4 else rate == 1.0, (n, rate)
    assert chaos.arrivals == 8
    assert current(breaker) is State.METRICS_ONLY
    assert breaker.snapshot().failure_rate == 100.0
    assert states(telemetry) == {"metrics_only": 1}
    assert samples(telemetry, TRANSITIONS) == []
    assert samples(telemetry, REJECTED_TOTAL) == []
    assert call(client) == (CHAT_ITEMS, None)
    assert failure_rate(telemetry) == 0.75
    assert outcomes(telemetry) == {"failed": 4, "truncated": 4, "completed": 1}


def test_mode_off_never_rejects_and_exports_no_circuit_series(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    telemetry = reinstrument(breaker=dataclasses.replace(CONFIG, mode="off"), retry_attempts=1)
    for _ in range(8):
        _, exc = call(client, "server_error")
        assert type(exc) is openai.InternalServerError
    assert call(client) == (CHAT_ITEMS, None)
    assert chaos.arrivals == 9
    for name in CIRCUIT_FAMILIES:
        assert samples(telemetry, name) == [], name
    assert telemetry.runtime.circuits.store.breakers() == []
    assert outcomes(telemetry) == {"failed": 8, "completed": 1}


# -- 6. STREAMSENTINEL_BREAKER_* variables -----------------------------------------------------------


def test_breaker_environment_variables_take_effect_in_shadow_mode(
    chaos: ChaosServer, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSENTINEL_BREAKER_MODE", "shadow")
    monkeypatch.setenv("STREAMSENTINEL_BREAKER_MINIMUM_NUMBER_OF_CALLS", "3")
    telemetry = reinstrument(retry_attempts=1)
    breaker = breaker_of(telemetry)
    assert breaker.config == BreakerConfig(mode="shadow", minimum_number_of_calls=3)
    for n in range(1, 7):
        _, exc = call(client, "server_error")
        assert type(exc) is openai.InternalServerError
        rate = failure_rate(telemetry)
        assert math.isnan(rate) if n < 3 else rate == 1.0, (n, rate)
    assert chaos.arrivals == 6
    assert current(breaker) is State.METRICS_ONLY
    assert states(telemetry) == {"metrics_only": 1}


def test_breaker_minimum_calls_from_the_environment_in_enforce_mode(
    chaos: ChaosServer, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSENTINEL_BREAKER_MINIMUM_NUMBER_OF_CALLS", "3")
    telemetry = reinstrument(retry_attempts=1)
    breaker = breaker_of(telemetry)
    for n in range(1, 4):
        call(client, "server_error")
        assert current(breaker) is (State.OPEN if n == 3 else State.CLOSED)
    _, exc = call(client)
    assert_open_error(exc)
    assert chaos.arrivals == 3


def test_an_explicit_breaker_config_wins_over_the_environment(
    chaos: ChaosServer, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSENTINEL_BREAKER_MODE", "shadow")
    monkeypatch.setenv("STREAMSENTINEL_BREAKER_MINIMUM_NUMBER_OF_CALLS", "3")
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    assert breaker_of(telemetry).config == CONFIG
    for _ in range(4):
        call(client, "server_error")
    assert current(breaker_of(telemetry)) is State.OPEN


def test_a_rejected_call_leaves_no_span_current(chaos: ChaosServer, client: openai.OpenAI) -> None:
    """The stream's span is current from the call's start until ``create()`` returns; a call the
    breaker refuses makes no request, and its span is no longer current when the error is raised."""
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker_of(telemetry).transition_to_forced_open()
    before = trace.get_current_span()
    with pytest.raises(CircuitOpenError):
        client.chat.completions.create(**request())
    assert trace.get_current_span() is before
    assert chaos.arrivals == 0
    [span] = telemetry.exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["streamsentinel.outcome"] == "rejected"


async def test_a_rejected_async_call_leaves_no_span_current(
    chaos: ChaosServer, aclient: openai.AsyncOpenAI
) -> None:
    telemetry = reinstrument(breaker=CONFIG, retry_attempts=1)
    breaker_of(telemetry).transition_to_forced_open()
    before = trace.get_current_span()
    with pytest.raises(CircuitOpenError):
        await aclient.chat.completions.create(**request())
    assert trace.get_current_span() is before
    assert chaos.arrivals == 0
    [span] = telemetry.exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["streamsentinel.outcome"] == "rejected"


# -- "sixteen defects" issue, defect 10: a finalizer never takes a lock the user path can hold ---------------


def test_defect_10_stream_finalized_under_the_breaker_lock_does_not_deadlock(
    chaos: ChaosServer, client: openai.OpenAI
) -> None:
    """An open stream dropped (finalized) while its breaker trips, inside the breaker, must not deadlock."""
    held: list[Any] = []
    hook_ran: list[bool] = []

    class DropStreamOnOpen(BreakerConfig):
        # Called by the breaker when it opens; drops the last reference to an un-closed stream
        # guarded by the same breaker, so its finalizer runs right here.
        def open_wait(self, attempts: int) -> float:
            if held:
                held.clear()
                gc.collect()
                hook_ran.append(True)
            return super().open_wait(attempts)

    config = DropStreamOnOpen(
        minimum_number_of_calls=1, sliding_window_size=1, timeout_streak_min_seconds=0.0
    )
    telemetry = reinstrument(breaker=config)
    held.append(client.chat.completions.create(**chat_kwargs()))
    next(held[0])  # the stream is open, its answer unfinished
    raised: list[BaseException] = []

    def failing_call() -> None:
        try:
            client.chat.completions.create(**chat_kwargs(extra_headers={"x-chaos-fault": "server_error"}))
        except Exception as exc:
            raised.append(exc)

    worker = threading.Thread(target=failing_call, name="defect-10-failing-call", daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():
        frames = sys._current_frames()
        stack = "".join(traceback.format_stack(frames[worker.ident])) if worker.ident in frames else ""
        pytest.fail(f"deadlock: the stream's finalizer waits for the breaker's lock\n{stack}")
    assert hook_ran, "the breaker never opened: the scenario was not exercised"
    assert len(raised) == 1 and isinstance(raised[0], openai.InternalServerError), raised
    assert telemetry.value("openai_stream_requests_total", outcome="failed") == 1
