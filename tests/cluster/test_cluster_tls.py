"""Cluster nodes that reach NATS over TLS with a client certificate and a password.

One nats-server with ``tls { verify: true }`` and ``authorization { user, password }``
(JetStream on); nodes are full ``open_broker`` instances configured with the
``[cluster]`` keys ``nats_tls_ca_file``, ``nats_tls_cert_file``, ``nats_tls_key_file``
and credentials in their NATS URL (tests/cluster/test_cluster.py does the same in plain
text).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from helpers import V5
from nats_server import NatsServer, running_nats_server
from rawclient import RawClient
from server.certs import TestPKI

from trio_mqtt import open_broker
from trio_mqtt.config import BrokerConfig, ClusterConfig, ListenerConfig
from trio_mqtt.errors import ConfigError
from trio_mqtt.mqtt.packets import Publish, Suback, Subscribe, SubscriptionRequest
from trio_mqtt.nats import NATSConnectionError

PASSWORD = "n0de-pa55-S3CRET"


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    directory = tmp_path / "pki"
    directory.mkdir()
    return TestPKI.create(directory)


@pytest.fixture
def secure_nats(tmp_path: Path, pki: TestPKI) -> Iterator[NatsServer]:
    config = (
        "tls {\n"
        f'  cert_file: "{pki.server.certfile}"\n'
        f'  key_file: "{pki.server.keyfile}"\n'
        f'  ca_file: "{pki.ca_file}"\n'
        "  verify: true\n"
        "}\n"
        f'authorization {{ user: node, password: "{PASSWORD}" }}\n'
    )
    with running_nats_server(tmp_path / "nats", config=config) as server:
        yield server


def node_config(name: str, url: str, pki: TestPKI, **tls: str) -> BrokerConfig:
    files = {
        "nats_tls_ca_file": pki.ca_file,
        "nats_tls_cert_file": pki.alice.certfile,
        "nats_tls_key_file": pki.alice.keyfile,
    }
    return BrokerConfig(
        listeners=[ListenerConfig(port=0)],
        sys_interval=0,
        shutdown_timeout=1,
        cluster=ClusterConfig(node_name=name, nats_urls=[url], **{**files, **tls}),
    )


async def test_two_nodes_deliver_across_tls_and_auth(
    secure_nats: NatsServer, pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "trio_mqtt")
    port = secure_nats.port
    with trio.fail_after(20):
        async with (
            # tls:// insists on TLS; nats:// upgrades because the server requires it
            open_broker(node_config("n1", f"tls://node:{PASSWORD}@127.0.0.1:{port}", pki)) as n1,
            open_broker(node_config("n2", f"nats://node:{PASSWORD}@127.0.0.1:{port}", pki)) as n2,
        ):
            sub = await RawClient.open(n1.port, V5)
            assert (await sub.connect("sub")).reason_code == 0
            await sub.send(Subscribe(1, (SubscriptionRequest("secure/#", 1),)))
            assert isinstance(await sub.receive(), Suback)
            pub = await RawClient.open(n2.port, V5)
            assert (await pub.connect("pub")).reason_code == 0
            await pub.send(Publish(topic="secure/t", payload=b"across", qos=0))
            packet = await sub.receive(5)
            assert isinstance(packet, Publish)
            assert (packet.topic, packet.payload) == ("secure/t", b"across")
            await sub.aclose()
            await pub.aclose()
    assert PASSWORD not in caplog.text
    assert f"cluster: node n1 joined through tls://node:***@127.0.0.1:{port}" in caplog.text


async def test_a_node_with_a_wrong_password_does_not_start(
    secure_nats: NatsServer, pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "trio_mqtt")
    url = f"tls://node:{PASSWORD}-wrong@127.0.0.1:{secure_nats.port}"
    with trio.fail_after(10), pytest.raises(NATSConnectionError) as info:
        async with open_broker(node_config("n1", url, pki)):
            raise AssertionError("started without its cluster")
    message = str(info.value)
    assert f"tls://node:***@127.0.0.1:{secure_nats.port}: server refused" in message
    assert "Authorization Violation" in message
    assert PASSWORD not in message and PASSWORD not in caplog.text


async def test_a_node_without_its_certificate_does_not_start(
    secure_nats: NatsServer, pki: TestPKI
) -> None:
    url = f"tls://node:{PASSWORD}@127.0.0.1:{secure_nats.port}"
    config = BrokerConfig(
        listeners=[ListenerConfig(port=0)],
        cluster=ClusterConfig(node_name="n1", nats_urls=[url], nats_tls_ca_file=pki.ca_file),
    )
    with trio.fail_after(10), pytest.raises(NATSConnectionError) as info:
        async with open_broker(config):
            raise AssertionError("started without its cluster")
    assert "the server requires a client certificate" in str(info.value)
    assert "nats_tls_cert_file" in str(info.value)


async def test_an_unloadable_ca_file_stops_the_start_naming_the_key(
    tmp_path: Path, secure_nats: NatsServer, pki: TestPKI
) -> None:
    bad = tmp_path / "bad-ca.pem"
    bad.write_text("not a certificate\n")
    url = f"tls://node:{PASSWORD}@127.0.0.1:{secure_nats.port}"
    with (
        trio.fail_after(10),
        pytest.raises(ConfigError, match=r"cluster\.nats_tls_ca_file: cannot load CA"),
    ):
        async with open_broker(node_config("n1", url, pki, nats_tls_ca_file=str(bad))):
            raise AssertionError("started with a CA file it cannot read")
