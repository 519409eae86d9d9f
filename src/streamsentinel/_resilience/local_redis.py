"""A private ``redis-server`` for demos (``streamsentinel demo --scenario fleet``) and benchmarks, and
the fleet accounting a demo prints: what the fleet's Redis says about a breaker.

Usage::

    with LocalRedis() as redis_url:          # redis-server on 127.0.0.1, a free port, no persistence
        ... start workers with instrument(redis_url=redis_url) ...
        print(breaker_snapshot(redis_url, "127.0.0.1/gpt-4o-mini"))
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Any

from .fleet import DEFAULT_PREFIX, import_redis


class LocalRedis:
    """``redis-server`` on 127.0.0.1 and a free port, ``--save '' --appendonly no`` in a temporary
    directory; stopped (and the directory removed) on exit. Raises ``FileNotFoundError`` without a
    ``redis-server`` on PATH (Debian: ``apt-get install redis-server``)."""

    def __init__(self, port: int = 0, *, ready_timeout: float = 30.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH (apt-get install redis-server)")
        self.binary = binary
        self.port = port or _free_port()
        self.ready_timeout = ready_timeout
        self.dir: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.dir = tempfile.mkdtemp(prefix="streamsentinel-redis-")
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.binary, *args, "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        redis = import_redis()
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        deadline = time.monotonic() + self.ready_timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}")
                try:
                    if client.ping():
                        return self.url
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise
                time.sleep(0.02)  # polling readiness
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
            self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def breaker_snapshot(redis_url: str, name: str, prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """The fleet's breaker ``name`` as Redis holds it: ``state``, ``version`` (transitions so far),
    ``openings`` (consecutive, since last closed), ``probes_leased`` / ``probe_results`` (this
    half-open round) and ``votes`` (processes whose window tripped). For a demo's accounting row:
    probes leased fleet-wide vs requests the fault server received."""
    redis = import_redis()
    client = redis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        raw = client.hgetall(f"{prefix}breaker:{name}")
    finally:
        client.close()
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    return {
        "state": fields.get("st", "closed"),
        "version": int(fields.get("ver", 0)),
        "openings": int(fields.get("att", 0)),
        "probes_leased": int(fields.get("leased", 0)),
        "probe_results": int(fields.get("res", 0)),
        "votes": sum(1 for k in fields if k.startswith("v:")),
    }
