"""Known-good packets and their exact bytes, checked in both directions.

Every byte string here is written by hand: copied from the non-normative examples of
the OASIS MQTT 3.1.1 / 5.0 specs where they give one (cited), otherwise worked out in
the comment next to it. None is produced by our encoder.
"""

from __future__ import annotations

import pytest

from trio_mqtt.mqtt import wire
from trio_mqtt.mqtt.codec import PacketReader, _connack_properties, encode
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
from trio_mqtt.mqtt.reason_codes import ReasonCode

V31 = ProtocolVersion.V31
V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5


def h(text: str) -> bytes:
    """Bytes from hex pairs; spaces and '|' separate fields for readability."""
    return bytes.fromhex(text.replace("|", " "))


MQTT = "00 04 4D 51 54 54"  # UTF-8 string "MQTT" (spec Figure 3-2)
MQISDP = "00 06 4D 51 49 73 64 70"  # UTF-8 string "MQIsdp" (MQTT 3.1)

VECTORS: list[tuple[str, ProtocolVersion, Packet, bytes]] = [
    # ------------------------------------------------------------------ CONNECT
    (
        # 3.1: name MQIsdp, level 3, flags 0x02 (clean), keep alive 10, client id "abc".
        # remaining length = 8 (name) + 1 + 1 + 2 + 5 (client id) = 17 = 0x11
        "connect-3.1",
        V31,
        Connect("abc", V31, clean_start=True, keep_alive=10),
        h(f"10 11 | {MQISDP} | 03 | 02 | 00 0A | 00 03 61 62 63"),
    ),
    (
        # 3.1 with user name "u" and password "pw": flags 0x80 | 0x40 | 0x02 = 0xC2
        # remaining length = 17 + 3 + 4 = 24 = 0x18
        "connect-3.1-credentials",
        V31,
        Connect("abc", V31, clean_start=True, keep_alive=10, username="u", password=b"pw"),
        h(f"10 18 | {MQISDP} | 03 | C2 | 00 0A | 00 03 61 62 63 | 00 01 75 | 00 02 70 77"),
    ),
    (
        # 3.1.1 variable header as in the 3.1.1 example (Figure 3.6): level 4, flags 0xCE
        # (user name, password, will QoS 1, will flag, clean session), keep alive 10.
        # payload: client id "c1" (4), will topic "w" (3), will message "bye" (5),
        # user name "user" (6), password "pass" (6) = 24; remaining length 10 + 24 = 34
        "connect-3.1.1-full",
        V311,
        Connect(
            "c1",
            V311,
            clean_start=True,
            keep_alive=10,
            username="user",
            password=b"pass",
            will=Will("w", b"bye", qos=1),
        ),
        h(
            f"10 22 | {MQTT} 04 CE 00 0A | 00 02 63 31 | 00 01 77 | 00 03 62 79 65"
            " | 00 04 75 73 65 72 | 00 04 70 61 73 73"
        ),
    ),
    (
        # 3.1.1, no flags but a retained QoS 2 will: 0x04 | 0x10 | 0x20 = 0x34; keep alive 0
        # remaining length 10 + 3 (client id "x") + 3 (topic "t") + 2 (empty message) = 18
        "connect-3.1.1-will-qos2-retain",
        V311,
        Connect("x", V311, clean_start=False, keep_alive=0, will=Will("t", b"", 2, True)),
        h(f"10 12 | {MQTT} 04 34 00 00 | 00 01 78 | 00 01 74 | 00 00"),
    ),
    (
        # 5.0 variable header exactly as the spec's example (Figure 3-6): level 5, flags
        # 0xCE, keep alive 10, properties length 5 = session expiry interval (0x11) 10.
        # payload: client id "c1" (4), will properties [will delay interval (0x18) 5] = 6,
        # will topic "w" (3), will payload "bye" (5), user "user" (6), password "pass" (6)
        # remaining length = 16 + 30 = 46 = 0x2E
        "connect-5.0-spec-example",
        V5,
        Connect(
            "c1",
            V5,
            clean_start=True,
            keep_alive=10,
            username="user",
            password=b"pass",
            will=Will("w", b"bye", qos=1, properties=Properties(will_delay_interval=5)),
            properties=Properties(session_expiry_interval=10),
        ),
        h(
            f"10 2E | {MQTT} 05 CE 00 0A | 05 11 00 00 00 0A | 00 02 63 31"
            " | 05 18 00 00 00 05 | 00 01 77 | 00 03 62 79 65"
            " | 00 04 75 73 65 72 | 00 04 70 61 73 73"
        ),
    ),
    (
        # 5.0, clean start 0, keep alive 0, empty client id, properties in id order:
        # 11 FFFFFFFF (5) | 15 "m" (4) | 16 0x01 (4) | 17 00 (2) | 21 0014 (3) | 22 000A (3)
        # | 26 "k" "v" (7) = 28 = 0x1C. remaining length = 10 + 1 + 28 + 2 = 41 = 0x29
        "connect-5.0-properties",
        V5,
        Connect(
            "",
            V5,
            clean_start=False,
            keep_alive=0,
            properties=Properties(
                session_expiry_interval=0xFFFFFFFF,
                authentication_method="m",
                authentication_data=b"\x01",
                request_problem_information=0,
                receive_maximum=20,
                topic_alias_maximum=10,
                user_properties=(("k", "v"),),
            ),
        ),
        h(
            f"10 29 | {MQTT} 05 00 00 00 | 1C | 11 FF FF FF FF | 15 00 01 6D | 16 00 01 01"
            " | 17 00 | 21 00 14 | 22 00 0A | 26 00 01 6B 00 01 76 | 00 00"
        ),
    ),
    (
        # 5.0 allows a password without a user name: flags 0x40 | 0x02 = 0x42, keep alive 60
        # remaining length = 11 + 3 + 3 = 17
        "connect-5.0-password-only",
        V5,
        Connect("x", V5, password=b"s"),
        h(f"10 11 | {MQTT} 05 42 00 3C 00 | 00 01 78 | 00 01 73"),
    ),
    # ------------------------------------------------------------------ CONNACK
    ("connack-3.1.1-session-present", V311, Connack(True, ReasonCode.SUCCESS), h("20 02 01 00")),
    # NOT_AUTHORIZED (0x87) -> 3.1.1 return code 5
    ("connack-3.1.1-refused", V311, Connack(False, ReasonCode.NOT_AUTHORIZED), h("20 02 00 05")),
    ("connack-3.1", V31, Connack(False, ReasonCode.SUCCESS), h("20 02 00 00")),
    # BAD_USER_NAME_OR_PASSWORD (0x86) -> return code 4
    (
        "connack-3.1-refused",
        V31,
        Connack(False, ReasonCode.BAD_USER_NAME_OR_PASSWORD),
        h("20 02 00 04"),
    ),
    ("connack-5.0", V5, Connack(False, ReasonCode.SUCCESS), h("20 03 00 00 00")),
    (
        # properties: 12 "id" (5) | 22 0005 (3) | 24 01 (2) | 25 00 (2) = 12 = 0x0C
        # remaining length = 2 + 1 + 12 = 15
        "connack-5.0-properties",
        V5,
        Connack(
            True,
            ReasonCode.SUCCESS,
            Properties(
                assigned_client_identifier="id",
                topic_alias_maximum=5,
                maximum_qos=1,
                retain_available=0,
            ),
        ),
        h("20 0F | 01 00 | 0C | 12 00 02 69 64 | 22 00 05 | 24 01 | 25 00"),
    ),
    (
        # reason string "no": 1F 00 02 6E 6F (5); remaining length 2 + 1 + 5 = 8
        "connack-5.0-refused",
        V5,
        Connack(False, ReasonCode.NOT_AUTHORIZED, Properties(reason_string="no")),
        h("20 08 | 00 87 | 05 1F 00 02 6E 6F"),
    ),
    # ------------------------------------------------------------------ PUBLISH
    # topic "a/b" = 00 03 61 2F 62 (spec Figure 3-9), payload "hi" = 68 69
    ("publish-3.1.1-qos0", V311, Publish("a/b", b"hi"), h("30 07 | 00 03 61 2F 62 | 68 69")),
    (
        # QoS 1 + retain: 0x30 | 0x02 | 0x01 = 0x33; packet id 10 (spec Figure 3-9)
        "publish-3.1.1-qos1-retain",
        V311,
        Publish("a/b", b"hi", qos=1, retain=True, packet_id=10),
        h("33 09 | 00 03 61 2F 62 | 00 0A | 68 69"),
    ),
    (
        # QoS 2 + DUP: 0x30 | 0x04 | 0x08 = 0x3C; empty payload
        "publish-3.1.1-qos2-dup",
        V311,
        Publish("a/b", b"", qos=2, dup=True, packet_id=0x1234),
        h("3C 07 | 00 03 61 2F 62 | 12 34"),
    ),
    (
        # the UTF-8 example of spec Figure 1-2: "A" U+2A6D4 = 00 05 41 F0 AA 9B 94
        "publish-3.1-utf8-topic",
        V31,
        Publish("A\U0002a6d4", b""),
        h("30 07 | 00 05 41 F0 AA 9B 94"),
    ),
    (
        # remaining length 128 = 3 (topic "t") + 125 payload -> 0x80 0x01 (spec Table 1-1)
        "publish-3.1.1-remaining-length-128",
        V311,
        Publish("t", b"\x55" * 125),
        h("30 80 01 | 00 01 74") + b"\x55" * 125,
    ),
    (
        # the spec's 5.0 PUBLISH variable header (Figure 3-9): topic "a/b", packet id 10,
        # property length 0; QoS 1 -> 0x32
        "publish-5.0-qos1",
        V5,
        Publish("a/b", b"hi", qos=1, packet_id=10),
        h("32 0A | 00 03 61 2F 62 | 00 0A | 00 | 68 69"),
    ),
    (
        # properties in id order: 01 01 (2) | 02 0000003C (5) | 03 "c" (4) | 08 "r" (4)
        # | 09 0001 binary (5) | 0B 01 (2) | 0B C8 01 = 200 (3) | 23 0003 (3)
        # | 26 "a" "1" (7) | 26 "a" "2" (7) = 42 = 0x2A
        # remaining length = 3 (topic "t") + 1 + 42 + 1 (payload "x") = 47 = 0x2F
        "publish-5.0-qos0-properties",
        V5,
        Publish(
            "t",
            b"x",
            properties=Properties(
                payload_format_indicator=1,
                message_expiry_interval=60,
                content_type="c",
                response_topic="r",
                correlation_data=b"\x00\x01",
                subscription_identifiers=(1, 200),
                topic_alias=3,
                user_properties=(("a", "1"), ("a", "2")),
            ),
        ),
        h(
            "30 2F | 00 01 74 | 2A | 01 01 | 02 00 00 00 3C | 03 00 01 63 | 08 00 01 72"
            " | 09 00 02 00 01 | 0B 01 | 0B C8 01 | 23 00 03 | 26 00 01 61 00 01 31"
            " | 26 00 01 61 00 01 32 | 78"
        ),
    ),
    (
        # 5.0 empty topic name with a topic alias, QoS 2: 0x34
        "publish-5.0-qos2-topic-alias",
        V5,
        Publish("", b"", qos=2, packet_id=1, properties=Properties(topic_alias=1)),
        h("34 08 | 00 00 | 00 01 | 03 23 00 01"),
    ),
    # ------------------------------------------------------------------ acks
    ("puback-3.1.1", V311, Puback(10), h("40 02 00 0A")),
    ("pubrec-3.1.1", V311, Pubrec(10), h("50 02 00 0A")),
    ("pubrel-3.1.1", V311, Pubrel(10), h("62 02 00 0A")),  # PUBREL flags 0b0010
    ("pubcomp-3.1.1", V311, Pubcomp(10), h("70 02 00 0A")),
    ("puback-3.1", V31, Puback(0xFFFF), h("40 02 FF FF")),
    # 5.0 short forms: reason 0 and no properties -> remaining length 2
    ("puback-5.0-short", V5, Puback(10), h("40 02 00 0A")),
    ("pubrec-5.0-short", V5, Pubrec(10), h("50 02 00 0A")),
    ("pubrel-5.0-short", V5, Pubrel(10), h("62 02 00 0A")),
    ("pubcomp-5.0-short", V5, Pubcomp(10), h("70 02 00 0A")),
    # reason code without properties -> remaining length 3, no property length
    (
        "puback-5.0-reason",
        V5,
        Puback(10, ReasonCode.NO_MATCHING_SUBSCRIBERS),
        h("40 03 00 0A 10"),
    ),
    ("pubrec-5.0-reason", V5, Pubrec(10, ReasonCode.UNSPECIFIED_ERROR), h("50 03 00 0A 80")),
    (
        "pubrel-5.0-reason",
        V5,
        Pubrel(10, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND),
        h("62 03 00 0A 92"),
    ),
    (
        "pubcomp-5.0-reason",
        V5,
        Pubcomp(10, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND),
        h("70 03 00 0A 92"),
    ),
    (
        # reason string "ok" = 1F 00 02 6F 6B (5); remaining length 2 + 1 + 1 + 5 = 9
        "puback-5.0-properties",
        V5,
        Puback(10, ReasonCode.SUCCESS, Properties(reason_string="ok")),
        h("40 09 | 00 0A | 00 | 05 1F 00 02 6F 6B"),
    ),
    (
        # user property "k"="v" = 26 00 01 6B 00 01 76 (7); remaining length 2 + 1 + 1 + 7
        "pubrec-5.0-properties",
        V5,
        Pubrec(7, ReasonCode.QUOTA_EXCEEDED, Properties(user_properties=(("k", "v"),))),
        h("50 0B | 00 07 | 97 | 07 26 00 01 6B 00 01 76"),
    ),
    (
        "pubrel-5.0-properties",
        V5,
        Pubrel(7, ReasonCode.SUCCESS, Properties(reason_string="")),
        h("62 07 | 00 07 | 00 | 03 1F 00 00"),
    ),
    (
        "pubcomp-5.0-properties",
        V5,
        Pubcomp(7, ReasonCode.SUCCESS, Properties(reason_string="")),
        h("70 07 | 00 07 | 00 | 03 1F 00 00"),
    ),
    # ------------------------------------------------------------------ SUBSCRIBE / SUBACK
    (
        # payload exactly as the spec's example (5.0 Figure 3-21, also 3.1.1):
        # "a/b" QoS 1, "c/d" QoS 2; packet id 10; remaining length 2 + 12 = 14
        "subscribe-3.1.1",
        V311,
        Subscribe(10, (SubscriptionRequest("a/b", 1), SubscriptionRequest("c/d", 2))),
        h("82 0E | 00 0A | 00 03 61 2F 62 01 | 00 03 63 2F 64 02"),
    ),
    (
        # 5.0 variable header of Figure 3-19 (packet id 10, property length 0) + Figure 3-21
        "subscribe-5.0",
        V5,
        Subscribe(10, (SubscriptionRequest("a/b", 1), SubscriptionRequest("c/d", 2))),
        h("82 0F | 00 0A | 00 | 00 03 61 2F 62 01 | 00 03 63 2F 64 02"),
    ),
    (
        # options: QoS 1 | no local 0x04 | retain as published 0x08 | retain handling 2<<4
        # = 0x2D. properties: 0B FF FF FF 7F (subscription id 268435455, the largest
        # 4-byte integer of Table 1-1) + 26 "a" "b" (7) = 12. remaining length 2+1+12+6 = 21
        "subscribe-5.0-options",
        V5,
        Subscribe(
            1,
            (SubscriptionRequest("x/#", 1, True, True, 2),),
            Properties(subscription_identifiers=(268435455,), user_properties=(("a", "b"),)),
        ),
        h("82 15 | 00 01 | 0C 0B FF FF FF 7F 26 00 01 61 00 01 62 | 00 03 78 2F 23 2D"),
    ),
    (
        # 3.1.1 return codes: QoS 0, QoS 2, failure 0x80
        "suback-3.1.1",
        V311,
        Suback(10, (ReasonCode.SUCCESS, ReasonCode.GRANTED_QOS_2, 0x80)),
        h("90 05 | 00 0A | 00 02 80"),
    ),
    (
        "suback-5.0",
        V5,
        Suback(10, (1, ReasonCode.NOT_AUTHORIZED, ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)),
        h("90 06 | 00 0A | 00 | 01 87 A2"),
    ),
    (
        # reason string "r" = 1F 00 01 72 (4); remaining length 2 + 1 + 4 + 3 = 10
        "suback-5.0-properties",
        V5,
        Suback(10, (1, 0x87, 0xA2), Properties(reason_string="r")),
        h("90 0A | 00 0A | 04 1F 00 01 72 | 01 87 A2"),
    ),
    # ------------------------------------------------------------------ UNSUBSCRIBE / UNSUBACK
    (
        # payload as the spec's example (5.0 Figure 3.30): "a/b", "c/d"
        "unsubscribe-3.1.1",
        V311,
        Unsubscribe(10, ("a/b", "c/d")),
        h("A2 0C | 00 0A | 00 03 61 2F 62 | 00 03 63 2F 64"),
    ),
    (
        "unsubscribe-5.0",
        V5,
        Unsubscribe(10, ("a/b", "c/d")),
        h("A2 0D | 00 0A | 00 | 00 03 61 2F 62 | 00 03 63 2F 64"),
    ),
    ("unsuback-3.1.1", V311, Unsuback(10), h("B0 02 00 0A")),
    (
        "unsuback-5.0",
        V5,
        Unsuback(10, (ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED)),
        h("B0 05 | 00 0A | 00 | 00 11"),
    ),
    # ------------------------------------------------------------------ PING
    ("pingreq-3.1.1", V311, Pingreq(), h("C0 00")),
    ("pingresp-3.1.1", V311, Pingresp(), h("D0 00")),
    ("pingreq-5.0", V5, Pingreq(), h("C0 00")),
    ("pingresp-5.0", V5, Pingresp(), h("D0 00")),
    # ------------------------------------------------------------------ DISCONNECT
    ("disconnect-3.1.1", V311, Disconnect(), h("E0 00")),
    ("disconnect-5.0-short", V5, Disconnect(), h("E0 00")),
    # reason code only: remaining length 1, no property length (3.14.2.2.1)
    ("disconnect-5.0-reason", V5, Disconnect(ReasonCode.SESSION_TAKEN_OVER), h("E0 01 8E")),
    (
        # the spec's example (Figure 3-24): reason 0, session expiry interval 0
        "disconnect-5.0-spec-example",
        V5,
        Disconnect(0, Properties(session_expiry_interval=0)),
        h("E0 07 | 00 | 05 11 00 00 00 00"),
    ),
    (
        # 1C "s" (4) | 1F "r" (4) = 8; remaining length 1 + 1 + 8 = 10
        "disconnect-5.0-long",
        V5,
        Disconnect(
            ReasonCode.USE_ANOTHER_SERVER,
            Properties(server_reference="s", reason_string="r"),
        ),
        h("E0 0A | 9C | 08 1C 00 01 73 1F 00 01 72"),
    ),
    # ------------------------------------------------------------------ AUTH
    ("auth-5.0-short", V5, Auth(), h("F0 00")),
    (
        # 15 "SCRAM" (8) | 16 0102 (5) = 13 = 0x0D; remaining length 1 + 1 + 13 = 15
        "auth-5.0",
        V5,
        Auth(
            ReasonCode.CONTINUE_AUTHENTICATION,
            Properties(authentication_method="SCRAM", authentication_data=b"\x01\x02"),
        ),
        h("F0 0F | 18 | 0D 15 00 05 53 43 52 41 4D 16 00 02 01 02"),
    ),
]


