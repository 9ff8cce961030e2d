"""Flow control in the sans-IO core: congestion, who is held back, and retained replays.

A connection is congested when more than CONGESTION_HIGH bytes wait for a writer that
could send them; a publisher whose messages went to a congested connection is
``held_back()`` until it drained below CONGESTION_LOW. A client whose socket is full but
takes bytes fast (FAST_READER_RATE) counts as such a writer. A client that reads slowly
or not at all (its transport is blocked) or does not acknowledge (its Receive Maximum is
reached) holds nobody back. Retained messages for a new subscription are streamed, not
queued.
"""

from __future__ import annotations

import gc
import math
import sys
import uuid

from helpers import V5, V311, Client, FakeClock, make_core

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message
from trio_mqtt.broker.mqtt_connection import (
    CONGESTION_HIGH,
    CONGESTION_LOW,
    FAST_READER_RATE,
    FAST_READER_STALL,
    MAX_BATCH_BYTES,
    READ_RATE_SAMPLE,
)
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Disconnect,
    Packet,
    Properties,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)

PAYLOAD = bytes(1000)  # about 1 KiB a message
MESSAGES_OVER_HIGH = CONGESTION_HIGH // len(PAYLOAD) + 10


def drain(client: Client, *, ack: bool = True) -> list[Packet]:
    """Everything the server has for ``client``, written in full (as a socket that reads)."""
    packets: list[Packet] = []
    while data := client.conn.data_to_send():
        client.conn.bytes_written(len(data))
        for packet in client.reader.feed(data):
            packets.append(packet)
            if ack and isinstance(packet, Publish) and packet.qos == 1:
                client.send(Puback(packet.packet_id or 0))
    return packets


def send_subscribe(client: Client, topic_filter: str, qos: int) -> None:
    """SUBSCRIBE, without reading the answer (which the test then reads as it likes)."""
    client.send(Subscribe(1, (SubscriptionRequest(topic_filter, qos),)))


def connected(core: BrokerCore, client_id: str, *filters: str, **connect: object) -> Client:
    client = Client(core, V5 if connect else V311)
    client.connect(client_id, **connect)
    if filters:
        client.subscribe(*((f, 1) for f in filters))
    return client


class Relieved:
    """The core's ``on_relief`` callback, counting its calls."""

    def __init__(self, core: BrokerCore) -> None:
        self.calls = 0
        core.set_relief_callback(self)

    def __call__(self) -> None:
        self.calls += 1


def congested_pair(core: BrokerCore) -> tuple[Relieved, Client, Client]:
    """A subscriber of "t" that fell behind and the publisher it holds back."""
    relieved = Relieved(core)
    subscriber = connected(core, "sub", "t")
    publisher = connected(core, "pub")
    blast(publisher, "t", MESSAGES_OVER_HIGH)
    assert subscriber.conn.congested
    assert publisher.conn.held_back()
    return relieved, subscriber, publisher


def blast(publisher: Client, topic: str, count: int, qos: int = 0) -> None:
    """``count`` PUBLISH packets in one read, as a publisher writing flat out does."""
    publisher.conn.receive_data(
        b"".join(
            encode(Publish(topic, PAYLOAD, qos=qos, packet_id=n % 65535 + 1 if qos else None), V311)
            for n in range(count)
        )
    )


def test_a_writer_behind_holds_back_the_publishers_that_feed_it(clock: FakeClock) -> None:
    core = make_core(clock)
    relieved, subscriber, publisher = congested_pair(core)
    bystander = connected(core, "other")  # publishes elsewhere: never held back
    blast(bystander, "nobody/listens", MESSAGES_OVER_HIGH)
    assert not bystander.conn.held_back()

    # the subscriber's writer takes one batch: still more than CONGESTION_LOW left
    data = subscriber.conn.data_to_send()
    assert len(data) >= MAX_BATCH_BYTES
    assert core.sessions["sub"].pending_bytes >= CONGESTION_LOW
    assert publisher.conn.held_back() and not relieved.calls
    subscriber.conn.bytes_written(len(data))
    drain(subscriber)
    assert not subscriber.conn.congested
    assert relieved.calls == 1
    assert not publisher.conn.held_back()


