"""Fleet mode: resilience state shared by every process of a service through Redis (README "Running a
fleet").

:class:`Fleet` owns the Redis connection of one ``instrument()`` and ONE background thread that, about
once per ``refresh_interval``:

- reads, in one pipelined round trip, every breaker this process uses (its *view*: state, version,
  open-until), the running rate-limit/quota pauses and the fleet's retry-budget totals (adding this
  process's requests and retries since the last flush);
- writes what the hot path queued (a local trip report, a probe result, a pause) from a bounded queue.

So the hot path never waits on Redis: a stream in a CLOSED breaker with no pause set makes no Redis
call at all. The inline calls are leasing a HALF_OPEN probe (``redis_store.py``) and, once per breaker
and process, reading that breaker before its first call (a process started while the fleet's breaker
is OPEN sends nothing); a process's first call also waits for the first refresh (pauses, budget).

Every Redis call runs on :class:`_Calls`, a few daemon threads of our own, and its caller waits for it
at most ``timeout`` *in total* (a new connection's handshake, NOSCRIPT, a client's own retries and a
Redis that answers slowly but steadily included): never on asyncio's default executor, whatever
client the user passed. A call still running past its deadline keeps its thread until the client
gives up; once every thread is held so, a new call fails at once (the fallback below) instead of
queueing. At exit (``atexit``) and ``close()``, the queued writes (votes, probe results) are written
in one round trip, bounded by ``timeout`` too.

Redis down or slow never fails a request: on any error the process runs on its local state (its
own breakers, its own retry budget, no pauses: fail-open), logs ``store.unavailable`` once, counts
``StoreError`` events (``openai_stream_store_errors_total{operation}``) and holds ``StoreFallback``
(``openai_stream_store_fallback`` 1); the next successful refresh logs ``store.recovered`` and
shares again. The Redis URL is never logged (it may hold a password).
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import queue
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Literal

from .. import _forksafe as forksafe
from .._log import log
from ..instrumentation._data import Event, PauseEvent, StoreError, StoreFallback
from . import redis_scripts
from .retry import RetryBudget

_log = log

DEFAULT_PREFIX = "streamsentinel:"
QUOTA_MODEL = "*"
"""The ``model`` of a quota pause: it holds for every model of the server (the organisation)."""
PauseMode = Literal["off", "wait", "reject"]
StoreOperation = Literal["refresh", "lease", "write", "queue_full"]

_STOP = object()
_KEY_TTL_MS = 24 * 3600 * 1000
_MAX_FIELD = 200  # characters of a server or model name in a pause field
_CALL_THREADS = 8  # store threads per process: stuck calls hold at most this many
_MAX_WAITING = 1024  # calls queued or running at once; past it a new call fails at once
_MAX_BATCH = 500  # queued writes sent in one pipelined round trip
_GRACE = 1.0  # seconds close() waits for the background thread beyond its current call's bound
# One class from Python 3.11 on; three before.
_TIMEOUTS = (TimeoutError, futures.TimeoutError, asyncio.TimeoutError)
_IDLE = 30.0  # seconds a store thread waits for work before it ends (a fleet never closed)


class StoreBusy(RuntimeError):
    """Every store thread is held by a call past its deadline (Redis stopped answering), or too many
    calls wait: the call fails at once and the process runs on its local state."""


_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], float]


class _Calls:
    """The threads every Redis call runs on (``streamsentinel-fleet-call-N``, daemon, started on
    demand, at most ``size``): a caller waits on the :class:`Future` with its own deadline, so a
    stuck client blocks one of our threads, never the caller, the host's executor, or ``close()``."""

    def __init__(self, size: int, stuck_after: float) -> None:
        self.size = size
        self.stuck_after = stuck_after
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = 0  # alive; never fewer than the calls waiting
        self._numbers = 0  # threads started so far (their names)
        self._waiting = 0  # calls submitted and not finished (queued or running)
        self._running: dict[int, float] = {}  # thread number -> when its call was submitted

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on a store thread; raises :class:`StoreBusy` when it cannot start soon."""
        future: Future[Any] = Future()
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise StoreBusy("the fleet is closed")
            if self._waiting >= self.size:
                # stuck: its caller's deadline is over, the thread still waits on Redis
                old = now - self.stuck_after
                stuck = sum(1 for submitted in self._running.values() if submitted <= old)
                if stuck >= self.size:
                    raise StoreBusy(f"all {self.size} store threads wait on Redis past their deadline")
                if self._waiting >= _MAX_WAITING:
                    raise StoreBusy(f"{_MAX_WAITING} store calls wait already")
            if self._threads < min(self._waiting + 1, self.size):
                number = self._numbers + 1
                thread = threading.Thread(
                    target=self._serve,
                    args=(number,),
                    name=f"streamsentinel-fleet-call-{number}",
                    daemon=True,
                )
                try:
                    thread.start()
                    self._numbers = number
                    self._threads += 1
                except RuntimeError:  # at interpreter shutdown (3.12): the threads we have serve it
                    if not self._threads:
                        raise StoreBusy("no store thread can start at interpreter shutdown") from None
            self._waiting += 1
        self._work.put((future, fn, args, now))
        return future

    def shutdown(self) -> None:
        """Let every thread end once its current call (if any) returns; later calls are refused."""
        with self._lock:
            self._closed = True
            for _ in range(self._threads):
                self._work.put(None)

    def _serve(self, number: int) -> None:
        while True:
            try:
                work = self._work.get(timeout=_IDLE)
            except queue.Empty:
                with self._lock:
                    if self._threads > self._waiting:  # every waiting call still has a thread
                        self._threads -= 1
                        return
                continue
            if work is None:
                return
            future, fn, args, submitted = work
            if future.set_running_or_notify_cancel():  # False: its caller gave up before it started
                with self._lock:
                    self._running[number] = submitted
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
                with self._lock:
                    del self._running[number]
            with self._lock:
                self._waiting -= 1
            del work, future, fn, args


def _retrieve(future: Any) -> None:
    """Done callback of a shared future nobody may await any more: retrieve its outcome (no
    "exception was never retrieved" warning)."""
    if not future.cancelled():
        future.exception()


_OPEN: weakref.WeakSet[Fleet] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """A process that exits (a recycled worker, a cron job) writes its queued votes and results."""
    for fleet in list(_OPEN):
        fleet.close()


@dataclass(frozen=True, slots=True)
class View:
    """One breaker as the fleet last told this process: ``open_until`` is this process's monotonic
    clock (the server's remaining time added to it); ``full_until``: a HALF_OPEN lease was refused
    (every probe out) and is not asked again before then."""

    state: str
    version: int
    open_until: float = 0.0
    full_until: float = 0.0


def import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "streamsentinel's fleet mode needs the redis client: pip install 'streamsentinel[redis]'"
        ) from exc
    return redis


class Fleet:
    """The shared state of one ``instrument()`` (see the module docstring).

    Args:
        client: a ``redis.Redis`` (or ``RedisCluster``, Sentinel master...), called only on our
            store threads (:class:`_Calls`), whatever its own timeouts and retries.
        url: the URL ``client`` was built from, if we built it: async leases then use ``redis.asyncio``
            clients built from it (one per event loop); without it they run on the store threads.
        prefix: put before every key (several services can share one Redis).
        refresh_interval: seconds between background refreshes.
        timeout: seconds any Redis call may take *in total* (waiting for a store thread, connecting,
            retries included) before its caller falls back to local state.
        min_processes: distinct processes whose local windows must have tripped (within the open
            wait) before a breaker opens fleet-wide.
        quota_pause: seconds an ``insufficient_quota`` 429 without a server delay pauses the server.
    """

    def __init__(
        self,
        client: Any,
        *,
        url: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        refresh_interval: float = 1.0,
        timeout: float = 0.25,
        min_processes: int = 1,
        quota_pause: float = 60.0,
        pause_mode: PauseMode = "off",
        max_queue: int = 10_000,
        start: bool = True,
    ) -> None:
        self.client = client
        self.url = url
        self.prefix = prefix
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self.min_processes = min_processes
        self.quota_pause = quota_pause
        self.pause_mode: PauseMode = pause_mode
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.scripts = {
            name: client.register_script(getattr(redis_scripts, name))
            for name in ("READ", "LEASE", "RESULT", "REPORT_OPEN", "FORCE", "PAUSE", "PAUSES_READ", "BUDGET")
        }
        self._emit: Callable[[Event], None] = lambda event: None
        self.fallback = False  # running on local state (Redis unreachable)
        self.refreshes = 0  # successful refreshes so far (tests wait on it)
        self._refreshed = threading.Condition()
        # Breakers: name -> the fleet's view; the store registers names and reacts to view changes.
        self.views: dict[str, View] = {}
        self._view_lock = threading.Lock()
        self._names: dict[str, None] = {}
        self.on_view: Callable[[str, View | None, View], None] = lambda name, old, new: None
        self.on_recovered: Callable[[], None] = lambda: None
        # Pauses: field -> monotonic end; the fleet's (refreshed) and our own (set at once).
        self._pauses: dict[str, float] = {}
        self._exported_pauses: set[str] = set()
        # Retry budget: the fleet's totals at the last refresh plus ours since (pending: being flushed).
        self._budget_lock = threading.Lock()
        self._requests = 0
        self._retries = 0
        self._pending = (0, 0)
        self.fleet_requests: int | None = None
        self.fleet_retries = 0
        self.budget_window = 10.0
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._async_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._closed = False
        self._calls = _Calls(_CALL_THREADS, timeout)
        # Breakers being read before their first call (name -> the read), and the first refresh.
        self._reading: dict[str, Future[Any]] = {}
        self._reading_lock = threading.Lock()
        self._first: Future[None] = Future()
        # False until the background thread's first refresh is over (a new process's first call
        # waits for it, bounded); True without a background thread.
        self.primed = True
        _OPEN.add(self)
        if start:
            self.start()
        # A service that instruments before forking its workers (gunicorn --preload): threads do not
        # survive fork(), so each child gets its own background thread and its own process id.
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        _after_fork(self)

    # -- set-up ---------------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.25, **kwargs: Any) -> Fleet:
        redis = import_redis()
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(client, url=url, timeout=timeout, **kwargs)

    def attach(self, emit: Callable[[Event], None]) -> None:
        """Where events go (the runtime's sinks)."""
        self._emit = emit

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def start(self) -> None:
        self._started = True
        if self._thread is None:
            self.primed = False  # until the thread's first refresh
            self._thread = threading.Thread(target=self._run, name="streamsentinel-fleet", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the background thread and write the queued votes and results in one round trip
        (``uninstrument()``, and at the process's exit). Takes at most about ``2 * timeout + 1``
        seconds: it never waits for a call stuck on Redis."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        self._stopping.set()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.timeout + _GRACE)  # its current call is bounded by timeout
        self.flush()
        self._calls.shutdown()
        self._set_primed()

    def flush(self) -> None:
        """Write every queued item now, in one pipelined round trip bounded by ``timeout``."""
        items: list[Any] = []
        while len(items) < self._queue.maxsize:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                items.append(item)
        if items:
            self._write_all(items)

    # -- bounded calls ----------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (a Redis call) on a store thread, waited for at most ``timeout`` in total.

        Raises:
            TimeoutError: no answer in time (the call may still finish, unobserved).
            StoreBusy: every store thread is stuck; whatever ``fn`` raises.
        """
        future = self._calls.submit(fn, *args)
        try:
            return future.result(self.timeout)
        except _TIMEOUTS:
            future.cancel()  # not started yet: it never will be
            raise _timeout() from None

    async def call_async(self, fn: Callable[..., Any], *args: Any) -> Any:
        """:meth:`call` awaited on the running loop (the loop never blocks; same errors)."""
        future = self._calls.submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except _TIMEOUTS:
            raise _timeout() from None

    # -- a new process reads the fleet before its first call ---------------------------------------

    def prime(self) -> None:
        """Before this process's first call: wait (at most ``timeout``) for the first refresh, which
        the background thread starts at once (the fleet's pauses and retry budget)."""
        if self.primed:
            return
        try:
            self._first.result(self.timeout)
        except Exception:
            pass  # not in time: the refresh's own failure is counted by the refresh

    async def prime_async(self) -> None:
        """:meth:`prime` on the running loop."""
        if self.primed:
            return
        try:
            waited = asyncio.wrap_future(self._first)
            waited.add_done_callback(_retrieve)
            await asyncio.wait_for(asyncio.shield(waited), self.timeout)
        except Exception:
            pass

    def _set_primed(self) -> None:
        self.primed = True
        try:
            self._first.set_result(None)
        except InvalidStateError:  # set already (the thread's first refresh, then close())
            pass

    def read_first(self, name: str) -> None:
        """Read breaker ``name`` before this process's first call through it (one round trip shared
        by every concurrent first call, at most ``timeout``; a failure: local state)."""
        self.track(name)
        try:
            self._first_read(name).result(self.timeout)
        except Exception as exc:
            self.failed("refresh", _timeout() if isinstance(exc, _TIMEOUTS) else exc)

    async def read_first_async(self, name: str) -> None:
        """:meth:`read_first` on the running loop."""
        self.track(name)
        try:
            waited = asyncio.wrap_future(self._first_read(name))
            waited.add_done_callback(_retrieve)
            # shielded: a caller giving up must not cancel the read other first calls wait for
            await asyncio.wait_for(asyncio.shield(waited), self.timeout)
        except Exception as exc:
            self.failed("refresh", _timeout() if isinstance(exc, _TIMEOUTS) else exc)

    def _first_read(self, name: str) -> Future[Any]:
        with self._reading_lock:
            future = self._reading.get(name)
            if future is not None:
                return future
            future = self._calls.submit(self._read_one, name)
            self._reading[name] = future
        # Outside the lock: a future already done runs the callback here, and it takes the lock.
        future.add_done_callback(lambda done: self._read_done(name, done))
        return future

    def _read_one(self, name: str) -> None:
        # The view is set on the store thread, before the read counts as done: a first call that
        # comes just after finds it and does not read again.
        self.set_view(name, self.scripts["READ"]([self.key("breaker", name)], []))

    def _read_done(self, name: str, future: Future[Any]) -> None:
        with self._reading_lock:
            if self._reading.get(name) is future:
                del self._reading[name]

    def wait_refreshed(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until ``count`` successful refreshes happened (tests, the demo)."""
        deadline = time.monotonic() + timeout
        with self._refreshed:
            while self.refreshes < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._refreshed.wait(left)
        return True

    # -- health ---------------------------------------------------------------------------------

    @property
    def sharing(self) -> bool:
        """Whether fleet state is used (else: local state only)."""
        return not self.fallback

    def failed(self, operation: StoreOperation, exc: BaseException) -> None:
        """A Redis call failed: count it; the first failure switches to local state (logged once)."""
        try:
            self._emit(StoreError(operation))
            if self.fallback:
                return
            self.fallback = True
            _log.warning(
                "store.unavailable",
                operation=operation,
                error_type=type(exc).__qualname__,
                error=str(exc)[:200],
                prefix=self.prefix,
                note="running on local state (own breakers, own retry budget, no shared pauses) "
                "until Redis answers again",
            )
            self._emit(StoreFallback(True))
        except Exception:
            pass

    def _succeeded(self) -> None:
        if not self.fallback:
            return
        self.fallback = False
        try:
            _log.info("store.recovered", prefix=self.prefix, note="fleet state is shared again")
            self._emit(StoreFallback(False))
        except Exception:
            pass
        try:
            self.on_recovered()
        except Exception:
            pass

    # -- breakers -------------------------------------------------------------------------------

    def track(self, name: str) -> None:
        """Refresh breaker ``name`` from now on."""
        if name not in self._names:
            self._names[name] = None

    def set_view(self, name: str, answer: Any, now: float | None = None) -> View:
        """Take a script's ``{state, version, remaining_ms, ...}`` answer as the view of ``name``
        (an older version never replaces a newer one)."""
        now = time.monotonic() if now is None else now
        state = _text(answer[0])
        version = int(answer[1])
        view = View(state, version, now + int(answer[2]) / 1000.0)
        with self._view_lock:
            old = self.views.get(name)
            if old is not None and old.version > version:
                return old
            if old is not None and old.version == version:
                view = View(state, version, view.open_until, old.full_until)
            self.views[name] = view
        if old is None or old.state != state or old.version != version:
            try:
                self.on_view(name, old, view)
            except Exception:
                pass
        return view

    def mark_full(self, name: str, view: View, until: float) -> None:
        self.views[name] = View(view.state, view.version, view.open_until, until)

    def lease_args(self, name: str, permitted: int, lease_ttl: float) -> tuple[list[str], list[Any]]:
        return [self.key("breaker", name)], [permitted, int(lease_ttl * 1000), _KEY_TTL_MS]

    def lease(self, name: str, permitted: int, lease_ttl: float) -> Any:
        keys, args = self.lease_args(name, permitted, lease_ttl)
        return self.call(self.scripts["LEASE"], keys, args)

    async def lease_async(self, name: str, permitted: int, lease_ttl: float) -> Any:
        keys, args = self.lease_args(name, permitted, lease_ttl)
        script = self._async_script()
        if script is None:  # the user's sync client: on our threads, never the loop's executor
            return await self.call_async(self.scripts["LEASE"], keys, args)
        return await asyncio.wait_for(script(keys, args), self.timeout)

    def _async_script(self) -> Any:
        """The LEASE script on a ``redis.asyncio`` client of the running loop (None: no URL)."""
        if self.url is None:
            return None
        loop = asyncio.get_running_loop()
        script = self._async_clients.get(loop)
        if script is None:
            import redis.asyncio as aioredis

            with self._async_lock:
                script = self._async_clients.get(loop)
                if script is None:
                    pool = aioredis.BlockingConnectionPool.from_url(
                        self.url,
                        max_connections=16,
                        timeout=self.timeout,
                        socket_timeout=self.timeout,
                        socket_connect_timeout=self.timeout,
                    )
                    client = aioredis.Redis(connection_pool=pool)
                    script = client.register_script(redis_scripts.LEASE)
                    self._async_clients[loop] = script
        return script

    def queue_result(self, name: str, version: int, outcome: str, slow: bool, config: Any) -> None:
        self._put(("result", name, version, outcome, slow, config))

    def queue_report(self, name: str, version: int, config: Any) -> None:
        self._put(("report", name, version, config))

    def force(self, name: str, state: str, wait: float = 30.0) -> View:
        """Move breaker ``name`` to ``state`` fleet-wide now (operations, tests); one round trip."""
        answer = self.call(
            self.scripts["FORCE"], [self.key("breaker", name)], [state, int(wait * 1000), _KEY_TTL_MS]
        )
        return self.set_view(name, answer)

    # -- rate-limit pauses ----------------------------------------------------------------------

    def pause_remaining(self, server: str, model: str, now: float) -> tuple[float, str]:
        """Seconds ``server``/``model`` is paused for (0.0: not paused) and the pause's kind."""
        pauses = self._pauses
        if not pauses or self.fallback:
            return 0.0, ""
        quota = pauses.get(_field("q", server, QUOTA_MODEL), 0.0) - now
        rate = pauses.get(_field("r", server, model), 0.0) - now
        if quota <= 0.0 and rate <= 0.0:
            return 0.0, ""
        return (quota, "quota") if quota >= rate else (rate, "rate_limit")

    def on_429(self, kind: str, delay: float | None, server: str, model: str) -> None:
        """A 429 was seen: a quota exhaustion pauses the server, a rate limit with a server delay
        the server/model, fleet-wide (at once here, in the background for the others)."""
        if kind == "quota":
            # A quota holds until someone pays: the server's delay (if any) says nothing about it.
            field, seconds = _field("q", server, QUOTA_MODEL), self.quota_pause
        elif kind in ("requests", "tokens") and delay:
            field, seconds = _field("r", server, model), delay
        else:
            return
        if not (0.0 < seconds < math.inf):
            return
        until = time.monotonic() + seconds
        if self._pauses.get(field, 0.0) < until:
            self._pauses = {**self._pauses, field: until}
            self._export_pause(field, seconds)
        self._put(("pause", field, seconds))

    def _export_pause(self, field: str, seconds: float) -> None:
        kind, server, model = field.split("|", 2)
        if seconds > 0:
            self._exported_pauses.add(field)
        else:
            self._exported_pauses.discard(field)
        self._emit(PauseEvent(server, model, "quota" if kind == "q" else "rate_limit", seconds))

    # -- retry budget ---------------------------------------------------------------------------

    def count_request(self) -> None:
        with self._budget_lock:
            self._requests += 1

    def spend_retry(self, ratio: float, min_retries: int) -> bool | None:
        """The fleet's answer (None: no fleet totals, decide locally)."""
        with self._budget_lock:
            if self.fleet_requests is None or self.fallback:
                return None
            requests = self.fleet_requests + self._pending[0] + self._requests
            retries = self.fleet_retries + self._pending[1] + self._retries
            if retries >= max(min_retries, int(ratio * requests)):
                return False
            self._retries += 1
            return True

    # -- the background thread -------------------------------------------------------------------

    def _put(self, item: Any) -> None:
        if self.fallback:
            return  # dropped: state is local until Redis is back
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._emit(StoreError("queue_full"))

    def _run(self) -> None:
        next_refresh = 0.0
        first = True
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=max(0.0, next_refresh - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                items = [item]
                while len(items) < _MAX_BATCH and not self._stopping.is_set():
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        break
                    items.append(item)
                self._write_all(items)
                if item is _STOP:
                    break
            if time.monotonic() >= next_refresh:
                self.refresh()
                next_refresh = time.monotonic() + self.refresh_interval
                if first:
                    first = False
                    self._set_primed()

    def _write(self, item: Any) -> None:
        self._write_all([item])

    def _write_all(self, items: list[Any]) -> None:
        """Write ``items`` (queued by the hot path) in one pipelined round trip."""
        try:
            answers = self.call(self._send, items)
        except Exception as exc:
            self.failed("write", exc)
            return
        for item, answer in zip(items, answers, strict=True):
            if item[0] in ("result", "report"):
                self.set_view(item[1], answer)

    def _send(self, items: list[Any]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            self._queue_write(pipe, item)
        return pipe.execute()

    def _queue_write(self, pipe: Any, item: Any) -> None:
        kind = item[0]
        if kind == "result":
            _, name, version, outcome, slow, c = item
            self.scripts["RESULT"](
                [self.key("breaker", name)],
                [
                    version,
                    outcome,
                    1 if slow else 0,
                    c.permitted_number_of_calls_in_half_open_state,
                    c.failure_rate_threshold,
                    c.slow_call_rate_threshold,
                    *_waits(c),
                    _KEY_TTL_MS,
                ],
                client=pipe,
            )
        elif kind == "report":
            _, name, version, c = item
            self.scripts["REPORT_OPEN"](
                [self.key("breaker", name)],
                [
                    self.process_id,
                    version,
                    self.min_processes,
                    int(c.wait_duration_in_open_state * 1000),
                    *_waits(c),
                    _KEY_TTL_MS,
                ],
                client=pipe,
            )
        else:  # "pause"
            _, field, seconds = item
            self.scripts["PAUSE"](
                [self.key("pauses", "all")], [field, max(int(seconds * 1000), 1)], client=pipe
            )

    def refresh(self) -> bool:
        """One round trip: every tracked breaker, the pauses, the budget flush. False on failure."""
        names = list(self._names)
        with self._budget_lock:
            flush = (self._requests, self._retries)
            self._pending = flush
            self._requests = self._retries = 0
        try:
            answers = self.call(self._read, names, flush)
        except Exception as exc:
            with self._budget_lock:
                self._pending = (0, 0)
            self.failed("refresh", exc)
            return False
        now = time.monotonic()
        with self._budget_lock:
            self._pending = (0, 0)
            self.fleet_requests, self.fleet_retries = int(answers[-1][0]), int(answers[-1][1])
        self._succeeded()
        for name, answer in zip(names, answers, strict=False):
            self.set_view(name, answer, now)
        self._take_pauses(answers[len(names)], now)
        with self._refreshed:
            self.refreshes += 1
            self._refreshed.notify_all()
        return True

    def _read(self, names: list[str], flush: tuple[int, int]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            self.scripts["READ"]([self.key("breaker", name)], [], client=pipe)
        self.scripts["PAUSES_READ"]([self.key("pauses", "all")], [], client=pipe)
        self.scripts["BUDGET"](
            [self.key("budget", "retries")],
            [flush[0], flush[1], max(math.ceil(self.budget_window), 1)],
            client=pipe,
        )
        return pipe.execute()

    def _take_pauses(self, flat: Any, now: float) -> None:
        fleet = {_text(flat[i]): now + int(flat[i + 1]) / 1000.0 for i in range(0, len(flat), 2)}
        merged = {f: until for f, until in self._pauses.items() if until > now}
        for field, until in fleet.items():
            if merged.get(field, 0.0) < until - 0.05:
                merged[field] = until
                if field not in self._exported_pauses:
                    self._export_pause(field, until - now)
        for field in list(self._exported_pauses):
            if field not in merged:
                self._export_pause(field, 0.0)
        self._pauses = merged


def _after_fork(fleet: Fleet) -> None:
    # The parent's queued writes and unflushed counts are the parent's to send (the child's would
    # count them twice); every lock, queue and condition may be held by a thread the child has not.
    fleet._queue = queue.Queue(fleet._queue.maxsize)
    fleet._refreshed = threading.Condition()
    fleet._budget_lock = threading.Lock()
    fleet._view_lock = threading.Lock()
    fleet._async_lock = threading.Lock()
    fleet._async_clients = weakref.WeakKeyDictionary()
    fleet._calls = _Calls(_CALL_THREADS, fleet.timeout)  # the parent's threads did not survive
    fleet._reading = {}
    fleet._reading_lock = threading.Lock()
    fleet._first = Future()  # the child's first call waits for the child's first refresh
    fleet._requests, fleet._retries, fleet._pending = 0, 0, (0, 0)
    fleet._thread = None
    stopped = fleet._stopping.is_set()
    fleet._stopping = threading.Event()
    if stopped:
        fleet._stopping.set()
        return
    fleet.process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if fleet._started:
        fleet.start()


def _timeout() -> TimeoutError:
    return TimeoutError("Redis did not answer within redis_timeout")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(kind: str, server: str, model: str) -> str:
    return f"{kind}|{server[:_MAX_FIELD]}|{model[:_MAX_FIELD]}"


def _waits(config: Any) -> tuple[int, float, int]:
    return (
        int(config.wait_duration_in_open_state * 1000),
        float(config.wait_interval_multiplier),
        int(config.max_wait_duration_in_open_state * 1000),
    )


class FleetRetryBudget(RetryBudget):
    """The retry budget counted fleet-wide (Envoy's model: retries <= max(min, ratio * requests) in
    the window, over every process), from the totals of the last refresh plus this process's counts
    since. Falls back to the local budget (always kept up to date) when Redis is unavailable."""

    def __init__(
        self,
        fleet: Fleet,
        ratio: float,
        window: float,
        min_retries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ratio, window, min_retries, clock=clock)
        self.fleet = fleet
        fleet.budget_window = window

    def record_request(self) -> None:
        super().record_request()
        self.fleet.count_request()

    def try_spend(self) -> bool:
        shared = self.fleet.spend_retry(self._ratio, self._min)
        local = super().try_spend() if shared is None else None
        if shared is None:
            return bool(local)
        if shared:  # keep the local window current for a fallback
            now = self._clock()
            with self._lock:
                self._retries.append(now)
        return shared
