"""Every validation rule of the decoder (and the encoder's refusals), with hand-made bytes.

Reason codes follow the MQTT 5.0 spec: MALFORMED_PACKET when the bytes cannot be parsed,
PROTOCOL_ERROR when parsed data is not allowed, PACKET_TOO_LARGE above the reader's limit.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mqtt.errors import LocalProtocolError, RemoteProtocolError
from trio_mqtt.mqtt.codec import PacketReader, UnsupportedProtocolVersion, encode, encode_publish
from trio_mqtt.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
)
from trio_mqtt.mqtt.properties import MAX_PROPERTIES
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.mqtt.wire import encode_varint

from .strategies import VERSIONS, client_packets, connects, server_packets

V31 = ProtocolVersion.V31
V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL = ReasonCode.PROTOCOL_ERROR
SERVER_TO_CLIENT_TYPES = (2, 9, 11, 13)  # CONNACK, SUBACK, UNSUBACK, PINGRESP


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def frame(first: int, body: bytes) -> bytes:
    """Fixed header with a one-byte remaining length (bodies here are all < 128 bytes)."""
    assert len(body) < 128
    return bytes((first, len(body))) + body


MQTT = h("00 04 4D 51 54 54")


def connect_311(flags: int, payload: bytes) -> bytes:
    """A 3.1.1 CONNECT: name, level 4, ``flags``, keep alive 60, then ``payload``."""
    return frame(0x10, MQTT + bytes((4, flags)) + h("00 3C") + payload)


def connect_5(flags: int, properties: bytes, payload: bytes) -> bytes:
    """A 5.0 CONNECT; ``properties`` is the property bytes without their length."""
    body = MQTT + bytes((5, flags)) + h("00 3C") + bytes((len(properties),)) + properties
    return frame(0x10, body + payload)


CLIENT_ID_A = h("00 01 61")


def reject(
    data: bytes,
    code: ReasonCode,
    *,
    version: ProtocolVersion | None = V311,
    server_side: bool = True,
    match: str | None = None,
) -> RemoteProtocolError:
    """Feed ``data`` to a fresh reader: it must fail with ``code`` and stay failed."""
    reader = PacketReader(protocol_version=version, server_side=server_side)
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(data)
    error = info.value
    assert error.reason_code == code, str(error)
    if match is not None:
        assert match in str(error)
    assert reader.buffered == 0
    # the reader is dead: anything more raises the same kind of error
    with pytest.raises(RemoteProtocolError) as again:
        reader.feed(b"\xc0\x00")
    assert type(again.value) is type(error)
    assert again.value.reason_code == code
    return error


def accept(data: bytes, *, version: ProtocolVersion | None = V311) -> list[Packet]:
    reader = PacketReader(protocol_version=version)
    packets = reader.feed(data)
    assert reader.buffered == 0
    return packets


# ============================================================================ fixed header


@pytest.mark.parametrize(
    ("version", "first"),
    [
        (V311, 0x41),  # PUBACK
        (V311, 0x52),  # PUBREC
        (V311, 0x60),  # PUBREL must be 0b0010
        (V311, 0x6A),  # PUBREL with DUP: only tolerated for 3.1
        (V311, 0x71),  # PUBCOMP
        (V311, 0x80),  # SUBSCRIBE must be 0b0010
        (V311, 0x83),
        (V311, 0xA0),  # UNSUBSCRIBE must be 0b0010
        (V311, 0xC8),  # PINGREQ
        (V311, 0xE1),  # DISCONNECT
        (V5, 0x28),  # CONNACK
        (V5, 0x92),  # SUBACK
        (V5, 0xB1),  # UNSUBACK
        (V5, 0xD2),  # PINGRESP
        (V5, 0xF4),  # AUTH
        (V5, 0x18),  # CONNECT
        (None, 0x11),  # CONNECT before the version is known
    ],
)
def test_reserved_fixed_header_flags_are_malformed_on_the_first_byte(
    version: ProtocolVersion | None, first: int
) -> None:
    # a server's reader refuses the server-to-client packets before their flags
    server_side = first >> 4 not in SERVER_TO_CLIENT_TYPES
    reject(
        bytes((first,)),
        MALFORMED,
        version=version,
        server_side=server_side,
        match="reserved fixed header flags",
    )


@pytest.mark.parametrize(
    "data", [h("6A 02 00 01"), h("8A 06 00 01 00 01 61 00"), h("AA 05 00 01 00 01 61")]
)
def test_mqtt_31_tolerates_dup_on_pubrel_subscribe_unsubscribe(data: bytes) -> None:
    assert len(accept(data, version=V31)) == 1
    reject(data, MALFORMED, version=V311)


@pytest.mark.parametrize("version", [V31, V311, V5])
@pytest.mark.parametrize("server_side", [True, False], ids=["server", "client"])
@pytest.mark.parametrize("packet_type", [4, 5, 6, 7], ids=["PUBACK", "PUBREC", "PUBREL", "PUBCOMP"])
def test_acknowledgement_flags_are_checked_on_both_sides_in_every_version(
    version: ProtocolVersion, server_side: bool, packet_type: int
) -> None:
    # The reader takes the common first bytes of the acknowledgements without its full
    # first-byte check: every other flags value must still be refused, on both sides.
    required = 0b0010 if packet_type == 6 else 0
    body = b"\x00\x01"  # packet id 1
    for flags in range(16):
        data = frame(packet_type << 4 | flags, body)
        if flags == required or (version is V31 and packet_type == 6 and flags & 0x07 == required):
            reader = PacketReader(protocol_version=version, server_side=server_side)
            [packet] = reader.feed(data)
            assert packet.packet_id == 1  # type: ignore[attr-defined]
        else:
            reject(data, MALFORMED, version=version, server_side=server_side)


def test_packet_type_0_is_malformed() -> None:
    reject(b"\x00", MALFORMED, match="packet type 0")
    reject(b"\x00\x00", MALFORMED, version=V5)


@pytest.mark.parametrize("version", [V31, V311])
def test_auth_does_not_exist_before_5(version: ProtocolVersion) -> None:
    reject(h("F0 00"), MALFORMED, version=version, match="AUTH")


def test_remaining_length_of_more_than_4_bytes_is_malformed_without_waiting() -> None:
    # the 4th length byte still has its continuation bit: no valid length can follow
    reject(h("30 FF FF FF FF"), MALFORMED, match="longer than 4 bytes")


def test_remaining_length_not_minimally_encoded_is_malformed() -> None:
    reject(h("C0 80 00"), MALFORMED, match="minimally")


# ============================================================================ maximum packet size


def test_max_packet_size_enforced_from_the_header_before_buffering() -> None:
    reader = PacketReader(max_packet_size=1024 * 1024, protocol_version=V311)
    # PUBLISH with remaining length 10 MiB = 10485760 = 5 * 128**3 -> 80 80 80 05
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(h("30 80 80 80 05"))
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE
    assert "exceeds the maximum packet size of 1048576" in str(info.value)
    assert reader.buffered == 0
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"\x00" * 100)
    assert reader.buffered == 0


def test_max_packet_size_counts_the_fixed_header() -> None:
    # 30 08 | 00 01 74 | 5 payload bytes = 10 bytes in total
    ten_bytes = h("30 08 00 01 74") + b"12345"
    reader = PacketReader(max_packet_size=10, protocol_version=V311)
    assert reader.feed(ten_bytes) == [Publish("t", b"12345")]
    # one more payload byte: rejected as soon as the 2-byte header is in
    reader = PacketReader(max_packet_size=10, protocol_version=V311)
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(h("30 09"))
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_max_packet_size_applies_to_connect() -> None:
    reader = PacketReader(max_packet_size=100)
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(h("10 80 01"))  # remaining length 128 -> 131 bytes
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_reader_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="protocol_version"):
        PacketReader(server_side=False)
    with pytest.raises(ValueError, match="max_packet_size"):
        PacketReader(max_packet_size=1)


# ============================================================================ CONNECT


def test_first_packet_must_be_connect() -> None:
    reject(b"\x30", PROTOCOL, version=None, match="first packet must be CONNECT")
    reject(h("C0 00"), PROTOCOL, version=None)


@pytest.mark.parametrize(
    ("name", "level"),
    [
        (b"MQTT", 6),
        (b"MQTT", 3),  # 3.1 must say MQIsdp
        (b"MQIsdp", 4),
        (b"MQTX", 4),
        (b"MQTT", 0x84),  # the "bridge" bit some brokers use
        (b"", 4),
    ],
)
def test_unsupported_protocol_version(name: bytes, level: int) -> None:
    data = frame(0x10, bytes((0, len(name))) + name + bytes((level, 2)) + h("00 3C") + CLIENT_ID_A)
    reader = PacketReader()
    with pytest.raises(UnsupportedProtocolVersion) as info:
        reader.feed(data)
    error = info.value
    assert error.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    assert error.protocol_level == level
    assert error.protocol_name == name.decode()
    assert reader.protocol_version is None
    with pytest.raises(UnsupportedProtocolVersion) as again:
        reader.feed(b"")
    assert again.value.protocol_level == level


def test_connect_with_bad_version_on_a_connection_with_a_version_is_a_protocol_error() -> None:
    data = frame(0x10, MQTT + h("06 02 00 3C") + CLIENT_ID_A)
    reject(data, PROTOCOL, version=V311)


def test_connect_reserved_flag_is_malformed_and_version_is_known() -> None:
    reader = PacketReader()
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(connect_311(0x03, CLIENT_ID_A))
    assert info.value.reason_code == MALFORMED
    assert "reserved connect flag" in str(info.value)
    # the broker needs the version to answer a malformed CONNECT
    assert reader.protocol_version == V311


def test_mqtt_31_connect_may_set_the_reserved_flag() -> None:
    # 3.1 ("MQIsdp", level 3) left connect flags bit 0 unused without forbidding it, and
    # mosquitto accepts it: flags 0x03 = reserved bit + clean session, client id "a"
    data = h("10 0F | 00 06 4D 51 49 73 64 70 | 03 | 03 | 00 3C | 00 01 61")
    assert accept(data, version=None) == [Connect("a", V31, clean_start=True)]


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (0x0A, "will QoS is 1 but the will flag is 0"),  # will QoS 1, no will flag
        (0x12, "will QoS is 2 but the will flag is 0"),
        (0x22, "will retain is set but the will flag is 0"),
    ],
)
def test_will_fields_without_will_flag_are_malformed(flags: int, match: str) -> None:
    reject(connect_311(flags, CLIENT_ID_A), MALFORMED, version=None, match=match)


def test_will_qos_3_is_malformed() -> None:
    # will flag 0x04 | will QoS 3 0x18 | clean 0x02
    payload = CLIENT_ID_A + h("00 01 74 00 00")
    reject(connect_311(0x1E, payload), MALFORMED, version=None, match="will QoS 3")


def test_password_without_user_name() -> None:
    payload = CLIENT_ID_A + h("00 00")  # client id "a", empty password
    reject(connect_311(0x42, payload), MALFORMED, version=None, match="3.1.1 forbids")
    v31 = frame(0x10, h("00 06 4D 51 49 73 64 70 03 42 00 3C") + payload)
    reject(v31, MALFORMED, version=None, match="3.1 forbids")
    # 5.0 allows it
    assert accept(connect_5(0x42, b"", payload), version=None) == [Connect("a", V5, password=b"")]


def test_connect_authentication_data_without_method_is_a_protocol_error() -> None:
    reject(connect_5(0x02, h("16 00 00"), CLIENT_ID_A), PROTOCOL, version=None, match="method")


def test_connect_truncated_is_malformed() -> None:
    reject(h("10 05 00 04 4D 51 54"), MALFORMED, version=None)  # ends in the name
    reject(frame(0x10, MQTT + h("04 02")), MALFORMED, version=None)  # no keep alive
    reject(connect_311(0x02, b""), MALFORMED, version=None)  # no client id
    reject(connect_311(0x82, CLIENT_ID_A), MALFORMED, version=None)  # user name missing
    will = CLIENT_ID_A + h("00 01 74")  # will topic but no will payload
    reject(connect_311(0x06, will), MALFORMED, version=None)


def test_connect_trailing_bytes_are_malformed() -> None:
    reject(connect_311(0x02, CLIENT_ID_A + b"\xff"), MALFORMED, version=None, match="unexpected")


# ============================================================================ PUBLISH


def test_publish_qos_3_is_malformed() -> None:
    reject(h("36 07 00 03 61 2F 62 00 01"), MALFORMED, match="QoS 3")
    reject(h("36 08 00 03 61 2F 62 00 01 00"), MALFORMED, version=V5)


def test_publish_qos_0_with_dup_is_malformed() -> None:
    reject(h("38 05 00 03 61 2F 62"), MALFORMED, match="DUP")


@pytest.mark.parametrize(
    "data",
    [
        h("30 01 00"),  # no room for the topic length
        h("30 03 00 05 61"),  # topic longer than the packet
        h("32 05 00 03 61 2F 62"),  # QoS 1 without packet identifier
        h("32 06 00 03 61 2F 62 00"),  # half a packet identifier
    ],
)
def test_publish_shorter_than_its_fields_is_malformed(data: bytes) -> None:
    reject(data, MALFORMED)


def test_publish_5_without_property_length_is_malformed() -> None:
    reject(h("30 03 00 01 74"), MALFORMED, version=V5, match="property length")


def test_publish_topic_is_returned_as_decoded() -> None:
    # wildcards and empty topics are the broker's business
    assert accept(h("30 05 00 03 61 2F 23")) == [Publish("a/#", b"")]
    assert accept(h("30 02 00 00")) == [Publish("", b"")]


# ============================================================================ packet identifiers


@pytest.mark.parametrize(
    ("data", "server_side"),
    [
        (h("32 07 00 03 61 2F 62 00 00"), True),  # PUBLISH QoS 1
        (h("34 07 00 03 61 2F 62 00 00"), True),  # PUBLISH QoS 2
        (h("40 02 00 00"), True),  # PUBACK
        (h("50 02 00 00"), True),  # PUBREC
        (h("62 02 00 00"), True),  # PUBREL
        (h("70 02 00 00"), True),  # PUBCOMP
        (h("82 06 00 00 00 01 61 00"), True),  # SUBSCRIBE
        (h("A2 05 00 00 00 01 61"), True),  # UNSUBSCRIBE
        (h("90 03 00 00 00"), False),  # SUBACK
        (h("B0 02 00 00"), False),  # UNSUBACK
    ],
)
def test_packet_identifier_0_is_a_protocol_error(data: bytes, server_side: bool) -> None:
    reject(data, PROTOCOL, server_side=server_side, match="packet identifier 0")


# ============================================================================ UTF-8


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (h("30 04 00 02 C3 28"), V311),  # PUBLISH topic: bad continuation byte
        (h("30 05 00 03 ED A0 80"), V311),  # PUBLISH topic: encoded surrogate U+D800
        (h("30 04 00 02 C0 AF"), V311),  # PUBLISH topic: overlong "/"
        (h("30 03 00 01 FF"), V5),  # PUBLISH topic, 5.0
        (h("82 06 00 01 00 01 FF 00"), V311),  # SUBSCRIBE topic filter
        (h("A2 05 00 01 00 01 FF"), V311),  # UNSUBSCRIBE topic filter
        (h("30 0B 00 01 74 07 26 00 01 61 00 01 FF 00"), V5),  # user property value
    ],
)
def test_invalid_utf8_is_malformed(data: bytes, version: ProtocolVersion) -> None:
    reject(data, MALFORMED, version=version, match="invalid UTF-8")


def test_invalid_utf8_in_connect_is_malformed() -> None:
    reject(connect_311(0x02, h("00 01 FF")), MALFORMED, version=None, match="client identifier")
    will = CLIENT_ID_A + h("00 01 FE 00 00")
    reject(connect_311(0x06, will), MALFORMED, version=None, match="will topic")


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (h("30 04 00 02 61 00"), V311),  # PUBLISH topic "a\0"
        (connect_311(0x02, h("00 01 00")), None),  # client identifier
        (connect_311(0x82, CLIENT_ID_A + h("00 01 00")), None),  # user name
        (h("82 06 00 01 00 01 00 00"), V311),  # SUBSCRIBE topic filter
        (h("A2 05 00 01 00 01 00"), V311),  # UNSUBSCRIBE topic filter
        (h("30 08 00 01 74 04 03 00 01 00"), V5),  # content type property
        (h("40 08 00 01 00 04 1F 00 01 00"), V5),  # PUBACK reason string
        (h("30 0B 00 01 74 07 26 00 01 00 00 01 61"), V5),  # user property name
    ],
)
def test_null_character_in_a_string_is_malformed(
    data: bytes, version: ProtocolVersion | None
) -> None:
    reject(data, MALFORMED, version=version, match="U+0000")


# ========================================================================= SUBSCRIBE, UNSUBSCRIBE


@pytest.mark.parametrize(("data", "version"), [(h("82 02 00 01"), V311), (h("82 03 00 01 00"), V5)])
def test_subscribe_without_topic_filters_is_a_protocol_error(
    data: bytes, version: ProtocolVersion
) -> None:
    reject(data, PROTOCOL, version=version, match="no topic filter")


@pytest.mark.parametrize(("data", "version"), [(h("A2 02 00 01"), V311), (h("A2 03 00 01 00"), V5)])
def test_unsubscribe_without_topic_filters_is_a_protocol_error(
    data: bytes, version: ProtocolVersion
) -> None:
    reject(data, PROTOCOL, version=version, match="no topic filter")


@pytest.mark.parametrize(
    ("data", "version", "match"),
    [
        # SUBSCRIBE, packet id 1: filter "" QoS 0 [MQTT-4.7.3-1]
        (h("82 05 00 01 | 00 00 | 00"), V311, "topic filter is empty"),
        (h("82 06 00 01 | 00 | 00 00 | 00"), V5, "topic filter is empty"),
        # "a/#/b": '#' must be last [MQTT-4.7.1-1]
        (h("82 0A 00 01 | 00 05 61 2F 23 2F 62 | 00"), V311, "'#' must be the last level"),
        (h("82 0B 00 01 | 00 | 00 05 61 2F 23 2F 62 | 01"), V5, "'#' must be the last level"),
        # "a+": '+' must fill its level [MQTT-4.7.1-2]
        (h("82 07 00 01 | 00 02 61 2B | 00"), V311, "'+' must be alone in its level"),
        (h("82 07 00 01 | 00 02 61 2B | 00"), V31, "'+' must be alone in its level"),
        # "$share//t": empty share name [MQTT-4.8.2-1]
        (h("82 0F 00 01 | 00 | 00 09 24 73 68 61 72 65 2F 2F 74 | 00"), V5, "empty group"),
        # a bad filter after a good one ("a", then "#a")
        (h("82 0B 00 01 | 00 01 61 | 00 | 00 02 23 61 | 00"), V311, "'#' must be alone"),
        # UNSUBSCRIBE, packet id 1
        (h("A2 04 00 01 | 00 00"), V311, "topic filter is empty"),
        (h("A2 0A 00 01 | 00 | 00 05 61 2F 23 2F 62"), V5, "'#' must be the last level"),
        (h("A2 06 00 01 | 00 02 2B 61"), V311, "'+' must be alone in its level"),
    ],
)
def test_invalid_topic_filter_is_malformed(
    data: bytes, version: ProtocolVersion, match: str
) -> None:
    # SUBACK / UNSUBACK 0x8F is for a filter that "is correctly formed but is not allowed";
    # one that breaks the syntax of 4.7 closes the connection (3.1.1 [MQTT-4.8.0-1]).
    error = reject(data, MALFORMED, version=version, match=match)
    assert str(error).startswith(("SUBSCRIBE: ", "UNSUBSCRIBE: "))


def subscribe_5(options: int) -> bytes:
    # packet id 1, no properties, topic filter "a", then the options byte
    return h("82 07 00 01 00 00 01 61") + bytes((options,))


@pytest.mark.parametrize("options", [0x40, 0x80, 0xC0])
def test_subscription_options_reserved_bits_are_malformed(options: int) -> None:
    reject(subscribe_5(options), MALFORMED, version=V5, match="reserved subscription option")


def test_subscription_options_qos_3_is_a_protocol_error_in_5() -> None:
    # 5.0 section 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3"
    reject(subscribe_5(0x03), PROTOCOL, version=V5, match="QoS 3")


def test_subscription_options_retain_handling_3_is_a_protocol_error() -> None:
    # 5.0 section 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3"
    reject(
        subscribe_5(0x30), PROTOCOL, version=V5, match="SUBSCRIBE: retain handling 3 is reserved"
    )


@pytest.mark.parametrize("options", [0x04, 0x10, 0x80])
def test_subscribe_31x_reserved_bits_are_malformed(options: int) -> None:
    # 3.1.1 [MQTT-3.8.3-4]: bits 7-2 of the requested QoS byte are reserved
    reject(h("82 06 00 01 00 01 61") + bytes((options,)), MALFORMED, match="reserved bits")


def test_subscribe_31x_qos_3_is_malformed() -> None:
    reject(h("82 06 00 01 00 01 61 03"), MALFORMED, match="QoS 3")


def test_subscribe_missing_options_byte_is_malformed() -> None:
    reject(h("82 05 00 01 00 01 61"), MALFORMED)


# ============================================================================ properties


@pytest.mark.parametrize(
    "data",
    [
        h("30 06 00 01 74 02 04 00"),  # 0x04 is not a property
        h("30 06 00 01 74 02 00 00"),  # 0x00 neither
        h("30 07 00 01 74 03 80 01 00"),  # two-byte identifier 128
    ],
)
def test_unknown_property_identifier_is_malformed(data: bytes) -> None:
    reject(data, MALFORMED, version=V5, match="unknown property identifier")


@pytest.mark.parametrize(
    ("data", "version", "match"),
    [
        # PUBLISH with a Session Expiry Interval
        (h("30 09 00 01 74 05 11 00 00 00 01"), V5, "not allowed in PUBLISH"),
        # PUBACK with a Topic Alias
        (h("40 07 00 01 00 03 23 00 01"), V5, "not allowed in PUBACK"),
        # CONNECT with a Topic Alias
        (connect_5(0x02, h("23 00 01"), CLIENT_ID_A), None, "not allowed in CONNECT"),
        # CONNECT with a Will Delay Interval outside the Will Properties
        (connect_5(0x02, h("18 00 00 00 01"), CLIENT_ID_A), None, "not allowed in CONNECT"),
        # Will Properties with a Session Expiry Interval
        (
            connect_5(0x06, b"", CLIENT_ID_A + h("05 11 00 00 00 01 00 01 74 00 00")),
            None,
            "not allowed in Will Properties",
        ),
        # SUBSCRIBE with a Reason String
        (h("82 0A 00 01 03 1F 00 00 00 01 61 00"), V5, "not allowed in SUBSCRIBE"),
    ],
)
def test_property_not_allowed_in_packet_is_malformed(
    data: bytes, version: ProtocolVersion | None, match: str
) -> None:
    reject(data, MALFORMED, version=version, match=match)


@pytest.mark.parametrize(
    ("data", "version"),
    [
        # PUBLISH "t", QoS 0, Response Topic ""
        (h("30 07 00 01 74 | 03 | 08 00 00"), V5),
        # Response Topic "a/#" [MQTT-3.3.2-14]
        (h("30 0A 00 01 74 | 06 | 08 00 03 61 2F 23"), V5),
        # Response Topic "+"
        (h("30 08 00 01 74 | 04 | 08 00 01 2B"), V5),
        # CONNECT with a will (flags 0x06) whose Will Properties hold Response Topic ""
        (connect_5(0x06, b"", CLIENT_ID_A + h("03 | 08 00 00 | 00 01 74 | 00 00")), None),
        # the same with Response Topic "r/+"
        (connect_5(0x06, b"", CLIENT_ID_A + h("06 | 08 00 03 72 2F 2B | 00 01 74 | 00 00")), None),
    ],
)
def test_response_topic_that_is_not_a_topic_name_is_a_protocol_error(
    data: bytes, version: ProtocolVersion | None
) -> None:
    # 3.3.2.3.5: "used as the Topic Name for a response message"; it parses, so a Protocol
    # Error (1.2), not a Malformed Packet
    reject(data, PROTOCOL, version=version, match="Response Topic")


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (h("20 03 00 00 00"), V5),  # CONNACK, a good one
        (h("20 02 00 00"), V5),  # CONNACK without its property length: still the type
        (h("20 02 00 00"), V311),
        (h("28 02 00 00"), V311),  # CONNACK with reserved flags: the type comes first
        (h("90 03 00 01 00"), V311),  # SUBACK
        (h("90 02 00 01"), V5),
        (h("B0 02 00 01"), V311),  # UNSUBACK
        (h("B0 04 00 01 00 00"), V5),
        (h("D0 00"), V311),  # PINGRESP
        (h("D0 00"), V5),
        (h("D0 00"), V31),
    ],
)
def test_server_to_client_packet_from_a_client_is_a_protocol_error(
    data: bytes, version: ProtocolVersion
) -> None:
    # Table 2-1: these flow from Server to Client only. They parse: a Protocol Error
    # (5.0 section 1.2), answered with DISCONNECT 0x82, not 0x81.
    reject(data, PROTOCOL, version=version, match="server-to-client packet")


def test_server_to_client_packet_is_refused_as_soon_as_its_first_byte_arrives() -> None:
    reject(b"\x20", PROTOCOL, version=V5, match="CONNACK is a server-to-client packet")


@pytest.mark.parametrize(
    "data",
    [
        h("30 07 00 01 74 03 02 00 00"),  # Message Expiry Interval: 2 of its 4 bytes
        h("30 05 00 01 74 01 01"),  # Payload Format Indicator without its byte
        h("30 08 00 01 74 04 03 00 05 61"),  # Content Type of 5 bytes, 1 present
        h("30 05 00 01 74 05 01"),  # property length past the end of the packet
        h("30 04 00 01 74 80"),  # property length cut short
        h("30 0A 00 01 74 06 0B FF FF FF FF 01"),  # 5-byte subscription identifier
        h("30 07 00 01 74 03 0B 80 00"),  # subscription identifier not minimal
    ],
)
def test_property_value_of_wrong_size_is_malformed(data: bytes) -> None:
    reject(data, MALFORMED, version=V5)


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (h("30 0A 00 01 74 06 23 00 01 23 00 02"), V5),  # Topic Alias twice
        (h("40 0A 00 01 00 06 1F 00 00 1F 00 00"), V5),  # Reason String twice
        (h("82 0B 00 01 04 0B 01 0B 02 00 01 61 00"), V5),  # SUBSCRIBE: subscription id twice
        (connect_5(0x02, h("11 00 00 00 01 11 00 00 00 02"), CLIENT_ID_A), None),
    ],
)
def test_property_that_may_appear_once_appearing_twice_is_a_protocol_error(
    data: bytes, version: ProtocolVersion | None
) -> None:
    reject(data, PROTOCOL, version=version, match="more than once")


def test_repeatable_properties_may_repeat() -> None:
    # PUBLISH: subscription identifiers 1 and 2, user properties a=b twice
    # properties: 0B 01 (2) + 0B 02 (2) + 2 x 26 "a" "b" (7) = 18 = 0x12; 3 + 1 + 18 + 1 = 23
    data = h("30 17 00 01 74 12 0B 01 0B 02 26 00 01 61 00 01 62 26 00 01 61 00 01 62 78")
    assert accept(data, version=V5) == [
        Publish(
            "t",
            b"x",
            properties=Properties(
                subscription_identifiers=(1, 2), user_properties=(("a", "b"), ("a", "b"))
            ),
        )
    ]


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (h("82 09 00 01 02 0B 00 00 01 61 00"), V5),  # SUBSCRIBE
        (h("30 06 00 01 74 02 0B 00"), V5),  # PUBLISH
    ],
)
def test_subscription_identifier_0_is_a_protocol_error(
    data: bytes, version: ProtocolVersion
) -> None:
    reject(data, PROTOCOL, version=version, match="must not be 0")


@pytest.mark.parametrize(
    ("data", "version", "server_side"),
    [
        (connect_5(0x02, h("21 00 00"), CLIENT_ID_A), None, True),  # CONNECT Receive Maximum
        (h("20 06 00 00 03 21 00 00"), V5, False),  # CONNACK Receive Maximum
        (connect_5(0x02, h("27 00 00 00 00"), CLIENT_ID_A), None, True),  # Maximum Packet Size
        (h("20 08 00 00 05 27 00 00 00 00"), V5, False),
    ],
)
def test_receive_maximum_and_maximum_packet_size_0_are_protocol_errors(
    data: bytes, version: ProtocolVersion | None, server_side: bool
) -> None:
    reject(data, PROTOCOL, version=version, server_side=server_side, match="must not be 0")


@pytest.mark.parametrize(
    ("data", "version", "server_side"),
    [
        (h("30 06 00 01 74 02 01 02"), V5, True),  # Payload Format Indicator
        (connect_5(0x02, h("17 02"), CLIENT_ID_A), None, True),  # Request Problem Information
        (connect_5(0x02, h("19 02"), CLIENT_ID_A), None, True),  # Request Response Information
        (h("20 05 00 00 02 24 02"), V5, False),  # Maximum QoS
        (h("20 05 00 00 02 25 02"), V5, False),  # Retain Available
        (h("20 05 00 00 02 28 02"), V5, False),  # Wildcard Subscription Available
        (h("20 05 00 00 02 29 FF"), V5, False),  # Subscription Identifier Available
        (h("20 05 00 00 02 2A 02"), V5, False),  # Shared Subscription Available
        # Will Properties: Payload Format Indicator 2
        (
            connect_5(0x06, b"", CLIENT_ID_A + h("02 01 02 00 01 74 00 00")),
            None,
            True,
        ),
    ],
)
def test_flag_byte_properties_other_than_0_or_1_are_protocol_errors(
    data: bytes, version: ProtocolVersion | None, server_side: bool
) -> None:
    reject(data, PROTOCOL, version=version, server_side=server_side, match="must be 0 or 1")


# ============================================================================ lengths


@pytest.mark.parametrize(
    ("data", "version", "server_side"),
    [
        (h("40 03 00 01 00"), V311, True),  # PUBACK 3.1.1 has no reason code
        (h("62 03 00 01 00"), V31, True),  # PUBREL 3.1
        (h("40 05 00 01 00 00 FF"), V5, True),  # PUBACK after its properties
        (h("B0 03 00 01 00"), V311, False),  # UNSUBACK 3.1.1 has no payload
        (h("20 03 00 00 00"), V311, False),  # CONNACK 3.1.1
        (h("20 04 00 00 00 FF"), V5, False),  # CONNACK after its properties
        (h("E0 01 00"), V311, True),  # DISCONNECT 3.1.1 is empty
        (h("E0 03 00 00 FF"), V5, True),  # DISCONNECT after its properties
        (h("F0 03 18 00 FF"), V5, True),  # AUTH after its properties
    ],
)
def test_trailing_bytes_are_malformed(
    data: bytes, version: ProtocolVersion, server_side: bool
) -> None:
    reject(data, MALFORMED, version=version, server_side=server_side)


@pytest.mark.parametrize(
    ("data", "version", "server_side"),
    [
        (h("40 01 00"), V311, True),  # PUBACK with half a packet identifier
        (h("40 00"), V5, True),
        (h("20 01 00"), V311, False),  # CONNACK without return code
        (h("20 02 00 00"), V5, False),  # CONNACK 5.0 without property length
        (h("90 02 00 01"), V5, False),  # SUBACK 5.0 without property length
        (h("B0 02 00 01"), V5, False),  # UNSUBACK 5.0 without property length
        (h("82 01 00"), V311, True),  # SUBSCRIBE with half a packet identifier
    ],
)
def test_body_shorter_than_its_fields_is_malformed(
    data: bytes, version: ProtocolVersion, server_side: bool
) -> None:
    reject(data, MALFORMED, version=version, server_side=server_side)


def test_pingreq_and_pingresp_with_a_body_are_malformed() -> None:
    reject(h("C0 01 00"), MALFORMED, match="PINGREQ")
    reject(h("D0 01 00"), MALFORMED, version=V5, server_side=False, match="PINGRESP")


# ============================================================================ reason codes


@pytest.mark.parametrize(
    ("data", "version", "server_side"),
    [
        (h("40 03 00 01 05"), V5, True),  # 0x05 is no reason code at all
        (h("62 03 00 01 10"), V5, True),  # PUBREL: 0x10 belongs to PUBACK
        (h("20 03 00 10 00"), V5, False),  # CONNACK: 0x10 is not a connect reason code
        (h("20 02 00 06"), V311, False),  # CONNACK 3.1.1 return codes 6-255 are reserved
        (h("90 03 00 01 03"), V311, False),  # SUBACK 3.1.1 return code 3
        (h("90 04 00 01 00 11"), V5, False),  # SUBACK: 0x11 belongs to UNSUBACK
        (h("B0 04 00 01 00 01"), V5, False),  # UNSUBACK: 0x01 belongs to SUBACK
        (h("E0 01 18"), V5, True),  # DISCONNECT: 0x18 belongs to AUTH
        (h("F0 01 01"), V5, True),  # AUTH
    ],
)
def test_reason_code_not_allowed_in_packet_is_a_protocol_error(
    data: bytes, version: ProtocolVersion, server_side: bool
) -> None:
    reject(data, PROTOCOL, version=version, server_side=server_side)


def test_connack_reserved_flags_are_malformed() -> None:
    reject(h("20 02 02 00"), MALFORMED, server_side=False, match="reserved acknowledge flag")


def test_connack_session_present_with_refusal_is_a_protocol_error() -> None:
    reject(h("20 02 01 05"), PROTOCOL, server_side=False, match="session present")


def test_suback_and_unsuback_without_codes_are_protocol_errors() -> None:
    reject(h("90 02 00 01"), PROTOCOL, server_side=False, match="no reason code")
    reject(h("B0 03 00 01 00"), PROTOCOL, version=V5, server_side=False, match="no reason code")


def test_mqtt_31_connack_first_byte_is_not_used() -> None:
    # 3.1 has no session present flag: its first variable header byte is reserved, unused
    reader = PacketReader(protocol_version=V31, server_side=False)
    assert reader.feed(h("20 02 01 00")) == [Connack(False, ReasonCode.SUCCESS)]


def test_short_forms_decode() -> None:
    # AUTH with a reason code and no property length is tolerated like DISCONNECT's
    assert accept(h("F0 01 18"), version=V5) == [Auth(ReasonCode.CONTINUE_AUTHENTICATION)]
    assert accept(h("E0 01 04"), version=V5) == [
        Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)
    ]


# ============================================================================ dead reader


def test_good_packets_before_an_error_are_kept_and_nothing_after_it() -> None:
    reader = PacketReader(protocol_version=V311)
    # PINGREQ, then a SUBSCRIBE with reserved flags 0 (malformed), then a PINGREQ
    packets = reader.feed(h("C0 00 | 80 05 00 01 00 00 00 | C0 00"))
    assert packets == [Pingreq()]
    assert reader.error is not None
    assert reader.error.reason_code == MALFORMED
    with pytest.raises(RemoteProtocolError) as first:
        reader.feed(b"")
    assert first.value is reader.error
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(h("C0 00"))
    assert info.value.reason_code == MALFORMED
    assert "earlier error" in str(info.value)


def test_an_error_with_no_good_packet_before_it_raises_at_once() -> None:
    reader = PacketReader(protocol_version=V311)
    with pytest.raises(RemoteProtocolError):
        reader.feed(h("38 05 00 03 61 2F 62 | C0 00"))
    assert reader.error is not None


# ============================================================================ encoder refusals


@pytest.mark.parametrize(
    ("packet", "version", "match"),
    [
        (Publish("t", qos=3, packet_id=1), V311, "QoS 3"),
        (Publish("t", qos=1), V311, "packet identifier None"),
        (Publish("t", qos=1, packet_id=0), V311, "packet identifier 0"),
        (Publish("t", qos=2, packet_id=65536), V5, "packet identifier 65536"),
        (Publish("t", packet_id=5), V311, "QoS 0"),
        (Publish("t", dup=True), V311, "DUP"),
        (Publish("x" * 65536), V311, "65535"),
        (Publish("é" * 40000), V311, "65535"),  # 80000 bytes of UTF-8
        (Publish("a\x00"), V311, "U+0000"),
        (Publish("\ud800"), V311, "UTF-8"),  # lone surrogate
        (Publish("t", properties=Properties(message_expiry_interval=2**32)), V5, "range"),
        (Publish("t", properties=Properties(subscription_identifiers=(0,))), V5, "not be 0"),
        (Publish("t", properties=Properties(topic_alias=0)), V5, "not be 0"),
        (Publish("t", properties=Properties(payload_format_indicator=2)), V5, "0 or 1"),
        (Publish("t", properties=Properties(correlation_data=b"x" * 65536)), V5, "65535"),
        (Publish("t", properties=Properties(session_expiry_interval=1)), V5, "not allowed"),
        (Puback(0), V311, "packet identifier 0"),
        (Puback(1, ReasonCode.SESSION_TAKEN_OVER), V5, "reason code 0x8E"),
        (Pubrel(1, ReasonCode.NO_MATCHING_SUBSCRIBERS), V5, "reason code 0x10"),
        (Connect("c", V5, keep_alive=70000), V5, "keep alive"),
        (Connect("c", V311), V5, "make them agree"),
        (Connect("c", V311, password=b"p"), V311, "without a user name"),
        (Connect("c", V31, password=b"p"), V31, "without a user name"),
        (Connect("c", V311, will=Will("t", qos=3)), V311, "will QoS"),
        (Connect("c", V5, properties=Properties(receive_maximum=0)), V5, "not be 0"),
        (Connect("c", V5, properties=Properties(topic_alias=1)), V5, "not allowed"),
        (Connect("c", V5, properties=Properties(authentication_data=b"x")), V5, "method"),
        (
            Connect("c", V5, will=Will("t", properties=Properties(session_expiry_interval=1))),
            V5,
            "not allowed in Will Properties",
        ),
        (Connack(True, ReasonCode.NOT_AUTHORIZED), V311, "session present"),
        (Connack(False, ReasonCode.NO_MATCHING_SUBSCRIBERS), V5, "reason code 0x10"),
        (Subscribe(1, ()), V311, "at least one"),
        (Subscribe(1, (SubscriptionRequest("t", 3),)), V311, "QoS 3"),
        (Subscribe(1, (SubscriptionRequest("t", 0, retain_handling=3),)), V5, "retain handling"),
        (
            Subscribe(
                1,
                (SubscriptionRequest("t"),),
                Properties(subscription_identifiers=(1, 2)),
            ),
            V5,
            "only once",
        ),
        (Suback(1, ()), V311, "none"),
        (Suback(1, (ReasonCode.NO_SUBSCRIPTION_EXISTED,)), V311, "reason code 0x11"),
        (Unsubscribe(1, ()), V5, "at least one"),
        (Unsuback(1, ()), V5, "none"),
        (Disconnect(ReasonCode.CONTINUE_AUTHENTICATION), V5, "reason code 0x18"),
        (Auth(), V311, "only in MQTT 5.0"),
        (Auth(ReasonCode.SUCCESS, Properties(reason_string="x", topic_alias=1)), V5, "not allowed"),
    ],
)
def test_encode_refuses_what_the_protocol_cannot_carry(
    packet: Packet, version: ProtocolVersion, match: str
) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape(match)):
        encode(packet, version)


def test_encode_publish_refuses_like_encode() -> None:
    with pytest.raises(LocalProtocolError, match="QoS 0"):
        encode_publish("t", b"", 0, False, False, 1, Properties(), V5)


def test_encode_rejects_non_packets() -> None:
    with pytest.raises(TypeError):
        encode("PINGREQ", V311)  # type: ignore[arg-type]


# ============================================================================ fuzzing


def _readers() -> list[PacketReader]:
    readers = [PacketReader()]
    for version in VERSIONS:
        readers.append(PacketReader(protocol_version=version))
        readers.append(PacketReader(protocol_version=version, server_side=False))
    return readers


def _feed_safely(reader: PacketReader, chunks: list[bytes]) -> None:
    """Feed chunks; the only exception allowed is RemoteProtocolError (and subclasses).

    Whatever does decode must encode back to a packet that decodes to itself: the
    decoder accepts nothing the encoder cannot express (but a Topic Alias of 0, which
    the broker rejects and we never send).
    """
    try:
        for chunk in chunks:
            for packet in reader.feed(chunk):
                _assert_reencodes(packet, reader)
    except RemoteProtocolError as exc:
        assert isinstance(exc.reason_code, ReasonCode)
        assert str(exc)


def _assert_reencodes(packet: Packet, reader: PacketReader) -> None:
    if isinstance(packet, Connect):
        version = packet.protocol_version
        again = PacketReader()
    else:
        assert reader.protocol_version is not None
        version = reader.protocol_version
        again = PacketReader(protocol_version=version, server_side=reader.server_side)
    try:
        data = encode(packet, version)
    except LocalProtocolError as exc:
        assert "Topic Alias" in str(exc), exc
        return
    assert again.feed(data) == [packet]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_remote_protocol_errors(data: bytes) -> None:
    for reader in _readers():
        _feed_safely(reader, [data])


@settings(max_examples=150)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_connect(data: bytes) -> None:
    for version in VERSIONS:
        _feed_safely(PacketReader(), [encode(Connect("c", version), version), data])


@settings(max_examples=200)
@given(data=st.data(), version=st.sampled_from(VERSIONS), server_side=st.booleans())
def test_mutated_valid_packets_raise_only_remote_protocol_errors(
    data: st.DataObject, version: ProtocolVersion, server_side: bool
) -> None:
    """Valid streams with a few bytes changed reach deep into every decoder."""
    strategy = client_packets(version) if server_side else server_packets(version)
    packets = data.draw(st.lists(strategy, min_size=1, max_size=4))
    stream = bytearray(b"".join(encode(packet, version) for packet in packets))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(stream) - 1))
        stream[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(stream)))
    reader = PacketReader(protocol_version=version, server_side=server_side)
    _feed_safely(reader, [bytes(stream[:cut]), bytes(stream[cut:])])


@settings(max_examples=100)
@given(data=st.data(), version=st.sampled_from(VERSIONS))
def test_mutated_connect_raises_only_remote_protocol_errors(
    data: st.DataObject, version: ProtocolVersion
) -> None:
    stream = bytearray(encode(data.draw(connects(version)), version))
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(stream) - 1))
        stream[index] = data.draw(st.integers(0, 255))
    _feed_safely(PacketReader(), [bytes(stream)])


def test_more_than_max_properties_is_refused_as_too_large() -> None:
    """One PUBLISH of 40,000 user properties held the event loop for 200 ms: the decoder
    stops after MAX_PROPERTIES (0x95), and the encoder never writes more."""
    at_limit = Properties(user_properties=tuple(("k", "v") for _ in range(MAX_PROPERTIES)))
    (decoded,) = PacketReader(protocol_version=V5).feed(
        encode(Publish("t", b"", properties=at_limit), V5)
    )
    assert isinstance(decoded, Publish)
    assert len(decoded.properties.user_properties) == MAX_PROPERTIES

    # 40,000 of them, by hand: the encoder refuses to write such a packet (below)
    props = b"\x26\x00\x01k\x00\x01v" * 40_000
    body = b"\x00\x01t" + encode_varint(len(props)) + props
    with pytest.raises(RemoteProtocolError) as info:
        PacketReader(protocol_version=V5).feed(b"\x30" + encode_varint(len(body)) + body)
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE
    assert f"more than {MAX_PROPERTIES} properties" in str(info.value)

    over = Properties(user_properties=tuple(("k", "v") for _ in range(MAX_PROPERTIES + 1)))
    with pytest.raises(LocalProtocolError) as local:
        encode(Publish("t", b"", properties=over), V5)
    assert local.value.reason_code == ReasonCode.PACKET_TOO_LARGE
