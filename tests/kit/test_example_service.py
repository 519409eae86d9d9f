"""``examples/relay_service``, a Starlette service that knows nothing of streamsentinel, run end to end
in a real uvicorn process: once under ``streamsentinel run`` (its ``/metrics`` checked against the
chaos server's ground truth), once under ``opentelemetry-instrument``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec, Outcome
from streamsentinel.demo.accounting import ground_truth_rows, logical_requests
from streamsentinel.demo.scrape import Scrape

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[2]
APP = "examples.relay_service.app:app"
CHUNKS = 5
REQUESTS = 40
CLIENTS = 8
DEADLINE = 20.0  # seconds for a process to start listening / stop


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _env(chaos: ChaosServer, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STREAMSENTINEL_", "OTEL_", "OPENAI_")) and k != "PYTHONPATH"
    }
    env.update(OPENAI_BASE_URL=chaos.base_url, OPENAI_API_KEY="test-key", RELAY_MAX_RETRIES="2")
    env.update(extra)
    return env


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Retry a connect until the port accepts, the process dies or the deadline passes (between
    attempts, wait on the process itself, so a crash is seen at once)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on {port} after {DEADLINE}s") from None
        try:
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"service exited with {proc.returncode}:\n{log.read_text()}")


Start = Callable[[Sequence[str], dict[str, str], int], None]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Start]:
    """Start a service (cwd: the repository root) and wait until it listens; SIGTERM it at the end
    and check it stopped cleanly and reported no streamsentinel start-up failure."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(argv: Sequence[str], env: dict[str, str], port: int) -> None:
        log = tmp_path / f"service-{len(started)}.stderr"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        started.append((proc, log))
        _wait_listening(proc, port, log)

    yield start
    for proc, log in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        reports = [line for line in log.read_text().splitlines() if line.startswith("streamsentinel:")]
        # uvicorn >= 0.29 shuts down gracefully, then re-raises the signal.
        assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()
        assert reports == []
        assert "Address already in use" not in log.read_text()  # only run serves /metrics


@dataclass(frozen=True)
class Relayed:
    """What one client of the service read from its SSE answer."""

    request_id: str
    text: str
    error: str | None
    done: bool
    pid: str = ""  # the worker process that answered (x-relay-pid)


def _chat(port: int, prompt: str, request_id: str) -> Relayed:
    body = json.dumps({"prompt": prompt, "request_id": request_id}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/chat", data=body, headers={"content-type": "application/json"}
    )
    text: list[str] = []
    error: str | None = None
    done = False
    event = "message"
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers.get_content_type() == "text/event-stream"
        pid = response.headers.get("x-relay-pid", "")
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if not line:
                event = "message"
            elif line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
                if event == "error":
                    error = json.loads(data)["error"]
                elif data == "[DONE]":
                    done = True
                else:
                    text.append(json.loads(data)["content"])
    return Relayed(request_id, "".join(text), error, done, pid)


def _prompt(index: int) -> str:
    return f"relay request {index}"


