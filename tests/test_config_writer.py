"""dump_config: TOML that load_config reads back as the same BrokerConfig."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from trio_mqtt.config import (
    BrokerConfig,
    ClusterConfig,
    HttpConfig,
    ListenerConfig,
    ProxyPolicy,
    TLSConfig,
    load_config,
    parse_config,
)
from trio_mqtt.config_writer import dump_config, toml_value


def round_trip(config: BrokerConfig) -> BrokerConfig:
    return parse_config(tomllib.loads(dump_config(config)))


def test_the_default_config_round_trips() -> None:
    assert round_trip(BrokerConfig()) == BrokerConfig()


def test_every_field_round_trips(tmp_path: Path) -> None:
    # files that exist, under names that need escaping, for load_config's checks
    files = {name: tmp_path / name for name in ('pass "word"\\file', "c.pem", "k.pem", "ca.pem")}
    for file in files.values():
        file.write_text("")
    password, cert, key, ca = (str(file) for file in files.values())
    config = BrokerConfig(
        max_packet_size=4096,
        connect_timeout=2.5,
        shutdown_timeout=0,
        retain_available=False,
        password_file=password,
        persistence="/var/lib/trio-mqtt/broker.db",
        workers=3,
        listeners=[
            ListenerConfig(name="plain", host="0.0.0.0", port=1883, reuse_port=True),
            ListenerConfig(
                name="v6 \N{SNOWMAN}",
                host="::1",
                port=0,
                transport="wss",
                ws_path="/ws",
                max_connections=7,
                proxy_protocol=ProxyPolicy(
                    mode="optional",
                    trusted_sources=["10.0.0.0/8", "2001:db8::/32"],
                    timeout=1e-3,
                    use_cn_as_username=True,
                    max_header_size=300,
                ),
                tls=TLSConfig(
                    certfile=cert,
                    keyfile=key,
                    cafile=ca,
                    require_client_cert=True,
                ),
            ),
            ListenerConfig(name="tls-no-ca", port=8883, transport="tls", tls=TLSConfig(cert, key)),
        ],
        cluster=ClusterConfig(
            node_name="n-w1",
            nats_urls=("nats://127.0.0.1:4222", "tls://user:p%40ss@h:1"),
            replicas=3,
            nats_tls_ca_file=ca,
            nats_tls_cert_file=cert,
            nats_tls_key_file=key,
            nats_tls_handshake_first=True,
        ),
    )
    assert round_trip(config) == config
    # and from a file, where absolute paths stay what they are
    file = tmp_path / "worker.toml"
    file.write_text(dump_config(config, comment="generated\nfor a test"), encoding="utf-8")
    assert file.read_text(encoding="utf-8").startswith("# generated\n# for a test\n\n[broker]\n")
    assert load_config(file) == config


def test_no_listeners_stays_no_listeners() -> None:
    assert round_trip(BrokerConfig(listeners=())).listeners == ()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (0, "0"),
        (2.5, "2.5"),
        ("a\tb\n\x00\x7f", '"a\\tb\\n\\u0000\\u007f"'),
        (("x", 1), '["x", 1]'),
    ],
)
def test_toml_values(value: object, text: str) -> None:
    assert toml_value(value) == text
    assert tomllib.loads(f"v = {text}")["v"] == (list(value) if isinstance(value, tuple) else value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "bad \udcff name", None, b"x"])
def test_values_without_a_toml_form(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        toml_value(value)


def test_the_http_table_round_trips() -> None:
    config = BrokerConfig(http=HttpConfig(host="::1", port=0))
    assert '[http]\nbind = "[::1]:0"' in dump_config(config)
    assert round_trip(config) == config
    drained = BrokerConfig(http=HttpConfig(drain=2.5))
    assert round_trip(drained) == drained
