"""Enhanced authentication (MQTT 5.0 section 4.12) through ``Broker.add_authenticator``.

A toy challenge/response method: the client names a user in CONNECT, the server sends a
nonce, the client answers sha256(secret + nonce). Raw clients send every AUTH by hand.
"""

from __future__ import annotations

import hashlib

import attrs
import pytest
from helpers import V5
from rawclient import RawClient

from trio_mqtt.broker.enhanced_auth import (
    AuthContinue,
    AuthFailure,
    AuthOutcome,
    AuthSuccess,
)
from trio_mqtt.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Properties,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import PeerInfo
from trio_mqtt.testing import open_test_broker

from .raw_helpers import expect_disconnect

METHOD = "TOY"
SECRETS = {b"alice": b"s3cret"}
NONCE = b"n0nce"


def answer(secret: bytes, nonce: bytes) -> bytes:
    return hashlib.sha256(secret + nonce).digest()


@attrs.define
class ToyChallenge:
    """Challenge/response in one round; ``rounds`` > 1 asks for the answer again."""

    rounds: int = 1
    method: str = METHOD
    started: list[bytes | None] = attrs.Factory(list)

    def start(self, peer: PeerInfo, connect: Connect) -> AuthOutcome:
        user = connect.properties.authentication_data
        self.started.append(user)
        if user not in SECRETS:
            return AuthFailure(ReasonCode.NOT_AUTHORIZED, f"unknown user {user!r}")
        return AuthContinue(NONCE, state=(user, self.rounds))

    def step(self, peer: PeerInfo, state: object, data: bytes | None) -> AuthOutcome:
        assert isinstance(state, tuple)
        user, left = state
        if data != answer(SECRETS[user], NONCE):
            return AuthFailure(ReasonCode.BAD_USER_NAME_OR_PASSWORD, "wrong answer")
        if left > 1:
            return AuthContinue(NONCE, state=(user, left - 1))
        return AuthSuccess(b"welcome " + user)


@attrs.frozen
class AlwaysYes:
    method: str = "YES"

    def start(self, peer: PeerInfo, connect: Connect) -> AuthOutcome:
        return AuthSuccess()

    def step(self, peer: PeerInfo, state: object, data: bytes | None) -> AuthOutcome:
        raise AssertionError("never called: start succeeds at once")


def auth_props(data: bytes | None, method: str = METHOD) -> Properties:
    return Properties(authentication_method=method, authentication_data=data)


def connect_packet(client_id: str = "c", user: bytes = b"alice", **props: object) -> Connect:
    return Connect(client_id, V5, properties=attrs.evolve(auth_props(user), **props))


async def open_raw(port: int) -> RawClient:
    return await RawClient.open(port, V5)


# hand-computed AUTH 0x18: F0, remaining length 16, reason 0x18, property length 14,
# 0x15 "TOY" (00 03 54 4F 59), 0x16 b"n0nce" (00 05 ...)
AUTH_CONTINUE_NONCE = b"\xf0\x10\x18\x0e\x15\x00\x03TOY\x16\x00\x05n0nce"


async def test_challenge_response_succeeds() -> None:
    toy = ToyChallenge()
    async with open_test_broker() as broker:
        broker.add_authenticator(toy)
        client = await open_raw(broker.port)
        await client.send(connect_packet())
        data = await client.stream.receive_some(len(AUTH_CONTINUE_NONCE))
        assert data == AUTH_CONTINUE_NONCE
        assert broker.clients() == []  # not connected until CONNACK
        await client.send(
            Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(answer(b"s3cret", NONCE)))
        )
        connack = await client.receive()
        assert isinstance(connack, Connack)
        assert connack.reason_code == ReasonCode.SUCCESS
        assert connack.properties.authentication_method == METHOD
        assert connack.properties.authentication_data == b"welcome alice"
        assert [c.client_id for c in broker.clients()] == ["c"]
        # and the connection works as any other
        await client.send(Subscribe(1, (SubscriptionRequest("t", 0),)))
        assert isinstance(await client.receive(), Suback)
        await broker.publish("t", b"hi")
        got = await client.receive()
        assert isinstance(got, Publish)
        assert got.payload == b"hi"
        await client.aclose()
        assert toy.started == [b"alice"]


async def test_two_rounds_then_success() -> None:
    async with open_test_broker() as broker:
        broker.add_authenticator(ToyChallenge(rounds=2))
        client = await open_raw(broker.port)
        await client.send(connect_packet())
        for _ in range(2):
            challenge = await client.receive()
            assert challenge == Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(NONCE))
            await client.send(
                Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(answer(b"s3cret", NONCE)))
            )
        connack = await client.receive()
        assert isinstance(connack, Connack)
        assert connack.reason_code == 0
        await client.aclose()


async def test_wrong_answer_refused_with_authenticator_code() -> None:
    async with open_test_broker() as broker:
        broker.add_authenticator(ToyChallenge())
        client = await open_raw(broker.port)
        await client.send(connect_packet())
        assert isinstance(await client.receive(), Auth)
        await client.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(b"guess")))
        (connack,) = await client.expect_closed()
        assert isinstance(connack, Connack)
        assert connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        assert broker.clients() == []
        assert broker.stats.connects_refused == 1


