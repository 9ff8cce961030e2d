"""PROXY v2 TLVs in PeerInfo (custom ones raw, AWS's VPC endpoint id parsed), and two
PROXY headers on one connection (chained load balancers), over real sockets."""

from __future__ import annotations

import logging
import struct
from collections import Counter

import pytest
import trio

from trio_mqtt.broker.core import ConnectHook
from trio_mqtt.config import ListenerConfig, ProxyMode, ProxyPolicy
from trio_mqtt.mqtt.packets import Connect
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import PeerInfo
from trio_mqtt.proxy import TLV
from trio_mqtt.testing import open_test_broker

from .test_proxy_listener import (
    CONNACK_311_ACCEPTED,
    CONNECT_311,
    V1_HEADER,
    receive_exactly,
    receive_until_closed,
    send_ignoring_reset,
    tlv,
    v2_header,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
AWS_VPCE = tlv(0xEA, b"\x01vpce-0a1b2c3d4e5f60718")


def v2_header_from(client: bytes, port: int, tlvs: bytes = b"") -> bytes:
    body = client + bytes([127, 0, 0, 1]) + struct.pack("!HH", port, 1883) + tlvs
    return SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body


def nlb(mode: ProxyMode = ProxyMode.REQUIRED) -> tuple[ListenerConfig, ...]:
    policy = ProxyPolicy(mode=mode, trusted_sources=("127.0.0.0/8",), timeout=1.0)
    return (ListenerConfig(name="nlb", host="127.0.0.1", port=0, proxy_protocol=policy),)


async def test_every_tlv_reaches_clients_and_the_connect_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    seen: list[PeerInfo] = []

    def record(peer: PeerInfo, _connect: Connect) -> ReasonCode | None:
        seen.append(peer)
        return None

    custom = tlv(0xE3, b"\x00tenant-7\xff") + tlv(0xF1, b"experiment")
    header = v2_header(AWS_VPCE + custom + tlv(0x05, b"req-1"))
    async with open_test_broker(listeners=nlb()) as broker:
        hook: ConnectHook = record
        broker.add_connect_hook(hook)
        async with await trio.open_tcp_stream("127.0.0.1", broker.port) as stream:
            await stream.send_all(header + CONNECT_311)
            assert await receive_exactly(stream, 4) == CONNACK_311_ACCEPTED
            [client] = broker.clients()
    for peer in (client.peer, *seen):
        assert peer.aws_vpc_endpoint_id == "vpce-0a1b2c3d4e5f60718"
        assert peer.custom_tlvs == (
            TLV(0xEA, b"\x01vpce-0a1b2c3d4e5f60718"),
            TLV(0xE3, b"\x00tenant-7\xff"),
            TLV(0xF1, b"experiment"),
        )
        assert [t.type for t in peer.tlvs] == [0xEA, 0xE3, 0xF1, 0x05]
    [connected] = [r for r in caplog.records if r.getMessage().startswith("connected ")]
    assert "aws_vpce=vpce-0a1b2c3d4e5f60718" in connected.getMessage()
    assert connected.aws_vpc_endpoint_id == "vpce-0a1b2c3d4e5f60718"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("first", "second", "names"),
    [
        # NLB 2 (nearest the broker) prepends its header to NLB 1's header and the data
        (v2_header(AWS_VPCE), v2_header_from(bytes([198, 51, 100, 9]), 40000), "198.51.100.9"),
        (V1_HEADER, b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 1883\r\n", "198.51.100.9"),
        (v2_header(), V1_HEADER, "203.0.113.7"),
    ],
    ids=["v2-v2", "v1-v1", "v2-v1"],
)
@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-by-byte"])
async def test_a_second_proxy_header_is_refused_and_named(
    first: bytes, second: bytes, names: str, split: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with open_test_broker(listeners=nlb()) as broker:
        async with await trio.open_tcp_stream("127.0.0.1", broker.port) as stream:
            if split:
                await stream.send_all(first)
                await trio.sleep(0.05)
                for byte in second[:3]:
                    await send_ignoring_reset(stream, bytes([byte]))
                    await trio.sleep(0.02)
                await send_ignoring_reset(stream, second[3:] + CONNECT_311)
            else:
                await stream.send_all(first + second + CONNECT_311)
            assert await receive_until_closed(stream) == b""
        assert broker.clients() == []
        assert broker.listeners["nlb"].rejections == Counter({"second-header": 1})
    [refusal] = [r for r in caplog.records if "second PROXY header" in r.getMessage()]
    assert refusal.levelno == logging.WARNING
    assert refusal.name == "trio_mqtt.listener"
    assert f"it names client {names}:" in refusal.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_that_sends_nothing_after_the_header_is_closed_at_connect_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with open_test_broker(listeners=nlb(), connect_timeout=0.3) as broker:
        async with await trio.open_tcp_stream("127.0.0.1", broker.port) as stream:
            await stream.send_all(v2_header())
            assert await receive_until_closed(stream, timeout=3) == b""
        assert broker.listeners["nlb"].rejections == Counter({"timeout": 1})
