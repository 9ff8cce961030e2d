"""Shared subscriptions: CONNACK availability flags and redistribution (5.0 section 4.8.2).

When the session of a member ends while messages chosen for it through a shared
subscription are still queued (never sent) or unacknowledged at QoS 1, the next member in
turn gets them; a QoS 2 message already sent stays with its member [MQTT-4.8.2-5].
"""

from __future__ import annotations

from typing import Any

import trio
from helpers import Client, FakeClock, make_core

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message
from trio_mqtt.mqtt.packets import Connect, Properties, Puback, Publish, Pubrec
from trio_mqtt.testing import open_test_broker

from .raw_helpers import raw_client, receive_publish, subscribe

GROUP = "$share/g/s/x"


def member(
    core: BrokerCore,
    client_id: str,
    *filters: tuple[str, int],
    sub_id: int | None = None,
    **connect: Any,
) -> Client:
    """A client connected as ``client_id`` (CONNECT options in ``connect``) and subscribed."""
    client = Client(core)
    client.connect(client_id, **connect)
    client.subscribe_alone(*filters, sub_id=sub_id)
    return client


async def test_connack_says_shared_wildcard_and_subscription_ids_available() -> None:
    async with open_test_broker() as broker, raw_client(broker.port, "c") as (_client, connack):
        props = connack.properties
        assert props.shared_subscription_available == 1
        assert props.wildcard_subscription_available == 1
        assert props.subscription_identifier_available == 1


def test_connack_bytes_carry_the_availability_properties() -> None:
    client = Client(make_core())
    client.send(Connect("c", client.version))
    data = client.raw()
    # property id then value: 0x28 Wildcard, 0x29 Subscription Identifier, 0x2A Shared
    for prop in (b"\x28\x01", b"\x29\x01", b"\x2a\x01"):
        assert prop in data


async def test_inflight_message_goes_to_another_member_when_session_ends() -> None:
    async with (
        open_test_broker() as broker,
        raw_client(broker.port, "a") as (a, _),
        raw_client(broker.port, "b") as (b, _),
    ):
        await subscribe(a, (GROUP, 1))
        await subscribe(b, (GROUP, 1))
        await broker.publish("s/x", b"m1", qos=1)  # a joined first: its turn
        got = await receive_publish(a)
        assert got.payload == b"m1"
        await a.aclose()  # no PUBACK, session expiry 0: the session ends
        moved = await receive_publish(b)
        assert (moved.topic, moved.payload, moved.qos, moved.dup) == ("s/x", b"m1", 1, False)
        await b.send(Puback(moved.packet_id or 0))
        with trio.move_on_after(0.3):
            extra = await b.receive(1.0)
            raise AssertionError(f"unexpected {extra}")


def test_queued_and_inflight_move_in_order() -> None:
    core = make_core()
    a = member(core, "a", (GROUP, 1), properties=Properties(receive_maximum=1))
    for n in range(3):
        core.publish(Message("s/x", f"m{n}".encode(), qos=1))
    assert [p.payload for p in a.publishes()] == [b"m0"]  # window 1: m1, m2 queued
    b = member(core, "b", (GROUP, 1))
    a.drop()
    assert [p.payload for p in b.publishes()] == [b"m0", b"m1", b"m2"]
    assert "a" not in core.sessions


def test_member_options_apply_to_the_moved_message() -> None:
    core = make_core()
    a = member(core, "a", (GROUP, 1))
    b = member(core, "b", (GROUP, 0), sub_id=7)
    core.publish(Message("s/x", b"q1", qos=1))
    (sent,) = a.publishes()
    assert sent.qos == 1
    a.drop()
    (moved,) = b.publishes()
    assert (moved.payload, moved.qos, moved.properties.subscription_identifiers) == (
        b"q1",
        0,
        (7,),
    )


def test_sent_qos2_message_is_not_moved() -> None:
    """[MQTT-4.8.2-5]: a QoS 2 message already sent to a member whose session ends MUST
    NOT go to another member (even before its PUBREC)."""
    core = make_core()
    a = member(core, "a", (GROUP, 2))
    b = member(core, "b", (GROUP, 2))
    core.publish(Message("s/x", b"q2", qos=2))
    (sent,) = a.publishes()
    assert sent.qos == 2
    a.drop()
    assert b.raw() == b""


def test_queued_qos2_message_never_sent_is_moved() -> None:
    core = make_core()
    a = member(core, "a", (GROUP, 2), properties=Properties(receive_maximum=1))
    core.publish(Message("s/x", b"sent", qos=2))
    core.publish(Message("s/x", b"queued", qos=2))
    assert [p.payload for p in a.publishes()] == [b"sent"]
    b = member(core, "b", (GROUP, 2))
    a.drop()
    assert [(p.payload, p.qos) for p in b.publishes()] == [(b"queued", 2)]


def test_pubrec_received_message_is_not_moved() -> None:
    # After PUBREC the member has the message (QoS 2, method B): nothing to hand on.
    core = make_core()
    a = member(core, "a", (GROUP, 2))
    b = member(core, "b", (GROUP, 2))
    core.publish(Message("s/x", b"once", qos=2))
    (sent,) = a.publishes()
    a.send(Pubrec(sent.packet_id or 0))
    a.packets()  # PUBREL
    a.drop()
    assert b.raw() == b""


def test_persistent_session_keeps_its_messages_until_it_expires() -> None:
    clock = FakeClock()
    core = make_core(clock)
    a = member(core, "a", (GROUP, 1), properties=Properties(session_expiry_interval=30))
    b = member(core, "b", (GROUP, 1))
    core.publish(Message("s/x", b"kept", qos=1))
    a.publishes()
    a.drop()
    core.tick()
    assert b.raw() == b""  # the session lives on: a may come back for it
    clock.now += 31
    core.tick()
    assert [p.payload for p in b.publishes()] == [b"kept"]


def test_only_the_shared_copy_is_moved() -> None:
    # "a" also has a plain subscription: a message that reached it only through that one
    # belongs to no group and is not handed to "b".
    core = make_core()
    a = member(core, "a", (GROUP, 1), ("s/x", 1))
    b = member(core, "b", (GROUP, 1))
    core.publish(Message("s/x", b"first", qos=1))  # group picks a (merged with plain)
    core.publish(Message("s/x", b"second", qos=1))  # group picks b; a gets the plain copy
    assert [p.payload for p in a.publishes()] == [b"first", b"second"]
    assert [p.payload for p in b.publishes()] == [b"second"]
    a.drop()
    assert [p.payload for p in b.publishes()] == [b"first"]


def test_last_member_leaving_drops_quietly() -> None:
    core = make_core()
    a = member(core, "a", (GROUP, 1))
    core.publish(Message("s/x", b"x", qos=1))
    a.publishes()
    a.drop()
    assert core.sessions == {}
    assert core.router.pick_shared_member(GROUP) is None


def test_expired_message_is_not_moved() -> None:
    clock = FakeClock()
    core = make_core(clock)
    a = member(core, "a", (GROUP, 1))
    b = member(core, "b", (GROUP, 1))
    message = Message(
        "s/x", b"old", qos=1, properties=Properties(message_expiry_interval=5), created=clock.now
    )
    core.publish(message)
    (sent,) = a.publishes()
    assert isinstance(sent, Publish)
    clock.now += 6
    a.drop()
    assert b.raw() == b""
