"""``streamsentinel run`` and the OpenTelemetry instrumentor, in real child processes: the real SDK
against a real chaos server, ``/metrics`` scraped over HTTP by the application itself."""

from __future__ import annotations

import importlib.metadata
import os
import signal
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
import openai
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
    proc = _run([*_launcher(), "run", "--no-metrics", "--", sys.executable, "-c", APP], env)
    assert proc.returncode == 0, proc.stderr
    # Logged once by instrument() (through logging, on stderr: structlog was not configured yet).
    assert proc.stderr.count("config.invalid_env") == 1 and "config.invalid_env" not in proc.stdout
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
    proc = _run([*_launcher(), "run", "--no-metrics", "--", sys.executable, "-c", WHO_LOADED], env)
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
    env = child_environ({"PYTHONPATH": os.pathsep.join(["/a", BOOTSTRAP_DIR])})
    assert env["PYTHONPATH"] == os.pathsep.join([BOOTSTRAP_DIR, "/a"])
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    env = child_environ({}, "/tmp/m")
    assert (env["PYTHONPATH"], env["PROMETHEUS_MULTIPROC_DIR"]) == (BOOTSTRAP_DIR, "/tmp/m")


def test_run_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--no-metrics"]) == 2
    assert run_main(["--", "streamsentinel-no-such-command-xyz"]) == 127
    assert "command not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(["--metrics-port", "70000", "--", "true"])


# Printed by an atexit hook: what a process that never imports openai has loaded at exit.
HEAVY = """
import atexit, sys
HEAVY = ("streamsentinel", "openai", "opentelemetry", "prometheus_client", "structlog", "wrapt", "httpx")
def loaded():
    print(sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY}))
    print("streamsentinel._core" in sys.modules)
atexit.register(loaded)
import json, http.client  # the application's own work
print(type(sys.modules["sitecustomize"].chained).__name__)
"""


@pytest.mark.parametrize("port", ["none", "0", "free"])
def test_process_without_openai_loads_nothing_heavy(port: str) -> None:
    serving = (
        ["--no-metrics"]
        if port == "none"
        else ["--metrics-port", str(_free_port()) if port == "free" else port]
    )
    argv = [*_launcher(), "run", *serving, "--", sys.executable, "-c", HEAVY]
    proc = _run(argv, _env())
    assert (proc.returncode, proc.stdout) == (0, "NoneType\n[]\nFalse\n"), proc.stderr
    assert _reports(proc.stderr) == []
    named = [line for line in proc.stderr.splitlines() if line.startswith("streamsentinel run: serving ")]
    # --metrics-port 0 is a free port (as for the demo), named once on stderr.
    assert len(named) == (1 if port == "0" else 0), proc.stderr


ONCE = """
import sys
{imports}
import streamsentinel
print(streamsentinel.is_instrumented(), sys.modules["sitecustomize"].instrument_calls)
"""


@pytest.mark.parametrize(
    "imports",
    [
        "import openai",
        "import openai, streamsentinel",
        "import streamsentinel; import openai",
        "from streamsentinel import instrument; import openai",
        "import streamsentinel.testing; import openai",
        "import openai; import importlib; importlib.reload(openai)",
    ],
)
def test_importing_openai_instruments_exactly_once(imports: str) -> None:
    # (Importing streamsentinel alone imports no openai: nothing is instrumented until openai is.)
    argv = [*_launcher(), "run", "--no-metrics", "--", sys.executable, "-c"]
    proc = _run([*argv, ONCE.format(imports=imports)], _env())
    assert (proc.returncode, proc.stdout) == (0, "True 1\n"), proc.stderr
    assert _reports(proc.stderr) == []


# The application's own options: record truncations instead of raising. Its cut stream ends
# without an exception and /metrics (served by run) counts the truncation.
RECORD = """
import os, sys, urllib.request
{prelude}
client = openai.OpenAI(base_url=os.environ["CHAOS_BASE_URL"], api_key="k", max_retries=0, timeout=10)
stream = client.chat.completions.create(
    model="m", messages=[{{"role": "user", "content": "hi"}}], stream=True,
    extra_headers={{"x-chaos-fault": "eof_chunked", "x-chaos-after": "3"}},
)
print(sum(1 for _ in stream), streamsentinel.is_instrumented(), sys.modules["sitecustomize"].instrument_calls)
"""


@pytest.mark.parametrize(
    ("prelude", "bootstrap_calls"),
    [
        # instrument() before openai is imported: the app instruments, the hook has nothing to do
        ("import streamsentinel\nstreamsentinel.instrument(on_truncation='record')\nimport openai", 0),
        # openai first: the hook instruments with the defaults, the app reconfigures
        ("import openai\nimport streamsentinel\nstreamsentinel.instrument(on_truncation='record')", 1),
        (
            "import openai\nimport streamsentinel\nstreamsentinel.instrument(on_truncation='raise')\n"
            "streamsentinel.instrument(on_truncation='record')",
            1,
        ),
    ],
    ids=["instrument_first", "openai_first", "reconfigured_twice"],
)
def test_app_options_win_under_run(chaos: ChaosServer, prelude: str, bootstrap_calls: int) -> None:
    port = _free_port()
    script = RECORD.format(prelude=prelude) + SCRAPE.format(port=port)
    argv = [*_launcher(), "run", "--metrics-port", str(port), "--", sys.executable, "-c", script]
    proc = _run(argv, _env(chaos, STREAMSENTINEL_ON_TRUNCATION="raise"))
    assert (proc.returncode, proc.stdout) == (0, f"3 True {bootstrap_calls}\n1.0\n"), proc.stderr
    assert _reports(proc.stderr) == []


# Under run with a metrics port, the command is run's child: run forwards what it is sent, exits
# with the command's status and removes the multiprocess directory it made.
SIGNALLED = """
import os, signal, sys
def on_signal(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGHUP, on_signal)
print(os.environ["PROMETHEUS_MULTIPROC_DIR"], os.getppid(), flush=True)
signal.pause()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_run_forwards_signals_and_removes_its_directory(signum: int) -> None:
    argv = [*_launcher(), "run", "--metrics-port", str(_free_port()), "--", sys.executable, "-c", SIGNALLED]
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        directory, parent = proc.stdout.readline().split()  # the handlers are installed
        assert int(parent) == proc.pid and Path(directory).is_dir()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (3, f"got {signal.Signals(signum).name}\n"), err
    assert not Path(directory).exists()


def test_run_dies_of_the_signal_that_killed_the_command() -> None:
    script = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    argv = [*_launcher(), "run", "--metrics-port", str(_free_port()), "--", sys.executable, "-c", script]
    proc = _run(argv, _env())
    assert proc.returncode == -signal.SIGTERM, proc.stderr


def test_run_keeps_a_multiprocess_directory_it_was_given(tmp_path: Path) -> None:
    script = "import os; print(os.environ['PROMETHEUS_MULTIPROC_DIR'])"
    argv = [*_launcher(), "run", "--metrics-port", str(_free_port()), "--", sys.executable, "-c", script]
    proc = _run(argv, _env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)))
    assert (proc.returncode, proc.stdout) == (0, f"{tmp_path}\n"), proc.stderr
    assert tmp_path.is_dir()
