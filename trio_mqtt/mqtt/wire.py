"""MQTT primitive data types (MQTT 5.0 section 1.5, same bytes in 3.1.1).

Readers take a buffer, a start offset and the end offset of the current packet (never
the end of the buffer: a field must not run into the next packet) and return
``(value, next_offset)``. They raise ``RemoteProtocolError`` with reason code
MALFORMED_PACKET when the bytes cannot be parsed; ``packet`` and ``field`` only feed the
error message ("PUBLISH: topic name: ...").

Writers return the encoded bytes and raise ``LocalProtocolError`` for values the
protocol cannot carry.
"""

from __future__ import annotations

import struct
from typing import TypeAlias

from trio_mqtt.errors import LocalProtocolError, RemoteProtocolError
from trio_mqtt.mqtt.reason_codes import ReasonCode

Buffer: TypeAlias = bytes | bytearray | memoryview

MAX_U8 = 0xFF
MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFF_FFFF
MAX_VARINT = 268_435_455  # four bytes of seven bits
MAX_VARINT_BYTES = 4

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")

_SMALL_VARINTS = tuple(bytes((i,)) for i in range(128))


def malformed(message: str) -> RemoteProtocolError:
    """A ``RemoteProtocolError`` for bytes that cannot be parsed."""
    return RemoteProtocolError(message, ReasonCode.MALFORMED_PACKET)


def protocol_error(message: str) -> RemoteProtocolError:
    """A ``RemoteProtocolError`` for parsed data the protocol does not allow."""
    return RemoteProtocolError(message, ReasonCode.PROTOCOL_ERROR)


def _past_end(packet: str, field: str, needed: int) -> RemoteProtocolError:
    return malformed(f"{packet}: {field}: needs {needed} more byte(s) than the packet holds")


# ---------------------------------------------------------------------------- readers


def read_u8(buf: Buffer, pos: int, end: int, packet: str, field: str) -> tuple[int, int]:
    """A one-byte unsigned integer."""
    if pos >= end:
        raise _past_end(packet, field, 1)
    return buf[pos], pos + 1


def read_u16(buf: Buffer, pos: int, end: int, packet: str, field: str) -> tuple[int, int]:
    """A Two Byte Integer, big-endian."""
    if pos + 2 > end:
        raise _past_end(packet, field, pos + 2 - end)
    return U16.unpack_from(buf, pos)[0], pos + 2


def read_u32(buf: Buffer, pos: int, end: int, packet: str, field: str) -> tuple[int, int]:
    """A Four Byte Integer, big-endian."""
    if pos + 4 > end:
        raise _past_end(packet, field, pos + 4 - end)
    return U32.unpack_from(buf, pos)[0], pos + 4


def read_varint(buf: Buffer, pos: int, end: int, packet: str, field: str) -> tuple[int, int]:
    """A Variable Byte Integer: at most four bytes, minimally encoded [MQTT-1.5.5-1]."""
    value = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise _past_end(packet, field, 1)
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if pos - start == MAX_VARINT_BYTES:
            raise malformed(f"{packet}: {field}: variable byte integer longer than 4 bytes")
    if byte == 0 and pos - start > 1:
        raise malformed(
            f"{packet}: {field}: variable byte integer is not minimally encoded [MQTT-1.5.5-1]"
        )
    return value, pos


def decode_utf8(raw: Buffer, packet: str, field: str) -> str:
    """Validate and decode UTF-8 string data [MQTT-1.5.4-1] [MQTT-1.5.4-2]."""
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(f"{packet}: {field}: invalid UTF-8 ({exc.reason})") from None
    if "\x00" in text:
        raise malformed(f"{packet}: {field}: contains the null character U+0000")
    return text


def read_utf8(buf: Buffer, pos: int, end: int, packet: str, field: str) -> tuple[str, int]:
    """A UTF-8 Encoded String: two-byte length, then well-formed UTF-8 without U+0000."""
    if pos + 2 > end:
        raise _past_end(packet, field, pos + 2 - end)
    stop = pos + 2 + U16.unpack_from(buf, pos)[0]
    if stop > end:
        raise _past_end(packet, field, stop - end)
    return decode_utf8(buf[pos + 2 : stop], packet, field), stop


