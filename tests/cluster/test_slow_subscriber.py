"""A slow subscriber on one node loses nothing that other nodes' clients publish at
QoS 1/2 (issue 13).

On one node a publisher feeding a slow subscriber is held back; messages from other
nodes cannot be, so a slow subscriber's queue fills up with them. What does not fit is
not dropped: it is in the stream already, and the node reads it back for that
subscriber as its queue empties.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from helpers import V311, Client, deliveries, make_core, published, wait_until
from helpers import accepted_client as client
from nats_server import NatsServer
from rawclient import RawClient

from trio_mqtt import Broker, open_broker
from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message, StoredMessage
from trio_mqtt.cluster.envelope import Origin
from trio_mqtt.cluster.node import SESSION_CHECK_ALL, ClusterNode, Spilled, owner_key
from trio_mqtt.config import BrokerConfig, ClusterConfig, ListenerConfig
from trio_mqtt.mqtt.packets import (
    Disconnect,
    Properties,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsubscribe,
)
from trio_mqtt.nats.client import NATSConnectionClosed

DEFAULT_QUEUE = BrokerConfig().max_queued_bytes


@asynccontextmanager
async def nodes(nats: NatsServer, queue: int) -> AsyncIterator[tuple[Broker, Broker]]:
    """Nodes a and b; ``queue``: node b's max_queued_bytes, what fits in the queue of a
    subscriber that does not read."""
    async with AsyncExitStack() as stack:
        found = []
        for name, max_queued_bytes in (("a", DEFAULT_QUEUE), ("b", queue)):
            config = BrokerConfig(
                listeners=[ListenerConfig(port=0)],
                sys_interval=0,
                shutdown_timeout=1,
                max_queued_bytes=max_queued_bytes,
                cluster=ClusterConfig(node_name=name, nats_urls=[nats.url]),
            )
            found.append(await stack.enter_async_context(open_broker(config)))
        yield found[0], found[1]


@pytest.mark.parametrize(
    ("queue", "count", "size"),
    [
        (64 * 1024, 600, 1000),  # about 10 times what fits
        (DEFAULT_QUEUE, 400, 64 * 1024),  # the default: 25 MiB for a 16 MiB queue
    ],
    ids=["small-queue", "defaults"],
)
async def test_a_slow_subscriber_gets_every_message_from_other_nodes(
    nats_server: NatsServer, queue: int, count: int, size: int
) -> None:
    async with nodes(nats_server, queue) as (a, b):
        slow = await client(b, "slow", V311)
        await slow.send(Subscribe(1, (SubscriptionRequest("s/#", 2),)))
        assert isinstance(await slow.receive(), Suback)
        assert b.cluster is not None
        await b.cluster.sync()
        pub = await client(a, "pub", V311)
        payload = b"x" * size
        for index in range(count):
            await published(pub, f"s/{index}", payload, 2 if index % 5 == 0 else 1, index + 1)
        # the subscriber had read nothing so far; now it reads everything
        got = [packet.topic for packet in await deliveries(slow, count, quiet=0.5)]
        # every one, once, in the order published (the queue's, then the stream's)
        assert got == [f"s/{index}" for index in range(count)], (
            f"{len(got)} of {count}, {len(set(got))} different"
        )
        assert b.core.stats.messages_dropped == 0  # (none counted as lost either)
        figures = b.cluster_figures()
        assert figures.kept == 0 and 0 < figures.refilled < count
        assert f"trio_mqtt_cluster_messages_refilled_total {figures.refilled}.0" in (
            b.metrics_text()
        )


async def test_what_was_kept_for_a_slow_session_moves_with_it(nats_server: NatsServer) -> None:
    async with nodes(nats_server, 64 * 1024) as (a, b):
        assert b.cluster is not None
        slow = await client(b, "slow", V311, clean_start=False)
        await slow.send(Subscribe(1, (SubscriptionRequest("s/#", 1),)))
        assert isinstance(await slow.receive(), Suback)
        await b.cluster.sync()
        pub = await client(a, "pub", V311)
        count = 300
        for index in range(count):
            await published(pub, f"s/{index}", b"x" * 1000, 1, 1)
        await wait_until(lambda: "slow" in b.cluster._spilled, "kept in the stream")  # type: ignore[attr-defined]
        assert 0 < b.cluster_figures().kept < count
        assert "trio_mqtt_cluster_messages_kept " in b.metrics_text()
        # it reconnects on node a before reading anything on b
        moved = await RawClient.open(a.port, V311)
        assert (await moved.connect("slow", clean_start=False)).session_present
        got = [packet.topic for packet in await deliveries(moved, count, quiet=1.5)]
        # every one, once (nothing twice within 1.5 s after the last)
        assert sorted(got) == sorted(f"s/{index}" for index in range(count)), len(got)


def test_a_sessions_record_keeps_its_cursor_below_what_was_kept_for_it() -> None:
    """A survivor that rebuilds the session after its node's death reads the stream
    from the record's cursor: it must not have passed what waits in the stream."""
    core, node = node_without_nats()
    slow = Client(core)
    slow.connect("slow", clean_start=False, properties=Properties(session_expiry_interval=60))
    slow.subscribe(("s/#", 1))
    session = core.sessions["slow"]
    subscriptions = core.router.subscriptions_of("slow")
    record, _seen = node._session_record(session, subscriptions, 500)
    assert json.loads(record)["acked"] == 500  # nothing outstanding: all it saw
    node._spilled["slow"] = Spilled(session, {("a", 7): (120, 0.0), ("", 130): (130, 0.0)})
    record, _seen = node._session_record(session, subscriptions, 500)
    assert json.loads(record)["acked"] == 119


