"""The client address an HTTP reverse proxy reports in ``Forwarded`` or ``X-Forwarded-For``.

Sans-IO and socket-free: the WebSocket listener hands over the values of one header (as
h11 read them, one item per header line) and the networks of the proxies it trusts;
:func:`forwarded_client` answers with the client's address, or None to keep the
socket's.

Both headers list one entry per hop, the client first and each proxy appending the
address it received the request from. Only the right end can be believed: whatever a
client sends arrives as the left-most entries. So the list is walked from the right,
over the addresses of trusted proxies, and the first address that is not a trusted proxy
is the client. An entry that names no address (RFC 7239's ``unknown`` and obfuscated
``_identifiers``, or anything that is not an IP address) stops the walk: the hop beyond
it is unknown, and the socket's address is kept. If every entry is a trusted proxy, the
left-most is the client.

``Forwarded`` (RFC 7239): ``Forwarded: for=192.0.2.43, for="[2001:db8:cafe::17]:4711";
proto=https``. Elements are separated by commas, parameters by semicolons; values are
tokens or quoted strings (which may hold commas and semicolons), and an IPv6 address
must be quoted and in brackets. An element without ``for=`` names no address.
``X-Forwarded-For``: ``X-Forwarded-For: 203.0.113.7, 10.0.0.2``; some proxies add
ports (``203.0.113.7:51234``, ``[2001:db8::1]:4711``), which are accepted.

Hostile input costs bounded work: the WebSocket listener bounds the request's size, an
entry longer than :data:`MAX_NODE_LENGTH` is no address, and at most :data:`MAX_HOPS`
entries from the right are looked at.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Iterator, Sequence

import attrs

from trio_mqtt.networks import IPNetwork, address_in

__all__ = [
    "MAX_HOPS",
    "MAX_NODE_LENGTH",
    "ForwardedAddress",
    "ForwardedHeader",
    "forwarded_client",
    "forwarded_for_nodes",
    "parse_node",
    "x_forwarded_for_nodes",
]

#: Entries looked at from the right end; a longer chain of trusted proxies gives no address.
MAX_HOPS = 32
#: The longest entry that can be an address: ``"[IPv6]:port"`` is at most 47 characters.
MAX_NODE_LENGTH = 64


class ForwardedHeader(enum.Enum):
    """The request header a listener takes the client address from (lower case)."""

    FORWARDED = "forwarded"
    X_FORWARDED_FOR = "x-forwarded-for"


@attrs.frozen
class ForwardedAddress:
    """A client address from a header: canonical IP text, and the port (0 when none)."""

    host: str
    port: int


def forwarded_client(
    header: ForwardedHeader, values: Sequence[bytes], trusted: Sequence[IPNetwork]
) -> ForwardedAddress | None:
    """The client address ``values`` of ``header`` report, trusting ``trusted`` proxies.

    None when the walk from the right meets an entry that names no address (or runs past
    :data:`MAX_HOPS`), or when there is no entry at all.
    """
    if header is ForwardedHeader.FORWARDED:
        nodes = forwarded_for_nodes(values)
    else:
        nodes = x_forwarded_for_nodes(values)
    chain = list(nodes)
    found: ForwardedAddress | None = None
    for node in reversed(chain[-MAX_HOPS:]):
        address = None if node is None else parse_node(node)
        if address is None:
            return None
        found = address
        if not address_in(address.host, trusted):
            return address
    if len(chain) > MAX_HOPS:
        return None  # only trusted proxies as far as we looked: the client is beyond
    return found


def x_forwarded_for_nodes(values: Iterable[bytes]) -> Iterator[str]:
    """The entries of X-Forwarded-For header lines, left to right (empty ones skipped)."""
    for value in values:
        for item in value.split(b","):
            text = item.strip()
            if text:
                yield text.decode("latin-1")


def forwarded_for_nodes(values: Iterable[bytes]) -> Iterator[str | None]:
    """The ``for=`` value of each element of Forwarded header lines, left to right.

    None for an element that has no ``for=`` or cannot be parsed (a parameter without
    ``=``, an unterminated quoted string, a repeated ``for``): it names no address.
    """
    for value in values:
        for element in _split_outside_quotes(value.decode("latin-1"), ","):
            if element is None:
                yield None
                continue
            if not element.strip():
                continue  # "a, , b": an empty list item (RFC 7230 section 7)
            yield _for_of(element)


def _for_of(element: str) -> str | None:
    found: str | None = None
    for pair in _split_outside_quotes(element, ";"):
        if pair is None:
            return None
        name, equals, raw = pair.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            return None
        value = _unquote(raw.strip())
        if value is None:
            return None
        if name == "for":
            if found is not None:
                return None  # "for" twice in one element: ambiguous
            found = value
    return found


def _split_outside_quotes(text: str, separator: str) -> Iterator[str | None]:
    """``text`` split at ``separator`` outside quoted strings; None for a part whose quote
    is never closed (then nothing more follows)."""
    start = 0
    quoted = False
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            yield text[start:index]
            start = index + 1
    if quoted:
        yield None
    else:
        yield text[start:]


def _unquote(value: str) -> str | None:
    """A token as is, a quoted string without its quotes and escapes; None if malformed."""
    if not value.startswith('"'):
        return None if '"' in value or "\\" in value else value
    if len(value) < 2 or not value.endswith('"'):
        return None
    inner = value[1:-1]
    out: list[str] = []
    escaped = False
    for char in inner:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return None  # a quote inside: two strings glued together
        else:
            out.append(char)
    return None if escaped else "".join(out)


def parse_node(node: str) -> ForwardedAddress | None:
    """``192.0.2.43``, ``192.0.2.43:4711``, ``[2001:db8::1]``, ``[2001:db8::1]:4711`` (or
    a bare IPv6 address) as an address; None for ``unknown``, an obfuscated
    ``_identifier`` and anything else that is not an IP address.

    An obfuscated port (``192.0.2.43:_p1``) keeps the address, with port 0.
    """
    node = node.strip()
    if not node or len(node) > MAX_NODE_LENGTH:
        return None
    if node.startswith("["):
        host, closed, rest = node[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return None
        address = _ip(host, version=6)
        port_text = rest[1:] if rest else None
    elif node.count(":") == 1:
        host, _, port_text = node.partition(":")
        address = _ip(host, version=4)
    else:
        address = _ip(node, version=None)  # IPv4, or an IPv6 address without brackets
        port_text = None
    if address is None:
        return None
    port = _port(port_text)
    if port is None:
        return None
    return ForwardedAddress(address, port)


def _ip(text: str, *, version: int | None) -> str | None:
    if not text or "%" in text:  # a scope id means nothing on another host
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if version is not None and address.version != version:
        return None
    return str(address)


def _port(text: str | None) -> int | None:
    if text is None or text.startswith("_"):
        return 0  # none, or obfuscated (RFC 7239 section 6.3)
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        return None
    port = int(text)
    return port if port <= 65535 else None
