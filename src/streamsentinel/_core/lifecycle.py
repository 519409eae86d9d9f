"""The runtime of one ``instrument()``: settings, sinks, policies, and where a call begins.

``Runtime.begin`` opens a ``StreamController`` for a streaming call (labels bounded, sinks
started, the request counted by the retry budget); ``begin_call`` opens the light ``Attempts``
context of a plain call. Everything after that is the controller's. The SDK layer
(``streamsentinel._sdk``) calls these; the core never imports it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

import httpx2

from .. import _forksafe as forksafe
from .._log import debug_enabled
from .._log import log as _log
from .._resilience.breaker_config import BreakerConfig
from .._resilience.circuit import BreakerKey, Circuits, Fallback
from .._resilience.retry import RetryBudget, RetryPolicy
from .._resilience.store import BreakerStore
from .._resilience.watchdog import Watchdog
from ..errors import CircuitOpenError
from ..instrumentation._data import Event, RateLimitHeaders, Rejection, StreamStart
from .apis import ADAPTERS
from .attempts import Attempts
from .config import Settings
from .context import IN_FALLBACK
from .controller import Reissue, StreamController
from .done_marker import DoneMarker, DoneMarkers
from .emit import Emitter, InternalErrors
from .plan import StreamPlan
from .ratelimit import RateLimitKind, parse_raw
from .reaper import REAPER
from .taxonomy import Operation

if TYPE_CHECKING:
    from .._resilience.fleet import Fleet

OTHER = "_other"
_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "temperature", "top_p", "n")


class BoundedLabel:
    """Admits the first ``limit`` distinct values of a label; later ones become ``_other``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:  # full for good: no lock for the overflow either
            return OTHER
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
            return value


Labels = tuple[str, str]
"""A stream's bounded ``(model, server)`` label values."""
OVERFLOW: Labels = (OTHER, OTHER)


class LabelSets:
    """Bounds the label sets as a whole: each label is bounded on its own (``max_model_labels``
    values of ``model``, and of ``server``), and their combinations are too: past ``limit``
    distinct (server, port, model) combinations, a new one is counted as (``_other``, ``_other``)
    (the port is in it because the OTel sink records ``server.port``). So every table keyed by
    them (metric children and series, OTel points, breakers keyed by server/model, rate-limit
    gauges) holds at most ``limit + 1`` label sets per operation.

    A stream's labels are found with one dict lookup and no lock in the common case: each
    server's :meth:`table` maps the request's model to its labels, filled by :meth:`admit` (a lock
    only while combinations are still admitted). Combinations past the bound are not remembered,
    so memory stays bounded too.
    """

    def __init__(self, max_values: int, limit: int) -> None:
        self.models = BoundedLabel(max_values)
        self.servers = BoundedLabel(max_values)
        self._limit = limit
        self._sets: dict[tuple[str, int, str], Labels] = {}
        self._tables: dict[tuple[str, int], dict[str, Labels]] = {}
        self._full = False  # True once limit combinations exist: it stays so
        self._none: dict[str, Labels] = {}  # the table of servers first seen once full; never filled
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def table(self, server: str, port: int) -> dict[str, Labels]:
        """The model -> labels table of a (bounded) server label and port."""
        key = (server, port)
        table = self._tables.get(key)
        if table is None:
            with self._lock:
                table = self._tables.get(key)
                if table is None:
                    if self._full or len(self._tables) >= self._limit:
                        return self._none
                    table = self._tables[key] = {}
        return table

    def admit(self, table: dict[str, Labels], server: str, port: int, request_model: str) -> Labels:
        """The labels of ``request_model`` on ``table``'s server (one not found in the table)."""
        model = self.models(request_model)
        key = (server, port, model)
        labels = self._sets.get(key)
        if labels is None:
            if self._full:
                return OVERFLOW
            with self._lock:
                labels = self._sets.get(key)
                if labels is None:
                    if len(self._sets) >= self._limit:
                        self._full = True
                        return OVERFLOW
                    labels = self._sets[key] = (model, server)
        if model == request_model and table is not self._none:
            # Only values admitted as model labels are remembered: at most max_model_labels a table.
            table[request_model] = labels
        return labels


_PARAM_KEYS = frozenset(_PARAMS)
_Server = tuple[httpx2.URL, str, int, str, dict[str, Labels]]


