"""Real HAProxy (Debian's 2.6) as the PROXY protocol sender, paho-mqtt as the client.

Addresses are chosen so that every role is distinguishable on loopback: paho binds its
socket to 127.0.0.3, HAProxy's frontend listens on 127.0.0.1 and it connects to the broker
from 127.0.0.2 (``source`` on the server line). The broker must then report
client=127.0.0.3:<paho's port> and proxy=127.0.0.2:<HAProxy's outgoing port>.
"""

from __future__ import annotations

import functools
import logging
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trustme
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from tools import require_tool

from trio_mqtt.config import ListenerConfig, ProxyMode, ProxyPolicy
from trio_mqtt.mqtt.packets import Connect
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import Endpoint, PeerInfo
from trio_mqtt.proxy import Address
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .haproxy_helpers import PahoClient, RunningHAProxy, run_haproxy

CLIENT_HOST = "127.0.0.3"  # paho's source address
PROXY_HOST = "127.0.0.2"  # HAProxy's source address towards the broker
SOURCE = f"source {PROXY_HOST}"
NOT_AUTHORIZED = 0x87  # paho reports 3.1.1 return code 5 as this 5.0 reason code too

T = TypeVar("T")


@pytest.fixture
def haproxy() -> str:
    return require_tool("haproxy")


def proxied_listener(*, use_cn_as_username: bool = False) -> tuple[ListenerConfig, ...]:
    policy = ProxyPolicy(
        mode=ProxyMode.REQUIRED,
        trusted_sources=(f"{PROXY_HOST}/32",),  # only HAProxy may connect at all
        timeout=2.0,
        use_cn_as_username=use_cn_as_username,
    )
    return (ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=policy),)


async def in_thread(function: Callable[..., T], *args: object, **kwargs: object) -> T:
    return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


def broker_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("trio_mqtt") and r.levelno >= logging.WARNING
    ]


def peer_of(broker: Broker, client_id: str) -> PeerInfo:
    matches = [c.peer for c in broker.clients() if c.client_id == client_id]
    assert len(matches) == 1, broker.clients()
    return matches[0]


# --------------------------------------------------------------------------- plain TCP


