"""`ChaosServer`: an OpenAI-compatible HTTP/1.1 server on loopback that injects one fault per
request, for tests and demos driven by the real openai SDK.

It runs `asyncio.start_server` on its own event loop in a daemon thread, so sync and async code
can both talk to it. Endpoints (all under `/v1`):

- `POST /chat/completions`, `POST /completions`, `POST /responses`: `"stream": true` gets SSE,
  otherwise a JSON body.
- `GET /responses/{id}`: the stored response; with `?stream=true[&starting_after=N]` its events
  with `sequence_number > N` are streamed again (every created Responses stream is kept).

Non-stream requests honour only the faults that make sense without a stream: the HTTP errors,
`stall_*` (all stall before headers, recorded as `stall_before_headers`) and `reset` (RST before
any byte). Any other fault serves the normal JSON body and is recorded as `none`. Recordings are
served to stream requests only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from .faults import FAULT_TABLE, Fault, Phase
from .payloads import (
    Api,
    Generation,
    SseEvent,
    azure_prompt_filter_event,
    build_events,
    http_error_body,
    non_stream_body,
    stream_facts,
)
from .plan import Decision, FaultPlan, FaultSpec, HeaderError
from .ratelimit import RateLimitConfig, RateLimitCounter
from .records import RecordLog, RequestRecord
from .replay import Recording
from .streaming import StreamProgress, first_response_id, play_stream
from .text import DEFAULT_CHUNKS, expected_pieces, expected_text, prompt_tokens
from .wire import HttpConnection, IncomingRequest, PeerGone

__all__ = ["ChaosServer"]

log = logging.getLogger(__name__)

_SSE = "text/event-stream; charset=utf-8"
_JSON = "application/json"
_CREATE_PATHS: Mapping[str, Api] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
}
_RETRIEVE_PREFIX = "/v1/responses/"
# Azure OpenAI: /openai/deployments/{deployment}/chat/completions?api-version=... (the deployment
# names the model).
_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|completions)$")
_MAX_CHOICES = 8


@dataclass(frozen=True, slots=True)
class _StoredResponse:
    events: tuple[SseEvent, ...]  # the complete stream, for resume
    body: dict[str, Any] | None  # the final response object
    model: str


@dataclass
class _Exchange:
    """Mutable facts about the request being answered; frozen into a `RequestRecord` at the end."""

    seq: int
    connection: int
    request: IncomingRequest
    started: float
    api: Api | None = None
    model: str | None = None
    stream: bool = False
    decision: Decision | None = None
    fault: Fault = Fault.NONE
    request_id: str | None = None
    response_id: str | None = None
    replay: str | None = None
    azure_deployment: str | None = None  # set for Azure's /openai/deployments/{name}/... paths
    progress: StreamProgress = field(default_factory=StreamProgress)

    def record(self) -> RequestRecord:
        facts = stream_facts(self.progress.sent)
        retry = self.request.headers.get("x-stainless-retry-count")
        return RequestRecord(
            seq=self.seq,
            connection=self.connection,
            method=self.request.method,
            path=self.request.path,
            api=self.api,
            model=self.model,
            stream=self.stream,
            retry_count=int(retry) if retry is not None and retry.isdigit() else None,
            client_request_id=self.request.headers.get("x-client-request-id"),
            fault=self.fault,
            spec=self.decision.spec if self.decision else FaultSpec(),
            source=self.decision.source if self.decision else None,
            status=self.progress.status,
            data_events=self.progress.data_events,
            terminal_sent=self.progress.terminal_sent,
            finish_reasons=facts.finish_reasons,
            usage=facts.usage,
            terminal_event=facts.terminal_event,
            request_id=self.request_id,
            response_id=self.response_id,
            replay=self.replay,
            client_disconnected=self.progress.client_disconnected,
            stall_expired=self.progress.stall_expired,
            stall_seconds=self.progress.stall_seconds,
            no_done=self.progress.done_omitted,
            started_at=self.started,
            finished_at=time.monotonic(),
        )


class ChaosServer:
    """Fault-injecting OpenAI-compatible server on its own thread.

    Usage: `with ChaosServer(plan=FaultPlan(...)) as server: OpenAI(base_url=server.base_url, ...)`.

    Args:
        plan: decides each request's fault; default: always `none` (headers still work).
        host: bind address; loopback by default.
        port: 0 picks a free port.
        seed: seeds the generated text and ids (`expected_text()`).
        recordings: recordings a plan or `x-chaos-replay` can serve.
        rate_limits: limits advertised in `x-ratelimit-*`.
        chunks: content pieces per choice when the spec does not say.
        max_stored_responses: Responses kept for `GET /v1/responses/{id}` (oldest dropped).
        on_record: called with each `RequestRecord` once it is written (on the server's thread;
            an exception it raises is logged and ignored).
    """

    def __init__(
        self,
        plan: FaultPlan | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        recordings: Iterable[Recording] = (),
        rate_limits: RateLimitConfig | None = None,
        chunks: int = DEFAULT_CHUNKS,
        max_stored_responses: int = 1000,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self._on_record = on_record
        self.plan = plan if plan is not None else FaultPlan()
        self.seed = seed
        self.chunks = chunks
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._recordings = {rec.name: rec for rec in recordings}
        self._round_robin: dict[str, Iterator[Recording]] = {}
        for api in ("chat", "completions", "responses"):
            matching = [rec for rec in self._recordings.values() if rec.api == api]
            if matching:
                self._round_robin[api] = itertools.cycle(matching)
        self._rate_limits = RateLimitCounter(rate_limits or RateLimitConfig())
        self._max_stored = max_stored_responses
        self._stored: OrderedDict[str, _StoredResponse] = OrderedDict()
        self._stored_lock = threading.Lock()
        self._log = RecordLog()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._connection_ids = itertools.count()

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ChaosServer:
        """Bind and start serving in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("ChaosServer already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="chaos-server", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), loop).result()
        except BaseException:
            self._join()
            raise
        return self

    def stop(self) -> None:
        """Stop serving: abort every connection (ending stalls at once) and join the thread."""
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(RuntimeError, TimeoutError, concurrent.futures.TimeoutError):
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
        self._join()

    def _join(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()
        self._loop = self._thread = None
        self._server = None

    def __enter__(self) -> ChaosServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())  # getaddrinfo threads
            loop.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, self._host, self._requested_port, backlog=1024
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ---- public read-only API ----------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (after `start()`)."""
        if self._port is None:
            raise RuntimeError("ChaosServer not started")
        return self._port

    @property
    def url(self) -> str:
        """`http://HOST:PORT` (no path)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT/v1`, for `OpenAI(base_url=...)`."""
        return f"{self.url}/v1"

    @property
    def records(self) -> list[RequestRecord]:
        """Snapshot of the request log, in arrival order."""
        return self._log.snapshot()

    @property
    def recordings(self) -> dict[str, Recording]:
        """Recordings by name."""
        return dict(self._recordings)

    def clear(self) -> None:
        """Forget the records (sequence numbers keep counting)."""
        self._log.clear()

    def summary(self) -> Counter[Fault]:
        """Requests per applied fault."""
        return self._log.summary()

    def wait_for_records(self, count: int, timeout: float = 10.0) -> list[RequestRecord]:
        """Block until `count` requests are recorded (a record is written when the server is done
        with the request, which can be after the client saw the end). Raises TimeoutError."""
        return self._log.wait_for(count, timeout)

    @property
    def arrivals(self) -> int:
        """Requests that have arrived so far (each gets a record once the server is done with it)."""
        return self._log.arrivals

    def wait_for_arrivals(self, count: int, timeout: float = 10.0) -> None:
        """Block until `count` requests have arrived (e.g. a stall has begun). Raises TimeoutError."""
        self._log.wait_for_arrivals(count, timeout)

    async def wait_for_records_async(self, count: int, timeout: float = 10.0) -> list[RequestRecord]:
        """`wait_for_records` without blocking the calling event loop."""
        return await asyncio.to_thread(self._log.wait_for, count, timeout)

    def expected_text(
        self, request_body: Mapping[str, Any], *, chunks: int | None = None, choice: int = 0
    ) -> str:
        """The text a clean generated stream of this request carries."""
        return expected_text(request_body, seed=self.seed, chunks=chunks or self.chunks, choice=choice)

    # ---- connections ---------------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = HttpConnection(reader, writer)
        connection_id = next(self._connection_ids)
        try:
            while True:
                request = await conn.read_request()
                if request is None:
                    break
                await self._handle(conn, connection_id, request)
                if not conn.reusable:
                    break
        except asyncio.CancelledError:
            # Only stop() cancels; not re-raising keeps asyncio's stream callback from logging it.
            conn.abort()
        except Exception:
            log.exception("chaos server: connection handler failed")
            conn.abort()
        else:
            await conn.close()
        finally:
            self._connections.discard(task)

    async def _handle(self, conn: HttpConnection, connection_id: int, request: IncomingRequest) -> None:
        exchange = _Exchange(
            seq=self._log.next_seq(), connection=connection_id, request=request, started=time.monotonic()
        )
        try:
            await self._dispatch(conn, exchange)
        except PeerGone:
            exchange.progress.client_disconnected = True
        record = exchange.record()
        self._log.append(record)
        if self._on_record is not None:
            try:
                self._on_record(record)
            except Exception:
                log.exception("chaos server: on_record failed")

    async def _dispatch(self, conn: HttpConnection, ex: _Exchange) -> None:
        request = ex.request
        path = request.path.rstrip("/")
        azure = _AZURE_PATH.match(path) if request.method == "POST" else None
        if azure is not None:
            ex.azure_deployment = azure.group(1)
            path = "/v1/" + azure.group(2)
        if request.method == "POST" and path in _CREATE_PATHS:
            ex.api = _CREATE_PATHS[path]
            try:
                body = json.loads(request.body or b"{}")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                await self._send_error(conn, ex, 400, "We could not parse the JSON body of your request.")
                return
            if ex.azure_deployment is not None:
                body.setdefault("model", ex.azure_deployment)
            ex.model = str(body.get("model", "")) or None
            ex.stream = body.get("stream") is True
            if await self._decide(conn, ex):
                await self._create(conn, ex, body)
        elif (
            request.method == "GET"
            and path.startswith(_RETRIEVE_PREFIX)
            and "/" not in path[len(_RETRIEVE_PREFIX) :]
        ):
            ex.api = "responses"
            ex.stream = request.query.get("stream", "").lower() in ("true", "1")
            if await self._decide(conn, ex):
                await self._retrieve(conn, ex, path[len(_RETRIEVE_PREFIX) :])
        else:
            await self._send_error(
                conn, ex, 404, f"Invalid URL ({request.method} {request.path})", code="unknown_url"
            )

    async def _decide(self, conn: HttpConnection, ex: _Exchange) -> bool:
        try:
            ex.decision = self.plan.decide(ex.request.headers)
            replay = ex.decision.spec.replay
            if replay is not None and replay not in self._recordings:
                raise HeaderError(f"unknown recording {replay!r}")
        except HeaderError as err:
            await self._send_error(conn, ex, 400, f"chaos: {err}")
            return False
        return True

    # ---- answers -----------------------------------------------------------------------------

    def _generation(self, api: Api, body: Mapping[str, Any], spec: FaultSpec, seq: int) -> Generation:
        chunks = spec.chunks or self.chunks
        n = 1
        if api != "responses" and isinstance(body.get("n"), int):
            n = max(1, min(_MAX_CHOICES, body["n"]))
        tool_name = None
        if spec.tool_call and api == "chat":
            tool_name = "lookup"
            tools = body.get("tools")
            if isinstance(tools, list) and tools and isinstance(tools[0], dict):
                tool_name = str(tools[0].get("function", {}).get("name", tool_name))
        digest = hashlib.sha256(f"{self.seed}:{seq}".encode()).hexdigest()
        object_id = {"chat": "chatcmpl-" + digest[:29], "completions": "cmpl-" + digest[:29]}.get(
            api, "resp_" + digest[:48]
        )
        item_id = ("call_" + digest[29:53]) if tool_name else ("msg_" + digest[16:64])
        options = body.get("stream_options")
        instructions = body.get("instructions")
        return Generation(
            api=api,
            model=str(body.get("model") or "gpt-4o-mini"),
            object_id=object_id,
            item_id=item_id,
            created=int(time.time()),
            pieces=tuple(
                tuple(expected_pieces(body, seed=self.seed, chunks=chunks, choice=i)) for i in range(n)
            ),
            finish_reason=spec.finish_reason or ("tool_calls" if tool_name else "stop"),
            include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
            prompt_tokens=prompt_tokens(body),
            tool_name=tool_name,
            instructions=instructions if isinstance(instructions, str) else None,
        )

    def _headers(
        self, ex: _Exchange, content_type: str, *, tokens: int = 0, fault: Fault = Fault.NONE
    ) -> list[tuple[str, str]]:
        ex.request_id = "req_" + uuid.uuid4().hex
        elapsed_ms = int((time.monotonic() - ex.started) * 1000)
        snapshot = self._rate_limits.take(tokens)
        return [
            ("content-type", content_type),
            ("x-request-id", ex.request_id),
            ("openai-processing-ms", str(max(1, elapsed_ms))),
            ("openai-version", "2020-10-01"),
            *snapshot.headers(
                requests_exhausted=fault is Fault.RATE_LIMIT_REQUESTS,
                tokens_exhausted=fault in (Fault.RATE_LIMIT_TOKENS, Fault.REQUEST_TOO_LARGE),
            ),
        ]

    async def _send_json(
        self,
        conn: HttpConnection,
        ex: _Exchange,
        status: int,
        body: Mapping[str, Any],
        *,
        tokens: int = 0,
        fault: Fault = Fault.NONE,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        headers = [*self._headers(ex, _JSON, tokens=tokens, fault=fault), *extra]
        await conn.send_full(status, headers, json.dumps(body).encode())
        ex.progress.status = status

    async def _send_error(
        self, conn: HttpConnection, ex: _Exchange, status: int, message: str, *, code: str | None = None
    ) -> None:
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        await self._send_json(conn, ex, status, {"error": error})

    async def _send_http_fault(self, conn: HttpConnection, ex: _Exchange, spec: FaultSpec) -> None:
        info = FAULT_TABLE[spec.fault]
        assert info.status is not None
        # retry-after-ms on every 429/500 keeps SDK retries in tests and demos fast.
        retry = [
            ("retry-after-ms", str(spec.retry_after_ms)),
            ("retry-after", str(math.ceil(spec.retry_after_ms / 1000))),
        ]
        body = http_error_body(spec.fault, ex.model or "gpt-4o-mini", spec.retry_after_ms)
        await self._send_json(conn, ex, info.status, body, fault=spec.fault, extra=retry)

    async def _stall_or_reset_before_headers(
        self, conn: HttpConnection, ex: _Exchange, spec: FaultSpec
    ) -> None:
        if ex.fault is Fault.RESET:
            await conn.reset()
        else:
            await ex.progress.stall(conn, spec.stall_seconds)

    async def _create(self, conn: HttpConnection, ex: _Exchange, body: dict[str, Any]) -> None:
        assert ex.decision is not None and ex.api is not None
        spec = ex.decision.spec
        api: Api = ex.api
        info = FAULT_TABLE[spec.fault]
        ex.fault = spec.fault
        if info.phase is Phase.HTTP_ERROR:
            await self._send_http_fault(conn, ex, spec)
            return
        if not ex.stream:
            await self._answer_non_stream(
                conn, ex, spec, non_stream_body(self._generation(api, body, spec, ex.seq))
            )
            return
        if spec.fault is Fault.STALL_BEFORE_HEADERS:
            await self._stall_or_reset_before_headers(conn, ex, spec)
            return
        recording = self._pick_recording(api, spec)
        gen = self._generation(api, body, spec, ex.seq)
        if spec.fault is Fault.JSON_BODY_200:
            await self._send_json(conn, ex, 200, non_stream_body(gen), tokens=gen.prompt_tokens)
            return
        if recording is not None:
            ex.replay = recording.name
            events = recording.events
            recorded = dict(recording.headers)
            generated = [(k, v) for k, v in self._headers(ex, _SSE) if k not in recorded]
            headers = [*recording.headers, *generated]
            ex.request_id = recorded.get("x-request-id", ex.request_id)
        else:
            events = build_events(gen)
            if ex.azure_deployment is not None and api == "chat":
                events = [azure_prompt_filter_event(), *events]
            headers = self._headers(ex, _SSE, tokens=gen.prompt_tokens + gen.completion_tokens)
        if api == "responses":
            ex.response_id = first_response_id(events)
            if ex.response_id is not None:
                self._store(ex.response_id, events, ex.model or gen.model)
        await play_stream(
            conn, api=api, events=events, spec=spec, headers=headers, model=gen.model, progress=ex.progress
        )

    async def _answer_non_stream(
        self, conn: HttpConnection, ex: _Exchange, spec: FaultSpec, body: dict[str, Any]
    ) -> None:
        if spec.fault in (Fault.STALL_BEFORE_HEADERS, Fault.STALL_BEFORE_FIRST_TOKEN, Fault.STALL_MID_STREAM):
            ex.fault = Fault.STALL_BEFORE_HEADERS
            await self._stall_or_reset_before_headers(conn, ex, spec)
        elif spec.fault is Fault.RESET:
            ex.fault = Fault.RESET
            await self._stall_or_reset_before_headers(conn, ex, spec)
        else:
            ex.fault = Fault.NONE
            if body.get("object") == "response":
                ex.response_id = str(body["id"])
                with self._stored_lock:
                    self._stored.setdefault(ex.response_id, _StoredResponse((), body, str(body.get("model"))))
            await self._send_json(conn, ex, 200, body)

    async def _retrieve(self, conn: HttpConnection, ex: _Exchange, response_id: str) -> None:
        assert ex.decision is not None
        spec = ex.decision.spec
        ex.response_id = response_id
        with self._stored_lock:
            stored = self._stored.get(response_id)
        if stored is None:
            await self._send_error(conn, ex, 404, f"No response found with id '{response_id}'.", code=None)
            return
        ex.model = stored.model
        ex.fault = spec.fault
        if FAULT_TABLE[spec.fault].phase is Phase.HTTP_ERROR:
            await self._send_http_fault(conn, ex, spec)
        elif not ex.stream or not stored.events:
            await self._answer_non_stream(conn, ex, spec, stored.body or {})
        elif spec.fault is Fault.STALL_BEFORE_HEADERS:
            await self._stall_or_reset_before_headers(conn, ex, spec)
        elif spec.fault is Fault.JSON_BODY_200:
            await self._send_json(conn, ex, 200, stored.body or {})
        else:
            raw_after = ex.request.query.get("starting_after", "-1")
            after = int(raw_after) if raw_after.lstrip("-").isdigit() else -1
            events = [
                e
                for e in stored.events
                if (e.sequence_number if e.sequence_number is not None else 0) > after
            ]
            await play_stream(
                conn,
                api="responses",
                events=events,
                spec=spec,
                headers=self._headers(ex, _SSE),
                model=stored.model,
                progress=ex.progress,
            )

    def _pick_recording(self, api: Api, spec: FaultSpec) -> Recording | None:
        if spec.replay is not None:
            return self._recordings[spec.replay]
        if self.plan.replay and api in self._round_robin:
            return next(self._round_robin[api])
        return None

    def _store(self, response_id: str, events: Sequence[SseEvent], model: str) -> None:
        final = next(
            (e.payload["response"] for e in reversed(events) if e.terminal and isinstance(e.payload, dict)),
            None,
        )
        with self._stored_lock:
            self._stored[response_id] = _StoredResponse(
                tuple(e for e in events if not e.is_done), final, model
            )
            self._stored.move_to_end(response_id)
            while len(self._stored) > self._max_stored:
                self._stored.popitem(last=False)

    def stored_response_ids(self) -> list[str]:
        """Ids `GET /v1/responses/{id}` can serve, oldest first."""
        with self._stored_lock:
            return list(self._stored)
