"""A listener's PROXY policy end to end, over real sockets on 127.0.0.1.

The client side sends hand-laid bytes (PROXY headers from haproxy's proxy-protocol.txt,
MQTT packets from the MQTT specification) so that what the broker receives is exactly
what a proxy would send, and what comes back is checked byte for byte.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections import Counter
from pathlib import Path

import pytest
import trio

from trio_mqtt.broker.core import ConnectHook
from trio_mqtt.config import ListenerConfig, ProxyMode, ProxyPolicy
from trio_mqtt.mqtt.packets import Connect
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import Endpoint, PeerInfo
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
CLIENT = Endpoint("203.0.113.7", 51234)
V1_HEADER = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 1883\r\n"

# MQTT 3.1.1 CONNECT: clean session, keep alive 60, client id "c1" (section 3.1)
CONNECT_311 = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1"
# ... and with user name "mallory" (flags 0x82)
CONNECT_311_MALLORY = b"\x10\x17\x00\x04MQTT\x04\x82\x00\x3c\x00\x02c1\x00\x07mallory"
# MQTT 5.0 CONNECT: clean start, keep alive 60, no properties, client id "c1", user "mallory"
CONNECT_5_MALLORY = b"\x10\x18\x00\x04MQTT\x05\x82\x00\x3c\x00\x00\x02c1\x00\x07mallory"
CONNACK_311_ACCEPTED = b"\x20\x02\x00\x00"
CONNACK_311_NOT_AUTHORIZED = b"\x20\x02\x00\x05"
# PUBLISH QoS 0, retain, topic "sensors/t1", payload "21.5"
PUBLISH_RETAINED = b"\x31\x10\x00\x0asensors/t121.5"

TRUSTS_LOOPBACK = ("127.0.0.0/8",)
EXCLUDES_LOOPBACK = ("10.0.0.0/8",)

SSL, CERT_CONN, CERT_SESS = 0x01, 0x02, 0x04


def tlv(tlv_type: int, value: bytes) -> bytes:
    return struct.pack("!BH", tlv_type, len(value)) + value


def v2_header(tlvs: bytes = b"") -> bytes:
    """v2 PROXY, INET/STREAM, 203.0.113.7:51234 -> 127.0.0.1:1883, then ``tlvs``."""
    body = bytes([203, 0, 113, 7, 127, 0, 0, 1]) + struct.pack("!HH", 51234, 1883) + tlvs
    return SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body


def ssl_tlv(client: int, verify: int, cn: str) -> bytes:
    subs = tlv(0x21, b"TLSv1.3") + tlv(0x22, cn.encode())
    return tlv(0x20, struct.pack("!BI", client, verify) + subs)


def lb(
    mode: ProxyMode,
    trusted: tuple[str, ...] = TRUSTS_LOOPBACK,
    *,
    timeout: float = 1.0,
    use_cn_as_username: bool = False,
) -> tuple[ListenerConfig, ...]:
    policy = ProxyPolicy(
        mode=mode,
        trusted_sources=trusted,
        timeout=timeout,
        use_cn_as_username=use_cn_as_username,
    )
    return (ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=policy),)


def local_endpoint(stream: trio.SocketStream) -> Endpoint:
    host, port = stream.socket.getsockname()[:2]
    return Endpoint(host, port)


async def send_ignoring_reset(stream: trio.SocketStream, data: bytes) -> None:
    """Send; a broker that already closed (and reset) the connection is not an error here."""
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(data)


async def receive_exactly(stream: trio.SocketStream, size: int, timeout: float = 5.0) -> bytes:
    data = bytearray()
    with trio.fail_after(timeout):
        while len(data) < size:
            chunk = await stream.receive_some(size - len(data))
            if not chunk:
                raise EOFError(f"closed after {bytes(data)!r}, expected {size} bytes")
            data += chunk
    return bytes(data)


async def receive_until_closed(stream: trio.SocketStream, timeout: float = 5.0) -> bytes:
    """Everything the broker sends before it closes (EOF or reset) the connection."""
    data = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(4096)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


def warnings_from_broker(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("trio_mqtt") and r.levelno >= logging.WARNING
    ]


def only_client(broker: Broker) -> PeerInfo:
    clients = broker.clients()
    assert [c.client_id for c in clients] == ["c1"]
    return clients[0].peer


# --------------------------------------------------------------------------- policy matrix

PROXIED = "proxied"  # accepted; the header's address is the client
DIRECT = "direct"  # accepted; the socket's address is the client
NOT_MQTT = "not-mqtt"  # policy off: the header is garbage to the MQTT layer

MATRIX = [
    # (mode, trusted_sources, send a header, outcome)
    (ProxyMode.OFF, TRUSTS_LOOPBACK, False, DIRECT),
    (ProxyMode.OFF, TRUSTS_LOOPBACK, True, NOT_MQTT),
    (ProxyMode.OFF, EXCLUDES_LOOPBACK, False, DIRECT),
    (ProxyMode.OFF, EXCLUDES_LOOPBACK, True, NOT_MQTT),
    (ProxyMode.REQUIRED, TRUSTS_LOOPBACK, True, PROXIED),
    (ProxyMode.REQUIRED, TRUSTS_LOOPBACK, False, "invalid-header"),
    (ProxyMode.REQUIRED, EXCLUDES_LOOPBACK, True, "untrusted-source"),
    (ProxyMode.REQUIRED, EXCLUDES_LOOPBACK, False, "untrusted-source"),
    (ProxyMode.OPTIONAL, TRUSTS_LOOPBACK, True, PROXIED),
    (ProxyMode.OPTIONAL, TRUSTS_LOOPBACK, False, DIRECT),
    (ProxyMode.OPTIONAL, EXCLUDES_LOOPBACK, True, "spoofed-header"),
    (ProxyMode.OPTIONAL, EXCLUDES_LOOPBACK, False, DIRECT),
]


@pytest.mark.parametrize(("mode", "trusted", "with_header", "outcome"), MATRIX)
async def test_policy_matrix(
    mode: ProxyMode,
    trusted: tuple[str, ...],
    with_header: bool,
    outcome: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with open_test_broker(listeners=lb(mode, trusted)) as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        async with stream:
            me = local_endpoint(stream)
            await send_ignoring_reset(stream, (V1_HEADER if with_header else b"") + CONNECT_311)
            if outcome in (PROXIED, DIRECT):
                assert await receive_exactly(stream, 4) == CONNACK_311_ACCEPTED
                peer = only_client(broker)
                assert peer.listener == "lb"
                assert peer.remote == me
                if outcome == PROXIED:
                    assert (peer.client, peer.proxy) == (CLIENT, me)
                    assert peer.proxy_header is not None
                    assert peer.proxy_header.version == 1
                else:
                    assert (peer.client, peer.proxy, peer.proxy_header) == (me, None, None)
                assert broker.listeners["lb"].rejections == Counter()
                assert warnings_from_broker(caplog) == []
                return
            assert await receive_until_closed(stream) == b""  # closed without CONNACK
        assert broker.clients() == []
        rejections = broker.listeners["lb"].rejections
        if outcome == NOT_MQTT:
            assert rejections == Counter()  # not a policy refusal: a bad MQTT client
            return
        assert rejections == Counter({outcome: 1})
        [warning] = warnings_from_broker(caplog)
        assert warning.levelno == logging.WARNING
        text = warning.getMessage()
        assert "'lb'" in text
        assert f"from {me}" in text


async def test_v2_header_through_the_listener(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    header = v2_header(tlv(0x05, b"req-0001") + tlv(0x02, b"mqtt.example.com"))
    async with (
        open_test_broker(listeners=lb(ProxyMode.REQUIRED)) as broker,
        await trio.open_tcp_stream("127.0.0.1", broker.port) as stream,
    ):
        await stream.send_all(header + CONNECT_311)
        assert await receive_exactly(stream, 4) == CONNACK_311_ACCEPTED
        peer = only_client(broker)
        assert (peer.client, peer.proxy) == (CLIENT, local_endpoint(stream))
        assert peer.proxy_header is not None
        assert peer.proxy_header.version == 2
        assert peer.proxy_header.unique_id == b"req-0001"
        assert peer.proxy_header.authority == "mqtt.example.com"
    assert warnings_from_broker(caplog) == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (V1_HEADER, CONNACK_311_ACCEPTED),  # 203.0.113.7: inside the ACL's network
        (v2_header(), CONNACK_311_ACCEPTED),
        (b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 1883\r\n", CONNACK_311_NOT_AUTHORIZED),
    ],
    ids=["v1-inside", "v2-inside", "v1-outside"],
)
async def test_acl_address_lines_see_the_address_from_the_header(
    tmp_path: Path, header: bytes, expected: bytes
) -> None:
    # The socket peer is always 127.0.0.1 (the "load balancer"): only the address the
    # header carries can put the client inside or outside 203.0.113.0/24.
    acl = tmp_path / "broker.acl"
    acl.write_text("address 203.0.113.0/24\ntopic readwrite #\n")
    async with (
        open_test_broker(listeners=lb(ProxyMode.REQUIRED), acl_file=str(acl)) as broker,
        await trio.open_tcp_stream("127.0.0.1", broker.port) as stream,
    ):
        await stream.send_all(header + CONNECT_311)
        assert await receive_exactly(stream, 4) == expected
        if expected == CONNACK_311_NOT_AUTHORIZED:
            assert broker.stats.connects_refused == 1


async def test_header_split_from_connect_across_writes() -> None:
    async with (
        open_test_broker(listeners=lb(ProxyMode.REQUIRED)) as broker,
        await trio.open_tcp_stream("127.0.0.1", broker.port) as stream,
    ):
        await stream.send_all(V1_HEADER[:20])
        await trio.sleep(0.05)
        await stream.send_all(V1_HEADER[20:] + CONNECT_311[:5])
        await trio.sleep(0.05)
        await stream.send_all(CONNECT_311[5:])
        assert await receive_exactly(stream, 4) == CONNACK_311_ACCEPTED
        assert only_client(broker).client == CLIENT


async def test_incomplete_header_is_refused_at_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with (
        open_test_broker(listeners=lb(ProxyMode.REQUIRED, timeout=0.3)) as broker,
        await trio.open_tcp_stream("127.0.0.1", broker.port) as stream,
    ):
        me = local_endpoint(stream)
        start = trio.current_time()
        await stream.send_all(V1_HEADER[:12])
        assert await receive_until_closed(stream, timeout=3.0) == b""
        elapsed = trio.current_time() - start
        assert 0.25 <= elapsed < 2.0
        assert broker.listeners["lb"].rejections == Counter({"timeout": 1})
        [warning] = warnings_from_broker(caplog)
        assert f"from {me}" in warning.getMessage()
        assert "0.3s" in warning.getMessage()


# --------------------------------------------------------------------------- what sees the client


async def test_connect_log_line_names_client_and_proxy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with (
        open_test_broker(listeners=lb(ProxyMode.REQUIRED)) as broker,
        await trio.open_tcp_stream("127.0.0.1", broker.port) as stream,
    ):
        await stream.send_all(V1_HEADER + CONNECT_311)
        assert await receive_exactly(stream, 4) == CONNACK_311_ACCEPTED
        me = local_endpoint(stream)
    connected = [r.getMessage() for r in caplog.records if "client_id='c1'" in r.getMessage()]
    assert any(
        f"client=203.0.113.7:51234 via proxy 127.0.0.1:{me.port}" in line for line in connected
    ), connected


async def test_retained_message_records_the_real_client() -> None:
    async with open_test_broker(listeners=lb(ProxyMode.REQUIRED)) as broker:
        async with (
            broker.subscribe("sensors/#") as messages,
            await trio.open_tcp_stream("127.0.0.1", broker.port) as stream,
        ):
            await stream.send_all(V1_HEADER + CONNECT_311)
            assert await receive_exactly(stream, 4) == CONNACK_311_ACCEPTED
            await stream.send_all(PUBLISH_RETAINED)
            with trio.fail_after(5):
                routed = await messages.receive()
            me = local_endpoint(stream)
        assert routed.payload == b"21.5"
        retained = broker.retained("sensors/t1")
        assert retained is not None
        assert retained.payload == b"21.5"
        assert retained.publisher == "c1"
        assert retained.peer.client == CLIENT
        assert retained.peer.proxy == me
        assert retained.peer.listener == "lb"


async def test_connect_hook_sees_the_proxy_facts() -> None:
    seen: list[tuple[PeerInfo, Connect]] = []

    def record(peer: PeerInfo, connect: Connect) -> ReasonCode | None:
        seen.append((peer, connect))
        return None

    header = v2_header(ssl_tlv(SSL | CERT_CONN | CERT_SESS, 0, "device-42"))
    listeners = lb(ProxyMode.REQUIRED, use_cn_as_username=True)
    async with open_test_broker(listeners=listeners) as broker:
        hook: ConnectHook = record
        broker.add_connect_hook(hook)
        async with await trio.open_tcp_stream("127.0.0.1", broker.port) as stream:
            await stream.send_all(header + CONNECT_311_MALLORY)
            assert await receive_exactly(stream, 4) == CONNACK_311_ACCEPTED
            me = local_endpoint(stream)
    [(peer, connect)] = seen
    assert connect.client_id == "c1"
    assert connect.username == "mallory"  # the hook sees what the client sent ...
    assert peer.username == "device-42"  # ... and the identity the proxy vouched for
    assert (peer.client, peer.proxy, peer.remote) == (CLIENT, me, me)
    assert peer.proxy_header is not None
    assert peer.proxy_header.version == 2
    assert peer.tls is not None
    assert peer.tls.terminated_by_proxy
    assert peer.tls.peer_cn == "device-42"
    assert peer.tls.peer_verified


async def test_connect_hook_can_refuse_by_real_client_address() -> None:
    def documentation_net_only(peer: PeerInfo, connect: Connect) -> ReasonCode | None:
        if peer.client is not None and peer.client.host.startswith("203.0.113."):
            return ReasonCode.BANNED
        return None

    async with open_test_broker(listeners=lb(ProxyMode.OPTIONAL)) as broker:
        broker.add_connect_hook(documentation_net_only)
        async with await trio.open_tcp_stream("127.0.0.1", broker.port) as stream:
            await stream.send_all(V1_HEADER + CONNECT_311)
            # 5.0 BANNED (0x8A) maps to 3.1.1 return code 5 (not authorized)
            assert await receive_until_closed(stream) == CONNACK_311_NOT_AUTHORIZED
        async with await trio.open_tcp_stream("127.0.0.1", broker.port) as stream:
            await stream.send_all(CONNECT_311)  # same socket address, no header: allowed
            assert await receive_exactly(stream, 4) == CONNACK_311_ACCEPTED


# --------------------------------------------------------------------------- CN as username


async def test_verified_cn_overrides_the_connect_username() -> None:
    header = v2_header(ssl_tlv(SSL | CERT_CONN | CERT_SESS, 0, "device-42"))
    listeners = lb(ProxyMode.REQUIRED, use_cn_as_username=True)
    async with (
        open_test_broker(listeners=listeners) as broker,
        await trio.open_tcp_stream("127.0.0.1", broker.port) as stream,
    ):
        await stream.send_all(header + CONNECT_311_MALLORY)
        assert await receive_exactly(stream, 4) == CONNACK_311_ACCEPTED
        [summary] = broker.clients()
        assert summary.username == "device-42"
        assert summary.peer.username == "device-42"
        assert summary.peer.client == CLIENT


@pytest.mark.parametrize(
    ("ssl", "why"),
    [
        (ssl_tlv(SSL, 0, "device-42"), "did not verify"),  # no client certificate
        (ssl_tlv(SSL | CERT_CONN | CERT_SESS, 10, "device-42"), "did not verify"),
        (b"", "no SSL TLV"),
    ],
    ids=["no-cert", "verify-failed", "no-ssl-tlv"],
)
@pytest.mark.parametrize(
    ("connect", "expected_connack"),
    [
        (CONNECT_311_MALLORY, CONNACK_311_NOT_AUTHORIZED),  # return code 5
        (CONNECT_5_MALLORY, b"\x20\x03\x00\x87\x00"),  # reason 0x87, no properties
    ],
    ids=["3.1.1", "5.0"],
)
async def test_unverified_cn_is_not_authorized(
    ssl: bytes,
    why: str,
    connect: bytes,
    expected_connack: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    listeners = lb(ProxyMode.REQUIRED, use_cn_as_username=True)
    async with (
        open_test_broker(listeners=listeners) as broker,
        await trio.open_tcp_stream("127.0.0.1", broker.port) as stream,
    ):
        await stream.send_all(v2_header(ssl) + connect)
        reply = await receive_until_closed(stream)
        # one CONNACK, then the connection is closed; a 5.0 broker may add properties
        # (e.g. a Reason String), so only the fixed part is compared for 5.0
        assert reply[0] == 0x20
        assert len(reply) == 2 + reply[1]
        assert reply[2:4] == expected_connack[2:4]
        if connect is CONNECT_311_MALLORY:
            assert reply == expected_connack
        assert broker.clients() == []
        assert broker.stats.connects_refused == 1
    refused = [r.getMessage() for r in caplog.records if "refused CONNECT" in r.getMessage()]
    assert len(refused) == 1, refused
    assert "use_cn_as_username" in refused[0]
    assert why in refused[0]
    assert "client=203.0.113.7:51234 via proxy 127.0.0.1:" in refused[0]
