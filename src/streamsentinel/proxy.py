"""The stream proxies: where each chunk is observed.

``ObservedStream`` / ``ObservedAsyncStream`` are ``wrapt.ObjectProxy`` subclasses, so the consumer
keeps ``isinstance(stream, openai.Stream)``, ``stream.response`` and every other attribute. The
per-chunk work lives in one generator per stream (``_observe`` / ``_aobserve``): its locals are the
cheapest state Python has. Per item it takes one ``perf_counter()``, updates a few slot fields and
calls the operation's chunk reader; metrics, the span and log lines wait for the end of the stream.

Like the SDK's ``Stream.__iter__``, ``__iter__`` hands out an iterator over the same underlying
stream, so breaking out of a ``for`` loop and iterating again resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

import wrapt

from .chunks import ChunkReader
from .observation import Anomaly, StreamObservation
from .resume import Diverged, ReplaySkipper
from .taxonomy import Failure

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .sentinel import Sentinel

_NEVER = float("inf")
# Marks "the read returned an item" where a Failure | None is expected.
_DELIVERED: Any = object()


def _item_seen(obs: StreamObservation, item: Any, sentinel: Sentinel) -> None:
    """The per-item bookkeeping shared by the sync and async loops."""
    now = perf_counter()
    try:
        gap = now - obs.last_at
        obs.last_at = now
        obs.chunks += 1
        if gap > obs.max_gap:
            obs.max_gap = gap
            if gap >= sentinel.gap_alert:
                obs.anomalies.append(Anomaly("gap", now - obs.start, {"streamsentinel.gap": gap}))
        if obs.extras:
            texts = len(obs.text)
            obs.reader(obs, item, now)
            # The first item has no gap (last_at started at +inf); this item's own text only.
            sentinel.chunk_extras(obs, gap if obs.chunks > 1 else None, obs.text[texts:])
        else:
            obs.reader(obs, item, now)
    except Exception:
        sentinel.internal_error("chunk")


def _switch(proxy: weakref.ref[Any], stream: Any) -> None:
    # The consumer's `stream.response` etc. now refer to the new attempt's stream.
    current = proxy()
    if current is not None:
        current.__wrapped__ = stream


def _plan(
    obs: StreamObservation, sentinel: Sentinel, failure: Failure | None, holding: bool
) -> tuple[str, float] | None:
    """After a failure: ``("retry", delay)`` while nothing was delivered, ``("resume", delay)`` after
    output started (if ``resume`` is on), or None to let the failure end the stream."""
    if failure is None:
        return None
    if holding:
        delay = sentinel.retry_delay(obs, failure)
        return None if delay is None else ("retry", delay)
    delay = sentinel.resume_delay(obs, failure)
    return None if delay is None else ("resume", delay)


def _observe(
    next_item: Callable[[], Any], obs: StreamObservation, sentinel: Sentinel, proxy: weakref.ref[Any]
) -> Iterator[Any]:
    seen = _item_seen
    # While retries are possible, items that carry no output yet (role chunk, response.created)
    # are held back: until the first output the consumer has seen nothing, so a retry is safe.
    holding = sentinel.retry_policy.attempts > 1
    held: list[Any] = []
    timed = sentinel.watchdog.enabled  # mark reads for the timeout watchdog (off: no cost)
    skipper: ReplaySkipper | None = None  # a replayed stream's already-delivered part
    broken: Failure | None = None  # the failure a resume is repairing
    while True:
        if timed:
            obs.read_at = perf_counter()
        raised: BaseException | None = None
        try:
            item = next_item()
        except StopIteration:
            if skipper is not None and (short := skipper.unfinished()) is not None:
                raise sentinel.diverged(obs, broken or Failure("other"), short) from None
            failure = sentinel.eof_failure(obs)
        except BaseException as exc:
            raised = exc
            failure = sentinel.raised_failure(obs, exc)
        else:
            failure = _DELIVERED
        if failure is not _DELIVERED:
            plan = _plan(obs, sentinel, failure, holding)
            if plan is not None:
                time.sleep(plan[1])
                stream = sentinel.next_stream(obs, plan[0])
                if stream is not None:
                    if plan[0] == "retry":
                        held.clear()
                    else:
                        skipper, broken = sentinel.replay_skipper(obs), failure
                    _switch(proxy, stream)
                    next_item = stream.__next__
                    continue
            if raised is not None:
                sentinel.stream_raised(obs, failure)
                yield from held  # what the consumer would have had before the error
                raise raised
            error = sentinel.end_of_stream(obs, failure)
            yield from held
            if error is not None:
                raise error from None
            return
        if timed:
            obs.read_at = 0.0
        if skipper is not None:
            try:
                kept = skipper.feed(item)
            except Diverged as diverged:
                raise sentinel.diverged(obs, broken or Failure("other"), diverged) from None
            if kept is None:
                continue
            item = kept
            if skipper.done:
                sentinel.resume_result(obs, "resumed")
                skipper = None
        seen(obs, item, sentinel)
        if holding:
            if obs.first_at is None:
                held.append(item)
                continue
            holding = False
            yield from held
            held.clear()
        yield item


async def _aobserve(
    next_item: Callable[[], Awaitable[Any]],
    obs: StreamObservation,
    sentinel: Sentinel,
    proxy: weakref.ref[Any],
) -> AsyncIterator[Any]:
    seen = _item_seen
    holding = sentinel.retry_policy.attempts > 1  # see _observe, which this mirrors line for line
    held: list[Any] = []
    timed = sentinel.watchdog.enabled
    skipper: ReplaySkipper | None = None
    broken: Failure | None = None
    while True:
        if timed:
            obs.read_at = perf_counter()
        raised: BaseException | None = None
        try:
            item = await next_item()
        except StopAsyncIteration:
            if skipper is not None and (short := skipper.unfinished()) is not None:
                raise sentinel.diverged(obs, broken or Failure("other"), short) from None
            failure = sentinel.eof_failure(obs)
        except BaseException as exc:
            raised = exc
            failure = sentinel.raised_failure(obs, exc)
        else:
            failure = _DELIVERED
        if failure is not _DELIVERED:
            plan = _plan(obs, sentinel, failure, holding)
            if plan is not None:
                await asyncio.sleep(plan[1])
                stream = await sentinel.anext_stream(obs, plan[0])
                if stream is not None:
                    if plan[0] == "retry":
                        held.clear()
                    else:
                        skipper, broken = sentinel.replay_skipper(obs), failure
                    _switch(proxy, stream)
                    next_item = stream.__anext__
                    continue
            if raised is not None:
                sentinel.stream_raised(obs, failure)
                for kept_item in held:
                    yield kept_item
                raise raised
            error = sentinel.end_of_stream(obs, failure)
            for kept_item in held:
                yield kept_item
            if error is not None:
                raise error from None
            return
        if timed:
            obs.read_at = 0.0
        if skipper is not None:
            try:
                kept = skipper.feed(item)
            except Diverged as diverged:
                raise sentinel.diverged(obs, broken or Failure("other"), diverged) from None
            if kept is None:
                continue
            item = kept
            if skipper.done:
                sentinel.resume_result(obs, "resumed")
                skipper = None
        seen(obs, item, sentinel)
        if holding:
            if obs.first_at is None:
                held.append(item)
                continue
            holding = False
            for kept_item in held:
                yield kept_item
            held.clear()
        yield item


class ObservedBase(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """What both proxies share: the observation, the sentinel, the finalizer."""

    def __init__(self, wrapped: Any, obs: StreamObservation, sentinel: Sentinel, reader: ChunkReader) -> None:
        super().__init__(wrapped)
        self._self_obs = obs
        self._self_sentinel = sentinel
        obs.reader = reader
        obs.extras = obs.debug or sentinel.settings.chunk_events == "all"
        # The first gap is measured from the first item: time to first token is not a gap.
        obs.last_at = _NEVER

    def __del__(self) -> None:
        # A stream dropped without close() ends here, exactly once (finish() is idempotent).
        try:
            self._self_sentinel.abandoned(self._self_obs)
        except Exception:
            pass


class ObservedStream(ObservedBase):
    """A synchronous ``openai.Stream`` under observation."""

    def __init__(self, wrapped: Any, obs: StreamObservation, sentinel: Sentinel, reader: ChunkReader) -> None:
        super().__init__(wrapped, obs, sentinel, reader)
        self._self_items = _observe(wrapped.__next__, obs, sentinel, weakref.ref(self))
        self._self_next = self._self_items.__next__

    def __iter__(self) -> ObservedStream:
        # The proxy itself, not the generator: a `for` over `create(...)` holds only what
        # iter() returned, and the proxy must stay alive (its finalizer means "abandoned").
        return self

    def __next__(self) -> Any:
        return self._self_next()

    def __enter__(self) -> ObservedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_sentinel.abandoned(self._self_obs)


class ObservedAsyncStream(ObservedBase):
    """An ``openai.AsyncStream`` under observation."""

    def __init__(self, wrapped: Any, obs: StreamObservation, sentinel: Sentinel, reader: ChunkReader) -> None:
        super().__init__(wrapped, obs, sentinel, reader)
        self._self_items = _aobserve(wrapped.__anext__, obs, sentinel, weakref.ref(self))
        self._self_anext = self._self_items.__anext__

    def __aiter__(self) -> ObservedAsyncStream:
        return self  # see ObservedStream.__iter__

    def __anext__(self) -> Awaitable[Any]:
        return self._self_anext()

    async def __aenter__(self) -> ObservedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_sentinel.abandoned(self._self_obs)

    async def aclose(self) -> None:
        await self.close()
