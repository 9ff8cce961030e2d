"""A session that moves between nodes gets what was published while it moved (issue 13).

From the moment the old node lets go of a session until the new node's NATS
subscriptions for it are in place, messages for it reach neither node. The new node
reads the QoS 1/2 ones back from the stream and delivers those the old node had not
routed to the session, once each. Node b talks to nats-server through a relay that
delays what it sends, which holds that window open long enough to publish into it.
"""

from __future__ import annotations

import trio
from helpers import V311, deliveries, published, wait_until
from helpers import accepted_client as client
from nats_relay import two_nodes
from nats_server import NatsServer
from rawclient import RawClient

from trio_mqtt.cluster.node import ClusterNode
from trio_mqtt.mqtt.packets import (
    Connack,
    Suback,
    Subscribe,
    SubscriptionRequest,
)


async def test_what_is_published_while_a_session_moves_reaches_it_once(
    nats_server: NatsServer,
) -> None:
    async with two_nodes(nats_server) as (a, b, relay):
        assert isinstance(b.cluster, ClusterNode) and isinstance(a.cluster, ClusterNode)
        keeper = await client(a, "keeper", V311, clean_start=False)
        await keeper.send(Subscribe(1, (SubscriptionRequest("k/#", 2),)))
        assert isinstance(await keeper.receive(), Suback)
        await a.cluster.sync()
        await keeper.aclose()  # offline: its session and queue stay on a
        await wait_until(lambda: a.core.sessions["keeper"].connection is None, "offline")
        pub_a = await client(a, "pub-a")
        pub_b = await client(b, "pub-b")
        # before the move: routed to the session on a (b's arrive there live) and handed
        # over with it; a reads them back too but must not deliver them again
        await published(pub_a, "k/before-a", b"before-a", 1, 1)
        await published(pub_b, "k/before-b1", b"before-b1", 1, 1)
        await published(pub_b, "k/before-b2", b"before-b2", 2, 2)
        await wait_until(lambda: len(a.core.sessions["keeper"].queued_entries) == 3, "queued on a")

        relay.delay = 0.5  # what b sends (the handover request, its SUB) is late
        moved = await RawClient.open(b.port, V311)
        connack: list[Connack] = []

        async def reconnect() -> None:
            connack.append(await moved.connect("keeper", clean_start=False))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reconnect)
            await wait_until(lambda: "keeper" not in a.core.sessions, "handed over", timeout=5)
            # the session has left a; b has not subscribed k/# yet: live, these reach
            # nobody (b's own are late too, through the relay)
            await published(pub_a, "k/gap-a1", b"gap-a1", 1, 2)
            await published(pub_a, "k/gap-a2", b"gap-a2", 2, 3)
            await published(pub_b, "k/gap-b", b"gap-b", 1, 3)
        assert connack[0].session_present
        relay.delay = 0.0
        await b.cluster.sync()
        await published(pub_a, "k/after", b"after", 1, 4)  # live, to b

        got = [packet.payload for packet in await deliveries(moved, 7, quiet=1.5)]
        assert sorted(got) == sorted(
            [
                b"before-a",
                b"before-b1",
                b"before-b2",
                b"gap-a1",
                b"gap-a2",
                b"gap-b",
                b"after",
            ]
        ), got
        assert not b.cluster._watches  # (the read-back is over)
