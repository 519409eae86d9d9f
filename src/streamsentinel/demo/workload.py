"""The demo's traffic: N streaming requests (sync and async, chat and Responses) at a concurrency,
each consumed to the end the way an application would, recording what the consumer saw."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai

KINDS = ("sync-chat", "async-chat", "sync-responses", "async-responses")


@dataclass(frozen=True, slots=True)
class ConsumerResult:
    """What one consumer saw: ``items`` received, and the exception class name that ended its
    stream (None when it ended cleanly)."""

    index: int
    kind: str
    items: int
    error: str | None


def request_id(index: int) -> str:
    """The ``X-Client-Request-Id`` of logical request ``index``."""
    return f"demo-{index}"


def _request(kind: str, index: int, model: str) -> tuple[str, dict[str, Any]]:
    prompt = f"Request {index}: tell me about stream resilience."
    # One id per logical request: the server's log groups the SDK's retries by it.
    headers = {"X-Client-Request-Id": request_id(index)}
    if kind.endswith("chat"):
        return "chat", {
            "extra_headers": headers,
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    return "responses", {"model": model, "input": prompt, "stream": True, "extra_headers": headers}


def _consume_sync(client: openai.OpenAI, kind: str, index: int, model: str) -> ConsumerResult:
    api, kwargs = _request(kind, index, model)
    items = 0
    try:
        create = client.chat.completions.create if api == "chat" else client.responses.create
        with create(**kwargs) as stream:
            for _ in stream:
                items += 1
    except Exception as exc:  # the consumer's own error handling: note it and go on
        return ConsumerResult(index, kind, items, type(exc).__name__)
    return ConsumerResult(index, kind, items, None)


async def _consume_async(client: openai.AsyncOpenAI, kind: str, index: int, model: str) -> ConsumerResult:
    api, kwargs = _request(kind, index, model)
    items = 0
    try:
        create = client.chat.completions.create if api == "chat" else client.responses.create
        async with await create(**kwargs) as stream:
            async for _ in stream:
                items += 1
    except Exception as exc:
        return ConsumerResult(index, kind, items, type(exc).__name__)
    return ConsumerResult(index, kind, items, None)


def run_workload(
    *,
    requests: int,
    concurrency: int,
    make_sync: Callable[[], openai.OpenAI],
    make_async: Callable[[], openai.AsyncOpenAI],
    model: str,
    on_done: Callable[[ConsumerResult], None],
    first_index: int = 0,
) -> list[ConsumerResult]:
    """Run ``requests`` streams: kinds round-robin over ``KINDS``; the sync half in a thread pool of
    ``concurrency`` threads, the async half in an event loop with ``concurrency`` tasks at once,
    both at the same time. Returns the results in request order."""
    results: list[ConsumerResult] = []
    lock = threading.Lock()

    def done(result: ConsumerResult) -> None:
        with lock:
            results.append(result)
        on_done(result)

    indexes = range(first_index, first_index + requests)
    sync_jobs = [(i, KINDS[i % 4]) for i in indexes if KINDS[i % 4].startswith("sync")]
    async_jobs = [(i, KINDS[i % 4]) for i in indexes if KINDS[i % 4].startswith("async")]

    sync_client = make_sync()
    # Daemon workers, not a ThreadPoolExecutor: after Ctrl-C the process must not wait for streams
    # that the SDK and streamsentinel are still retrying (the interpreter joins a pool's threads).
    pending = deque(sync_jobs)
    stop = threading.Event()
    failures: list[BaseException] = []

    def sync_worker() -> None:
        while not stop.is_set():
            with lock:
                if not pending:
                    return
                index, kind = pending.popleft()
            try:
                done(_consume_sync(sync_client, kind, index, model))
            except BaseException as exc:  # a bug in the demo itself: stop and re-raise in the caller
                failures.append(exc)
                stop.set()
                return

    workers = [
        threading.Thread(target=sync_worker, name=f"demo-sync-{n}", daemon=True) for n in range(concurrency)
    ]
    for worker in workers:
        worker.start()

    async def run_async() -> None:
        client = make_async()
        gate = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[None]] = set()

        async def one(i: int, k: str) -> None:
            try:
                done(await _consume_async(client, k, i, model))
            except Exception as exc:  # a bug in the demo itself: re-raised by run_workload
                failures.append(exc)
            finally:
                gate.release()

        # At most `concurrency` tasks exist: a Ctrl-C (the main task cancelled) cancels a handful,
        # and each of them ends after its one stream whatever it does with the cancellation.
        try:
            for i, k in async_jobs:
                await gate.acquire()
                if failures or stop.is_set():
                    gate.release()
                    break
                task = asyncio.create_task(one(i, k))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()
            await client.close()

    try:
        asyncio.run(run_async())
        for worker in workers:
            worker.join()
    except BaseException:
        stop.set()  # Ctrl-C: start no more streams; the caller stops the server
        raise
    finally:
        sync_client.close()
    if failures:
        raise failures[0]
    return sorted(results, key=lambda r: r.index)
