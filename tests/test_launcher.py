"""``streamsentinel run`` and the OpenTelemetry instrumentor, in real child processes: the real SDK
against a real chaos server, ``/metrics`` scraped over HTTP by the application itself."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from streamsentinel.chaos import ChaosServer
from streamsentinel.launcher import BOOTSTRAP_DIR, child_environ
from streamsentinel.launcher import main as run_main
from streamsentinel.otel_instrumentor import StreamSentinelInstrumentor

# The application: structlog to stderr (as a service would configure it), then one chat stream the
# chaos server cuts after 3 events; prints the error's type and whether the stream is an openai.Stream.
APP = """
import os, sys, urllib.request
import openai, structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
client = openai.OpenAI(base_url=os.environ["CHAOS_BASE_URL"], api_key="k", max_retries=0, timeout=10)
def cut_stream():
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"},
    )
    try:
        for _ in stream:
            pass
    except Exception as exc:
        print(type(exc).__name__)
    print(isinstance(stream, openai.Stream))
cut_stream()
"""

SCRAPE = """
body = urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
for line in body.splitlines():
    if line.startswith("openai_stream_truncations_total{{") and 'reason="eof_before_done"' in line:
        print(line.rsplit(" ", 1)[1])
"""

INSTRUMENTOR = """
import os, sys
import openai, structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import streamsentinel
from streamsentinel.otel_instrumentor import StreamSentinelInstrumentor

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
client = openai.OpenAI(base_url=os.environ["CHAOS_BASE_URL"], api_key="k", max_retries=0, timeout=10)
def stream():
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    for _ in s:
        pass
    return s
StreamSentinelInstrumentor().instrument(tracer_provider=provider)
first = streamsentinel._runtime()
StreamSentinelInstrumentor().instrument()
print(streamsentinel._runtime() is first is not None)
s = stream()
print(type(s).__name__, isinstance(s, openai.Stream), len(exporter.get_finished_spans()))
StreamSentinelInstrumentor().uninstrument()
s = stream()
print(not streamsentinel.is_instrumented(), type(s) is openai.Stream, len(exporter.get_finished_spans()))
"""

WHO_LOADED = """
import sys
import streamsentinel
site = sys.modules["sitecustomize"]
print(site.__file__)
print(site.chained.__file__ if site.chained is not None else None)
print(streamsentinel.is_instrumented())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _launcher() -> list[str]:
    script = Path(sys.executable).with_name("streamsentinel")
    return [str(script)] if script.exists() else [sys.executable, "-m", "streamsentinel.cli"]


