"""Bad input on a real socket: the broker answers as the spec says, then keeps serving.

Every test sends bytes built by hand (never by our encoder) to a broker on 127.0.0.1,
checks the reaction (CONNACK / DISCONNECT reason code where MQTT 5.0 names one,
otherwise a plain close) and then runs :func:`assert_still_serving`: a fresh pair of
well-behaved clients does a publish/subscribe round trip on the same broker.

Spec references are to OASIS MQTT 5.0 unless marked 3.1.1. In 5.0, section 4.13: a
Malformed Packet (cannot be parsed) is answered with reason code 0x81, a Protocol Error
(parsed, but not allowed) with 0x82; the server closes the connection either way,
sending CONNACK (during CONNECT) or DISCONNECT first. 3.1.1 (section 4.8) just closes.
"""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from rawclient import RawClient

from trio_mqtt.mqtt.packets import (
    Connack,
    Disconnect,
    Packet,
    ProtocolVersion,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.server.app import Broker, MessageStream
from trio_mqtt.testing import open_test_broker

V31 = ProtocolVersion.V31
V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5

# How long the broker may take to react to input it can judge at once.
PROMPT = 1.0

# ----------------------------------------------------------------- hand-built bytes
# Written from the spec (sections 1.5 and 2.1), independent of trio_mqtt.mqtt.codec.


def varint(value: int) -> bytes:
    """A Variable Byte Integer (1.5.5): 7 bits per byte, low bits first, 0x80 = more."""
    out = bytearray()
    while True:
        byte = value % 128
        value //= 128
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def frame(first_byte: int, body: bytes) -> bytes:
    """Fixed header (type and flags, Remaining Length) followed by *body*."""
    return bytes([first_byte]) + varint(len(body)) + body


def string(data: bytes) -> bytes:
    """A UTF-8 string / binary data field: two-byte big-endian length, then the bytes."""
    return len(data).to_bytes(2, "big") + data


def connect_v5(client_id: bytes, *, properties: bytes = b"", keep_alive: int = 60) -> bytes:
    """A clean-start MQTT 5.0 CONNECT; *properties* are the raw property bytes."""
    body = string(b"MQTT") + bytes([5, 0x02]) + keep_alive.to_bytes(2, "big")
    body += varint(len(properties)) + properties + string(client_id)
    return frame(0x10, body)


def connect_with_level(level: int, client_id: bytes = b"bad") -> bytes:
    """A 3.1.1-shaped CONNECT ("MQTT", clean session, keep alive 60) with any level."""
    return frame(0x10, string(b"MQTT") + bytes([level, 0x02, 0, 60]) + string(client_id))


def publish_v5(topic: bytes, payload: bytes = b"x", *, properties: bytes = b"") -> bytes:
    """A QoS 0 MQTT 5.0 PUBLISH with raw topic bytes and raw property bytes."""
    return frame(0x30, string(topic) + varint(len(properties)) + properties + payload)


def publish_v311(topic: bytes, payload: bytes = b"x") -> bytes:
    """A QoS 0 MQTT 3.1.1 PUBLISH with raw topic bytes."""
    return frame(0x30, string(topic) + payload)


# ------------------------------------------------------------------------- helpers

_round_trip = itertools.count()


async def assert_still_serving(broker: Broker) -> None:
    """A new 5.0 subscriber and a new 3.1.1 publisher do a QoS 1 round trip."""
    n = next(_round_trip)
    topic = f"check/{n}"
    subscriber = await RawClient.open(broker.port, V5)
    publisher = await RawClient.open(broker.port, V311)
    try:
        assert (await subscriber.connect(f"check-sub-{n}")).reason_code == 0
        await subscriber.send(Subscribe(1, (SubscriptionRequest(topic, qos=1),)))
        suback = await subscriber.receive()
        assert isinstance(suback, Suback)
        assert (suback.packet_id, suback.reason_codes) == (1, (1,))
        assert (await publisher.connect(f"check-pub-{n}")).reason_code == 0
        await publisher.send(Publish(topic, b"still serving", qos=1, packet_id=7))
        assert await publisher.receive() == Puback(7)
        message = await subscriber.receive()
        assert isinstance(message, Publish)
        assert (message.topic, message.payload, message.qos) == (topic, b"still serving", 1)
        assert message.packet_id is not None
        await subscriber.send(Puback(message.packet_id))
    finally:
        await subscriber.aclose()
        await publisher.aclose()


async def read_until_closed(stream: trio.abc.Stream, timeout: float = 5.0) -> bytes:
    """Every byte the broker sends before it closes the connection."""
    received = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            received += data
    return bytes(received)


async def connected(broker: Broker, version: ProtocolVersion, client_id: str) -> RawClient:
    """A RawClient that has done a successful CONNECT."""
    client = await RawClient.open(broker.port, version)
    connack = await client.connect(client_id)
    assert connack.reason_code == 0
    return client


def only_disconnect(packets: list[Packet]) -> int:
    """The reason code of the single DISCONNECT the broker sent before closing."""
    assert len(packets) == 1, packets
    assert isinstance(packets[0], Disconnect), packets
    return packets[0].reason_code


async def expect_disconnect(client: RawClient, code: ReasonCode) -> None:
    """The broker sends DISCONNECT *code* and closes, promptly."""
    assert only_disconnect(await client.expect_closed(PROMPT)) == code


async def expect_silent_close(client: RawClient, timeout: float = PROMPT) -> None:
    """The broker closes without sending anything (3.1.1, or before CONNECT)."""
    assert await client.expect_closed(timeout) == []


@asynccontextmanager
async def broker_checked(**settings: object) -> AsyncIterator[Broker]:
    """A test broker; after the test body it must still serve a round trip."""
    async with open_test_broker(**settings) as broker:
        yield broker
        await assert_still_serving(broker)


# ---------------------------------------------------------------- before CONNECT


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", id="http"),
        pytest.param(b"\x00\x00\x00\x00", id="type-0"),
        pytest.param(b"\xff\xff\xff\xff\xff", id="0xff"),
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", id="tls-hello"),
    ],
)
async def test_garbage_first_bytes_close_the_connection(garbage: bytes) -> None:
    # [MQTT-3.1.0-1]: the first packet must be CONNECT; the version is unknown, so
    # there is no CONNACK format to answer in: just close.
    async with broker_checked() as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        await stream.send_all(garbage)
        assert await read_until_closed(stream, PROMPT) == b""
        assert broker.stats.protocol_errors == 1
        assert broker.stats.connects == 0


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(publish_v311(b"a/b", b"hi"), id="publish"),
        pytest.param(b"\xc0\x00", id="pingreq"),
        pytest.param(frame(0x82, b"\x00\x01" + string(b"a/b") + b"\x00"), id="subscribe"),
        pytest.param(b"\xe0\x00", id="disconnect"),
    ],
)
async def test_packet_before_connect_closes_the_connection(packet: bytes) -> None:
    async with broker_checked() as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        await stream.send_all(packet)
        assert await read_until_closed(stream, PROMPT) == b""
        assert broker.stats.messages_received == 0  # the PUBLISH was not routed
        assert broker.clients() == []


