"""The private openai SDK names streamsentinel hooks into, checked so that an SDK upgrade that moves
one fails here, loudly, rather than silently degrading detection; and what detection falls back to
when the ``[DONE]`` decoder hook is not in place."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai._base_client import AsyncAPIClient, BaseClient, SyncAPIClient
from openai._streaming import ServerSentEvent, SSEDecoder
from openai.types.chat import ChatCompletionChunk

import streamsentinel
from streamsentinel import StreamTruncatedError
from streamsentinel._sdk import compat
from streamsentinel._sdk.hooks import ENTRY_POINTS
from streamsentinel._sdk.sse import ObservedSSEDecoder
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

from ..support import TIMEOUT, Telemetry, chat_kwargs, chat_text, make_telemetry, responses_kwargs

CHAT_ITEMS = 8  # role, 5 content, finish, usage
CLIENTS = [openai.OpenAI, openai.AsyncOpenAI, openai.AzureOpenAI, openai.AsyncAzureOpenAI]
KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY


@pytest.fixture
def pristine() -> Iterator[None]:
    """The SDK as shipped: not instrumented during the test."""
    streamsentinel.uninstrument()
    yield
    streamsentinel.uninstrument()


def params(func: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)


# -- the names and their shapes --------------------------------------------------------------------


@pytest.mark.parametrize(("module", "path"), compat.PRIVATE_NAMES, ids=lambda x: str(x))
def test_every_private_name_of_compat_is_in_the_installed_sdk(module: str, path: str) -> None:
    """An SDK upgrade that moves one of them fails here, by name, not at a user's first stream."""
    target: Any = importlib.import_module(module)
    for part in path.split("."):
        assert hasattr(target, part), f"{module}.{path}: {part!r} is missing in openai {openai.__version__}"
        target = getattr(target, part)


@pytest.mark.parametrize(("module", "owner", "method"), [e[:3] for e in ENTRY_POINTS], ids=lambda x: str(x))
def test_every_entry_point_is_in_the_installed_sdk(module: str, owner: str, method: str) -> None:
    """Issue 16: the entry modules are patched when the application imports them, where a moved
    name is only counted (never raised into the import): an SDK upgrade that moves one fails here."""
    cls = getattr(importlib.import_module(module), owner, None)
    assert cls is not None, f"{module}.{owner} is missing in openai {openai.__version__}"
    assert method in cls.__dict__, f"{module}.{owner}.{method} is missing in openai {openai.__version__}"


async def test_every_private_attribute_of_compat_is_on_real_instances(
    chaos: ChaosServer, pristine: None
) -> None:
    """``compat.PRIVATE_ATTRIBUTES`` read off real objects of the installed SDK (and httpx2)."""
    seen: dict[str, Any] = {}
    with openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
        stream = client.chat.completions.create(**chat_kwargs())
        seen["openai.Stream"] = stream
        seen["a resource (client.chat.completions)"] = client.chat.completions
        seen["openai._streaming.SSEDecoder"] = vars(stream)["_decoder"]
        seen["httpx2.Headers"] = stream.response.headers
        with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "x"}]) as helper:
            seen["openai.lib.streaming.chat._completions.ChatCompletionStream"] = helper
            for name, attribute in compat.PRIVATE_ATTRIBUTES:
                if name in seen:
                    assert hasattr(seen[name], attribute), f"{name}.{attribute} is missing"
        with client.responses.stream(model="m", input="x") as responses_helper:
            name = "openai.lib.streaming.responses._responses.ResponseStream"
            assert hasattr(responses_helper, dict(compat.PRIVATE_ATTRIBUTES)[name])
        stream.close()
    async with openai.AsyncOpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as ac:
        astream = await ac.chat.completions.create(**chat_kwargs())
        for name, attribute in compat.PRIVATE_ATTRIBUTES:
            if name == "openai.AsyncStream":
                assert hasattr(astream, attribute), f"{name}.{attribute} is missing"
        await astream.close()
    checked = set(seen) | {"openai.AsyncStream", "openai.lib.streaming.responses._responses.ResponseStream"}
    assert {name for name, _ in compat.PRIVATE_ATTRIBUTES} == checked


