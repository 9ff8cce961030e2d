"""A mosquitto.conf as trio-mqtt TOML: ``trio-mqtt --from-mosquitto mosquitto.conf``.

Pure: :func:`convert` takes the text of the file (and, for ``include_dir``, a function
that lists the files of a directory: the only I/O, done by the caller) and returns the
TOML text, the :class:`~trio_mqtt.config.BrokerConfig` it stands for, and the lines it
could not map, each with its file, line number and the reason. What maps and what does
not is listed in docs/mosquitto.md; the option meanings are those of mosquitto.conf(5)
for mosquitto 2.x (``enable_proxy_protocol``: 2.1).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from trio_mqtt.config import BrokerConfig, format_bind, parse_bind, parse_config
from trio_mqtt.config_writer import toml_value
from trio_mqtt.errors import ConfigError

__all__ = ["Conversion", "IncludeReader", "Unmapped", "convert", "include_order"]

#: Lists the ``*.conf`` files of an ``include_dir`` as ``(file name, text)`` in
#: mosquitto's order (see :func:`include_order`); raises OSError when it cannot.
IncludeReader = Callable[[str], Sequence[tuple[str, str]]]

#: What ``persistence true`` becomes: the SQLite file is named after mosquitto's file
#: (``mosquitto.db`` -> ``mosquitto.sqlite3``) so that neither broker overwrites the other's.
SQLITE_SUFFIX = ".sqlite3"


@attrs.frozen
class Unmapped:
    """A line of the mosquitto file with no trio-mqtt equivalent in the output."""

    file: str
    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text} ({self.reason})"


@attrs.frozen
class Conversion:
    """The result of :func:`convert`."""

    #: The trio-mqtt config file, with the unmapped lines and notes as comments on top.
    toml: str
    #: What ``toml`` loads as (file paths as written, not resolved).
    config: BrokerConfig
    unmapped: tuple[Unmapped, ...]
    #: Differences of meaning the user should know of, e.g. "data is not migrated".
    notes: tuple[str, ...]


def include_order(name: str) -> tuple[tuple[str, str], ...]:
    """Sort key of mosquitto's ``include_dir`` order: alphabetical, case-sensitive, the
    upper case of each letter before its lower case (``A.conf``, ``a.conf``, ``B.conf``)."""
    return tuple((char.lower(), char) for char in name)


# --------------------------------------------------------------------------- the options

_BOOLS = {"true": True, "false": False}

#: Options that configure the current listener (the default one before any ``listener``).
_LISTENER_OPTIONS = frozenset(
    {
        "protocol",
        "cafile",
        "certfile",
        "keyfile",
        "require_certificate",
        "use_identity_as_username",
        "enable_proxy_protocol",
        "max_connections",
    }
)
#: Options that are per listener only with ``per_listener_settings true``.
_SECURITY_OPTIONS = ("allow_anonymous", "password_file", "acl_file")

#: Hints for options that are well known and do not map.
_HINTS = {
    "log_dest": "trio-mqtt logs to stderr; --log-format json for log collectors",
    "log_type": "use --log-level",
    "pid_file": "trio-mqtt writes no pid file; your service manager knows the pid",
    "user": "run trio-mqtt as the user it should be (e.g. User= in systemd)",
    "capath": "put the CA certificates in one file and use cafile",
    "bind_interface": "bind to the interface's address instead",
    "max_qos": "trio-mqtt accepts every QoS",
    "mount_point": "trio-mqtt has no mount points",
    "psk_hint": "TLS-PSK is not supported",
    "psk_file": "TLS-PSK is not supported",
    "use_subject_as_username": "tls.use_identity_as_username takes the CN only",
    "auth_plugin": "plugins do not load into trio-mqtt; see docs/authentication.md",
    "plugin": "plugins do not load into trio-mqtt; see docs/authentication.md",
    "connection": "bridges are not supported",
    "autosave_interval": "trio-mqtt writes every change to its SQLite file",
    "socket_domain": "each trio-mqtt listener binds one address",
    "http_dir": "trio-mqtt serves no files",
    "tls_version": "trio-mqtt allows TLS 1.2 and later",
}


@attrs.define
class _Value:
    """An option's value and where it came from, for the comment next to it."""

    value: Any
    origin: str  # "mosquitto.conf:12"


