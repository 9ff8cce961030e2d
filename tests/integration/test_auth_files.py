"""Password file and ACL file over real sockets: CONNACK codes per protocol version, ACL
denials of PUBLISH (PUBACK 0x87, nothing delivered) and SUBSCRIBE (0x87 / 0x80), wills,
reloading edited files while the broker runs, and a round trip through the
``python -m trio_mqtt.passwd`` command.

CONNACK bytes are hand-computed from the specs (3.1.1 section 3.2, 5.0 section 3.2).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from rawclient import RawClient

from trio_mqtt.auth import hash_password
from trio_mqtt.errors import ConfigError
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Connect,
    ProtocolVersion,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from trio_mqtt.server.app import Broker, MessageStream
from trio_mqtt.testing import open_test_broker

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
FAST = 1000  # PBKDF2 rounds in test files

# 3.1.1: CONNACK, remaining length 2, flags 0, return code
CONNACK_V311_ACCEPTED = b"\x20\x02\x00\x00"
CONNACK_V311_BAD_CREDENTIALS = b"\x20\x02\x00\x04"
CONNACK_V311_NOT_AUTHORIZED = b"\x20\x02\x00\x05"
# 5.0: CONNACK, remaining length 3, flags 0, reason code, property length 0
CONNACK_V5_BAD_CREDENTIALS = b"\x20\x03\x00\x86\x00"
CONNACK_V5_NOT_AUTHORIZED = b"\x20\x03\x00\x87\x00"

ACL = """\
topic read $SYS/#
user alice
topic readwrite sensors/alice/#
user bob
topic read sensors/#
pattern readwrite clients/%c/#
"""


def write_password_file(path: Path, users: dict[str, bytes]) -> None:
    lines = [f"{name}:{hash_password(pw, iterations=FAST).encode()}" for name, pw in users.items()]
    path.write_text("# test users\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)


@asynccontextmanager
async def auth_broker(tmp_path: Path, **settings: Any) -> AsyncIterator[Broker]:
    passwd = tmp_path / "users.passwd"
    if not passwd.exists():
        write_password_file(passwd, {"alice": b"alice-pw", "bob": b"bob-pw"})
    acl = tmp_path / "broker.acl"
    acl.write_text(ACL)
    settings = {"password_file": str(passwd), "acl_file": str(acl), **settings}
    async with open_test_broker(**settings) as broker:
        yield broker


async def read_to_eof(client: RawClient) -> bytes:
    data = bytearray()
    with trio.fail_after(5):
        while chunk := await client.stream.receive_some(65536):
            data += chunk
    return bytes(data)


async def refused_bytes(port: int, version: ProtocolVersion, **connect: Any) -> bytes:
    """Everything the broker sends back to one CONNECT before it closes the connection."""
    client = await RawClient.open(port, version)
    try:
        await client.send_raw(encode(Connect(protocol_version=version, **connect), version))
        return await read_to_eof(client)
    finally:
        await client.aclose()


async def connected(
    port: int, version: ProtocolVersion, client_id: str, username: str, password: bytes
) -> RawClient:
    client = await RawClient.open(port, version)
    connack = await client.connect(client_id, username=username, password=password)
    assert connack.reason_code == 0
    return client


async def next_message(messages: MessageStream) -> tuple[str, bytes]:
    with trio.fail_after(5):
        message = await messages.receive()
    return message.topic, message.payload


# --------------------------------------------------------------------------- passwords


async def test_right_password_accepted_v311(tmp_path: Path) -> None:
    async with auth_broker(tmp_path, allow_anonymous=False) as broker:
        client = await RawClient.open(broker.port, V311)
        await client.send(Connect("alice-1", V311, username="alice", password=b"alice-pw"))
        with trio.fail_after(5):
            assert await client.stream.receive_some(4) == CONNACK_V311_ACCEPTED
        assert [(c.client_id, c.username) for c in broker.clients()] == [("alice-1", "alice")]
        await client.aclose()


async def test_right_password_accepted_v5(tmp_path: Path) -> None:
    async with auth_broker(tmp_path, allow_anonymous=False) as broker:
        client = await connected(broker.port, V5, "bob-1", "bob", b"bob-pw")
        assert [(c.client_id, c.username) for c in broker.clients()] == [("bob-1", "bob")]
        assert broker.stats.connects_refused == 0
        await client.aclose()


@pytest.mark.parametrize(
    ("version", "expected"),
    [(V311, CONNACK_V311_BAD_CREDENTIALS), (V5, CONNACK_V5_BAD_CREDENTIALS)],
    ids=["3.1.1", "5.0"],
)
@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", b"bob-pw"), ("alice", b""), ("mallory", b"alice-pw"), ("alice", None)],
    ids=["wrong-password", "empty-password", "unknown-user", "no-password"],
)
async def test_bad_credentials_refused(
    tmp_path: Path,
    version: ProtocolVersion,
    expected: bytes,
    username: str,
    password: bytes | None,
) -> None:
    async with auth_broker(tmp_path) as broker:
        data = await refused_bytes(
            broker.port, version, client_id="x", username=username, password=password
        )
        assert data == expected
        assert broker.clients() == []
        assert broker.stats.connects_refused == 1


@pytest.mark.parametrize(
    ("version", "expected"),
    [(V311, CONNACK_V311_NOT_AUTHORIZED), (V5, CONNACK_V5_NOT_AUTHORIZED)],
    ids=["3.1.1", "5.0"],
)
async def test_no_username_refused_without_anonymous(
    tmp_path: Path, version: ProtocolVersion, expected: bytes
) -> None:
    async with auth_broker(tmp_path, allow_anonymous=False) as broker:
        assert await refused_bytes(broker.port, version, client_id="anon") == expected


async def test_anonymous_allowed_when_configured(tmp_path: Path) -> None:
    async with auth_broker(tmp_path, allow_anonymous=True) as broker:
        client = await RawClient.open(broker.port, V311)
        assert (await client.connect("anon")).reason_code == 0
        # ... but the ACL still applies: anonymous clients only get the global rules
        await client.send(Subscribe(1, (SubscriptionRequest("sensors/#"),)))
        await client.send(Subscribe(2, (SubscriptionRequest("$SYS/broker/+"),)))
        with trio.fail_after(5):
            assert await client.receive() == Suback(1, (0x80,))
            assert await client.receive() == Suback(2, (0x00,))
        await client.aclose()


async def test_reconnect_with_cached_password(tmp_path: Path) -> None:
    async with auth_broker(tmp_path, allow_anonymous=False) as broker:
        for _ in range(3):
            client = await connected(broker.port, V311, "alice-1", "alice", b"alice-pw")
            await client.aclose()
        assert await refused_bytes(
            broker.port, V311, client_id="alice-1", username="alice", password=b"nope"
        ) == (CONNACK_V311_BAD_CREDENTIALS)
        assert broker.stats.connects == 3


# --------------------------------------------------------------------------- ACL: publish


async def test_acl_denies_publish_v5(tmp_path: Path) -> None:
    async with auth_broker(tmp_path) as broker, broker.subscribe("#") as messages:
        alice = await connected(broker.port, V5, "alice-1", "alice", b"alice-pw")
        await alice.send(Publish("sensors/bob/temp", b"forged", qos=1, packet_id=1))
        await alice.send(Publish("sensors/alice/temp", b"21.5", qos=1, packet_id=2))
        with trio.fail_after(5):
            assert await alice.receive() == Puback(1, 0x87)  # Not authorized
            assert await alice.receive() == Puback(2, 0x00)
        # The denied message reached no one: the first one routed is the allowed one.
        assert await next_message(messages) == ("sensors/alice/temp", b"21.5")
        assert broker.retained("sensors/bob/temp") is None
        await alice.aclose()


async def test_acl_denies_publish_v311_and_qos0(tmp_path: Path) -> None:
    async with auth_broker(tmp_path) as broker, broker.subscribe("#") as messages:
        alice = await connected(broker.port, V311, "alice-1", "alice", b"alice-pw")
        await alice.send(Publish("sensors/bob/temp", b"qos0", qos=0))
        await alice.send(Publish("sensors/bob/temp", b"qos1", qos=1, packet_id=7, retain=True))
        await alice.send(Publish("sensors/alice/temp", b"ok", qos=1, packet_id=8))
        with trio.fail_after(5):
            # 3.1.1 PUBACK has no reason code; the client cannot be told, only ignored
            assert await alice.receive() == Puback(7)
            assert await alice.receive() == Puback(8)
        assert await next_message(messages) == ("sensors/alice/temp", b"ok")
        assert broker.retained("sensors/bob/temp") is None
        await alice.aclose()


async def test_pattern_with_client_id(tmp_path: Path) -> None:
    async with auth_broker(tmp_path) as broker, broker.subscribe("clients/#") as messages:
        bob = await connected(broker.port, V5, "dev1", "bob", b"bob-pw")
        await bob.send(Publish("clients/dev2/status", b"not mine", qos=1, packet_id=1))
        await bob.send(Publish("clients/dev1/status", b"mine", qos=1, packet_id=2))
        with trio.fail_after(5):
            assert await bob.receive() == Puback(1, 0x87)
            assert await bob.receive() == Puback(2, 0x00)
        assert await next_message(messages) == ("clients/dev1/status", b"mine")
        await bob.aclose()


@pytest.mark.parametrize(
    ("version", "expected"),
    [(V311, CONNACK_V311_NOT_AUTHORIZED), (V5, CONNACK_V5_NOT_AUTHORIZED)],
    ids=["3.1.1", "5.0"],
)
async def test_will_outside_the_acl_is_refused(
    tmp_path: Path, version: ProtocolVersion, expected: bytes
) -> None:
    async with auth_broker(tmp_path) as broker:
        data = await refused_bytes(
            broker.port,
            version,
            client_id="bob-1",
            username="bob",
            password=b"bob-pw",
            will=Will(topic="sensors/alice/temp", payload=b"forged by will"),
        )
        assert data == expected


# --------------------------------------------------------------------------- ACL: subscribe


@pytest.mark.parametrize(("version", "denied"), [(V5, 0x87), (V311, 0x80)], ids=["5.0", "3.1.1"])
async def test_acl_denies_subscribe(tmp_path: Path, version: ProtocolVersion, denied: int) -> None:
    async with auth_broker(tmp_path) as broker:
        alice = await connected(broker.port, version, "alice-1", "alice", b"alice-pw")
        requests = (
            SubscriptionRequest("sensors/alice/+", qos=1),
            SubscriptionRequest("sensors/#", qos=1),  # wider than alice's rule
            SubscriptionRequest("sensors/+/temp", qos=0),
        )
        await alice.send(Subscribe(5, requests))
        with trio.fail_after(5):
            assert await alice.receive() == Suback(5, (0x01, denied, denied))
        assert broker.clients()[0].subscriptions == ("sensors/alice/+",)

        # Nothing from the refused filters arrives: the first message is the allowed one.
        await broker.publish("sensors/bob/temp", b"secret", qos=1)
        await broker.publish("sensors/alice/temp", b"hers", qos=1)
        with trio.fail_after(5):
            packet = await alice.receive()
        assert isinstance(packet, Publish)
        assert (packet.topic, packet.payload) == ("sensors/alice/temp", b"hers")
        await alice.aclose()


async def test_read_rule_covers_narrower_filters(tmp_path: Path) -> None:
    async with auth_broker(tmp_path) as broker:
        bob = await connected(broker.port, V5, "bob-1", "bob", b"bob-pw")
        requests = (
            SubscriptionRequest("sensors/+/temp"),
            SubscriptionRequest("sensors/#"),
            SubscriptionRequest("$share/g/sensors/alice/#"),
            SubscriptionRequest("#"),
        )
        await bob.send(Subscribe(1, requests))
        with trio.fail_after(5):
            assert await bob.receive() == Suback(1, (0x00, 0x00, 0x00, 0x87))
        await bob.aclose()


# --------------------------------------------------------------------------- passwd CLI


async def test_passwd_command_round_trip(tmp_path: Path) -> None:
    passwd = tmp_path / "users.passwd"
    write_password_file(passwd, {"alice": b"alice-pw"})
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "trio_mqtt.passwd",
            "--password-stdin",
            "--iterations",
            str(FAST),
            str(passwd),
            "carol",
        ],
        stdin=b"carol's password\n",
        capture_stdout=True,
        capture_stderr=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"added 'carol' in {passwd}\n".encode()
    assert passwd.stat().st_mode & 0o777 == 0o600

    async with auth_broker(tmp_path, allow_anonymous=False) as broker:
        carol = await connected(broker.port, V311, "carol-1", "carol", b"carol's password")
        await carol.aclose()
        alice = await connected(broker.port, V311, "alice-1", "alice", b"alice-pw")
        await alice.aclose()
        assert (
            await refused_bytes(broker.port, V5, client_id="c", username="carol", password=b"carol")
            == CONNACK_V5_BAD_CREDENTIALS
        )


# --------------------------------------------------------------------------- reload


async def test_reload_applies_edited_password_file_to_new_connections(tmp_path: Path) -> None:
    async with auth_broker(tmp_path, allow_anonymous=False) as broker:
        alice = await connected(broker.port, V311, "alice-1", "alice", b"alice-pw")
        refused = await refused_bytes(
            broker.port, V311, client_id="carol-1", username="carol", password=b"carol-pw"
        )
        assert refused == CONNACK_V311_BAD_CREDENTIALS

        # the operator removes alice and adds carol, then asks for a reload
        write_password_file(tmp_path / "users.passwd", {"bob": b"bob-pw", "carol": b"carol-pw"})
        assert broker.reload_auth() is True

        carol = await connected(broker.port, V311, "carol-1", "carol", b"carol-pw")
        refused = await refused_bytes(
            broker.port, V5, client_id="alice-2", username="alice", password=b"alice-pw"
        )
        assert refused == CONNACK_V5_BAD_CREDENTIALS
        # alice's open connection was accepted under the old file: it stays
        await alice.send(Publish("sensors/alice/t", b"still here", qos=1, packet_id=1))
        with trio.fail_after(5):
            assert await alice.receive() == Puback(1)
        await alice.aclose()
        await carol.aclose()


async def test_reload_applies_edited_acl(tmp_path: Path) -> None:
    async with auth_broker(tmp_path) as broker:
        bob = await connected(broker.port, V5, "bob-1", "bob", b"bob-pw")
        await bob.send(Publish("sensors/bob/t", b"1", qos=1, packet_id=1))
        with trio.fail_after(5):
            assert await bob.receive() == Puback(1, 0x87)

        (tmp_path / "broker.acl").write_text(ACL + "user bob\ntopic write sensors/bob/#\n")
        assert broker.reload_auth() is True

        await bob.send(Publish("sensors/bob/t", b"2", qos=1, packet_id=2))
        with trio.fail_after(5):
            assert await bob.receive() == Puback(2, 0x10)  # allowed: no matching subscribers
        await bob.aclose()


async def test_reload_with_a_broken_file_keeps_both_files(tmp_path: Path) -> None:
    async with auth_broker(tmp_path, allow_anonymous=False) as broker:
        write_password_file(tmp_path / "users.passwd", {"carol": b"carol-pw"})
        (tmp_path / "broker.acl").write_text("topic sideways a/b\n")
        with pytest.raises(ConfigError, match=r"broker\.acl.*line 1"):
            broker.reload_auth()
        # neither the (valid) new password file nor the broken ACL took effect
        alice = await connected(broker.port, V311, "alice-1", "alice", b"alice-pw")
        await alice.aclose()
        refused = await refused_bytes(
            broker.port, V311, client_id="carol-1", username="carol", password=b"carol-pw"
        )
        assert refused == CONNACK_V311_BAD_CREDENTIALS


async def test_reload_auth_without_auth_files_does_nothing() -> None:
    async with open_test_broker() as broker:
        assert broker.reload_auth() is False
