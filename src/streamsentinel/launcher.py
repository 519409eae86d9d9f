"""``streamsentinel run``: start a Python service with streamsentinel loaded, without changing its code.

``streamsentinel run [--metrics-port 9464 | --no-metrics] [--metrics-addr 127.0.0.1] -- COMMAND ...``
puts the ``_bootstrap`` directory (its ``sitecustomize.py``) first on ``PYTHONPATH``: every Python
interpreter under COMMAND that imports ``openai`` is instrumented at that moment (one that never
does pays nothing); ``STREAMSENTINEL_*`` variables configure it as usual.

With a metrics port, ``run`` stays COMMAND's parent process:

* it creates an empty directory for prometheus_client's multiprocess mode and passes it as
  ``PROMETHEUS_MULTIPROC_DIR`` (unless that is already set: then it uses that one and leaves it
  alone), so every process and pre-fork worker (gunicorn, ``uvicorn --workers``) writes its
  metrics there;
* it serves ``/metrics`` itself, summing every process's files (the live gauges of processes that
  are gone are dropped at each scrape, in its own directory); no worker ever binds the port: an
  application's own :func:`streamsentinel.start_metrics_server` call is answered by logging once
  that ``run`` serves them (``STREAMSENTINEL_RUN_METRICS`` tells it where) and serves nothing;
  ``--metrics-port 0`` picks a free port, named in one line on stderr;
* it forwards the signals a supervisor or an operator sends (TERM, INT, HUP, QUIT, USR1, USR2,
  WINCH, TTIN, TTOU) to COMMAND, but not the ones the terminal already sent to the whole
  foreground process group (Ctrl-C reaches COMMAND once);
* when COMMAND exits it stops serving, removes its directory and exits with COMMAND's status
  (killed by a signal: it kills itself with the same signal).

With ``--no-metrics`` it ``exec``s COMMAND (same PID) and serves nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["BOOTSTRAP_DIR", "child_environ", "main"]

#: the directory holding the start-up ``sitecustomize.py``
BOOTSTRAP_DIR = str(Path(__file__).resolve().parent / "_bootstrap")

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"
SERVED_VAR = "STREAMSENTINEL_RUN_METRICS"  # where run serves /metrics (http://ADDR:PORT/metrics)

#: forwarded to COMMAND (TSTP is not: the terminal stops the whole group, ``run`` included)
FORWARDED = tuple(
    getattr(signal, name)
    for name in (
        "SIGTERM",
        "SIGINT",
        "SIGHUP",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGWINCH",
        "SIGTTIN",
        "SIGTTOU",
    )
    if hasattr(signal, name)
)
_SI_KERNEL = 0x80  # Linux si_code: sent by the kernel (the tty to its foreground process group)


def child_environ(environ: Mapping[str, str], multiproc_dir: str | None = None) -> dict[str, str]:
    """``environ`` with the bootstrap directory first on ``PYTHONPATH`` (once) and, if given,
    ``PROMETHEUS_MULTIPROC_DIR`` set."""
    env = dict(environ)
    entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *entries])
    if multiproc_dir:
        env[MULTIPROC_VAR] = multiproc_dir
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
        "and serving /metrics (summed over all of COMMAND's processes).",
        epilog="Sets PYTHONPATH (bootstrap first) and PROMETHEUS_MULTIPROC_DIR (a directory of its "
        "own, removed at exit, unless already set); STREAMSENTINEL_* variables configure instrument().",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=9464,
        metavar="PORT",
        help="serve /metrics on this port; 0: a free port (default: %(default)s)",
    )
    parser.add_argument("--no-metrics", action="store_true", help="serve nothing: exec COMMAND (same PID)")
    parser.add_argument(
        "--metrics-addr", default="127.0.0.1", metavar="ADDR", help="bind address (default: %(default)s)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return parser


def _not_runnable(command: str, exc: OSError) -> int:
    if isinstance(exc, FileNotFoundError):
        print(f"streamsentinel run: command not found: {command}", file=sys.stderr)
        return 127
    print(f"streamsentinel run: cannot run {command}: {exc}", file=sys.stderr)
    return 126


def _exec(command: list[str], env: dict[str, str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        return _not_runnable(command[0], exc)
    return 0  # not reached: execvpe does not return


def _serve(port: int, addr: str, path: str, own: bool, env: dict[str, str]) -> WSGIServer | None:
    """Start serving ``path`` summed and say where in ``env``; on failure report one line and return
    None."""
    try:
        from .metrics_server import multiprocess_registry, start_metrics_server

        server, _ = start_metrics_server(port, addr, multiprocess_registry(path, prune_dead=own))
        env[SERVED_VAR] = f"http://{addr}:{server.server_port}/metrics"
        if port == 0:
            print(f"streamsentinel run: serving {env[SERVED_VAR]}", file=sys.stderr, flush=True)
        return server
    except Exception as exc:
        print(f"streamsentinel: serving /metrics failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _wait_forwarding(pid: int) -> int:
    """Wait for ``pid`` (FORWARDED and SIGCHLD blocked in every thread), forwarding signals."""
    waitset = {*FORWARDED, signal.SIGCHLD}
    same_group = os.getpgid(pid) == os.getpgrp()
    while True:
        info = signal.sigwaitinfo(waitset)
        if info.si_signo == signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return os.waitstatus_to_exitcode(status)
        elif not (info.si_code == _SI_KERNEL and same_group):
            try:
                os.kill(pid, info.si_signo)
            except ProcessLookupError:
                pass


def _supervise(command: list[str], env: dict[str, str], port: int, addr: str, path: str, own: bool) -> int:
    """Serve /metrics, run COMMAND as a child, forward signals; COMMAND's exit code (-N: signal N)."""
    if not hasattr(os, "posix_spawnp") or not hasattr(signal, "sigwaitinfo"):  # not Linux/BSD
        server = _serve(port, addr, path, own, env)
        try:
            return subprocess.call(command, env=env)
        except OSError as exc:
            return _not_runnable(command[0], exc)
        finally:
            _stop(server)
    # Blocked before any thread starts, so no thread of ours takes them (the server thread
    # inherits the mask); the child gets an empty mask.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*FORWARDED, signal.SIGCHLD})
    server = _serve(port, addr, path, own, env)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.posix_spawnp(
                command[0],
                command,
                env,
                setsigmask=(),
                # Python ignores SIGPIPE and SIGXFSZ; the command gets the defaults (as subprocess).
                setsigdef=tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, n)),
            )
        except OSError as exc:
            return _not_runnable(command[0], exc)
        return _wait_forwarding(pid)
    finally:
        _stop(server)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _stop(server: WSGIServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def _die_like(code: int) -> int:
    """Exit status of a child killed by signal ``-code``: die of the same signal (else 128+N)."""
    signum = -code
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    except (OSError, ValueError, AttributeError):
        pass
    return 128 + signum


def main(argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the command; returns its exit status (2: usage, 126/127: not runnable)."""
    parser = _parser()
    args = parser.parse_args(list(argv))
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.print_usage(sys.stderr)
        print("streamsentinel run: missing COMMAND (after --)", file=sys.stderr)
        return 2
    if args.no_metrics:
        return _exec(command, child_environ(os.environ))
    path = os.environ.get(MULTIPROC_VAR, "")
    own = not path
    if own:
        path = tempfile.mkdtemp(prefix="streamsentinel-metrics-")
    try:
        code = _supervise(
            command, child_environ(os.environ, path), args.metrics_port, args.metrics_addr, path, own
        )
    finally:
        if own:
            shutil.rmtree(path, ignore_errors=True)
    return _die_like(code) if code < 0 else code
