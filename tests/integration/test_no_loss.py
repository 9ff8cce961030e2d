"""No message loss with the default settings, and memory bounded by slow subscribers.

The broker runs as a user starts it: ``python -m trio_mqtt`` with its defaults (only
``$SYS`` publishing off), in its own process. Publishers and the subscribers that keep
up are the benchmark load generator's raw-socket workers, each in its own process,
verifying every message (count, payload, order per publisher); a paho client would be
far too slow to make these bursts. Each test is a row of the table in the no-loss
issue, which the broker failed with its old defaults (85% lost in the fan-in).

Subscribers that do not keep up (one that never reads, one that reads 1 MB/s) are
plain sockets in this process: they must not hold anybody back, must cost the broker
a bounded amount of memory, and the slow one must still get messages, in order. One
that reads fast, only not as fast as the publishers write (80 MB/s), is a subscriber
that keeps up: the publishers wait for it, and it loses nothing.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from rawclient import RawClient

REPO = Path(__file__).resolve().parent.parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not installed; plain `pytest` needs this
    sys.path.insert(0, str(REPO))

from benchmarks import scenarios  # noqa: E402
from benchmarks.brokers import BrokerKind, BrokerProcess, running_broker  # noqa: E402
from benchmarks.scenarios import RunOutcome, Scale  # noqa: E402
from benchmarks.wire import (  # noqa: E402
    CONNACK_ACCEPTED,
    PAYLOAD_HEAD,
    connect_packet,
    subscribe_packet,
)
from trio_mqtt.mqtt.codec import PacketReader, encode  # noqa: E402
from trio_mqtt.mqtt.packets import (  # noqa: E402
    ProtocolVersion,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)

V311 = ProtocolVersion.V311
#: The sizes of the issue's table.
TABLE = Scale(
    name="issue-table",
    fanin_per_publisher=30_000,
    fanout_messages=2_000,
    latency_messages=0,
    latency_warmup=0,
    qos1_messages=0,
    qos1_fanin_per_publisher=50_000,
    sustained_per_publisher=0,
    connections=0,
    retained=100_000,
    deadline_s=60.0,
)
TOPICS = [f"bench/p{source}" for source in range(scenarios.PUBLISHERS)]
#: RSS growth allowed for a broker with a stalled subscriber (the issue's bound).
RSS_GROWTH_MIB = 64


@pytest.fixture
def broker() -> Iterator[BrokerProcess]:
    with running_broker(BrokerKind.TRIO_MQTT) as process:
        yield process


def assert_all_delivered(outcome: RunOutcome, broker: BrokerProcess) -> None:
    assert outcome.error_count == 0, outcome.errors
    assert outcome.received == outcome.expected, (
        f"{outcome.received} of {outcome.expected} delivered: {outcome.errors}"
    )
    assert outcome.verified
    log = broker.log_path.read_text(errors="replace")
    assert "dropping messages" not in log, log[-2000:]


def test_qos0_fanin_4_publishers_to_one_subscriber(broker: BrokerProcess) -> None:
    assert_all_delivered(scenarios.fanin(broker, TABLE), broker)


def test_qos0_fanout_1_publisher_to_50_subscribers(broker: BrokerProcess) -> None:
    assert_all_delivered(scenarios.fanout(broker, TABLE), broker)


def test_qos1_fanin_delivers_everything_it_acknowledged_at_the_rate_it_acknowledges(
    broker: BrokerProcess,
) -> None:
    """4 publishers keep 100 QoS 1 messages unacknowledged each: every PUBACKed message is
    delivered once, in order, and waits milliseconds, not seconds (no growing backlog)."""
    outcome = scenarios.qos1_fanin(broker, TABLE)
    assert_all_delivered(outcome, broker)
    assert outcome.expected == 200_000
    assert outcome.metrics["p50_ms"] < 250, outcome.metrics  # was 1.4 s with a big queue


def test_every_retained_message_reaches_a_new_hash_subscriber(broker: BrokerProcess) -> None:
    outcome = scenarios.retained(broker, TABLE)
    assert_all_delivered(outcome, broker)
    assert outcome.received == 100_000


async def test_a_burst_of_1500_qos1_messages_in_one_write(broker: BrokerProcess) -> None:
    """One read of the broker routes all of them before the idle subscriber's writer runs."""
    port = broker.broker.port
    subscriber = await RawClient.open(port)
    publisher = await RawClient.open(port)
    try:
        await subscriber.connect("idle", keep_alive=0)
        await subscriber.send(Subscribe(1, (SubscriptionRequest("burst", 1),)))
        assert isinstance(await subscriber.receive(), Suback)
        await publisher.connect("burster", keep_alive=0)
        count = 1500
        burst = b"".join(
            encode(Publish("burst", b"%032d" % n, qos=1, packet_id=n + 1), V311)
            for n in range(count)
        )
        await publisher.send_raw(burst)  # one write
        payloads = []
        with trio.fail_after(30):
            while len(payloads) < count:
                packet = await subscriber.receive()
                assert isinstance(packet, Publish)
                payloads.append(packet.payload)
                await subscriber.send(Puback(packet.packet_id or 0))
            acks = [await publisher.receive() for _ in range(count)]
        assert payloads == [b"%032d" % n for n in range(count)]
        assert acks == [Puback(n + 1) for n in range(count)]
    finally:
        await subscriber.aclose()
        await publisher.aclose()


# ------------------------------------------------------- subscribers that fall behind