async def test_client_that_never_sends_connect_is_closed_after_connect_timeout() -> None:
    async with broker_checked(connect_timeout=0.5) as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        start = trio.current_time()
        assert await read_until_closed(stream, 5.0) == b""
        assert 0.4 <= trio.current_time() - start < 3.0


async def test_truncated_connect_then_silence_is_closed_after_connect_timeout() -> None:
    async with broker_checked(connect_timeout=0.5) as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        start = trio.current_time()
        await stream.send_all(connect_v5(b"truncated")[:7])
        assert await read_until_closed(stream, 5.0) == b""
        assert 0.4 <= trio.current_time() - start < 3.0


async def trickle_until_closed(stream: trio.abc.Stream, data: bytes, interval: float) -> float:
    """Send *data* one byte per *interval* while reading; seconds until the broker closes.

    Fails if the broker sends anything, or keeps the connection for 5 s.
    """
    start = trio.current_time()

    async def trickle() -> None:
        for byte in data:
            try:
                await stream.send_all(bytes([byte]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await trio.sleep(interval)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        received = await read_until_closed(stream, 5.0)
        nursery.cancel_scope.cancel()
    assert received == b""
    return trio.current_time() - start


async def test_trickled_connect_is_closed_after_connect_timeout() -> None:
    # A byte every 0.1 s keeps the socket busy but never completes the CONNECT: the
    # connect timeout is a deadline for the whole packet, not an idle timer.
    async with broker_checked(connect_timeout=0.5) as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        elapsed = await trickle_until_closed(stream, connect_v5(b"x" * 200), 0.1)
        assert 0.4 <= elapsed < 2.0


async def test_remaining_length_of_five_bytes_before_connect_closes() -> None:
    async with broker_checked() as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        await stream.send_all(b"\x10\xff\xff\xff\xff\x01")
        assert await read_until_closed(stream, PROMPT) == b""


# --------------------------------------------------------------------- CONNECT


@pytest.mark.parametrize("level", [0, 1, 2, 6, 7, 255])
async def test_unsupported_protocol_level_gets_connack_1_then_close(level: int) -> None:
    # 3.1.1 [MQTT-3.1.2-2]: CONNACK return code 0x01 (unacceptable protocol level),
    # then disconnect. The answer uses the 3.1.1 CONNACK layout: 20 02 00 01.
    async with broker_checked() as broker:
        stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
        await stream.send_all(connect_with_level(level))
        assert await read_until_closed(stream, PROMPT) == b"\x20\x02\x00\x01"
        assert broker.clients() == []


async def test_connect_with_authentication_method_gets_0x8c() -> None:
    # 4.12 [MQTT-4.12.0-1]: an unsupported Authentication Method (property 0x15) may be
    # answered with CONNACK 0x8C (Bad authentication method); the connection is closed.
    method = b"SCRAM-SHA-1"
    async with broker_checked() as broker:
        client = await RawClient.open(broker.port, V5)
        await client.send_raw(connect_v5(b"auth", properties=b"\x15" + string(method)))
        packets = await client.expect_closed(PROMPT)
        assert len(packets) == 1
        assert isinstance(packets[0], Connack)
        assert packets[0].reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
        assert broker.clients() == []
        assert broker.stats.connects_refused == 1


async def test_connect_with_unknown_property_gets_connack_0x81() -> None:
    # 2.2.2.2: an identifier that is not valid for the packet type: Malformed Packet.
    async with broker_checked() as broker:
        client = await RawClient.open(broker.port, V5)
        await client.send_raw(connect_v5(b"unknown-prop", properties=b"\x7f\x00"))
        packets = await client.expect_closed(PROMPT)
        assert [type(p) for p in packets] == [Connack]
        assert isinstance(packets[0], Connack)
        assert packets[0].reason_code == ReasonCode.MALFORMED_PACKET
        assert broker.clients() == []


async def test_connect_with_duplicate_property_gets_connack_0x82() -> None:
    # 3.1.2.11.2: "It is a Protocol Error to include the Session Expiry Interval more
    # than once."
    expiry = b"\x11\x00\x00\x00\x0a"
    async with broker_checked() as broker:
        client = await RawClient.open(broker.port, V5)
        await client.send_raw(connect_v5(b"dup-prop", properties=expiry + expiry))
        packets = await client.expect_closed(PROMPT)
        assert len(packets) == 1
        assert isinstance(packets[0], Connack)
        assert packets[0].reason_code == ReasonCode.PROTOCOL_ERROR
        assert broker.clients() == []


async def test_second_connect_v5_gets_disconnect_0x82() -> None:
    # [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error; the first session ends.
    async with broker_checked() as broker:
        client = await connected(broker, V5, "twice")
        await client.send_raw(connect_v5(b"twice"))
        await expect_disconnect(client, ReasonCode.PROTOCOL_ERROR)
        assert broker.clients() == []


async def test_second_connect_v311_closes() -> None:
    async with broker_checked() as broker:
        client = await connected(broker, V311, "twice")
        await client.send_raw(connect_with_level(4, b"twice"))
        await expect_silent_close(client)
        assert broker.clients() == []


# ---------------------------------------------------------- framing after CONNECT


async def test_truncated_packet_then_silence_is_closed_by_keep_alive() -> None:
    # [MQTT-3.1.2-22]: nothing complete within 1.5 x Keep Alive closes the connection;
    # a 5.0 server may say why with DISCONNECT 0x8D (Keep Alive timeout).
    async with broker_checked() as broker:
        client = await RawClient.open(broker.port, V5)
        assert (await client.connect("sleepy", keep_alive=1)).reason_code == 0
        start = trio.current_time()
        await client.send_raw(publish_v5(b"a/b", b"payload")[:5])
        assert only_disconnect(await client.expect_closed(5.0)) == ReasonCode.KEEP_ALIVE_TIMEOUT
        assert 1.2 <= trio.current_time() - start < 4.0


async def test_trickled_packet_after_connect_is_closed_by_keep_alive() -> None:
    # [MQTT-3.1.2-22] counts Control Packets, not bytes: a PUBLISH trickled a byte at a
    # time never completes, so 1.5 x Keep Alive (1.5 s) after CONNECT the broker closes.
    async with broker_checked() as broker:
        client = await RawClient.open(broker.port, V5)
        assert (await client.connect("trickler", keep_alive=1)).reason_code == 0
        start = trio.current_time()

        async def trickle() -> None:
            for byte in publish_v5(b"a/b", bytes(100)):
                try:
                    await client.send_raw(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                await trio.sleep(0.2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            packets = await client.expect_closed(3.0)
            nursery.cancel_scope.cancel()
        assert only_disconnect(packets) == ReasonCode.KEEP_ALIVE_TIMEOUT
        assert 1.2 <= trio.current_time() - start < 3.0


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
async def test_remaining_length_of_five_bytes_is_malformed(version: ProtocolVersion) -> None:
    # 1.5.5: a Variable Byte Integer has at most four bytes.
    async with broker_checked() as broker:
        client = await connected(broker, version, "five-bytes")
        await client.send_raw(b"\x30\xff\xff\xff\xff\x01")
        if version is V5:
            await expect_disconnect(client, ReasonCode.MALFORMED_PACKET)
        else:
            await expect_silent_close(client)


async def test_packet_above_max_packet_size_gets_0x95_without_its_body() -> None:
    # 3.2.2.3.6: the client must not exceed the server's Maximum Packet Size; if it
    # does, DISCONNECT 0x95 (Packet too large). Only the fixed header of a 256 MB
    # PUBLISH is sent: the broker must decide from it, not wait for the body.
    async with broker_checked(max_packet_size=1024) as broker:
        client = await RawClient.open(broker.port, V5)
        connack = await client.connect("huge")
        assert connack.properties.maximum_packet_size == 1024
        await client.send_raw(b"\x30\xff\xff\xff\x7f")  # remaining length 268,435,455
        await expect_disconnect(client, ReasonCode.PACKET_TOO_LARGE)


async def test_max_packet_size_counts_the_whole_packet() -> None:
    # 1024 bytes in all (1 + 2 header bytes + 1021) is allowed, 1025 is not.
    async with broker_checked(max_packet_size=1024) as broker:
        client = await connected(broker, V5, "exact")
        async with broker.subscribe("big") as messages:
            body = string(b"big") + b"\x00" + bytes(1021 - 6)
            exact = frame(0x30, body)
            assert exact[:3] == b"\x30\xfd\x07" and len(exact) == 1024
            await client.send_raw(exact)
            with trio.fail_after(PROMPT):
                message = await messages.receive()
            assert len(message.payload) == 1015
        await client.send_raw(b"\x30\xfe\x07")  # remaining length 1022: 1025 bytes
        await expect_disconnect(client, ReasonCode.PACKET_TOO_LARGE)


async def test_packet_above_max_packet_size_v311_closes() -> None:
    async with broker_checked(max_packet_size=1024) as broker:
        client = await connected(broker, V311, "huge")
        await client.send_raw(b"\x30\xff\xff\xff\x7f")
        await expect_silent_close(client)


@pytest.mark.parametrize(
    "packet",
    [
        # SUBSCRIBE must have flags 0b0010 (2.1.3, [MQTT-3.8.1-1]); here 0b0000
        pytest.param(frame(0x80, b"\x00\x01\x00" + string(b"a") + b"\x00"), id="subscribe-0"),
        pytest.param(frame(0x8A, b"\x00\x01\x00" + string(b"a") + b"\x00"), id="subscribe-a"),
        pytest.param(frame(0xA0, b"\x00\x01\x00" + string(b"a")), id="unsubscribe-0"),
        pytest.param(b"\xc1\x00", id="pingreq-1"),
        pytest.param(b"\xe8\x00", id="disconnect-8"),
    ],
)
async def test_reserved_flag_bits_are_malformed(packet: bytes) -> None:
    # 2.1.3: "If invalid flags are received it is a Malformed Packet."
    async with broker_checked() as broker:
        client = await connected(broker, V5, "flags")
        await client.send_raw(packet)
        await expect_disconnect(client, ReasonCode.MALFORMED_PACKET)


async def test_reserved_flag_bits_v311_close() -> None:
    async with broker_checked() as broker:
        client = await connected(broker, V311, "flags")
        await client.send_raw(frame(0x80, b"\x00\x01" + string(b"a") + b"\x00"))
        await expect_silent_close(client)
        assert broker.clients() == []


# ------------------------------------------------------------------------ PUBLISH


async def test_publish_qos_3_is_malformed() -> None:
    # [MQTT-3.3.1-4]: both QoS bits set is a Malformed Packet.
    async with broker_checked() as broker:
        client = await connected(broker, V5, "qos3")
        await client.send_raw(frame(0x36, string(b"a") + b"\x00\x01" + b"\x00" + b"x"))
        await expect_disconnect(client, ReasonCode.MALFORMED_PACKET)
        assert broker.stats.messages_received == 0


@pytest.mark.parametrize("topic", [b"a/+", b"a/#", b"#", b"+", b"a+b"])
async def test_wildcard_in_publish_topic_gets_0x90(topic: bytes) -> None:
    # [MQTT-3.3.2-2]: the Topic Name in a PUBLISH must not contain wildcards;
    # DISCONNECT 0x90 (Topic Name invalid).
    async with broker_checked() as broker:
        client = await connected(broker, V5, "wildcard")
        await client.send_raw(publish_v5(topic))
        await expect_disconnect(client, ReasonCode.TOPIC_NAME_INVALID)
        assert broker.stats.messages_received == 0


async def test_wildcard_in_publish_topic_v311_closes() -> None:
    async with broker_checked() as broker:
        client = await connected(broker, V311, "wildcard")
        await client.send_raw(publish_v311(b"a/#"))
        await expect_silent_close(client)
        assert broker.stats.messages_received == 0


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param(b"a/\xff", id="0xff"),
        pytest.param(b"a/\xc3", id="truncated-2-byte"),
        pytest.param(b"\xc0\xaf", id="overlong"),
        pytest.param(b"\xed\xa0\x80", id="surrogate-d800"),
        pytest.param(b"a/\x00/b", id="u0000"),
    ],
)
async def test_invalid_utf8_or_null_in_topic_is_malformed(topic: bytes) -> None:
    # [MQTT-1.5.4-1] ill-formed UTF-8 (including surrogates) and [MQTT-1.5.4-2] U+0000:
    # a receiver treats them as a Malformed Packet.
    async with broker_checked() as broker:
        client = await connected(broker, V5, "utf8")
        await client.send_raw(publish_v5(topic))
        await expect_disconnect(client, ReasonCode.MALFORMED_PACKET)
        assert broker.stats.messages_received == 0


async def test_invalid_utf8_in_topic_v311_closes() -> None:
    async with broker_checked() as broker:
        client = await connected(broker, V311, "utf8")
        await client.send_raw(publish_v311(b"a/\xff"))
        await expect_silent_close(client)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(frame(0x32, string(b"a") + b"\x00\x00" + b"\x00x"), id="qos1"),
        pytest.param(frame(0x34, string(b"a") + b"\x00\x00" + b"\x00x"), id="qos2"),
    ],
)
async def test_packet_id_zero_on_qos_publish_is_a_protocol_error(packet: bytes) -> None:
    # [MQTT-2.2.1-3]: PUBLISH with QoS > 0 needs a non-zero Packet Identifier. The
    # packet parses, so by the definitions of 1.2 this is a Protocol Error (0x82).
    async with broker_checked() as broker:
        client = await connected(broker, V5, "pid0")
        await client.send_raw(packet)
        await expect_disconnect(client, ReasonCode.PROTOCOL_ERROR)
        assert broker.stats.messages_received == 0