def _env(chaos: ChaosServer | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSENTINEL_")}
    env.pop("PYTHONPATH", None)
    if chaos is not None:
        env["CHAOS_BASE_URL"] = chaos.base_url
    env.update(extra)
    return env


def _run(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


def _reports(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("streamsentinel:")]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_run_instruments_the_app_and_serves_metrics(chaos: ChaosServer) -> None:
    port = _free_port()
    script = APP + SCRAPE.format(port=port)
    proc = _run(
        [*_launcher(), "run", "--metrics-port", str(port), "--", sys.executable, "-c", script], _env(chaos)
    )
    assert (proc.returncode, proc.stdout) == (0, "StreamTruncatedError\nTrue\n1.0\n"), proc.stderr
    assert "stream.truncated" in proc.stderr
    assert _reports(proc.stderr) == []


def test_entry_point_is_openai_streams() -> None:
    eps = importlib.metadata.entry_points(group="opentelemetry_instrumentor")
    ours = [ep for ep in eps if ep.value.startswith("streamsentinel.")]
    assert [(ep.name, ep.value) for ep in ours] == [
        ("openai_streams", "streamsentinel.otel_instrumentor:StreamSentinelInstrumentor")
    ]
    assert ours[0].load() is StreamSentinelInstrumentor
    assert StreamSentinelInstrumentor().instrumentation_dependencies() == ("openai >= 3.51, < 4",)


@pytest.mark.parametrize("disabled", ["", "openai_streams"])
def test_opentelemetry_instrument_loads_it(disabled: str) -> None:
    otel = Path(sys.executable).with_name("opentelemetry-instrument")
    env = _env(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled)
    argv = [str(otel), "--traces_exporter", "none", "--metrics_exporter", "none", "--logs_exporter", "none"]
    script = "import streamsentinel; print(streamsentinel.is_instrumented())"
    proc = _run([*argv, sys.executable, "-c", script], env)
    assert (proc.returncode, proc.stdout) == (0, f"{not disabled}\n"), proc.stderr


def test_instrumentor_twice_then_uninstrument(chaos: ChaosServer) -> None:
    proc = _run([sys.executable, "-c", INSTRUMENTOR], _env(chaos))
    assert (proc.returncode, proc.stdout) == (0, "True\nObservedStream True 1\nTrue True 1\n"), proc.stderr


def test_broken_setting_does_not_stop_the_app(chaos: ChaosServer) -> None:
    env = _env(chaos, STREAMSENTINEL_RETRY_ATTEMPTS="abc")
    proc = _run([*_launcher(), "run", "--metrics-port", "0", "--", sys.executable, "-c", APP], env)
    assert proc.returncode == 0, proc.stderr
    # Logged once by instrument() (structlog, before the app configured it), default used.
    assert proc.stdout.count("config.invalid_env") == 1
    assert proc.stdout.splitlines()[-2:] == ["StreamTruncatedError", "True"]
    assert _reports(proc.stderr) == []


def test_metrics_port_in_use_is_reported_once(chaos: ChaosServer, busy_port: int) -> None:
    argv = [*_launcher(), "run", "--metrics-port", str(busy_port), "--", sys.executable, "-c", APP]
    proc = _run(argv, _env(chaos))
    assert (proc.returncode, proc.stdout) == (0, "StreamTruncatedError\nTrue\n"), proc.stderr
    [report] = _reports(proc.stderr)
    assert report.startswith("streamsentinel: serving /metrics failed: OSError")


@pytest.mark.parametrize("broken", [False, True], ids=["chained", "chained_raises"])
def test_chains_the_next_sitecustomize(tmp_path: Path, broken: bool) -> None:
    body = "raise RuntimeError('boom')\n" if broken else "print('other sitecustomize ran')\n"
    other = tmp_path / "sitecustomize.py"
    other.write_text(body)
    env = _env(PYTHONPATH=str(tmp_path))
    proc = _run([*_launcher(), "run", "--metrics-port", "0", "--", sys.executable, "-c", WHO_LOADED], env)
    ours = str(Path(BOOTSTRAP_DIR, "sitecustomize.py"))
    if broken:
        assert (proc.returncode, proc.stdout) == (0, f"{ours}\nNone\nTrue\n"), proc.stderr
        assert _reports(proc.stderr) == [
            "streamsentinel: the chained sitecustomize failed: RuntimeError: boom"
        ]
    else:
        # Once in the launcher's own interpreter (it inherits PYTHONPATH too), once in the app's.
        expected = f"other sitecustomize ran\nother sitecustomize ran\n{ours}\n{other}\nTrue\n"
        assert (proc.returncode, proc.stdout) == (0, expected), proc.stderr
        assert _reports(proc.stderr) == []


def test_child_environ_puts_bootstrap_first_once() -> None:
    env = child_environ({"PYTHONPATH": os.pathsep.join(["/a", BOOTSTRAP_DIR])}, 0, "0.0.0.0")
    assert env["PYTHONPATH"] == os.pathsep.join([BOOTSTRAP_DIR, "/a"])
    assert (env["STREAMSENTINEL_METRICS_PORT"], env["STREAMSENTINEL_METRICS_ADDR"]) == ("0", "0.0.0.0")
    assert child_environ({}, 9464, "127.0.0.1")["PYTHONPATH"] == BOOTSTRAP_DIR


def test_run_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--metrics-port", "0"]) == 2
    assert run_main(["--", "streamsentinel-no-such-command-xyz"]) == 127
    assert "command not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(["--metrics-port", "70000", "--", "true"])
