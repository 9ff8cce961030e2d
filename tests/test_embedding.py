"""The embedding API: open_broker, bound addresses, in-process publish/subscribe, clients,
retained messages with their publisher, and connect hooks, over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from rawclient import RawClient

from trio_mqtt import (
    Broker,
    BrokerConfig,
    Endpoint,
    ListenerConfig,
    LocalProtocolError,
    Message,
    MessageStream,
    PeerInfo,
    ReasonCode,
    open_broker,
)
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Connect,
    ProtocolVersion,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.peer import LOCAL_PEER

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5


@asynccontextmanager
async def running_broker(*names: str) -> AsyncIterator[Broker]:
    listeners = tuple(ListenerConfig(name=name, host="127.0.0.1", port=0) for name in names)
    async with open_broker(BrokerConfig(listeners=listeners, shutdown_timeout=1)) as broker:
        yield broker


def socket_endpoint(client: RawClient) -> Endpoint:
    """The client's own address: what the broker sees as the socket's peer."""
    endpoint = Endpoint.from_sockaddr(client.stream.socket.getsockname())  # type: ignore[attr-defined]
    assert endpoint is not None
    return endpoint


async def receive_all(messages: MessageStream, count: int) -> list[Message]:
    with trio.fail_after(5):
        return [await messages.receive() for _ in range(count)]


# --------------------------------------------------------------------------- addresses


async def test_bound_addresses_and_port() -> None:
    async with running_broker("first", "second") as broker:
        first = broker.addresses("first")
        second = broker.addresses("second")
        assert [a.host for a in first] == ["127.0.0.1"]
        assert first[0].port != 0
        assert second[0].port not in (0, first[0].port)
        assert broker.addresses() == first + second
        assert broker.port == first[0].port

        for port in (first[0].port, second[0].port):
            client = await RawClient.open(port, V311)
            assert (await client.connect(f"on-{port}")).reason_code == 0
            await client.aclose()


# --------------------------------------------------------------------------- in-process


async def test_publish_reaches_wildcard_subscriptions() -> None:
    async with running_broker("main") as broker:
        async with broker.subscribe("s/+/t") as plus, broker.subscribe("s/#") as hash_:
            assert await broker.publish("s/x/t", b"both", qos=1) == 2
            assert await broker.publish("s/y/z", "hash only") == 1
            assert await broker.publish("other/x/t", b"nobody") == 0

            (got_plus,) = await receive_all(plus, 1)
            assert (got_plus.topic, got_plus.payload, got_plus.qos) == ("s/x/t", b"both", 1)
            got_hash = await receive_all(hash_, 2)
            assert [(m.topic, m.payload) for m in got_hash] == [
                ("s/x/t", b"both"),
                ("s/y/z", b"hash only"),
            ]
            assert got_hash[0].publisher is None
            assert got_hash[0].peer == LOCAL_PEER
        # unsubscribed on leaving the block
        assert await broker.publish("s/x/t", b"late") == 0


async def test_in_process_publish_reaches_network_subscriber() -> None:
    async with running_broker("main") as broker:
        client = await RawClient.open(broker.port, V311)
        await client.connect("net-sub")
        await client.send(Subscribe(1, (SubscriptionRequest("app/+", 1),)))
        assert await client.receive() == Suback(1, (1,))
        assert await broker.publish("app/temp", b"21.5", qos=2) == 1
        publish = await client.receive()
        assert isinstance(publish, Publish)
        assert (publish.topic, publish.payload, publish.qos) == ("app/temp", b"21.5", 1)
        await client.aclose()


async def test_network_publish_reaches_in_process_subscriber() -> None:
    async with running_broker("main") as broker, broker.subscribe("dev/#") as messages:
        client = await RawClient.open(broker.port, V5)
        await client.connect("dev-7")
        await client.send(Publish("dev/7/state", b"on", qos=1, packet_id=5))
        assert await client.receive() == Puback(5)
        (message,) = await receive_all(messages, 1)
        assert (message.topic, message.payload, message.publisher) == (
            "dev/7/state",
            b"on",
            "dev-7",
        )
        assert message.peer.client == socket_endpoint(client)
        await client.aclose()


async def test_retained_delivered_on_subscribe() -> None:
    async with running_broker("main") as broker:
        await broker.publish("r/a", b"kept", qos=1, retain=True)
        await broker.publish("r/b", b"also", retain=True)
        await broker.publish("r/c", b"not kept")
        async with broker.subscribe("r/#") as messages:
            retained = await receive_all(messages, 2)
            assert sorted((m.topic, m.payload, m.retain) for m in retained) == [
                ("r/a", b"kept", True),
                ("r/b", b"also", True),
            ]
        # an empty retained payload clears it
        await broker.publish("r/a", b"", retain=True)
        assert broker.retained("r/a") is None
        async with broker.subscribe("r/#") as messages:
            (only,) = await receive_all(messages, 1)
            assert only.topic == "r/b"


async def test_in_process_subscriber_gets_a_burst_routed_before_it_runs() -> None:
    """5,000 messages in one write: one read of the broker routes them all before the
    consumer task runs again. With the defaults none is lost (a 1,000-message buffer
    dropped 4,000); what waits is bounded in bytes, like a network client's queue."""
    async with running_broker("main") as broker, broker.subscribe("burst/#") as messages:
        client = await RawClient.open(broker.port, V311)
        try:
            await client.connect("burster")
            count = 5000
            await client.send_raw(
                b"".join(encode(Publish("burst/x", b"%d" % n), V311) for n in range(count))
            )
            got = await receive_all(messages, count)
        finally:
            await client.aclose()
        assert [m.payload for m in got] == [b"%d" % n for n in range(count)]
        assert messages.dropped == 0
        assert messages.buffered_bytes == 0


