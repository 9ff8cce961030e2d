"""Topics and filters too long for a NATS control line (issue 13).

nats-server closes a connection that sends a control line over its ``max_control_line``
(4 KiB by default), and MQTT allows topics of up to 65,535 bytes. One client's long
topic or filter must not cut its node off NATS (and, re-sent at every join, keep it
off): such a message reaches the node's own subscribers only (QoS 1/2: refused, 0x89),
such a filter is served by this node only, each logged, and the node stays connected.
"""

from __future__ import annotations

import logging

import pytest
import trio
from helpers import V5
from helpers import accepted_client as client
from nats_server import NatsServer
from rawclient import RawClient

from trio_mqtt.cluster.node import ClusterNode
from trio_mqtt.mqtt.packets import Publish

from .test_closed_window import assert_refused, one_node, still_serving, subscribe

LONG = "a/" + "b" * 5000  # one level longer than a control line; valid MQTT


async def test_a_long_topic_reaches_local_subscribers_and_the_node_stays_connected(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_mqtt.cluster")
    with trio.fail_after(30):
        async with one_node(nats_server) as n1:
            node = n1.cluster
            assert isinstance(node, ClusterNode)
            sub = await client(n1, "sub")
            await subscribe(sub, "a/#")
            await node.sync()
            pub = await client(n1, "pub")
            for _ in range(5):
                await pub.send(Publish(LONG, b"long topic"))
                got = await sub.receive()
                assert isinstance(got, Publish) and got.topic == LONG, got
            assert node.dropped == 5
            # any client can send these as fast as it likes: one log line, not five
            local_only = "reached this node's subscribers only"
            lines = [r for r in caplog.records if local_only in r.getMessage()]
            assert len(lines) == 1, [r.getMessage()[:100] for r in lines]
            assert len(lines[0].getMessage()) < 1000  # the topic is cut short
            qos1 = await RawClient.open(n1.port, V5)
            assert (await qos1.connect("pub1")).reason_code == 0
            await qos1.send(Publish(LONG, b"cannot be stored", qos=1, packet_id=3))
            assert_refused(await qos1.expect_closed())
            await node.sync()  # a PING round trip: the connection is still up
            assert not node.nats.is_closed
            assert n1.cluster is node
            await still_serving(n1, "long-topic")
    assert any("max_control_line" in r.getMessage() for r in caplog.records)


async def test_a_long_filter_is_served_locally_and_the_node_stays_connected(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_mqtt.cluster")
    with trio.fail_after(30):
        async with one_node(nats_server) as n1:
            node = n1.cluster
            assert isinstance(node, ClusterNode)
            sub = await client(n1, "long-sub")
            await subscribe(sub, LONG + "/#")  # answered at once: nothing for NATS to confirm
            await node.sync()
            assert not node.nats.is_closed
            assert LONG + "/#" not in node._routes  # not in NATS: this node only
            pub = await client(n1, "pub")
            await pub.send(Publish(LONG + "/x", b"local"))
            got = await sub.receive()
            assert isinstance(got, Publish) and got.payload == b"local", got
            # joining again subscribes every filter the router has: not a failure
            node.subscribe_existing()
            await node.sync()
            assert not node.nats.is_closed
            await still_serving(n1, "long-filter")
    assert any("max_control_line" in r.getMessage() for r in caplog.records)
