"""prometheus_client multiprocess mode: streams observed in separate worker processes are served
together, and the in-flight gauge sums live workers (``multiprocess_mode="livesum"``)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streamsentinel.chaos import ChaosServer
from streamsentinel.metrics_server import multiprocess_registry, prune_dead_processes

WORKER = """
import sys, openai, streamsentinel
streamsentinel.instrument(retry_attempts=1)
client = openai.OpenAI(base_url=sys.argv[1], api_key="k", max_retries=0)
with client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
) as stream:
    print(sum(1 for _ in stream))
"""

SERVER = """
import sys, streamsentinel
server, _ = streamsentinel.start_metrics_server(0)
print(server.server_port, flush=True)
sys.stdin.read()  # serve until the test closes our stdin
"""


def test_workers_metrics_are_served_together(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    with ChaosServer(chunks=3) as chaos:
        for _ in range(2):  # two "workers", one stream each
            done = subprocess.run(
                [sys.executable, "-c", WORKER, chaos.base_url],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.splitlines()[-1] == "5"  # role chunk, 3 words, finish chunk
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
    values = {
        (s.name, s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in ("openai_stream_requests_total", "openai_stream_chunks_total", "openai_stream_in_flight")
    }
    assert values[("openai_stream_requests_total", "completed")] == 2
    assert values[("openai_stream_chunks_total", None)] == 10
    assert values[("openai_stream_in_flight", None)] == 0  # livesum: the workers are gone


# A worker that dies in the middle of a stream (no chance to decrement the in-flight gauge).
DIES = """
import os, sys, openai, streamsentinel
streamsentinel.instrument(retry_attempts=1)
client = openai.OpenAI(base_url=sys.argv[1], api_key="k", max_retries=0)
stream = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
)
next(iter(stream))
print(os.getpid(), flush=True)
os._exit(0)
"""


def _in_flight(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "openai_stream_in_flight"
    )


def test_live_gauges_of_dead_workers_are_pruned(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    with ChaosServer(chunks=3) as chaos:
        done = subprocess.run(
            [sys.executable, "-c", DIES, chaos.base_url], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout)
    plain = multiprocess_registry(str(tmp_path))
    assert plain is not None and _in_flight(plain) == 1  # the dead worker's stream, still "in flight"
    pruning = multiprocess_registry(str(tmp_path), prune_dead=True)
    assert pruning is not None and _in_flight(pruning) == 0
    assert prune_dead_processes(str(tmp_path)) == []  # already gone
    assert not list(tmp_path.glob(f"gauge_live*_{pid}.db"))
