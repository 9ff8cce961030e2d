"""The queue policy of a session, in bytes: what waits for a client, and what is dropped.

``Session`` alone (no core, no sockets) for the policy, then through the core for the
counting and logging of drops (docs/configuration.md, "Queues and flow control").
"""

from __future__ import annotations

import logging

import pytest
from helpers import V311, Client, FakeClock, make_core

from trio_mqtt.broker.message import Message, publish_size
from trio_mqtt.broker.sessions import EVICTED, OutboundState, QueuedMessage, Session
from trio_mqtt.mqtt.packets import Properties, Puback, Publish


class Transport:
    """Stands in for a connection as the session sees it: bytes handed to the socket."""

    def __init__(self) -> None:
        self.in_transit = 0


def item(payload_size: int, qos: int = 0, topic: str = "t") -> QueuedMessage:
    return QueuedMessage(Message(topic, bytes(payload_size), qos=qos), qos, False)


def session(max_bytes: int = 1000, max_messages: int = 1000, *, online: bool = True) -> Session:
    made = Session(
        client_id="c",
        protocol_version=V311,
        max_queued_messages=max_messages,
        max_queued_bytes=max_bytes,
    )
    if online:
        made.connection = Transport()  # type: ignore[assignment]
    return made


def test_publish_size_counts_payload_topic_header_and_properties() -> None:
    plain = Message("a/b", b"x" * 10)
    assert publish_size(plain) == 10 + 3 + 7
    with_props = Message("a/b", b"x" * 10, properties=Properties(content_type="json"))
    # property length (1) + identifier (1) + string length (2) + "json"
    assert publish_size(with_props) == publish_size(plain) + 1 + 1 + 2 + 4


def test_online_queue_is_bounded_in_bytes_not_messages() -> None:
    s = session(max_bytes=10_000, max_messages=3)
    small = [item(10) for _ in range(100)]  # 18 bytes each
    assert all(s.enqueue(i) for i in small)  # a hundred messages: far from 10,000 bytes
    assert len(s.queued_entries) == 100
    assert s.pending_bytes == 100 * 18
    assert s.dropped == 0


def test_qos0_over_the_budget_is_dropped_and_counted() -> None:
    s = session(max_bytes=100)
    assert s.enqueue(item(40))  # 48
    assert s.enqueue(item(40))  # 96
    assert not s.enqueue(item(40))
    assert (s.dropped, s.drop_episode, len(s.queued_entries), s.pending_bytes) == (1, 1, 2, 96)


def test_qos1_over_the_budget_evicts_the_oldest_qos0() -> None:
    s = session(max_bytes=100)
    first, second = item(40, topic="1"), item(40, topic="2")
    s.enqueue(first)
    s.enqueue(second)
    important = item(40, qos=1)
    assert s.enqueue(important)
    assert list(s.queued_items()) == [second, important]
    assert (s.dropped, s.pending_bytes) == (1, 96)


def test_qos1_evicts_as_many_qos0_as_it_needs() -> None:
    s = session(max_bytes=100)
    small = [item(5, topic=str(n)) for n in range(7)]  # 13 bytes each: 91
    for queued in small:
        s.enqueue(queued)
    big = item(60, qos=2)  # 68 bytes: five must go (91 - 65 + 68 = 94)
    assert s.enqueue(big)
    assert list(s.queued_items()) == [*small[5:], big]
    assert s.dropped == 5
    assert s.pending_bytes == 2 * 13 + 68


def test_qos1_is_dropped_when_no_qos0_can_make_room() -> None:
    s = session(max_bytes=100)
    assert s.enqueue(item(40, qos=1))
    assert s.enqueue(item(40, qos=1))
    assert not s.enqueue(item(40, qos=2))
    assert (s.dropped, len(s.queued_entries)) == (1, 2)


def test_bytes_in_flight_and_in_transit_count_against_the_budget() -> None:
    s = session(max_bytes=100)
    s.add_inflight(1, item(30, qos=1), OutboundState.AWAIT_PUBACK)  # 38, sent, not acked
    transport = s.connection
    assert isinstance(transport, Transport)
    transport.in_transit = 40  # encoded, not yet taken by the socket
    assert s.queued_bytes == 78
    assert s.enqueue(item(10))  # 18: 96
    assert not s.enqueue(item(10))
    s.remove_inflight(1)  # acknowledged
    assert s.queued_bytes == 58
    assert s.enqueue(item(10))