@attrs.define
class _Listener:
    origin: str
    port: int = 1883
    host: str = "0.0.0.0"
    #: no bind address: mosquitto listens on every IPv4 and IPv6 address
    every_address: bool = True
    #: name -> value, for the listener options
    options: dict[str, _Value] = attrs.field(factory=dict)
    #: the option lines, to name the ones that end up unused
    lines: dict[str, tuple[str, int, str]] = attrs.field(factory=dict)
    #: per_listener_settings true: this listener's security options
    security: dict[str, _Value] = attrs.field(factory=dict)
    #: a listener line that is not mapped: so are the options after it
    dropped: bool = False


@attrs.define
class _State:
    """What the lines said so far."""

    unmapped: list[Unmapped] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    broker: dict[str, _Value] = attrs.field(factory=dict)
    listeners: list[_Listener] = attrs.field(factory=list)
    default: _Listener | None = None
    #: the listener that listener options go to; None: mosquitto's default listener
    current: _Listener | None = None
    per_listener_settings: bool = False
    persistence: _Value | None = None
    persistence_location: _Value | None = None
    persistence_file: _Value | None = None
    #: security options given before any listener with per_listener_settings true
    default_security: dict[str, _Value] = attrs.field(factory=dict)
    #: options seen before any listener line, for the default listener
    before_listeners: list[tuple[str, str, int, str]] = attrs.field(factory=list)
    default_port: _Value | None = None
    default_host: _Value | None = None


class _Skip(Exception):
    """This line is not mapped, for the reason given."""


def convert(
    text: str, *, file: str = "mosquitto.conf", read_include_dir: IncludeReader | None = None
) -> Conversion:
    """Convert the text of a mosquitto.conf; *file* names it in messages and comments.

    Each ``include_dir`` is read with *read_include_dir* (none given: named as not read).
    Raises ConfigError (naming *file*) only when the mapped options together are not a
    valid trio-mqtt config, e.g. two listeners on one address.
    """
    state = _State()
    _read(state, text, file, read_include_dir, top=True)
    return _finish(state, file)


def _read(
    state: _State, text: str, file: str, read_include_dir: IncludeReader | None, *, top: bool
) -> None:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, value = (*line.split(None, 1), "")[:2]
        value = value.strip()
        try:
            if name == "include_dir":
                _include_dir(state, value, file, number, read_include_dir, top=top)
            else:
                _option(state, name, value, f"{file}:{number}", (file, number, line))
        except _Skip as skip:
            state.unmapped.append(Unmapped(file, number, line, str(skip)))


def _include_dir(
    state: _State,
    directory: str,
    file: str,
    number: int,
    read_include_dir: IncludeReader | None,
    *,
    top: bool,
) -> None:
    if not top:
        raise _Skip("include_dir is only read from the main file, as mosquitto does")
    if read_include_dir is None:
        raise _Skip("not read: convert the files in it and merge them by hand")
    try:
        files = read_include_dir(directory)
    except (OSError, UnicodeDecodeError) as exc:
        raise _Skip(f"not read: {exc}") from None
    if not files:
        state.notes.append(f"{file}:{number}: include_dir {directory}: no *.conf files in it")
    for name, text in files:
        _read(state, text, posixpath.join(directory, name), read_include_dir, top=False)


