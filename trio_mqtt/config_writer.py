"""dump_config: a BrokerConfig as TOML text that ``load_config`` reads back unchanged.

The ``--workers`` supervisor writes one such file per worker. It is the inverse of the
loader in trio_mqtt/config.py for every field (``host``/``port`` become ``bind``, unset
optional tables are left out); a file path is written as it is, so write absolute paths
for a file that is read from another directory.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
from typing import Any

import attrs

from trio_mqtt.config import BrokerConfig, ClusterConfig, ListenerConfig

__all__ = ["dump_config", "toml_value"]


def toml_value(value: object) -> str:
    """One TOML value: a string, boolean, integer, finite float, enum or array of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no place in a config file")
        return repr(value)
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return toml_value(str(value))
    if isinstance(value, str):
        # JSON's string escapes (\" \\ \b \f \n \r \t \uXXXX) are all TOML's as well;
        # JSON leaves DEL as it is, which TOML does not allow; a lone surrogate (an
        # undecodable file name) has no TOML form
        if any(0xD800 <= ord(char) <= 0xDFFF for char in value):
            raise ValueError(f"{value!r} cannot be written as TOML (a lone surrogate)")
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a TOML value")


def _key_values(obj: Any, *, skip: tuple[str, ...] = ()) -> list[str]:
    """``key = value`` lines for the fields of the attrs object *obj* that are plain values.

    Fields holding attrs objects (tables) or None (unset optional tables) are left out.
    """
    lines: list[str] = []
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if field.name in skip or value is None or attrs.has(type(value)):
            continue
        lines.append(f"{field.name} = {toml_value(value)}")
    return lines


def _listener(listener: ListenerConfig) -> list[str]:
    lines = ["[[listeners]]", f"bind = {toml_value(listener.bind)}"]
    lines += _key_values(listener, skip=("host", "port"))
    lines += ["", "[listeners.proxy_protocol]", *_key_values(listener.proxy_protocol)]
    lines += ["", "[listeners.limits]", *_key_values(listener.limits)]
    if listener.tls is not None:
        lines += ["", "[listeners.tls]", *_key_values(listener.tls)]
    return lines


def _cluster(cluster: ClusterConfig) -> list[str]:
    return ["[cluster]", *_key_values(cluster)]


def dump_config(config: BrokerConfig, *, comment: str = "") -> str:
    """*config* as the text of a TOML config file (``comment`` goes on top, as # lines)."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    if lines:
        lines.append("")
    if not config.listeners:  # no [[listeners]] at all would mean the default listener
        lines += ["listeners = []", ""]
    lines += ["[broker]", *_key_values(config, skip=("listeners", "cluster", "http"))]
    for listener in config.listeners:
        lines += ["", *_listener(listener)]
    if config.cluster is not None:
        lines += ["", *_cluster(config.cluster)]
    if config.http is not None:
        lines += ["", "[http]", f"bind = {toml_value(config.http.bind)}"]
        if config.http.drain:
            lines.append(f"drain = {toml_value(config.http.drain)}")
    return "\n".join(lines) + "\n"
