"""Config objects, their validators, and the TOML loader (docs/configuration.md)."""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mqtt.config import (
    AclTopicsBeforeUser,
    BrokerConfig,
    HttpConfig,
    ListenerConfig,
    ProxyMode,
    ProxyPolicy,
    TLSConfig,
    Transport,
    load_config,
    parse_bind,
    parse_config,
)
from trio_mqtt.errors import ConfigError

# The example of /work/shared/design/CONFIG.md, comments and all.
CONFIG_MD_EXAMPLE = """\
[broker]
max_packet_size     = 1048576   # bytes; bigger incoming packets: DISCONNECT 0x95 / close
max_keepalive       = 65535     # seconds; MQTT 5 clients asking more get Server Keep Alive
connect_timeout     = 10.0      # seconds from transport ready to a complete CONNECT
receive_maximum     = 20        # in-flight QoS 1/2 per session, each direction
max_queued_messages = 1000      # per session (offline or slow); past it QoS0 dropped first
max_session_expiry  = 86400     # seconds, caps the client's Session Expiry Interval
retain_available    = true
allow_anonymous     = true
password_file       = ""        # optional; hashed entries, see docs
acl_file            = ""        # optional; %u and %c patterns
persistence         = ""        # "" = memory; a path = SQLite file for sessions + retained

[[listeners]]
name      = "lb"                # used in logs, metrics, PeerInfo
bind      = "0.0.0.0:1883"      # host:port, [v6]:port
transport = "tcp"               # tcp | tls | ws | wss
max_connections = 100000

  [listeners.proxy_protocol]
  mode            = "required"  # off (default) | required | optional
  trusted_sources = ["10.0.0.0/8"]  # who may send a header (CIDRs); see below
  timeout         = 3.0         # seconds to receive the whole header (strict)
  use_cn_as_username = true     # username := CN from the v2 SSL TLV, only if the
                                # proxy reports a client cert that it verified

  [listeners.tls]               # for tls / wss
  certfile = "server.pem"
  keyfile  = "server.key"
  cafile   = "clients-ca.pem"   # to verify client certificates
  require_client_cert = false
  use_identity_as_username = false   # username := subject CN of the verified client cert
"""


