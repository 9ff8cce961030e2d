"""Every valid PROXY header form, built by hand, parses to the expected header."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mqtt.proxy import (
    TLV,
    Address,
    ClientFlags,
    Command,
    Family,
    ProxyHeader,
    ProxyProtocolError,
    SSLInfo,
    TLVType,
    Transport,
    UnixAddress,
    parse_proxy_header,
    parser,
)

from .builders import inet, ssl_value, tlv, v2, v2_with_crc

PAYLOAD = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c"  # what follows the header: a CONNECT

LOCALHOST4 = bytes([127, 0, 0, 1])
A4 = bytes([192, 168, 0, 1])
B4 = bytes([10, 0, 0, 2])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("fe800000000000000000000000000abc")
INET_BLOCK = inet(A4, B4, 56324, 1883)
SRC4 = Address("192.168.0.1", 56324)
DST4 = Address("10.0.0.2", 1883)

MAX_V1_UNKNOWN = (
    b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
)
MAX_V1_TCP6 = (
    b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
)
MAX_V1_TCP4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
FFFF6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

SSL_SUBS = (
    tlv(0x21, b"TLSv1.3")
    + tlv(0x22, "Jürgen".encode())
    + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
    + tlv(0x24, b"RSA-SHA256")
    + tlv(0x25, b"RSA2048")
    + tlv(0x26, b"\x01\x02")  # a later subtype we do not decode: kept raw
)
SSL_INFO = SSLInfo(
    client=ClientFlags.SSL | ClientFlags.CERT_CONN,
    verify=0,
    version="TLSv1.3",
    cn="Jürgen",
    cipher="TLS_AES_128_GCM_SHA256",
    sig_alg="RSA-SHA256",
    key_alg="RSA2048",
    tlvs=(
        TLV(0x21, b"TLSv1.3"),
        TLV(0x22, "Jürgen".encode()),
        TLV(0x23, b"TLS_AES_128_GCM_SHA256"),
        TLV(0x24, b"RSA-SHA256"),
        TLV(0x25, b"RSA2048"),
        TLV(0x26, b"\x01\x02"),
    ),
)


def v1(family: Family, src: Address | None, dst: Address | None, length: int) -> ProxyHeader:
    return ProxyHeader(
        version=1,
        command=Command.PROXY,
        family=family,
        transport=Transport.UNSPEC if family is Family.UNSPEC else Transport.STREAM,
        source=src,
        destination=dst,
        raw_length=length,
    )


def inet4(length: int, **fields: object) -> ProxyHeader:
    """A v2 PROXY TCP/IPv4 header from SRC4 to DST4 with the given TLV fields."""
    return ProxyHeader(
        version=2,
        command=Command.PROXY,
        family=Family.INET,
        transport=Transport.STREAM,
        source=SRC4,
        destination=DST4,
        raw_length=length,
        **fields,  # type: ignore[arg-type]
    )


UNIX_SRC = b"/var/run/haproxy.sock".ljust(108, b"\x00")
UNIX_DST = b"\x00trio-mqtt\x00x".ljust(108, b"\x00")  # abstract name with an inner NUL
UNIQUE_128 = bytes(range(128))

CRC_INET = v2_with_crc(0x21, 0x11, INET_BLOCK, tlv(0x04, b""))

VALID: list[tuple[str, bytes, ProxyHeader]] = [
    # --- v1 ------------------------------------------------------------------------
    (
        "v1-tcp4",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        v1(Family.INET, Address("192.168.0.1", 56324), Address("192.168.0.11", 443), 47),
    ),
    (
        "v1-tcp4-max",
        MAX_V1_TCP4,
        v1(Family.INET, Address("255.255.255.255", 65535), Address("255.255.255.255", 65535), 56),
    ),
    (
        "v1-tcp4-zeros",
        b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
        v1(Family.INET, Address("0.0.0.0", 0), Address("0.0.0.0", 0), 32),
    ),
    (
        "v1-tcp6",
        b"PROXY TCP6 2001:DB8::1 ::1 1 65535\r\n",
        v1(Family.INET6, Address("2001:db8::1", 1), Address("::1", 65535), 36),
    ),
    (
        "v1-tcp6-full-form",
        b"PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0001 ::ffff:1.2.3.4 8883 1883\r\n",
        v1(Family.INET6, Address("2001:db8::1", 8883), Address("::ffff:102:304", 1883), 77),
    ),
    (
        "v1-tcp6-max",
        MAX_V1_TCP6,
        v1(Family.INET6, Address(FFFF6, 65535), Address(FFFF6, 65535), 104),
    ),
    ("v1-unknown-short", b"PROXY UNKNOWN\r\n", v1(Family.UNSPEC, None, None, 15)),
    ("v1-unknown-max-107", MAX_V1_UNKNOWN, v1(Family.UNSPEC, None, None, 107)),
    (
        "v1-unknown-rest-ignored",
        b"PROXY UNKNOWN anything  at all 999999\r\n",
        v1(Family.UNSPEC, None, None, 39),
    ),
    # --- v2 LOCAL ------------------------------------------------------------------
    (
        "v2-local-unspec",
        v2(0x20, 0x00, b""),
        ProxyHeader(2, Command.LOCAL, Family.UNSPEC, Transport.UNSPEC, None, None, 16),
    ),
    (
        "v2-local-inet-addresses-ignored",
        v2(0x20, 0x11, INET_BLOCK),
        ProxyHeader(2, Command.LOCAL, Family.INET, Transport.STREAM, None, None, 28),
    ),
    (
        "v2-local-unspec-with-noop",
        v2(0x20, 0x00, tlv(0x04, b"pad")),
        ProxyHeader(
            2,
            Command.LOCAL,
            Family.UNSPEC,
            Transport.UNSPEC,
            None,
            None,
            22,
            tlvs=(TLV(TLVType.NOOP, b"pad"),),
        ),
    ),
    # --- v2 PROXY, each family -----------------------------------------------------
    ("v2-inet-stream", v2(0x21, 0x11, INET_BLOCK), inet4(28)),
    (
        "v2-inet-dgram",
        v2(0x21, 0x12, inet(LOCALHOST4, LOCALHOST4, 0, 65535)),
        ProxyHeader(
            2,
            Command.PROXY,
            Family.INET,
            Transport.DGRAM,
            Address("127.0.0.1", 0),
            Address("127.0.0.1", 65535),
            28,
        ),
    ),
    (
        "v2-inet-transport-unspec",
        v2(0x21, 0x10, INET_BLOCK),
        ProxyHeader(2, Command.PROXY, Family.INET, Transport.UNSPEC, None, None, 28),
    ),
    (
        "v2-inet6-stream",
        v2(0x21, 0x21, A6 + B6 + struct.pack("!HH", 40000, 8883)),
        ProxyHeader(
            2,
            Command.PROXY,
            Family.INET6,
            Transport.STREAM,
            Address("2001:db8::1", 40000),
            Address("fe80::abc", 8883),
            52,
        ),
    ),
    (
        "v2-inet6-dgram",
        v2(0x21, 0x22, B6 + A6 + struct.pack("!HH", 1, 2)),
        ProxyHeader(
            2,
            Command.PROXY,
            Family.INET6,
            Transport.DGRAM,
            Address("fe80::abc", 1),
            Address("2001:db8::1", 2),
            52,
        ),
    ),
    (
        "v2-unix-stream",
        v2(0x21, 0x31, UNIX_SRC + UNIX_DST),
        ProxyHeader(
            2,
            Command.PROXY,
            Family.UNIX,
            Transport.STREAM,
            UnixAddress(b"/var/run/haproxy.sock"),
            UnixAddress(b"\x00trio-mqtt\x00x"),
            232,
        ),
    ),
    (
        "v2-unix-dgram",
        v2(0x21, 0x32, UNIX_DST + UNIX_SRC),
        ProxyHeader(
            2,
            Command.PROXY,
            Family.UNIX,
            Transport.DGRAM,
            UnixAddress(b"\x00trio-mqtt\x00x"),
            UnixAddress(b"/var/run/haproxy.sock"),
            232,
        ),
    ),
    (
        "v2-proxy-unspec",
        v2(0x21, 0x00, b""),
        ProxyHeader(2, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, 16),
    ),
    (
        "v2-proxy-unspec-tlv-only",
        v2(0x21, 0x00, tlv(0x02, b"example.com")),
        ProxyHeader(
            2,
            Command.PROXY,
            Family.UNSPEC,
            Transport.UNSPEC,
            None,
            None,
            30,
            tlvs=(TLV(TLVType.AUTHORITY, b"example.com"),),
            authority="example.com",
        ),
    ),
    # --- v2 TLVs -------------------------------------------------------------------
    (
        "tlv-alpn",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x01, b"mqtt")),
        inet4(35, tlvs=(TLV(TLVType.ALPN, b"mqtt"),), alpn=b"mqtt"),
    ),
    (
        "tlv-alpn-empty",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x01, b"")),
        inet4(31, tlvs=(TLV(TLVType.ALPN, b""),), alpn=b""),
    ),
    (
        "tlv-authority-utf8",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x02, "broker.exämple.org".encode())),
        inet4(
            50,
            tlvs=(TLV(TLVType.AUTHORITY, "broker.exämple.org".encode()),),
            authority="broker.exämple.org",
        ),
    ),
    (
        "tlv-crc32c",
        CRC_INET,
        inet4(
            38,  # 16 fixed + 12 addresses + 7 CRC32C TLV + 3 empty NOOP TLV
            tlvs=(TLV(TLVType.CRC32C, CRC_INET[31:35]), TLV(TLVType.NOOP, b"")),
            crc32c_verified=True,
        ),
    ),
    (
        "tlv-noop-data",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x04, b"\xff" * 5) + tlv(0x04, b"")),
        inet4(39, tlvs=(TLV(TLVType.NOOP, b"\xff" * 5), TLV(TLVType.NOOP, b""))),
    ),
    (
        "tlv-unique-id-128",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x05, UNIQUE_128)),
        inet4(159, tlvs=(TLV(TLVType.UNIQUE_ID, UNIQUE_128),), unique_id=UNIQUE_128),
    ),
    (
        "tlv-unique-id-empty",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x05, b"")),
        inet4(31, tlvs=(TLV(TLVType.UNIQUE_ID, b""),), unique_id=b""),
    ),
    (
        "tlv-ssl-minimal",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x20, ssl_value(0x00, 1))),
        inet4(
            36,
            tlvs=(TLV(TLVType.SSL, b"\x00\x00\x00\x00\x01"),),
            ssl=SSLInfo(client=ClientFlags(0), verify=1),
        ),
    ),
    (
        "tlv-ssl-with-subtlvs",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x20, ssl_value(0x03, 0, SSL_SUBS))),
        inet4(
            36 + len(SSL_SUBS),
            tlvs=(TLV(TLVType.SSL, ssl_value(0x03, 0, SSL_SUBS)),),
            ssl=SSL_INFO,
        ),
    ),
    (
        "tlv-netns",
        v2(0x21, 0x11, INET_BLOCK + tlv(0x30, b"blue")),
        inet4(35, tlvs=(TLV(TLVType.NETNS, b"blue"),), netns="blue"),
    ),
    (
        "tlv-custom-experiment-unknown-kept-raw",
        v2(
            0x21,
            0x11,
            INET_BLOCK
            + tlv(0xE0, b"a")
            + tlv(0xEF, b"")
            + tlv(0xF0, b"xp")
            + tlv(0x06, b"?")
            + tlv(0xF8, b"fut")
            + tlv(0xE0, b"again"),
        ),
        inet4(
            28 + 3 * 6 + 12,
            tlvs=(
                TLV(0xE0, b"a"),
                TLV(0xEF, b""),
                TLV(0xF0, b"xp"),
                TLV(0x06, b"?"),
                TLV(0xF8, b"fut"),
                TLV(0xE0, b"again"),
            ),
        ),
    ),
    (
        "tlv-all-together-with-crc",
        v2_with_crc(
            0x21,
            0x11,
            INET_BLOCK + tlv(0x01, b"mqtt") + tlv(0x02, b"h"),
            tlv(0x05, b"id-1") + tlv(0x20, ssl_value(0x07, 0)) + tlv(0x30, b"ns") + tlv(0xE5, b"c"),
        ),
        # checked field by field in test_everything_together below
        inet4(0),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [(d, e) for _, d, e in VALID[:-1]], ids=[n for n, *_ in VALID[:-1]]
)
def test_valid_header(data: bytes, expected: ProxyHeader) -> None:
    result = parse_proxy_header(data + PAYLOAD)
    assert result is not None
    header, consumed = result
    assert header == expected
    assert consumed == len(data) == expected.raw_length
    assert (data + PAYLOAD)[consumed:] == PAYLOAD


def test_everything_together() -> None:
    data = VALID[-1][1]
    result = parse_proxy_header(data)
    assert result is not None
    header, consumed = result
    assert consumed == len(data) == 16 + 12 + 7 + 4 + 7 + 7 + 8 + 5 + 4
    assert header.crc32c_verified is True
    assert header.alpn == b"mqtt"
    assert header.authority == "h"
    assert header.unique_id == b"id-1"
    assert header.ssl == SSLInfo(client=ClientFlags(7), verify=0)
    assert header.netns == "ns"
    assert [t.type for t in header.tlvs] == [0x01, 0x02, 0x03, 0x05, 0x20, 0x30, 0xE5]
    assert header.custom_tlvs == (TLV(0xE5, b"c"),)


def test_v1_maximum_line_is_107_bytes() -> None:
    assert len(MAX_V1_UNKNOWN) == 107
    assert len(MAX_V1_TCP6) == 104
    assert len(MAX_V1_TCP4) == 56


def test_known_tlv_types_are_enum_members_unknown_are_ints() -> None:
    data = v2(0x21, 0x11, INET_BLOCK + tlv(0x01, b"x") + tlv(0xE1, b"y"))
    result = parse_proxy_header(data)
    assert result is not None
    alpn, custom = result[0].tlvs
    assert alpn.type is TLVType.ALPN
    assert type(custom.type) is int
    assert custom.type == 0xE1


def test_unknown_ssl_subtype_kept_as_int() -> None:
    assert SSL_INFO.tlvs[-1].type == 0x26
    data = v2(0x21, 0x11, INET_BLOCK + tlv(0x20, ssl_value(0x03, 0, SSL_SUBS)))
    result = parse_proxy_header(data)
    assert result is not None
    ssl = result[0].ssl
    assert ssl is not None
    assert ssl.tlvs[1].type is TLVType.SSL_CN
    assert type(ssl.tlvs[-1].type) is int


def test_header_exactly_at_configured_cap_is_accepted() -> None:
    data = v2(0x21, 0x11, INET_BLOCK + tlv(0x04, bytes(300 - 28 - 3)))
    assert len(data) == 300
    result = parse_proxy_header(data, max_header_size=300)
    assert result is not None
    assert result[1] == 300


@pytest.mark.parametrize(
    ("client", "verify", "verified"),
    [
        (0x01 | 0x02, 0, True),
        (0x01 | 0x04, 0, True),
        (0x07, 0, True),
        (0x01, 0, False),  # TLS but no certificate
        (0x02, 0, False),  # certificate bit without the SSL bit
        (0x03, 1, False),  # verification failed
        (0x00, 0, False),
        (0xF8 | 0x03, 0, True),  # unknown extra bits are kept and ignored
    ],
)
def test_cert_verified(client: int, verify: int, verified: bool) -> None:
    data = v2(0x21, 0x11, INET_BLOCK + tlv(0x20, ssl_value(client, verify, tlv(0x22, b"cn"))))
    result = parse_proxy_header(data)
    assert result is not None
    ssl = result[0].ssl
    assert ssl is not None
    assert int(ssl.client) == client
    assert ssl.verify == verify
    assert ssl.cn == "cn"
    assert ssl.cert_verified is verified


@pytest.mark.parametrize(
    ("data", "is_local"),
    [
        (b"PROXY UNKNOWN\r\n", True),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", False),
        (v2(0x20, 0x11, INET_BLOCK), True),
        (v2(0x21, 0x00, b""), True),
        (v2(0x21, 0x11, INET_BLOCK), False),
    ],
)
def test_is_local(data: bytes, is_local: bool) -> None:
    result = parse_proxy_header(data)
    assert result is not None
    assert result[0].is_local is is_local


def test_address_helpers() -> None:
    assert str(Address("1.2.3.4", 5)) == "1.2.3.4:5"
    assert str(Address("::1", 5)) == "[::1]:5"
    assert Address("::1", 5).ip.version == 6
    assert str(UnixAddress(b"/tmp/s")) == "unix:/tmp/s"
    assert UnixAddress(b"\x00abs").is_abstract
    assert str(UnixAddress(b"\x00abs")) == "unix:@abs"


# The IPv4 fast paths (a regex for v1 text, "%d.%d.%d.%d" for v2 bytes) must accept and
# print exactly what ipaddress does: drawn from octet-like pieces, leading zeros and
# out-of-range values included.
_OCTET_TEXT = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["00", "01", "007", "010", "0255", "", "+1", "-1", "1e1", "0x1", "\u0661"]),
)


@settings(max_examples=400)
@given(st.lists(_OCTET_TEXT, min_size=3, max_size=5))
def test_v1_ipv4_addresses_accepted_exactly_as_ipaddress_does(octets: list[str]) -> None:
    text = ".".join(octets)
    try:
        expected: str | None = str(ipaddress.IPv4Address(text))
    except ValueError:
        expected = None
    header = f"PROXY TCP4 {text} 5.6.7.8 1 2\r\n".encode()
    if expected is None:
        with pytest.raises(ProxyProtocolError, match="not a valid IPv4 address"):
            parse_proxy_header(header)
        return
    result = parse_proxy_header(header)
    assert result is not None
    assert result[0].source == Address(expected, 1)


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4))
def test_v2_ipv4_addresses_print_as_ipaddress_does(source: bytes, destination: bytes) -> None:
    block = inet(source, destination, 1, 2)
    result = parse_proxy_header(v2(0x21, 0x11, block))
    assert result is not None
    assert result[0].source == Address(str(ipaddress.IPv4Address(source)), 1)
    assert result[0].destination == Address(str(ipaddress.IPv4Address(destination)), 2)


_PORT_TEXT = st.text("0123456789", min_size=1, max_size=6)


@given(st.lists(_OCTET_TEXT, min_size=4, max_size=4), _PORT_TEXT, _PORT_TEXT)
def test_v1_tcp4_destination_and_ports_accepted_exactly_as_the_spec_says(
    octets: list[str], source_port: str, destination_port: str
) -> None:
    """The one-match TCP4 line and the field-by-field parser behind it agree with an
    independent reading of the spec: ipaddress for the address, and a port is a decimal
    0..65535 with no leading zero."""
    destination = ".".join(octets)
    try:
        expected_destination: str | None = str(ipaddress.IPv4Address(destination))
    except ValueError:
        expected_destination = None
    ports = (source_port, destination_port)
    ports_valid = all(p == str(int(p)) and int(p) <= 65535 for p in ports)
    header = f"PROXY TCP4 1.2.3.4 {destination} {source_port} {destination_port}\r\n".encode()
    if expected_destination is None or not ports_valid:
        with pytest.raises(ProxyProtocolError):
            parse_proxy_header(header)
        return
    result = parse_proxy_header(header)
    assert result is not None
    assert result[0].source == Address("1.2.3.4", int(source_port))
    assert result[0].destination == Address(expected_destination, int(destination_port))
    # the field-by-field parser, behind the one match, reads the same line the same way
    assert parser._parse_v1_line(header[:-2], len(header)) == result[0]
