"""streamsentinel side by side with other OpenAI instrumentations, in CPU instructions and memory.

The same measurements as ``bench_instructions.py`` (callgrind, sync chat on an in-process
``httpx2.MockTransport``, OTel SDK tracer provider with a ``SimpleSpanProcessor`` into an in-memory
exporter, bare SDK = 100 %) and ``bench_memory.py`` (1,000 async streams held over loopback), for:

- ``openai-v2``: ``opentelemetry-instrumentation-openai-v2`` (OpenTelemetry contrib);
- ``genai-openai``: ``opentelemetry-instrumentation-genai-openai`` (its successor in contrib);
- ``openllmetry``: ``opentelemetry-instrumentation-openai`` (Traceloop's OpenLLMetry);
- ``openinference``: ``openinference-instrumentation-openai`` (Arize).

Each is instrumented as its documentation says, ``OpenAIInstrumentor().instrument(tracer_provider=
provider)``, with default settings (no environment variable of theirs set). They live in virtualenvs
of their own under ``/tmp/streamsentinel-peers-venv`` (made once, reused while the packages asked
for and this project's ``pyproject.toml`` are the same), each with this project installed
(``pip install -e``) and the peers that can share one; every row is relative to the bare SDK
measured in the same process (instructions) or virtualenv (memory). A peer that fails to install,
import, instrument or stream gets "n/a (reason)".

    python benchmarks/bench_peers.py [--venv-root DIR] [--peers openai-v2,...] [--no-memory] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_instructions import TABLE_HEAD, measure, memory, raw_lines, rows  # noqa: E402

OURS = ["streamsentinel", "streamsentinel-untraced", "streamsentinel-chunk-events-all"]

# Virtualenvs: name -> (peers measured there, packages installed beside `-e PROJECT`).
# openai-v2 needs its own: it imports `opentelemetry.util.genai.instruments`, gone from
# opentelemetry-util-genai 1.x (which genai-openai needs), and `httpx`, which openai 3 no longer
# installs (it uses httpx2); both are pinned back for it (it still resolves without them).
VENVS: dict[str, tuple[list[str], list[str]]] = {
    "shared": (
        ["genai-openai", "openllmetry", "openinference"],
        [
            "opentelemetry-instrumentation-genai-openai",
            "opentelemetry-instrumentation-openai",
            "openinference-instrumentation-openai",
        ],
    ),
    "openai-v2": (
        ["openai-v2"],
        ["opentelemetry-instrumentation-openai-v2", "httpx<1", "opentelemetry-util-genai>=0.4b0,<1.0b0"],
    ),
}
PACKAGES = {
    "genai-openai": "opentelemetry-instrumentation-genai-openai",
    "openllmetry": "opentelemetry-instrumentation-openai",
    "openinference": "openinference-instrumentation-openai",
    "openai-v2": "opentelemetry-instrumentation-openai-v2",
}
NOTES = {
    "openai-v2": "with httpx<1 and opentelemetry-util-genai 0.4b0 installed beside it (see VENVS)",
}


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("WARNING")]
    return (lines[-1] if lines else "unknown error")[:200]


def ensure_venv(path: Path, packages: list[str]) -> tuple[Path | None, dict[str, str]]:
    """The virtualenv's python (None if it could not be made) and {package: why not installed}."""
    python = path / "bin" / "python"
    spec = {
        "packages": packages,
        "pyproject": hashlib.sha256((PROJECT / "pyproject.toml").read_bytes()).hexdigest(),
        "base": sys.base_prefix,
    }
    stamp = path / ".bench-spec.json"
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()).get("spec") == spec:
        return python, json.loads(stamp.read_text()).get("failed", {})
    if not python.exists():
        done = subprocess.run([sys.executable, "-m", "venv", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            return None, {p: f"venv: {_tail(done.stderr)}" for p in packages}
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    failed: dict[str, str] = {}
    done = subprocess.run([*pip, "-e", str(PROJECT), *packages], capture_output=True, text=True)
    if done.returncode != 0:  # one at a time: the others may still go in
        base = subprocess.run([*pip, "-e", str(PROJECT)], capture_output=True, text=True)
        if base.returncode != 0:
            return None, {p: f"pip install -e: {_tail(base.stderr)}" for p in packages}
        for package in packages:
            one = subprocess.run([*pip, package], capture_output=True, text=True)
            if one.returncode != 0:
                failed[package] = f"pip: {_tail(one.stderr)}"
    stamp.write_text(json.dumps({"spec": spec, "failed": failed}))
    return python, failed


def versions(python: Path, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'missing'\n"
        "print(json.dumps(out))"
    )
    names = [re.split(r"[<>=!~;\[ ]", name)[0] for name in names]
    done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    result: dict[str, str] = json.loads(done.stdout) if done.returncode == 0 else {}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--venv-root", default="/tmp/streamsentinel-peers-venv")
    parser.add_argument("--peers", default=",".join(PACKAGES), help=", ".join(PACKAGES))
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="memory layouts per variant")
    parser.add_argument("--memory-streams", type=int, default=1000)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wanted = {p for p in args.peers.split(",") if p}
    root = Path(args.venv_root)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {}
    for name, (peers, packages) in VENVS.items():
        peers = [p for p in peers if p in wanted]
        # Each variant's process measures the bare SDK too (bench_instructions.py); the bare
        # variant is only the memory baseline here.
        variants = (OURS if name == "shared" else []) + peers
        if not peers and name != "shared":
            continue
        section: dict[str, Any] = {"seconds": {}, "versions": {}}
        t = time.perf_counter()
        python, failed = ensure_venv(root / name, packages)
        section["seconds"]["install"] = round(time.perf_counter() - t, 1)
        errors = {p: failed[PACKAGES[p]] for p in peers if PACKAGES[p] in failed}
        if python is None:
            section["instructions"] = {p: {"error": e} for p, e in errors.items()}
            report[name] = section
            continue
        section["versions"] = versions(python, ["openai", "httpx2", "opentelemetry-sdk", *packages])
        runnable = [v for v in variants if v not in errors]
        t = time.perf_counter()
        instr = measure(str(python), runnable, repeats=args.repeats, jobs=args.jobs)
        section["seconds"]["instructions"] = round(time.perf_counter() - t, 1)
        instr.update({p: {"error": e} for p, e in errors.items()})
        t = time.perf_counter()
        ok = [v for v in runnable if "error" not in instr.get(v, {})]
        mem = {} if args.no_memory or not ok else memory(str(python), ["bare", *ok], args.memory_streams)
        section["seconds"]["memory"] = round(time.perf_counter() - t, 1)
        section["instructions"], section["memory"] = instr, mem
        report[name] = section
    report["_wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report))
        return 0
    table = list(TABLE_HEAD)
    raw: list[str] = []
    for name, section in report.items():
        if name.startswith("_"):
            continue
        instr = section.get("instructions", {})
        order = [*OURS, *PACKAGES]
        ordered = {k: instr[k] for k in sorted(instr, key=lambda k: order.index(k) if k in order else 99)}
        mem = section.get("memory", {})
        table += rows(ordered, mem)
        installed = ", ".join(f"{k} {v}" for k, v in section["versions"].items())
        raw.append(f"\nvirtualenv {root / name}: {installed}")
        raw.append("seconds: " + ", ".join(f"{k} {v}" for k, v in section["seconds"].items()))
        if isinstance(mem.get("bare"), dict) and "kib_per_stream" in mem["bare"]:
            raw.append(
                f"memory baseline, the bare SDK: {mem['bare']['kib_per_stream']:.1f} KiB per open stream"
            )
        raw += raw_lines(instr, mem)
    print("\n".join(table))
    for peer, note in NOTES.items():
        if peer in wanted:
            print(f"\n{peer}: {note}")
    print("\n".join(raw))
    print(f"\ntotal {report['_wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
