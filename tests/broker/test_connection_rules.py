"""Protocol rules of one connection, driven with bytes through ``MQTTConnection``.

Keep alive 0 on 3.1.1, a client's Maximum Packet Size against our CONNACK, PUBREC with
a failure reason code, acknowledgements of the wrong type, and client PUBLISH to ``$``
topics. No sockets: the core on a ``FakeClock`` (tests/helpers.py).
"""

from __future__ import annotations

import attrs
import pytest
from helpers import V5, V311, Client, FakeClock, make_core

from trio_mqtt.broker.connection_view import CloseReason
from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    NO_PROPERTIES,
    Connect,
    Disconnect,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode


def test_mqtt311_keep_alive_zero_is_accepted_under_max_keepalive(clock: FakeClock) -> None:
    """3.1.1 section 3.1.2.10: 0 turns keep alive off; the server may not refuse it.

    Above max_keepalive a 3.1.1 client is still refused (return code 2, as mosquitto);
    a 5.0 client asking for 0 is told max_keepalive (Server Keep Alive) as before.
    """
    core = make_core(clock, max_keepalive=60)
    c = Client(core, V311)
    # CONNECT, 3.1.1, clean session, keep alive 0, client id "z", written out by hand
    c.conn.receive_data(bytes.fromhex("100d00044d5154540402000000017a"))
    assert c.raw() == bytes.fromhex("20020000")  # CONNACK, return code 0
    assert not c.conn.wants_close
    assert [s.keep_alive for s in core.client_summaries()] == [0]
    clock.now += 86400.0  # a day of silence: no keep-alive timeout
    c.conn.handle_timer()
    assert not c.conn.wants_close

    greedy = Client(core, V311)
    assert greedy.connect("greedy", keep_alive=61).reason_code == 0x85  # return code 2
    assert greedy.conn.wants_close

    v5 = Client(core, V5)
    connack = v5.connect("v5", keep_alive=0)
    assert connack.reason_code == 0
    assert connack.properties.server_keep_alive == 60
    assert v5.conn.keep_alive == 60


def test_connack_leaves_out_what_it_may_to_fit_the_clients_maximum(clock: FakeClock) -> None:
    """[MQTT-3.1.2-24]: the CONNACK too; only properties whose absence says the same go."""
    core = make_core(clock)
    full = Client(core, V5).conn
    full.receive_data(encode(Connect("full", V5), V5))
    size = len(full.data_to_send())

    c = Client(core, V5)
    connack = c.connect("tight", properties=Properties(maximum_packet_size=size - 1))
    assert connack.reason_code == 0
    props = connack.properties
    assert props.wildcard_subscription_available is None  # absent: available
    assert props.subscription_identifier_available is None
    assert props.shared_subscription_available is None
    assert props.receive_maximum == 20  # what the client must know stays
    assert len(encode(connack, V5)) <= size - 1
    assert not c.conn.wants_close


def test_a_connack_that_cannot_fit_closes_without_a_word(clock: FakeClock) -> None:
    core = make_core(clock)
    c = Client(core, V5)
    c.send(Connect("tiny", V5, properties=Properties(maximum_packet_size=8)))
    assert c.raw() == b""
    assert c.conn.wants_close
    assert "tiny" not in core.sessions  # refused before any session was made
    assert core.stats.connects_refused == 1


def test_a_suback_too_big_for_the_client_is_not_sent(clock: FakeClock) -> None:
    core = make_core(clock)
    c = Client(core, V5)
    assert c.connect("small", properties=Properties(maximum_packet_size=24)).reason_code == 0
    filters = tuple(SubscriptionRequest(f"t/{n}", 0) for n in range(30))
    c.send(Subscribe(1, filters))
    data = c.raw()
    assert len(data) <= 24
    assert c.reader.feed(data) == [Disconnect(ReasonCode.PACKET_TOO_LARGE)]
    assert c.conn.wants_close


def test_a_reason_string_is_left_out_when_it_does_not_fit(clock: FakeClock) -> None:
    core = make_core(clock)
    c = Client(core, V5)
    assert c.connect("small", properties=Properties(maximum_packet_size=600)).reason_code == 0
    c.conn.request_close(CloseReason.SHUTDOWN, ReasonCode.SERVER_SHUTTING_DOWN, "x" * 700)
    assert c.packets() == [Disconnect(ReasonCode.SERVER_SHUTTING_DOWN)]


def delivered(core: BrokerCore, version: ProtocolVersion, qos: int) -> tuple[Client, int]:
    """A subscriber ("sub") that got message m1 of ``qos``; its packet identifier.

    A 5.0 subscriber has Receive Maximum 1: m2 waits until m1 leaves the window.
    """
    sub = Client(core, version)
    window = Properties(receive_maximum=1) if version is V5 else NO_PROPERTIES
    assert sub.connect("sub", properties=window).reason_code == 0
    sub.subscribe(("t", 2))
    pub = Client(core, version)
    pub.connect("pub")
    pub.send(Publish("t", b"m1", qos=qos, packet_id=1))
    pub.send(Publish("t", b"m2", qos=qos, packet_id=2))
    pub.packets()
    first, *rest = sub.publishes()
    assert first.payload == b"m1"
    assert len(rest) == (0 if version is V5 else 1)
    assert first.packet_id is not None
    return sub, first.packet_id


