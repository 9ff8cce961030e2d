"""IP networks (CIDR) as configured, and whether a client address is inside them.

Used by the PROXY policy (``trusted_sources``) and by ``address`` lines of the ACL
file; both match the address a client connects from (for the ACL: the real client, as
a PROXY header tells it).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import TypeAlias

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> IPNetwork:
    """``10.0.0.0/8``, ``2001:db8::/32`` or a single address; ValueError says what is wrong."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            fixed = ipaddress.ip_network(text, strict=False)
        except ValueError:
            message = f"{text!r} is not a valid CIDR (e.g. '10.0.0.0/8', '2001:db8::/32')"
            raise ValueError(message) from exc
        raise ValueError(f"{text!r} has host bits set; did you mean '{fixed}'?") from exc


@functools.lru_cache(maxsize=4096)
def normalize_ip(host: str) -> IPAddress | None:
    """*host* as an address, with an IPv4-mapped IPv6 address unwrapped and no scope id.

    None when *host* is not an IP address (for example a UNIX socket path). Remembered
    for the last 4,096 hosts: parsing one costs microseconds on every connection, and a
    listener behind a load balancer sees the same few addresses again and again.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


#: How many (networks, host) answers ``address_in`` remembers.
MATCHES_REMEMBERED = 4096

# address_in's answers for a tuple of networks (a configuration's), keyed by the tuple's
# id and the host; each entry holds the tuple, so no other tuple can get that id while
# the entry is there.
_matches: dict[tuple[int, str], tuple[tuple[IPNetwork, ...], bool]] = {}


def address_in(host: str | None, networks: Iterable[IPNetwork]) -> bool:
    """Whether *host* is an IP address inside one of *networks* (never for a non-IP host).

    Remembered for a tuple of networks: a listener behind a load balancer asks about
    the same few proxy addresses for every connection, and matching one costs
    microseconds each time.
    """
    if host is None:
        return False
    if isinstance(networks, tuple):
        key = (id(networks), host)
        known = _matches.get(key)
        if known is not None:
            return known[1]
        inside = _address_in(host, networks)
        if len(_matches) >= MATCHES_REMEMBERED:
            _matches.clear()  # (many hosts: the memory stays bounded)
        _matches[key] = (networks, inside)
        return inside
    return _address_in(host, networks)


def _address_in(host: str, networks: Iterable[IPNetwork]) -> bool:
    address = normalize_ip(host)
    if address is None:
        return False
    return any(address in net for net in networks)  # never across IPv4 / IPv6
