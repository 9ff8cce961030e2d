"""MQTT control packets as immutable values, one class per packet type.

The same classes serve protocol levels 3 (MQTT 3.1), 4 (3.1.1) and 5 (5.0): fields that
only exist in 5.0 (properties, most reason codes) are simply left at their defaults for
older levels, and the codec ignores or rejects them according to the version.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

import attrs

from trio_mqtt.hot_value import hot_value


class PacketType(enum.IntEnum):
    """The control packet type, the high nibble of the fixed header's first byte."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class ProtocolVersion(enum.IntEnum):
    """The protocol level byte of CONNECT."""

    V31 = 3
    V311 = 4
    V5 = 5

    @property
    def protocol_name(self) -> str:
        return "MQIsdp" if self is ProtocolVersion.V31 else "MQTT"


@hot_value
class Properties:
    """MQTT 5 properties (section 2.2.2.2). ``None`` / empty means "absent".

    The codec knows, for each property, its identifier, its data type and the packets
    it may appear in (see ``trio_mqtt.mqtt.properties``).
    """

    payload_format_indicator: int | None = None  # 0x01 byte
    message_expiry_interval: int | None = None  # 0x02 four-byte integer
    content_type: str | None = None  # 0x03 UTF-8 string
    response_topic: str | None = None  # 0x08 UTF-8 string
    correlation_data: bytes | None = None  # 0x09 binary data
    # 0x0B variable byte integer; may repeat in PUBLISH (server to client) only
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None  # 0x11 four-byte integer
    assigned_client_identifier: str | None = None  # 0x12 UTF-8 string
    server_keep_alive: int | None = None  # 0x13 two-byte integer
    authentication_method: str | None = None  # 0x15 UTF-8 string
    authentication_data: bytes | None = None  # 0x16 binary data
    request_problem_information: int | None = None  # 0x17 byte
    will_delay_interval: int | None = None  # 0x18 four-byte integer
    request_response_information: int | None = None  # 0x19 byte
    response_information: str | None = None  # 0x1A UTF-8 string
    server_reference: str | None = None  # 0x1C UTF-8 string
    reason_string: str | None = None  # 0x1F UTF-8 string
    receive_maximum: int | None = None  # 0x21 two-byte integer
    topic_alias_maximum: int | None = None  # 0x22 two-byte integer
    topic_alias: int | None = None  # 0x23 two-byte integer
    maximum_qos: int | None = None  # 0x24 byte
    retain_available: int | None = None  # 0x25 byte
    user_properties: tuple[tuple[str, str], ...] = ()  # 0x26 UTF-8 string pair, may repeat
    maximum_packet_size: int | None = None  # 0x27 four-byte integer
    wildcard_subscription_available: int | None = None  # 0x28 byte
    subscription_identifier_available: int | None = None  # 0x29 byte
    shared_subscription_available: int | None = None  # 0x2A byte

    def __bool__(self) -> bool:
        return self != NO_PROPERTIES


NO_PROPERTIES = Properties()


@attrs.frozen
class Will:
    """The will message carried by CONNECT."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@hot_value
class Connect:
    client_id: str
    protocol_version: ProtocolVersion = ProtocolVersion.V311
    clean_start: bool = True  # "clean session" before 5.0
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = NO_PROPERTIES


@hot_value
class Connack:
    session_present: bool = False
    # MQTT 5 reason code; for 3.1/3.1.1 the codec maps it to a return code (0..5)
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@hot_value
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # required for QoS 1 and 2, absent for QoS 0
    properties: Properties = NO_PROPERTIES


@hot_value
class Puback:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@hot_value
class Pubrec:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@hot_value
class Pubrel:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@hot_value
class Pubcomp:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class SubscriptionRequest:
    """One topic filter of a SUBSCRIBE with its subscription options."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False  # 5.0 only
    retain_as_published: bool = False  # 5.0 only
    retain_handling: int = 0  # 5.0 only: 0, 1 or 2


@attrs.frozen
class Subscribe:
    packet_id: int
    subscriptions: tuple[SubscriptionRequest, ...]
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Suback:
    packet_id: int
    # 3.1.1: 0, 1, 2 or 0x80; 5.0: reason codes
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Unsuback:
    packet_id: int
    reason_codes: tuple[int, ...] = ()  # 5.0 only; empty for 3.1/3.1.1
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Pingreq:
    pass


@attrs.frozen
class Pingresp:
    pass


@attrs.frozen
class Disconnect:
    reason_code: int = 0  # 5.0 only
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Auth:
    """5.0 only: enhanced authentication exchange."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


Packet: TypeAlias = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

PACKET_TYPES: dict[type[Packet], PacketType] = {
    Connect: PacketType.CONNECT,
    Connack: PacketType.CONNACK,
    Publish: PacketType.PUBLISH,
    Puback: PacketType.PUBACK,
    Pubrec: PacketType.PUBREC,
    Pubrel: PacketType.PUBREL,
    Pubcomp: PacketType.PUBCOMP,
    Subscribe: PacketType.SUBSCRIBE,
    Suback: PacketType.SUBACK,
    Unsubscribe: PacketType.UNSUBSCRIBE,
    Unsuback: PacketType.UNSUBACK,
    Pingreq: PacketType.PINGREQ,
    Pingresp: PacketType.PINGRESP,
    Disconnect: PacketType.DISCONNECT,
    Auth: PacketType.AUTH,
}
