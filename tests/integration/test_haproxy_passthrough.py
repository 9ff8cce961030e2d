"""HAProxy in TCP mode with ``send-proxy-v2`` in front of tls and ws listeners.

TLS passthrough (what an AWS NLB does): HAProxy relays the client's TLS bytes untouched
after its PROXY v2 header, so the broker reads the header first, then terminates TLS
itself, and still sees the real client address. Roles have distinct loopback addresses:
paho binds to 127.0.0.3, HAProxy connects to the broker from 127.0.0.2.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from helpers import wait_until
from server.certs import TestPKI
from tools import require_tool

from trio_mqtt.config import ListenerConfig, ProxyPolicy, TLSConfig
from trio_mqtt.peer import Endpoint
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .haproxy_helpers import RunningHAProxy, run_haproxy
from .transport_clients import paho, run

CLIENT_HOST = "127.0.0.3"
PROXY_HOST = "127.0.0.2"


@pytest.fixture
def haproxy() -> str:
    return require_tool("haproxy")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(tmp_path_factory.mktemp("pki"))


@asynccontextmanager
async def behind_haproxy(
    haproxy: str, workdir: Path, transport: str, tls: TLSConfig | None = None
) -> AsyncIterator[tuple[Broker, RunningHAProxy]]:
    policy = ProxyPolicy(mode="required", trusted_sources=[f"{PROXY_HOST}/32"], timeout=2.0)
    listener = ListenerConfig(
        name="lb", host="127.0.0.1", port=0, transport=transport, tls=tls, proxy_protocol=policy
    )
    async with (
        open_test_broker(listeners=(listener,)) as broker,
        run_haproxy(
            haproxy,
            workdir,
            broker_port=broker.port,
            server_options=f"send-proxy-v2 source {PROXY_HOST}",
        ) as hap,
    ):
        yield broker, hap


def assert_real_client(broker: Broker, client_id: str, client_port: int) -> None:
    [summary] = [s for s in broker.clients() if s.client_id == client_id]
    peer = summary.peer
    assert peer.client == Endpoint(CLIENT_HOST, client_port)
    assert peer.proxy is not None and peer.proxy.host == PROXY_HOST
    assert peer.proxy == peer.remote
    assert peer.proxy_header is not None and peer.proxy_header.version == 2


async def test_tls_passthrough_shows_the_real_client(
    haproxy: str, tmp_path: Path, pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    tls = pki.tls_config(use_identity_as_username=True)
    async with (
        behind_haproxy(haproxy, tmp_path, "tls", tls) as (broker, hap),
        paho(client_id="alice-1", ca_file=pki.ca_file, cert=pki.alice) as client,
    ):
        assert await run(client.connect, hap.port, CLIENT_HOST) == 0
        port = client.local_port
        assert_real_client(broker, "alice-1", port)
        [summary] = broker.clients()
        # TLS was terminated by the broker, not by the proxy
        assert summary.peer.tls is not None
        assert summary.peer.tls.terminated_by_proxy is False
        assert (summary.peer.tls.peer_cn, summary.peer.tls.peer_verified) == ("alice", True)
        assert summary.username == "alice"
    assert any(f"client={CLIENT_HOST}:{port} via proxy" in m for m in caplog.messages)
    assert broker.listeners["lb"].rejections == Counter()


async def test_tls_failure_through_haproxy_is_logged_with_the_real_client(
    haproxy: str, tmp_path: Path, pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    tls = pki.tls_config(require_client_cert=True)
    async with behind_haproxy(haproxy, tmp_path, "tls", tls) as (broker, hap):
        async with paho(client_id="mallory", ca_file=pki.ca_file, cert=pki.mallory) as client:
            assert await run(client.connect, hap.port, CLIENT_HOST) is None
        assert broker.clients() == []
        handle = broker.listeners["lb"]
        await wait_until(lambda: handle.rejections == Counter({"tls-handshake": 1}))
    [line] = [m for m in caplog.messages if "refused connection" in m]
    assert f"client={CLIENT_HOST}:" in line
    assert f"via proxy {PROXY_HOST}:" in line
    assert "certificate verify failed" in line


@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_websockets_through_haproxy_show_the_real_client(
    haproxy: str, tmp_path: Path, pki: TestPKI, transport: str
) -> None:
    tls = TLSConfig(pki.server.certfile, pki.server.keyfile) if transport == "wss" else None
    ca_file = None if tls is None else pki.ca_file
    async with (
        behind_haproxy(haproxy, tmp_path, transport, tls) as (broker, hap),
        paho(client_id="ws-1", websockets=True, ca_file=ca_file) as client,
    ):
        assert await run(client.connect, hap.port, CLIENT_HOST) == 0
        assert_real_client(broker, "ws-1", client.local_port)
        [summary] = broker.clients()
        assert summary.peer.transport == transport
        await run(client.subscribe, "t/#")
        await run(client.publish, "t/1", b"through haproxy")
        message = await run(client.message)
        assert message.payload == b"through haproxy"
