"""A node whose NATS connection is closed (issue 13).

When the connection to NATS breaks, the NATS client marks itself closed, and the node
stands down at once (``NATSClient.on_closed``): the core gets a ``DetachedLink``, and
QoS 1/2 messages waiting for the stream are refused. The tests mark the node's NATS
client closed as its reader does when the socket breaks, without breaking the socket.

A call into the node may still be under way when that happens (another task was in it),
so the node itself must behave like a ``DetachedLink`` too. Most tests here hold that
window open: they mark the client closed without telling the node (``lose(...,
tell_node=False)``), so the node is never replaced; then clients publish and subscribe
through it. The broker must go on serving, as it does with a ``DetachedLink``: QoS 0
reaches local subscribers only, a QoS 1/2 publisher is disconnected with 0x89, a
SUBSCRIBE is answered at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from helpers import V311, wait_until
from helpers import accepted_client as client
from nats_server import NatsServer
from rawclient import RawClient

from trio_mqtt import Broker, open_broker
from trio_mqtt.cluster.node import ClusterNode, DetachedLink
from trio_mqtt.config import BrokerConfig, ClusterConfig, ListenerConfig
from trio_mqtt.mqtt.packets import (
    Disconnect,
    Packet,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.nats import NATSClient, NATSConnectionClosed


@asynccontextmanager
async def one_node(nats: NatsServer, **settings: object) -> AsyncIterator[Broker]:
    config = BrokerConfig(
        listeners=[ListenerConfig(port=0)],
        sys_interval=0,
        shutdown_timeout=1,
        cluster=ClusterConfig(node_name="n1", nats_urls=[nats.url]),
        **settings,  # type: ignore[arg-type]
    )
    async with open_broker(config) as broker:
        yield broker


def lose(nats: NATSClient, *, tell_node: bool) -> None:
    """What the client's reader does when the socket breaks, the socket left as it is.

    ``tell_node=False``: the node is not told (as if a call into it was under way).
    """
    if not tell_node:
        nats.on_closed = None
    nats._mark_closed(NATSConnectionClosed("connection lost: (test)"))


async def subscribe(raw: RawClient, topic_filter: str, packet_id: int = 1) -> None:
    """SUBSCRIBE (QoS 1) and the SUBACK, which must not wait for NATS."""
    with trio.fail_after(1):
        await raw.send(Subscribe(packet_id, (SubscriptionRequest(topic_filter, 1),)))
        assert await raw.receive() == Suback(packet_id, (1,))


async def still_serving(node: Broker, tag: str) -> None:
    """A new client subscribes; another publishes; the message arrives."""
    receiver = await client(node, f"after-{tag}")
    await subscribe(receiver, f"after/{tag}/#")
    sender = await client(node, f"after-pub-{tag}", V311)
    await sender.send(Publish(f"after/{tag}/x", b"still here"))
    got = await receiver.receive()
    assert isinstance(got, Publish) and got.payload == b"still here", got


def assert_refused(packets: list[Packet]) -> None:
    """What a QoS 1/2 publisher gets when its message cannot be stored (5.0: 0x89)."""
    assert [type(p) for p in packets] == [Disconnect], packets
    assert packets[0].reason_code == ReasonCode.SERVER_BUSY  # type: ignore[union-attr]


def no_unhandled_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("action", ["qos0", "qos1", "qos2", "in-process", "retained"])
async def test_publishing_while_nats_is_closed_does_not_crash_the_broker(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture, action: str
) -> None:
    caplog.set_level(logging.WARNING)
    with trio.fail_after(30):
        async with one_node(nats_server) as n1:
            node = n1.cluster
            assert isinstance(node, ClusterNode)
            sub = await client(n1, "sub")
            await subscribe(sub, "w/#")
            await node.sync()
            forwarded = node.forwarded
            lose(node.nats, tell_node=False)
            pub = await client(n1, "pub")
            if action in ("qos0", "retained"):
                retain = action == "retained"
                await pub.send(Publish("w/0", b"local only", retain=retain))
                got = await sub.receive()
                assert isinstance(got, Publish) and got.payload == b"local only", got
                assert (node.dropped, node.forwarded) == (1, forwarded)
                assert not node._retained_writes  # (NATS is not written to either)
                if retain:
                    assert n1.core.retained.get("w/0") is not None  # kept here
            elif action == "in-process":
                assert await n1.publish("w/0", b"in process") == 1
                got = await sub.receive()
                assert isinstance(got, Publish) and got.payload == b"in process", got
                assert node.dropped == 1
            else:
                qos = 1 if action == "qos1" else 2
                await pub.send(Publish("w/1", b"unstorable", qos=qos, packet_id=7))
                # refused as a DetachedLink refuses it: sent again after reconnecting
                assert_refused(await pub.expect_closed())
                assert not node._stores
                await pub.aclose()
                # and the subscriber got nothing (nothing was stored)
                with trio.move_on_after(0.2):
                    got = await sub.receive()
                    raise AssertionError(f"unexpected {got}")
            assert n1.core.cluster is node  # still in the window: not replaced
            await still_serving(n1, action)
            no_unhandled_errors(caplog)


@pytest.mark.parametrize("topic_filter", ["new/+", "$share/g/new/+"])
async def test_subscribing_while_nats_is_closed_does_not_crash_the_broker(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture, topic_filter: str
) -> None:
    caplog.set_level(logging.WARNING)
    with trio.fail_after(30):
        async with one_node(nats_server) as n1:
            node = n1.cluster
            assert isinstance(node, ClusterNode)
            old = await client(n1, "old")
            await subscribe(old, "old/#")
            await node.sync()
            # the connection that carries this filter's subscription
            lose(
                node.nats if topic_filter.startswith("new") else node.shared_nats,
                tell_node=False,
            )
            newcomer = await client(n1, "newcomer")
            await subscribe(newcomer, topic_filter)  # at once: nothing to wait for
            # the router has it, so the node that joins next subscribes it in NATS
            assert topic_filter in n1.core.router.filters()
            assert topic_filter not in node._routes
            # the last subscriber of a filter leaves: no NATS either
            await old.send(Unsubscribe(2, ("old/#",)))
            assert await old.receive() == Unsuback(2, (0,))
            assert "old/#" not in node._routes
            if not topic_filter.startswith("$share/"):
                # the new subscription works locally (a share group's members get their
                # messages through NATS until the DetachedLink is in place)
                pub = await client(n1, "pub", V311)
                await pub.send(Publish("new/1", b"local"))
                got = await newcomer.receive()
                assert isinstance(got, Publish) and got.payload == b"local", got
            assert n1.core.cluster is node  # still in the window: not replaced
            await still_serving(n1, "sub")
            no_unhandled_errors(caplog)


async def test_a_message_too_large_for_nats_reaches_local_subscribers_only(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad input: larger than the NATS server's max_payload (1 MiB by default)."""
    caplog.set_level(logging.WARNING)
    big = b"x" * (1536 * 1024)
    with trio.fail_after(30):
        async with one_node(nats_server, max_packet_size=4 * 1024 * 1024) as n1:
            node = n1.cluster
            assert isinstance(node, ClusterNode)
            sub = await client(n1, "sub")
            await subscribe(sub, "big/#")
            pub = await client(n1, "pub")
            await pub.send(Publish("big/0", big))
            got = await sub.receive()
            assert isinstance(got, Publish) and got.payload == big
            assert node.dropped == 1
            assert any(
                "reached this node's subscribers only" in r.getMessage() for r in caplog.records
            )
            # QoS 1 cannot be stored: refused (0x89), logged
            await pub.send(Publish("big/1", big, qos=1, packet_id=1))
            assert_refused(await pub.expect_closed())
            assert any("could not be stored" in r.getMessage() for r in caplog.records)
            assert not node.nats.is_closed  # the node stays in the cluster
            await still_serving(n1, "big")
            assert not [r for r in caplog.records if r.exc_info]


