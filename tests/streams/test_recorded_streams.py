"""Real recorded OpenAI streams (``tests.support.RECORDINGS_DIR``) replayed byte for byte by the chaos
server over loopback HTTP to the real openai SDK, whole and cut every way a stream can be cut.

What is proved, per recording: a whole replay is ``completed`` with the recorded item count, finish
reasons and usage; the consumer sees exactly what it sees without streamsentinel; every cut is
``truncated`` (``failed`` with 0 items), never ``completed``, counted once with its reason, raised as
``StreamTruncatedError`` where the SDK would stop silently and as the SDK's own error elsewhere; with
``on_truncation="record"`` the consumer again sees exactly what the plain SDK shows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import openai
import pytest

import streamsentinel
from streamsentinel import StreamTruncatedError
from streamsentinel.chaos import ChaosServer, Fault, Recording, RequestRecord, load_recordings

from ..support import (
    HTTP_LIBRARIES,
    RECORDINGS_DIR,
    TIMEOUT,
    Telemetry,
    http_library,
    legacy_http_client,
    make_telemetry,
)

RECORDINGS: list[Recording] = load_recordings(RECORDINGS_DIR) if RECORDINGS_DIR.is_dir() else []
pytestmark = pytest.mark.skipif(not RECORDINGS, reason=f"no recordings in {RECORDINGS_DIR}")

OPERATION = {"chat": "chat", "completions": "text_completion", "responses": "responses"}
# incomplete_details.reason of a `response.incomplete` -> the finish reason streamsentinel reports.
INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}
SILENT = frozenset({Fault.EOF_CHUNKED, Fault.EOF_CLOSE, Fault.PARTIAL_EVENT})
# The exception the SDK itself raises for a connection that breaks: its cause's class, of the
# client's HTTP library.
SDK_RAISES: Mapping[Fault, str] = {
    Fault.RESET: "ReadError",
    Fault.FIN_IN_CHUNK: "RemoteProtocolError",
}


def short(recording: Recording) -> str:
    return str(recording.name).split("__")[1]


# ---- what a recording says a complete stream shows ------------------------------------------------


def terminal_index(recording: Recording) -> int:
    """Index of the terminal event (`[DONE]` / `response.completed|incomplete|failed`): the most
    events a cut can deliver whole."""
    return next(i for i, event in enumerate(recording.events) if event.terminal)


def terminal_payload(recording: Recording) -> dict[str, Any]:
    payload: dict[str, Any] = recording.events[terminal_index(recording)].payload
    return payload


def recorded_finish_reasons(recording: Recording) -> list[str]:
    """Per choice for chat; the terminal Responses event mapped to a chat finish reason."""
    if recording.api != "responses":
        return list(recording.expected["finish_reasons"])
    terminal = terminal_payload(recording)
    assert terminal["type"] == recording.expected["terminal_event"]
    if terminal["type"] == "response.completed":
        return ["stop"]
    assert terminal["type"] == "response.incomplete", terminal["type"]
    reason = terminal["response"]["incomplete_details"]["reason"]
    return [INCOMPLETE_REASONS.get(reason, reason)]


def recorded_tokens(recording: Recording) -> dict[str, float]:
    """``openai_stream_tokens_total`` by token_type (non-zero only, as ``Telemetry.by`` reports)."""
    usage: dict[str, Any] | None = recording.expected["usage"]
    if usage is None:
        return {}
    if recording.api == "responses":
        tokens = {
            "input": usage["input_tokens"],
            "output": usage["output_tokens"],
            "reasoning": (usage.get("output_tokens_details") or {}).get("reasoning_tokens"),
            "cached_input": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
        }
    else:
        tokens = {
            "input": usage["prompt_tokens"],
            "output": usage["completion_tokens"],
            "reasoning": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens"),
            "cached_input": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
        }
    return {name: float(count) for name, count in tokens.items() if count}


def recorded_response(recording: Recording) -> tuple[str, str]:
    """``(id, model)`` of the response: the chunks' for chat, the terminal event's for Responses."""
    if recording.api == "responses":
        response = terminal_payload(recording)["response"]
        return response["id"], response["model"]
    first = recording.events[0].payload
    return first["id"], first["model"]


def recorded_header(recording: Recording, name: str) -> str:
    return str(dict(recording.headers)[name])


def delivered_text(api: str, items: list[Any]) -> str:
    """The output text in ``items``: choice 0's deltas (chat, completions), output_text deltas."""
    if api == "responses":
        return "".join(item.delta for item in items if item.type == "response.output_text.delta")
    if api == "completions":
        return "".join(c.text or "" for item in items for c in item.choices or [] if c.index == 0)
    return "".join(c.delta.content or "" for item in items for c in item.choices or [] if c.index == 0)


