"""MQTT 5.0 conformance: one test per normative statement the broker implements.

Each test name or docstring cites its statement ([MQTT-x.y.z-n], OASIS MQTT 5.0). Most
drive the core through ``MQTTConnection`` with bytes (``Client``: deterministic, no
sockets, a fake clock); the ones about closing connections or timing use real TCP and
``RawClient``. Expected raw bytes are written out by hand from the spec. Statements
covered in depth elsewhere: topic aliases (test_topic_aliases.py), shared subscription
redistribution [MQTT-4.8.2-5] (test_shared_subscriptions.py), enhanced authentication
[MQTT-4.12.0-2..5], [MQTT-4.12.1-1/2] and [MQTT-3.1.2-30] (test_enhanced_auth.py).
Statement numbers follow the MQTT 5.0 OASIS Standard (07 March 2019).
"""

from __future__ import annotations

import pytest
import trio
from helpers import V5, Client, FakeClock, make_core

from trio_mqtt.broker.message import Message
from trio_mqtt.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.testing import open_test_broker

from .raw_helpers import raw_client

RC = ReasonCode
SESSION = Properties(session_expiry_interval=300)


def client(core: object, client_id: str, **connect: object) -> Client:
    c = Client(core)  # type: ignore[arg-type]
    connack = c.connect(client_id, **connect)
    assert connack.reason_code == 0, connack
    return c


def only(c: Client) -> object:
    (packet,) = c.packets()
    return packet


def disconnected_with(c: Client, code: int) -> bool:
    packets = c.packets()
    return (
        c.conn.wants_close
        and len(packets) == 1
        and isinstance(packets[0], Disconnect)
        and packets[0].reason_code == code
    )


# ------------------------------------------------------------------ 3.1 CONNECT


def test_mqtt_3_1_0_1_first_packet_must_be_connect() -> None:
    c = Client(make_core())
    c.conn.receive_data(b"\xc0\x00")  # PINGREQ
    assert c.raw() == b""  # no CONNACK, no DISCONNECT before CONNACK [MQTT-3.14.0-1]
    assert c.conn.wants_close


def test_mqtt_3_1_0_2_second_connect_is_protocol_error() -> None:
    c = client(make_core(), "twice")
    c.send(Connect("twice", V5))
    assert disconnected_with(c, RC.PROTOCOL_ERROR)  # and no second CONNACK [MQTT-3.2.0-2]


def test_mqtt_3_1_2_3_reserved_connect_flag_is_malformed() -> None:
    c = Client(make_core())
    # CONNECT: 10 0E, "MQTT", level 5, flags 0x03 (reserved bit 0 set), keep alive 60,
    # property length 0, client id "c"
    c.conn.receive_data(b"\x10\x0e\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x01c")
    connack = only(c)
    assert isinstance(connack, Connack)
    assert connack.reason_code == RC.MALFORMED_PACKET
    assert not connack.session_present  # [MQTT-3.2.2-6]
    assert c.conn.wants_close  # [MQTT-3.2.2-7]


def test_mqtt_3_1_2_4_clean_start_discards_session() -> None:
    core = make_core()
    a = client(core, "cs", properties=SESSION)
    a.subscribe_alone(("cs/t", 1))
    a.send(Disconnect())
    a.conn.connection_lost()
    b = Client(core)
    connack = b.connect("cs", clean_start=True, properties=SESSION)
    assert not connack.session_present  # [MQTT-3.2.2-2]
    core.publish(Message("cs/t", b"x", qos=1))
    assert b.raw() == b""  # the old subscription is gone


def test_mqtt_3_1_2_5_resume_session_and_3_2_2_3_session_present() -> None:
    core = make_core()
    a = client(core, "rs", properties=SESSION)
    a.subscribe_alone(("rs/t", 1))
    a.drop()
    core.publish(Message("rs/t", b"while away", qos=1))
    b = Client(core)
    connack = b.connect("rs", clean_start=False, properties=SESSION)
    assert connack.session_present
    (got,) = b.publishes()
    assert got.payload == b"while away"


def test_mqtt_3_1_2_6_no_session_gives_new_one() -> None:
    c = Client(make_core())
    connack = c.connect("fresh", clean_start=False, properties=SESSION)
    assert connack.reason_code == 0
    assert not connack.session_present  # [MQTT-3.2.2-3] "otherwise ... 0"


