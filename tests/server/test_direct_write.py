"""The reader's direct write on plain socket streams (trio_mqtt/server/connection.py).

When the writer task is idle, the reader writes the answer to what it just read with one
non-blocking write and leaves the rest to the writer. These tests run ``run_connection``
on a real socket pair with small buffers, so that the direct write meets a full socket,
and check what must hold whichever task writes: nothing lost, nothing reordered, and the
reader keeps reading while the client is not reading (no deadlock).
"""

from __future__ import annotations

import os

import pytest
import trio
from helpers import PEER, V311, make_core, read_packets, socket_stream_pair

from trio_mqtt.mqtt.codec import PacketReader, encode
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.server.connection import run_connection
from trio_mqtt.server.prefixed_stream import PrefixedStream


async def connect_and_subscribe(
    client: trio.SocketStream, reader: PacketReader, topic_filter: str
) -> None:
    """CONNECT as "echo" and subscribe (QoS 0) to ``topic_filter``; checks both acks."""
    await client.send_all(encode(Connect(client_id="echo", keep_alive=60), V311))
    subscribe = Subscribe(packet_id=1, subscriptions=(SubscriptionRequest(topic_filter, 0),))
    await client.send_all(encode(subscribe, V311))
    assert await read_packets(client, reader, 2) == [
        Connack(),
        Suback(packet_id=1, reason_codes=(0,)),
    ]


async def test_pipelining_client_that_reads_only_at_the_end_gets_every_ack_in_order() -> None:
    # 30,000 QoS 1 PUBLISHes (~0.5 MB) sent before reading anything: their PUBACKs
    # (~120 KB) fill the server's small send buffer long before the client is done.
    # A reader that waited for the socket to take its PUBACKs would stop reading, and
    # the client would block in send_all: both stuck until the keep-alive timeout.
    count = 30_000
    client, server = socket_stream_pair()
    reader = PacketReader(protocol_version=V311, server_side=False)
    publishes = b"".join(
        encode(Publish(topic="p/t", payload=b"0123456789", qos=1, packet_id=n), V311)
        for n in range(1, count + 1)
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                run_connection,
                PrefixedStream(server, b""),
                make_core(trio.current_time),
                PEER,
                nursery,
            )
            await client.send_all(encode(Connect(client_id="pipeliner", keep_alive=60), V311))
            await client.send_all(publishes)  # would hang if the server stopped reading
            packets = await read_packets(client, reader, count + 1)
            nursery.cancel_scope.cancel()
    assert isinstance(packets[0], Connack)
    assert packets[1:] == [Puback(n) for n in range(1, count + 1)]


async def test_own_subscription_messages_and_acks_arrive_in_order_under_back_pressure() -> None:
    # Each PUBLISH gives a PUBACK and a delivery to the publisher itself, from whichever
    # task writes; with the socket full part of the time both tasks take turns. (Fewer
    # messages than max_queued_messages: a full queue would drop QoS 0 deliveries.)
    count = 500
    padding = bytes(200)
    client, server = socket_stream_pair()
    reader = PacketReader(protocol_version=V311, server_side=False)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_connection, server, make_core(trio.current_time), PEER, nursery)
            await connect_and_subscribe(client, reader, "p/#")
            publishes = b"".join(
                encode(
                    Publish(
                        topic="p/t", payload=n.to_bytes(4, "big") + padding, qos=1, packet_id=n
                    ),
                    V311,
                )
                for n in range(1, count + 1)
            )
            await client.send_all(publishes + encode(Pingreq(), V311))
            packets = await read_packets(client, reader, 2 * count + 1)
            nursery.cancel_scope.cancel()
    acks = [p for p in packets if isinstance(p, Puback)]
    delivered = [p for p in packets if isinstance(p, Publish)]
    assert acks == [Puback(n) for n in range(1, count + 1)]
    assert [int.from_bytes(p.payload[:4], "big") for p in delivered] == list(range(1, count + 1))
    assert all(p.qos == 0 and p.payload[4:] == padding for p in delivered)
    assert packets.count(Pingresp()) == 1  # in no set order with the deliveries


