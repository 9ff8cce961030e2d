"""The trio NATS client over TLS and with credentials, against real nats-servers.

Each server gets a config text (tests/nats_server.py): a ``tls {}`` block with a trustme
certificate for 127.0.0.1 (tests/server/certs.py), ``verify: true`` for mutual TLS,
``handshake_first``, or an ``authorization {}`` block. No password or token may show in
an error message or a log line.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg as PyMsg
from nats_peer import NatsPyPeer
from nats_server import NatsServer, running_nats_server
from server.certs import TestPKI

from trio_mqtt.nats import Msg, NATSConnectionError, open_nats_client
from trio_mqtt.nats.client import redact_url

PASSWORD = "pa55-w0rd-S3CRET"
TOKEN = "t0ken-S3CRET"


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    directory = tmp_path / "pki"
    directory.mkdir()
    return TestPKI.create(directory)


def tls_block(pki: TestPKI, *options: str) -> str:
    """nats-server's ``tls {}`` with our server certificate (and *options*, e.g. verify)."""
    lines = [
        f'cert_file: "{pki.server.certfile}"',
        f'key_file: "{pki.server.keyfile}"',
        f'ca_file: "{pki.ca_file}"',
        *options,
    ]
    return "tls {\n  " + "\n  ".join(lines) + "\n}\n"


@pytest.fixture
def tls_server(tmp_path: Path, pki: TestPKI) -> Iterator[NatsServer]:
    """TLS required, no client certificate, no credentials."""
    with running_nats_server(tmp_path / "nats-tls", config=tls_block(pki)) as server:
        yield server


def nats_url(server: NatsServer, credentials: str = "") -> str:
    return f"nats://{credentials}127.0.0.1:{server.port}"


def tls_url(server: NatsServer, credentials: str = "") -> str:
    return f"tls://{credentials}127.0.0.1:{server.port}"


async def round_trip(url: str, context: ssl.SSLContext | None, **options: bool) -> list[Msg]:
    """Subscribe, publish, flush over one connection to *url*: what came back."""
    got: list[Msg] = []
    with trio.fail_after(5):
        async with open_nats_client(url, name="t", ssl_context=context, **options) as client:
            client.subscribe("tls.>", got.append)
            client.publish("tls.a", b"over tls", headers={"K": "v"})
            await client.flush()
    return got


# -- TLS --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["tls", "nats"])
async def test_publish_subscribe_over_tls(
    tls_server: NatsServer, pki: TestPKI, scheme: str
) -> None:
    url = tls_url(tls_server) if scheme == "tls" else nats_url(tls_server)
    got = await round_trip(url, pki.client_context())
    assert [(m.subject, m.payload) for m in got] == [("tls.a", b"over tls")]
    assert got[0].headers is not None and got[0].headers.get("K") == "v"


async def test_nats_py_receives_what_we_publish_over_tls(
    tls_server: NatsServer, pki: TestPKI
) -> None:
    async def body(nc: Client, peer: NatsPyPeer) -> list[bytes]:
        sub = await nc.subscribe("to.py")
        await nc.flush()
        peer.ready()
        msgs: list[PyMsg] = [await sub.next_msg(timeout=5) for _ in range(2)]
        return [m.data for m in msgs]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            peer = await NatsPyPeer.start(
                nursery, tls_url(tls_server), body, tls=pki.client_context()
            )
            async with open_nats_client(
                tls_url(tls_server), name="t", ssl_context=pki.client_context()
            ) as client:
                client.publish("to.py", b"one")
                client.publish("to.py", b"two " * 10_000)  # several TLS records
            assert await peer.result() == [b"one", b"two " * 10_000]


async def test_a_server_that_requires_tls_needs_a_context(tls_server: NatsServer) -> None:
    with trio.fail_after(5), pytest.raises(NATSConnectionError) as info:
        async with open_nats_client(nats_url(tls_server), name="t"):
            pass  # pragma: no cover
    message = str(info.value)
    assert f"nats://127.0.0.1:{tls_server.port}: the server requires TLS" in message
    assert "ssl_context" in message and "nats_tls_ca_file" in message


async def test_a_tls_url_refuses_a_server_without_tls(
    nats_server: NatsServer, pki: TestPKI
) -> None:
    with trio.fail_after(5), pytest.raises(NATSConnectionError) as info:
        async with open_nats_client(
            tls_url(nats_server), name="t", ssl_context=pki.client_context()
        ):
            pass  # pragma: no cover
    assert f"tls://127.0.0.1:{nats_server.port}: a tls:// URL, but the server does not " in str(
        info.value
    )


async def test_a_server_certificate_from_another_ca_fails_verification(
    tls_server: NatsServer, tmp_path: Path
) -> None:
    other = TestPKI.create(tmp_path)  # its own CA, which did not sign the server's
    with trio.fail_after(5), pytest.raises(NATSConnectionError) as info:
        async with open_nats_client(
            tls_url(tls_server), name="t", ssl_context=other.client_context()
        ):
            pass  # pragma: no cover
    message = str(info.value)
    assert f"tls://127.0.0.1:{tls_server.port}: TLS certificate verification failed" in message
    assert "nats_tls_ca_file" in message


