"""Value types describing a parsed PROXY protocol header (v1 text or v2 binary).

The parser in :mod:`trio_mqtt.proxy.parser` produces these; the listener reads them to
learn the real client endpoints and, for TLS terminated at the proxy, the client
certificate facts carried in the v2 SSL TLV. Decoded once per connection, they are hot
values (:mod:`trio_mqtt.hot_value`), as the MQTT packets are: immutable to the type
checker, plain slot stores to build. The PeerInfo the listener makes of them is frozen.
"""

from __future__ import annotations

import enum
import ipaddress
import re

from trio_mqtt.hot_value import hot_value


class Command(enum.IntEnum):
    """v2 command (low nibble of byte 13). v1 headers are reported as ``PROXY``."""

    LOCAL = 0x0
    """The proxy opened the connection itself (e.g. a health check): use the socket's
    own endpoints."""
    PROXY = 0x1
    """The connection is relayed on behalf of a client described by the header."""


class Family(enum.IntEnum):
    """v2 address family (high nibble of byte 14)."""

    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(enum.IntEnum):
    """v2 transport protocol (low nibble of byte 14)."""

    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


class TLVType(enum.IntEnum):
    """Registered v2 TLV types (top level) and SSL sub-TLV types."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    SSL_VERSION = 0x21
    SSL_CN = 0x22
    SSL_CIPHER = 0x23
    SSL_SIG_ALG = 0x24
    SSL_KEY_ALG = 0x25
    NETNS = 0x30


CUSTOM_TLV_TYPES = range(0xE0, 0xF0)
"""Reserved for application-specific data; such TLVs are kept raw."""
EXPERIMENT_TLV_TYPES = range(0xF0, 0xF8)
"""Reserved for experiments; such TLVs are kept raw."""

AWS_TLV_TYPE = 0xEA
"""PP2_TYPE_AWS, a custom TLV an AWS Network Load Balancer sends (through PrivateLink):
its value is a one-byte subtype followed by the subtype's data."""
AWS_SUBTYPE_VPCE_ID = 0x01
"""PP2_SUBTYPE_AWS_VPCE_ID: the data is the VPC endpoint id, in ASCII (``vpce-...``)."""
_VPCE_ID = re.compile(rb"[A-Za-z0-9-]{1,255}")


class ClientFlags(enum.IntFlag):
    """Bits of the SSL TLV's ``client`` byte (unknown bits are kept)."""

    SSL = 0x01
    """The client connected over TLS."""
    CERT_CONN = 0x02
    """The client presented a certificate on this connection."""
    CERT_SESS = 0x04
    """The client presented a certificate at least once on this TLS session."""


@hot_value
class Address:
    """An INET or INET6 endpoint: ``host`` is the canonical text form of the IP."""

    host: str
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The host as an :mod:`ipaddress` object (for CIDR checks)."""
        return ipaddress.ip_address(self.host)

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@hot_value
class UnixAddress:
    """An AF_UNIX endpoint from a v2 header.

    ``path`` is the 108-byte field cut at its first NUL; for an abstract socket (the
    field starts with NUL) it is the whole field with trailing NUL padding removed, so
    it keeps its leading NUL.
    """

    path: bytes

    @property
    def is_abstract(self) -> bool:
        """True for a Linux abstract-namespace socket name."""
        return self.path.startswith(b"\x00")

    def __str__(self) -> str:
        if self.is_abstract:
            return "unix:@" + self.path[1:].decode("utf-8", "backslashreplace")
        return "unix:" + self.path.decode("utf-8", "backslashreplace")


@hot_value
class TLV:
    """One raw type-length-value entry, exactly as received."""

    type: int
    """A :class:`TLVType` member when the type is registered, else the plain int."""
    value: bytes


@hot_value
class SSLInfo:
    """Decoded PP2_TYPE_SSL TLV: how the client reached the proxy over TLS."""

    client: ClientFlags
    verify: int
    """0 only when the client presented a certificate and the proxy verified it."""
    version: str | None = None
    cn: str | None = None
    """Client certificate subject Common Name; trust it only if :attr:`cert_verified`."""
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    tlvs: tuple[TLV, ...] = ()
    """Every sub-TLV as received, including those decoded into the fields above."""

    @property
    def cert_verified(self) -> bool:
        """True only if the client used TLS, presented a certificate and it verified.

        This is the condition under which :attr:`cn` may be used as an identity.
        """
        has_cert = bool(self.client & (ClientFlags.CERT_CONN | ClientFlags.CERT_SESS))
        return bool(self.client & ClientFlags.SSL) and has_cert and self.verify == 0


@hot_value
class ProxyHeader:
    """A complete, validated PROXY protocol header.

    ``source``/``destination`` are None when the header carries no usable client
    address (v1 ``UNKNOWN``, v2 ``LOCAL``, v2 UNSPEC family or transport): the caller
    then uses the socket's own endpoints.
    """

    version: int
    """1 (text) or 2 (binary)."""
    command: Command
    family: Family
    transport: Transport
    source: Address | UnixAddress | None
    destination: Address | UnixAddress | None
    raw_length: int
    """Number of bytes the header occupied on the wire."""
    tlvs: tuple[TLV, ...] = ()
    """Every top-level v2 TLV as received (including those decoded below)."""
    ssl: SSLInfo | None = None
    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    netns: str | None = None
    crc32c_verified: bool = False
    """True when a CRC32C TLV was present and matched (a mismatch is an error)."""

    @property
    def is_local(self) -> bool:
        """True when the header names no client: use the socket's own endpoints.

        That is the case for a v2 ``LOCAL`` command (proxy health check), a v2 header
        with UNSPEC family or transport, and v1 ``UNKNOWN``.
        """
        return self.source is None

    @property
    def custom_tlvs(self) -> tuple[TLV, ...]:
        """Application-specific (0xE0-0xEF) and experimental (0xF0-0xF7) TLVs."""
        return tuple(
            t for t in self.tlvs if t.type in CUSTOM_TLV_TYPES or t.type in EXPERIMENT_TLV_TYPES
        )

    @property
    def aws_vpc_endpoint_id(self) -> str | None:
        """The VPC endpoint id of an AWS PP2_TYPE_AWS (0xEA) TLV, subtype 0x01.

        None without such a TLV, or when its data is not an id (ASCII letters, digits
        and '-'): the raw TLV stays in :attr:`tlvs` either way.
        """
        for tlv in self.tlvs:
            if tlv.type == AWS_TLV_TYPE and tlv.value[:1] == bytes([AWS_SUBTYPE_VPCE_ID]):
                data = tlv.value[1:]
                if _VPCE_ID.fullmatch(data):
                    return data.decode("ascii")
        return None
