"""Added cost of streamsentinel over the bare openai SDK in CPU instructions (valgrind's callgrind).

Sync chat streams through the real SDK on an in-process ``httpx2.MockTransport`` serving a canned SSE
body (``benchmarks/instr_worker.py``); OTel SDK ``TracerProvider`` with a ``SimpleSpanProcessor``
into an ``InMemorySpanExporter``; each instrumentation with its default settings; the bare SDK is
100 %. Instruction counts do not depend on the machine's speed or load, unlike wall-clock time
(``bench_overhead.py``).

Each variant runs in ``--repeats`` (3) processes under ``valgrind --tool=callgrind``
(``PYTHONHASHSEED=0``), each in another memory layout (``instr_worker.py --layout``). A process
measures three phases on the bare SDK, then instruments and measures them again:

- A: N1 streams of 5 chunks, B: N2 streams of 5 chunks, C: N1 streams of 125 chunks
  (N1 = 3, N2 = 15);
- instructions per 5-chunk stream = (I(B) - I(A)) / (N2 - N1);
- instructions per chunk = (I(C) - I(A)) / 120 / N1;
- added % = instrumented / bare - 1, both from the same process.

The differences cancel whatever a phase costs besides its streams. Bare and instrumented share the
process's memory layout, which alone moves a count by a few tenths of a percent (CPython's method
cache indexes by the addresses of interned names): measured in separate processes, the per-chunk
figure of one variant spread over +-0.5 points; paired like this, over +-0.1. The table gives the
mean over the layouts and, in brackets, the lowest and highest. The ``bare`` row is the control:
its second half instruments nothing, so it shows the method's noise.

A three-line helper (``HELPER_C``, compiled with ``gcc`` against valgrind's ``callgrind.h``) turns
callgrind's instrumentation on after the first warm-up (``--instr-atstart=no``: about 5 times faster
until then) and dumps the counts after each phase. Without ``gcc`` each phase and half is a process
of its own, instrumented whole, and start-up cancels in the differences (much slower, and not
paired: noisier).

    python benchmarks/bench_instructions.py [--variants bare,streamsentinel,...] [--no-memory] [--json]

Also runs ``benchmarks/bench_memory.py`` (unless ``--no-memory``) for the memory column.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "instr_worker.py"
MEMORY = HERE / "bench_memory.py"
sys.path.insert(0, str(HERE))

from instr_worker import VARIANTS, clean_env  # noqa: E402

DEFAULT_VARIANTS = (
    "bare",
    "streamsentinel",
    "streamsentinel-untraced",
    "streamsentinel-chunk-events-all",
    "streamsentinel-many-models",
)
VALGRIND = os.environ.get("VALGRIND", "valgrind")
HELPER_C = """\
#include <valgrind/callgrind.h>
void bench_start_instrumentation(void) { CALLGRIND_START_INSTRUMENTATION; }
void bench_dump_stats(void) { CALLGRIND_DUMP_STATS; }
"""


class VariantFailed(Exception):
    """The variant could not be measured (the message says why)."""


def build_helper(directory: Path) -> Path | None:
    """Compile the helper that turns callgrind's instrumentation on; None without gcc or headers."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    source = directory / "callgrind_helper.c"
    source.write_text(HELPER_C)
    lib = directory / "callgrind_helper.so"
    done = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(source)], capture_output=True, text=True
    )
    return lib if done.returncode == 0 else None


def _reason(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr or "").splitlines() if line.strip() and "==" not in line[:12]]
    return (lines[-1] if lines else f"exit status {proc.returncode}")[:200]


def check_variant(python: str, variant: str, short: int) -> dict[str, Any]:
    """One stream natively: the variant imports, instruments and streams every chunk."""
    proc = subprocess.run(
        [python, str(WORKER), variant, f"{short}x1", "--check"],
        capture_output=True,
        text=True,
        env=clean_env(dict(os.environ)),
        timeout=300,
    )
    if proc.returncode != 0:
        raise VariantFailed(_reason(proc))
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["items_per_stream"][str(short)] != [short]:
        raise VariantFailed(f"stream yielded {result['items_per_stream']} items, not {short}")
    if variant not in ("bare", "streamsentinel-untraced") and result["spans_per_stream"] < 1:
        raise VariantFailed("no span exported")
    return result


