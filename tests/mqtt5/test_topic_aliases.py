"""Topic aliases (MQTT 5.0 section 3.3.2.3.4), both directions.

Inbound: the broker advertises ``topic_alias_maximum`` in CONNACK and resolves the aliases a
client sets up, per connection. Outbound: when a client's CONNECT allows N aliases, the
first N topics sent to it get aliases and are then sent as an empty topic plus alias.
"""

from __future__ import annotations

import pytest
import trio
from helpers import V5, Client, make_core
from integration.paho_helpers import V5 as PAHO_V5
from integration.paho_helpers import blocking, paho_client, properties
from paho.mqtt.packettypes import PacketTypes
from rawclient import RawClient

from trio_mqtt.broker.message import Message
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.testing import open_test_broker

from .raw_helpers import expect_disconnect, raw_client, receive_publish, subscribe


def alias(n: int) -> Properties:
    return Properties(topic_alias=n)


# ------------------------------------------------------------------ inbound (raw)


async def test_connack_advertises_topic_alias_maximum() -> None:
    async with open_test_broker() as broker, raw_client(broker.port, "c") as (_c, connack):
        assert connack.properties.topic_alias_maximum == 10  # the default


async def test_topic_alias_maximum_is_configurable_and_enforced() -> None:
    async with (
        open_test_broker(topic_alias_maximum=2) as broker,
        raw_client(broker.port, "c") as (client, connack),
    ):
        assert connack.properties.topic_alias_maximum == 2
        await client.send(Publish("a/b", b"x", qos=1, packet_id=1, properties=alias(3)))
        packets = await client.expect_closed()
        assert len(packets) == 1 and isinstance(packets[0], Disconnect)
        assert packets[0].reason_code == ReasonCode.TOPIC_ALIAS_INVALID


async def test_topic_alias_maximum_zero_advertises_none_and_refuses_aliases() -> None:
    async with (
        open_test_broker(topic_alias_maximum=0) as broker,
        raw_client(broker.port, "c") as (client, connack),
    ):
        assert connack.properties.topic_alias_maximum is None
        await client.send(Publish("a/b", b"x", qos=0, properties=alias(1)))
        packets = await client.expect_closed()
        assert len(packets) == 1 and isinstance(packets[0], Disconnect)
        assert packets[0].reason_code == ReasonCode.TOPIC_ALIAS_INVALID


async def test_inbound_alias_is_bound_then_used() -> None:
    async with (
        open_test_broker() as broker,
        raw_client(broker.port, "sub") as (sub, _),
        raw_client(broker.port, "pub") as (pub, _),
    ):
        await subscribe(sub, ("a/#", 1))
        await pub.send(Publish("a/b", b"1", qos=1, packet_id=1, properties=alias(3)))
        await pub.send(Publish("", b"2", qos=1, packet_id=2, properties=alias(3)))
        # rebinding the alias to another topic [MQTT-3.3.2-12 permits re-setting]
        await pub.send(Publish("a/c", b"3", qos=1, packet_id=3, properties=alias(3)))
        await pub.send(Publish("", b"4", qos=1, packet_id=4, properties=alias(3)))
        for expected_id in (1, 2, 3, 4):
            ack = await pub.receive()
            assert ack == Puback(expected_id)
        got = [await receive_publish(sub) for _ in range(4)]
        assert [(p.topic, p.payload) for p in got] == [
            ("a/b", b"1"),
            ("a/b", b"2"),
            ("a/c", b"3"),
            ("a/c", b"4"),
        ]
        # the subscriber allowed no aliases: none is forwarded
        assert all(p.properties.topic_alias is None for p in got)
        # and the alias is not stored with a retained message either
        await pub.send(Publish("", b"r", retain=True, properties=alias(3)))
        await receive_publish(sub)
        stored = broker.retained("a/c")
        assert stored is not None
        assert stored.properties.topic_alias is None