class CountingStream(PrefixedStream):
    """Counts the writer task's send_all calls (the reader's direct writes bypass it)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream, b"")
        self.send_alls = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.send_alls += 1
        await super().send_all(data)


async def test_request_response_exchanges_go_out_without_the_writer_task() -> None:
    # One PUBLISH at a time, each answered with a PUBACK and the client's own copy:
    # with room in the socket, the reader writes every answer itself.
    client, server = socket_stream_pair()
    counting = CountingStream(server)
    reader = PacketReader(protocol_version=V311, server_side=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                run_connection, counting, make_core(trio.current_time), PEER, nursery
            )
            await connect_and_subscribe(client, reader, "e/#")
            for n in range(1, 101):
                publish = Publish(topic="e/t", payload=b"%d" % n, qos=1, packet_id=n)
                await client.send_all(encode(publish, V311))
                answer = await read_packets(client, reader, 2)
                assert answer == [Puback(n), Publish(topic="e/t", payload=b"%d" % n)]
            nursery.cancel_scope.cancel()
    assert counting.send_alls == 0


async def test_a_message_reaches_other_connections_without_a_writer_task_each() -> None:
    # One publisher, 20 subscribers on their own sockets: the publisher's reader writes
    # each delivery itself after its step (server/connection.py: _Deliveries), so no
    # subscriber starts a writer task (each would be a send_all here).
    core = make_core(trio.current_time)
    subscribers = [socket_stream_pair() for _ in range(20)]
    counting = [CountingStream(server) for _client, server in subscribers]
    readers = [PacketReader(protocol_version=V311, server_side=False) for _ in subscribers]
    publisher, publisher_server = socket_stream_pair()
    publisher_reader = PacketReader(protocol_version=V311, server_side=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for index, ((client, _server), stream, reader) in enumerate(
                zip(subscribers, counting, readers, strict=True)
            ):
                nursery.start_soon(run_connection, stream, core, PEER, nursery)
                await client.send_all(encode(Connect(client_id=f"s{index}"), V311))
                subscribe = Subscribe(1, (SubscriptionRequest("d/#", 1),))
                await client.send_all(encode(subscribe, V311))
                assert await read_packets(client, reader, 2) == [Connack(), Suback(1, (1,))]
            nursery.start_soon(run_connection, publisher_server, core, PEER, nursery)
            await publisher.send_all(encode(Connect(client_id="pub"), V311))
            assert await read_packets(publisher, publisher_reader, 1) == [Connack()]
            for n in range(1, 11):
                publish = Publish(topic="d/t", payload=b"%d" % n, qos=1, packet_id=n)
                await publisher.send_all(encode(publish, V311))
                assert await read_packets(publisher, publisher_reader, 1) == [Puback(n)]
                for (client, _server), reader in zip(subscribers, readers, strict=True):
                    [delivery] = await read_packets(client, reader, 1)
                    assert isinstance(delivery, Publish)
                    assert (delivery.topic, delivery.payload, delivery.qos) == ("d/t", b"%d" % n, 1)
                    await client.send_all(encode(Puback(delivery.packet_id or 0), V311))
            nursery.cancel_scope.cancel()
    assert [stream.send_alls for stream in counting] == [0] * 20


async def test_a_delivery_a_full_socket_does_not_take_is_finished_by_a_writer() -> None:
    # The subscriber reads nothing for a while as 2 MB are published to it: the
    # publisher's reader writes what fits, a writer task sends the rest once the
    # subscriber reads, and every message arrives, in order.
    core = make_core(trio.current_time)
    client, server = socket_stream_pair()
    counting = CountingStream(server)
    reader = PacketReader(protocol_version=V311, server_side=False)
    publisher, publisher_server = socket_stream_pair()
    count, payload = 400, b"x" * 5000
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_connection, counting, core, PEER, nursery)
            await client.send_all(encode(Connect(client_id="slow"), V311))
            await client.send_all(encode(Subscribe(1, (SubscriptionRequest("f/#", 0),)), V311))
            assert await read_packets(client, reader, 2) == [Connack(), Suback(1, (0,))]
            nursery.start_soon(run_connection, publisher_server, core, PEER, nursery)
            await publisher.send_all(encode(Connect(client_id="fast"), V311))
            stream = b"".join(
                encode(Publish(topic="f/t", payload=b"%05d" % n + payload), V311)
                for n in range(count)
            )
            # (in a task: the broker stops reading the publisher while the subscriber lags)
            nursery.start_soon(publisher.send_all, stream)
            await trio.sleep(0.5)  # the subscriber reads nothing yet: its socket fills
            received = await read_packets(client, reader, count)
            nursery.cancel_scope.cancel()
    assert [packet.payload[:5] for packet in received] == [b"%05d" % n for n in range(count)]
    assert counting.send_alls > 0


async def test_the_delivery_is_written_before_the_publishers_puback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The subscriber's copy goes out first, then the answer to the publisher: the message
    # reaches the subscriber one write sooner (mosquitto's order).
    core = make_core(trio.current_time)
    subscriber, subscriber_server = socket_stream_pair()
    publisher, publisher_server = socket_stream_pair()
    sub_reader = PacketReader(protocol_version=V311, server_side=False)
    pub_reader = PacketReader(protocol_version=V311, server_side=False)
    writes: list[int] = []
    real_write = os.write
    fds = [subscriber_server.socket.fileno(), publisher_server.socket.fileno()]

    def recording_write(fd: int, data: bytes) -> int:
        writes.append(fd)
        return real_write(fd, data)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_connection, subscriber_server, core, PEER, nursery)
            await subscriber.send_all(encode(Connect(client_id="sub"), V311))
            await subscriber.send_all(encode(Subscribe(1, (SubscriptionRequest("o/#", 1),)), V311))
            assert await read_packets(subscriber, sub_reader, 2) == [Connack(), Suback(1, (1,))]
            nursery.start_soon(run_connection, publisher_server, core, PEER, nursery)
            await publisher.send_all(encode(Connect(client_id="pub"), V311))
            assert await read_packets(publisher, pub_reader, 1) == [Connack()]
            monkeypatch.setattr(os, "write", recording_write)
            await publisher.send_all(
                encode(Publish(topic="o/1", payload=b"x", qos=1, packet_id=5), V311)
            )
            assert await read_packets(publisher, pub_reader, 1) == [Puback(5)]
            [delivery] = await read_packets(subscriber, sub_reader, 1)
            assert isinstance(delivery, Publish) and delivery.payload == b"x"
            monkeypatch.undo()
            nursery.cancel_scope.cancel()
    assert [fd for fd in writes if fd in fds] == fds  # the subscriber's, then the PUBACK
