"""The types ``instrument()``'s resilience options take, for annotations and custom stores.

- :class:`BreakerStore`: where breaker state lives (``instrument(breaker_store=...)``); a store
  hands out a :class:`Permit` per call and takes it back with a :data:`BreakerResult`.
- :data:`BreakerKey`: ``(operation, server, model, request kwargs) -> str`` (``breaker_key=``).
- :data:`Fallback`: a model name or ``(request kwargs) -> stream`` (``breaker_fallback=``).
- :data:`ResumeStrategy`: ``"off"``, ``"replay"`` or ``"responses"`` (``RetryConfig.resume``).
- :class:`BreakerConfig`, :class:`State`, :class:`SlidingWindowType`, :class:`BreakerSnapshot`:
  the breaker's settings and views (``BreakerConfig`` is also in ``streamsentinel``).

Re-exported from private modules: import them from here.
"""

from __future__ import annotations

from ._resilience.breaker_config import BreakerConfig, BreakerSnapshot, Permit, SlidingWindowType, State
from ._resilience.circuit import BreakerKey, Fallback
from ._resilience.resume import ResumeStrategy
from ._resilience.store import BreakerStore
from ._vocab import BreakerResult

__all__ = [
    "BreakerConfig",
    "BreakerKey",
    "BreakerResult",
    "BreakerSnapshot",
    "BreakerStore",
    "Fallback",
    "Permit",
    "ResumeStrategy",
    "SlidingWindowType",
    "State",
]
