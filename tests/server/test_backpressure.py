"""The trio side of flow control: a reader that waits, and a socket that says it is full.

The decisions are the core's (tests/broker/test_flow_control.py); these tests check that
the server layer acts on them: a publisher whose messages went to a subscriber that has
fallen behind is not read from until that subscriber caught up, and a subscriber whose
socket is full (``WatchedSocketStream``) holds nobody back.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers import V311, GatedStream, make_core, open_client, serving, socket_stream_pair
from rawclient import RawClient

from trio_mqtt.config import ListenerConfig
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Pingreq,
    Pingresp,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.server.backpressure import Relief
from trio_mqtt.server.watched_stream import WatchedSocketStream
from trio_mqtt.testing import open_test_broker

from .certs import TestPKI

PAYLOAD = bytes(1000)


async def test_relief_waits_until_the_condition_clears() -> None:
    relief = Relief()
    held = [True]
    woke = trio.Event()

    async def waiter() -> None:
        await relief.wait_while(lambda: held[0])
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        relief()  # something caught up, but not what this waiter waits for
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        held[0] = False
        relief()
        with trio.fail_after(1):
            await woke.wait()
    await relief.wait_while(lambda: False)  # nothing to wait for: returns at once


async def test_reader_stops_while_its_subscriber_catches_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The subscriber's writer is held (a gate): the broker stops reading the publisher.

    The publisher's bytes then wait in its transport, as they would in its TCP window;
    once the subscriber's writer goes on, the publisher is read again and every message
    arrives, in order. Nothing is dropped: the subscriber kept up, the broker did not.
    """
    core = make_core(trio.current_time)
    async with serving(core) as serve:
        subscriber_stream, server_stream = trio.testing.memory_stream_pair()
        gated = GatedStream(server_stream)
        serve(gated)
        subscriber = RawClient(subscriber_stream, V311)
        await subscriber.connect("sub", keep_alive=0)
        await subscriber.send(Subscribe(1, (SubscriptionRequest("t", 0),)))
        assert isinstance(await subscriber.receive(), Suback)
        publisher = await open_client(serve, V311)
        await publisher.connect("pub", keep_alive=0)

        gated.gate = trio.Event()  # the subscriber's writer is busy (a slow machine)
        count = 3000  # 3 MB: far more than a writer may be behind
        await publisher.send_raw(
            b"".join(encode(Publish("t", b"%06d" % n + PAYLOAD), V311) for n in range(count))
        )
        await publisher.send(Pingreq())
        await trio.testing.wait_all_tasks_blocked()
        read_while_held = core.stats.messages_received
        assert read_while_held < count // 2  # it stopped reading the publisher
        assert core.sessions["sub"].pending_bytes < 2 * 1024 * 1024
        assert core.stats.messages_dropped == 0

        gated.gate.set()
        gated.gate = None
        payloads = []
        with trio.fail_after(30):
            while len(payloads) < count:
                packet = await subscriber.receive()
                assert isinstance(packet, Publish)
                payloads.append(packet.payload[:6])
            assert await publisher.receive() == Pingresp()
    assert payloads == [b"%06d" % n for n in range(count)]
    assert core.stats.messages_dropped == 0


async def test_watched_socket_reports_a_full_socket_and_when_it_drains() -> None:
    left, reader = socket_stream_pair()
    watched = WatchedSocketStream(left.socket)
    reports: list[bool] = []

    def on_blocked(blocked: bool) -> float:
        reports.append(blocked)
        return math.inf

    watched.on_blocked = on_blocked
    async with watched, reader:
        await watched.send_all(b"x" * 100)
        assert reports == []  # the socket took it at once: nothing to say

        big = b"y" * 1_000_000
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watched.send_all, big)
            await trio.testing.wait_all_tasks_blocked()
            assert reports == [True]  # the peer does not read: full
            while len(received) < 100 + len(big):
                received += await reader.receive_some(65536)
        assert reports == [True, False]
        assert bytes(received) == b"x" * 100 + big


async def test_watched_socket_makes_a_trio_stream_only_for_the_general_paths() -> None:
    """What a parked plain-TCP connection does (writes the socket takes, reads of what
    it holds, the close) goes to the socket itself; a read that waits goes through a
    trio.SocketStream, made then, on the same socket."""
    left, peer = socket_stream_pair()
    watched = WatchedSocketStream(left.socket)
    async with peer:
        await watched.send_all(b"to the peer")
        assert await peer.receive_some(100) == b"to the peer"
        assert watched.receive_nowait(100) is None  # nothing yet
        await peer.send_all(b"held")
        assert watched.receive_nowait(100) == b"held"
        assert watched._stream is None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.send_all, b"waited for")
            assert await watched.receive_some(100) == b"waited for"
        assert isinstance(watched._stream, trio.SocketStream)
        assert watched.transport_stream.socket is watched.socket
        await watched.aclose()
        assert watched.socket.fileno() == -1
        assert await peer.receive_some(100) == b""  # closed: EOF at the peer


