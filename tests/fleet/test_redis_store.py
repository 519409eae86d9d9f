"""Fleet mode in one process: the Lua scripts' logic (fakeredis, which runs Lua through lupa), then
the store, the budget, pauses and Redis failures against a real ``redis-server``. Concurrency and
atomicity across processes: tests/fleet/test_fleet.py (never fakeredis)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import openai
import pytest
import structlog

import streamsentinel
from streamsentinel import BreakerConfig, State
from streamsentinel._resilience import redis_scripts
from streamsentinel._resilience.fleet import Fleet, FleetRetryBudget
from streamsentinel._resilience.redis_store import FleetPermit, RedisBreakerStore
from streamsentinel.chaos import ChaosServer
from streamsentinel.instrumentation import Event, StoreError, StoreFallback

from ..redis_server import RedisServer, SlowRelay, free_port, require_redis_server
from ..support import TIMEOUT, chat_kwargs, make_telemetry

TTL = 3_600_000
WAITS = [1000, 2.0, 8000]  # base ms, multiplier, cap ms


# -- the Lua scripts (fakeredis) -------------------------------------------------------------------


@pytest.fixture
def lua() -> dict[str, Any]:
    client = fakeredis.FakeRedis()
    names = ("READ", "LEASE", "RESULT", "REPORT_OPEN", "FORCE", "PAUSE", "PAUSES_READ", "BUDGET")
    return {name: client.register_script(getattr(redis_scripts, name)) for name in names}


def _s(answer: Any) -> list[Any]:
    return [a.decode() if isinstance(a, bytes) else a for a in answer]


def result(lua: dict[str, Any], version: int, outcome: str, permitted: int = 2) -> list[Any]:
    return _s(lua["RESULT"](["b"], [version, outcome, 0, permitted, 50, 100, *WAITS, TTL]))


def test_a_missing_breaker_reads_closed(lua: dict[str, Any]) -> None:
    assert _s(lua["READ"](["b"], [])) == ["closed", 0, 0, 0]


def test_lease_hands_out_exactly_the_permitted_probes(lua: dict[str, Any]) -> None:
    assert _s(lua["LEASE"](["b"], [2, 60_000, TTL])) == [1, "closed", 0, 0]  # closed: decide locally
    lua["FORCE"](["b"], ["half_open", 0, TTL])
    answers = [_s(lua["LEASE"](["b"], [2, 60_000, TTL])) for _ in range(5)]
    assert [a[0] for a in answers] == [1, 1, 0, 0, 0]
    assert {a[2] for a in answers} == {1}  # one version: one half-open round


def test_an_open_breaker_refuses_then_moves_to_half_open_once(lua: dict[str, Any]) -> None:
    lua["FORCE"](["b"], ["open", 60_000, TTL])
    granted, state, version, remaining = _s(lua["LEASE"](["b"], [2, 60_000, TTL]))
    assert (granted, state, version) == (0, "open", 1) and 0 < remaining <= 60_000
    lua["FORCE"](["b"], ["open", 0, TTL])  # its wait is over
    assert _s(lua["LEASE"](["b"], [2, 60_000, TTL]))[:3] == [1, "half_open", 3]
    assert _s(lua["LEASE"](["b"], [2, 60_000, TTL]))[:3] == [1, "half_open", 3]  # same round


def test_probe_results_close_or_reopen_with_a_longer_wait(lua: dict[str, Any]) -> None:
    lua["FORCE"](["b"], ["half_open", 0, TTL])
    assert result(lua, 1, "success")[:2] == ["half_open", 1]
    assert result(lua, 1, "success")[:2] == ["closed", 2]
    lua["FORCE"](["b"], ["half_open", 0, TTL])  # version 3
    result(lua, 3, "failure")
    state, version, first_wait, _ = result(lua, 3, "failure")
    assert (state, version) == ("open", 4) and 0 < first_wait <= 1000
    lua["FORCE"](["b"], ["half_open", 0, TTL])  # version 5, not closed since: the wait escalates
    result(lua, 5, "failure")
    state, _, second_wait, _ = result(lua, 5, "success")
    assert state == "open" and second_wait > 1000  # 50 % failures >= the 50 % threshold


def test_a_late_result_from_an_earlier_version_is_ignored(lua: dict[str, Any]) -> None:
    lua["FORCE"](["b"], ["half_open", 0, TTL])  # version 1
    lua["FORCE"](["b"], ["half_open", 0, TTL])  # version 2
    assert result(lua, 1, "failure") == ["half_open", 2, 0, 0]
    assert _s(lua["READ"](["b"], []))[:2] == ["half_open", 2]


def test_an_ignored_probe_frees_its_lease(lua: dict[str, Any]) -> None:
    lua["FORCE"](["b"], ["half_open", 0, TTL])
    lua["LEASE"](["b"], [1, 60_000, TTL])
    assert _s(lua["LEASE"](["b"], [1, 60_000, TTL]))[0] == 0
    result(lua, 1, "ignored", permitted=1)
    assert _s(lua["LEASE"](["b"], [1, 60_000, TTL]))[0] == 1


def report(lua: dict[str, Any], process: str, seen: int, minimum: int) -> list[Any]:
    return _s(lua["REPORT_OPEN"](["b"], [process, seen, minimum, 30_000, *WAITS, TTL]))


def test_the_breaker_opens_once_enough_processes_voted(lua: dict[str, Any]) -> None:
    assert report(lua, "p1", -1, 2) == ["closed", 0, 0, 1]
    assert report(lua, "p1", 0, 2) == ["closed", 0, 0, 1]  # the same process twice: one vote
    state, version, remaining, votes = report(lua, "p2", 0, 2)
    assert (state, version, votes) == ("open", 1, 2) and 0 < remaining <= 1000
    assert report(lua, "p3", 1, 2)[:2] == ["open", 1]  # already open: nothing changes


def test_a_vote_from_an_older_version_is_ignored(lua: dict[str, Any]) -> None:
    lua["FORCE"](["b"], ["closed", 0, TTL])  # version 1
    assert report(lua, "p1", 0, 1) == ["closed", 1, 0, 0]
    assert report(lua, "p1", 1, 1)[:2] == ["open", 2]


def test_a_pause_is_never_shortened(lua: dict[str, Any]) -> None:
    long = lua["PAUSE"](["p"], ["q|api|*", 60_000])
    short = lua["PAUSE"](["p"], ["q|api|*", 1_000])
    assert short > 1_000 and short <= long
    flat = _s(lua["PAUSES_READ"](["p"], []))
    assert flat[0] == "q|api|*" and flat[1] > 1_000


def test_the_budget_sums_every_process_in_the_window(lua: dict[str, Any]) -> None:
    assert lua["BUDGET"](["r"], [10, 0, 10]) == [10, 0]
    assert lua["BUDGET"](["r"], [5, 2, 10]) == [15, 2]


# -- against a real redis-server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"test:{request.node.name}:"


def fleet_for(url: str, prefix: str, **kwargs: Any) -> Fleet:
    return Fleet.from_url(url, prefix=prefix, timeout=10.0, start=False, **kwargs)


def commands(client: Any) -> int:
    """Commands the server has run, INFO itself excluded (``INFO commandstats``)."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


