"""forwarded_peer: which connections may take their client address from an HTTP header."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from trio_mqtt.config import ProxyMode, ProxyPolicy
from trio_mqtt.peer import Endpoint, PeerInfo, SocketEnds
from trio_mqtt.proxy import parse_proxy_header
from trio_mqtt.proxy.forwarded import ForwardedHeader
from trio_mqtt.server.proxy_policy import apply_header
from trio_mqtt.server.websocket import forwarded_peer

PROXY = Endpoint("10.0.0.2", 40000)
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)
XFF = [(b"x-forwarded-for", b"203.0.113.7")]


def socket_ends() -> SocketEnds:
    return SocketEnds("ws", "ws", Endpoint("10.0.0.1", 80), PROXY)


def socket_peer() -> PeerInfo:
    return socket_ends().peer()


def test_from_a_trusted_proxy() -> None:
    peer = forwarded_peer(XFF, socket_peer(), TRUSTED, ForwardedHeader.X_FORWARDED_FOR)
    assert (peer.client, peer.proxy, peer.remote) == (Endpoint("203.0.113.7", 0), PROXY, PROXY)
    assert peer.forwarded_by == "x-forwarded-for"
    assert peer.describe() == "client=203.0.113.7:0 via proxy 10.0.0.2:40000"


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 198.51.100.9 10.0.0.1 5000 80\r\n",
        b"PROXY UNKNOWN\r\n",  # no address, but a header: still the PROXY layer's word
    ],
)
def test_a_proxy_header_wins(header: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_mqtt")
    parsed = parse_proxy_header(header)
    assert parsed is not None
    policy = ProxyPolicy(mode=ProxyMode.REQUIRED, trusted_sources=TRUSTED)
    before = apply_header(socket_ends(), parsed[0], policy)
    after = forwarded_peer(XFF, before, TRUSTED, ForwardedHeader.X_FORWARDED_FOR)
    assert after is before
    [record] = caplog.records
    assert record.levelno == logging.DEBUG
    assert "the PROXY header's address is used" in record.getMessage()


def test_the_other_header_is_not_read(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_mqtt")
    peer = socket_peer()
    assert forwarded_peer(XFF, peer, TRUSTED, ForwardedHeader.FORWARDED) is peer
    assert "ws_forwarded_header is forwarded" in caplog.records[0].getMessage()


def test_no_header_no_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_mqtt")
    peer = socket_peer()
    assert forwarded_peer([], peer, TRUSTED, ForwardedHeader.X_FORWARDED_FOR) is peer
    assert caplog.records == []