def test_offline_session_keeps_no_qos0_and_at_most_max_queued_messages() -> None:
    s = session(max_bytes=10_000, max_messages=2, online=False)
    assert not s.enqueue(item(1))  # QoS 0: not kept, and not a drop (MQTT allows it)
    assert s.dropped == 0
    assert s.enqueue(item(1, qos=1))
    assert s.enqueue(item(1, qos=1))
    assert not s.enqueue(item(1, qos=1))
    assert (len(s.queued_entries), s.dropped) == (2, 1)


def test_offline_session_is_bounded_in_bytes_too() -> None:
    s = session(max_bytes=100, max_messages=1000, online=False)
    assert s.enqueue(item(80, qos=1))
    assert not s.enqueue(item(80, qos=1))
    assert s.dropped == 1


def test_drop_episode_counts_until_it_ends() -> None:
    dropped_by: list[int] = []
    s = session(max_bytes=50)
    s.on_drop = lambda session: dropped_by.append(session.drop_episode)
    s.enqueue(item(40))
    for _ in range(3):
        s.enqueue(item(40))
    assert dropped_by == [1, 2, 3]  # the core logs the first of an episode only
    assert s.end_drop_episode() == 3
    s.enqueue(item(40))
    assert dropped_by == [1, 2, 3, 1]  # a new episode
    assert s.dropped == 4


# --------------------------------------------------------------- through the core


