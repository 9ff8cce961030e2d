"""Property tests: decode(encode(p)) == p for every packet type and version, any split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mqtt.errors import LocalProtocolError
from trio_mqtt.mqtt import codec
from trio_mqtt.mqtt.codec import PacketReader, encode, encode_publish
from trio_mqtt.mqtt.packets import (
    NO_PROPERTIES,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Properties,
    ProtocolVersion,
    Publish,
    Subscribe,
    SubscriptionRequest,
)

from .strategies import VERSIONS, client_packets, connects, publishes, server_packets

versions = pytest.mark.parametrize("version", VERSIONS, ids=[v.name for v in VERSIONS])


def decode_one(data: bytes, reader: PacketReader) -> Packet:
    packets = reader.feed(data)
    assert len(packets) == 1, packets
    assert reader.buffered == 0
    return packets[0]


@versions
@given(data=st.data())
def test_connect_roundtrip_teaches_the_reader_its_version(
    version: ProtocolVersion, data: st.DataObject
) -> None:
    connect = data.draw(connects(version))
    reader = PacketReader()
    assert decode_one(encode(connect, version), reader) == connect
    assert reader.protocol_version == version


@versions
@given(data=st.data())
def test_client_packet_roundtrip(version: ProtocolVersion, data: st.DataObject) -> None:
    packet = data.draw(client_packets(version))
    reader = PacketReader(protocol_version=version)
    assert decode_one(encode(packet, version), reader) == packet


@versions
@given(data=st.data())
def test_server_packet_roundtrip(version: ProtocolVersion, data: st.DataObject) -> None:
    packet = data.draw(server_packets(version))
    reader = PacketReader(protocol_version=version, server_side=False)
    assert decode_one(encode(packet, version), reader) == packet


@versions
@given(data=st.data())
def test_encode_publish_matches_encode(version: ProtocolVersion, data: st.DataObject) -> None:
    publish = data.draw(publishes(version))
    fast = encode_publish(
        publish.topic,
        publish.payload,
        publish.qos,
        publish.retain,
        publish.dup,
        publish.packet_id,
        publish.properties,
        version,
    )
    assert fast == encode(publish, version)
    assert decode_one(fast, PacketReader(protocol_version=version)) == publish


@versions
@given(data=st.data())
def test_append_plain_publish_matches_encode_publish(
    version: ProtocolVersion, data: st.DataObject
) -> None:
    """The in-place writer gives the same bytes, and refuses exactly what is too big."""
    publish = data.draw(publishes(version))
    payload = publish.payload * data.draw(st.sampled_from([1, 40, 3000]))
    expected = encode_publish(
        publish.topic,
        payload,
        publish.qos,
        publish.retain,
        False,
        publish.packet_id,
        NO_PROPERTIES,
        version,
    )
    max_size = data.draw(st.sampled_from([len(expected) - 1, len(expected), 10**7]))
    out = bytearray(b"before")
    fits = codec.append_plain_publish(
        out,
        publish.topic,
        payload,
        publish.qos,
        publish.retain,
        publish.packet_id,
        version,
        max_size,
    )
    assert fits is (len(expected) <= max_size)
    assert bytes(out) == b"before" + (expected if fits else b"")


@versions
@settings(max_examples=50)
@given(data=st.data())
def test_stream_split_at_random_points(version: ProtocolVersion, data: st.DataObject) -> None:
    """A CONNECT then several packets, fed in random chunks, decode to the same packets."""
    packets: list[Packet] = [data.draw(connects(version))]
    packets += data.draw(st.lists(client_packets(version), min_size=1, max_size=6))
    stream = b"".join(encode(packet, version) for packet in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = PacketReader()
    decoded: list[Packet] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoded += reader.feed(stream[start:cut])
        start = cut
    assert decoded == packets
    assert reader.buffered == 0


@versions
def test_stream_split_at_every_position(version: ProtocolVersion) -> None:
    v5 = version == ProtocolVersion.V5
    packets: list[Packet] = [
        Connect("client", version, username="u", password=b"p"),
        Subscribe(1, (SubscriptionRequest("a/+", 1),)),
        Publish("a/b", b"x" * 200, qos=1, packet_id=2),  # two-byte remaining length
        Publish(
            "a/c",
            b"",
            properties=Properties(user_properties=(("k", "v"),)) if v5 else Properties(),
        ),
        Pingreq(),
        Disconnect(),
    ]
    stream = b"".join(encode(packet, version) for packet in packets)
    for cut in range(len(stream) + 1):
        reader = PacketReader()
        decoded = reader.feed(stream[:cut])
        assert reader.buffered + sum(len(encode(p, version)) for p in decoded) == cut
        decoded += reader.feed(stream[cut:])
        assert decoded == packets, cut


def test_byte_by_byte() -> None:
    version = ProtocolVersion.V5
    packets: list[Packet] = [
        Connect("c", version),
        Publish("t", b"payload", qos=2, packet_id=7),
    ]
    stream = b"".join(encode(packet, version) for packet in packets)
    reader = PacketReader()
    decoded: list[Packet] = []
    for index in range(len(stream)):
        decoded += reader.feed(stream[index : index + 1])
    assert decoded == packets


def test_feed_accepts_bytearray_and_memoryview() -> None:
    data = encode(Publish("t", b"x"), ProtocolVersion.V311)
    reader = PacketReader(protocol_version=ProtocolVersion.V311)
    assert reader.feed(bytearray(data[:2])) == []
    assert reader.feed(memoryview(data)[2:]) == [Publish("t", b"x")]


def test_large_payload_is_buffered_until_complete() -> None:
    version = ProtocolVersion.V311
    publish = Publish("big", bytes(range(256)) * 4096)  # 1 MiB payload
    data = encode(publish, version)
    reader = PacketReader(protocol_version=version)
    chunk = 65536
    decoded: list[Packet] = []
    for start in range(0, len(data), chunk):
        decoded += reader.feed(data[start : start + chunk])
        if start + chunk < len(data):
            assert decoded == []
            assert reader.buffered == start + chunk
    assert decoded == [publish]
    assert reader.buffered == 0


def test_encoded_topic_cache_stays_bounded_and_correct() -> None:
    """encode_publish caches encoded topic names; the cache is emptied when full."""
    v311 = ProtocolVersion.V311
    for n in range(codec._TOPIC_BYTES_SIZE + 10):
        topic = f"t/{n}/é" if n % 2 else f"t/{n}"
        for _ in range(2):  # encoded once, then from the cache
            data = encode_publish(topic, b"p", 0, False, False, None, NO_PROPERTIES, v311)
            assert decode_one(data, PacketReader(protocol_version=v311)) == Publish(topic, b"p")
        assert len(codec._TOPIC_BYTES) <= codec._TOPIC_BYTES_SIZE


def test_invalid_topic_is_refused_every_time() -> None:
    """A topic that cannot be encoded is never cached: the second try is refused too."""
    for _ in range(2):
        with pytest.raises(LocalProtocolError):
            encode_publish("a\x00b", b"", 0, False, False, None, NO_PROPERTIES, ProtocolVersion.V5)
