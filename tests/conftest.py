"""Shared fixtures: a real chaos server on 127.0.0.1, streamsentinel instrumented into a private
registry and an in-memory span exporter, and real openai clients pointed at the server, each test
run over both HTTP libraries the SDK takes (``library``: httpx2, and a legacy httpx client)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest
import structlog

import streamsentinel
from streamsentinel.chaos import ChaosServer

from .support import (
    HTTP_LIBRARIES,
    Telemetry,
    make_telemetry,
    sdk_client,
    uncache_streamsentinel_loggers,
)


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    uncache_streamsentinel_loggers()
    yield
    structlog.reset_defaults()
    uncache_streamsentinel_loggers()


@pytest.fixture
def chaos() -> Iterator[ChaosServer]:
    with ChaosServer(chunks=5) as server:
        yield server


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    streamsentinel.uninstrument()
    yield make_telemetry()
    streamsentinel.uninstrument()


@pytest.fixture(params=HTTP_LIBRARIES)
def library(request: pytest.FixtureRequest) -> str:
    """The HTTP library under the test's SDK clients (``HTTP_LIBRARIES``)."""
    name: str = request.param
    return name


@pytest.fixture
def client(library: str, chaos: ChaosServer) -> Iterator[openai.OpenAI]:
    with sdk_client("sync", library, base_url=chaos.base_url, api_key="test-key", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(library: str, chaos: ChaosServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_client("async", library, base_url=chaos.base_url, api_key="test-key", max_retries=0) as c:
        yield c


@pytest.fixture
def uninstrument_after() -> Iterator[None]:
    """Leaves streamsentinel uninstrumented after a test that instruments it itself."""
    yield
    streamsentinel.uninstrument()
