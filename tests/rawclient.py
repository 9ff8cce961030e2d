"""A minimal raw-bytes MQTT client for tests: our codec on a trio stream, no paho.

Used where a test must send exactly the bytes it wants (bad input, spec statements
that a well-behaved client library cannot express) and read exactly what comes back.
"""

from __future__ import annotations

from collections import deque

import trio

from trio_mqtt.mqtt.codec import PacketReader, encode
from trio_mqtt.mqtt.packets import Connack, Connect, Packet, ProtocolVersion


class RawClient:
    def __init__(self, stream: trio.abc.Stream, version: ProtocolVersion) -> None:
        self.stream = stream
        self.version = version
        self.reader = PacketReader(protocol_version=version, server_side=False)
        self._received: deque[Packet] = deque()

    @classmethod
    async def open(
        cls, port: int, version: ProtocolVersion = ProtocolVersion.V311, host: str = "127.0.0.1"
    ) -> RawClient:
        stream = await trio.open_tcp_stream(host, port)
        return cls(stream, version)

    async def send(self, packet: Packet) -> None:
        await self.stream.send_all(encode(packet, self.version))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self, timeout: float = 5.0) -> Packet:
        """The next packet; fails the test after ``timeout`` seconds or on EOF."""
        with trio.fail_after(timeout):
            while not self._received:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self._received.extend(self.reader.feed(data))
        return self._received.popleft()

    async def receive_or_eof(self, timeout: float = 5.0) -> Packet | None:
        """The next packet, or None if the server closes the connection first."""
        try:
            return await self.receive(timeout)
        except (EOFError, trio.BrokenResourceError):
            return None

    async def expect_closed(self, timeout: float = 5.0) -> list[Packet]:
        """Read until EOF; returns the packets that came before it."""
        packets: list[Packet] = list(self._received)
        self._received.clear()
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return packets
                if not data:
                    return packets
                packets.extend(self.reader.feed(data))

    async def connect(self, client_id: str = "raw", **kwargs: object) -> Connack:
        await self.send(Connect(client_id=client_id, protocol_version=self.version, **kwargs))  # type: ignore[arg-type]
        packet = await self.receive()
        assert isinstance(packet, Connack), packet
        return packet

    async def aclose(self) -> None:
        await self.stream.aclose()
