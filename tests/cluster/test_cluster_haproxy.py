"""Three trio-mqtt processes, one nats-server, and Debian's HAProxy in front.

HAProxy balances round robin and sends PROXY v2 headers, so consecutive clients land on
different nodes and everything between them crosses NATS. Which node serves a client
is read from the nodes' logs ("connected client=... client_id=..."), which also show
the client's real address from the PROXY header.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import trio
from integration.haproxy_helpers import RunningHAProxy, run_haproxy
from integration.paho_helpers import V5, V311, PahoClient, Received, blocking, paho_client
from integration.test_cli_process import PYTHON_M, BrokerProcess, broker_process
from nats_server import NatsServer
from rawclient import RawClient
from tools import require_tool

from trio_mqtt.mqtt.packets import (
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
)

NODES = ("n1", "n2", "n3")
V311_RAW = ProtocolVersion.V311


@attrs.frozen
class Cluster:
    haproxy: RunningHAProxy
    nodes: dict[str, BrokerProcess]

    async def node_of(self, client_id: str) -> tuple[str, str]:
        """(node name, logged client address) of the node that accepted ``client_id``."""
        quoted = re.escape(repr(client_id))
        pattern = re.compile(
            rf": connected client=(?P<client>\S+) via proxy \S+ client_id={quoted}"
        )
        with trio.fail_after(10):
            while True:
                for name, node in self.nodes.items():
                    match = pattern.search(node.output)
                    if match is not None:
                        return name, match["client"]
                await trio.sleep(0.05)
                for node in self.nodes.values():
                    with trio.move_on_after(0.01):
                        await node._read_more()


def node_config(name: str, nats: NatsServer) -> str:
    return f"""\
[broker]
sys_interval = 0
shutdown_timeout = 1

[[listeners]]
name = "lb"
bind = "127.0.0.1:0"
proxy_protocol = {{ mode = "required", timeout = 5 }}

