"""Wall clock of this checkout against another version of streamsentinel, interleaved in one run.

Wall-clock figures drift by 5-10 % between runs on a shared machine, so two versions measured at
different times cannot be compared. This runs ``benchmarks/worker.py`` for every variant of both
versions in turn, round after round (each a fresh process; ``PYTHONPATH`` selects the version's
``src``), and compares medians over the rounds: the drift hits both alike.

    git worktree add /tmp/before 7cbe5bb
    python benchmarks/bench_compare.py --other /tmp/before/src [--rounds 7] [--chunks 1000]

Reported per version and variant: µs added per short stream (3 items) and per chunk (from a stream
of ``--chunks`` items, less the short one), over the plain SDK of the same version's round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_overhead import VARIANTS, run_worker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--other", type=Path, required=True, help="the other version's src directory")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunks", type=int, default=1000)
    args = parser.parse_args()
    versions = {"this": HERE.parent / "src", "other": args.other.resolve()}
    for name, src in versions.items():
        if not (src / "streamsentinel" / "__init__.py").exists():
            print(f"{name}: no streamsentinel package in {src}", file=sys.stderr)
            return 2
    samples: dict[tuple[str, str], list[dict[str, float]]] = {(v, k): [] for v in versions for k in VARIANTS}
    for _ in range(args.rounds):
        for name, src in versions.items():
            for variant in VARIANTS:
                samples[(name, variant)].append(run_worker(variant, args.chunks, src))
    print("| version | variant | added per stream | added per chunk |")
    print("|---|---|---|---|")
    for name in versions:
        med = {
            k: tuple(statistics.median(s[key] for s in samples[(name, k)]) for key in ("short", "long"))
            for k in VARIANTS
        }
        plain_short, plain_long = med["plain"]
        for variant in VARIANTS[1:]:
            short, long = med[variant]
            per_chunk = ((long - short) - (plain_long - plain_short)) / (args.chunks - 1)
            print(f"| {name} | {variant} | {(short - plain_short) * 1e6:.1f} µs | {per_chunk * 1e6:.2f} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
