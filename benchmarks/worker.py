"""One benchmark process: time the plain or instrumented SDK on an in-process transport.

    python benchmarks/worker.py VARIANT CHUNKS

VARIANT:
- ``plain``: the SDK alone (the same libraries imported, nothing instrumented);
- ``instrumented``: OTel SDK tracer, structlog JSON lines at INFO into /dev/null (production-like);
- ``instrumented-warn``: the same with structlog at WARNING, so only failures are logged;
- ``instrumented-untraced``: structlog at WARNING and no tracer provider set (OpenTelemetry's no-op
  default): streamsentinel's own bookkeeping plus Prometheus.

Prints one JSON line: the fastest 2000-chunk stream (s) and the fastest mean time of a short
(3-item) stream (s) over several batches.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from typing import Any

import httpx2
import openai

LONG_REPS = 15
SHORT_BATCHES = 7
SHORT_PER_BATCH = 300


def sse_body(chunks: int) -> bytes:
    out = []
    for i in range(chunks):
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None, "logprobs": None}
            ],
        }
        out.append("data: " + json.dumps(chunk) + "\n\n")
    finish = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}],
    }
    out.append("data: " + json.dumps(finish) + "\n\ndata: [DONE]\n\n")
    return "".join(out).encode()


def setup(variant: str) -> None:
    # Every variant imports the same libraries, so they run on heaps of the same size (a larger
    # heap makes each garbage collection slower, which would be charged to streamsentinel).
    import structlog
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    import streamsentinel

    provider = None if variant == "instrumented-untraced" else TracerProvider()
    registry = CollectorRegistry()
    level = logging.INFO if variant == "instrumented" else logging.WARNING
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=open("/dev/null", "w")),  # noqa: SIM115
        cache_logger_on_first_use=True,
    )
    if variant != "plain":
        streamsentinel.instrument(registry=registry, tracer_provider=provider)


def main() -> None:
    variant, chunks = sys.argv[1], int(sys.argv[2])
    bodies = {"long": sse_body(chunks), "short": sse_body(1)}
    headers = {
        "content-type": "text/event-stream",
        "x-request-id": "req_1",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "9000",
        "x-ratelimit-reset-tokens": "6m0s",
    }

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers=headers, content=bodies[request.headers["x-bench"]])

    setup(variant)
    client = openai.OpenAI(
        api_key="bench",
        base_url="http://bench.local/v1",
        max_retries=0,
        http_client=openai.DefaultHttpx2Client(transport=httpx2.MockTransport(handler)),
    )
    messages: Any = [{"role": "user", "content": "hi"}]

    def run(key: str) -> int:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, extra_headers={"x-bench": key}
        )
        n = 0
        for _ in stream:
            n += 1
        return n

    for _ in range(3):
        run("long")
    for _ in range(200):
        run("short")
    gc.collect()
    long_times = []
    for _ in range(LONG_REPS):
        t = time.perf_counter()
        run("long")
        long_times.append(time.perf_counter() - t)
    short_means = []
    for _ in range(SHORT_BATCHES):
        t = time.perf_counter()
        for _ in range(SHORT_PER_BATCH):
            run("short")
        short_means.append((time.perf_counter() - t) / SHORT_PER_BATCH)
    print(json.dumps({"long": min(long_times), "short": min(short_means)}))


if __name__ == "__main__":
    main()
