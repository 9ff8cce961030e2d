"""PUBLISH at QoS 0, 1 and 2 through the broker with paho-mqtt 2.x clients.

Every direction: paho -> broker -> paho, the embedding API's ``broker.publish`` -> paho,
and paho -> ``broker.subscribe``. Also the QoS a subscription grants (downgrade),
overlapping subscriptions (one copy, highest QoS), and MQTT 5 subscription identifiers and
user properties on the delivered message.
"""

from __future__ import annotations

import itertools

import pytest
import trio
from helpers import wait_until
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes

from trio_mqtt.mqtt.packets import Properties
from trio_mqtt.testing import open_test_broker

from .paho_helpers import (
    QUIET,
    V5,
    VERSION_IDS,
    VERSIONS,
    Received,
    blocking,
    paho_client,
    properties,
)

QOS_LEVELS = [0, 1, 2]
VERSION_QOS = list(itertools.product(VERSIONS, QOS_LEVELS))
VERSION_QOS_IDS = [f"{v}-qos{q}" for v, q in itertools.product(VERSION_IDS, QOS_LEVELS)]


def summary(message: Received) -> tuple[str, bytes, int, bool]:
    return (message.topic, message.payload, message.qos, message.retain)


@pytest.mark.parametrize(("protocol", "qos"), VERSION_QOS, ids=VERSION_QOS_IDS)
async def test_paho_publisher_to_paho_subscriber(protocol: MQTTProtocolVersion, qos: int) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=protocol) as subscriber,
        paho_client(broker.port, "pub", protocol=protocol) as publisher,
    ):
        assert await blocking(subscriber.subscribe, "q/+", 2) == [2]
        payload = f"qos {qos} payload".encode()
        await blocking(publisher.publish, "q/t", payload, qos)
        message = await blocking(subscriber.wait_message)
        assert summary(message) == ("q/t", payload, qos, False)
        assert message.dup is False
        assert await blocking(subscriber.extra_messages) == []
        assert broker.stats.messages_received == 1
        assert broker.stats.messages_sent == 1


@pytest.mark.parametrize(("protocol", "qos"), VERSION_QOS, ids=VERSION_QOS_IDS)
async def test_broker_publish_to_paho_subscriber(protocol: MQTTProtocolVersion, qos: int) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=protocol) as subscriber,
    ):
        assert await blocking(subscriber.subscribe, "in/#", 2) == [2]
        assert await broker.publish("in/x/y", b"\x00\xffbinary", qos=qos) == 1
        message = await blocking(subscriber.wait_message)
        assert summary(message) == ("in/x/y", b"\x00\xffbinary", qos, False)
        assert await blocking(subscriber.extra_messages) == []
        if qos > 0:
            # the flow completed: nothing left in flight for this session
            session = broker.core.sessions["sub"]
            await wait_until(lambda: not session.inflight_out, "acknowledged")


@pytest.mark.parametrize(("protocol", "qos"), VERSION_QOS, ids=VERSION_QOS_IDS)
async def test_paho_publisher_to_broker_subscribe(protocol: MQTTProtocolVersion, qos: int) -> None:
    async with (
        open_test_broker() as broker,
        broker.subscribe("out/+") as messages,
        paho_client(broker.port, "pub", protocol=protocol) as publisher,
    ):
        await blocking(publisher.publish, "out/t", b"from paho", qos)
        with trio.fail_after(5):
            message = await messages.receive()
        assert (message.topic, message.payload, message.qos) == ("out/t", b"from paho", qos)
        assert message.retain is False
        assert message.publisher == "pub"
        assert message.peer.client is not None
        assert message.peer.client.port == publisher.local_port


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize(("granted", "published"), [(1, 2), (0, 2), (0, 1), (1, 1), (2, 1)])
async def test_delivery_qos_is_the_lower_of_publish_and_granted(
    protocol: MQTTProtocolVersion, granted: int, published: int
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=protocol) as subscriber,
        paho_client(broker.port, "pub", protocol=protocol) as publisher,
    ):
        assert await blocking(subscriber.subscribe, "down/t", granted) == [granted]
        await blocking(publisher.publish, "down/t", b"m", published)
        message = await blocking(subscriber.wait_message)
        assert message.qos == min(granted, published)
        assert message.payload == b"m"


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize(
    ("filters", "expected_qos"),
    [
        ((("a/#", 0), ("a/+", 1)), 1),
        ((("a/+", 2), ("a/#", 1)), 2),
        ((("a/b", 1), ("a/#", 0), ("+/b", 0)), 1),
    ],
    ids=["hash0-plus1", "plus2-hash1", "three"],
)
async def test_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos(
    protocol: MQTTProtocolVersion, filters: tuple[tuple[str, int], ...], expected_qos: int
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=protocol) as subscriber,
        paho_client(broker.port, "pub", protocol=protocol) as publisher,
    ):
        for topic_filter, qos in filters:
            assert await blocking(subscriber.subscribe, topic_filter, qos) == [qos]
        await blocking(publisher.publish, "a/b", b"once", 2)
        message = await blocking(subscriber.wait_message)
        assert (message.topic, message.payload, message.qos) == ("a/b", b"once", expected_qos)
        assert await blocking(subscriber.extra_messages) == []
        assert broker.stats.messages_sent == 1


