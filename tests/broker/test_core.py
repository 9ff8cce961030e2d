"""BrokerCore driven through MQTTConnection objects with bytes only: no sockets, no trio.

Each test client (``helpers.Client``) is an ``MQTTConnection`` from ``open_connection``;
it is fed bytes from our encoder and its output (``data_to_send``) is checked either as
raw bytes (hand-computed from the spec) or decoded with a client-side ``PacketReader``.
Time is a mutable float (``helpers.FakeClock``) that the tests move forward before
calling ``core.tick()``.
"""

from __future__ import annotations

import logging

import attrs
import pytest
from helpers import V5, V31, V311, Client, FakeClock, make_core

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message
from trio_mqtt.broker.mqtt_connection import CloseReason
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    Pubrel,
    Will,
)
from trio_mqtt.peer import PeerInfo

# CONNACK bytes by hand (3.1.1 section 3.2): type 2, remaining length 2, flags, return code
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
CONNACK_ACCEPTED_SESSION_PRESENT = b"\x20\x02\x01\x00"
CONNACK_IDENTIFIER_REJECTED = b"\x20\x02\x00\x02"


@pytest.fixture
def core(clock: FakeClock) -> BrokerCore:
    return make_core(clock)


def local_collector(core: BrokerCore, topic_filter: str) -> list[Message]:
    received: list[Message] = []
    core.local_subscribe(topic_filter, received.append)
    return received


def is_disconnect(data: bytes, code: int) -> bool:
    """A 5.0 DISCONNECT with ``code``: short form, or with an empty property length."""
    return data in (bytes((0xE0, 1, code)), bytes((0xE0, 2, code, 0)))


# --------------------------------------------------------------------------- CONNECT


@pytest.mark.parametrize("version", [V31, V311])
def test_connect_accepted_v3(core: BrokerCore, version: ProtocolVersion) -> None:
    client = Client(core, version)
    client.send(Connect(client_id="dev-1", protocol_version=version))
    assert client.raw() == CONNACK_ACCEPTED
    assert not client.conn.wants_close
    assert core.sessions["dev-1"].connection is client.conn
    assert core.stats.connects == 1


def test_connect_accepted_v5_reports_server_limits(clock: FakeClock) -> None:
    core = make_core(clock, receive_maximum=7, max_packet_size=4096)
    client = Client(core, V5)
    client.send(Connect("dev-5", V5))
    data = client.raw()
    # CONNACK, flags 0 (no session), reason code 0 (success)
    assert data[0] == 0x20
    assert data[2:4] == b"\x00\x00"
    connack = client.reader.feed(data)[0]
    assert isinstance(connack, Connack)
    assert connack.properties.receive_maximum == 7
    assert connack.properties.maximum_packet_size == 4096
    assert connack.properties.assigned_client_identifier is None


def test_empty_client_id_v5_gets_assigned_id(core: BrokerCore) -> None:
    client = Client(core, V5)
    connack = client.connect("")
    assert connack.reason_code == 0
    assigned = connack.properties.assigned_client_identifier
    assert assigned
    assert core.sessions[assigned].connection is client.conn
    # a second empty id gets a different one
    other = Client(core, V5).connect("")
    assert other.properties.assigned_client_identifier not in (None, assigned)


def test_empty_client_id_v311_clean_session_accepted(core: BrokerCore) -> None:
    client = Client(core, V311)
    client.send(Connect(client_id="", protocol_version=V311, clean_start=True))
    assert client.raw() == CONNACK_ACCEPTED
    assert not client.conn.wants_close
    assert len(core.sessions) == 1


def test_empty_client_id_v311_persistent_session_rejected(core: BrokerCore) -> None:
    client = Client(core, V311)
    client.send(Connect(client_id="", protocol_version=V311, clean_start=False))
    assert client.raw() == CONNACK_IDENTIFIER_REJECTED
    assert client.conn.wants_close
    assert core.sessions == {}
    assert core.stats.connects_refused == 1


