"""TLS listeners: contexts, handshakes, TLS facts in PeerInfo, identity as username,
PROXY header then TLS, bad clients, handshake timeout, certificate reload and SIGHUP.

The clients here are trio SSLStreams carrying our RawClient, so each test controls
exactly what is sent (a plain CONNECT on a TLS port, a header before the ClientHello).
"""

from __future__ import annotations

import logging
import shutil
import signal
import ssl
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers import wait_until
from rawclient import RawClient

from trio_mqtt import cli
from trio_mqtt.config import BrokerConfig, ListenerConfig, ProxyPolicy, TLSConfig
from trio_mqtt.config_reload import ReloadReport, RestartNeeded
from trio_mqtt.errors import ConfigError
from trio_mqtt.mqtt.packets import Connack, Connect, Pingreq, Pingresp, ProtocolVersion
from trio_mqtt.peer import PeerInfo, TLSInfo
from trio_mqtt.server.app import Broker
from trio_mqtt.server.tls import (
    MIN_TLS_VERSION,
    apply_tls,
    build_server_context,
    peer_certificate_cn,
)
from trio_mqtt.testing import open_test_broker

from .certs import CertFiles, TestPKI

# A PROXY v2 header, by hand from the spec (section 2.2): signature, 0x21 (v2, PROXY),
# 0x11 (TCP over IPv4), length 12, 203.0.113.7 -> 127.0.0.1, ports 51234 -> 1883.
PROXY_V2_HEADER = (
    b"\r\n\r\n\x00\r\nQUIT\n"
    + b"\x21\x11\x00\x0c"
    + bytes([203, 0, 113, 7])
    + bytes([127, 0, 0, 1])
    + (51234).to_bytes(2, "big")
    + (1883).to_bytes(2, "big")
)
# MQTT 3.1.1 CONNECT, client id "p", keep alive 60: what a client that forgot TLS sends.
PLAIN_CONNECT = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01p"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(tmp_path_factory.mktemp("pki"))


def tls_listener(tls: TLSConfig, **options: Any) -> ListenerConfig:
    return ListenerConfig(name="tls", host="127.0.0.1", port=0, transport="tls", tls=tls, **options)


@asynccontextmanager
async def tls_broker(tls: TLSConfig, **settings: Any) -> AsyncIterator[Broker]:
    listener_options = settings.pop("listener_options", {})
    async with open_test_broker(
        listeners=(tls_listener(tls, **listener_options),), **settings
    ) as broker:
        yield broker


async def open_tls(
    port: int, context: ssl.SSLContext, *, prefix: bytes = b"", server_hostname: str = "localhost"
) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    if prefix:
        await tcp.send_all(prefix)
    stream = trio.SSLStream(tcp, context, server_hostname=server_hostname)
    with trio.fail_after(5):
        await stream.do_handshake()
    return stream


async def mqtt_over_tls(
    port: int, context: ssl.SSLContext, client_id: str = "c1", **options: Any
) -> tuple[RawClient, Connack | None]:
    """Connect with TLS and send CONNECT; the CONNACK, or None if the broker closed."""
    client = RawClient(await open_tls(port, context, **options), ProtocolVersion.V311)
    try:
        await client.send(Connect(client_id=client_id, keep_alive=30))
    except trio.BrokenResourceError:
        return client, None
    packet = await client.receive_or_eof()
    assert packet is None or isinstance(packet, Connack), packet
    return client, packet


def only_client(broker: Broker) -> PeerInfo:
    [summary] = broker.clients()
    return summary.peer


# ------------------------------------------------------------------------------ contexts


def test_context_without_cafile_does_not_ask_for_client_certificates(pki: TestPKI) -> None:
    context = build_server_context(TLSConfig(pki.server.certfile, pki.server.keyfile))
    assert context.verify_mode is ssl.CERT_NONE
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2 is MIN_TLS_VERSION


def test_context_with_cafile_verifies_optional_or_required(pki: TestPKI) -> None:
    assert build_server_context(pki.tls_config()).verify_mode is ssl.CERT_OPTIONAL
    required = pki.tls_config(require_client_cert=True)
    assert build_server_context(required).verify_mode is ssl.CERT_REQUIRED
    # only our CA verifies clients, never the system store
    assert [ca["subject"] for ca in build_server_context(required).get_ca_certs()] == [
        ca["subject"] for ca in ssl.create_default_context(cafile=pki.ca_file).get_ca_certs()
    ]