def decode_all(
    data: bytes, version: ProtocolVersion, *, connect: bool, server_side: bool = True
) -> list[Packet]:
    """Decode ``data`` with a fresh reader: server side learning the version from a CONNECT.

    ``server_side=False`` for the packets only a server sends (a server's reader refuses
    them).
    """
    if connect:
        reader = PacketReader()
    else:
        reader = PacketReader(protocol_version=version, server_side=server_side)
    packets = reader.feed(data)
    assert reader.buffered == 0
    assert reader.protocol_version == version
    return packets


@pytest.mark.parametrize(
    ("version", "packet", "data"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_encode(version: ProtocolVersion, packet: Packet, data: bytes) -> None:
    assert encode(packet, version).hex(" ") == data.hex(" ")


@pytest.mark.parametrize(
    ("version", "packet", "data"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_decode(version: ProtocolVersion, packet: Packet, data: bytes) -> None:
    from_server = isinstance(packet, Connack | Suback | Unsuback | Pingresp)
    decoded = decode_all(
        data, version, connect=isinstance(packet, Connect), server_side=not from_server
    )
    assert decoded == [packet]


def test_client_side_reader_decodes_server_packets() -> None:
    reader = PacketReader(protocol_version=V5, server_side=False)
    data = h("20 03 00 00 00") + h("90 04 00 0A 00 01") + h("D0 00")
    assert reader.feed(data) == [Connack(), Suback(10, (1,)), Pingresp()]


def test_decoded_reason_codes_are_reason_code_members() -> None:
    [puback] = decode_all(h("40 03 00 0A 10"), V5, connect=False)
    assert isinstance(puback, Puback)
    assert puback.reason_code is ReasonCode.NO_MATCHING_SUBSCRIBERS
    [connack] = decode_all(h("20 02 00 05"), V311, connect=False, server_side=False)
    assert isinstance(connack, Connack)
    assert connack.reason_code is ReasonCode.NOT_AUTHORIZED  # return code 5


# ---------------------------------------------------------------- encode-only: 5.0 fields dropped


@pytest.mark.parametrize(
    ("packet", "version", "data"),
    [
        # reason codes and properties of acks do not exist before 5.0
        (Puback(10, 0x10, Properties(reason_string="x")), V311, h("40 02 00 0A")),
        (Pubrel(10, 0x92), V31, h("62 02 00 0A")),
        # SUBACK failure codes all become 0x80
        (Suback(10, (1, ReasonCode.NOT_AUTHORIZED, 0xA2)), V311, h("90 05 00 0A 01 80 80")),
        # UNSUBACK has no payload before 5.0
        (Unsuback(10, (0, 0x11), Properties(reason_string="x")), V311, h("B0 02 00 0A")),
        # only the QoS of subscription options
        (
            Subscribe(
                1,
                (SubscriptionRequest("t", 2, True, True, 1),),
                Properties(user_properties=(("a", "b"),)),
            ),
            V311,
            h("82 06 00 01 00 01 74 02"),
        ),
        # CONNACK: SERVER_BUSY -> return code 3 (server unavailable); no properties
        (
            Connack(False, ReasonCode.SERVER_BUSY, Properties(reason_string="x")),
            V311,
            h("20 02 00 03"),
        ),
        # 3.1 has no session present flag
        (Connack(True, 0), V31, h("20 02 00 00")),
        # DISCONNECT carries nothing before 5.0
        (Disconnect(ReasonCode.SERVER_SHUTTING_DOWN), V311, h("E0 00")),
        # PUBLISH properties dropped
        (
            Publish("t", b"", properties=Properties(message_expiry_interval=5)),
            V311,
            h("30 03 00 01 74"),
        ),
        # CONNECT and will properties dropped
        (
            Connect(
                "x",
                V311,
                will=Will("t", b"", properties=Properties(will_delay_interval=1)),
                properties=Properties(session_expiry_interval=1),
            ),
            V311,
            h(f"10 12 | {MQTT} 04 06 00 3C | 00 01 78 | 00 01 74 | 00 00"),
        ),
    ],
)
def test_encode_omits_fields_older_versions_lack(
    packet: Packet, version: ProtocolVersion, data: bytes
) -> None:
    assert encode(packet, version).hex(" ") == data.hex(" ")


# ---------------------------------------------------------------- primitive data types

# Table 1-1 of the 5.0 spec: the edges of each Variable Byte Integer size
VARINT_TABLE = [
    (0, "00"),
    (127, "7F"),
    (128, "80 01"),
    (16_383, "FF 7F"),
    (16_384, "80 80 01"),
    (2_097_151, "FF FF 7F"),
    (2_097_152, "80 80 80 01"),
    (268_435_455, "FF FF FF 7F"),
]


@pytest.mark.parametrize(("value", "encoded"), VARINT_TABLE)
def test_variable_byte_integer_table(value: int, encoded: str) -> None:
    data = h(encoded)
    assert wire.encode_varint(value) == data
    assert wire.read_varint(data, 0, len(data), "test", "value") == (value, len(data))


def test_utf8_string_spec_example() -> None:
    # Figure 1-2: "A" followed by U+2A6D4
    data = h("00 05 41 F0 AA 9B 94")
    assert wire.encode_utf8("A\U0002a6d4", "test", "string") == data
    assert wire.read_utf8(data, 0, len(data), "test", "string") == ("A\U0002a6d4", 7)


def test_utf8_bom_is_kept() -> None:
    # [MQTT-1.5.4-3]: 0xEF 0xBB 0xBF is U+FEFF and must not be stripped
    data = h("00 04 EF BB BF 61")
    assert wire.read_utf8(data, 0, len(data), "test", "string") == ("\ufeffa", 6)


def test_connack_properties_are_kept_encoded_by_value() -> None:
    """The broker's CONNACK properties repeat from connection to connection, so the codec
    keeps their encoding: an equal set (another object) gets the kept bytes, a set that
    differs in one value its own."""
    first = Properties(assigned_client_identifier="id", topic_alias_maximum=5)
    equal = Properties(assigned_client_identifier="id", topic_alias_maximum=5)
    other = Properties(assigned_client_identifier="ie", topic_alias_maximum=5)
    # properties: 12 "id" (5) | 22 0005 (3) = 8; remaining length 2 + 1 + 8 = 11
    _connack_properties.cache_clear()
    assert encode(Connack(properties=first), V5) == h(
        "20 0B | 00 00 | 08 | 12 00 02 69 64 | 22 00 05"
    )
    assert encode(Connack(properties=other), V5) == h(
        "20 0B | 00 00 | 08 | 12 00 02 69 65 | 22 00 05"
    )
    assert encode(Connack(True, properties=equal), V5) == h(
        "20 0B | 01 00 | 08 | 12 00 02 69 64 | 22 00 05"
    )
    info = _connack_properties.cache_info()
    assert (info.hits, info.misses) == (1, 2)
