"""Checks of ``instrument()``'s object options, made when it is called (not during an outage).

Each check raises ``TypeError``/``ValueError`` with one line naming the option, the value (its type
for objects, never a URL or a client) and what is allowed. Numeric and choice options are checked
by ``_core.config.resolve``; this module checks the rest: callables where callables are expected,
sinks against the :class:`~streamsentinel.instrumentation.Sink` protocol, ``builtin_sinks`` names,
the registry and providers by what streamsentinel will call on them, and ``breaker_key`` templates.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

TEMPLATE_FIELDS = ("operation", "server", "model")
"""The fields a ``breaker_key`` template may use, e.g. ``"{server}/{model}"``."""

BUILTIN_SINKS = ("otel_trace", "prometheus", "otel_metrics", "structlog")
"""The built-in sinks' names, in the order they run (``instrument(builtin_sinks=...)`` keeps some)."""

_SINK_METHODS = ("start", "event", "end")
_PROVIDERS = (
    ("registry", ("register", "unregister", "collect"), "a prometheus_client.CollectorRegistry"),
    ("tracer_provider", ("get_tracer",), "an OpenTelemetry TracerProvider"),
    ("meter_provider", ("get_meter",), "an OpenTelemetry MeterProvider"),
)
_STORE_METHODS = ("acquire", "acquire_async", "release", "state", "retry_after", "breakers")


def _shown(value: Any) -> str:
    """The value for a message: short scalars as they are, anything else by its type."""
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 60):
        return repr(value)
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _attribute(option: str, value: Any, name: str) -> Any:
    """``value.name``, None when missing; a lookup that raises is the option's error."""
    try:
        return getattr(value, name, None)
    except Exception as exc:
        raise TypeError(f"{option}={_shown(value)}: reading .{name} raised {type(exc).__name__}") from None


def _needs(option: str, value: Any, methods: Sequence[str], what: str) -> None:
    missing = [m for m in methods if not callable(_attribute(option, value, m))]
    if missing:
        raise TypeError(f"{option}={_shown(value)}: expected {what} (no {', '.join(missing)})")


def key_template(template: str) -> Callable[[str, str, str, Mapping[str, Any]], str]:
    """A ``breaker_key`` callable from a template such as ``"{server}/{model}"`` (``str.format``
    fields among :data:`TEMPLATE_FIELDS`).

    Raises:
        ValueError: a malformed template, an unknown field, or no field at all (one breaker for
            every call would be a constant: pass it as the template's text without braces then).
    """
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"breaker_key={template!r}: not a format template ({exc})") from None
    unknown = sorted({f for f in fields if f not in TEMPLATE_FIELDS})
    if unknown:
        raise ValueError(
            f"breaker_key={template!r}: unknown field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
        )
    if not fields:
        return lambda operation, server, model, request: template

    def key(operation: str, server: str, model: str, request: Mapping[str, Any]) -> str:
        return template.format(operation=operation, server=server, model=model)

    return key


def check(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with every object option checked (and a ``breaker_key`` template made a
    callable). Raises ``TypeError``/``ValueError`` on the first one that is not usable."""
    out = dict(options)
    for option, methods, what in _PROVIDERS:
        if options.get(option) is not None:
            _needs(option, options[option], methods, what)
    sinks = options.get("sinks", ())
    if isinstance(sinks, (str, bytes)) or not isinstance(sinks, Sequence):
        raise TypeError(f"sinks={_shown(sinks)}: expected a list of streamsentinel.instrumentation.Sink")
    for i, sink in enumerate(sinks):
        _needs(f"sinks[{i}]", sink, _SINK_METHODS, "a streamsentinel.instrumentation.Sink (see BaseSink)")
        name = _attribute(f"sinks[{i}]", sink, "name")
        if not isinstance(name, str) or not name:
            raise TypeError(f"sinks[{i}]={_shown(sink)}: name must be a non-empty str, got {_shown(name)}")
    keep = options.get("builtin_sinks")
    if keep is not None:
        if isinstance(keep, (str, bytes)) or not isinstance(keep, Collection):
            raise TypeError(
                f"builtin_sinks={_shown(keep)}: expected a collection of names such as ('prometheus',)"
            )
        unknown = [name for name in keep if name not in BUILTIN_SINKS]
        if unknown:
            raise ValueError(
                f"builtin_sinks: unknown sink {unknown[0]!r}; built-in: {', '.join(BUILTIN_SINKS)}"
            )
    key = options.get("breaker_key")
    if isinstance(key, str):
        out["breaker_key"] = key_template(key)
    elif key is not None and not callable(key):
        raise TypeError(
            f"breaker_key={_shown(key)}: expected (operation, server, model, request) -> str "
            'or a template such as "{server}/{model}"'
        )
    fallback = options.get("breaker_fallback")
    if fallback is not None and not callable(fallback) and not (isinstance(fallback, str) and fallback):
        raise TypeError(
            f"breaker_fallback={_shown(fallback)}: expected a model name or (request kwargs) -> stream"
        )
    if options.get("breaker_store") is not None:
        _needs("breaker_store", options["breaker_store"], _STORE_METHODS, "a BreakerStore")
    return out
