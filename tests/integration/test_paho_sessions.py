"""Persistent sessions, redelivery, takeover and the in-flight window.

paho-mqtt 2.x clients check what a real client sees when it comes back (queued QoS 1/2
messages, no QoS 0, the ``max_queued_messages`` bound) and when another connection takes
its client id. Where the test must NOT acknowledge a message (DUP redelivery, the
in-flight limit), the subscriber is tests/rawclient.py, which only sends what it is told.
"""

from __future__ import annotations

import pytest
import trio
from helpers import wait_until
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from rawclient import RawClient

from trio_mqtt.mqtt.packets import (
    Packet,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .paho_helpers import (
    QUIET,
    V5,
    VERSION_IDS,
    VERSIONS,
    Connack,
    PahoClient,
    blocking,
    paho_client,
    properties,
)

RAW_VERSIONS = [ProtocolVersion.V311, ProtocolVersion.V5]


async def connect_persistent(
    broker: Broker, protocol: MQTTProtocolVersion, client_id: str, *, first: bool
) -> tuple[PahoClient, Connack]:
    """A paho client with a session that outlives the connection; resumes unless *first*."""
    if protocol is V5:
        client = PahoClient(client_id, protocol=V5)
        expiry = properties(PacketTypes.CONNECT, SessionExpiryInterval=300)
        connack = await blocking(
            client.connect, broker.port, clean_start=first, connect_properties=expiry
        )
    else:
        client = PahoClient(client_id, protocol=protocol, clean_session=False)
        connack = await blocking(client.connect, broker.port)
    assert connack.accepted, connack
    return client, connack


async def wait_offline(broker: Broker, client_id: str) -> None:
    """Until the broker has detached *client_id*'s session from its connection."""
    session = broker.core.sessions[client_id]
    await wait_until(lambda: not session.online, f"{client_id!r} offline")


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_queued_qos1_and_qos2_are_delivered_on_resume_but_not_qos0(
    protocol: MQTTProtocolVersion,
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "pub", protocol=protocol) as publisher,
    ):
        subscriber, connack = await connect_persistent(broker, protocol, "away", first=True)
        try:
            assert connack.session_present is False
            assert await blocking(subscriber.subscribe, "news/#", 2) == [2]
            await blocking(subscriber.disconnect)
        finally:
            await blocking(subscriber.close)
        await wait_offline(broker, "away")

        await blocking(publisher.publish, "news/1", b"one", 1)
        await blocking(publisher.publish, "news/0", b"zero", 0)
        await blocking(publisher.publish, "news/2", b"two", 2)

        subscriber, connack = await connect_persistent(broker, protocol, "away", first=False)
        try:
            assert connack.session_present is True
            first, second = await blocking(subscriber.wait_messages, 2)
            assert (first.topic, first.payload, first.qos) == ("news/1", b"one", 1)
            assert (second.topic, second.payload, second.qos) == ("news/2", b"two", 2)
            assert await blocking(subscriber.extra_messages) == []  # QoS 0 was not kept
            # and the session is live again: new messages flow as usual
            await blocking(publisher.publish, "news/0", b"live zero", 0)
            live = await blocking(subscriber.wait_message)
            assert (live.payload, live.qos) == (b"live zero", 0)
            await blocking(subscriber.disconnect)
        finally:
            await blocking(subscriber.close)


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_offline_queue_keeps_at_most_max_queued_messages(
    protocol: MQTTProtocolVersion,
) -> None:
    async with (
        open_test_broker(max_queued_messages=5) as broker,
        paho_client(broker.port, "pub", protocol=protocol) as publisher,
    ):
        subscriber, _ = await connect_persistent(broker, protocol, "bounded", first=True)
        try:
            assert await blocking(subscriber.subscribe, "burst", 1) == [1]
            await blocking(subscriber.disconnect)
        finally:
            await blocking(subscriber.close)
        await wait_offline(broker, "bounded")

        for index in range(10):
            await blocking(publisher.publish, "burst", f"m{index}", 1)
        assert len(broker.core.sessions["bounded"].queued_entries) == 5

        subscriber, connack = await connect_persistent(broker, protocol, "bounded", first=False)
        try:
            assert connack.session_present is True
            received = await blocking(subscriber.wait_messages, 5)
            # the queue is full from m4 on: later QoS 1 messages are the ones dropped
            assert [m.payload for m in received] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
            assert {m.qos for m in received} == {1}
            assert await blocking(subscriber.extra_messages) == []
            await blocking(subscriber.disconnect)
        finally:
            await blocking(subscriber.close)


def raw_connect_options(version: ProtocolVersion) -> dict[str, object]:
    """CONNECT fields for a raw client resuming (or keeping) a session."""
    options: dict[str, object] = {"clean_start": False}
    if version is ProtocolVersion.V5:
        options["properties"] = Properties(session_expiry_interval=300)
    return options


async def raw_subscribe(raw: RawClient, topic_filter: str, qos: int) -> None:
    await raw.send(Subscribe(packet_id=1, subscriptions=(SubscriptionRequest(topic_filter, qos),)))
    suback = await raw.receive()
    assert isinstance(suback, Suback)
    assert suback.reason_codes == (qos,)


async def receive_publish(raw: RawClient) -> Publish:
    packet = await raw.receive()
    assert isinstance(packet, Publish), packet
    return packet


