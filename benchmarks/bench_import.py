"""What ``instrument()`` adds to a process that imports openai: wall clock and peak RSS.

Builds this checkout's wheel and installs it into two fresh virtual environments under /tmp:
``lean`` (the wheel alone: what ``pip install streamsentinel`` gives) and ``heavy`` (the wheel plus
rich, the OpenTelemetry SDK and opentelemetry-instrumentation: the runtime set of the previous
release). In each, a process that runs ``import openai`` is compared with one that then calls
``streamsentinel.instrument()``, interleaved, median of ``--rounds`` (default 7).

    python benchmarks/bench_import.py [--rounds N]

Prints, per environment: median wall clock and peak RSS of both processes and the difference.
Target (issue 16): ``lean`` adds at most +0.15 s and +6 MiB.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = "import openai"
INSTRUMENTED = "import openai, streamsentinel; streamsentinel.instrument()"
# Wall clock of the interpreter and peak RSS (ru_maxrss, KiB on Linux) of one child process.
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run([sys.argv[1], "-c", sys.argv[2]], check=True)
wall = time.perf_counter() - start
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _env(home: Path, wheel: Path, extra: list[str]) -> Path:
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel), *extra], check=True)
    return python


def _one(python: Path, code: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(python), code], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), float(out[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="streamsentinel-import-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work, ROOT], check=True
        )
        (wheel,) = work.glob("streamsentinel-*.whl")
        envs = {
            "lean": _env(work / "lean", wheel, []),
            "heavy": _env(
                work / "heavy", wheel, ["rich>=13", "opentelemetry-sdk", "opentelemetry-instrumentation"]
            ),
        }
        for name, python in envs.items():
            _one(python, INSTRUMENTED)  # warm the page cache and .pyc files
            plain: list[tuple[float, float]] = []
            instrumented: list[tuple[float, float]] = []
            for _ in range(args.rounds):
                plain.append(_one(python, PLAIN))
                instrumented.append(_one(python, INSTRUMENTED))
            pw, pr = statistics.median(p[0] for p in plain), statistics.median(p[1] for p in plain)
            iw, ir = (
                statistics.median(p[0] for p in instrumented),
                statistics.median(p[1] for p in instrumented),
            )
            print(
                f"{name:5}  import openai: {pw:.3f} s {pr:.1f} MiB   + instrument(): {iw:.3f} s {ir:.1f} MiB"
                f"   added: {iw - pw:+.3f} s {ir - pr:+.1f} MiB"
            )


if __name__ == "__main__":
    main()