def test_mqtt_3_2_2_1_connack_flags_reserved_bits_zero() -> None:
    core = make_core()
    a = client(core, "f", properties=SESSION)
    a.drop()
    b = Client(core)
    b.send(Connect("f", V5, clean_start=False, properties=SESSION))
    data = b.raw()
    assert data[0] == 0x20
    assert data[2] == 0x01  # only bit 0 (Session Present) may be set
    assert data[3] == 0x00


async def test_mqtt_3_1_2_22_keep_alive_one_and_a_half_times() -> None:
    async with (
        open_test_broker() as broker,
        raw_client(broker.port, "ka", keep_alive=1) as (
            c,
            _,
        ),
    ):
        start = trio.current_time()
        packets = await c.expect_closed(timeout=4)
        elapsed = trio.current_time() - start
        assert 1.0 <= elapsed < 3.0
        assert [getattr(p, "reason_code", None) for p in packets] == [RC.KEEP_ALIVE_TIMEOUT]


def test_mqtt_3_1_3_6_and_3_2_2_16_empty_client_id_gets_unique_assigned_id() -> None:
    core = make_core()
    ids = set()
    for _ in range(2):
        c = Client(core)
        connack = c.connect("")
        assigned = connack.properties.assigned_client_identifier
        assert assigned
        assert assigned in core.sessions  # [MQTT-3.1.3-7]: used as the client id
        ids.add(assigned)
    assert len(ids) == 2


def test_mqtt_3_1_4_3_takeover_disconnects_existing_with_0x8e() -> None:
    core = make_core()
    old = client(core, "same")
    client(core, "same")
    assert disconnected_with(old, RC.SESSION_TAKEN_OVER)


def test_mqtt_3_1_2_14_and_15_will_retain_flag() -> None:
    core = make_core()
    for retain in (False, True):
        c = client(core, f"w{retain}", will=Will(f"will/{retain}", b"bye", retain=retain))
        c.drop()
        assert (core.retained.get(f"will/{retain}") is not None) is retain


def test_mqtt_3_1_3_9_no_will_if_reconnected_within_delay() -> None:
    clock = FakeClock()
    core = make_core(clock)
    will = Will("will/d", b"gone", properties=Properties(will_delay_interval=10))
    received: list[Message] = []
    core.local_subscribe("will/d", received.append)
    c = client(core, "d", will=will, properties=SESSION)
    c.drop()
    clock.now += 5
    client(core, "d", clean_start=False, properties=SESSION)
    clock.now += 10
    core.tick()
    assert received == []


def test_mqtt_3_14_4_3_normal_disconnect_discards_will_0x04_keeps_it() -> None:
    core = make_core()
    received: list[Message] = []
    core.local_subscribe("will/#", received.append)
    for code, topic in ((RC.SUCCESS, "will/normal"), (RC.DISCONNECT_WITH_WILL_MESSAGE, "will/x")):
        c = client(core, topic, will=Will(topic, b"w"))
        c.send(Disconnect(code))
        c.conn.connection_lost()
    assert [m.topic for m in received] == ["will/x"]


# ----------------------------------------------------------------- 3.3 PUBLISH


def test_mqtt_3_3_1_2_qos0_dup_is_zero() -> None:
    core = make_core()
    c = client(core, "q0")
    c.subscribe_alone(("t", 0))
    core.publish(Message("t", b"p"))
    # 0x30: PUBLISH, DUP 0, QoS 0, RETAIN 0; length 5; topic "t"; property length 0
    assert c.raw() == b"\x30\x05\x00\x01t\x00p"


def test_mqtt_3_3_1_1_dup_set_on_redelivery() -> None:
    core = make_core()
    a = client(core, "dup", properties=SESSION)
    a.subscribe_alone(("t", 1))
    core.publish(Message("t", b"once", qos=1))
    (first,) = a.publishes()
    assert not first.dup  # [MQTT-3.3.1-3]: the first send is no retransmission
    a.drop()
    b = Client(core)
    b.connect("dup", clean_start=False, properties=SESSION)
    (again,) = b.publishes()
    assert again.dup
    assert again.packet_id == first.packet_id  # [MQTT-4.4.0-1]: original packet id