def callgrind_total(path: Path) -> int:
    """Total instructions (Ir) of a callgrind output file ("totals:" or "summary:" line)."""
    text = path.read_text(errors="replace")
    for key in ("totals", "summary"):
        match = re.search(rf"^{key}:\s+(\d+)", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    raise VariantFailed(f"no totals in {path.name}")


def _run_worker(
    python: str, variant: str, spec: str, args: list[str], out: Path, helper: Path | None
) -> dict[str, Any]:
    env = clean_env(dict(os.environ))
    cmd = [VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}"]
    if helper is not None:
        env["STREAMSENTINEL_BENCH_CALLGRIND_LIB"] = str(helper)
        cmd.append("--instr-atstart=no")
    cmd += [python, str(WORKER), variant, spec, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise VariantFailed(_reason(proc))
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    for chunks, got in result["items_per_stream"].items():
        if got != [int(chunks)]:
            raise VariantFailed(f"a {chunks}-chunk stream yielded {got} items")
    return result


def count(
    python: str, variant: str, phases: list[tuple[int, int]], seed: int, workdir: Path, helper: Path | None
) -> tuple[list[int], list[int]]:
    """Instructions of each phase, bare and instrumented, in one memory layout."""
    spec = ",".join(f"{c}x{s}" for c, s in phases)
    if helper is None:  # a process per phase and half: whole-process totals
        halves: dict[str, list[int]] = {"bare": [], "instrumented": []}
        for part, totals in halves.items():
            for c, s in phases:
                out = workdir / f"callgrind.{variant}.{part}.{c}x{s}.{seed}.out"
                args = ["--part", part, "--layout", str(seed)]
                _run_worker(python, variant, f"{c}x{s}", args, out, None)
                totals.append(callgrind_total(out))
                out.unlink()
        return halves["bare"], halves["instrumented"]
    out = workdir / f"callgrind.{variant}.{seed}.out"
    _run_worker(python, variant, spec, ["--layout", str(seed)], out, helper)
    n = len(phases)
    totals = [callgrind_total(Path(f"{out}.{i}")) for i in range(1, 2 * n + 2)]
    for f in workdir.glob(f"{out.name}*"):
        f.unlink()
    return totals[:n], totals[n + 1 :]  # totals[n]: instrument() and the second warm-up


def measure(
    python: str,
    variants: list[str],
    *,
    streams: tuple[int, int] = (3, 15),
    short: int = 5,
    long: int = 125,
    repeats: int = 3,
    jobs: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Instruction counts per variant; a failed variant gets {"error": reason}.

    Per variant: ``per_stream``/``per_chunk`` (instrumented) and ``bare_per_stream``/
    ``bare_per_chunk``, means over the layouts; ``added_stream_pct``/``added_chunk_pct``: the
    added % of each layout; ``raw``: each phase's count in each layout.
    """
    n1, n2 = streams
    seeds = list(range(repeats))
    phases = [(short, n1), (short, n2), (long, n1)]
    results: dict[str, dict[str, Any]] = {}

    def per(totals: list[int]) -> tuple[float, float]:
        a, b, c = totals
        return (b - a) / (n2 - n1), (c - a) / (long - short) / n1

    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        workdir = Path(tmp)
        helper = build_helper(workdir) if Path("/usr/include/valgrind/callgrind.h").exists() else None
        runnable = []
        for variant in variants:
            try:
                check_variant(python, variant, short)
                runnable.append(variant)
            except (VariantFailed, subprocess.TimeoutExpired) as exc:
                results[variant] = {"error": str(exc)}
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            futures = {
                (variant, seed): pool.submit(count, python, variant, phases, seed, workdir, helper)
                for seed in seeds
                for variant in runnable
            }
            for variant in runnable:
                try:
                    raw = [futures[(variant, seed)].result() for seed in seeds]
                except (VariantFailed, subprocess.TimeoutExpired) as exc:
                    results[variant] = {"error": str(exc)}
                    continue
                bare = [per(b) for b, _ in raw]
                inst = [per(i) for _, i in raw]
                results[variant] = {
                    "per_stream": statistics.mean(s for s, _ in inst),
                    "per_chunk": statistics.mean(c for _, c in inst),
                    "bare_per_stream": statistics.mean(s for s, _ in bare),
                    "bare_per_chunk": statistics.mean(c for _, c in bare),
                    "added_stream_pct": [(i[0] / b[0] - 1) * 100 for b, i in zip(bare, inst, strict=True)],
                    "added_chunk_pct": [(i[1] / b[1] - 1) * 100 for b, i in zip(bare, inst, strict=True)],
                    "raw": {
                        f"{half} {c}x{s}": [r[h][k] for r in raw]
                        for h, half in enumerate(("bare", "instrumented"))
                        for k, (c, s) in enumerate(phases)
                    },
                }
        results["_meta"] = {
            "python": python,
            "helper": helper is not None,
            "seconds": round(time.perf_counter() - started, 1),
            "phases": [f"{c}x{s}" for c, s in phases],
            "repeats": repeats,
        }
    return results


def memory(python: str, variants: list[str], streams: int = 1000, runs: int = 1) -> dict[str, Any]:
    """``bench_memory.py --json`` for these variants (KiB per open stream), or {} if it failed.

    One process per variant by default: the figure moves by less than 0.1 KiB between runs.
    """
    cmd = [python, str(MEMORY), "--json", "--streams", str(streams), "--runs", str(runs)]
    proc = subprocess.run(
        [*cmd, "--variants", ",".join(variants)],
        capture_output=True,
        text=True,
        env=clean_env(dict(os.environ)),
        timeout=1800,
    )
    if proc.returncode != 0:
        return {"_error": _reason(proc)}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def rows(results: dict[str, Any], mem: dict[str, Any], label: str = "") -> list[str]:
    """Markdown table rows: variant, added % per chunk, per 5-chunk stream, KiB per open stream."""
    out = []
    for variant, res in results.items():
        if variant.startswith("_"):
            continue
        name = f"{label}{variant}" + (" (control: instruments nothing)" if variant == "bare" else "")
        if "error" in res:
            out.append(f"| {name} | n/a ({res['error']}) | n/a | n/a |")
            continue
        chunk, stream = added(res["added_chunk_pct"]), added(res["added_stream_pct"])
        out.append(f"| {name} | {chunk} | {stream} | {format_memory(mem, variant)} |")
    return out


def added(pcts: list[float]) -> str:
    """Mean added %, and the lowest and highest over the layouts."""
    mean = statistics.mean(pcts)
    if len(pcts) < 2:
        return f"{mean:+.1f} %"
    return f"{mean:+.1f} % ({min(pcts):+.1f} to {max(pcts):+.1f})"


def format_memory(mem: dict[str, Any], variant: str) -> str:
    value = mem.get(variant)
    if isinstance(value, dict):
        if "error" in value:
            return f"n/a ({value['error']})"
        if variant == "bare":
            return f"{value['kib_per_stream']:.1f} KiB (bare)"
        return f"{value['added_kib_per_stream']:+.1f} KiB"
    if "_error" in mem:
        return f"n/a ({mem['_error']})"
    return "not measured"


TABLE_HEAD = [
    "| variant (bare openai SDK = 100 %) | added per chunk | added per 5-chunk stream"
    " | memory per open stream |",
    "|---|---|---|---|",
]


def raw_lines(results: dict[str, Any], mem: dict[str, Any]) -> list[str]:
    out = [
        "| variant | Ir per chunk, bare / instrumented | Ir per 5-chunk stream, bare / instrumented"
        " | KiB per open stream |",
        "|---|---|---|---|",
    ]
    raws = []
    for variant, res in results.items():
        if variant.startswith("_"):
            continue
        if "error" in res:
            out.append(f"| {variant} | n/a | n/a | {res['error']} |")
            continue
        m = mem.get(variant)
        kib = f"{m['kib_per_stream']:.1f}" if isinstance(m, dict) and "kib_per_stream" in m else ""
        out.append(
            f"| {variant} | {res['bare_per_chunk']:,.0f} / {res['per_chunk']:,.0f}"
            f" | {res['bare_per_stream']:,.0f} / {res['per_stream']:,.0f} | {kib} |"
        )
        raws.append(f"{variant}: " + "; ".join(f"{k}: {v}" for k, v in res["raw"].items()))
    return [*out, "", "raw Ir per phase (one value per layout):", *raws]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=", ".join(VARIANTS))
    parser.add_argument("--python", default=sys.executable, help="interpreter for the workers")
    parser.add_argument("--streams", default="3,15", help="N1,N2 (default 3,15)")
    parser.add_argument("--repeats", type=int, default=3, help="memory layouts (processes) per variant")
    parser.add_argument("--jobs", type=int, default=None, help="parallel valgrind processes (CPUs)")
    parser.add_argument("--memory-streams", type=int, default=1000)
    parser.add_argument("--no-memory", action="store_true", help="skip bench_memory.py")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if "bare" not in variants:
        variants.insert(0, "bare")
    if shutil.which(VALGRIND) is None:
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 2
    n1, n2 = (int(n) for n in args.streams.split(","))
    started = time.perf_counter()
    results = measure(args.python, variants, streams=(n1, n2), repeats=args.repeats, jobs=args.jobs)
    if "error" in results["bare"]:
        print(f"the bare SDK could not be measured: {results['bare']['error']}", file=sys.stderr)
        return 1
    mem_started = time.perf_counter()
    mem = {} if args.no_memory else memory(args.python, variants, args.memory_streams)
    meta = results["_meta"]
    meta["memory_seconds"] = round(time.perf_counter() - mem_started, 1)
    meta["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps({"instructions": results, "memory": mem}))
        return 0
    print("\n".join(TABLE_HEAD + rows(results, mem)))
    print()
    print("\n".join(raw_lines(results, mem)))
    print()
    how = "instrumentation on after warm-up" if meta["helper"] else "whole process"
    print(
        f"callgrind: {meta['seconds']} s ({how}); memory: {meta['memory_seconds']} s; "
        f"total {meta['wall_seconds']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
