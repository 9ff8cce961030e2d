"""Broker configuration: immutable attrs objects plus a strict TOML loader.

The same classes serve embedding users (``BrokerConfig(...)`` in Python) and TOML users
(``load_config("broker.toml")``): every check lives in the attrs validators, so both get
the same errors. The loader only maps TOML tables onto constructor calls, rejects unknown
keys, and prefixes each :class:`~trio_mqtt.errors.ConfigError` with the file name and the
full key path (``listeners[0].proxy_protocol.mode``).
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import attrs

from trio_mqtt.errors import ConfigError
from trio_mqtt.nats.client import redact_url
from trio_mqtt.networks import IPNetwork, address_in, parse_network
from trio_mqtt.proxy.forwarded import ForwardedHeader

__all__ = [
    "AclTopicsBeforeUser",
    "BrokerConfig",
    "ClusterConfig",
    "ForwardedHeader",
    "HttpConfig",
    "IPNetwork",
    "ListenerConfig",
    "ListenerLimits",
    "ProxyMode",
    "ProxyPolicy",
    "TLSConfig",
    "Transport",
    "load_config",
    "parse_bind",
    "parse_config",
]


#: MQTT's largest packet: 268,435,455 bytes of remaining length plus a 5-byte fixed header.
MAX_MQTT_PACKET_SIZE = 268_435_455 + 5
#: The largest PROXY v2 header (16-byte preamble + 65,535 bytes) and the largest without
#: TLVs (the 216-byte UNIX address block); a cap below that would reject valid headers.
MAX_PROXY_HEADER_SIZE = 16 + 65_535
MIN_PROXY_HEADER_SIZE = 16 + 216
MAX_SESSION_EXPIRY = 0xFFFF_FFFF
MAX_WORKERS = 256


class Transport(enum.Enum):
    """What a listener speaks on top of TCP."""

    TCP = "tcp"
    TLS = "tls"
    WS = "ws"
    WSS = "wss"


class ProxyMode(enum.Enum):
    """Whether a listener reads a PROXY protocol header (see docs/configuration.md)."""

    OFF = "off"
    REQUIRED = "required"
    OPTIONAL = "optional"


class AclTopicsBeforeUser(enum.Enum):
    """Whom the ACL file's rules before its first ``user`` line apply to."""

    EVERYONE = "everyone"  # every client, anonymous or not (trio-mqtt's meaning)
    ANONYMOUS = "anonymous"  # clients without a username only (mosquitto's meaning)


# --------------------------------------------------------------------------- validators
# Each raises ConfigError(message, key=<attribute name>); the TOML loader re-raises it
# with the file name and the full key path.


def _show(value: object) -> str:
    """*value* as a TOML user would write it (``true``, not ``True``); repr otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _fail(attribute: attrs.Attribute[Any], message: str) -> ConfigError:
    return ConfigError(message, key=attribute.name)


def _int_in(low: int, high: int | None = None) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An integer (never a bool) in ``low..high`` (no upper bound when *high* is None)."""
    allowed = f"{low}..{high}" if high is not None else f">= {low}"

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(attribute, f"{_show(value)} is not an integer (allowed: {allowed})")
        if value < low or (high is not None and value > high):
            raise _fail(attribute, f"{value!r} is out of range (allowed: {allowed})")

    return check