def subscribe_raw(port: int, client_id: str, *, receive_buffer: int) -> socket.socket:
    """A 3.1.1 subscriber on bench/# with a small receive buffer; CONNACK/SUBACK read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(connect_packet(client_id))
    assert _read_exactly(sock, 4) == CONNACK_ACCEPTED
    sock.sendall(subscribe_packet(1, "bench/#", 0))
    assert _read_exactly(sock, 5) == b"\x90\x03\x00\x01\x00"
    return sock


def fanin_of_1kb_messages(broker: BrokerProcess, per_publisher: int, tag: str) -> RunOutcome:
    """4 publishers x *per_publisher* messages of 1,000 bytes -> 1 verifying subscriber."""
    return scenarios.pubsub(
        broker,
        TABLE,
        publishers=4,
        per_publisher=per_publisher,
        subscribers=1,
        topic_filter="bench/#",
        topics=TOPICS,
        proxy=False,
        tag=tag,
        payload_size=1000,
    )


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed by the broker"
        data += chunk
    return data


def test_a_stalled_subscriber_costs_bounded_memory_and_nobody_else_a_message(
    broker: BrokerProcess,
) -> None:
    """150 MB of QoS 0 in 1 KiB messages while one subscriber never reads: the broker's
    memory grows by less than 64 MiB, the healthy subscriber gets every message, and the
    stalled one's drops are logged (once, with its address)."""
    stalled = subscribe_raw(broker.broker.port, "stalled", receive_buffer=4096)
    try:
        outcome = fanin_of_1kb_messages(broker, 37_500, "stalled")  # 150 MB
        assert outcome.error_count == 0, outcome.errors
        assert outcome.received == outcome.expected == 150_000
        growth = outcome.metrics["peak_rss_mib"] - outcome.details["rss_before_mib"]
        assert growth < RSS_GROWTH_MIB, outcome.metrics
        log = broker.log_path.read_text(errors="replace")
        assert log.count("is too slow") == 1, log[-2000:]
        assert "client 'stalled' (client=127.0.0.1:" in log
    finally:
        stalled.close()


class SlowReader(threading.Thread):
    """Reads about ``rate`` bytes a second and checks that what it gets is in order."""

    def __init__(self, sock: socket.socket, rate: int) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.rate = rate
        self.received = 0
        self.bytes = 0
        self.missing = 0  # messages that never came (seq numbers skipped)
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._next = dict.fromkeys(range(scenarios.PUBLISHERS), 0)

    def run(self) -> None:
        reader = PacketReader(protocol_version=V311, server_side=False)
        chunk = self.rate // 100
        try:
            while not self.stop.wait(0.01):
                data = self.sock.recv(chunk)
                if not data:
                    self.errors.append("closed by the broker")
                    return
                self.bytes += len(data)
                for packet in reader.feed(data):
                    self._check(packet)
        except OSError as exc:
            self.errors.append(repr(exc))

    def _check(self, packet: object) -> None:
        if not isinstance(packet, Publish):
            self.errors.append(f"unexpected {packet!r}")
            return
        source, seq, _check = PAYLOAD_HEAD.unpack_from(packet.payload)
        if packet.topic != TOPICS[source] or seq < self._next[source]:
            self.errors.append(f"{packet.topic} {source}/{seq} out of order")
        self.missing += max(0, seq - self._next[source])
        self._next[source] = seq + 1  # gaps are drops: allowed for a slow client
        self.received += 1


def test_a_slow_subscriber_gets_messages_without_slowing_the_publishers(
    broker: BrokerProcess,
) -> None:
    """A subscriber reading 1 MB/s while 100 MB are published: the publishers finish long
    before it could have read it all, the healthy subscriber gets everything, the slow
    one keeps getting messages (in order, some dropped), and memory stays bounded."""
    slow = SlowReader(subscribe_raw(broker.broker.port, "slow", receive_buffer=16384), 1 << 20)
    slow.start()
    try:
        started = time.monotonic()
        outcome = fanin_of_1kb_messages(broker, 25_000, "slow")  # 100 MB: 100 s at 1 MB/s
        elapsed = time.monotonic() - started
        assert outcome.error_count == 0, outcome.errors
        assert outcome.received == outcome.expected == 100_000
        assert elapsed < 40, f"publishing 100 MB took {elapsed:.1f} s"
        growth = outcome.metrics["peak_rss_mib"] - outcome.details["rss_before_mib"]
        assert growth < RSS_GROWTH_MIB, outcome.metrics
        time.sleep(1)  # it goes on reading what it was left
    finally:
        slow.stop.set()
        slow.join(5)
        slow.sock.close()
    assert slow.errors == []
    assert slow.received > 1000  # kept getting messages: more than a second's worth
    assert slow.bytes < 50_000_000  # and never more than a slow reader can read


def test_a_fast_subscriber_slower_than_its_publishers_loses_nothing(
    broker: BrokerProcess,
) -> None:
    """4 publishers write 64 KiB QoS 0 messages as fast as they can (hundreds of MB/s) to
    a subscriber that reads up to 80 MB/s (five times the fast-reader rate, so that a busy
    machine does not make it slow): its socket is full all the time, yet it reads fast,
    so the publishers wait for it instead of the broker dropping its messages."""
    fast = SlowReader(subscribe_raw(broker.broker.port, "fast", receive_buffer=1 << 20), 80 << 20)
    fast.start()
    try:
        outcome = scenarios.pubsub(
            broker,
            TABLE,
            publishers=4,
            per_publisher=400,  # 105 MB: 1.3 s at 80 MB/s
            subscribers=1,
            topic_filter="bench/#",
            topics=TOPICS,
            proxy=False,
            tag="fastreader",
            payload_size=65536,
        )
        assert_all_delivered(outcome, broker)
        deadline = time.monotonic() + 30
        while fast.received + fast.missing < outcome.expected and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        fast.stop.set()
        fast.join(5)
        fast.sock.close()
    assert fast.errors == []
    assert fast.missing == 0
    assert fast.received == outcome.expected == 1600