def test_mqtt_3_3_1_4_both_qos_bits_is_malformed() -> None:
    c = client(make_core(), "q3")
    # PUBLISH with QoS bits 11: 36 06, topic "t", packet id 1, property length 0
    c.conn.receive_data(b"\x36\x06\x00\x01t\x00\x01\x00")
    assert disconnected_with(c, RC.MALFORMED_PACKET)


def test_mqtt_3_3_1_5_to_8_retained_messages() -> None:
    core = make_core()
    pub = client(core, "rp")
    pub.send(Publish("r", b"v1", retain=True))
    pub.send(Publish("r", b"v2", retain=True))  # [MQTT-3.3.1-5]: replaces
    stored = core.retained.get("r")
    assert stored is not None
    assert stored.payload == b"v2"
    pub.send(Publish("r", b"not retained"))  # [MQTT-3.3.1-8]: neither stored nor replacing
    stored = core.retained.get("r")
    assert stored is not None
    assert stored.payload == b"v2"
    pub.send(Publish("r", b"", retain=True))  # [MQTT-3.3.1-6], [MQTT-3.3.1-7]
    assert core.retained.get("r") is None


@pytest.mark.parametrize(
    ("handling", "first", "again"),
    [(0, True, True), (1, True, False), (2, False, False)],
    ids=["MQTT-3.3.1-9", "MQTT-3.3.1-10", "MQTT-3.3.1-11"],
)
def test_retain_handling(handling: int, first: bool, again: bool) -> None:
    core = make_core()
    core.set_retained(Message("rh", b"kept", retain=True))
    c = client(core, "rh")
    request = SubscriptionRequest("rh", 0, retain_handling=handling)
    for expected in (first, again):
        c.send(Subscribe(1, (request,)))
        packets = c.packets()
        assert isinstance(packets[0], Suback)
        assert [p.payload for p in packets[1:] if isinstance(p, Publish)] == (
            [b"kept"] if expected else []
        )


@pytest.mark.parametrize("rap", [False, True], ids=["MQTT-3.3.1-12", "MQTT-3.3.1-13"])
def test_retain_as_published(rap: bool) -> None:
    core = make_core()
    c = client(core, "rap")
    c.send(Subscribe(1, (SubscriptionRequest("ra", 0, retain_as_published=rap),)))
    c.packets()
    core.publish(Message("ra", b"live", retain=True))
    (got,) = c.publishes()
    assert got.retain is rap


def test_mqtt_3_3_2_2_wildcard_in_topic_name() -> None:
    c = client(make_core(), "wc")
    c.conn.receive_data(b"\x30\x06\x00\x03a/+\x00")  # PUBLISH QoS 0, topic "a/+"
    assert disconnected_with(c, RC.TOPIC_NAME_INVALID)


def test_mqtt_3_3_2_3_topic_matches_filter_and_4_7_2_1_dollar_topics() -> None:
    core = make_core()
    c = client(core, "m")
    c.subscribe_alone(("+/b", 0), ("#", 0))
    core.publish(Message("a/b", b"1"))
    core.publish(Message("$SYS/b", b"2"))  # [MQTT-4.7.2-1]: wildcards never match it
    assert [(p.topic, p.payload) for p in c.publishes()] == [("a/b", b"1")]


def test_mqtt_3_3_2_4_and_15_to_20_properties_forwarded_unaltered() -> None:
    core = make_core()
    sub = client(core, "ps")
    sub.subscribe_alone(("p", 1))
    props = Properties(
        payload_format_indicator=1,
        content_type="text/plain; charset=utf-8",
        response_topic="reply/here",
        correlation_data=b"\x00\x01corr",
        user_properties=(("b", "2"), ("a", "1"), ("b", "1")),
    )
    pub = client(core, "pp")
    pub.send(Publish("p", "héllo".encode(), qos=1, packet_id=9, properties=props))
    assert only(pub) == Puback(9)
    (got,) = sub.publishes()
    assert got.properties == props  # same values, user properties in the same order


def test_mqtt_3_3_2_5_expired_message_not_delivered() -> None:
    clock = FakeClock()
    core = make_core(clock)
    a = client(core, "ex", properties=SESSION)
    a.subscribe_alone(("e", 1))
    a.drop()
    props = Properties(message_expiry_interval=10)
    core.publish(Message("e", b"stale", qos=1, properties=props, created=clock.now))
    clock.now += 11
    b = Client(core)
    b.connect("ex", clean_start=False, properties=SESSION)
    assert b.raw() == b""


