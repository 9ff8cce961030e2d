"""A SUBACK in a cluster goes out once NATS has the node's new subscriptions.

Node b talks to nats-server through a relay that can delay what b sends by a few hundred
milliseconds, so the race of a message published on node a right after the SUBACK is
deterministic: without the wait, node b's NATS subscription would arrive after the
message and the subscriber would miss it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from helpers import V5, V311
from nats_server import NatsServer
from rawclient import RawClient

from trio_mqtt import Broker, open_broker
from trio_mqtt.cluster import node as node_module
from trio_mqtt.config import BrokerConfig, ClusterConfig, ListenerConfig
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


class DelayingRelay:
    """A TCP relay to nats-server; what its clients send arrives ``delay`` seconds late.

    Bytes keep their order; the delay applies to bytes as they come in, and setting it
    back to 0 lets what waits through at once. Bytes from nats-server pass at once.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, downstream: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await downstream.aclose()
            return
        async with downstream, upstream, trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[tuple[float, bytes]](float("inf"))
            nursery.start_soon(self._read, downstream, send, nursery.cancel_scope)
            nursery.start_soon(self._write_late, receive, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pass, upstream, downstream, nursery.cancel_scope)

    async def _read(
        self,
        source: trio.SocketStream,
        late: trio.MemorySendChannel[tuple[float, bytes]],
        scope: trio.CancelScope,
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                late.send_nowait((trio.current_time(), data))
        except trio.BrokenResourceError:
            scope.cancel()
        await late.aclose()  # (EOF: the writer sends what is left, then ends the relay)

    async def _write_late(
        self,
        late: trio.MemoryReceiveChannel[tuple[float, bytes]],
        target: trio.SocketStream,
        scope: trio.CancelScope,
    ) -> None:
        try:
            async for arrived, data in late:
                # (polled: the test may change the delay while bytes wait)
                while trio.current_time() < arrived + self.delay:  # noqa: ASYNC110
                    await trio.sleep(0.005)
                await target.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()

    async def _pass(
        self, source: trio.SocketStream, target: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await target.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()


@asynccontextmanager
async def two_nodes(nats: NatsServer) -> AsyncIterator[tuple[Broker, Broker, DelayingRelay]]:
    """Node a on nats-server directly, node b through a ``DelayingRelay`` (no delay yet)."""
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)  # (once the nodes have left)
        relay = DelayingRelay(nats.port)
        await nursery.start(relay.run)
        nodes = []
        for name, port in (("a", nats.port), ("b", relay.port)):
            config = BrokerConfig(
                listeners=[ListenerConfig(port=0)],
                sys_interval=0,
                shutdown_timeout=1,
                cluster=ClusterConfig(node_name=name, nats_urls=[f"nats://127.0.0.1:{port}"]),
            )
            nodes.append(await stack.enter_async_context(open_broker(config)))
        try:
            yield nodes[0], nodes[1], relay
        finally:
            relay.delay = 0.0  # node b leaves without waiting for the relay


async def client(node: Broker, client_id: str, version=V5) -> RawClient:  # type: ignore[no-untyped-def]
    raw = await RawClient.open(node.port, version)
    connack = await raw.connect(client_id)
    assert connack.reason_code == 0, connack
    return raw


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
