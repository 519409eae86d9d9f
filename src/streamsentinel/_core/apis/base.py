"""The shape every API adapter has (``apis/__init__.py`` explains the role of each field)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..state import StreamState
from ..taxonomy import Operation

ChunkReader = Callable[[StreamState, Any, float], None]
"""``(state, item, now) -> None``: what one item carries, written into the stream's state."""

OutputPiece = Callable[[Any], "tuple[int, str] | None"]
"""``item -> (channel, piece)`` of output for choice 0 (``TEXT`` or ``ARGS``), or None."""

# Channels of output a replay compares separately: 0 = text, 1 = tool-call arguments.
TEXT, ARGS = 0, 1


@dataclass(frozen=True, slots=True)
class ApiAdapter:
    """What streamsentinel knows about one streaming API.

    Attributes:
        operation: the ``operation`` label (``chat``, ``text_completion``, ``responses``).
        read: what an item carries (output or not, usage, finish reasons, ids, an in-stream
            error), written into the state; runs once per item (the hot path).
        is_preamble: whether an item is known to carry no output (may be held while a retry is
            possible; any other item releases the hold).
        output_piece: what a replay compares (resume ``replay``).
        terminal_event: completeness is a terminal event (``response.completed``...); else the
            ``data: [DONE]`` marker, or the finish reasons when the marker cannot be seen.
        done_marker: the server's ``[DONE]`` policy applies, and the record says whether it came.
        continuable: a broken stream may be continued by ``retrieve(id, starting_after=seq)``
            (resume ``responses``).
        semconv_operation: ``gen_ai.operation.name`` (the instrumentation's ``_semconv`` table
            says the same: it may not import the core; tests/unit/test_apis.py checks they agree).
    """

    operation: Operation
    read: ChunkReader
    is_preamble: Callable[[Any], bool]
    output_piece: OutputPiece
    terminal_event: bool
    done_marker: bool
    continuable: bool
    semconv_operation: str
