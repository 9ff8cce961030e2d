"""Messages as NATS headers and back; the filter that drops repeated deliveries."""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mqtt.broker.message import Message, StoredMessage
from trio_mqtt.cluster.envelope import (
    EnvelopeError,
    Origin,
    RepeatFilter,
    decode_peer,
    decode_wire,
    encode_peer,
    encode_wire,
    message_from_nats,
    message_headers,
)
from trio_mqtt.mqtt.packets import NO_PROPERTIES, Properties
from trio_mqtt.mqtt.properties import PropertyContext, encode_properties
from trio_mqtt.peer import LOCAL_PEER, Endpoint, PeerInfo

HEADER_VALUE = re.compile(r"[!-~]+")  # printable ASCII: nothing to trim, fold or split

CLIENT = Endpoint("203.0.113.7", 51234)
PROXY = Endpoint("10.0.0.1", 40000)
PEER = PeerInfo.from_socket("default", "tcp", Endpoint("127.0.0.1", 1883), CLIENT)
PROXIED_PEER = PeerInfo(
    listener="behind-haproxy",
    transport="tls",
    local=Endpoint("127.0.0.1", 8883),
    remote=PROXY,
    client=CLIENT,
    proxy=PROXY,
)

EVERY_PUBLISH_PROPERTY = Properties(
    payload_format_indicator=1,
    message_expiry_interval=60,
    content_type="text/plain; charset=utf-8",
    response_topic="réponse/ä/\u65e5",
    correlation_data=b"\x00\xff\r\n|%",
    user_properties=(("ключ", "значение"), ("k", "v"), ("k", "v2"), ("", ""), ("a\r\nb", "|")),
)


def round_trip(
    message: Message, *, sent: float = 10.0, received: float = 500.0
) -> tuple[Message, Origin, dict[str, str]]:
    headers = message_headers(message, origin="node-a", sequence=42, now=sent)
    for name, value in headers.items():
        assert HEADER_VALUE.fullmatch(value), (name, value)
    back, origin = message_from_nats(message.topic, message.payload, headers, now=received)
    assert origin == Origin("node-a", 42)
    return back, origin, headers


def expected_peer(peer: PeerInfo) -> PeerInfo:
    """What crosses the cluster of a peer: listener, transport, client and proxy."""
    if peer is LOCAL_PEER:
        return peer
    return PeerInfo(
        listener=peer.listener,
        transport=peer.transport,
        remote=peer.proxy if peer.proxy is not None else peer.client,
        client=peer.client,
        proxy=peer.proxy,
    )


def test_plain_message() -> None:
    message = Message("a/b", b"21.5", publisher="sensor-1", peer=PEER, created=3.0)
    back, _, headers = round_trip(message)
    assert headers == {
        "o": "node-a",
        "n": "42",
        "c": "sensor-1",
        "a": "tcp|default|203.0.113.7:51234|",
    }
    assert back == attrs.evolve(message, created=500.0, peer=expected_peer(PEER))
    assert back.payload is message.payload  # the payload is passed along, not copied


def test_in_process_message_needs_only_the_origin() -> None:
    message = Message("a", b"")
    back, _, headers = round_trip(message)
    assert headers == {"o": "node-a", "n": "42"}
    assert back == attrs.evolve(message, created=500.0)
    assert back.peer is LOCAL_PEER
    assert back.properties is NO_PROPERTIES


@pytest.mark.parametrize(("qos", "retain"), [(0, True), (1, False), (2, True), (1, True)])
def test_qos_and_retain(qos: int, retain: bool) -> None:
    message = Message("a", b"x", qos=qos, retain=retain, created=10.0)
    back, _, headers = round_trip(message)
    assert back == attrs.evolve(message, created=500.0)
    assert ("r" in headers) == retain


def test_every_publish_property() -> None:
    message = Message(
        "a", b"x", qos=1, properties=EVERY_PUBLISH_PROPERTY, peer=PROXIED_PEER, created=0.0
    )
    back, _, headers = round_trip(message, sent=10.5, received=500.0)
    assert headers["e"] == "50"  # the expiry left when sent, in the receiver's clock
    assert "p" in headers
    expected = attrs.evolve(EVERY_PUBLISH_PROPERTY, message_expiry_interval=50)
    assert back == attrs.evolve(
        message, properties=expected, created=500.0, peer=expected_peer(PROXIED_PEER)
    )
    assert not back.expired(549.9)
    assert back.expired(550.0)


