"""``os.fork()`` while streams are being observed: the child gets fresh locks, queues and threads of
streamsentinel's own, and none of the parent's pending work (a service that instruments before
forking its workers: gunicorn ``--preload``, multiprocessing's ``fork`` start method)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import select
import signal
import threading
import time
import traceback
from types import SimpleNamespace
from typing import Any, NoReturn

import openai
from prometheus_client import CollectorRegistry

import streamsentinel
from streamsentinel._core.reaper import REAPER
from streamsentinel._sdk import patching
from streamsentinel.chaos import ChaosServer
from streamsentinel.instrumentation import _prometheus
from streamsentinel.instrumentation._prometheus import metrics_for
from streamsentinel.testing import capture, settle

from ..support import TIMEOUT, Telemetry, chat_kwargs

FORKS = 100
PARENT_MODEL = "parent-model"
HELD_MODEL = "held-model"  # a stream the parent keeps open across the forks
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


def _child(fd: int, base_url: str, held: list[Any]) -> NoReturn:
    """In the forked child: drop the parent's ``held`` stream (its copy), one sync and one async
    stream of the child's, settle, report what was recorded through ``fd``."""
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(CHILD_DEADLINE)
        gc.freeze()  # settle()'s collection skips the inherited heap (copying its pages is slow)
        report: dict[str, Any] = {"pid": os.getpid()}
        with capture() as records:
            held.clear()  # the parent's stream, garbage in the child: the parent's to record
            with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
                stream = client.chat.completions.create(**chat_kwargs(model=CHILD_MODEL))
                next(stream)
                del stream
            asyncio.run(_drop_async(base_url))
            try:
                settle(SETTLE_TIMEOUT)
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
    reports = []
    with openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
        held = [client.chat.completions.create(**chat_kwargs(model=HELD_MODEL))]
        dropper.start()
        try:
            assert ready.wait(60)
            for _ in range(FORKS):
                read, write = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(read)
                    _child(write, chaos.base_url, held)
                os.close(write)
                reports.append(_report_of(pid, read))
        finally:
            stop.set()
            dropper.join(60)
            held[0].close()
    assert not dropper.is_alive()
    settle()
    # The parent still records its own streams, once each.
    assert telemetry.by("openai_stream_requests_total", "outcome", model=HELD_MODEL) == {"abandoned": 1}
    assert telemetry.value("openai_stream_in_flight") == 0
    expected = {"settled": True, "records": [[CHILD_MODEL, "abandoned"], [CHILD_ASYNC_MODEL, "abandoned"]]}
    failed = [r for r in reports if {k: r.get(k) for k in expected} != expected]
    assert failed == [], f"{len(failed)} of {FORKS} children failed: {failed[:5]}"


class _Watched:
    """A stream as the watchdog reads it: not in a read (no deadline to check)."""

    ended = False
    s = SimpleNamespace(read_at=0.0)


def _hold(locks: list[Any], held: threading.Event, release: threading.Event) -> None:
    for lock in locks:
        lock.acquire()
    held.set()
    release.wait(120)
    for lock in reversed(locks):
        lock.release()


def _rejected(telemetry: Telemetry) -> float:
    return telemetry.value("openai_stream_circuit_rejected_total", breaker="fork-breaker")


def _child_uses_everything(fd: int, base_url: str, telemetry: Telemetry) -> NoReturn:
    """In the forked child: every operation that takes one of the locks the parent's thread held."""
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(CHILD_DEADLINE)
        rt = telemetry.runtime
        breaker = rt.circuits.store.get("fork-breaker")
        report: dict[str, Any] = {"probe": breaker.try_acquire() is not None}  # the parent's are out
        streamsentinel.instrument(**streamsentinel._active[0])  # type: ignore[index]  # the same: a no-op
        report["label"] = rt._labels.admit(
            rt._labels.table("fork-server", 1), "fork-server", 1, "fork-model"
        )[0]
        rt.errors("fork", None)
        rt.done_markers.saw_done("fork-server")
        rt.circuits.first_use("fork-other")
        breaker.transition_to_open()
        report["open"] = telemetry.value("openai_stream_circuit_state", breaker="fork-breaker", state="open")
        report["rejected"] = _rejected(telemetry)  # the parent's queued rejection is not delivered here
        report["spent"] = rt.budget.try_spend()
        report["patched"] = patching.installed()
        watched = _Watched()
        rt.watchdog.watch(watched)
        rt.watchdog.unwatch(watched)
        rt.watchdog.close()
        metrics_for(CollectorRegistry())
        with capture() as records:
            with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as client:
                stream = client.chat.completions.create(**chat_kwargs(model=CHILD_MODEL))
                next(stream)
                del stream
            settle(SETTLE_TIMEOUT)
            report["records"] = [[r.start.request_model, r.outcome] for r in records]
            os.write(fd, json.dumps(report).encode())
            os._exit(0)
    except BaseException:
        try:
            os.write(fd, json.dumps({"error": traceback.format_exc()[-2000:]}).encode())
        except BaseException:
            pass
    finally:
        os._exit(1)


def test_fork_while_another_thread_holds_every_lock_of_ours(chaos: ChaosServer, telemetry: Telemetry) -> None:
    """Issue 15, defect 9: every lock of streamsentinel's is new in a forked child, and the parent's
    queued breaker events and half-open probes are not the child's: a child forked while another
    thread holds each of them (instrument's, the reaper's, the labels', the internal errors', the
    breakers' and their store's, the retry budget's, the watchdog's, the sinks') uses them all."""
    rt = telemetry.runtime
    breaker = rt.circuits.store.get("fork-breaker")
    breaker.transition_to_half_open()
    while breaker.try_acquire() is not None:  # every half-open probe out (the last call rejected)
        pass
    assert _rejected(telemetry) == 1
    sinks = {type(s).__name__: s for s in rt.emitter.sinks}
    locks = [
        streamsentinel._lock,
        REAPER._cond,
        REAPER._thread_lock,
        rt._labels._lock,
        rt._labels.models._lock,
        rt._labels.servers._lock,
        rt.errors._lock,
        rt.done_markers._lock,
        rt.circuits._lock,
        rt.circuits.store._lock,
        breaker._lock,
        rt.budget._lock,
        rt.watchdog._lock,
        sinks["PrometheusSink"]._lock,
        sinks["OTelMetricsSink"]._lock,
        _prometheus._BY_REGISTRY_LOCK,
        patching._lock,
    ]
    release = threading.Event()
    dispatching, held = threading.Event(), threading.Event()
    holders = [
        threading.Thread(target=_hold, args=([breaker._dispatching], dispatching, release), daemon=True),
        threading.Thread(target=_hold, args=(locks, held, release), daemon=True),
    ]
    try:
        holders[0].start()
        assert dispatching.wait(60)
        assert breaker.try_acquire() is None  # its event stays queued: another thread is delivering
        holders[1].start()
        assert held.wait(60)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            _child_uses_everything(write, chaos.base_url, telemetry)
        os.close(write)
        report = _report_of(pid, read)
    finally:
        release.set()
        for holder in holders:
            holder.join(60)
    assert report == {
        "probe": True,
        "label": "fork-model",
        "patched": True,
        "open": 1.0,
        "rejected": 1.0,
        "spent": True,
        "records": [[CHILD_MODEL, "abandoned"]],
    }
