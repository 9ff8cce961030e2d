"""The listener's PROXY policy (read_proxy_preamble / apply_header) over in-memory streams.

Header bytes are laid out by hand from haproxy's proxy-protocol.txt (struct packing only),
never produced by our own code. Timing tests run on trio's autojump clock, so "refused at
exactly ``timeout``" is checked in virtual seconds.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections import Counter

import attrs
import pytest
import trio
import trio.testing
from helpers import SocketReads

from trio_mqtt import open_broker
from trio_mqtt.config import BrokerConfig, ListenerConfig, ProxyMode, ProxyPolicy
from trio_mqtt.peer import Endpoint, PeerInfo, SocketEnds
from trio_mqtt.proxy import Command, parse_proxy_header
from trio_mqtt.server.proxy_policy import (
    Preamble,
    apply_header,
    preamble_at_once,
    read_proxy_preamble,
)
from trio_mqtt.server.rejection import ConnectionRejected, HealthCheck
from trio_mqtt.server.watched_stream import WatchedSocketStream

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
# 3.1.1 CONNECT, clean session, keep alive 60, client id "c1" (MQTT 3.1.1 section 3.1)
CONNECT = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1"
# The first bytes of a TLS ClientHello record (content type 0x16, version 3.1)
TLS_HELLO_START = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"

V1_HEADER = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 1883\r\n"
CLIENT = Endpoint("203.0.113.7", 51234)

LOCAL_END = Endpoint("127.0.0.1", 1883)
TRUSTED_REMOTE = Endpoint("127.0.0.1", 40000)
UNTRUSTED_REMOTE = Endpoint("192.0.2.9", 40001)

SSL = 0x01
CERT_CONN = 0x02
CERT_SESS = 0x04


def ends_of(remote: Endpoint) -> SocketEnds:
    return SocketEnds("lb", "tcp", LOCAL_END, remote)


def policy(
    mode: ProxyMode = ProxyMode.REQUIRED,
    *,
    timeout: float = 1.0,
    use_cn_as_username: bool = False,
) -> ProxyPolicy:
    return ProxyPolicy(
        mode=mode,
        trusted_sources=("127.0.0.0/8",),
        timeout=timeout,
        use_cn_as_username=use_cn_as_username,
    )


def tlv(tlv_type: int, value: bytes) -> bytes:
    return struct.pack("!BH", tlv_type, len(value)) + value


def v2_proxy_inet(tlvs: bytes = b"") -> bytes:
    """v2 PROXY, INET/STREAM, 203.0.113.7:51234 -> 127.0.0.1:1883, then ``tlvs``."""
    body = bytes([203, 0, 113, 7, 127, 0, 0, 1]) + struct.pack("!HH", 51234, 1883) + tlvs
    return SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body


def ssl_tlv(client: int, verify: int, cn: str | None) -> bytes:
    subs = tlv(0x21, b"TLSv1.3")
    if cn is not None:
        subs += tlv(0x22, cn.encode())
    return tlv(0x20, struct.pack("!BI", client, verify) + subs)


async def preamble_of(data: bytes, pol: ProxyPolicy, remote: Endpoint = TRUSTED_REMOTE) -> Preamble:
    """Run read_proxy_preamble on ``data`` sent as one segment."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(data)
    return await read_proxy_preamble(server, pol, ends_of(remote))


async def refusal_of(
    data: bytes, pol: ProxyPolicy, remote: Endpoint = TRUSTED_REMOTE
) -> ConnectionRejected:
    with pytest.raises(ConnectionRejected) as info:
        await preamble_of(data, pol, remote)
    return info.value


class UntouchableStream(trio.abc.ReceiveStream):
    """Counts receive calls; would hand out a valid header if it were ever asked."""

    def __init__(self) -> None:
        self.receive_calls = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self.receive_calls += 1
        await trio.lowlevel.checkpoint()
        return V1_HEADER + CONNECT

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


# --------------------------------------------------------------------------- deadline