def test_expiry_alone_needs_no_property_block() -> None:
    message = Message("a", properties=Properties(message_expiry_interval=5), created=0.0)
    back, _, headers = round_trip(message, sent=7.0)
    assert headers["e"] == "0" and "p" not in headers
    assert back.properties == Properties(message_expiry_interval=0)
    assert back.expired(500.0)


def test_properties_without_expiry() -> None:
    props = Properties(content_type="x", user_properties=(("a", "b"),))
    back, _, headers = round_trip(Message("a", properties=props))
    assert "e" not in headers
    assert back.properties == props


@pytest.mark.parametrize(
    "client_id",
    [
        "a\r\nb",
        "x:y",
        "ü日本",
        "",
        "%",
        "%41",
        "|",
        " lead",
        "trail ",
        "a b",
        "\t",
        "\x7f",
        "~",
        "-",
    ],
)
def test_client_ids(client_id: str) -> None:
    back, _, _ = round_trip(Message("a", publisher=client_id))
    assert back.publisher == client_id


@pytest.mark.parametrize(
    "peer",
    [
        PEER,
        PROXIED_PEER,
        LOCAL_PEER,
        PeerInfo(listener="v6", transport="ws", client=Endpoint("2001:db8::1", 1883)),
        PeerInfo(listener="unix", transport="tcp", client=Endpoint("/run/mqtt sock|x", 0)),
        PeerInfo(
            listener="odd", transport="tcp", client=Endpoint("[x]", 1), proxy=Endpoint("[a:b]", 2)
        ),
        PeerInfo(listener="l|%é ", transport="", client=None, proxy=PROXY),
        PeerInfo(listener="", transport="tcp"),
    ],
)
def test_peers(peer: PeerInfo) -> None:
    if peer is not LOCAL_PEER:
        assert decode_peer(encode_peer(peer)) == expected_peer(peer)
    back, _, _ = round_trip(Message("a", peer=peer))
    assert back.peer == expected_peer(peer)


def test_encode_peer_answers_from_its_cache_for_the_same_object() -> None:
    assert encode_peer(PROXIED_PEER) == "tls|behind-haproxy|203.0.113.7:51234|10.0.0.1:40000"
    assert encode_peer(PROXIED_PEER) is encode_peer(PROXIED_PEER)
    other = attrs.evolve(PROXIED_PEER, listener="other")
    assert encode_peer(other) == "tls|other|203.0.113.7:51234|10.0.0.1:40000"


def test_later_peer_fields_are_ignored() -> None:
    assert decode_peer("tcp|l|1.2.3.4:5||future|fields") == PeerInfo(
        listener="l", transport="tcp", remote=Endpoint("1.2.3.4", 5), client=Endpoint("1.2.3.4", 5)
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tcp|l",
        "tcp|l|1.2.3.4",
        "tcp|l|1.2.3.4|",  # no port
        "tcp|l|1.2.3.4:|",
        "tcp|l|1.2.3.4:65536|",
        "tcp|l|1.2.3.4:+80|",
        "tcp|l|1.2.3.4:000080|",
        "tcp|l|::1:80|",  # an IPv6 host without brackets
        "tcp|l||::1]:80",
        "t cp|l||",
        "tcp|é||",
        "tcp|%zz||",
        "tcp|%6C||",  # "l" escaped although it needs no escaping
    ],
)
def test_malformed_peers(value: str) -> None:
    with pytest.raises(EnvelopeError):
        decode_peer(value)


def props_header(properties: Properties) -> str:
    return base64.b64encode(encode_properties(properties, PropertyContext.PUBLISH, "x")).decode()


