"""Fan-out shares one encoded PUBLISH header per (message, QoS, flags, version).

Each subscriber must still get its own packet identifier, and each protocol level its
own encoding; these tests decode what every subscriber actually received.
"""

from __future__ import annotations

from rawclient import RawClient

from trio_mqtt.mqtt.packets import (
    Properties,
    ProtocolVersion,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.testing import open_test_broker

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5


async def subscriber(port: int, name: str, version: ProtocolVersion, qos: int) -> RawClient:
    client = await RawClient.open(port, version)
    await client.connect(name)
    await client.send(Subscribe(1, (SubscriptionRequest("fan/#", qos),)))
    assert isinstance(await client.receive(), Suback)
    return client


async def test_each_subscriber_gets_its_own_packet_id_and_encoding() -> None:
    async with open_test_broker() as broker:
        v5_a = await subscriber(broker.port, "a", V5, 1)
        v5_b = await subscriber(broker.port, "b", V5, 1)
        v311 = await subscriber(broker.port, "c", V311, 1)
        v5_q0 = await subscriber(broker.port, "d", V5, 0)
        # "b" alone gets one message first, so its next packet id is ahead of a's
        await v5_b.send(Subscribe(2, (SubscriptionRequest("bonly", 1),)))
        assert isinstance(await v5_b.receive(), Suback)
        await broker.publish("bonly", b"w", qos=1)
        warmup = await v5_b.receive()
        assert isinstance(warmup, Publish) and warmup.packet_id == 1
        props = Properties(user_properties=(("k", "v"),), content_type="text/plain")
        await broker.publish("fan/x", b"payload-1", qos=1, properties=props)

        got_a = await v5_a.receive()
        got_b = await v5_b.receive()
        got_c = await v311.receive()
        got_d = await v5_q0.receive()
        assert got_a == Publish("fan/x", b"payload-1", qos=1, packet_id=1, properties=props)
        assert got_b == Publish("fan/x", b"payload-1", qos=1, packet_id=2, properties=props)
        assert got_c == Publish("fan/x", b"payload-1", qos=1, packet_id=1)  # no 5.0 props
        assert got_d == Publish("fan/x", b"payload-1", qos=0, properties=props)
        for client in (v5_a, v5_b, v311, v5_q0):
            await client.aclose()


async def test_packet_ids_differ_per_subscriber_with_a_shared_header() -> None:
    async with open_test_broker() as broker:
        first = await subscriber(broker.port, "first", V5, 2)
        second = await subscriber(broker.port, "second", V5, 2)
        # three messages; "second" acknowledges nothing, so its ids run 1, 2, 3 too, while
        # "first" acknowledges and is given ids that may be reused - what matters is that
        # every received packet decodes to the right message with a valid, distinct id
        for n in range(3):
            await broker.publish("fan/q2", f"m{n}".encode(), qos=2)
        seen_second = [await second.receive() for _ in range(3)]
        assert [p.payload for p in seen_second if isinstance(p, Publish)] == [b"m0", b"m1", b"m2"]
        ids = [p.packet_id for p in seen_second if isinstance(p, Publish)]
        assert len(set(ids)) == 3 and all(ids)
        seen_first = [await first.receive() for _ in range(3)]
        assert [p.payload for p in seen_first if isinstance(p, Publish)] == [b"m0", b"m1", b"m2"]
        await first.aclose()
        await second.aclose()