def node_without_nats(kind: type[ClusterNode] = ClusterNode) -> tuple[BrokerCore, Any]:
    """A core and a cluster node (of ``kind``) that never reaches NATS."""
    core = make_core()
    node = kind(
        core=core,
        name="b",
        nats=None,  # type: ignore[arg-type]
        shared_nats=None,  # type: ignore[arg-type]
        retained=None,  # type: ignore[arg-type]
        owners=None,  # type: ignore[arg-type]
        wills=None,  # type: ignore[arg-type]
        nodes=None,  # type: ignore[arg-type]
        sessions=None,  # type: ignore[arg-type]
    )
    return core, node


def test_a_sessions_signature_changes_with_what_its_record_holds() -> None:
    """Records are rewritten only when the signature changes: it must follow the
    subscriptions' options, not only their filters, and stay put while nothing changed."""
    core, node = node_without_nats()
    client = Client(core)
    client.connect("keeper", clean_start=False, properties=Properties(session_expiry_interval=60))
    client.subscribe(("s/#", 0))
    session = core.sessions["keeper"]

    def signature() -> object:
        return node._session_signature(session, core.router.subscriptions_of("keeper"))

    first = signature()
    assert signature() == first
    client.subscribe(("s/#", 1))  # the same filter, another QoS
    assert signature() != first
    second = signature()
    client.subscribe(("t", 0))
    assert signature() != second


async def test_only_sessions_marked_changed_are_checked_between_full_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checking every persistent session every 0.2 s cost a node 7 % of a core per
    10,000 idle ones: between full checks (every SESSION_CHECK_ALL s), only those the
    core marked as changed are looked at, and an ended one's record goes at once."""
    core, node = node_without_nats()
    records: dict[str, bytes] = {}

    failures: list[Exception] = []

    class Bucket:
        async def put(self, key: str, value: bytes) -> int:
            if failures:
                raise failures.pop()
            records[key] = value
            return 1

        async def delete(self, key: str) -> None:
            records.pop(key, None)

    node.sessions = Bucket()
    checked: list[str] = []
    signature = ClusterNode._session_signature

    def spying(self: ClusterNode, session: Any, subscriptions: Any) -> object:
        checked.append(session.client_id)
        return signature(self, session, subscriptions)

    monkeypatch.setattr(ClusterNode, "_session_signature", spying)
    clients = []
    for number in range(3):
        client = Client(core)
        client.connect(
            f"c{number}", clean_start=False, properties=Properties(session_expiry_interval=60)
        )
        client.subscribe(("s/#", 1))
        clients.append(client)
    await node.save_sessions_once()  # the first: every session
    assert sorted(checked) == ["c0", "c1", "c2"] and len(records) == 3
    checked.clear()
    await node.save_sessions_once()
    assert checked == []  # nothing changed, nothing marked
    clients[1].subscribe(("more", 1))
    failures.append(NATSConnectionClosed("lost"))
    with pytest.raises(NATSConnectionClosed):
        await node.save_sessions_once()  # not written: looked at again next time
    await node.save_sessions_once()
    assert checked == ["c1", "c1"]
    assert b"more" in records[next(key for key in records if key.endswith(owner_key("c1")))]
    checked.clear()
    clients[2].send(Disconnect(properties=Properties(session_expiry_interval=0)))
    await node.save_sessions_once()  # its session ended: its record goes
    assert len(records) == 2 and checked == []
    core.clock.now += SESSION_CHECK_ALL  # type: ignore[attr-defined]
    await node.save_sessions_once()
    assert sorted(checked) == ["c0", "c1"]
    core.leave_cluster()  # nobody looks any more: nothing is marked
    clients[0].subscribe(("other", 1))
    assert core.take_changed_sessions() is None