def test_closed_path_makes_no_redis_round_trip(redis_server: RedisServer, prefix: str) -> None:
    fleet = fleet_for(redis_server.url, prefix)
    store = RedisBreakerStore(fleet, BreakerConfig())
    name, permit = store.acquire("api/m")
    assert permit is not None
    assert fleet.refresh()
    before = commands(fleet.client)
    for _ in range(1000):
        name, permit = store.acquire("api/m")
        assert permit is not None and not isinstance(permit, FleetPermit)
        store.release(name, permit, "success", duration=0.1, ttft=0.01)
    assert commands(fleet.client) == before


def test_a_trip_in_one_process_opens_the_other_and_probes_close_both(
    redis_server: RedisServer, prefix: str
) -> None:
    config = BreakerConfig(
        sliding_window_size=2,
        minimum_number_of_calls=2,
        timeout_streak_min_seconds=0.0,
        permitted_number_of_calls_in_half_open_state=1,
    )
    one, two = fleet_for(redis_server.url, prefix), fleet_for(redis_server.url, prefix)
    a, b = RedisBreakerStore(one, config), RedisBreakerStore(two, config)
    b.acquire("k")
    for _ in range(2):
        name, permit = a.acquire("k")
        assert permit is not None
        a.release(name, permit, "failure", duration=0.1, ttft=None)
    item = one._queue.get_nowait()  # the trip's vote, written by the background thread normally
    one._write(item)
    assert two.refresh()
    assert b.state("k") is State.OPEN
    assert b.acquire("k") == ("k", None)
    one.force("k", "half_open")
    assert two.refresh()
    name, probe = b.acquire("k")
    assert isinstance(probe, FleetPermit)
    assert a.acquire("k")[1] is None  # the only probe is out, fleet-wide
    b.release(name, probe, "success", duration=0.1, ttft=0.01)
    two._write(two._queue.get_nowait())
    assert b.state("k") is State.CLOSED
    assert one.refresh()
    assert a.state("k") is State.CLOSED  # and A's own window started afresh
    assert a.breakers()[0].state is State.CLOSED


