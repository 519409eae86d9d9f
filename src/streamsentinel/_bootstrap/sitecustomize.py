"""Start-up hook for ``streamsentinel run``: instruments the ``openai`` SDK before the application
imports it.

``streamsentinel run`` puts this directory first on ``PYTHONPATH``, so Python's ``site`` module
imports this file as ``sitecustomize`` when the interpreter starts. It then:

1. runs the ``sitecustomize`` that would have run without it (the next one on ``sys.path``), if any;
2. calls :func:`streamsentinel.instrument` (options from the ``STREAMSENTINEL_*`` variables);
3. serves ``/metrics`` on ``STREAMSENTINEL_METRICS_ADDR`` (default ``127.0.0.1``) and
   ``STREAMSENTINEL_METRICS_PORT`` (unset or ``0``: not served).

It never stops the application: a failure in any step is reported as one line on stderr and the
application starts anyway (with what did succeed).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

_HERE = os.path.dirname(os.path.realpath(__file__))

#: the ``sitecustomize`` this one chained to (None if there was none or it failed)
chained: ModuleType | None = None


def _report(step: str, exc: BaseException) -> None:
    try:
        print(f"streamsentinel: {step} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    except Exception:
        pass


def _is_here(entry: str) -> bool:
    try:
        return os.path.realpath(entry or os.curdir) == _HERE
    except (OSError, ValueError):
        return False


def _chain() -> ModuleType | None:
    """Import the next ``sitecustomize`` on ``sys.path`` (skipping this directory) under its own
    name, without replacing this module in ``sys.modules``."""
    path = [entry for entry in sys.path if isinstance(entry, str) and not _is_here(entry)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None or spec.origin is None:
        return None
    if os.path.dirname(os.path.realpath(spec.origin)) == _HERE:  # reached through a symlinked dir
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start() -> None:
    global chained
    try:
        chained = _chain()
    except Exception as exc:
        _report("the chained sitecustomize", exc)
    try:
        import streamsentinel

        streamsentinel.instrument()
    except Exception as exc:
        _report("instrumenting openai", exc)
        return
    try:
        port = int(os.environ.get("STREAMSENTINEL_METRICS_PORT", "0") or "0")
        if port:
            addr = os.environ.get("STREAMSENTINEL_METRICS_ADDR", "") or "127.0.0.1"
            streamsentinel.start_metrics_server(port, addr)
            # Python processes this one starts inherit the bootstrap: they are instrumented too,
            # but the port is taken, so they do not try to serve it again.
            os.environ["STREAMSENTINEL_METRICS_PORT"] = "0"
    except Exception as exc:
        _report("serving /metrics", exc)


_start()