def test_mqtt_3_3_2_6_expiry_interval_reduced_by_waiting_time() -> None:
    clock = FakeClock()
    core = make_core(clock)
    a = client(core, "ew", properties=SESSION)
    a.subscribe_alone(("e", 1))
    a.drop()
    props = Properties(message_expiry_interval=60)
    core.publish(Message("e", b"fresh", qos=1, properties=props, created=clock.now))
    clock.now += 25
    b = Client(core)
    b.connect("ew", clean_start=False, properties=SESSION)
    (got,) = b.publishes()
    assert got.properties.message_expiry_interval == 35


def test_mqtt_3_1_2_27_no_topic_alias_when_client_allows_none() -> None:
    core = make_core()
    c = client(core, "na")
    c.subscribe_alone(("t", 0))
    for _ in range(3):
        core.publish(Message("t", b"x"))
    assert all(p.topic == "t" and p.properties.topic_alias is None for p in c.publishes())


def test_mqtt_3_3_2_11_and_3_1_2_26_alias_never_above_client_maximum() -> None:
    core = make_core()
    c = client(core, "am", properties=Properties(topic_alias_maximum=1))
    c.subscribe_alone(("t/+", 0))
    for topic in ("t/1", "t/2", "t/1", "t/2"):
        core.publish(Message(topic, b"x"))
    aliases = [p.properties.topic_alias for p in c.publishes()]
    assert aliases == [1, None, 1, None]


def test_mqtt_3_3_4_2_to_4_overlapping_subscriptions() -> None:
    core = make_core()
    c = client(core, "ov")
    c.send(
        Subscribe(1, (SubscriptionRequest("o/+", 1),), Properties(subscription_identifiers=(3,)))
    )
    c.send(
        Subscribe(2, (SubscriptionRequest("o/#", 2),), Properties(subscription_identifiers=(5,)))
    )
    c.packets()
    core.publish(Message("o/x", b"both", qos=2))
    (got,) = c.publishes()  # one copy
    assert got.qos == 2  # the maximum QoS of the matching subscriptions
    assert sorted(got.properties.subscription_identifiers) == [3, 5]


def test_mqtt_3_3_4_6_client_publish_with_subscription_identifier() -> None:
    c = client(make_core(), "si")
    c.send(Publish("t", b"x", properties=Properties(subscription_identifiers=(1,))))
    assert disconnected_with(c, RC.PROTOCOL_ERROR)


def test_mqtt_3_3_4_9_and_10_receive_maximum_respected() -> None:
    core = make_core()
    c = client(core, "rm", properties=Properties(receive_maximum=2))
    c.subscribe_alone(("r", 1))
    for n in range(3):
        core.publish(Message("r", str(n).encode(), qos=1))
    first = c.publishes()
    assert [p.payload for p in first] == [b"0", b"1"]
    c.send(Pingreq())  # [MQTT-3.3.4-10] / [MQTT-4.9.0-3]: other packets still flow
    assert only(c) == Pingresp()
    c.send(Puback(first[0].packet_id or 0))
    assert [p.payload for p in c.publishes()] == [b"2"]


def test_mqtt_3_1_2_24_and_25_packet_above_client_maximum_is_skipped() -> None:
    core = make_core()
    c = client(core, "mp", properties=Properties(maximum_packet_size=30))
    c.subscribe_alone(("m", 1))
    core.publish(Message("m", b"x" * 40, qos=1))
    core.publish(Message("m", b"small", qos=1))
    got = c.publishes()
    assert [p.payload for p in got] == [b"small"]


# ------------------------------------------------------------- QoS flows (4.3)


def test_mqtt_4_3_2_4_puback_carries_packet_id() -> None:
    c = client(make_core(), "pa")
    c.send(Publish("t", b"x", qos=1, packet_id=4242))
    assert only(c) == Puback(4242, RC.NO_MATCHING_SUBSCRIBERS)