def read_binary(buf: Buffer, pos: int, end: int, packet: str, field: str) -> tuple[bytes, int]:
    """Binary Data: two-byte length, then that many bytes."""
    if pos + 2 > end:
        raise _past_end(packet, field, pos + 2 - end)
    stop = pos + 2 + U16.unpack_from(buf, pos)[0]
    if stop > end:
        raise _past_end(packet, field, stop - end)
    return bytes(buf[pos + 2 : stop]), stop


def read_string_pair(
    buf: Buffer, pos: int, end: int, packet: str, field: str
) -> tuple[tuple[str, str], int]:
    """A UTF-8 String Pair: name then value, both UTF-8 Encoded Strings."""
    name, pos = read_utf8(buf, pos, end, packet, f"{field} name")
    value, pos = read_utf8(buf, pos, end, packet, f"{field} value")
    return (name, value), pos


# ---------------------------------------------------------------------------- writers


def _range_error(packet: str, field: str, value: object, low: int, high: int) -> LocalProtocolError:
    return LocalProtocolError(
        f"{packet}: {field}: {value!r} is outside the range {low}..{high}",
        ReasonCode.MALFORMED_PACKET,
    )


def encode_u8(value: int, packet: str, field: str) -> bytes:
    """One byte, 0..255."""
    if not 0 <= value <= MAX_U8:
        raise _range_error(packet, field, value, 0, MAX_U8)
    return bytes((value,))


def encode_u16(value: int, packet: str, field: str) -> bytes:
    """A Two Byte Integer, 0..65535."""
    if not 0 <= value <= MAX_U16:
        raise _range_error(packet, field, value, 0, MAX_U16)
    return U16.pack(value)


def encode_u32(value: int, packet: str, field: str) -> bytes:
    """A Four Byte Integer, 0..4294967295."""
    if not 0 <= value <= MAX_U32:
        raise _range_error(packet, field, value, 0, MAX_U32)
    return U32.pack(value)


def encode_varint(value: int, packet: str = "packet", field: str = "value") -> bytes:
    """A Variable Byte Integer, 0..268435455, in the fewest bytes."""
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if not 0 <= value <= MAX_VARINT:
        raise _range_error(packet, field, value, 0, MAX_VARINT)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_fixed_header(first_byte: int, remaining_length: int) -> bytes:
    """The type/flags byte and the Remaining Length (already checked against MAX_VARINT)."""
    if remaining_length < 0x80:  # one byte: most packets, so without encode_varint
        return bytes((first_byte, remaining_length))
    return bytes((first_byte,)) + encode_varint(remaining_length)


def encode_utf8(text: str, packet: str, field: str) -> bytes:
    """A UTF-8 Encoded String with its two-byte length prefix."""
    if "\x00" in text:
        raise LocalProtocolError(
            f"{packet}: {field}: contains U+0000, which MQTT strings may not hold",
            ReasonCode.MALFORMED_PACKET,
        )
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(
            f"{packet}: {field}: not encodable as UTF-8 ({exc.reason})",
            ReasonCode.MALFORMED_PACKET,
        ) from None
    if len(raw) > MAX_U16:
        raise LocalProtocolError(
            f"{packet}: {field}: {len(raw)} bytes of UTF-8 exceed the 65535-byte string limit",
            ReasonCode.MALFORMED_PACKET,
        )
    return U16.pack(len(raw)) + raw


def encode_binary(data: bytes, packet: str, field: str) -> bytes:
    """Binary Data with its two-byte length prefix."""
    if len(data) > MAX_U16:
        raise LocalProtocolError(
            f"{packet}: {field}: {len(data)} bytes exceed the 65535-byte binary data limit",
            ReasonCode.MALFORMED_PACKET,
        )
    return U16.pack(len(data)) + bytes(data)


def encode_string_pair(pair: tuple[str, str], packet: str, field: str) -> bytes:
    """A UTF-8 String Pair."""
    name, value = pair
    return encode_utf8(name, packet, f"{field} name") + encode_utf8(value, packet, f"{field} value")
