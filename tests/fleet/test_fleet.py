"""Fleet mode across real processes: several worker processes (``tests/fleet_worker.py``), one real
``redis-server`` and one fault server whose ``arrivals`` are the ground truth of requests sent.

Every wait is on a condition (a process's view of the fleet, the server's arrivals), bounded by a
generous timeout; no test asserts a duration.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamsentinel.chaos import ChaosServer

from ..redis_server import RedisServer, require_redis_server

WORKER = Path(__file__).resolve().parents[1] / "fleet_worker.py"
ANSWER_TIMEOUT = 180.0
MODEL = "gpt-4o-mini"
NAME = f"127.0.0.1/{MODEL}"
OUTAGE = {"x-chaos-fault": "server_error"}
# A breaker that trips on 4 failures in 4 calls and stays open long enough for any machine.
TRIPS_FAST: dict[str, Any] = {
    "sliding_window_size": 4,
    "minimum_number_of_calls": 4,
    "timeout_streak_min_seconds": 0.0,
    "wait_duration_in_open_state": 600.0,
    "max_wait_duration_in_open_state": 600.0,
    "permitted_number_of_calls_in_half_open_state": 5,
}


class Worker:
    """One fleet process; :meth:`ask` sends a command and waits (bounded) for its answer."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self._answer()
        assert self.hello.get("ready"), self.hello

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _answer(self) -> Any:
        try:
            line = self._lines.get(timeout=ANSWER_TIMEOUT)
        except queue.Empty:
            raise AssertionError("worker did not answer") from None
        assert line, f"worker exited with {self.process.wait(timeout=30)}"
        return json.loads(line)

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def ask(self, **command: Any) -> Any:
        self.send(**command)
        return self._answer()

    def wait_for(self, what: str, value: Any, timeout: float = 60.0) -> None:
        answer = self.ask(op="wait", what=what, value=value, timeout=timeout)
        assert answer["ok"], f"{what} stayed {answer['value']!r}, expected {value!r}"

    def close(self) -> None:
        try:
            self.send(op="exit")
            self.process.wait(timeout=60)
        except Exception:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def chaos() -> Iterator[ChaosServer]:
    with ChaosServer(chunks=3) as server:
        yield server


def start_workers(count: int, **config: Any) -> list[Worker]:
    workers: list[Worker] = []
    try:
        for _ in range(count):
            workers.append(Worker(config))
    except BaseException:
        for worker in workers:
            worker.close()
        raise
    return workers


def test_an_outage_seen_by_one_process_opens_the_breaker_in_another(
    redis_server: RedisServer, chaos: ChaosServer
) -> None:
    a, b = start_workers(2, redis_url=redis_server.url, base_url=chaos.base_url, breaker=TRIPS_FAST)
    try:
        assert a.ask(op="run", n=4, headers=OUTAGE) == {"InternalServerError": 4}
        b.wait_for("state", "open")
        before = chaos.arrivals
        assert b.ask(op="run", n=10) == {"CircuitOpenError": 10}
        assert chaos.arrivals == before  # B sent no request at all
        assert b.ask(op="metrics")["rejections"] == {"circuit_open": 10.0}
    finally:
        a.close()
        b.close()


def test_half_open_lets_exactly_the_permitted_probes_through_fleet_wide(
    redis_server: RedisServer, chaos: ChaosServer
) -> None:
    from streamsentinel._resilience.fleet import Fleet

    workers = start_workers(4, redis_url=redis_server.url, base_url=chaos.base_url, breaker=TRIPS_FAST)
    admin = Fleet.from_url(redis_server.url, timeout=10.0, start=False)
    try:
        admin.force(NAME, "half_open")
        for worker in workers:
            worker.wait_for("state", "half_open")
        before = chaos.arrivals
        # Probes stall before their headers: they stay in flight while every other task is refused.
        stall = {"x-chaos-fault": "stall_before_headers", "x-chaos-stall-seconds": "300"}
        for worker in workers:
            worker.send(op="swarm", n=500, headers=stall)
        answers = [worker._answer() for worker in workers]
        assert sum(a.get("admitted", 0) + a.get("refused", 0) for a in answers) == 2000, answers
        assert sum(a.get("admitted", 0) for a in answers) == 5, answers
        chaos.wait_for_arrivals(before + 5, timeout=60.0)
        outcomes = [worker.ask(op="finish") for worker in workers]
        assert sum(o.get("CircuitOpenError", 0) for o in outcomes) == 1995, outcomes
        assert chaos.arrivals == before + 5, "a refused task reached the server"
    finally:
        admin.close()
        for worker in workers:
            worker.close()


