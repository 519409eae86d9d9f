"""The package's layers: leaves that import nothing of ours, no import circle between the core's
packages, a sink seam that loads no SDK, and one module for streamsentinel's own names."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "streamsentinel"
LAYERED = ("_core", "_resilience", "instrumentation")
SINKS = ("_prometheus.py", "_otel_trace.py", "_otel_metrics.py", "_structlog.py")


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, in_functions: bool) -> Iterator[str]:
    """The absolute module names ``path`` imports (with each ``from x import y`` also as ``x.y``),
    skipping ``if TYPE_CHECKING:`` blocks, and function bodies unless ``in_functions``."""
    name = _module(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def walk(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from walk(node.orelse)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if in_functions:
                    yield from walk(node.body)
            elif isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                prefix = ".".join([*base, *([node.module] if node.module else [])])
                yield prefix
                yield from (f"{prefix}.{alias.name}" for alias in node.names)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        yield from walk([c for c in children if isinstance(c, ast.stmt)])
                for handler in getattr(node, "handlers", []):
                    yield from walk(handler.body)

    yield from walk(ast.parse(path.read_text()).body)


def _package_edges(*, in_functions: bool) -> dict[tuple[str, str], set[str]]:
    """``(from package, to package)`` -> the module imports making that edge; a package is the
    first component under ``streamsentinel`` (``_core``, ``_vocab``, ...)."""
    edges: dict[tuple[str, str], set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = _module(path)
        if name.count(".") < 1:
            continue
        source = name.split(".")[1]
        for target in _imports(path, in_functions=in_functions):
            parts = target.split(".")
            if parts[0] == "streamsentinel" and len(parts) > 1 and parts[1] != source:
                edges.setdefault((source, parts[1]), set()).add(f"{name} -> {target}")
    return edges


@pytest.mark.parametrize("in_functions", [False, True], ids=["package_level", "with_lazy_imports"])
def test_no_import_circle_between_core_resilience_and_instrumentation(in_functions: bool) -> None:
    """Issue 17, leaves: no two of ``_core``, ``_resilience``, ``instrumentation`` import each
    other, at package level (module bodies; ``if TYPE_CHECKING:`` blocks excluded) and even
    counting the imports made inside functions for laziness."""
    edges = _package_edges(in_functions=in_functions)
    two_way = {
        (a, b): sorted(edges[(a, b)]) + sorted(edges[(b, a)])
        for a in LAYERED
        for b in LAYERED
        if a < b and (a, b) in edges and (b, a) in edges
    }
    assert two_way == {}
    # The direction is the intended one: the core uses the other two, never the reverse.
    assert ("_core", "_resilience") in edges and ("_core", "instrumentation") in edges
    assert ("_resilience", "instrumentation") in edges


@pytest.mark.parametrize("leaf", ["_vocab", "_log"])
def test_leaves_import_nothing_of_ours(leaf: str) -> None:
    """Issue 17, leaves: ``_vocab`` (stdlib only) and ``_log`` (stdlib and structlog) import no
    streamsentinel module, anywhere in their body."""
    imported = set(_imports(SRC / f"{leaf}.py", in_functions=True))
    roots = {name.split(".")[0] for name in imported if name}
    allowed = set(sys.stdlib_module_names) | ({"structlog"} if leaf == "_log" else set())
    assert roots - allowed == set()


def test_records_module_imports_only_the_vocabulary() -> None:
    """Issue 17, leaves: ``instrumentation/_data.py`` imports only ``_vocab`` of ours, and the
    standard library."""
    imported = set(_imports(SRC / "instrumentation" / "_data.py", in_functions=True))
    ours = {name.split(".")[1] for name in imported if name.startswith("streamsentinel.")}
    assert ours == {"_vocab"}
    assert {name.split(".")[0] for name in imported} - {"streamsentinel"} <= set(sys.stdlib_module_names)


def test_importing_the_sink_seam_loads_no_sdk() -> None:
    """Issue 17, leaves: ``import streamsentinel.instrumentation`` (the Sink protocol and records)
    imports neither openai, httpx2, legacy httpx nor any telemetry library."""
    heavy = ("openai", "httpx2", "httpx", "opentelemetry", "prometheus_client", "structlog")
    code = (
        "import sys\n"
        "import streamsentinel.instrumentation\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    env_path = str(SRC.parent)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("sink", SINKS)
def test_sinks_spell_no_name_of_their_own(sink: str) -> None:
    """Issue 17, naming: no sink spells a ``"streamsentinel.…"`` attribute, event or instrument
    name inline; every one comes from ``instrumentation/_names.py``."""
    text = (SRC / "instrumentation" / sink).read_text()
    tree = ast.parse(text)  # docstrings may name them; string constants may not
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    literals = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and node.value.startswith("streamsentinel.")
    ]
    assert literals == []