async def test_trickling_peer_is_refused_at_exactly_the_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = trio.testing.memory_stream_pair()

    async def trickle() -> None:
        for byte in V1_HEADER:
            await client.send_all(bytes([byte]))
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        start = trio.current_time()
        with pytest.raises(ConnectionRejected) as info:
            await read_proxy_preamble(server, policy(timeout=2.5), ends_of(TRUSTED_REMOTE))
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    # Each byte arrives well within 2.5 s of the previous one: only a deadline on the
    # whole header (not per read) can stop this peer, and it must not stop it later.
    assert elapsed == pytest.approx(2.5, abs=1e-9)
    assert info.value.reason == "timeout"
    assert "2.5s" in info.value.detail
    assert "3 bytes received" in info.value.detail  # bytes sent at t=0, 1 and 2


async def test_slow_but_complete_header_within_the_timeout_is_accepted(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = trio.testing.memory_stream_pair()

    async def trickle() -> None:
        for byte in V1_HEADER:
            await client.send_all(bytes([byte]))
            await trio.sleep(1)
        await client.send_all(CONNECT)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        start = trio.current_time()
        result = await read_proxy_preamble(server, policy(timeout=60), ends_of(TRUSTED_REMOTE))
        elapsed = trio.current_time() - start
    # the last header byte goes out at t = len - 1
    assert elapsed == pytest.approx(len(V1_HEADER) - 1, abs=1e-9)
    assert result.peer.client == CLIENT
    assert result.leftover == b""  # CONNECT was not sent yet when the header completed


async def test_silent_peer_is_refused_at_the_timeout(autojump_clock: trio.abc.Clock) -> None:
    _client, server = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(ConnectionRejected) as info:
        await read_proxy_preamble(server, policy(timeout=3.0), ends_of(TRUSTED_REMOTE))
    assert trio.current_time() - start == pytest.approx(3.0, abs=1e-9)
    assert info.value.reason == "timeout"
    assert "0 bytes received" in info.value.detail


# --------------------------------------------------------------------------- leftover


@pytest.mark.parametrize(
    "header", [V1_HEADER, v2_proxy_inet(), v2_proxy_inet(tlv(0x04, b"\x00\x00"))]
)
async def test_header_and_connect_in_one_segment_leave_exactly_the_connect(
    header: bytes,
) -> None:
    result = await preamble_of(header + CONNECT, policy())
    assert result.leftover == CONNECT
    assert result.peer.client == CLIENT
    assert result.peer.proxy == TRUSTED_REMOTE
    assert result.peer.remote == TRUSTED_REMOTE


@pytest.mark.parametrize("split", [1, 6, len(V1_HEADER) - 1, len(V1_HEADER) + 3])
async def test_header_split_across_segments_still_leaves_exactly_the_connect(
    split: int,
) -> None:
    data = V1_HEADER + CONNECT
    client, server = trio.testing.memory_stream_pair()

    async def send_in_two() -> None:
        await client.send_all(data[:split])
        await trio.sleep(0.01)
        await client.send_all(data[split:])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_in_two)
        result = await read_proxy_preamble(server, policy(), ends_of(TRUSTED_REMOTE))
    rest = await server.receive_some(4096) if len(result.leftover) < len(CONNECT) else b""
    # what the preamble kept plus what is still in the stream is the CONNECT, in order
    assert result.leftover + rest == CONNECT
    assert result.peer.client == CLIENT


# --------------------------------------------------------------------------- optional mode


@pytest.mark.parametrize("remote", [TRUSTED_REMOTE, UNTRUSTED_REMOTE])
@pytest.mark.parametrize("first_bytes", [CONNECT, TLS_HELLO_START])
async def test_optional_without_header_passes_the_first_bytes_on(
    remote: Endpoint, first_bytes: bytes
) -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(first_bytes)
    ends = ends_of(remote)
    result = await read_proxy_preamble(server, policy(ProxyMode.OPTIONAL), ends)
    assert result.leftover == first_bytes
    assert result.peer == ends.peer()
    assert result.peer.client == remote
    assert result.peer.proxy is None
    assert result.peer.proxy_header is None


