"""One server-side HTTP/1.1 connection: h11 for requests and well-formed responses, raw bytes for
the faults h11 would refuse to write (close-delimited bodies, cuts inside a chunk, RST)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import h11

try:  # Linux: bytes in the socket's send queue not yet acknowledged by the peer
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - platform dependent
    _TIOCOUTQ = None

__all__ = ["HttpConnection", "IncomingRequest", "PeerGone"]

_READ_SIZE = 65536
_MAX_REQUEST_HEAD = 64 * 1024


class PeerGone(Exception):
    """The client closed or reset the connection."""


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """A complete request.

    Attributes:
        method: e.g. `POST`.
        path: the target's path, without query.
        query: query parameters (last value wins).
        headers: header names lower-cased (last value wins).
        body: the request body bytes.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class HttpConnection:
    """Server side of one TCP connection. Methods raise `PeerGone` when the client went away."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_HEAD)
        self._broken = False  # raw bytes broke h11's framing: never reuse
        # Flush to the kernel on every drain(), so "written" means handed to the socket and an
        # RST (which discards unsent data) cannot eat events counted as sent.
        transport = writer.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.set_write_buffer_limits(high=0)

    # ---- requests ------------------------------------------------------------------------------

    async def read_request(self) -> IncomingRequest | None:
        """The next request, or None when the client closed the connection between requests."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                return None
            if event is h11.NEED_DATA:
                try:
                    data = await self._reader.read(_READ_SIZE)
                except (ConnectionError, OSError):
                    return None
                self._h11.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return self._make_request(request, bytes(body))
            else:  # ConnectionClosed, or PAUSED after a protocol switch we never accept
                return None

    @staticmethod
    def _make_request(request: h11.Request, body: bytes) -> IncomingRequest:
        target = urlsplit(request.target.decode("latin-1"))
        return IncomingRequest(
            method=request.method.decode("ascii"),
            path=target.path,
            query=dict(parse_qsl(target.query, keep_blank_values=True)),
            headers={name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers},
            body=body,
        )

    # ---- well-formed responses (h11) -------------------------------------------------------------

    async def send_full(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        """A complete response with Content-Length."""
        all_headers = [*headers, ("content-length", str(len(body)))]
        await self._write(
            self._h11.send(h11.Response(status_code=status, headers=all_headers, reason=_reason(status)))
            + self._h11.send(h11.Data(data=body))
            + self._h11.send(h11.EndOfMessage())
        )

    async def start_chunked(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """Status line and headers of a chunked response."""
        all_headers = [*headers, ("transfer-encoding", "chunked")]
        await self._write(
            self._h11.send(h11.Response(status_code=status, headers=all_headers, reason=_reason(status)))
        )

    async def send_chunk(self, data: bytes) -> None:
        """One chunk (`SIZE\\r\\nDATA\\r\\n`)."""
        await self._write(self._h11.send(h11.Data(data=data)))

    async def end_chunked(self) -> None:
        """The clean chunked terminator `0\\r\\n\\r\\n`; the connection stays reusable."""
        await self._write(self._h11.send(h11.EndOfMessage()))

    @property
    def reusable(self) -> bool:
        """True when the last response ended cleanly and keep-alive allows another request."""
        return not self._broken and self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    # ---- raw bytes for faults -----------------------------------------------------------------

    async def start_close_delimited(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """Headers with neither Content-Length nor Transfer-Encoding: the body ends at FIN."""
        self._broken = True
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers]
        lines.append(b"connection: close\r\n\r\n")
        await self._write(b"".join(lines))

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are (body of a close-delimited response)."""
        await self._write(data)

    async def cut_chunk(self, data: bytes, keep: int) -> None:
        """Announce a chunk of `len(data)` bytes but write only the first `keep` of them."""
        self._broken = True
        await self._write(b"%x\r\n" % len(data) + data[:keep])

    async def wait_for_disconnect(self, timeout: float) -> bool:
        """Send nothing for up to `timeout` seconds; True as soon as the client goes away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(self._reader.read(_READ_SIZE), remaining)
            except asyncio.TimeoutError:
                return False
            except (ConnectionError, OSError):
                return True
            if not data:
                return True
            self._h11.receive_data(data)  # unexpected early bytes: keep them for h11
        return False

    async def reset(self, ack_timeout: float = 2.0) -> None:
        """Abort with TCP RST (SO_LINGER on, 0 s, then close).

        An RST discards whatever the kernel has not delivered yet, so first wait (up to
        `ack_timeout` seconds, Linux only) until the peer has acknowledged every byte written:
        events counted as sent then really reach the client before the reset.
        """
        self._broken = True
        sock = self._writer.get_extra_info("socket")
        await self._wait_acknowledged(sock, ack_timeout)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()

    @staticmethod
    async def _wait_acknowledged(sock: socket.socket | None, timeout: float) -> None:
        if sock is None or _TIOCOUTQ is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        buffer = bytearray(4)
        while loop.time() < deadline:
            try:
                fcntl.ioctl(sock.fileno(), _TIOCOUTQ, buffer)
            except OSError:
                return
            if struct.unpack("i", buffer)[0] == 0:
                return
            await asyncio.sleep(0.001)

    async def close(self) -> None:
        """Close after flushing (FIN)."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    def abort(self) -> None:
        """Drop the connection without flushing (server shutdown)."""
        self._writer.transport.abort()

    async def _write(self, data: bytes) -> None:
        if self._writer.transport.is_closing():
            raise PeerGone
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as err:
            raise PeerGone from err
