"""Applying and taking out ``wrapt`` patches on SDK classes, coexisting with other instrumentations.

Patches are class attributes replaced by ``wrapt.FunctionWrapper``s and restored to the exact
original object by :func:`remove`, unless another instrumentation wrapped the same attribute after
us: then our layer stays in its chain as a pass-through (so theirs keeps working) and is taken out
once it is on top again.

A patch of a module not imported yet is deferred: the SDK imports its resource modules
(``openai.resources.chat.completions.completions``...) on a client's first ``.chat``/``.responses``,
and importing them only to patch them would cost every host several MiB. A ``wrapt`` post-import
hook (one per module and process: wrapt has no unregister) applies the module's pending patches
when the application imports it; :func:`remove` empties the pending table, so a hook that fires
later does nothing. The trade-off: a private name that moved in a deferred module cannot be
checked at ``instrument()`` without importing the module; it is counted and logged when the
module is imported (the module is then left unpatched, the host's import never fails), and
``tests/sdk/test_sdk_hooks.py`` checks every name at SDK-upgrade time.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import ModuleType
from typing import Any, cast

import wrapt

from .. import _forksafe as forksafe

_Wrapper = Callable[..., Any]
OnError = Callable[[BaseException], None]


class _Switch(list):  # type: ignore[type-arg]
    """Turns one applied patch into a pass-through when it cannot be taken out: wrapt's
    ``enabled`` flag, read by wrapt's C code as a truth value (a non-empty list: on), so a patched
    call costs no Python frame of ours before the wrapper."""

    def __init__(self) -> None:
        super().__init__((True,))

    def off(self) -> None:
        self.clear()


# Guards the tables below; never held while importing or waiting for an import (an importing
# thread runs our hook under its module's import lock, then takes this one: that order always).
_lock = threading.RLock()
# (owner, method, original attribute, our FunctionWrapper, its switch)
_applied: list[tuple[type, str, Any, Any, _Switch]] = []
# Our switched-off wrappers left inside another instrumentation's chain: id -> (owner, method,
# wrapper, what it wraps).
_inert: dict[int, tuple[type, str, Any, Any]] = {}
# Deferred patches by module name: (class, method, wrapper, on_error), applied by the module's hook.
_pending: dict[str, list[tuple[str, str, _Wrapper, OnError]]] = {}
# Modules with a wrapt hook registered and not fired yet.
_hooked: set[str] = set()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # another thread of the parent may have held it


forksafe.register_function(_after_fork_in_child)


def _is_layer(attribute: Any, function_wrapper: Any) -> bool:
    # Another instrumentation that wrapped ours read it through the class, which gives wrapt's
    # BoundFunctionWrapper (its `_self_parent` is our FunctionWrapper); unwrapping puts that back.
    return attribute is function_wrapper or getattr(attribute, "_self_parent", None) is function_wrapper


def _strip_inert() -> None:
    for key, (owner, method, function_wrapper, wrapped) in list(_inert.items()):
        if _is_layer(owner.__dict__.get(method), function_wrapper):
            setattr(owner, method, wrapped)
            del _inert[key]


def _apply(module: ModuleType, patches: list[tuple[str, str, _Wrapper]]) -> None:
    """Apply ``patches`` of ``module``, all or none: raises (nothing applied) if a name is missing.
    Call with ``_lock`` held."""
    resolved = []
    for class_name, method, wrapper in patches:
        owner = getattr(module, class_name, None)
        if owner is None:
            raise AttributeError(f"openai changed: {module.__name__}.{class_name} is missing")
        if method not in owner.__dict__:
            raise KeyError(f"openai changed: {module.__name__}.{class_name}.{method} is missing")
        resolved.append((owner, method, owner.__dict__[method], wrapper))
    _strip_inert()
    for owner, method, original_attribute, wrapper in resolved:
        switch = _Switch()
        # A list's truth is read in C; a __bool__ (what wrapt's stub asks for) would be a Python call.
        function_wrapper = wrapt.FunctionWrapper(original_attribute, wrapper, enabled=switch)  # type: ignore[arg-type]
        setattr(owner, method, function_wrapper)
        _applied.append((owner, method, original_attribute, function_wrapper, switch))


def _on_import(module: ModuleType) -> None:
    """wrapt's post-import hook: apply the module's pending patches. Never raises into the
    importing code: a missing name is reported to each patch's ``on_error`` and the module is
    left unpatched."""
    name = module.__name__
    with _lock:
        _hooked.discard(name)
        pending = _pending.pop(name, None)
        if not pending:
            return
        try:
            _apply(module, [(c, m, w) for c, m, w, _ in pending])
            return
        except Exception as exc:
            failure = exc
    for on_error in {id(e): e for *_, e in pending}.values():  # outside the lock: they log
        try:
            on_error(failure)
        except Exception:
            pass


def _import_lock(name: str) -> AbstractContextManager[Any]:
    """The import system's lock of module ``name``: while it is held, no other thread is between
    looking the module up (where wrapt's finder sees the hooks registered so far) and executing
    it. Private to CPython (``importlib._bootstrap``, 3.3 and later); without it, an import that
    another thread began just before a hook was registered would be missed."""
    manager = getattr(getattr(importlib, "_bootstrap", None), "_ModuleLockManager", None)
    return nullcontext() if manager is None else cast("AbstractContextManager[Any]", manager(name))


def patch(
    module_name: str,
    class_name: str,
    method: str,
    wrapper: _Wrapper,
    on_error: OnError = lambda exc: None,
) -> None:
    """Wrap ``module.Class.method`` with ``wrapper(wrapped, instance, args, kwargs)``: at once if
    the module is imported (raises ``AttributeError``/``KeyError`` if a name is missing), else when
    the application imports it (a missing name then goes to ``on_error``, never raised)."""
    with _import_lock(module_name):  # waits for another thread's import of it to finish
        if module_name not in sys.modules:
            with _lock:
                _pending.setdefault(module_name, []).append((class_name, method, wrapper, on_error))
                register = module_name not in _hooked
                _hooked.add(module_name)
            if register:
                wrapt.register_post_import_hook(_on_import, module_name)
            return
    module = importlib.import_module(module_name)
    with _lock:
        _apply(module, [(class_name, method, wrapper)])


def remove() -> None:
    """Take every patch out (see the module docstring); deferred ones will not be applied."""
    with _lock:
        _pending.clear()
        while _applied:
            owner, method, original_attribute, function_wrapper, switch = _applied.pop()
            switch.off()
            if owner.__dict__.get(method) is function_wrapper:
                setattr(owner, method, original_attribute)
            else:
                _inert[id(function_wrapper)] = (owner, method, function_wrapper, original_attribute)
        _strip_inert()


def original(owner: type, method: str) -> Any:
    """The SDK's function behind ``owner.method``, below our patch (and any wrapped over it)."""
    attribute = owner.__dict__[method]
    ours = [(fw, orig) for (o, m, orig, fw, _sw) in list(_applied) if o is owner and m == method]
    node = attribute
    while node is not None:
        for function_wrapper, original_attribute in ours:
            if _is_layer(node, function_wrapper):
                return original_attribute
        node = getattr(node, "__wrapped__", None)
    return getattr(attribute, "__wrapped__", attribute)


def installed() -> bool:
    """Whether patches are applied or pending."""
    with _lock:
        return bool(_applied or _pending)


def deferred() -> frozenset[str]:
    """Modules whose patches wait for their import (for the tests)."""
    with _lock:
        return frozenset(_pending)
