"""Per server: is a missing ``data: [DONE]`` a truncation?

OpenAI ends every chat and completions stream with ``data: [DONE]``; some OpenAI-compatible
servers (some vLLM and MLX builds) end every stream after the finish chunk without it. Treating
that as a truncation would raise ``StreamTruncatedError`` on every stream of such a server. The
policy (``done_marker``, per server host or for all):

- ``strict``: a missing ``[DONE]`` is a truncation (``eof_before_done``).
- ``lenient``: every choice's finish reason is the terminal marker; a stream cut before them is
  still a truncation.
- ``auto`` (default): strict for a server once it has sent ``[DONE]`` (a missing one is then a real
  cut); lenient for a server that has never sent it. The first stream a server ends without
  ``[DONE]`` after every finish reason is logged once (``stream.server_omits_done``) and
  ``openai_stream_server_sends_done{server}`` shows 0; a ``[DONE]`` later sets it back to 1.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Literal

from .. import _forksafe as forksafe
from ..instrumentation._data import DoneMarkerEvent, Event

DoneMarker = Literal["auto", "strict", "lenient"]
POLICIES: tuple[str, ...] = ("auto", "strict", "lenient")


class DoneMarkers:
    """The ``[DONE]`` policy and what each server was seen to do (servers are bounded labels)."""

    def __init__(
        self, default: DoneMarker, by_server: Mapping[str, DoneMarker], emit: Callable[[Event], None]
    ) -> None:
        self._default = default
        self._by_server = dict(by_server)
        self._emit = emit
        self._sends_done: dict[str, bool] = {}
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def _policy(self, server: str) -> DoneMarker:
        return self._by_server.get(server, self._default)

    def _learned(self, server: str, sends_done: bool) -> None:
        if self._sends_done.get(server) is sends_done:
            return
        with self._lock:
            if self._sends_done.get(server) is sends_done:
                return
            self._sends_done[server] = sends_done
        self._emit(DoneMarkerEvent(server, sends_done, self._policy(server)))

    def saw_done(self, server: str) -> None:
        """A stream from ``server`` ended with ``[DONE]``."""
        if self._sends_done.get(server) is not True:
            self._learned(server, True)

    def accepts_missing(self, server: str) -> bool:
        """A stream from ``server`` ended after every choice's finish reason without ``[DONE]``:
        whether it is complete under the policy."""
        policy = self._policy(server)
        if policy == "strict":
            return False
        if policy == "auto" and self._sends_done.get(server) is True:
            return False
        self._learned(server, False)
        return True