def test_mqtt_4_3_3_10_and_11_qos2_duplicate_not_delivered_twice() -> None:
    core = make_core()
    received: list[Message] = []
    core.local_subscribe("q2", received.append)
    c = client(core, "q2")
    c.send(Publish("q2", b"x", qos=2, packet_id=7))
    c.send(Publish("q2", b"x", qos=2, packet_id=7, dup=True))
    assert c.packets() == [Pubrec(7), Pubrec(7)]
    c.send(Pubrel(7))
    assert only(c) == Pubcomp(7)
    assert len(received) == 1
    # [MQTT-4.3.3-12]: after PUBCOMP the same id is a new message
    c.send(Publish("q2", b"y", qos=2, packet_id=7))
    assert only(c) == Pubrec(7)
    assert [m.payload for m in received] == [b"x", b"y"]


def test_mqtt_4_4_0_1_pubrel_resent_on_resume() -> None:
    core = make_core()
    a = client(core, "rr", properties=SESSION)
    a.subscribe_alone(("t", 2))
    core.publish(Message("t", b"x", qos=2))
    (sent,) = a.publishes()
    packet_id = sent.packet_id or 0
    a.send(Pubrec(packet_id))
    assert only(a) == Pubrel(packet_id)
    a.drop()
    b = Client(core)
    b.connect("rr", clean_start=False, properties=SESSION)
    assert b.packets() == [Pubrel(packet_id)]  # [MQTT-4.3.3-6]: not the PUBLISH again


def test_mqtt_4_6_0_6_order_kept_per_topic() -> None:
    core = make_core()
    c = client(core, "ord")
    c.subscribe_alone(("o", 1))
    pub = client(core, "op")
    for n in range(1, 16):
        pub.send(
            Publish("o", str(n).encode(), qos=1 if n % 2 else 0, packet_id=n if n % 2 else None)
        )
    assert [int(p.payload) for p in c.publishes()] == list(range(1, 16))


# --------------------------------------------------------------- 3.8 SUBSCRIBE


def test_mqtt_3_8_1_1_subscribe_reserved_bits() -> None:
    c = client(make_core(), "sr")
    # SUBSCRIBE with fixed header flags 0000 instead of 0010
    c.conn.receive_data(b"\x80\x07\x00\x01\x00\x00\x01t\x00")
    assert disconnected_with(c, RC.MALFORMED_PACKET)


def test_mqtt_3_8_3_5_subscription_options_reserved_bits() -> None:
    c = client(make_core(), "so")
    c.conn.receive_data(b"\x82\x07\x00\x01\x00\x00\x01t\xc0")  # options 0xC0
    assert disconnected_with(c, RC.MALFORMED_PACKET)


def test_mqtt_3_8_3_3_no_local() -> None:
    core = make_core()
    c = client(core, "nl")
    c.send(Subscribe(1, (SubscriptionRequest("n", 0, no_local=True),)))
    c.packets()
    c.send(Publish("n", b"own"))
    assert c.raw() == b""
    other = client(core, "nl2")
    other.send(Publish("n", b"other"))
    assert [p.payload for p in c.publishes()] == [b"other"]


def test_mqtt_3_8_3_4_no_local_on_shared_subscription() -> None:
    c = client(make_core(), "ns")
    c.send(Subscribe(1, (SubscriptionRequest("$share/g/t", 0, no_local=True),)))
    assert disconnected_with(c, RC.PROTOCOL_ERROR)


def test_mqtt_3_8_4_1_2_5_6_and_3_9_3_1_one_suback_in_order() -> None:
    core = make_core()
    # a well-formed filter refused (here by an ACL) fails alone, with its own code
    core.add_subscribe_hook(lambda peer, client_id, user, topic_filter: topic_filter != "b")
    c = client(core, "sa")
    requests = (
        SubscriptionRequest("a", 2),
        SubscriptionRequest("b", 1),  # refused: 0x87 Not authorized
        SubscriptionRequest("c", 0),
        SubscriptionRequest("d/+", 1),
    )
    c.send(Subscribe(777, requests))
    assert only(c) == Suback(777, (2, RC.NOT_AUTHORIZED, 0, 1))


def test_mqtt_3_8_4_3_identical_filter_replaces_subscription() -> None:
    core = make_core()
    c = client(core, "rep")
    c.subscribe_alone(("r", 0))
    c.subscribe_alone(("r", 2))
    assert core.router.subscriptions_of("rep")["r"].qos == 2
    core.publish(Message("r", b"x", qos=2))
    (got,) = c.publishes()  # one subscription, so one copy
    assert got.qos == 2


