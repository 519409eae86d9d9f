"""``streamsentinel demo --scenario fleet``: four worker processes share one circuit breaker through
Redis (a private ``redis-server`` the demo starts, or ``--redis-url``), against one fault server.

1. an outage seen by worker 1 only: its breaker opens after ``minimum_number_of_calls`` failures
   and the OPEN decision is shared;
2. workers 2-4, which never saw a failure, send nothing: every call is refused at once;
3. once the open wait is over, the four workers start 50 stalled streams each at the same moment:
   exactly ``permitted_number_of_calls_in_half_open_state`` probes reach the server, fleet-wide.

The accounting compares the fault server's ground truth (requests received) with what the workers
counted. A worker is this module run as ``python -m streamsentinel.demo.fleet WORKER_JSON``, driven
over stdin/stdout, one JSON line each way.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any

from .accounting import Row

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "hi"}]
WORKERS = 4
SWARM = 50  # streams per worker at the half-open moment
MINIMUM_CALLS = 5
PERMITTED = 3
BREAKER: dict[str, Any] = {
    "minimum_number_of_calls": MINIMUM_CALLS,
    "sliding_window_size": 10,
    "wait_duration_in_open_state": 5.0,
    "permitted_number_of_calls_in_half_open_state": PERMITTED,
    "timeout_streak_min_seconds": 0.0,
}
OUTAGE = {"x-chaos-fault": "server_error"}
STALLED = {"x-chaos-fault": "stall_before_first_token", "x-chaos-stall-seconds": "300"}
POLL = 0.02  # seconds between two looks at a condition (a bounded poll, never a synchronisation)


class _Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamsentinel.demo.fleet", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ask({})  # ready

    def ask(self, command: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fleet worker exited with {self.proc.wait()}")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.ask({"op": "exit"})
        except Exception:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_fleet(base_url: str, redis_url: str, arrivals: Any) -> list[Row]:
    """Run the scenario; ``arrivals()`` is the fault server's count of requests received."""
    config = {"base_url": base_url, "redis_url": redis_url, "breaker": BREAKER}
    rows: list[Row] = []
    with ExitStack() as stack:
        workers = []
        for _ in range(WORKERS):
            worker = _Worker(config)
            stack.callback(worker.close)
            workers.append(worker)
        first, others = workers[0], workers[1:]

        before = arrivals()
        seen = first.ask({"op": "run", "n": 2 * MINIMUM_CALLS, "headers": OUTAGE})
        sent = arrivals() - before
        rows.append(Row("fleet", "outage: requests worker 1 sent", sent, seen.get("sent", 0)))
        for worker in others:
            if not worker.ask({"op": "wait", "state": "open", "timeout": 4.0})["ok"]:
                raise RuntimeError("the OPEN decision did not reach every worker within its open wait")

        before = arrivals()
        answers = [worker.ask({"op": "run", "n": 5, "headers": {}}) for worker in others]
        refused = sum(answer.get("rejected", 0) for answer in answers)
        not_sent = 5 * len(others) - (arrivals() - before)
        rows.append(Row("fleet", "requests no process sent (opened elsewhere)", not_sent, refused))

        for worker in workers:
            if not worker.ask({"op": "wait", "state": "half_open", "timeout": 60.0})["ok"]:
                raise RuntimeError("the fleet's breaker did not become half-open within 60 s")
        before = arrivals()
        swarms = [worker.ask({"op": "swarm", "n": SWARM, "headers": STALLED}) for worker in workers]
        admitted = sum(answer.get("admitted", 0) for answer in swarms)
        deadline = time.monotonic() + 30.0
        while arrivals() - before < admitted and time.monotonic() < deadline:
            time.sleep(POLL)
        probes = arrivals() - before
        rows.append(Row("fleet", "half-open probes that reached the server", probes, admitted))
        rows.append(Row("fleet", "probes permitted fleet-wide", PERMITTED, probes))
        for worker in workers:
            worker.ask({"op": "finish"})
    return rows


# -- the worker ------------------------------------------------------------------------------------


def _worker(config: dict[str, Any]) -> None:
    import openai
    from prometheus_client import CollectorRegistry

    import streamsentinel
    from streamsentinel import BreakerConfig, CircuitOpenError

    streamsentinel.instrument(
        registry=CollectorRegistry(),
        redis_url=config["redis_url"],
        breaker=BreakerConfig(**config["breaker"]),
        retry_attempts=1,
        fleet_refresh_interval=0.2,
    )
    store = streamsentinel._runtime().circuits.store
    name = f"127.0.0.1/{MODEL}"
    client = openai.OpenAI(base_url=config["base_url"], api_key="k", max_retries=0, timeout=60.0)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    swarm: list[Any] = []
    aclients: list[Any] = []

    def reply(value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    def run(n: int, headers: dict[str, str]) -> dict[str, int]:
        counts = Counter[str]()
        for _ in range(n):
            try:
                with client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                    extra_headers=headers,
                ) as stream:
                    for _ in stream:
                        pass
                counts["sent"] += 1
            except CircuitOpenError:
                counts["rejected"] += 1
            except openai.APIError:
                counts["sent"] += 1
        return dict(counts)

    async def one(aclient: Any, headers: dict[str, str], started: Counter[str]) -> None:
        try:
            stream = await aclient.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, extra_headers=headers
            )
        except CircuitOpenError:
            started["refused"] += 1
            return
        started["admitted"] += 1
        async with stream:
            async for _ in stream:
                pass

    def start_swarm(n: int, headers: dict[str, str]) -> dict[str, int]:
        started = Counter[str]()

        async def go() -> None:
            aclient = openai.AsyncOpenAI(
                base_url=config["base_url"], api_key="k", max_retries=0, timeout=600.0
            )
            aclients.append(aclient)
            swarm.extend(asyncio.ensure_future(one(aclient, headers, started)) for _ in range(n))

        asyncio.run_coroutine_threadsafe(go(), loop).result()
        deadline = time.monotonic() + 60.0
        while sum(started.values()) < n and time.monotonic() < deadline:
            time.sleep(POLL)
        return dict(started)

    def finish() -> None:
        async def cancel() -> None:
            for task in swarm:
                task.cancel()
            await asyncio.gather(*swarm, return_exceptions=True)
            for aclient in aclients:
                await aclient.close()

        asyncio.run_coroutine_threadsafe(cancel(), loop).result(timeout=60)

    reply({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "run":
            reply(run(command["n"], command["headers"]))
        elif op == "wait":
            deadline = time.monotonic() + command["timeout"]
            while store.state(name).value != command["state"] and time.monotonic() < deadline:
                time.sleep(POLL)
            reply({"ok": store.state(name).value == command["state"]})
        elif op == "swarm":
            reply(start_swarm(command["n"], command["headers"]))
        elif op == "finish":
            finish()
            reply({})
        else:
            break
    streamsentinel.uninstrument()


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