@pytest.mark.parametrize("clean", [True, False])
def test_empty_client_id_v31_rejected(core: BrokerCore, clean: bool) -> None:
    client = Client(core, V31)
    client.send(Connect(client_id="", protocol_version=V31, clean_start=clean))
    assert client.raw() == CONNACK_IDENTIFIER_REJECTED
    assert client.conn.wants_close
    assert core.sessions == {}


# --------------------------------------------------------------------------- sessions


def test_session_present_v311(core: BrokerCore) -> None:
    first = Client(core, V311)
    first.send(Connect("keep", V311, clean_start=False))
    assert first.raw() == CONNACK_ACCEPTED
    first.subscribe(("a/b", 1))
    first.send(Disconnect())
    first.conn.connection_lost()

    second = Client(core, V311)
    second.send(Connect("keep", V311, clean_start=False))
    assert second.raw() == CONNACK_ACCEPTED_SESSION_PRESENT
    assert "a/b" in core.router.subscriptions_of("keep")

    second.send(Disconnect())
    second.conn.connection_lost()
    third = Client(core, V311)
    third.send(Connect("keep", V311, clean_start=True))
    assert third.raw() == CONNACK_ACCEPTED
    assert core.router.subscriptions_of("keep") == {}


def test_session_present_v5_needs_expiry(core: BrokerCore) -> None:
    first = Client(core, V5)
    first.connect("s5", properties=Properties(session_expiry_interval=0))
    first.send(Disconnect())
    first.conn.connection_lost()
    assert "s5" not in core.sessions

    second = Client(core, V5)
    assert not second.connect("s5", clean_start=False).session_present
    second.conn.connection_lost()  # expiry 0: the session ends with the connection

    third = Client(core, V5)
    third.connect("s5", properties=Properties(session_expiry_interval=60))
    third.conn.connection_lost()
    fourth = Client(core, V5)
    assert fourth.connect("s5", clean_start=False).session_present


def test_session_expires_after_interval(core: BrokerCore, clock: FakeClock) -> None:
    client = Client(core, V5)
    client.connect("exp", properties=Properties(session_expiry_interval=10))
    client.subscribe(("x/#", 1))
    client.send(Disconnect())
    client.conn.connection_lost()

    clock.now += 9.5
    core.tick()
    assert "exp" in core.sessions
    assert "x/#" in core.router.subscriptions_of("exp")

    clock.now += 1.5  # 11 s after the disconnect
    core.tick()
    assert "exp" not in core.sessions
    assert core.router.subscriptions_of("exp") == {}
    again = Client(core, V5)
    assert not again.connect("exp", clean_start=False).session_present


def test_offline_session_queues_qos1(core: BrokerCore, clock: FakeClock) -> None:
    client = Client(core, V5)
    client.connect("q", properties=Properties(session_expiry_interval=100))
    client.subscribe(("q/t", 1))
    client.conn.connection_lost()
    core.publish(Message("q/t", b"while away", qos=1, created=clock.now))
    core.publish(Message("q/t", b"qos0 is not kept", qos=0, created=clock.now))

    back = Client(core, V5)
    assert back.connect("q", clean_start=False).session_present
    (publish,) = back.publishes()
    assert publish.payload == b"while away"
    assert publish.qos == 1


# --------------------------------------------------------------------------- will


def will_client(
    core: BrokerCore, client_id: str, *, delay: int, expiry: int, topic: str = "will/t"
) -> Client:
    client = Client(core, V5)
    will = Will(topic, b"gone", qos=0, properties=Properties(will_delay_interval=delay))
    client.connect(client_id, will=will, properties=Properties(session_expiry_interval=expiry))
    return client


def test_will_published_on_abnormal_close(core: BrokerCore) -> None:
    wills = local_collector(core, "will/#")
    client = Client(core, V311)
    client.connect("w", will=Will("will/w", b"bye", qos=1))
    client.conn.connection_lost()
    assert [(m.topic, m.payload, m.publisher) for m in wills] == [("will/w", b"bye", "w")]
    assert core.stats.wills_published == 1


def test_will_discarded_on_normal_disconnect(core: BrokerCore) -> None:
    wills = local_collector(core, "will/#")
    client = Client(core, V311)
    client.connect("w", will=Will("will/w", b"bye"))
    client.send(Disconnect())
    assert client.conn.wants_close
    client.conn.connection_lost()
    assert wills == []


