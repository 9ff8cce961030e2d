"""PrefixedStream: a stream that first returns bytes already read from another stream.

The PROXY preamble reader may read past the header (a client's CONNECT or TLS
ClientHello can share a segment with it); those bytes must reach the next layer
untouched, whatever that layer is (TLS, WebSocket or MQTT).
"""

from __future__ import annotations

import trio


class PrefixedStream(trio.abc.Stream):
    """Wraps ``stream``; ``receive_some`` returns ``prefix`` before reading from it."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream = stream
        self._prefix = bytearray(prefix)

    @property
    def prefix_pending(self) -> bool:
        """Some of ``prefix`` is still to be returned."""
        return bool(self._prefix)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            # a checkpoint, as trio's own socket reads make it (no cancel scope for it)
            await trio.lowlevel.checkpoint_if_cancelled()
            data = take_front(self._prefix, max_bytes)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


def take_front(buffer: bytearray, max_bytes: int | None) -> bytes:
    """Remove and return up to ``max_bytes`` (None: all) from the front of ``buffer``."""
    size = len(buffer) if max_bytes is None else max_bytes
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


def beneath_prefix(stream: trio.abc.Stream) -> trio.abc.Stream:
    """``stream``, or the stream under its PROXY prefix layers: sends and EOF go
    straight through those to their transport."""
    while isinstance(stream, PrefixedStream):
        stream = stream.transport_stream
    return stream


async def send_eof_beneath_prefix(stream: trio.abc.Stream) -> None:
    """Half-close ``stream`` (under any PROXY prefix) if it can; nothing if it cannot."""
    stream = beneath_prefix(stream)
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
