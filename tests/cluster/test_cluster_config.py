"""The [cluster] table: what it accepts, and errors that name the key and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from trio_mqtt.config import BrokerConfig, ClusterConfig, parse_config
from trio_mqtt.errors import ConfigError


def test_without_a_cluster_table_the_broker_is_one_node() -> None:
    assert BrokerConfig().cluster is None
    assert parse_config({}).cluster is None


def test_cluster_table_loads() -> None:
    config = parse_config(
        {
            "cluster": {
                "node_name": "n1",
                "nats_urls": ["nats://127.0.0.1:4222", "nats://10.0.0.2:4222"],
                "replicas": 3,
            }
        }
    )
    assert config.cluster == ClusterConfig(
        node_name="n1",
        nats_urls=("nats://127.0.0.1:4222", "nats://10.0.0.2:4222"),
        replicas=3,
    )


def test_defaults_derive_the_name_and_use_a_local_nats() -> None:
    assert parse_config({"cluster": {}}).cluster == ClusterConfig(
        node_name="", nats_urls=("nats://127.0.0.1:4222",), replicas=1
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"node_name": "n 1"}, "cluster.node_name: 'n 1' is not a node name"),
        ({"nats_urls": "nats://h:1"}, "cluster.nats_urls: 'nats://h:1' is not a list of URLs"),
        ({"nats_urls": ["http://h:1"]}, "cluster.nats_urls: 'http://h:1' is not a NATS URL"),
        ({"nats_urls": []}, "cluster.nats_urls: is empty"),
        ({"replicas": 0}, "cluster.replicas: 0 is out of range (allowed: 1..5)"),
        ({"replica": 1}, "cluster.replica: unknown key; did you mean 'replicas'?"),
    ],
)
def test_errors_name_file_and_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"cluster": table}, file="broker.toml")
    assert str(info.value).startswith(f"broker.toml: {message}")
