"""CONNECT variants with paho-mqtt 2.x as the client: MQTT 3.1, 3.1.1 and 5.0.

Clean session / clean start, the session present flag, empty client ids, session expiry,
keep alive limits and anonymous access, each checked on the CONNACK paho receives and on
what the broker reports about the client.
"""

from __future__ import annotations

import pytest
import trio
from helpers import wait_until
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes

from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .paho_helpers import (
    QUIET,
    V5,
    V31,
    V311,
    VERSION_IDS,
    VERSIONS,
    PahoClient,
    blocking,
    paho_client,
    properties,
)

# The CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3)
RC_IDENTIFIER_REJECTED = 2
RC_NOT_AUTHORIZED = 5


def client_ids(broker: Broker) -> dict[str, int]:
    """Connected client id -> protocol level, as the broker reports them."""
    return {summary.client_id: summary.protocol_version for summary in broker.clients()}


def persistent(protocol: MQTTProtocolVersion, client_id: str) -> PahoClient:
    """A client whose session outlives its connection (clean session 0 / expiry 60 s)."""
    if protocol is V5:
        return PahoClient(client_id, protocol=V5)
    return PahoClient(client_id, protocol=protocol, clean_session=False)


def persistent_connect_options(protocol: MQTTProtocolVersion) -> dict[str, object]:
    if protocol is V5:
        expiry = properties(PacketTypes.CONNECT, SessionExpiryInterval=60)
        return {"clean_start": False, "connect_properties": expiry}
    return {}


@pytest.mark.parametrize(
    ("protocol", "level"), [(V31, 3), (V311, 4), (V5, 5)], ids=["3.1", "3.1.1", "5.0"]
)
async def test_clean_connect_is_accepted_at_each_protocol_level(
    protocol: MQTTProtocolVersion, level: int
) -> None:
    async with open_test_broker() as broker:
        client = PahoClient("plain", protocol=protocol)
        try:
            connack = await blocking(client.connect, broker.port)
            assert connack.reason_code == 0
            assert connack.session_present is False
            if protocol is not V5:
                assert connack.return_code == 0
            assert client_ids(broker) == {"plain": level}
            ended = await blocking(client.disconnect)
            assert ended.reason_code == 0
        finally:
            await blocking(client.close)
        await wait_until(lambda: not broker.clients(), "disconnected")


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_session_present_false_then_true_on_persistent_reconnect(
    protocol: MQTTProtocolVersion,
) -> None:
    async with open_test_broker() as broker:
        options = persistent_connect_options(protocol)
        first = persistent(protocol, "keeper")
        try:
            connack = await blocking(first.connect, broker.port, **options)
            assert connack.accepted
            assert connack.session_present is False
            assert await blocking(first.subscribe, "keep/#", 1) == [1]
            await blocking(first.disconnect)
        finally:
            await blocking(first.close)

        second = persistent(protocol, "keeper")
        try:
            connack = await blocking(second.connect, broker.port, **options)
            assert connack.accepted
            assert connack.session_present is True
            # the subscription came back with the session: no new SUBSCRIBE needed
            (summary,) = broker.clients()
            assert summary.subscriptions == ("keep/#",)
            await broker.publish("keep/x", b"still here", qos=1)
            message = await blocking(second.wait_message)
            assert (message.topic, message.payload, message.qos) == ("keep/x", b"still here", 1)
            await blocking(second.disconnect)
        finally:
            await blocking(second.close)


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_clean_connect_discards_the_stored_session(protocol: MQTTProtocolVersion) -> None:
    async with open_test_broker() as broker:
        first = persistent(protocol, "forgetful")
        try:
            connack = await blocking(
                first.connect, broker.port, **persistent_connect_options(protocol)
            )
            assert connack.accepted
            assert await blocking(first.subscribe, "old/#", 1) == [1]
            await blocking(first.disconnect)
        finally:
            await blocking(first.close)
        assert "forgetful" in broker.core.sessions

        # clean session = 1 (3.1.1) / clean start = 1 (5.0)
        clean_start = True if protocol is V5 else None
        async with paho_client(
            broker.port, "forgetful", protocol=protocol, clean_start=clean_start
        ) as second:
            (summary,) = broker.clients()
            assert summary.subscriptions == ()
            assert await broker.publish("old/x", b"nobody", qos=1) == 0
            assert await blocking(second.extra_messages, QUIET) == []


