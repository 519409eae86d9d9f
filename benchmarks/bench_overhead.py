"""Added cost of streamsentinel over the plain openai SDK, per chunk and per stream.

The SDK talks to an in-process ``httpx2.MockTransport`` serving a prepared SSE body, so no network
is measured. Each variant runs in fresh processes (``PYTHONHASHSEED=0``), interleaved; each process
reports its fastest run (``benchmarks/worker.py``); the figures are medians over processes.

    python benchmarks/bench_overhead.py [--chunks 2000] [--runs 9] [--json]

Reported per instrumented variant: µs added per chunk on a 2000-chunk stream (minus the per-stream
part, measured on a short stream), µs added per stream, and ratios instrumented / plain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")
VARIANTS = ("plain", "instrumented", "instrumented-warn", "instrumented-untraced")
SHORT_ITEMS = 3  # role-less short stream: 1 content chunk + finish chunk + [DONE]


def run_worker(variant: str, chunks: int, src: Path | None = None) -> dict[str, float]:
    """One fresh worker process: its fastest long and short stream, seconds (``src``: the
    streamsentinel version to import, put first on ``PYTHONPATH``; None: the installed one)."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run(
        [sys.executable, str(WORKER), variant, str(chunks)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=9, help="processes per variant")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.runs):
        for variant in VARIANTS:
            results[variant].append(run_worker(variant, args.chunks))
    med = {
        v: {k: statistics.median(r[k] for r in runs) for k in ("long", "short")}
        for v, runs in results.items()
    }
    plain = med["plain"]
    items = args.chunks + 1
    report: dict[str, float | int] = {
        "sdk_us_per_chunk": round((plain["long"] - plain["short"]) / (items - 2) * 1e6, 2),
        "sdk_us_per_stream": round(plain["short"] * 1e6, 1),
    }
    for variant in VARIANTS[1:]:
        inst = med[variant]
        added_stream = inst["short"] - plain["short"]
        added_chunk = ((inst["long"] - plain["long"]) - added_stream) / (items - 2)
        report[f"{variant}.added_us_per_chunk"] = round(added_chunk * 1e6, 2)
        report[f"{variant}.added_us_per_stream"] = round(added_stream * 1e6, 1)
        report[f"{variant}.ratio_2000_chunk_stream"] = round(inst["long"] / plain["long"], 4)
        report[f"{variant}.ratio_short_stream"] = round(inst["short"] / plain["short"], 3)
    report["processes_per_variant"] = args.runs
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:44} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
