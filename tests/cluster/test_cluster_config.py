"""The [cluster] table: what it accepts, and errors that name the key and the fix."""

from __future__ import annotations

import re
import ssl
import tomllib
from pathlib import Path
from typing import Any

import pytest
from server.certs import TestPKI

from trio_mqtt.cluster.nats_tls import NATSTLSFileError, nats_client_ssl_context
from trio_mqtt.config import BrokerConfig, ClusterConfig, load_config, parse_config
from trio_mqtt.config_writer import toml_value
from trio_mqtt.errors import ConfigError
from trio_mqtt.nats import NATSError


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


# -- TLS and credentials towards NATS ---------------------------------------------------


def write_pki(directory: Path) -> TestPKI:
    directory.mkdir(exist_ok=True)
    return TestPKI.create(directory)


def test_nats_tls_keys_load_from_a_file_relative_to_it(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "certs")
    file = tmp_path / "broker.toml"
    file.write_text(
        "[cluster]\n"
        'nats_urls = ["tls://node:secret@nats1:4222"]\n'
        f'nats_tls_ca_file = "certs/{Path(pki.ca_file).name}"\n'
        f'nats_tls_cert_file = "certs/{Path(pki.alice.certfile).name}"\n'
        f'nats_tls_key_file = "certs/{Path(pki.alice.keyfile).name}"\n'
        "nats_tls_handshake_first = true\n",
        encoding="utf-8",
    )
    cluster = load_config(file).cluster
    assert cluster == ClusterConfig(
        nats_urls=("tls://node:secret@nats1:4222",),
        nats_tls_ca_file=str(tmp_path / "certs" / "ca.pem"),
        nats_tls_cert_file=str(tmp_path / "certs" / "alice.pem"),
        nats_tls_key_file=str(tmp_path / "certs" / "alice.key"),
        nats_tls_handshake_first=True,
    )
    context = nats_client_ssl_context(cluster)
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert nats_client_ssl_context(ClusterConfig()) is None  # no files: no context of ours


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"nats_tls_ca_file": "nowhere.pem"},
            "cluster.nats_tls_ca_file: 'nowhere.pem' does not exist",
        ),
        (
            {"nats_tls_cert_file": "ca.pem", "nats_tls_key_file": "nowhere.key"},
            "cluster.nats_tls_key_file: 'nowhere.key' does not exist",
        ),
        (
            {"nats_tls_cert_file": "ca.pem"},
            "cluster.nats_tls_key_file: missing: nats_tls_cert_file is set, and a client "
            "certificate needs both",
        ),
        (
            {"nats_tls_key_file": "ca.pem"},
            "cluster.nats_tls_cert_file: missing: nats_tls_key_file is set",
        ),
        ({"nats_tls_ca_file": ""}, "cluster.nats_tls_ca_file: must not be empty"),
        (
            {"nats_tls_handshake_first": "yes"},
            "cluster.nats_tls_handshake_first: 'yes' is not a boolean",
        ),
        (
            {"nats_tls_ca": "ca.pem"},
            "cluster.nats_tls_ca: unknown key; did you mean 'nats_tls_ca_file'?",
        ),
    ],
)
def test_nats_tls_errors_name_the_key(tmp_path: Path, table: dict[str, Any], message: str) -> None:
    (tmp_path / "ca.pem").write_text("")
    file = tmp_path / "broker.toml"
    lines = [f"{key} = {toml_value(value)}" for key, value in table.items()]
    file.write_text("[cluster]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value).startswith(f"{file}: {message}")


def test_a_bad_nats_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"cluster": {"nats_urls": ["nats://node:s3cret@nats1"]}})  # no port
    assert "'nats://node:***@nats1' is not a NATS URL" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_unloadable_nats_tls_files_name_the_key(tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(NATSTLSFileError) as info:
        nats_client_ssl_context(ClusterConfig(nats_tls_ca_file=str(not_pem)))
    assert str(info.value).startswith(
        f"cluster.nats_tls_ca_file: cannot load CA certificates from {str(not_pem)!r}"
    )
    wrong_key = ClusterConfig(
        nats_tls_cert_file=pki.alice.certfile, nats_tls_key_file=pki.mallory.keyfile
    )
    with pytest.raises(NATSTLSFileError) as info:
        nats_client_ssl_context(wrong_key)
    assert str(info.value).startswith("cluster.nats_tls_cert_file: cannot load client certificate")
    assert "does the key match?" in str(info.value)
    # a ConfigError at startup, a NATSError (join again later) once the node has run
    assert isinstance(info.value, ConfigError) and isinstance(info.value, NATSError)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"


@pytest.mark.parametrize("block", re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S))
def test_the_toml_examples_of_the_cluster_docs_are_valid_config(block: str) -> None:
    """Each ```toml block of docs/cluster.md parses into a config, with its commented
    optional keys (``# key = value``) switched on too."""
    data = tomllib.loads(block)
    parse_config(data, file="docs/cluster.md")
    optional: dict[str, Any] = {}
    for line in re.findall(r"^# (\w+ = .*)$", block, re.M):
        optional.update(tomllib.loads(line))
    if optional:
        data["cluster"].update(optional)
        cluster = parse_config(data, file="docs/cluster.md").cluster
        assert cluster is not None
        assert all(getattr(cluster, key) is not None for key in optional)
