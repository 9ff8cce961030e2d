"""Hand-built MQTT 3.1.1 packets and a fast parser for what the load generator receives.

The load generator does not use the broker's codec (or any MQTT client library): every
packet it sends is built here from bytes, once, before the timed part of a scenario, and
what it receives is parsed by :class:`DeliveryParser`, which splits a run of equally
sized PUBLISH packets with :func:`struct.iter_unpack` (one C call for a whole chunk) and
falls back to a small general parser for anything else.

Every benchmark payload carries the publisher's number, a sequence number and a check
value computed from both (:func:`check_value`), followed by a fixed filler, so that the
receiver can verify every single delivered message without a hash call.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Mapping

import attrs

__all__ = [
    "CONNACK_ACCEPTED",
    "DISCONNECT",
    "FILLER",
    "PAYLOAD",
    "PAYLOAD_HEAD",
    "PINGREQ",
    "PINGRESP",
    "DeliveryParser",
    "GeneralPacket",
    "WireError",
    "check_value",
    "connect_packet",
    "encode_remaining_length",
    "filler",
    "make_payload",
    "proxy_v2_header",
    "puback_packet",
    "proxy_v1_header",
    "publish_packet",
    "split_packets",
    "subscribe_packet",
    "ws_frame",
    "ws_mask",
    "WsDeframer",
]

#: Payload: source (publisher number), sequence number, check value, fixed filler.
PAYLOAD = struct.Struct(">III12s")
FILLER = b"trio-mqtt-bm"
#: The part of every payload before the filler (source, sequence number, check value).
PAYLOAD_HEAD = struct.Struct(">III")

PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
DISCONNECT = b"\xe0\x00"
#: CONNACK of MQTT 3.1.1: session present 0, return code 0 (accepted).
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"

PUBLISH = 0x3
PUBACK = 0x4
SUBACK = 0x9
PINGRESP_TYPE = 0xD

#: PROXY protocol v2 signature (12 bytes), then version 2 / command PROXY, INET / STREAM.
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_V2_PROXY_INET_STREAM = b"\x21\x11"


class WireError(Exception):
    """The broker sent bytes the load generator did not expect."""


def check_value(source: int, seq: int) -> int:
    """The 32-bit check value of message *seq* from *source* (cheap, order-sensitive)."""
    return (seq * 2654435761 + source * 40503 + 0x9E3779B9) & 0xFFFFFFFF


def filler(payload_size: int) -> bytes:
    """The fixed bytes after the head of a payload of *payload_size* bytes (>= 12)."""
    if payload_size < PAYLOAD_HEAD.size:
        raise ValueError(f"a benchmark payload has at least {PAYLOAD_HEAD.size} bytes")
    length = payload_size - PAYLOAD_HEAD.size
    return (FILLER * (length // len(FILLER) + 1))[:length]


def make_payload(source: int, seq: int, size: int = PAYLOAD.size) -> bytes:
    """The payload of message *seq* from publisher *source* (24 bytes unless *size*)."""
    if size == PAYLOAD.size:
        return PAYLOAD.pack(source, seq, check_value(source, seq), FILLER)
    return PAYLOAD_HEAD.pack(source, seq, check_value(source, seq)) + filler(size)


def encode_remaining_length(length: int) -> bytes:
    """MQTT variable byte integer (1..4 bytes)."""
    if not 0 <= length <= 268_435_455:
        raise ValueError(f"remaining length {length} out of range")
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_remaining_length(len(body)) + body


def connect_packet(client_id: str, *, keep_alive: int = 600, level: int = 4) -> bytes:
    """CONNECT with Clean Session (Clean Start) and no will, username or password: MQTT
    3.1.1 (*level* 4), or 5.0 (*level* 5, no properties)."""
    variable_header = _string("MQTT") + bytes([level, 0x02]) + struct.pack(">H", keep_alive)
    if level == 5:
        variable_header += b"\x00"  # property length
    return _packet(0x10, variable_header + _string(client_id))


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    """SUBSCRIBE with one topic filter."""
    return _packet(0x82, struct.pack(">H", packet_id) + _string(topic_filter) + bytes([qos]))


def publish_packet(
    topic: str | bytes,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int | None = None,
    retain: bool = False,
) -> bytes:
    """PUBLISH (no DUP); *packet_id* is required for QoS 1."""
    first = 0x30 | (qos << 1) | (1 if retain else 0)
    variable_header = _string(topic)
    if qos:
        if packet_id is None:
            raise ValueError("QoS 1 PUBLISH needs a packet id")
        variable_header += struct.pack(">H", packet_id)
    return _packet(first, variable_header + payload)


def puback_packet(packet_id: int) -> bytes:
    """PUBACK for *packet_id* (MQTT 3.1.1: no reason code)."""
    return b"\x40\x02" + struct.pack(">H", packet_id)


def proxy_v1_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """PROXY protocol v1 (text) header for TCP over IPv4."""
    return f"PROXY TCP4 {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def ws_mask(data: bytes, key: bytes) -> bytes:
    """*data* XOR-ed with the 4-byte masking *key* repeated (RFC 6455 section 5.3)."""
    size = len(data)
    keystream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keystream, "little")).to_bytes(
        size, "little"
    )


def ws_frame(data: bytes, key: bytes = b"\x12\x34\x56\x78") -> bytes:
    """One masked binary WebSocket frame (what a client sends) carrying *data*."""
    size = len(data)
    if size < 126:
        header = bytes([0x82, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([0x82, 0x80 | 126]) + struct.pack(">H", size)
    else:
        header = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", size)
    return header + key + ws_mask(data, key)


@attrs.define
class WsDeframer:
    """Turns the bytes of a server's WebSocket frames back into the MQTT byte stream."""

    closed: bool = False
    _buffer: bytearray = attrs.Factory(bytearray)

    def feed(self, data: bytes) -> bytes:
        """The payload of every complete data frame in what arrived so far."""
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        pos = 0
        while len(buffer) - pos >= 2:
            second = buffer[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if len(buffer) - pos < 4:
                    break
                (length,) = struct.unpack_from(">H", buffer, pos + 2)
                head = 4
            elif length == 127:
                if len(buffer) - pos < 10:
                    break
                (length,) = struct.unpack_from(">Q", buffer, pos + 2)
                head = 10
            key = b""
            if second & 0x80:
                key = bytes(buffer[pos + head : pos + head + 4])
                head += 4
            if len(buffer) - pos < head + length:
                break
            opcode = buffer[pos] & 0x0F
            payload = bytes(buffer[pos + head : pos + head + length])
            if opcode in (0x0, 0x1, 0x2):
                out.append(ws_mask(payload, key) if key else payload)
            elif opcode == 0x8:
                self.closed = True
            pos += head + length
        del buffer[:pos]
        return b"".join(out)


def proxy_v2_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """PROXY protocol v2 header, command PROXY, TCP over IPv4, no TLVs (28 bytes)."""
    # (inet_aton, not ipaddress: the load generator builds one per connection, and on a
    # 2-core machine its CPU is taken from the broker it measures)
    return _PROXY_V2_INET_PREFIX + _PROXY_V2_INET.pack(
        socket.inet_aton(source[0]), socket.inet_aton(destination[0]), source[1], destination[1]
    )


_PROXY_V2_INET = struct.Struct(">4s4sHH")
_PROXY_V2_INET_PREFIX = (
    PROXY_V2_SIGNATURE + PROXY_V2_PROXY_INET_STREAM + struct.pack(">H", _PROXY_V2_INET.size)
)


@attrs.frozen
class GeneralPacket:
    """One packet split off by :func:`split_packets`: first byte and body."""

    first_byte: int
    body: bytes

    @property
    def packet_type(self) -> int:
        return self.first_byte >> 4


def _read_remaining_length(buffer: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(remaining length, offset after it), or None if *buffer* ends inside it."""
    value = 0
    for index in range(4):
        if pos + index >= len(buffer):
            return None
        byte = buffer[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, pos + index + 1
    raise WireError("malformed remaining length")


def _take_packet(buffer: bytearray, pos: int) -> tuple[GeneralPacket, int] | None:
    """The complete packet at *pos* and the offset after it; None if it is incomplete."""
    header = _read_remaining_length(buffer, pos + 1)
    if header is None:
        return None
    length, start = header
    if start + length > len(buffer):
        return None
    return GeneralPacket(buffer[pos], bytes(buffer[start : start + length])), start + length


def split_packets(buffer: bytearray) -> list[GeneralPacket]:
    """Remove every complete packet from the front of *buffer* and return them."""
    packets: list[GeneralPacket] = []
    pos = 0
    while (taken := _take_packet(buffer, pos)) is not None:
        packet, pos = taken
        packets.append(packet)
    del buffer[:pos]
    return packets


def parse_publish(packet: GeneralPacket) -> tuple[bytes, int | None, bytes]:
    """(topic, packet id or None, payload) of a PUBLISH split off by :func:`split_packets`."""
    body = packet.body
    (topic_length,) = struct.unpack_from(">H", body, 0)
    topic = body[2 : 2 + topic_length]
    pos = 2 + topic_length
    packet_id: int | None = None
    if (packet.first_byte >> 1) & 0x03:
        (packet_id,) = struct.unpack_from(">H", body, pos)
        pos += 2
    return topic, packet_id, body[pos:]


@attrs.define
class DeliveryParser:
    """Parse and verify the PUBLISH packets one subscriber connection receives.

    All benchmark deliveries on a connection have the same size (fixed-width topics, a
    payload of *payload_size* bytes), so the common case is a run of identical-length
    packets, unpacked in one :func:`struct.iter_unpack` call and checked in a tight loop.
    Any other packet (SUBACK, PINGRESP, a PUBLISH of another size) goes through the
    general splitter and lands in ``other_packets`` (or is verified, if it is a PUBLISH).

    Two modes, chosen by which argument is given:

    - *source_topics* (live traffic): publisher ``source`` publishes on
      ``source_topics[source]`` only, and its sequence numbers must arrive as 0, 1, 2, ...
      (MQTT keeps one publisher's messages in order).
    - *topic_of_seq* (retained messages, any order): message ``seq`` lives on topic
      ``topic_of_seq(seq)`` and each (source, seq) must arrive exactly once.

    QoS 1 deliveries are acknowledged through ``pending_acks`` (PUBACK bytes that the
    caller sends and clears).
    """

    topic_length: int
    qos: int
    source_topics: Mapping[int, bytes] | None = None
    topic_of_seq: Callable[[int], bytes] | None = None
    payload_size: int = PAYLOAD.size
    received: int = 0
    error_count: int = 0
    errors: list[str] = attrs.Factory(list)
    other_packets: list[GeneralPacket] = attrs.Factory(list)
    pending_acks: bytearray = attrs.Factory(bytearray)
    next_seq: dict[int, int] = attrs.Factory(dict)
    seen: set[tuple[int, int]] = attrs.Factory(set)
    _buffer: bytearray = attrs.Factory(bytearray)
    _format: struct.Struct = attrs.field(init=False)
    _remaining_length: bytes = attrs.field(init=False)
    _filler: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if (self.source_topics is None) == (self.topic_of_seq is None):
            raise ValueError("give exactly one of source_topics and topic_of_seq")
        self._filler = filler(self.payload_size)
        packet_id = 2 if self.qos else 0
        body = 2 + self.topic_length + packet_id + self.payload_size
        self._remaining_length = encode_remaining_length(body)
        self._format = struct.Struct(
            f">B{len(self._remaining_length)}sH{self.topic_length}s{'H' if self.qos else ''}"
            f"III{len(self._filler)}s"
        )

    @property
    def packet_size(self) -> int:
        """Bytes of one benchmark PUBLISH on this connection."""
        return self._format.size

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete packet kept for the next :meth:`feed`."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Consume *data*; verify every complete PUBLISH in it."""
        buffer = self._buffer
        buffer += data
        size = self._format.size
        pos = 0
        while pos < len(buffer):
            count = (len(buffer) - pos) // size
            if (
                count
                and buffer[pos] >> 4 == PUBLISH
                and buffer[pos + 1 : pos + 1 + len(self._remaining_length)]
                == self._remaining_length
            ):
                done = self._verify_run(bytes(buffer[pos : pos + count * size]))
                pos += done * size
                if done == count:
                    continue
            # Not a run of benchmark packets here: take one packet the slow way.
            taken = _take_packet(buffer, pos)
            if taken is None:
                break
            packet, pos = taken
            if packet.packet_type == PUBLISH:
                self._verify_general(packet)
            else:
                self.other_packets.append(packet)
        del buffer[:pos]

    def _verify_run(self, chunk: bytes) -> int:
        """Verify a run of equal-size packets; return how many were benchmark PUBLISHes.

        The checks of :meth:`_check` are inlined for the passing case: this loop runs once
        per delivered message and must stay far faster than the broker.
        """
        remaining_length = self._remaining_length
        expected_filler = self._filler
        acks = self.pending_acks if self.qos else None
        next_seq = self.next_seq
        seen = self.seen
        source_topics = self.source_topics
        topic_of_seq = self.topic_of_seq
        done = 0
        for row in self._format.iter_unpack(chunk):
            if row[0] >> 4 != PUBLISH or row[1] != remaining_length:
                break
            if acks is None:
                _first, _rl, _tl, topic, source, seq, check, filler = row
            else:
                _first, _rl, _tl, topic, packet_id, source, seq, check, filler = row
                acks += b"\x40\x02" + packet_id.to_bytes(2, "big")
            done += 1
            if (
                check == (seq * 2654435761 + source * 40503 + 0x9E3779B9) & 0xFFFFFFFF
                and filler == expected_filler
            ):
                if source_topics is not None:
                    if next_seq.get(source, 0) == seq and topic == source_topics.get(source):
                        next_seq[source] = seq + 1
                        continue
                elif topic_of_seq is not None:
                    key = (source, seq)
                    if key not in seen and topic == topic_of_seq(seq):
                        seen.add(key)
                        continue
            self._check(topic, source, seq, check, filler)
        self.received += done
        return done

    def _error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < 10:
            self.errors.append(message)

    def _check(self, topic: bytes, source: int, seq: int, check: int, filler: bytes) -> None:
        """Verify one message; record what is wrong with it."""
        if check != check_value(source, seq) or filler != self._filler:
            self._error(f"bad payload check for source {source} seq {seq}")
            return
        if self.source_topics is not None:
            expected_topic = self.source_topics.get(source)
            expected_seq = self.next_seq.get(source, 0)
            if seq != expected_seq:
                self._error(f"source {source}: seq {seq} arrived, expected {expected_seq}")
            self.next_seq[source] = seq + 1
        else:
            assert self.topic_of_seq is not None
            expected_topic = self.topic_of_seq(seq)
            key = (source, seq)
            if key in self.seen:
                self._error(f"source {source} seq {seq} arrived twice")
            self.seen.add(key)
        if topic != expected_topic:
            self._error(f"source {source} seq {seq} arrived on topic {topic!r}")

    def _verify_general(self, packet: GeneralPacket) -> None:
        topic, packet_id, payload = parse_publish(packet)
        if packet_id is not None:
            self.pending_acks += puback_packet(packet_id)
        self.received += 1
        if len(payload) != self.payload_size:
            self._error(f"payload of {len(payload)} bytes on topic {topic!r}")
            return
        source, seq, check = PAYLOAD_HEAD.unpack_from(payload)
        self._check(topic, source, seq, check, payload[PAYLOAD_HEAD.size :])