async def test_optional_with_header_from_trusted_source_uses_it() -> None:
    result = await preamble_of(V1_HEADER + CONNECT, policy(ProxyMode.OPTIONAL))
    assert result.peer.client == CLIENT
    assert result.peer.proxy == TRUSTED_REMOTE
    assert result.leftover == CONNECT


@pytest.mark.parametrize("header", [V1_HEADER, v2_proxy_inet()])
async def test_optional_header_from_untrusted_source_is_spoofing(header: bytes) -> None:
    refusal = await refusal_of(header + CONNECT, policy(ProxyMode.OPTIONAL), UNTRUSTED_REMOTE)
    assert refusal.reason == "spoofed-header"
    assert "192.0.2.9" in refusal.detail


@pytest.mark.parametrize("first", [b"P", b"\r"])
async def test_optional_spoofing_is_detected_by_the_first_byte_alone(first: bytes) -> None:
    # Even an incomplete (or bogus) header is refused as spoofed, not as invalid.
    refusal = await refusal_of(first, policy(ProxyMode.OPTIONAL), UNTRUSTED_REMOTE)
    assert refusal.reason == "spoofed-header"


# --------------------------------------------------------------------------- required / off


async def test_required_from_untrusted_source_is_refused_without_reading() -> None:
    stream = UntouchableStream()
    with pytest.raises(ConnectionRejected) as info:
        await read_proxy_preamble(stream, policy(), ends_of(UNTRUSTED_REMOTE))
    assert stream.receive_calls == 0
    assert info.value.reason == "untrusted-source"
    assert "192.0.2.9" in info.value.detail


async def test_required_with_empty_trusted_sources_trusts_everyone() -> None:
    open_policy = ProxyPolicy(mode=ProxyMode.REQUIRED, timeout=1.0)
    result = await preamble_of(V1_HEADER + CONNECT, open_policy, UNTRUSTED_REMOTE)
    assert result.peer.client == CLIENT
    assert result.peer.proxy == UNTRUSTED_REMOTE


async def test_off_reads_nothing_and_keeps_the_peer() -> None:
    stream = UntouchableStream()
    ends = ends_of(UNTRUSTED_REMOTE)
    result = await read_proxy_preamble(stream, ProxyPolicy(), ends)
    assert stream.receive_calls == 0
    assert result.peer == ends.peer()
    assert result.peer.client == UNTRUSTED_REMOTE
    assert result.leftover == b""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (CONNECT, "invalid-header"),  # required, but the client speaks MQTT directly
        (b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 99999\r\n", "invalid-header"),
        (SIG + b"\x31\x11\x00\x0c" + bytes(12), "invalid-header"),  # version 3
        (V1_HEADER[:10], "closed"),
    ],
)
async def test_required_refusals(data: bytes, reason: str) -> None:
    client, server = trio.testing.memory_stream_pair()
    if data:
        await client.send_all(data)
    await client.send_eof()
    with pytest.raises(ConnectionRejected) as info:
        await read_proxy_preamble(server, policy(), ends_of(TRUSTED_REMOTE))
    assert info.value.reason == reason
    assert info.value.detail


# --------------------------------------------------------------------------- LOCAL / UNKNOWN


@pytest.mark.parametrize(
    "header",
    [
        SIG + b"\x20\x00\x00\x00",  # v2 LOCAL, UNSPEC, no addresses (a health check)
        SIG + b"\x20\x11\x00\x0c" + bytes([203, 0, 113, 7, 127, 0, 0, 1, 0xC8, 0x22, 7, 91]),
        SIG + b"\x21\x00\x00\x00",  # v2 PROXY but UNSPEC family: no usable address
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    ],
)
@pytest.mark.parametrize("mode", [ProxyMode.REQUIRED, ProxyMode.OPTIONAL])
async def test_local_and_unknown_keep_the_socket_addresses(header: bytes, mode: ProxyMode) -> None:
    result = await preamble_of(header + CONNECT, policy(mode))
    peer = result.peer
    assert peer.client == TRUSTED_REMOTE
    assert peer.remote == TRUSTED_REMOTE
    assert peer.local == LOCAL_END
    assert peer.proxy is None
    assert peer.proxy_header is not None
    assert peer.proxy_header.is_local
    assert result.leftover == CONNECT


