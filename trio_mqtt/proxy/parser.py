"""Sans-IO parser for PROXY protocol headers, version 1 (text) and 2 (binary).

Bytes go in, a :class:`~trio_mqtt.proxy.header.ProxyHeader` comes out together with
the exact number of bytes it used, so whatever followed the header in the same read
(an MQTT CONNECT, a TLS ClientHello) is handed to the next layer untouched.

The rules follow haproxy's ``doc/proxy-protocol.txt`` strictly: anything that does not
match the specification raises :class:`~trio_mqtt.errors.ProxyProtocolError`, whose
message says what was wrong, and the caller closes the connection.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterator

import attrs
from crc32c import crc32c

from trio_mqtt.errors import ProxyProtocolError
from trio_mqtt.proxy.header import (
    TLV,
    Address,
    ClientFlags,
    Command,
    Family,
    ProxyHeader,
    SSLInfo,
    TLVType,
    Transport,
    UnixAddress,
)

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
"""Longest legal v1 line, CRLF included; a receiver looks no further for the CRLF."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16
"""Signature (12) + version/command (1) + family/transport (1) + length (2)."""
DEFAULT_MAX_HEADER_SIZE = 4096
UNIQUE_ID_MAX_LENGTH = 128
SSL_TLV_MIN_LENGTH = 5
"""The SSL TLV's fixed part: 1-byte ``client`` bit field and 4-byte ``verify``."""
CRC32C_LENGTH = 4
HEADER_FIRST_BYTES = frozenset(b"P\r")
"""The bytes a header can begin with: 'P' (v1's "PROXY "), '\\r' (the v2 signature). An
MQTT CONNECT begins 0x10 and a TLS record 0x16: the first byte tells them apart."""

_TLV_HEADER = struct.Struct("!BH")
# each octet of the two IPv4 addresses on its own: their dotted text is then built from
# _OCTETS, without formatting an integer (half the instructions of "%d.%d.%d.%d")
_INET_BLOCK = struct.Struct("!BBBBBBBBHH")
_OCTETS = tuple(str(octet) for octet in range(256))
_INET6_BLOCK = struct.Struct("!16s16sHH")
_UNIX_PATH_LENGTH = 108

_ADDRESS_BLOCK_LENGTH = {
    Family.UNSPEC: 0,
    Family.INET: _INET_BLOCK.size,
    Family.INET6: _INET6_BLOCK.size,
    Family.UNIX: 2 * _UNIX_PATH_LENGTH,
}

_ALL_TLV_TYPES = frozenset(TLVType)
_FAMILIES = frozenset(Family)
_TRANSPORTS = frozenset(Transport)

# The valid version/command and family/transport bytes, decoded (the common case
# without building enum members); any other byte goes to the checks, which say why not.
_V2_COMMANDS = {0x20 | command: command for command in Command}
_V2_ADDRESSING = {
    family << 4 | transport: (family, transport) for family in Family for transport in Transport
}
# The members the common paths use, as module constants: on Python 3.11 a member read
# from its enum class goes through the hook of EnumType's __getattr__.
_PROXY = Command.PROXY
_INET = Family.INET
_UNSPEC_FAMILY = Family.UNSPEC
_STREAM = Transport.STREAM
_UNSPEC_TRANSPORT = Transport.UNSPEC


_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
# What ipaddress.IPv4Address accepts (decimal 0..255, no leading zeros), which is then
# also its canonical text: the common case without ipaddress's per-octet parsing.
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V1_IPV4 = re.compile(rb"%s(?:\.%s){3}" % (_OCTET, _OCTET))
# A TCP4 header as a proxy sends it, its CRLF included, in one match at the start of the
# bytes (the common case); anything else, even invalid, takes the line-by-line and
# field-by-field path below, which says what is wrong.
_V1_TCP4_HEADER = re.compile(
    rb"PROXY TCP4 (%s) (%s) (%s) (%s)\r\n"
    % (_V1_IPV4.pattern, _V1_IPV4.pattern, _V1_PORT.pattern, _V1_PORT.pattern)
)
_V1_UNKNOWN = b"PROXY UNKNOWN"
_V1_PROTOCOLS = {b"TCP4": Family.INET, b"TCP6": Family.INET6}