def test_will_delay_publishes_after_delay(core: BrokerCore, clock: FakeClock) -> None:
    wills = local_collector(core, "will/#")
    client = will_client(core, "wd", delay=5, expiry=10)
    client.conn.connection_lost()
    assert wills == []

    clock.now += 4.9
    core.tick()
    assert wills == []

    clock.now += 0.1
    core.tick()
    assert [m.payload for m in wills] == [b"gone"]
    # the delay is a CONNECT-only property: it does not travel with the message
    assert wills[0].properties.will_delay_interval is None

    clock.now += 10
    core.tick()
    assert len(wills) == 1


def test_will_delay_cancelled_by_reconnect(core: BrokerCore, clock: FakeClock) -> None:
    wills = local_collector(core, "will/#")
    client = will_client(core, "wd", delay=5, expiry=10)
    client.conn.connection_lost()

    clock.now += 3
    back = Client(core, V5)
    assert back.connect("wd", clean_start=False).session_present

    clock.now += 20
    core.tick()
    assert wills == []


def test_will_published_when_session_ends_before_delay(core: BrokerCore, clock: FakeClock) -> None:
    wills = local_collector(core, "will/#")
    client = will_client(core, "wd", delay=30, expiry=4)
    client.conn.connection_lost()

    clock.now += 3
    core.tick()
    assert wills == []

    clock.now += 1  # session expiry (4 s) comes before the will delay (30 s)
    core.tick()
    assert [m.payload for m in wills] == [b"gone"]
    assert "wd" not in core.sessions


def test_will_delay_without_session_expiry_is_immediate(core: BrokerCore) -> None:
    wills = local_collector(core, "will/#")
    client = will_client(core, "wd", delay=5, expiry=0)
    client.conn.connection_lost()
    assert [m.payload for m in wills] == [b"gone"]


# --------------------------------------------------------------------------- takeover


def test_takeover_disconnects_old_connection(core: BrokerCore) -> None:
    old = Client(core, V5)
    old.connect("dev")
    new = Client(core, V5)
    connack = new.connect("dev")
    assert connack.reason_code == 0

    assert old.conn.wants_close
    assert old.conn.close_reason is CloseReason.TAKEN_OVER
    assert old.wakeups >= 1  # the I/O layer was told to flush and close
    assert is_disconnect(old.raw(), 0x8E)
    old.conn.connection_lost()  # must not touch the new owner's session
    assert core.sessions["dev"].connection is new.conn

    new.subscribe(("t", 0))
    publisher = Client(core, V5)
    publisher.connect("pub")
    publisher.send(Publish("t", b"after takeover"))
    assert [p.payload for p in new.publishes()] == [b"after takeover"]
    assert old.raw() == b""


def test_takeover_v311_closes_without_disconnect(core: BrokerCore) -> None:
    old = Client(core, V311)
    old.connect("dev", clean_start=False)
    old.subscribe(("keep/#", 1))
    new = Client(core, V311)
    new.send(Connect("dev", V311, clean_start=False))
    assert new.raw() == CONNACK_ACCEPTED_SESSION_PRESENT
    assert old.conn.wants_close
    assert old.raw() == b""  # 3.1.1 has no server DISCONNECT
    assert "keep/#" in core.router.subscriptions_of("dev")


# --------------------------------------------------------------------------- QoS 2 in


def test_qos2_duplicate_publish_routed_once(core: BrokerCore) -> None:
    received = local_collector(core, "q2/#")
    client = Client(core, V5)
    client.connect("p")
    message = Publish("q2/x", b"once", qos=2, packet_id=7)

    client.send(message)
    assert client.raw() == b"\x50\x02\x00\x07"  # PUBREC 7
    client.send(attrs.evolve(message, dup=True))
    assert client.raw() == b"\x50\x02\x00\x07"
    assert [m.payload for m in received] == [b"once"]

    client.send(Pubrel(7))
    assert client.raw() == b"\x70\x02\x00\x07"  # PUBCOMP 7
    # after PUBREL the id is free: the same id is now a new message
    client.send(attrs.evolve(message, payload=b"twice"))
    assert client.raw() == b"\x50\x02\x00\x07"
    assert [m.payload for m in received] == [b"once", b"twice"]


