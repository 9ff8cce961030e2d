"""WebSocket listeners behind HTTP reverse proxies: paho-mqtt over ``transport="websockets"``
sends X-Forwarded-For / Forwarded (``ws_set_options(headers=...)``) from 127.0.0.1, which
the listener does or does not trust (``ws_trusted_proxies``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from trio_mqtt.config import ListenerConfig
from trio_mqtt.peer import Endpoint, PeerInfo
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .transport_clients import paho, run


@asynccontextmanager
async def ws_broker(**listener: Any) -> AsyncIterator[Broker]:
    config = ListenerConfig(name="ws", host="127.0.0.1", port=0, transport="ws", **listener)
    async with open_test_broker(listeners=(config,)) as broker:
        yield broker


async def connected_peer(broker: Broker, headers: dict[str, str]) -> tuple[PeerInfo, int]:
    async with paho(client_id="c1", websockets=True, ws_headers=headers) as client:
        assert await run(client.connect, broker.port) == 0
        [summary] = broker.clients()
        return summary.peer, client.local_port


async def test_trusted_proxy_x_forwarded_for(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with ws_broker(ws_trusted_proxies=["127.0.0.0/8"]) as broker:
        headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 127.0.0.5"}
        peer, port = await connected_peer(broker, headers)
    assert peer.client == Endpoint("203.0.113.7", 0)
    assert peer.proxy == Endpoint("127.0.0.1", port) == peer.remote
    assert peer.forwarded_by == "x-forwarded-for"
    assert peer.proxy_header is None
    [connected] = [r for r in caplog.records if r.getMessage().startswith("connected ")]
    assert f"client=203.0.113.7:0 via proxy 127.0.0.1:{port}" in connected.getMessage()
    assert connected.forwarded_by == "x-forwarded-for"  # type: ignore[attr-defined]


async def test_trusted_proxy_forwarded_ipv6_with_port() -> None:
    async with ws_broker(
        ws_trusted_proxies=["127.0.0.0/8"], ws_forwarded_header="forwarded"
    ) as broker:
        headers = {
            "Forwarded": 'for=198.51.100.1, for="[2001:db8::1]:4711";proto=http',
            "X-Forwarded-For": "192.0.2.99",  # not the header this listener reads
        }
        peer, port = await connected_peer(broker, headers)
    assert peer.client == Endpoint("2001:db8::1", 4711)
    assert peer.proxy == Endpoint("127.0.0.1", port)
    assert peer.forwarded_by == "forwarded"


@pytest.mark.parametrize(
    "listener",
    [{}, {"ws_trusted_proxies": ["10.0.0.0/8"]}],
    ids=["no-trusted-proxies", "peer-not-trusted"],
)
async def test_untrusted_peer_headers_are_ignored_and_logged_at_debug(
    listener: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_mqtt")
    async with ws_broker(**listener) as broker:
        headers = {"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7"}
        peer, port = await connected_peer(broker, headers)
    assert peer.client == Endpoint("127.0.0.1", port)
    assert (peer.proxy, peer.forwarded_by) == (None, None)
    [ignored] = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert ignored.levelno == logging.DEBUG
    assert "forwarded, x-forwarded-for from client=127.0.0.1:" in ignored.getMessage()
    assert "not in ws_trusted_proxies" in ignored.getMessage()


async def test_trusted_proxy_with_unknown_client_keeps_the_peer() -> None:
    async with ws_broker(
        ws_trusted_proxies=["127.0.0.0/8"], ws_forwarded_header="forwarded"
    ) as broker:
        peer, port = await connected_peer(broker, {"Forwarded": "for=unknown"})
    assert peer.client == Endpoint("127.0.0.1", port)
    assert (peer.proxy, peer.forwarded_by) == (None, None)
