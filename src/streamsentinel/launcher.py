"""``streamsentinel run``: start a Python service with streamsentinel loaded, without changing its code.

``streamsentinel run [--metrics-port 9464] [--metrics-addr 127.0.0.1] -- COMMAND [ARGS...]`` puts
the ``_bootstrap`` directory (its ``sitecustomize.py``) first on ``PYTHONPATH``, sets
``STREAMSENTINEL_METRICS_PORT`` / ``STREAMSENTINEL_METRICS_ADDR`` and replaces itself with COMMAND
(``os.execvpe``: same PID, signals go straight to the application). Every Python interpreter that
starts under COMMAND and can import streamsentinel is instrumented at start-up, before the
application imports ``openai``; other ``STREAMSENTINEL_*`` variables configure it as usual.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["BOOTSTRAP_DIR", "child_environ", "main"]

#: the directory holding the start-up ``sitecustomize.py``
BOOTSTRAP_DIR = str(Path(__file__).resolve().parent / "_bootstrap")

PORT_VAR = "STREAMSENTINEL_METRICS_PORT"
ADDR_VAR = "STREAMSENTINEL_METRICS_ADDR"


def child_environ(environ: Mapping[str, str], port: int, addr: str) -> dict[str, str]:
    """``environ`` with the bootstrap directory first on ``PYTHONPATH`` (once) and the metrics
    variables set (port 0: no ``/metrics``)."""
    env = dict(environ)
    entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *entries])
    env[PORT_VAR] = str(port)
    env[ADDR_VAR] = addr
    return env


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(raw)
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamsentinel run",
        description="Run COMMAND with streamsentinel instrumenting every openai streaming call "
        "and serving /metrics.",
        epilog="Sets PYTHONPATH (bootstrap first), STREAMSENTINEL_METRICS_PORT and "
        "STREAMSENTINEL_METRICS_ADDR; other STREAMSENTINEL_* variables configure instrument().",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=9464,
        metavar="PORT",
        help="serve /metrics on this port; 0: do not serve (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-addr", default="127.0.0.1", metavar="ADDR", help="bind address (default: %(default)s)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return parser


def main(argv: Sequence[str]) -> int:
    """Parse ``argv`` and exec the command; returns only on error (2: usage, 126/127: not runnable)."""
    parser = _parser()
    args = parser.parse_args(list(argv))
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.print_usage(sys.stderr)
        print("streamsentinel run: missing COMMAND (after --)", file=sys.stderr)
        return 2
    env = child_environ(os.environ, args.metrics_port, args.metrics_addr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        print(f"streamsentinel run: command not found: {command[0]}", file=sys.stderr)
        return 127
    except OSError as exc:
        print(f"streamsentinel run: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 126
    return 0  # not reached: execvpe does not return
