"""MQTT 5.0 properties (section 2.2.2): the table of every property and its codec.

One table drives both directions: for each property identifier, the ``Properties``
attribute that holds it, its data type, the packets (and Will Properties) it may appear
in, where it may repeat, and the value rules the spec states for it.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from typing import Any, TypeAlias

import attrs

from trio_mqtt.errors import LocalProtocolError, RemoteProtocolError
from trio_mqtt.mqtt import wire
from trio_mqtt.mqtt.packets import NO_PROPERTIES, Properties
from trio_mqtt.mqtt.reason_codes import ReasonCode


class PropertyType(enum.Enum):
    """The data type of a property value (section 1.5)."""

    BYTE = "Byte"
    TWO_BYTE_INTEGER = "Two Byte Integer"
    FOUR_BYTE_INTEGER = "Four Byte Integer"
    VARIABLE_BYTE_INTEGER = "Variable Byte Integer"
    UTF8_STRING = "UTF-8 Encoded String"
    BINARY_DATA = "Binary Data"
    UTF8_STRING_PAIR = "UTF-8 String Pair"


class PropertyContext(enum.IntEnum):
    """Where a property set lives: a packet type (same values) or the CONNECT Will Properties."""

    WILL = 0  # packet type 0 is reserved, so the value cannot clash
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
    DISCONNECT = 14
    AUTH = 15

    @property
    def label(self) -> str:
        return "Will Properties" if self is PropertyContext.WILL else self.name


@attrs.frozen
class PropertySpec:
    """Everything the codec needs to know about one property."""

    identifier: int
    attribute: str  # name of the ``Properties`` attribute
    label: str  # the spec's name, for error messages
    type: PropertyType
    allowed_in: frozenset[PropertyContext]
    repeatable_in: frozenset[PropertyContext] = frozenset()
    boolean: bool = False  # value must be 0 or 1 (else Protocol Error)
    nonzero: bool = False  # value 0 is a Protocol Error
    multiple: bool = False  # the attribute holds a tuple of values (one per occurrence)
    field: str = attrs.field(init=False)
    """How error messages name this property (every reader and writer is given it)."""
    never_sent_as_zero: bool = attrs.field(init=False)
    """0 is never sent: ``nonzero``, and Topic Alias, which is accepted as 0 on receipt
    (the broker answers 0x94) but never sent so [MQTT-3.3.2-8]."""

    @field.default
    def _name_for_errors(self) -> str:
        return f"property {self.label} (0x{self.identifier:02X})"

    @never_sent_as_zero.default
    def _zero_not_sent(self) -> bool:
        return self.nonzero or self.attribute == "topic_alias"


_C = PropertyContext
_ACKS = frozenset({_C.PUBACK, _C.PUBREC, _C.PUBREL, _C.PUBCOMP})
_MESSAGE = frozenset({_C.PUBLISH, _C.WILL})
_USER_PROPERTY_CONTEXTS = frozenset(_C)  # every property set may carry user properties

_SPECS = (
    PropertySpec(
        0x01,
        "payload_format_indicator",
        "Payload Format Indicator",
        PropertyType.BYTE,
        _MESSAGE,
        boolean=True,
    ),
    PropertySpec(
        0x02,
        "message_expiry_interval",
        "Message Expiry Interval",
        PropertyType.FOUR_BYTE_INTEGER,
        _MESSAGE,
    ),
    PropertySpec(0x03, "content_type", "Content Type", PropertyType.UTF8_STRING, _MESSAGE),
    PropertySpec(0x08, "response_topic", "Response Topic", PropertyType.UTF8_STRING, _MESSAGE),
    PropertySpec(0x09, "correlation_data", "Correlation Data", PropertyType.BINARY_DATA, _MESSAGE),
    PropertySpec(
        0x0B,
        "subscription_identifiers",
        "Subscription Identifier",
        PropertyType.VARIABLE_BYTE_INTEGER,
        frozenset({_C.PUBLISH, _C.SUBSCRIBE}),
        repeatable_in=frozenset({_C.PUBLISH}),
        nonzero=True,
        multiple=True,
    ),
    PropertySpec(
        0x11,
        "session_expiry_interval",
        "Session Expiry Interval",
        PropertyType.FOUR_BYTE_INTEGER,
        frozenset({_C.CONNECT, _C.CONNACK, _C.DISCONNECT}),
    ),
    PropertySpec(
        0x12,
        "assigned_client_identifier",
        "Assigned Client Identifier",
        PropertyType.UTF8_STRING,
        frozenset({_C.CONNACK}),
    ),
    PropertySpec(
        0x13,
        "server_keep_alive",
        "Server Keep Alive",
        PropertyType.TWO_BYTE_INTEGER,
        frozenset({_C.CONNACK}),
    ),
    PropertySpec(
        0x15,
        "authentication_method",
        "Authentication Method",
        PropertyType.UTF8_STRING,
        frozenset({_C.CONNECT, _C.CONNACK, _C.AUTH}),
    ),
    PropertySpec(
        0x16,
        "authentication_data",
        "Authentication Data",
        PropertyType.BINARY_DATA,
        frozenset({_C.CONNECT, _C.CONNACK, _C.AUTH}),
    ),
    PropertySpec(
        0x17,
        "request_problem_information",
        "Request Problem Information",
        PropertyType.BYTE,
        frozenset({_C.CONNECT}),
        boolean=True,
    ),
    PropertySpec(
        0x18,
        "will_delay_interval",
        "Will Delay Interval",
        PropertyType.FOUR_BYTE_INTEGER,
        frozenset({_C.WILL}),
    ),
    PropertySpec(
        0x19,
        "request_response_information",
        "Request Response Information",
        PropertyType.BYTE,
        frozenset({_C.CONNECT}),
        boolean=True,
    ),
    PropertySpec(
        0x1A,
        "response_information",
        "Response Information",
        PropertyType.UTF8_STRING,
        frozenset({_C.CONNACK}),
    ),
    PropertySpec(
        0x1C,
        "server_reference",
        "Server Reference",
        PropertyType.UTF8_STRING,
        frozenset({_C.CONNACK, _C.DISCONNECT}),
    ),
    PropertySpec(
        0x1F,
        "reason_string",
        "Reason String",
        PropertyType.UTF8_STRING,
        _ACKS | {_C.CONNACK, _C.SUBACK, _C.UNSUBACK, _C.DISCONNECT, _C.AUTH},
    ),
    PropertySpec(
        0x21,
        "receive_maximum",
        "Receive Maximum",
        PropertyType.TWO_BYTE_INTEGER,
        frozenset({_C.CONNECT, _C.CONNACK}),
        nonzero=True,
    ),
    PropertySpec(
        0x22,
        "topic_alias_maximum",
        "Topic Alias Maximum",
        PropertyType.TWO_BYTE_INTEGER,
        frozenset({_C.CONNECT, _C.CONNACK}),
    ),
    # Topic Alias 0 is checked by the broker (Topic Alias invalid, 0x94), not here.
    PropertySpec(
        0x23, "topic_alias", "Topic Alias", PropertyType.TWO_BYTE_INTEGER, frozenset({_C.PUBLISH})
    ),
    PropertySpec(
        0x24,
        "maximum_qos",
        "Maximum QoS",
        PropertyType.BYTE,
        frozenset({_C.CONNACK}),
        boolean=True,
    ),
    PropertySpec(
        0x25,
        "retain_available",
        "Retain Available",
        PropertyType.BYTE,
        frozenset({_C.CONNACK}),
        boolean=True,
    ),
    PropertySpec(
        0x26,
        "user_properties",
        "User Property",
        PropertyType.UTF8_STRING_PAIR,
        _USER_PROPERTY_CONTEXTS,
        repeatable_in=_USER_PROPERTY_CONTEXTS,
        multiple=True,
    ),
    PropertySpec(
        0x27,
        "maximum_packet_size",
        "Maximum Packet Size",
        PropertyType.FOUR_BYTE_INTEGER,
        frozenset({_C.CONNECT, _C.CONNACK}),
        nonzero=True,
    ),
    PropertySpec(
        0x28,
        "wildcard_subscription_available",
        "Wildcard Subscription Available",
        PropertyType.BYTE,
        frozenset({_C.CONNACK}),
        boolean=True,
    ),
    PropertySpec(
        0x29,
        "subscription_identifier_available",
        "Subscription Identifier Available",
        PropertyType.BYTE,
        frozenset({_C.CONNACK}),
        boolean=True,
    ),
    PropertySpec(
        0x2A,
        "shared_subscription_available",
        "Shared Subscription Available",
        PropertyType.BYTE,
        frozenset({_C.CONNACK}),
        boolean=True,
    ),
)

PROPERTIES: dict[int, PropertySpec] = {spec.identifier: spec for spec in _SPECS}
"""Every MQTT 5.0 property, by identifier (Table 2-4)."""

PROPERTIES_BY_ATTRIBUTE: dict[str, PropertySpec] = {spec.attribute: spec for spec in _SPECS}
"""The same table keyed by ``Properties`` attribute name."""

_Reader: TypeAlias = Callable[[wire.Buffer, int, int, str, str], tuple[Any, int]]
_Writer: TypeAlias = Callable[[Any, str, str], bytes]

_READERS: dict[PropertyType, _Reader] = {
    PropertyType.BYTE: wire.read_u8,
    PropertyType.TWO_BYTE_INTEGER: wire.read_u16,
    PropertyType.FOUR_BYTE_INTEGER: wire.read_u32,
    PropertyType.VARIABLE_BYTE_INTEGER: wire.read_varint,
    PropertyType.UTF8_STRING: wire.read_utf8,
    PropertyType.BINARY_DATA: wire.read_binary,
    PropertyType.UTF8_STRING_PAIR: wire.read_string_pair,
}

_WRITERS: dict[PropertyType, _Writer] = {
    PropertyType.BYTE: wire.encode_u8,
    PropertyType.TWO_BYTE_INTEGER: wire.encode_u16,
    PropertyType.FOUR_BYTE_INTEGER: wire.encode_u32,
    PropertyType.VARIABLE_BYTE_INTEGER: wire.encode_varint,
    PropertyType.UTF8_STRING: wire.encode_utf8,
    PropertyType.BINARY_DATA: wire.encode_binary,
    PropertyType.UTF8_STRING_PAIR: wire.encode_string_pair,
}

# identifier -> (spec, reader): decoding does one dict lookup per property
_DECODE_TABLE: dict[int, tuple[PropertySpec, _Reader]] = {
    spec.identifier: (spec, _READERS[spec.type]) for spec in _SPECS
}

# Encoding: every attribute of a Properties read at once, in the table's order, and for
# each its spec, identifier bytes, writer and whether _check_value has a rule for it.
_ENCODE_TABLE: tuple[tuple[PropertySpec, bytes, _Writer, bool], ...] = tuple(
    (
        spec,
        wire.encode_varint(spec.identifier),
        _WRITERS[spec.type],
        spec.boolean or spec.never_sent_as_zero,
    )
    for spec in _SPECS
)
_values_in_table_order = operator.attrgetter(*(spec.attribute for spec in _SPECS))

EMPTY_PROPERTIES_BYTES = b"\x00"
"""An empty property set: just a Property Length of zero [MQTT-2.2.2-1]."""

MAX_PROPERTIES = 256
"""Most properties one packet may carry, user properties included (ours, not MQTT's).

Each costs a few microseconds to decode, check and forward: without a bound, one PUBLISH
of 40,000 user properties (470 KB) held the event loop for 200 ms. A packet with more is
refused as too large (0x95); the broker never sends one.
"""


def decode_properties(
    buf: wire.Buffer, pos: int, end: int, context: PropertyContext, packet: str
) -> tuple[Properties, int]:
    """Read a Property Length and the properties it covers; return them and the new offset.

    Raises ``RemoteProtocolError``: MALFORMED_PACKET for an unknown identifier, a property
    not allowed in ``context`` ("an Identifier which is not valid for its packet type ...
    is a Malformed Packet", 5.0 section 2.2.2.2) or a value that does not fit;
    PROTOCOL_ERROR for a repeated property that may appear once or a value the spec
    forbids (0 where it must not be 0, anything but 0/1 in a flag byte, a Response Topic
    that is empty or has a wildcard).
    """
    length, pos = wire.read_varint(buf, pos, end, packet, "property length")
    if length == 0:
        return NO_PROPERTIES, pos
    stop = pos + length
    if stop > end:
        raise wire.malformed(
            f"{packet}: property length {length} runs {stop - end} byte(s) past the packet end"
        )
    values: dict[str, Any] = {}
    count = 0
    while pos < stop:
        count += 1
        if count > MAX_PROPERTIES:
            raise RemoteProtocolError(
                f"{packet}: more than {MAX_PROPERTIES} properties (user properties included)",
                ReasonCode.PACKET_TOO_LARGE,
            )
        identifier = buf[pos]
        entry = _DECODE_TABLE.get(identifier)
        if entry is None:
            raise wire.malformed(f"{packet}: unknown property identifier 0x{identifier:02X}")
        spec, reader = entry
        if context not in spec.allowed_in:
            raise wire.malformed(f"{packet}: {spec.field} is not allowed in {context.label}")
        value, pos = reader(buf, pos + 1, stop, packet, spec.field)
        if spec.boolean and value > 1:
            raise wire.protocol_error(f"{packet}: {spec.field} is {value}; it must be 0 or 1")
        if spec.nonzero and value == 0:
            raise wire.protocol_error(f"{packet}: {spec.field} must not be 0")
        name = spec.attribute
        previous = values.get(name)
        if previous is None:
            values[name] = [value] if spec.multiple else value
        elif context in spec.repeatable_in:
            previous.append(value)
        else:
            raise wire.protocol_error(f"{packet}: {spec.field} appears more than once")
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    response_topic = values.get("response_topic")
    if response_topic is not None:
        _check_response_topic(response_topic, packet)
    return Properties(**values), stop


def _check_response_topic(topic: str, packet: str) -> None:
    """A Response Topic is the topic name of the response: not empty, no wildcard.

    It parses, so breaking this is a Protocol Error (5.0 section 1.2), not malformed.
    """
    field = PROPERTIES[0x08].field
    if not topic:
        raise wire.protocol_error(
            f"{packet}: {field} is empty; a topic name has at least 1 character [MQTT-4.7.3-1]"
        )
    if "+" in topic or "#" in topic:
        shown = repr(topic) if len(topic) <= 80 else f"{topic[:80]!r}..."
        raise wire.protocol_error(
            f"{packet}: {field} {shown} contains a wildcard ('+' or '#') [MQTT-3.3.2-14]"
        )


def encode_properties(properties: Properties, context: PropertyContext, packet: str) -> bytes:
    """Encode ``properties`` with their Property Length, as allowed in ``context``.

    Raises ``LocalProtocolError`` for a property not allowed in ``context``, a repeated
    property that may appear once, a value out of range, or more than MAX_PROPERTIES.
    """
    if properties is NO_PROPERTIES:
        return EMPTY_PROPERTIES_BYTES
    out = bytearray()
    count = 0
    for (spec, header, writer, checked), value in zip(
        _ENCODE_TABLE, _values_in_table_order(properties), strict=True
    ):
        if value is None or value == ():
            continue
        if context not in spec.allowed_in:
            raise LocalProtocolError(
                f"{packet}: {spec.field} is not allowed in {context.label}",
                ReasonCode.MALFORMED_PACKET,
            )
        items = value if spec.multiple else (value,)
        if len(items) > 1 and context not in spec.repeatable_in:
            raise LocalProtocolError(
                f"{packet}: {spec.field} may appear only once in {context.label}, "
                f"got {len(items)} values",
                ReasonCode.PROTOCOL_ERROR,
            )
        count += len(items)
        if count > MAX_PROPERTIES:
            raise LocalProtocolError(
                f"{packet}: more than {MAX_PROPERTIES} properties (user properties included)",
                ReasonCode.PACKET_TOO_LARGE,
            )
        for item in items:
            if checked:
                _check_value(spec, item, packet)
            out += header
            out += writer(item, packet, spec.field)
    if not out:  # (a Properties equal to NO_PROPERTIES)
        return EMPTY_PROPERTIES_BYTES
    return wire.encode_varint(len(out), packet, "property length") + out


def _check_value(spec: PropertySpec, value: Any, packet: str) -> None:
    if spec.boolean and value not in (0, 1):
        raise LocalProtocolError(
            f"{packet}: {spec.field} is {value!r}; it must be 0 or 1", ReasonCode.PROTOCOL_ERROR
        )
    if spec.never_sent_as_zero and value == 0:
        raise LocalProtocolError(f"{packet}: {spec.field} must not be 0", ReasonCode.PROTOCOL_ERROR)