def test_a_client_that_does_not_read_holds_nobody_back(clock: FakeClock) -> None:
    """Its socket refuses bytes: only its own budget limits what waits for it."""
    core = make_core(clock, max_queued_bytes=2 * CONGESTION_HIGH)
    stalled = connected(core, "stalled", "t")
    healthy = connected(core, "healthy", "t")
    publisher = connected(core, "pub")

    stalled.conn.transport_blocked(True)
    for _ in range(4):  # 4 x over CONGESTION_HIGH: the stalled one reaches its budget
        blast(publisher, "t", MESSAGES_OVER_HIGH)
        assert publisher.conn.held_back()  # healthy has fallen behind: that one counts
        drain(healthy)
        assert not publisher.conn.held_back()
        assert not stalled.conn.congested
    assert core.sessions["stalled"].dropped > 0
    assert core.sessions["healthy"].dropped == 0
    assert core.sessions["stalled"].queued_bytes <= 2 * CONGESTION_HIGH

    # it reads again: from now on it is a writer behind like any other
    stalled.conn.transport_blocked(False)
    stalled.conn.bytes_written(len(stalled.conn.data_to_send()))  # room for a few more
    blast(publisher, "t", 1)
    assert stalled.conn.congested and publisher.conn.held_back()
    drain(stalled)
    drain(healthy)
    assert not publisher.conn.held_back()


def test_blocking_while_congested_relieves_at_once(clock: FakeClock) -> None:
    relieved, subscriber, publisher = congested_pair(make_core(clock))
    subscriber.conn.transport_blocked(True)
    assert relieved.calls == 1
    assert not publisher.conn.held_back()


