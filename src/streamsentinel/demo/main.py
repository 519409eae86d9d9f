"""``streamsentinel demo``: the main job.

Starts the chaos server (or uses ``--base-url`` with ``OPENAI_API_KEY``), serves ``/metrics`` on
127.0.0.1, runs the workload through the real ``openai`` SDK with streamsentinel on, shows progress,
then prints the accounting and ``accounting: OK`` (exit 0) or the mismatching rows (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from wsgiref.simple_server import WSGIServer

import httpx2
import openai
import structlog
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import BreakerConfig, instrument, start_metrics_server, uninstrument
from ..chaos import ChaosServer, Fault, FaultPlan, Recording, load_recordings
from .accounting import Row, breaker_rows, consumer_rows, ground_truth_rows, surfaced_rows
from .scrape import Scrape
from .workload import ConsumerResult, run_workload


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamsentinel demo",
        description="Stream through the real openai SDK against a fault-injecting server and check "
        "that streamsentinel counted exactly what happened.",
    )
    parser.add_argument("--requests", type=_positive_int, default=200, help="streams to run (default 200)")
    parser.add_argument(
        "--concurrency", type=_positive_int, default=8, help="at once, per sync/async half (default 8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="fault plan seed")
    parser.add_argument("--replay", type=Path, help="replay recorded streams from this directory")
    parser.add_argument("--base-url", help="a real OpenAI-compatible endpoint (needs OPENAI_API_KEY)")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument(
        "--metrics-port", type=_port, default=9464, help="serve /metrics here (default 9464; 0: a free port)"
    )
    parser.add_argument(
        "--read-timeout", type=_positive_float, default=1.0, help="client read timeout, s (default 1)"
    )
    parser.add_argument("--serve", action="store_true", help="keep /metrics up after the run")
    parser.add_argument("--log-file", type=Path, help="structlog JSON lines (default: a temp file)")
    parser.add_argument(
        "--scenario",
        choices=["faults", "outage", "clean", "fleet"],
        default="faults",
        help="faults: a seeded mix of every fault; outage: healthy, then every request fails until "
        "the circuit breaker opens, then recovery until it closes again; clean: no fault at all; "
        "fleet: 4 worker processes share one breaker through Redis",
    )
    parser.add_argument(
        "--redis-url", help="fleet scenario: this Redis (default: a private redis-server the demo starts)"
    )
    return parser


def _configure_logging(file: TextIO) -> None:
    # The demo is an application: it configures structlog (the library never does).
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=file),
    )


# The outage scenario's breaker: small numbers so it opens and closes within a short demo.
OUTAGE_BREAKER = BreakerConfig(
    minimum_number_of_calls=10,
    sliding_window_size=20,
    wait_duration_in_open_state=1.0,
    permitted_number_of_calls_in_half_open_state=3,
    timeout_streak_min_seconds=0.0,
)


@dataclass(frozen=True)
class Phase:
    """A stretch of traffic: how many requests, the server's plan (None: keep), a pause before it."""

    name: str
    requests: int
    plan: FaultPlan | None = None
    pause: float = 0.0


