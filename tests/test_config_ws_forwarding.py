"""ws_trusted_proxies / ws_forwarded_header: loaded from TOML, and their errors."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from trio_mqtt.config import ForwardedHeader, ListenerConfig, load_config
from trio_mqtt.config_writer import dump_config
from trio_mqtt.errors import ConfigError


def load(tmp_path: Path, listener: str) -> ListenerConfig:
    path = tmp_path / "broker.toml"
    path.write_text('[[listeners]]\nbind = "0.0.0.0:8080"\n' + listener)
    [config] = load_config(path).listeners
    return config


def test_loaded(tmp_path: Path) -> None:
    listener = load(
        tmp_path,
        'transport = "ws"\nws_trusted_proxies = ["10.0.0.0/8", "2001:db8::7"]\n'
        'ws_forwarded_header = "forwarded"\n',
    )
    assert listener.ws_trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::7/128"),
    )
    assert listener.ws_forwarded_header is ForwardedHeader.FORWARDED


def test_defaults_trust_no_proxy(tmp_path: Path) -> None:
    listener = load(tmp_path, 'transport = "ws"\n')
    assert listener.ws_trusted_proxies == ()
    assert listener.ws_forwarded_header is ForwardedHeader.X_FORWARDED_FOR


@pytest.mark.parametrize(
    ("listener", "key", "says"),
    [
        (
            'ws_trusted_proxies = ["10.0.0.0/8"]\n',
            "listeners[0].ws_trusted_proxies",
            "is for 'ws' and 'wss' listeners",
        ),
        (
            'transport = "ws"\nws_forwarded_header = "via"\n',
            "listeners[0].ws_forwarded_header",
            "'via' is not one of 'forwarded', 'x-forwarded-for'",
        ),
        (
            'transport = "ws"\nws_trusted_proxies = ["10.0.0.1/8"]\n',
            "listeners[0].ws_trusted_proxies[0]",
            "did you mean '10.0.0.0/8'",
        ),
        (
            'transport = "ws"\nws_trusted_proxies = "10.0.0.0/8"\n',
            "listeners[0].ws_trusted_proxies",
            "is not a list of CIDRs",
        ),
    ],
    ids=["tcp-listener", "bad-header", "host-bits", "not-a-list"],
)
def test_errors_name_file_key_and_allowed_values(
    tmp_path: Path, listener: str, key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, listener)
    assert caught.value.file == str(tmp_path / "broker.toml")
    assert caught.value.key == key
    assert says in str(caught.value)


def test_written_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        '[[listeners]]\nbind = "0.0.0.0:8080"\ntransport = "ws"\n'
        'ws_trusted_proxies = ["10.0.0.0/8"]\nws_forwarded_header = "forwarded"\n'
    )
    config = load_config(path)
    again = tmp_path / "again.toml"
    again.write_text(dump_config(config))
    assert load_config(again) == config