async def test_packet_id_zero_on_subscribe_is_a_protocol_error() -> None:
    async with broker_checked() as broker:
        client = await connected(broker, V5, "pid0")
        await client.send_raw(frame(0x82, b"\x00\x00\x00" + string(b"a") + b"\x00"))
        await expect_disconnect(client, ReasonCode.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "properties",
    [
        pytest.param(b"\x7f\x00", id="unknown-0x7f"),
        pytest.param(b"\x00", id="identifier-0"),
        # Assigned Client Identifier (0x12) exists but is not valid in PUBLISH
        pytest.param(b"\x12" + string(b"id"), id="wrong-packet-0x12"),
    ],
)
async def test_unknown_property_is_malformed(properties: bytes) -> None:
    # 2.2.2.2: an identifier not valid for the packet type makes it a Malformed Packet.
    async with broker_checked() as broker:
        client = await connected(broker, V5, "unknown-prop")
        await client.send_raw(publish_v5(b"a/b", properties=properties))
        await expect_disconnect(client, ReasonCode.MALFORMED_PACKET)
        assert broker.stats.messages_received == 0


@pytest.mark.parametrize(
    "properties",
    [
        pytest.param(b"\x01\x00\x01\x00", id="payload-format-indicator"),
        pytest.param(b"\x02\x00\x00\x00\x05" * 2, id="message-expiry-interval"),
        pytest.param((b"\x03" + string(b"text/plain")) * 2, id="content-type"),
    ],
)
async def test_duplicate_property_is_a_protocol_error(properties: bytes) -> None:
    # 3.3.2.3: "It is a Protocol Error to include the <property> more than once."
    async with broker_checked() as broker:
        client = await connected(broker, V5, "dup-prop")
        await client.send_raw(publish_v5(b"a/b", properties=properties))
        await expect_disconnect(client, ReasonCode.PROTOCOL_ERROR)
        assert broker.stats.messages_received == 0