def dumps(items: list[Any]) -> list[dict[str, Any]]:
    return [item.model_dump() for item in items]


# ---- cut variants -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """One way to cut a replay: ``after`` events whole, then ``fault``."""

    fault: Fault
    after: int
    cut_bytes: int | None = None

    @property
    def silent(self) -> bool:
        return self.fault in SILENT

    @property
    def reason(self) -> str:
        if self.fault is Fault.PARTIAL_EVENT:
            return "partial_event"
        return "eof_before_done" if self.silent else "connection_lost"

    @property
    def error_type(self) -> str:
        return "truncated" if self.silent else "connection_error"

    @property
    def outcome(self) -> str:
        return "truncated" if self.after else "failed"

    def headers(self, recording: Recording) -> dict[str, str]:
        headers = {
            "x-chaos-replay": recording.name,
            "x-chaos-fault": self.fault.value,
            "x-chaos-after": str(self.after),
        }
        if self.cut_bytes is not None:
            headers["x-chaos-cut-bytes"] = str(self.cut_bytes)
        return headers

    def label(self) -> str:
        tail = "" if self.cut_bytes is None else f"-bytes{self.cut_bytes}"
        return f"{self.fault.value}-after{self.after}{tail}"


def cuts_of(recording: Recording) -> list[Cut]:
    """Every cut kind at several boundaries, including 0 and just before the terminal event (for
    chat that is `[DONE]`: every payload item delivered, still a truncation)."""
    last = terminal_index(recording)
    mid = last // 2
    boundaries = sorted({0, 1, mid, last - 1, last})
    # Half of the (unterminated) event that follows the boundary: the body ends inside it.
    half = {n: len(recording.events[n].raw.rstrip(b"\r\n")) // 2 for n in (mid, last)}
    return [
        *(Cut(Fault.EOF_CHUNKED, n) for n in boundaries),
        *(Cut(Fault.EOF_CLOSE, n) for n in (0, last)),
        *(Cut(Fault.PARTIAL_EVENT, n) for n in (0, mid, last)),  # all but the blank line
        *(Cut(Fault.PARTIAL_EVENT, n, half[n]) for n in (mid, last)),  # inside the event
        *(Cut(Fault.RESET, n) for n in (0, mid, last)),
        *(Cut(Fault.FIN_IN_CHUNK, n) for n in (0, mid, last)),
    ]


CUT_CASES = [
    pytest.param(recording, cut, id=f"{short(recording)}-{cut.label()}")
    for recording in RECORDINGS
    for cut in cuts_of(recording)
]
# Async cuts: the first recording of each API (every cut kind).
ASYNC_RECORDINGS = list({recording.api: recording for recording in reversed(RECORDINGS)}.values())
ASYNC_CUT_CASES = [
    pytest.param(recording, cut, id=f"{short(recording)}-{cut.label()}")
    for recording in ASYNC_RECORDINGS
    for cut in cuts_of(recording)
]
WHOLE = [pytest.param(recording, id=short(recording)) for recording in RECORDINGS]


# ---- fixtures (override conftest's `chaos` and `client`) ------------------------------------------


@pytest.fixture
def chaos() -> Iterator[ChaosServer]:
    with ChaosServer(recordings=RECORDINGS) as server:
        yield server


@pytest.fixture(scope="module", params=HTTP_LIBRARIES)
def base_client(request: pytest.FixtureRequest) -> Iterator[openai.OpenAI]:
    # One client (one connection pool) per HTTP library for the module: building one costs more
    # than a replay.
    legacy = legacy_http_client("sync") if request.param == "httpx" else None
    with openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="test-key",
        max_retries=0,
        timeout=TIMEOUT,
        http_client=legacy,
    ) as c:
        yield c
    if legacy is not None:
        legacy.close()


