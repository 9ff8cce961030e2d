"""paho-mqtt 2.x against tls, ws and wss listeners: a real client's TLS and WebSocket code.

Covers server-only TLS, required client certificates (valid, from another CA, expired,
missing), the certificate CN as username, MQTT over ws and wss (paho's
``transport="websockets"``) with a large message both ways, and refused WebSocket
upgrades (wrong path, no MQTT subprotocol).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers import wait_until
from server.certs import TestPKI

from trio_mqtt.config import ListenerConfig, TLSConfig
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .transport_clients import Paho, paho, run

NOT_AUTHORIZED = 0x87  # paho maps 3.1.1's return code 5 onto the 5.0 reason code


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(tmp_path_factory.mktemp("pki"))


@asynccontextmanager
async def broker_with(
    transport: str, tls: TLSConfig | None = None, **settings: Any
) -> AsyncIterator[Broker]:
    listener = ListenerConfig(
        name=transport, host="127.0.0.1", port=0, transport=transport, tls=tls
    )
    async with open_test_broker(listeners=(listener,), **settings) as broker:
        yield broker


def server_only(pki: TestPKI) -> TLSConfig:
    return TLSConfig(pki.server.certfile, pki.server.keyfile)


async def round_trip(broker: Broker, sender: Paho, receiver: Paho, payload: bytes) -> None:
    """receiver subscribes to t/x, sender publishes *payload* at QoS 1, receiver gets it."""
    assert await run(receiver.connect, broker.port) == 0
    await run(receiver.subscribe, "t/x")
    assert await run(sender.connect, broker.port) == 0
    await run(sender.publish, "t/x", payload)
    message = await run(receiver.message)
    assert (message.topic, message.payload, message.qos) == ("t/x", payload, 1)


# ------------------------------------------------------------------------------- TLS


async def test_paho_over_tls_with_server_certificate_only(pki: TestPKI) -> None:
    async with (
        broker_with("tls", server_only(pki)) as broker,
        paho(client_id="sub", ca_file=pki.ca_file) as receiver,
        paho(client_id="pub", ca_file=pki.ca_file) as sender,
    ):
        await round_trip(broker, sender, receiver, b"over tls")
        peers = {summary.client_id: summary.peer for summary in broker.clients()}
        tls = peers["pub"].tls
        assert tls is not None and tls.version in ("TLSv1.2", "TLSv1.3")
        assert tls.sni is None  # paho connects to an IP address: no SNI
        assert peers["pub"].transport == "tls"


async def test_paho_with_required_client_certificate(pki: TestPKI) -> None:
    async with (
        broker_with("tls", pki.tls_config(require_client_cert=True)) as broker,
        paho(client_id="alice", ca_file=pki.ca_file, cert=pki.alice) as client,
    ):
        assert await run(client.connect, broker.port) == 0
        [summary] = broker.clients()
        assert summary.peer.tls is not None
        assert (summary.peer.tls.peer_cn, summary.peer.tls.peer_verified) == ("alice", True)


@pytest.mark.parametrize("cert_name", [None, "mallory", "expired"])
async def test_paho_without_acceptable_client_certificate_is_refused(
    pki: TestPKI, cert_name: str | None
) -> None:
    cert = None if cert_name is None else getattr(pki, cert_name)
    async with broker_with("tls", pki.tls_config(require_client_cert=True)) as broker:
        async with paho(client_id="x", ca_file=pki.ca_file, cert=cert) as client:
            assert await run(client.connect, broker.port) is None
        handle = broker.listeners["tls"]
        await wait_until(lambda: handle.rejections["tls-handshake"] == 1)
        assert broker.clients() == []
        # the broker keeps serving clients with a good certificate
        async with paho(client_id="alice", ca_file=pki.ca_file, cert=pki.alice) as good:
            assert await run(good.connect, broker.port) == 0


async def test_paho_identity_as_username(pki: TestPKI) -> None:
    tls = pki.tls_config(use_identity_as_username=True)
    async with broker_with("tls", tls, allow_anonymous=False) as broker:
        # the CONNECT's username is ignored: the certificate says who this is
        async with paho(
            client_id="a", ca_file=pki.ca_file, cert=pki.alice, username="admin"
        ) as client:
            assert await run(client.connect, broker.port) == 0
            [summary] = broker.clients()
            assert summary.username == "alice"
        async with paho(client_id="b", ca_file=pki.ca_file, username="admin") as anonymous:
            assert await run(anonymous.connect, broker.port) == NOT_AUTHORIZED


# ------------------------------------------------------------------------ WebSockets


async def test_paho_over_websockets(pki: TestPKI) -> None:
    async with (
        broker_with("ws") as broker,
        paho(client_id="sub", websockets=True) as receiver,
        paho(client_id="pub", websockets=True) as sender,
    ):
        await round_trip(broker, sender, receiver, b"over ws")
        assert {s.peer.transport for s in broker.clients()} == {"ws"}


async def test_paho_over_secure_websockets(pki: TestPKI) -> None:
    async with (
        broker_with("wss", server_only(pki)) as broker,
        paho(client_id="sub", websockets=True, ca_file=pki.ca_file) as receiver,
        paho(client_id="pub", websockets=True, ca_file=pki.ca_file) as sender,
    ):
        await round_trip(broker, sender, receiver, b"over wss")
        for summary in broker.clients():
            assert summary.peer.transport == "wss"
            assert summary.peer.tls is not None and summary.peer.tls.version is not None


@asynccontextmanager
async def websocket_clients(
    pki: TestPKI, transport: str
) -> AsyncIterator[tuple[Broker, Paho, Paho]]:
    """A broker with one ``ws`` or ``wss`` listener, a paho receiver and a paho sender."""
    ca_file = pki.ca_file if transport == "wss" else None
    tls = server_only(pki) if transport == "wss" else None
    async with (
        broker_with(transport, tls) as broker,
        paho(client_id="sub", websockets=True, ca_file=ca_file) as receiver,
        paho(client_id="pub", websockets=True, ca_file=ca_file) as sender,
    ):
        yield broker, receiver, sender


@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_large_message_over_websockets(pki: TestPKI, transport: str) -> None:
    payload = bytes(range(256)) * 3900  # 998,400 bytes: under max_packet_size (1 MiB)
    async with (
        websocket_clients(pki, transport) as (broker, receiver, sender),
        broker.subscribe("t/x") as in_process,
    ):
        await round_trip(broker, sender, receiver, payload)
        message = await in_process.receive()
        assert message.payload == payload


@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_quiet_websocket_clients_park_and_still_publish_and_receive(
    pki: TestPKI, transport: str
) -> None:
    # Parking (server/idle_park.py) over WebSocket: both paho clients, quiet after their
    # CONNECT and SUBSCRIBE, lose their tasks; the publisher's next frame resumes it, and
    # the delivery reaches the parked subscriber.
    async with websocket_clients(pki, transport) as (broker, receiver, sender):
        assert await run(receiver.connect, broker.port) == 0
        await run(receiver.subscribe, "t/x")
        assert await run(sender.connect, broker.port) == 0
        await wait_until(lambda: broker.parked_connections() == 2, "both parked")
        await run(sender.publish, "t/x", b"after the park")
        message = await run(receiver.message)
        assert (message.topic, message.payload) == ("t/x", b"after the park")
        await wait_until(lambda: broker.parked_connections() == 2, "both parked again")


@pytest.mark.parametrize(
    ("options", "status"),
    [({"ws_path": "/other"}, 404), ({"ws_headers": {"Sec-Websocket-Protocol": "wamp"}}, 400)],
    ids=["wrong-path", "no-mqtt-subprotocol"],
)
async def test_paho_websocket_upgrade_refused(
    options: dict[str, Any], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with broker_with("ws") as broker, paho(client_id="x", websockets=True, **options) as c:
        assert await run(c.connect, broker.port) is None
        assert broker.clients() == []
        await wait_until(lambda: broker.listeners["ws"].rejections["ws-upgrade"] == 1)
    assert any(f"WebSocket upgrade refused ({status})" in r.getMessage() for r in caplog.records)