[cluster]
node_name = "{name}"
nats_urls = ["{nats.url}"]
"""


@asynccontextmanager
async def three_nodes_behind_haproxy(tmp_path: Path, nats: NatsServer) -> AsyncIterator[Cluster]:
    haproxy = require_tool("haproxy")
    async with AsyncExitStack() as stack:
        nodes: dict[str, BrokerProcess] = {}
        ports: dict[str, int] = {}
        for name in NODES:
            config = tmp_path / f"{name}.toml"
            config.write_text(node_config(name, nats))
            node = await stack.enter_async_context(
                broker_process([*PYTHON_M, "--config", str(config)])
            )
            ports[name] = (await node.listener_ports())["lb"]
            await node.wait_for(re.compile(r"cluster: node \S+ joined"))
            nodes[name] = node
        running = await stack.enter_async_context(
            run_haproxy(
                haproxy,
                tmp_path,
                broker_port=ports["n1"],
                server_options="send-proxy-v2",
                backend_lines=[
                    "balance roundrobin",
                    f"server n2 127.0.0.1:{ports['n2']} send-proxy-v2",
                    f"server n3 127.0.0.1:{ports['n3']} send-proxy-v2",
                ],
            )
        )
        yield Cluster(running, nodes)


async def until_routed(publisher: PahoClient, subscriber: PahoClient, topic: str) -> None:
    """Publish probes until one reaches ``subscriber``: its node's NATS subscription is
    in place (a SUBACK does not wait for NATS)."""
    with trio.fail_after(10):
        while True:
            await blocking(publisher.publish, topic, b"probe", 0)
            try:
                await blocking(subscriber.wait_message, 0.2)
            except TimeoutError:
                continue
            await blocking(subscriber.extra_messages, 0.2)  # later probes
            return


async def test_cross_node_delivery_real_addresses_and_retained(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with three_nodes_behind_haproxy(tmp_path, nats_server) as cluster:
        port = cluster.haproxy.port
        async with (
            paho_client(port, "sub", protocol=V5) as sub,
            paho_client(port, "pub", protocol=V311) as pub,
            paho_client(port, "sub0", protocol=V311) as sub0,
        ):
            where = {c: await cluster.node_of(c) for c in ("sub", "pub", "sub0")}
            assert len({node for node, _address in where.values()}) == 3, where
            # each node logs the client's real address, from the PROXY header
            assert where["sub"][1] == f"127.0.0.1:{sub.local_port}"
            assert where["pub"][1] == f"127.0.0.1:{pub.local_port}"

            assert await blocking(sub.subscribe, "x/#", 2) == [2]
            assert await blocking(sub0.subscribe, "x/+", 0) == [0]
            await until_routed(pub, sub, "x/probe")
            await until_routed(pub, sub0, "x/probe")
            await blocking(sub.extra_messages)  # the probes that reached sub as well
            for qos in (0, 1, 2):
                await blocking(pub.publish, f"x/{qos}", b"q%d" % qos, qos)
            got = await blocking(sub.wait_messages, 3)
            assert [(m.topic, m.payload, m.qos) for m in got] == [
                ("x/0", b"q0", 0),
                ("x/1", b"q1", 1),
                ("x/2", b"q2", 2),
            ]
            downgraded = await blocking(sub0.wait_messages, 3)
            assert [(m.topic, m.qos) for m in downgraded] == [("x/0", 0), ("x/1", 0), ("x/2", 0)]
            assert await blocking(sub.extra_messages) == []

            # retained: set through one node, read on the other two, cleared, gone
            await blocking(pub.publish, "r/a/c", b"kept", 1, True)
            for reader, topic_filter in ((sub, "r/+/c"), (sub0, "r/#")):
                message = await retained_on(reader, topic_filter)
                assert (message.topic, message.payload, message.retain) == ("r/a/c", b"kept", True)
            await blocking(sub0.publish, "r/a/c", b"", 1, True)  # cleared on sub0's node
            for attempt in range(12):  # gone on pub's node, where it was set
                client_id = f"late{attempt}"
                async with paho_client(port, client_id) as late:
                    if (await cluster.node_of(client_id))[0] != where["pub"][0]:
                        continue
                    await blocking(late.subscribe, "r/#", 0)
                    if not await blocking(late.extra_messages, 0.3):
                        break
            else:
                raise AssertionError("the cleared retained message stayed on its first node")


async def retained_on(reader: PahoClient, topic_filter: str) -> Received:
    """The retained message ``reader`` gets on subscribing (retrying while the
    retained bucket's update travels to the reader's node).

    A copy without the retain flag is the live message: the publisher's node sends it
    to NATS as it acknowledges, so a subscription made at once on another node can be
    in place before NATS routes it. Not what this waits for.
    """
    with trio.fail_after(10):
        while True:
            await blocking(reader.subscribe, topic_filter, 0)
            try:
                message = await blocking(reader.wait_message, 0.3)
                if message.retain:
                    return message
            except TimeoutError:
                pass
            await blocking(reader.client.unsubscribe, topic_filter)


async def test_takeover_across_nodes_through_haproxy(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with three_nodes_behind_haproxy(tmp_path, nats_server) as cluster:
        port = cluster.haproxy.port
        for protocol, client_id in ((V5, "roamer5"), (V311, "roamer311")):
            async with paho_client(port, client_id, protocol=protocol) as first:
                first_node = (await cluster.node_of(client_id))[0]
                for node in cluster.nodes.values():  # forget the first connect line
                    node.output = node.output.replace(f"client_id={client_id!r}", "-")
                async with paho_client(port, client_id, protocol=protocol) as second:
                    second_node = (await cluster.node_of(client_id))[0]
                    assert second_node != first_node
                    ended = await blocking(first.wait_disconnect)
                    if protocol is V5:
                        assert ended.reason_code == 0x8E  # Session taken over
                    assert await blocking(second.extra_messages) == []
                    assert second.client.is_connected()


async def test_a_dead_nodes_will_is_published_once_by_a_survivor(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with three_nodes_behind_haproxy(tmp_path, nats_server) as cluster:
        port = cluster.haproxy.port
        async with (
            paho_client(port, "mortal", will=("wills/mortal", b"gone", 1, False)),
            paho_client(port, "watcher", protocol=V5) as watcher,
            paho_client(port, "prober") as prober,
        ):
            where = {c: (await cluster.node_of(c))[0] for c in ("mortal", "watcher", "prober")}
            assert len(set(where.values())) == 3, where
            assert await blocking(watcher.subscribe, "wills/#", 1) == [1]
            await until_routed(prober, watcher, "wills/probe")
            cluster.nodes[where["mortal"]].process.kill()  # kill -9: no goodbye to anyone
            will = await blocking(watcher.wait_message, 20)
            assert (will.topic, will.payload, will.qos) == ("wills/mortal", b"gone", 1)
            assert await blocking(watcher.extra_messages, 1.0) == []  # one survivor sent it


async def connect_through(cluster: Cluster, client_id: str, **fields: object) -> RawClient:
    """A raw 3.1.1 client through HAProxy, retrying past dead nodes (no health checks)."""
    with trio.fail_after(15):
        while True:
            raw = await RawClient.open(cluster.haproxy.port, V311_RAW)
            try:
                connack = await raw.connect(client_id, **fields)
            except (EOFError, trio.BrokenResourceError, trio.TooSlowError):
                await raw.aclose()
                continue
            assert connack.reason_code == 0, connack
            return raw


async def raw_until_routed(publisher: RawClient, subscriber: RawClient, topic: str) -> None:
    """``until_routed`` for raw clients: probes until one arrives, then the stragglers."""
    with trio.fail_after(10):
        while True:
            await publisher.send(Publish(topic=topic, payload=b"probe"))
            with trio.move_on_after(0.2):
                await subscriber.receive()
                break
    with trio.move_on_after(0.3):
        while True:
            await subscriber.receive()  # the probes still on their way


async def test_a_dead_nodes_session_resumes_elsewhere_from_the_stream(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with three_nodes_behind_haproxy(tmp_path, nats_server) as cluster:
        sub = await connect_through(cluster, "durable", clean_start=False)
        await sub.send(Subscribe(1, (SubscriptionRequest("d/#", 1),)))
        assert isinstance(await sub.receive(), Suback)
        pub = await connect_through(cluster, "pub")
        where = {c: (await cluster.node_of(c))[0] for c in ("durable", "pub")}
        assert where["durable"] != where["pub"], where
        await raw_until_routed(pub, sub, "d/probe")
        for index in range(5):
            await pub.send(
                Publish(topic=f"d/{index}", payload=b"%d" % index, qos=1, packet_id=index + 1)
            )
            assert await pub.receive() == Puback(index + 1)
        withheld = [await sub.receive() for _ in range(5)]
        assert [p.payload for p in withheld] == [b"0", b"1", b"2", b"3", b"4"]  # type: ignore[union-attr]
        await trio.sleep(0.5)  # the session's record (cursor) is saved every 0.2 s
        cluster.nodes[where["durable"]].process.kill()  # kill -9, PUBACKs never sent
        for index in range(5, 10):
            await pub.send(
                Publish(topic=f"d/{index}", payload=b"%d" % index, qos=1, packet_id=index + 1)
            )
            assert await pub.receive() == Puback(index + 1)
        await sub.aclose()
        again = await connect_through(cluster, "durable", clean_start=False)
        got = [await again.receive() for _ in range(10)]
        assert all(isinstance(p, Publish) for p in got), got
        assert [(p.payload, p.dup) for p in got] == [  # type: ignore[union-attr]
            (b"%d" % index, index < 5) for index in range(10)
        ]


async def test_a_qos_2_retransmission_after_a_node_death_is_delivered_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with three_nodes_behind_haproxy(tmp_path, nats_server) as cluster:
        pub = await connect_through(cluster, "sender", clean_start=False)
        sub = await connect_through(cluster, "receiver")
        where = {c: (await cluster.node_of(c))[0] for c in ("sender", "receiver")}
        assert where["sender"] != where["receiver"], where
        await sub.send(Subscribe(1, (SubscriptionRequest("x2/#", 2),)))
        assert isinstance(await sub.receive(), Suback)
        await raw_until_routed(pub, sub, "x2/probe")
        await pub.send(Publish(topic="x2/once", payload=b"exactly once", qos=2, packet_id=7))
        assert await pub.receive() == Pubrec(7)
        (first,) = [await sub.receive()]
        assert first.payload == b"exactly once"  # type: ignore[union-attr]
        await trio.sleep(0.5)  # the sender's session record is saved every 0.2 s
        cluster.nodes[where["sender"]].process.kill()
        await pub.aclose()
        # the sender never saw the PUBREC (as far as it knows): it sends the PUBLISH again
        again = await connect_through(cluster, "sender", clean_start=False)
        await again.send(
            Publish(topic="x2/once", payload=b"exactly once", qos=2, packet_id=7, dup=True)
        )
        assert await again.receive() == Pubrec(7)
        await again.send(Pubrel(7))
        assert await again.receive() == Pubcomp(7)
        with trio.move_on_after(0.5):
            extra = await sub.receive()
            raise AssertionError(f"delivered twice: {extra}")