def test_the_retry_budget_is_counted_fleet_wide(redis_server: RedisServer, prefix: str) -> None:
    one, two = fleet_for(redis_server.url, prefix), fleet_for(redis_server.url, prefix)
    first = FleetRetryBudget(one, 0.2, 10.0, 0)
    second = FleetRetryBudget(two, 0.2, 10.0, 0)
    for _ in range(10):
        first.record_request()
    assert one.refresh()
    assert two.refresh()
    assert [second.try_spend() for _ in range(3)] == [True, True, False]  # 20 % of the fleet's 10


def test_redis_down_falls_back_logs_once_and_recovers(prefix: str) -> None:
    require_redis_server()
    port = free_port()
    fleet = Fleet.from_url(f"redis://:s3cret@127.0.0.1:{port}/0", prefix=prefix, timeout=1.0, start=False)
    events: list[Event] = []
    fleet.attach(events.append)
    store = RedisBreakerStore(fleet, BreakerConfig())
    with structlog.testing.capture_logs() as logs:
        assert not fleet.refresh()
        assert not fleet.refresh()
        assert store.acquire("k")[1] is not None  # local state decides
        with RedisServer(port) as server:
            assert server.port == port
            assert fleet.refresh()
    assert [e for e in events if isinstance(e, (StoreError, StoreFallback))] == [
        StoreError("refresh"),
        StoreFallback(True),
        StoreError("refresh"),
        StoreFallback(False),
    ]
    assert [line["event"] for line in logs if line["event"].startswith("store.")] == [
        "store.unavailable",
        "store.recovered",
    ]
    assert "s3cret" not in repr(logs)


def test_without_redis_nothing_changes() -> None:
    telemetry = make_telemetry()
    try:
        assert telemetry.runtime.fleet is None
        assert type(telemetry.runtime.circuits.store).__name__ == "InMemoryBreakerStore"
    finally:
        streamsentinel.uninstrument()


def test_a_bad_redis_url_is_refused_without_echoing_it() -> None:
    streamsentinel.uninstrument()
    with pytest.raises(ValueError) as info:
        streamsentinel.instrument(redis_url="http://user:s3cret@host/")
    assert "s3cret" not in str(info.value)
    assert not streamsentinel.is_instrumented()


def test_a_quota_pause_rejects_with_the_sdks_error_and_no_request(
    redis_server: RedisServer, prefix: str
) -> None:
    streamsentinel.uninstrument()
    with ChaosServer(chunks=3) as chaos:
        telemetry = make_telemetry(
            redis_url=redis_server.url,
            redis_prefix=prefix,
            rate_limit_pause="reject",
            quota_pause_seconds=600,
        )
        try:
            client = openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(
                    **chat_kwargs(extra_headers={"x-chaos-fault": "insufficient_quota"})
                )
            before = chaos.arrivals
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(**chat_kwargs())
            assert chaos.arrivals == before
            assert info.value.status_code == 429
            assert info.value.code == "insufficient_quota"
            assert telemetry.value("openai_stream_requests_total", outcome="rejected") == 1
            assert telemetry.value("openai_stream_rejections_total", reason="quota_pause") == 1
            assert telemetry.value("openai_stream_rate_limit_paused", kind="quota") == 1
        finally:
            streamsentinel.uninstrument()


def test_wait_mode_sends_once_the_pause_is_over(redis_server: RedisServer, prefix: str) -> None:
    streamsentinel.uninstrument()
    with ChaosServer(chunks=3) as chaos:
        telemetry = make_telemetry(redis_url=redis_server.url, redis_prefix=prefix, rate_limit_pause="wait")
        try:
            client = openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT)
            limited = {"x-chaos-fault": "rate_limit_requests", "x-chaos-retry-after-ms": "300"}
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(**chat_kwargs(extra_headers=limited))
            fleet = telemetry.runtime.fleet
            import time

            assert fleet.pause_remaining("127.0.0.1", "gpt-4o-mini", time.monotonic())[0] > 0
            before = chaos.arrivals
            with client.chat.completions.create(**chat_kwargs()) as stream:
                assert sum(1 for _ in stream) > 0
            assert chaos.arrivals == before + 1
            assert fleet.pause_remaining("127.0.0.1", "gpt-4o-mini", time.monotonic())[0] == 0
            assert telemetry.value("openai_stream_requests_total", outcome="completed") == 1
        finally:
            streamsentinel.uninstrument()