@pytest.mark.parametrize("owner", [SyncAPIClient, AsyncAPIClient])
def test_send_request(owner: type, pristine: None) -> None:
    send = owner.__dict__["_send_request"]
    assert inspect.iscoroutinefunction(send) is (owner is AsyncAPIClient)
    p = params(send)
    assert list(p)[:2] == ["self", "request"]
    assert p["stream"].kind is KEYWORD_ONLY
    assert any(v.kind is inspect.Parameter.VAR_KEYWORD for v in p.values())


@pytest.mark.parametrize("owner", [SyncAPIClient, AsyncAPIClient])
def test_sleep_for_retry(owner: type, pristine: None) -> None:
    sleep = owner.__dict__["_sleep_for_retry"]
    assert inspect.iscoroutinefunction(sleep) is (owner is AsyncAPIClient)
    p = params(sleep)
    # The patch reads these two from kwargs: they must stay keyword-only.
    assert p["retries_taken"].kind is KEYWORD_ONLY
    assert p["response"].kind is KEYWORD_ONLY
    assert [n for n, v in p.items() if v.kind is not KEYWORD_ONLY] == ["self"]


def test_make_sse_decoder_returns_exactly_the_sdk_decoder(pristine: None) -> None:
    assert "_make_sse_decoder" in BaseClient.__dict__
    for cls in CLIENTS:
        kwargs: dict[str, Any] = {"api_key": "k"}
        if "Azure" in cls.__name__:
            kwargs.update(api_version="2024-10-21", azure_endpoint="http://127.0.0.1:9")
        else:
            kwargs.update(base_url="http://127.0.0.1:9/v1")
        client = cls(**kwargs)
        assert type(client._make_sse_decoder()) is SSEDecoder, cls


@pytest.mark.parametrize("cls", CLIENTS, ids=lambda c: c.__name__)
def test_clients_do_not_override_the_decoder_or_retry_hooks(cls: type, pristine: None) -> None:
    # A subclass override would bypass the BaseClient/SyncAPIClient patch.
    assert inspect.getattr_static(cls, "_make_sse_decoder") is BaseClient.__dict__["_make_sse_decoder"]
    base = AsyncAPIClient if "Async" in cls.__name__ else SyncAPIClient
    assert inspect.getattr_static(cls, "_sleep_for_retry") is base.__dict__["_sleep_for_retry"]
    # OpenAI/AsyncOpenAI *do* override _send_request (auth); they reach the patched base method via
    # super() in _send_with_auth_retry. The end-to-end retry test below fails if that chain breaks.
    assert (
        hasattr(cls, "_send_with_auth_retry")
        or inspect.getattr_static(cls, "_send_request") is base.__dict__["_send_request"]
    )


def test_stream_stores_the_clients_decoder(chaos: ChaosServer, pristine: None) -> None:
    assert "client" in params(openai.Stream.__init__) and "client" in params(openai.AsyncStream.__init__)
    with openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
        stream = client.chat.completions.create(**chat_kwargs())
        assert type(stream) is openai.Stream
        assert type(vars(stream)["_decoder"]) is SSEDecoder
        assert len(list(stream)) == CHAT_ITEMS


def test_stream_items_come_from_its_iterator(chaos: ChaosServer, pristine: None) -> None:
    # The drivers read Stream._iterator, which Stream.__next__ only delegates to.
    with openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
        stream = client.chat.completions.create(**chat_kwargs())
        assert compat.items_of(stream) is vars(stream)["_iterator"]
        first = next(stream)
        stream._iterator = iter(["x", "y"])
        assert (next(stream), next(stream)) == ("x", "y")
        assert type(first).__name__ == "ChatCompletionChunk"
        stream.close()

    class Own(openai.Stream):  # type: ignore[type-arg]
        def __next__(self) -> Any:
            return "own"

    own = Own.__new__(Own)
    assert compat.items_of(own) is own