def test_context_missing_certfile_is_a_config_error(pki: TestPKI, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError) as caught:
        build_server_context(TLSConfig(missing, pki.server.keyfile))
    assert caught.value.key == "certfile"
    assert "No such file or directory" in str(caught.value)
    assert missing in str(caught.value)


def test_context_key_not_matching_the_certificate(pki: TestPKI) -> None:
    with pytest.raises(ConfigError) as caught:
        build_server_context(TLSConfig(pki.server.certfile, pki.alice.keyfile))
    assert caught.value.key == "certfile"
    assert "does the key match" in str(caught.value)


def test_context_cafile_that_is_not_pem(pki: TestPKI, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        build_server_context(TLSConfig(pki.server.certfile, pki.server.keyfile, str(bad)))
    assert caught.value.key == "cafile"
    assert str(bad) in str(caught.value)


async def test_bad_certificate_fails_broker_startup(pki: TestPKI, tmp_path: Path) -> None:
    # one failure comes out of open_broker as itself, not in an exception group
    with pytest.raises(ConfigError, match=r"nope\.pem"):
        async with tls_broker(TLSConfig(str(tmp_path / "nope.pem"), pki.server.keyfile)):
            pass  # pragma: no cover


# ------------------------------------------------------------------- certificate identity


@pytest.mark.parametrize(
    ("subject", "cn"),
    [
        (((("organizationName", "O"),), (("commonName", "alice"),)), "alice"),
        (((("organizationName", "O"),),), None),
        (((("commonName", "a"),), (("commonName", "b"),)), None),  # ambiguous
        (((("commonName", ""),),), None),
    ],
)
def test_peer_certificate_cn(subject: Any, cn: str | None) -> None:
    assert peer_certificate_cn({"subject": subject}) == cn


def test_apply_tls_keeps_an_earlier_identity_error(pki: TestPKI) -> None:
    peer = PeerInfo(listener="tls", transport="tls", identity_error="from the PROXY policy")
    info = TLSInfo(version="TLSv1.3", peer_cn="alice", peer_verified=True)
    refined = apply_tls(peer, info, pki.tls_config(use_identity_as_username=True))
    assert refined.username == "alice"
    assert refined.identity_error == "from the PROXY policy"
    assert refined.tls == info


def test_apply_tls_without_identity_leaves_the_username_alone(pki: TestPKI) -> None:
    peer = PeerInfo(listener="tls", transport="tls")
    info = TLSInfo(version="TLSv1.3", peer_cn="alice", peer_verified=True)
    refined = apply_tls(peer, info, pki.tls_config())
    assert refined.username is None
    assert refined.identity_error is None


# ------------------------------------------------------------------------- handshakes


async def test_tls_connect_records_version_cipher_sni(pki: TestPKI) -> None:
    async with tls_broker(pki.tls_config()) as broker:
        client, connack = await mqtt_over_tls(broker.port, pki.client_context())
        assert connack is not None and connack.reason_code == 0
        tls = only_client(broker).tls
        assert tls is not None
        assert tls.version == "TLSv1.3"
        assert tls.cipher is not None and tls.cipher.startswith("TLS_")
        assert tls.sni == "localhost"
        assert (tls.peer_cn, tls.peer_verified, tls.terminated_by_proxy) == (None, False, False)
        assert only_client(broker).transport == "tls"
        await client.aclose()


async def test_tls_1_2_is_accepted(pki: TestPKI) -> None:
    context = pki.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with tls_broker(pki.tls_config()) as broker:
        client, connack = await mqtt_over_tls(broker.port, context)
        assert connack is not None and connack.reason_code == 0
        tls = only_client(broker).tls
        assert tls is not None and tls.version == "TLSv1.2"
        await client.aclose()


async def test_tls_1_1_is_refused(pki: TestPKI, caplog: pytest.LogCaptureFixture) -> None:
    context = pki.client_context()
    with warnings.catch_warnings():  # deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    async with tls_broker(pki.tls_config()) as broker:
        with pytest.raises(trio.BrokenResourceError):
            await open_tls(broker.port, context)
        handle = broker.listeners["tls"]
        await wait_until(lambda: handle.rejections["tls-handshake"] == 1)
        assert broker.clients() == []


async def test_client_certificate_facts(pki: TestPKI) -> None:
    async with tls_broker(pki.tls_config()) as broker:
        client, connack = await mqtt_over_tls(broker.port, pki.client_context(pki.alice))
        assert connack is not None and connack.reason_code == 0
        peer = only_client(broker)
        assert peer.tls is not None
        assert (peer.tls.peer_cn, peer.tls.peer_verified) == ("alice", True)
        assert peer.username is None  # use_identity_as_username is off
        await client.aclose()


@pytest.mark.parametrize(
    ("cert_name", "why"),
    [
        ("mallory", "certificate verify failed: unable to get local issuer certificate"),
        ("expired", "certificate verify failed: certificate has expired"),
    ],
)
async def test_unverifiable_client_certificate_is_refused(
    pki: TestPKI, cert_name: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    cert: CertFiles = getattr(pki, cert_name)
    async with tls_broker(pki.tls_config()) as broker:
        # TLS 1.3: the client's handshake ends before the server has seen its
        # certificate, so the refusal shows on the client's first read.
        try:
            _client, connack = await mqtt_over_tls(broker.port, pki.client_context(cert))
        except trio.BrokenResourceError:
            connack = None
        assert connack is None
        handle = broker.listeners["tls"]
        await wait_until(lambda: handle.rejections["tls-handshake"] == 1)
        assert broker.clients() == []
    [line] = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert why in line.getMessage()
    assert "client=127.0.0.1:" in line.getMessage()


async def test_required_client_certificate_missing(pki: TestPKI) -> None:
    async with tls_broker(pki.tls_config(require_client_cert=True)) as broker:
        try:
            _client, connack = await mqtt_over_tls(broker.port, pki.client_context())
        except trio.BrokenResourceError:
            connack = None
        assert connack is None
        handle = broker.listeners["tls"]
        await wait_until(lambda: handle.rejections["tls-handshake"] == 1)
        # ... and with one, it is accepted
        client, connack = await mqtt_over_tls(broker.port, pki.client_context(pki.alice))
        assert connack is not None and connack.reason_code == 0
        await client.aclose()


# ---------------------------------------------------------------- identity as username


async def test_identity_as_username_accepts_verified_cn(pki: TestPKI) -> None:
    async with tls_broker(
        pki.tls_config(use_identity_as_username=True), allow_anonymous=False
    ) as broker:
        client, connack = await mqtt_over_tls(broker.port, pki.client_context(pki.alice))
        assert connack is not None and connack.reason_code == 0
        [summary] = broker.clients()
        assert summary.username == "alice"
        assert summary.peer.username == "alice"
        await client.aclose()


@pytest.mark.parametrize(
    ("cert_name", "why"),
    [
        (None, "use_identity_as_username: the client presented no certificate"),
        ("no_cn", "use_identity_as_username: the client certificate has no single subject CN"),
    ],
)
async def test_identity_as_username_refuses_without_identity(
    pki: TestPKI, cert_name: str | None, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cert = None if cert_name is None else getattr(pki, cert_name)
    async with tls_broker(pki.tls_config(use_identity_as_username=True)) as broker:
        client, connack = await mqtt_over_tls(broker.port, pki.client_context(cert))
        assert connack is not None
        assert connack.reason_code == 0x87  # NOT_AUTHORIZED; return code 5 on the wire
        assert await client.expect_closed() == []
        assert broker.clients() == []
    assert any(why in record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------- PROXY header first


async def test_proxy_header_then_tls(pki: TestPKI) -> None:
    policy = ProxyPolicy(mode="required", trusted_sources=["127.0.0.0/8"])
    async with tls_broker(
        pki.tls_config(use_identity_as_username=True),
        listener_options={"proxy_protocol": policy},
    ) as broker:
        client, connack = await mqtt_over_tls(
            broker.port, pki.client_context(pki.alice), prefix=PROXY_V2_HEADER
        )
        assert connack is not None and connack.reason_code == 0
        peer = only_client(broker)
        assert str(peer.client) == "203.0.113.7:51234"
        assert peer.proxy is not None and peer.proxy.host == "127.0.0.1"
        assert peer.tls is not None and peer.tls.peer_cn == "alice"
        assert peer.tls.terminated_by_proxy is False
        assert peer.username == "alice"
        await client.aclose()


async def test_tls_failure_after_proxy_header_logs_the_real_client(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    policy = ProxyPolicy(mode="required")
    async with tls_broker(pki.tls_config(), listener_options={"proxy_protocol": policy}) as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        await stream.send_all(PROXY_V2_HEADER + PLAIN_CONNECT)
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
        await stream.aclose()
        await wait_until(lambda: broker.listeners["tls"].rejections["tls-handshake"] == 1)
    messages = [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(messages) == 1
    assert "client=203.0.113.7:51234 via proxy 127.0.0.1:" in messages[0]


# ------------------------------------------------------------------------- bad clients


async def test_plain_mqtt_client_on_tls_port(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    async with tls_broker(pki.tls_config()) as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        await stream.send_all(PLAIN_CONNECT)
        with trio.fail_after(5):
            # the server answers with a TLS alert record (0x15) or nothing, then closes
            received = b""
            while chunk := await stream.receive_some(100):
                received += chunk
        assert received == b"" or received[0] == 0x15
        await stream.aclose()
        handle = broker.listeners["tls"]
        await wait_until(lambda: handle.rejections["tls-handshake"] == 1)
        # the broker keeps serving
        client, connack = await mqtt_over_tls(broker.port, pki.client_context())
        assert connack is not None and connack.reason_code == 0
        await client.aclose()
    [line] = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "(not a TLS client?)" in line.getMessage()


async def test_tls_client_on_plain_port(pki: TestPKI) -> None:
    async with open_test_broker() as broker:
        with pytest.raises(trio.BrokenResourceError):
            await open_tls(broker.port, pki.client_context())
        # the broker keeps serving plain MQTT
        client = await RawClient.open(broker.port)
        connack = await client.connect("after")
        assert connack.reason_code == 0
        await client.aclose()


async def test_silent_client_is_closed_after_the_handshake_timeout(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    async with tls_broker(pki.tls_config(), connect_timeout=0.3) as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        start = trio.current_time()
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
        assert 0.25 <= trio.current_time() - start < 3
        await stream.aclose()
        await wait_until(lambda: broker.listeners["tls"].rejections["tls-handshake"] == 1)
    assert any("no TLS handshake within 0.3s" in r.getMessage() for r in caplog.records)


async def test_client_that_closes_before_handshake_logs_info(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt.listener")
    async with tls_broker(pki.tls_config()) as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        await stream.aclose()  # what a load balancer's TCP health check does
        await wait_until(lambda: broker.listeners["tls"].rejections["tls-handshake"] == 1)
    [line] = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert "closed during the TLS handshake" in line.getMessage()


# ------------------------------------------------------------------------------ reload


@pytest.fixture
def server_files(pki: TestPKI, tmp_path: Path) -> Iterator[CertFiles]:
    """Copies of the server certificate and key that a test may overwrite."""
    files = CertFiles(str(tmp_path / "server.pem"), str(tmp_path / "server.key"))
    shutil.copy(pki.server.certfile, files.certfile)
    shutil.copy(pki.server.keyfile, files.keyfile)
    yield files


async def test_reload_tls_serves_new_certificates_to_new_connections(
    pki: TestPKI, server_files: CertFiles, tmp_path: Path
) -> None:
    (tmp_path / "new").mkdir()
    new_pki = TestPKI.create(tmp_path / "new")  # another CA, another server certificate
    config = TLSConfig(server_files.certfile, server_files.keyfile)
    async with tls_broker(config) as broker:
        old_client, connack = await mqtt_over_tls(broker.port, pki.client_context(), "old")
        assert connack is not None and connack.reason_code == 0

        shutil.copy(new_pki.server.certfile, server_files.certfile)
        shutil.copy(new_pki.server.keyfile, server_files.keyfile)
        assert broker.reload_tls() == ["tls"]

        new_client, connack = await mqtt_over_tls(broker.port, new_pki.client_context(), "new")
        assert connack is not None and connack.reason_code == 0
        # a client trusting only the old CA no longer verifies the server
        with pytest.raises(trio.BrokenResourceError):
            await open_tls(broker.port, pki.client_context())
        # the connection made before the reload is unaffected
        await old_client.send(Pingreq())
        assert isinstance(await old_client.receive(), Pingresp)
        await old_client.aclose()
        await new_client.aclose()


async def test_reload_tls_error_keeps_the_old_certificates(
    pki: TestPKI, server_files: CertFiles, caplog: pytest.LogCaptureFixture
) -> None:
    config = TLSConfig(server_files.certfile, server_files.keyfile)
    listeners = (
        tls_listener(config),
        ListenerConfig(name="plain", host="127.0.0.1", port=0),
    )
    async with open_test_broker(listeners=listeners) as broker:
        await trio.Path(server_files.keyfile).write_text("garbage\n")
        with pytest.raises(ConfigError) as caught:
            broker.reload_tls()
        message = str(caught.value)
        assert "listener 'tls': TLS reload failed, the previous certificates stay in use" in message
        assert "tls.certfile" in message
        # raised, not logged as well: whoever called it logs it, once
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        client, connack = await mqtt_over_tls(broker.port, pki.client_context())
        assert connack is not None and connack.reason_code == 0
        await client.aclose()
        # SIGHUP's reload: the failure is one ERROR line
        caplog.clear()
        cli._reload(cli._Running(broker=broker))
        failures = [r for r in caplog.records if "TLS reload failed" in r.getMessage()]
        assert [r.levelno for r in failures] == [logging.ERROR], caplog.messages


async def test_reload_tls_without_tls_listeners_does_nothing() -> None:
    async with open_test_broker() as broker:
        assert broker.reload_tls() == []


class ReloadRecorder:
    """Stands in for the Broker that serve() reports: records the configs reloaded."""

    def __init__(self, config: BrokerConfig, report: ReloadReport | None = None) -> None:
        self.config = config
        self.reloaded: list[BrokerConfig] = []
        self.report = report

    def reload_config(self, config: BrokerConfig) -> ReloadReport:
        self.reloaded.append(config)
        return self.report or ReloadReport(config=config)


@pytest.mark.parametrize("fail", [False, True])
async def test_sighup_reloads_the_config(fail: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt.cli")
    running = BrokerConfig()
    new = BrokerConfig(max_keepalive=60)
    restart = RestartNeeded("listeners[0].bind", "127.0.0.1:1883")
    report = (
        None
        if fail
        else ReloadReport(
            config=new,
            changed=("broker.max_keepalive",),
            needs_restart=(restart,),
            errors=("listener 'tls': bad key",),
        )
    )
    recorder = ReloadRecorder(running, report)
    serving = trio.Event()

    def load() -> BrokerConfig:
        if fail:
            raise ConfigError("invalid TOML: Expected '=' (at line 3, column 5)", file="b.toml")
        return new

    async def serve(
        config: BrokerConfig, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started(recorder)
        serving.set()
        await trio.sleep_forever()

    async def signals() -> None:
        await serving.wait()
        await trio.testing.wait_all_tasks_blocked()
        signal.raise_signal(signal.SIGHUP)
        await wait_until(lambda: len(recorder.reloaded) == 1)
        await trio.testing.wait_all_tasks_blocked()
        signal.raise_signal(signal.SIGTERM)  # the broker still runs after a SIGHUP

    root = logging.getLogger()
    level = root.level
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(signals)
                await cli._run(running, serve=serve, load_config=load)
    finally:
        root.setLevel(level)

    messages = caplog.messages
    assert "reloading the config (SIGHUP)" in messages
    if fail:
        # the running config is applied again: its certificates and auth files re-read
        assert recorder.reloaded == [running]
        assert (
            "config reload failed, the running config stays (its certificate, password and "
            "ACL files are read again): b.toml: invalid TOML: Expected '=' (at line 3, column 5)"
        ) in messages
        assert "config reloaded; no changes in use" in messages
    else:
        assert recorder.reloaded == [new]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == ["listeners[0].bind changed: needs a restart; kept 127.0.0.1:1883"]
        assert "config reload: listener 'tls': bad key" in messages
        assert "config reloaded; in use now: broker.max_keepalive" in messages
    assert messages[-1] == "shutting down (SIGTERM)"
