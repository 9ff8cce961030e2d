"""MQTT topic names and filters as NATS subjects (pure string work, no I/O).

Each node subscribes in NATS once per distinct MQTT topic filter its clients hold and
publishes each locally received message once; NATS interest routing is the route table.
So a topic must become a subject, and a filter the subjects whose matches are exactly the
filter's matches.

**Levels.** ``a/b/c`` becomes ``m.a.b.c`` (``m`` is the prefix). Each level is escaped
into one token of ``[-_=A-Za-z0-9]``, so that every token is a valid NATS token (no
``.``, ``*``, ``>``, whitespace, never empty) and every subject is also a valid JetStream
KV key (the retained store keys messages by subject):

- ``A-Z a-z 0-9 - _`` stay as they are;
- any other character becomes ``=`` and two uppercase hex digits per UTF-8 byte
  (``.`` -> ``=2E``, ``=`` -> ``=3D``, ``é`` -> ``=C3=A9``, ``*`` -> ``=2A``);
- an empty level (``/a``, ``a//b``, ``a/``) becomes ``=`` alone, which no byte escape
  can be.

The escaping is injective and :func:`subject_to_topic` reverses it; it accepts only the
canonical form, so one topic has exactly one subject.

**Topics beginning with ``$``.** A filter whose first level is a wildcard must not match
a topic beginning with ``$`` [MQTT-4.7.2-1], but NATS ``*`` and ``>`` match any token. So
these topics live in a separate subtree that the ordinary prefix's wildcards never reach:
``$SYS/broker/uptime`` -> ``m_d.SYS.broker.uptime`` (the root is the prefix plus
``_d``, and the ``$`` is dropped from the first level since the root says it). A filter
whose first level starts with ``$`` maps into that subtree too (``$SYS/#`` ->
``m_d.SYS.>`` and ``m_d.SYS``), and ``#`` or ``+/...`` map under ``m.`` only. The
receiving side therefore needs no ``$`` check of its own. A prefix ``P`` uses the
subjects under both ``P`` and ``P_d``; two clusters sharing one NATS account must pick
prefixes that do not collide that way (``m`` and ``m_d`` would).

**Filters.** ``+`` -> ``*``. A trailing ``#`` -> ``>`` *plus* the parent subject, since
MQTT ``a/#`` also matches ``a`` while NATS ``m.a.>`` does not match ``m.a``; a bare ``#``
-> ``m.>`` alone (every topic has at least one level, so it matches them all). A message
can thus arrive once per matching subscription: the receiver drops repeats
(``trio_mqtt.cluster.envelope.RepeatFilter``).

**Shared subscriptions.** ``$share/{group}/{filter}`` subscribes the subjects of
``filter`` with the NATS queue group :func:`queue_group_name`. NATS balances per
(subject, queue group), and two filters of one group may share a subject (``a/#`` and
``a`` both subscribe ``m.a``), so the queue group name covers the filter too.

**Length.** Escaping can triple a level's length, and nats-server refuses protocol lines
longer than its ``max_control_line`` (4 KiB by default), which holds the subject: very
long topics need a larger limit or another route.
"""

from __future__ import annotations

import functools
import hashlib
import re

from trio_mqtt.errors import RemoteProtocolError
from trio_mqtt.mqtt.topics import (
    MAX_TOPIC_BYTES,
    parse_shared_filter,
    validate_topic_filter,
    validate_topic_name,
)

__all__ = [
    "DOLLAR_SUFFIX",
    "EMPTY_TOKEN",
    "escape_token",
    "filter_to_subjects",
    "queue_group_name",
    "subject_to_topic",
    "topic_to_subject",
    "unescape_marked",
    "unescape_token",
]

#: The token an empty level becomes.
EMPTY_TOKEN = "="
#: Topics beginning with ``$`` live under ``prefix + DOLLAR_SUFFIX``.
DOLLAR_SUFFIX = "_d"

_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# byte -> what it becomes in a token: one table lookup per byte of an escaped level
_ESCAPE: tuple[str, ...] = tuple(chr(b) if b in _SAFE_BYTES else f"={b:02X}" for b in range(256))
_SAFE_LEVEL = re.compile(r"[A-Za-z0-9_-]+")
# a whole topic that needs no escaping: safe characters, no empty level
_SAFE_TOPIC = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")
_SAFE_REST = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_good_prefixes: set[str] = set()

# Cache sizes: a hit costs a fraction of a miss; entries are bounded in number and in
# length so that random long topics cannot fill memory (at most ~20 MB per cache).
_CACHE_SIZE = 16384
_CACHE_MAX_CHARS = 256


def escape_token(text: str) -> str:
    """``text`` as one non-empty token of ``[-_=A-Za-z0-9]`` (a topic level's escaping)."""
    if not text:
        return EMPTY_TOKEN
    if _SAFE_LEVEL.fullmatch(text):
        return text
    return "".join([_ESCAPE[b] for b in text.encode("utf-8")])


def unescape_marked(text: str, marker: str) -> str:
    """``text`` with every ``marker`` + two hex digits turned back into that UTF-8 byte.

    The decoding shared by topic levels (``=``) and the envelope's header values
    (``%``); ``ValueError`` if an escape or the UTF-8 is bad. Callers check that the
    text was canonical by escaping the result again.
    """
    head, *escapes = text.split(marker)
    out = bytearray(head.encode("ascii"))
    for part in escapes:
        out += bytes.fromhex(part[:2])
        out += part[2:].encode("ascii")
    return out.decode("utf-8")