async def test_async_stream_items_come_from_its_iterator(chaos: ChaosServer, pristine: None) -> None:
    async with openai.AsyncOpenAI(
        base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
    ) as client:
        stream = await client.chat.completions.create(**chat_kwargs())
        assert compat.items_of(stream) is vars(stream)["_iterator"]

        async def two() -> Any:
            yield "x"
            yield "y"

        stream._iterator = two()
        assert (await stream.__anext__(), await stream.__anext__()) == ("x", "y")
        await stream.close()


def test_sse_decoder_internals_observed_by_the_subclass() -> None:
    # ObservedSSEDecoder relies on SSEDecoder calling _reset() when the bytes end, with the pending
    # event still in _data/_event, and on iter_bytes/aiter_bytes being the entry points.
    assert {"_reset", "iter_bytes", "aiter_bytes", "decode"} <= set(SSEDecoder.__dict__)
    decoder = ObservedSSEDecoder()
    events = list(decoder.iter_bytes(iter([b'data: {"a": 1}\n\n', b'event: x\ndata: {"b"'])))
    assert [e.data for e in events] == ['{"a": 1}']
    assert decoder.partial is True
    assert decoder.done is False
    assert isinstance(decoder.last, ServerSentEvent) and decoder.last.data == '{"a": 1}'

    decoder = ObservedSSEDecoder()
    assert [e.data for e in decoder.iter_bytes(iter([b"data: {}\r\n\r\n", b"data: [DONE]\n\n"]))] == [
        "{}",
        "[DONE]",
    ]
    assert (decoder.done, decoder.partial) == (True, False)


async def test_sse_decoder_internals_observed_by_the_subclass_async() -> None:
    async def chunks() -> Any:
        for chunk in (b"data: {}\n\n", b"data: [DONE]\n\n", b"data: {"):
            yield chunk

    decoder = ObservedSSEDecoder()
    assert [e.data async for e in decoder.aiter_bytes(chunks())] == ["{}", "[DONE]"]
    assert (decoder.done, decoder.partial) == (True, True)


# -- end to end: the hooks in place --------------------------------------------------------------------