async def test_clean_connect_reports_session_present_false_after_a_stored_session() -> None:
    async with open_test_broker() as broker:
        options = persistent_connect_options(V5)
        first = persistent(V5, "twice")
        try:
            assert (await blocking(first.connect, broker.port, **options)).accepted
            await blocking(first.disconnect)
        finally:
            await blocking(first.close)
        second = PahoClient("twice", protocol=V5)
        try:
            connack = await blocking(second.connect, broker.port, clean_start=True)
            assert connack.accepted
            assert connack.session_present is False
            await blocking(second.disconnect)
        finally:
            await blocking(second.close)


async def test_mqtt5_empty_client_id_gets_an_assigned_identifier() -> None:
    async with open_test_broker() as broker:
        client = PahoClient("", protocol=V5)
        try:
            connack = await blocking(client.connect, broker.port)
            assert connack.accepted
            assigned = getattr(connack.properties, "AssignedClientIdentifier", None)
            assert isinstance(assigned, str)
            assert assigned
            assert list(client_ids(broker)) == [assigned]
            await blocking(client.disconnect)
        finally:
            await blocking(client.close)


async def test_mqtt311_empty_client_id_with_clean_session_is_accepted() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "", protocol=V311) as client,
    ):
        assert client.client_id == ""  # paho really sent a zero-length id
        (summary,) = broker.clients()
        assert summary.client_id  # the broker made one up
        assert summary.protocol_version == 4
        # and the connection works
        assert await blocking(client.subscribe, "anon/t", 0) == [0]
        await broker.publish("anon/t", b"hi")
        assert (await blocking(client.wait_message)).payload == b"hi"


async def test_mqtt311_empty_client_id_without_clean_session_is_refused_with_rc_2() -> None:
    async with open_test_broker() as broker:
        # paho will not build such a client, so give it an id and blank it afterwards;
        # on return code 2 for an empty id paho retries with an id of its own.
        client = PahoClient("placeholder", clean_session=False, reconnect_on_failure=True)
        client.client._client_id = b""
        try:
            await blocking(client.start, broker.port)
            connack = await blocking(client.wait_connack)
            refusals = [line for line in client.log if "attempting to use non-empty CID" in line]
            assert refusals, client.log
            assert refusals[0].startswith(f"Received CONNACK (0, {RC_IDENTIFIER_REJECTED})")
            assert broker.stats.connects_refused == 1
            # the retry with paho's generated id and clean session 0 is accepted
            assert connack.accepted
            assert connack.return_code == 0
            generated = client.client_id
            assert len(generated) == 22
            assert list(client_ids(broker)) == [generated]
            await blocking(client.disconnect)
        finally:
            await blocking(client.close)


async def test_mqtt311_empty_client_id_without_clean_session_raw_bytes() -> None:
    # CONNECT, 3.1.1, flags 0 (clean session 0), keep alive 60, zero-length client id
    connect = bytes.fromhex("100c 00044d515454 04 00 003c 0000")
    async with open_test_broker() as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        async with stream:
            await stream.send_all(connect)
            received = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(100):
                    received += chunk
        # CONNACK, remaining length 2, session present 0, return code 2; then EOF
        assert received == bytes([0x20, 0x02, 0x00, RC_IDENTIFIER_REJECTED])


async def test_mqtt5_session_expiry_interval_decides_whether_the_session_survives() -> None:
    async with open_test_broker() as broker:

        async def connect_and_leave(client_id: str, expiry: int | None) -> None:
            client = PahoClient(client_id, protocol=V5)
            props = (
                None
                if expiry is None
                else properties(PacketTypes.CONNECT, SessionExpiryInterval=expiry)
            )
            try:
                connack = await blocking(
                    client.connect, broker.port, clean_start=True, connect_properties=props
                )
                assert connack.accepted
                await blocking(client.disconnect)
            finally:
                await blocking(client.close)

        async def session_present(client_id: str) -> bool:
            client = PahoClient(client_id, protocol=V5)
            try:
                connack = await blocking(client.connect, broker.port, clean_start=False)
                assert connack.accepted
                await blocking(client.disconnect)
                return connack.session_present
            finally:
                await blocking(client.close)

        await connect_and_leave("absent", None)  # no property: ends with the connection
        await connect_and_leave("short", 1)
        await connect_and_leave("long", 600)
        assert "absent" not in broker.core.sessions
        assert await session_present("absent") is False
        assert await session_present("long") is True
        # housekeeping ends it about a second after the disconnect
        await wait_until(lambda: "short" not in broker.core.sessions, "expired")
        assert await session_present("short") is False


