"""Hypothesis strategies for every MQTT packet type, per protocol version.

For 3.1 / 3.1.1 they only generate what those versions carry (no properties, no ack
reason codes, QoS-only subscription options, the six CONNACK codes that survive the
3.1.1 return-code mapping), so that ``decode(encode(p)) == p`` holds for all of them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from trio_mqtt.errors import RemoteProtocolError
from trio_mqtt.mqtt import codec
from trio_mqtt.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
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
from trio_mqtt.mqtt.properties import PROPERTIES, PropertyContext, PropertySpec, PropertyType
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.mqtt.topics import validate_topic_filter

V31 = ProtocolVersion.V31
V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
VERSIONS = (V31, V311, V5)

# MQTT strings: any Unicode scalar value but U+0000 (surrogates cannot be UTF-8)
mqtt_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=12,
)
# topic names (a Response Topic): at least 1 character, no wildcard
topic_names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#"),
    min_size=1,
    max_size=12,
)


def _valid_filter(topic_filter: str) -> bool:
    try:
        validate_topic_filter(topic_filter)
    except RemoteProtocolError:
        return False  # "$share/..." without a group or filter: hypothesis may find it
    return True


# topic filters: names, or wildcards in the places 4.7.1 allows
topic_filters = st.one_of(
    topic_names.filter(_valid_filter),
    st.sampled_from(["#", "+", "a/+", "+/b/#", "/#", "$share/g/+/x", "$share/g/#"]),
)
binary = st.binary(max_size=24)
packet_ids = st.integers(1, 0xFFFF)
qos_levels = st.integers(0, 2)

# CONNACK codes that connack_return_code_v3 maps to distinct 3.1.1 return codes, chosen as
# the codes our decoder maps those return codes back to
V3_CONNACK_CODES = (
    ReasonCode.SUCCESS,
    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
    ReasonCode.SERVER_UNAVAILABLE,
    ReasonCode.BAD_USER_NAME_OR_PASSWORD,
    ReasonCode.NOT_AUTHORIZED,
)


def _codes(allowed: frozenset[ReasonCode]) -> st.SearchStrategy[ReasonCode]:
    return st.sampled_from(sorted(allowed))


def _property_value(spec: PropertySpec) -> st.SearchStrategy[Any]:
    if spec.boolean:
        return st.integers(0, 1)
    low = 1 if spec.nonzero or spec.attribute == "topic_alias" else 0
    match spec.type:
        case PropertyType.BYTE:
            return st.integers(low, 0xFF)
        case PropertyType.TWO_BYTE_INTEGER:
            return st.integers(low, 0xFFFF)
        case PropertyType.FOUR_BYTE_INTEGER:
            return st.integers(low, 0xFFFF_FFFF)
        case PropertyType.VARIABLE_BYTE_INTEGER:
            return st.integers(low, 268_435_455)
        case PropertyType.UTF8_STRING:
            return topic_names if spec.attribute == "response_topic" else mqtt_text
        case PropertyType.BINARY_DATA:
            return binary
        case PropertyType.UTF8_STRING_PAIR:
            return st.tuples(mqtt_text, mqtt_text)
    raise AssertionError(spec)


@st.composite
def properties(draw: st.DrawFn, context: PropertyContext) -> Properties:
    """A random set of the properties allowed in ``context``."""
    values: dict[str, Any] = {}
    for spec in PROPERTIES.values():
        if context not in spec.allowed_in:
            continue
        value = _property_value(spec)
        if spec.multiple:
            most = 3 if context in spec.repeatable_in else 1
            items = draw(st.lists(value, max_size=most))
            if items:
                values[spec.attribute] = tuple(items)
        elif draw(st.booleans()):
            values[spec.attribute] = draw(value)
    if "authentication_data" in values and "authentication_method" not in values:
        values["authentication_method"] = "method"  # data alone is a Protocol Error
    return Properties(**values)


def _props(version: ProtocolVersion, context: PropertyContext) -> st.SearchStrategy[Properties]:
    if version == V5:
        return properties(context)
    return st.just(Properties())


@st.composite
def connects(draw: st.DrawFn, version: ProtocolVersion) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(
            topic=draw(mqtt_text),
            payload=draw(binary),
            qos=draw(qos_levels),
            retain=draw(st.booleans()),
            properties=draw(_props(version, PropertyContext.WILL)),
        )
    username = draw(st.none() | mqtt_text)
    password = draw(st.none() | binary)
    if username is None and version != V5:
        password = None  # 3.1 / 3.1.1: no password without a user name
    return Connect(
        client_id=draw(mqtt_text),
        protocol_version=version,
        clean_start=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 0xFFFF)),
        username=username,
        password=password,
        will=will,
        properties=draw(_props(version, PropertyContext.CONNECT)),
    )


@st.composite
def connacks(draw: st.DrawFn, version: ProtocolVersion) -> Connack:
    if version == V5:
        code = draw(_codes(codec.CONNACK_REASON_CODES))
    else:
        code = draw(st.sampled_from(V3_CONNACK_CODES))
    session_present = code == 0 and version != V31 and draw(st.booleans())
    return Connack(session_present, code, draw(_props(version, PropertyContext.CONNACK)))


@st.composite
def publishes(draw: st.DrawFn, version: ProtocolVersion) -> Publish:
    qos = draw(qos_levels)
    return Publish(
        topic=draw(mqtt_text),
        payload=draw(st.binary(max_size=64)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=qos > 0 and draw(st.booleans()),
        packet_id=draw(packet_ids) if qos else None,
        properties=draw(_props(version, PropertyContext.PUBLISH)),
    )


def _pub_acks(
    cls: type[Puback] | type[Pubrec] | type[Pubrel] | type[Pubcomp],
    allowed: frozenset[ReasonCode],
    context: PropertyContext,
    version: ProtocolVersion,
) -> st.SearchStrategy[Packet]:
    if version != V5:
        return st.builds(cls, packet_ids)
    return st.builds(cls, packet_ids, _codes(allowed), properties(context))


@st.composite
def subscribes(draw: st.DrawFn, version: ProtocolVersion) -> Subscribe:
    if version == V5:
        request = st.builds(
            SubscriptionRequest,
            topic_filters,
            qos_levels,
            st.booleans(),
            st.booleans(),
            st.integers(0, 2),
        )
    else:
        request = st.builds(SubscriptionRequest, topic_filters, qos_levels)
    return Subscribe(
        draw(packet_ids),
        tuple(draw(st.lists(request, min_size=1, max_size=4))),
        draw(_props(version, PropertyContext.SUBSCRIBE)),
    )


@st.composite
def subacks(draw: st.DrawFn, version: ProtocolVersion) -> Suback:
    allowed = codec.SUBACK_REASON_CODES if version == V5 else codec.SUBACK_RETURN_CODES_V3
    codes = draw(st.lists(_codes(allowed), min_size=1, max_size=4))
    return Suback(draw(packet_ids), tuple(codes), draw(_props(version, PropertyContext.SUBACK)))


@st.composite
def unsubscribes(draw: st.DrawFn, version: ProtocolVersion) -> Unsubscribe:
    filters = draw(st.lists(topic_filters, min_size=1, max_size=4))
    return Unsubscribe(
        draw(packet_ids), tuple(filters), draw(_props(version, PropertyContext.UNSUBSCRIBE))
    )


@st.composite
def unsubacks(draw: st.DrawFn, version: ProtocolVersion) -> Unsuback:
    if version != V5:
        return Unsuback(draw(packet_ids))
    codes = draw(st.lists(_codes(codec.UNSUBACK_REASON_CODES), min_size=1, max_size=4))
    return Unsuback(draw(packet_ids), tuple(codes), draw(properties(PropertyContext.UNSUBACK)))


def disconnects(version: ProtocolVersion) -> st.SearchStrategy[Disconnect]:
    if version != V5:
        return st.just(Disconnect())
    return st.builds(
        Disconnect,
        _codes(codec.DISCONNECT_REASON_CODES),
        properties(PropertyContext.DISCONNECT),
    )


def auths() -> st.SearchStrategy[Auth]:
    return st.builds(Auth, _codes(codec.AUTH_REASON_CODES), properties(PropertyContext.AUTH))


def client_packets(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    """Packets a client sends after CONNECT."""
    options: list[st.SearchStrategy[Packet]] = [
        publishes(version),
        _pub_acks(Puback, codec.PUBACK_REASON_CODES, PropertyContext.PUBACK, version),
        _pub_acks(Pubrec, codec.PUBREC_REASON_CODES, PropertyContext.PUBREC, version),
        _pub_acks(Pubrel, codec.PUBREL_REASON_CODES, PropertyContext.PUBREL, version),
        _pub_acks(Pubcomp, codec.PUBCOMP_REASON_CODES, PropertyContext.PUBCOMP, version),
        subscribes(version),
        unsubscribes(version),
        st.just(Pingreq()),
        disconnects(version),
    ]
    if version == V5:
        options.append(auths())
    return st.one_of(options)


def server_packets(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    """Packets a server sends."""
    options: list[st.SearchStrategy[Packet]] = [
        connacks(version),
        publishes(version),
        _pub_acks(Puback, codec.PUBACK_REASON_CODES, PropertyContext.PUBACK, version),
        _pub_acks(Pubrec, codec.PUBREC_REASON_CODES, PropertyContext.PUBREC, version),
        _pub_acks(Pubrel, codec.PUBREL_REASON_CODES, PropertyContext.PUBREL, version),
        _pub_acks(Pubcomp, codec.PUBCOMP_REASON_CODES, PropertyContext.PUBCOMP, version),
        subacks(version),
        unsubacks(version),
        st.just(Pingresp()),
        disconnects(version),
    ]
    if version == V5:
        options.append(auths())
    return st.one_of(options)
