"""The ``Sentinel``: opens an observation per stream, classifies it once at the end, feeds the sinks.

Lifecycle of one stream request (``begin`` -> attempts -> ``wrap_stream`` -> one of ``request_raised``,
``end_of_stream``, ``stream_raised``, ``abandoned``). Every method here runs inside the host service,
so each catches its own failures, counts them in ``openai_stream_instrumentation_errors_total{stage}``
and logs each stage once; only ``end_of_stream`` may hand back an exception, ``StreamTruncatedError``,
for the proxy to raise on purpose.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import Any

import httpx2
import openai
import structlog
from openai._legacy_response import LegacyAPIResponse
from openai._response import APIResponse, AsyncAPIResponse
from opentelemetry.trace import INVALID_SPAN, TracerProvider
from prometheus_client import CollectorRegistry

from . import logs, tracing
from .breaker import BreakerConfig
from .chunks import READERS
from .circuit import BreakerKey, Circuits, Fallback
from .config import Settings, breaker_config
from .errors import CircuitOpenError, StreamDivergedError, StreamTruncatedError
from .metrics import BoundedLabel, metrics_for
from .observation import Anomaly, CallObservation, StreamObservation
from .proxy import ObservedAsyncStream, ObservedStream
from .ratelimit import classify_429, json_or_none, parse_headers, retry_delay_seconds
from .raw import ObservedAPIResponse, ObservedAsyncAPIResponse, ObservedLegacyResponse
from .resume import Diverged, ReplaySkipper
from .retry import RetryBudget, RetryPolicy
from .sse import ObservedSSEDecoder
from .taxonomy import (
    Failure,
    TruncationReason,
    classify_in_stream_event,
    classify_request_exception,
    classify_stream_exception,
    silent_end_failure,
    watchdog_failure,
)
from .watchdog import Watchdog

IN_FALLBACK: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "streamsentinel_in_fallback", default=False
)
"""True while a circuit-breaker fallback is serving a rejected call (a rejected fallback then raises)."""

CURRENT: contextvars.ContextVar[StreamObservation | CallObservation | None] = contextvars.ContextVar(
    "streamsentinel_current", default=None
)
"""The observation whose ``create()`` is running in this context (None elsewhere); read by the
HTTP-attempt hooks to attribute the SDK's retries and 429s to their stream (or, for a non-streaming
call, to its light ``CallObservation``)."""

_log = structlog.get_logger(logs.LOGGER_NAME)

# What create() returns under the SDK's with_raw_response / with_streaming_response.
_RAW_RESPONSES = (LegacyAPIResponse, APIResponse, AsyncAPIResponse)

# Reason label of a retry, from what the failed attempt was.
_KIND_TO_RETRY_REASON = {
    "requests": "rate_limited",
    "tokens": "rate_limited",
    "quota": "quota_exhausted",
    "too_large": "request_too_large",
}


def _status_reason(status: int) -> str:
    if status >= 500:
        return "server_error"
    return {408: "request_timeout", 409: "conflict"}.get(status, "other")


class Sentinel:
    """The active instrumentation: settings, metric families, tracer and the per-stream lifecycle."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        breaker: BreakerConfig | None = None,
        breaker_key: BreakerKey | None = None,
        breaker_fallback: Fallback | None = None,
    ) -> None:
        self.settings = settings
        self.gap_alert = settings.gap_anomaly_seconds  # read per chunk: a plain attribute
        self.retry_policy = RetryPolicy(
            attempts=settings.retry_attempts,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            time_budget=settings.retry_time_budget,
        )
        self.retry_budget = RetryBudget(
            settings.retry_budget_ratio, settings.retry_budget_window, settings.retry_budget_min_retries
        )
        self.watchdog = Watchdog(settings.first_token_timeout or None, settings.stall_timeout or None)
        self.metrics = metrics_for(registry)
        self.circuits = Circuits(
            breaker_config(breaker), self.metrics, key=breaker_key, fallback=breaker_fallback
        )
        self.tracer = tracing.get_tracer(tracer_provider)
        self._model_label = BoundedLabel(settings.max_model_labels)
        self._server_label = BoundedLabel(settings.max_model_labels)
        self._errors_logged: set[str] = set()
        self._errors_lock = threading.Lock()

    # -- failures of streamsentinel itself -------------------------------------------------------

    def internal_error(self, stage: str) -> None:
        """Count a failure of our own code at ``stage``; log it (with traceback) once per stage."""
        try:
            self.metrics.instrumentation_errors.labels(stage).inc()
            with self._errors_lock:
                first = stage not in self._errors_logged
                self._errors_logged.add(stage)
            if first:
                _log.exception("instrumentation.error", stage=stage)
        except Exception:
            pass

    # -- opening ---------------------------------------------------------------------------------

    def begin_call(self, operation: str, resource: Any, request: Mapping[str, Any]) -> CallObservation:
        """The light context of a non-streaming call: labels only (no span, no count, not in flight),
        so the HTTP-attempt hooks can count its 429s, SDK retries and rate-limit headers."""
        base_url: httpx2.URL = resource._client.base_url
        model = self._model_label(str(request.get("model") or "unknown"))
        server = self._server_label(base_url.host or "unknown")
        labels = self.metrics.bind(operation, model, server)
        return CallObservation(operation, model, server, labels, INVALID_SPAN, perf_counter())

    def begin(self, operation: str, resource: Any, request: Mapping[str, Any]) -> StreamObservation:
        """Open the observation of one streaming call (span started, ``in_flight`` up)."""
        return self._start(operation, resource._client.base_url, request)

    def begin_late(self, operation: str, client: Any, request: Mapping[str, Any]) -> StreamObservation:
        """Open the observation of a stream whose ``create()`` bypassed the entry wrappers (a
        ``with_raw_response`` / ``with_streaming_response`` wrapper the SDK built before
        ``instrument()``), once its response arrived: no breaker, and ``obs.call`` stays None (no
        retry or resume)."""
        return self._start(operation, client.base_url, request)

    def _start(self, operation: str, base_url: httpx2.URL, request: Mapping[str, Any]) -> StreamObservation:
        host = base_url.host or "unknown"
        port = base_url.port or (443 if base_url.scheme == "https" else 80)
        request_model = str(request.get("model") or "unknown")
        model = self._model_label(request_model)
        server = self._server_label(host)
        labels = self.metrics.bind(operation, model, server)
        start_ns = time.time_ns()
        start = perf_counter()
        span = tracing.start_span(
            self.tracer,
            operation=operation,
            request_model=request_model,
            server=host,
            server_port=port,
            request=request,
            start_ns=start_ns,
        )
        obs = StreamObservation(
            operation=operation,
            model=model,
            server=server,
            server_port=port,
            labels=labels,
            span=span,
            start=start,
            start_ns=start_ns,
            debug=logs.debug_enabled(),
        )
        labels.in_flight.inc()
        self.retry_budget.record_request()
        if obs.debug:
            logs.started(obs)
        return obs

    def admit(
        self, obs: StreamObservation, request: Mapping[str, Any], resource: Any
    ) -> CircuitOpenError | None:
        """Ask the call's circuit breaker for a permit. Returns the ``CircuitOpenError`` to raise when
        it refuses (the request is then recorded as ``rejected``; no HTTP request may follow)."""
        if not self.circuits.enabled:
            return None
        try:
            breaker = self.circuits.breaker_for(obs, request)
            obs.breaker = breaker
            obs.permit = breaker.try_acquire()
            if obs.permit is not None:
                return None
            error = CircuitOpenError(
                breaker=breaker.name,
                retry_after=breaker.retry_after(),
                request=httpx2.Request("POST", str(resource._client.base_url)),
            )
            self.finish(obs, "rejected", None)
            return error
        except Exception:
            self.internal_error("breaker")
            return None

    def fallback_call(
        self,
        obs: StreamObservation,
        error: CircuitOpenError,
        create: Callable[..., Any],
        request: Mapping[str, Any],
    ) -> Callable[[], Any]:
        """What serves a rejected call: the configured fallback, as a no-argument callable (its result
        may be awaitable), or raises ``error``. ``create`` is the (patched) SDK method, so a fallback
        model's call is observed and guarded by its own breaker. A fallback that is itself rejected
        while serving one raises instead of falling back again (no recursion)."""
        fallback = self.circuits.fallback
        if fallback is None or obs.breaker is None or IN_FALLBACK.get():
            raise error
        if isinstance(fallback, str):
            if request.get("model") in (None, fallback):
                raise error
            model = fallback
            return lambda: create(**{**request, "model": model})
        custom = fallback
        return lambda: custom(request)

    def served_by_fallback(self, obs: StreamObservation) -> None:
        """Count a rejected call the fallback did serve."""
        try:
            if obs.breaker is not None:
                self.circuits.count_fallback(obs.breaker)
        except Exception:
            self.internal_error("breaker")

    def wrap_stream(self, obs: StreamObservation, result: Any) -> Any:
        """Put the stream ``create()`` returned under observation (anything else passes through)."""
        try:
            if isinstance(result, openai.Stream):
                proxy_cls: type[ObservedStream] | type[ObservedAsyncStream] = ObservedStream
            elif isinstance(result, openai.AsyncStream):
                proxy_cls = ObservedAsyncStream
            elif isinstance(result, _RAW_RESPONSES):
                return self._wrap_raw(obs, result)
            else:
                self.discard(obs)
                return result
            self._adopt(obs, result)
            return proxy_cls(result, obs, self, READERS[obs.operation])
        except Exception:
            self.internal_error("wrap")
            self.discard(obs)
            return result

    def _wrap_raw(self, obs: StreamObservation, result: Any) -> Any:
        """A ``with_raw_response`` / ``with_streaming_response`` result: its ``parse()`` gives the
        observed stream; raw reads are recorded once (``streamsentinel.raw``)."""
        obs.response = result.http_response
        obs.headers_at = perf_counter()
        if obs.request_id is None:
            obs.request_id = result.http_response.headers.get("x-request-id")
        if isinstance(result, LegacyAPIResponse):
            return ObservedLegacyResponse(result, obs, self)
        if isinstance(result, AsyncAPIResponse):
            return ObservedAsyncAPIResponse(result, obs, self)
        return ObservedAPIResponse(result, obs, self)

    def _adopt(self, obs: StreamObservation, stream: Any) -> None:
        """Take the facts of a new attempt's stream: decoder hook, response, ids; start its deadlines."""
        decoder = getattr(stream, "_decoder", None)
        obs.decoder = decoder if isinstance(decoder, ObservedSSEDecoder) else None
        obs.response = stream.response
        obs.headers_at = perf_counter()
        if obs.request_id is None:  # the attempt hook normally set it
            obs.request_id = stream.response.headers.get("x-request-id")
        if self.watchdog.enabled:
            self.watchdog.watch(obs)

    def discard(self, obs: StreamObservation) -> None:
        """End an observation that turned out not to be a stream we observe: no request counted."""
        if obs.ended:
            return
        obs.ended = True
        try:
            if obs.breaker is not None and obs.permit is not None:
                obs.breaker.on_ignored(obs.permit)
            obs.labels.in_flight.dec()
            obs.span.end()
        except Exception:
            self.internal_error("discard")

    # -- HTTP attempts (the SDK's retry loop) ----------------------------------------------------

    def attempt_response(self, obs: StreamObservation | CallObservation, response: httpx2.Response) -> None:
        """One HTTP response inside ``create()``: rate-limit headers, 429 kind, the retry reason."""
        try:
            headers = response.headers
            snapshots = parse_headers(headers)
            if snapshots:
                obs.labels.record_rate_limit_headers(snapshots)
            status = response.status_code
            obs.request_id = headers.get("x-request-id")
            if status == 429:
                body = json_or_none(response.content) if response.is_closed else None
                kind = classify_429(body, headers)
                obs.rate_limit_kinds.append(kind)
                obs.last_attempt_reason = _KIND_TO_RETRY_REASON[kind]
                obs.labels.record_rate_limit(kind)
                logs.rate_limited(obs, kind=kind, status=status)
            elif status >= 400:
                obs.last_attempt_reason = _status_reason(status)
        except Exception:
            self.internal_error("attempt")

    def attempt_raised(self, obs: StreamObservation | CallObservation, exc: BaseException) -> None:
        """An HTTP attempt that raised (timeout or transport error) before any response."""
        try:
            timeout = isinstance(exc, (httpx2.TimeoutException, openai.APITimeoutError))
            obs.last_attempt_reason = "timeout" if timeout else "connection_error"
        except Exception:
            self.internal_error("attempt")

    def sdk_retry(
        self, obs: StreamObservation | CallObservation, retries_taken: int, response: httpx2.Response | None
    ) -> None:
        """The SDK is about to sleep and retry (``_sleep_for_retry``): count it with its reason."""
        try:
            obs.sdk_retries += 1
            reason = obs.last_attempt_reason
            if response is None and reason not in ("timeout", "connection_error"):
                reason = "connection_error"  # the attempt hook did not run
            delay = retry_delay_seconds(response.headers) if response is not None else None
            obs.labels.record_retry("sdk", reason)
            obs.anomalies.append(
                Anomaly(
                    "retry",
                    perf_counter() - obs.start,
                    {
                        "streamsentinel.layer": "sdk",
                        "streamsentinel.reason": reason,
                        "streamsentinel.attempt": retries_taken + 1,
                    },
                )
            )
            logs.retry(obs, layer="sdk", reason=reason, attempt=retries_taken + 1, delay=delay)
        except Exception:
            self.internal_error("retry")

    # -- endings ---------------------------------------------------------------------------------

    def request_raised(self, obs: StreamObservation, exc: BaseException) -> None:
        """``create()`` raised: no stream; the request failed (or was cancelled)."""
        try:
            failure = classify_request_exception(exc)
            if failure is None:
                self.finish(obs, "abandoned", None)
                return
            if failure.rate_limit_kind is not None and not obs.rate_limit_kinds and not obs.ended:
                # The attempt hook did not see this 429 (hook missing): count it here.
                obs.labels.record_rate_limit(failure.rate_limit_kind)
                logs.rate_limited(obs, kind=failure.rate_limit_kind, status=429)
            self.finish(obs, "failed", failure)
        except Exception:
            self.internal_error("finish")

    def raised_failure(self, obs: StreamObservation, exc: BaseException) -> Failure | None:
        """Classify what the SDK raised while the consumer iterated (None: a cancellation)."""
        try:
            if obs.timeout_kind is not None and isinstance(exc, openai.APIConnectionError):
                return watchdog_failure(obs.timeout_kind)  # type: ignore[arg-type]
            failure = classify_stream_exception(exc)
            if (
                failure is not None
                and failure.reason == "in_stream_error"
                and isinstance(exc, openai.APIError)
            ):
                obs.in_stream_error = (exc.code, "")
            return failure
        except Exception:
            self.internal_error("classify")
            return Failure("other", "other")

    def stream_raised(self, obs: StreamObservation, failure: Failure | None) -> None:
        """Record the end of a stream the SDK raised in; the proxy re-raises the exception unchanged."""
        try:
            if failure is None:
                self.finish(obs, "abandoned", None)
            else:
                self.finish(obs, "truncated" if obs.payload_chunks else "failed", failure)
        except Exception:
            self.internal_error("finish")

    def _silent_reason(self, obs: StreamObservation) -> TruncationReason:
        decoder = obs.decoder
        saw_event = decoder.last is not None if decoder is not None else obs.chunks > 0
        if not saw_event:
            response = obs.response
            content_type = response.headers.get("content-type", "") if response is not None else ""
            if "text/event-stream" not in content_type:
                return "non_sse_body"
        if decoder is not None and decoder.ended_inside_event:
            return "partial_event"
        return "eof_before_done"

    def _is_complete(self, obs: StreamObservation) -> bool:
        if obs.operation == "responses":
            return obs.terminal is not None
        done = obs.done_seen
        if done is not None:
            return done
        # Fallback when the decoder hook is gone: every choice reported a finish reason.
        return bool(obs.finish_reasons)

    def eof_failure(self, obs: StreamObservation) -> Failure | None:
        """Classify a stream whose iterator ended without error: None when it was complete."""
        try:
            if self._is_complete(obs):
                error = obs.in_stream_error
                return classify_in_stream_event(*error) if error is not None else None
            if obs.in_stream_error is not None:
                return classify_in_stream_event(*obs.in_stream_error)
            return silent_end_failure(self._silent_reason(obs))
        except Exception:
            self.internal_error("classify")
            return None

    def end_of_stream(self, obs: StreamObservation, failure: Failure | None) -> StreamTruncatedError | None:
        """Record a stream whose iterator ended without error. Returns the ``StreamTruncatedError`` to
        raise when it ended silently before its terminal marker and ``on_truncation="raise"``."""
        try:
            if obs.ended:
                return None
            if failure is None:
                self.finish(obs, "completed", None)
                return None
            self.finish(obs, "truncated" if obs.payload_chunks else "failed", failure)
            if not self._is_complete(obs) and self.settings.on_truncation == "raise":
                return StreamTruncatedError(
                    reason=failure.reason or "eof_before_done",
                    chunks_received=obs.chunks,
                    partial_text=obs.partial_text,
                    request_id=obs.request_id,
                    request=obs.response.request if obs.response is not None else _NO_REQUEST,
                )
            return None
        except Exception:
            self.internal_error("finish")
            return None

    # -- streamsentinel's own retries ------------------------------------------------------------

    def retry_delay(self, obs: StreamObservation, failure: Failure) -> float | None:
        """Seconds to wait before re-issuing ``obs``'s request, or None when it must not be retried
        (not retryable, attempts or time budget used up, retry budget exhausted)."""
        try:
            policy = self.retry_policy
            if obs.ended or obs.call is None or not failure.retryable or obs.attempt >= policy.attempts:
                return None
            delay = policy.backoff(obs.attempt - 1, failure.retry_after)
            if perf_counter() - obs.start + delay > policy.time_budget:
                return None
            if not self.retry_budget.try_spend():
                logs.retry_denied(obs, reason=failure.error_type, why="retry_budget")
                return None
            obs.sentinel_retries += 1
            obs.labels.record_retry("sentinel", failure.error_type)
            self._note_in_stream_rate_limit(obs, failure)
            obs.anomalies.append(
                Anomaly(
                    "retry",
                    perf_counter() - obs.start,
                    {
                        "streamsentinel.layer": "sentinel",
                        "streamsentinel.reason": failure.error_type,
                        "streamsentinel.attempt": obs.attempt + 1,
                    },
                )
            )
            logs.retry(obs, layer="sentinel", reason=failure.error_type, attempt=obs.attempt + 1, delay=delay)
            return delay
        except Exception:
            self.internal_error("retry")
            return None

    # -- resuming after output ---------------------------------------------------------------------

    def resume_delay(self, obs: StreamObservation, failure: Failure) -> float | None:
        """Seconds to wait before resuming ``obs`` after a break mid-output, or None when the
        ``resume`` setting, the failure, the attempts or the budgets say no."""
        try:
            strategy = self.settings.resume
            policy = self.retry_policy
            if strategy == "off" or obs.ended or obs.call is None or not failure.retryable:
                return None
            if obs.attempt >= policy.attempts:
                return None
            if strategy == "responses" and (
                obs.operation != "responses" or obs.response_id is None or obs.last_seq is None
            ):
                return None
            delay = policy.backoff(obs.attempt - 1, failure.retry_after)
            if perf_counter() - obs.start + delay > policy.time_budget or not self.retry_budget.try_spend():
                return None
            logs.resume(obs, strategy=strategy, reason=failure.error_type, attempt=obs.attempt + 1)
            return delay
        except Exception:
            self.internal_error("resume")
            return None

    def _resume_call(
        self, obs: StreamObservation
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        if obs.response is not None:
            try:
                obs.response.close()
            except Exception:
                pass
        self.watchdog.unwatch(obs)
        obs.attempt += 1
        obs.new_connection(perf_counter())
        create, args, kwargs = obs.call  # type: ignore[misc]  # resume_delay() checked it
        if self.settings.resume == "responses":
            from .patches import original

            resource = create.__self__  # type: ignore[union-attr]  # a bound SDK method
            retrieve = original(type(resource), "retrieve").__get__(resource)
            return retrieve, (obs.response_id,), {"stream": True, "starting_after": obs.last_seq}
        return create, args, kwargs

    def replay_skipper(self, obs: StreamObservation) -> ReplaySkipper | None:
        """What the replayed stream must repeat before it continues (None: nothing to skip)."""
        if self.settings.resume != "replay":
            return None
        return ReplaySkipper(obs.operation, ("".join(obs.text), "".join(obs.tool_args)))

    def resume_result(self, obs: StreamObservation, result: str) -> None:
        """``resumed`` (caught up), ``diverged`` or ``failed`` (the continuation could not start)."""
        try:
            obs.labels.record_resume(self.settings.resume, result)
        except Exception:
            self.internal_error("resume")

    def diverged(self, obs: StreamObservation, failure: Failure, error: Diverged) -> StreamDivergedError:
        """Record a replay that differed from what was delivered; returns the error to raise."""
        self.resume_result(obs, "diverged")
        self.finish(obs, "truncated", failure)
        return StreamDivergedError(
            delivered=error.delivered,
            received=error.received,
            request=obs.response.request if obs.response is not None else _NO_REQUEST,
        )

    def _start_attempt(
        self, obs: StreamObservation
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        if obs.response is not None:
            try:
                obs.response.close()  # the failed attempt's connection; nothing more is read from it
            except Exception:
                pass
        self.watchdog.unwatch(obs)
        obs.attempt += 1
        obs.new_attempt(perf_counter())
        return obs.call  # type: ignore[return-value]  # retry_delay() checked it

    def _open(
        self, obs: StreamObservation, kind: str
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return self._start_attempt(obs) if kind == "retry" else self._resume_call(obs)

    def _opened(self, obs: StreamObservation, kind: str, stream: Any) -> Any:
        self._adopt(obs, stream)
        if kind == "resume" and self.settings.resume != "replay":
            self.resume_result(obs, "resumed")  # nothing to skip: continued already
        return stream

    def _open_failed(self, obs: StreamObservation, kind: str, exc: BaseException) -> None:
        if kind == "retry" or not isinstance(exc, Exception):
            self.request_raised(obs, exc)  # the retry's own failure (or a cancellation) ends it
            raise exc
        self.resume_result(obs, "failed")  # the original failure ends it (the caller goes on)

    def next_stream(self, obs: StreamObservation, kind: str) -> Any | None:
        """Open the next stream of ``obs`` through the SDK (sync): ``kind`` ``"retry"`` re-issues
        the request (its failure propagates and ends the request); ``"resume"`` continues it
        (None when that fails: the original failure then ends the stream)."""
        call, args, kwargs = self._open(obs, kind)
        token = CURRENT.set(obs)
        try:
            stream = call(*args, **kwargs)
        except BaseException as exc:
            self._open_failed(obs, kind, exc)
            return None
        finally:
            CURRENT.reset(token)
        return self._opened(obs, kind, stream)

    async def anext_stream(self, obs: StreamObservation, kind: str) -> Any | None:
        """:meth:`next_stream` for an ``AsyncOpenAI`` client."""
        call, args, kwargs = self._open(obs, kind)
        token = CURRENT.set(obs)
        try:
            stream = await call(*args, **kwargs)
        except BaseException as exc:
            self._open_failed(obs, kind, exc)
            return None
        finally:
            CURRENT.reset(token)
        return self._opened(obs, kind, stream)

    def abandoned(self, obs: StreamObservation) -> None:
        """The consumer closed or dropped the stream. Complete if the answer was already whole."""
        if obs.ended:
            return
        try:
            complete = (
                obs.terminal is not None
                if obs.operation == "responses"
                else bool(obs.done_seen) or bool(obs.finish_reasons)
            )
            if complete and obs.in_stream_error is None:
                self.finish(obs, "completed", None)
            else:
                self.finish(obs, "abandoned", None)
        except Exception:
            self.internal_error("finish")

    def _note_in_stream_rate_limit(self, obs: StreamObservation, failure: Failure) -> None:
        # In-stream rate-limit/quota errors, retried or final; HTTP 429s are counted per attempt.
        if failure.reason is not None and failure.rate_limit_kind is not None:
            obs.labels.record_rate_limit(failure.rate_limit_kind)
            logs.rate_limited(obs, kind=failure.rate_limit_kind, status=None)

    def finish(self, obs: StreamObservation, outcome: Any, failure: Failure | None) -> None:
        """Classify once and hand the observation to every sink, each guarded on its own."""
        if obs.ended:
            return
        obs.ended = True
        end = perf_counter()
        if self.watchdog.enabled:
            self.watchdog.unwatch(obs)
        obs.outcome = outcome
        if failure is not None:
            obs.error_type = failure.error_type
            obs.reason = failure.reason
        try:
            if failure is not None:
                self._note_in_stream_rate_limit(obs, failure)
            obs.labels.record_stream(obs, end)
        except Exception:
            self.internal_error("metrics")
        if obs.breaker is not None and obs.permit is not None:
            try:
                before = obs.breaker.state
                Circuits.report(obs.breaker, obs.permit, outcome, failure, obs, end)
                after = obs.breaker.state
                if after is not before:
                    obs.anomalies.append(
                        Anomaly(
                            "circuit_state",
                            end - obs.start,
                            {
                                "streamsentinel.breaker": obs.breaker.name,
                                "streamsentinel.from_state": before.value,
                                "streamsentinel.to_state": after.value,
                            },
                        )
                    )
            except Exception:
                self.internal_error("breaker")
        try:
            tracing.end_span(obs, end, capture_content=self.settings.capture_content)
        except Exception:
            self.internal_error("tracing")
        try:
            logs.finished(obs, end - obs.start, capture_content=self.settings.capture_content)
        except Exception:
            self.internal_error("logging")

    # -- opt-in per-chunk extras -----------------------------------------------------------------

    def chunk_extras(self, obs: StreamObservation, gap: float | None, texts: list[str]) -> None:
        """DEBUG ``stream.chunk`` lines and ``chunk_events="all"`` span events (off by default).
        ``gap`` is None for the first item; ``texts`` is the text this item carried."""
        if obs.debug:
            logs.chunk(obs, gap)
        if self.settings.chunk_events == "all":
            attributes: dict[str, Any] = {"streamsentinel.chunk": obs.chunks}
            if gap is not None:
                attributes["streamsentinel.gap"] = gap
            if self.settings.capture_content and texts:
                attributes["streamsentinel.text"] = "".join(texts)
            obs.span.add_event("streamsentinel.chunk", attributes)


_NO_REQUEST = httpx2.Request("POST", "http://unknown")