def test_the_demos_local_redis_and_breaker_snapshot() -> None:
    require_redis_server()
    from streamsentinel._resilience.local_redis import LocalRedis, breaker_snapshot

    with LocalRedis() as url:
        fleet = Fleet.from_url(url, timeout=10.0, start=False)
        assert breaker_snapshot(url, "api/m")["state"] == "closed"
        fleet.force("api/m", "half_open")
        assert fleet.lease("api/m", 5, 60.0)[0] == 1
        snapshot = breaker_snapshot(url, "api/m")
        assert snapshot["state"] == "half_open" and snapshot["probes_leased"] == 1
        assert snapshot["version"] == 1


FORKED = """
import os, sys
from streamsentinel._resilience.fleet import Fleet
fleet = Fleet.from_url(sys.argv[1], timeout=10.0)
assert fleet.wait_refreshed(1, timeout=60)
parent = fleet.process_id
pid = os.fork()
if pid == 0:  # the child: its own thread refreshes, under its own process id
    ok = fleet.wait_refreshed(fleet.refreshes + 1, timeout=60) and fleet.process_id != parent
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_worker_gets_its_own_background_thread(redis_server: RedisServer) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FORKED, redis_server.url], timeout=180, check=False)
    assert done.returncode == 0


# -- every store call bounded in total (Issue 15, defect 4) ------------------------------------------

NAME = "127.0.0.1/gpt-4o-mini"


def test_a_slow_but_steady_redis_bounds_the_sync_probe_lease_in_total(
    redis_server: RedisServer, prefix: str
) -> None:
    """Issue 15, defect 4: a sync stream's HALF_OPEN probe lease is bounded in total by
    ``redis_timeout``, even when each reply of a slow Redis comes within the socket timeout (a new
    connection's handshake and EVALSHA/NOSCRIPT/SCRIPT LOAD/EVALSHA are several round trips)."""
    streamsentinel.uninstrument()
    admin = fleet_for(redis_server.url, prefix)
    admin.force(NAME, "half_open")
    admin.client.script_flush()  # the lease's script is loaded again: three round trips at least
    relay = SlowRelay(redis_server.port)
    try:
        with ChaosServer(chunks=3) as chaos:
            telemetry = make_telemetry(
                redis_url=relay.url, redis_prefix=prefix, redis_timeout=1.5, fleet_refresh_interval=600.0
            )
            try:
                fleet = telemetry.runtime.fleet
                assert fleet.wait_refreshed(1, timeout=60)
                fleet.track(NAME)
                assert fleet.refresh() and fleet.views[NAME].state == "half_open"
                fleet.client.connection_pool.disconnect()  # the lease opens a new connection
                relay.delay = 0.6  # every reply within the 1.5 s socket timeout; >= 1.8 s in all
                client = openai.OpenAI(base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT)
                with client.chat.completions.create(**chat_kwargs()) as stream:
                    assert sum(1 for _ in stream) > 0
                assert chaos.arrivals == 1
                # The lease gave up at its bound: the local breaker decided (the fail-open fallback).
                assert telemetry.value("openai_stream_store_errors_total", operation="lease") == 1
                assert telemetry.value("openai_stream_store_fallback") == 1
                assert telemetry.value("openai_stream_requests_total", outcome="completed") == 1
            finally:
                streamsentinel.uninstrument()
    finally:
        relay.close()
        admin.client.close()


async def test_a_stuck_redis_never_holds_the_hosts_default_executor(prefix: str) -> None:
    """Issue 15, defect 4: with ``redis_client=`` built with redis-py's defaults (5 s socket timeouts,
    retries) and a Redis that stops answering, a burst of async probe leases falls back at
    ``redis_timeout`` and never runs on asyncio's default executor: the host's own ``to_thread``
    runs while our store threads are still stuck."""
    import asyncio

    import redis

    streamsentinel.uninstrument()
    with RedisServer() as server, ChaosServer(chunks=3) as chaos:
        admin = fleet_for(server.url, prefix)
        admin.force(NAME, "half_open")
        user_client = redis.Redis(host="127.0.0.1", port=server.port)  # redis-py's defaults
        telemetry = make_telemetry(
            redis_client=user_client,
            redis_prefix=prefix,
            fleet_refresh_interval=600.0,
            breaker=BreakerConfig(permitted_number_of_calls_in_half_open_state=100),
        )
        try:
            fleet = telemetry.runtime.fleet
            assert fleet.wait_refreshed(1, timeout=60)
            fleet.track(NAME)
            assert fleet.refresh() and fleet.views[NAME].state == "half_open"
            server.freeze()

            async def one(aclient: openai.AsyncOpenAI) -> str:
                async with await aclient.chat.completions.create(**chat_kwargs()) as stream:
                    async for _ in stream:
                        pass
                return "ok"

            async with openai.AsyncOpenAI(
                base_url=chaos.base_url, api_key="k", max_retries=0, timeout=TIMEOUT
            ) as aclient:
                burst = asyncio.gather(*(one(aclient) for _ in range(20)))
                for _ in range(6000):  # until a lease gave up (polling, bounded)
                    if telemetry.value("openai_stream_store_errors_total", operation="lease"):
                        break
                    await asyncio.sleep(0.01)
                # Redis is frozen, the leases' calls are stuck: the host's executor is free all the
                # same (the timeouts are safety nets; a stuck call holds its thread ~58 s).
                assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 30) == 42
                loop = asyncio.get_running_loop()
                assert await asyncio.wait_for(loop.run_in_executor(None, lambda: 43), 30) == 43
                outcomes = await asyncio.wait_for(burst, 120)
            assert outcomes == ["ok"] * 20
            assert chaos.arrivals == 20
            assert telemetry.value("openai_stream_store_errors_total", operation="lease") >= 1
            assert telemetry.value("openai_stream_store_fallback") == 1
        finally:
            streamsentinel.uninstrument()
            server.thaw()
            user_client.close()
            admin.client.close()


