"""[listeners.limits]: parsed from TOML, errors name the file, the key and what is allowed."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from trio_mqtt.config import ListenerLimits, load_config
from trio_mqtt.config_writer import dump_config
from trio_mqtt.errors import ConfigError

LIMITS = """
[[listeners]]
bind = "127.0.0.1:0"
[listeners.limits]
max_connections_per_address = 20
connect_rate_per_address = 2.5
connect_burst_per_address = 5
ipv6_prefix_length = 64
deny_sources = ["198.51.100.0/24", "2001:db8::/32"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def test_limits_table(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, LIMITS))
    limits = config.listeners[0].limits
    assert limits == ListenerLimits(
        max_connections_per_address=20,
        connect_rate_per_address=2.5,
        connect_burst_per_address=5,
        ipv6_prefix_length=64,
        deny_sources=(
            ipaddress.ip_network("198.51.100.0/24"),
            ipaddress.ip_network("2001:db8::/32"),
        ),
    )
    assert limits.limits_addresses
    # the config writer (used for --workers) writes them back
    again = load_config(write(tmp_path, dump_config(config)))
    assert again.listeners[0].limits == limits


def test_defaults_limit_nothing() -> None:
    limits = ListenerLimits()
    assert not limits.limits_addresses
    assert limits.deny_sources == ()


@pytest.mark.parametrize(
    ("line", "key", "allowed"),
    [
        ("max_connections_per_address = -1", "max_connections_per_address", ">= 0"),
        ("connect_rate_per_address = -2", "connect_rate_per_address", ">= 0"),
        ("connect_rate_per_address = 'fast'", "connect_rate_per_address", ">= 0"),
        ("connect_rate_per_address = true", "connect_rate_per_address", ">= 0"),
        ("connect_burst_per_address = 0", "connect_burst_per_address", ">= 1"),
        ("ipv6_prefix_length = 129", "ipv6_prefix_length", "1..128"),
        ("deny_sources = ['10.0.0.1/8']", "deny_sources[0]", "did you mean '10.0.0.0/8'"),
        ("deny_sources = '10.0.0.0/8'", "deny_sources", "is not a list of CIDRs"),
        ("max_conections_per_address = 1", "max_conections_per_address", "did you mean"),
    ],
)
def test_errors_name_file_key_and_allowed_values(
    tmp_path: Path, line: str, key: str, allowed: str
) -> None:
    text = f'[[listeners]]\nbind = "127.0.0.1:0"\n[listeners.limits]\n{line}\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"listeners[0].limits.{key}" in message
    assert allowed in message
