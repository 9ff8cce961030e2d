"""Reason codes for malformed and protocol-violating input, over a whole connection.

MQTT 5.0 section 1.2: a Malformed Packet (0x81) "cannot be parsed according to this
specification"; a Protocol Error (0x82) is "detected after the packet has been parsed and
found to contain data that is not allowed by the protocol". Two cases the spec settles
explicitly stay 0x81: a property identifier not valid for its packet type (2.2.2.2) and
reserved bits set. The bytes sent and the bytes expected are written out by hand; the
connection is driven sans IO (``Client``). The codec-level rules are in
tests/mqtt/test_codec_errors.py.
"""

from __future__ import annotations

import pytest
from helpers import V5, V31, V311, Client, make_core

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message
from trio_mqtt.mqtt.packets import ProtocolVersion
from trio_mqtt.mqtt.reason_codes import ReasonCode

RC = ReasonCode


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def connected(
    version: ProtocolVersion = V5, client_id: str = "rc", core: BrokerCore | None = None
) -> Client:
    c = Client(make_core() if core is None else core, version)
    assert c.connect(client_id).reason_code == 0
    return c


def disconnect_sent(c: Client, code: int) -> str:
    """The server sent one DISCONNECT ``code`` with a Reason String, and closes; the string."""
    data = c.raw()
    assert c.conn.wants_close
    # E0 | remaining length | reason code | property length | 1F, string length, string
    assert data[:1] == b"\xe0" and data[1] == len(data) - 2, data
    assert data[2] == code, f"{data[2]:#04x} != {code:#04x}"
    assert data[3] == len(data) - 4 and data[4] == 0x1F, data
    assert int.from_bytes(data[5:7], "big") == len(data) - 7, data
    return data[7:].decode()


def closed_silently(c: Client) -> bool:
    """3.1 / 3.1.1: the connection closes without a packet (no SUBACK, no DISCONNECT)."""
    return c.raw() == b"" and c.conn.wants_close


# ------------------------------------------------------- server-to-client packets: 0x82


@pytest.mark.parametrize(
    ("data", "name"),
    [
        # These parse as far as the type; their bodies would not: the type decides.
        pytest.param(h("20 02 00 00"), "CONNACK", id="connack-without-property-length"),
        pytest.param(h("28 02 00 00"), "CONNACK", id="connack-reserved-flags"),
        pytest.param(h("90 02 00 01"), "SUBACK", id="suback-without-reason-code"),
        pytest.param(h("B0 02 00 01"), "UNSUBACK", id="unsuback-without-properties"),
        pytest.param(h("D0 01 00"), "PINGRESP", id="pingresp-with-a-body"),
        pytest.param(h("D2 00"), "PINGRESP", id="pingresp-reserved-flags"),
    ],
)
def test_server_to_client_packet_from_a_client_gets_disconnect_0x82(data: bytes, name: str) -> None:
    # Table 2-1: CONNACK, SUBACK, UNSUBACK and PINGRESP flow from Server to Client.
    c = connected()
    c.conn.receive_data(data)
    reason = disconnect_sent(c, RC.PROTOCOL_ERROR)
    assert reason == f"{name} is a server-to-client packet; a client sent it"


# ------------------------------------------------------------ topic filter syntax: 0x81


@pytest.mark.parametrize(
    ("data", "match"),
    [
        # SUBSCRIBE packet id 1, no properties, filter "" QoS 0 [MQTT-4.7.3-1]
        pytest.param(h("82 06 00 01 | 00 | 00 00 | 00"), "is empty", id="empty"),
        # filter "a/#/b" QoS 1 [MQTT-4.7.1-1]
        pytest.param(
            h("82 0B 00 01 | 00 | 00 05 61 2F 23 2F 62 | 01"), "must be the last", id="a/#/b"
        ),
        # filter "a+" QoS 0 [MQTT-4.7.1-2]
        pytest.param(h("82 08 00 01 | 00 | 00 02 61 2B | 00"), "'+' must be alone", id="a+"),
        # "ok" QoS 0 then "#a" QoS 0: the whole SUBSCRIBE goes, "ok" included
        pytest.param(
            h("82 0D 00 01 | 00 | 00 02 6F 6B | 00 | 00 02 23 61 | 00"),
            "'#' must be alone",
            id="good-then-bad",
        ),
        # "$share/g" (no filter after the share name) [MQTT-4.8.2-2]
        pytest.param(
            h("82 0E 00 01 | 00 | 00 08 24 73 68 61 72 65 2F 67 | 00"),
            "has no topic filter",
            id="share-without-filter",
        ),
        # UNSUBSCRIBE packet id 1, no properties, filter ""
        pytest.param(h("A2 05 00 01 | 00 | 00 00"), "is empty", id="unsubscribe-empty"),
        # UNSUBSCRIBE "a/#/b"
        pytest.param(
            h("A2 0A 00 01 | 00 | 00 05 61 2F 23 2F 62"),
            "must be the last",
            id="unsubscribe-a/#/b",
        ),
    ],
)
def test_invalid_topic_filter_gets_disconnect_0x81(data: bytes, match: str) -> None:
    # SUBACK / UNSUBACK 0x8F is for a filter that "is correctly formed but is not allowed
    # for this Client"; one that is not correctly formed is a Malformed Packet.
    core = make_core()
    c = connected(core=core)
    c.conn.receive_data(data)
    reason = disconnect_sent(c, RC.MALFORMED_PACKET)
    assert reason.startswith(("SUBSCRIBE: ", "UNSUBSCRIBE: "))
    assert match in reason
    assert core.router.subscriptions_of("rc") == {}