def test_service_under_run_matches_ground_truth(start_service: Start) -> None:
    plan = FaultPlan(
        weights={
            Fault.NONE: 6,
            Fault.EOF_CHUNKED: 1,
            Fault.RESET: 1,
            Fault.SERVER_ERROR: 1,
            Fault.RATE_LIMIT_REQUESTS: 1,
        },
        # req-0, alone: a 500 and both SDK retries 500 too (failed); then one stream reset
        # before its first event (failed, no retry); then the seeded mix.
        script=[*[Fault.SERVER_ERROR] * 3, FaultSpec(fault=Fault.RESET, after=0, retry_after_ms=1)],
        seed=7,
        template=FaultSpec(retry_after_ms=1),
    )
    with ChaosServer(plan=plan, chunks=CHUNKS) as chaos:
        port, metrics_port = _free_port(), _free_port()
        argv = [
            _bin("streamsentinel"),
            "run",
            "--metrics-port",
            str(metrics_port),
            "--",
            sys.executable,
            "-m",
            "uvicorn",
            APP,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        start_service(argv, _env(chaos, STREAMSENTINEL_RETRY_ATTEMPTS="1"), port)
        results = [_chat(port, _prompt(0), "req-0")]
        with ThreadPoolExecutor(CLIENTS) as pool:
            results += pool.map(lambda i: _chat(port, _prompt(i), f"req-{i}"), range(1, REQUESTS))
        # Every attempt has arrived (each client read its answer to the end); wait until all are logged.
        records = chaos.wait_for_records(chaos.arrivals)
        scrape = Scrape.fetch(f"http://127.0.0.1:{metrics_port}/metrics")

    groups = {g[0].client_request_id: g for g in logical_requests(records)}
    finals = {request_id: g[-1] for request_id, g in groups.items()}
    assert set(finals) == {r.request_id for r in results}
    assert len(results) == REQUESTS
    # The plan's mix actually happened: clean, cut, reset, retried and given-up requests.
    assert {r.fault for r in records} == {
        Fault.NONE,
        Fault.EOF_CHUNKED,
        Fault.RESET,
        Fault.SERVER_ERROR,
        Fault.RATE_LIMIT_REQUESTS,
    }
    assert [(r.fault, r.retry_count) for r in groups["req-0"]] == [(Fault.SERVER_ERROR, n) for n in range(3)]
    assert {str(f.expected_outcome) for f in finals.values()} == {"completed", "truncated", "failed"}

    # Logical requests, outcomes, truncations by reason, errors, rate-limit events by kind and SDK
    # retries, as /metrics counted them vs what the chaos server did.
    bad = [row for row in ground_truth_rows(records, scrape) if not row.ok]
    assert bad == []
    assert scrape.total("openai_stream_retries_total", layer="sentinel") == 0
    assert scrape.total("openai_stream_in_flight") == 0
    assert scrape.total("openai_stream_instrumentation_errors_total") == 0

    # The service's clients: an error event for exactly the requests that did not complete, [DONE]
    # and the whole generated text for the others; a silent cut reached them as StreamTruncatedError.
    for result in results:
        final = finals[result.request_id]
        completed = final.expected_outcome is Outcome.COMPLETED
        assert (result.error is None, result.done) == (completed, completed), (result, final)
        if completed:
            messages = [{"role": "user", "content": _prompt(int(result.request_id[4:]))}]
            assert result.text == chaos.expected_text({"messages": messages})
        elif final.fault is Fault.EOF_CHUNKED:
            assert result.error == "StreamTruncatedError"
        elif final.fault is Fault.RESET:
            assert result.error == "APIConnectionError"
        elif final.fault is Fault.SERVER_ERROR:
            assert result.error == "InternalServerError"


@pytest.mark.parametrize("mode", ["default", "protect"])
def test_service_under_opentelemetry_instrument(start_service: Start, mode: str) -> None:
    # The first stream is cut cleanly before [DONE] (the plain SDK would end it silently), the
    # second is clean. The entry point observes by default (an OpenTelemetry instrumentation does
    # not change behaviour): the cut ends as the SDK ends it; STREAMSENTINEL_MODE=protect raises.
    plan = FaultPlan(script=[FaultSpec(fault=Fault.EOF_CHUNKED, after=3)])
    with ChaosServer(plan=plan, chunks=CHUNKS) as chaos:
        port = _free_port()
        argv = [
            _bin("opentelemetry-instrument"),
            sys.executable,
            "-m",
            "uvicorn",
            APP,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        env = _env(
            chaos,
            OTEL_TRACES_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            STREAMSENTINEL_RETRY_ATTEMPTS="1",
            **({"STREAMSENTINEL_MODE": "protect"} if mode == "protect" else {}),
        )
        start_service(argv, env, port)
        cut = _chat(port, "cut", "otel-1")
        clean = _chat(port, "clean", "otel-2")
        records = chaos.wait_for_records(2)

    assert [(r.client_request_id, r.fault) for r in records] == [
        ("otel-1", Fault.EOF_CHUNKED),
        ("otel-2", Fault.NONE),
    ]
    if mode == "protect":
        assert (cut.error, cut.done) == ("StreamTruncatedError", False)
    else:
        assert (cut.error, cut.done) == (None, True)
    assert cut.text  # the deltas before the cut were relayed
    messages = [{"role": "user", "content": "clean"}]
    assert clean == Relayed("otel-2", chaos.expected_text({"messages": messages}), None, True, clean.pid)


MAX_REQUESTS = 3  # per worker process, then the server replaces it
PREFORK = {
    "uvicorn": [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}",
                "--workers", "2", "--limit-max-requests", str(MAX_REQUESTS)],
    "gunicorn": [_bin("gunicorn"), "--workers", "2", "--worker-class", "uvicorn.workers.UvicornWorker",
                 "--bind", "127.0.0.1:{port}", "--max-requests", str(MAX_REQUESTS), APP],
}  # fmt: skip


@pytest.mark.parametrize("server", sorted(PREFORK))
def test_prefork_service_under_run_counts_every_worker(start_service: Start, server: str) -> None:
    """Two workers, each replaced after a few requests: run's /metrics (served by run itself from the
    multiprocess directory it made) counts every stream of every worker, dead ones included."""
    if server == "gunicorn":
        pytest.importorskip("gunicorn")
    plan = FaultPlan(script=[Fault.NONE, Fault.EOF_CHUNKED] * 100)
    with ChaosServer(plan=plan, chunks=CHUNKS) as chaos:
        port, metrics_port = _free_port(), _free_port()
        argv = [_bin("streamsentinel"), "run", "--metrics-port", str(metrics_port), "--"]
        argv += [arg.format(port=port) for arg in PREFORK[server]]
        # Half the streams are cut: on a loaded machine a worker can serve 20+ requests before it sees
        # its request limit, and its breaker would then open (50 % failures) and reject calls that
        # never reach the server. The breaker is not what this test is about.
        env = _env(
            chaos, RELAY_MAX_RETRIES="0", STREAMSENTINEL_RETRY_ATTEMPTS="1", STREAMSENTINEL_BREAKER_MODE="off"
        )
        start_service(argv, env, port)
        # Until three worker processes answered: two at once at most, so one of them was replaced.
        results: list[Relayed] = []
        while len({r.pid for r in results}) < 3:
            assert len(results) < 200, {r.pid for r in results}
            results.append(_chat(port, f"prefork {len(results)}", f"pf-{len(results)}"))
        try:
            records = chaos.wait_for_records(len(results))
        except TimeoutError as err:
            raise AssertionError(f"{err}; the service's answers: {results}") from None
        scrape = Scrape.fetch(f"http://127.0.0.1:{metrics_port}/metrics")

    assert scrape.total("openai_stream_requests_total") == len(results)
    assert scrape.by("openai_stream_requests_total", "outcome") == {
        "completed": sum(r.error is None for r in results),
        "truncated": sum(r.error == "StreamTruncatedError" for r in results),
    }
    assert [r.error for r in results] == [None, "StreamTruncatedError"] * (len(results) // 2) + [None] * (
        len(results) % 2
    )
    assert [row for row in ground_truth_rows(records, scrape) if not row.ok] == []
    assert scrape.total("openai_stream_in_flight") == 0