def unescape_token(token: str) -> str:
    """The inverse of :func:`escape_token`; ``ValueError`` unless ``token`` is canonical."""
    if token == EMPTY_TOKEN:
        return ""
    try:
        text = unescape_marked(token, "=")
    except ValueError as exc:
        raise ValueError(f"{token!r} is not an escaped topic level ({exc})") from None
    if escape_token(text) != token:
        raise ValueError(f"{token!r} is not an escaped topic level (not in canonical form)")
    return text


def _check_prefix(prefix: str) -> None:
    if prefix not in _good_prefixes:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(
                f"subject prefix {prefix!r} must be dot-separated tokens of [-_A-Za-z0-9]"
            )
        _good_prefixes.add(prefix)


def _topic_to_subject(topic: str, prefix: str) -> str:
    _check_prefix(prefix)
    if topic.startswith("$"):
        prefix += DOLLAR_SUFFIX
        topic = topic[1:]
    if _SAFE_TOPIC.fullmatch(topic):
        return f"{prefix}.{topic.replace('/', '.')}"
    return prefix + "." + ".".join([escape_token(level) for level in topic.split("/")])


_cached_topic_to_subject = functools.lru_cache(maxsize=_CACHE_SIZE)(_topic_to_subject)


def topic_to_subject(topic: str, prefix: str = "m") -> str:
    """The NATS subject an MQTT topic name is published to (see the module docstring).

    Runs once per published message: short topics are cached.
    """
    if len(topic) > _CACHE_MAX_CHARS:
        return _topic_to_subject(topic, prefix)
    return _cached_topic_to_subject(topic, prefix)


def _subject_to_topic(subject: str, prefix: str) -> str:
    _check_prefix(prefix)
    if subject.startswith(prefix + "."):
        rest = subject[len(prefix) + 1 :]
        dollar = ""
    elif subject.startswith(prefix + DOLLAR_SUFFIX + "."):
        rest = subject[len(prefix) + len(DOLLAR_SUFFIX) + 1 :]
        dollar = "$"
    else:
        raise ValueError(f"subject {subject[:200]!r} is not under prefix {prefix!r}")
    if _SAFE_REST.fullmatch(rest) and len(rest) < MAX_TOPIC_BYTES:
        return dollar + rest.replace(".", "/")  # nothing escaped: canonical and valid
    try:
        topic = dollar + "/".join([unescape_token(token) for token in rest.split(".")])
        validate_topic_name(topic)
    except (ValueError, RemoteProtocolError) as exc:
        raise ValueError(f"subject {subject[:200]!r} is not an MQTT topic's: {exc}") from None
    if topic_to_subject(topic, prefix) != subject:
        # only "$..." under the plain prefix gets here: the topic's subject is under _d
        raise ValueError(f"subject {subject[:200]!r} is not the canonical subject of a topic")
    return topic


_cached_subject_to_topic = functools.lru_cache(maxsize=_CACHE_SIZE)(_subject_to_topic)


def subject_to_topic(subject: str, prefix: str = "m") -> str:
    """The MQTT topic name a subject made by :func:`topic_to_subject` stands for.

    Raises ``ValueError`` for a subject that is not one of ours: outside the prefix, not
    canonically escaped, a wildcard, or not a valid topic name. Runs once per received
    message: short subjects are cached.
    """
    if len(subject) > 3 * _CACHE_MAX_CHARS:
        return _subject_to_topic(subject, prefix)
    return _cached_subject_to_topic(subject, prefix)


def filter_to_subjects(topic_filter: str, prefix: str = "m") -> tuple[str, ...]:
    """The NATS subjects to subscribe so as to receive exactly what ``topic_filter`` matches.

    One subject, or two for a trailing ``#`` below the first level (the ``>`` subject,
    then the parent's). A ``$share/{group}/`` prefix is ignored, as in
    ``topic_matches``: subscribe these subjects with ``queue_group_name(group, filter)``.
    Raises ``ValueError`` for an invalid filter.
    """
    _check_prefix(prefix)
    try:
        validate_topic_filter(topic_filter)
    except RemoteProtocolError as exc:
        raise ValueError(str(exc)) from None
    levels = parse_shared_filter(topic_filter)[1].split("/")
    if levels[0].startswith("$"):  # never a wildcard: those are whole levels
        prefix += DOLLAR_SUFFIX
        levels[0] = levels[0][1:]
    multi = levels[-1] == "#"
    if multi:
        levels.pop()
    parent = ".".join([prefix, *["*" if level == "+" else escape_token(level) for level in levels]])
    if not multi:
        return (parent,)
    if not levels:
        return (parent + ".>",)
    return (parent + ".>", parent)


def queue_group_name(group: str, topic_filter: str) -> str:
    """The NATS queue group for the shared subscription ``$share/{group}/{topic_filter}``.

    The escaped group name, ``-`` and 16 hex digits of a hash of the filter: one token of
    ``[-_=A-Za-z0-9]`` of bounded length. NATS balances per (subject, queue group), and two
    filters of one group can share a subject (``a/#`` and ``a`` both subscribe ``m.a``)
    while MQTT delivers once per shared subscription, so the filter is part of the name.
    """
    digest = hashlib.blake2b(topic_filter.encode("utf-8"), digest_size=8).hexdigest()
    return f"{escape_token(group)}-{digest}"