@pytest.mark.parametrize("version", [V311, V31])
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(h("82 05 00 01 | 00 00 | 00"), id="empty"),
        pytest.param(h("82 0A 00 01 | 00 05 61 2F 23 2F 62 | 01"), id="a/#/b"),
        pytest.param(h("82 07 00 01 | 00 02 61 2B | 00"), id="a+"),
        pytest.param(h("A2 04 00 01 | 00 00"), id="unsubscribe-empty"),
        pytest.param(h("A2 09 00 01 | 00 05 61 2F 23 2F 62"), id="unsubscribe-a/#/b"),
    ],
)
def test_invalid_topic_filter_closes_without_suback_before_5(
    version: ProtocolVersion, data: bytes
) -> None:
    # 3.1.1 [MQTT-4.7.3-1], [MQTT-4.7.1-1/2]; a violation closes the connection
    # [MQTT-4.8.0-1]: no SUBACK with a 0x80 for the filter
    core = make_core()
    c = connected(version, core=core)
    c.conn.receive_data(data)
    assert closed_silently(c)
    assert core.router.subscriptions_of("rc") == {}


# -------------------------------------------------------------- Response Topic: 0x82


@pytest.mark.parametrize(
    "will_properties",
    [
        pytest.param(h("03 | 08 00 00"), id="empty"),
        pytest.param(h("06 | 08 00 03 72 2F 23"), id="r/#"),
    ],
)
def test_will_with_a_response_topic_that_is_not_a_topic_name_gets_connack_0x82(
    will_properties: bytes,
) -> None:
    # 3.1.3.2.6: the Response Topic is "used as the Topic Name for a response message":
    # at least one character [MQTT-4.7.3-1], no wildcard [MQTT-3.3.2-14]
    c = Client(make_core())
    # CONNECT "MQTT" 5, flags 0x06 (will, clean start), keep alive 60, no properties,
    # client id "c", Will Properties, will topic "t", will payload ""
    body = h("00 04 4D 51 54 54 | 05 | 06 | 00 3C | 00 | 00 01 63")
    body += will_properties + h("00 01 74 | 00 00")
    c.conn.receive_data(bytes((0x10, len(body))) + body)
    assert c.raw() == h("20 03 | 00 | 82 | 00")  # CONNACK 0x82, no session
    assert c.conn.wants_close


@pytest.mark.parametrize(
    "data",
    [
        # PUBLISH "t" QoS 0, properties: Response Topic ""
        pytest.param(h("30 07 00 01 74 | 03 | 08 00 00"), id="empty"),
        # Response Topic "r/+"
        pytest.param(h("30 0A 00 01 74 | 06 | 08 00 03 72 2F 2B"), id="r/+"),
    ],
)
def test_publish_with_a_response_topic_that_is_not_a_topic_name_gets_disconnect_0x82(
    data: bytes,
) -> None:
    core = make_core()
    received: list[Message] = []
    core.local_subscribe("t", received.append)
    c = connected(core=core)
    c.conn.receive_data(data)
    assert "Response Topic" in disconnect_sent(c, RC.PROTOCOL_ERROR)
    assert received == []


# ---------------------------------------------------------- MQTT 3.1 reserved flag


def test_mqtt_31_connect_with_the_reserved_flag_is_accepted() -> None:
    # 3.1 left connect flags bit 0 unused but did not forbid it; mosquitto accepts it.
    # CONNECT "MQIsdp" 3, flags 0x03 (reserved bit, clean session), keep alive 60, "c"
    c = Client(make_core(), V31)
    c.conn.receive_data(h("10 0F | 00 06 4D 51 49 73 64 70 | 03 | 03 | 00 3C | 00 01 63"))
    assert c.raw() == h("20 02 00 00")  # CONNACK accepted
    assert not c.conn.wants_close
    c.conn.receive_data(h("C0 00"))
    assert c.raw() == h("D0 00")
