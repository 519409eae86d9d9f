"""Start-up hook for ``streamsentinel run``: instruments the ``openai`` SDK when (and only if) the
process imports it.

``streamsentinel run`` puts this directory first on ``PYTHONPATH``, so Python's ``site`` module
imports this file as ``sitecustomize`` when the interpreter starts. It then:

1. runs the ``sitecustomize`` that would have run without it (the next one on ``sys.path``), if any;
2. puts a finder first on ``sys.meta_path`` that notices when ``openai`` (or ``streamsentinel``)
   has been imported, and only then imports streamsentinel and calls
   :func:`streamsentinel.instrument` (options from the ``STREAMSENTINEL_*`` variables), once,
   unless the application already did: its own options win.

Nothing else is imported at start-up (standard library only, no streamsentinel, openai,
OpenTelemetry or prometheus_client), so a Python process that never imports ``openai`` pays
almost nothing. ``/metrics`` is served by the ``run`` process itself, not here.

It never stops the application: a failure is reported as one line on stderr and the application
carries on (with what did succeed).
"""

from __future__ import annotations

import _thread
import importlib.machinery
import os
import sys

# Only what ``site`` has already loaded: typing, importlib.util (contextlib, re) cost milliseconds.
from importlib._bootstrap import module_from_spec  # what importlib.util.module_from_spec is

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

_HERE = os.path.dirname(os.path.realpath(__file__))
_WATCHED = ("openai", "streamsentinel")

#: the ``sitecustomize`` this one chained to (None if there was none or it failed)
chained: ModuleType | None = None
#: how many times this hook called ``streamsentinel.instrument()`` (0 or 1)
instrument_calls = 0

_once = _thread.allocate_lock()


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
    module: ModuleType = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _loading(name: str, finished: str) -> bool:
    """``name`` or one of its submodules (other than ``finished``, which just ran) is being
    imported right now (in sys.modules, its top level not finished)."""
    prefix = name + "."
    for key, module in list(sys.modules.items()):
        if (
            key != finished
            and (key == name or key.startswith(prefix))
            and getattr(getattr(module, "__spec__", None), "_initializing", False)
        ):
            return True
    return False


def _maybe_instrument(finished: str = "") -> None:
    """Called after ``openai`` or ``streamsentinel`` (``finished``) executed: instrument once, when
    ``openai`` is there and streamsentinel is not half-imported (the application importing
    streamsentinel imports openai first: we then wait for streamsentinel's own hook)."""
    global instrument_calls
    if "openai" not in sys.modules or _loading("streamsentinel", finished):
        return  # a streamsentinel module is half-imported: the outermost one calls us when done
    if not _once.acquire(False):
        return
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _Finder)]
    try:
        import streamsentinel

        # The application's explicit instrument(...) options win: never reconfigure over them.
        if not streamsentinel.is_instrumented() and not streamsentinel._instrumenting():
            instrument_calls += 1
            streamsentinel.instrument()
    except Exception as exc:
        _report("instrumenting openai", exc)


class _Loader:
    """Runs the real loader, then :func:`_maybe_instrument`; the module keeps the real loader."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None:
            spec.loader = self.loader
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        _maybe_instrument(module.__name__)


class _Finder:
    """First on ``sys.meta_path``: wraps the loader of the watched top-level packages."""

    def __init__(self) -> None:
        self._busy = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if (fullname not in _WATCHED and not fullname.startswith("streamsentinel.")) or self._busy:
            return None
        self._busy = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy = False
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
        return spec


def _start() -> None:
    global chained
    try:
        chained = _chain()
    except Exception as exc:
        _report("the chained sitecustomize", exc)
    if "openai" in sys.modules or "streamsentinel" in sys.modules:  # a chained sitecustomize did
        _maybe_instrument()
    else:
        sys.meta_path.insert(0, _Finder())


_start()