@pytest.fixture
def client(base_client: openai.OpenAI, chaos: ChaosServer) -> openai.OpenAI:
    return base_client.with_options(base_url=chaos.base_url)


@pytest.fixture
def plain() -> Iterator[None]:
    """Starts uninstrumented; whatever the test instruments is removed at the end."""
    streamsentinel.uninstrument()
    yield
    streamsentinel.uninstrument()


# ---- consuming a replay ---------------------------------------------------------------------------


@dataclass
class Seen:
    """What one consumer saw."""

    stream_type: type
    is_sdk_stream: bool
    entered_itself: bool
    status: int
    headers: dict[str, str]
    items: list[Any]
    exc: BaseException | None


def _resource(client: openai.OpenAI | openai.AsyncOpenAI, api: str) -> Any:
    return {
        "chat": client.chat.completions,
        "completions": client.completions,
        "responses": client.responses,
    }[api]


def consume(client: openai.OpenAI, recording: Recording, headers: Mapping[str, str]) -> Seen:
    stream = _resource(client, recording.api).create(**recording.request_json, extra_headers=dict(headers))
    items: list[Any] = []
    exc: BaseException | None = None
    entered: Any = None
    try:
        with stream as entered:
            for item in stream:
                items.append(item)
    except Exception as err:
        exc = err
    return Seen(
        stream_type=type(stream),
        is_sdk_stream=isinstance(stream, openai.Stream),
        entered_itself=entered is stream,
        status=stream.response.status_code,
        headers=dict(stream.response.headers),
        items=items,
        exc=exc,
    )


async def aconsume(client: openai.AsyncOpenAI, recording: Recording, headers: Mapping[str, str]) -> Seen:
    stream = await _resource(client, recording.api).create(
        **recording.request_json, extra_headers=dict(headers)
    )
    items: list[Any] = []
    exc: BaseException | None = None
    entered: Any = None
    try:
        async with stream as entered:
            async for item in stream:
                items.append(item)
    except Exception as err:
        exc = err
    return Seen(
        stream_type=type(stream),
        is_sdk_stream=isinstance(stream, openai.AsyncStream),
        entered_itself=entered is stream,
        status=stream.response.status_code,
        headers=dict(stream.response.headers),
        items=items,
        exc=exc,
    )


def replay_headers(recording: Recording) -> dict[str, str]:
    return {"x-chaos-replay": recording.name}


# ---- checks -----------------------------------------------------------------------------------------


def check_response_surface(seen: Seen, recording: Recording) -> None:
    assert seen.is_sdk_stream
    assert seen.entered_itself
    assert seen.status == recording.status == 200
    for name in ("content-type", "x-request-id"):
        assert seen.headers[name] == recorded_header(recording, name)


def check_server(
    records: list[RequestRecord], recording: Recording, fault: Fault, data_events: int, count: int = 1
) -> None:
    assert len(records) == count
    for record in records:
        assert record.replay == recording.name
        assert record.fault is fault
        assert record.data_events == data_events
        assert record.terminal_sent is (fault is Fault.NONE)


