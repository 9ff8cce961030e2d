"""Shared pieces of the MQTT 5 completeness tests: raw clients and small waits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
from rawclient import RawClient

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.mqtt_connection import open_connection
from trio_mqtt.config import BrokerConfig
from trio_mqtt.mqtt.codec import PacketReader, encode
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Properties,
    ProtocolVersion,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.peer import Endpoint, PeerInfo

V5 = ProtocolVersion.V5
V311 = ProtocolVersion.V311


@asynccontextmanager
async def raw_client(
    port: int,
    client_id: str,
    version: ProtocolVersion = V5,
    **connect: object,
) -> AsyncIterator[tuple[RawClient, Connack]]:
    """A RawClient that sent CONNECT (``connect`` are Connect fields) and read a CONNACK."""
    client = await RawClient.open(port, version)
    try:
        connack = await client.connect(client_id, **connect)
        yield client, connack
    finally:
        await client.aclose()


async def subscribe(
    client: RawClient,
    *filters: tuple[str, int],
    packet_id: int = 1,
    properties: Properties | None = None,
) -> Suback:
    requests = tuple(SubscriptionRequest(f, qos) for f, qos in filters)
    if properties is None:
        await client.send(Subscribe(packet_id, requests))
    else:
        await client.send(Subscribe(packet_id, requests, properties))
    suback = await client.receive()
    assert isinstance(suback, Suback), suback
    return suback


async def receive_publish(client: RawClient, timeout: float = 5.0) -> Publish:
    packet = await client.receive(timeout)
    assert isinstance(packet, Publish), packet
    return packet


async def expect_disconnect(client: RawClient, code: int) -> Disconnect:
    """The server sends DISCONNECT ``code`` and closes the connection."""
    packets: list[Packet] = await client.expect_closed()
    assert len(packets) == 1, packets
    disconnect = packets[0]
    assert isinstance(disconnect, Disconnect), disconnect
    assert disconnect.reason_code == code, f"{disconnect.reason_code:#04x} != {code:#04x}"
    return disconnect


# ------------------------------------------------------- the core without sockets

PEER = PeerInfo.from_socket("t", "tcp", Endpoint("127.0.0.1", 1883), Endpoint("192.0.2.1", 5))


@attrs.define
class FakeClock:
    """The broker's clock: tests move ``now`` by hand."""

    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def make_core(clock: FakeClock | None = None, **settings: object) -> BrokerCore:
    return BrokerCore(config=BrokerConfig(**settings), clock=clock or FakeClock())  # type: ignore[arg-type]


class CoreClient:
    """One MQTTConnection driven by bytes, without sockets (as in tests/broker)."""

    def __init__(self, core: BrokerCore, version: ProtocolVersion = V5) -> None:
        self.core = core
        self.version = version
        self.reader = PacketReader(protocol_version=version, server_side=False)
        self.conn = open_connection(core, PEER, lambda: None)
        self._held: list[Packet] = []  # decoded after CONNACK by connect(), not yet returned

    def send(self, packet: Packet) -> None:
        self.conn.receive_data(encode(packet, self.version))

    def raw(self) -> bytes:
        return self.conn.data_to_send()

    def packets(self) -> list[Packet]:
        held, self._held = self._held, []
        return held + self.reader.feed(self.raw())

    def publishes(self) -> list[Publish]:
        out = self.packets()
        assert all(isinstance(p, Publish) for p in out), out
        return [p for p in out if isinstance(p, Publish)]

    def connect(self, client_id: str, **kwargs: object) -> Connack:
        self.send(Connect(client_id, self.version, **kwargs))  # type: ignore[arg-type]
        connack, *self._held = self.packets()  # a resumed session may send more at once
        assert isinstance(connack, Connack), connack
        return connack

    def subscribe(self, *filters: tuple[str, int], sub_id: int | None = None) -> Suback:
        requests = tuple(SubscriptionRequest(f, qos) for f, qos in filters)
        props = Properties() if sub_id is None else Properties(subscription_identifiers=(sub_id,))
        self.send(Subscribe(1, requests, props))
        (suback,) = self.packets()
        assert isinstance(suback, Suback), suback
        return suback

    def drop(self) -> None:
        """The transport is gone (no DISCONNECT)."""
        self.conn.connection_lost()
