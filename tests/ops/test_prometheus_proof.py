"""End-to-end proof against a real Prometheus: the demo's /metrics feed every dashboard panel, every
metric the dashboard and the rules name is emitted, and the alert expressions fire on real data.

Real processes on 127.0.0.1: Debian's /usr/bin/prometheus scrapes two `streamsentinel demo --serve`
runs (faults and outage). Synchronisation is by polling Prometheus's HTTP API with a deadline.

The demo runs in a few seconds, faster than a 1 s scrape can follow, so each demo runs through a
tiny wrapper (_GATED_DEMO) that stops before each batch of requests ("GATE" on stdout) until the
test has seen Prometheus scrape the current state and writes a line to its stdin. That gives the
counters two different samples (rate() > 0) and lets the still-open breaker be scraped and
alerted on. The demo's own accounting still has to print `accounting: OK`.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "streamsentinel.json"
ALERTS = ROOT / "dashboards" / "alerts.yml"
PROMETHEUS = "/usr/bin/prometheus"
METRIC = re.compile(r"openai_stream_[a-z_]+")
DEADLINE = 30.0  # seconds for any one wait

pytestmark = pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="needs /usr/bin/prometheus")

# Runs `streamsentinel demo` with run_workload wrapped: before each batch it prints GATE and waits
# for a line on stdin. SPLIT: the faults scenario's single phase is cut in two batches (no breaker
# there, so the accounting is unaffected). The outage scenario is gated per phase only: splitting
# it would let the open breaker's 1 s wait elapse mid-outage and change its exact transitions.
_GATED_DEMO = """
import importlib
import sys

demo = importlib.import_module("streamsentinel.demo.main")

SPLIT = sys.argv[1] == "split"
_run = demo.run_workload

