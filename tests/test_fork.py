"""``os.fork()`` while streams are being observed: the child gets fresh locks, queues and threads of
streamsentinel's own, and none of the parent's pending work (a service that instruments before
forking its workers: gunicorn ``--preload``, multiprocessing's ``fork`` start method)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import threading
import time
import traceback
from typing import Any, NoReturn

import openai

from streamsentinel.chaos import ChaosServer
from streamsentinel.testing import capture, settle

from .support import TIMEOUT, Telemetry, chat_kwargs

FORKS = 60
PARENT_MODEL = "parent-model"
# The child's streams use models of their own: their metric children (whose prometheus_client
# value locks a parent thread may hold at the fork) are created in the child.
CHILD_MODEL = "child-model"
CHILD_ASYNC_MODEL = "child-async-model"
SETTLE_TIMEOUT = 20.0  # a healthy child settles at once; a wedged one never does
CHILD_DEADLINE = 90  # seconds: the safety net (SIGALRM kills a child that hangs)


def _drop_in_parent(base_url: str, ready: threading.Event, stop: threading.Event) -> None:
    """Keep dropping streams without close(): the reaper thread is always ending some."""
    with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
        while not stop.is_set():
            stream = client.chat.completions.create(**chat_kwargs(model=PARENT_MODEL))
            next(stream)
            del stream
            if not ready.is_set():
                settle()  # the first one went all the way through the reaper
                ready.set()


async def _drop_async(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
        stream = await client.chat.completions.create(**chat_kwargs(model=CHILD_ASYNC_MODEL))
        await stream.__anext__()
        del stream
        settle(SETTLE_TIMEOUT)


def _child(fd: int, base_url: str) -> NoReturn:
    """In the forked child: drop one sync and one async stream, settle, report through ``fd``."""
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(CHILD_DEADLINE)
        report: dict[str, Any] = {"pid": os.getpid()}
        with capture() as records:
            try:
                with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
                    stream = client.chat.completions.create(**chat_kwargs(model=CHILD_MODEL))
                    next(stream)
                    del stream
                    settle(SETTLE_TIMEOUT)
                asyncio.run(_drop_async(base_url))
                report["settled"] = True
            except TimeoutError:
                report["settled"] = False
            report["records"] = [[r.start.request_model, r.outcome] for r in records]
            os.write(fd, json.dumps(report).encode())
            os._exit(0)  # not through capture()'s exit: it settles again
    except BaseException:
        try:
            os.write(fd, json.dumps({"error": traceback.format_exc()[-2000:]}).encode())
        except BaseException:
            pass
    finally:
        os._exit(1)


def _report_of(pid: int, fd: int) -> dict[str, Any]:
    """The child's report (read until EOF, within the safety net), the child always reaped."""
    data = b""
    deadline = time.monotonic() + CHILD_DEADLINE + 30
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return {"error": "no report: the child hung"}
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)  # a no-op for a child that has exited
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
    if not data:
        return {"error": f"no report: the child died (wait status {status})"}
    report: dict[str, Any] = json.loads(data)
    return report


def test_fork_while_the_reaper_ends_dropped_streams(chaos: ChaosServer, telemetry: Telemetry) -> None:
    """Issue 15, defect 9: a process forked while dropped streams are being ended gets a working
    reaper of its own: no parent stream is recorded in the child, each stream the child drops is
    recorded exactly once, and ``settle()`` returns, in every child of ``FORKS``."""
    ready, stop = threading.Event(), threading.Event()
    dropper = threading.Thread(target=_drop_in_parent, args=(chaos.base_url, ready, stop), daemon=True)
    dropper.start()
    reports = []
    try:
        assert ready.wait(60)
        for _ in range(FORKS):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                _child(write, chaos.base_url)
            os.close(write)
            reports.append(_report_of(pid, read))
    finally:
        stop.set()
        dropper.join(60)
    assert not dropper.is_alive()
    settle()
    expected = {"settled": True, "records": [[CHILD_MODEL, "abandoned"], [CHILD_ASYNC_MODEL, "abandoned"]]}
    failed = [r for r in reports if {k: r.get(k) for k in expected} != expected]
    assert failed == [], f"{len(failed)} of {FORKS} children failed: {failed[:5]}"
