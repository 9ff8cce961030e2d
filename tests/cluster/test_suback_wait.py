"""A SUBACK in a cluster goes out once NATS has the node's new subscriptions.

Node b talks to nats-server through a relay that can delay what b sends by a few hundred
milliseconds, so the race of a message published on node a right after the SUBACK is
deterministic: without the wait, node b's NATS subscription would arrive after the
message and the subscriber would miss it.
"""

from __future__ import annotations

import logging

import pytest
import trio
from helpers import V5, V311
from helpers import accepted_client as client
from nats_relay import two_nodes
from nats_server import NatsServer
from rawclient import RawClient

from trio_mqtt.cluster import node as node_module
from trio_mqtt.mqtt.packets import (
    Disconnect,
    Properties,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)

DELAY = 0.3


async def timed_suback(raw: RawClient, topic_filter: str, packet_id: int = 1) -> float:
    """SUBSCRIBE to ``topic_filter`` (QoS 1); how long the SUBACK took."""
    start = trio.current_time()
    await raw.send(Subscribe(packet_id, (SubscriptionRequest(topic_filter, 1),)))
    suback = await raw.receive(10)
    assert suback == Suback(packet_id, (1,)), suback
    return trio.current_time() - start


@pytest.mark.parametrize("topic_filter", ["race/+", "$share/g/race/+"])
async def test_a_message_published_elsewhere_right_after_the_suback_arrives(
    nats_server: NatsServer, topic_filter: str
) -> None:
    with trio.fail_after(30):
        async with two_nodes(nats_server) as (a, b, relay):
            subscriber = await client(b, "subscriber")
            publisher = await client(a, "publisher", V311)
            relay.delay = DELAY  # node b's SUB reaches NATS DELAY late
            assert await timed_suback(subscriber, topic_filter) >= DELAY - 0.05
            # at once, on the other node
            await publisher.send(Publish("race/1", b"just after", qos=1, packet_id=1))
            assert await publisher.receive(10) == Puback(1)
            got = await subscriber.receive(5)
            assert isinstance(got, Publish), got
            assert (got.topic, got.payload) == ("race/1", b"just after")


async def test_a_filter_nats_has_already_is_answered_at_once(nats_server: NatsServer) -> None:
    with trio.fail_after(30):
        async with two_nodes(nats_server) as (_a, b, relay):
            first = await client(b, "first")
            second = await client(b, "second")
            await timed_suback(first, "same/#")
            relay.delay = 1.0
            # the filter is in NATS already: no wait for NATS, which would take 1 s now
            assert await timed_suback(second, "same/#") < 0.5
            assert await timed_suback(second, "$share/g/same/#", 2) >= 1.0 - 0.05  # a new one


async def test_nats_not_answering_delays_the_suback_at_most_the_timeout(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(node_module, "SUBACK_WAIT_TIMEOUT", 0.5)
    caplog.set_level(logging.INFO, logger="trio_mqtt.cluster")
    with trio.fail_after(30):
        async with two_nodes(nats_server) as (_a, b, relay):
            subscriber = await client(b, "patient")
            relay.delay = 5.0
            assert 0.45 <= await timed_suback(subscriber, "slow/1") < 2.0
            assert 0.45 <= await timed_suback(subscriber, "slow/2", 2) < 2.0
            warnings = [
                r.getMessage()
                for r in caplog.records
                if r.levelno == logging.WARNING and "did not confirm" in r.getMessage()
            ]
            assert len(warnings) == 1, warnings  # once for the episode
            assert "'patient'" in warnings[0]
            # the local subscription works meanwhile
            local = await client(b, "local", V311)
            await local.send(Publish("slow/1", b"here", qos=0))
            got = await subscriber.receive(5)
            assert isinstance(got, Publish) and got.payload == b"here"


async def test_a_session_taken_over_gets_its_connack_once_nats_has_its_subscriptions(
    nats_server: NatsServer,
) -> None:
    # a persistent session subscribed on node a resumes on node b: its subscription is new
    # to b, whose NATS commands arrive DELAY late; a message published on a right after
    # the CONNACK (session present) must still reach it
    persistent = {"clean_start": False, "properties": Properties(session_expiry_interval=300)}
    with trio.fail_after(30):
        async with two_nodes(nats_server) as (a, b, relay):
            first = await RawClient.open(a.port, V5)
            assert (await first.connect("mover", **persistent)).reason_code == 0
            assert await timed_suback(first, "moved/#") < 1.0
            await first.send(Disconnect())
            await first.aclose()
            publisher = await client(a, "publisher", V311)
            relay.delay = DELAY
            second = await RawClient.open(b.port, V5)
            started = trio.current_time()
            connack = await second.connect("mover", **persistent)
            assert connack.reason_code == 0 and connack.session_present, connack
            assert trio.current_time() - started >= DELAY - 0.05
            await publisher.send(Publish("moved/1", b"after the connack", qos=1, packet_id=1))
            assert await publisher.receive(10) == Puback(1)
            got = await second.receive(5)
            assert isinstance(got, Publish), got
            assert (got.topic, got.payload) == ("moved/1", b"after the connack")


async def test_an_in_process_subscription_starts_once_nats_has_it(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(30):
        async with two_nodes(nats_server) as (a, b, relay):
            publisher = await client(a, "publisher", V311)
            relay.delay = DELAY
            started = trio.current_time()
            async with b.subscribe("inproc/#") as messages:
                assert trio.current_time() - started >= DELAY - 0.05
                await publisher.send(Publish("inproc/1", b"from a", qos=1, packet_id=1))
                assert await publisher.receive(10) == Puback(1)
                with trio.fail_after(5):
                    got = await messages.receive()
                assert (got.topic, got.payload) == ("inproc/1", b"from a")
