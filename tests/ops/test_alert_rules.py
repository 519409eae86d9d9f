"""The Prometheus rules in dashboards/alerts.yml: valid and unit-tested by promtool, every alert with
its severity, annotations and a runbook that exists in the docs, and only metrics streamsentinel
defines. promtool is required, not optional: ``.ci/run`` installs it (Debian's ``prometheus``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamsentinel.instrumentation._prometheus import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "dashboards" / "alerts.yml"
RULE_TESTS = ROOT / "dashboards" / "alerts.test.yml"
RUNBOOKS = ROOT / "docs" / "dashboards-and-alerts.md"
RUNBOOK_BASE = "https://github.com/streamsentinel/streamsentinel/blob/main/docs/dashboards-and-alerts.md#"
REQUIRED_ALERTS = {
    "StreamingFailureRatioHigh",
    "StreamTruncationRatioHigh",
    "CircuitBreakerOpen",
    "RateLimitedSustained",
    "QuotaExhausted",
    "TimeToFirstTokenP95High",
    "StreamStalls",
    "StreamStateStoreUnavailable",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not on PATH: the alert rules cannot be checked. .ci/run installs it "
            "(apt-get install prometheus)."
        )
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def parse_alerts(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """{alert: {"labels": {...}, "annotations": {...}}} from the rules file's layout (a rule per
    ``- alert:`` item; ``labels:``/``annotations:`` keys one level under it). No YAML library is a
    dependency; the layout is asserted instead of guessed."""
    alerts: dict[str, dict[str, dict[str, str]]] = {}
    current: dict[str, dict[str, str]] | None = None
    item_indent = section_indent = -1
    section: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        match = re.match(r"- (alert|record): (\S+)$", stripped)
        if match:
            item_indent, section = indent, None
            current = None
            if match[1] == "alert":
                assert match[2] not in alerts, f"alert {match[2]} defined twice"
                current = alerts[match[2]] = {"labels": {}, "annotations": {}}
            continue
        if indent <= item_indent:
            current = None
        if current is None:
            continue
        key, _, value = stripped.partition(":")
        if indent == item_indent + 2:
            section, section_indent = (key, indent) if key in ("labels", "annotations") else (None, -1)
        elif section is not None and indent == section_indent + 2:
            current[section][key] = value.strip().strip("\"'")
    return alerts


def github_anchor(heading: str) -> str:
    anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return anchor.replace(" ", "-")


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_severity_annotations_and_a_test() -> None:
    alerts = parse_alerts(RULES.read_text())
    assert alerts.keys() >= REQUIRED_ALERTS, REQUIRED_ALERTS - alerts.keys()
    tests_text = RULE_TESTS.read_text()
    for name, rule in alerts.items():
        assert rule["labels"].get("severity") in ("critical", "warning", "info"), name
        for key in ("summary", "description", "runbook_url"):
            assert rule["annotations"].get(key), f"{name} has no {key}"
        assert f"alertname: {name}\n" in tests_text, f"{name} has no promtool test"
    assert alerts["QuotaExhausted"]["labels"]["severity"] == "critical"


def test_runbook_anchors_exist_in_the_docs() -> None:
    # The same anchor on GitHub (the runbook_url) and on the MkDocs site (its toc slug).
    anchors = {github_anchor(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", RUNBOOKS.read_text(), re.MULTILINE)}
    assert "runbooks" in anchors
    for name, rule in parse_alerts(RULES.read_text()).items():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), f"{name}: {url}"
        assert url.removeprefix(RUNBOOK_BASE) == name.lower(), f"{name}: {url}"
        assert url.removeprefix(RUNBOOK_BASE) in anchors, f"{name}: no heading in {RUNBOOKS.name} for {url}"


def test_rules_use_only_defined_metrics() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    defined = {f.name + "_total" if f.type == "counter" else f.name for f in registry.collect()}
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for name in re.findall(r"openai_stream_[a-z_]+", RULES.read_text())
    }
    assert used, "no openai_stream_ metric found in the rules"
    assert used <= defined, sorted(used - defined)
