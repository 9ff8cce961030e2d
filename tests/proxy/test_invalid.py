"""Invalid PROXY headers raise ProxyProtocolError saying what was wrong."""

from __future__ import annotations

import struct

import pytest

from trio_mqtt.errors import ProxyProtocolError
from trio_mqtt.proxy import ProxyParser, parse_proxy_header

from .builders import SIG, inet, ssl_value, tlv, v2, v2_with_crc

INET_BLOCK = inet(bytes([192, 168, 0, 1]), bytes([10, 0, 0, 2]), 56324, 1883)
GOOD_CRC = v2_with_crc(0x21, 0x11, INET_BLOCK)
BAD_CRC = GOOD_CRC[:-1] + bytes([GOOD_CRC[-1] ^ 0x01])
FLIPPED_ADDRESS = GOOD_CRC[:16] + bytes([193]) + GOOD_CRC[17:]

INVALID: list[tuple[str, bytes, str]] = [
    # --- neither v1 nor v2 ---------------------------------------------------------
    ("mqtt-connect", b"\x10\x0c\x00\x04MQTT", "not a PROXY protocol header"),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01", "not a PROXY protocol header"),
    (
        "bad-signature",
        SIG[:11] + b"\x0b" + bytes([0x21, 0x11, 0, 0]),
        "not a PROXY protocol header",
    ),
    ("lowercase-proxy", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    ("proxy-without-space", b"PROXY\r\n", "not a PROXY protocol header"),
    # --- v2 fixed part -------------------------------------------------------------
    ("v2-version-1", v2(0x11, 0x11, INET_BLOCK), "version 0x1 (high nibble of byte 13) is not 2"),
    ("v2-version-0", v2(0x01, 0x11, INET_BLOCK), "version 0x0"),
    ("v2-version-3", v2(0x31, 0x11, INET_BLOCK), "version 0x3"),
    *[
        (
            f"v2-command-{cmd:#x}",
            v2(0x20 | cmd, 0x11, INET_BLOCK),
            f"PROXY v2: command {cmd:#x} is not LOCAL (0x0) or PROXY (0x1)",
        )
        for cmd in range(0x2, 0x10)
    ],
    ("v2-family-4", v2(0x21, 0x41, INET_BLOCK), "address family 0x4 is not UNSPEC (0x0)"),
    ("v2-family-f", v2(0x21, 0xF1, INET_BLOCK), "address family 0xf"),
    ("v2-transport-3", v2(0x21, 0x13, INET_BLOCK), "transport 0x3 is not UNSPEC (0x0)"),
    (
        "v2-inet-length-11",
        v2(0x21, 0x11, INET_BLOCK[:11]),
        "length 11 is shorter than the INET address block (12 bytes)",
    ),
    (
        "v2-inet6-with-inet-sized-block",
        v2(0x21, 0x21, INET_BLOCK),
        "length 12 is shorter than the INET6 address block (36 bytes)",
    ),
    (
        "v2-unix-length-36",
        v2(0x21, 0x31, bytes(36)),
        "length 36 is shorter than the UNIX address block (216 bytes)",
    ),
    (
        "v2-local-inet-short",
        v2(0x20, 0x11, b""),
        "length 0 is shorter than the INET address block",
    ),
    # --- v2 TLVs -------------------------------------------------------------------
    (
        "tlv-overrun",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x01, b"mqtt", length=10)),
        "TLV 0x01 at offset 28 overruns the header: its length is 10 but only 4 byte(s) remain",
    ),
    (
        "tlv-truncated-type-and-length",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x04, b"") + b"\x01\x00"),
        "TLV at offset 31 overruns the header: 2 byte(s) left",
    ),
    (
        "tlv-ssl-4-bytes",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x20, b"\x01\x00\x00\x00")),
        "SSL TLV is 4 byte(s), shorter than its 5-byte client and verify fields",
    ),
    ("tlv-ssl-empty", v2(0x21, 0x11, INET_BLOCK + tlv(0x20, b"")), "SSL TLV is 0 byte(s)"),
    (
        "tlv-ssl-subtlv-overrun",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x20, ssl_value(1, 0, tlv(0x22, b"cn", length=3)))),
        "SSL sub-TLV (SSL TLV at offset 28) 0x22 at offset 5 overruns the header",
    ),
    ("crc32c-mismatch-in-tlv", BAD_CRC, "CRC32C mismatch"),
    ("crc32c-mismatch-in-address", FLIPPED_ADDRESS, "CRC32C mismatch"),
    (
        "crc32c-3-bytes",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x03, b"\x00\x00\x00")),
        "CRC32C TLV has length 3, expected 4",
    ),
    (
        "crc32c-twice",
        v2(0x21, 0x11, GOOD_CRC[16:] + GOOD_CRC[28:]),
        "CRC32C TLV appears more than once",
    ),
    (
        "unique-id-129",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x05, bytes(129))),
        "UNIQUE_ID TLV is 129 bytes, more than the 128 allowed",
    ),
    (
        "authority-not-utf8",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x02, b"\xff\xfe")),
        "AUTHORITY TLV is not valid UTF-8",
    ),
    (
        "authority-twice",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x02, b"a") + tlv(0x02, b"b")),
        "AUTHORITY TLV appears more than once",
    ),
    (
        "ssl-cn-not-utf8",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x20, ssl_value(7, 0, tlv(0x22, b"\xc3")))),
        "SSL_CN TLV is not valid UTF-8",
    ),
    (
        "ssl-cn-twice",
        v2(
            0x21,
            0x11,
            INET_BLOCK + tlv(0x20, ssl_value(7, 0, tlv(0x22, b"alice") + tlv(0x22, b"admin"))),
        ),
        "SSL_CN sub-TLV appears more than once",
    ),
    (
        "ssl-version-not-ascii",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x20, ssl_value(1, 0, tlv(0x21, "TLSv1.3é".encode())))),
        "SSL_VERSION TLV is not valid ASCII",
    ),
    (
        "netns-not-ascii",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x30, "grün".encode())),
        "NETNS TLV is not valid ASCII",
    ),
    # --- v1 ------------------------------------------------------------------------
    (
        "v1-no-crlf-in-107",
        b"PROXY UNKNOWN " + b"a" * 93 + b"\r\n",
        "no CRLF within the first 107 bytes",
    ),
    (
        "v1-108-byte-line",
        b"PROXY UNKNOWN " + b"a" * 92 + b"\r\n",
        "no CRLF within the first 107 bytes",
    ),
    (
        "v1-double-space",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        "empty field (two spaces in a row, or a space before CRLF)",
    ),
    ("v1-space-before-crlf", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "empty field"),
    ("v1-nothing-after-proxy", b"PROXY \r\n", "empty field"),
    ("v1-lf-without-cr", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR at offset 30"),
    ("v1-lone-cr", b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "CR not followed by LF at offset 18"),
    (
        "v1-lowercase-protocol",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        "protocol b'tcp4' is not TCP4, TCP6 or UNKNOWN",
    ),
    ("v1-udp4", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol b'UDP4'"),
    ("v1-unknownx", b"PROXY UNKNOWNX\r\n", "protocol b'UNKNOWNX'"),
    ("v1-missing-port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "missing fields"),
    ("v1-only-protocol", b"PROXY TCP6\r\n", "missing fields"),
    ("v1-extra-field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "extra fields"),
    (
        "v1-bad-ipv4-octet",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        "source address b'1.2.3.256' is not a valid IPv4 address (protocol TCP4)",
    ),
    ("v1-ipv4-leading-zero", b"PROXY TCP4 1.2.3.4 05.6.7.8 1 2\r\n", "destination address"),
    ("v1-ipv4-three-octets", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "b'1.2.3' is not a valid"),
    ("v1-ipv4-not-ascii", "PROXY TCP4 1.2.3.\u0664 5.6.7.8 1 2\r\n".encode(), "not a valid IPv4"),
    ("v1-bad-ipv6", b"PROXY TCP6 2001:db8:::1 ::1 1 2\r\n", "not a valid IPv6 address"),
    ("v1-ipv6-nine-groups", b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "not a valid IPv6"),
    ("v1-ipv6-scope", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "not a valid IPv6 address"),
    (
        "v1-tcp4-with-ipv6",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        "source address b'::1' is not a valid IPv4 address (protocol TCP4)",
    ),
    (
        "v1-tcp6-with-ipv4",
        b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n",
        "destination address b'5.6.7.8' is not a valid IPv6 address (protocol TCP6)",
    ),
    (
        "v1-port-65536",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        "source port b'65536' is not a decimal number 0..65535",
    ),
    ("v1-port-leading-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n", "destination port b'080'"),
    ("v1-port-plus", b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "source port b'+1'"),
    ("v1-port-negative", b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "source port b'-1'"),
    ("v1-port-hex", b"PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n", "source port b'0x10'"),
    ("v1-port-six-digits", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n", "destination port"),
    ("v1-port-unicode-digit", "PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2\r\n".encode(), "source port"),
    ("v1-tab-separator", b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", "is not TCP4, TCP6 or UNKNOWN"),
]


def test_table_is_big_enough() -> None:
    assert len(INVALID) >= 25
    assert len({name for name, *_ in INVALID}) == len(INVALID)


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_header_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError) as one_shot:
        parse_proxy_header(data + b"payload")
    assert message in str(one_shot.value)
    prefix = "PROXY v1: " if data.startswith(b"PROXY ") else "PROXY v2: "
    if "not a PROXY protocol header" not in message:
        assert str(one_shot.value).startswith(prefix)
    # The incremental parser, fed one byte at a time, rejects the same bytes alike.
    parser = ProxyParser()
    with pytest.raises(ProxyProtocolError) as incremental:
        for byte in data:
            parser.feed(bytes([byte]))
    assert message in str(incremental.value)


def test_v2_length_over_cap_rejected_after_fixed_part() -> None:
    fixed = SIG + bytes([0x21, 0x11]) + struct.pack("!H", 4096 - 16 + 1)
    assert len(fixed) == 16
    with pytest.raises(ProxyProtocolError, match=r"header of 4097 bytes .* maximum of 4096"):
        parse_proxy_header(fixed)
    # One byte less is within the default cap: just incomplete.
    ok = SIG + bytes([0x21, 0x11]) + struct.pack("!H", 4096 - 16)
    assert parse_proxy_header(ok) is None


def test_configured_cap_rejects_hostile_length_without_buffering() -> None:
    parser = ProxyParser(max_header_size=64)
    assert parser.feed(SIG + bytes([0x21, 0x11])) is None
    with pytest.raises(ProxyProtocolError, match=r"header of 65551 bytes \(16 \+ length 65535\)"):
        parser.feed(b"\xff\xff")
    assert parser.buffered == 0


def test_configured_cap_applies_to_valid_tlvs() -> None:
    data = v2(0x21, 0x11, INET_BLOCK + tlv(0x04, bytes(100)))
    assert parse_proxy_header(data) is not None
    with pytest.raises(ProxyProtocolError, match="exceeds the configured maximum of 100 bytes"):
        parse_proxy_header(data, max_header_size=100)


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        (b"\x10", "not a PROXY protocol header"),
        (b"PROXY\x00", "not a PROXY protocol header"),
        (SIG[:5] + b"\x01", "not a PROXY protocol header"),
        (SIG + b"\x12", "version 0x1"),
        (SIG + b"\x25", "command 0x5"),
        (SIG + b"\x21\x51", "address family 0x5"),
        (b"PROXY TCP4 1.2.3.4\n", "LF without CR"),
        (b"PROXY TCP4 1.2\rx", "CR not followed by LF"),
    ],
)
def test_rejected_as_soon_as_the_bad_byte_arrives(prefix: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(prefix)
    assert parse_proxy_header(prefix[:-1]) is None


def test_v1_rejected_at_107_bytes_without_crlf() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 91
    assert len(line) == 105
    assert parse_proxy_header(line) is None
    assert parse_proxy_header(line + b"\r") is None
    assert parse_proxy_header(line + b"\r\n") is not None  # 107 bytes: the maximum
    longer = line + b"x"
    assert parse_proxy_header(longer) is None  # 106 bytes: CRLF cannot fit any more...
    for last in (b"\r", b"x"):  # ...so the 107th byte decides
        with pytest.raises(ProxyProtocolError, match="no CRLF within the first 107 bytes"):
            parse_proxy_header(longer + last)
