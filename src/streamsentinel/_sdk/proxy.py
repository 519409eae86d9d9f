"""The stream proxies and their two I/O drivers over the sans-IO ``StreamController``.

``ObservedStream`` / ``ObservedAsyncStream`` are ``wrapt.ObjectProxy`` subclasses, so the consumer
keeps ``isinstance(stream, openai.Stream)``, ``stream.response`` and every other attribute. Each
read goes: proxy -> driver -> the SDK's item generator (``compat.items_of``) ->
``controller.on_item`` (where a chunk is observed). The drivers decide nothing: they read, wait
and reopen when the controller says so, and hand out ``controller.out`` then ``controller.final``
(an item is either returned by ``on_item`` or queued in ``out``: the drivers never re-order). The
one controller field a driver writes is ``s.read_at``, stamped around each read (see
``state.StreamState``).
A wait before reopening ends as soon as the consumer closes the stream (from another thread or
task): the controller's ``wake``.
The sync driver is a generator (its locals stay in place between items); the async one is a
class with an ``async def __anext__``, not an async generator: nothing for the event loop to
finalize.

Like the SDK's ``Stream.__iter__``, ``__iter__`` returns the stream itself, so breaking out of a
``for`` loop and iterating again resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Iterator
from time import perf_counter
from typing import Any

import wrapt

from .._core.controller import SKIP, STOP, StreamController
from .._core.reaper import REAPER
from . import compat
from .sse import ObservedSSEDecoder


def adopt(ctl: StreamController, stream: Any) -> None:
    """Hand the controller what a new SDK stream tells about the wire: its response, the decoder
    hook's view (None when another decoder is in place) and whether the body is declared SSE."""
    try:
        decoder = compat.decoder_of(stream)
        response = stream.response
        content_type = compat.header(response.headers, b"content-type") or ""
        wire = decoder if isinstance(decoder, ObservedSSEDecoder) else None
        ctl.adopt(response, wire, "text/event-stream" in content_type)
    except Exception as exc:
        ctl.fx.count_error("adopt", exc)


def _hand_out(ctl: StreamController, stop: type[BaseException]) -> Any:
    """The next queued item, else the final exception (once; later reads end the iterator)."""
    if ctl.out:
        return ctl.out.pop(0)
    final, ctl.final = ctl.final, STOP
    raise (stop() if final is STOP else final)