# hand-computed PUBLISH QoS 0 packets (5.0 section 3.3): 0x30, remaining length,
# topic length + topic, property length, 0x23 Topic Alias (two-byte integer)
PUBLISH_ALIAS_0 = b"\x30\x07\x00\x01t\x03\x23\x00\x00"
PUBLISH_ALIAS_11 = b"\x30\x07\x00\x01t\x03\x23\x00\x0b"
PUBLISH_EMPTY_ALIAS_1 = b"\x30\x06\x00\x00\x03\x23\x00\x01"
PUBLISH_EMPTY_NO_ALIAS = b"\x30\x03\x00\x00\x00"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (PUBLISH_ALIAS_0, ReasonCode.TOPIC_ALIAS_INVALID),  # [MQTT-3.3.2-8]
        (PUBLISH_ALIAS_11, ReasonCode.TOPIC_ALIAS_INVALID),  # above the maximum
        (PUBLISH_EMPTY_ALIAS_1, ReasonCode.PROTOCOL_ERROR),  # alias never bound
        (PUBLISH_EMPTY_NO_ALIAS, ReasonCode.PROTOCOL_ERROR),  # no topic, no alias
    ],
    ids=["alias-0", "alias-above-max", "unknown-alias", "empty-topic-no-alias"],
)
async def test_bad_inbound_alias_disconnects(data: bytes, code: ReasonCode) -> None:
    async with open_test_broker() as broker, raw_client(broker.port, "bad") as (client, _):
        await client.send_raw(data)
        await expect_disconnect(client, code)
        assert broker.stats.protocol_errors == 1


async def test_inbound_aliases_do_not_outlive_the_connection() -> None:
    async with open_test_broker() as broker:
        async with raw_client(
            broker.port, "p", properties=Properties(session_expiry_interval=60)
        ) as (first, _):
            await first.send(Publish("x/y", b"", qos=1, packet_id=1, properties=alias(1)))
            assert await first.receive() == Puback(1, ReasonCode.NO_MATCHING_SUBSCRIBERS)
        async with raw_client(
            broker.port, "p", clean_start=False, properties=Properties(session_expiry_interval=60)
        ) as (second, _):
            await second.send_raw(PUBLISH_EMPTY_ALIAS_1)
            await expect_disconnect(second, ReasonCode.PROTOCOL_ERROR)


# ----------------------------------------------------------------- outbound (raw)


async def test_outbound_aliases_for_the_first_n_topics() -> None:
    async with (
        open_test_broker() as broker,
        raw_client(broker.port, "s", properties=Properties(topic_alias_maximum=2)) as (sub, _),
    ):
        await subscribe(sub, ("t/#", 0))
        for _round in range(2):
            for topic in ("t/1", "t/2", "t/3"):
                await broker.publish(topic, topic.encode())
        got = [await receive_publish(sub) for _ in range(6)]
        assert [(p.topic, p.properties.topic_alias, p.payload) for p in got] == [
            ("t/1", 1, b"t/1"),
            ("t/2", 2, b"t/2"),
            ("t/3", None, b"t/3"),  # no alias left: the full topic, no alias
            ("", 1, b"t/1"),
            ("", 2, b"t/2"),
            ("t/3", None, b"t/3"),
        ]


@pytest.mark.parametrize("aliased_first", [True, False])
async def test_shared_header_cache_not_poisoned_by_aliases(aliased_first: bool) -> None:
    # Two subscribers of one QoS 1 message share one QueuedMessage; the one using aliases
    # must not leak its alias header to the other, and vice versa.
    async with (
        open_test_broker() as broker,
        raw_client(broker.port, "al", properties=Properties(topic_alias_maximum=5)) as (al, _),
        raw_client(broker.port, "plain") as (plain, _),
    ):
        first, second = (al, plain) if aliased_first else (plain, al)
        await subscribe(first, ("c/t", 1))
        await subscribe(second, ("c/t", 1))
        for payload in (b"1", b"2"):
            await broker.publish("c/t", payload, qos=1)
        al_got = [await receive_publish(al) for _ in range(2)]
        plain_got = [await receive_publish(plain) for _ in range(2)]
        assert [(p.topic, p.properties.topic_alias) for p in al_got] == [("c/t", 1), ("", 1)]
        assert [(p.topic, p.properties.topic_alias) for p in plain_got] == [
            ("c/t", None),
            ("c/t", None),
        ]
        assert [p.payload for p in al_got + plain_got] == [b"1", b"2", b"1", b"2"]


