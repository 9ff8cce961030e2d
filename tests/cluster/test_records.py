"""A retained message as a bucket value: everything the node knows survives the trip."""

from __future__ import annotations

import pytest

from trio_mqtt.broker.message import Message
from trio_mqtt.cluster.envelope import EnvelopeError
from trio_mqtt.cluster.records import (
    Owner,
    decode_owner,
    decode_retained,
    decode_will,
    encode_owner,
    encode_retained,
    encode_will,
)
from trio_mqtt.mqtt.packets import Properties
from trio_mqtt.peer import Endpoint, PeerInfo


def test_round_trip_keeps_publisher_properties_and_real_address() -> None:
    peer = PeerInfo(
        remote=Endpoint("10.0.0.7", 51000),
        local=Endpoint("10.0.0.1", 1883),
        proxy=Endpoint("192.0.2.10", 40000),
        listener="lb",
        transport="tcp",
    )
    message = Message(
        topic="a/b",
        payload=b"\n\npayload with the separator inside\n\n",
        qos=1,
        retain=True,
        properties=Properties(
            content_type="text/plain",
            user_properties=(("k", "v é"),),
            message_expiry_interval=100,
        ),
        publisher="client \r\n 1",
        peer=peer,
        created=50.0,
    )
    value = encode_retained(message, "n1~abcd", now=80.0)
    back = decode_retained("a/b", value, now=1000.0)
    assert back.payload == message.payload
    assert (back.qos, back.retain, back.publisher) == (1, True, "client \r\n 1")
    assert back.properties.content_type == "text/plain"
    assert back.properties.user_properties == (("k", "v é"),)
    assert back.properties.message_expiry_interval == 70  # 30 s of its 100 were gone
    assert back.created == 1000.0
    assert back.peer.proxy == Endpoint("192.0.2.10", 40000)
    assert back.peer.listener == "lb"


@pytest.mark.parametrize(
    "value",
    [b"no separator", b"\xff\xfe\n\npayload", b"o:n1\nbroken line\n\nx", b"q:9\nn:0\no:x\n\np"],
)
def test_malformed_values_are_envelope_errors(value: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_retained("t", value, now=0.0)


def test_a_will_round_trips_with_its_delay_and_topic() -> None:
    will = Message("wills/a b.c", b"gone", qos=1, publisher="c1", created=0.0)
    message, delay = decode_will(encode_will(will, 30, "n1~x", now=0.0), now=7.0)
    assert (message.topic, message.payload, message.qos, message.publisher) == (
        "wills/a b.c",
        b"gone",
        1,
        "c1",
    )
    assert delay == 30
    assert message.created == 7.0


@pytest.mark.parametrize("value", [b"x m.t\no:n\nn:0\n\np", b"-1 m.t\no:n\nn:0\n\np", b"5\n"])
def test_malformed_wills_are_value_errors(value: bytes) -> None:
    with pytest.raises(ValueError):
        decode_will(value, now=0.0)


def test_an_owner_round_trips() -> None:
    owner = Owner("n1", "n1-0a1b2c3d", 'client/with "quotes" and é')
    assert decode_owner(encode_owner(owner)) == owner


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b'["n1", "n1-x", "c"]',
        b'{"node": "n1", "origin": "n1-x"}',
        b'{"node": "n1", "origin": 7, "client": "c"}',
    ],
)
def test_malformed_owners_are_value_errors(value: bytes) -> None:
    with pytest.raises(ValueError):
        decode_owner(value)