def test_a_quota_429_in_one_process_pauses_the_others(redis_server: RedisServer, chaos: ChaosServer) -> None:
    workers = start_workers(
        4,
        redis_url=redis_server.url,
        base_url=chaos.base_url,
        breaker=TRIPS_FAST,
        rate_limit_pause="reject",
        quota_pause_seconds=15.0,
    )
    a, others = workers[0], workers[1:]
    try:
        assert a.ask(op="run", n=1, headers={"x-chaos-fault": "insufficient_quota"}) == {"RateLimitError": 1}
        for worker in others:
            worker.wait_for("paused", True)
        before = chaos.arrivals
        for worker in others:
            assert worker.ask(op="run", n=5) == {"RateLimitError": 5}
        assert chaos.arrivals == before  # B..D sent nothing while the pause held
        for worker in others:
            assert worker.ask(op="metrics")["rejections"] == {"quota_pause": 5.0}
            worker.wait_for("paused", False)
            assert worker.ask(op="run", n=1) == {"ok": 1}
        assert chaos.arrivals == before + 3
    finally:
        for worker in workers:
            worker.close()


def test_redis_killed_mid_run_fails_no_request_and_sharing_resumes(
    redis_server: RedisServer, chaos: ChaosServer
) -> None:
    a, b = start_workers(
        2, redis_url=redis_server.url, base_url=chaos.base_url, breaker=TRIPS_FAST, redis_timeout=0.5
    )
    try:
        a.wait_for("shared", True)
        assert a.ask(op="run", n=5) == {"ok": 5}
        redis_server.kill()
        for worker in (a, b):
            assert worker.ask(op="run", n=5) == {"ok": 5}  # no request fails because Redis is gone
            worker.wait_for("fallback", True)
            metrics = worker.ask(op="metrics")
            assert metrics["fallback"] == 1.0
            assert metrics["store_errors"] >= 1.0
            assert worker.ask(op="run", n=5) == {"ok": 5}
        redis_server.start()  # same port, empty data
        for worker in (a, b):
            worker.wait_for("fallback", False)
            assert worker.ask(op="metrics")["fallback"] == 0.0
        # A's window still holds its successes: the outage trips it within these 4 calls.
        assert a.ask(op="run", n=4, headers=OUTAGE).get("InternalServerError", 0) >= 2
        b.wait_for("state", "open")  # shared again
        before = chaos.arrivals
        assert b.ask(op="run", n=3) == {"CircuitOpenError": 3}
        assert chaos.arrivals == before
    finally:
        a.close()
        b.close()


def test_a_process_started_after_the_fleet_opened_sends_nothing(
    redis_server: RedisServer, chaos: ChaosServer
) -> None:
    """Issue 15, defect 5: a process started once the fleet's breaker is OPEN reads the fleet's state
    before its first call (it refreshes only every 600 s here): it sends 0 of 5 calls, sync or
    async (5 first calls at once on one event loop)."""
    from streamsentinel._resilience.local_redis import breaker_snapshot

    common: dict[str, Any] = {
        "redis_url": redis_server.url,
        "base_url": chaos.base_url,
        "breaker": TRIPS_FAST,
        "min_processes": 3,
    }
    voters = start_workers(3, **common)
    try:
        for worker in voters:
            assert worker.ask(op="run", n=4, headers=OUTAGE) == {"InternalServerError": 4}
        for worker in voters:
            worker.wait_for("state", "open")
        for _ in range(3000):  # the three votes reach Redis (polling, bounded)
            if breaker_snapshot(redis_server.url, NAME)["state"] == "open":
                break
            threading.Event().wait(0.02)
        assert breaker_snapshot(redis_server.url, NAME)["state"] == "open"
        before = chaos.arrivals
        late, late_async = start_workers(2, **common, refresh_interval=600.0)
        try:
            assert late.ask(op="run", n=5) == {"CircuitOpenError": 5}
            assert late_async.ask(op="swarm", n=5) == {"refused": 5}  # 5 async calls at once
            assert late_async.ask(op="finish") == {"CircuitOpenError": 5}
            assert chaos.arrivals == before
            for worker in (late, late_async):
                assert worker.ask(op="metrics")["rejections"] == {"circuit_open": 5.0}
        finally:
            late.close()
            late_async.close()
    finally:
        for worker in voters:
            worker.close()


EXITS_AFTER_A_TRIP = """
import sys
from streamsentinel import BreakerConfig
from streamsentinel._resilience.fleet import Fleet
from streamsentinel._resilience.redis_store import RedisBreakerStore
config = BreakerConfig(sliding_window_size=2, minimum_number_of_calls=2, timeout_streak_min_seconds=0.0)
# No background thread: nothing writes the vote before the process exits, but its exit.
fleet = Fleet.from_url(sys.argv[1], timeout=10.0, start=False)
store = RedisBreakerStore(fleet, config)
for _ in range(2):
    name, permit = store.acquire("api/m")
    store.release(name, permit, "failure", duration=0.1, ttft=None)
assert fleet._queue.qsize() == 1  # the trip's vote, queued
"""


def test_a_process_that_exits_flushes_its_vote(redis_server: RedisServer) -> None:
    """Issue 15, defect 5: a process that exits writes the votes and results still queued (a worker
    recycled right after its breaker tripped still counts)."""
    from streamsentinel._resilience.local_redis import breaker_snapshot

    done = subprocess.run(
        [sys.executable, "-c", EXITS_AFTER_A_TRIP, redis_server.url], timeout=180, check=False
    )
    assert done.returncode == 0
    snapshot = breaker_snapshot(redis_server.url, "api/m")
    assert (snapshot["state"], snapshot["version"]) == ("open", 1)  # its one vote opened it
