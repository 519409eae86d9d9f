"""Which HTTP client library built a response or raised an exception.

openai 3.x runs on its own ``httpx2`` or on a legacy ``httpx`` client an application passes as
``http_client`` (litellm does on every call). The two share an API but no classes: a byte stream
put back on a legacy response must subclass legacy ``httpx.SyncByteStream`` (``httpx2``'s is refused
with a ``RuntimeError``), and a legacy timeout is no ``httpx2.TimeoutException``. Every place that
touches a response body or classifies a transport exception asks here. Legacy ``httpx`` is never
imported by streamsentinel: it is looked up in ``sys.modules``, where an application using it put it.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType
from typing import Any, TypeVar

import httpx2

__all__ = ["HttpLibrary", "is_connect_timeout", "is_timeout", "libraries", "of_response"]

T = TypeVar("T")


class HttpLibrary:
    """One HTTP client library (``httpx2`` or legacy ``httpx``): the classes streamsentinel uses."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.name: str = module.__name__
        self.response: type = module.Response
        self.sync_byte_stream: type = module.SyncByteStream
        self.async_byte_stream: type = module.AsyncByteStream
        self.timeout_exception: type = module.TimeoutException
        self.connect_timeout: type = module.ConnectTimeout
        self._streams: dict[tuple[type, bool, bool], type] = {}
        self._lock = threading.Lock()

    def byte_stream(self, body: type[T], *, sync: bool, async_: bool) -> type[T]:
        """``body`` (a class defining ``__iter__``/``close`` and/or ``__aiter__``/``aclose``) as a
        sync and/or async byte stream of this library; built once per ``body``."""
        key = (body, sync, async_)
        cls = self._streams.get(key)
        if cls is None:
            bases = (body, *((self.sync_byte_stream,) if sync else ()))
            bases += (self.async_byte_stream,) if async_ else ()
            with self._lock:
                cls = self._streams.get(key)
                if cls is None:
                    cls = type(body.__name__, bases, {"__module__": body.__module__})
                    self._streams[key] = cls
        return cls  # a subclass of body, built with type()


_HTTPX2 = HttpLibrary(httpx2)
_legacy: HttpLibrary | None = None  # built the first time legacy httpx is found loaded


def libraries() -> tuple[HttpLibrary, ...]:
    """``httpx2``, then legacy ``httpx`` when the application has imported it."""
    global _legacy
    module = sys.modules.get("httpx")
    if module is None:
        return (_HTTPX2,)
    legacy = _legacy
    if legacy is None or legacy.module is not module:
        try:
            legacy = _legacy = HttpLibrary(module)
        except AttributeError:  # not the legacy httpx (a stub of that name): nothing built by it
            return (_HTTPX2,)
    return (_HTTPX2, legacy)


def of_response(response: Any) -> HttpLibrary | None:
    """The library whose ``Response`` ``response`` is; None for anything else (a test double,
    another library: its body is then left untouched)."""
    for library in libraries():
        if isinstance(response, library.response):
            return library
    return None


def is_timeout(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a ``TimeoutException`` of either library (connect, read, write, pool)."""
    return exc is not None and any(isinstance(exc, lib.timeout_exception) for lib in libraries())


def is_connect_timeout(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a ``ConnectTimeout`` of either library."""
    return exc is not None and any(isinstance(exc, lib.connect_timeout) for lib in libraries())
