"""A node cut off from NATS for a while gets what was stored meanwhile (issue 13).

Live messages between nodes travel over core NATS: what is routed to a node while its
connection is down never reaches it. When the node joins again it reads the QoS 1/2
messages stored meanwhile back from the stream for the filters it holds. Node b talks
to nats-server through a relay that the tests cut.
"""

from __future__ import annotations

import json

import trio
from helpers import V311, published, wait_until
from helpers import accepted_client as client
from nats_relay import two_nodes
from nats_server import NatsServer
from rawclient import RawClient

from trio_mqtt import Broker
from trio_mqtt.cluster.node import HEARTBEAT_TTL, STREAM_PREFIX, owner_key
from trio_mqtt.mqtt.packets import (
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from trio_mqtt.nats import open_nats_client


def metric(broker: Broker, name: str) -> float:
    """The value of ``trio_mqtt_<name>`` in the broker's /metrics text."""
    for line in broker.metrics_text().splitlines():
        if line.startswith(f"trio_mqtt_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no trio_mqtt_{name} in the metrics")


async def subscriber(node: Broker) -> RawClient:
    """Client "sub" on ``node``, subscribed to ``c/#`` at QoS 1 (SUBACK checked)."""
    sub = await client(node, "sub")
    await sub.send(Subscribe(1, (SubscriptionRequest("c/#", 1),)))
    assert await sub.receive() == Suback(1, (1,))
    return sub


async def received(raw: RawClient, quiet: float = 1.0) -> list[bytes]:
    """Payloads delivered until nothing came for ``quiet`` seconds (each acknowledged)."""
    payloads = []
    while True:
        with trio.move_on_after(quiet):
            packet = await raw.receive(60)
            assert isinstance(packet, Publish), packet
            payloads.append(packet.payload)
            if packet.qos:
                assert packet.packet_id is not None
                await raw.send(Puback(packet.packet_id))
            continue
        return payloads


async def test_what_was_stored_while_a_node_was_cut_off_reaches_its_subscribers(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(60):
        async with two_nodes(nats_server) as (a, b, relay):
            assert b.cluster is not None
            sub = await subscriber(b)
            pub_a = await client(a, "pub-a", V311)
            pub_b = await client(b, "pub-b", V311)
            await published(pub_a, "c/x", b"before-1", 1, 1)
            await published(pub_a, "c/x", b"before-2", 2, 2)
            await published(pub_b, "c/y", b"own-before", 1, 1)  # from b itself
            # (b's own message may overtake a's QoS 2 one, which went through NATS)
            assert sorted(await received(sub, 0.5)) == [b"before-1", b"before-2", b"own-before"]

            relay.cut()
            await wait_until(lambda: b.cluster is None, "node b cut off")
            assert metric(b, "cluster_nats_connected") == 0
            for packet_id, (payload, qos) in enumerate(
                ((b"while-1", 1), (b"while-2", 2), (b"while-3", 1), (b"while-4", 2)), 10
            ):
                await published(pub_a, "c/x", payload, qos, packet_id)
            relay.refusing = False
            await wait_until(lambda: b.cluster is not None, "node b back", timeout=20)
            await published(pub_a, "c/x", b"after", 1, 20)

            got = await received(sub)
            # what b missed arrives, in stream order, and what is live after it; nothing
            # b had received live before the loss, nothing b's own clients published
            assert sorted(got) == [b"after", b"while-1", b"while-2", b"while-3", b"while-4"]
            assert [p for p in got if p.startswith(b"while")] == [
                b"while-1",
                b"while-2",
                b"while-3",
                b"while-4",
            ]
            # what /metrics says of it, across b's two nodes
            assert metric(b, "cluster_nats_connected") == 1
            assert metric(b, "cluster_joins_total") == 2
            assert metric(b, "cluster_nats_losses_total") == 1
            assert metric(b, "cluster_messages_caught_up_total") == 4
            assert metric(b, "cluster_messages_forwarded_total") == 1  # own-before
            assert metric(b, "cluster_messages_received_total") == 3  # before-1/2, after


async def test_a_node_that_never_lost_nats_reads_nothing_back(nats_server: NatsServer) -> None:
    with trio.fail_after(30):
        async with two_nodes(nats_server) as (a, b, _relay):
            sub = await subscriber(b)
            pub = await client(a, "pub", V311)
            for packet_id in range(1, 4):
                await published(pub, "c/x", b"m%d" % packet_id, 1, packet_id)
            assert await received(sub) == [b"m1", b"m2", b"m3"]


async def test_a_node_back_from_a_nats_loss_takes_its_clients_back(
    nats_server: NatsServer,
) -> None:
    """Its clients are claimed again and their wills recorded under the new node (the old
    node's keys retired, so nobody takes it for dead and publishes their wills); a client
    that connected elsewhere meanwhile is the newer connection, and b's is closed."""
    with trio.fail_after(60):
        async with two_nodes(nats_server) as (a, b, relay):
            watcher = await client(a, "watcher")
            await watcher.send(Subscribe(1, (SubscriptionRequest("wills/#", 0),)))
            assert await watcher.receive() == Suback(1, (0,))
            will = Will(topic="wills/stay", payload=b"gone")
            stay = await client(b, "stay", will=will)
            moved = await client(b, "moved")
            left_a = await client(a, "returner", V311)  # claimed by a, seen by b
            await left_a.aclose()
            assert b.cluster is not None
            old_origin = b.cluster.origin
            assert a.cluster is not None
            await a.cluster.sync()
            await b.cluster.sync()

            relay.cut()
            await wait_until(lambda: b.cluster is None, "node b cut off")
            newcomer = await client(b, "newcomer")  # (not claimed: b is cut off)
            returner = await client(b, "returner", V311)  # left a for b: the newer one
            elsewhere = await client(a, "moved")  # the newer connection of "moved"
            assert a.cluster is not None
            await a.cluster.sync()
            relay.refusing = False
            await wait_until(lambda: b.cluster is not None, "node b back", timeout=20)

            packets = await moved.expect_closed()
            assert [p.reason_code for p in packets] == [0x8E], packets  # type: ignore[union-attr]
            node = b.cluster
            assert node is not None and node.origin != old_origin
            await wait_until(lambda: {"stay", "newcomer", "returner"} <= set(node._claimed))
            await node.settled()
            for client_id in ("stay", "newcomer", "returner"):
                entry = await node.owners.get(owner_key(client_id))
                assert entry is not None and json.loads(entry.value)["origin"] == node.origin
            assert await node.wills.get(f"{node.origin}.{owner_key('stay')}") is not None
            assert not [e for e in await node.wills.entries(f"{old_origin}.>") if e.value]
            old_key = await node.nodes.get(old_origin)
            assert old_key is None or old_key.operation != "PUT"
            # past the old node's heartbeat TTL: nobody took it for dead
            await trio.sleep(HEARTBEAT_TTL + 1)
            with trio.move_on_after(0.5):
                got = await watcher.receive()
                raise AssertionError(f"a will was published: {got}")
            for raw in (stay, newcomer, returner, elsewhere):
                await raw.send(Pingreq())
                assert await raw.receive() == Pingresp()


async def test_a_foreign_message_in_the_stream_is_skipped_not_fatal(
    nats_server: NatsServer,
) -> None:
    """Anyone on NATS may publish to the stream's subjects: what a catch-up reads back
    that no trio-mqtt node wrote is skipped (logged), and the rest still arrives."""
    with trio.fail_after(60):
        async with two_nodes(nats_server) as (a, b, relay):
            sub = await subscriber(b)
            pub_a = await client(a, "pub-a", V311)
            relay.cut()
            await wait_until(lambda: b.cluster is None, "node b cut off")
            async with open_nats_client(nats_server.url, name="stranger") as stranger:
                stranger.publish(f"{STREAM_PREFIX}.c.bogus", b"no envelope here")
                await stranger.flush()
            await published(pub_a, "c/x", b"while", 1, 1)
            relay.refusing = False
            await wait_until(lambda: b.cluster is not None, "node b back", timeout=20)
            assert await received(sub) == [b"while"]
            assert b.cluster is not None  # (still joined)
