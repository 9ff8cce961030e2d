"""Topic names, topic filters and shared subscriptions (MQTT 5.0 sections 4.7 and 4.8.2).

A *topic name* is what a PUBLISH carries; a *topic filter* is what a SUBSCRIBE carries and may
use the wildcards ``+`` (exactly one level) and ``#`` (the parent level and any number of
levels below it, last level only). Levels are separated by ``/``; empty levels are legal
(``/a``, ``a//b``, ``/``). A filter whose first character is a wildcard never matches a name
that starts with ``$`` (``$SYS/...``), so that ``#`` does not leak server topics.

A *shared subscription* is written ``$share/{group}/{filter}``; the group name is at least one
character and contains none of ``/``, ``+``, ``#``.

The validators raise :class:`~trio_mqtt.errors.RemoteProtocolError` with the MQTT 5 reason
code the broker should answer with. Everything here is pure string work: no I/O.
"""

from __future__ import annotations

from trio_mqtt.errors import RemoteProtocolError
from trio_mqtt.mqtt.reason_codes import ReasonCode

__all__ = [
    "MAX_TOPIC_BYTES",
    "SHARE_PREFIX",
    "parse_shared_filter",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]

#: Topic names and filters are UTF-8 strings with a two-byte length prefix.
MAX_TOPIC_BYTES = 65535
#: A topic filter starting with this prefix is a shared subscription.
SHARE_PREFIX = "$share/"

# A string of at most this many code points cannot exceed MAX_TOPIC_BYTES in UTF-8
# (4 bytes per code point at most), so only longer strings need encoding to be measured.
_SAFE_CHARS = MAX_TOPIC_BYTES // 4


def _show(text: str) -> str:
    """``repr`` of a topic for an error message, shortened so a 64 KiB topic stays readable."""
    if len(text) > 80:
        return repr(text[:80]) + f"... ({len(text)} characters)"
    return repr(text)


def _too_long(text: str) -> bool:
    if len(text) <= _SAFE_CHARS:
        return False
    # surrogatepass: a lone surrogate still counts as its 3 bytes instead of raising here;
    # rejecting surrogates is the codec's job (they are malformed UTF-8).
    return len(text.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES


def validate_topic_name(name: str) -> None:
    """Check a PUBLISH topic name; raise ``RemoteProtocolError(TOPIC_NAME_INVALID)`` if bad.

    A topic name is non-empty, has no wildcard (``+``, ``#``), no U+0000 and is at most
    65535 bytes in UTF-8. Names starting with ``$`` are syntactically valid; whether a client
    may publish to them is an authorization question.
    """
    code = ReasonCode.TOPIC_NAME_INVALID
    if not name:
        raise RemoteProtocolError("topic name is empty; it must have at least 1 character", code)
    if "+" in name or "#" in name:
        raise RemoteProtocolError(
            f"topic name {_show(name)} contains a wildcard ('+' or '#'); "
            "wildcards are only allowed in topic filters",
            code,
        )
    if "\0" in name:
        raise RemoteProtocolError(f"topic name {_show(name)} contains U+0000", code)
    if _too_long(name):
        raise RemoteProtocolError(
            f"topic name {_show(name)} is longer than {MAX_TOPIC_BYTES} bytes in UTF-8", code
        )


def parse_shared_filter(topic_filter: str) -> tuple[str | None, str]:
    """Split ``$share/{group}/{filter}`` into ``(group, filter)``; ``(None, filter)`` otherwise.

    Only the structure is checked here (a ``/`` must follow the group name); use
    :func:`validate_topic_filter` for the full rules.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    group, slash, plain = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not slash:
        raise RemoteProtocolError(
            f"shared subscription {_show(topic_filter)} has no topic filter; "
            "expected '$share/{group}/{filter}'",
            ReasonCode.TOPIC_FILTER_INVALID,
        )
    return group, plain


def _check_wildcards(topic_filter: str, shown: str) -> None:
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    code = ReasonCode.TOPIC_FILTER_INVALID
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                raise RemoteProtocolError(
                    f"topic filter {shown}: '#' must be alone in its level, got {level!r}", code
                )
            if index != last:
                raise RemoteProtocolError(f"topic filter {shown}: '#' must be the last level", code)
        elif "+" in level and level != "+":
            raise RemoteProtocolError(
                f"topic filter {shown}: '+' must be alone in its level, got {level!r}", code
            )


def validate_topic_filter(topic_filter: str, *, allow_shared: bool = True) -> None:
    """Check a SUBSCRIBE / UNSUBSCRIBE topic filter; raise ``RemoteProtocolError`` if bad.

    The reason code is ``TOPIC_FILTER_INVALID``, except for a well-formed ``$share/...``
    filter when ``allow_shared`` is false, which raises ``SHARED_SUBSCRIPTIONS_NOT_SUPPORTED``
    (what a server without shared subscriptions must answer, MQTT 5.0 section 4.8.2).
    """
    code = ReasonCode.TOPIC_FILTER_INVALID
    if not topic_filter:
        raise RemoteProtocolError("topic filter is empty; it must have at least 1 character", code)
    shown = _show(topic_filter)
    if "\0" in topic_filter:
        raise RemoteProtocolError(f"topic filter {shown} contains U+0000", code)
    if _too_long(topic_filter):
        raise RemoteProtocolError(
            f"topic filter {shown} is longer than {MAX_TOPIC_BYTES} bytes in UTF-8", code
        )
    group, plain = parse_shared_filter(topic_filter)
    if group is not None:
        if not group:
            raise RemoteProtocolError(f"shared subscription {shown} has an empty group name", code)
        if "+" in group or "#" in group:
            raise RemoteProtocolError(
                f"shared subscription {shown}: the group name {group!r} "
                "must not contain '+' or '#'",
                code,
            )
        if not plain:
            raise RemoteProtocolError(
                f"shared subscription {shown} has an empty topic filter after the group name",
                code,
            )
        _check_wildcards(plain, shown)
        if not allow_shared:
            raise RemoteProtocolError(
                f"topic filter {shown} is a shared subscription, which is not supported here",
                ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            )
        return
    _check_wildcards(topic_filter, shown)


def topic_matches(topic_filter: str, name: str) -> bool:
    """Whether a valid topic filter matches a valid topic name (the plain reference matcher).

    A ``$share/{group}/`` prefix is ignored: the group decides who receives a message, not
    which messages match. This is a straightforward level-by-level comparison, kept simple
    on purpose: the router and retained store tries are tested against it.
    """
    if topic_filter.startswith(SHARE_PREFIX):
        topic_filter = parse_shared_filter(topic_filter)[1]
    if name.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    name_levels = name.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            # Matches the parent level too: "a/#" matches "a".
            return True
        if index >= len(name_levels):
            return False
        if level != "+" and level != name_levels[index]:
            return False
    return len(filter_levels) == len(name_levels)