async def test_watched_socket_says_again_when_the_socket_is_still_full_after_the_time_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """How the connection learns that a fast reader stopped reading."""
    left, reader = socket_stream_pair()
    watched = WatchedSocketStream(left.socket)
    reports: list[tuple[float, bool]] = []

    def on_blocked(blocked: bool) -> float:
        reports.append((trio.current_time(), blocked))
        return 0.25 if len(reports) == 1 else math.inf

    watched.on_blocked = on_blocked
    async with watched, reader:
        big = b"y" * 1_000_000
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watched.send_all, big)
            await trio.sleep(10)  # the peer reads nothing for 10 s
            assert [blocked for _, blocked in reports] == [True, True]  # once again only
            assert reports[1][0] - reports[0][0] == 0.25
            while len(received) < len(big):
                received += await reader.receive_some(65536)
        assert [blocked for _, blocked in reports] == [True, True, False]
        assert bytes(received) == big


async def test_watched_socket_send_ends_when_the_socket_is_closed_while_it_waits() -> None:
    left, right = socket_stream_pair()
    watched = WatchedSocketStream(left.socket)

    async def close_when_blocked() -> None:
        await trio.testing.wait_all_tasks_blocked()
        await watched.aclose()

    async with right, trio.open_nursery() as nursery:
        nursery.start_soon(close_when_blocked)
        with pytest.raises(trio.ClosedResourceError):
            await watched.send_all(b"y" * 1_000_000)


async def test_watched_socket_send_to_a_reset_peer_is_a_broken_resource() -> None:
    left, right = socket_stream_pair()
    watched = WatchedSocketStream(left.socket)

    async def reset_when_blocked() -> None:
        await trio.testing.wait_all_tasks_blocked()
        right.socket.close()  # with unread data: the peer resets the connection

    async with watched, trio.open_nursery() as nursery:
        nursery.start_soon(reset_when_blocked)
        with pytest.raises(trio.BrokenResourceError):
            await watched.send_all(b"y" * 1_000_000)


async def test_a_tls_subscriber_that_does_not_read_holds_nobody_back(tmp_path: Path) -> None:
    """The full-socket report comes from under TLS too: a stalled TLS subscriber is not a
    writer behind (or the publisher would wait for it for ever), only its budget fills."""
    pki = TestPKI.create(tmp_path)
    listeners = (
        ListenerConfig(name="tcp", host="127.0.0.1", port=0),
        ListenerConfig(name="tls", host="127.0.0.1", port=0, transport="tls", tls=pki.tls_config()),
    )
    budget = 2 * 1024 * 1024
    async with open_test_broker(listeners=listeners, max_queued_bytes=budget) as broker:
        tcp_port, tls_port = (broker.addresses(name)[0].port for name in ("tcp", "tls"))
        tcp = await trio.open_tcp_stream("127.0.0.1", tls_port)
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        tls = trio.SSLStream(tcp, pki.client_context(), server_hostname="localhost")
        stalled = RawClient(tls, V311)
        healthy = await RawClient.open(tcp_port, V311)
        publisher = await RawClient.open(tcp_port, V311)
        try:
            for client, name in ((stalled, "stalled"), (healthy, "healthy")):
                await client.connect(name, keep_alive=0)
                await client.send(Subscribe(1, (SubscriptionRequest("t", 0),)))
                assert isinstance(await client.receive(), Suback)
            await publisher.connect("publisher", keep_alive=0)
            count = 2000
            payload = bytes(10_000)  # 20 MB: ten times the stalled one's budget

            async def publish() -> None:
                for n in range(count):
                    await publisher.send(Publish("t", b"%06d" % n + payload))

            received = []
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(publish)
                    while len(received) < count:
                        packet = await healthy.receive()
                        assert isinstance(packet, Publish)
                        received.append(packet.payload[:6])
            assert received == [b"%06d" % n for n in range(count)]
            stalled_session = broker.core.sessions["stalled"]
            assert stalled_session.dropped > 0
            assert stalled_session.queued_bytes <= budget
            assert broker.core.sessions["healthy"].dropped == 0
        finally:
            for client in (stalled, healthy, publisher):
                await client.aclose()