# TLV types that may appear at most once; a repeat is ambiguous, so it is rejected.
_SINGLE_TLVS = frozenset(
    {
        TLVType.ALPN,
        TLVType.AUTHORITY,
        TLVType.CRC32C,
        TLVType.UNIQUE_ID,
        TLVType.SSL,
        TLVType.NETNS,
    }
)
_SSL_SUBTYPES = frozenset(
    {
        TLVType.SSL_VERSION,
        TLVType.SSL_CN,
        TLVType.SSL_CIPHER,
        TLVType.SSL_SIG_ALG,
        TLVType.SSL_KEY_ALG,
    }
)


def looks_like_proxy_header(first_bytes: bytes) -> bool | None:
    """Tell from the first bytes of a connection whether a PROXY header is starting.

    True once the bytes begin with the full v1 ``"PROXY "`` or the 12-byte v2
    signature, False as soon as they cannot be either, None while too few bytes have
    arrived to tell. An MQTT CONNECT (0x10) or TLS record (0x16) is False at once.
    """
    if first_bytes and first_bytes[0] not in HEADER_FIRST_BYTES:
        return False  # (the common answer, from the first byte alone)
    if first_bytes.startswith((V1_PREFIX, V2_SIGNATURE)):
        return True
    if V1_PREFIX.startswith(first_bytes) or V2_SIGNATURE.startswith(first_bytes):
        return None
    return False


def parse_proxy_header(
    buf: bytes, *, max_header_size: int = DEFAULT_MAX_HEADER_SIZE
) -> tuple[ProxyHeader, int] | None:
    """Parse the PROXY header at the start of ``buf``.

    Returns ``(header, consumed)`` where ``buf[consumed:]`` is the data after the
    header, or None if ``buf`` is a valid but incomplete beginning of a header.
    Raises ProxyProtocolError if the bytes cannot be (the start of) a valid header or
    a v2 header would be longer than ``max_header_size`` bytes.
    """
    result = _parse(bytes(buf), max_header_size)
    if isinstance(result, int):
        return None
    return result