GOOD = {"o": "node-a", "n": "1"}


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        (None, "no headers"),
        ({}, "origin"),
        ({"o": "node-a"}, "origin"),
        ({"n": "1"}, "origin"),
        ({"o": "", "n": "1"}, "origin"),
        ({**GOOD, "n": ""}, "sequence"),
        ({**GOOD, "n": "-1"}, "sequence"),
        ({**GOOD, "n": "1.0"}, "sequence"),
        ({**GOOD, "n": " 1"}, "sequence"),
        ({**GOOD, "n": "١٢"}, "sequence"),  # digits, but not ASCII ones
        ({**GOOD, "n": "9" * 30}, "sequence"),
        ({**GOOD, "n": str(2**64)}, "sequence"),
        ({**GOOD, "q": "3"}, "QoS"),
        ({**GOOD, "q": ""}, "QoS"),
        ({**GOOD, "r": "0"}, "retain"),
        ({**GOOD, "r": "true"}, "retain"),
        ({**GOOD, "c": "a b"}, "client id"),
        ({**GOOD, "c": "é"}, "client id"),
        ({**GOOD, "c": "%zz"}, "client id"),
        ({**GOOD, "c": "%4"}, "client id"),
        ({**GOOD, "c": "%61"}, "client id"),
        ({**GOOD, "c": "%FF"}, "client id"),
        ({**GOOD, "e": "-1"}, "expiry"),
        ({**GOOD, "e": "4294967296"}, "expiry"),
        ({**GOOD, "e": "soon"}, "expiry"),
        ({**GOOD, "p": "!!!"}, "base64"),
        ({**GOOD, "p": "AQ"}, "base64"),  # bad padding
        ({**GOOD, "p": base64.b64encode(b"\x05\x01").decode()}, "properties"),
        ({**GOOD, "p": base64.b64encode(b"\x02\x01\x05").decode()}, "properties"),  # bad flag
        ({**GOOD, "p": base64.b64encode(b"\x02\x01\x01\x00").decode()}, "stray"),
        ({**GOOD, "p": base64.b64encode(b"\x02\x27\x01").decode()}, "properties"),  # not in PUBLISH
        ({**GOOD, "p": props_header(Properties(topic_alias=3))}, "per-hop"),
        ({**GOOD, "p": props_header(Properties(subscription_identifiers=(1,)))}, "per-hop"),
        ({**GOOD, "p": props_header(Properties(message_expiry_interval=9))}, "expiry"),
        ({**GOOD, "a": "nonsense"}, "peer"),
    ],
)
def test_malformed_headers(headers: dict[str, str] | None, match: str) -> None:
    with pytest.raises(EnvelopeError, match=match):
        message_from_nats("a", b"", headers, now=0.0)


def test_envelope_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        message_from_nats("a", b"", {}, now=0.0)


def test_other_headers_are_ignored() -> None:
    headers = {**GOOD, "Nats-Sequence": "7", "Nats-Stream": "q", "q": "0"}
    back, origin = message_from_nats("a", b"x", headers, now=1.0)
    assert back == Message("a", b"x", created=1.0)
    assert origin == Origin("node-a", 1)


@given(st.dictionaries(st.sampled_from("oncqrepaz"), st.text(max_size=12)))
def test_any_headers_give_a_message_or_an_envelope_error(headers: dict[str, str]) -> None:
    with contextlib.suppress(EnvelopeError):
        message_from_nats("a", b"", headers, now=0.0)


mqtt_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=10
)
endpoints = st.none() | st.builds(Endpoint, st.text(max_size=12), st.integers(0, 65535))
peers = st.just(LOCAL_PEER) | st.builds(
    PeerInfo,
    listener=st.text(max_size=8),
    transport=st.text(max_size=4),
    client=endpoints,
    proxy=endpoints,
)
properties = st.builds(
    Properties,
    payload_format_indicator=st.none() | st.integers(0, 1),
    message_expiry_interval=st.none() | st.integers(0, 0xFFFF_FFFF),
    content_type=st.none() | mqtt_text,
    # a topic name: a Response Topic with a wildcard is a protocol error
    response_topic=st.none() | mqtt_text.filter(lambda text: text and not set(text) & {"+", "#"}),
    correlation_data=st.none() | st.binary(max_size=10),
    user_properties=st.lists(st.tuples(mqtt_text, mqtt_text), max_size=3).map(tuple),
)


@given(
    topic=mqtt_text.filter(bool),
    payload=st.binary(max_size=10),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    props=properties,
    publisher=st.none() | st.text(max_size=10),
    peer=peers,
    sequence=st.integers(0, 2**64 - 1),
)
def test_messages_round_trip(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    props: Properties,
    publisher: str | None,
    peer: PeerInfo,
    sequence: int,
) -> None:
    message = Message(topic, payload, qos, retain, props, publisher, peer, created=5.0)
    headers = message_headers(message, origin="n1", sequence=sequence, now=5.0)
    for value in headers.values():
        assert HEADER_VALUE.fullmatch(value)
    back, origin = message_from_nats(topic, payload, headers, now=9.0)
    assert origin == Origin("n1", sequence)
    assert back == attrs.evolve(message, created=9.0, peer=expected_peer(peer))
    # the same fields as one line in front of the payload (live traffic between nodes)
    wire = encode_wire(message, origin="n1", sequence=sequence, now=5.0)
    assert wire.endswith(b"\n" + payload)
    line = wire[: -len(payload) - 1].decode("ascii")
    assert {field[0]: field[1:] for field in line.split(" ")} == headers  # the same fields
    assert decode_wire(topic, wire, now=9.0) == (back, origin)
    assert decode_wire(topic, wire, now=9.0) == (back, origin)  # constant part remembered