def test_pubrel_unknown_id_v5(core: BrokerCore) -> None:
    client = Client(core, V5)
    client.connect("p")
    client.send(Pubrel(9))
    # PUBCOMP, remaining length 3, packet id 9, reason 0x92 Packet Identifier not found
    assert client.raw() == b"\x70\x03\x00\x09\x92"
    assert not client.conn.wants_close


def test_pubrel_unknown_id_v311(core: BrokerCore) -> None:
    client = Client(core, V311)
    client.connect("p")
    client.send(Pubrel(9))
    assert client.raw() == b"\x70\x02\x00\x09"


# --------------------------------------------------------------------------- outbound


def publish_many(core: BrokerCore, clock: FakeClock, topic: str, count: int, qos: int) -> None:
    for n in range(count):
        core.publish(Message(topic, str(n).encode(), qos=qos, created=clock.now))


def test_a_connection_is_woken_once_until_it_takes_its_output(
    core: BrokerCore, clock: FakeClock
) -> None:
    """Messages queued for a connection its server layer has already been told about
    cost no further wake-up call (one per delivery showed in the fan-out profile)."""
    client = Client(core, V311)
    client.connect("sub")
    client.subscribe(("t", 0))
    client.raw()
    before = client.wakeups
    publish_many(core, clock, "t", 100, qos=0)
    assert client.wakeups == before + 1
    assert len(client.publishes()) == 100  # taken: the next message wakes it again
    publish_many(core, clock, "t", 1, qos=0)
    assert client.wakeups == before + 2
    assert [p.payload for p in client.publishes()] == [b"0"]


def test_outbound_window_respects_client_receive_maximum(
    core: BrokerCore, clock: FakeClock
) -> None:
    client = Client(core, V5)
    client.connect("slow", properties=Properties(receive_maximum=2))
    client.subscribe(("w", 1))
    publish_many(core, clock, "w", 5, qos=1)

    first = client.publishes()
    assert [p.payload for p in first] == [b"0", b"1"]
    assert client.packets() == []  # window full

    client.send(Puback(first[0].packet_id or 0))
    second = client.publishes()
    assert [p.payload for p in second] == [b"2"]
    assert client.packets() == []

    client.send(Puback(first[1].packet_id or 0))
    client.send(Puback(second[0].packet_id or 0))
    assert [p.payload for p in client.publishes()] == [b"3", b"4"]


def test_outbound_window_v311_uses_max_inflight_messages(clock: FakeClock) -> None:
    core = make_core(clock, max_inflight_messages=3)
    client = Client(core, V311)
    client.connect("slow")
    client.subscribe(("w", 2))
    publish_many(core, clock, "w", 5, qos=2)
    assert len(client.publishes()) == 3


def test_outbound_window_by_default_is_not_a_count(core: BrokerCore, clock: FakeClock) -> None:
    """No max_inflight_messages: a 3.1.1 client gets QoS 1/2 without waiting for acks.

    A fixed window would cap a client that keeps up at one window per round trip, and
    turn a busy broker's longer round trips into a growing queue (its byte budget
    bounds what is in flight instead).
    """
    client = Client(core, V311)
    client.connect("fast")
    client.subscribe(("w", 1))
    publish_many(core, clock, "w", 500, qos=1)
    assert [p.payload for p in client.publishes()] == [str(n).encode() for n in range(500)]
    assert len(core.sessions["fast"].inflight_out) == 500


def test_qos0_not_limited_by_window(core: BrokerCore, clock: FakeClock) -> None:
    client = Client(core, V5)
    client.connect("fast", properties=Properties(receive_maximum=1))
    client.subscribe(("w", 0))
    publish_many(core, clock, "w", 5, qos=1)
    assert len(client.publishes()) == 5