@pytest.mark.parametrize(("server_option", "version"), [("send-proxy", 1), ("send-proxy-v2", 2)])
async def test_paho_through_haproxy_shows_the_real_client(
    haproxy: str,
    tmp_path: Path,
    server_option: str,
    version: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with (
        open_test_broker(listeners=proxied_listener()) as broker,
        run_haproxy(
            haproxy, tmp_path, broker_port=broker.port, server_options=f"{server_option} {SOURCE}"
        ) as hap,
    ):
        paho = PahoClient("paho-1")
        try:
            connack = await in_thread(paho.connect, "127.0.0.1", hap.port, bind_address=CLIENT_HOST)
            assert connack.value == 0, connack
            peer = peer_of(broker, "paho-1")
            assert peer.client == Endpoint(CLIENT_HOST, paho.local_port)
            assert peer.proxy is not None
            assert peer.proxy.host == PROXY_HOST
            assert peer.proxy == peer.remote
            assert peer.proxy.port != paho.local_port
            assert peer.proxy_header is not None
            assert peer.proxy_header.version == version
            assert peer.proxy_header.source == Address(CLIENT_HOST, paho.local_port)
            assert peer.proxy_header.destination == Address("127.0.0.1", hap.port)
            expected_log = f"client={CLIENT_HOST}:{paho.local_port} via proxy {peer.proxy}"
        finally:
            await in_thread(paho.disconnect)
    assert any(expected_log in r.getMessage() for r in caplog.records)
    assert broker_problems(caplog) == []
    assert broker.listeners["lb"].rejections == Counter()


async def test_direct_connection_bypassing_haproxy_is_refused(
    haproxy: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only HAProxy's address is trusted: the same client connecting directly is not."""
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with open_test_broker(listeners=proxied_listener()) as broker:
        paho = PahoClient("sneaky")
        with pytest.raises(ConnectionError):
            await in_thread(paho.connect, "127.0.0.1", broker.port, bind_address=CLIENT_HOST)
        await in_thread(paho.disconnect)
        assert broker.clients() == []
        assert broker.listeners["lb"].rejections == Counter({"untrusted-source": 1})
    [warning] = broker_problems(caplog)
    assert f"from {CLIENT_HOST}:" in warning


# --------------------------------------------------------------------------- TLS at HAProxy


class TLSFiles:
    """A CA, a server certificate for HAProxy and client certificates, on disk."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.ca_pem = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        self.server_pem = directory / "server.pem"  # key + chain, as HAProxy's crt wants
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        server.private_key_and_cert_chain_pem.write_to_path(str(self.server_pem))
        self.device = self.ca.issue_cert("device-42.example", common_name="device-42")
        # same CN, but signed by a CA HAProxy does not trust
        self.rogue = trustme.CA().issue_cert("device-42.example", common_name="device-42")

    def bind_options(self, extra: str = "") -> str:
        return f"ssl crt {self.server_pem} ca-file {self.ca_pem} verify optional {extra}"

    def client_context(self, cert: trustme.LeafCert | None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    return TLSFiles(tmp_path)


async def connect_over_tls(
    hap: RunningHAProxy,
    context: ssl.SSLContext,
    client_id: str,
    *,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    username: str | None = "mallory",
) -> tuple[PahoClient, PahoReasonCode]:
    paho = PahoClient(client_id, protocol=protocol, username=username, tls_context=context)
    # "localhost" (not an IP) so that the client sends SNI
    connack = await in_thread(paho.connect, "localhost", hap.port, bind_address=CLIENT_HOST)
    return paho, connack


@asynccontextmanager
async def cn_broker_behind_tls_haproxy(
    haproxy: str, tmp_path: Path, tls_files: TLSFiles, bind_extra: str = ""
) -> AsyncIterator[tuple[Broker, RunningHAProxy]]:
    """A broker with use_cn_as_username, behind HAProxy terminating TLS (send-proxy-v2-ssl-cn)."""
    async with (
        open_test_broker(listeners=proxied_listener(use_cn_as_username=True)) as broker,
        run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=f"send-proxy-v2-ssl-cn {SOURCE}",
            bind_options=tls_files.bind_options(bind_extra),
        ) as hap,
    ):
        yield broker, hap


async def test_verified_client_certificate_cn_becomes_the_username(
    haproxy: str, tmp_path: Path, tls_files: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with (
        cn_broker_behind_tls_haproxy(haproxy, tmp_path, tls_files) as (broker, hap),
    ):
        context = tls_files.client_context(tls_files.device)
        paho, connack = await connect_over_tls(hap, context, "dev-42", username="mallory")
        try:
            assert connack.value == 0, connack
            [summary] = broker.clients()
            assert summary.username == "device-42"  # not "mallory" from CONNECT
            peer = summary.peer
            assert peer.username == "device-42"
            assert peer.client == Endpoint(CLIENT_HOST, paho.local_port)
            assert peer.tls is not None
            assert peer.tls.terminated_by_proxy
            assert peer.tls.peer_cn == "device-42"
            assert peer.tls.peer_verified
            assert peer.tls.version is not None
            assert peer.tls.version.startswith("TLSv1.")
        finally:
            await in_thread(paho.disconnect)
    assert any("username='device-42'" in r.getMessage() for r in caplog.records)
    assert broker_problems(caplog) == []


@pytest.mark.parametrize(
    "protocol", [MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5], ids=["3.1.1", "5.0"]
)
async def test_client_without_certificate_is_not_authorized(
    haproxy: str,
    tmp_path: Path,
    tls_files: TLSFiles,
    protocol: MQTTProtocolVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with (
        cn_broker_behind_tls_haproxy(haproxy, tmp_path, tls_files) as (broker, hap),
    ):
        context = tls_files.client_context(None)
        paho, connack = await connect_over_tls(hap, context, "no-cert", protocol=protocol)
        await in_thread(paho.disconnect)
        assert connack.value == NOT_AUTHORIZED, connack
        assert broker.clients() == []
        assert broker.stats.connects_refused == 1
    [refused] = [r.getMessage() for r in caplog.records if "refused CONNECT" in r.getMessage()]
    # HAProxy reports TLS without a certificate: client bits 0x01 only
    assert "did not verify a client certificate (client flags 0x1, verify 0)" in refused
    assert f"client={CLIENT_HOST}:" in refused


async def test_certificate_haproxy_could_not_verify_is_not_authorized(
    haproxy: str, tmp_path: Path, tls_files: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """HAProxy told to let a bad certificate through reports verify != 0: the CN is not used."""
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with (
        cn_broker_behind_tls_haproxy(
            haproxy, tmp_path, tls_files, "ca-ignore-err all crt-ignore-err all"
        ) as (broker, hap),
    ):
        context = tls_files.client_context(tls_files.rogue)
        paho, connack = await connect_over_tls(hap, context, "rogue")
        await in_thread(paho.disconnect)
        assert connack.value == NOT_AUTHORIZED, connack
        assert broker.clients() == []
    [refused] = [r.getMessage() for r in caplog.records if "refused CONNECT" in r.getMessage()]
    assert "did not verify a client certificate" in refused
    verify = re.search(r"verify (\d+)\)", refused)
    assert verify is not None, refused
    assert int(verify.group(1)) != 0  # HAProxy reported the verification error


async def test_crc32c_unique_id_and_authority_tlvs_arrive(
    haproxy: str, tmp_path: Path, tls_files: TLSFiles
) -> None:
    async with (
        open_test_broker(listeners=proxied_listener(use_cn_as_username=True)) as broker,
        run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=(
                f"send-proxy-v2-ssl-cn proxy-v2-options crc32c,unique-id,authority {SOURCE}"
            ),
            bind_options=tls_files.bind_options(),
            frontend_lines=["unique-id-format mqtt-%ci-%cp"],
        ) as hap,
    ):
        context = tls_files.client_context(tls_files.device)
        paho, connack = await connect_over_tls(hap, context, "tlvs")
        try:
            assert connack.value == 0, connack
            peer = peer_of(broker, "tlvs")
            header = peer.proxy_header
            assert header is not None
            assert header.crc32c_verified is True
            assert header.unique_id == f"mqtt-{CLIENT_HOST}-{paho.local_port}".encode()
            assert header.authority == "localhost"  # the client's SNI
            assert peer.tls is not None
            assert peer.tls.sni == "localhost"
            assert peer.username == "device-42"
        finally:
            await in_thread(paho.disconnect)


# --------------------------------------------------------------------------- health checks

# An MQTT-level check: CONNECT (3.1.1, client id "hc"), expect CONNACK accepted, DISCONNECT.
MQTT_CHECK = [
    "option tcp-check",
    "tcp-check connect default",
    "tcp-check send-binary 100e00044d5154540402003c00026863",
    "tcp-check expect binary 20020000",
    "tcp-check send-binary e000",
]


@pytest.mark.parametrize(
    ("server_option", "backend_lines", "expected_check"),
    [
        ("send-proxy", [], "L4OK"),
        ("send-proxy-v2", [], "L4OK"),
        ("send-proxy", MQTT_CHECK, "L7OK"),
        ("send-proxy-v2", MQTT_CHECK, "L7OK"),
    ],
    ids=["v1-tcp", "v2-tcp", "v1-mqtt", "v2-mqtt"],
)
async def test_health_checks_are_quiet_and_the_server_is_up(
    haproxy: str,
    tmp_path: Path,
    server_option: str,
    backend_lines: list[str],
    expected_check: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    options = f"{server_option} {SOURCE} check check-send-proxy inter 200ms rise 1 fall 1"
    enough_checks = trio.Event()
    mqtt_checks = 0

    def count_checks(peer: PeerInfo, connect: Connect) -> ReasonCode | None:
        nonlocal mqtt_checks
        if connect.client_id == "hc":
            mqtt_checks += 1
            if mqtt_checks == 4:
                enough_checks.set()
        return None

    async with (
        open_test_broker(listeners=proxied_listener()) as broker,
        run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=options,
            backend_lines=backend_lines,
        ) as hap,
    ):
        if backend_lines:
            # the MQTT check reaches the broker: wait for a few complete checks
            broker.add_connect_hook(count_checks)
            with trio.fail_after(5):
                await enough_checks.wait()
        else:
            await trio.sleep(1.0)  # ~5 checks at 200 ms; nothing reaches the broker to wait for
        state = await hap.server_state()
        assert state["status"] == "UP", (state, hap.output())
        # a leading "* " only means that a check is running right now
        assert state["check_status"].removeprefix("* ") == expected_check, state
        assert state["chkfail"] == "0", state
        assert state["chkdown"] == "0", state
    assert broker_problems(caplog) == [], hap.output()
    assert broker.listeners["lb"].rejections == Counter()
    if backend_lines:
        checks = [r.getMessage() for r in caplog.records if "client_id='hc'" in r.getMessage()]
        connected = [line for line in checks if line.startswith("connected ")]
        assert len(connected) >= 4
        if server_option == "send-proxy-v2":
            # v2 LOCAL: HAProxy's own connection, so the socket address is the client
            assert all(f"client={PROXY_HOST}:" in line for line in connected)
            assert not any("via proxy" in line for line in connected)
        else:
            # v1 has no LOCAL: HAProxy names itself as the client
            assert all(f"client={PROXY_HOST}:" in line for line in connected)
            assert all(f"via proxy {PROXY_HOST}:" in line for line in connected)


# --------------------------------------------------------------------------- require_tls /
# require_verified_client_cert: refused right after the header, before any MQTT byte


def requiring_listener(*, tls: bool = False, cert: bool = False) -> tuple[ListenerConfig, ...]:
    policy = ProxyPolicy(
        mode=ProxyMode.REQUIRED,
        trusted_sources=(f"{PROXY_HOST}/32",),
        timeout=2.0,
        require_tls=tls,
        require_verified_client_cert=cert,
    )
    return (ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=policy),)


async def refused_before_mqtt(paho: PahoClient, host: str, port: int) -> None:
    """The connection is closed without a CONNACK (paho: lost, or a TLS-level error)."""
    with pytest.raises(OSError):  # ConnectionError, ssl.SSLError
        await in_thread(paho.connect, host, port, bind_address=CLIENT_HOST)
    await in_thread(paho.disconnect)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]


@pytest.mark.parametrize("server_option", ["send-proxy-v2-ssl", "send-proxy-v2-ssl-cn"])
async def test_require_verified_client_cert_behind_tls_haproxy(
    haproxy: str,
    tmp_path: Path,
    tls_files: TLSFiles,
    server_option: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with (
        open_test_broker(listeners=requiring_listener(cert=True)) as broker,
        run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=f"{server_option} {SOURCE}",
            bind_options=tls_files.bind_options(),
        ) as hap,
    ):
        # a verified certificate: in, with the username the client chose (no CN option)
        context = tls_files.client_context(tls_files.device)
        paho, connack = await connect_over_tls(hap, context, "with-cert", username="alice")
        try:
            assert connack.value == 0, connack
            [summary] = broker.clients()
            assert summary.username == "alice"  # not the CN: use_cn_as_username is off
            peer = summary.peer
            assert peer.tls is not None
            assert peer.tls.peer_verified
        finally:
            await in_thread(paho.disconnect)
        # TLS without a certificate (verify optional lets it through HAProxy): refused
        no_cert = PahoClient("no-cert", tls_context=tls_files.client_context(None))
        await refused_before_mqtt(no_cert, "localhost", hap.port)
        assert [c.client_id for c in broker.clients()] == []
        assert broker.listeners["lb"].rejections == Counter({"client-cert-required": 1})
        assert broker.stats.connects_refused == 0  # never got as far as a CONNECT
    [refused] = refusals(caplog)
    assert f"client {CLIENT_HOST}:" in refused
    assert "require_verified_client_cert: the proxy reports no verified client certificate" in (
        refused
    )
    assert "(client flags 0x1, verify 0)" in refused  # TLS, no certificate
    assert not any("no-cert" in r.getMessage() for r in caplog.records)  # no CONNECT read


async def test_require_verified_client_cert_refuses_a_certificate_haproxy_let_through(
    haproxy: str, tmp_path: Path, tls_files: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with (
        open_test_broker(listeners=requiring_listener(tls=True, cert=True)) as broker,
        run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=f"send-proxy-v2-ssl-cn {SOURCE}",
            bind_options=tls_files.bind_options("ca-ignore-err all crt-ignore-err all"),
        ) as hap,
    ):
        rogue = PahoClient("rogue", tls_context=tls_files.client_context(tls_files.rogue))
        await refused_before_mqtt(rogue, "localhost", hap.port)
        assert broker.listeners["lb"].rejections == Counter({"client-cert-required": 1})
    [refused] = refusals(caplog)
    verify = re.search(r"client flags (0x[0-9a-f]+), verify (\d+)\)", refused)
    assert verify is not None, refused
    assert int(verify.group(1), 16) & 0x07 in (0x03, 0x05, 0x07)  # TLS and a certificate
    assert int(verify.group(2)) != 0  # but HAProxy could not verify it


async def test_require_tls_refuses_a_plain_tcp_frontend_and_accepts_a_tls_one(
    haproxy: str, tmp_path: Path, tls_files: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with open_test_broker(listeners=requiring_listener(tls=True)) as broker:
        # plain TCP at HAProxy, which still sends the SSL TLV's facts (send-proxy-v2-ssl)
        async with run_haproxy(
            haproxy, tmp_path, broker_port=broker.port, server_options=f"send-proxy-v2-ssl {SOURCE}"
        ) as hap:
            plain = PahoClient("plain")
            await refused_before_mqtt(plain, "127.0.0.1", hap.port)
            assert broker.listeners["lb"].rejections == Counter({"tls-required": 1})
        # TLS at HAProxy, no client certificate: enough for require_tls alone
        async with run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=f"send-proxy-v2-ssl {SOURCE}",
            bind_options=tls_files.bind_options(),
        ) as hap:
            paho, connack = await connect_over_tls(hap, tls_files.client_context(None), "tls")
            try:
                assert connack.value == 0, connack
                peer = peer_of(broker, "tls")
                assert peer.tls is not None
                assert peer.tls.terminated_by_proxy
                assert not peer.tls.peer_verified
            finally:
                await in_thread(paho.disconnect)
        assert broker.listeners["lb"].rejections == Counter({"tls-required": 1})
    [refused] = refusals(caplog)
    assert f"client {CLIENT_HOST}:" in refused
    # HAProxy sends the SSL TLV for a plain connection too, with the TLS bit clear
    assert "require_tls: the client did not use TLS to reach the proxy (client flags 0x0)" in (
        refused
    )


@pytest.mark.parametrize("server_option", ["send-proxy", "send-proxy-v2"])
async def test_require_tls_refuses_headers_that_cannot_tell(
    haproxy: str,
    tmp_path: Path,
    tls_files: TLSFiles,
    server_option: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Even a TLS client is refused when HAProxy sends v1, or v2 without the SSL TLV."""
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with (
        open_test_broker(listeners=requiring_listener(tls=True)) as broker,
        run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=f"{server_option} {SOURCE}",
            bind_options=tls_files.bind_options(),
        ) as hap,
    ):
        paho = PahoClient("tls-v1", tls_context=tls_files.client_context(tls_files.device))
        await refused_before_mqtt(paho, "localhost", hap.port)
        assert broker.listeners["lb"].rejections == Counter({"tls-required": 1})
    [refused] = refusals(caplog)
    expected = "PROXY v1 header carries no TLS" if server_option == "send-proxy" else "no SSL TLV"
    assert expected in refused
    assert "send-proxy-v2-ssl" in refused


async def test_require_options_let_haproxy_health_checks_through(
    haproxy: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """HAProxy's own MQTT check arrives as a v2 LOCAL header: not a client, not refused."""
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    checks = trio.Event()

    def seen_check(peer: PeerInfo, connect: Connect) -> ReasonCode | None:
        if connect.client_id == "hc":
            checks.set()
        return None

    options = f"send-proxy-v2-ssl-cn {SOURCE} check check-send-proxy inter 200ms rise 1 fall 1"
    async with (
        open_test_broker(listeners=requiring_listener(tls=True, cert=True)) as broker,
        run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=options,
            backend_lines=MQTT_CHECK,
        ) as hap,
    ):
        broker.add_connect_hook(seen_check)
        with trio.fail_after(5):
            await checks.wait()
        state = await hap.server_state()
        assert state["status"] == "UP", (state, hap.output())
        assert broker.listeners["lb"].rejections == Counter()
    assert broker_problems(caplog) == [], hap.output()
