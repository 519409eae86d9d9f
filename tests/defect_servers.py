"""A tiny loopback HTTP server for bodies the chaos server cannot produce (scripted.py runs the SDK on it).

`ScriptedServer` answers every POST with the same scripted body: a list of parts, each either raw
bytes (written as one HTTP/1.1 chunk and flushed) or a `Gate` (the server stops there until the
test releases it). It counts the requests it received. ``framing="close"`` answers HTTP/1.0-style
instead: no Content-Length, no chunked framing, the body ends when the server closes the socket
(old servers, some proxies). ``head``: a `Gate` passed before the response headers are sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

__all__ = ["DONE", "Gate", "ScriptedServer", "chat_chunk", "event", "responses_event", "sse"]

GATE_TIMEOUT = 60.0  # a gate never released (a failing test) lets the server go on after this
DONE = b"data: [DONE]\n\n"


def sse(payload: Any) -> bytes:
    """One `data:` event carrying ``payload`` as JSON."""
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def event(name: str, payload: Any) -> bytes:
    """One named event (`event:` + `data:`)."""
    return f"event: {name}\n".encode() + sse(payload)


def responses_event(payload: dict[str, Any]) -> bytes:
    """A Responses API event, named after its ``type``."""
    return event(str(payload["type"]), payload)


def chat_chunk(delta: Any, *, finish_reason: Any = None, index: int = 0, **extra: Any) -> dict[str, Any]:
    """A chat.completion.chunk with one choice."""
    chunk: dict[str, Any] = {
        "id": "chatcmpl-defect",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    chunk.update(extra)
    return chunk


class Gate:
    """A point in a scripted body where the server waits until the test calls :meth:`release`."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()

    def release(self) -> None:
        self._open.set()

    def wait_reached(self, timeout: float = 30.0) -> None:
        if not self.reached.wait(timeout):
            raise TimeoutError("the server never reached the gate")

    def _pass(self) -> None:
        self.reached.set()
        self._open.wait(GATE_TIMEOUT)


Part = bytes | Gate


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        owner = self.server.owner
        owner._arrived()
        chunked = owner.framing == "chunked"
        try:
            if owner.head is not None:
                owner.head._pass()
            if not chunked:
                self.protocol_version = "HTTP/1.0"  # the status line's version
            self.send_response(200)
            self.send_header("content-type", owner.content_type)
            self.send_header("x-request-id", "req_defect")
            if chunked:
                self.send_header("transfer-encoding", "chunked")
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.flush()
            for part in owner.parts:
                if isinstance(part, Gate):
                    part._pass()
                    continue
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except OSError:
            pass  # the client went away
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ScriptedServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class ScriptedServer:
    """Serves ``parts`` to every request on 127.0.0.1 (a port of its own); a context manager."""

    def __init__(
        self,
        parts: Sequence[Part],
        *,
        content_type: str = "text/event-stream; charset=utf-8",
        framing: Literal["chunked", "close"] = "chunked",
        head: Gate | None = None,
    ) -> None:
        self.parts = list(parts)
        self.content_type = content_type
        self.framing = framing
        self.head = head
        self._requests = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="defect-server", daemon=True)

    def _arrived(self) -> None:
        with self._lock:
            self._requests += 1

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for part in [self.head, *self.parts]:
            if isinstance(part, Gate):
                part.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