def read_at(client: Client, clock: FakeClock, rate: float, publisher: Client) -> None:
    """``client``'s socket is full, then takes READ_RATE_SAMPLE bytes at ``rate`` bytes a
    second, in writes of a batch each, while ``publisher`` keeps its queue filled."""
    conn = client.conn
    assert conn.transport_blocked(True) == math.inf  # not known as a fast reader yet
    taken = 0
    while taken < READ_RATE_SAMPLE:
        blast(publisher, "t", MAX_BATCH_BYTES // len(PAYLOAD))
        data = conn.data_to_send()
        clock.now += len(data) / rate
        conn.bytes_written(len(data))
        taken += len(data)
    conn.transport_blocked(False)


def blocked_fast_reader(core: BrokerCore, clock: FakeClock) -> tuple[Relieved, Client, Client]:
    """A subscriber of "t" known as a fast reader, its socket now full, and a publisher."""
    relieved = Relieved(core)
    reader = connected(core, "reader", "t")
    publisher = connected(core, "pub")
    read_at(reader, clock, 4 * FAST_READER_RATE, publisher)
    drain(reader)
    assert reader.conn.transport_blocked(True) == FAST_READER_STALL
    return relieved, reader, publisher


def test_a_fast_reader_with_a_full_socket_holds_its_publishers_back(clock: FakeClock) -> None:
    """Its socket refuses bytes only because messages come faster than it reads: once
    half of its budget waits for it, the publishers wait for it (nothing is dropped), as
    for a writer behind, until a quarter is left."""
    core = make_core(clock)
    budget = core.config.max_queued_bytes
    relieved, reader, publisher = blocked_fast_reader(core, clock)
    session = core.sessions["reader"]
    while session.queued_bytes <= budget // 2:
        assert not publisher.conn.held_back()  # the budget takes a burst
        blast(publisher, "t", MESSAGES_OVER_HIGH)
    assert reader.conn.congested and publisher.conn.held_back()
    while session.queued_bytes >= budget // 4:
        assert publisher.conn.held_back()
        reader.conn.bytes_written(len(reader.conn.data_to_send()))
    assert relieved.calls == 1 and not publisher.conn.held_back()
    reader.conn.transport_blocked(False)
    drain(reader)
    assert session.dropped == 0


def test_a_slow_reader_with_a_full_socket_holds_nobody_back(clock: FakeClock) -> None:
    core = make_core(clock, max_queued_bytes=2 * CONGESTION_HIGH)
    reader = connected(core, "reader", "t")
    publisher = connected(core, "pub")
    read_at(reader, clock, FAST_READER_RATE / 2, publisher)
    drain(reader)

    assert reader.conn.transport_blocked(True) == math.inf
    for _ in range(4):
        blast(publisher, "t", MESSAGES_OVER_HIGH)
        assert not reader.conn.congested and not publisher.conn.held_back()
    assert core.sessions["reader"].dropped > 0  # its budget, not the publisher, gave way


def test_a_fast_reader_that_stops_reading_frees_its_publishers(clock: FakeClock) -> None:
    """Its write is not done FAST_READER_STALL after the socket refused: it is no longer
    a fast reader, and whoever it held back goes on."""
    core = make_core(clock, max_queued_bytes=2 * CONGESTION_HIGH)
    relieved, reader, publisher = blocked_fast_reader(core, clock)
    blast(publisher, "t", MESSAGES_OVER_HIGH)
    assert publisher.conn.held_back()

    clock.now += FAST_READER_STALL
    assert reader.conn.transport_blocked(True) == math.inf  # still blocked: stalled
    assert relieved.calls == 1 and not publisher.conn.held_back()
    blast(publisher, "t", MESSAGES_OVER_HIGH)
    assert not reader.conn.congested and not publisher.conn.held_back()


def test_a_client_at_its_receive_maximum_holds_nobody_back(clock: FakeClock) -> None:
    """QoS 1 messages waiting for the client's acknowledgements are not the broker's to send."""
    core = make_core(clock)
    windowed = Client(core, V5)
    windowed.connect("windowed", properties=Properties(receive_maximum=2))
    windowed.subscribe(("t", 1))
    publisher = connected(core, "pub")
    blast(publisher, "t", MESSAGES_OVER_HIGH, qos=1)
    assert windowed.conn.congested  # the writer has not run yet: it could send two
    packets = drain(windowed, ack=False)
    assert len(packets) == 2
    assert not windowed.conn.congested  # two in flight: the rest waits for the client
    assert not publisher.conn.held_back()
    assert core.sessions["windowed"].pending_bytes > CONGESTION_HIGH


def test_a_closed_connection_relieves_who_waited_for_it(clock: FakeClock) -> None:
    relieved, subscriber, publisher = congested_pair(make_core(clock))
    subscriber.conn.connection_lost()
    assert relieved.calls == 1
    assert not publisher.conn.held_back()


def test_a_taken_over_connection_relieves_who_waited_for_it(clock: FakeClock) -> None:
    core = make_core(clock)
    relieved = Relieved(core)
    old = Client(core, V311)
    old.connect("sub", clean_start=False)
    old.subscribe(("t", 0))
    publisher = connected(core, "pub")
    blast(publisher, "t", MESSAGES_OVER_HIGH)
    assert old.conn.congested and publisher.conn.held_back()
    new = Client(core, V311)
    new.connect("sub", clean_start=False)  # the session and its queue move to it
    assert not old.conn.congested
    assert relieved.calls == 1
    assert not publisher.conn.held_back()
    assert core.sessions["sub"].connection is new.conn


def test_a_publisher_is_held_back_only_by_its_own_last_read(clock: FakeClock) -> None:
    core = make_core(clock)
    _relieved, subscriber, publisher = congested_pair(core)
    # a will, a $SYS update, an in-process publish: routed by nobody's read
    core.publish(Message("t", PAYLOAD))
    other = connected(core, "other")
    other.send(Publish("elsewhere", b"x"))
    assert not other.conn.held_back()
    drain(subscriber)
    assert not publisher.conn.held_back()


# ------------------------------------------------------------------ retained replay


def retain(core: BrokerCore, count: int, **fields: object) -> None:
    for n in range(count):
        core.publish(Message(f"r/{n:06d}", b"%06d" % n, retain=True, **fields))  # type: ignore[arg-type]


def test_every_retained_message_is_sent_as_the_connection_drains(clock: FakeClock) -> None:
    count = 20_000
    core = make_core(clock, max_queued_bytes=64 * 1024)  # far less than they take
    retain(core, count)
    subscriber = Client(core, V311)
    subscriber.connect("sub")
    send_subscribe(subscriber, "#", 0)
    session = core.sessions["sub"]
    received: list[bytes] = []
    while data := subscriber.conn.data_to_send():
        assert len(data) < MAX_BATCH_BYTES + 100  # one batch at a time, never all at once
        assert session.pending_bytes == 0  # nothing of it counts against the budget
        subscriber.conn.bytes_written(len(data))
        received += [p.payload for p in subscriber.reader.feed(data) if isinstance(p, Publish)]
    assert sorted(received) == [b"%06d" % n for n in range(count)]
    assert len(received) == count
    assert session.dropped == 0
    assert not session.replays and not session.pending


def test_retained_replay_keeps_its_place_in_the_queue(clock: FakeClock) -> None:
    core = make_core(clock)
    retain(core, 3)
    subscriber = Client(core, V311)
    subscriber.connect("sub")
    subscriber.subscribe(("before", 0))
    core.publish(Message("before", b"queued before"))
    send_subscribe(subscriber, "r/#", 0)
    core.publish(Message("r/000001", b"live after", retain=False))
    payloads = [p.payload for p in drain(subscriber) if isinstance(p, Publish)]
    assert payloads[0] == b"queued before"
    assert sorted(payloads[1:4]) == [b"000000", b"000001", b"000002"]  # in no set order
    assert payloads[4:] == [b"live after"]


def test_qos1_retained_replay_waits_for_the_receive_maximum(clock: FakeClock) -> None:
    core = make_core(clock)
    retain(core, 5, qos=1)
    subscriber = Client(core, V5)
    subscriber.connect("sub", properties=Properties(receive_maximum=2))
    send_subscribe(subscriber, "r/#", 1)
    suback, *first = subscriber.packets()
    assert isinstance(suback, Suback)
    received: list[bytes] = []
    batches = []
    while first:
        batches.append(len(first))
        for packet in first:
            assert isinstance(packet, Publish)
            received.append(packet.payload)
            subscriber.send(Puback(packet.packet_id or 0))
        first = subscriber.publishes()
    assert batches == [2, 2, 1]  # never more than two in flight
    assert sorted(received) == [b"%06d" % n for n in range(5)]


def test_retained_message_expired_while_replayed_is_skipped(clock: FakeClock) -> None:
    core = make_core(clock)
    short = Properties(message_expiry_interval=5)
    core.publish(Message("r/a", b"short", retain=True, properties=short, created=clock.now))
    core.publish(Message("r/b", b"long", retain=True, created=clock.now))
    subscriber = Client(core, V5)
    subscriber.connect("sub")
    send_subscribe(subscriber, "r/#", 0)  # nothing written yet
    clock.now += 10
    packets = subscriber.packets()
    assert isinstance(packets[0], Suback)
    assert [p.payload for p in packets[1:] if isinstance(p, Publish)] == [b"long"]


# ----------------------------------------------- state that only persistence clears


def test_nothing_is_recorded_for_persistence_without_a_store(clock: FakeClock) -> None:
    """50,000 connects (random and assigned ids), 50,000 retained set and cleared: nothing
    is left behind, and memory comes back to where it started (counted in allocated
    blocks, which unlike RSS do not depend on the allocator giving pages back)."""
    core = make_core(clock)
    retain(core, 10)
    gc.collect()
    before = sys.getallocatedblocks()
    for n in range(50_000):
        if n % 2:
            client = Client(core, V311)
            client.connect(f"random-{uuid.uuid4()}")
        else:
            client = Client(core, V5)
            connack = client.connect("")
            assert connack.properties.assigned_client_identifier
        client.send(Publish(f"set/{n}", b"v", retain=True))
        client.send(Publish(f"set/{n}", b"", retain=True))  # cleared again
        client.send(Disconnect())
        client.conn.connection_lost()
    del client
    gc.collect()
    left = sys.getallocatedblocks() - before
    assert not core.dirty_sessions and not core.dirty_retained
    assert not core.sessions and not core.open_connections
    assert len(core.retained) == 10
    # bounded caches (encoded topic names, routing plans) may keep a few thousand
    assert left < 20_000, f"{left} blocks left behind by 50,000 clients"
