"""The main job end to end: ``streamsentinel demo`` against the embedded fault server, synthetic and
replayed, must report ``accounting: OK`` and exit 0."""

from __future__ import annotations

import pytest

import streamsentinel
from streamsentinel.cli import main as cli_main
from streamsentinel.demo import main as demo_main

from .support import RECORDINGS_DIR


@pytest.fixture(autouse=True)
def _not_instrumented() -> None:
    streamsentinel.uninstrument()


def test_demo_default_plan_accounts_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo_main(["--requests", "120", "--metrics-port", "0", "--seed", "3"])
    out = capsys.readouterr().out
    assert "accounting: OK" in out, out
    assert "MISMATCH" not in out
    assert code == 0
    assert not streamsentinel.is_instrumented()  # the demo leaves the SDK as it found it


def test_demo_replay_accounts_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo_main(["--requests", "80", "--metrics-port", "0", "--replay", str(RECORDINGS_DIR)])
    out = capsys.readouterr().out
    assert "accounting: OK" in out, out
    assert code == 0


def test_cli_dispatches_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli_main(["nope"]) == 2


def test_demo_outage_opens_and_closes_the_breaker(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo_main(["--scenario", "outage", "--requests", "120", "--metrics-port", "0"])
    out = capsys.readouterr().out
    assert "accounting: OK" in out, out
    assert "breaker closed at the end" in out
    assert code == 0