def config_error(data: dict[str, Any]) -> str:
    """The message parse_config raises for *data* (as if read from broker.toml)."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, file="broker.toml")
    return str(info.value)


def listener(**table: Any) -> dict[str, Any]:
    """A one-listener document; *table* overrides the [[listeners]] keys."""
    return {"listeners": [{"bind": "127.0.0.1:1883", **table}]}


def proxy(**table: Any) -> dict[str, Any]:
    return listener(proxy_protocol=table)


TLS_FILES = {"certfile": "server.pem", "keyfile": "server.key"}


# ----------------------------------------------------------------------------- defaults


def test_embedded_default_is_one_tcp_listener_on_localhost_1883() -> None:
    config = BrokerConfig()
    assert config.max_packet_size == 1_048_576
    assert config.max_keepalive == 65535
    assert config.connect_timeout == 10.0
    assert config.receive_maximum == 20
    assert config.max_queued_messages == 1000
    assert config.max_session_expiry == 86400
    assert config.retain_available is True
    assert config.allow_anonymous is True
    assert (config.password_file, config.acl_file, config.persistence) == ("", "", "")
    assert config.shutdown_timeout == 5.0
    assert config.sys_interval == 10.0
    [only] = config.listeners
    assert (only.name, only.host, only.port, only.bind) == (
        "listener0",
        "127.0.0.1",
        1883,
        "127.0.0.1:1883",
    )
    assert only.transport is Transport.TCP
    assert only.max_connections == 100_000
    assert only.tls is None
    assert only.ws_path == "/mqtt"
    policy = only.proxy_protocol
    assert policy.mode is ProxyMode.OFF
    assert policy.trusted_sources == ()
    assert policy.timeout == 3.0
    assert policy.use_cn_as_username is False
    assert policy.max_header_size == 4096


def test_empty_document_and_empty_file_give_the_default(tmp_path: Path) -> None:
    assert parse_config({}) == BrokerConfig()
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert load_config(empty) == BrokerConfig()


def test_broker_table_without_listeners_keeps_the_default_listener() -> None:
    config = parse_config({"broker": {"receive_maximum": 5}})
    assert config.receive_maximum == 5
    assert config.listeners == (ListenerConfig(name="listener0"),)


def test_config_objects_are_frozen() -> None:
    config = BrokerConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.max_packet_size = 5  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.listeners[0].port = 1  # type: ignore[misc]


# ----------------------------------------------------------------------------- full example


def test_full_example_from_config_md_loads(tmp_path: Path) -> None:
    for name in ("server.pem", "server.key", "clients-ca.pem"):
        (tmp_path / name).write_text("placeholder")
    path = tmp_path / "broker.toml"
    path.write_text(CONFIG_MD_EXAMPLE)

    config = load_config(path)

    assert config.max_packet_size == 1_048_576
    assert config.max_keepalive == 65535
    assert config.connect_timeout == 10.0
    assert config.receive_maximum == 20
    assert config.max_queued_messages == 1000
    assert config.max_session_expiry == 86400
    assert config.retain_available is True
    assert config.allow_anonymous is True
    assert (config.password_file, config.acl_file, config.persistence) == ("", "", "")
    [lb] = config.listeners
    assert lb.name == "lb"
    assert (lb.host, lb.port) == ("0.0.0.0", 1883)
    assert lb.transport is Transport.TCP
    assert lb.max_connections == 100_000
    assert lb.proxy_protocol == ProxyPolicy(
        mode=ProxyMode.REQUIRED,
        trusted_sources=(ipaddress.IPv4Network("10.0.0.0/8"),),
        timeout=3.0,
        use_cn_as_username=True,
    )
    # Relative file names are resolved against the config file's directory.
    assert lb.tls == TLSConfig(
        certfile=str(tmp_path / "server.pem"),
        keyfile=str(tmp_path / "server.key"),
        cafile=str(tmp_path / "clients-ca.pem"),
    )


def test_parse_config_keeps_file_names_as_given() -> None:
    data = listener(transport="tls", tls={**TLS_FILES, "cafile": "ca.pem"})
    [only] = parse_config(data).listeners
    assert only.tls == TLSConfig(certfile="server.pem", keyfile="server.key", cafile="ca.pem")


def test_tls_and_ws_listeners(tmp_path: Path) -> None:
    config = parse_config(
        {
            "listeners": [
                {"name": "a", "bind": "[::]:8883", "transport": "tls", "tls": TLS_FILES},
                {"name": "b", "bind": "localhost:8080", "transport": "ws", "ws_path": "/x"},
                {"name": "c", "bind": "0.0.0.0:8443", "transport": "wss", "tls": TLS_FILES},
            ]
        }
    )
    a, b, c = config.listeners
    assert (a.host, a.port, a.transport, a.bind) == ("::", 8883, Transport.TLS, "[::]:8883")
    assert (b.host, b.port, b.transport, b.ws_path) == ("localhost", 8080, Transport.WS, "/x")
    assert c.transport is Transport.WSS
    assert c.tls is not None and c.tls.keyfile == "server.key"


def test_unnamed_listeners_are_named_by_position() -> None:
    config = parse_config({"listeners": [{"bind": "127.0.0.1:1"}, {"bind": "127.0.0.1:2"}]})
    assert [item.name for item in config.listeners] == ["listener0", "listener1"]


def test_integer_seconds_are_accepted_for_float_keys() -> None:
    config = parse_config({"broker": {"connect_timeout": 3, "shutdown_timeout": 0}})
    assert config.connect_timeout == 3
    assert config.shutdown_timeout == 0


def test_paths_resolve_against_config_dir_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("")
    path = tmp_path / "broker.toml"
    path.write_text('[broker]\npassword_file = "passwd"\npersistence = "state.db"\n')
    config = load_config(path)
    assert config.password_file == str(tmp_path / "passwd")
    assert config.persistence == str(tmp_path / "state.db")  # created later: need not exist

    path.write_text('[broker]\nacl_file = "acl.txt"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: broker.acl_file: 'acl.txt' does not exist "
        f"(looked for {str(tmp_path / 'acl.txt')!r})"
    )
    assert info.value.file == str(path)
    assert info.value.key == "broker.acl_file"


def test_missing_certificate_names_the_tls_key(tmp_path: Path) -> None:
    (tmp_path / "server.pem").write_text("")
    path = tmp_path / "broker.toml"
    path.write_text(
        '[[listeners]]\nbind = "127.0.0.1:8883"\ntransport = "tls"\n'
        '[listeners.tls]\ncertfile = "server.pem"\nkeyfile = "server.key"\n'
    )
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.tls\.keyfile: 'server.key' does"):
        load_config(path)


# ----------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"brokr": {}},
            "broker.toml: brokr: unknown key; did you mean 'broker'? "
            "allowed keys: 'broker', 'listeners'",
        ),
        (
            {"broker": {"max_pakcet_size": 10}},
            "broker.toml: broker.max_pakcet_size: unknown key; did you mean 'max_packet_size'?",
        ),
        (
            listener(ports=3),
            "broker.toml: listeners[0].ports: unknown key; allowed keys: "
            "'name', 'bind', 'transport', 'max_connections', 'ws_path', 'reuse_port', "
            "'ws_trusted_proxies', 'ws_forwarded_header', 'proxy_protocol', 'tls'",
        ),
        (
            proxy(mode="required", trusted=["10.0.0.0/8"]),
            "broker.toml: listeners[0].proxy_protocol.trusted: unknown key; "
            "did you mean 'trusted_sources'?",
        ),
        (
            listener(transport="tls", tls={**TLS_FILES, "ca_file": "x"}),
            "broker.toml: listeners[0].tls.ca_file: unknown key; did you mean 'cafile'?",
        ),
        (
            listener(tls={**TLS_FILES, "zzz": 1}),
            "broker.toml: listeners[0].tls.zzz: unknown key; allowed keys: 'certfile', "
            "'keyfile', 'cafile', 'require_client_cert', 'use_identity_as_username'",
        ),
    ],
)
def test_unknown_keys_are_errors(data: dict[str, Any], expected: str) -> None:
    assert config_error(data).startswith(expected)


def test_unknown_listener_key_in_second_listener_names_its_index() -> None:
    data = {"listeners": [{"bind": "127.0.0.1:1"}, {"bind": "127.0.0.1:2", "tranport": "tcp"}]}
    assert config_error(data).startswith("broker.toml: listeners[1].tranport: unknown key")


# ----------------------------------------------------------------------------- enums


def test_bad_proxy_mode_lists_the_allowed_values() -> None:
    assert config_error(proxy(mode="sometimes")) == (
        "broker.toml: listeners[0].proxy_protocol.mode: "
        "'sometimes' is not one of 'off', 'required', 'optional'"
    )


def test_bad_transport_lists_the_allowed_values() -> None:
    assert config_error(listener(transport="quic")) == (
        "broker.toml: listeners[0].transport: 'quic' is not one of 'tcp', 'tls', 'ws', 'wss'"
    )


def test_enum_values_are_case_sensitive() -> None:
    assert "'TCP' is not one of" in config_error(listener(transport="TCP"))


def test_acl_topics_before_user_defaults_to_everyone_and_takes_anonymous() -> None:
    assert BrokerConfig().acl_topics_before_user is AclTopicsBeforeUser.EVERYONE
    config = parse_config({"broker": {"acl_topics_before_user": "anonymous"}})
    assert config.acl_topics_before_user is AclTopicsBeforeUser.ANONYMOUS
    embedded = BrokerConfig(acl_topics_before_user="everyone")
    assert embedded.acl_topics_before_user is AclTopicsBeforeUser.EVERYONE


@pytest.mark.parametrize(
    ("value", "shown"),
    [("mosquitto", "'mosquitto'"), ("Anonymous", "'Anonymous'"), (True, "true"), (1, "1")],
)
def test_bad_acl_topics_before_user_lists_the_allowed_values(value: object, shown: str) -> None:
    assert config_error({"broker": {"acl_topics_before_user": value}}) == (
        f"broker.toml: broker.acl_topics_before_user: {shown} is not one of 'everyone', 'anonymous'"
    )


# ----------------------------------------------------------------------------- types and ranges


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_packet_size", "1024", "'1024' is not an integer (allowed: 1..268435460)"),
        ("max_packet_size", True, "true is not an integer (allowed: 1..268435460)"),
        ("receive_maximum", False, "false is not an integer (allowed: 1..65535)"),
        ("receive_maximum", 1.5, "1.5 is not an integer (allowed: 1..65535)"),
        ("receive_maximum", 0, "0 is out of range (allowed: 1..65535)"),
        ("receive_maximum", 65536, "65536 is out of range (allowed: 1..65535)"),
        ("max_packet_size", 268_435_461, "268435461 is out of range (allowed: 1..268435460)"),
        ("max_keepalive", 0, "0 is out of range (allowed: 1..65535)"),
        ("max_queued_messages", 0, "0 is out of range (allowed: >= 1)"),
        ("max_session_expiry", -1, "-1 is out of range (allowed: 0..4294967295)"),
        ("max_session_expiry", 2**32, "4294967296 is out of range (allowed: 0..4294967295)"),
        ("connect_timeout", "10", "'10' is not a number of seconds (allowed: a number > 0)"),
        ("connect_timeout", True, "true is not a number of seconds (allowed: a number > 0)"),
        ("connect_timeout", 0, "0 is out of range (allowed: a number > 0)"),
        ("connect_timeout", math.inf, "inf is out of range (allowed: a number > 0)"),
        ("connect_timeout", math.nan, "nan is out of range (allowed: a number > 0)"),
        ("shutdown_timeout", -0.5, "-0.5 is out of range (allowed: a number >= 0)"),
        ("sys_interval", -1, "-1 is out of range (allowed: a number >= 0)"),
        ("retain_available", 1, "1 is not a boolean (allowed: true, false)"),
        ("allow_anonymous", "yes", "'yes' is not a boolean (allowed: true, false)"),
        ("password_file", 5, "5 is not a string"),
        ("persistence", ["a"], "['a'] is not a string"),
    ],
)
def test_broker_value_errors(key: str, value: object, expected: str) -> None:
    assert config_error({"broker": {key: value}}) == f"broker.toml: broker.{key}: {expected}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_packet_size", 1),
        ("max_packet_size", 268_435_460),
        ("receive_maximum", 65535),
        ("max_session_expiry", 0),
        ("max_session_expiry", 4_294_967_295),
        ("connect_timeout", 0.001),
        ("shutdown_timeout", 0.0),
        ("sys_interval", 0),
    ],
)
def test_broker_values_at_the_edges_are_accepted(key: str, value: object) -> None:
    assert getattr(parse_config({"broker": {key: value}}), key) == value


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            {"max_connections": 0},
            "listeners[0].max_connections: 0 is out of range (allowed: >= 1)",
        ),
        (
            {"max_connections": True},
            "listeners[0].max_connections: true is not an integer (allowed: >= 1)",
        ),
        ({"name": ""}, "listeners[0].name: must not be empty"),
        ({"name": 7}, "listeners[0].name: 7 is not a string"),
        ({"ws_path": "mqtt"}, "listeners[0].ws_path: 'mqtt' must start with '/' (e.g. '/mqtt')"),
        ({"bind": 1883}, "listeners[0].bind: 1883 is not a string (expected HOST:PORT"),
        (
            {"proxy_protocol": {"timeout": 0}},
            "listeners[0].proxy_protocol.timeout: 0 is out of range (allowed: a number > 0)",
        ),
        (
            {"proxy_protocol": {"use_cn_as_username": "true"}},
            "listeners[0].proxy_protocol.use_cn_as_username: 'true' is not a boolean",
        ),
        (
            {"proxy_protocol": {"max_header_size": 100}},
            "listeners[0].proxy_protocol.max_header_size: 100 is out of range "
            "(allowed: 232..65551)",
        ),
        (
            {"proxy_protocol": "required"},
            "listeners[0].proxy_protocol: 'required' is not a table",
        ),
        (
            {"transport": "tls", "tls": {**TLS_FILES, "require_client_cert": 1}},
            "listeners[0].tls.require_client_cert: 1 is not a boolean",
        ),
        (
            {"transport": "tls", "tls": {"certfile": "", "keyfile": "k"}},
            "listeners[0].tls.certfile: must not be empty",
        ),
    ],
)
def test_listener_value_errors(table: dict[str, Any], expected: str) -> None:
    assert config_error(listener(**table)).startswith(f"broker.toml: {expected}")


def test_wrong_table_shapes() -> None:
    assert config_error({"broker": 5}) == "broker.toml: broker: 5 is not a table"
    assert config_error({"listeners": {"bind": "127.0.0.1:1"}}) == (
        "broker.toml: listeners: {'bind': '127.0.0.1:1'} is not an array of tables "
        "(use [[listeners]])"
    )
    assert config_error({"listeners": ["127.0.0.1:1"]}) == (
        "broker.toml: listeners[0]: '127.0.0.1:1' is not a table"
    )


def test_listener_without_bind_is_an_error() -> None:
    assert config_error({"listeners": [{"name": "x"}]}) == (
        "broker.toml: listeners[0].bind: missing; every [[listeners]] needs "
        "e.g. bind = '0.0.0.0:1883'"
    )


# ----------------------------------------------------------------------------- CIDRs


def test_bad_cidr_names_the_list_index() -> None:
    data = proxy(mode="required", trusted_sources=["10.0.0.0/8", "10.0.0.0/33"])
    assert config_error(data) == (
        "broker.toml: listeners[0].proxy_protocol.trusted_sources[1]: '10.0.0.0/33' is not "
        "a valid CIDR (e.g. '10.0.0.0/8', '2001:db8::/32')"
    )


def test_cidr_with_host_bits_suggests_the_network() -> None:
    data = proxy(mode="required", trusted_sources=["192.168.1.7/24"])
    assert config_error(data).endswith(
        "trusted_sources[0]: '192.168.1.7/24' has host bits set; did you mean '192.168.1.0/24'?"
    )


def test_trusted_sources_must_be_a_list_of_strings() -> None:
    single = config_error(proxy(mode="required", trusted_sources="10.0.0.0/8"))
    assert single.startswith(
        "broker.toml: listeners[0].proxy_protocol.trusted_sources: '10.0.0.0/8' is not a list"
    )
    number = config_error(proxy(mode="required", trusted_sources=[10]))
    assert number.startswith(
        "broker.toml: listeners[0].proxy_protocol.trusted_sources[0]: 10 is not a CIDR string"
    )


def test_trusted_sources_accept_addresses_and_v6() -> None:
    data = proxy(mode="optional", trusted_sources=["192.0.2.7", "2001:db8::/32"])
    policy = parse_config(data).listeners[0].proxy_protocol
    assert policy.trusted_sources == (
        ipaddress.IPv4Network("192.0.2.7/32"),
        ipaddress.IPv6Network("2001:db8::/32"),
    )


# ----------------------------------------------------------------------------- bind strings


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("0.0.0.0:1883", ("0.0.0.0", 1883)),
        ("localhost:0", ("localhost", 0)),
        ("broker-1.example.com:65535", ("broker-1.example.com", 65535)),
        ("[::]:1883", ("::", 1883)),
        ("[::1]:8883", ("::1", 8883)),
        ("[fe80::1%eth0]:1883", ("fe80::1%eth0", 1883)),
    ],
)
def test_parse_bind_accepts(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind(bind) == expected


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("localhost", "'localhost' has no ':PORT' (expected HOST:PORT or [IPV6]:PORT"),
        ("::1:1883", "'::1:1883': an IPv6 address needs brackets, e.g. '[::1]:1883'"),
        ("[::1]1883", "'[::1]1883' is not a valid bind address"),
        ("[::1:1883", "'[::1:1883' is not a valid bind address"),
        ("[127.0.0.1]:1883", "'[127.0.0.1]:1883': only IPv6 addresses go in brackets"),
        ("[zz::1]:1883", "'[zz::1]:1883': 'zz::1' is not a valid IPv6 address"),
        (":1883", "':1883' has no host"),
        ("my host:1883", "'my host:1883': 'my host' is not an IP address or host name"),
        ("-bad-:1883", "'-bad-:1883': '-bad-' is not an IP address or host name"),
        ("127.0.0.1:", "'127.0.0.1:': port '' is not a number (allowed: 0..65535)"),
        ("127.0.0.1:mqtt", "'127.0.0.1:mqtt': port 'mqtt' is not a number (allowed: 0..65535)"),
        ("127.0.0.1:-1", "'127.0.0.1:-1': port '-1' is not a number (allowed: 0..65535)"),
        ("127.0.0.1:65536", "'127.0.0.1:65536': port 65536 is out of range (allowed: 0..65535)"),
        ("127.0.0.1:١٢", "port '١٢' is not a number"),  # non-ASCII digits
    ],
)
def test_parse_bind_rejects(bind: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_bind(bind)


def test_a_url_as_bind_gets_the_host_port_to_use() -> None:
    assert config_error(listener(bind="tcp://0.0.0.0:1883")) == (
        "broker.toml: listeners[0].bind: 'tcp://0.0.0.0:1883': takes HOST:PORT, not a URL: "
        "use 0.0.0.0:1883"
    )
    assert config_error({"http": {"bind": "http://[::1]/metrics"}}) == (
        "broker.toml: http.bind: 'http://[::1]/metrics': takes HOST:PORT, not a URL: use [::1]:80"
    )


def test_bad_bind_in_toml_names_the_key() -> None:
    assert config_error(listener(bind="0.0.0.0:99999")) == (
        "broker.toml: listeners[0].bind: '0.0.0.0:99999': port 99999 is out of range "
        "(allowed: 0..65535)"
    )


@given(
    address=st.ip_addresses(),
    port=st.integers(min_value=0, max_value=65535),
)
def test_bind_property_round_trips_through_parse_bind(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    config = ListenerConfig(host=str(address), port=port)
    assert parse_bind(config.bind) == (str(address), port)
    assert ListenerConfig.from_bind(config.bind) == config


def test_from_bind_passes_other_fields() -> None:
    made = ListenerConfig.from_bind("[::1]:0", name="x", transport=Transport.WS)
    assert made == ListenerConfig(name="x", host="::1", port=0, transport=Transport.WS)
    assert made.bind == "[::1]:0"


# ----------------------------------------------------------------------------- cross-field checks


def test_optional_mode_needs_trusted_sources() -> None:
    message = config_error(proxy(mode="optional"))
    assert message.startswith(
        "broker.toml: listeners[0].proxy_protocol.trusted_sources: mode 'optional' needs a "
        "non-empty list"
    )


def test_required_mode_without_trusted_sources_trusts_everyone() -> None:
    policy = parse_config(proxy(mode="required")).listeners[0].proxy_protocol
    assert policy.mode is ProxyMode.REQUIRED
    assert policy.is_trusted("203.0.113.9")
    assert policy.is_trusted("::1")


@pytest.mark.parametrize(
    "flag", ["use_cn_as_username", "require_tls", "require_verified_client_cert"]
)
@pytest.mark.parametrize("mode", [{}, {"mode": "off"}])
def test_header_options_with_mode_off_are_errors(flag: str, mode: dict[str, str]) -> None:
    # with no header read, the option would do nothing (use_cn_as_username: clients
    # would pick their own username), so the broker must not start
    message = config_error(proxy(**mode, **{flag: True}))
    assert message == (
        f"broker.toml: listeners[0].proxy_protocol.{flag}: {flag} = true needs a PROXY "
        "header to act on, but mode is 'off' (the default: no header is read); set mode = "
        "'required' or 'optional'"
    )
    with pytest.raises(ConfigError) as info:
        ProxyPolicy(**{flag: True})
    assert info.value.key == flag


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_require_tls_and_verified_client_cert_load(mode: str) -> None:
    data = listener(
        transport="tls",
        tls={**TLS_FILES, "cafile": "ca.pem", "require_client_cert": True},
        proxy_protocol={
            "mode": mode,
            "trusted_sources": ["10.0.0.0/8"],
            "require_tls": True,
            "require_verified_client_cert": True,
        },
    )
    policy = parse_config(data).listeners[0].proxy_protocol
    assert policy.require_tls is True
    assert policy.require_verified_client_cert is True
    assert ProxyPolicy().require_tls is False
    assert ProxyPolicy().require_verified_client_cert is False


@pytest.mark.parametrize("flag", ["require_tls", "require_verified_client_cert"])
def test_require_options_must_be_booleans(flag: str) -> None:
    message = config_error(proxy(mode="required", **{flag: "yes"}))
    assert message == (
        f"broker.toml: listeners[0].proxy_protocol.{flag}: 'yes' is not a boolean "
        "(allowed: true, false)"
    )


def test_cn_as_username_and_identity_as_username_on_one_listener() -> None:
    data = listener(
        transport="tls",
        tls={**TLS_FILES, "cafile": "ca.pem", "use_identity_as_username": True},
        proxy_protocol={"mode": "required", "use_cn_as_username": True},
    )
    assert config_error(data) == (
        "broker.toml: listeners[0].proxy_protocol.use_cn_as_username: use_cn_as_username = "
        "true and tls.use_identity_as_username = true both make a certificate the username "
        "(the proxy's report of one, or the one this listener verifies itself); keep one of "
        "them"
    )


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_optional_require_tls_on_a_plain_listener_is_an_error(transport: str) -> None:
    data = listener(
        transport=transport,
        proxy_protocol={"mode": "optional", "trusted_sources": ["10.0.0.0/8"], "require_tls": True},
    )
    assert config_error(data) == (
        "broker.toml: listeners[0].proxy_protocol.require_tls: require_tls = true with mode "
        f"'optional' on a {transport!r} listener: clients that connect without a PROXY header "
        "would not use TLS; use mode 'required', or transport 'tls' or 'wss'"
    )


@pytest.mark.parametrize(
    ("transport", "tls"),
    [
        ("tcp", None),
        ("tls", {**TLS_FILES}),
        ("wss", {**TLS_FILES, "cafile": "ca.pem", "require_client_cert": False}),
    ],
)
def test_optional_require_verified_client_cert_needs_listener_client_certs(
    transport: str, tls: dict[str, Any] | None
) -> None:
    table: dict[str, Any] = {
        "transport": transport,
        "proxy_protocol": {
            "mode": "optional",
            "trusted_sources": ["10.0.0.0/8"],
            "require_verified_client_cert": True,
        },
    }
    if tls is not None:
        table["tls"] = tls
    assert config_error(listener(**table)) == (
        "broker.toml: listeners[0].proxy_protocol.require_verified_client_cert: "
        "require_verified_client_cert = true with mode 'optional': clients that connect "
        "without a PROXY header would need no client certificate; use mode 'required', or "
        "transport 'tls' or 'wss' with tls.require_client_cert = true"
    )


@pytest.mark.parametrize("transport", ["tls", "wss"])
def test_tls_transports_need_a_tls_table(transport: str) -> None:
    assert config_error(listener(transport=transport)).startswith(
        f"broker.toml: listeners[0].tls: transport {transport!r} needs certificates: "
        "add a [listeners.tls] table"
    )


def test_tls_table_needs_certfile_and_keyfile() -> None:
    assert config_error(listener(transport="tls", tls={"certfile": "a.pem"})) == (
        "broker.toml: listeners[0].tls.keyfile: missing; [listeners.tls] needs it"
    )


@pytest.mark.parametrize("flag", ["require_client_cert", "use_identity_as_username"])
def test_client_certificate_options_need_cafile(flag: str) -> None:
    message = config_error(listener(transport="tls", tls={**TLS_FILES, flag: True}))
    assert message == (
        f"broker.toml: listeners[0].tls.cafile: {flag} = true needs cafile "
        "(the CA that signs client certificates)"
    )


def test_duplicate_listener_names() -> None:
    data = {
        "listeners": [
            {"name": "a", "bind": "127.0.0.1:1"},
            {"name": "b", "bind": "127.0.0.1:2"},
            {"name": "a", "bind": "127.0.0.1:3"},
        ]
    }
    assert config_error(data) == (
        "broker.toml: listeners[2].name: 'a' is already the name of listeners[0]; "
        "listener names must be unique"
    )


def test_duplicate_bind_addresses_except_port_zero() -> None:
    data = {"listeners": [{"bind": "[::1]:1883"}, {"bind": "[::1]:1883"}]}
    assert config_error(data) == (
        "broker.toml: listeners[1].bind: '[::1]:1883' is already the address of listeners[0]"
    )
    ephemeral = parse_config({"listeners": [{"bind": "127.0.0.1:0"}, {"bind": "127.0.0.1:0"}]})
    assert len(ephemeral.listeners) == 2


# ----------------------------------------------------------------------------- files


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("[broker]\nreceive_maximum = 20\nretain_available = yes\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message


def test_toml_duplicate_key_is_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("[broker]\nreceive_maximum = 20\nreceive_maximum = 30\n")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 3"):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: config file not found"
    assert info.value.file == str(path)


def test_directory_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_config(tmp_path)
    binary = tmp_path / "latin1.toml"
    binary.write_bytes(b'[broker]\npassword_file = "\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1.toml: not valid UTF-8"):
        load_config(binary)


def test_load_config_errors_carry_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        '[[listeners]]\nbind = "127.0.0.1:1883"\n[listeners.proxy_protocol]\nmode = "sometimes"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.file == str(path)
    assert info.value.key == "listeners[0].proxy_protocol.mode"
    assert str(info.value) == (
        f"{path}: listeners[0].proxy_protocol.mode: "
        "'sometimes' is not one of 'off', 'required', 'optional'"
    )


# ----------------------------------------------------------------------------- embedding


def test_embedding_gets_the_same_checks() -> None:
    with pytest.raises(ConfigError) as info:
        ProxyPolicy(mode=ProxyMode.OPTIONAL)
    assert info.value.key == "trusted_sources"
    with pytest.raises(ConfigError, match=r"^port: true is not an integer"):
        ListenerConfig(port=True)
    with pytest.raises(ConfigError, match=r"^receive_maximum: 0 is out of range"):
        BrokerConfig(receive_maximum=0)
    with pytest.raises(ConfigError, match=r"^tls: transport 'wss' needs certificates"):
        ListenerConfig(transport=Transport.WSS)
    with pytest.raises(ConfigError, match=r"^listeners\[1\]\.name: 'listener0' is already"):
        BrokerConfig(listeners=(ListenerConfig(), ListenerConfig(name="listener0", port=2)))
    with pytest.raises(ConfigError, match=r"^listeners\[0\]: 'x' is not a ListenerConfig"):
        BrokerConfig(listeners=["x"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"^proxy_protocol: 'required' is not a ProxyPolicy"):
        ListenerConfig(proxy_protocol="required")  # type: ignore[arg-type]


def test_embedding_accepts_strings_for_enums_and_networks() -> None:
    policy = ProxyPolicy(mode="optional", trusted_sources=["10.0.0.0/8"])
    assert policy.mode is ProxyMode.OPTIONAL
    assert policy.trusted_sources == (ipaddress.IPv4Network("10.0.0.0/8"),)
    assert ListenerConfig(transport="ws").transport is Transport.WS
    config = BrokerConfig(listeners=[ListenerConfig(name="a"), ListenerConfig(name="b", port=2)])
    assert isinstance(config.listeners, tuple)
    assert BrokerConfig(listeners=()).listeners == ()


# ----------------------------------------------------------------------------- is_trusted


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped (dual-stack socket) counts as IPv4
        ("::ffff:11.0.0.1", False),
        ("2001:db8::5", True),
        ("2001:db9::5", False),
        ("fe80::1%eth0", False),
        ("not-an-ip", False),
        ("/run/haproxy.sock", False),
        ("", False),
    ],
)
def test_is_trusted(host: str, trusted: bool) -> None:
    policy = ProxyPolicy(mode="optional", trusted_sources=["10.0.0.0/8", "2001:db8::/32"])
    assert policy.is_trusted(host) is trusted


def test_is_trusted_with_scope_id() -> None:
    policy = ProxyPolicy(mode="required", trusted_sources=["fe80::/10"])
    assert policy.is_trusted("fe80::1%eth0")


def test_is_trusted_keeps_address_families_apart() -> None:
    # ::/0 is every IPv6 address, not every address; 0.0.0.0/0 every IPv4 one
    policy = ProxyPolicy(mode="required", trusted_sources=["::/0"])
    assert policy.is_trusted("2001:db8::1")
    assert not policy.is_trusted("10.0.0.1")
    v4_only = ProxyPolicy(mode="required", trusted_sources=["0.0.0.0/0"])
    assert v4_only.is_trusted("10.0.0.1")
    assert not v4_only.is_trusted("::1")


def test_topic_alias_maximum_setting() -> None:
    assert BrokerConfig().topic_alias_maximum == 10
    assert parse_config({"broker": {"topic_alias_maximum": 0}}).topic_alias_maximum == 0
    with pytest.raises(ConfigError, match=r"broker\.topic_alias_maximum.*65535"):
        parse_config({"broker": {"topic_alias_maximum": 65536}}, file="b.toml")


# --------------------------------------------------------------------------- workers


def test_reuse_port_setting() -> None:
    assert ListenerConfig().reuse_port is False
    loaded = parse_config(listener(reuse_port=True))
    assert loaded.listeners[0].reuse_port is True
    assert config_error(listener(reuse_port="yes")) == (
        "broker.toml: listeners[0].reuse_port: 'yes' is not a boolean (allowed: true, false)"
    )


def test_workers_setting() -> None:
    assert BrokerConfig().workers == 1
    assert parse_config({"broker": {"workers": 4}}).workers == 4
    assert config_error({"broker": {"workers": 0}}) == (
        "broker.toml: broker.workers: 0 is out of range (allowed: 1..256)"
    )
    assert config_error({"broker": {"workers": 257}}).endswith("out of range (allowed: 1..256)")
    assert config_error({"broker": {"workers": True}}) == (
        "broker.toml: broker.workers: true is not an integer (allowed: 1..256)"
    )


def test_empty_nats_urls_means_the_workers_start_a_nats_server() -> None:
    data: dict[str, Any] = {"broker": {"workers": 2}, "cluster": {"nats_urls": []}}
    loaded = parse_config(data)
    assert loaded.cluster is not None and loaded.cluster.nats_urls == ()
    # a single broker has no supervisor to start one
    alone = {"cluster": {"nats_urls": []}}
    assert config_error(alone).startswith(
        "broker.toml: cluster.nats_urls: is empty, which means 'start a nats-server for the "
        "workers': that needs workers > 1"
    )


def test_load_config_overrides_replace_broker_keys_before_the_checks(tmp_path: Path) -> None:
    file = tmp_path / "broker.toml"
    file.write_text("[broker]\nworkers = 1\n[cluster]\nnats_urls = []\n")
    with pytest.raises(ConfigError, match="needs workers > 1"):
        load_config(file)
    assert load_config(file, overrides={"workers": 3}).workers == 3
    with pytest.raises(ConfigError, match=r"broker\.nope: unknown key"):
        load_config(file, overrides={"nope": 1})


# --------------------------------------------------------------------------- [http]


def test_http_is_off_without_the_table_and_binds_where_told() -> None:
    assert parse_config({}).http is None
    assert parse_config({"http": {}}).http == HttpConfig(host="127.0.0.1", port=9883)
    http = parse_config({"http": {"bind": "[::1]:9100"}}).http
    assert http == HttpConfig(host="::1", port=9100)
    assert http.bind == "[::1]:9100"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"http": {"bind": "nowhere"}}, "broker.toml: http.bind: 'nowhere' has no ':PORT'"),
        (
            {"http": {"bind": "127.0.0.1:70000"}},
            "broker.toml: http.bind: '127.0.0.1:70000': port 70000 is out of range "
            "(allowed: 0..65535)",
        ),
        ({"http": {"bind": 9883}}, "broker.toml: http.bind: 9883 is not a string"),
        (
            {"http": {"port": 9883}},
            "broker.toml: http.port: unknown key; allowed keys: 'bind', 'drain'",
        ),
        ({"http": "127.0.0.1:9883"}, "broker.toml: http: '127.0.0.1:9883' is not a table"),
        (
            {**listener(), "http": {"bind": "127.0.0.1:1883"}},
            "broker.toml: http.bind: '127.0.0.1:1883' is already the address of listeners[0]",
        ),
        (
            {"broker": {"workers": 2}, "http": {}},
            "broker.toml: http.bind: '127.0.0.1:9883' with workers = 2: the workers cannot "
            "share one HTTP port",
        ),
    ],
)
def test_http_value_errors(data: dict[str, Any], expected: str) -> None:
    assert config_error(data).startswith(expected)


def test_http_drain_is_read_and_checked() -> None:
    http = parse_config({"http": {"bind": "127.0.0.1:0", "drain": 5}}).http
    assert http == HttpConfig(host="127.0.0.1", port=0, drain=5.0)
    assert parse_config({"http": {"drain": 1.5}}).http == HttpConfig(drain=1.5)
    assert config_error({"http": {"drain": -1}}).startswith("broker.toml: http.drain: ")


def test_http_config_errors_for_embedding_users() -> None:
    with pytest.raises(ConfigError, match="http: 'x' is not an HttpConfig"):
        BrokerConfig(http="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"port: 65536 is out of range \(allowed: 0..65535\)"):
        HttpConfig(port=65536)


def test_log_level_takes_the_command_lines_levels() -> None:
    assert parse_config({"broker": {"log_level": "debug"}}).log_level == "debug"
    assert BrokerConfig().log_level == "info"
    with pytest.raises(ConfigError) as caught:
        parse_config({"broker": {"log_level": "verbose"}}, file="b.toml")
    assert str(caught.value) == (
        "b.toml: broker.log_level: 'verbose' is not one of 'debug', 'info', 'warning', 'error'"
    )