def test_instrumented_stream_has_the_observed_decoder(telemetry: Telemetry, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(**chat_kwargs())
    assert type(stream._decoder) is ObservedSSEDecoder
    assert len(list(stream)) == CHAT_ITEMS
    assert stream._decoder.done is True
    attributes = telemetry.only_span().attributes
    assert attributes is not None
    assert attributes["streamsentinel.done_seen"] is True
    assert attributes["streamsentinel.outcome"] == "completed"


async def test_instrumented_stream_has_the_observed_decoder_async(
    telemetry: Telemetry, aclient: openai.AsyncOpenAI
) -> None:
    stream = await aclient.chat.completions.create(**chat_kwargs())
    assert type(stream._decoder) is ObservedSSEDecoder
    assert len([item async for item in stream]) == CHAT_ITEMS
    attributes = telemetry.only_span().attributes
    assert attributes is not None and attributes["streamsentinel.done_seen"] is True


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_attempt_and_retry_hooks_see_every_attempt(mode: str, telemetry: Telemetry) -> None:
    limited = FaultSpec(fault=Fault.RATE_LIMIT_TOKENS, retry_after_ms=1)
    with ChaosServer(FaultPlan(script=[limited, limited]), chunks=5) as server:
        options: dict[str, Any] = {
            "base_url": server.base_url,
            "api_key": "k",
            "max_retries": 2,
            "timeout": TIMEOUT,
        }
        if mode == "sync":
            with openai.OpenAI(**options) as client:
                assert len(list(client.chat.completions.create(**chat_kwargs()))) == CHAT_ITEMS
        else:
            async with openai.AsyncOpenAI(**options) as aclient:
                stream = await aclient.chat.completions.create(**chat_kwargs())
                assert len([item async for item in stream]) == CHAT_ITEMS
    # _send_request saw both 429 bodies (kind "tokens" comes from the body); _sleep_for_retry got
    # retries_taken=0 then 1 as keywords (attempts 1, 2) and the 429 response (its reason).
    assert telemetry.by("openai_stream_rate_limit_events_total", "kind") == {"tokens": 2}
    assert telemetry.by("openai_stream_retries_total", "reason") == {"rate_limited": 2}
    span = telemetry.only_span()
    assert [
        dict(e.attributes or {})["streamsentinel.retry.attempt"]
        for e in span.events
        if e.name.endswith("retry")
    ] == [
        1,
        2,
    ]


# -- the fallback: no decoder hook -----------------------------------------------------------------------


@pytest.fixture
def without_decoder_hook(telemetry: Telemetry) -> Iterator[Telemetry]:
    """Instrumented, but ``BaseClient._make_sse_decoder`` is the SDK's own again (as if the private
    name had moved): streams keep a plain ``SSEDecoder`` and ``[DONE]`` is invisible."""
    patched = BaseClient.__dict__["_make_sse_decoder"]
    original = patched.__wrapped__
    setattr(BaseClient, "_make_sse_decoder", original)  # noqa: B010
    try:
        yield telemetry
    finally:
        if BaseClient.__dict__["_make_sse_decoder"] is original and streamsentinel.is_instrumented():
            setattr(BaseClient, "_make_sse_decoder", patched)  # noqa: B010


def run_chat(
    client: openai.OpenAI, headers: dict[str, str] | None = None
) -> tuple[list[Any], BaseException | None]:
    stream = client.chat.completions.create(**chat_kwargs(extra_headers=headers or {}))
    items: list[ChatCompletionChunk] = []
    try:
        for item in stream:
            items.append(item)
    except openai.APIError as exc:
        return items, exc
    return items, None


def outcome(telemetry: Telemetry) -> tuple[dict[str, float], dict[str, float]]:
    return (
        telemetry.by("openai_stream_requests_total", "outcome"),
        telemetry.by("openai_stream_truncations_total", "reason"),
    )


def test_fallback_clean_stream_is_completed(
    chaos: ChaosServer, without_decoder_hook: Telemetry, client: openai.OpenAI
) -> None:
    telemetry = without_decoder_hook
    stream = client.chat.completions.create(**chat_kwargs())
    assert type(stream._decoder) is SSEDecoder
    items = list(stream)
    assert chat_text(items) == chaos.expected_text(chat_kwargs())
    assert outcome(telemetry) == ({"completed": 1}, {})
    attributes = telemetry.only_span().attributes
    assert attributes is not None
    assert "streamsentinel.done_seen" not in attributes  # unknown, not False
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert telemetry.value("openai_stream_instrumentation_errors_total") == 0


# eof_chunked cut points for chat: after=N data events (role, 5 content, finish, usage, then [DONE]).
# With the hook every cut before [DONE] is a truncation. Without it only "no finish_reason yet" is.
FALLBACK_CASES = [
    # (fault, after, items, with hook: (exception, reason), without hook: (exception, reason))
    ("eof_chunked", 3, 3, ("eof_before_done", "truncated"), ("eof_before_done", "truncated")),
    # Cut after the finish chunk: the usage chunk and [DONE] are lost. The fallback cannot know.
    ("eof_chunked", 7, 7, ("eof_before_done", "truncated"), (None, "completed")),
    # Cut right before [DONE]: every payload chunk arrived; only [DONE] tells the end was clean.
    ("eof_chunked", 8, 8, ("eof_before_done", "truncated"), (None, "completed")),
    # The SDK drops a half event silently; without the decoder this looks like a clean EOF.
    ("partial_event", 3, 3, ("partial_event", "truncated"), ("eof_before_done", "truncated")),
    # No SSE event at all: told apart by the content-type, decoder or not.
    ("json_body_200", 0, 0, ("non_sse_body", "failed"), ("non_sse_body", "failed")),
]


def _check_case(
    telemetry: Telemetry,
    items: list[Any],
    exc: BaseException | None,
    n: int,
    expected: tuple[str | None, str],
) -> None:
    reason, final = expected
    assert len(items) == n
    if reason is None:
        assert exc is None
        assert outcome(telemetry) == ({final: 1}, {})
    else:
        assert isinstance(exc, StreamTruncatedError)
        assert exc.reason == reason
        assert exc.chunks_received == n
        assert outcome(telemetry) == ({final: 1}, {reason: 1})


@pytest.mark.parametrize(("fault", "after", "n", "hooked", "fallback"), FALLBACK_CASES)
def test_cut_with_the_decoder_hook(
    fault: str,
    after: int,
    n: int,
    hooked: tuple[str | None, str],
    fallback: tuple[str | None, str],
    telemetry: Telemetry,
    client: openai.OpenAI,
) -> None:
    items, exc = run_chat(client, {"x-chaos-fault": fault, "x-chaos-after": str(after)})
    _check_case(telemetry, items, exc, n, hooked)


@pytest.mark.parametrize(("fault", "after", "n", "hooked", "fallback"), FALLBACK_CASES)
def test_cut_without_the_decoder_hook(
    fault: str,
    after: int,
    n: int,
    hooked: tuple[str | None, str],
    fallback: tuple[str | None, str],
    without_decoder_hook: Telemetry,
    client: openai.OpenAI,
) -> None:
    items, exc = run_chat(client, {"x-chaos-fault": fault, "x-chaos-after": str(after)})
    _check_case(without_decoder_hook, items, exc, n, fallback)


def test_fallback_does_not_affect_responses(without_decoder_hook: Telemetry, client: openai.OpenAI) -> None:
    # Responses streams end with a terminal event, which needs no decoder hook.
    stream = client.responses.create(**responses_kwargs(extra_headers={"x-chaos-fault": "eof_chunked"}))
    with pytest.raises(StreamTruncatedError) as excinfo:
        for _event in stream:
            pass
    assert excinfo.value.reason == "eof_before_done"
    assert outcome(without_decoder_hook) == ({"truncated": 1}, {"eof_before_done": 1})


def test_custom_decoder_of_a_client_subclass_is_left_alone(chaos: ChaosServer, telemetry: Telemetry) -> None:
    class CustomDecoder(SSEDecoder):
        pass

    class CustomClient(openai.OpenAI):
        def _make_sse_decoder(self) -> SSEDecoder:
            return CustomDecoder()

    with CustomClient(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
        stream = client.chat.completions.create(**chat_kwargs())
        assert type(stream._decoder) is CustomDecoder
        assert len(list(stream)) == CHAT_ITEMS
        items, exc = run_chat(client, {"x-chaos-fault": "eof_chunked", "x-chaos-after": "7"})
    assert (len(items), exc) == (7, None)  # fallback: the cut after the finish chunk is not seen
    assert telemetry.by("openai_stream_requests_total", "outcome") == {"completed": 2}
    for span in telemetry.spans():
        assert span.attributes is not None and "streamsentinel.done_seen" not in span.attributes


def test_reinstrument_after_fallback_restores_the_hook(chaos: ChaosServer, client: openai.OpenAI) -> None:
    # The fixture above never leaves the SDK half-patched: a fresh instrument() has the hook again.
    streamsentinel.uninstrument()
    telemetry = make_telemetry()
    try:
        stream = client.chat.completions.create(**chat_kwargs())
        assert type(stream._decoder) is ObservedSSEDecoder
        list(stream)
        assert outcome(telemetry) == ({"completed": 1}, {})
    finally:
        streamsentinel.uninstrument()
