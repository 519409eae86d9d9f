"""Fleet mode's cost on the hot path: the Redis store in CLOSED state vs the in-memory store.

1. Added cost per stream: what a stream asks of the resilience state (pause check, breaker acquire
   and release, retry-budget request count), Redis store (its background thread running) vs the
   in-memory store, best of several runs. Target: under 20 us more.
2. Redis round trips per stream: real streams through ``instrument(redis_url=...)`` against the
   fault server; the server's ``INFO commandstats`` delta minus the background refreshes (one
   pipelined round trip each: one EVALSHA per breaker, pauses, budget). Target: 0 inline in CLOSED.

Run: ``.venv/bin/python benchmarks/bench_redis.py [--redis-url URL]`` (default: starts a private
``redis-server`` on a free port, no persistence).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import openai
import redis
from prometheus_client import CollectorRegistry

import streamsentinel
from streamsentinel import BreakerConfig
from streamsentinel._resilience.fleet import Fleet, FleetRetryBudget
from streamsentinel._resilience.redis_store import RedisBreakerStore
from streamsentinel._resilience.retry import RetryBudget
from streamsentinel._resilience.store import InMemoryBreakerStore
from streamsentinel.chaos import ChaosServer

LOOPS = 100_000
REPEATS = 5
STREAMS = 300


def start_redis() -> tuple[str, subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    binary = shutil.which("redis-server") or "redis-server"
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*args, "--dir", folder], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    return f"redis://127.0.0.1:{port}/0", process, folder


def best_per_loop(step: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(LOOPS):
            step()
        best = min(best, (time.perf_counter() - start) / LOOPS)
    return best


def store_cost(url: str) -> tuple[float, float]:
    config = BreakerConfig()
    memory = InMemoryBreakerStore(config)
    budget = RetryBudget(0.2, 10.0, 3)

    def in_memory() -> None:
        budget.record_request()
        name, permit = memory.acquire("api.openai.com/gpt-4o-mini")
        assert permit is not None
        memory.release(name, permit, "success", duration=0.5, ttft=0.1)

    fleet = Fleet.from_url(url, prefix="bench:")
    shared = RedisBreakerStore(fleet, config)
    fleet_budget = FleetRetryBudget(fleet, 0.2, 10.0, 3)
    clock = time.monotonic
    shared.acquire("api.openai.com/gpt-4o-mini")
    fleet.wait_refreshed(2)

    def with_redis() -> None:
        fleet.pause_remaining("api.openai.com", "gpt-4o-mini", clock())
        fleet_budget.record_request()
        name, permit = shared.acquire("api.openai.com/gpt-4o-mini")
        assert permit is not None
        shared.release(name, permit, "success", duration=0.5, ttft=0.1)

    try:
        return best_per_loop(in_memory), best_per_loop(with_redis)
    finally:
        fleet.close()


def commands(client: Any) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``; INFO itself left out)."""
    stats = client.info("commandstats")
    return {k[len("cmdstat_") :]: v["calls"] for k, v in stats.items() if k != "cmdstat_info"}


CLIENT_COMMANDS = ("evalsha", "eval", "script|exists", "script|load")
"""Commands a client sends; the others in ``INFO commandstats`` ran inside the scripts."""


def round_trips(url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    with ChaosServer(chunks=5) as chaos:
        streamsentinel.instrument(registry=CollectorRegistry(), redis_url=url, redis_prefix="bench-e2e:")
        fleet = streamsentinel._runtime().fleet
        oai = openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=0)
        kwargs: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        with oai.chat.completions.create(**kwargs) as stream:  # the breaker is known: it is refreshed
            for _ in stream:
                pass
        fleet.wait_refreshed(fleet.refreshes + 1)
        leases = 0
        lease = fleet.lease

        def counted(*args: Any) -> Any:
            nonlocal leases
            leases += 1
            return lease(*args)

        fleet.lease = counted
        refreshes, before = fleet.refreshes, commands(client)
        start = time.perf_counter()
        for _ in range(STREAMS):
            with oai.chat.completions.create(**kwargs) as stream:
                for _ in stream:
                    pass
        elapsed = time.perf_counter() - start
        after = commands(client)
        refreshed = fleet.refreshes - refreshes
        streamsentinel.uninstrument()
    delta = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    return {
        "streams": STREAMS,
        "seconds": elapsed,
        "commands": delta,
        "refreshes": refreshed,
        "inline_per_stream": leases / STREAMS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="an existing Redis (default: start a private redis-server)")
    args = parser.parse_args()
    process = folder = None
    url = args.redis_url
    if url is None:
        url, process, folder = start_redis()
    try:
        memory, shared = store_cost(url)
        print(f"per stream, in-memory store:          {memory * 1e6:7.2f} us")
        print(f"per stream, Redis store (CLOSED):     {shared * 1e6:7.2f} us")
        print(f"added by the Redis store:             {(shared - memory) * 1e6:7.2f} us  (target < 20 us)")
        trips = round_trips(url)
        print(
            f"{trips['streams']} real streams in {trips['seconds']:.2f} s: {trips['refreshes']} background "
            "refreshes (one pipelined round trip each: SCRIPT EXISTS + one EVALSHA per breaker, "
            "pauses, budget)"
        )
        sent = {k: v for k, v in trips["commands"].items() if k in CLIENT_COMMANDS}
        print(f"commands sent by clients meanwhile:   {sent} (all in commandstats: {trips['commands']})")
        print(f"inline Redis round trips per stream:  {trips['inline_per_stream']:.3f}  (target 0 in CLOSED)")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
