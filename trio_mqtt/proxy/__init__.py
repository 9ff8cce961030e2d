"""Sans-IO PROXY protocol (v1 text, v2 binary with TLVs) support.

Feed the first bytes of a connection to :class:`ProxyParser`; it returns a
:class:`ProxyHeader` with the real client endpoints and leaves the bytes after the
header in :attr:`ProxyParser.leftover` for the next layer. Nothing here does I/O.
"""

from __future__ import annotations

from trio_mqtt.errors import ProxyProtocolError
from trio_mqtt.proxy.header import (
    AWS_SUBTYPE_VPCE_ID,
    AWS_TLV_TYPE,
    CUSTOM_TLV_TYPES,
    EXPERIMENT_TLV_TYPES,
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
from trio_mqtt.proxy.parser import (
    DEFAULT_MAX_HEADER_SIZE,
    HEADER_FIRST_BYTES,
    UNIQUE_ID_MAX_LENGTH,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyParser,
    looks_like_proxy_header,
    parse_proxy_header,
)

__all__ = [
    "AWS_SUBTYPE_VPCE_ID",
    "AWS_TLV_TYPE",
    "CUSTOM_TLV_TYPES",
    "DEFAULT_MAX_HEADER_SIZE",
    "EXPERIMENT_TLV_TYPES",
    "HEADER_FIRST_BYTES",
    "TLV",
    "UNIQUE_ID_MAX_LENGTH",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "Address",
    "ClientFlags",
    "Command",
    "Family",
    "ProxyHeader",
    "ProxyParser",
    "ProxyProtocolError",
    "SSLInfo",
    "TLVType",
    "Transport",
    "UnixAddress",
    "looks_like_proxy_header",
    "parse_proxy_header",
]