def _gated(*, requests, first_index=0, **kwargs):
    parts = [requests // 2, requests - requests // 2] if SPLIT else [requests]
    results = []
    for part in parts:
        print("GATE", flush=True)
        if not sys.stdin.readline():
            raise SystemExit("stdin closed")
        results += _run(requests=part, first_index=first_index + len(results), **kwargs)
    return results

demo.run_workload = _gated
sys.exit(demo.main(sys.argv[2:]))
"""

# Metrics that legitimately have no series in these runs (their panel targets show nothing and
# they are not in /metrics), with the reason. Keep this short.
NO_DATA_EXPECTED = {
    "openai_stream_circuit_fallbacks_total": "the demo's breaker has no fallback configured",
    # Fleet mode (README "Running a fleet"): these demo runs share nothing through Redis.
    "openai_stream_store_errors_total": "no Redis in these demo runs (fleet mode is off)",
    "openai_stream_rate_limit_paused": "no Redis in these demo runs (fleet mode is off)",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def _concrete(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "1m")
    for var in ("server", "model", "operation"):
        expr = expr.replace(f"${var}", ".*")
    assert "$" not in expr, expr
    return expr


class Prom:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def alert_states(self) -> dict[str, set[str]]:
        states: dict[str, set[str]] = {}
        for alert in self.get("/api/v1/alerts")["alerts"]:
            states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        return states


def _until(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)  # poll interval, not synchronisation
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _scraped_since(prom: Prom, job: str, since: float) -> bool:
    # timestamp() straight on the selector: the sample's own time (on `up == 1` it would be the
    # evaluation time).
    stamp = prom.query(f'timestamp(up{{job="{job}"}})')
    up = prom.query(f'up{{job="{job}"}}')
    return bool(stamp and up) and float(stamp[0]["value"][1]) > since and up[0]["value"][1] == "1"


class Demo:
    """One gated `streamsentinel demo --serve` subprocess."""

    def __init__(self, job: str, scenario: str, port: int, log: Path) -> None:
        self.job = job
        split = "split" if scenario == "faults" else "phases"
        args = ["--serve", "--metrics-port", str(port), "--scenario", scenario, "--requests", "120"]
        args += ["--log-file", str(log)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _GATED_DEMO, split, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, on_gate: Callable[[], None]) -> None:
        """Drive the demo to `accounting: OK`, calling on_gate at each gate before releasing it."""
        assert self.proc.stdin is not None
        deadline = time.monotonic() + 2 * DEADLINE
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError("demo stalled:\n" + "".join(self.output)) from None
            if line is None:
                raise AssertionError("demo exited:\n" + "".join(self.output))
            self.output.append(line)
            if line.strip() == "GATE":
                on_gate()
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()
            elif "accounting: OK" in line:
                return
            elif "accounting: MISMATCH" in line:
                raise AssertionError("".join(self.output))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[Prom, dict[str, int], list[Demo]]]:
    ports = {"faults": _free_port(), "outage": _free_port(), "clean": _free_port()}
    prom_port = _free_port()
    # Test copy of the rules with every `for:` set to 0s. The real `for` durations are proven by
    # promtool's unit tests (dashboards/alerts.test.yml, tests/ops/test_alert_rules.py); here we prove
    # that the expressions fire on real data from a real scrape.
    rules = re.sub(r"(?m)^(\s*for:\s*)\S+\s*$", r"\g<1>0s", ALERTS.read_text(encoding="utf-8"))
    assert rules.count("for: 0s") == ALERTS.read_text(encoding="utf-8").count("for:")
    (tmp_path / "alerts.yml").write_text(rules, encoding="utf-8")
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        for job, port in ports.items()
    )
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {tmp_path / 'alerts.yml'}\nscrape_configs:\n{jobs}",
        encoding="utf-8",
    )
    prom_log = (tmp_path / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=prom_log,
        stderr=subprocess.STDOUT,
    )
    demos: list[Demo] = []
    try:
        prom = Prom(prom_port)

        def ready() -> bool:
            with urllib.request.urlopen(prom.base + "/-/ready", timeout=5) as response:
                return bool(response.status == 200)

        _until("prometheus /-/ready", ready)
        yield prom, ports, demos
    finally:
        for demo in demos:
            demo.stop()
        prometheus.send_signal(signal.SIGTERM)
        try:
            prometheus.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(timeout=5)
        prom_log.close()
        shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)


def test_dashboard_and_alerts_on_real_prometheus(
    processes: tuple[Prom, dict[str, int], list[Demo]], tmp_path: Path
) -> None:
    prom, ports, demos = processes
    breaker_seen_open: list[bool] = []

    for job in ("faults", "outage"):
        demo = Demo(job, job, ports[job], tmp_path / f"{job}.jsonl")
        demos.append(demo)

        def gate(job: str = job) -> None:
            # Prometheus has scraped the state the demo is paused in (a fresh, successful scrape).
            since = time.time()
            _until(f"a fresh scrape of {job}", lambda: _scraped_since(prom, job, since))
            open_now = prom.query(f'openai_stream_circuit_state{{job="{job}", state="open"}} == 1')
            if open_now:
                # The breaker is open while paused (its gauge changes only on calls): the alert
                # expression must fire on it.
                breaker_seen_open.append(True)
                _until(
                    "CircuitBreakerOpen firing",
                    lambda: "firing" in prom.alert_states().get("CircuitBreakerOpen", set()),
                )

        demo.run(gate)
        # One more scrape after the last batch: the final counts are in the TSDB.
        since = time.time()
        _until(f"the final scrape of {job}", functools.partial(_scraped_since, prom, job, since))

    # 5. Alerts: the outage was scraped with its breaker open, and the failure ratio fires.
    assert breaker_seen_open, "no scrape saw the breaker open"
    assert prom.query('max_over_time(openai_stream_circuit_state{job="outage", state="open"}[5m]) == 1')
    transitions = prom.query('openai_stream_circuit_transitions_total{job="outage"} > 0')
    assert {(s["metric"]["from_state"], s["metric"]["to_state"]) for s in transitions} == {
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    }
    _until(
        "StreamingFailureRatioHigh firing",
        lambda: "firing" in prom.alert_states().get("StreamingFailureRatioHigh", set()),
    )
    print("alerts:", {name: sorted(states) for name, states in sorted(prom.alert_states().items())})

    # 3. Every panel expression returns data.
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    targets = [
        (title, _concrete(expr))
        for title, expr in _panel_exprs(dashboard)
        if not set(METRIC.findall(expr)) & set(NO_DATA_EXPECTED)
    ]
    assert len(targets) >= 20
    empty = targets

    def all_have_data() -> bool:
        nonlocal empty
        empty = [(title, expr) for title, expr in empty if not prom.query(expr)]
        return not empty

    try:
        _until("data for every panel target", all_have_data)
    except AssertionError:
        pytest.fail(f"panel targets without data: {empty}")

    # 4. Every metric the dashboard and the rules name is emitted; report the reverse.
    emitted = set(prom.get("/api/v1/label/__name__/values"))
    # Names in expressions only (descriptions mention metrics too). No YAML parser here: a rule's
    # `expr:` runs until its `for:`/`labels:` or the next rule.
    rule_exprs = re.findall(
        r"(?ms)^\s+expr:(.*?)(?=^\s+(?:for|labels):|^\s+- (?:record|alert):|\Z)",
        ALERTS.read_text(encoding="utf-8"),
    )
    assert len(rule_exprs) == ALERTS.read_text(encoding="utf-8").count("expr:")
    used = {name for _, expr in _panel_exprs(dashboard) for name in METRIC.findall(expr)}
    used |= {name for expr in rule_exprs for name in METRIC.findall(expr)}
    assert used - emitted == set(NO_DATA_EXPECTED)

    def family(name: str) -> str:
        return re.sub(r"_(bucket|sum|count|created|total)$", "", name)

    unshown = sorted(
        {family(n) for n in emitted if n.startswith("openai_stream_")} - {family(n) for n in used}
    )
    print("emitted but on no panel or rule:", unshown)


def test_no_alert_fires_on_a_clean_run(
    processes: tuple[Prom, dict[str, int], list[Demo]], tmp_path: Path
) -> None:
    prom, ports, demos = processes
    demo = Demo("clean", "clean", ports["clean"], tmp_path / "clean.jsonl")
    demos.append(demo)

    def gate() -> None:
        since = time.time()
        _until("a fresh scrape of clean", lambda: _scraped_since(prom, "clean", since))

    demo.run(gate)
    since = time.time()
    _until("the final scrape of clean", functools.partial(_scraped_since, prom, "clean", since))
    # The rules have been evaluated on the clean data (the recording rule has a value) ...
    _until("rules evaluated", lambda: prom.query("streamsentinel:requests:rate5m"))
    completed = prom.query('sum(openai_stream_requests_total{job="clean", outcome="completed"})')
    assert [float(s["value"][1]) for s in completed] == [120.0]
    # ... and no alert is pending or firing.
    assert prom.alert_states() == {}
