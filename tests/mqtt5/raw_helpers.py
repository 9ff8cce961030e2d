"""Shared pieces of the MQTT 5 completeness tests over TCP: ``RawClient`` helpers.

The core without sockets (``Client``, ``make_core``, ``FakeClock``) is in tests/helpers.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from helpers import V5
from rawclient import RawClient

from trio_mqtt.mqtt.packets import (
    Connack,
    Disconnect,
    Packet,
    Properties,
    ProtocolVersion,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)


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
