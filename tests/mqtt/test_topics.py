"""Topic name / filter validation, $share parsing and the reference matcher.

The matching table follows the examples of MQTT 5.0 sections 4.7.1 and 4.7.2.
"""

from __future__ import annotations

import pytest

from trio_mqtt.errors import RemoteProtocolError
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.mqtt.topics import (
    parse_shared_filter,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

# --------------------------------------------------------------------------- topic names

VALID_NAMES = [
    "a",
    "/",
    "//",
    "a/b",
    "/finance",
    "a//b",
    "sport/tennis/player1",
    "$SYS/broker/load",
    "with space",
    "ACCOUNTS",
    "\u00fc/\u65e5\u672c",
    "a" * 65535,  # exactly the limit in bytes
    "\u00e9" * 32767,  # 65534 bytes
]

INVALID_NAMES = [
    "",
    "+",
    "#",
    "a/+",
    "a/#",
    "sp+ort",
    "sport#",
    "a\0b",
    "\0",
    "a" * 65536,
    "\u00e9" * 32768,  # 32768 characters but 65536 bytes
    "\u65e5" * 21846,  # 3 bytes each: 65538 bytes
]


@pytest.mark.parametrize("name", VALID_NAMES, ids=lambda n: repr(n[:20]))
def test_valid_topic_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize("name", INVALID_NAMES, ids=lambda n: repr(n[:20]))
def test_invalid_topic_names(name: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        validate_topic_name(name)
    assert info.value.reason_code is ReasonCode.TOPIC_NAME_INVALID


def test_long_topic_error_message_is_shortened() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        validate_topic_name("x" * 70000)
    message = str(info.value)
    assert "65535" in message
    assert len(message) < 300


# ------------------------------------------------------------------------- topic filters

VALID_FILTERS = [
    "a",
    "/",
    "#",
    "+",
    "+/+",
    "/+",
    "+/",
    "sport/#",
    "sport/tennis/+",
    "sport/tennis/player1/#",
    "+/tennis/#",
    "sport/+/player1",
    "$SYS/#",
    "$SYS/monitor/+",
    "a//+",
    "a/+/+/#",
    "$share",  # no '/': an ordinary filter for the topic "$share"
    "$shared/g/a",  # not the $share/ prefix
    "$share/g/#",
    "$share/g/a/+/b",
    "$share/group-1/$SYS/#",
    "$share/g//",
    "$share/g/+",
    "a" * 65535,
]

INVALID_FILTERS = [
    "",
    "\0",
    "a/\0/b",
    "sport/tennis#",
    "sport/tennis/#/ranking",
    "#/a",
    "##",
    "a/#/",
    "sport+",
    "a/+b",
    "+a/b",
    "++",
    "a/b+/c",
    "a" * 65536,
    "$share/g",
    "$share/",
    "$share//a",
    "$share/g/",
    "$share/g+/a",
    "$share/+/a",
    "$share/g#/a",
    "$share/#/a",
    "$share/g/a/#/b",
    "$share/g/a+",
]


@pytest.mark.parametrize("topic_filter", VALID_FILTERS, ids=lambda f: repr(f[:30]))
def test_valid_topic_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", INVALID_FILTERS, ids=lambda f: repr(f[:30]))
def test_invalid_topic_filters(topic_filter: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        validate_topic_filter(topic_filter)
    assert info.value.reason_code is ReasonCode.TOPIC_FILTER_INVALID


def test_shared_filter_refused_when_not_allowed() -> None:
    validate_topic_filter("a/#", allow_shared=False)
    validate_topic_filter("$share", allow_shared=False)
    with pytest.raises(RemoteProtocolError) as info:
        validate_topic_filter("$share/g/a/#", allow_shared=False)
    assert info.value.reason_code is ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
    # A malformed shared filter is still reported as malformed.
    with pytest.raises(RemoteProtocolError) as info:
        validate_topic_filter("$share/g/a#", allow_shared=False)
    assert info.value.reason_code is ReasonCode.TOPIC_FILTER_INVALID


def test_error_messages_name_the_problem() -> None:
    with pytest.raises(RemoteProtocolError, match="'#' must be the last level"):
        validate_topic_filter("a/#/b")
    with pytest.raises(RemoteProtocolError, match="'\\+' must be alone"):
        validate_topic_filter("a/b+")
    with pytest.raises(RemoteProtocolError, match="group name"):
        validate_topic_filter("$share/a+b/x")


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("a/b", (None, "a/b")),
        ("$share", (None, "$share")),
        ("$SYS/#", (None, "$SYS/#")),
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/consumers/#", ("consumers", "#")),
        ("$share/g//x", ("g", "/x")),
        ("$share/g/$share/h/x", ("g", "$share/h/x")),
    ],
)
def test_parse_shared_filter(topic_filter: str, expected: tuple[str | None, str]) -> None:
    assert parse_shared_filter(topic_filter) == expected


def test_parse_shared_filter_without_filter_raises() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_shared_filter("$share/g")
    assert info.value.reason_code is ReasonCode.TOPIC_FILTER_INVALID


# ------------------------------------------------------------------------------ matching

MATCHING = [
    # 4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/tennis/player1/#", "sport/tennis", False),
    ("sport/#", "sport", True),
    ("sport/#", "sport/", True),
    ("sport/#", "sports", False),
    ("#", "sport", True),
    ("#", "/", True),
    ("#", "a/b/c", True),
    # 4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/tennis/+", "sport/tennis", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    ("+/tennis/#", "sport/golf", False),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("+/#", "a", True),
    ("a/+/#", "a", False),
    ("a/+/#", "a/b", True),
    # empty levels are ordinary levels
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("a/b", "a//b", False),
    ("/", "/", True),
    ("+/+", "/", True),
    # case sensitive, exact
    ("ACCOUNTS", "Accounts", False),
    ("Accounts", "Accounts", True),
    ("a/b", "a/b/", False),
    # 4.7.2 topics beginning with $
    ("#", "$SYS/x", False),
    ("#", "$SYS", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/+/Clients", "$SYS/monitor/Clients", True),
    ("a/+", "a/$x", True),  # the rule only concerns the first level
    ("a/#", "a/$x/y", True),
    # shared subscriptions match like their plain filter
    ("$share/g/sport/#", "sport/tennis", True),
    ("$share/g/#", "$SYS/x", False),
    ("$share/g/a", "$share/g/a", False),
]


@pytest.mark.parametrize(("topic_filter", "name", "expected"), MATCHING)
def test_topic_matches(topic_filter: str, name: str, expected: bool) -> None:
    assert topic_matches(topic_filter, name) is expected
