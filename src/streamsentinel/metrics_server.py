"""Serving ``/metrics`` for Prometheus to scrape, in one process or across a pre-fork server's workers."""

from __future__ import annotations

import os
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_registry() -> CollectorRegistry | None:
    """A registry that reads every process's metrics when ``PROMETHEUS_MULTIPROC_DIR`` is set
    (prometheus_client's multiprocess mode), else None."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def start_metrics_server(
    port: int = 9464, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve metrics in Prometheus text format on ``http://addr:port/`` (any path, ``/metrics`` too).

    ``registry`` defaults to the global one; with ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn,
    ``uvicorn --workers``: prometheus_client's multiprocess mode), to one that aggregates every
    worker's files in that directory. Binds 127.0.0.1 unless told otherwise
    (``prometheus_client.start_http_server`` alone would bind 0.0.0.0). Port 0 picks a free port:
    read it from ``server.server_port``.

    Returns:
        ``(server, thread)``; stop with ``server.shutdown(); server.server_close()``.

    Raises:
        OSError: the address is in use or cannot be bound.
    """
    if registry is None:
        registry = multiprocess_registry() or REGISTRY
    return start_http_server(port, addr=addr, registry=registry)