# No on_setattr hooks: feed() assigns the private fields, and attrs' validating
# __setattr__ would run for each (max_header_size is validated at creation).
@attrs.define(on_setattr=attrs.setters.NO_OP)
class ProxyParser:
    """Incremental PROXY header parser: :meth:`feed` bytes until it returns a header.

    A v2 header whose length field announces more than ``max_header_size`` bytes is
    rejected as soon as its 16-byte fixed part arrives, so a hostile length cannot
    make us buffer up to 64 KiB. A v1 header is at most 107 bytes regardless.
    """

    max_header_size: int = attrs.field(default=DEFAULT_MAX_HEADER_SIZE, kw_only=True)
    _buffer: bytearray = attrs.field(factory=bytearray, init=False)
    _needed: int = attrs.field(default=1, init=False)
    _header: ProxyHeader | None = attrs.field(default=None, init=False)
    _leftover: bytes = attrs.field(default=b"", init=False)
    _error: ProxyProtocolError | None = attrs.field(default=None, init=False)

    @max_header_size.validator
    def _check_max_header_size(self, _attribute: object, value: int) -> None:
        if value < V2_FIXED_LENGTH:
            raise ValueError(
                f"max_header_size must be at least {V2_FIXED_LENGTH} (the v2 fixed part), "
                f"got {value}"
            )

    @property
    def header(self) -> ProxyHeader | None:
        """The parsed header, or None while it is incomplete."""
        return self._header

    @property
    def leftover(self) -> bytes:
        """Bytes received after the header; they belong to the next protocol layer."""
        if self._header is None:
            raise RuntimeError("ProxyParser.leftover is only defined once a header was parsed")
        return self._leftover

    @property
    def buffered(self) -> int:
        """Number of bytes held while waiting for the rest of the header."""
        return len(self._buffer)

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Add received bytes; return the header once complete, else None.

        Raises ProxyProtocolError if the bytes are not a valid PROXY header (and again
        on any later call). Calling it after a header was returned is a bug in the
        caller: the following bytes belong to the next layer.
        """
        if self._header is not None:
            raise RuntimeError(
                "ProxyParser.feed called after the header was complete; "
                "pass later bytes to the next protocol layer"
            )
        if self._error is not None:
            raise ProxyProtocolError(str(self._error)) from self._error
        self._buffer += data
        if len(self._buffer) < self._needed:
            return None
        try:
            result = _parse(bytes(self._buffer), self.max_header_size)
        except ProxyProtocolError as exc:
            self._error = exc
            self._buffer = bytearray()
            raise
        if isinstance(result, int):
            self._needed = result
            return None
        header, consumed = result
        self._header = header
        self._leftover = bytes(self._buffer[consumed:])
        self._buffer = bytearray()
        return header


def _parse(buf: bytes, max_header_size: int) -> tuple[ProxyHeader, int] | int:
    """Parse ``buf``; return ``(header, consumed)`` or the total byte count needed next."""
    if buf.startswith(V2_SIGNATURE):
        return _parse_v2(buf, max_header_size)
    if buf.startswith(V1_PREFIX):
        return _parse_v1(buf)
    if V2_SIGNATURE.startswith(buf) or V1_PREFIX.startswith(buf):
        return len(buf) + 1
    raise ProxyProtocolError(
        f"not a PROXY protocol header: expected {V1_PREFIX!r} (v1) or the v2 signature "
        f"{V2_SIGNATURE!r}, got {buf[:16]!r}"
    )


# --- version 1 -----------------------------------------------------------------------


def _parse_v1(buf: bytes) -> tuple[ProxyHeader, int] | int:
    tcp4 = _V1_TCP4_HEADER.match(buf)
    if tcp4 is not None:
        source, destination, source_port, destination_port = tcp4.groups()
        if int(source_port) <= 65535 and int(destination_port) <= 65535:
            consumed = tcp4.end()
            # (by position: keyword arguments cost a dict per call; the fields' order)
            header = ProxyHeader(
                1,  # version
                _PROXY,
                _INET,
                _STREAM,
                Address(source.decode("ascii"), int(source_port)),
                Address(destination.decode("ascii"), int(destination_port)),
                consumed,  # raw_length
            )
            return header, consumed
        # a port out of range: the fields' checks below say which
    window = buf[:V1_MAX_LENGTH]
    lf = window.find(b"\n")
    if lf == -1:
        cr = window.find(b"\r")
        if cr != -1 and cr + 1 < len(window):
            raise ProxyProtocolError(f"PROXY v1: CR not followed by LF at offset {cr}")
        if len(buf) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(
                f"PROXY v1: no CRLF within the first {V1_MAX_LENGTH} bytes: {window[:48]!r}..."
            )
        return len(buf) + 1
    if buf[lf - 1] != ord("\r"):
        raise ProxyProtocolError(
            f"PROXY v1: LF without CR at offset {lf} (the line must end in CRLF)"
        )
    line = buf[: lf - 1]
    cr = line.find(b"\r")
    if cr != -1:
        raise ProxyProtocolError(f"PROXY v1: CR not followed by LF at offset {cr}")
    consumed = lf + 1
    return _parse_v1_line(line, consumed), consumed


def _parse_v1_line(line: bytes, consumed: int) -> ProxyHeader:
    """Parse one v1 line without its CRLF; ``line`` starts with ``"PROXY "`` and is not
    a valid TCP4 line (``_parse_v1`` took those)."""
    if line == _V1_UNKNOWN or line.startswith(_V1_UNKNOWN + b" "):
        # The rest of the line is ignored by design; the socket's endpoints are used.
        return ProxyHeader(
            version=1,
            command=Command.PROXY,
            family=Family.UNSPEC,
            transport=Transport.UNSPEC,
            source=None,
            destination=None,
            raw_length=consumed,
        )
    fields = line.split(b" ")
    if b"" in fields:
        raise ProxyProtocolError(
            f"PROXY v1: empty field (two spaces in a row, or a space before CRLF) in {line!r}"
        )
    family = _V1_PROTOCOLS.get(fields[1])
    if family is None:
        raise ProxyProtocolError(
            f"PROXY v1: protocol {fields[1]!r} is not TCP4, TCP6 or UNKNOWN (case-sensitive)"
        )
    if len(fields) != 6:
        problem = "missing fields" if len(fields) < 6 else "extra fields"
        raise ProxyProtocolError(
            f"PROXY v1: {problem}: expected 'PROXY {fields[1].decode()} <source address> "
            f"<destination address> <source port> <destination port>', got {line!r}"
        )
    proto = fields[1].decode()
    source_host = _parse_v1_address(fields[2], family, proto, "source address")
    destination_host = _parse_v1_address(fields[3], family, proto, "destination address")
    source_port = _parse_v1_port(fields[4], "source port")
    destination_port = _parse_v1_port(fields[5], "destination port")
    return ProxyHeader(
        version=1,
        command=Command.PROXY,
        family=family,
        transport=Transport.STREAM,
        source=Address(source_host, source_port),
        destination=Address(destination_host, destination_port),
        raw_length=consumed,
    )


def _parse_v1_address(text: bytes, family: Family, proto: str, what: str) -> str:
    """Validate a v1 address for ``family`` and return its canonical text form."""
    if family is Family.INET and _V1_IPV4.fullmatch(text) is not None:
        return text.decode("ascii")
    kind = "IPv4" if family is Family.INET else "IPv6"
    try:
        decoded = text.decode("ascii")
        # ipaddress accepts "fe80::1%eth0"; a scope id is not part of the v1 syntax.
        if "%" in decoded:
            raise ValueError(decoded)
        address: ipaddress.IPv4Address | ipaddress.IPv6Address
        if family is Family.INET:
            address = ipaddress.IPv4Address(decoded)
        else:
            address = ipaddress.IPv6Address(decoded)
    except ValueError:  # also covers UnicodeDecodeError
        raise ProxyProtocolError(
            f"PROXY v1: {what} {text!r} is not a valid {kind} address (protocol {proto})"
        ) from None
    return str(address)


def _parse_v1_port(text: bytes, what: str) -> int:
    if _V1_PORT.fullmatch(text) is None or int(text) > 65535:
        raise ProxyProtocolError(
            f"PROXY v1: {what} {text!r} is not a decimal number 0..65535 without sign or "
            f"leading zeros"
        )
    return int(text)


# --- version 2 -----------------------------------------------------------------------


def _parse_v2(buf: bytes, max_header_size: int) -> tuple[ProxyHeader, int] | int:
    if len(buf) < V2_FIXED_LENGTH:
        if len(buf) > 12:
            _check_version_and_command(buf[12])
        if len(buf) > 13:
            _check_family_and_transport(buf[13])
        return len(buf) + 1
    command = _V2_COMMANDS.get(buf[12])
    if command is None:
        command = _check_version_and_command(buf[12])  # (raises: says what is wrong)
    addressing = _V2_ADDRESSING.get(buf[13])
    if addressing is None:
        addressing = _check_family_and_transport(buf[13])
    family, transport = addressing
    length = int.from_bytes(buf[14:16], "big")
    total = V2_FIXED_LENGTH + length
    if total > max_header_size:
        raise ProxyProtocolError(
            f"PROXY v2: header of {total} bytes (16 + length {length}) exceeds the "
            f"configured maximum of {max_header_size} bytes"
        )
    block_length = _ADDRESS_BLOCK_LENGTH[family]
    if length < block_length:
        raise ProxyProtocolError(
            f"PROXY v2: length {length} is shorter than the {family.name} address block "
            f"({block_length} bytes)"
        )
    if len(buf) < total:
        return total
    raw = buf[:total]
    source: Address | UnixAddress | None = None
    destination: Address | UnixAddress | None = None
    block_end = V2_FIXED_LENGTH + block_length
    has_addresses = family is not _UNSPEC_FAMILY and transport is not _UNSPEC_TRANSPORT
    if command is _PROXY and has_addresses:
        source, destination = _decode_addresses(family, raw[V2_FIXED_LENGTH:block_end])
    tlvs: tuple[TLV, ...] = ()
    crc32c_verified = False
    fields = _NO_TLVS
    if block_end < total:  # (most headers have none: none of the TLV passes then)
        entries = list(_split_tlvs(raw, block_end, total, "TLV"))
        crc32c_verified = _verify_crc32c(raw, entries)
        fields = _decode_tlvs(entries)
        tlvs = tuple(TLV(_known_type(t, _ALL_TLV_TYPES), v) for t, _, v in entries)
    return (
        ProxyHeader(  # (by position, in the fields' order: no dict of keyword arguments)
            2,  # version
            command,
            family,
            transport,
            source,
            destination,
            total,  # raw_length
            tlvs,
            fields.ssl,
            fields.alpn,
            fields.authority,
            fields.unique_id,
            fields.netns,
            crc32c_verified,
        ),
        total,
    )


def _check_version_and_command(ver_cmd: int) -> Command:
    version, command = ver_cmd >> 4, ver_cmd & 0x0F
    if version != 2:
        raise ProxyProtocolError(
            f"PROXY v2: version {version:#x} (high nibble of byte 13) is not 2"
        )
    if command not in (Command.LOCAL, Command.PROXY):
        raise ProxyProtocolError(
            f"PROXY v2: command {command:#x} is not LOCAL (0x0) or PROXY (0x1)"
        )
    return Command(command)


def _check_family_and_transport(fam_proto: int) -> tuple[Family, Transport]:
    family, transport = fam_proto >> 4, fam_proto & 0x0F
    if family not in _FAMILIES:
        raise ProxyProtocolError(
            f"PROXY v2: address family {family:#x} is not UNSPEC (0x0), INET (0x1), "
            f"INET6 (0x2) or UNIX (0x3)"
        )
    if transport not in _TRANSPORTS:
        raise ProxyProtocolError(
            f"PROXY v2: transport {transport:#x} is not UNSPEC (0x0), STREAM (0x1) or DGRAM (0x2)"
        )
    return Family(family), Transport(transport)


def _decode_addresses(
    family: Family, block: bytes
) -> tuple[Address, Address] | tuple[UnixAddress, UnixAddress]:
    if family is _INET:
        s0, s1, s2, s3, d0, d1, d2, d3, src_port, dst_port = _INET_BLOCK.unpack(block)
        o = _OCTETS
        return (
            Address(f"{o[s0]}.{o[s1]}.{o[s2]}.{o[s3]}", src_port),
            Address(f"{o[d0]}.{o[d1]}.{o[d2]}.{o[d3]}", dst_port),
        )
    if family is Family.INET6:
        src, dst, src_port, dst_port = _INET6_BLOCK.unpack(block)
        return (
            Address(str(ipaddress.IPv6Address(src)), src_port),
            Address(str(ipaddress.IPv6Address(dst)), dst_port),
        )
    return (
        _unix_address(block[:_UNIX_PATH_LENGTH]),
        _unix_address(block[_UNIX_PATH_LENGTH:]),
    )


def _unix_address(field: bytes) -> UnixAddress:
    if field.startswith(b"\x00"):
        return UnixAddress(field.rstrip(b"\x00"))
    return UnixAddress(field.partition(b"\x00")[0])


def _split_tlvs(raw: bytes, start: int, end: int, what: str) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(type, value offset in raw, value)`` for the TLVs in ``raw[start:end]``."""
    pos = start
    while pos < end:
        if end - pos < _TLV_HEADER.size:
            raise ProxyProtocolError(
                f"PROXY v2: {what} at offset {pos} overruns the header: {end - pos} byte(s) "
                f"left, a TLV needs at least 3 (type and length)"
            )
        tlv_type, length = _TLV_HEADER.unpack_from(raw, pos)
        value_start = pos + _TLV_HEADER.size
        if value_start + length > end:
            raise ProxyProtocolError(
                f"PROXY v2: {what} {tlv_type:#04x} at offset {pos} overruns the header: "
                f"its length is {length} but only {end - value_start} byte(s) remain"
            )
        yield tlv_type, value_start, raw[value_start : value_start + length]
        pos = value_start + length


