"""The package a user installs: the built wheel, without extras, in a fresh virtual environment.

Proves that the runtime dependencies are what the library imports (no rich, no OpenTelemetry SDK,
no h11 of its own), that ``instrument()`` observes a real stream there, that the demo and the fault server
explain their missing extra in one line, that installing streamsentinel leaves an unrelated
structlog application's tracebacks free of frame locals (rich made structlog render them), and
that the wheel carries the licence, ``py.typed``, the dashboard and the alert rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamsentinel.chaos import ChaosServer

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = {"openai", "opentelemetry-api", "opentelemetry-semantic-conventions"} | {
    "prometheus-client",
    "structlog",
    "wrapt",
}


def _run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    tail = f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{tail}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, ROOT)
    (built,) = out.glob("streamsentinel-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of a new virtual environment with only the wheel (and its dependencies)."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    yield python


def _clean_env() -> dict[str, str]:
    # Nothing of this checkout or its venv leaks into the fresh one.
    ours = ("PYTHON", "STREAMSENTINEL_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _requires(wheel: Path) -> dict[str, list[str]]:
    """Requires-Dist of the wheel's METADATA: name -> markers (empty string: unconditional)."""
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(meta).decode().splitlines()
    out: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith("Requires-Dist: "):
            spec = line.removeprefix("Requires-Dist: ")
            name = spec.split(";")[0].strip()
            for sep in "<>=!~[ (":
                name = name.split(sep)[0]
            marker = spec.split(";", 1)[1].strip() if ";" in spec else ""
            out.setdefault(name.lower(), []).append(marker)
    return out


def test_runtime_dependencies_are_what_the_library_imports(wheel: Path) -> None:
    requires = _requires(wheel)
    unconditional = {name for name, markers in requires.items() if "" in markers}
    assert unconditional == RUNTIME
    for extra_only in ("rich", "h11", "redis", "opentelemetry-sdk", "opentelemetry-instrumentation"):
        assert "" not in requires.get(extra_only, []), extra_only


def test_wheel_ships_licence_types_dashboard_and_rules(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dashboard = json.loads(archive.read("streamsentinel/_assets/streamsentinel.json"))
        rules = archive.read("streamsentinel/_assets/alerts.yml").decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    assert "streamsentinel/py.typed" in names
    assert {
        "streamsentinel/_assets/provisioning/dashboards/streamsentinel.yml",
        "streamsentinel/_assets/provisioning/datasources/prometheus.yml",
    } <= names
    assert dashboard == json.loads((ROOT / "dashboards" / "streamsentinel.json").read_text())
    assert rules == (ROOT / "dashboards" / "alerts.yml").read_text()


def test_instrument_observes_a_stream_without_extras(fresh_python: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, openai, streamsentinel
        from prometheus_client import CollectorRegistry
        registry = CollectorRegistry()
        streamsentinel.instrument(registry=registry, retry_attempts=1)
        client = openai.OpenAI(base_url=sys.argv[1], api_key="k", max_retries=0)
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        total = registry.get_sample_value(
            "openai_stream_requests_total",
            {"operation": "chat", "model": "m", "server": "127.0.0.1", "outcome": "completed"},
        )
        loaded = sorted(m for m in ("rich", "pygments", "opentelemetry.sdk") if m in sys.modules)
        print(repr((len(text) > 0, total, loaded)))
        """
    )
    with ChaosServer(chunks=4) as server:
        out = _run(fresh_python, "-c", script, server.base_url, env=_clean_env(), timeout=120)
    assert out.strip() == repr((True, 1.0, []))


def test_the_demo_names_its_missing_extra_in_one_line(fresh_python: Path) -> None:
    # (h11, the fault server's one need, comes with the SDK's HTTP stack: chaos-server runs.)
    cli = fresh_python.parent / "streamsentinel"
    done = subprocess.run([cli, "demo"], capture_output=True, text=True, timeout=120, env=_clean_env())
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'streamsentinel[demo]'" in lines[0]


def test_an_unrelated_structlog_app_prints_no_frame_locals(fresh_python: Path) -> None:
    """structlog renders frame locals with rich when rich is importable: installing streamsentinel
    must not bring it (an unrelated app printed its API key in a traceback)."""
    app = textwrap.dedent(
        """
        import structlog
        log = structlog.get_logger()
        def call(api_key):
            raise RuntimeError("upstream refused")
        try:
            call(api_key="sk-live-do-not-print")
        except RuntimeError:
            log.exception("call.failed")
        """
    )
    done = subprocess.run(
        [fresh_python, "-c", app], capture_output=True, text=True, timeout=120, env=_clean_env()
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "upstream refused" in output  # the traceback was rendered...
    assert "sk-live-do-not-print" not in output  # ...without the frame's locals


def test_dashboards_command_writes_the_shipped_files(fresh_python: Path, tmp_path: Path) -> None:
    cli = fresh_python.parent / "streamsentinel"
    out = _run(cli, "dashboards", tmp_path / "grafana", env=_clean_env(), timeout=120)
    written = sorted(Path(line).relative_to(tmp_path / "grafana").as_posix() for line in out.splitlines())
    assert written == sorted(
        [
            "alerts.yml",
            "provisioning/dashboards/streamsentinel.yml",
            "provisioning/datasources/prometheus.yml",
            "streamsentinel.json",
        ]
    )
    shipped = json.loads((tmp_path / "grafana" / "streamsentinel.json").read_text())
    assert shipped == json.loads((ROOT / "dashboards" / "streamsentinel.json").read_text())
    again = subprocess.run(
        [cli, "dashboards", tmp_path / "grafana"], capture_output=True, text=True, env=_clean_env()
    )
    assert again.returncode == 1
    assert "exists (--force overwrites)" in again.stderr