def test_mqtt_3_8_4_8_qos_is_minimum_of_published_and_granted() -> None:
    core = make_core()
    c = client(core, "mq")
    c.subscribe_alone(("m", 1))
    core.publish(Message("m", b"2", qos=2))
    core.publish(Message("m", b"0", qos=0))
    assert [(p.payload, p.qos) for p in c.publishes()] == [(b"2", 1), (b"0", 0)]


@pytest.mark.parametrize(
    "topic_filter",
    ["", "$share//t", "$share/g", "$share/g+/t", "$share/g#/t"],
    ids=["MQTT-4.7.3-1", "MQTT-4.8.2-1-empty-name", "MQTT-4.8.2-2-no-filter", "plus", "hash"],
)
def test_invalid_filters_are_malformed(topic_filter: str) -> None:
    # 0x8F is for a filter that "is correctly formed but is not allowed"; one that breaks
    # the syntax is a Malformed Packet: DISCONNECT 0x81, no SUBACK, nothing subscribed
    core = make_core()
    c = client(core, "inv")
    c.send(Subscribe(1, (SubscriptionRequest(topic_filter, 0), SubscriptionRequest("ok", 0))))
    assert disconnected_with(c, RC.MALFORMED_PACKET)
    assert core.router.subscriptions_of("inv") == {}


def test_mqtt_4_8_2_3_shared_subscription_granted_qos() -> None:
    core = make_core()
    c = client(core, "sq")
    c.subscribe_alone(("$share/g/s", 0))
    core.publish(Message("s", b"x", qos=2))
    (got,) = c.publishes()
    assert got.qos == 0


# ------------------------------------------------------------- 3.10 UNSUBSCRIBE


def test_mqtt_3_10_4_1_4_5_and_3_11_3_1_unsuback() -> None:
    core = make_core()
    c = client(core, "un")
    c.subscribe_alone(("u/+", 1))
    c.send(Unsubscribe(31, ("nothing", "u/+")))
    assert only(c) == Unsuback(31, (RC.NO_SUBSCRIPTION_EXISTED, RC.SUCCESS))
    core.publish(Message("u/1", b"x"))
    assert c.raw() == b""  # [MQTT-3.10.4-2]


# ---------------------------------------------------------- 3.12, 3.14, 4.12, 4.13


def test_mqtt_3_12_4_1_pingresp() -> None:
    c = client(make_core(), "ping")
    c.send(Pingreq())
    assert c.raw() == b"\xd0\x00"


def test_disconnect_session_expiry_after_zero_is_protocol_error() -> None:
    """3.14.2.2.2: a non-zero Session Expiry Interval in DISCONNECT after CONNECT said 0."""
    c = client(make_core(), "se")
    c.send(Disconnect(properties=Properties(session_expiry_interval=30)))
    assert disconnected_with(c, RC.PROTOCOL_ERROR)


def test_mqtt_4_12_0_1_unsupported_authentication_method() -> None:
    c = Client(make_core())
    c.send(Connect("am", V5, properties=Properties(authentication_method="NOPE")))
    connack = only(c)
    assert isinstance(connack, Connack)
    assert connack.reason_code == RC.BAD_AUTHENTICATION_METHOD
    assert c.conn.wants_close


def test_mqtt_4_12_0_6_no_method_no_auth_in_connack() -> None:
    c = Client(make_core())
    connack = c.connect("plain")
    assert connack.properties.authentication_method is None
    assert connack.properties.authentication_data is None


def test_mqtt_4_12_0_7_auth_without_method_in_connect() -> None:
    c = client(make_core(), "au")
    c.send(Auth(RC.RE_AUTHENTICATE, Properties(authentication_method="X")))
    assert disconnected_with(c, RC.PROTOCOL_ERROR)


async def test_mqtt_4_13_1_1_protocol_error_closes_network_connection() -> None:
    async with open_test_broker() as broker, raw_client(broker.port, "pe") as (c, _):
        await c.send(Connect("pe", V5))  # a second CONNECT
        packets = await c.expect_closed()
        assert [type(p) for p in packets] == [Disconnect]
        assert broker.clients() == []
