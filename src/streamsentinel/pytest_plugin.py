"""pytest plugin: fixtures to test a service that streams through the OpenAI SDK against broken
streams. Installed with streamsentinel (entry point ``pytest11``: ``streamsentinel``), so any test
can ask for them::

    from streamsentinel.chaos import Fault, FaultPlan, FaultSpec

    def test_cut_stream(streamsentinel_server, streamsentinel_client, streamsentinel_records):
        streamsentinel_server.plan = FaultPlan(script=[FaultSpec(Fault.EOF_CHUNKED, after=3)])
        ...  # the code under test streams from streamsentinel_client
        assert [(r.outcome, r.reason) for r in streamsentinel_records] == [
            ("truncated", "eof_before_done")
        ]

Fixtures (all function-scoped):

- ``streamsentinel_server``: a started :class:`streamsentinel.chaos.ChaosServer` on 127.0.0.1.
- ``streamsentinel_client`` / ``streamsentinel_async_client``: ``openai.OpenAI`` /
  ``openai.AsyncOpenAI`` pointed at it (the async one needs pytest-asyncio).
- ``streamsentinel_records``: the ``StreamRecord`` of every stream that ends during the test.
- ``streamsentinel_instrumented``, ``streamsentinel_options``, ``streamsentinel_client_options``:
  what the others are built from.

Markers: ``@pytest.mark.streamsentinel(**options)`` (``streamsentinel.instrument()`` options) and
``@pytest.mark.streamsentinel_client(**kwargs)`` (client constructor arguments, e.g.
``max_retries=2``).

This module is imported at the start of every pytest session where streamsentinel is installed:
it imports nothing but pytest at module level; the fault server, the SDK and the instrumentation
are imported by the fixtures that use them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import openai

    from .chaos import ChaosServer
    from .instrumentation import StreamRecord

__all__ = [
    "DEFAULT_CLIENT_OPTIONS",
    "streamsentinel_async_client",
    "streamsentinel_client",
    "streamsentinel_client_options",
    "streamsentinel_instrumented",
    "streamsentinel_options",
    "streamsentinel_records",
    "streamsentinel_server",
]

DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {"api_key": "test-key", "max_retries": 0, "timeout": 10.0}
"""What ``streamsentinel_client`` / ``streamsentinel_async_client`` are built with, besides
``base_url``: no SDK retries (each scripted fault is one HTTP request; ask for retries with
``@pytest.mark.streamsentinel_client(max_retries=2)``), a 10 s timeout."""

_async_fixture: Callable[..., Any]
try:  # pytest-asyncio (strict mode needs its decorator); already loaded as a plugin if installed
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - then another plugin must run coroutine fixtures
    _async_fixture = pytest.fixture


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "streamsentinel(**options): streamsentinel.instrument() options for the streamsentinel_* "
        "fixtures (streamsentinel_options)",
    )
    config.addinivalue_line(
        "markers",
        "streamsentinel_client(**kwargs): openai client arguments for streamsentinel_client and "
        "streamsentinel_async_client (e.g. max_retries=2, timeout=0.5)",
    )


def _marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """The keyword arguments of every ``name`` marker on the test, the closest one winning."""
    merged: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(name))):
        if marker.args:
            raise TypeError(f"@pytest.mark.{name} takes keyword arguments only, got {marker.args!r}")
        merged.update(marker.kwargs)
    return merged


@pytest.fixture
def streamsentinel_server() -> Iterator[ChaosServer]:
    """A started fault server (:class:`streamsentinel.chaos.ChaosServer`) on 127.0.0.1, stopped
    after the test.

    Yields:
        the ``ChaosServer``: ``base_url`` (``http://127.0.0.1:PORT/v1``) for any OpenAI client;
        ``records`` (a ``RequestRecord`` per HTTP request: the ground truth of what it sent);
        ``expected_text(request_body)`` (the text of a clean stream of that request). Every request
        gets a clean stream of 20 content pieces until the test sets its script, in arrival order
        (an SDK retry is a new request, so it takes the next entry)::

            streamsentinel_server.plan = FaultPlan(script=[FaultSpec(Fault.RESET, after=0), Fault.NONE])
            streamsentinel_server.chunks = 5  # content pieces per clean stream

        then clean streams again. ``x-chaos-fault`` request headers override the script per request;
        ``streamsentinel.chaos.FAULT_TABLE`` says what each ``Fault`` does on the wire.
    """
    from .chaos import ChaosServer

    with ChaosServer() as server:
        yield server


@pytest.fixture
def streamsentinel_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``streamsentinel.instrument()`` options the test asks for.

    Returns:
        the keyword arguments of ``@pytest.mark.streamsentinel(...)`` markers on the test (its
        class, module: the closest wins), e.g. ``{"on_truncation": "record", "retry_attempts": 1}``;
        ``{}`` without one (streamsentinel's defaults). Override this fixture in a ``conftest.py``
        to set options for many tests.
    """
    return _marker_kwargs(request, "streamsentinel")


@pytest.fixture
def streamsentinel_instrumented(streamsentinel_options: dict[str, Any]) -> Iterator[bool]:
    """streamsentinel instrumented for the test (:func:`streamsentinel.testing.instrumented`).

    If it is not instrumented yet, ``instrument(**streamsentinel_options)`` (into the global
    Prometheus registry and OpenTelemetry providers) and ``uninstrument()`` after the test; if it
    already is (the application, a session fixture), it is left as it is, and the test errors if
    it asked for other options.

    Yields:
        True if this fixture instrumented (and uninstruments), False if it found it instrumented.
    """
    from .testing import instrumented

    with instrumented(**streamsentinel_options) as did:
        yield did


@pytest.fixture
def streamsentinel_records(streamsentinel_instrumented: bool) -> Iterator[list[StreamRecord]]:
    """The records of the streams that end during the test (:func:`streamsentinel.testing.capture`),
    with streamsentinel instrumented (``streamsentinel_instrumented``).

    Yields:
        a list of frozen ``streamsentinel.instrumentation.StreamRecord``, one per logical stream
        request (its retries included), appended as each stream ends, in that order: ``outcome``
        (``completed``, ``truncated``, ``failed``, ``abandoned``, ``rejected``), ``error_type``,
        ``reason`` (``eof_before_done``, ``connection_lost``, ...), ``chunks``, ``sdk_retries``,
        ``sentinel_retries``... A stream the code under test dropped without ``close()`` is recorded
        by a background thread: call ``streamsentinel.testing.settle()`` before asserting on it.
    """
    from .testing import capture

    with capture() as records:
        yield records


@pytest.fixture
def streamsentinel_client_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The arguments ``streamsentinel_client`` / ``streamsentinel_async_client`` are built with.

    Returns:
        :data:`DEFAULT_CLIENT_OPTIONS` (``api_key="test-key"``, ``max_retries=0``, ``timeout=10.0``)
        updated with the keyword arguments of ``@pytest.mark.streamsentinel_client(...)`` markers
        (the closest wins), e.g. ``{"max_retries": 2}``. ``base_url`` is the server's.
    """
    return {**DEFAULT_CLIENT_OPTIONS, **_marker_kwargs(request, "streamsentinel_client")}


@pytest.fixture
def streamsentinel_client(
    streamsentinel_server: ChaosServer,
    streamsentinel_client_options: dict[str, Any],
    streamsentinel_instrumented: bool,
) -> Iterator[openai.OpenAI]:
    """A sync ``openai.OpenAI`` pointed at ``streamsentinel_server``, with streamsentinel
    instrumented (``streamsentinel_instrumented``); closed after the test.

    Yields:
        the client, built with ``streamsentinel_client_options`` (default: ``max_retries=0``,
        ``timeout=10.0``; ``@pytest.mark.streamsentinel_client(max_retries=2)`` changes them).
    """
    import openai

    with openai.OpenAI(base_url=streamsentinel_server.base_url, **streamsentinel_client_options) as client:
        yield client


@_async_fixture
async def streamsentinel_async_client(
    streamsentinel_server: ChaosServer,
    streamsentinel_client_options: dict[str, Any],
    streamsentinel_instrumented: bool,
) -> AsyncIterator[openai.AsyncOpenAI]:
    """An ``openai.AsyncOpenAI`` pointed at ``streamsentinel_server``, with streamsentinel
    instrumented; closed after the test, on the test's event loop. Needs pytest-asyncio (strict or
    auto mode; an ``async def`` test marked ``@pytest.mark.asyncio`` in strict mode).

    Yields:
        the client, built with ``streamsentinel_client_options`` (as ``streamsentinel_client``).
    """
    import openai

    async with openai.AsyncOpenAI(
        base_url=streamsentinel_server.base_url, **streamsentinel_client_options
    ) as client:
        yield client
