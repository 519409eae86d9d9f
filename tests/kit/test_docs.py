"""Issue 16: the docs say what the code does: the reference tables are rendered from the code and
cover every option, breaker field, Prometheus family and OTel instrument; the README stays short;
every relative link of the README and the docs resolves, anchors included; the site builds strict.

The names checked come from the code by another road than the generator's where one exists (the
Prometheus families from the source of ``_prometheus.py``, the options from ``instrument()``'s
signature and ``_PARSERS``), so a table that silently drops a row fails here.
"""

from __future__ import annotations

import ast
import dataclasses
import html
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import streamsentinel
from streamsentinel import config as objects
from streamsentinel._core import config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PROMETHEUS_SOURCE = ROOT / "src" / "streamsentinel" / "instrumentation" / "_prometheus.py"
MAX_README_LINES = 220
BUILD_TIMEOUT = 300.0  # a safety net only: the build takes seconds


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def rendered(page: str) -> str:
    """The page's Markdown as the build renders it (the hook's own function)."""
    text: str = gen.on_page_markdown((DOCS / page).read_text())
    return text


def table_rows(markdown: str) -> dict[str, str]:
    """First cell (without backticks) -> the whole row, for every table row of ``markdown``; inline
    HTML code (``<code>a_<wbr>b</code>``, the generator's wrappable names) as Markdown code. A name
    in two tables (``mode``: an option and a ``BreakerConfig`` field) keeps its first row under the
    name and the next under ``name#2``."""
    rows: dict[str, str] = {}
    for line in markdown.splitlines():
        line = re.sub(
            r"<code>(.*?)</code>", lambda m: "`" + html.unescape(m[1].replace("<wbr>", "")) + "`", line
        )
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) > 1:
            name = cells[0].removeprefix("| ").strip("`")
            rows[f"{name}#2" if name in rows else name] = line
    return rows