def _verify_crc32c(raw: bytes, entries: list[tuple[int, int, bytes]]) -> bool:
    """Check the CRC32C TLV, if any, before trusting any other field."""
    crc_entries = [(offset, value) for t, offset, value in entries if t == TLVType.CRC32C]
    if not crc_entries:
        return False
    if len(crc_entries) > 1:
        raise ProxyProtocolError("PROXY v2: CRC32C TLV appears more than once")
    offset, value = crc_entries[0]
    if len(value) != CRC32C_LENGTH:
        raise ProxyProtocolError(
            f"PROXY v2: CRC32C TLV has length {len(value)}, expected {CRC32C_LENGTH}"
        )
    expected = int.from_bytes(value, "big")
    actual = crc32c(raw[:offset] + bytes(CRC32C_LENGTH) + raw[offset + CRC32C_LENGTH :])
    if actual != expected:
        raise ProxyProtocolError(
            f"PROXY v2: CRC32C mismatch: header says {expected:#010x}, computed {actual:#010x}"
        )
    return True


@attrs.define
class _DecodedTLVs:
    """The ProxyHeader fields that come from top-level TLVs."""

    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    ssl: SSLInfo | None = None
    netns: str | None = None


_NO_TLVS = _DecodedTLVs()  # (never changed: _decode_tlvs makes its own)