def _pause(ctl: StreamController, delay: float) -> None:
    """Wait ``delay`` seconds before opening the stream again, or until ``close()`` (another
    thread's) wakes it: ``ctl.wake`` is set before ``ctl.closed`` is read, which ``ctl.closing``
    sets before it reads ``ctl.wake``, so no close is missed."""
    woken = threading.Event()
    ctl.wake = woken.set
    try:
        if not ctl.closed:
            woken.wait(delay)
    finally:
        ctl.wake = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _apause(ctl: StreamController, delay: float) -> None:
    """:func:`_pause` on the event loop; ``close()`` may come from another task (or thread)."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(_resolve, woken)
        except RuntimeError:  # the loop is closed: nothing waits on it any more
            pass

    ctl.wake = wake
    try:
        if not ctl.closed:
            await asyncio.wait((woken,), timeout=delay)
    finally:
        ctl.wake = None


def _switch(ctl: StreamController, proxy_ref: weakref.ref[Any], stream: Any) -> Any:
    """The next attempt's stream is read from now on; None if the consumer closed the stream
    while it opened (the caller closes it)."""
    if not ctl.reopened(stream):
        return None
    adopt(ctl, stream)
    proxy = proxy_ref()
    if proxy is not None:  # the consumer's `stream.response` etc. now refer to the new stream
        proxy.__wrapped__ = stream
    return stream


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except Exception:
        pass


class _ProxyRef:
    """A weak reference to the consumer's proxy, kept out of frame locals: a traceback's locals are
    repr()'d by loggers, and a weakref's repr asks the (proxied) referent for its class."""

    __slots__ = ("ref",)

    def __init__(self, proxy: Any) -> None:
        self.ref = weakref.ref(proxy)


def _sync_drive(ctl: StreamController, stream: Any, proxy: _ProxyRef) -> Iterator[Any]:
    """The sync driver: a generator, so each item resumes it with its locals in place (no frame
    to build per item). Nothing to finalize: a generator dropped at a ``yield`` holds no lock."""
    next_item = compat.items_of(stream).__next__
    out = ctl.out  # the controller's queue (mutated, never replaced)
    on_item = ctl.on_item
    s = ctl.s
    while True:
        while out:  # released or flushed items go first
            yield out.pop(0)
        final = ctl.final
        if final is not None:
            ctl.final = STOP
            if final is STOP:
                return
            raise final
        s.read_at = perf_counter()  # a read is pending (the watchdog, and a consumer giving up)
        try:
            item = next_item()
        except StopIteration:
            s.read_at = 0.0
            delay = ctl.on_eof()
        except BaseException as exc:
            delay = ctl.on_error(exc)
            s.read_at = 0.0
        else:
            s.read_at = 0.0
            item = on_item(item)
            if item is SKIP:  # held, skipped, or queued in ``out`` behind released items
                continue
            yield item
            continue
        if delay is not None:
            try:
                _pause(ctl, delay)
                call = ctl.next_call()
            except BaseException as exc:  # escaping would end this generator without a record
                ctl.wait_interrupted(exc)
                continue
            if call is None:  # closed while waiting
                continue
            tokens = ctl.enter()
            try:
                opened = call()
            except BaseException as exc:
                ctl.reopen_failed(exc)
                continue
            finally:
                ctl.exit(tokens)
            switched = _switch(ctl, proxy.ref, opened)
            if switched is None:  # closed while it opened
                _close_quietly(opened)
                continue
            next_item = compat.items_of(switched).__next__


class _AsyncDriver:
    # The items' source, not its bound __anext__: an open stream keeps one object fewer.
    __slots__ = ("ctl", "items", "proxy")

    def __init__(self, ctl: StreamController, stream: Any, proxy: Any) -> None:
        self.ctl = ctl
        self.items = compat.items_of(stream)
        self.proxy = weakref.ref(proxy)

    async def __anext__(self) -> Any:
        ctl = self.ctl
        if ctl.out:  # released or flushed items go first
            return ctl.out.pop(0)
        s = ctl.s
        while ctl.final is None:
            s.read_at = perf_counter()  # a read is pending (the watchdog, and a consumer giving up)
            try:
                item = await self.items.__anext__()
            except StopAsyncIteration:
                s.read_at = 0.0
                delay = ctl.on_eof()
            except BaseException as exc:
                delay = ctl.on_error(exc)
                s.read_at = 0.0
            else:
                s.read_at = 0.0
                item = ctl.on_item(item)
                if item is SKIP:  # held, skipped, or queued in ``out`` behind released items
                    if ctl.out:
                        return ctl.out.pop(0)
                    continue
                return item
            if delay is not None:
                try:
                    await _apause(ctl, delay)
                    call = ctl.next_call()
                except BaseException as exc:  # as the sync driver: the request ends with it
                    ctl.wait_interrupted(exc)
                    continue
                if call is None:  # closed while waiting
                    continue
                tokens = ctl.enter()
                try:
                    stream = await call()
                except BaseException as exc:
                    ctl.reopen_failed(exc)
                    continue
                finally:
                    ctl.exit(tokens)
                switched = _switch(ctl, self.proxy, stream)
                if switched is None:  # closed while it opened
                    try:
                        await stream.close()
                    except Exception:
                        pass
                    continue
                self.items = compat.items_of(switched)
        return _hand_out(ctl, StopAsyncIteration)


# Each proxy's read function (its driver), by the proxy's id. Reading an attribute of a
# wrapt.ObjectProxy subclass goes through its __getattr__ hook (a few thousand CPU instructions);
# the per-item path does not pay that: it finds the driver here. The entry goes with the proxy.
_READS: dict[int, Any] = {}


class ObservedBase(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """What both proxies share: the controller, and a finalizer that never ends a stream itself
    (it queues the controller for the reaper thread: a finalizer may run under any lock)."""

    def __init__(self, wrapped: Any, ctl: StreamController) -> None:
        super().__init__(wrapped)
        self._self_ctl = ctl

    def __del__(self) -> None:
        _READS.pop(id(self), None)
        ctl = self._self_ctl
        if not ctl.ended:
            REAPER.put(ctl)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {object.__repr__(self.__wrapped__)}>"


class ObservedStream(ObservedBase):
    """A synchronous ``openai.Stream`` under observation."""

    def __init__(self, wrapped: Any, ctl: StreamController) -> None:
        super().__init__(wrapped, ctl)
        _READS[id(self)] = _sync_drive(ctl, wrapped, _ProxyRef(self)).__next__

    def __iter__(self) -> ObservedStream:
        # The proxy itself: a `for` over `create(...)` holds only what iter() returned, and the
        # proxy must stay alive (its finalizer means "abandoned").
        return self

    def __next__(self) -> Any:
        return _READS[id(self)]()

    def __enter__(self) -> ObservedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        ctl = self._self_ctl
        ctl.closing()  # first: a read the close breaks must not be retried
        try:
            self.__wrapped__.close()
        finally:
            ctl.on_close()


class ObservedAsyncStream(ObservedBase):
    """An ``openai.AsyncStream`` under observation."""

    def __init__(self, wrapped: Any, ctl: StreamController) -> None:
        super().__init__(wrapped, ctl)
        _READS[id(self)] = _AsyncDriver(ctl, wrapped, self)

    def __aiter__(self) -> ObservedAsyncStream:
        return self  # see ObservedStream.__iter__

    def __anext__(self) -> Awaitable[Any]:
        return _READS[id(self)].__anext__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> ObservedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        ctl = self._self_ctl
        ctl.closing()  # see ObservedStream.close
        try:
            await self.__wrapped__.close()
        finally:
            ctl.on_close()

    async def aclose(self) -> None:
        await self.close()