def test_wire_line_puts_the_sequences_first() -> None:
    message = Message("t", b"data", 1, True, publisher="pub")
    assert encode_wire(message, origin="n1", sequence=7, now=0.0) == b"n7 on1 q1 r1 cpub\ndata"
    stored = StoredMessage.of(message, 99)
    assert encode_wire(stored, origin="n1", sequence=8, now=0.0) == b"n8 s99 on1 q1 r1 cpub\ndata"


def test_wire_constant_part_is_decoded_once_per_line_layout() -> None:
    """Lines sharing the part from the origin on differ only in their sequences."""
    first, origin = decode_wire("t", b"n1 ocache-1 q1 cpub\nx", now=1.0)
    assert (first, origin) == (
        Message("t", b"x", 1, publisher="pub", created=1.0),
        Origin("cache-1", 1),
    )
    message, origin = decode_wire("t", b"n2 ocache-1 q1 cpub\ny", now=2.0)
    assert message == Message("t", b"y", 1, publisher="pub", created=2.0)
    assert message.properties is first.properties and origin == Origin("cache-1", 2)
    message, origin = decode_wire("t", b"n3 s44 ocache-1 q1 cpub\nz", now=3.0)
    assert message == StoredMessage("t", b"z", 1, False, publisher="pub", created=3.0, sequence=44)
    assert origin == Origin("cache-1", 3)
    # other fields in front of the origin are not taken from the remembered part
    message, _ = decode_wire("t", b"n4 r1 ocache-1 q1 cpub\nz", now=3.0)
    assert message.retain
    message, _ = decode_wire("t", b"n5 q2 ocache-1 q1 cpub\nz", now=3.0)
    assert message.qos == 1  # the later q wins, as in any line
    # a sequence after the origin is the one that counts, and such a part is not remembered
    for _ in range(2):
        assert decode_wire("t", b"n6 ocache-2 n9\nz", now=3.0)[1] == Origin("cache-2", 9)
        assert decode_wire("t", b"n6 ocache-3 s5\nz", now=3.0)[0].sequence == 5


@pytest.mark.parametrize(
    "data",
    [
        b"nx ocache-4\np",
        b"n ocache-4\np",
        b"n1x ocache-4\np",
        b"n1 sx ocache-4\np",
        b"n1 s ocache-4\np",
        b"n%d ocache-4\np" % 2**64,
        b"n1 s%d ocache-4\np" % 2**64,
        b"n123456789012345678901 ocache-4\np",
    ],
)
def test_bad_sequences_are_refused_with_a_remembered_constant_part(data: bytes) -> None:
    decode_wire("t", b"n1 ocache-4\np", now=0.0)
    decode_wire("t", b"n1 s1 ocache-4\np", now=0.0)
    with pytest.raises(EnvelopeError, match="sequence"):
        decode_wire("t", data, now=0.0)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"no line at all", "no envelope line"),
        (b"o\xffx n1\npayload", "not ASCII"),
        (b"n1\npayload", "lacks its origin"),
        (b"on1 nx\npayload", "sequence"),
        (b"on1 n1 q7\npayload", "QoS"),
    ],
)
def test_malformed_wire_payloads(data: bytes, match: str) -> None:
    with pytest.raises(EnvelopeError, match=match):
        decode_wire("t", data, now=0.0)


