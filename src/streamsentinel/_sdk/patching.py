"""Applying and taking out ``wrapt`` patches on SDK classes, coexisting with other instrumentations.

Patches are class attributes replaced by ``wrapt.FunctionWrapper``s and restored to the exact
original object by :func:`remove`, unless another instrumentation wrapped the same attribute after
us: then our layer stays in its chain as a pass-through (so theirs keeps working) and is taken out
once it is on top again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import wrapt


class _Switch(list):  # type: ignore[type-arg]
    """Turns one applied patch into a pass-through when it cannot be taken out: wrapt's
    ``enabled`` flag, read by wrapt's C code as a truth value (a non-empty list: on), so a patched
    call costs no Python frame of ours before the wrapper."""

    def __init__(self) -> None:
        super().__init__((True,))

    def off(self) -> None:
        self.clear()


# (owner, method, original attribute, our FunctionWrapper, its switch)
_applied: list[tuple[type, str, Any, Any, _Switch]] = []
# Our switched-off wrappers left inside another instrumentation's chain: id -> (owner, method,
# wrapper, what it wraps).
_inert: dict[int, tuple[type, str, Any, Any]] = {}


def _is_layer(attribute: Any, function_wrapper: Any) -> bool:
    # Another instrumentation that wrapped ours read it through the class, which gives wrapt's
    # BoundFunctionWrapper (its `_self_parent` is our FunctionWrapper); unwrapping puts that back.
    return attribute is function_wrapper or getattr(attribute, "_self_parent", None) is function_wrapper


def _strip_inert() -> None:
    for key, (owner, method, function_wrapper, wrapped) in list(_inert.items()):
        if _is_layer(owner.__dict__.get(method), function_wrapper):
            setattr(owner, method, wrapped)
            del _inert[key]


def patch(module_name: str, class_name: str, method: str, wrapper: Callable[..., Any]) -> None:
    """Wrap ``module.Class.method`` with ``wrapper(wrapped, instance, args, kwargs)``."""
    owner = getattr(importlib.import_module(module_name), class_name)
    _strip_inert()
    original_attribute = owner.__dict__[method]
    switch = _Switch()
    # A list's truth is read in C; a __bool__ (what wrapt's stub asks for) would be a Python call.
    function_wrapper = wrapt.FunctionWrapper(original_attribute, wrapper, enabled=switch)  # type: ignore[arg-type]
    setattr(owner, method, function_wrapper)
    _applied.append((owner, method, original_attribute, function_wrapper, switch))


def remove() -> None:
    """Take every patch out (see the module docstring)."""
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
    ours = [(fw, orig) for (o, m, orig, fw, _sw) in _applied if o is owner and m == method]
    node = attribute
    while node is not None:
        for function_wrapper, original_attribute in ours:
            if _is_layer(node, function_wrapper):
                return original_attribute
        node = getattr(node, "__wrapped__", None)
    return getattr(attribute, "__wrapped__", attribute)


def installed() -> bool:
    return bool(_applied)
