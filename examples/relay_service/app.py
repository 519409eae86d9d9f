"""A small chat relay: ``POST /chat`` streams an OpenAI chat completion back to the caller as SSE.

Request: ``{"prompt": "...", "request_id": "..."}``. Response (``text/event-stream``): one
``data: {"content": "..."}`` event per content delta, then ``data: [DONE]``; if the upstream call
fails, ``event: error`` + ``data: {"error": "<exception type>"}`` instead, and the stream ends.

Configuration: ``OPENAI_BASE_URL`` (required), ``OPENAI_API_KEY``, ``RELAY_MODEL``,
``RELAY_MAX_RETRIES`` (the SDK's ``max_retries``), ``RELAY_TIMEOUT`` (seconds).

Run: ``uvicorn examples.relay_service.app:app --host 127.0.0.1 --port 8000`` (or with ``--workers N``,
or ``gunicorn -w N -k uvicorn.workers.UvicornWorker examples.relay_service.app:app``). Each answer
carries the PID of the worker process that served it in ``x-relay-pid``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator

import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = os.environ.get("RELAY_MODEL", "gpt-4o-mini")


def _client() -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key=os.environ.get("OPENAI_API_KEY", "x"),
        max_retries=int(os.environ.get("RELAY_MAX_RETRIES", "2")),
        timeout=float(os.environ.get("RELAY_TIMEOUT", "30")),
    )


def _event(data: str, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n"


async def _relay(client: openai.AsyncOpenAI, prompt: str, request_id: str) -> AsyncIterator[str]:
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            extra_headers={"X-Client-Request-Id": request_id},
        )
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield _event(json.dumps({"content": choice.delta.content}))
    except Exception as exc:
        yield _event(json.dumps({"error": type(exc).__name__}), event="error")
        return
    yield _event("[DONE]")


async def chat(request: Request) -> Response:
    try:
        body = await request.json()
        prompt = str(body["prompt"])
        request_id = str(body.get("request_id") or "")
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "expected JSON {prompt, request_id}"}, status_code=400)
    client: openai.AsyncOpenAI = request.app.state.openai
    return StreamingResponse(
        _relay(client, prompt, request_id),
        media_type="text/event-stream",
        # Which worker process answered (pre-fork servers: tests/kit/test_example_service.py).
        headers={"cache-control": "no-cache", "x-relay-pid": str(os.getpid())},
    )


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with _client() as client:
        app.state.openai = client
        yield


app = Starlette(routes=[Route("/chat", chat, methods=["POST"])], lifespan=lifespan)
