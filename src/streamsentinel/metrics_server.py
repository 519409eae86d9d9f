"""Serving ``/metrics`` for Prometheus to scrape."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server


def start_metrics_server(
    port: int = 9464, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` (default: the global one) in Prometheus text format on ``http://addr:port/``.

    Binds 127.0.0.1 unless told otherwise (``prometheus_client.start_http_server`` alone would bind
    0.0.0.0). Port 0 picks a free port: read it from ``server.server_port``.

    Returns:
        ``(server, thread)``; stop with ``server.shutdown(); server.server_close()``.

    Raises:
        OSError: the address is in use or cannot be bound.
    """
    return start_http_server(port, addr=addr, registry=REGISTRY if registry is None else registry)