async def test_mqtt5_session_expiry_above_the_maximum_is_lowered_in_connack() -> None:
    async with open_test_broker(max_session_expiry=30) as broker:
        client = PahoClient("greedy", protocol=V5)
        try:
            connack = await blocking(
                client.connect,
                broker.port,
                connect_properties=properties(PacketTypes.CONNECT, SessionExpiryInterval=600),
            )
            assert connack.accepted
            assert getattr(connack.properties, "SessionExpiryInterval", None) == 30
            assert broker.core.sessions["greedy"].expiry_interval == 30
            await blocking(client.disconnect)
        finally:
            await blocking(client.close)


async def test_mqtt5_keep_alive_above_max_keepalive_gets_server_keep_alive() -> None:
    async with open_test_broker(max_keepalive=10) as broker:
        client = PahoClient("sleepy", protocol=V5)
        try:
            connack = await blocking(client.connect, broker.port, keepalive=60)
            assert connack.accepted
            assert getattr(connack.properties, "ServerKeepAlive", None) == 10
            (summary,) = broker.clients()
            assert summary.keep_alive == 10
            await blocking(client.disconnect)
        finally:
            await blocking(client.close)


async def test_mqtt5_keep_alive_within_max_keepalive_has_no_server_keep_alive() -> None:
    async with open_test_broker(max_keepalive=10) as broker:
        client = PahoClient("modest", protocol=V5)
        try:
            connack = await blocking(client.connect, broker.port, keepalive=5)
            assert connack.accepted
            assert not hasattr(connack.properties, "ServerKeepAlive")
            (summary,) = broker.clients()
            assert summary.keep_alive == 5
            await blocking(client.disconnect)
        finally:
            await blocking(client.close)


async def test_mqtt311_keep_alive_above_max_keepalive_is_refused_with_rc_2() -> None:
    async with open_test_broker(max_keepalive=10) as broker:
        client = PahoClient("sleepy", protocol=V311)
        try:
            connack = await blocking(client.connect, broker.port, keepalive=60)
            assert connack.return_code == RC_IDENTIFIER_REJECTED
            assert connack.reason_code == 0x85  # Client Identifier not valid
            assert connack.session_present is False
            ended = await blocking(client.wait_disconnect)
            assert ended.is_failure
            assert broker.clients() == []
        finally:
            await blocking(client.close)
        async with paho_client(broker.port, "modest", keepalive=10) as modest:
            assert modest.client.is_connected()
            assert [s.keep_alive for s in broker.clients()] == [10]


async def test_mqtt311_keep_alive_zero_is_accepted_under_max_keepalive() -> None:
    # 3.1.1 section 3.1.2.10: 0 turns keep alive off, a server cannot refuse it
    async with (
        open_test_broker(max_keepalive=60) as broker,
        paho_client(broker.port, "forever", keepalive=0) as forever,
    ):
        assert forever.client.is_connected()
        assert [s.keep_alive for s in broker.clients()] == [0]


@pytest.mark.parametrize(
    ("protocol", "return_code"),
    [(V31, RC_NOT_AUTHORIZED), (V311, RC_NOT_AUTHORIZED), (V5, None)],
    ids=["3.1", "3.1.1", "5.0"],
)
async def test_anonymous_client_is_refused_when_anonymous_access_is_off(
    protocol: MQTTProtocolVersion, return_code: int | None
) -> None:
    async with open_test_broker(allow_anonymous=False) as broker:
        client = PahoClient("nobody", protocol=protocol)
        try:
            connack = await blocking(client.connect, broker.port)
            assert connack.reason_code == 0x87  # Not authorized
            assert connack.return_code == return_code
            assert connack.session_present is False
            ended = await blocking(client.wait_disconnect)
            assert ended.is_failure
            assert broker.clients() == []
            assert broker.stats.connects_refused == 1
        finally:
            await blocking(client.close)
