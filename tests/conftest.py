"""Shared fixtures: a real chaos server on 127.0.0.1, streamsentinel instrumented into a private
registry and an in-memory span exporter, and real openai clients pointed at the server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest
import structlog

import streamsentinel
from streamsentinel.chaos import ChaosServer

from .support import TIMEOUT, Telemetry, make_telemetry, uncache_streamsentinel_loggers


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


@pytest.fixture
def client(chaos: ChaosServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=chaos.base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
async def aclient(chaos: ChaosServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=chaos.base_url, api_key="test-key", max_retries=0, timeout=TIMEOUT
    ) as c:
        yield c
