"""Serving ``/metrics`` for Prometheus to scrape, in one process or across a pre-fork server's workers."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RUN_SERVES_ENV = "STREAMSENTINEL_RUN_METRICS"  # set by `streamsentinel run` when it serves /metrics

_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, someone else's
        return True
    return True


def prune_dead_processes(path: str) -> list[int]:
    """Drop the ``live*`` gauge files of processes that no longer exist from ``path`` (what
    ``mark_process_dead`` in gunicorn's ``child_exit`` hook would do); returns their PIDs. Only
    safe when every writer to ``path`` runs in this PID namespace (``streamsentinel run``'s own
    directory)."""
    dead = set()
    for name in os.listdir(path):
        match = _LIVE_FILE.fullmatch(name)
        if match and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


class _PruningCollector:
    """A ``MultiProcessCollector`` that first forgets the live gauges of dead processes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._collector = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        prune_dead_processes(self._path)
        metrics: Iterable[Metric] = self._collector.collect()  # type: ignore[no-untyped-call]
        return metrics


def multiprocess_registry(path: str | None = None, prune_dead: bool = False) -> CollectorRegistry | None:
    """A registry that reads every process's metrics in ``path`` (default: ``PROMETHEUS_MULTIPROC_DIR``,
    prometheus_client's multiprocess mode), else None. ``prune_dead``: see
    :func:`prune_dead_processes`."""
    path = path or os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    registry = CollectorRegistry()
    if prune_dead:
        registry.register(_PruningCollector(path))
    else:
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

    Under ``streamsentinel run`` with a metrics port (``STREAMSENTINEL_RUN_METRICS`` set), ``run``
    already serves every process's metrics: this logs that once (``metrics.served_by_run``) and
    binds nothing, so an application that calls it, or each of its pre-fork workers, keeps
    running; the server returned then does nothing.

    Returns:
        ``(server, thread)``; stop with ``server.shutdown(); server.server_close()``.

    Raises:
        OSError: the address is in use or cannot be bound (the message names ``addr:port``).
        ValueError: ``port`` is not an integer in 0..65535.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"start_metrics_server(port={port!r}): expected an integer port in 0..65535")
    served = os.environ.get(RUN_SERVES_ENV)
    if served:
        return _served_by_run(served)
    if registry is None:
        registry = multiprocess_registry() or REGISTRY
    try:
        return start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve /metrics on {addr}:{port}: {exc.strerror or exc}") from exc


class _NoServer:
    """What :func:`start_metrics_server` returns under ``run``: the server's interface, serving nothing."""

    def __init__(self, url: str) -> None:
        self.url = url
        port = url.rsplit(":", 1)[-1].split("/", 1)[0]
        self.server_port = int(port) if port.isdigit() else 0

    def shutdown(self) -> None:
        return None

    def server_close(self) -> None:
        return None


_told = False


def _served_by_run(url: str) -> tuple[WSGIServer, threading.Thread]:
    global _told
    if not _told:
        _told = True
        from ._log import log

        log.warning("metrics.served_by_run", url=url, note="start_metrics_server() serves nothing under run")
    thread = threading.Thread(target=lambda: None, name="streamsentinel-metrics-noop", daemon=True)
    thread.start()
    return _NoServer(url), thread  # type: ignore[return-value]
