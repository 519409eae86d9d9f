"""Start-up cost of ``streamsentinel run``: interpreter start-up under ``run`` vs plain.

For a process that never imports ``openai`` (``python -c pass``) and for one that does
(``python -c "import openai"``), the median wall time of N runs of:

* ``plain``: ``python -c ...``;
* ``bootstrap``: the same interpreter with the environment ``run`` gives it (its
  ``sitecustomize`` first on ``PYTHONPATH``, ``PROMETHEUS_MULTIPROC_DIR`` set): what ``run`` costs
  each Python process of the service, workers included;
* ``run``: ``streamsentinel run --metrics-port PORT -- python -c ...`` end to end, the ``run``
  process's own start-up included (paid once per service).

Run: ``python benchmarks/bench_startup.py [-n 20]``. Prints ms and ratios to plain; the target
is bootstrap within 50 ms of plain for the process that never imports openai.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamsentinel.launcher import child_environ

SCRIPTS = {"no openai": "pass", "imports openai": "import openai"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _median_ms(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20, help="runs per case (default: %(default)s)")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMSENTINEL_", "PROMETHEUS_"))}
    base.pop("PYTHONPATH", None)
    script = Path(sys.executable).with_name("streamsentinel")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "streamsentinel.cli"]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, median of {args.runs} runs")
    print(
        f"{'process':<16}{'plain ms':>10}{'bootstrap ms':>14}{'ratio':>7}{'+ms':>7}{'run ms':>9}{'ratio':>7}"
    )
    with tempfile.TemporaryDirectory() as multiproc:
        boot = child_environ(base, multiproc)
        for name, code in SCRIPTS.items():
            python = [sys.executable, "-c", code]
            _median_ms(python, base, 2)  # warm the page cache and .pyc files
            plain = _median_ms(python, base, args.runs)
            under = _median_ms(python, boot, args.runs)
            run = _median_ms(
                [*launcher, "run", "--metrics-port", str(_free_port()), "--", *python], base, args.runs
            )
            print(
                f"{name:<16}{plain:>10.1f}{under:>14.1f}{under / plain:>7.2f}{under - plain:>+7.1f}"
                f"{run:>9.1f}{run / plain:>7.2f}"
            )


if __name__ == "__main__":
    main()
