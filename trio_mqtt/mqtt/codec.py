"""Sans-IO MQTT 3.1 / 3.1.1 / 5.0 codec.

``encode(packet, version)`` turns a packet value into bytes; ``PacketReader.feed(data)``
turns a byte stream (split anywhere) into packet values. Nothing here does I/O.

Encoding is version-agnostic for the caller: for 3.1 and 3.1.1 the fields that only
exist in 5.0 (properties, reason codes of acks, subscription options other than QoS)
are left out, a CONNACK reason code becomes the closest 3.1.1 return code and SUBACK
failure codes become 0x80. Anything the protocol cannot carry raises
``LocalProtocolError``.

Decoding validates what the specs make the receiver check, raising
``RemoteProtocolError`` with the reason code the 5.0 spec names (MALFORMED_PACKET for
bytes that do not parse, PROTOCOL_ERROR for parsed data the protocol forbids,
PACKET_TOO_LARGE above the reader's limit). A SUBSCRIBE / UNSUBSCRIBE topic filter
that breaks the filter syntax (empty, a misplaced wildcard) is malformed; a Response
Topic that is not a topic name is a protocol error. PUBLISH topic name syntax (wildcards,
empty topics) is left to the broker, which knows about topic aliases.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeAlias

import attrs

from trio_mqtt.errors import LocalProtocolError, RemoteProtocolError
from trio_mqtt.mqtt import wire
from trio_mqtt.mqtt.packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
)
from trio_mqtt.mqtt.properties import (
    EMPTY_PROPERTIES_BYTES,
    PropertyContext,
    decode_properties,
    encode_properties,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode, connack_return_code_v3
from trio_mqtt.mqtt.topics import validate_topic_filter
from trio_mqtt.mqtt.wire import U16, Buffer, malformed, protocol_error

__all__ = [
    "MAX_PACKET_SIZE",
    "PacketReader",
    "UnsupportedProtocolVersion",
    "encode",
    "encode_publish",
]

MAX_PACKET_SIZE = 1 + wire.MAX_VARINT_BYTES + wire.MAX_VARINT
"""The largest packet the protocol can express: 268435460 bytes."""

V5 = ProtocolVersion.V5
_V311 = ProtocolVersion.V311
_CONNACK_CONTEXT = PropertyContext.CONNACK
_RC = ReasonCode

# ------------------------------------------------------------------ reason codes per packet
# MQTT 5.0 tables 3-1, 3-4 .. 3-11: the only codes each packet may carry.

CONNACK_REASON_CODES = frozenset(
    {
        _RC.SUCCESS,
        _RC.UNSPECIFIED_ERROR,
        _RC.MALFORMED_PACKET,
        _RC.PROTOCOL_ERROR,
        _RC.IMPLEMENTATION_SPECIFIC_ERROR,
        _RC.UNSUPPORTED_PROTOCOL_VERSION,
        _RC.CLIENT_IDENTIFIER_NOT_VALID,
        _RC.BAD_USER_NAME_OR_PASSWORD,
        _RC.NOT_AUTHORIZED,
        _RC.SERVER_UNAVAILABLE,
        _RC.SERVER_BUSY,
        _RC.BANNED,
        _RC.BAD_AUTHENTICATION_METHOD,
        _RC.TOPIC_NAME_INVALID,
        _RC.PACKET_TOO_LARGE,
        _RC.QUOTA_EXCEEDED,
        _RC.PAYLOAD_FORMAT_INVALID,
        _RC.RETAIN_NOT_SUPPORTED,
        _RC.QOS_NOT_SUPPORTED,
        _RC.USE_ANOTHER_SERVER,
        _RC.SERVER_MOVED,
        _RC.CONNECTION_RATE_EXCEEDED,
    }
)
PUBACK_REASON_CODES = frozenset(
    {
        _RC.SUCCESS,
        _RC.NO_MATCHING_SUBSCRIBERS,
        _RC.UNSPECIFIED_ERROR,
        _RC.IMPLEMENTATION_SPECIFIC_ERROR,
        _RC.NOT_AUTHORIZED,
        _RC.TOPIC_NAME_INVALID,
        _RC.PACKET_IDENTIFIER_IN_USE,
        _RC.QUOTA_EXCEEDED,
        _RC.PAYLOAD_FORMAT_INVALID,
    }
)
PUBREC_REASON_CODES = PUBACK_REASON_CODES
PUBREL_REASON_CODES = frozenset({_RC.SUCCESS, _RC.PACKET_IDENTIFIER_NOT_FOUND})
PUBCOMP_REASON_CODES = PUBREL_REASON_CODES
SUBACK_REASON_CODES = frozenset(
    {
        _RC.SUCCESS,
        _RC.GRANTED_QOS_1,
        _RC.GRANTED_QOS_2,
        _RC.UNSPECIFIED_ERROR,
        _RC.IMPLEMENTATION_SPECIFIC_ERROR,
        _RC.NOT_AUTHORIZED,
        _RC.TOPIC_FILTER_INVALID,
        _RC.PACKET_IDENTIFIER_IN_USE,
        _RC.QUOTA_EXCEEDED,
        _RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        _RC.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        _RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }
)
SUBACK_RETURN_CODES_V3 = frozenset(
    {_RC.SUCCESS, _RC.GRANTED_QOS_1, _RC.GRANTED_QOS_2, _RC.UNSPECIFIED_ERROR}
)
UNSUBACK_REASON_CODES = frozenset(
    {
        _RC.SUCCESS,
        _RC.NO_SUBSCRIPTION_EXISTED,
        _RC.UNSPECIFIED_ERROR,
        _RC.IMPLEMENTATION_SPECIFIC_ERROR,
        _RC.NOT_AUTHORIZED,
        _RC.TOPIC_FILTER_INVALID,
        _RC.PACKET_IDENTIFIER_IN_USE,
    }
)
DISCONNECT_REASON_CODES = frozenset(
    {
        _RC.SUCCESS,
        _RC.DISCONNECT_WITH_WILL_MESSAGE,
        _RC.UNSPECIFIED_ERROR,
        _RC.MALFORMED_PACKET,
        _RC.PROTOCOL_ERROR,
        _RC.IMPLEMENTATION_SPECIFIC_ERROR,
        _RC.NOT_AUTHORIZED,
        _RC.SERVER_BUSY,
        _RC.SERVER_SHUTTING_DOWN,
        _RC.KEEP_ALIVE_TIMEOUT,
        _RC.SESSION_TAKEN_OVER,
        _RC.TOPIC_FILTER_INVALID,
        _RC.TOPIC_NAME_INVALID,
        _RC.RECEIVE_MAXIMUM_EXCEEDED,
        _RC.TOPIC_ALIAS_INVALID,
        _RC.PACKET_TOO_LARGE,
        _RC.MESSAGE_RATE_TOO_HIGH,
        _RC.QUOTA_EXCEEDED,
        _RC.ADMINISTRATIVE_ACTION,
        _RC.PAYLOAD_FORMAT_INVALID,
        _RC.RETAIN_NOT_SUPPORTED,
        _RC.QOS_NOT_SUPPORTED,
        _RC.USE_ANOTHER_SERVER,
        _RC.SERVER_MOVED,
        _RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        _RC.CONNECTION_RATE_EXCEEDED,
        _RC.MAXIMUM_CONNECT_TIME,
        _RC.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        _RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }
)
AUTH_REASON_CODES = frozenset({_RC.SUCCESS, _RC.CONTINUE_AUTHENTICATION, _RC.RE_AUTHENTICATE})

# 3.1.1 CONNACK return code -> the 5.0 reason code that connack_return_code_v3 maps back to it
_V3_RETURN_CODES: dict[int, ReasonCode] = {
    0: _RC.SUCCESS,
    1: _RC.UNSUPPORTED_PROTOCOL_VERSION,
    2: _RC.CLIENT_IDENTIFIER_NOT_VALID,
    3: _RC.SERVER_UNAVAILABLE,
    4: _RC.BAD_USER_NAME_OR_PASSWORD,
    5: _RC.NOT_AUTHORIZED,
}

_PROTOCOLS: dict[tuple[bytes, int], ProtocolVersion] = {
    (b"MQIsdp", 3): ProtocolVersion.V31,
    (b"MQTT", 4): ProtocolVersion.V311,
    (b"MQTT", 5): ProtocolVersion.V5,
}


class UnsupportedProtocolVersion(RemoteProtocolError):
    """A CONNECT whose protocol name / level is not MQTT 3.1, 3.1.1 or 5.0.

    The broker may answer with a CONNACK (5.0 reason code 0x84, 3.1.1 return code 1)
    before closing [MQTT-3.1.2-2]; ``protocol_level`` and ``protocol_name`` say what the
    client sent.
    """

    def __init__(self, message: str, *, protocol_level: int, protocol_name: str) -> None:
        super().__init__(message, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)
        self.protocol_level = protocol_level
        self.protocol_name = protocol_name


# ============================================================================ encoding


_C_PUBACK = PropertyContext.PUBACK
_C_PUBREC = PropertyContext.PUBREC
_C_PUBREL = PropertyContext.PUBREL
_C_PUBCOMP = PropertyContext.PUBCOMP


def _local(message: str, code: ReasonCode = _RC.PROTOCOL_ERROR) -> LocalProtocolError:
    return LocalProtocolError(message, code)


def _frame(first_byte: int, body: bytes | bytearray, packet: str) -> bytes:
    """Fixed header (type/flags byte + Remaining Length) followed by ``body``."""
    length = len(body)
    if length > wire.MAX_VARINT:
        raise _local(
            f"{packet}: remaining length {length} exceeds the maximum of {wire.MAX_VARINT}",
            _RC.PACKET_TOO_LARGE,
        )
    return wire.encode_fixed_header(first_byte, length) + body


def _packet_id(packet_id: int | None, packet: str) -> bytes:
    if packet_id is None or not 0 < packet_id <= wire.MAX_U16:
        raise _local(f"{packet}: packet identifier {packet_id!r} is not in 1..65535")
    return U16.pack(packet_id)


def _reason_code(code: int, allowed: frozenset[ReasonCode], packet: str) -> int:
    if code not in allowed:
        shown = f"0x{code:02X}" if isinstance(code, int) else repr(code)
        raise _local(f"{packet}: reason code {shown} is not one a {packet} may carry")
    return int(code)


def _qos(qos: int, packet: str, field: str = "QoS") -> int:
    if qos not in (0, 1, 2):
        raise _local(f"{packet}: {field} {qos!r} is not 0, 1 or 2", _RC.MALFORMED_PACKET)
    return qos


# Encoded topic names (length prefix and UTF-8) of recent PUBLISH packets: a broker sends
# the same topics over and over. A plain cache, bounded by emptying it when full; it only
# ever holds names that encoded without error.
_TOPIC_BYTES: dict[str, bytes] = {}
_TOPIC_BYTES_SIZE = 4096


def encode_publish(  # noqa: PLR0917 (positional API shared with the broker)
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    properties: Properties,
    version: ProtocolVersion,
) -> bytes:
    """Encode a PUBLISH without building a ``Publish`` value (the broker's fan-out path).

    Gives exactly the bytes of ``encode(Publish(...), version)``.
    """
    if qos == 0:
        if packet_id is not None:
            raise _local("PUBLISH: a QoS 0 message carries no packet identifier [MQTT-2.2.1-2]")
        if dup:
            raise _local("PUBLISH: the DUP flag must be 0 for QoS 0 [MQTT-3.3.1-2]")
        first = 0x31 if retain else 0x30
        packet_id_bytes = b""
    elif qos in (1, 2):
        first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
        packet_id_bytes = _packet_id(packet_id, "PUBLISH")
    else:
        raise _local(f"PUBLISH: QoS {qos!r} is not 0, 1 or 2", _RC.MALFORMED_PACKET)
    topic_bytes = _TOPIC_BYTES.get(topic) or _topic_bytes(topic)
    if version == V5:
        if properties is NO_PROPERTIES or not properties:
            props = EMPTY_PROPERTIES_BYTES
        else:
            props = encode_properties(properties, PropertyContext.PUBLISH, "PUBLISH")
    else:
        props = b""
    length = len(topic_bytes) + len(packet_id_bytes) + len(props) + len(payload)
    if length > wire.MAX_VARINT:
        raise _local(
            f"PUBLISH: remaining length {length} exceeds the maximum of {wire.MAX_VARINT}",
            _RC.PACKET_TOO_LARGE,
        )
    fixed_header = wire.encode_fixed_header(first, length)
    return b"".join((fixed_header, topic_bytes, packet_id_bytes, props, payload))


def _topic_bytes(topic: str) -> bytes:
    """A topic name as a PUBLISH carries it, remembered in ``_TOPIC_BYTES``."""
    if topic.isascii() and "\x00" not in topic and len(topic) <= wire.MAX_U16:
        topic_bytes = U16.pack(len(topic)) + topic.encode("ascii")
    else:
        topic_bytes = wire.encode_utf8(topic, "PUBLISH", "topic name")
    if len(_TOPIC_BYTES) >= _TOPIC_BYTES_SIZE:
        _TOPIC_BYTES.clear()
    _TOPIC_BYTES[topic] = topic_bytes
    return topic_bytes


def append_plain_publish(  # noqa: PLR0917 (positional: the broker's hot path)
    out: bytearray,
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    packet_id: int | None,
    version: ProtocolVersion,
    max_size: int,
) -> bool:
    """Append a PUBLISH without properties (no DUP) to ``out``; False, and nothing
    appended, if it would be larger than ``max_size`` bytes.

    The bytes are exactly ``encode_publish(topic, payload, qos, retain, False,
    packet_id, NO_PROPERTIES, version)``, written in place: a single recipient's
    delivery then costs no intermediate ``bytes`` and one copy of the payload.
    """
    topic_bytes = _TOPIC_BYTES.get(topic) or _topic_bytes(topic)
    length = len(topic_bytes) + len(payload) + (2 if qos else 0) + (1 if version == V5 else 0)
    if length > wire.MAX_VARINT or (length + (2 if length < 0x80 else 5)) > max_size:
        # (too big for this client; the exact size decides below, this is the bound)
        data = encode_publish(topic, payload, qos, retain, False, packet_id, NO_PROPERTIES, version)
        if len(data) > max_size:
            return False
        out += data
        return True
    if qos == 0:
        if packet_id is not None:
            raise _local("PUBLISH: a QoS 0 message carries no packet identifier [MQTT-2.2.1-2]")
        first = 0x31 if retain else 0x30
    else:
        first = 0x30 | (qos << 1) | (0x01 if retain else 0)
    if length < 0x80:  # (encode_fixed_header's one-byte case, without the call)
        out.append(first)
        out.append(length)
    else:
        out += wire.encode_fixed_header(first, length)
    out += topic_bytes
    if qos:
        out += _packet_id(packet_id, "PUBLISH")
    if version == V5:
        out += EMPTY_PROPERTIES_BYTES
    out += payload
    return True


def _encode_connect(packet: Connect, version: ProtocolVersion) -> bytes:
    name = "CONNECT"
    if packet.protocol_version != version:
        raise _local(
            f"CONNECT: the packet is for protocol version {packet.protocol_version.name} "
            f"but encoding was asked for {version.name}; make them agree"
        )
    v5 = version == V5
    flags = 0x02 if packet.clean_start else 0
    will = packet.will
    if will is not None:
        flags |= 0x04 | (_qos(will.qos, name, "will QoS") << 3) | (0x20 if will.retain else 0)
    if packet.username is not None:
        flags |= 0x80
    if packet.password is not None:
        if packet.username is None and not v5:
            raise _local(
                f"CONNECT: MQTT {version.name} cannot send a password without a user name "
                "[MQTT-3.1.2-22]"
            )
        flags |= 0x40
    body = bytearray(wire.encode_utf8(version.protocol_name, name, "protocol name"))
    body.append(int(version))
    body.append(flags)
    body += wire.encode_u16(packet.keep_alive, name, "keep alive")
    if v5:
        _check_authentication_data(packet.properties, name, local=True)
        body += encode_properties(packet.properties, PropertyContext.CONNECT, name)
    body += wire.encode_utf8(packet.client_id, name, "client identifier")
    if will is not None:
        if v5:
            body += encode_properties(will.properties, PropertyContext.WILL, name)
        body += wire.encode_utf8(will.topic, name, "will topic")
        body += wire.encode_binary(will.payload, name, "will payload")
    if packet.username is not None:
        body += wire.encode_utf8(packet.username, name, "user name")
    if packet.password is not None:
        body += wire.encode_binary(packet.password, name, "password")
    return _frame(0x10, body, name)


@functools.lru_cache(maxsize=64)
def _connack_properties(properties: Properties) -> bytes:
    """A CONNACK's properties, encoded. The broker's are the same for most connections
    to a listener (its limits; an assigned client identifier or a shortened session
    expiry makes a set differ), so the last 64 sets are kept: a set of six is 51k
    instructions to encode, about 6k to find (hashed and compared by value)."""
    return encode_properties(properties, _CONNACK_CONTEXT, "CONNACK")


def _encode_connack(packet: Connack, version: ProtocolVersion) -> bytes:
    code = _reason_code(packet.reason_code, CONNACK_REASON_CODES, "CONNACK")
    if packet.session_present and code:
        raise _local(
            "CONNACK: session present must be 0 when the connection is refused "
            "[MQTT-3.2.2-6] [MQTT-3.2.2-4]"
        )
    if version == V5:
        props = _connack_properties(packet.properties)
        return _frame(0x20, bytes((int(packet.session_present), code)) + props, "CONNACK")
    # 3.1 has no session present flag; its first byte is reserved (0)
    session_present = packet.session_present and version == _V311
    return_code = connack_return_code_v3(ReasonCode(code)) if code else 0  # 0: accepted
    return bytes((0x20, 2, int(session_present), return_code))


def _encode_pub_ack(
    first_byte: int,
    packet: Puback | Pubrec | Pubrel | Pubcomp,
    version: ProtocolVersion,
    allowed: frozenset[ReasonCode],
    context: PropertyContext,
) -> bytes:
    # (checks written out where they pass: a QoS 1 round trip writes one of these for
    # every PUBLISH, and Success without properties needs no call to check it)
    pid = packet.packet_id
    if pid is None or not 0 < pid <= wire.MAX_U16:
        packet_id = _packet_id(pid, context._name_)  # raises LocalProtocolError
    else:
        packet_id = U16.pack(pid)
    if version != V5:
        return bytes((first_byte, 2)) + packet_id
    code = packet.reason_code
    properties = packet.properties
    # short forms [MQTT-3.4.2-1]: no reason code when 0 (Success, which every
    # acknowledgement may carry), no property length when there are no properties
    no_properties = properties is NO_PROPERTIES or not properties
    if code == 0 and no_properties:
        return bytes((first_byte, 2)) + packet_id
    name = context._name_  # (the member's name: .name is a Python-level property)
    code = _reason_code(code, allowed, name)
    if no_properties:
        return bytes((first_byte, 3)) + packet_id + bytes((code,))
    props = encode_properties(properties, context, name)
    return _frame(first_byte, packet_id + bytes((code,)) + props, name)


def _encode_subscribe(packet: Subscribe, version: ProtocolVersion) -> bytes:
    name = "SUBSCRIBE"
    if not packet.subscriptions:
        raise _local("SUBSCRIBE: needs at least one topic filter [MQTT-3.8.3-2]")
    v5 = version == V5
    body = bytearray(_packet_id(packet.packet_id, name))
    if v5:
        body += encode_properties(packet.properties, PropertyContext.SUBSCRIBE, name)
    for sub in packet.subscriptions:
        body += wire.encode_utf8(sub.topic_filter, name, "topic filter")
        options = _qos(sub.qos, name)
        if v5:
            if sub.retain_handling not in (0, 1, 2):
                raise _local(f"SUBSCRIBE: retain handling {sub.retain_handling!r} is not 0, 1 or 2")
            options |= (
                (0x04 if sub.no_local else 0)
                | (0x08 if sub.retain_as_published else 0)
                | (sub.retain_handling << 4)
            )
        body.append(options)
    return _frame(0x82, body, name)


def _encode_suback(packet: Suback, version: ProtocolVersion) -> bytes:
    name = "SUBACK"
    if not packet.reason_codes:
        raise _local("SUBACK: needs one reason code per topic filter, got none")
    codes = [_reason_code(code, SUBACK_REASON_CODES, name) for code in packet.reason_codes]
    body = bytearray(_packet_id(packet.packet_id, name))
    if version == V5:
        body += encode_properties(packet.properties, PropertyContext.SUBACK, name)
        body += bytes(codes)
    else:
        body += bytes(code if code < 0x80 else 0x80 for code in codes)
    return _frame(0x90, body, name)


def _encode_unsubscribe(packet: Unsubscribe, version: ProtocolVersion) -> bytes:
    name = "UNSUBSCRIBE"
    if not packet.topic_filters:
        raise _local("UNSUBSCRIBE: needs at least one topic filter [MQTT-3.10.3-2]")
    body = bytearray(_packet_id(packet.packet_id, name))
    if version == V5:
        body += encode_properties(packet.properties, PropertyContext.UNSUBSCRIBE, name)
    for topic_filter in packet.topic_filters:
        body += wire.encode_utf8(topic_filter, name, "topic filter")
    return _frame(0xA2, body, name)


def _encode_unsuback(packet: Unsuback, version: ProtocolVersion) -> bytes:
    name = "UNSUBACK"
    packet_id = _packet_id(packet.packet_id, name)
    if version != V5:
        return b"\xb0\x02" + packet_id
    if not packet.reason_codes:
        raise _local("UNSUBACK: MQTT 5.0 needs one reason code per topic filter, got none")
    codes = bytes(_reason_code(code, UNSUBACK_REASON_CODES, name) for code in packet.reason_codes)
    props = encode_properties(packet.properties, PropertyContext.UNSUBACK, name)
    return _frame(0xB0, packet_id + props + codes, name)


def _encode_disconnect(packet: Disconnect, version: ProtocolVersion) -> bytes:
    if version != V5:
        return b"\xe0\x00"
    code = _reason_code(packet.reason_code, DISCONNECT_REASON_CODES, "DISCONNECT")
    properties = packet.properties
    if properties is NO_PROPERTIES or not properties:
        return b"\xe0\x00" if code == 0 else bytes((0xE0, 1, code))
    props = encode_properties(properties, PropertyContext.DISCONNECT, "DISCONNECT")
    return _frame(0xE0, bytes((code,)) + props, "DISCONNECT")


def _encode_auth(packet: Auth, version: ProtocolVersion) -> bytes:
    if version != V5:
        raise _local(f"AUTH: the AUTH packet exists only in MQTT 5.0, not {version.name}")
    code = _reason_code(packet.reason_code, AUTH_REASON_CODES, "AUTH")
    properties = packet.properties
    if code == 0 and (properties is NO_PROPERTIES or not properties):
        return b"\xf0\x00"
    props = encode_properties(properties, PropertyContext.AUTH, "AUTH")
    return _frame(0xF0, bytes((code,)) + props, "AUTH")


def encode(packet: Packet, version: ProtocolVersion) -> bytes:
    """The bytes of ``packet`` for a connection speaking ``version``.

    Raises ``LocalProtocolError`` when the packet holds a value the protocol cannot
    carry (QoS 3, packet identifier 0 or missing, a string over 65535 bytes, ...).
    """
    match packet:
        case Publish():
            return encode_publish(
                packet.topic,
                packet.payload,
                packet.qos,
                packet.retain,
                packet.dup,
                packet.packet_id,
                packet.properties,
                version,
            )
        case Puback():
            return _encode_pub_ack(0x40, packet, version, PUBACK_REASON_CODES, _C_PUBACK)
        case Pubrec():
            return _encode_pub_ack(0x50, packet, version, PUBREC_REASON_CODES, _C_PUBREC)
        case Pubrel():
            return _encode_pub_ack(0x62, packet, version, PUBREL_REASON_CODES, _C_PUBREL)
        case Pubcomp():
            return _encode_pub_ack(0x70, packet, version, PUBCOMP_REASON_CODES, _C_PUBCOMP)
        case Pingreq():
            return b"\xc0\x00"
        case Pingresp():
            return b"\xd0\x00"
        case Connect():
            return _encode_connect(packet, version)
        case Connack():
            return _encode_connack(packet, version)
        case Subscribe():
            return _encode_subscribe(packet, version)
        case Suback():
            return _encode_suback(packet, version)
        case Unsubscribe():
            return _encode_unsubscribe(packet, version)
        case Unsuback():
            return _encode_unsuback(packet, version)
        case Disconnect():
            return _encode_disconnect(packet, version)
        case Auth():
            return _encode_auth(packet, version)
    raise TypeError(f"encode() needs an MQTT packet, got {type(packet).__name__}")


def _check_authentication_data(properties: Properties, packet: str, *, local: bool) -> None:
    """Authentication Data without Authentication Method is a Protocol Error (3.1.2.11.10)."""
    if properties.authentication_data is not None and properties.authentication_method is None:
        message = f"{packet}: authentication data without an authentication method"
        if local:
            raise _local(message)
        raise protocol_error(message)


# ============================================================================ decoding

_Decoder: TypeAlias = Callable[[Buffer, int, int, ProtocolVersion], Packet]

_PACKET_NAMES = {ptype.value: ptype.name for ptype in PacketType}

# the fixed header flags every packet type but PUBLISH must carry (Table 2-2)
_REQUIRED_FLAGS: dict[int, int] = {
    ptype.value: 0b0010
    if ptype in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE)
    else 0
    for ptype in PacketType
    if ptype is not PacketType.PUBLISH
}
# MQTT 3.1 also sets the DUP bit on retried PUBREL / SUBSCRIBE / UNSUBSCRIBE
_V31_DUP_TOLERANT = frozenset(
    {PacketType.PUBREL.value, PacketType.SUBSCRIBE.value, PacketType.UNSUBSCRIBE.value}
)
# the packets only a server sends (Table 2-1): from a client, the type alone is the error
_SERVER_TO_CLIENT = frozenset(
    {
        PacketType.CONNACK.value,
        PacketType.SUBACK.value,
        PacketType.UNSUBACK.value,
        PacketType.PINGRESP.value,
    }
)

# The first bytes of the four acknowledgements with their required flags: sent both ways
# in every version, so once the version is known _check_first_byte passes them and the
# reader does not call it for them (a QoS 1 round trip reads a PUBACK for every PUBLISH)
_ACK_FIRST_BYTES = frozenset(
    (ptype.value << 4) | _REQUIRED_FLAGS[ptype.value]
    for ptype in (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP)
)


def _expect_end(pos: int, end: int, packet: str, after: str) -> None:
    if pos != end:
        raise malformed(f"{packet}: {end - pos} unexpected byte(s) after the {after}")


def _read_packet_id(buf: Buffer, pos: int, end: int, packet: str) -> tuple[int, int]:
    if pos + 2 > end:
        raise malformed(f"{packet}: the packet ends before its packet identifier")
    packet_id: int = U16.unpack_from(buf, pos)[0]
    if packet_id == 0:
        raise protocol_error(f"{packet}: packet identifier 0 is not allowed [MQTT-2.2.1-3]")
    return packet_id, pos + 2


def _check_topic_filter(topic_filter: str, packet: str) -> None:
    """A topic filter that breaks the syntax of 4.7 (empty, ``a/#/b``, ``a+``, ...).

    Malformed: SUBACK / UNSUBACK 0x8F is for a filter that "is correctly formed but is
    not allowed", and 3.1.1 closes the connection [MQTT-4.7.3-1] [MQTT-4.8.0-1].
    """
    try:
        validate_topic_filter(topic_filter)
    except RemoteProtocolError as exc:
        raise malformed(f"{packet}: {exc}") from None


def _check_reason_code(code: int, allowed: frozenset[ReasonCode], packet: str) -> ReasonCode:
    if code not in allowed:
        raise protocol_error(f"{packet}: 0x{code:02X} is not a {packet} reason code")
    return ReasonCode(code)


def _decode_publish(
    flags: int, buf: memoryview, pos: int, end: int, version: ProtocolVersion
) -> Publish:
    """The hot path: a PUBLISH body between ``pos`` and ``end``."""
    qos = (flags >> 1) & 3
    if qos == 3:
        raise malformed("PUBLISH: QoS 3 is reserved (both QoS bits set) [MQTT-3.3.1-4]")
    dup = flags & 0x08
    if dup and not qos:
        raise malformed("PUBLISH: the DUP flag is set on a QoS 0 message [MQTT-3.3.1-2]")
    if pos + 2 > end:
        raise malformed("PUBLISH: the packet ends before the topic name length")
    start = pos + 2
    pos = start + U16.unpack_from(buf, pos)[0]
    if pos > end:
        raise malformed(f"PUBLISH: topic name runs {pos - end} byte(s) past the packet end")
    try:
        topic = buf[start:pos].tobytes().decode()
    except UnicodeDecodeError as exc:
        raise malformed(f"PUBLISH: topic name: invalid UTF-8 ({exc.reason})") from None
    if "\x00" in topic:
        raise malformed("PUBLISH: topic name: contains the null character U+0000")
    packet_id = None
    if qos:
        packet_id, pos = _read_packet_id(buf, pos, end, "PUBLISH")
    properties = NO_PROPERTIES
    if version == V5:
        if pos >= end:
            raise malformed("PUBLISH: the packet ends before the property length")
        if buf[pos]:
            properties, pos = decode_properties(buf, pos, end, PropertyContext.PUBLISH, "PUBLISH")
        else:
            pos += 1
    return Publish(
        topic, buf[pos:end].tobytes(), qos, (flags & 1) == 1, dup != 0, packet_id, properties
    )


def _decode_connect_body(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Connect:
    """CONNECT after the protocol name and level: flags, keep alive, properties, payload."""
    name = "CONNECT"
    v5 = version == V5
    flags, pos = wire.read_u8(buf, pos, end, name, "connect flags")
    if flags & 0x01 and version != ProtocolVersion.V31:
        # MQTT 3.1 left bit 0 unused without forbidding it (mosquitto accepts it too)
        raise malformed("CONNECT: the reserved connect flag (bit 0) is set [MQTT-3.1.2-3]")
    will_flag = flags & 0x04
    will_qos = (flags >> 3) & 3
    will_retain = flags & 0x20
    if not will_flag:
        if will_qos:
            raise malformed(
                f"CONNECT: will QoS is {will_qos} but the will flag is 0 [MQTT-3.1.2-11]"
            )
        if will_retain:
            raise malformed("CONNECT: will retain is set but the will flag is 0 [MQTT-3.1.2-13]")
    elif will_qos == 3:
        raise malformed("CONNECT: will QoS 3 is reserved [MQTT-3.1.2-12]")
    has_username = flags & 0x80
    has_password = flags & 0x40
    if has_password and not has_username and not v5:
        raise malformed(
            f"CONNECT: password flag set without the user name flag, which MQTT "
            f"{'3.1' if version == ProtocolVersion.V31 else '3.1.1'} forbids "
            "(3.1.1 [MQTT-3.1.2-22])"
        )
    keep_alive, pos = wire.read_u16(buf, pos, end, name, "keep alive")
    properties = NO_PROPERTIES
    if v5:
        properties, pos = decode_properties(buf, pos, end, PropertyContext.CONNECT, name)
        _check_authentication_data(properties, name, local=False)
    client_id, pos = wire.read_utf8(buf, pos, end, name, "client identifier")
    will = None
    last = "client identifier"
    if will_flag:
        will_properties = NO_PROPERTIES
        if v5:
            will_properties, pos = decode_properties(buf, pos, end, PropertyContext.WILL, name)
        will_topic, pos = wire.read_utf8(buf, pos, end, name, "will topic")
        will_payload, pos = wire.read_binary(buf, pos, end, name, "will payload")
        will = Will(will_topic, will_payload, will_qos, bool(will_retain), will_properties)
        last = "will payload"
    username = None
    if has_username:
        username, pos = wire.read_utf8(buf, pos, end, name, "user name")
        last = "user name"
    password = None
    if has_password:
        password, pos = wire.read_binary(buf, pos, end, name, "password")
        last = "password"
    _expect_end(pos, end, name, last)
    return Connect(
        client_id=client_id,
        protocol_version=version,
        clean_start=bool(flags & 0x02),
        keep_alive=keep_alive,
        username=username,
        password=password,
        will=will,
        properties=properties,
    )


def _decode_connack(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Connack:
    name = "CONNACK"
    if pos + 2 > end:
        raise malformed(f"CONNACK: remaining length {end - pos} is too short (at least 2)")
    flags = buf[pos]
    code = buf[pos + 1]
    pos += 2
    if version == ProtocolVersion.V31:
        flags = 0  # 3.1: "topic name compression response", reserved and not used
    elif flags & 0xFE:
        raise malformed(
            f"CONNACK: reserved acknowledge flag bits 7-1 are set (0x{flags:02X}) [MQTT-3.2.2-1]"
        )
    properties = NO_PROPERTIES
    if version == V5:
        reason = _check_reason_code(code, CONNACK_REASON_CODES, name)
        properties, pos = decode_properties(buf, pos, end, PropertyContext.CONNACK, name)
        _expect_end(pos, end, name, "properties")
    else:
        found = _V3_RETURN_CODES.get(code)
        if found is None:
            raise protocol_error(f"CONNACK: return code {code} is reserved (valid: 0-5)")
        reason = found
        _expect_end(pos, end, name, "return code")
    if flags and reason:
        raise protocol_error(
            "CONNACK: session present is set although the connection was refused [MQTT-3.2.2-6]"
        )
    return Connack(session_present=bool(flags), reason_code=reason, properties=properties)


def _pub_ack_decoder(
    cls: type[Puback] | type[Pubrec] | type[Pubrel] | type[Pubcomp],
    allowed: frozenset[ReasonCode],
    context: PropertyContext,
) -> _Decoder:
    name = context.name

    def decode(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Packet:
        packet_id, pos = _read_packet_id(buf, pos, end, name)
        if pos == end:
            return cls(packet_id)
        if version != V5:
            raise malformed(f"{name}: remaining length must be 2, got {end - pos + 2}")
        code = _check_reason_code(buf[pos], allowed, name)
        pos += 1
        properties = NO_PROPERTIES
        if pos < end:  # remaining length 3: no property length (3.4.2.2.1)
            properties, pos = decode_properties(buf, pos, end, context, name)
            _expect_end(pos, end, name, "properties")
        return cls(packet_id, code, properties)

    return decode


def _decode_subscribe(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Subscribe:
    name = "SUBSCRIBE"
    packet_id, pos = _read_packet_id(buf, pos, end, name)
    v5 = version == V5
    properties = NO_PROPERTIES
    if v5:
        properties, pos = decode_properties(buf, pos, end, PropertyContext.SUBSCRIBE, name)
    subscriptions: list[SubscriptionRequest] = []
    while pos < end:
        topic_filter, pos = wire.read_utf8(buf, pos, end, name, "topic filter")
        _check_topic_filter(topic_filter, name)
        options, pos = wire.read_u8(buf, pos, end, name, f"options of {topic_filter!r}")
        qos = options & 0x03
        if v5:
            if options & 0xC0:
                raise malformed(
                    f"SUBSCRIBE: reserved subscription option bits 6-7 are set for "
                    f"{topic_filter!r} [MQTT-3.8.3-5]"
                )
            if qos == 3:
                raise protocol_error(f"SUBSCRIBE: maximum QoS 3 is reserved ({topic_filter!r})")
            retain_handling = (options >> 4) & 0x03
            if retain_handling == 3:
                raise protocol_error(f"SUBSCRIBE: retain handling 3 is reserved ({topic_filter!r})")
            subscriptions.append(
                SubscriptionRequest(
                    topic_filter, qos, bool(options & 0x04), bool(options & 0x08), retain_handling
                )
            )
        else:
            if options & 0xFC:
                raise malformed(
                    f"SUBSCRIBE: reserved bits 7-2 of the requested QoS byte are set for "
                    f"{topic_filter!r} (3.1.1 [MQTT-3.8.3-4])"
                )
            if qos == 3:
                raise malformed(f"SUBSCRIBE: requested QoS 3 is reserved ({topic_filter!r})")
            subscriptions.append(SubscriptionRequest(topic_filter, qos))
    if not subscriptions:
        raise protocol_error("SUBSCRIBE: no topic filter in the payload [MQTT-3.8.3-2]")
    return Subscribe(packet_id, tuple(subscriptions), properties)


def _decode_suback(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Suback:
    name = "SUBACK"
    packet_id, pos = _read_packet_id(buf, pos, end, name)
    properties = NO_PROPERTIES
    allowed = SUBACK_RETURN_CODES_V3
    if version == V5:
        properties, pos = decode_properties(buf, pos, end, PropertyContext.SUBACK, name)
        allowed = SUBACK_REASON_CODES
    if pos == end:
        raise protocol_error("SUBACK: no reason code in the payload")
    codes = tuple(_check_reason_code(code, allowed, name) for code in bytes(buf[pos:end]))
    return Suback(packet_id, codes, properties)


def _decode_unsubscribe(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Unsubscribe:
    name = "UNSUBSCRIBE"
    packet_id, pos = _read_packet_id(buf, pos, end, name)
    properties = NO_PROPERTIES
    if version == V5:
        properties, pos = decode_properties(buf, pos, end, PropertyContext.UNSUBSCRIBE, name)
    topic_filters: list[str] = []
    while pos < end:
        topic_filter, pos = wire.read_utf8(buf, pos, end, name, "topic filter")
        _check_topic_filter(topic_filter, name)
        topic_filters.append(topic_filter)
    if not topic_filters:
        raise protocol_error("UNSUBSCRIBE: no topic filter in the payload [MQTT-3.10.3-2]")
    return Unsubscribe(packet_id, tuple(topic_filters), properties)


def _decode_unsuback(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Unsuback:
    name = "UNSUBACK"
    packet_id, pos = _read_packet_id(buf, pos, end, name)
    if version != V5:
        _expect_end(pos, end, name, "packet identifier")
        return Unsuback(packet_id)
    properties, pos = decode_properties(buf, pos, end, PropertyContext.UNSUBACK, name)
    if pos == end:
        raise protocol_error("UNSUBACK: no reason code in the payload")
    codes = tuple(
        _check_reason_code(code, UNSUBACK_REASON_CODES, name) for code in bytes(buf[pos:end])
    )
    return Unsuback(packet_id, codes, properties)


def _decode_pingreq(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Pingreq:
    if pos != end:
        raise malformed(f"PINGREQ: remaining length must be 0, got {end - pos}")
    return Pingreq()


def _decode_pingresp(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Pingresp:
    if pos != end:
        raise malformed(f"PINGRESP: remaining length must be 0, got {end - pos}")
    return Pingresp()


def _decode_disconnect(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Disconnect:
    name = "DISCONNECT"
    if pos == end:
        return Disconnect()
    if version != V5:
        raise malformed(f"DISCONNECT: remaining length must be 0, got {end - pos}")
    code = _check_reason_code(buf[pos], DISCONNECT_REASON_CODES, name)
    pos += 1
    properties = NO_PROPERTIES
    if pos < end:  # remaining length 1: no property length (3.14.2.2.1)
        properties, pos = decode_properties(buf, pos, end, PropertyContext.DISCONNECT, name)
        _expect_end(pos, end, name, "properties")
    return Disconnect(code, properties)


def _decode_auth(buf: Buffer, pos: int, end: int, version: ProtocolVersion) -> Auth:
    name = "AUTH"
    if pos == end:
        return Auth()
    code = _check_reason_code(buf[pos], AUTH_REASON_CODES, name)
    pos += 1
    properties = NO_PROPERTIES
    if pos < end:
        properties, pos = decode_properties(buf, pos, end, PropertyContext.AUTH, name)
        _expect_end(pos, end, name, "properties")
    return Auth(code, properties)


_DECODERS: dict[int, _Decoder] = {
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBACK: _pub_ack_decoder(Puback, PUBACK_REASON_CODES, PropertyContext.PUBACK),
    PacketType.PUBREC: _pub_ack_decoder(Pubrec, PUBREC_REASON_CODES, PropertyContext.PUBREC),
    PacketType.PUBREL: _pub_ack_decoder(Pubrel, PUBREL_REASON_CODES, PropertyContext.PUBREL),
    PacketType.PUBCOMP: _pub_ack_decoder(Pubcomp, PUBCOMP_REASON_CODES, PropertyContext.PUBCOMP),
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.UNSUBACK: _decode_unsuback,
    PacketType.PINGREQ: _decode_pingreq,
    PacketType.PINGRESP: _decode_pingresp,
    PacketType.DISCONNECT: _decode_disconnect,
    PacketType.AUTH: _decode_auth,
}


def _validate_max_packet_size(instance: object, attribute: object, value: int) -> None:
    if value < 2:
        raise ValueError(f"max_packet_size must be at least 2 bytes, got {value}")


# No on_setattr hooks: the reader's fields are assigned on every feed(), and attrs'
# validating __setattr__ would run for each (max_packet_size is validated at creation).
@attrs.define(kw_only=True, on_setattr=attrs.setters.NO_OP)
class PacketReader:
    """Incremental MQTT decoder: ``feed()`` bytes as they arrive, get complete packets.

    ``max_packet_size`` (fixed header + remaining length) is enforced as soon as a
    packet's Remaining Length is known, before its body is buffered. A server-side
    reader created without ``protocol_version`` requires a CONNECT first and learns the
    version from it (``protocol_version`` is set as soon as the CONNECT's protocol name
    and level are read, even if the rest of it turns out to be malformed). A server-side
    reader refuses the packets only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP)
    as a Protocol Error; decode those with ``server_side=False``. After any error the
    reader is dead: every later ``feed()`` raises again.
    """

    max_packet_size: int = attrs.field(default=MAX_PACKET_SIZE, validator=_validate_max_packet_size)
    protocol_version: ProtocolVersion | None = None
    server_side: bool = True
    _buffer: bytearray = attrs.field(factory=bytearray, init=False, repr=False)
    # total bytes the packet at the start of the buffer needs (0: not known yet)
    _need: int = attrs.field(default=0, init=False, repr=False)
    _error: RemoteProtocolError | None = attrs.field(default=None, init=False, repr=False)
    # the error came after good packets, which were returned; raise it on the next call
    _error_unreported: bool = attrs.field(default=False, init=False, repr=False)

    @property
    def error(self) -> RemoteProtocolError | None:
        """The error that stopped the reader, if any."""
        return self._error

    def __attrs_post_init__(self) -> None:
        if not self.server_side and self.protocol_version is None:
            raise ValueError("a client-side PacketReader needs protocol_version")

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a packet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add ``data``; return every packet now complete (possibly none), in order.

        Raises ``RemoteProtocolError`` (or its subclass ``UnsupportedProtocolVersion``)
        when the bytes break the protocol. Good packets that came before the bad one are
        not lost: they are returned, the reader stops (``error`` is set), and the error
        is raised by the next call.
        """
        if self._error is not None:
            if self._error_unreported:
                self._error_unreported = False
                raise self._error
            raise self._stopped_error()
        buffer = self._buffer
        buffer += data
        if len(buffer) < self._need:
            return []
        packets: list[Packet] = []
        try:
            consumed = self._parse(buffer, packets)
        except RemoteProtocolError as exc:
            self._error = exc
            self._buffer = bytearray()
            self._need = 0
            if packets:
                self._error_unreported = True
                return packets
            raise
        if consumed:
            del buffer[:consumed]
        return packets

    def _stopped_error(self) -> RemoteProtocolError:
        error = self._error
        assert error is not None
        message = f"the reader stopped at an earlier error: {error}"
        if isinstance(error, UnsupportedProtocolVersion):
            return UnsupportedProtocolVersion(
                message, protocol_level=error.protocol_level, protocol_name=error.protocol_name
            )
        return RemoteProtocolError(message, error.reason_code)

    def _parse(self, buffer: bytearray, packets: list[Packet]) -> int:
        """Decode every complete packet in ``buffer``; return the bytes consumed.

        The hot loop of the broker's input: a run of small PUBLISH packets goes through
        it once per packet, so it keeps to locals and a one-byte Remaining Length path.
        """
        size = len(buffer)
        pos = 0
        self._need = 0
        max_packet_size = self.max_packet_size
        version = self.protocol_version
        append = packets.append
        with memoryview(buffer) as view:
            while pos < size:
                first = buffer[pos]
                packet_type = first >> 4
                # PUBLISH flags: see its decoder
                if (packet_type != 3 and first not in _ACK_FIRST_BYTES) or version is None:
                    self._check_first_byte(first, version)
                # Remaining Length: a Variable Byte Integer of at most 4 bytes
                index = pos + 1
                if index >= size:
                    return pos  # fixed header incomplete
                length = buffer[index]
                index += 1
                if length >= 0x80:
                    length, index = self._long_remaining_length(buffer, pos, size, packet_type)
                    if index < 0:
                        return pos  # fixed header incomplete
                total = index - pos + length
                if total > max_packet_size:
                    raise RemoteProtocolError(
                        f"{_PACKET_NAMES.get(packet_type, 'packet')}: packet of {total} bytes "
                        f"exceeds the maximum packet size of {max_packet_size}",
                        ReasonCode.PACKET_TOO_LARGE,
                    )
                end = index + length
                if end > size:
                    self._need = total
                    return pos
                if packet_type == 3:
                    if version is None:  # unreachable: _check_first_byte demands CONNECT
                        raise protocol_error("PUBLISH before CONNECT")
                    append(_decode_publish(first & 0x0F, view, index, end, version))
                elif packet_type == 1:
                    append(self._decode_connect(view, index, end))
                    version = self.protocol_version
                else:
                    if version is None:
                        raise protocol_error("a packet other than CONNECT before CONNECT")
                    append(_DECODERS[packet_type](view, index, end, version))
                pos = end
        return pos

    @staticmethod
    def _long_remaining_length(
        buffer: bytearray, pos: int, size: int, packet_type: int
    ) -> tuple[int, int]:
        """A Remaining Length of 2 to 4 bytes at ``pos + 1``: (length, index after it).

        The index is -1 when the buffer ends inside it (the fixed header is incomplete);
        otherwise ``wire.read_varint`` decodes it, with its checks (at most 4 bytes,
        minimally encoded).
        """
        start = pos + 1
        available = min(size, start + wire.MAX_VARINT_BYTES)
        if available - start < wire.MAX_VARINT_BYTES and all(
            buffer[i] & 0x80 for i in range(start, available)
        ):
            return 0, -1  # no last byte yet, and room for one
        name = _PACKET_NAMES.get(packet_type, "packet")
        return wire.read_varint(buffer, start, size, name, "remaining length")

    def _check_first_byte(self, first: int, version: ProtocolVersion | None) -> None:
        """Packet type and reserved flags, checked as soon as the first byte arrives."""
        packet_type = first >> 4
        flags = first & 0x0F
        if packet_type == 0:
            raise malformed("packet type 0 is reserved")
        name = _PACKET_NAMES[packet_type]
        if version is None and packet_type != 1:
            raise protocol_error(f"the first packet must be CONNECT, got {name} [MQTT-3.1.0-1]")
        if self.server_side and packet_type in _SERVER_TO_CLIENT:
            # It parses (or would), but a client has no business sending it: a Protocol
            # Error (5.0 section 1.2), found before its flags or body are looked at.
            raise protocol_error(f"{name} is a server-to-client packet; a client sent it")
        required = _REQUIRED_FLAGS[packet_type]
        if flags != required and not (
            version == ProtocolVersion.V31
            and packet_type in _V31_DUP_TOLERANT
            and flags & 0x07 == required
        ):
            raise malformed(
                f"{name}: reserved fixed header flags are 0b{flags:04b}, must be "
                f"0b{required:04b} [MQTT-2.1.3-1]"
            )
        if packet_type == 15 and version is not None and version != V5:
            raise malformed(f"AUTH: the AUTH packet does not exist in MQTT {version.name}")

    def _decode_connect(self, buf: Buffer, pos: int, end: int) -> Connect:
        if pos + 2 > end:
            raise malformed("CONNECT: the packet ends before the protocol name")
        name_end = pos + 2 + U16.unpack_from(buf, pos)[0]
        if name_end >= end:
            raise malformed("CONNECT: the packet ends inside the protocol name or level")
        protocol_name = bytes(buf[pos + 2 : name_end])
        level = buf[name_end]
        version = _PROTOCOLS.get((protocol_name, level))
        if version is None:
            shown = protocol_name.decode("utf-8", "replace")
            if protocol_name in (b"MQTT", b"MQIsdp"):
                reason = f"protocol name {shown!r} with level {level}"
            else:
                reason = f"unknown protocol name {shown!r} (level {level})"
            message = (
                f"CONNECT: {reason} is not MQTT 3.1 ('MQIsdp', 3), 3.1.1 ('MQTT', 4) "
                "or 5.0 ('MQTT', 5)"
            )
            if self.protocol_version is not None:
                raise protocol_error(
                    f"{message}, on a connection already at {self.protocol_version.name}"
                )
            raise UnsupportedProtocolVersion(message, protocol_level=level, protocol_name=shown)
        if self.protocol_version is None:
            self.protocol_version = version
        return _decode_connect_body(buf, name_end + 1, end, version)