async def test_failure_at_start_refuses_connect() -> None:
    async with open_test_broker() as broker:
        broker.add_authenticator(ToyChallenge())
        client = await open_raw(broker.port)
        await client.send(connect_packet(user=b"mallory"))
        (connack,) = await client.expect_closed()
        assert isinstance(connack, Connack)
        assert connack.reason_code == ReasonCode.NOT_AUTHORIZED


async def test_success_at_start_echoes_method_even_without_anonymous_access() -> None:
    async with open_test_broker(allow_anonymous=False) as broker:
        broker.add_authenticator(AlwaysYes())
        client = await open_raw(broker.port)
        await client.send(Connect("y", V5, properties=Properties(authentication_method="YES")))
        connack = await client.receive()
        assert isinstance(connack, Connack)
        assert connack.reason_code == 0
        assert connack.properties.authentication_method == "YES"
        assert connack.properties.authentication_data is None
        await client.aclose()


@pytest.mark.parametrize(
    "packet",
    [
        Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(b"x", method="OTHER")),
        Auth(ReasonCode.RE_AUTHENTICATE, auth_props(b"x")),
        Publish("t", b"early"),
    ],
    ids=["other-method", "reauth-during-connect", "publish-before-connack"],
)
async def test_protocol_errors_during_exchange_get_connack_0x82(packet: Auth | Publish) -> None:
    async with open_test_broker() as broker:
        broker.add_authenticator(ToyChallenge())
        client = await open_raw(broker.port)
        await client.send(connect_packet())
        assert isinstance(await client.receive(), Auth)
        await client.send(packet)
        (connack,) = await client.expect_closed()
        assert isinstance(connack, Connack)
        assert connack.reason_code == ReasonCode.PROTOCOL_ERROR
        assert broker.clients() == []


async def test_disconnect_during_exchange_closes_quietly() -> None:
    async with open_test_broker() as broker:
        broker.add_authenticator(ToyChallenge())
        client = await open_raw(broker.port)
        await client.send(connect_packet())
        assert isinstance(await client.receive(), Auth)
        await client.send(Disconnect())
        assert await client.expect_closed() == []


async def test_exchange_times_out_after_connect_timeout() -> None:
    async with open_test_broker(connect_timeout=0.3) as broker:
        broker.add_authenticator(ToyChallenge())
        client = await open_raw(broker.port)
        await client.send(connect_packet())
        assert isinstance(await client.receive(), Auth)
        assert await client.expect_closed(timeout=3) == []


async def test_duplicate_or_empty_method_rejected() -> None:
    async with open_test_broker() as broker:
        broker.add_authenticator(ToyChallenge())
        with pytest.raises(ValueError, match="already registered"):
            broker.add_authenticator(ToyChallenge())
        with pytest.raises(ValueError, match="non-empty"):
            broker.add_authenticator(ToyChallenge(method=""))


# ------------------------------------------------------------ re-authentication


async def connected(port: int) -> RawClient:
    client = await open_raw(port)
    await client.send(connect_packet())
    assert isinstance(await client.receive(), Auth)
    await client.send(
        Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(answer(b"s3cret", NONCE)))
    )
    connack = await client.receive()
    assert isinstance(connack, Connack)
    assert connack.reason_code == 0
    return client


async def test_reauthentication_succeeds_with_auth_0x00() -> None:
    toy = ToyChallenge()
    async with open_test_broker() as broker:
        broker.add_authenticator(toy)
        client = await connected(broker.port)
        await client.send(Auth(ReasonCode.RE_AUTHENTICATE, auth_props(b"alice")))
        assert await client.receive() == Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(NONCE))
        await client.send(
            Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(answer(b"s3cret", NONCE)))
        )
        assert await client.receive() == Auth(ReasonCode.SUCCESS, auth_props(b"welcome alice"))
        assert toy.started == [b"alice", b"alice"]
        assert [c.client_id for c in broker.clients()] == ["c"]
        await client.aclose()


async def test_failed_reauthentication_disconnects() -> None:
    async with open_test_broker() as broker:
        broker.add_authenticator(ToyChallenge())
        client = await connected(broker.port)
        await client.send(Auth(ReasonCode.RE_AUTHENTICATE, auth_props(b"alice")))
        assert isinstance(await client.receive(), Auth)
        await client.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(b"nope")))
        # 0x86 exists for CONNACK only: a DISCONNECT says 0x87 Not authorized
        await expect_disconnect(client, ReasonCode.NOT_AUTHORIZED)
        assert broker.clients() == []


def test_auth_failure_needs_a_connack_error_code() -> None:
    assert AuthFailure(ReasonCode.BANNED).reason_code == 0x8A
    for code in (ReasonCode.SUCCESS, ReasonCode.TOPIC_ALIAS_INVALID):
        with pytest.raises(ValueError, match="CONNACK"):
            AuthFailure(code)


async def test_auth_without_method_in_connect_is_protocol_error() -> None:
    async with open_test_broker() as broker:
        client = await open_raw(broker.port)
        await client.connect("plain")
        await client.send(Auth(ReasonCode.RE_AUTHENTICATE, auth_props(b"alice")))
        await expect_disconnect(client, ReasonCode.PROTOCOL_ERROR)
