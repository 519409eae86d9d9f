"""Proxies for what ``with_raw_response`` / ``with_streaming_response`` return on an observed
``stream=True`` call (``LegacyAPIResponse``, ``APIResponse``, ``AsyncAPIResponse``).

``parse()`` hands out the observed stream proxy (built once, by ``Sentinel.wrap_stream``), so a parsed
stream is observed like any other. Raw access (``iter_bytes``/``iter_text``/``iter_lines``,
``read``/``text``/``json``; legacy ``content``/``text``) is not decoded: the request is recorded once,
``completed`` when the raw read ends without error (a raw stream that ends before ``[DONE]`` is
therefore still ``completed``), else ``failed`` with the exception's classification; a response
closed or dropped before either is ``abandoned``. Every ending is idempotent (``Sentinel.finish``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import wrapt

from .observation import StreamObservation

if TYPE_CHECKING:
    from .sentinel import Sentinel

_UNPARSED: Any = object()


class _RawBase(wrapt.ObjectProxy):  # type: ignore[type-arg]
    def __init__(self, wrapped: Any, obs: StreamObservation, sentinel: Sentinel) -> None:
        super().__init__(wrapped)
        self._self_obs = obs
        self._self_sentinel = sentinel
        self._self_parsed: Any = _UNPARSED

    def __del__(self) -> None:
        # Dropped without parse() or a raw read: abandoned. A parsed stream's own proxy ends it.
        try:
            if self._self_parsed is _UNPARSED:
                self._self_sentinel.abandoned(self._self_obs)
        except Exception:
            pass


def _parsed(proxy: _RawBase, stream: Any) -> Any:
    if proxy._self_parsed is _UNPARSED:
        proxy._self_parsed = proxy._self_sentinel.wrap_stream(proxy._self_obs, stream)
    return proxy._self_parsed


def _raw_end(proxy: _RawBase, exc: BaseException | None) -> None:
    """A raw read ended: ``completed``, ``abandoned`` (closed early) or the classified failure."""
    obs, sentinel = proxy._self_obs, proxy._self_sentinel
    if proxy._self_parsed is not _UNPARSED or obs.ended:
        return
    if exc is None:
        sentinel.finish(obs, "completed", None)
    elif isinstance(exc, GeneratorExit):
        sentinel.abandoned(obs)
    else:
        sentinel.stream_raised(obs, sentinel.raised_failure(obs, exc))


def _read(proxy: _RawBase, read: Callable[[], Any]) -> Any:
    try:
        result = read()
    except BaseException as exc:
        _raw_end(proxy, exc)
        raise
    _raw_end(proxy, None)
    return result


def _iterate(proxy: _RawBase, items: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from items
    except BaseException as exc:
        _raw_end(proxy, exc)
        raise
    _raw_end(proxy, None)


async def _aiterate(proxy: _RawBase, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for item in items:
            yield item
    except BaseException as exc:
        _raw_end(proxy, exc)
        raise
    _raw_end(proxy, None)


class ObservedLegacyResponse(_RawBase):
    """``LegacyAPIResponse`` (``with_raw_response``): ``parse()`` is sync for both clients."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return _parsed(self, self.__wrapped__.parse(*args, **kwargs))

    @property
    def content(self) -> Any:
        return _read(self, lambda: self.__wrapped__.content)

    @property
    def text(self) -> Any:
        return _read(self, lambda: self.__wrapped__.text)


class ObservedAPIResponse(_RawBase):
    """``APIResponse`` (``with_streaming_response`` of a sync client)."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return _parsed(self, self.__wrapped__.parse(*args, **kwargs))

    def read(self) -> Any:
        return _read(self, self.__wrapped__.read)

    def text(self) -> Any:
        return _read(self, self.__wrapped__.text)

    def json(self) -> Any:
        return _read(self, self.__wrapped__.json)

    def iter_bytes(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return _iterate(self, self.__wrapped__.iter_bytes(*args, **kwargs))

    def iter_text(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return _iterate(self, self.__wrapped__.iter_text(*args, **kwargs))

    def iter_lines(self) -> Iterator[Any]:
        return _iterate(self, self.__wrapped__.iter_lines())

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_sentinel.abandoned(self._self_obs)


class ObservedAsyncAPIResponse(_RawBase):
    """``AsyncAPIResponse`` (``with_streaming_response`` of an async client): async ``parse()``."""

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return _parsed(self, await self.__wrapped__.parse(*args, **kwargs))

    async def _self_read(self, name: str) -> Any:
        try:
            result = await getattr(self.__wrapped__, name)()
        except BaseException as exc:
            _raw_end(self, exc)
            raise
        _raw_end(self, None)
        return result

    async def read(self) -> Any:
        return await self._self_read("read")

    async def text(self) -> Any:
        return await self._self_read("text")

    async def json(self) -> Any:
        return await self._self_read("json")

    def iter_bytes(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return _aiterate(self, self.__wrapped__.iter_bytes(*args, **kwargs))

    def iter_text(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return _aiterate(self, self.__wrapped__.iter_text(*args, **kwargs))

    def iter_lines(self) -> AsyncIterator[Any]:
        return _aiterate(self, self.__wrapped__.iter_lines())

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_sentinel.abandoned(self._self_obs)