def check_completed(
    items: list[Any], exc: BaseException | None, telemetry: Telemetry, recording: Recording
) -> None:
    expected = recording.expected
    operation = OPERATION[recording.api]
    model = str(recording.request_json["model"])
    assert exc is None
    assert len(items) == expected["events"]
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert (
        telemetry.value("openai_stream_requests_total", operation=operation, model=model, server="127.0.0.1")
        == 1
    )
    assert telemetry.by("openai_stream_truncations_total", "reason") == {}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {}
    finish_reasons = recorded_finish_reasons(recording)
    assert telemetry.by("openai_stream_finish_reasons_total", "finish_reason") == {
        reason: float(count) for reason, count in Counter(finish_reasons).items()
    }
    assert telemetry.by("openai_stream_tokens_total", "token_type") == recorded_tokens(recording)
    assert telemetry.value("openai_stream_chunks_total") == expected["events"]
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0
    span = telemetry.only_span()
    attrs = span.attributes
    assert attrs is not None
    response_id, response_model = recorded_response(recording)
    assert attrs["streamsentinel.outcome"] == "completed"
    assert attrs["streamsentinel.chunk.count"] == expected["events"]
    assert attrs["gen_ai.response.id"] == response_id
    assert attrs["gen_ai.response.model"] == response_model
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == tuple(finish_reasons)  # type: ignore[arg-type]
    assert attrs["streamsentinel.request_id"] == recorded_header(recording, "x-request-id")
    usage = expected["usage"]
    if usage is None:
        assert "gen_ai.usage.input_tokens" not in attrs
        assert "gen_ai.usage.output_tokens" not in attrs
    else:
        prefix = "input" if recording.api == "responses" else "prompt"
        suffix = "output" if recording.api == "responses" else "completion"
        assert attrs["gen_ai.usage.input_tokens"] == usage[f"{prefix}_tokens"]
        assert attrs["gen_ai.usage.output_tokens"] == usage[f"{suffix}_tokens"]
    if recording.api != "responses":
        assert attrs["streamsentinel.done_seen"] is True
    assert "error.type" not in attrs


def check_truncated(telemetry: Telemetry, recording: Recording, cut: Cut) -> None:
    """Exactly one request, truncated (failed with 0 items), one truncation with the cut's reason."""
    operation = OPERATION[recording.api]
    assert telemetry.by("openai_stream_requests_total", "outcome") == {cut.outcome: 1}
    assert telemetry.value("openai_stream_requests_total", operation=operation) == 1
    assert telemetry.by("openai_stream_truncations_total", "reason") == {cut.reason: 1}
    assert telemetry.by("openai_stream_errors_total", "error_type") == {cut.error_type: 1}
    assert telemetry.value("openai_stream_chunks_total") == cut.after
    assert telemetry.value("openai_stream_in_flight") == 0
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0
    attrs = telemetry.only_span().attributes
    assert attrs is not None
    assert attrs["streamsentinel.outcome"] == cut.outcome
    assert attrs["streamsentinel.truncation.reason"] == cut.reason
    assert attrs["streamsentinel.chunk.count"] == cut.after
    assert attrs["error.type"] == cut.error_type
    if recording.api != "responses":
        assert attrs["streamsentinel.done_seen"] is False


def check_raised(
    items: list[Any], exc: BaseException | None, recording: Recording, cut: Cut, client: Any
) -> None:
    """What the consumer saw from ``client`` with ``on_truncation="raise"``."""
    assert len(items) == cut.after
    if cut.silent:
        assert type(exc) is StreamTruncatedError, repr(exc)
        assert isinstance(exc, StreamTruncatedError)
        assert issubclass(StreamTruncatedError, openai.APIConnectionError)  # what callers handle
        assert exc.reason == cut.reason
        assert exc.chunks_received == len(items)
        assert exc.partial_text == delivered_text(recording.api, items)
        assert exc.request_id == recorded_header(recording, "x-request-id")
        assert exc.request.url.path == recording.request["path"]
    else:
        assert type(exc) is openai.APIConnectionError, repr(exc)
        assert type(exc.__cause__) is getattr(http_library(client), SDK_RAISES[cut.fault])


