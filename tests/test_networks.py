"""``trio_mqtt.networks``: whether an address is inside configured networks, and the
answers ``address_in`` remembers for a tuple of networks."""

from __future__ import annotations

import pytest

from trio_mqtt import networks
from trio_mqtt.networks import address_in, parse_network


def _networks(*texts: str) -> tuple[networks.IPNetwork, ...]:
    return tuple(parse_network(text) for text in texts)


@pytest.mark.parametrize(
    ("host", "inside"),
    [
        ("10.1.2.3", True),
        ("192.168.7.7", True),
        ("192.169.0.1", False),
        ("::ffff:10.0.0.1", True),  # IPv4-mapped: the IPv4 address inside
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("fe80::1%eth0", False),
        ("/run/mqtt.sock", False),  # not an IP address
        (None, False),
    ],
)
def test_address_in(host: str | None, inside: bool) -> None:
    nets = _networks("10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32")
    assert address_in(host, nets) is inside
    assert address_in(host, nets) is inside  # remembered: the same answer
    assert address_in(host, list(nets)) is inside  # a list is not remembered


def test_each_tuple_of_networks_has_its_own_answers() -> None:
    # (a configuration reloaded with other networks: the old tuple's answers stay apart)
    before, after = _networks("10.0.0.0/8"), _networks("192.168.0.0/16")
    assert address_in("10.1.1.1", before)
    assert not address_in("10.1.1.1", after)
    assert address_in("192.168.1.1", after)
    assert not address_in("192.168.1.1", before)


def test_the_answers_remembered_stay_bounded() -> None:
    nets = _networks("10.0.0.0/8")
    for index in range(networks.MATCHES_REMEMBERED * 2 + 10):
        host = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
        assert address_in(host, nets)
        assert len(networks._matches) <= networks.MATCHES_REMEMBERED
    assert not address_in("11.0.0.1", nets)