async def test_mqtt5_subscription_identifier_arrives_on_the_message() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=V5) as subscriber,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        with_id = properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42)
        assert await blocking(subscriber.subscribe, "ids/+", 1, subscribe_properties=with_id) == [1]
        assert await blocking(subscriber.subscribe, "plain/+", 1) == [1]
        await blocking(publisher.publish, "ids/t", b"tagged", 1)
        await blocking(publisher.publish, "plain/t", b"untagged", 1)
        tagged, untagged = await blocking(subscriber.wait_messages, 2)
        assert (tagged.payload, tagged.subscription_identifiers) == (b"tagged", (42,))
        assert (untagged.payload, untagged.subscription_identifiers) == (b"untagged", ())


async def test_mqtt5_one_copy_for_overlapping_subscriptions_carries_every_identifier() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=V5) as subscriber,
    ):
        for identifier, topic_filter in [(1, "o/#"), (2, "o/+"), (300, "+/t")]:
            props = properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=identifier)
            assert await blocking(
                subscriber.subscribe, topic_filter, 1, subscribe_properties=props
            ) == [1]
        await broker.publish("o/t", b"x", qos=1)
        message = await blocking(subscriber.wait_message)
        assert sorted(message.subscription_identifiers) == [1, 2, 300]
        assert await blocking(subscriber.extra_messages) == []


async def test_mqtt5_user_properties_pass_from_publisher_to_subscriber() -> None:
    pairs = [("trace", "abc-123"), ("unit", "°C"), ("trace", "second value")]
    async with (
        open_test_broker() as broker,
        broker.subscribe("up/#") as local,
        paho_client(broker.port, "sub", protocol=V5) as subscriber,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        assert await blocking(subscriber.subscribe, "up/#", 1) == [1]
        publish_props = properties(PacketTypes.PUBLISH, UserProperty=pairs)
        await blocking(
            publisher.publish, "up/t", b"with props", 1, publish_properties=publish_props
        )
        message = await blocking(subscriber.wait_message)
        assert message.payload == b"with props"
        assert list(message.user_properties) == pairs  # order and repeats kept
        with trio.fail_after(5):
            seen = await local.receive()
        assert list(seen.properties.user_properties) == pairs


async def test_mqtt5_user_properties_from_broker_publish_reach_paho() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=V5) as subscriber,
    ):
        assert await blocking(subscriber.subscribe, "bp/t", 2) == [2]
        props = Properties(user_properties=(("source", "embedded"),))
        await broker.publish("bp/t", b"p", qos=2, properties=props)
        message = await blocking(subscriber.wait_message)
        assert message.user_properties == (("source", "embedded"),)
        assert message.qos == 2


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_messages_from_one_publisher_keep_their_order(
    protocol: MQTTProtocolVersion,
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=protocol) as subscriber,
        paho_client(broker.port, "pub", protocol=protocol) as publisher,
    ):
        assert await blocking(subscriber.subscribe, "seq", 1) == [1]
        for index in range(20):
            await blocking(publisher.publish, "seq", str(index), 1)
        received = await blocking(subscriber.wait_messages, 20)
        assert [m.payload for m in received] == [str(i).encode() for i in range(20)]
        assert await blocking(subscriber.extra_messages, QUIET) == []