def _option(state: _State, name: str, value: str, origin: str, where: tuple[str, int, str]) -> None:
    if name == "listener":
        try:
            _listener_line(state, value, origin)
        except _Skip:
            state.current = _Listener(origin=origin, dropped=True)
            raise
    elif (
        state.current is not None
        and state.current.dropped
        and (
            name in _LISTENER_OPTIONS or (state.per_listener_settings and name in _SECURITY_OPTIONS)
        )
    ):
        raise _Skip(f"for the listener of {state.current.origin}, which is not mapped")
    elif name == "port":
        state.default_port = _Value(_port(value), origin)
        _default_listener(state, origin)
    elif name == "bind_address":
        state.default_host = _Value(_host(value), origin)
        _default_listener(state, origin)
    elif name in _LISTENER_OPTIONS:
        parsed = _Value(_listener_value(name, value), origin)
        listener = state.current
        if listener is None:
            state.before_listeners.append((name, value, where[1], where[0]))
            listener = _default_listener(state, None)
        listener.options[name] = parsed
        listener.lines[name] = where
    elif name in _SECURITY_OPTIONS:
        parsed = _Value(_security_value(name, value), origin)
        if state.per_listener_settings:
            target = state.current.security if state.current else state.default_security
            target[name] = parsed
        else:
            state.broker[name] = parsed
    elif name == "per_listener_settings":
        state.per_listener_settings = _bool(value)
    elif name == "max_keepalive":
        state.broker["max_keepalive"] = _Value(_int(value, 1, 65535), origin)
    elif name == "max_queued_messages":
        count = _int(value, 0, None)
        if count == 0:
            raise _Skip("0 (no limit): trio-mqtt always has one; max_queued_bytes bounds it too")
        state.broker["max_queued_messages"] = _Value(count, origin)
    elif name == "max_packet_size":
        state.broker["max_packet_size"] = _Value(_int(value, 20, 268_435_460), origin)
    elif name == "max_inflight_messages":
        state.broker["max_inflight_messages"] = _Value(_int(value, 0, 65535), origin)
    elif name == "sys_interval":
        state.broker["sys_interval"] = _Value(_int(value, 0, None), origin)
    elif name == "retain_available":
        state.broker["retain_available"] = _Value(_bool(value), origin)
    elif name == "persistence":
        state.persistence = _Value(_bool(value), origin)
    elif name == "persistence_location":
        state.persistence_location = _Value(_nonempty(value), origin)
    elif name == "persistence_file":
        state.persistence_file = _Value(_nonempty(value), origin)
    else:
        raise _Skip(_HINTS.get(name, "no trio-mqtt equivalent"))


def _listener_line(state: _State, value: str, origin: str) -> None:
    words = value.split()
    if not words or len(words) > 2:
        raise _Skip("expected 'listener <port> [<bind address>]'")
    port = _port(words[0])
    if len(words) == 2 and port == 0:
        raise _Skip("a UNIX socket listener: trio-mqtt listens on TCP only")
    host = _host(words[1]) if len(words) == 2 else "0.0.0.0"
    listener = _Listener(origin=origin, port=port, host=host, every_address=len(words) == 1)
    state.listeners.append(listener)
    state.current = listener


def _default_listener(state: _State, origin: str | None) -> _Listener:
    if state.default is None:
        state.default = _Listener(origin=origin or "")
    elif origin and not state.default.origin:
        state.default.origin = origin
    return state.default


# --------------------------------------------------------------------------- values


def _bool(value: str) -> bool:
    if value not in _BOOLS:
        raise _Skip(f"{value!r} is not true or false")
    return _BOOLS[value]