async def test_the_core_has_a_detached_link_while_a_failed_node_winds_down(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the node's block ends with NATS lost, its last steps (the last session save,
    the watches stopped, the NATS clients closed) let other tasks run; the core refuses
    what it cannot store meanwhile instead of acting as a single broker."""
    seen: list[str] = []
    original = ClusterNode.save_sessions_once

    async def spying(self: ClusterNode, *, every: bool = False) -> None:
        seen.append(type(self.core.cluster).__name__)
        await original(self, every=every)

    monkeypatch.setattr(ClusterNode, "save_sessions_once", spying)
    with trio.fail_after(30):
        async with one_node(nats_server) as n1:
            nats_server.kill()
            await wait_until(lambda: n1.cluster is None, "n1 detached")
            assert seen and seen[-1] == "DetachedLink", seen  # the node's last save
            assert "NoneType" not in seen, seen
            assert isinstance(n1.core.cluster, DetachedLink)


async def test_a_node_stands_down_the_moment_nats_is_found_closed(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The core gets its DetachedLink at once: a share group's member on this node gets
    this node's messages again (through NATS it cannot any more)."""
    caplog.set_level(logging.WARNING)
    with trio.fail_after(30):
        async with one_node(nats_server) as n1:
            node = n1.cluster
            assert isinstance(node, ClusterNode)
            member = await client(n1, "member")
            await subscribe(member, "$share/g/s/+")
            plain = await client(n1, "plain")
            await subscribe(plain, "s/#")
            await node.sync()
            lose(node.shared_nats, tell_node=True)
            assert isinstance(n1.core.cluster, DetachedLink)
            assert not n1.core.router.shared_elsewhere
            pub = await client(n1, "pub", V311)
            await pub.send(Publish("s/1", b"here"))
            for receiver in (member, plain):
                with trio.fail_after(1):
                    got = await receiver.receive()
                assert isinstance(got, Publish) and got.payload == b"here", got
            await still_serving(n1, "stood-down")
            no_unhandled_errors(caplog)


async def test_messages_waiting_for_the_stream_are_refused_when_nats_is_lost(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer can come for them: their publishers are disconnected (0x89) at once, to
    send them again, rather than left waiting for an acknowledgement."""
    monkeypatch.setattr(ClusterNode, "_on_stored", lambda self, msg: None)  # answer lost
    with trio.fail_after(30):
        async with one_node(nats_server) as n1:
            node = n1.cluster
            assert isinstance(node, ClusterNode)
            pub = await client(n1, "pub")
            await pub.send(Publish("w/1", b"in the air", qos=1, packet_id=3))
            await wait_until(lambda: bool(node._stores), "the store is sent")
            lose(node.nats, tell_node=True)
            with trio.fail_after(1):
                assert_refused(await pub.expect_closed())
            assert not node._stores