async def test_v2_local_command_is_reported() -> None:
    result = await preamble_of(SIG + b"\x20\x00\x00\x00", policy())
    assert result.peer.proxy_header is not None
    assert result.peer.proxy_header.command is Command.LOCAL


# --------------------------------------------------------------------------- CN as username


CN_TABLE = [
    # (client bits, verify, CN, certificate verified, username, fragment of identity_error)
    (SSL | CERT_CONN | CERT_SESS, 0, "device-42", True, "device-42", None),
    (SSL | CERT_CONN, 0, "device-42", True, "device-42", None),
    (SSL | CERT_SESS, 0, "device-42", True, "device-42", None),
    (SSL, 0, "device-42", False, None, "did not verify"),  # TLS, but no certificate
    (CERT_CONN | CERT_SESS, 0, "device-42", False, None, "did not verify"),  # no TLS bit
    (0, 0, "device-42", False, None, "did not verify"),
    (SSL | CERT_CONN | CERT_SESS, 1, "device-42", False, None, "did not verify"),  # failed
    (SSL | CERT_CONN, 0x12, "device-42", False, None, "did not verify"),
    (SSL | CERT_CONN | CERT_SESS, 0, None, True, None, "no CN"),  # verified, but no CN
]


@pytest.mark.parametrize(("client", "verify", "cn", "verified", "username", "why"), CN_TABLE)
async def test_cn_as_username_only_when_the_proxy_verified_a_certificate(
    client: int,
    verify: int,
    cn: str | None,
    verified: bool,
    username: str | None,
    why: str | None,
) -> None:
    header = v2_proxy_inet(ssl_tlv(client, verify, cn))
    result = await preamble_of(header + CONNECT, policy(use_cn_as_username=True))
    peer = result.peer
    assert peer.username == username
    if why is None:
        assert peer.identity_error is None
    else:
        assert peer.identity_error is not None
        assert "use_cn_as_username" in peer.identity_error
        assert why in peer.identity_error
        if "did not verify" in why:
            assert f"{client:#x}" in peer.identity_error
            assert f"verify {verify}" in peer.identity_error
    assert peer.tls is not None
    assert peer.tls.terminated_by_proxy
    assert peer.tls.peer_cn == cn
    assert peer.tls.version == "TLSv1.3"
    assert peer.tls.peer_verified is verified
    assert peer.client == CLIENT


@pytest.mark.parametrize("header", [V1_HEADER, v2_proxy_inet(), SIG + b"\x20\x00\x00\x00"])
async def test_cn_as_username_without_ssl_tlv_is_an_identity_error(header: bytes) -> None:
    result = await preamble_of(header + CONNECT, policy(use_cn_as_username=True))
    peer = result.peer
    assert peer.username is None
    assert peer.identity_error is not None
    assert "no SSL TLV" in peer.identity_error
    assert peer.tls is None


async def test_cn_is_not_a_username_unless_asked() -> None:
    header = v2_proxy_inet(ssl_tlv(SSL | CERT_CONN | CERT_SESS, 0, "device-42"))
    result = await preamble_of(header + CONNECT, policy(use_cn_as_username=False))
    peer = result.peer
    assert peer.username is None
    assert peer.identity_error is None
    assert peer.tls is not None
    assert peer.tls.peer_cn == "device-42"
    assert peer.tls.peer_verified


async def test_authority_becomes_the_sni() -> None:
    header = v2_proxy_inet(
        tlv(0x02, b"mqtt.example.com") + ssl_tlv(SSL | CERT_CONN, 0, "device-42")
    )
    result = await preamble_of(header + CONNECT, policy(use_cn_as_username=True))
    peer = result.peer
    assert peer.tls is not None
    assert peer.proxy_header is not None
    assert peer.tls.sni == "mqtt.example.com"
    assert peer.proxy_header.authority == "mqtt.example.com"
    assert peer.username == "device-42"


