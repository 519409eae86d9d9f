"""The context variables that tie the SDK's inner calls to the call that made them."""

from __future__ import annotations

import contextvars
from typing import Any

CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("streamsentinel_current", default=None)
"""The call (an ``Attempts``: a ``StreamController`` or a plain call's context) whose ``create()``
runs in this context, None elsewhere: the HTTP-attempt hooks attribute the SDK's attempts, retries
and 429s to it."""

IN_FALLBACK: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "streamsentinel_in_fallback", default=False
)
"""True while a circuit-breaker fallback is serving a rejected call (a rejected fallback then raises)."""