async def test_resent_message_rebinds_alias_on_new_connection() -> None:
    # Aliases are per connection: a QoS 1 message resent after reconnecting carries the
    # full topic again (and binds the alias anew).
    session = Properties(session_expiry_interval=60, topic_alias_maximum=3)
    async with open_test_broker() as broker:
        first = await RawClient.open(broker.port, V5)
        await first.connect("r", properties=session)
        await subscribe(first, ("q/#", 1))
        await broker.publish("q/1", b"a", qos=1)
        await broker.publish("q/1", b"b", qos=1)
        got = [await receive_publish(first) for _ in range(2)]
        assert [(p.topic, p.properties.topic_alias) for p in got] == [("q/1", 1), ("", 1)]
        await first.aclose()  # no PUBACK: both stay in flight
        async with raw_client(broker.port, "r", clean_start=False, properties=session) as (
            second,
            connack,
        ):
            assert connack.session_present
            again = [await receive_publish(second) for _ in range(2)]
            assert [(p.topic, p.properties.topic_alias, p.dup) for p in again] == [
                ("q/1", 1, True),
                ("", 1, True),
            ]


# ------------------------------------------------------------- exact bytes (core)


def test_outbound_alias_bytes() -> None:
    core = make_core()
    client = Client(core)
    client.send(Connect("b", V5, properties=Properties(topic_alias_maximum=1)))
    client.send(Subscribe(1, (SubscriptionRequest("ab", 0),)))
    connack, suback = client.packets()
    assert isinstance(connack, Connack)
    assert isinstance(suback, Suback)
    core.publish(Message("ab", b"p"))
    core.publish(Message("ab", b"q"))
    # 0x30, length 9: topic "ab" (00 02 61 62), props length 3: 23 00 01, payload "p"
    # then 0x30, length 7: empty topic (00 00), props 03 23 00 01, payload "q"
    assert client.raw() == (
        b"\x30\x09\x00\x02ab\x03\x23\x00\x01p" + b"\x30\x07\x00\x00\x03\x23\x00\x01q"
    )


def test_too_big_message_does_not_bind_an_alias() -> None:
    core = make_core()
    client = Client(core)
    props = Properties(topic_alias_maximum=4, maximum_packet_size=20)
    client.send(Connect("m", V5, properties=props))
    client.send(Subscribe(1, (SubscriptionRequest("ab", 0),)))
    client.raw()
    core.publish(Message("ab", b"x" * 30))  # dropped for this client: above 20 bytes
    core.publish(Message("ab", b"p"))
    assert client.raw() == b"\x30\x09\x00\x02ab\x03\x23\x00\x01p"
    assert core.stats.messages_dropped == 1


# ----------------------------------------------------------------------- paho


async def test_paho_publisher_with_topic_alias() -> None:
    async with (
        open_test_broker() as broker,
        broker.subscribe("p/#") as messages,
        paho_client(broker.port, "paho-pub", protocol=PAHO_V5) as pub,
    ):
        with_alias = properties(PacketTypes.PUBLISH, TopicAlias=2)
        await blocking(pub.publish, "p/x", b"1", 1, publish_properties=with_alias)
        await blocking(pub.publish, "", b"2", 1, publish_properties=with_alias)
        with trio.fail_after(5):
            first = await messages.receive()
            second = await messages.receive()
        assert (first.topic, first.payload) == ("p/x", b"1")
        assert (second.topic, second.payload) == ("p/x", b"2")


async def test_paho_subscriber_allowing_aliases() -> None:
    connect_props = properties(PacketTypes.CONNECT, TopicAliasMaximum=4)
    async with (
        open_test_broker() as broker,
        paho_client(
            broker.port, "paho-sub", protocol=PAHO_V5, connect_properties=connect_props
        ) as sub,
    ):
        seen: list[tuple[str, int | None, bytes]] = []
        arrived = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def on_message(_client: object, _userdata: object, message: object) -> None:
            props = getattr(message, "properties", None)
            seen.append(
                (
                    message.topic,  # type: ignore[attr-defined]
                    getattr(props, "TopicAlias", None),
                    bytes(message.payload),  # type: ignore[attr-defined]
                )
            )
            if len(seen) == 2:
                trio.from_thread.run_sync(arrived.set, trio_token=token)

        sub.client.on_message = on_message
        assert await blocking(sub.subscribe, "s/#", 1) == [1]
        await broker.publish("s/t", b"a", qos=1)
        await broker.publish("s/t", b"b", qos=1)
        with trio.fail_after(5):
            await arrived.wait()
        # paho passes the raw topic through: the second message carries only the alias
        assert seen == [("s/t", 1, b"a"), ("", 1, b"b")]