async def closed_refusal(data: bytes) -> ConnectionRejected:
    client, server = trio.testing.memory_stream_pair()
    if data:
        await client.send_all(data)
    await client.aclose()
    with pytest.raises(ConnectionRejected) as info:
        await read_proxy_preamble(server, policy(), ends_of(TRUSTED_REMOTE))
    return info.value


async def test_connect_and_close_without_a_byte_is_a_health_check() -> None:
    # what a load balancer's plain TCP health check does: no refusal at all
    client, server = trio.testing.memory_stream_pair()
    await client.aclose()
    with pytest.raises(HealthCheck) as info:
        await read_proxy_preamble(server, policy(), ends_of(TRUSTED_REMOTE))
    assert "without sending anything" in info.value.detail


class ResetStream(trio.abc.ReceiveStream):
    """A peer that resets the connection before sending anything (HAProxy's TCP check)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise trio.BrokenResourceError("connection reset by peer")

    async def aclose(self) -> None:
        pass


async def test_reset_without_a_byte_is_a_health_check() -> None:
    with pytest.raises(HealthCheck) as info:
        await read_proxy_preamble(ResetStream(), policy(), ends_of(TRUSTED_REMOTE))
    assert "reset without sending anything" in info.value.detail


async def test_close_in_the_middle_of_a_header_is_a_warning() -> None:
    refusal = await closed_refusal(V1_HEADER[:10])
    assert refusal.reason == "closed"
    assert refusal.level == logging.WARNING
    assert "before a complete PROXY header" in refusal.detail


# --------------------------------------------------------------------------- require_tls /
# require_verified_client_cert (haproxy's proxy-protocol.txt, 2.2.5: PP2_CLIENT_SSL 0x01,
# PP2_CLIENT_CERT_CONN 0x02, PP2_CLIENT_CERT_SESS 0x04; verify is 0 only for a certificate
# that was presented and verified)


def requiring(
    *, tls: bool = False, cert: bool = False, mode: ProxyMode = ProxyMode.REQUIRED
) -> ProxyPolicy:
    return ProxyPolicy(
        mode=mode,
        trusted_sources=("127.0.0.0/8",),
        timeout=1.0,
        require_tls=tls,
        require_verified_client_cert=cert,
    )


REQUIREMENT_TABLE = [
    # (SSL TLV as (client bits, verify) or None, passes require_tls, passes require_cert)
    (None, False, False),
    ((0, 0), False, False),  # the TLV, but the client bits say no TLS
    ((CERT_CONN | CERT_SESS, 0), False, False),  # certificate bits without the TLS bit
    ((SSL, 0), True, False),  # TLS without a client certificate
    ((SSL, 1), True, False),
    ((SSL | CERT_CONN | CERT_SESS, 1), True, False),  # a certificate that failed to verify
    ((SSL | CERT_CONN, 0x12), True, False),
    ((SSL | CERT_CONN, 0), True, True),
    ((SSL | CERT_SESS, 0), True, True),  # presented earlier on the resumed session
    ((SSL | CERT_CONN | CERT_SESS, 0), True, True),
]


@pytest.mark.parametrize(("ssl", "tls_ok", "cert_ok"), REQUIREMENT_TABLE)
@pytest.mark.parametrize("mode", [ProxyMode.REQUIRED, ProxyMode.OPTIONAL])
async def test_require_tls_and_require_verified_client_cert_read_the_ssl_tlv(
    ssl: tuple[int, int] | None, tls_ok: bool, cert_ok: bool, mode: ProxyMode
) -> None:
    header = v2_proxy_inet(b"" if ssl is None else ssl_tlv(ssl[0], ssl[1], "device-42"))
    for pol, ok, reason, option in [
        (requiring(tls=True, mode=mode), tls_ok, "tls-required", "require_tls"),
        (
            requiring(cert=True, mode=mode),
            cert_ok,
            "client-cert-required",
            "require_verified_client_cert",
        ),
    ]:
        if ok:
            result = await preamble_of(header + CONNECT, pol)
            assert result.peer.client == CLIENT
            assert result.leftover == CONNECT
            continue
        refusal = await refusal_of(header + CONNECT, pol)
        assert refusal.reason == reason
        assert refusal.level == logging.WARNING
        assert refusal.detail.startswith(f"client {CLIENT} via the proxy: {option}: ")
        if ssl is None:
            assert "no SSL TLV" in refusal.detail
        else:
            assert f"client flags {ssl[0]:#x}" in refusal.detail


async def test_without_tls_both_requirements_report_the_tls_one() -> None:
    refusal = await refusal_of(v2_proxy_inet(ssl_tlv(0, 0, None)), requiring(tls=True, cert=True))
    assert refusal.reason == "tls-required"
    assert "did not use TLS to reach the proxy" in refusal.detail


async def test_with_tls_but_no_certificate_both_requirements_report_the_certificate() -> None:
    refusal = await refusal_of(v2_proxy_inet(ssl_tlv(SSL, 0, None)), requiring(tls=True, cert=True))
    assert refusal.reason == "client-cert-required"
    assert "no verified client certificate (client flags 0x1, verify 0)" in refusal.detail


@pytest.mark.parametrize(("tls", "cert"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("mode", [ProxyMode.REQUIRED, ProxyMode.OPTIONAL])
async def test_requirements_refuse_every_v1_header(tls: bool, cert: bool, mode: ProxyMode) -> None:
    # v1 has no TLVs: nothing in it can say the client used TLS or a certificate
    refusal = await refusal_of(V1_HEADER + CONNECT, requiring(tls=tls, cert=cert, mode=mode))
    assert refusal.reason == ("tls-required" if tls else "client-cert-required")
    assert "PROXY v1 header carries no TLS information" in refusal.detail
    assert "send-proxy-v2-ssl" in refusal.detail


async def test_requirements_refuse_v1_unknown_too() -> None:
    refusal = await refusal_of(b"PROXY UNKNOWN\r\n" + CONNECT, requiring(tls=True))
    assert refusal.reason == "tls-required"
    assert refusal.detail.startswith("require_tls: a PROXY v1 header")


async def test_requirements_refuse_a_v2_proxy_command_without_addresses() -> None:
    # PROXY command, UNSPEC family: a relayed client whose address the proxy cannot tell
    refusal = await refusal_of(SIG + b"\x21\x00\x00\x00" + CONNECT, requiring(cert=True))
    assert refusal.reason == "client-cert-required"
    assert "no SSL TLV" in refusal.detail


@pytest.mark.parametrize(
    "header",
    [
        SIG + b"\x20\x00\x00\x00",  # v2 LOCAL, UNSPEC: a health check
        SIG + b"\x20\x11\x00\x0c" + bytes([203, 0, 113, 7, 127, 0, 0, 1, 0xC8, 0x22, 7, 91]),
    ],
)
async def test_requirements_leave_a_v2_local_header_alone(header: bytes) -> None:
    result = await preamble_of(header + CONNECT, requiring(tls=True, cert=True))
    assert result.peer.client == TRUSTED_REMOTE
    assert result.peer.proxy_header is not None
    assert result.peer.proxy_header.command is Command.LOCAL
    assert result.leftover == CONNECT


async def test_optional_requirements_leave_a_client_without_header_alone() -> None:
    result = await preamble_of(CONNECT, requiring(tls=True, cert=True, mode=ProxyMode.OPTIONAL))
    assert result.peer.proxy_header is None
    assert result.leftover == CONNECT


# ------------------------------------------------------------ on a socket (no deadline)


async def _socket_pair() -> tuple[WatchedSocketStream, trio.SocketStream]:
    """The broker's end (as a listener wraps it) and the client's, over a socketpair."""
    ours, theirs = trio.socket.socketpair()
    return WatchedSocketStream(ours), trio.SocketStream(theirs)


async def test_receive_nowait_takes_what_the_socket_holds() -> None:
    server, client = await _socket_pair()
    assert server.receive_nowait(100) is None  # nothing yet: no wait either
    await client.send_all(b"abc")
    await trio.testing.wait_all_tasks_blocked()
    assert server.receive_nowait(100) == b"abc"
    await client.aclose()
    assert server.receive_nowait(100) == b""  # EOF
    await server.aclose()
    assert server.receive_nowait(100) is None  # closed: receive_some says so


async def test_a_header_already_received_is_read_without_a_deadline_scope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy's header usually arrives with the connection: no scope is entered for it
    (a deadline scope costs a short connection more than the read)."""
    scopes: list[float] = []
    real_fail_at = trio.fail_at

    def counting_fail_at(deadline: float) -> trio.CancelScope:
        scopes.append(deadline)
        return real_fail_at(deadline)

    monkeypatch.setattr(trio, "fail_at", counting_fail_at)
    server, client = await _socket_pair()
    await client.send_all(V1_HEADER + CONNECT)
    await trio.testing.wait_all_tasks_blocked()
    preamble = await read_proxy_preamble(server, policy(), ends_of(TRUSTED_REMOTE))
    assert preamble.peer.client == CLIENT and preamble.leftover == CONNECT
    assert scopes == []

    # a header that has not arrived yet is waited for under the one deadline
    server, client = await _socket_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, V1_HEADER[:10])
        started = trio.current_time()
        with pytest.raises(ConnectionRejected, match=r"no complete PROXY header within 0\.2s"):
            await read_proxy_preamble(server, policy(timeout=0.2), ends_of(TRUSTED_REMOTE))
        assert 0.2 <= trio.current_time() - started < 1.0
    assert len(scopes) >= 1 and all(deadline == scopes[0] for deadline in scopes)


