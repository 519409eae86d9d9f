"""Transparency (issue 4): for every fault of the chaos server, sync and async, chat and Responses, the
consumer of an instrumented stream sees what the plain SDK shows it.

Each case runs the same request twice, each against a fresh ``ChaosServer(chunks=5)`` (ids are a
function of the server seed and its request counter, so they line up; only the wall-clock fields
``created`` / ``created_at`` / ``completed_at`` are blanked before comparing): once with
``streamsentinel.uninstrument()`` and once instrumented for observation only (``retry_attempts=1``).
Compared: the items' ``model_dump()``, the exception's type and ``str()`` (and ``status_code`` /
``body`` where ``create()`` raises), the stream's type, ``response.status_code`` and content-type,
what ``with`` returns, and that ``close()`` twice is harmless. Where the plain SDK ends silently on
a truncated stream, the instrumented one raises ``StreamTruncatedError`` after the same items, and
with ``on_truncation="record"`` it is again exactly the plain SDK.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

import streamsentinel
from streamsentinel import StreamTruncatedError
from streamsentinel.chaos import ChaosServer

from ..defect_servers import DONE, Gate, ScriptedServer, chat_chunk, responses_event, sse
from ..scripted import (
    COMPLETED,
    HELLO,
    ITEMS,
    MODES,
    RETRYING,
    ROLE,
    STOP,
    Run,
    async_client,
    instrumentation_errors,
    receive_while_gated,
    run,
    sync_client,
)
from ..support import STALL_TIMEOUT, TIMEOUT, Telemetry, chat_kwargs, reinstrument, responses_kwargs
from .test_faults_observed import AFTER, FAULTS, STALLS

# The plain SDK ends these streams silently; streamsentinel surfaces the truncation.
SILENT = {"eof_chunked", "eof_close", "partial_event", "json_body_200", "error_event_flat"}
SILENT_RESPONSES = SILENT | {"error_event"}
# Wall-clock fields: two servers answering a second apart differ here and nowhere else.
CLOCK_FIELDS = frozenset({"created", "created_at", "completed_at"})


def silent(api: str, fault: str) -> bool:
    return fault in (SILENT_RESPONSES if api == "responses" else SILENT)


@pytest.fixture(autouse=True)
def _plain() -> Iterator[None]:
    """Every test starts uninstrumented; whatever it instruments is removed at the end."""
    streamsentinel.uninstrument()
    yield
    streamsentinel.uninstrument()


# ---- consuming ------------------------------------------------------------------------------------


@dataclass
class Seen:
    """Everything one consumer saw of one request."""

    stream_type: type | None = None
    is_sdk_stream: bool = False
    entered_itself: bool = False
    status: int | None = None
    content_type: str | None = None
    items: list[Any] | None = None
    exc: BaseException | None = None
    raised_by_create: bool = False
    closed_twice: bool = False


def _kwargs(api: str, fault: str) -> dict[str, Any]:
    headers = {"x-chaos-fault": fault, "x-chaos-after": str(AFTER)}
    make = chat_kwargs if api == "chat" else responses_kwargs
    return make(extra_headers=headers)


def _timeout(fault: str) -> Any:
    return STALL_TIMEOUT if fault in STALLS else TIMEOUT


def run_sync(api: str, fault: str) -> Seen:
    seen = Seen()
    with (
        ChaosServer(chunks=5) as server,
        openai.OpenAI(
            base_url=server.base_url, api_key="test-key", max_retries=0, timeout=_timeout(fault)
        ) as client,
    ):
        create = client.chat.completions.create if api == "chat" else client.responses.create
        try:
            stream = create(**_kwargs(api, fault))
        except Exception as exc:
            seen.exc, seen.raised_by_create = exc, True
            return seen
        seen.stream_type = type(stream)
        seen.is_sdk_stream = isinstance(stream, openai.Stream)
        seen.status = stream.response.status_code
        seen.content_type = stream.response.headers["content-type"]
        seen.items = []
        try:
            with stream as entered:
                seen.entered_itself = entered is stream
                for item in entered:
                    seen.items.append(item)
        except Exception as exc:
            seen.exc = exc
        stream.close()
        stream.close()
        seen.closed_twice = True
    return seen


async def run_async(api: str, fault: str) -> Seen:
    seen = Seen()
    with ChaosServer(chunks=5) as server:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test-key", max_retries=0, timeout=_timeout(fault)
        ) as client:
            create = client.chat.completions.create if api == "chat" else client.responses.create
            try:
                stream = await create(**_kwargs(api, fault))
            except Exception as exc:
                seen.exc, seen.raised_by_create = exc, True
                return seen
            seen.stream_type = type(stream)
            seen.is_sdk_stream = isinstance(stream, openai.AsyncStream)
            seen.status = stream.response.status_code
            seen.content_type = stream.response.headers["content-type"]
            seen.items = []
            try:
                async with stream as entered:
                    seen.entered_itself = entered is stream
                    async for item in entered:
                        seen.items.append(item)
            except Exception as exc:
                seen.exc = exc
            await stream.close()
            await stream.close()
            seen.closed_twice = True
    return seen


# ---- comparing ------------------------------------------------------------------------------------


def _blank_clock(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: None if k in CLOCK_FIELDS else _blank_clock(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank_clock(v) for v in value]
    return value


def dumps(items: list[Any] | None) -> list[Any] | None:
    if items is None:
        return None
    return [_blank_clock(item.model_dump()) for item in items]


def check_surface(bare: Seen, observed: Seen, sdk_stream: type) -> None:
    """Same stream surface: type check, response, ``with``, ``close()`` twice."""
    assert observed.raised_by_create is bare.raised_by_create
    if bare.raised_by_create:
        return
    assert bare.stream_type is sdk_stream
    assert observed.stream_type is not sdk_stream  # really under observation
    assert bare.is_sdk_stream and observed.is_sdk_stream
    assert bare.entered_itself and observed.entered_itself
    assert observed.status == bare.status == 200
    assert observed.content_type == bare.content_type
    assert bare.closed_twice and observed.closed_twice
    assert dumps(observed.items) == dumps(bare.items)
    assert [type(i) for i in observed.items or []] == [type(i) for i in bare.items or []]


def check_same_exception(bare: Seen, observed: Seen) -> None:
    assert type(observed.exc) is type(bare.exc), (repr(bare.exc), repr(observed.exc))
    assert str(observed.exc) == str(bare.exc)
    if isinstance(bare.exc, openai.APIStatusError):
        assert isinstance(observed.exc, openai.APIStatusError)
        assert observed.exc.status_code == bare.exc.status_code
        assert observed.exc.body == bare.exc.body


def check_transparent(api: str, fault: str, bare: Seen, observed: Seen, sdk_stream: type) -> None:
    check_surface(bare, observed, sdk_stream)
    if fault == "none":
        assert bare.exc is None and observed.exc is None
    if silent(api, fault):
        # The plain SDK stops silently; streamsentinel raises after the very same items.
        assert bare.exc is None
        assert type(observed.exc) is StreamTruncatedError, repr(observed.exc)
        assert observed.exc.chunks_received == len(observed.items or [])
    else:
        check_same_exception(bare, observed)
        if fault != "none":
            assert bare.exc is not None  # the fault really happened


def check_identical(bare: Seen, recorded: Seen, sdk_stream: type) -> None:
    check_surface(bare, recorded, sdk_stream)
    assert bare.exc is None and recorded.exc is None


# ---- tests ----------------------------------------------------------------------------------------

APIS = ["chat", "responses"]
SILENT_CASES = [(api, fault) for api in APIS for fault in FAULTS if silent(api, fault)]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("fault", FAULTS)
def test_transparent_sync(fault: str, api: str) -> None:
    bare = run_sync(api, fault)
    reinstrument(retry_attempts=1)
    observed = run_sync(api, fault)
    check_transparent(api, fault, bare, observed, openai.Stream)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("fault", FAULTS)
async def test_transparent_async(fault: str, api: str) -> None:
    bare = await run_async(api, fault)
    reinstrument(retry_attempts=1)
    observed = await run_async(api, fault)
    check_transparent(api, fault, bare, observed, openai.AsyncStream)


@pytest.mark.parametrize(("api", "fault"), SILENT_CASES)
def test_recorded_truncation_is_identical_sync(api: str, fault: str) -> None:
    bare = run_sync(api, fault)
    reinstrument(retry_attempts=1, on_truncation="record")
    recorded = run_sync(api, fault)
    check_identical(bare, recorded, openai.Stream)


@pytest.mark.parametrize(("api", "fault"), SILENT_CASES)
async def test_recorded_truncation_is_identical_async(api: str, fault: str) -> None:
    bare = await run_async(api, fault)
    reinstrument(retry_attempts=1, on_truncation="record")
    recorded = await run_async(api, fault)
    check_identical(bare, recorded, openai.AsyncStream)


# -- "sixteen defects" issue, defect 8: odd but valid JSON is not our bug ------------------------------------

ODD_BODIES: dict[str, tuple[str, list[bytes | Gate]]] = {
    "delta_null": ("chat", [ROLE, HELLO, sse(chat_chunk(None)), STOP, DONE]),
    "top_level_list": ("chat", [ROLE, HELLO, sse([1, 2]), STOP, DONE]),
    "usage_string": (
        "chat",
        [ROLE, HELLO, sse({**chat_chunk({}), "choices": [], "usage": "plenty"}), STOP, DONE],
    ),
    "choices_object": ("chat", [ROLE, HELLO, sse({**chat_chunk({}), "choices": {"index": 0}}), STOP, DONE]),
    "response_null": (
        "responses",
        [
            responses_event({"type": "response.created", "response": None, "sequence_number": 0}),
            responses_event(
                {
                    "type": "response.output_text.delta",
                    "delta": "Hello",
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "logprobs": [],
                    "sequence_number": 1,
                }
            ),
            COMPLETED,
        ],
    ),
}


def _seen(result: Run) -> tuple[list[str], str | None]:
    return [f"{type(i).__name__}:{i!r}" for i in result.items], (
        None if result.exc is None else type(result.exc).__name__
    )


@pytest.mark.parametrize("body", sorted(ODD_BODIES))
@pytest.mark.parametrize("mode", MODES)
async def test_defect_08_odd_valid_json_is_no_instrumentation_error(mode: str, body: str) -> None:
    """Odd-but-valid JSON: 0 instrumentation errors; the consumer gets what the plain SDK yields."""
    api, parts = ODD_BODIES[body]
    with ScriptedServer(parts) as server:
        streamsentinel.uninstrument()
        plain = await run(mode, server.base_url, api)
        telemetry = reinstrument()
        observed = await run(mode, server.base_url, api)
    assert _seen(observed) == _seen(plain)
    assert instrumentation_errors(telemetry) == 0


# -- "sixteen defects" issue, defect 13: a stream of items of a type we do not know --------------------------

DICT_OPTIONS: dict[str, dict[str, Any]] = {
    "retrying": RETRYING,
    "record": {"retry_attempts": 1, "on_truncation": "record"},
}


@pytest.mark.parametrize("options", sorted(DICT_OPTIONS))
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("mode", MODES)
async def test_defect_13_dict_stream_passes_through(mode: str, api: str, options: str) -> None:
    """parse(to=Stream[dict]): dicts, one HTTP request, outcome completed, no instrumentation error."""
    telemetry = reinstrument(**DICT_OPTIONS[options])
    with ChaosServer(chunks=5) as server:
        result = await run(mode, server.base_url, api, as_dict=True)
        assert result.exc is None, repr(result.exc)
        assert [type(i) for i in result.items] == [dict] * ITEMS[api]
        assert server.arrivals == 1
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 1}
    assert instrumentation_errors(telemetry) == 0


@pytest.mark.parametrize("mode", MODES)
async def test_defect_13_dict_items_are_not_held(mode: str) -> None:
    """parse(to=Stream[dict]) with retries on: items reach the consumer while the server still waits."""
    reinstrument(**RETRYING)
    gate = Gate()
    with ScriptedServer([ROLE, HELLO, gate, STOP, DONE]) as server:
        got = await receive_while_gated(mode, server, gate, "chat", 2, as_dict=True)
    assert len(got) == 2, f"only {len(got)} of 2 items reached the consumer before the rest"
    assert [type(i) for i in got] == [dict, dict]


# -- "sixteen defects" issue, defect 14: a failure through the stream loop has repr()-able locals ------------


def _unreprable_locals(exc: BaseException) -> list[str]:
    """The locals of ``exc``'s traceback whose repr() raises, or returns while leaving an exception
    set in the interpreter (a C-level bug that surfaces at a later call: pytest's INTERNALERROR)."""
    failures: list[str] = []
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for name, value in list(frame.f_locals.items()):
            try:
                repr(value)
                sys.exc_info()  # a plain builtin call: fails (SystemError) if repr() left an error set
            except Exception as error:
                failures.append(f"{frame.f_code.co_name}: {name} ({type(value).__name__}): {error!r}")
    return failures


@pytest.mark.parametrize("mode", MODES)
async def test_defect_14_traceback_locals_are_reprable(
    mode: str, chaos: ChaosServer, telemetry: Telemetry
) -> None:
    """Every local of every frame of a mid-stream failure's traceback can be repr()'d."""
    extra = {"extra_headers": {"x-chaos-fault": "reset", "x-chaos-after": "2"}}
    caught: BaseException | None = None
    if mode == "sync":
        with sync_client(chaos.base_url) as c:
            stream = c.chat.completions.create(**chat_kwargs(**extra))
            try:
                for _ in stream:
                    pass
            except openai.APIConnectionError as exc:
                caught = exc
            assert caught is not None
            failures = _unreprable_locals(caught)  # while the consumer still holds the stream
            del stream
    else:
        async with async_client(chaos.base_url) as ac:
            astream = await ac.chat.completions.create(**chat_kwargs(**extra))
            try:
                async for _ in astream:
                    pass
            except openai.APIConnectionError as exc:
                caught = exc
            assert caught is not None
            failures = _unreprable_locals(caught)
            del astream
    assert failures == []
