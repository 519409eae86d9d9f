"""Shared fixtures: a real chaos server on 127.0.0.1, streamsentinel instrumented into a private
registry and an in-memory span exporter, and real openai clients pointed at the server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest
import structlog

import streamsentinel
from streamsentinel.chaos import ChaosServer

from .support import (
    HTTP_LIBRARIES,
    TIMEOUT,
    Telemetry,
    legacy_http_client,
    make_telemetry,
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
def client(request: pytest.FixtureRequest, chaos: ChaosServer) -> Iterator[openai.OpenAI]:
    legacy = legacy_http_client("sync") if request.param == "httpx" else None
    with openai.OpenAI(
        base_url=chaos.base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT, http_client=legacy
    ) as c:
        yield c
    if legacy is not None:
        legacy.close()


@pytest.fixture(params=HTTP_LIBRARIES)
async def aclient(request: pytest.FixtureRequest, chaos: ChaosServer) -> AsyncIterator[openai.AsyncOpenAI]:
    legacy = legacy_http_client("async") if request.param == "httpx" else None
    async with openai.AsyncOpenAI(
        base_url=chaos.base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT, http_client=legacy
    ) as c:
        yield c
    if legacy is not None:
        await legacy.aclose()