def _seconds(*, allow_zero: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """A finite number of seconds (int or float, never a bool), > 0 or >= 0."""
    allowed = "a number >= 0" if allow_zero else "a number > 0"

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(
                attribute, f"{_show(value)} is not a number of seconds (allowed: {allowed})"
            )
        too_small = value < 0 if allow_zero else value <= 0
        if not math.isfinite(value) or too_small:
            raise _fail(attribute, f"{value!r} is out of range (allowed: {allowed})")

    return check


def _bool(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(attribute, f"{value!r} is not a boolean (allowed: true, false)")


def _log_format(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in ("text", "json"):
        raise _fail(attribute, f"{_show(value)} is not one of 'text', 'json'")


#: The values of ``[broker] log_level`` (and of ``--log-level``).
LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in LOG_LEVELS:
        choices = ", ".join(repr(level) for level in LOG_LEVELS)
        raise _fail(attribute, f"{_show(value)} is not one of {choices}")


def _str(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise _fail(attribute, f"{_show(value)} is not a string")


def _nonempty_str(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _str(instance, attribute, value)
    if not value:
        raise _fail(attribute, "must not be empty")


def _optional_nonempty_str(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _nonempty_str(instance, attribute, value)


def _instance_of(cls: type, what: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, cls):
            raise _fail(attribute, f"{value!r} is not {what}")

    return check


_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _host_problem(host: str) -> str | None:
    """Why *host* cannot be bound (None when it is an IP literal or a host name)."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not a valid IPv6 address"
        return None
    if _HOSTNAME.fullmatch(host) is None:
        return f"{host!r} is not an IP address or host name"
    return None


def _host(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _nonempty_str(instance, attribute, value)
    problem = _host_problem(value)
    if problem is not None:
        raise _fail(attribute, problem)


def _ws_path(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _str(instance, attribute, value)
    if not value.startswith("/"):
        raise _fail(attribute, f"{value!r} must start with '/' (e.g. '/mqtt')")


# --------------------------------------------------------------------------- converters
# Converters let embedding users write strings (transport="tls", trusted_sources=["10/8"]);
# they raise ConfigError with the attribute name as the key.


def _enum_choices(cls: type[enum.Enum]) -> str:
    return ", ".join(repr(member.value) for member in cls)


_E = TypeVar("_E", bound=enum.Enum)


def _to_enum(cls: type[_E], value: _E | str, key: str) -> _E:
    """``value`` as a member of the enum ``cls`` (a member or its value); ConfigError."""
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        message = f"{_show(value)} is not one of {_enum_choices(cls)}"
        raise ConfigError(message, key=key) from None


# named functions, as attrs converters (the mypy plugin reads them)
def _to_transport(value: Transport | str) -> Transport:
    return _to_enum(Transport, value, "transport")


def _to_proxy_mode(value: ProxyMode | str) -> ProxyMode:
    return _to_enum(ProxyMode, value, "mode")


def _to_acl_topics_before_user(value: AclTopicsBeforeUser | str) -> AclTopicsBeforeUser:
    return _to_enum(AclTopicsBeforeUser, value, "acl_topics_before_user")


def _parse_network(text: str, key: str) -> IPNetwork:
    try:
        return parse_network(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None


def _to_networks(
    value: Iterable[IPNetwork | str], key: str = "trusted_sources"
) -> tuple[IPNetwork, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        message = f"{_show(value)} is not a list of CIDRs (e.g. ['10.0.0.0/8', '192.168.1.7'])"
        raise ConfigError(message, key=key)
    networks: list[IPNetwork] = []
    items: Iterable[object] = value  # checked at run time: embedding callers are untyped
    for index, item in enumerate(items):
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(item)
        elif isinstance(item, str):
            networks.append(_parse_network(item, f"{key}[{index}]"))
        else:
            message = f"{_show(item)} is not a CIDR string (e.g. '10.0.0.0/8')"
            raise ConfigError(message, key=f"{key}[{index}]")
    return tuple(networks)


def _to_ws_trusted_proxies(value: Iterable[IPNetwork | str]) -> tuple[IPNetwork, ...]:
    return _to_networks(value, "ws_trusted_proxies")


def _to_deny_sources(value: Iterable[IPNetwork | str]) -> tuple[IPNetwork, ...]:
    return _to_networks(value, "deny_sources")


def _rate(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    allowed = "a number >= 0 (0: no limit)"
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise _fail(attribute, f"{_show(value)} is not a number (allowed: {allowed})")
    if value < 0 or math.isinf(value):
        raise _fail(attribute, f"{value!r} is out of range (allowed: {allowed})")


def _to_forwarded_header(value: ForwardedHeader | str) -> ForwardedHeader:
    if isinstance(value, ForwardedHeader):
        return value
    if isinstance(value, str):
        try:
            return ForwardedHeader(value.lower())
        except ValueError:
            pass
    message = f"{_show(value)} is not one of {_enum_choices(ForwardedHeader)}"
    raise ConfigError(message, key="ws_forwarded_header")


def default_listener_name(index: int) -> str:
    """The name of a listener given none: ``listener<index>``, its position in
    ``BrokerConfig.listeners`` from 0. One rule for ``BrokerConfig()``'s default listener,
    a ``[[listeners]]`` table without ``name`` and ``--listen``: the first is ``listener0``.
    """
    return f"listener{index}"


def _to_listeners(value: Iterable[ListenerConfig]) -> tuple[ListenerConfig, ...]:
    if isinstance(value, str | bytes | ListenerConfig) or not isinstance(value, Iterable):
        raise ConfigError(f"{value!r} is not a sequence of ListenerConfig", key="listeners")
    listeners: list[ListenerConfig] = []
    items: Iterable[object] = value  # checked at run time: embedding callers are untyped
    for index, item in enumerate(items):
        if not isinstance(item, ListenerConfig):
            raise ConfigError(f"{item!r} is not a ListenerConfig", key=f"listeners[{index}]")
        named = item.name or default_listener_name(index)
        listeners.append(item if named == item.name else attrs.evolve(item, name=named))
    return tuple(listeners)


# --------------------------------------------------------------------------- config classes


@attrs.frozen
class ProxyPolicy:
    """How a listener treats PROXY protocol headers (v1 and v2, auto-detected).

    ``trusted_sources`` lists the networks allowed to send a header; in ``required``
    mode an empty tuple trusts every peer, in ``optional`` mode it must not be empty.
    ``require_tls`` and ``require_verified_client_cert`` refuse a proxied client whose
    header does not report TLS (a verified client certificate) between it and the proxy.
    The options that act on a header are errors with ``mode = "off"``, where none is read.
    """

    mode: ProxyMode = attrs.field(default=ProxyMode.OFF, converter=_to_proxy_mode)
    trusted_sources: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_to_networks)
    timeout: float = attrs.field(default=3.0, validator=_seconds(allow_zero=False))
    use_cn_as_username: bool = attrs.field(default=False, validator=_bool)
    max_header_size: int = attrs.field(
        default=4096, validator=_int_in(MIN_PROXY_HEADER_SIZE, MAX_PROXY_HEADER_SIZE)
    )
    require_tls: bool = attrs.field(default=False, validator=_bool)
    require_verified_client_cert: bool = attrs.field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        if self.mode is ProxyMode.OFF:
            for flag in ("use_cn_as_username", "require_tls", "require_verified_client_cert"):
                if getattr(self, flag):
                    raise ConfigError(
                        f"{flag} = true needs a PROXY header to act on, but mode is 'off' "
                        "(the default: no header is read); set mode = 'required' or 'optional'",
                        key=flag,
                    )
        if self.mode is ProxyMode.OPTIONAL and not self.trusted_sources:
            raise ConfigError(
                "mode 'optional' needs a non-empty list of proxy CIDRs allowed to send a "
                "header (e.g. trusted_sources = ['10.0.0.0/8']); use mode 'required' if "
                "every connection comes through the proxy",
                key="trusted_sources",
            )

    def is_trusted(self, host: str) -> bool:
        """Whether a peer at *host* (an IP address string) may send a PROXY header.

        An empty ``trusted_sources`` trusts everyone; a host that is not an IP address
        (e.g. a UNIX socket path) is trusted only then.
        """
        if not self.trusted_sources:
            return True
        return address_in(host, self.trusted_sources)


@attrs.frozen
class TLSConfig:
    """Certificates for a ``tls`` or ``wss`` listener.

    ``cafile`` is what client certificates are verified against; it is required when
    client certificates are required or used as the MQTT username.
    """

    certfile: str = attrs.field(validator=_nonempty_str)
    keyfile: str = attrs.field(validator=_nonempty_str)
    cafile: str | None = attrs.field(default=None, validator=_optional_nonempty_str)
    require_client_cert: bool = attrs.field(default=False, validator=_bool)
    use_identity_as_username: bool = attrs.field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        for flag in ("require_client_cert", "use_identity_as_username"):
            if getattr(self, flag) and self.cafile is None:
                raise ConfigError(
                    f"{flag} = true needs cafile (the CA that signs client certificates)",
                    key="cafile",
                )


@attrs.frozen
class ListenerLimits:
    """Limits on the real client address (the PROXY header's, else the socket's).

    Refused connections are closed right after the PROXY header (at once without one),
    before TLS or MQTT, logged as ``refused client <address> on listener '<name>':
    <reason>`` (docs/operations.md, fail2ban). 0 turns a limit off.
    """

    max_connections_per_address: int = attrs.field(default=0, validator=_int_in(0))
    # new connections a second per address, in bursts of up to connect_burst_per_address
    connect_rate_per_address: float = attrs.field(default=0.0, validator=_rate)
    connect_burst_per_address: int = attrs.field(default=10, validator=_int_in(1))
    # IPv6 clients count per network of this prefix length (64: per /64); 128: per address
    ipv6_prefix_length: int = attrs.field(default=128, validator=_int_in(1, 128))
    deny_sources: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_to_deny_sources)

    @property
    def limits_addresses(self) -> bool:
        """Whether connections are counted per address at all."""
        return bool(self.max_connections_per_address or self.connect_rate_per_address)


@attrs.frozen
class ListenerConfig:
    """One socket the broker accepts MQTT connections on.

    ``tls`` is required for the ``tls`` and ``wss`` transports and ignored by the others.
    """

    # "" (none given): named by its position once in a BrokerConfig, "listener0" for the
    # first (default_listener_name)
    name: str = attrs.field(default="", validator=_str)
    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=1883, validator=_int_in(0, 65535))
    transport: Transport = attrs.field(default=Transport.TCP, converter=_to_transport)
    max_connections: int = attrs.field(default=100_000, validator=_int_in(1))
    proxy_protocol: ProxyPolicy = attrs.field(
        factory=ProxyPolicy, validator=_instance_of(ProxyPolicy, "a ProxyPolicy")
    )
    tls: TLSConfig | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_instance_of(TLSConfig, "a TLSConfig")),
    )
    ws_path: str = attrs.field(default="/mqtt", validator=_ws_path)
    # SO_REUSEPORT: several processes accept on one port and the kernel spreads the
    # connections (what ``--workers`` uses); with port 0 each process gets its own port
    reuse_port: bool = attrs.field(default=False, validator=_bool)
    # ws/wss behind HTTP reverse proxies: the proxies whose ws_forwarded_header names the
    # client (docs/load-balancers.md); empty: the header is never used
    ws_trusted_proxies: tuple[IPNetwork, ...] = attrs.field(
        default=(), converter=_to_ws_trusted_proxies
    )
    ws_forwarded_header: ForwardedHeader = attrs.field(
        default=ForwardedHeader.X_FORWARDED_FOR, converter=_to_forwarded_header
    )
    # per client address and per client (docs/load-balancers.md, "Limits")
    limits: ListenerLimits = attrs.field(
        factory=ListenerLimits, validator=_instance_of(ListenerLimits, "a ListenerLimits")
    )

    def __attrs_post_init__(self) -> None:
        if self.transport in (Transport.TLS, Transport.WSS) and self.tls is None:
            raise ConfigError(
                f"transport {self.transport.value!r} needs certificates: add a "
                "[listeners.tls] table (or pass tls=TLSConfig(...)) with certfile and keyfile",
                key="tls",
            )
        if (
            self.proxy_protocol.use_cn_as_username
            and self.tls is not None
            and self.tls.use_identity_as_username
        ):
            raise ConfigError(
                "use_cn_as_username = true and tls.use_identity_as_username = true both "
                "make a certificate the username (the proxy's report of one, or the one "
                "this listener verifies itself); keep one of them",
                key="proxy_protocol.use_cn_as_username",
            )
        self._check_direct_clients()
        if self.ws_trusted_proxies and self.transport not in (Transport.WS, Transport.WSS):
            raise ConfigError(
                f"is for 'ws' and 'wss' listeners (an HTTP header names the client); this "
                f"listener's transport is {self.transport.value!r}: for a TCP or TLS "
                "listener behind a proxy, use [listeners.proxy_protocol]",
                key="ws_trusted_proxies",
            )

    def _check_direct_clients(self) -> None:
        """In mode 'optional', clients without a header must meet the requirements too."""
        proxy = self.proxy_protocol
        if proxy.mode is not ProxyMode.OPTIONAL:
            return
        direct_tls = self.transport in (Transport.TLS, Transport.WSS)
        if proxy.require_tls and not direct_tls:
            raise ConfigError(
                "require_tls = true with mode 'optional' on a "
                f"{self.transport.value!r} listener: clients that connect without a PROXY "
                "header would not use TLS; use mode 'required', or transport 'tls' or 'wss'",
                key="proxy_protocol.require_tls",
            )
        direct_cert = direct_tls and self.tls is not None and self.tls.require_client_cert
        if proxy.require_verified_client_cert and not direct_cert:
            raise ConfigError(
                "require_verified_client_cert = true with mode 'optional': clients that "
                "connect without a PROXY header would need no client certificate; use mode "
                "'required', or transport 'tls' or 'wss' with tls.require_client_cert = true",
                key="proxy_protocol.require_verified_client_cert",
            )

    @property
    def bind(self) -> str:
        """``host:port``, with an IPv6 host in brackets (``[::1]:1883``)."""
        return format_bind(self.host, self.port)

    @classmethod
    def from_bind(cls, bind: str, **kwargs: Any) -> Self:
        """A listener on *bind* (``host:port`` or ``[v6]:port``); other fields from *kwargs*."""
        host, port = parse_bind(bind)
        return cls(host=host, port=port, **kwargs)


_NODE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NATS_URL = re.compile(r"(nats|tls)://[^\s/]+:[0-9]{1,5}")


def _node_name(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _str(instance, attribute, value)
    if value and not _NODE_NAME.fullmatch(value):
        raise _fail(
            attribute,
            f"{_show(value)} is not a node name (allowed: 1 to 64 of A-Z, a-z, 0-9, '_', '-')",
        )


def _to_nats_urls(value: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ConfigError(
            f"{_show(value)} is not a list of URLs (write nats_urls = [{_show(value)}])",
            key="nats_urls",
        )
    urls = tuple(value)
    for url in urls:
        if not isinstance(url, str) or not _NATS_URL.fullmatch(url):
            shown = _show(redact_url(url) if isinstance(url, str) else url)
            raise ConfigError(
                f"{shown} is not a NATS URL (expected nats://HOST:PORT or tls://HOST:PORT, "
                "e.g. 'nats://127.0.0.1:4222', with USER:PASSWORD@ or TOKEN@ before the host "
                "for a server that requires them)",
                key="nats_urls",
            )
    return urls


@attrs.frozen
class ClusterConfig:
    """Join a cluster of trio-mqtt nodes that share traffic and state through NATS.

    ``node_name`` must be unique per node; empty means "derive one from the host name and
    process id" at startup. ``nats_urls`` are the NATS servers (with JetStream) to use;
    empty means "the ``--workers`` supervisor starts a nats-server for its workers", so
    it needs ``BrokerConfig.workers`` > 1.
    ``replicas`` is the JetStream replica count of the cluster's buckets and streams
    (at most the number of NATS servers).

    TLS towards NATS: a ``tls://`` URL insists on it, a ``nats://`` URL follows the
    server (it upgrades when the server requires TLS). ``nats_tls_ca_file`` is the CA
    that signs the NATS servers' certificates (None: the system's trust store, for
    ``tls://`` URLs; a ``nats://`` server that requires TLS needs one of the
    ``nats_tls_*`` files set); ``nats_tls_cert_file`` and ``nats_tls_key_file`` are the
    node's client certificate for servers that verify clients (``verify: true``), both
    or neither. ``nats_tls_handshake_first`` is for servers configured with
    ``handshake_first``. Credentials go in the URLs (``nats://USER:PASSWORD@HOST:PORT``,
    ``nats://TOKEN@HOST:PORT``); messages and logs show them as ``***``.
    """

    node_name: str = attrs.field(default="", validator=_node_name)
    nats_urls: tuple[str, ...] = attrs.field(
        default=("nats://127.0.0.1:4222",), converter=_to_nats_urls
    )
    replicas: int = attrs.field(default=1, validator=_int_in(1, 5))
    nats_tls_ca_file: str | None = attrs.field(default=None, validator=_optional_nonempty_str)
    nats_tls_cert_file: str | None = attrs.field(default=None, validator=_optional_nonempty_str)
    nats_tls_key_file: str | None = attrs.field(default=None, validator=_optional_nonempty_str)
    nats_tls_handshake_first: bool = attrs.field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            given, missing = ("nats_tls_cert_file", "nats_tls_key_file")
            if self.nats_tls_cert_file is None:
                given, missing = missing, given
            raise ConfigError(
                f"missing: {given} is set, and a client certificate needs both "
                "nats_tls_cert_file and nats_tls_key_file (its private key); set both or "
                "neither",
                key=missing,
            )

    @property
    def uses_nats_tls_files(self) -> bool:
        """Whether any ``nats_tls_*`` file is set (then the node builds its own context)."""
        return any(
            name is not None
            for name in (self.nats_tls_ca_file, self.nats_tls_cert_file, self.nats_tls_key_file)
        )


@attrs.frozen
class HttpConfig:
    """The operators' HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``.

    Served by the broker's own process (docs/operations.md); port 0 lets the OS pick one.
    """

    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=9883, validator=_int_in(0, 65535))
    # seconds between /readyz turning 503 at a graceful shutdown and the listeners
    # closing: time for a load balancer's health checks to see it and stop sending clients
    drain: float = attrs.field(default=0.0, validator=_seconds(allow_zero=True))

    @property
    def bind(self) -> str:
        """``host:port``, with an IPv6 host in brackets (``[::1]:9883``)."""
        return format_bind(self.host, self.port)

    @classmethod
    def from_bind(cls, bind: str, *, drain: float = 0.0) -> Self:
        """The endpoint on *bind* (``host:port`` or ``[v6]:port``)."""
        host, port = parse_bind(bind)
        return cls(host=host, port=port, drain=drain)


def _unique_listeners(_instance: Any, _attribute: Any, value: tuple[ListenerConfig, ...]) -> None:
    first_with_name: dict[str, int] = {}
    first_with_bind: dict[tuple[str, int], int] = {}
    for index, listener in enumerate(value):
        other = first_with_name.setdefault(listener.name, index)
        if other != index:
            raise ConfigError(
                f"{listener.name!r} is already the name of listeners[{other}]; "
                "listener names must be unique",
                key=f"listeners[{index}].name",
            )
        if listener.port == 0:
            continue  # port 0: the OS picks a free port each time
        other = first_with_bind.setdefault((listener.host, listener.port), index)
        if other != index:
            raise ConfigError(
                f"{listener.bind!r} is already the address of listeners[{other}]",
                key=f"listeners[{index}].bind",
            )


@attrs.frozen
class BrokerConfig:
    """Everything the broker needs; ``BrokerConfig()`` is the embedded default.

    The default has one plain TCP listener on 127.0.0.1:1883, anonymous access and
    in-memory state.
    """

    max_packet_size: int = attrs.field(
        default=1_048_576, validator=_int_in(1, MAX_MQTT_PACKET_SIZE)
    )
    max_keepalive: int = attrs.field(default=65535, validator=_int_in(1, 65535))
    connect_timeout: float = attrs.field(default=10.0, validator=_seconds(allow_zero=False))
    receive_maximum: int = attrs.field(default=20, validator=_int_in(1, 65535))
    # QoS 1/2 messages in flight to one client; 0: only its Receive Maximum limits them
    max_inflight_messages: int = attrs.field(default=0, validator=_int_in(0, 65535))
    topic_alias_maximum: int = attrs.field(default=10, validator=_int_in(0, 65535))
    # QoS 1/2 messages kept for an offline persistent session (mosquitto's meaning)
    max_queued_messages: int = attrs.field(default=1000, validator=_int_in(1))
    # bytes waiting for one client, online or offline: the slow-client limit
    max_queued_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_int_in(1))
    max_session_expiry: int = attrs.field(default=86400, validator=_int_in(0, MAX_SESSION_EXPIRY))
    # PUBLISH packets and payload bytes a second one client may send (0: no limit); over
    # it the broker reads nothing more from that client for a while: back-pressure, not loss
    max_publish_rate: int = attrs.field(default=0, validator=_int_in(0))
    max_publish_bytes_rate: int = attrs.field(default=0, validator=_int_in(0))
    retain_available: bool = attrs.field(default=True, validator=_bool)
    allow_anonymous: bool = attrs.field(default=True, validator=_bool)
    password_file: str = attrs.field(default="", validator=_str)
    acl_file: str = attrs.field(default="", validator=_str)
    acl_topics_before_user: AclTopicsBeforeUser = attrs.field(
        default=AclTopicsBeforeUser.EVERYONE, converter=_to_acl_topics_before_user
    )
    persistence: str = attrs.field(default="", validator=_str)
    shutdown_timeout: float = attrs.field(default=5.0, validator=_seconds(allow_zero=True))
    sys_interval: float = attrs.field(default=10.0, validator=_seconds(allow_zero=True))
    # how the trio-mqtt command writes log lines: "text" or "json" (one object per line);
    # --log-format overrides it; embedding with open_broker ignores it
    log_format: str = attrs.field(default="text", validator=_log_format)
    # what the trio-mqtt command logs (SIGHUP applies a change); --log-level overrides it;
    # embedding with open_broker ignores it
    log_level: str = attrs.field(default="info", validator=_log_level)
    listeners: tuple[ListenerConfig, ...] = attrs.field(
        factory=lambda: (ListenerConfig(),),
        converter=_to_listeners,
        validator=_unique_listeners,
    )
    # None: a single node, nothing shared
    cluster: ClusterConfig | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_instance_of(ClusterConfig, "a ClusterConfig")),
    )
    # processes of the ``trio-mqtt`` command (> 1: a supervisor and N cluster nodes on
    # one port, see trio_mqtt/supervisor.py); embedding with open_broker ignores it
    workers: int = attrs.field(default=1, validator=_int_in(1, MAX_WORKERS))
    # the operators' HTTP endpoint (metrics, health); None: off
    http: HttpConfig | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_instance_of(HttpConfig, "an HttpConfig")),
    )

    def __attrs_post_init__(self) -> None:
        self._check_http()
        if self.cluster is not None and not self.cluster.nats_urls and self.workers == 1:
            raise ConfigError(
                "is empty, which means 'start a nats-server for the workers': that needs "
                "workers > 1 ([broker] workers or --workers); a single broker must name at "
                "least one NATS server, e.g. ['nats://127.0.0.1:4222']",
                key="cluster.nats_urls",
            )

    def _check_http(self) -> None:
        http = self.http
        if http is None:
            return
        if self.workers > 1:
            raise ConfigError(
                f"{http.bind!r} with workers = {self.workers}: the workers cannot share one "
                "HTTP port (each has its own counters); use workers = 1 or leave out [http]",
                key="http.bind",
            )
        if http.port == 0:
            return
        for index, listener in enumerate(self.listeners):
            if (listener.host, listener.port) == (http.host, http.port):
                raise ConfigError(
                    f"{http.bind!r} is already the address of listeners[{index}]",
                    key="http.bind",
                )


# --------------------------------------------------------------------------- bind strings

_BIND_HELP = "expected HOST:PORT or [IPV6]:PORT, e.g. '0.0.0.0:1883' or '[::]:1883'"


# The port a URL without one means, by scheme (for the advice of bind_of_url).
_URL_DEFAULT_PORTS = {
    "mqtts": 8883,
    "ssl": 8883,
    "tls": 8883,
    "ws": 80,
    "wss": 443,
    "http": 80,
    "https": 443,
}


def bind_of_url(url: str) -> str | None:
    """The ``HOST:PORT`` someone giving *url* (``tcp://0.0.0.0:1883``) meant, or None
    when *url* is not a URL (no ``scheme://``) or names no usable host and port."""
    if "://" not in url:
        return None
    try:
        split = urllib.parse.urlsplit(url)
        host, port = split.hostname, split.port
    except ValueError:
        return None
    if not host:
        return None
    if port is None:
        port = _URL_DEFAULT_PORTS.get(split.scheme.lower(), 1883)
    bind = format_bind(host, port)
    try:
        parse_bind(bind)
    except ConfigError:
        return None
    return bind


def url_advice(url: str) -> str:
    """What to write instead of *url* where ``HOST:PORT`` is expected."""
    bind = bind_of_url(url)
    return f"use {bind}" if bind is not None else "e.g. 127.0.0.1:1883"


def format_bind(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets: what ``parse_bind`` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_bind(bind: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into ``(host, port)``; ConfigError if invalid."""
    if not isinstance(bind, str):
        raise ConfigError(f"{_show(bind)} is not a string ({_BIND_HELP})")
    if "://" in bind:
        raise ConfigError(f"{bind!r}: takes HOST:PORT, not a URL: {url_advice(bind)}")
    if bind.startswith("["):
        host, closed, rest = bind[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise ConfigError(f"{bind!r} is not a valid bind address ({_BIND_HELP})")
        port_text = rest[1:]
        if ":" not in host:
            raise ConfigError(f"{bind!r}: only IPv6 addresses go in brackets ({_BIND_HELP})")
    else:
        host, colon, port_text = bind.rpartition(":")
        if not colon:
            raise ConfigError(f"{bind!r} has no ':PORT' ({_BIND_HELP})")
        if ":" in host:
            raise ConfigError(
                f"{bind!r}: an IPv6 address needs brackets, e.g. '[{host}]:{port_text}'"
            )
    if not host:
        raise ConfigError(f"{bind!r} has no host ({_BIND_HELP})")
    problem = _host_problem(host)
    if problem is not None:
        raise ConfigError(f"{bind!r}: {problem} ({_BIND_HELP})")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"{bind!r}: port {port_text!r} is not a number (allowed: 0..65535)")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{bind!r}: port {port} is out of range (allowed: 0..65535)")
    return host, port


# --------------------------------------------------------------------------- TOML loading

_BROKER_KEYS = tuple(
    field.name
    for field in attrs.fields(BrokerConfig)
    if field.name not in ("listeners", "cluster", "http")
)
_CLUSTER_KEYS = tuple(field.name for field in attrs.fields(ClusterConfig))
_HTTP_KEYS = ("bind", "drain")
_LISTENER_KEYS = (
    "name",
    "bind",
    "transport",
    "max_connections",
    "ws_path",
    "reuse_port",
    "ws_trusted_proxies",
    "ws_forwarded_header",
)
_LISTENER_TABLES = ("proxy_protocol", "tls", "limits")
_PROXY_KEYS = tuple(field.name for field in attrs.fields(ProxyPolicy))
_LIMITS_KEYS = tuple(field.name for field in attrs.fields(ListenerLimits))
_TLS_KEYS = tuple(field.name for field in attrs.fields(TLSConfig))
_TLS_FILE_KEYS = ("certfile", "keyfile", "cafile")
#: [cluster] keys holding file names; each file must exist at startup.
_CLUSTER_FILE_KEYS = ("nats_tls_ca_file", "nats_tls_cert_file", "nats_tls_key_file")
#: Broker keys holding file names, and whether the file must exist at startup.
_BROKER_FILE_KEYS = {"password_file": True, "acl_file": True, "persistence": False}


def _under(prefix: str) -> Callable[[str | None], str]:
    """Maps a validator's key (an attribute name, or None) to its full path under *prefix*."""
    return lambda key: prefix if key is None else f"{prefix}.{key}"


def _detail(error: ConfigError) -> str:
    """The message of *error* without the ``file: key:`` prefix ConfigError adds."""
    return error.detail


@attrs.frozen
class _Loader:
    """Walks one parsed TOML document; knows the file name for error messages."""

    file: str
    #: Directory that relative file paths are resolved against, and whose files must
    #: exist (only when loading from a file; None for parse_config on a mapping).
    base_dir: Path | None

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    @contextmanager
    def keyed(self, key_of: Callable[[str | None], str | None]) -> Iterator[None]:
        """Re-raise a validator's ConfigError with the file and the full key path."""
        try:
            yield
        except ConfigError as exc:
            raise self.error(key_of(exc.key), _detail(exc)) from None

    def table(self, value: Any, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        """*value* checked to be a table whose keys are all in *allowed*."""
        if not isinstance(value, Mapping):
            raise self.error(key or None, f"{_show(value)} is not a table")
        for name in value:
            if name not in allowed:
                hint = difflib.get_close_matches(name, allowed, n=1)
                did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
                choices = ", ".join(repr(a) for a in allowed)
                raise self.error(
                    f"{key}.{name}" if key else name,
                    f"unknown key; {did_you_mean}allowed keys: {choices}",
                )
        return value

    def path(self, value: Any, key: str, *, must_exist: bool) -> Any:
        """*value* resolved against the config file's directory (when there is one)."""
        if self.base_dir is None or not isinstance(value, str) or not value:
            return value
        resolved = self.base_dir / value
        if must_exist and not resolved.exists():
            raise self.error(key, f"{value!r} does not exist (looked for {str(resolved)!r})")
        return str(resolved)

    def config(
        self, data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> BrokerConfig:
        document = self.table(data, "", ("broker", "listeners", "cluster", "http"))
        broker = dict(self.table(document.get("broker", {}), "broker", _BROKER_KEYS))
        broker.update(self.table(overrides or {}, "broker", _BROKER_KEYS))
        for name, must_exist in _BROKER_FILE_KEYS.items():
            if name in broker:
                broker[name] = self.path(broker[name], f"broker.{name}", must_exist=must_exist)
        if "listeners" in document:
            listeners = document["listeners"]
            if not isinstance(listeners, list):
                raise self.error(
                    "listeners", f"{listeners!r} is not an array of tables (use [[listeners]])"
                )
            broker["listeners"] = [
                self.listener(item, index) for index, item in enumerate(listeners)
            ]
        if "cluster" in document:
            broker["cluster"] = self.cluster(document["cluster"])
        if "http" in document:
            broker["http"] = self.http(document["http"])

        def key_of(key: str | None) -> str | None:
            if key is None or key.startswith(("listeners", "cluster", "http")):
                return key
            return f"broker.{key}"

        with self.keyed(key_of):
            return BrokerConfig(**broker)

    def listener(self, data: Any, index: int) -> ListenerConfig:
        prefix = f"listeners[{index}]"
        table = self.table(data, prefix, _LISTENER_KEYS + _LISTENER_TABLES)
        if "bind" not in table:
            raise self.error(
                f"{prefix}.bind", "missing; every [[listeners]] needs e.g. bind = '0.0.0.0:1883'"
            )
        kwargs: dict[str, Any] = {
            key: value for key, value in table.items() if key not in ("bind", *_LISTENER_TABLES)
        }
        if kwargs.get("name") == "":
            raise self.error(
                f"{prefix}.name",
                f"must not be empty; leave it out to get {default_listener_name(index)!r}",
            )
        with self.keyed(lambda _key: f"{prefix}.bind"):
            kwargs["host"], kwargs["port"] = parse_bind(table["bind"])
        if "proxy_protocol" in table:
            kwargs["proxy_protocol"] = self.proxy_policy(table["proxy_protocol"], prefix)
        if "tls" in table:
            kwargs["tls"] = self.tls(table["tls"], prefix)
        if "limits" in table:
            kwargs["limits"] = self.limits(table["limits"], prefix)

        def key_of(key: str | None) -> str:
            return _under(prefix)("bind" if key in ("host", "port") else key)

        with self.keyed(key_of):
            return ListenerConfig(**kwargs)

    def proxy_policy(self, data: Any, listener_prefix: str) -> ProxyPolicy:
        prefix = f"{listener_prefix}.proxy_protocol"
        table = self.table(data, prefix, _PROXY_KEYS)
        with self.keyed(_under(prefix)):
            return ProxyPolicy(**table)

    def limits(self, data: Any, listener_prefix: str) -> ListenerLimits:
        prefix = f"{listener_prefix}.limits"
        table = self.table(data, prefix, _LIMITS_KEYS)
        with self.keyed(_under(prefix)):
            return ListenerLimits(**table)

    def cluster(self, data: Any) -> ClusterConfig:
        table = dict(self.table(data, "cluster", _CLUSTER_KEYS))
        for name in _CLUSTER_FILE_KEYS:
            if name in table:
                table[name] = self.path(table[name], f"cluster.{name}", must_exist=True)
        with self.keyed(_under("cluster")):
            return ClusterConfig(**table)

    def http(self, data: Any) -> HttpConfig:
        table = self.table(data, "http", _HTTP_KEYS)
        drain = table.get("drain", 0.0)
        with self.keyed(lambda _key: "http.drain"):
            HttpConfig(drain=drain)  # checked on its own: an error names this key
        if "bind" not in table:
            return HttpConfig(drain=drain)
        with self.keyed(lambda _key: "http.bind"):
            return HttpConfig.from_bind(table["bind"], drain=drain)

    def tls(self, data: Any, listener_prefix: str) -> TLSConfig:
        prefix = f"{listener_prefix}.tls"
        table = dict(self.table(data, prefix, _TLS_KEYS))
        for name in _TLS_FILE_KEYS:
            if name in table:
                table[name] = self.path(table[name], f"{prefix}.{name}", must_exist=True)
        missing = [name for name in ("certfile", "keyfile") if name not in table]
        if missing:
            raise self.error(f"{prefix}.{missing[0]}", "missing; [listeners.tls] needs it")
        with self.keyed(_under(prefix)):
            return TLSConfig(**table)


def parse_config(data: Mapping[str, Any], *, file: str = "<config>") -> BrokerConfig:
    """Build a BrokerConfig from an already-parsed TOML document (a mapping).

    File paths in it are taken as they are (relative to the current directory).
    """
    return _Loader(file=file, base_dir=None).config(data)


def load_config(
    path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None
) -> BrokerConfig:
    """Read and validate a TOML config file.

    Relative file paths inside it (certificates, password and ACL files, persistence)
    are resolved against the directory of the config file, and files that must already
    exist are checked, so a mistake is reported at startup with its key. *overrides*
    are ``[broker]`` keys given elsewhere (the command line's ``--workers``) that replace
    the file's before anything is checked.
    """
    file = os.fspath(path)
    try:
        with open(file, "rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=file) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not valid UTF-8 ({exc.reason} at byte {exc.start})", file=file
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=file) from None
    return _Loader(file=file, base_dir=Path(file).parent).config(data, overrides)