def _int(value: str, low: int, high: int | None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _Skip(f"{value!r} is not a number") from None
    if number < low or (high is not None and number > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise _Skip(f"{number} is out of trio-mqtt's range ({allowed})")
    return number


def _port(value: str) -> int:
    return _int(value, 0, 65535)


def _host(value: str) -> str:
    try:
        host, _ = parse_bind(format_bind(value, 1))
    except ConfigError as exc:
        raise _Skip(f"{value!r}: {exc.detail}") from None
    return host


def _nonempty(value: str) -> str:
    if not value:
        raise _Skip("no value")
    return value


def _listener_value(name: str, value: str) -> Any:
    if name == "protocol":
        if value not in ("mqtt", "websockets"):
            raise _Skip(f"{value!r}: trio-mqtt speaks mqtt and websockets")
        return value
    if name in ("require_certificate", "use_identity_as_username"):
        return _bool(value)
    if name == "enable_proxy_protocol":
        if value not in ("1", "2"):
            raise _Skip(f"{value!r} is not 1 or 2")
        return int(value)
    if name == "max_connections":
        count = _int(value, -1, None)
        if count == 0:
            raise _Skip("0 connections: trio-mqtt needs at least 1")
        return count
    return _nonempty(value)  # a file


def _security_value(name: str, value: str) -> Any:
    return _bool(value) if name == "allow_anonymous" else _nonempty(value)


# --------------------------------------------------------------------------- the result


@attrs.define
class _Table:
    """Lines of one TOML table: ``key = value  # origin``, and the mapping they make."""

    header: str
    data: dict[str, Any] = attrs.field(factory=dict)
    comments: dict[str, str] = attrs.field(factory=dict)

    def set(self, key: str, value: Any, comment: str) -> None:
        self.data[key] = value
        self.comments[key] = comment

    def render(self) -> list[str]:
        lines = [self.header] if self.header else []
        for key, value in self.data.items():
            comment = self.comments[key]
            lines.append(
                f"{key} = {toml_value(value)}" + (f"  # {_comment(comment)}" if comment else "")
            )
        return lines


def _finish(state: _State, file: str) -> Conversion:
    listeners = _started_listeners(state)
    broker = _Table("[broker]")
    _security(state, listeners, broker)
    for key in ("max_keepalive", "max_queued_messages", "max_packet_size"):
        _copy(state, key, broker)
    for key in ("max_inflight_messages", "retain_available", "sys_interval"):
        _copy(state, key, broker)
    if "max_queued_messages" in broker.data:
        state.notes.append(
            "max_queued_messages: trio-mqtt counts it for offline sessions only; what "
            "waits for a connected client is bounded by max_queued_bytes (16 MiB)"
        )
    _persistence(state, broker)
    listener_tables = [
        _listener_tables(state, listener, index) for index, listener in enumerate(listeners)
    ]
    if not listeners:
        state.notes.append(
            "no listener configured: trio-mqtt's default listener, 127.0.0.1:1883 "
            "(mosquitto 2.x also listens on [::1]:1883 then)"
        )
    elif any(listener.every_address for listener in listeners):
        state.notes.append(
            "a mosquitto listener without a bind address listens on IPv4 and IPv6; "
            "'0.0.0.0' is IPv4 only: add a [[listeners]] with bind = \"[::]:PORT\" for IPv6"
        )

    document: dict[str, Any] = {"broker": broker.data}
    if listeners:
        document["listeners"] = [
            tables[0].data | {key: table.data for key, table in _subtables(tables)}
            for tables in listener_tables
        ]
    try:
        config = parse_config(document, file=file)
    except ConfigError as exc:
        raise ConfigError(
            f"the converted config is not valid: {exc.key}: {exc.detail}", file=file
        ) from None
    text = _render(file, state, broker, listener_tables)
    return Conversion(
        toml=text,
        config=config,
        unmapped=tuple(
            sorted(state.unmapped, key=lambda item: (item.file != file, item.file, item.line))
        ),
        notes=tuple(state.notes),
    )


def _subtables(tables: list[_Table]) -> list[tuple[str, _Table]]:
    return [(table.header.strip("[]").rpartition(".")[2], table) for table in tables[1:]]


def _copy(state: _State, key: str, table: _Table) -> None:
    if key in state.broker:
        item = state.broker[key]
        table.set(key, item.value, item.origin)


def _started_listeners(state: _State) -> list[_Listener]:
    """The listeners mosquitto would start: the default one first when it is started."""
    default = state.default
    started = list(state.listeners)
    default_wanted = state.default_port is not None or state.default_host is not None
    if default is not None and (default_wanted or not state.listeners):
        default.port = state.default_port.value if state.default_port else 1883
        default.host = state.default_host.value if state.default_host else "0.0.0.0"
        default.every_address = state.default_host is None
        started.insert(0, default)
    elif default is not None:
        for name, value, number, file in state.before_listeners:
            state.unmapped.append(
                Unmapped(
                    file,
                    number,
                    f"{name} {value}",
                    "for mosquitto's default listener, which is not started (a listener "
                    "line and no port or bind_address)",
                )
            )
    return started


def _security(state: _State, listeners: list[_Listener], broker: _Table) -> None:
    """allow_anonymous, password_file and acl_file: one value for every listener."""
    if not state.per_listener_settings:
        anonymous = state.broker.get("allow_anonymous")
        if anonymous is not None:
            broker.set("allow_anonymous", anonymous.value, anonymous.origin)
        elif listeners:
            broker.set("allow_anonymous", False, "mosquitto 2.x's default with a listener")
        else:
            broker.set("allow_anonymous", True, "mosquitto 2.x's default without listeners")
        for key in ("password_file", "acl_file"):
            _copy(state, key, broker)
    else:
        _per_listener_security(state, listeners, broker)
    if "acl_file" in broker.data:
        broker.set(
            "acl_topics_before_user",
            "anonymous",
            "mosquitto's meaning of the rules before the first 'user' line",
        )
    if "password_file" in broker.data:
        state.notes.append(
            "password_file: see docs/authentication.md for the password hashes trio-mqtt "
            "reads; python -m trio_mqtt.passwd FILE USER adds or replaces a user"
        )


def _per_listener_security(state: _State, listeners: list[_Listener], broker: _Table) -> None:
    """per_listener_settings true: trio-mqtt has one setting for all listeners, so a
    listener's setting maps only when the others agree (or say nothing, for files)."""
    sections = [
        state.default_security if listener is state.default else listener.security
        for listener in listeners
    ]
    if not listeners:  # mosquitto's local-only listener: anonymous unless said otherwise
        sections = [state.default_security]
        if "allow_anonymous" not in state.default_security:
            broker.set("allow_anonymous", True, "mosquitto 2.x's default without listeners")
    elif state.default not in listeners:
        for key, item in state.default_security.items():
            _unmapped_at(
                state,
                item,
                f"{key} {_show(item.value)}",
                "for mosquitto's default listener, which is not started",
            )
    # allow anonymous clients only if every listener does (unset: false, mosquitto 2.x)
    allows = [section.get("allow_anonymous") for section in sections]
    everyone = all(item is not None and item.value for item in allows)
    given = [item for item in allows if item is not None]
    if "allow_anonymous" in broker.data:  # no listener and none said
        given = []
    elif everyone and given:
        broker.set("allow_anonymous", True, given[0].origin)
    else:
        broker.set("allow_anonymous", False, "a listener refuses anonymous clients")
        for item in given:
            if item.value:
                _unmapped_at(
                    state,
                    item,
                    "allow_anonymous true",
                    "trio-mqtt has one allow_anonymous for every listener, and "
                    "another listener refuses anonymous clients",
                )
    for key in ("password_file", "acl_file"):
        values = [section[key] for section in sections if key in section]
        if not values:
            continue
        broker.set(key, values[0].value, values[0].origin)
        for item in values[1:]:
            if item.value != values[0].value:
                _unmapped_at(
                    state,
                    item,
                    f"{key} {item.value}",
                    f"trio-mqtt has one {key} for every listener: {values[0].origin}'s is used",
                )
        if len(values) < len(sections):
            state.notes.append(
                f"{key} ({values[0].origin}) applies to every listener in trio-mqtt, "
                "also to those that had none (per_listener_settings true)"
            )
    state.notes.append(
        "per_listener_settings true: trio-mqtt has one allow_anonymous, password_file and "
        "acl_file for all listeners"
    )


def _show(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _unmapped_at(state: _State, item: _Value, text: str, reason: str) -> None:
    file, _, line = item.origin.rpartition(":")
    state.unmapped.append(Unmapped(file, int(line), text, reason))


def _persistence(state: _State, broker: _Table) -> None:
    enabled = state.persistence is not None and state.persistence.value
    if not enabled:
        for item in (state.persistence_location, state.persistence_file):
            if item is not None:
                state.notes.append(f"{item.origin}: has no effect without persistence true")
        return
    location = state.persistence_location.value if state.persistence_location else ""
    name = state.persistence_file.value if state.persistence_file else "mosquitto.db"
    mosquitto_path = f"{location.rstrip('/')}/{name}" if location else name
    stem = name.rpartition(".")[0] or name
    path = posixpath.join(location, stem + SQLITE_SUFFIX)
    assert state.persistence is not None
    origins = [
        item.origin
        for item in (state.persistence, state.persistence_location, state.persistence_file)
        if item
    ]
    broker.set("persistence", path, ", ".join(origins))
    state.notes.append(
        f"persistence: trio-mqtt keeps its state in a SQLite file ({path}); mosquitto's "
        f"{mosquitto_path} has another format and is not read: sessions and retained "
        "messages start empty"
    )
    if not posixpath.isabs(path):
        state.notes.append(
            f"persistence: {path!r} is relative: trio-mqtt resolves it against the "
            "directory of the TOML file (mosquitto: against its working directory)"
        )


def _listener_tables(state: _State, listener: _Listener, index: int) -> list[_Table]:
    """[[listeners]] and its [listeners.tls] / [listeners.proxy_protocol] tables."""
    main = _Table("[[listeners]]")
    options = listener.options
    name = f"port{listener.port}"
    main.set("name", f"{name}-{index}" if _port_used_twice(state, listener) else name, "")
    bind = format_bind(listener.host, listener.port)
    origin = listener.origin or (state.default_port or state.default_host or _Value(0, "")).origin
    main.set("bind", bind, origin)
    tls_files = {key: options[key] for key in ("certfile", "keyfile", "cafile") if key in options}
    has_tls = "certfile" in tls_files and "keyfile" in tls_files
    protocol = options.get("protocol")
    websockets = protocol is not None and protocol.value == "websockets"
    transport = ("wss" if websockets else "tls") if has_tls else ("ws" if websockets else "tcp")
    main.set("transport", transport, protocol.origin if protocol else "")
    if protocol is not None and websockets:
        state.notes.append(
            f"{protocol.origin}: trio-mqtt serves MQTT over WebSocket on one path, "
            'ws_path = "/mqtt" (mosquitto answers on any path)'
        )
    if "max_connections" in options:
        item = options["max_connections"]
        if item.value != -1:
            main.set("max_connections", item.value, item.origin)
        else:
            state.notes.append(
                f"{item.origin}: max_connections -1 (no limit): trio-mqtt's default "
                "limit of 100000 applies"
            )
    tables = [main]
    if "enable_proxy_protocol" in options:
        item = options["enable_proxy_protocol"]
        proxy = _Table("[listeners.proxy_protocol]")
        proxy.set("mode", "required", f"{item.origin} (v1 and v2 are both accepted)")
        tables.append(proxy)
        state.notes.append(
            f"{item.origin}: like mosquitto, every peer may send a PROXY header; list your "
            "proxies in [listeners.proxy_protocol] trusted_sources to refuse the others"
        )
    tls_options = ("require_certificate", "use_identity_as_username")
    if has_tls:
        tls = _Table("[listeners.tls]")
        for key in ("certfile", "keyfile", "cafile"):
            if key in tls_files:
                tls.set(key, tls_files[key].value, tls_files[key].origin)
        for key, ours in zip(
            tls_options, ("require_client_cert", "use_identity_as_username"), strict=True
        ):
            if key in options and options[key].value:
                if "cafile" not in tls_files:
                    _unused(state, listener, key, "needs cafile (capath is not supported)")
                    continue
                tls.set(ours, True, options[key].origin)
        tables.append(tls)
    else:
        unused = [key for key in ("certfile", "keyfile", "cafile", *tls_options) if key in options]
        for key in unused:
            _unused(
                state,
                listener,
                key,
                "TLS needs both certfile and keyfile on the listener; for TLS at a proxy "
                "see [listeners.proxy_protocol] require_verified_client_cert and "
                "use_cn_as_username",
            )
    return tables


def _port_used_twice(state: _State, listener: _Listener) -> bool:
    ports = [item.port for item in state.listeners]
    if state.default is not None:
        ports.append(state.default.port)
    return ports.count(listener.port) > 1


def _unused(state: _State, listener: _Listener, key: str, reason: str) -> None:
    file, number, text = listener.lines[key]
    state.unmapped.append(Unmapped(file, number, text, reason))


def _comment(text: str) -> str:
    """*text* fit for a TOML comment (no control characters but tab)."""
    return "".join(char if char == "\t" or char.isprintable() else "?" for char in text)


def _render(file: str, state: _State, broker: _Table, listeners: list[list[_Table]]) -> str:
    lines = [f"# trio-mqtt config converted from {_comment(file)} by trio-mqtt --from-mosquitto."]
    lines.append("# The comment after a value names the mosquitto line it comes from.")
    if state.notes:
        lines += ["#", "# Notes:"]
        lines += [f"# - {_comment(note)}" for note in state.notes]
    unmapped = sorted(state.unmapped, key=lambda item: (item.file != file, item.file, item.line))
    if unmapped:
        lines += ["#", "# Not mapped (file:line: the line (why)):"]
        lines += [f"# - {_comment(str(item))}" for item in unmapped]
    lines += ["", *broker.render()]
    for tables in listeners:
        lines.append("")
        for number, table in enumerate(tables):
            if number:
                lines.append("")
            lines += table.render()
    return "\n".join(lines) + "\n"
