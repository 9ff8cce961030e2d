"""What a config reload may change while the broker runs, and what needs a restart.

``plan_reload(running, new)`` is pure: it returns the config to use from now on (the
new one, except for what only a restart can change, which keeps its running value) and
one :class:`RestartNeeded` per key it kept. ``Broker.reload_config`` applies the result
(trio_mqtt/server/app.py); docs/configuration.md marks every key "live" or "restart".

Needs a restart: ``[broker]`` ``persistence``, ``sys_interval``, ``log_format`` and
``workers``; the ``[cluster]`` and ``[http]`` tables; listeners added or removed, and a
listener's ``name``, ``bind``, ``transport``, ``reuse_port`` and
``limits.ipv6_prefix_length``. Listeners are matched by position, as the keys name them
(``listeners[0]``).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterator
from typing import Any

import attrs

from trio_mqtt.config import BrokerConfig, HttpConfig, ListenerConfig
from trio_mqtt.errors import ConfigError
from trio_mqtt.nats.client import redact_url

__all__ = ["RESTART_BROKER_KEYS", "ReloadReport", "RestartNeeded", "changed_keys", "plan_reload"]

#: ``[broker]`` keys a reload cannot change (besides the [cluster] and [http] tables).
RESTART_BROKER_KEYS = ("persistence", "sys_interval", "log_format", "workers")
#: Listener keys a reload cannot change: they need a new socket (or new address keys).
_LISTENER_RESTART_KEYS = ("name", "bind", "transport", "reuse_port", "limits.ipv6_prefix_length")


@attrs.frozen
class RestartNeeded:
    """A change in the new config that only a restart applies; the running value stays."""

    key: str  # the key as the TOML file spells it: "listeners[0].bind", "broker.workers"
    kept: str  # what stays in use, as TOML would write it
    change: str = "changed"  # "changed", "added" or "removed"

    def __str__(self) -> str:
        return f"{self.key} {self.change}: needs a restart; kept {self.kept}"


@attrs.frozen
class ReloadReport:
    """What ``Broker.reload_config`` did.

    ``changed``: the keys whose new values are in use now. ``needs_restart``: the changes
    kept for a restart. ``errors``: what failed to load (a password file, certificates),
    whose previous values stay. ``config``: the config in use now (``Broker.config``).
    """

    config: BrokerConfig
    changed: tuple[str, ...] = ()
    needs_restart: tuple[RestartNeeded, ...] = ()
    errors: tuple[str, ...] = ()


def _show(value: object) -> str:
    """*value* as a TOML file would write it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _show(value.value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return repr(str(value))
    return str(value)


def _fields(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` for every leaf of an attrs config object, keyed as in TOML."""
    has_bind = isinstance(value, ListenerConfig | HttpConfig)
    if has_bind:
        yield f"{prefix}bind", value.bind
    for field in attrs.fields(type(value)):
        if has_bind and field.name in ("host", "port"):
            continue
        item = getattr(value, field.name)
        if attrs.has(type(item)):
            yield from _fields(item, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", item


def _leaves(config: BrokerConfig) -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for field in attrs.fields(BrokerConfig):
        value = getattr(config, field.name)
        if field.name == "listeners":
            for index, listener in enumerate(value):
                leaves.update(_fields(listener, f"listeners[{index}]."))
        elif field.name in ("cluster", "http"):
            leaves[field.name] = None if value is None else "table"
            if value is not None:
                leaves.update(_fields(value, f"{field.name}."))
        else:
            leaves[f"broker.{field.name}"] = value
    return leaves


def changed_keys(old: BrokerConfig, new: BrokerConfig) -> tuple[str, ...]:
    """The keys whose values differ between *old* and *new* (TOML spelling)."""
    before, after = _leaves(old), _leaves(new)
    keys = list(before) + [key for key in after if key not in before]
    return tuple(key for key in keys if before.get(key) != after.get(key))


def _table_changes(name: str, old: Any, new: Any) -> list[RestartNeeded]:
    """The [cluster] or [http] table: any change needs a restart."""
    if old == new:
        return []
    if old is None:
        return [RestartNeeded(name, f"no [{name}] table", "added")]
    if new is None:
        return [RestartNeeded(name, f"the [{name}] table", "removed")]
    before, after = dict(_fields(old, f"{name}.")), dict(_fields(new, f"{name}."))
    return [
        RestartNeeded(key, _kept(key, before[key])) for key in before if before[key] != after[key]
    ]


def _kept(key: str, value: Any) -> str:
    """A [cluster] or [http] value as a report shows it: NATS URLs without passwords."""
    if key == "http.bind":
        return str(value)
    if key == "cluster.nats_urls":
        return _show(tuple(redact_url(url) for url in value))
    return _show(value)


def _listener_value(listener: ListenerConfig, key: str) -> Any:
    if key == "limits.ipv6_prefix_length":
        return listener.limits.ipv6_prefix_length
    return getattr(listener, key)


def _plan_listener(
    index: int, old: ListenerConfig, new: ListenerConfig
) -> tuple[ListenerConfig, list[RestartNeeded]]:
    """*new* with the keys that need a new socket kept from *old*."""
    prefix = f"listeners[{index}]"
    restart = [
        RestartNeeded(
            f"{prefix}.{key}",
            old.bind if key == "bind" else _show(_listener_value(old, key)),
        )
        for key in _LISTENER_RESTART_KEYS
        if _listener_value(old, key) != _listener_value(new, key)
    ]
    if not restart:
        return new, []
    try:
        kept = attrs.evolve(
            new,
            name=old.name,
            host=old.host,
            port=old.port,
            transport=old.transport,
            reuse_port=old.reuse_port,
            limits=attrs.evolve(new.limits, ipv6_prefix_length=old.limits.ipv6_prefix_length),
            # the certificates go with the transport
            tls=old.tls if old.transport != new.transport else new.tls,
        )
        return kept, restart
    except ConfigError as exc:
        # the new settings do not fit what is kept (e.g. ws_trusted_proxies on a listener
        # that stays 'tcp'): the whole listener stays as it is
        whole = RestartNeeded(prefix, f"the listener as it was ({exc.detail})")
        return old, [*restart, whole]


def plan_reload(
    running: BrokerConfig, new: BrokerConfig
) -> tuple[BrokerConfig, tuple[RestartNeeded, ...]]:
    """The config to use after a reload to *new*, and the changes kept for a restart.

    Everything else of *new* may be applied while the broker runs; whether it then
    reaches the open connections or only new ones is the business of whoever applies it
    (see docs/configuration.md).
    """
    restart: list[RestartNeeded] = [
        RestartNeeded(f"broker.{key}", _show(getattr(running, key)))
        for key in RESTART_BROKER_KEYS
        if getattr(running, key) != getattr(new, key)
    ]
    restart += _table_changes("cluster", running.cluster, new.cluster)
    restart += _table_changes("http", running.http, new.http)
    listeners: list[ListenerConfig] = []
    for index, old in enumerate(running.listeners):
        if index >= len(new.listeners):
            restart.append(
                RestartNeeded(f"listeners[{index}]", f"{old.name!r} on {old.bind}", "removed")
            )
            listeners.append(old)
            continue
        listener, kept = _plan_listener(index, old, new.listeners[index])
        listeners.append(listener)
        restart += kept
    for index in range(len(running.listeners), len(new.listeners)):
        added = new.listeners[index]
        restart.append(
            RestartNeeded(
                f"listeners[{index}]", f"no listener {added.name!r} on {added.bind}", "added"
            )
        )
    effective = attrs.evolve(
        new,
        listeners=tuple(listeners),
        cluster=running.cluster,
        http=running.http,
        **{key: getattr(running, key) for key in RESTART_BROKER_KEYS},
    )
    return effective, tuple(restart)
