"""Memory per open stream: 1,000 concurrent async chat streams held mid-stream over loopback HTTP.

A tiny HTTP/1.1 server (this script with ``--serve``, in its own process so its allocations are not
traced) answers every request with the SSE headers, the role chunk and one content chunk, then holds
the connection open. Each variant (``benchmarks/instr_worker.py`` variants: the same OTel SDK tracer
provider and in-memory exporter, each instrumentation with its default settings) runs in a fresh
process: ``openai.AsyncOpenAI`` on ``DefaultAsyncHttpx2Client``, a warm-up of 50 held streams
(closed again), then ``tracemalloc`` starts and N tasks each open a stream, read its first two chunks
and wait in ``async for`` for the next. With every stream held, the traced memory (after
``gc.collect()``) less the memory before, over N, is the cost of one open stream: the task, the
socket, httpx2's connection and response, the SDK's stream, and the instrumentation's state.
``streamsentinel-many-models`` gives every stream another model name, after 300 new names (past
``max_model_labels``): retained memory per open stream must not grow with distinct models.

    python benchmarks/bench_memory.py [--variants bare,streamsentinel,...] [--streams 1000] [--json]

Reported per variant: KiB per open stream (median of the runs) and the KiB added over the bare SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from instr_worker import (  # noqa: E402
    HEADERS,
    MANY_MODELS_SEEN,
    VARIANTS,
    Models,
    Setup,
    clean_env,
    sse_events,
)

DEFAULT_VARIANTS = (
    "bare",
    "streamsentinel",
    "streamsentinel-untraced",
    "streamsentinel-chunk-events-all",
    "streamsentinel-many-models",
)
FIRST_ITEMS = 2  # the role chunk and one content chunk; the stream then waits for the third
WARMUP = 50
BATCH = 100


# ---- the holding server ----------------------------------------------------------------------


def _held_response() -> bytes:
    head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()) + "\r\n"
    data = "".join(sse_events(3)[:FIRST_ITEMS]).encode()
    return head.encode() + f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        writer.write(_held_response())
        await writer.drain()
        while await reader.read(65536):  # hold until the client goes away
            pass
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve() -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


# ---- one measuring process -------------------------------------------------------------------


async def _measure(variant: str, port: int, streams: int) -> dict[str, Any]:
    import httpx2
    import openai

    setup = Setup(variant)
    client = openai.AsyncOpenAI(
        api_key="bench",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
        timeout=httpx2.Timeout(600, connect=60),
        http_client=openai.DefaultAsyncHttpx2Client(
            limits=httpx2.Limits(max_connections=streams + WARMUP, max_keepalive_connections=100)
        ),
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    models = Models(variant == "streamsentinel-many-models")  # each held stream another model

    async def hold(count: int) -> None:
        ready = 0
        deadline = time.monotonic() + 300

        async def one() -> None:
            nonlocal ready
            stream = await client.chat.completions.create(model=models.next(), messages=messages, stream=True)
            try:
                got = 0
                async for _ in stream:
                    got += 1
                    if got == FIRST_ITEMS:
                        ready += 1
            finally:
                await stream.close()

        # Opened in batches, each held before the next starts: a thousand connects at once would
        # wait on one busy event loop past the SDK's 5 s connect timeout.
        tasks: list[asyncio.Task[None]] = []
        for start in range(0, count, BATCH):
            tasks += [asyncio.create_task(one()) for _ in range(min(BATCH, count - start))]
            target = len(tasks)
            while ready < target:
                failed = [t for t in tasks if t.done()]
                if failed:
                    exc = failed[0].exception()
                    raise RuntimeError(f"{ready}/{count} streams held: {exc!r}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ready}/{count} streams held: timed out")
                await asyncio.sleep(0.01)
        holding.extend(tasks)

    holding: list[asyncio.Task[None]] = []

    async def release() -> None:
        for task in holding:
            task.cancel()
        await asyncio.gather(*holding, return_exceptions=True)
        holding.clear()

    await hold(WARMUP)
    await release()
    while models.many and models.count < MANY_MODELS_SEEN:  # past max_model_labels first
        await hold(BATCH)
        await release()
    await asyncio.sleep(0.1)
    setup.exporter.clear()
    gc.collect()
    tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    await hold(streams)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"variant": variant, "streams": streams, "bytes_per_stream": (held - before) / streams}


def _worker(variant: str, port: int, streams: int) -> None:
    result = asyncio.run(_measure(variant, port, streams))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # a thousand open streams: no orderly shutdown needed


# ---- the benchmark ---------------------------------------------------------------------------


def run(python: str, variants: list[str], streams: int, runs: int) -> dict[str, Any]:
    started = time.perf_counter()
    server = subprocess.Popen(
        [python, str(Path(__file__).resolve()), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        samples: dict[str, list[float]] = {v: [] for v in variants}
        errors: dict[str, str] = {}
        for _ in range(runs):
            for variant in variants:
                if variant in errors:
                    continue
                proc = subprocess.run(
                    [python, str(Path(__file__).resolve()), "--worker", variant, str(port), str(streams)],
                    capture_output=True,
                    text=True,
                    env=clean_env(dict(os.environ)),
                    timeout=600,
                )
                if proc.returncode != 0:
                    lines = [line for line in proc.stderr.splitlines() if line.strip()]
                    errors[variant] = (lines[-1] if lines else f"exit status {proc.returncode}")[:200]
                    continue
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                samples[variant].append(result["bytes_per_stream"] / 1024)
    finally:
        server.terminate()
        server.wait()
    report: dict[str, Any] = {}
    bare = statistics.median(samples["bare"]) if samples.get("bare") else None
    for variant in variants:
        if variant in errors:
            report[variant] = {"error": errors[variant]}
            continue
        kib = statistics.median(samples[variant])
        report[variant] = {
            "kib_per_stream": round(kib, 2),
            "added_kib_per_stream": round(kib - bare, 2) if bare is not None else None,
            "runs_kib": [round(s, 2) for s in samples[variant]],
        }
    report["_meta"] = {"streams": streams, "runs": runs, "seconds": round(time.perf_counter() - started, 1)}
    return report


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve())
        return 0
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=", ".join(VARIANTS))
    parser.add_argument("--python", default=sys.executable, help="interpreter for the workers")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="processes per variant (median)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if "bare" not in variants:
        variants.insert(0, "bare")
    report = run(args.python, variants, args.streams, args.runs)
    if args.json:
        print(json.dumps(report))
        return 0
    print("| variant | KiB per open stream | added over bare | runs |")
    print("|---|---|---|---|")
    for variant in variants:
        res = report[variant]
        if "error" in res:
            print(f"| {variant} | n/a ({res['error']}) | | |")
            continue
        added = "" if variant == "bare" else f"{res['added_kib_per_stream']:+.1f}"
        print(f"| {variant} | {res['kib_per_stream']:.1f} | {added} | {res['runs_kib']} |")
    print(f"\n{args.streams} streams held per process; {report['_meta']['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
