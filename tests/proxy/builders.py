"""Hand-rolled byte builders for PROXY v2 test inputs.

They only pack fields with :mod:`struct`; they are independent of trio_mqtt.proxy so
that the parser is checked against bytes laid out from the specification.
"""

from __future__ import annotations

import struct

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(ver_cmd: int, fam: int, body: bytes, *, length: int | None = None) -> bytes:
    """Signature, version/command byte, family/transport byte, length, body."""
    if length is None:
        length = len(body)
    return SIG + bytes([ver_cmd, fam]) + struct.pack("!H", length) + body


def tlv(tlv_type: int, value: bytes, *, length: int | None = None) -> bytes:
    if length is None:
        length = len(value)
    return struct.pack("!BH", tlv_type, length) + value


def inet(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    return src + dst + struct.pack("!HH", sport, dport)


def ssl_value(client: int, verify: int, subs: bytes = b"") -> bytes:
    return struct.pack("!BI", client, verify) + subs


def crc32c_reference(data: bytes) -> int:
    """Bit-by-bit CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def v2_with_crc(
    ver_cmd: int, fam: int, body_before_crc: bytes, body_after_crc: bytes = b""
) -> bytes:
    """A v2 header whose body holds a CRC32C TLV between the two given parts.

    The checksum is computed over the whole header with the CRC value zeroed, as the
    specification describes, using the reference implementation above.
    """
    zeroed = v2(ver_cmd, fam, body_before_crc + tlv(0x03, bytes(4)) + body_after_crc)
    crc = struct.pack("!I", crc32c_reference(zeroed))
    return v2(ver_cmd, fam, body_before_crc + tlv(0x03, crc) + body_after_crc)
