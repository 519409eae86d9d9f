"""The Grafana dashboard (dashboards/build_dashboard.py): up to date, complete, and using only metrics
streamsentinel defines."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamsentinel.instrumentation._prometheus import Metrics

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
SCRIPT = DASHBOARDS / "build_dashboard.py"
COMMITTED = DASHBOARDS / "streamsentinel.json"
METRIC = re.compile(r"openai_stream_[a-z_]+")


def _load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboard", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(COMMITTED.read_text(encoding="utf-8"))
    return result


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_committed_json_is_what_the_script_builds() -> None:
    pytest.importorskip("grafana_foundation_sdk")  # dev extra, Python >= 3.11 only
    assert _load_builder().render() == COMMITTED.read_text(encoding="utf-8")
    check = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def test_every_panel_has_a_description_a_unit_and_a_target(dashboard: dict[str, Any]) -> None:
    panels = list(_panels(dashboard))
    assert len(panels) >= 15
    for panel in panels:
        assert panel.get("description"), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel.get("targets"), panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {p["title"] for p in dashboard["panels"] if p["type"] == "row"} == {
        "Traffic",
        "Failures",
        "Rate limits",
        "Retries",
        "Latency",
        "Tokens",
        "Circuit breaker",
        "Fleet (shared state in Redis)",
    }
    assert any(p["type"] == "state-timeline" for p in panels)


def test_every_rate_uses_the_rate_interval(dashboard: dict[str, Any]) -> None:
    for expr in _exprs(dashboard):
        for match in re.finditer(r"\brate\(", expr):
            window = re.search(r"\[([^\]]*)\]", expr[match.end() :])
            assert window is not None and window.group(1) == "$__rate_interval", expr


def test_every_query_filters_by_the_variables(dashboard: dict[str, Any]) -> None:
    selector = 'server=~"$server", model=~"$model", operation=~"$operation"'
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            if "openai_stream_circuit_" in expr:
                assert "$server" not in expr, expr  # breaker metrics carry only ``breaker``
            elif "openai_stream_store_" in expr or "openai_stream_rate_limit_paused" in expr:
                assert "$operation" not in expr, expr  # per process / per server and model only
            else:
                for metric in METRIC.finditer(expr):
                    assert expr[metric.end() :].startswith("{" + selector), expr


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("server", "model", "operation"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["query"] == f"label_values(openai_stream_requests_total, {name})"
        assert variable["datasource"]["uid"] == "${datasource}"


def _defined_metrics() -> tuple[set[str], set[str]]:
    """(every name a query may use, the family names) of a fresh ``Metrics``."""
    registry = CollectorRegistry()
    Metrics(registry)
    families: set[str] = set()
    names: set[str] = set()
    for family in registry.collect():
        base = family.name + ("_total" if family.type == "counter" else "")
        families.add(base)
        names.add(base)
        if family.type == "histogram":
            names.update(base + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names, families


def test_every_metric_used_is_defined(dashboard: dict[str, Any]) -> None:
    names, families = _defined_metrics()
    used: set[str] = set()
    for expr in _exprs(dashboard):
        for token in METRIC.findall(expr):
            assert token in names, f"{token} is not a streamsentinel metric: {expr}"
            used.add(re.sub(r"_(bucket|sum|count)$", "", token) if token not in families else token)
    assert used <= families
    unused = sorted(families - used)
    print(f"\nstreamsentinel metrics no panel uses: {', '.join(unused) or 'none'}")