async def test_a_proxied_connection_whose_bytes_are_there_enters_no_deadline_scope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through a listener: a header sent together with the CONNECT (as HAProxy sends the
    client's first bytes right behind it) is read, checked for a second header and
    handed to MQTT without a fail_at/fail_after scope."""
    scopes: list[str] = []
    real_fail_at, real_fail_after = trio.fail_at, trio.fail_after

    def fail_at(deadline: float) -> trio.CancelScope:
        scopes.append("fail_at")
        return real_fail_at(deadline)

    def fail_after(seconds: float) -> trio.CancelScope:
        scopes.append("fail_after")
        return real_fail_after(seconds)

    monkeypatch.setattr(trio, "fail_at", fail_at)
    monkeypatch.setattr(trio, "fail_after", fail_after)
    listener = ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=policy())
    config = BrokerConfig(listeners=(listener,), sys_interval=0)
    async with open_broker(config) as broker:
        # connected and sent before the broker's accept loop runs again (no await between)
        sock = socket.create_connection(("127.0.0.1", broker.port))
        sock.sendall(V1_HEADER + CONNECT)
        client = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        assert await client.receive_some(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        [summary] = broker.clients()
        assert summary.peer.client == CLIENT
        await client.aclose()
    assert scopes == []


async def test_after_the_bytes_that_came_with_the_header_the_reader_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CONNECT read with the header is most likely all the socket had: the reader
    waits for the socket next rather than reading it for EAGAIN (a system call and an
    exception per proxied connection)."""
    reads = SocketReads()
    listener = ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=policy())
    config = BrokerConfig(listeners=(listener,), sys_interval=0)
    async with open_broker(config) as broker:
        reads.install(monkeypatch)
        sock = socket.create_connection(("127.0.0.1", broker.port))
        sock.sendall(V1_HEADER + CONNECT)
        client = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        assert await client.receive_some(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        await client.send_all(b"\xc0\x00")  # PINGREQ
        assert await client.receive_some(2) == b"\xd0\x00"  # PINGRESP
        monkeypatch.undo()
        await client.aclose()
    assert reads.eagain == 0


# ------------------------------------------------------------- preamble_at_once


REQUIRE_TLS = ProxyPolicy(mode=ProxyMode.REQUIRED, require_tls=True)
AT_ONCE_CASES = [
    ("v1", V1_HEADER + CONNECT, policy(), TRUSTED_REMOTE),
    (
        "v2-ssl",
        v2_proxy_inet(ssl_tlv(SSL | CERT_CONN, 0, "dev")) + CONNECT,
        policy(),
        TRUSTED_REMOTE,
    ),
    ("optional-none", CONNECT, policy(ProxyMode.OPTIONAL), UNTRUSTED_REMOTE),
    ("optional-spoofed", V1_HEADER + CONNECT, policy(ProxyMode.OPTIONAL), UNTRUSTED_REMOTE),
    ("untrusted", V1_HEADER + CONNECT, policy(), UNTRUSTED_REMOTE),
    ("invalid", b"PROXY TCP4 nonsense\r\n" + CONNECT, policy(), TRUSTED_REMOTE),
    (
        "unmet",
        V1_HEADER + CONNECT,
        ProxyPolicy(mode=ProxyMode.REQUIRED, require_tls=True),
        TRUSTED_REMOTE,
    ),
]


@pytest.mark.parametrize(
    ("data", "pol", "remote"),
    [case[1:] for case in AT_ONCE_CASES],
    ids=[case[0] for case in AT_ONCE_CASES],
)
async def test_the_preamble_at_once_is_the_preamble_read(
    data: bytes, pol: ProxyPolicy, remote: Endpoint
) -> None:
    """Bytes that decide the preamble: preamble_at_once gives what read_proxy_preamble
    gives (or refuses as it does), and counts the same."""
    counted: Counter[tuple[str, str]] = Counter()
    counted_at_once: Counter[tuple[str, str]] = Counter()
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(data)
    try:
        expected: Preamble | str = await read_proxy_preamble(server, pol, ends_of(remote), counted)
    except ConnectionRejected as exc:
        expected = exc.reason
    try:
        got: Preamble | str | None = preamble_at_once(data, pol, ends_of(remote), counted_at_once)
    except ConnectionRejected as exc:
        got = exc.reason
    assert got == expected
    assert counted_at_once == counted


@pytest.mark.parametrize(
    "data",
    [V1_HEADER[:10], V1_HEADER[:-1], v2_proxy_inet()[:20], SIG[:5]],
    ids=["v1-start", "v1-all-but-the-end", "v2-start", "signature-start"],
)
def test_too_few_bytes_at_once_decide_nothing_and_count_nothing(data: bytes) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    assert preamble_at_once(data, policy(), ends_of(TRUSTED_REMOTE), counts) is None
    assert (
        preamble_at_once(data, policy(ProxyMode.OPTIONAL), ends_of(TRUSTED_REMOTE), counts) is None
    )
    assert counts == Counter()


@pytest.mark.parametrize(
    ("header", "use_cn", "spoken_for"),
    [
        (V1_HEADER, False, {"client", "proxy", "proxy_header"}),
        (
            v2_proxy_inet(ssl_tlv(SSL | CERT_CONN, 0, "dev")),
            True,
            {"client", "proxy", "proxy_header", "tls", "username"},
        ),
        (v2_proxy_inet(), True, {"client", "proxy", "proxy_header", "identity_error"}),
    ],
    ids=["v1", "v2-verified-cn", "v2-no-ssl-tlv"],
)
def test_apply_header_keeps_every_field_the_header_does_not_speak_for(
    header: bytes, use_cn: bool, spoken_for: set[str]
) -> None:
    """``apply_header`` builds the PeerInfo field by field (not from the socket's
    PeerInfo): a field added to PeerInfo and forgotten there would be lost; this finds
    it, and that the header's fields are set."""
    ends = ends_of(TRUSTED_REMOTE)
    parsed = parse_proxy_header(header)
    assert parsed is not None
    after = apply_header(ends, parsed[0], policy(use_cn_as_username=use_cn))
    before = ends.peer()
    for field in attrs.fields(PeerInfo):
        if field.name in spoken_for:
            assert getattr(after, field.name) != getattr(before, field.name), field.name
        else:
            assert getattr(after, field.name) == getattr(before, field.name), field.name
    assert (after.client, after.proxy, after.proxy_header) == (CLIENT, TRUSTED_REMOTE, parsed[0])