async def test_repeated_user_property_is_allowed() -> None:
    # The one property that may repeat in PUBLISH (3.3.2.3.7): not an error.
    user_property = b"\x26" + string(b"k") + string(b"v")
    async with broker_checked() as broker:
        client = await connected(broker, V5, "user-props")
        async with broker.subscribe("a/b") as messages:
            await client.send_raw(publish_v5(b"a/b", properties=user_property * 2))
            with trio.fail_after(PROMPT):
                message = await messages.receive()
        assert message.properties.user_properties == (("k", "v"), ("k", "v"))


# ---------------------------------------------------------------------- SUBSCRIBE


async def test_subscribe_without_topic_filters_is_a_protocol_error() -> None:
    # [MQTT-3.8.3-2]: "A SUBSCRIBE packet with no Payload is a Protocol Error."
    async with broker_checked() as broker:
        client = await connected(broker, V5, "no-filters")
        await client.send_raw(b"\x82\x03\x00\x01\x00")
        await expect_disconnect(client, ReasonCode.PROTOCOL_ERROR)


async def test_subscribe_without_topic_filters_v311_closes() -> None:
    # 3.1.1 [MQTT-3.8.3-3]: at least one filter; a violation closes the connection.
    async with broker_checked() as broker:
        client = await connected(broker, V311, "no-filters")
        await client.send_raw(b"\x82\x02\x00\x01")
        await expect_silent_close(client)


