"""OpenTelemetry instrumentor: lets ``opentelemetry-instrument`` (and any code that drives
``BaseInstrumentor`` objects) switch streamsentinel on.

Registered under the ``opentelemetry_instrumentor`` entry-point group as ``openai_streams``, not
``openai``: the other OpenAI instrumentors use ``openai``, and sharing the name would load both
under one ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` switch. Disable this one with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=openai_streams``.

``tracer_provider`` and ``meter_provider`` (what ``opentelemetry-instrument`` passes) are used;
other options come from the ``STREAMSENTINEL_*`` variables. The mode defaults to ``observe``
(OpenTelemetry's convention: an instrumentation does not change behaviour); set
``STREAMSENTINEL_MODE=protect`` (or pass ``mode="protect"``) for retries, raised truncations and
the enforcing breaker. Prometheus metrics go to the global
registry; nothing is served
unless the application calls :func:`streamsentinel.start_metrics_server` (or runs under
``streamsentinel run``).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

# The module starts with "# type: ignore", so mypy sees none of its names.
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

import streamsentinel
from streamsentinel._core.config import Mode, env_name
from streamsentinel._sdk.compat import SUPPORTED

__all__ = ["StreamSentinelInstrumentor"]


def _default_mode() -> Mode:
    """``protect`` when ``STREAMSENTINEL_MODE`` says so; anything else: ``observe``."""
    raw = os.environ.get(env_name("mode"), "").strip().lower()
    return "protect" if raw == "protect" else "observe"


class StreamSentinelInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``StreamSentinelInstrumentor().instrument(tracer_provider=...)`` is
    :func:`streamsentinel.instrument`; ``.uninstrument()`` is :func:`streamsentinel.uninstrument`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return (SUPPORTED,)

    def _instrument(self, **kwargs: Any) -> None:
        streamsentinel.instrument(
            mode=kwargs.get("mode") or _default_mode(),
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
        )

    def _uninstrument(self, **kwargs: Any) -> None:
        streamsentinel.uninstrument()