async def nothing_arrives(raw: RawClient, within: float = QUIET) -> None:
    """Fails if *raw* receives any packet within *within* seconds."""
    packet: Packet | None = None
    with trio.move_on_after(within):
        packet = await raw.receive(timeout=within + 5)
    assert packet is None, f"unexpected {packet!r}"


@pytest.mark.parametrize("version", RAW_VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize("qos", [1, 2])
async def test_unacknowledged_publish_is_redelivered_with_dup_on_resume(
    version: ProtocolVersion, qos: int
) -> None:
    async with open_test_broker() as broker:
        raw = await RawClient.open(broker.port, version)
        try:
            connack = await raw.connect("forgetful-acker", **raw_connect_options(version))
            assert (connack.reason_code, connack.session_present) == (0, False)
            await raw_subscribe(raw, "redo/t", qos)
            await broker.publish("redo/t", b"please ack", qos=qos)
            original = await receive_publish(raw)
            assert (original.qos, original.dup, original.payload) == (qos, False, b"please ack")
            assert original.packet_id is not None
        finally:
            await raw.aclose()  # no PUBACK / PUBREC: the message stays in flight
        await wait_offline(broker, "forgetful-acker")

        raw = await RawClient.open(broker.port, version)
        try:
            connack = await raw.connect("forgetful-acker", **raw_connect_options(version))
            assert (connack.reason_code, connack.session_present) == (0, True)
            again = await receive_publish(raw)
            assert again.dup is True
            assert again.packet_id == original.packet_id
            assert (again.topic, again.payload, again.qos) == ("redo/t", b"please ack", qos)
            if qos == 1:
                await raw.send(Puback(again.packet_id))
            else:
                await raw.send(Pubrec(again.packet_id))
                pubrel = await raw.receive()
                assert pubrel == Pubrel(again.packet_id)
            await nothing_arrives(raw)
        finally:
            await raw.aclose()


@pytest.mark.parametrize("version", RAW_VERSIONS, ids=VERSION_IDS)
async def test_pubrel_is_resent_on_resume_after_pubrec(version: ProtocolVersion) -> None:
    async with open_test_broker() as broker:
        raw = await RawClient.open(broker.port, version)
        try:
            await raw.connect("half-done", **raw_connect_options(version))
            await raw_subscribe(raw, "two/t", 2)
            await broker.publish("two/t", b"exactly once", qos=2)
            publish = await receive_publish(raw)
            assert publish.packet_id is not None
            await raw.send(Pubrec(publish.packet_id))
            assert await raw.receive() == Pubrel(publish.packet_id)
        finally:
            await raw.aclose()  # no PUBCOMP
        await wait_offline(broker, "half-done")

        raw = await RawClient.open(broker.port, version)
        try:
            connack = await raw.connect("half-done", **raw_connect_options(version))
            assert connack.session_present is True
            # the PUBLISH is not sent again, only the PUBREL
            assert await raw.receive() == Pubrel(publish.packet_id)
            await nothing_arrives(raw)
        finally:
            await raw.aclose()


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_second_connection_with_the_same_client_id_takes_over(
    protocol: MQTTProtocolVersion,
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "pub", protocol=protocol) as publisher,
        paho_client(broker.port, "twin", protocol=protocol) as first,
    ):
        first_port = first.local_port
        async with paho_client(broker.port, "twin", protocol=protocol) as second:
            ended = await blocking(first.wait_disconnect)
            assert ended.is_failure
            if protocol is V5:
                assert ended.reason_code == 0x8E  # Session taken over
            assert first.client.socket() is None  # paho closed it after the broker did
            twins = [s for s in broker.clients() if s.client_id == "twin"]
            assert len(twins) == 1
            assert twins[0].peer.client is not None
            assert twins[0].peer.client.port == second.local_port != first_port

            # the new connection keeps working
            assert await blocking(second.subscribe, "after/t", 1) == [1]
            await blocking(publisher.publish, "after/t", b"to the second", 1)
            message = await blocking(second.wait_message)
            assert message.payload == b"to the second"
            assert await blocking(first.extra_messages, 0) == []
            assert second.client.is_connected()


@pytest.mark.parametrize("version", RAW_VERSIONS, ids=VERSION_IDS)
async def test_in_flight_window_holds_back_qos1_until_an_ack(version: ProtocolVersion) -> None:
    async with open_test_broker(receive_maximum=2, max_inflight_messages=2) as broker:
        raw = await RawClient.open(broker.port, version)
        try:
            if version is ProtocolVersion.V5:
                # a 5.0 client states its own window; the broker advertises its own
                connack = await raw.connect("slow", properties=Properties(receive_maximum=2))
                assert connack.properties.receive_maximum == 2
            else:
                # 3.1.1 has no way to say it: the broker's max_inflight_messages is used
                connack = await raw.connect("slow")
            assert connack.reason_code == 0
            await raw_subscribe(raw, "window/t", 1)
            for index in range(3):
                await broker.publish("window/t", f"w{index}", qos=1)

            first = await receive_publish(raw)
            second = await receive_publish(raw)
            assert [first.payload, second.payload] == [b"w0", b"w1"]
            await nothing_arrives(raw)  # two in flight: the third waits
            assert len(broker.core.sessions["slow"].queued_entries) == 1

            assert first.packet_id is not None
            await raw.send(Puback(first.packet_id))
            third = await receive_publish(raw)
            assert (third.payload, third.qos, third.dup) == (b"w2", 1, False)
            assert third.packet_id not in (None, second.packet_id)
            await nothing_arrives(raw)
        finally:
            await raw.aclose()