# ---- 1. whole replays ---------------------------------------------------------------------------


@pytest.mark.parametrize("recording", WHOLE)
def test_whole_replay_completes(
    recording: Recording, chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    seen = consume(client, recording, replay_headers(recording))
    check_response_surface(seen, recording)
    check_completed(seen.items, seen.exc, telemetry, recording)
    check_server(chaos.wait_for_records(1), recording, Fault.NONE, recording.expected["events"])


@pytest.mark.parametrize("recording", WHOLE)
async def test_whole_replay_completes_async(
    recording: Recording, chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    seen = await aconsume(aclient, recording, replay_headers(recording))
    check_response_surface(seen, recording)
    check_completed(seen.items, seen.exc, telemetry, recording)
    records = await chaos.wait_for_records_async(1)
    check_server(records, recording, Fault.NONE, recording.expected["events"])


# ---- 2. transparency --------------------------------------------------------------------------------


@pytest.mark.parametrize("recording", WHOLE)
def test_whole_replay_is_transparent(
    recording: Recording, chaos: ChaosServer, plain: None, client: openai.OpenAI
) -> None:
    bare = consume(client, recording, replay_headers(recording))
    telemetry = make_telemetry()
    observed = consume(client, recording, replay_headers(recording))
    assert bare.stream_type is openai.Stream
    assert observed.stream_type is not openai.Stream  # really under observation
    check_response_surface(bare, recording)
    check_response_surface(observed, recording)
    assert bare.exc is None and observed.exc is None
    assert dumps(observed.items) == dumps(bare.items)
    assert [type(item) for item in observed.items] == [type(item) for item in bare.items]
    assert len(observed.items) == recording.expected["events"]
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    check_server(chaos.wait_for_records(2), recording, Fault.NONE, recording.expected["events"], count=2)


@pytest.mark.parametrize("recording", WHOLE)
async def test_whole_replay_is_transparent_async(
    recording: Recording, chaos: ChaosServer, plain: None, aclient: openai.AsyncOpenAI
) -> None:
    bare = await aconsume(aclient, recording, replay_headers(recording))
    telemetry = make_telemetry()
    observed = await aconsume(aclient, recording, replay_headers(recording))
    assert bare.stream_type is openai.AsyncStream
    assert observed.stream_type is not openai.AsyncStream
    check_response_surface(bare, recording)
    check_response_surface(observed, recording)
    assert bare.exc is None and observed.exc is None
    assert dumps(observed.items) == dumps(bare.items)
    assert [type(item) for item in observed.items] == [type(item) for item in bare.items]
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    records = await chaos.wait_for_records_async(2)
    check_server(records, recording, Fault.NONE, recording.expected["events"], count=2)


# ---- 3./4. cuts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("recording", "cut"), CUT_CASES)
def test_cut_is_truncated_and_raised(
    recording: Recording, cut: Cut, chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    seen = consume(client, recording, cut.headers(recording))
    check_response_surface(seen, recording)
    check_raised(seen.items, seen.exc, recording, cut, client)
    check_truncated(telemetry, recording, cut)
    check_server(chaos.wait_for_records(1), recording, cut.fault, cut.after)


@pytest.mark.parametrize(("recording", "cut"), ASYNC_CUT_CASES)
async def test_cut_is_truncated_and_raised_async(
    recording: Recording, cut: Cut, chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    seen = await aconsume(aclient, recording, cut.headers(recording))
    check_response_surface(seen, recording)
    check_raised(seen.items, seen.exc, recording, cut, aclient)
    check_truncated(telemetry, recording, cut)
    check_server(await chaos.wait_for_records_async(1), recording, cut.fault, cut.after)


@pytest.mark.parametrize(("recording", "cut"), CUT_CASES)
def test_cut_recorded_only_is_transparent(
    recording: Recording, cut: Cut, chaos: ChaosServer, plain: None, client: openai.OpenAI
) -> None:
    bare = consume(client, recording, cut.headers(recording))
    telemetry = make_telemetry(on_truncation="record")
    observed = consume(client, recording, cut.headers(recording))
    assert bare.stream_type is openai.Stream
    assert observed.stream_type is not openai.Stream
    check_response_surface(observed, recording)
    assert len(observed.items) == cut.after
    assert dumps(observed.items) == dumps(bare.items)
    if cut.silent:
        assert bare.exc is None and observed.exc is None
    else:
        assert type(observed.exc) is type(bare.exc) is openai.APIConnectionError
        raises = getattr(http_library(client), SDK_RAISES[cut.fault])
        assert type(observed.exc.__cause__) is type(bare.exc.__cause__) is raises
    check_truncated(telemetry, recording, cut)
    check_server(chaos.wait_for_records(2), recording, cut.fault, cut.after, count=2)


# ---- the idiomatic inline loop: `for item in client....create(..., stream=True)` -------------------


def consume_inline(
    client: openai.OpenAI, recording: Recording, headers: Mapping[str, str]
) -> tuple[list[Any], BaseException | None]:
    items: list[Any] = []
    try:
        for item in _resource(client, recording.api).create(
            **recording.request_json, extra_headers=dict(headers)
        ):
            items.append(item)
    except Exception as err:
        return items, err
    return items, None


async def aconsume_inline(
    client: openai.AsyncOpenAI, recording: Recording, headers: Mapping[str, str]
) -> tuple[list[Any], BaseException | None]:
    items: list[Any] = []
    try:
        async for item in await _resource(client, recording.api).create(
            **recording.request_json, extra_headers=dict(headers)
        ):
            items.append(item)
    except Exception as err:
        return items, err
    return items, None


def mid_cut(recording: Recording) -> Cut:
    return Cut(Fault.EOF_CHUNKED, terminal_index(recording) // 2)


@pytest.mark.parametrize("recording", WHOLE)
def test_inline_loop_whole_replay_completes(
    recording: Recording, chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    items, exc = consume_inline(client, recording, replay_headers(recording))
    check_completed(items, exc, telemetry, recording)


@pytest.mark.parametrize("recording", WHOLE)
def test_inline_loop_cut_is_truncated_and_raised(
    recording: Recording, chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    cut = mid_cut(recording)
    items, exc = consume_inline(client, recording, cut.headers(recording))
    check_raised(items, exc, recording, cut, client)
    check_truncated(telemetry, recording, cut)


@pytest.mark.parametrize("recording", [pytest.param(r, id=short(r)) for r in ASYNC_RECORDINGS])
async def test_inline_loop_async(
    recording: Recording, chaos: ChaosServer, telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    cut = mid_cut(recording)
    items, exc = await aconsume_inline(aclient, recording, cut.headers(recording))
    check_raised(items, exc, recording, cut, aclient)
    check_truncated(telemetry, recording, cut)


# ---- a cut within the first bytes of an event ------------------------------------------------------


@pytest.mark.parametrize("cut_bytes", [1, 3])
@pytest.mark.parametrize("recording", [pytest.param(r, id=short(r)) for r in ASYNC_RECORDINGS])
def test_cut_in_first_bytes_of_event_is_partial_event(
    recording: Recording, cut_bytes: int, chaos: ChaosServer, telemetry: Telemetry, client: openai.OpenAI
) -> None:
    cut = Cut(Fault.PARTIAL_EVENT, terminal_index(recording) // 2, cut_bytes)
    seen = consume(client, recording, cut.headers(recording))
    check_raised(seen.items, seen.exc, recording, cut, client)
    check_truncated(telemetry, recording, cut)
