"""Headers captured from a real HAProxy 2.6.12 (Debian 12) parse as expected.

Captured once with haproxy in front of a plain TCP sink:
- ``send-proxy`` (v1) over IPv4 and IPv6;
- ``send-proxy-v2 proxy-v2-options ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,
  crc32c,unique-id`` behind ``bind ... ssl ... verify optional alpn mqtt`` with a client
  certificate for CN ``client.example`` and SNI ``localhost``;
- the v2 ``check-send-proxy`` health check with ``proxy-v2-options crc32c`` (LOCAL).
"""

from __future__ import annotations

import struct

from crc32c import crc32c

from trio_mqtt.proxy import (
    TLV,
    Address,
    ClientFlags,
    Command,
    Family,
    ProxyParser,
    SSLInfo,
    TLVType,
    Transport,
    parse_proxy_header,
)

from .builders import crc32c_reference

V1_TCP4 = b"PROXY TCP4 127.0.0.1 127.0.0.1 44410 51083\r\nhello"
V1_TCP6 = b"PROXY TCP6 ::1 ::1 52856 54845\r\nx"
V2_TLS = (
    b"\r\n\r\n\x00\r\nQUIT\n!\x11\x00\x8e\x7f\x00\x00\x01\x7f\x00\x00\x01\xd7\xc4\xa6M"
    b"\x03\x00\x04\x1e.\x1d\x90\x01\x00\x04mqtt\x02\x00\tlocalhost\x05\x00\rabc-127.0.0.1"
    b' \x00U\x07\x00\x00\x00\x00!\x00\x07TLSv1.3"\x00\x0eclient.example%\x00\x05EC256'
    b"$\x00\x11ecdsa-with-SHA256#\x00\x16TLS_AES_256_GCM_SHA384hello"
)
V2_HEALTH_CHECK = b"\r\n\r\n\x00\r\nQUIT\n \x00\x00\x07\x03\x00\x04\xa9\xb8~\x8f"


def test_v1_tcp4() -> None:
    parser = ProxyParser()
    header = parser.feed(V1_TCP4)
    assert header is not None
    assert header.version == 1
    assert header.family is Family.INET
    assert header.source == Address("127.0.0.1", 44410)
    assert header.destination == Address("127.0.0.1", 51083)
    assert parser.leftover == b"hello"


def test_v1_tcp6() -> None:
    result = parse_proxy_header(V1_TCP6)
    assert result is not None
    header, consumed = result
    assert header.family is Family.INET6
    assert header.source == Address("::1", 52856)
    assert header.destination == Address("::1", 54845)
    assert V1_TCP6[consumed:] == b"x"


def test_v2_tls_with_every_ssl_option() -> None:
    parser = ProxyParser()
    header = parser.feed(V2_TLS)
    assert header is not None
    assert parser.leftover == b"hello"
    assert header.raw_length == 16 + 0x8E
    assert (header.version, header.command) == (2, Command.PROXY)
    assert (header.family, header.transport) == (Family.INET, Transport.STREAM)
    assert header.source == Address("127.0.0.1", 0xD7C4)
    assert header.destination == Address("127.0.0.1", 0xA64D)
    assert header.crc32c_verified is True
    assert header.alpn == b"mqtt"
    assert header.authority == "localhost"
    assert header.unique_id == b"abc-127.0.0.1"
    assert header.netns is None
    assert [t.type for t in header.tlvs] == [
        TLVType.CRC32C,
        TLVType.ALPN,
        TLVType.AUTHORITY,
        TLVType.UNIQUE_ID,
        TLVType.SSL,
    ]
    assert header.ssl == SSLInfo(
        client=ClientFlags.SSL | ClientFlags.CERT_CONN | ClientFlags.CERT_SESS,
        verify=0,
        version="TLSv1.3",
        cn="client.example",
        cipher="TLS_AES_256_GCM_SHA384",
        sig_alg="ecdsa-with-SHA256",
        key_alg="EC256",
        tlvs=(
            TLV(0x21, b"TLSv1.3"),
            TLV(0x22, b"client.example"),
            TLV(0x25, b"EC256"),
            TLV(0x24, b"ecdsa-with-SHA256"),
            TLV(0x23, b"TLS_AES_256_GCM_SHA384"),
        ),
    )
    assert header.ssl.cert_verified


def test_v2_health_check_is_local() -> None:
    result = parse_proxy_header(V2_HEALTH_CHECK)
    assert result is not None
    header, consumed = result
    assert consumed == len(V2_HEALTH_CHECK) == 23
    assert header.command is Command.LOCAL
    assert header.is_local
    assert header.source is None
    assert header.crc32c_verified is True


def test_haproxy_checksums_match_both_crc32c_implementations() -> None:
    for data, crc_offset in ((V2_TLS, 31), (V2_HEALTH_CHECK, 19)):
        length = 16 + struct.unpack("!H", data[14:16])[0]
        (sent,) = struct.unpack("!I", data[crc_offset : crc_offset + 4])
        zeroed = data[:crc_offset] + bytes(4) + data[crc_offset + 4 : length]
        assert crc32c_reference(zeroed) == sent
        assert crc32c(zeroed) == sent


def test_crc32c_check_value() -> None:
    # The standard CRC-32C check value (RFC 3720 / the "123456789" catalogue entry).
    assert crc32c_reference(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