async def test_the_url_host_is_the_name_checked(tls_server: NatsServer, tmp_path: Path) -> None:
    # a certificate of our CA for another name: signed right, but not for 127.0.0.1
    pki = TestPKI.create(tmp_path)
    pki.ca.issue_cert("nats.example").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "other.pem")
    )
    config = tls_block(pki).replace(pki.server.certfile, str(tmp_path / "other.pem"))
    config = config.replace(pki.server.keyfile, str(tmp_path / "other.pem"))
    with (
        running_nats_server(tmp_path / "nats-other", config=config) as server,
        trio.fail_after(5),
        pytest.raises(NATSConnectionError) as info,
    ):
        async with open_nats_client(tls_url(server), name="t", ssl_context=pki.client_context()):
            pass  # pragma: no cover
    assert "TLS certificate verification failed" in str(info.value)
    assert "'127.0.0.1'" in str(info.value)


async def test_mutual_tls(tmp_path: Path, pki: TestPKI) -> None:
    config = tls_block(pki, "verify: true")
    with running_nats_server(tmp_path / "nats-mtls", config=config) as server:
        got = await round_trip(tls_url(server), pki.client_context(pki.alice))
        assert [m.payload for m in got] == [b"over tls"]
        with trio.fail_after(5), pytest.raises(NATSConnectionError) as info:
            async with open_nats_client(
                tls_url(server), name="t", ssl_context=pki.client_context()
            ):
                pass  # pragma: no cover
        message = str(info.value)
        assert f"tls://127.0.0.1:{server.port}: the server requires a client certificate" in message
        assert "nats_tls_cert_file" in message
        with trio.fail_after(5), pytest.raises(NATSConnectionError) as info:
            async with open_nats_client(
                tls_url(server), name="t", ssl_context=pki.client_context(pki.mallory)
            ):
                pass  # pragma: no cover
        assert f"tls://127.0.0.1:{server.port}: the server refused our client" in str(info.value)


async def test_tls_handshake_first(tmp_path: Path, pki: TestPKI) -> None:
    config = tls_block(pki, "handshake_first: true")
    with running_nats_server(tmp_path / "nats-first", config=config) as server:
        got = await round_trip(tls_url(server), pki.client_context(), tls_handshake_first=True)
        assert [m.payload for m in got] == [b"over tls"]
        with pytest.raises(NATSConnectionError, match="nats_tls_handshake_first = true"):
            await round_trip(tls_url(server), pki.client_context())
    with (
        running_nats_server(tmp_path / "nats-later", config=tls_block(pki)) as server,
        pytest.raises(NATSConnectionError, match="does it use handshake_first"),
    ):
        await round_trip(tls_url(server), pki.client_context(), tls_handshake_first=True)


# -- credentials ------------------------------------------------------------------------


async def test_user_and_password(
    tmp_path: Path, pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "trio_mqtt")
    config = tls_block(pki) + f'authorization {{ user: alice, password: "{PASSWORD}" }}\n'
    with running_nats_server(tmp_path / "nats-auth", config=config) as server:
        got = await round_trip(tls_url(server, f"alice:{PASSWORD}@"), pki.client_context())
        assert [m.payload for m in got] == [b"over tls"]
        for credentials in (f"alice:{PASSWORD}x@", f"alice:{PASSWORD}@", ""):
            url = nats_url(server, credentials.replace("alice", "bob"))
            with trio.fail_after(5), pytest.raises(NATSConnectionError) as info:
                async with open_nats_client(url, name="t", ssl_context=pki.client_context()):
                    pass  # pragma: no cover
            message = str(info.value)
            shown = f"nats://bob:***@127.0.0.1:{server.port}" if credentials else url
            assert f"{shown}: server refused the connection: Authorization Violation" in message
            assert PASSWORD not in message
    assert PASSWORD not in caplog.text
    assert f"connected to tls://alice:***@127.0.0.1:{server.port}" in caplog.text


async def test_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "trio_mqtt")
    config = f'authorization {{ token: "{TOKEN}" }}\n'
    with running_nats_server(tmp_path / "nats-token", config=config) as server:
        got = await round_trip(nats_url(server, f"{TOKEN}@"), None)
        assert [m.payload for m in got] == [b"over tls"]
        with trio.fail_after(5), pytest.raises(NATSConnectionError) as info:
            async with open_nats_client(nats_url(server, f"{TOKEN}-wrong@"), name="t"):
                pass  # pragma: no cover
    message = str(info.value)
    assert f"nats://***@127.0.0.1:{server.port}: server refused the connection: " in message
    assert "check the token" in message
    assert TOKEN not in message
    assert TOKEN not in caplog.text


async def test_unreachable_and_malformed_urls_hide_the_secret() -> None:
    urls = [f"nats://alice:{PASSWORD}@127.0.0.1:1", f"nats://alice:{PASSWORD}@127.0.0.1:x1"]
    with trio.fail_after(5), pytest.raises(NATSConnectionError) as info:
        async with open_nats_client(urls, name="t"):
            pass  # pragma: no cover
    message = str(info.value)
    assert "nats://alice:***@127.0.0.1:1: " in message
    assert "invalid port in 'nats://alice:***@127.0.0.1:x1'" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://alice:pw@h:4222", "nats://alice:***@h:4222"),
        ("tls://tok@h:4222", "tls://***@h:4222"),
        ("alice:pw@h:4222", "alice:***@h:4222"),
        ("nats://alice:p@w/x@h:4222", "nats://alice:***@h:4222"),
        ("nats://alice:@h:4222", "nats://alice:***@h:4222"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
