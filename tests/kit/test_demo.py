"""The main job end to end: ``streamsentinel demo`` against the embedded fault server, synthetic and
replayed, must report ``accounting: OK`` and exit 0."""

from __future__ import annotations

import importlib

import pytest

import streamsentinel
from streamsentinel.chaos import ChaosServer, Fault
from streamsentinel.cli import main as cli_main
from streamsentinel.demo import main as demo_main

from ..support import RECORDINGS_DIR


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


STALLS = {Fault.STALL_BEFORE_HEADERS, Fault.STALL_BEFORE_FIRST_TOKEN, Fault.STALL_MID_STREAM}


def test_demo_read_timeout_longer_than_the_stalls_accounts_exactly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault server ends its stalls after 3 s: a client with a 5 s read timeout is still waiting
    and sees the connection lost, not a timeout. Ground truth follows what the server and the
    client did, so the accounting is exact on any machine."""
    servers: list[ChaosServer] = []

    class RecordedServer(ChaosServer):
        def start(self) -> RecordedServer:
            servers.append(self)
            super().start()
            return self

    monkeypatch.setattr(importlib.import_module("streamsentinel.demo.main"), "ChaosServer", RecordedServer)
    code = demo_main(["--requests", "40", "--metrics-port", "0", "--read-timeout", "5", "--seed", "1"])
    out = capsys.readouterr().out
    assert "accounting: OK" in out, out
    assert "MISMATCH" not in out
    assert code == 0
    (server,) = servers
    stalls = [r for r in server.records if r.fault in STALLS]
    assert stalls, "seed 1 draws stalls in the first 40 requests"
    # Each stall ended one way: the server closed it after stall_seconds, or the client left.
    assert all(r.stall_expired is not r.client_disconnected for r in stalls)
    assert all(r.stall_seconds is not None for r in stalls)


def test_demo_fleet_shares_one_breaker_across_processes(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo_main(["--scenario", "fleet", "--metrics-port", "0"])
    out = capsys.readouterr().out
    assert "accounting: OK" in out, out
    assert "probes permitted fleet-wide" in out
    assert code == 0