@pytest.mark.parametrize(
    ("version", "properties"),
    [pytest.param(V5, b"\x00", id="5.0"), pytest.param(V311, b"", id="3.1.1")],
)
async def test_empty_topic_filter_is_malformed(version: ProtocolVersion, properties: bytes) -> None:
    # [MQTT-4.7.3-1]: topic filters are at least one character long. An empty one is not
    # "correctly formed" (what SUBACK 0x8F is for): 5.0 sends DISCONNECT 0x81 Malformed
    # Packet, 3.1.1 closes without a SUBACK [MQTT-4.8.0-1]; the good filter in the same
    # SUBSCRIBE goes with it.
    async with broker_checked() as broker:
        client = await connected(broker, version, "empty-filter")
        body = b"\x00\x02" + properties + string(b"") + b"\x01" + string(b"ok/x") + b"\x01"
        await client.send_raw(frame(0x82, body))
        if version is V5:
            await expect_disconnect(client, ReasonCode.MALFORMED_PACKET)
        else:
            await expect_silent_close(client)
        assert broker.clients() == []


# --------------------------------------------------------------- slow subscriber

MESSAGE_SIZE = 64 * 1024
MESSAGES = 320  # of 64 KiB: 20 MiB
MAX_QUEUED_BYTES = 100 * MESSAGE_SIZE


