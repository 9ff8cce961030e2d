"""WatchedSocketStream: the accepted TCP socket, with sends that report a full socket.

Flow control needs to tell a client that reads slowly (its socket stops taking bytes:
only its own queue fills) from a broker that writes slowly (the socket takes everything
at once: publishers must wait for the writer). A send first tries a non-blocking write;
only if the socket refuses part of it does ``on_blocked(True)`` run, then the send waits
for room and writes the rest, then ``on_blocked(False)``. ``on_blocked(True)`` answers
how long it may wait before saying ``True`` again if the socket still refuses bytes
then: the connection learns that a client that was reading fast has stopped, and frees
the publishers it held back (``MQTTConnection.transport_blocked``). TLS and WebSocket
layers send through this stream too, so the same report covers every transport.

It holds the accepted socket itself. Its fast paths (a write that the socket takes at
once, a read of what it holds) call ``os.write`` / ``os.read`` on the descriptor; the
general ones (a read that waits, a write that the socket refuses on a platform without
a descriptor to write, ``send_eof``, ``wait_send_all_might_not_block``) go through a
``trio.SocketStream`` made the first time one of them is needed (a TLS handshake's
reads, a WebSocket connection's). Plain-TCP connections never need one, and making it
cost a connection about a tenth of its CPU instructions (it asks the socket's type
through an enum conversion and sets two socket options per connection, which the
listening socket already passed on: ``listener.py``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable

import trio

from trio_mqtt.server.prefixed_stream import beneath_prefix


def _nothing(_blocked: bool) -> float:
    return math.inf


class WatchedSocketStream(trio.abc.HalfCloseableStream):
    """An accepted TCP socket as a stream; ``on_blocked`` hears about full sockets."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.socket = sock
        self.on_blocked: Callable[[bool], float] = _nothing
        self._stream: trio.SocketStream | None = None

    @property
    def transport_stream(self) -> trio.SocketStream:
        """trio's stream on the same socket, for the general paths (made on first use)."""
        if self._stream is None:
            self._stream = trio.SocketStream(self.socket)
        return self._stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if not view.nbytes:
            await self.transport_stream.send_all(view)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self.socket
        fd = sock.fileno()  # -1 once closed: trio raises below
        if fd < 0 or sys.platform == "win32":
            self.on_blocked(True)
            try:
                await self.transport_stream.send_all(view)
            finally:
                self.on_blocked(False)
            return
        try:
            sent = os.write(fd, view)
        except OSError:
            sent = 0  # would block, or the connection broke: the write below says which
        if sent == view.nbytes:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        ask_again = self.on_blocked(True)
        try:
            await self._send_rest(sock, view[sent:], ask_again)
        finally:
            self.on_blocked(False)

    async def _send_rest(
        self, sock: trio.socket.SocketType, view: memoryview, ask_again: float
    ) -> None:
        """Write ``view`` as the socket takes it; if it has not taken everything
        ``ask_again`` seconds after it first refused, say ``on_blocked(True)`` again (and
        again after as long as that call answers)."""
        ask_at = trio.current_time() + ask_again
        while True:
            with trio.move_on_at(ask_at) as waited:
                await trio.lowlevel.wait_writable(sock)
            if waited.cancelled_caught:
                ask_at = trio.current_time() + self.on_blocked(True)
                continue
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc
            if sent == view.nbytes:
                return
            view = view[sent:]

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.transport_stream.receive_some(max_bytes)

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """Bytes the socket has already received (b"" at EOF), or None if none yet.

        Neither waits nor checkpoints. None also when the socket cannot be read this way
        (closed, or not a POSIX descriptor): ``receive_some`` then says what is wrong.
        """
        fd = self.socket.fileno()
        if fd < 0 or sys.platform == "win32":
            return None
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:  # e.g. reset by the peer, as receive_some would raise it
            raise trio.BrokenResourceError(f"socket read failed: {exc}") from exc

    async def aclose(self) -> None:
        # (what trio.SocketStream.aclose does, without making one to do it)
        self.socket.close()
        await trio.lowlevel.checkpoint()


_SOCKET_STREAMS = WatchedSocketStream | trio.SocketStream


def socket_fd(stream: trio.abc.Stream) -> int:
    """The descriptor of the socket right under ``stream`` (through a PROXY prefix), for
    reading and writing it directly; -1 when there is none (TLS, WebSocket, memory)."""
    if not isinstance(stream, _SOCKET_STREAMS):
        # (in this order: the common case first, as a miss costs more than a hit: these
        # are trio.abc.Stream classes, whose isinstance misses go through ABCMeta)
        stream = beneath_prefix(stream)
        if not isinstance(stream, _SOCKET_STREAMS):
            return -1
    return stream.socket.fileno() if sys.platform != "win32" else -1