def test_a_pubrec_with_a_failure_code_ends_the_qos2_exchange(clock: FakeClock) -> None:
    """5.0 section 4.3.3: PUBREC >= 0x80 ends it: no PUBREL, the window moves on."""
    core = make_core(clock)
    sub, pid = delivered(core, V5, 2)
    sub.send(Pubrec(pid, ReasonCode.QUOTA_EXCEEDED))
    (next_message,) = sub.packets()  # no PUBREL, and m2 takes the freed place
    assert isinstance(next_message, Publish)
    assert next_message.payload == b"m2"
    assert list(core.sessions["sub"].inflight_out) == [next_message.packet_id]
    assert not sub.conn.wants_close


@pytest.mark.parametrize(
    ("qos", "ack"),
    [(1, Pubrec), (1, Pubcomp), (2, Puback), (2, Pubcomp)],
    ids=["pubrec-for-qos1", "pubcomp-for-qos1", "puback-for-qos2", "pubcomp-before-pubrel"],
)
@pytest.mark.parametrize("version", [V5, V311], ids=["5.0", "3.1.1"])
def test_an_acknowledgement_of_the_wrong_type_is_a_protocol_error(
    clock: FakeClock, qos: int, ack: type[Puback | Pubrec | Pubcomp], version: ProtocolVersion
) -> None:
    core = make_core(clock)
    sub, pid = delivered(core, version, qos)
    sub.send(ack(pid))
    expected = [Disconnect(ReasonCode.PROTOCOL_ERROR)] if version is V5 else []
    assert [
        attrs.evolve(p, properties=NO_PROPERTIES) if isinstance(p, Disconnect) else p
        for p in sub.packets()
    ] == expected
    assert sub.conn.wants_close
    assert core.stats.protocol_errors == 1


@pytest.mark.parametrize(
    ("version", "topic", "code"),
    [
        (V5, "$SYS/broker/version", ReasonCode.NOT_AUTHORIZED),
        (V5, "$share/g/t", ReasonCode.TOPIC_NAME_INVALID),
        (V311, "$SYS/broker/version", ReasonCode.NOT_AUTHORIZED),  # return code 5
    ],
)
def test_a_will_on_a_dollar_topic_is_refused_at_connect(
    clock: FakeClock, version: ProtocolVersion, topic: str, code: ReasonCode
) -> None:
    """Else a client could leave a retained will that stands in for $SYS/... when it goes."""
    core = make_core(clock)
    c = Client(core, version)
    connack = c.connect("c", will=Will(topic, b"spoofed", qos=1, retain=True))
    assert connack.reason_code == code
    assert c.conn.wants_close
    assert "c" not in core.sessions


def test_clients_may_not_publish_to_dollar_topics(clock: FakeClock) -> None:
    """4.7.2: ``$`` topics are the server's. 5.0: 0x87, or 0x90 for ``$share/...`` (the
    form of a shared subscription, never a topic name); 3.1.1: acknowledged, dropped."""
    core = make_core(clock)
    watcher = Client(core, V5)
    watcher.connect("watcher")
    watcher.subscribe_alone(("$app/status", 2), ("$share/g/t", 2), ("t", 2))
    c = Client(core, V5)
    c.connect("c")
    c.send(Publish("$app/status", b"x", qos=1, packet_id=1, retain=True))
    c.send(Publish("$share/g/t", b"x", qos=1, packet_id=2))
    c.send(Publish("$app/status", b"x", qos=2, packet_id=3))
    c.send(Pubrel(3))
    c.send(Publish("$app/status", b"x", qos=0))
    assert c.packets() == [
        Puback(1, ReasonCode.NOT_AUTHORIZED),
        Puback(2, ReasonCode.TOPIC_NAME_INVALID),
        Pubrec(3, ReasonCode.NOT_AUTHORIZED),  # the exchange ends here (4.3.3) ...
        Pubcomp(3, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND),  # ... a PUBREL finds nothing
    ]
    old = Client(core, V311)
    old.connect("old")
    old.send(Publish("$app/status", b"x", qos=1, packet_id=7))
    assert old.packets() == [Puback(7)]  # 3.1.1 cannot say no: acknowledged, not routed
    assert watcher.packets() == []
    assert core.retained.get("$app/status") is None
    assert not c.conn.wants_close and not old.conn.wants_close

    core.publish(Message("$app/status", b"from the broker"))  # in-process: still routed
    (publish,) = watcher.publishes()
    assert (publish.topic, publish.payload) == ("$app/status", b"from the broker")
