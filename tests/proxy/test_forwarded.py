"""The client address from Forwarded (RFC 7239) and X-Forwarded-For, incl. hostile input."""

from __future__ import annotations

import ipaddress

import pytest

from trio_mqtt.networks import IPNetwork
from trio_mqtt.proxy.forwarded import (
    MAX_HOPS,
    ForwardedAddress,
    ForwardedHeader,
    forwarded_client,
    forwarded_for_nodes,
    parse_node,
)

FWD = ForwardedHeader.FORWARDED
XFF = ForwardedHeader.X_FORWARDED_FOR
TRUSTED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("2001:db8:ffff::/48"),
)


def client(header: ForwardedHeader, *values: bytes) -> ForwardedAddress | None:
    return forwarded_client(header, list(values), TRUSTED)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"for=192.0.2.43"], ForwardedAddress("192.0.2.43", 0)),
        ([b'for="192.0.2.43:4711"'], ForwardedAddress("192.0.2.43", 4711)),
        ([b'for="[2001:db8::1]:4711"'], ForwardedAddress("2001:db8::1", 4711)),
        ([b'For="[2001:DB8::1]"'], ForwardedAddress("2001:db8::1", 0)),
        ([b"for=192.0.2.43;proto=https;by=10.0.0.1"], ForwardedAddress("192.0.2.43", 0)),
        ([b'proto=https;for="192.0.2.43:_hidden"'], ForwardedAddress("192.0.2.43", 0)),
        # the right-most entry that is not a trusted proxy
        ([b"for=198.51.100.1, for=192.0.2.43, for=10.0.0.7"], ForwardedAddress("192.0.2.43", 0)),
        ([b"for=198.51.100.1, for=192.0.2.43", b"for=10.0.0.7"], ForwardedAddress("192.0.2.43", 0)),
        ([b'for="[2001:db8::1]", for="[2001:db8:ffff::5]"'], ForwardedAddress("2001:db8::1", 0)),
        # quoted commas and semicolons are not separators
        ([b'for=192.0.2.43;ext="a,b;c", for=10.0.0.7'], ForwardedAddress("192.0.2.43", 0)),
        ([b"for=192.0.2.43 ,, for=10.0.0.7"], ForwardedAddress("192.0.2.43", 0)),
        # only trusted proxies: the left-most
        ([b"for=10.0.0.1, for=10.0.0.2"], ForwardedAddress("10.0.0.1", 0)),
    ],
)
def test_forwarded(values: list[bytes], expected: ForwardedAddress) -> None:
    assert client(FWD, *values) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"for=unknown",
        b"for=_hidden",
        b"for=192.0.2.43, for=unknown",  # the hop nearest us is unknown: stop there
        b"for=192.0.2.43, for=_gazonk, for=10.0.0.7",
        b"for=192.0.2.43, proto=https",  # an element without for=
        b"for=2001:db8::1",  # unquoted IPv6 with colons: a bare address is accepted ...
        b'for="[2001:db8::1"',  # ... a broken bracket is not
        b'for="192.0.2.43',  # unterminated quote
        b'for="192.0.2.43"x',
        b'for=192."0.2.43"',
        b"for=192.0.2.43;for=198.51.100.1",  # for twice in an element
        b"for",
        b"=192.0.2.43",
        b"for=192.0.2.43;",
        b"for=192.0.2.300",
        b"for=192.0.2.43:99999",
        b"for=192.0.2.43:80x",
        b"for=fe80::1%eth0",
        b"for=example.com",
        b"",
        b"\x00\xff\xfe garbage \r",
        b'for="\\',
    ],
)
def test_forwarded_without_a_usable_address(value: bytes) -> None:
    expected = ForwardedAddress("2001:db8::1", 0) if value == b"for=2001:db8::1" else None
    assert client(FWD, value) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"203.0.113.7"], ForwardedAddress("203.0.113.7", 0)),
        ([b"198.51.100.1, 203.0.113.7, 10.0.0.2"], ForwardedAddress("203.0.113.7", 0)),
        ([b"198.51.100.1", b"203.0.113.7,10.0.0.2"], ForwardedAddress("203.0.113.7", 0)),
        ([b"203.0.113.7:51234"], ForwardedAddress("203.0.113.7", 51234)),
        ([b"2001:db8::1"], ForwardedAddress("2001:db8::1", 0)),
        ([b"[2001:db8::1]:4711, 2001:db8:ffff::2"], ForwardedAddress("2001:db8::1", 4711)),
        ([b"::ffff:203.0.113.7"], ForwardedAddress("::ffff:cb00:7107", 0)),
        ([b" 203.0.113.7 ,  "], ForwardedAddress("203.0.113.7", 0)),
    ],
)
def test_x_forwarded_for(values: list[bytes], expected: ForwardedAddress) -> None:
    assert client(XFF, *values) == expected


@pytest.mark.parametrize(
    "value",
    [b"unknown", b"203.0.113.7, unknown", b"203.0.113.7, not-an-ip, 10.0.0.2", b"", b",,,"],
)
def test_x_forwarded_for_without_a_usable_address(value: bytes) -> None:
    assert client(XFF, value) is None


def test_a_trusted_mapped_address_is_a_proxy() -> None:
    assert client(XFF, b"203.0.113.7, ::ffff:10.0.0.2") == ForwardedAddress("203.0.113.7", 0)


def test_many_entries_only_the_right_end_counts() -> None:
    spoofed = b", ".join(b"198.51.100.%d" % (i % 250) for i in range(2000))
    assert client(XFF, spoofed + b", 203.0.113.7, 10.0.0.2") == ForwardedAddress("203.0.113.7", 0)
    forwarded = b", ".join(b"for=198.51.100.%d" % (i % 250) for i in range(2000))
    assert client(FWD, forwarded + b", for=203.0.113.7") == ForwardedAddress("203.0.113.7", 0)


def test_more_trusted_hops_than_looked_at_gives_nothing() -> None:
    hops = b", ".join(b"10.0.0.%d" % (i % 250 + 1) for i in range(MAX_HOPS + 1))
    assert client(XFF, b"203.0.113.7, " + hops) is None
    hops = b", ".join(b"10.0.0.%d" % (i % 250 + 1) for i in range(MAX_HOPS - 1))
    assert client(XFF, b"203.0.113.7, " + hops) == ForwardedAddress("203.0.113.7", 0)


def test_long_entries_are_not_addresses() -> None:
    assert parse_node("1" * 10_000) is None
    assert client(XFF, b"203.0.113.7" + b" " * 100 + b"x" * 16_000) is None
    assert client(FWD, b'for="' + b"\\," * 8000 + b'"') is None


def test_the_nodes_of_forwarded_elements() -> None:
    nodes = list(forwarded_for_nodes([b'for=a;by=b, by=c, for="x\\"y"', b"for=z"]))
    assert nodes == ["a", None, 'x"y', "z"]