def test_message_too_big_dropped_for_that_client_only(core: BrokerCore, clock: FakeClock) -> None:
    small = Client(core, V5)
    small.connect("small", properties=Properties(maximum_packet_size=64))
    small.subscribe(("big", 1))
    large = Client(core, V5)
    large.connect("large")
    large.subscribe(("big", 1))

    core.publish(Message("big", b"x" * 100, qos=1, created=clock.now))
    assert small.packets() == []
    assert [len(p.payload) for p in large.publishes()] == [100]
    assert core.stats.messages_dropped == 1
    assert core.sessions["small"].inflight_out == {}

    core.publish(Message("big", b"fits", qos=1, created=clock.now))
    assert [p.payload for p in small.publishes()] == [b"fits"]


# --------------------------------------------------------------------------- PUBLISH in


def test_puback_no_matching_subscribers_v5(core: BrokerCore) -> None:
    client = Client(core, V5)
    client.connect("p")
    client.send(Publish("nobody/home", b"?", qos=1, packet_id=3))
    assert client.raw() == b"\x40\x03\x00\x03\x10"  # PUBACK 3, reason 0x10

    local_collector(core, "nobody/#")
    client.send(Publish("nobody/home", b"!", qos=1, packet_id=4))
    assert client.raw() == b"\x40\x02\x00\x04"


def test_puback_no_subscribers_v311_is_plain(core: BrokerCore) -> None:
    client = Client(core, V311)
    client.connect("p")
    client.send(Publish("nobody/home", b"?", qos=1, packet_id=3))
    assert client.raw() == b"\x40\x02\x00\x03"


def test_payload_format_invalid_utf8(core: BrokerCore) -> None:
    received = local_collector(core, "#")
    client = Client(core, V5)
    client.connect("p")
    bad = Publish(
        "fmt", b"\xff\xfe", qos=1, packet_id=4, properties=Properties(payload_format_indicator=1)
    )
    client.send(bad)
    assert client.raw() == b"\x40\x03\x00\x04\x99"  # PUBACK 4, reason 0x99
    assert received == []
    assert not client.conn.wants_close

    client.send(attrs.evolve(bad, payload="ok \u00e9".encode(), packet_id=5))
    assert client.raw() == b"\x40\x02\x00\x05"
    assert [m.payload for m in received] == ["ok \u00e9".encode()]


def test_disconnect_sets_expiry_after_zero_is_protocol_error(core: BrokerCore) -> None:
    wills = local_collector(core, "will/#")
    client = Client(core, V5)
    client.connect("z", will=Will("will/z", b"z"))
    client.send(Disconnect(properties=Properties(session_expiry_interval=30)))
    assert client.conn.wants_close
    assert client.conn.close_reason is CloseReason.PROTOCOL_ERROR
    data = client.raw()
    assert data[0] == 0xE0
    assert data[2] == 0x82  # DISCONNECT, Protocol Error
    assert core.stats.protocol_errors == 1
    client.conn.connection_lost()
    # not a normal disconnect: the will goes out
    assert [m.payload for m in wills] == [b"z"]
    assert "z" not in core.sessions


def test_disconnect_may_change_nonzero_expiry(core: BrokerCore, clock: FakeClock) -> None:
    client = Client(core, V5)
    client.connect("z", properties=Properties(session_expiry_interval=10))
    client.send(Disconnect(properties=Properties(session_expiry_interval=100)))
    assert client.conn.close_reason is CloseReason.CLIENT_DISCONNECT
    client.conn.connection_lost()
    clock.now += 50
    core.tick()
    assert "z" in core.sessions


# --------------------------------------------------------------------------- routing


def test_overlapping_subscriptions_single_delivery_highest_qos(core: BrokerCore) -> None:
    sub = Client(core, V311)
    sub.connect("sub")
    suback = sub.subscribe(("a/+", 0), ("a/#", 2), ("a/b", 1))
    assert suback.reason_codes == (0, 2, 1)
    pub = Client(core, V311)
    pub.connect("pub")
    pub.send(Publish("a/b", b"one", qos=2, packet_id=1))

    (publish,) = sub.publishes()
    assert publish.payload == b"one"
    assert publish.qos == 2