async def test_what_was_kept_for_a_session_is_not_given_to_the_next_one() -> None:
    """A client that connects again with a clean start has a new session: what was kept
    for the old one is gone with it (and is not read back for the new one)."""
    core, node = node_without_nats()
    slow = Client(core)
    slow.connect("slow")
    message = StoredMessage.of(Message("s/1", b"x", 1), 9)
    node._routing = (message.payload, ("a", 1))
    assert node.spill("slow", message)
    assert node.kept() == 1
    again = Client(core)
    # (clean start: a new session; one that outlives its connection)
    again.connect("slow", properties=Properties(session_expiry_interval=60))
    again.subscribe(("s/#", 1))
    assert not await node._refill("slow")  # (nothing read: NATS would be needed)
    assert node.kept() == 0
    node._routing = (message.payload, ("a", 1))
    assert node.spill("slow", message)  # kept for the new session, as its own
    assert node._spilled["slow"].session is core.sessions["slow"]
    again.drop()  # (gone offline: nothing is read back until it is back)
    assert not await node._refill("slow")
    assert node.kept() == 1
    back = Client(core)
    back.connect("slow", clean_start=False)  # (back, same session)
    back.send(Unsubscribe(2, ("s/#",)))
    assert not await node._refill("slow")  # nothing to read back for: forgotten
    assert node.kept() == 0 and not core.sessions["slow"].spilling


@attrs.define(eq=False)
class NodeOnAStream(ClusterNode):
    """A node whose stream is a list (no NATS): what ``_refill`` reads back."""

    stream: list[tuple[StoredMessage, Origin]] = attrs.Factory(list)
    reads: int = 0

    async def _direct_get(
        self, subject: str, first: int, batch: int
    ) -> tuple[list[tuple[StoredMessage, Origin]], int | None]:
        self.reads += 1
        await trio.lowlevel.checkpoint()  # (as a request would: fail_after can end a loop)
        got = [found for found in self.stream if found[0].sequence >= first][:batch]
        return got, (got[-1][0].sequence if len(got) == batch else None)

    async def _stream_last(self) -> int:
        return self.stream[-1][0].sequence if self.stream else 0


async def test_the_read_back_moves_on_past_what_was_not_kept() -> None:
    """A kept message far after its lower bound (a node's floor can lag behind the
    stream): each read goes on after the last, and the message is found."""
    core, node = node_without_nats(NodeOnAStream)
    slow = Client(core)
    slow.connect("slow")
    slow.subscribe(("s/#", 1))
    others = [
        (StoredMessage.of(Message("s/o", b"o", 1), seq), Origin("c", seq)) for seq in range(1, 1300)
    ]
    kept = StoredMessage.of(Message("s/kept", b"k", 1), 1300)
    node.stream = [*others, (kept, Origin("a", 77))]
    node._routing = (kept.payload, ("a", 77))
    assert node.spill("slow", StoredMessage.of(kept, 5))  # (carried a lower bound of 5)
    with trio.fail_after(5):
        while await node._refill("slow"):
            pass
    assert node.kept() == 0
    assert [p.topic for p in slow.publishes()] == ["s/kept"]
    assert node.reads <= 6  # 1,300 messages, 500 a read, 2 subjects: on each time