def _decode_tlvs(entries: list[tuple[int, int, bytes]]) -> _DecodedTLVs:
    fields = _DecodedTLVs()
    seen: set[int] = set()
    for tlv_type, offset, value in entries:
        if tlv_type in _SINGLE_TLVS:
            if tlv_type in seen:
                raise ProxyProtocolError(
                    f"PROXY v2: {TLVType(tlv_type).name} TLV appears more than once"
                )
            seen.add(tlv_type)
        if tlv_type == TLVType.ALPN:
            fields.alpn = value
        elif tlv_type == TLVType.AUTHORITY:
            fields.authority = _decode_text(value, "AUTHORITY", "utf-8")
        elif tlv_type == TLVType.UNIQUE_ID:
            if len(value) > UNIQUE_ID_MAX_LENGTH:
                raise ProxyProtocolError(
                    f"PROXY v2: UNIQUE_ID TLV is {len(value)} bytes, more than the "
                    f"{UNIQUE_ID_MAX_LENGTH} allowed"
                )
            fields.unique_id = value
        elif tlv_type == TLVType.SSL:
            fields.ssl = _decode_ssl(value, offset)
        elif tlv_type == TLVType.NETNS:
            fields.netns = _decode_text(value, "NETNS", "ascii")
        # CRC32C was verified already; NOOP, custom, experimental and unknown
        # types are only kept raw in ProxyHeader.tlvs.
    return fields