async def test_in_process_subscriber_is_bounded_by_max_queued_bytes() -> None:
    listener = ListenerConfig(host="127.0.0.1", port=0)
    config = BrokerConfig(listeners=[listener], max_queued_bytes=1000)
    async with open_broker(config) as broker, broker.subscribe("b/#") as messages:
        for n in range(100):  # 13 bytes each (payload 3, topic 3, header 7): 76 fit
            await broker.publish("b/x", b"%03d" % n)
        assert messages.buffered_bytes <= 1000
        assert messages.dropped == 100 - 1000 // 13
        got = await receive_all(messages, 1000 // 13)
        assert [m.payload for m in got] == [b"%03d" % n for n in range(1000 // 13)]


async def test_slow_in_process_subscriber_drops_instead_of_blocking() -> None:
    async with (
        running_broker("main") as broker,
        broker.subscribe("fast/#", max_buffer=3) as messages,
    ):
        dropped_before = broker.stats.messages_dropped
        with trio.fail_after(2):
            for n in range(10):
                await broker.publish("fast/n", str(n).encode())
        assert messages.dropped == 7
        assert broker.stats.messages_dropped - dropped_before == 7
        got = await receive_all(messages, 3)
        assert [m.payload for m in got] == [b"0", b"1", b"2"]
        # room again: new messages arrive
        await broker.publish("fast/n", b"10")
        assert [m.payload for m in await receive_all(messages, 1)] == [b"10"]


@pytest.mark.parametrize("topic", ["a/+", "a/#", "", "+", "a\x00b"])
async def test_invalid_topic_in_publish_raises(topic: str) -> None:
    async with running_broker("main") as broker:
        with pytest.raises(LocalProtocolError):
            await broker.publish(topic, b"x")


async def test_invalid_qos_in_publish_raises() -> None:
    async with running_broker("main") as broker:
        with pytest.raises(LocalProtocolError, match="qos"):
            await broker.publish("ok", b"x", qos=3)


async def test_invalid_filter_in_subscribe_raises() -> None:
    async with running_broker("main") as broker:
        with pytest.raises(LocalProtocolError):
            async with broker.subscribe("a/#/b"):
                pass


# --------------------------------------------------------------------------- clients


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_the_local_end_of_a_connection(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    """Bound to one address, a listener knows every connection's local end without
    asking the accepted socket (a system call per connection); bound to a wildcard, it
    asks: the client's destination address is the local end either way."""
    config = BrokerConfig(listeners=(ListenerConfig(name="l", host=host, port=0),))
    async with open_broker(config) as broker:
        asked: list[object] = []
        with trio.socket.socket() as probe:
            socket_type = type(probe)  # (trio's concrete socket class)
        real = socket_type.getsockname

        def getsockname(sock: trio.socket.SocketType) -> object:
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                asked.append(sock)  # (an accepted socket: not the listener's own)
            return real(sock)

        monkeypatch.setattr(socket_type, "getsockname", getsockname)
        clients = [await RawClient.open(broker.port, V5) for _ in range(3)]
        for n, client in enumerate(clients):
            await client.connect(f"local-{n}")
        assert {summary.peer.local for summary in broker.clients()} == {
            Endpoint("127.0.0.1", broker.port)
        }
        assert len(asked) == (0 if host == "127.0.0.1" else 3)
        for client in clients:
            await client.aclose()


async def test_clients_lists_connected_client_with_peer() -> None:
    async with running_broker("main") as broker:
        assert broker.clients() == []
        client = await RawClient.open(broker.port, V5)
        await client.connect("emb-1", keep_alive=30, username="alice")
        await client.send(Subscribe(1, (SubscriptionRequest("x/#", 1),)))
        assert isinstance(await client.receive(), Suback)

        (summary,) = broker.clients()
        assert summary.client_id == "emb-1"
        assert summary.username == "alice"
        assert summary.protocol_version == 5
        assert summary.keep_alive == 30
        assert summary.subscriptions == ("x/#",)
        peer = summary.peer
        assert isinstance(peer, PeerInfo)
        assert peer.listener == "main"
        assert peer.transport == "tcp"
        assert peer.client == socket_endpoint(client)
        assert peer.remote == socket_endpoint(client)
        assert peer.local == Endpoint("127.0.0.1", broker.port)
        assert peer.proxy is None

        await client.aclose()
        for _ in range(500):  # the broker notices the EOF in a moment
            if not broker.clients():
                break
            await trio.sleep(0.01)
        assert broker.clients() == []


# --------------------------------------------------------------------------- retained


async def test_retained_records_publisher_and_peer() -> None:
    async with running_broker("main") as broker:
        client = await RawClient.open(broker.port, V311)
        await client.connect("pub-1")
        await client.send(Publish("state/x", b"42", qos=1, retain=True, packet_id=1))
        assert await client.receive() == Puback(1)

        retained = broker.retained("state/x")
        assert retained is not None
        assert retained.payload == b"42"
        assert retained.publisher == "pub-1"
        assert retained.peer.client == socket_endpoint(client)
        assert retained.peer.listener == "main"
        await client.aclose()

        await broker.publish("state/y", b"local", retain=True)
        local = broker.retained("state/y")
        assert local is not None
        assert local.publisher is None
        assert local.peer == LOCAL_PEER
        assert broker.retained("state/none") is None


# --------------------------------------------------------------------------- hooks


async def test_connect_hook_refuses_v5_and_v311() -> None:
    seen: list[tuple[PeerInfo, Connect]] = []

    def hook(peer: PeerInfo, connect: Connect) -> ReasonCode | None:
        seen.append((peer, connect))
        return ReasonCode.NOT_AUTHORIZED if connect.client_id.startswith("bad") else None

    async with running_broker("main") as broker:
        broker.add_connect_hook(hook)

        v5 = await RawClient.open(broker.port, V5)
        await v5.send_raw(_connect_bytes("bad-5", V5))
        # CONNACK, remaining length 3, flags 0, reason 0x87 Not authorized, no properties
        assert await _read_to_eof(v5) == b"\x20\x03\x00\x87\x00"

        v311 = await RawClient.open(broker.port, V311)
        await v311.send_raw(_connect_bytes("bad-3", V311))
        # CONNACK, return code 5 Not authorized
        assert await _read_to_eof(v311) == b"\x20\x02\x00\x05"

        good = await RawClient.open(broker.port, V311)
        assert (await good.connect("good")).reason_code == 0

        assert [c.client_id for _, c in seen] == ["bad-5", "bad-3", "good"]
        assert [p.client for p, _ in seen] == [
            socket_endpoint(v5),
            socket_endpoint(v311),
            socket_endpoint(good),
        ]
        assert all(p.listener == "main" for p, _ in seen)
        assert [c.client_id for c in broker.clients()] == ["good"]
        assert broker.stats.connects_refused == 2
        for client in (v5, v311, good):
            await client.aclose()


def _connect_bytes(client_id: str, version: ProtocolVersion) -> bytes:
    return encode(Connect(client_id, version), version)


async def _read_to_eof(client: RawClient) -> bytes:
    data = bytearray()
    with trio.fail_after(5):
        while chunk := await client.stream.receive_some(65536):
            data += chunk
    return bytes(data)