@given(data=st.binary(max_size=60))
def test_any_wire_payload_gives_a_message_or_an_envelope_error(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        decode_wire("t", data, now=0.0)


def test_repeats_are_dropped() -> None:
    repeats = RepeatFilter()
    assert not repeats.seen(Origin("a", 5))
    assert repeats.seen(Origin("a", 5))
    assert not repeats.seen(Origin("b", 5))  # another origin's 5
    assert not repeats.seen(Origin("a", 7))
    assert not repeats.seen(Origin("a", 6))  # late but new
    assert repeats.seen(Origin("a", 6))
    assert repeats.seen(Origin("a", 7))
    assert repeats.seen(Origin("b", 5))
    assert repeats.seen(Origin("a", 5))


def test_interleaved_origins_and_subscriptions() -> None:
    """Two subscriptions deliver each message of three origins: half the deliveries drop."""
    repeats = RepeatFilter()
    origins = [Origin(node, sequence) for sequence in range(100) for node in "xyz"]
    delivered = [o for o in origins for _ in range(2)]
    assert [o for o in delivered if not repeats.seen(o)] == origins


def test_window() -> None:
    repeats = RepeatFilter(window=8)
    assert not repeats.seen(Origin("a", 100))
    assert not repeats.seen(Origin("a", 93))  # 7 behind: inside the window
    assert repeats.seen(Origin("a", 92))  # 8 behind: too old, counts as seen
    assert repeats.seen(Origin("a", 0))
    assert not repeats.seen(Origin("a", 107))  # shifts 100 to 7 behind
    assert repeats.seen(Origin("a", 100))
    assert repeats.seen(Origin("a", 93))  # now too old
    assert not repeats.seen(Origin("a", 10**18))  # a huge jump costs nothing
    assert repeats.seen(Origin("a", 107))
    assert not repeats.seen(Origin("a", 10**18 - 1))
    assert repeats.seen(Origin("a", 10**18 - 1))


def test_window_stays_bounded() -> None:
    repeats = RepeatFilter(window=64)
    for sequence in range(10_000):
        assert not repeats.seen(Origin("a", sequence))
    assert repeats._origins["a"].mask.bit_length() <= 64


def test_in_order_sequences_with_a_full_window() -> None:
    """The common case (one origin, each sequence one above the last) keeps every rule."""
    repeats = RepeatFilter(window=8)
    assert not repeats.repeated("a", 1)
    for sequence in range(2, 30):
        assert not repeats.repeated("a", sequence)
        assert repeats.repeated("a", sequence)
        assert repeats.repeated("a", sequence - 1)
    assert repeats._origins["a"].mask == 0xFF
    assert not repeats.repeated("b", 1)
    assert repeats.repeated("a", 29)  # not mistaken for b's state
    assert not repeats.repeated("a", 31)  # a gap: 30 is still new
    assert not repeats.repeated("a", 30)
    assert not repeats.repeated("a", 32)


def test_forgetting_the_last_origin() -> None:
    repeats = RepeatFilter()
    assert not repeats.repeated("a", 1)
    repeats.forget("a")
    assert len(repeats) == 0
    assert not repeats.repeated("a", 1)
    assert len(repeats) == 1


def test_number_of_origins_is_bounded() -> None:
    repeats = RepeatFilter(max_origins=3)
    for node in "abc":
        repeats.seen(Origin(node, 1))
    assert repeats.seen(Origin("a", 1))  # a is now the most recently heard from
    assert not repeats.seen(Origin("d", 1))  # forgets b, the least recent
    assert len(repeats) == 3
    assert not repeats.seen(Origin("b", 1))  # forgotten: passes again (forgets c)
    assert repeats.seen(Origin("a", 1))
    assert repeats.seen(Origin("d", 1))
    assert len(repeats) == 3
    repeats.forget("a")
    assert len(repeats) == 2
    assert not repeats.seen(Origin("a", 1))


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="window"):
        RepeatFilter(window=0)
    with pytest.raises(ValueError, match="max_origins"):
        RepeatFilter(max_origins=0)


@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 40)), max_size=60))
def test_repeat_filter_against_a_set(deliveries: list[tuple[str, int]]) -> None:
    """With a window wider than any gap, it answers exactly like remembering everything."""
    repeats = RepeatFilter(window=64)
    everything: set[tuple[str, int]] = set()
    for node, sequence in deliveries:
        assert repeats.seen(Origin(node, sequence)) == ((node, sequence) in everything)
        everything.add((node, sequence))


class Pairs:
    """Headers as a NATS client may hold them: (name, value) pairs, not a mapping."""

    def __init__(self, items: dict[str, str]) -> None:
        self.items = tuple(items.items())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)


def test_headers_as_pairs() -> None:
    message = Message("a", b"x", qos=2, publisher="c", peer=PEER, created=1.0)
    headers = message_headers(message, origin="node-a", sequence=3, now=1.0)
    for form in (Pairs(headers), list(headers.items())):
        back, origin = message_from_nats("a", b"x", form, now=1.0)
        assert back == attrs.evolve(message, peer=expected_peer(PEER))
        assert origin == Origin("node-a", 3)
    with pytest.raises(EnvelopeError, match="origin"):
        message_from_nats("a", b"x", [], now=1.0)
