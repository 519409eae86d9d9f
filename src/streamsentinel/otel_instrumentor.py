"""OpenTelemetry instrumentor: lets ``opentelemetry-instrument`` (and any code that drives
``BaseInstrumentor`` objects) switch streamsentinel on.

Registered under the ``opentelemetry_instrumentor`` entry-point group as ``openai_streams``, not
``openai``: the other OpenAI instrumentors use ``openai``, and sharing the name would load both
under one ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` switch. Disable this one with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=openai_streams``.

Options other than ``tracer_provider`` come from the ``STREAMSENTINEL_*`` variables
(:mod:`streamsentinel.config`). Metrics go to the global Prometheus registry; nothing is served
unless the application calls :func:`streamsentinel.start_metrics_server` (or runs under
``streamsentinel run``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

# The module starts with "# type: ignore", so mypy sees none of its names.
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

import streamsentinel

__all__ = ["StreamSentinelInstrumentor"]


class StreamSentinelInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``StreamSentinelInstrumentor().instrument(tracer_provider=...)`` is
    :func:`streamsentinel.instrument`; ``.uninstrument()`` is :func:`streamsentinel.uninstrument`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("openai >= 3.51, < 4",)

    def _instrument(self, **kwargs: Any) -> None:
        streamsentinel.instrument(tracer_provider=kwargs.get("tracer_provider"))

    def _uninstrument(self, **kwargs: Any) -> None:
        streamsentinel.uninstrument()
