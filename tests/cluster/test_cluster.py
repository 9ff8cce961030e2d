"""Several brokers in one process, one cluster through a real nats-server.

Each node is a full ``open_broker`` with its own TCP listener and its own NATS
connections, so everything between nodes crosses the real NATS server; clients are raw
MQTT clients on 127.0.0.1. ``node.cluster.sync()`` waits until NATS has what a node
decided (a subscription, a retained write), where the test needs that order.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from helpers import V5, V311, wait_until
from helpers import accepted_client as client
from nats_server import NatsServer, running_nats_server
from rawclient import RawClient

from trio_mqtt import Broker, open_broker, serve
from trio_mqtt.broker.connection_view import STORE_WINDOW
from trio_mqtt.cluster.envelope import decode_wire_parts
from trio_mqtt.cluster.node import (
    HEARTBEAT_INTERVAL,
    NODES_BUCKET,
    RETAINED_BUCKET,
    STREAM_PREFIX,
    WILLS_BUCKET,
    ClusterNode,
    DetachedLink,
)
from trio_mqtt.cluster.subjects import topic_to_subject
from trio_mqtt.config import BrokerConfig, ClusterConfig, ListenerConfig
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Disconnect,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.nats import KeyValue, Msg, NATSClient, NATSConnectionError, open_nats_client


@asynccontextmanager
async def open_nodes(nats: NatsServer, count: int = 3) -> AsyncIterator[list[Broker]]:
    async with AsyncExitStack() as stack:
        nodes = []
        for index in range(1, count + 1):
            config = BrokerConfig(
                listeners=[ListenerConfig(port=0)],
                sys_interval=0,
                shutdown_timeout=1,
                cluster=ClusterConfig(node_name=f"n{index}", nats_urls=[nats.url]),
            )
            nodes.append(await stack.enter_async_context(open_broker(config)))
        yield nodes


async def subscribe(
    raw: RawClient, node: Broker, *requests: SubscriptionRequest, sub_id: int | None = None
) -> Suback:
    props = Properties() if sub_id is None else Properties(subscription_identifiers=(sub_id,))
    await raw.send(Subscribe(1, tuple(requests), props))
    suback = await raw.receive()
    assert isinstance(suback, Suback), suback
    assert node.cluster is not None
    await node.cluster.sync()
    return suback


async def publishes(raw: RawClient, count: int, timeout: float = 5.0) -> list[Publish]:
    out = []
    for _ in range(count):
        packet = await raw.receive(timeout)
        assert isinstance(packet, Publish), packet
        out.append(packet)
    return out


async def nothing_more(raw: RawClient, wait: float = 0.3) -> None:
    with trio.move_on_after(wait):
        packet = await raw.receive(wait + 1)
        raise AssertionError(f"unexpected {packet}")


async def test_qos_0_1_2_cross_nodes_with_downgrade(nats_server: NatsServer) -> None:
    async with open_nodes(nats_server, 2) as (n1, n2):
        sub = await client(n1, "sub")
        await subscribe(
            sub, n1, SubscriptionRequest("q/#", 1), sub_id=7
        )  # at most QoS 1 for this subscriber
        pub = await client(n2, "pub", V311)
        await pub.send(Publish(topic="q/0", payload=b"zero", qos=0))
        await pub.send(Publish(topic="q/1", payload=b"one", qos=1, packet_id=1))
        assert await pub.receive() == Puback(1)
        await pub.send(Publish(topic="q/2", payload=b"two", qos=2, packet_id=2))
        assert await pub.receive() == Pubrec(2)
        await pub.send(Pubrel(2))
        assert await pub.receive() == Pubcomp(2)
        got = await publishes(sub, 3)
        assert [(p.topic, p.payload, p.qos) for p in got] == [
            ("q/0", b"zero", 0),
            ("q/1", b"one", 1),
            ("q/2", b"two", 1),
        ]
        assert all(p.properties.subscription_identifiers == (7,) for p in got)
        for p in got[1:]:
            await sub.send(Puback(p.packet_id))  # type: ignore[arg-type]
        assert n1.cluster is not None and n1.cluster.received == 3
        assert n2.cluster is not None and n2.cluster.forwarded == 3


async def test_overlapping_filters_on_one_node_deliver_once(nats_server: NatsServer) -> None:
    async with open_nodes(nats_server, 2) as (n1, n2):
        a = await client(n1, "a")
        b = await client(n1, "b")
        await subscribe(a, n1, SubscriptionRequest("o/#", 0), SubscriptionRequest("o/+/x", 0))
        await subscribe(b, n1, SubscriptionRequest("o/y/+", 0), SubscriptionRequest("+/y/x", 0))
        pub = await client(n2, "pub")
        for index in range(5):
            await pub.send(Publish(topic="o/y/x", payload=b"%d" % index))
        assert [p.payload for p in await publishes(a, 5)] == [b"0", b"1", b"2", b"3", b"4"]
        assert [p.payload for p in await publishes(b, 5)] == [b"0", b"1", b"2", b"3", b"4"]
        await nothing_more(a)
        await nothing_more(b, 0)


async def test_no_local_and_plain_subscribers_across_nodes(nats_server: NatsServer) -> None:
    async with open_nodes(nats_server, 2) as (n1, n2):
        talker = await client(n1, "talker")
        await subscribe(talker, n1, SubscriptionRequest("chat", 0, no_local=True))
        listener = await client(n2, "listener")
        await subscribe(listener, n2, SubscriptionRequest("chat", 0, no_local=True))
        await talker.send(Publish(topic="chat", payload=b"from talker"))
        await listener.send(Publish(topic="chat", payload=b"from listener"))
        assert [p.payload for p in await publishes(listener, 1)] == [b"from talker"]
        assert [p.payload for p in await publishes(talker, 1)] == [b"from listener"]
        await nothing_more(talker)
        await nothing_more(listener, 0)


async def test_shared_subscription_delivers_each_message_once_across_nodes(
    nats_server: NatsServer,
) -> None:
    async with open_nodes(nats_server, 3) as nodes:
        members = []
        for index, node in enumerate(nodes):
            member = await client(node, f"worker{index}")
            await subscribe(member, node, SubscriptionRequest("$share/g/jobs/+", 0))
            members.append(member)
        pub = await client(nodes[1], "pub")
        total = 60
        for index in range(total):
            await pub.send(Publish(topic=f"jobs/{index % 3}", payload=b"%d" % index))
        received: list[list[bytes]] = [[] for _ in members]

        async def drain(index: int, member: RawClient) -> None:
            with trio.move_on_after(1.5):
                while True:
                    packet = await member.receive(5)
                    assert isinstance(packet, Publish)
                    received[index].append(packet.payload)

        async with trio.open_nursery() as nursery:
            for index, member in enumerate(members):
                nursery.start_soon(drain, index, member)
        everything = sorted(int(p) for got in received for p in got)
        assert everything == list(range(total))  # each once, none lost
        assert sum(1 for got in received if got) >= 2  # spread over the nodes


async def test_retained_set_on_one_node_is_read_and_cleared_on_others(
    nats_server: NatsServer,
) -> None:
    async with open_nodes(nats_server, 3) as (n1, n2, n3):
        setter = await client(n1, "setter")
        await setter.send(Publish(topic="r/a/c", payload=b"kept", retain=True))
        await setter.send(Publish(topic="r/b", payload=b"also", retain=True))
        assert n1.cluster is not None
        await n1.cluster.sync()
        await wait_until(lambda: n2.core.retained.get("r/b") is not None, "retained on n2")
        await wait_until(lambda: n3.core.retained.get("r/b") is not None, "retained on n3")
        reader2 = await client(n2, "reader2")
        await subscribe(reader2, n2, SubscriptionRequest("r/+/c", 0))
        (one,) = await publishes(reader2, 1)
        assert (one.topic, one.payload, one.retain) == ("r/a/c", b"kept", True)
        reader3 = await client(n3, "reader3")
        await subscribe(reader3, n3, SubscriptionRequest("r/#", 0))
        got = await publishes(reader3, 2)
        assert sorted((p.topic, p.payload) for p in got) == [("r/a/c", b"kept"), ("r/b", b"also")]
        # the publisher's real address travels with the retained message
        copy = n2.core.retained.get("r/a/c")
        assert copy is not None and copy.publisher == "setter"
        assert copy.peer.remote is not None and copy.peer.remote.host == "127.0.0.1"
        # cleared on n3: gone on n1
        clearer = await client(n3, "clearer")
        await clearer.send(Publish(topic="r/a/c", payload=b"", retain=True))
        assert n3.cluster is not None
        await n3.cluster.sync()
        await wait_until(lambda: n1.core.retained.get("r/a/c") is None, "cleared on n1")
        late = await client(n1, "late")
        await subscribe(late, n1, SubscriptionRequest("r/#", 0))
        assert [(p.topic, p.payload) for p in await publishes(late, 1)] == [("r/b", b"also")]
        await nothing_more(late)


async def test_a_will_published_on_one_node_reaches_another(nats_server: NatsServer) -> None:
    async with open_nodes(nats_server, 2) as (n1, n2):
        watcher = await client(n2, "watcher")
        await subscribe(watcher, n2, SubscriptionRequest("wills/#", 1))
        await client(n1, "mortal", V311, will=Will(topic="wills/mortal", payload=b"bye", qos=1))
        mortal_conn = next(iter(n1.core.open_connections))
        mortal_conn.connection_lost()  # type: ignore[attr-defined]
        (will,) = await publishes(watcher, 1)
        assert (will.topic, will.payload) == ("wills/mortal", b"bye")


async def test_connecting_on_another_node_takes_the_client_id_over(
    nats_server: NatsServer,
) -> None:
    async with open_nodes(nats_server, 2) as (n1, n2):
        first = await client(n1, "roamer")
        assert n1.cluster is not None
        await n1.cluster.sync()
        second = await client(n2, "roamer")
        packets = await first.expect_closed()
        assert [type(p) for p in packets] == [Disconnect]
        assert packets[0].reason_code == ReasonCode.SESSION_TAKEN_OVER  # type: ignore[union-attr]
        await wait_until(lambda: "roamer" not in n1.core.sessions, "session gone on n1")
        assert n2.core.sessions["roamer"].connection is not None
        old_311 = await client(n1, "roamer311", V311)
        await n1.cluster.sync()
        new_311 = await client(n2, "roamer311", V311)
        assert await old_311.expect_closed() == []  # 3.1.1: closed without a packet
        await second.aclose()
        await new_311.aclose()


def online(nodes: list[Broker], client_id: str) -> list[Broker]:
    """The nodes where ``client_id`` has a connected session."""
    return [
        node
        for node in nodes
        if (session := node.core.sessions.get(client_id)) is not None
        and session.connection is not None
    ]


async def connect_everywhere_at_once(nodes: list[Broker], client_id: str) -> list[RawClient]:
    clients: list[RawClient] = []

    async def connect(node: Broker) -> None:
        clients.append(await client(node, client_id))

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(connect, node)
    return clients  # (kept open by the caller: a dropped client would close its socket)


async def test_simultaneous_connects_leave_exactly_one(nats_server: NatsServer) -> None:
    async with open_nodes(nats_server, 3) as nodes:
        for round_ in range(3):
            client_id = f"racer{round_}"
            clients = await connect_everywhere_at_once(nodes, client_id)
            assert len(clients) == 3
            for node in nodes:
                assert node.cluster is not None
                await node.cluster.sync()
            await wait_until(
                lambda: len(online(nodes, client_id)) == 1,  # noqa: B023 - awaited here
                "exactly one connection left",
            )
            await trio.sleep(0.3)  # and it stays so
            assert len(online(nodes, client_id)) == 1


async def test_a_persistent_session_moves_to_the_node_the_client_reconnects_to(
    nats_server: NatsServer,
) -> None:
    async with open_nodes(nats_server, 2) as (n1, n2):
        first = await client(n1, "keeper", V311, clean_start=False)
        await subscribe(first, n1, SubscriptionRequest("k/#", 1))
        await first.aclose()  # offline: its session stays on n1
        await wait_until(lambda: n1.core.sessions["keeper"].connection is None, "offline")
        pub = await client(n2, "pub")
        for index in range(3):
            await pub.send(
                Publish(topic=f"k/{index}", payload=b"%d" % index, qos=1, packet_id=index + 1)
            )
            assert await pub.receive() == Puback(index + 1)
        await wait_until(
            lambda: len(n1.core.sessions["keeper"].queued_entries) == 3, "queued on n1"
        )
        again = await RawClient.open(n2.port, V311)
        connack = await again.connect("keeper", clean_start=False)
        assert connack.session_present
        got = await publishes(again, 3)
        assert [(p.topic, p.payload, p.qos) for p in got] == [
            ("k/0", b"0", 1),
            ("k/1", b"1", 1),
            ("k/2", b"2", 1),
        ]
        assert "keeper" not in n1.core.sessions
        # its subscription now lives on n2: a publish on n1 reaches it there
        assert n2.cluster is not None
        await n2.cluster.sync()
        local = await client(n1, "local")
        await local.send(Publish(topic="k/after", payload=b"moved", qos=1, packet_id=9))
        assert await local.receive() == Puback(9)
        (after,) = await publishes(again, 1)
        assert after.payload == b"moved"


async def test_a_live_session_is_taken_over_with_its_unacknowledged_messages(
    nats_server: NatsServer,
) -> None:
    async with open_nodes(nats_server, 2) as (n1, n2):
        expiry = Properties(session_expiry_interval=300)
        first = await client(n1, "busy", V5, clean_start=False, properties=expiry)
        await subscribe(first, n1, SubscriptionRequest("b/#", 1))
        pub = await client(n1, "pub")
        await pub.send(Publish(topic="b/1", payload=b"unacked", qos=1, packet_id=1))
        (sent,) = await publishes(first, 1)  # never acknowledged
        assert not sent.dup
        second = await RawClient.open(n2.port, V5)
        connack = await second.connect("busy", clean_start=False, properties=expiry)
        assert connack.session_present
        (again,) = await publishes(second, 1)
        assert (again.payload, again.dup) == (b"unacked", True)
        packets = await first.expect_closed()
        assert [type(p) for p in packets] == [Disconnect]
        assert packets[0].reason_code == ReasonCode.SESSION_TAKEN_OVER  # type: ignore[union-attr]


async def test_qos_1_and_2_are_in_the_stream_before_they_are_acknowledged(
    nats_server: NatsServer,
) -> None:
    async with open_nodes(nats_server, 2) as (n1, _n2):
        pub = await client(n1, "pub", V311)
        await pub.send(Publish(topic="d/1", payload=b"durable one", qos=1, packet_id=1))
        assert await pub.receive() == Puback(1)
        await pub.send(Publish(topic="d/2", payload=b"durable two", qos=2, packet_id=2))
        assert await pub.receive() == Pubrec(2)
        async with open_nats_client(nats_server.url, name="checker") as checker:
            for subject, payload in (("q.d.1", b"durable one"), ("q.d.2", b"durable two")):
                reply = await checker.request(
                    "$JS.API.DIRECT.GET.MQTT_MESSAGES",
                    json.dumps({"last_by_subj": subject}).encode(),
                )
                assert reply.payload == payload
                assert reply.headers is not None and reply.headers.get("c") == "pub"


async def _carried_and_stored(
    checker: NATSClient, pub: RawClient, topic: str, packet_id: int
) -> tuple[int, int]:
    """Publish QoS 1 on ``topic``: (the stream sequence its live copy carried to the
    other nodes, its real one in the stream)."""
    live: list[Msg] = []
    subject = topic_to_subject(topic)
    sid = checker.subscribe(subject, live.append)
    await checker.flush()
    await pub.send(Publish(topic=topic, payload=b"x", qos=1, packet_id=packet_id))
    assert await pub.receive() == Puback(packet_id)
    await wait_until(lambda: bool(live))
    checker.unsubscribe(sid)
    message, _origin, _sequence = decode_wire_parts(topic, live[0].payload, 0.0)
    reply = await checker.request(
        "$JS.API.DIRECT.GET.MQTT_MESSAGES",
        json.dumps({"last_by_subj": topic_to_subject(topic, STREAM_PREFIX)}).encode(),
    )
    assert reply.headers is not None
    return message.sequence, int(reply.headers["Nats-Sequence"])


async def test_a_qos_1_message_is_routed_with_a_lower_bound_of_its_stream_sequence(
    nats_server: NatsServer,
) -> None:
    """Routed while the stream stores it, a QoS 1 message carries the lowest sequence it
    can get: never above its real one (sessions' cursors stay below what they are
    owed), and not far below it either, even from a node that stored nothing for a
    while (its heartbeat reads the stream's last sequence)."""
    async with (
        open_nodes(nats_server, 2) as (n1, n2),
        open_nats_client(nats_server.url, name="checker") as checker,
    ):
        pub1 = await client(n1, "pub1", V311)
        pub2 = await client(n2, "pub2", V311)
        carried, stored = await _carried_and_stored(checker, pub1, "f/1", 1)
        assert carried == stored  # nothing else was stored meanwhile
        for packet_id in range(2, 7):
            carried, stored = await _carried_and_stored(checker, pub1, "f/1", packet_id)
            assert carried == stored
        # n2 stored and received nothing of these: once its heartbeat has asked the
        # stream, its next message carries the exact sequence again
        await trio.sleep(HEARTBEAT_INTERVAL * 2.5)
        carried, stored = await _carried_and_stored(checker, pub2, "f/2", 1)
        assert carried == stored
        # what n2 receives from n1 raises its floor at once (to the sequence n1's
        # message carried: the next one stored is above it)
        sub = await client(n2, "sub")
        await subscribe(sub, n2, SubscriptionRequest("f/1", 0))
        for packet_id in range(7, 10):
            await _carried_and_stored(checker, pub1, "f/1", packet_id)
        await publishes(sub, 3)
        carried, stored = await _carried_and_stored(checker, pub2, "f/2", 2)
        assert stored - 1 <= carried <= stored


async def test_a_publisher_that_does_not_wait_for_pubacks_is_read_no_faster_than_stored(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3.1.1 client sends 500 QoS 1 messages of 1 KiB at once while the stream does not
    answer: the node takes no more than STORE_WINDOW of them (one read's worth more) and
    leaves the rest in the client's socket; once the stream answers, every one is
    acknowledged."""
    count = 500
    held: list[Msg] = []
    answer = ClusterNode._on_stored
    stream_answers = False

    def slow_stream(self: ClusterNode, msg: Msg) -> None:
        if stream_answers:
            answer(self, msg)
        else:
            held.append(msg)

    monkeypatch.setattr(ClusterNode, "_on_stored", slow_stream)
    async with open_nodes(nats_server, 1) as (n1,):
        node = n1.cluster
        assert isinstance(node, ClusterNode)
        pub = await client(n1, "flood", V311)
        data = b"".join(
            encode(Publish(topic="flood/1", payload=b"x" * 1024, qos=1, packet_id=packet_id), V311)
            for packet_id in range(1, count + 1)
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pub.send_raw, data)  # (blocks once the node stops reading)
            await trio.sleep(0.3)
            assert STORE_WINDOW <= len(node._stores) <= STORE_WINDOW + 65536 // 1024
            stream_answers = True
            for msg in held:
                answer(node, msg)
            acks = [await pub.receive(10) for _ in range(count)]
        assert acks == [Puback(packet_id) for packet_id in range(1, count + 1)]


async def test_a_message_the_stream_cannot_take_is_not_acknowledged(
    nats_server: NatsServer,
) -> None:
    async with open_nodes(nats_server, 1) as (n1,):
        sub = await client(n1, "sub")
        await subscribe(sub, n1, SubscriptionRequest("s/#", 1))
        async with open_nats_client(nats_server.url, name="admin") as admin:
            await admin.request("$JS.API.STREAM.DELETE.MQTT_MESSAGES", b"")
        pub = await client(n1, "pub", V5)
        await pub.send(Publish(topic="s/0", payload=b"at most once", qos=0))
        await pub.send(Publish(topic="s/2", payload=b"unstored", qos=2, packet_id=1))
        packets = await pub.expect_closed()
        assert [type(p) for p in packets] == [Disconnect]
        assert packets[0].reason_code == ReasonCode.SERVER_BUSY  # type: ignore[union-attr]
        (only,) = await publishes(sub, 1)
        assert only.payload == b"at most once"  # QoS 2 is routed only once stored
        # QoS 1 is routed while the stream stores it: delivered (at least once), but not
        # acknowledged, so that its publisher sends it again
        pub = await client(n1, "pub", V5)
        await pub.send(Publish(topic="s/1", payload=b"again", qos=1, packet_id=1))
        packets = await pub.expect_closed()
        assert [type(p) for p in packets] == [Disconnect]
        assert packets[0].reason_code == ReasonCode.SERVER_BUSY  # type: ignore[union-attr]
        (again,) = await publishes(sub, 1)
        assert again.payload == b"again"
        await nothing_more(sub)


async def test_a_cancelled_broker_leaves_the_cluster_cleanly_and_quickly(
    nats_server: NatsServer,
) -> None:
    async with open_nodes(nats_server, 1) as (n2,):
        watcher = await client(n2, "watcher")
        await subscribe(watcher, n2, SubscriptionRequest("wills/#", 0))
        config = BrokerConfig(
            listeners=[ListenerConfig(port=0)],
            sys_interval=0,
            shutdown_timeout=1,
            cluster=ClusterConfig(node_name="leaver", nats_urls=[nats_server.url]),
        )
        async with trio.open_nursery() as nursery:
            n1: Broker = await nursery.start(serve, config)
            assert n1.cluster is not None
            origin = n1.cluster.origin
            mortal = await client(n1, "mortal", V311, will=Will(topic="wills/m", payload=b"bye"))
            started = trio.current_time()
            nursery.cancel_scope.cancel()  # as SIGTERM does
        assert trio.current_time() - started < 2.0
        # the will went out once, through NATS, as the broker closed its clients
        (will,) = await publishes(watcher, 1)
        assert will.payload == b"bye"
        # and the node said goodbye: no heartbeat key left for survivors to reap
        async with open_nats_client(nats_server.url, name="checker") as checker:
            nodes = await KeyValue.open(checker, NODES_BUCKET, per_key_ttl=True, ttl=86400)
            entry = await nodes.get(origin)
            assert entry is None or entry.operation != "PUT"
            wills = await KeyValue.open(checker, WILLS_BUCKET)
            assert [e for e in await wills.entries(f"{origin}.>") if e.operation == "PUT"] == []
        await mortal.aclose()


async def test_a_retained_messages_expiry_is_its_keys_ttl(nats_server: NatsServer) -> None:
    async with open_nodes(nats_server, 2) as (n1, n2):
        setter = await client(n1, "setter")
        expiring = Properties(message_expiry_interval=1)
        await setter.send(Publish(topic="e/1", payload=b"brief", retain=True, properties=expiring))
        await setter.send(Publish(topic="e/2", payload=b"lasting", retain=True))
        assert n1.cluster is not None
        await n1.cluster.sync()
        await wait_until(lambda: n2.core.retained.get("e/1") is not None, "on n2")
        async with open_nats_client(nats_server.url, name="checker") as checker:
            bucket = await KeyValue.open(checker, RETAINED_BUCKET, per_key_ttl=True)
            await wait_until(lambda: n2.core.retained.get("e/1") is None, "expired on n2")
            entry = await bucket.get("m.e.1")
            assert entry is None or entry.operation != "PUT"  # gone from the bucket too
            lasting = await bucket.get("m.e.2")
            assert lasting is not None and lasting.operation == "PUT"


async def test_a_node_serves_alone_while_nats_is_gone_and_joins_again(tmp_path: Path) -> None:
    directory = tmp_path / "nats"
    with running_nats_server(directory) as first_server:
        port = first_server.port
        async with open_nodes(first_server, 2) as (n1, n2):
            local = await client(n1, "local-sub")
            await subscribe(local, n1, SubscriptionRequest("l/#", 1))
            remote = await client(n2, "remote-sub")
            await subscribe(remote, n2, SubscriptionRequest("l/#", 1))
            first_server.kill()
            await wait_until(lambda: isinstance(n1.core.cluster, DetachedLink), "n1 detached")
            # alone: QoS 0 reaches local subscribers; QoS 1 cannot be stored: 0x89
            pub = await client(n1, "pub")
            await pub.send(Publish(topic="l/0", payload=b"local only"))
            (only,) = await publishes(local, 1)
            assert only.payload == b"local only"
            await pub.send(Publish(topic="l/1", payload=b"unstorable", qos=1, packet_id=1))
            packets = await pub.expect_closed()
            assert [type(p) for p in packets] == [Disconnect]
            assert packets[0].reason_code == ReasonCode.SERVER_BUSY  # type: ignore[union-attr]
            with running_nats_server(directory, port=port):
                await wait_until(
                    lambda: (
                        all(isinstance(n.cluster, ClusterNode) for n in (n1, n2))
                        and n1.core.cluster is n1.cluster
                    ),
                    "both joined again",
                    timeout=15,
                )
                assert n2.cluster is not None
                await n2.cluster.sync()
                again = await client(n1, "pub2")
                await again.send(Publish(topic="l/2", payload=b"across again", qos=1, packet_id=2))
                assert await again.receive() == Puback(2)
                (back,) = await publishes(remote, 1)
                assert back.payload == b"across again"


async def test_a_broker_that_cannot_reach_nats_does_not_start() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = BrokerConfig(
        listeners=[ListenerConfig(port=0)],
        cluster=ClusterConfig(node_name="lonely", nats_urls=[f"nats://127.0.0.1:{port}"]),
    )
    with pytest.raises(NATSConnectionError):  # as itself: open_broker unwraps one error
        async with open_broker(config):
            raise AssertionError("started without its cluster")
