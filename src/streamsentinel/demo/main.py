"""``streamsentinel demo``: the main job.

Starts the chaos server (or uses ``--base-url`` with ``OPENAI_API_KEY``), serves ``/metrics`` on
127.0.0.1, runs the workload through the real ``openai`` SDK with streamsentinel on, shows progress,
then prints the accounting and ``accounting: OK`` (exit 0) or the mismatching rows (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai
import structlog
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import BreakerConfig, instrument, start_metrics_server, uninstrument
from ..chaos import ChaosServer, Fault, FaultPlan, load_recordings
from .accounting import Row, breaker_rows, consumer_rows, ground_truth_rows, surfaced_rows
from .scrape import Scrape
from .workload import ConsumerResult, run_workload


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamsentinel demo",
        description="Stream through the real openai SDK against a fault-injecting server and check "
        "that streamsentinel counted exactly what happened.",
    )
    parser.add_argument("--requests", type=int, default=200, help="streams to run (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="at once, per sync/async half")
    parser.add_argument("--seed", type=int, default=0, help="fault plan seed")
    parser.add_argument("--replay", type=Path, help="replay recorded streams from this directory")
    parser.add_argument("--base-url", help="a real OpenAI-compatible endpoint (needs OPENAI_API_KEY)")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--metrics-port", type=int, default=9464, help="0 picks a free port")
    parser.add_argument("--read-timeout", type=float, default=1.0, help="client read timeout, s")
    parser.add_argument("--serve", action="store_true", help="keep /metrics up after the run")
    parser.add_argument("--log-file", type=Path, help="structlog JSON lines (default: a temp file)")
    parser.add_argument(
        "--scenario",
        choices=["faults", "outage", "clean"],
        default="faults",
        help="faults: a seeded mix of every fault; outage: healthy, then every request fails until "
        "the circuit breaker opens, then recovery until it closes again; clean: no fault at all",
    )
    return parser


def _configure_logging(path: Path) -> None:
    # The demo is an application: it configures structlog (the library never does).
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=path.open("a", encoding="utf-8")),
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    log_path = args.log_file or Path(tempfile.mkstemp(prefix="streamsentinel-demo-", suffix=".jsonl")[1])
    _configure_logging(log_path)

    server: ChaosServer | None = None
    if args.base_url:
        api_key = os.environ.get("OPENAI_API_KEY")
        if not api_key:
            console.print("[red]--base-url needs OPENAI_API_KEY[/]")
            return 2
        base_url = args.base_url
    else:
        api_key = "demo-key"
        recordings = load_recordings(args.replay) if args.replay else []
        plan = FaultPlan.default(args.seed)
        plan.replay = bool(recordings)
        server = ChaosServer(plan, seed=args.seed, recordings=recordings).start()
        base_url = server.base_url

    # A registry of its own: the accounting must see this run's counts only.
    registry = CollectorRegistry()
    phases = _phases(args, server)
    instrument(registry=registry, breaker=OUTAGE_BREAKER if args.scenario == "outage" else None)
    metrics_server, _thread = start_metrics_server(args.metrics_port, registry=registry)
    metrics_url = f"http://127.0.0.1:{metrics_server.server_port}/metrics"
    timeout = httpx2.Timeout(args.read_timeout, connect=5.0)
    console.print(f"target: {base_url}   metrics: {metrics_url}   logs: {log_path}")

    results: list[ConsumerResult] = []
    try:
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
                    make_async=lambda: openai.AsyncOpenAI(
                        base_url=base_url, api_key=api_key, timeout=timeout
                    ),
                    model=args.model,
                    on_done=on_done,
                    first_index=len(results),
                )
        rows: list[Row] = []
        if server is not None:
            records = server.wait_for_records(server.arrivals)
            scrape = Scrape.fetch(metrics_url)
            rows += ground_truth_rows(records, scrape)
            rows += surfaced_rows(records, results)
        else:
            scrape = Scrape.fetch(metrics_url)
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
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()
        uninstrument()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