def prometheus_names_in_source() -> set[str]:
    """The first argument of every Counter/Gauge/Histogram call in ``_prometheus.py``."""
    names = set()
    for node in ast.walk(ast.parse(PROMETHEUS_SOURCE.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("Counter", "Gauge", "Histogram")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def test_every_marker_is_known_and_replaced() -> None:
    used = set()
    for page in sorted(DOCS.glob("*.md")):
        used |= set(gen.MARKER.findall(page.read_text()))
        assert not gen.MARKER.search(rendered(page.name)), page.name
    assert used == set(gen.TABLES), used ^ set(gen.TABLES)


def test_configuration_page_has_every_option_with_its_variable_and_default() -> None:
    rows = table_rows(rendered("configuration.md"))
    options = [
        name
        for name, p in inspect.signature(streamsentinel.instrument).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    for name in options:
        assert name in rows, f"option {name} missing from docs/configuration.md"
    # Every option with a variable is a parameter or the field of an option object, by another road
    # than the generator's: the objects' own field lists.
    fields = {
        option: (parameter, name)
        for parameter, cls in objects.GROUPS.items()
        for name, option in cls.OPTIONS.items()
    }
    assert set(config._PARSERS) <= set(options) | set(fields), set(config._PARSERS) - set(options)
    seen: dict[str, int] = {}
    for parameter, cls in objects.GROUPS.items():
        assert parameter in options
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            n = seen[field.name] = seen.get(field.name, 0) + 1
            row = rows[field.name if n == 1 else f"{field.name}#{n}"]
            option = cls.OPTIONS.get(field.name, field.name)  # redis_url, redis_client: their own names
            assert f"`{option}`" in row, row  # the flat keyword
    for name, parser in config._PARSERS.items():
        row = rows[name] if name in options else rows[fields[name][1]]
        assert f"`{config.env_name(name)}`" in row, row
        assert f"`{getattr(config.DEFAULTS, name)}`" in row, row
        assert html.escape(parser.allowed).replace("*", "\\*") in row or parser.allowed in row, row
    for field in dataclasses.fields(streamsentinel.BreakerConfig):
        row = rows[f"{field.name}#2" if field.name in options else field.name]
        assert f"`{config.env_name('breaker_' + field.name)}`" in row, row
    # Every variable streamsentinel reads for an option is documented.
    text = rendered("configuration.md").replace("<wbr>", "")
    documented = set(re.findall(r"STREAMSENTINEL_[A-Z_]+", text))
    readers = {config.env_name(o) for o in config._PARSERS} | {"STREAMSENTINEL_REDIS_URL"}
    readers |= {
        config.env_name("breaker_" + f.name) for f in dataclasses.fields(streamsentinel.BreakerConfig)
    }
    assert readers <= documented, readers - documented
    # Every flat keyword still accepted is named.
    assert all(f"<code>{flat}</code>" in text for flat in objects.FLAT), objects.FLAT


def test_metrics_page_has_every_prometheus_family_with_its_labels() -> None:
    rows = table_rows(rendered("metrics.md"))
    in_source = prometheus_names_in_source()
    assert len(in_source) >= 28  # the families of this version; fewer: the source scan broke
    for name in in_source:  # as exposed: the source spells counters with _total
        assert name in rows, f"Prometheus family {name} missing from docs/metrics.md"
    for family in gen.prometheus_families():
        row = rows[gen.exposed_name(family)]
        assert f"| {family._type}" in row, row
        for label in family._labelnames[3:] if row.split(" | ")[2].startswith("base") else family._labelnames:
            assert f"`{label}`" in row, (label, row)


def test_metrics_page_has_every_otel_instrument_and_notes_match_the_code() -> None:
    rows = table_rows(rendered("metrics.md"))
    created = [name for name, *_ in gen.otel_instruments()]
    assert len(created) == len(set(created))
    assert set(gen.OTEL_NOTES) == set(created), set(gen.OTEL_NOTES) ^ set(created)
    prometheus = {gen.exposed_name(f) for f in gen.prometheus_families()}
    for name in created:
        assert name in rows, f"OTel instrument {name} missing from docs/metrics.md"
        twin = gen.OTEL_NOTES[name][1]
        assert not twin or twin in prometheus, (name, twin)


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move it to docs/"
    )


def slug(heading: str) -> str:
    """The anchor of a heading, as MkDocs' toc (and, for these headings, GitHub) makes it."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links in code are code
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_every_relative_link_resolves() -> None:
    pages = [README, *sorted(DOCS.glob("*.md"))]
    checked = 0
    for page in pages:
        for target in relative_links(page):
            file_part, _, anchor = target.partition("#")
            resolved = (page.parent / file_part).resolve() if file_part else page
            assert resolved.exists(), f"{page.relative_to(ROOT)}: broken link {target}"
            if anchor:
                assert anchor in anchors(resolved), f"{page.relative_to(ROOT)}: no heading for {target}"
            checked += 1
    assert checked >= 40  # the README and the docs link to each other; none found: the scan broke


def test_every_docs_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f": {page.name}\n" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_site_builds_strict_with_every_name(tmp_path: Path) -> None:
    """The real build (``make docs``'s command) into a temporary folder: strict, and the built
    configuration and metrics pages hold every option and every metric name."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: it is in the dev extra (pip install -e '.[dev]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    configuration = (site / "configuration" / "index.html").read_text().replace("<wbr>", "")
    for name, parameter in inspect.signature(streamsentinel.instrument).parameters.items():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            assert f"<code>{name}</code>" in configuration, name
    for name in objects.FLAT:
        assert f"<code>{name}</code>" in configuration, name
    metrics = (site / "metrics" / "index.html").read_text().replace("<wbr>", "")
    for family in gen.prometheus_families():
        assert f"<code>{gen.exposed_name(family)}</code>" in metrics, family._name
    for name, *_ in gen.otel_instruments():
        assert f"<code>{name}</code>" in metrics, name
    reference = (site / "reference" / "index.html").read_text()
    assert "StreamTruncatedError" in reference and "RecordingSink" in reference and "Sink" in reference
    # reST roles of the docstrings are rendered as code (docs/griffe_rst_roles.py), never as text.
    assert not re.search(r":(func|class|meth|attr|mod|data|exc):", reference)


def test_documented_span_events_are_the_ones_spans_get() -> None:
    """Issue 17, naming: the span events docs/traces-and-logs.md lists are exactly the events the
    trace sink can add (no ``streamsentinel.circuit_state``: breaker events never reach a span)."""
    from streamsentinel.instrumentation import BreakerTransition, _names, _otel_trace

    text = (DOCS / "traces-and-logs.md").read_text()
    table = text.split("**Span events**")[1].split("\n\n")[1]
    documented = set(re.findall(r"^\| `(streamsentinel\.[\w.]+)` \|", table, re.MULTILINE))
    events = {value for name, value in vars(_names).items() if name.endswith("_EVENT")}
    assert documented == events
    source = (ROOT / "src" / "streamsentinel" / "instrumentation" / "_otel_trace.py").read_text()
    used = {
        value for name, value in vars(_names).items() if name.endswith("_EVENT") and f"nm.{name}" in source
    }
    assert used == events
    transition = BreakerTransition(breaker="b", from_state="closed", to_state="open")
    assert _otel_trace._event(transition) is None
