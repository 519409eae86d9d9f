"""One process of a fleet, driven by tests/fleet/test_fleet.py over stdin/stdout (one JSON line each way).

Started as ``python tests/fleet_worker.py '<json config>'``: instruments streamsentinel with the
config's Redis URL and breaker, prints ``{"ready": true}``, then answers commands:

- ``{"op": "run", "n": N, "headers": {...}}``: N sequential streams; counts outcomes by exception type.
- ``{"op": "wait", "what": "state"|"paused"|"fallback"|"shared", "value": ..., "timeout": s}``:
  poll this process's view until it equals ``value`` (bounded): ``{"ok": bool, "value": ...}``.
- ``{"op": "swarm", "n": N, "headers": {...}}``: N async streams started at once on one event loop;
  answers once every one of them has been admitted or refused by the breaker (the permitted ones
  stay in flight), with ``{"admitted": a, "refused": r}``.
- ``{"op": "finish"}``: cancel the swarm's streams still in flight; answers the outcomes.
- ``{"op": "metrics"}``: store errors and the fallback gauge from this process's registry.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import openai
from prometheus_client import CollectorRegistry

import streamsentinel
from streamsentinel import BreakerConfig

MODEL = "gpt-4o-mini"
POLL = 0.02  # seconds between two looks at a condition (polling, not synchronising on time)


def reply(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def main() -> None:
    config = json.loads(sys.argv[1])
    registry = CollectorRegistry()
    streamsentinel.instrument(
        registry=registry,
        redis_url=config["redis_url"],
        redis_prefix=config.get("prefix", "streamsentinel:"),
        breaker=BreakerConfig(**config["breaker"]),
        retry_attempts=1,
        rate_limit_pause=config.get("rate_limit_pause", "off"),
        quota_pause_seconds=config.get("quota_pause_seconds", 60.0),
        fleet_refresh_interval=config.get("refresh_interval", 0.2),
        redis_timeout=config.get("redis_timeout", 10.0),
        fleet_min_processes=config.get("min_processes", 1),
    )
    rt = streamsentinel._runtime()
    fleet = rt.fleet
    store = rt.circuits.store
    client = openai.OpenAI(base_url=config["base_url"], api_key="k", max_retries=0, timeout=120.0)
    name = f"127.0.0.1/{MODEL}"
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    swarm: list[asyncio.Future[Any]] = []
    admitted = Counter[str]()
    lock = threading.Lock()

    original = store.acquire_async

    async def counting_acquire(key: str) -> Any:
        result = await original(key)
        with lock:
            admitted["admitted" if result[1] is not None else "refused"] += 1
        return result

    store.acquire_async = counting_acquire

    def look(what: str) -> Any:
        if what == "state":
            return store.state(name).value
        if what == "paused":
            return fleet.pause_remaining("127.0.0.1", MODEL, time.monotonic())[0] > 0
        if what == "fallback":
            # The flag and the exported gauge (set just after the flag flips) must agree: a test that
            # waited for it then reads the metrics it waited for. Until they agree: None.
            exported = registry.get_sample_value("openai_stream_store_fallback") == 1.0
            return fleet.fallback if fleet.fallback == exported else None
        return fleet.refreshes > 0 and not fleet.fallback  # "shared"

    def run(n: int, headers: dict[str, str]) -> dict[str, int]:
        outcomes = Counter[str]()
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
                outcomes["ok"] += 1
            except Exception as exc:
                outcomes[type(exc).__name__] += 1
        return dict(outcomes)

    async def one(aclient: openai.AsyncOpenAI, headers: dict[str, str]) -> str:
        try:
            stream = await aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, extra_headers=headers
            )
            async with stream:
                async for _ in stream:
                    pass
            return "ok"
        except asyncio.CancelledError:
            return "cancelled"
        except Exception as exc:
            return type(exc).__name__

    aclient_box: list[openai.AsyncOpenAI] = []

    async def start_swarm(n: int, headers: dict[str, str]) -> None:
        aclient = openai.AsyncOpenAI(base_url=config["base_url"], api_key="k", max_retries=0, timeout=300.0)
        aclient_box.append(aclient)
        swarm.extend(asyncio.ensure_future(one(aclient, headers)) for _ in range(n))

    reply({"ready": True, "process_id": fleet.process_id})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "run":
            reply(run(cmd["n"], cmd.get("headers", {})))
        elif op == "wait":
            deadline = time.monotonic() + cmd.get("timeout", 30.0)
            value = look(cmd["what"])
            while value != cmd["value"] and time.monotonic() < deadline:
                time.sleep(POLL)
                value = look(cmd["what"])
            reply({"ok": value == cmd["value"], "value": value})
        elif op == "swarm":
            n = cmd["n"]
            asyncio.run_coroutine_threadsafe(start_swarm(n, cmd.get("headers", {})), loop).result()
            deadline = time.monotonic() + cmd.get("timeout", 120.0)
            while sum(admitted.values()) < n and time.monotonic() < deadline:
                time.sleep(POLL)
            with lock:
                reply(dict(admitted))
        elif op == "finish":

            async def cancel() -> dict[str, int]:
                for task in swarm:
                    task.cancel()
                results = await asyncio.gather(*swarm, return_exceptions=True)
                for aclient in aclient_box:
                    await aclient.close()
                return dict(Counter(r if isinstance(r, str) else type(r).__name__ for r in results))

            reply(asyncio.run_coroutine_threadsafe(cancel(), loop).result(timeout=120))
        elif op == "metrics":
            errors = 0.0
            for family in registry.collect():
                for sample in family.samples:
                    if sample.name == "openai_stream_store_errors_total":
                        errors += sample.value
            reply(
                {
                    "store_errors": errors,
                    "fallback": registry.get_sample_value("openai_stream_store_fallback"),
                    "rejections": {
                        s.labels["reason"]: s.value
                        for f in registry.collect()
                        for s in f.samples
                        if s.name == "openai_stream_rejections_total"
                    },
                }
            )
        elif op == "exit":
            break
    streamsentinel.uninstrument()


if __name__ == "__main__":
    main()
