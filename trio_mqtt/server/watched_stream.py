"""WatchedSocketStream: the accepted TCP socket, with sends that report a full socket.

Flow control needs to tell a client that reads slowly (its socket stops taking bytes:
only its own queue fills) from a broker that writes slowly (the socket takes everything
at once: publishers must wait for the writer). A send first tries a non-blocking write;
only if the socket refuses part of it does ``on_blocked(True)`` run, then trio's own
``send_all`` waits for room, then ``on_blocked(False)``. TLS and WebSocket layers send
through this stream too, so the same report covers every transport.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import trio

from trio_mqtt.server.prefixed_stream import beneath_prefix


def _nothing(_blocked: bool) -> None:
    pass


class WatchedSocketStream(trio.abc.HalfCloseableStream):
    """Wraps an accepted ``trio.SocketStream``; ``on_blocked`` hears about full sockets."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.transport_stream = stream
        self.on_blocked: Callable[[bool], None] = _nothing

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.transport_stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if not view.nbytes:
            await self.transport_stream.send_all(view)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        fd = self.transport_stream.socket.fileno()  # -1 once closed: trio raises below
        if fd >= 0 and sys.platform != "win32":
            try:
                sent = os.write(fd, view)
            except OSError:
                # would block, or the connection broke: trio's send_all below waits for
                # room, or meets the same error and raises it the way trio does
                sent = 0
            if sent == view.nbytes:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            view = view[sent:]
        self.on_blocked(True)
        try:
            await self.transport_stream.send_all(view)
        finally:
            self.on_blocked(False)

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
        fd = self.transport_stream.socket.fileno()
        if fd < 0 or sys.platform == "win32":
            return None
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:  # e.g. reset by the peer, as receive_some would raise it
            raise trio.BrokenResourceError(f"socket read failed: {exc}") from exc

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


def socket_fd(stream: trio.abc.Stream) -> int:
    """The descriptor of the socket right under ``stream`` (through a PROXY prefix), for
    reading and writing it directly; -1 when there is none (TLS, WebSocket, memory)."""
    stream = beneath_prefix(stream)
    if isinstance(stream, WatchedSocketStream | trio.SocketStream) and sys.platform != "win32":
        return stream.socket.fileno()
    return -1