def test_a_slow_client_is_logged_once_per_episode_with_its_address(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    core = make_core(clock, max_queued_bytes=1000)
    slow = Client(core, V311)
    slow.connect("slow")
    slow.subscribe(("t", 0))
    publisher = Client(core, V311)
    publisher.connect("publisher")
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    for n in range(100):  # 100 x 48 bytes for a budget of 1000: 80 are dropped
        publisher.send(Publish("t", b"%040d" % n))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    text = warnings[0].getMessage()
    assert "'slow'" in text and "192.0.2.10" in text and "max_queued_bytes 1000" in text
    assert core.stats.messages_dropped == 80
    (summary,) = [c for c in core.client_summaries() if c.client_id == "slow"]
    assert summary.dropped == 80
    assert 1000 - 48 < summary.queued_bytes <= 1000

    # the client reads: the episode ends (one INFO line with the count), nothing is lost
    caplog.clear()
    delivered = []
    while data := slow.conn.data_to_send():
        slow.conn.bytes_written(len(data))
        delivered += slow.reader.feed(data)
    assert [p.payload for p in delivered if isinstance(p, Publish)] == [
        b"%040d" % n for n in range(20)
    ]
    (ended,) = caplog.records
    assert ended.levelno == logging.INFO
    assert "80 message(s) were dropped" in ended.getMessage()
    assert core.sessions["slow"].drop_episode == 0


def test_an_acknowledged_qos1_message_waits_while_qos0_goes_first(clock: FakeClock) -> None:
    """Over the budget, QoS 1 stays and QoS 0 makes room: what was PUBACKed is kept."""
    core = make_core(clock, max_queued_bytes=600)  # 12 of these messages (48 bytes)
    subscriber = Client(core, V311)
    subscriber.connect("sub")
    subscriber.subscribe(("t", 1))
    publisher = Client(core, V311)
    publisher.connect("pub")
    for n in range(10):
        publisher.send(Publish("t", b"%040d" % n, qos=0))
        publisher.send(Publish("t", b"%040d" % n, qos=1, packet_id=n + 1))
    assert publisher.packets() == [Puback(n + 1) for n in range(10)]
    received = []
    while data := subscriber.conn.data_to_send():
        subscriber.conn.bytes_written(len(data))
        for packet in subscriber.reader.feed(data):
            assert isinstance(packet, Publish)
            received.append((packet.qos, packet.payload))
            if packet.qos:
                subscriber.send(Puback(packet.packet_id or 0))
    assert [payload for qos, payload in received if qos == 1] == [b"%040d" % n for n in range(10)]
    qos0 = [payload for qos, payload in received if qos == 0]
    # 12 fit. From the 13th on, each new QoS 0 was dropped and each QoS 1 took the place
    # of the oldest QoS 0 left: the 10 acknowledged ones and QoS 0 numbers 4 and 5 stay
    assert qos0 == [b"%040d" % 4, b"%040d" % 5]
    assert core.stats.messages_dropped == 8


def test_a_full_queue_finds_its_oldest_qos0_without_searching() -> None:
    """A full queue is asked for a QoS 0 to evict on every further QoS 1 message: the
    first time lists where its QoS 0 messages are, and later messages keep the list, so
    no eviction searches; evicted entries become EVICTED in place, and the writer skips
    them. Once the queue is half empty the list goes."""
    size = 19  # every item below: 10 bytes of payload, a 2-character topic, 7
    s = session(max_bytes=100 * size)
    for n in range(100):
        s.enqueue(item(10, qos=0 if n in (50, 99) else 1, topic=f"{n:02d}"))
    assert s.qos0_index is None  # not needed yet

    assert s.enqueue(item(10, qos=1, topic="xa"))  # evicts 50, the oldest QoS 0
    assert list(s.qos0_index or ()) == [99]
    assert s.queued_entries[50] is EVICTED
    assert s.enqueue(item(10, qos=0, topic="q0")) is False  # QoS 0 over the limit: dropped
    assert s.enqueue(item(10, qos=1, topic="xb"))  # evicts 99
    assert not s.enqueue(item(10, qos=1, topic="xc"))  # nothing left to evict
    assert s.dropped == 4  # 50, q0, 99, xc

    # the writer takes 60 entries (the first EVICTED among them); a QoS 0 fits again
    taken = [s.pending_queue().popleft() for _ in range(60)]
    assert EVICTED in taken
    s.took_from_front(60, sum(t.size for t in taken if t is not None))
    assert s.qos0_index is None  # less than half full: the fast path again
    assert s.enqueue(item(10, qos=0, topic="q1"))
    topics = [q.message.topic for q in s.queued_items()]
    assert topics[-3:] == ["xa", "xb", "q1"]
    assert "99" not in topics and "" not in topics  # nothing evicted comes back


# ---------------------------------------------- spilling (a cluster keeps QoS 1/2 in its stream)


def spilling_session(max_bytes: int = 100, *, online: bool = True) -> tuple[Session, list[str]]:
    """A session whose ``on_overflow`` takes every QoS 1/2 message; and what it took."""
    kept: list[str] = []

    def keep(_session: Session, queued: QueuedMessage) -> bool:
        kept.append(queued.message.topic)
        return True

    s = session(max_bytes=max_bytes, online=online)
    s.on_overflow = keep
    return s, kept


def test_a_qos1_message_that_does_not_fit_is_spilled_not_dropped() -> None:
    s, kept = spilling_session()
    assert s.enqueue(item(40, qos=1, topic="q1"))  # 49 bytes
    assert s.enqueue(item(40, qos=1, topic="q2"))  # 98
    assert not s.enqueue(item(40, qos=1, topic="q3"))
    assert kept == ["q3"]
    assert s.dropped == 0 and s.drop_episode == 0  # not a drop
    assert s.spilling


def test_while_spilling_every_qos1_message_follows_in_order_and_qos0_still_queues() -> None:
    s, kept = spilling_session()
    s.enqueue(item(80, qos=1, topic="first"))
    assert not s.enqueue(item(80, qos=1, topic="spilled"))
    s.pending_queue().popleft()  # the client took the first one: room again
    s.pending_bytes = 0
    assert not s.enqueue(item(1, qos=2, topic="small"))  # fits, but after "spilled"
    assert kept == ["spilled", "small"]
    assert s.enqueue(item(1, qos=0, topic="zero"))  # QoS 0 is never kept elsewhere
    s.end_spill()
    assert s.enqueue(item(1, qos=1, topic="after"))
    assert [queued.message.topic for queued in s.queued_entries] == ["zero", "after"]
    assert kept == ["spilled", "small"]


def test_an_overflow_that_is_not_taken_is_a_drop_as_before() -> None:
    s = session(max_bytes=100)
    s.on_overflow = lambda _session, _item: False
    s.enqueue(item(90, qos=1))
    assert not s.enqueue(item(90, qos=1))
    assert s.dropped == 1 and not s.spilling


def test_room_to_refill_is_half_the_budget() -> None:
    s = session(max_bytes=1000)
    s.enqueue(item(490, qos=1))  # 499 bytes
    assert s.has_room_to_refill()
    s.enqueue(item(10, qos=1))
    assert not s.has_room_to_refill()
    offline = session(max_bytes=10**6, max_messages=4, online=False)
    offline.enqueue(item(1, qos=1))
    offline.enqueue(item(1, qos=1))
    assert offline.has_room_to_refill()
    offline.enqueue(item(1, qos=1))
    assert not offline.has_room_to_refill()  # (by count, offline)