def _phases(args: argparse.Namespace, server: ChaosServer | None) -> list[Phase]:
    if args.scenario == "clean" and server is not None:
        return [Phase("clean", args.requests, FaultPlan())]
    if args.scenario == "faults" or server is None:
        return [Phase("faults", args.requests)]
    quarter = max(args.requests // 4, 1)
    return [
        Phase("healthy", quarter, FaultPlan()),
        Phase(
            "outage",
            args.requests - 2 * quarter,
            FaultPlan(weights={Fault.SERVER_ERROR: 1.0}, seed=args.seed),
        ),
        Phase("recovery", quarter, FaultPlan(), pause=OUTAGE_BREAKER.wait_duration_in_open_state + 0.2),
    ]


def _table(rows: Sequence[Row]) -> Table:
    table = Table(title="accounting: ground truth vs streamsentinel")
    for column in ("source", "what", "truth", "streamsentinel", ""):
        table.add_column(column, justify="right" if column in ("truth", "streamsentinel") else "left")
    for row in rows:
        table.add_row(
            row.section,
            row.name,
            str(row.expected),
            str(row.counted),
            "[green]ok[/]" if row.ok else "[bold red]MISMATCH[/]",
        )
    return table


class DemoError(Exception):
    """An expected failure, reported as one line on stderr: ``code`` 2 for a usage error, 1 for a
    run that could not be done."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _load_replay(path: Path) -> list[Recording]:
    if not path.is_dir():
        raise DemoError(f"--replay {path}: no such directory", 2)
    try:
        recordings = load_recordings(path)
    except (OSError, ValueError) as err:
        raise DemoError(f"--replay {path}: {err}", 2) from None
    if not recordings:
        raise DemoError(f"--replay {path}: no recordings in it (NAME.json + NAME.sse pairs)", 2)
    return recordings


def _check_reachable(base_url: str) -> None:
    """Connect once to the endpoint's host and port, so a closed port is one clear line."""
    url = urllib.parse.urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise DemoError(f"--base-url {base_url}: not an http(s) URL", 2)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((url.hostname, port), timeout=10):
            pass
    except (OSError, ValueError) as err:
        raise DemoError(f"cannot connect to {base_url}: {err}", 1) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code (0: accounting OK, 1: mismatch or a failed run, 2: usage,
    130: interrupted). Expected errors are one ``streamsentinel demo: ...`` line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except DemoError as err:
        print(f"streamsentinel demo: {err}", file=sys.stderr, flush=True)
        return err.code
    except KeyboardInterrupt:
        print("streamsentinel demo: interrupted", file=sys.stderr, flush=True)
        return 130


def _fleet(args: argparse.Namespace, console: Console) -> int:
    """``--scenario fleet``: worker processes sharing one breaker (``demo/fleet.py``)."""
    from .._resilience.local_redis import LocalRedis
    from .fleet import run_fleet

    with ChaosServer(FaultPlan(), seed=args.seed) as server, ExitStack() as stack:
        redis_url = args.redis_url
        if not redis_url:
            try:
                redis_url = stack.enter_context(LocalRedis())
            except (FileNotFoundError, RuntimeError) as err:
                raise DemoError(f"{err} (or pass --redis-url)", 2) from None
        console.print(f"target: {server.base_url}   redis: a fleet of 4 worker processes")
        try:
            rows = run_fleet(server.base_url, redis_url, lambda: server.arrivals)
        except RuntimeError as err:
            raise DemoError(str(err), 1) from None
    console.print(_table(rows))
    bad = [row for row in rows if not row.ok]
    if bad:
        console.print(f"[bold red]accounting: MISMATCH[/] in {len(bad)} row(s)")
        return 1
    console.print("[bold green]accounting: OK[/]")
    return 0


def _run(args: argparse.Namespace) -> int:
    console = Console()
    if args.scenario == "fleet":
        return _fleet(args, console)
    recordings: list[Recording] = []
    api_key = "demo-key"  # the fault server takes any key
    if args.base_url:
        api_key = os.environ.get("OPENAI_API_KEY", "")
        if not api_key:
            raise DemoError("--base-url needs OPENAI_API_KEY", 2)
        _check_reachable(args.base_url)
    elif args.replay is not None:
        recordings = _load_replay(args.replay)
    try:
        if args.log_file:
            log_path = args.log_file
            log_file = log_path.open("a", encoding="utf-8")
        else:
            fd, name = tempfile.mkstemp(prefix="streamsentinel-demo-", suffix=".jsonl")
            log_path, log_file = Path(name), os.fdopen(fd, "a", encoding="utf-8")
    except OSError as err:
        raise DemoError(f"--log-file {args.log_file}: {err.strerror or err}", 2) from None
    _configure_logging(log_file)

    # A registry of its own: the accounting must see this run's counts only.
    registry = CollectorRegistry()
    try:
        metrics_server, _thread = start_metrics_server(args.metrics_port, registry=registry)
    except OSError as err:
        raise DemoError(
            f"cannot serve /metrics on 127.0.0.1:{args.metrics_port}: {err.strerror or err} "
            "(--metrics-port N picks another port, 0 a free one)",
            1,
        ) from None
    server: ChaosServer | None = None
    try:
        if args.base_url:
            base_url = args.base_url
        else:
            plan = FaultPlan.default(args.seed)
            plan.replay = bool(recordings)
            server = ChaosServer(plan, seed=args.seed, recordings=recordings).start()
            base_url = server.base_url
        instrument(registry=registry, breaker=OUTAGE_BREAKER if args.scenario == "outage" else None)
        return _traffic_and_accounting(args, console, server, base_url, api_key, metrics_server, log_path)
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()
        uninstrument()
        if server is not None:
            server.stop()


def _traffic_and_accounting(
    args: argparse.Namespace,
    console: Console,
    server: ChaosServer | None,
    base_url: str,
    api_key: str,
    metrics_server: WSGIServer,
    log_path: Path,
) -> int:
    phases = _phases(args, server)
    metrics_url = f"http://127.0.0.1:{metrics_server.server_port}/metrics"
    timeout = httpx2.Timeout(args.read_timeout, connect=5.0)
    console.print(f"target: {base_url}   metrics: {metrics_url}   logs: {log_path}")

    results: list[ConsumerResult] = []
    with Progress(
        TextColumn("streams"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[errors]} ended with an error"),
        console=console,
    ) as progress:
        task = progress.add_task("streams", total=args.requests, errors=0)
        errors = 0
        lock = threading.Lock()

        def on_done(result: ConsumerResult) -> None:
            nonlocal errors
            with lock:
                errors += result.error is not None
                progress.update(task, advance=1, errors=errors)

        for phase in phases:
            if server is not None and phase.plan is not None:
                server.plan = phase.plan
            if phase.pause:
                time.sleep(phase.pause)  # let the open breaker's wait elapse
            results += run_workload(
                requests=phase.requests,
                concurrency=args.concurrency,
                make_sync=lambda: openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout),
                make_async=lambda: openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout),
                model=args.model,
                on_done=on_done,
                first_index=len(results),
            )
    if server is None and not any(r.error is None or r.items for r in results):
        kinds = Counter(r.error for r in results)
        raise DemoError(
            f"no stream got an answer from {base_url}: "
            + ", ".join(f"{count} x {name}" for name, count in kinds.most_common()),
            1,
        )
    rows: list[Row] = []
    try:
        if server is not None:
            records = server.wait_for_records(server.arrivals)
            scrape = Scrape.fetch(metrics_url)
            rows += ground_truth_rows(records, scrape, results)
            rows += surfaced_rows(records, results)
        else:
            scrape = Scrape.fetch(metrics_url)
    except (OSError, TimeoutError) as err:
        raise DemoError(f"cannot read the run's counts: {err}", 1) from None
    rows += consumer_rows(results, scrape)
    if args.scenario == "outage":
        rows += breaker_rows(scrape)
    console.print(_table(rows))
    bad = [row for row in rows if not row.ok]
    if bad:
        console.print(
            f"[bold red]accounting: MISMATCH[/] in {len(bad)} row(s): "
            + "; ".join(f"{r.name} truth={r.expected} counted={r.counted}" for r in bad)
        )
    else:
        console.print("[bold green]accounting: OK[/]")
    if args.serve:
        console.print(f"serving {metrics_url} until Ctrl-C")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
