"""One adapter per streaming API, chosen by a table keyed by ``Operation`` (as h11 picks its
readers): what an item carries, what completeness means, what resume means, the semconv
operation. A new API over SSE is one module here and one row in ``ADAPTERS``.

Each reader (``ApiAdapter.read``) is ``(state, item, now) -> None`` and runs once per item on the
hot path: attribute reads, a list append of a reference, no metric call, no log line. Rare shapes
(usage chunks, error items, Azure's filter-only chunks) branch off to helpers. The SDK builds
items without validation, so a reader may meet any shape: it reads what it can and may raise
``AttributeError``, ``TypeError``... on an odd one, which the controller counts as an odd item (the
server's problem, never an internal error). Completeness never depends on what a reader saw: it
comes from the wire.

``is_preamble`` says which items are known to carry no output (the role chunk,
``response.created``): only those may be held back while a retry is still possible.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..taxonomy import Operation
from . import chat, completions, responses
from .base import ARGS, TEXT, ApiAdapter, ChunkReader, OutputPiece

__all__ = ["ADAPTERS", "ARGS", "TEXT", "ApiAdapter", "ChunkReader", "OutputPiece"]

ADAPTERS: Mapping[Operation, ApiAdapter] = MappingProxyType(
    {a.operation: a for a in (chat.ADAPTER, completions.ADAPTER, responses.ADAPTER)}
)
