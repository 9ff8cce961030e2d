"""PUBLISH packets as large as the broker accepts, and the NATS server's max_payload.

nats-server refuses a message above its ``max_payload`` (1 MiB unless configured), and
the broker's default ``max_packet_size`` is 1 MiB too, before the envelope is added. A
node says so when it joins (one WARNING with the fix); the nats-server that
``--workers`` starts is configured to take every PUBLISH the broker accepts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from nats_server import NatsServer, running_nats_server
from rawclient import RawClient

from trio_mqtt import Broker, open_broker
from trio_mqtt.cluster.node import ENVELOPE_ALLOWANCE, payload_limit_warning
from trio_mqtt.config import BrokerConfig, ClusterConfig, ListenerConfig
from trio_mqtt.mqtt.packets import ProtocolVersion, Puback, Publish, Suback, Subscribe
from trio_mqtt.mqtt.packets import SubscriptionRequest as Request
from trio_mqtt.supervisor import NATS_MAX_PAYLOAD, nats_server_conf

V5 = ProtocolVersion.V5
MIB = 1 << 20


def test_the_warning_says_what_does_not_fit_and_the_fix() -> None:
    warning = payload_limit_warning({"max_payload": MIB}, MIB)
    assert warning is not None
    assert f"max_payload: {MIB + ENVELOPE_ALLOWANCE}" in warning
    assert "max_packet_size is 1048576" in warning
    assert payload_limit_warning({"max_payload": MIB}, MIB - ENVELOPE_ALLOWANCE) is None
    assert payload_limit_warning({"max_payload": 8 * MIB}, MIB) is None
    assert payload_limit_warning({}, MIB) is None  # a server that does not say


def test_the_workers_nats_server_takes_what_the_broker_accepts() -> None:
    assert nats_server_conf(BrokerConfig()).endswith(f"max_payload: {MIB + ENVELOPE_ALLOWANCE}\n")
    small = BrokerConfig(max_packet_size=1000)
    assert nats_server_conf(small).endswith(f"max_payload: {MIB}\n")  # never below NATS's own
    huge = BrokerConfig(max_packet_size=200 * MIB)
    assert nats_server_conf(huge).endswith(f"max_payload: {NATS_MAX_PAYLOAD}\n")


@asynccontextmanager
async def two_nodes(nats: NatsServer) -> AsyncIterator[list[Broker]]:
    async with AsyncExitStack() as stack:
        nodes = []
        for name in ("n1", "n2"):
            config = BrokerConfig(
                listeners=[ListenerConfig(port=0)],
                sys_interval=0,
                shutdown_timeout=1,
                cluster=ClusterConfig(node_name=name, nats_urls=[nats.url]),
            )
            nodes.append(await stack.enter_async_context(open_broker(config)))
        yield nodes


async def test_a_node_warns_when_its_nats_server_is_too_small(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_mqtt.cluster")
    with trio.fail_after(30):
        async with two_nodes(nats_server):
            pass
    warnings = [r.getMessage() for r in caplog.records if "its max_payload" in r.getMessage()]
    assert len(warnings) == 2  # one per node
    assert f"max_payload: {MIB + ENVELOPE_ALLOWANCE}" in warnings[0]


async def test_a_largest_publish_crosses_nodes_through_the_workers_nats_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the largest PUBLISH the defaults accept (1 MiB packet), QoS 1, from n1 to n2, through
    # a nats-server configured as --workers configures its own; with nats-server's
    # default max_payload the same message is refused (0x89)
    caplog.set_level(logging.WARNING, logger="trio_mqtt.cluster")
    payload = (bytes(range(256)) * (MIB // 256))[: MIB - 32]  # the packet: just under 1 MiB
    with (
        running_nats_server(tmp_path / "nats", config=nats_server_conf(BrokerConfig())) as nats,
        trio.fail_after(30),
    ):
        async with two_nodes(nats) as (n1, n2):
            subscriber = await RawClient.open(n2.port, V5)
            assert (await subscriber.connect("big-sub")).reason_code == 0
            await subscriber.send(Subscribe(1, (Request("big/#", 1),)))
            assert isinstance(await subscriber.receive(), Suback)
            publisher = await RawClient.open(n1.port, V5)
            assert (await publisher.connect("big-pub")).reason_code == 0
            await publisher.send(Publish("big/one", payload, qos=1, packet_id=1))
            assert await publisher.receive(timeout=10) == Puback(1)
            delivery = await subscriber.receive(timeout=10)
            assert isinstance(delivery, Publish)
            assert delivery.payload == payload
    assert not [r for r in caplog.records if "its max_payload" in r.getMessage()]
