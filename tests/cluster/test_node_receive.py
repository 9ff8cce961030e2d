"""A ClusterNode's receiving side in process: NATS bytes in, MQTT packets out.

The node's NATS client has no server: a test feeds it the bytes a server would send
(``NATSConnection.receive_data`` and the reader's ``_dispatch``), and reads what the
core wants to write to its MQTT clients. So a test decides exactly which NATS
subscription each copy of a message arrives on, and when NATS answers a PING.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing
from helpers import Client, make_core

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message
from trio_mqtt.cluster.envelope import encode_wire
from trio_mqtt.cluster.node import ClusterNode
from trio_mqtt.cluster.subjects import topic_to_subject
from trio_mqtt.mqtt.packets import Unsubscribe
from trio_mqtt.nats.client import NATSClient
from trio_mqtt.nats.protocol import NATSConnection


@attrs.define
class ReceivingNode:
    """A core, its ClusterNode and the node's NATS client (nothing runs its tasks), and
    the core's MQTT clients by client id."""

    core: BrokerCore
    node: ClusterNode
    nats: NATSClient
    connection: NATSConnection
    clients: dict[str, Client]
    sent: int = 0  # the origin's last sequence number

    def sids(self, topic_filter: str) -> list[int]:
        """The NATS subscriptions the node holds for ``topic_filter``."""
        return self.node._routes[topic_filter]

    def message(self, topic: str, payload: bytes, *, again: bool = False) -> bytes:
        """A message of origin "a-1" as live traffic carries it (``again``: the same
        sequence number as the last, as for its copy on another subscription)."""
        if not again:
            self.sent += 1
        message = Message(topic, payload, publisher="pub")
        return encode_wire(message, origin="a-1", sequence=self.sent, now=0.0)

    def receive(self, sid: int, topic: str, data: bytes) -> None:
        """NATS delivers ``data`` on subscription ``sid``."""
        subject = topic_to_subject(topic).encode()
        self.connection.receive_data(b"MSG %s %d %d\r\n%s\r\n" % (subject, sid, len(data), data))
        self.nats._dispatch()

    def pong(self) -> None:
        """NATS answers the oldest PING."""
        self.connection.receive_data(b"PONG\r\n")
        self.nats._dispatch()


@asynccontextmanager
async def receiving_node(**subscriptions: str) -> AsyncIterator[ReceivingNode]:
    """A node whose MQTT clients (client id: filter) subscribed before it joined."""
    core = make_core()
    clients = {}
    for client_id, topic_filter in subscriptions.items():
        clients[client_id] = client = Client(core)
        client.connect(client_id)
        client.subscribe((topic_filter, 0))
    connection = NATSConnection()
    stream, _peer = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nats = NATSClient(stream, connection, nursery)
        absent: Any = None  # (the key-value buckets: not used on this path)
        node = ClusterNode(
            core=core,
            name="b",
            nats=nats,
            shared_nats=nats,
            retained=absent,
            owners=absent,
            wills=absent,
            nodes=absent,
            sessions=absent,
        )
        node._nursery = nursery
        core.join_cluster(node, node.interest_changed)
        node.subscribe_existing()
        yield ReceivingNode(core, node, nats, connection, clients)
        nursery.cancel_scope.cancel()


def payloads(client: Client) -> list[bytes]:
    return [p.payload for p in client.publishes()]


async def test_with_one_filter_no_repeat_check_is_made() -> None:
    async with receiving_node(sub="r/#") as r:
        sub = r.clients["sub"]
        gt, parent = r.sids("r/#")  # "r.>" and "r": never both for one message
        for index in range(3):
            r.receive(gt, "r/x", r.message("r/x", b"%d" % index))
        r.receive(parent, "r", r.message("r", b"parent"))
        assert payloads(sub) == [b"0", b"1", b"2", b"parent"]
        assert len(r.node._repeats) == 0  # never asked: no origin remembered
        assert r.node.received == 4


async def test_with_two_filters_a_message_on_both_is_delivered_once() -> None:
    async with receiving_node(a="r/#", b="r/+") as r:
        a, b = r.clients["a"], r.clients["b"]
        data = r.message("r/x", b"once")
        r.receive(r.sids("r/#")[0], "r/x", data)
        r.receive(r.sids("r/+")[0], "r/x", data)
        assert payloads(a) == payloads(b) == [b"once"]
        assert len(r.node._repeats) == 1


async def test_the_check_goes_on_until_nats_answers_after_a_filter_left() -> None:
    async with receiving_node(a="r/#", b="r/+") as r:
        a, b = r.clients["a"], r.clients["b"]
        kept, leaving = r.sids("r/#")[0], r.sids("r/+")[0]
        first = r.message("r/x", b"first")
        r.receive(leaving, "r/x", first)
        assert payloads(a) == payloads(b) == [b"first"]
        b.send(Unsubscribe(2, ("r/+",)))  # one filter left, but a copy is on the way:
        r.receive(kept, "r/x", first)  # dropped as the repeat it is
        assert payloads(a) == []
        await trio.testing.wait_all_tasks_blocked()
        r.pong()  # NATS answered the PING sent after the UNSUB: no copy can follow
        await trio.testing.wait_all_tasks_blocked()
        assert r.node._repeat_grace == 0
        remembered = r.node._repeats._last_state.highest
        r.receive(kept, "r/x", r.message("r/x", b"second"))
        assert payloads(a) == [b"second"]
        assert r.node._repeats._last_state.highest == remembered  # not asked any more


async def test_a_shared_filter_does_not_count_as_a_plain_one() -> None:
    async with receiving_node(a="r/#", b="$share/g/r/#") as r:
        b = r.clients["b"]
        assert r.node._plain_routes == 1
        b.send(Unsubscribe(2, ("$share/g/r/#",)))
        assert r.node._plain_routes == 1 and r.node._repeat_grace == 0