def _params(request: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    if not _PARAM_KEYS.intersection(request):  # the usual case: one set operation, no loop
        return ()
    out = []
    for key in _PARAMS:
        value = request.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((key, value))
    return tuple(out)


class Runtime:
    """What one ``instrument()`` set up. Replaced as a whole by a reconfiguring ``instrument()``.
    It implements ``effects.Effects`` for its stream controllers: the only code that reaches the
    sinks, the breaker store, the watchdog, the retry budget and the fleet on their behalf."""

    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[Any],
        *,
        breaker: BreakerConfig,
        breaker_key: BreakerKey | None = None,
        breaker_fallback: Fallback | None = None,
        breaker_store: BreakerStore | None = None,
        fleet: Fleet | None = None,
        done_marker_servers: Mapping[str, DoneMarker] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.errors = InternalErrors()
        self.emitter = Emitter(sinks, self.errors)
        self.gap_alert = settings.gap_anomaly_seconds
        # A read a consumer gave up on after this long was a stall (the stall timeout, else the gap
        # that is an anomaly).
        self.stall_threshold = settings.stall_timeout or settings.gap_anomaly_seconds
        # A ChunkEvent per item is made only to carry its text (chunk_events="all" with content);
        # the item times themselves are the gaps every stream can keep (StreamRecord.chunk_gaps).
        self.chunk_extras = settings.chunk_events == "all" and settings.capture_content
        self.policy = RetryPolicy(
            attempts=settings.retry_attempts,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            time_budget=settings.retry_time_budget,
            resume=settings.resume,
        )
        self.fleet = fleet
        if fleet is not None:
            from .._resilience.fleet import FleetRetryBudget
            from .._resilience.redis_store import RedisBreakerStore

            fleet.attach(self._breaker_event)
            self.budget: RetryBudget = FleetRetryBudget(
                fleet,
                settings.retry_budget_ratio,
                settings.retry_budget_window,
                settings.retry_budget_min_retries,
                clock=clock,
            )
            if breaker_store is None:
                breaker_store = RedisBreakerStore(fleet, breaker)
        else:
            self.budget = RetryBudget(
                settings.retry_budget_ratio,
                settings.retry_budget_window,
                settings.retry_budget_min_retries,
                clock=clock,
            )
        self.watchdog = Watchdog(settings.first_token_timeout or None, settings.stall_timeout or None)
        self.circuits = Circuits(
            breaker, self._breaker_event, key=breaker_key, fallback=breaker_fallback, store=breaker_store
        )
        self.done_markers = DoneMarkers(
            settings.done_marker, done_marker_servers or {}, lambda event: self.emitter.event(None, event)
        )
        # The latest x-ratelimit-* values per label set (bounded labels): sinks hear of changes only.
        self.rate_limit_seen: dict[tuple[str, str, str], Any] = {}
        self._labels = LabelSets(settings.max_model_labels, settings.max_label_sets)
        self._servers: dict[int, _Server] = {}
        self._plans: dict[tuple[str, bool], StreamPlan] = {}
        # effects.Effects: the frequent ones are the collaborators' own bound methods (no frame more).
        self.emit = self.emitter.event
        self.end = self.emitter.end
        self.discard = self.emitter.discard
        self.activate = self.emitter.activate
        self.deactivate = self.emitter.deactivate
        self.count_error = self.errors
        self.watch = self.watchdog.watch
        self.unwatch = self.watchdog.unwatch
        self.saw_done = self.done_markers.saw_done
        self.accepts_missing_done = self.done_markers.accepts_missing

    def debug(self) -> bool:
        return debug_enabled()

    def plan(self, operation: Operation, debug: bool) -> StreamPlan:
        """The frozen plan of a stream of ``operation`` (one per operation and DEBUG state)."""
        found = self._plans.get((operation, debug))
        if found is None:
            settings = self.settings
            found = self._plans[(operation, debug)] = StreamPlan(
                api=ADAPTERS[operation],
                policy=self.policy,
                read=ADAPTERS[operation].read,
                gap_alert=self.gap_alert,
                stall_threshold=self.stall_threshold,
                chunk_extras=self.chunk_extras,
                debug=debug,
                capture_content=settings.capture_content,
                on_truncation=settings.on_truncation,
                first_token_timeout=settings.first_token_timeout,
                stall_timeout=settings.stall_timeout,
                watchdog=self.watchdog.enabled,
            )
        return found

    # -- effects.Effects: what the controllers ask for (emit, end... are bound in __init__) --------

    def release(self, name: str, permit: Any, result: Any, duration: float, ttft: float | None) -> None:
        self.circuits.store.release(name, permit, result, duration=duration, ttft=ttft)

    def spend_retry(self, stream: StreamStart, kind: str, reason: str) -> bool:
        if self.budget.try_spend():
            return True
        if kind == "retry":
            self.log_retry_denied(stream, reason)
        return False

    def rate_limit_headers(
        self, stream: StreamStart, found: Any, at: float, handles: tuple[Any, ...]
    ) -> None:
        seen = self.rate_limit_seen
        key = (stream.operation, stream.model, stream.server)
        if seen.get(key) != found:  # the gauges already show these values otherwise
            seen[key] = found
            snapshots = parse_raw(found)
            values = tuple((s.resource, s.remaining, s.limit, s.reset_seconds) for s in snapshots)
            if values:
                self.emitter.event(stream, RateLimitHeaders(at, values), handles)

    def report_429(self, kind: RateLimitKind, delay: float | None, stream: StreamStart) -> None:
        fleet = self.fleet
        if fleet is not None:  # fleet mode: a pause for every process (README "Running a fleet")
            fleet.on_429(kind, delay, stream.server, stream.model)

    def close_response(self, response: Any) -> None:
        try:
            response.close()
        except Exception:
            pass

    def _breaker_event(self, event: Event) -> None:
        self.emitter.event(None, event)

    # -- where calls begin --------------------------------------------------------------------------

    def stream_start(
        self,
        operation: Operation,
        base_url: httpx2.URL,
        request: Mapping[str, Any],
        provider: str,
        *,
        streaming: bool = True,
    ) -> StreamStart:
        server = self._servers.get(id(base_url))
        if server is None or server[0] is not base_url:
            server = self._server(base_url)
        model = request.get("model")
        request_model = model if type(model) is str and model else str(model or "unknown")
        labels = server[4].get(request_model)
        if labels is None:
            labels = self._labels.admit(server[4], server[3], server[2], request_model)
        return StreamStart(
            operation,
            provider,
            request_model,
            labels[0],
            labels[1],
            server[1],
            server[2],
            time.time_ns(),
            streaming,
            _params(request) if streaming else (),
        )

    def _server(self, base_url: httpx2.URL) -> _Server:
        """``(base_url, host, port, server label, its model -> labels table)``, kept per URL object
        (a client's base URL is one object for the client's life; URLs are parsed once, not per
        stream)."""
        host = base_url.host or "unknown"
        port = base_url.port or (443 if base_url.scheme == "https" else 80)
        label = self._labels.servers(host)
        server = (base_url, host, port, label, self._labels.table(label, port))
        if len(self._servers) >= 256:
            self._servers.clear()
        self._servers[id(base_url)] = server  # the URL is kept: its id is not reused meanwhile
        return server

    def begin_call(
        self, operation: Operation, base_url: httpx2.URL, request: Mapping[str, Any], provider: str
    ) -> Attempts:
        """A plain call: its attempts are counted, nothing else (no span, no record)."""
        stream = self.stream_start(operation, base_url, request, provider, streaming=False)
        return Attempts(self, stream, perf_counter())

    def begin(
        self,
        operation: Operation,
        base_url: httpx2.URL,
        request: Mapping[str, Any],
        provider: str,
        *,
        reissue: Reissue | None,
        retrieve: Callable[[str, int], Any] | None = None,
    ) -> StreamController:
        """A streaming call: sinks started, the request counted by the retry budget. The stream's
        contexts (its span) are current on return: the caller makes the call (``enter``/``exit``)
        or, when it makes none, calls ``leave()``."""
        stream = self.stream_start(operation, base_url, request, provider)
        start = perf_counter()
        handles, active = self.emitter.start(stream)
        try:
            self.budget.record_request()
            REAPER.start()
            debug = debug_enabled()
            ctl = StreamController(
                self._plans.get((operation, debug)) or self.plan(operation, debug),
                self,
                stream,
                start,
                handles,
                reissue=reissue,
                retrieve=retrieve,
                keep_gaps=self.emitter.wants_chunk_gaps,
            )
        except BaseException:
            if active is not None:
                self.emitter.deactivate(active)
            raise
        ctl.calls.active = active  # current until the call's enter()/exit(), or its leave()
        return ctl

    # -- the circuit breaker ----------------------------------------------------------------------

    def _key(self, ctl: StreamController, request: Mapping[str, Any]) -> str:
        stream = ctl.stream
        return self.circuits.key(stream.operation, stream.server, stream.model, request)

    def _admitted(self, ctl: StreamController, name: str, permit: Any) -> CircuitOpenError | None:
        ctl.breaker_name = name
        self.circuits.first_use(name)
        if permit is not None:
            ctl.permit = permit
            return None
        error = CircuitOpenError(
            breaker=name,
            retry_after=self.circuits.store.retry_after(name),
            request=httpx2.Request("POST", f"http://{ctl.stream.server_address}"),
        )
        ctl.rejected(Rejection("circuit_open"))
        return error

    # -- fleet-wide rate-limit pauses (fleet mode, rate_limit_pause="wait"|"reject") ---------------

    def _pause(self, ctl: StreamController) -> float | Exception | None:
        """Seconds to wait before sending, the error to raise, or None (no pause holds the call)."""
        fleet = self.fleet
        if fleet is None or fleet.pause_mode == "off":
            return None
        try:
            stream = ctl.stream
            remaining, kind = fleet.pause_remaining(stream.server, stream.model, time.monotonic())
            if remaining <= 0.0:
                return None
            if fleet.pause_mode == "wait" and remaining <= self.settings.retry_time_budget:
                return remaining
            error = _rate_limit_error(stream, remaining, kind)
            ctl.rejected(Rejection("quota_pause" if kind == "quota" else "rate_limit_pause"))
            return error
        except Exception as exc:
            self.errors("pause", exc)
            return None

    def admit(self, ctl: StreamController, request: Mapping[str, Any]) -> Exception | None:
        """Wait out or refuse a fleet-wide pause, then ask the call's breaker for a permit; the
        exception to raise when refused (``CircuitOpenError``, ``openai.RateLimitError``)."""
        if self.fleet is not None:
            if not self.fleet.primed:  # a new process: the fleet's first refresh (bounded)
                self.fleet.prime()
            paused = self._pause(ctl)
            if isinstance(paused, Exception):
                return paused
            if paused is not None:
                time.sleep(paused)
        if not self.circuits.enabled:
            return None
        try:
            name, permit = self.circuits.store.acquire(self._key(ctl, request))
            return self._admitted(ctl, name, permit)
        except Exception as exc:
            self.errors("breaker", exc)
            return None

    async def admit_async(self, ctl: StreamController, request: Mapping[str, Any]) -> Exception | None:
        """:meth:`admit` on an event loop (the store may do I/O)."""
        if self.fleet is not None:
            if not self.fleet.primed:  # a new process: the fleet's first refresh (bounded)
                await self.fleet.prime_async()
            paused = self._pause(ctl)
            if isinstance(paused, Exception):
                return paused
            if paused is not None:
                await asyncio.sleep(paused)
        if not self.circuits.enabled:
            return None
        try:
            name, permit = await self.circuits.store.acquire_async(self._key(ctl, request))
            return self._admitted(ctl, name, permit)
        except Exception as exc:
            self.errors("breaker", exc)
            return None

    def fallback(
        self,
        ctl: StreamController,
        error: Exception,
        create: Callable[..., Any],
        request: Mapping[str, Any],
    ) -> Callable[[], Any]:
        """What serves a rejected call: the configured fallback as a no-argument callable (its result
        may be awaitable), or raises ``error``. A fallback rejected while serving one raises."""
        fallback = self.circuits.fallback
        if fallback is None or ctl.breaker_name is None or IN_FALLBACK.get():
            raise error
        if isinstance(fallback, str):
            if request.get("model") in (None, fallback):
                raise error
            model = fallback
            return lambda: create(**{**request, "model": model})
        custom = fallback
        return lambda: custom(request)

    def served_by_fallback(self, ctl: StreamController) -> None:
        if ctl.breaker_name is not None:
            self.circuits.served_by_fallback(ctl.breaker_name)

    # -- logs of decisions (not sink records: they explain what streamsentinel did) ---------------

    def log_retry_denied(self, stream: StreamStart, reason: str) -> None:
        try:
            _log.warning(
                "stream.retry_denied",
                reason=reason,
                why="retry_budget",
                operation=stream.operation,
                model=stream.model,
                server=stream.server,
            )
        except Exception as exc:
            self.errors("logging", exc)

    def close(self) -> None:
        """No new stream begins on this runtime (``uninstrument()``, a reconfiguring
        ``instrument()``); the streams already open finish with its options, their deadlines
        included (the watchdog's thread ends after the last of them). Tells the sinks."""
        self.watchdog.close()
        if self.fleet is not None:
            self.fleet.close()
        self.emitter.close()


def _rate_limit_error(stream: StreamStart, remaining: float, kind: str) -> Exception:
    """The ``openai.RateLimitError`` the SDK would have raised for the 429 that a fleet-wide pause
    stands for (built from a synthetic 429 response; no request was made)."""
    import openai

    quota = kind == "quota"
    message = (
        f"streamsentinel: {stream.server_address} is paused fleet-wide for {remaining:.3f}s after "
        + ("an insufficient_quota 429" if quota else "a 429 with a server delay")
        + " (rate_limit_pause='reject'; no request was sent)"
    )
    error = {
        "message": message,
        "type": "insufficient_quota" if quota else "requests",
        "param": None,
        "code": "insufficient_quota" if quota else "rate_limit_exceeded",
    }
    request = httpx2.Request("POST", f"https://{stream.server_address}/v1")
    response = httpx2.Response(
        429,
        request=request,
        json={"error": error},
        headers={
            "retry-after-ms": str(max(int(remaining * 1000), 1)),
            "retry-after": str(max(math.ceil(remaining), 1)),
            "x-streamsentinel-rejected": "quota_pause" if quota else "rate_limit_pause",
        },
    )
    return openai.RateLimitError(f"Error code: 429 - {{'error': {error!r}}}", response=response, body=error)