def _decode_ssl(value: bytes, offset: int) -> SSLInfo:
    if len(value) < SSL_TLV_MIN_LENGTH:
        raise ProxyProtocolError(
            f"PROXY v2: SSL TLV is {len(value)} byte(s), shorter than its "
            f"{SSL_TLV_MIN_LENGTH}-byte client and verify fields"
        )
    client, verify = struct.unpack_from("!BI", value)
    texts: dict[str, str] = {}
    subs: list[TLV] = []
    for sub_type, _, sub_value in _split_tlvs(
        value, SSL_TLV_MIN_LENGTH, len(value), f"SSL sub-TLV (SSL TLV at offset {offset - 3})"
    ):
        subs.append(TLV(_known_type(sub_type, _SSL_SUBTYPES), sub_value))
        if sub_type not in _SSL_SUBTYPES:
            continue
        name = TLVType(sub_type).name
        key = name.removeprefix("SSL_").lower()
        if key in texts:
            raise ProxyProtocolError(f"PROXY v2: {name} sub-TLV appears more than once")
        encoding = "utf-8" if sub_type == TLVType.SSL_CN else "ascii"
        texts[key] = _decode_text(sub_value, name, encoding)
    return SSLInfo(
        client=ClientFlags(client),
        verify=verify,
        version=texts.get("version"),
        cn=texts.get("cn"),
        cipher=texts.get("cipher"),
        sig_alg=texts.get("sig_alg"),
        key_alg=texts.get("key_alg"),
        tlvs=tuple(subs),
    )


def _decode_text(value: bytes, name: str, encoding: str) -> str:
    try:
        return value.decode(encoding)
    except UnicodeDecodeError:
        raise ProxyProtocolError(
            f"PROXY v2: {name} TLV is not valid {encoding.upper()}: {value[:64]!r}"
        ) from None


def _known_type(value: int, known: frozenset[TLVType]) -> int:
    """Return the TLVType member for ``value`` if it is in ``known``, else ``value``."""
    if value in known:
        return TLVType(value)
    return value