async def subscribed(broker: Broker, client_id: str, topic_filter: str) -> RawClient:
    """A connected 3.1.1 client with a QoS 0 subscription to *topic_filter*."""
    client = await connected(broker, V311, client_id)
    await client.send(Subscribe(1, (SubscriptionRequest(topic_filter, qos=0),)))
    suback = await client.receive()
    assert isinstance(suback, Suback) and suback.reason_codes == (0,)
    return client


async def test_subscriber_that_stops_reading_does_not_block_anyone() -> None:
    """A stalled subscriber loses messages (counted) instead of stalling the others.

    ``slow`` subscribes to big/# and never reads again. 20 MiB of QoS 0 messages go
    through the broker from an MQTT publisher: the publisher is never held up, the
    MQTT subscriber ``fast`` and an in-process subscriber get every message in order,
    the slow session's queue fills to max_queued_bytes and never beyond, and the
    broker's memory stays far below the 20 MiB that went through it.
    """
    payload = bytes(MESSAGE_SIZE - 16)
    async with broker_checked(max_queued_bytes=MAX_QUEUED_BYTES) as broker:
        slow = await subscribed(broker, "slow", "big/#")
        fast = await subscribed(broker, "fast", "big/#")
        publisher = await connected(broker, V311, "publisher")
        slow_session = broker.core.sessions["slow"]
        topics: list[str] = []
        all_received = trio.Event()

        async def consume(messages: MessageStream) -> None:
            async for message in messages:
                topics.append(message.topic)
                if len(topics) == MESSAGES:
                    all_received.set()

        try:
            async with (
                broker.subscribe("big/#", max_buffer=MESSAGES) as in_process,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(consume, in_process)
                tracemalloc.start()
                try:
                    baseline = tracemalloc.get_traced_memory()[0]
                    tracemalloc.reset_peak()
                    publish_time = 0.0
                    largest_queue = 0
                    with trio.fail_after(15):
                        for i in range(MESSAGES):
                            start = trio.current_time()
                            await publisher.send_raw(publish_v311(f"big/{i}".encode(), payload))
                            publish_time += trio.current_time() - start
                            # fast reads in lockstep with the publisher
                            message = await fast.receive(5.0)
                            assert isinstance(message, Publish)
                            assert message.topic == f"big/{i}"
                            assert len(message.payload) == len(payload)
                            largest_queue = max(largest_queue, slow_session.queued_bytes)
                    peak = tracemalloc.get_traced_memory()[1] - baseline
                finally:
                    tracemalloc.stop()
                with trio.fail_after(PROMPT):
                    await all_received.wait()
                nursery.cancel_scope.cancel()
            assert topics == [f"big/{i}" for i in range(MESSAGES)]
            assert in_process.dropped == 0

            assert publish_time < 5.0
            # it filled up, and never went beyond
            assert MAX_QUEUED_BYTES - MESSAGE_SIZE < largest_queue <= MAX_QUEUED_BYTES
            assert broker.stats.messages_dropped > 0
            assert slow_session.dropped == broker.stats.messages_dropped
            assert peak < 12 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB"
            # the stalled client is still connected: only its own messages suffered
            assert "slow" in {summary.client_id for summary in broker.clients()}
        finally:
            await slow.aclose()
            await fast.aclose()
            await publisher.aclose()


async def test_subscriber_that_falls_behind_gets_its_whole_queue_when_it_reads_again() -> None:
    payload = bytes(MESSAGE_SIZE - 16)
    async with broker_checked(max_queued_bytes=MAX_QUEUED_BYTES) as broker:
        behind = await subscribed(broker, "behind", "big/#")
        publisher = await connected(broker, V311, "publisher")
        session = broker.core.sessions["behind"]
        try:
            with trio.fail_after(10):
                for i in range(MESSAGES):
                    await publisher.send_raw(publish_v311(f"big/{i}".encode(), payload))
            # everything is published; the subscriber now reads, and nothing else happens
            assert MAX_QUEUED_BYTES - MESSAGE_SIZE < session.queued_bytes <= MAX_QUEUED_BYTES
            while session.pending:
                assert isinstance(await behind.receive(2.0), Publish)
        finally:
            await behind.aclose()
            await publisher.aclose()