def test_calls_stuck_on_a_frozen_redis_hold_a_few_threads_then_fail_at_once(prefix: str) -> None:
    """Issue 15, defect 4: once every store thread is held by a call past its deadline (a frozen
    Redis, a client with redis-py's defaults), a new call fails at once as "Redis unavailable"
    (the local breaker decides, counted) instead of queueing behind them."""
    import redis

    from streamsentinel._resilience.fleet import StoreBusy

    with RedisServer() as server:
        user_client = redis.Redis(host="127.0.0.1", port=server.port)
        fleet = Fleet(user_client, prefix=prefix, timeout=0.2, start=False)
        events: list[Event] = []
        fleet.attach(events.append)
        store = RedisBreakerStore(fleet, BreakerConfig())
        fleet.force(NAME, "half_open")
        server.freeze()
        try:
            timeouts = 0
            for _ in range(50):
                try:
                    fleet.lease(NAME, 5, 60.0)
                except TimeoutError:
                    timeouts += 1
                except StoreBusy:
                    break
            else:
                raise AssertionError("no call failed at once")
            assert timeouts >= 8
            assert fleet._calls._threads == 8  # the stuck calls hold our threads, and only 8
            _, permit = store.acquire(NAME)
            assert permit is not None and not isinstance(permit, FleetPermit)
            assert events == [StoreError("lease"), StoreFallback(True)]
        finally:
            server.thaw()
            fleet.close()
            user_client.close()


FORKED_COUNTS = """
import os, sys
from streamsentinel._resilience.fleet import Fleet
fleet = Fleet.from_url(sys.argv[1], timeout=10.0, start=False)
for _ in range(3):
    fleet.count_request()  # counted, not flushed yet: the parent's
pid = os.fork()
if pid == 0:  # the child flushes its own counts only (none)
    os._exit(0 if fleet.refresh() and fleet.fleet_requests == 0 else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child flushed the parent's requests"
assert fleet.refresh() and fleet.fleet_requests == 3, fleet.fleet_requests
"""


def test_a_forked_worker_does_not_flush_the_parents_counts(redis_server: RedisServer) -> None:
    """Issue 15, defect 9: the retry-budget requests the parent counted but had not flushed are
    flushed by the parent only: the fleet counts them once, not once per forked child."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FORKED_COUNTS, redis_server.url], timeout=180, check=False, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_a_first_read_done_before_its_callback_is_added_does_not_deadlock(
    redis_server: RedisServer, prefix: str
) -> None:
    """Found under ``make test-loaded``: a breaker's first read that completed before its done-callback
    was added ran that callback at once, under the lock the callback takes (the process's first call
    through the breaker hung for good). The store thread is made to finish first here."""
    import threading
    from concurrent.futures import Future

    fleet = fleet_for(redis_server.url, prefix)
    submit = fleet._calls.submit

    def done_at_once(fn: Any, *args: Any) -> Future[Any]:
        future = submit(fn, *args)
        future.result(30)
        return future

    fleet._calls.submit = done_at_once  # type: ignore[method-assign]
    finished = threading.Event()

    def first_call() -> None:
        fleet.read_first(NAME)
        finished.set()

    try:
        thread = threading.Thread(target=first_call, daemon=True)
        thread.start()
        assert finished.wait(60), "the first read of a breaker hung"
        assert NAME in fleet.views
        assert fleet._reading == {}  # the read's entry was removed by its callback
    finally:
        fleet.close()