def test_overlapping_subscriptions_qos_capped_by_publish(core: BrokerCore) -> None:
    sub = Client(core, V311)
    sub.connect("sub")
    sub.subscribe(("a/+", 0), ("a/#", 2))
    pub = Client(core, V311)
    pub.connect("pub")
    pub.send(Publish("a/b", b"one", qos=1, packet_id=1))
    (publish,) = sub.publishes()
    assert publish.qos == 1


def test_dollar_topics_not_matched_by_wildcards(core: BrokerCore) -> None:
    sub = Client(core, V311)
    sub.connect("sub")
    sub.subscribe(("#", 0), ("+/x", 0), ("+", 0))
    sys_sub = Client(core, V311)
    sys_sub.connect("sys")
    sys_sub.subscribe(("$SYS/#", 0))
    pub = Client(core, V311)
    pub.connect("pub")

    core.publish(Message("$SYS/x", b"sys"))  # only the broker may publish to $SYS
    pub.send(Publish("$foo", b"dollar"))
    pub.send(Publish("plain/x", b"plain"))
    assert [p.topic for p in sub.publishes()] == ["plain/x"]
    assert [p.topic for p in sys_sub.publishes()] == ["$SYS/x"]


def test_retained_sent_after_suback(core: BrokerCore) -> None:
    pub = Client(core, V311)
    pub.connect("pub")
    pub.send(Publish("r/1", b"kept", qos=1, packet_id=1, retain=True))
    pub.send(Publish("r/2", b"", qos=0, retain=True))  # empty payload: nothing retained
    sub = Client(core, V311)
    sub.connect("sub")
    assert sub.subscribe(("r/#", 0)).reason_codes == (0,)
    (publish,) = sub.publishes()
    assert (publish.topic, publish.payload, publish.retain, publish.qos) == (
        "r/1",
        b"kept",
        True,
        0,
    )


def test_an_idle_session_holds_no_queue_or_packet_id_set(core: BrokerCore) -> None:
    # an empty deque is 0.75 KiB and an empty set 0.2 KiB: with thousands of idle
    # clients the broker must not give each one before it needs them
    sub, pub = Client(core, V311), Client(core, V5)
    sub.connect("sub", clean_start=False)
    sub.subscribe(("t", 1))
    pub.connect("pub")
    session, publisher = core.sessions["sub"], core.sessions["pub"]
    assert session.pending is None
    assert publisher.inflight_in == frozenset()
    assert type(publisher.inflight_in) is frozenset  # (the shared empty one)

    pub.send(Publish("t", b"m", qos=2, packet_id=5))
    assert [type(p).__name__ for p in pub.packets()] == ["Pubrec"]
    assert publisher.inflight_in == {5}
    assert [p.payload for p in sub.publishes()] == [b"m"]
    pub.send(Pubrel(5))
    assert [type(p).__name__ for p in pub.packets()] == ["Pubcomp"]
    assert type(publisher.inflight_in) is frozenset  # released: the set is gone again
    pub.send(Pubrel(5))  # a second release: not known any more
    (answer,) = pub.packets()
    assert type(answer).__name__ == "Pubcomp" and answer.reason_code == 0x92


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_connect_and_disconnect_lines_are_built_only_when_logged(
    core: BrokerCore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    level: int,
) -> None:
    """At INFO a connection logs a connected and a disconnected line; below it, their
    arguments (the peer's description and fields) are not even built: about a tenth of
    a short connection's work."""
    built: list[str] = []
    real_log_fields = PeerInfo.log_fields

    def log_fields(peer: PeerInfo) -> dict[str, str]:
        built.append(peer.listener)
        return real_log_fields(peer)

    monkeypatch.setattr(PeerInfo, "log_fields", log_fields)
    caplog.set_level(level, logger="trio_mqtt.broker")
    client = Client(core, V311)
    client.connect("logged")
    client.conn.connection_lost()
    events = [getattr(record, "event", None) for record in caplog.records]
    if level == logging.INFO:
        assert events == ["connected", "disconnected"]
        assert len(built) == 2
    else:
        assert events == []
        assert built == []
