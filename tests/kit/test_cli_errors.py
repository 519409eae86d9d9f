"""Expected user errors of the ``streamsentinel`` CLI end with one clear line on stderr and an exit
code (2: usage, 1: the run failed, 130: Ctrl-C), never a traceback; ``--version``."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import streamsentinel
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan
from streamsentinel.cli import main as cli_main
from streamsentinel.demo import main as demo_main

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def _not_instrumented() -> Iterator[None]:
    streamsentinel.uninstrument()
    yield
    streamsentinel.uninstrument()


@pytest.fixture
def listening() -> Iterator[int]:
    """A port in use: a socket listening on it for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def refused() -> Iterator[int]:
    """A port that refuses connections: bound, never listening, held for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def streamsentinel_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamsentinel.cli", *args]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out == f"streamsentinel {importlib.metadata.version('streamsentinel')}\n"
    assert "--version" in (cli_main(["--help"]), capsys.readouterr().out)[1]


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_demo_replay_needs_recordings(
    folder: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing" if folder == "missing" else tmp_path
    assert demo_main(["--replay", str(path), "--metrics-port", "0"]) == 2
    captured = capsys.readouterr()
    reason = "no such directory" if folder == "missing" else "no recordings in it"
    assert one_line(captured.err).startswith(f"streamsentinel demo: --replay {path}: {reason}")
    assert captured.out == ""  # no synthetic run instead


def test_demo_base_url_on_a_closed_port_fails(
    refused: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    base_url = f"http://127.0.0.1:{refused}/v1"
    assert demo_main(["--base-url", base_url, "--metrics-port", "0"]) == 1
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith(f"streamsentinel demo: cannot connect to {base_url}: ")
    assert "accounting" not in captured.out


def test_demo_base_url_that_answers_nothing_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that accepts connections but answers every request with an error: no stream
    ran, so no `accounting: OK`."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with ChaosServer(FaultPlan(weights={Fault.SERVER_ERROR: 1.0})) as server:
        code = demo_main(["--base-url", server.base_url, "--metrics-port", "0", "--requests", "8"])
    captured = capsys.readouterr()
    assert code == 1
    line = one_line(captured.err)
    assert line.startswith(f"streamsentinel demo: no stream got an answer from {server.base_url}: ")
    assert "accounting: OK" not in captured.out


def test_demo_base_url_needs_a_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert demo_main(["--base-url", "http://127.0.0.1:1/v1"]) == 2
    assert one_line(capsys.readouterr().err) == "streamsentinel demo: --base-url needs OPENAI_API_KEY"


def test_demo_metrics_port_in_use(listening: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main(["--metrics-port", str(listening), "--requests", "4"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"streamsentinel demo: cannot serve /metrics on 127.0.0.1:{listening}: ")
    assert "in use" in line and "--metrics-port" in line
    assert not streamsentinel.is_instrumented()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "argument --concurrency: must be >= 1, got 0"),
        (["--requests", "-3"], "argument --requests: must be >= 1, got -3"),
        (["--read-timeout", "0"], "argument --read-timeout: must be > 0, got 0"),
        (["--metrics-port", "70000"], "argument --metrics-port: not a port (0-65535): 70000"),
    ],
)
def test_demo_bad_numbers_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        demo_main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"streamsentinel demo: error: {message}"
    assert "Traceback" not in err


def test_demo_interrupted_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler itself: Ctrl-C while the workload runs ends the demo with 130 and one line,
    after it cleaned up (SDK uninstrumented)."""

    def interrupted(**kwargs: Any) -> list[Any]:
        assert streamsentinel.is_instrumented()
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("streamsentinel.demo.main"), "run_workload", interrupted)
    assert demo_main(["--metrics-port", "0", "--requests", "4"]) == 130
    assert one_line(capsys.readouterr().err) == "streamsentinel demo: interrupted"
    assert not streamsentinel.is_instrumented()


def test_cli_interrupted_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(argv: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("streamsentinel.launcher.main", interrupted)
    assert cli_main(["run", "--", "true"]) == 130
    assert one_line(capsys.readouterr().err) == "streamsentinel: interrupted"


def _signal_state(pid: int) -> str:
    """The signal lines of ``/proc/PID/status`` (blocked, ignored, caught, pending), for a report."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return str(exc)
    wanted = ("SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd")
    return "; ".join(line for line in lines if line.startswith(wanted))


def test_demo_sigint_mid_run() -> None:
    """A real Ctrl-C: SIGINT once the demo printed its first line (its traffic is running)."""
    # A child inherits its parent's blocked and ignored signals: a suite started as a background
    # job (SIGINT ignored) would give a demo that cannot be interrupted. A handler is not inherited:
    # with one set while the child starts, the child gets SIGINT's default, as from a terminal.
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, []), "SIGINT blocked here"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            streamsentinel_cli("demo", "--metrics-port", "0", "--requests", "1000000"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("target: http://127.0.0.1:"), first
        proc.send_signal(signal.SIGINT)
        try:
            _out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit 120 s after SIGINT: {_signal_state(proc.pid)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert one_line(err) == "streamsentinel demo: interrupted"


def test_run_metrics_port_in_use_still_runs_the_app(listening: int) -> None:
    result = subprocess.run(
        streamsentinel_cli(
            "run", "--metrics-port", str(listening), "--", sys.executable, "-c", "print('app ran')"
        ),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout == "app ran\n"
    assert one_line(result.stderr).startswith("streamsentinel: serving /metrics failed: ")
    assert "in use" in result.stderr


def test_chaos_server_port_in_use(listening: int) -> None:
    result = subprocess.run(
        streamsentinel_cli("chaos-server", "--port", str(listening)),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(f"chaos-server: cannot listen on 127.0.0.1:{listening}: ")
