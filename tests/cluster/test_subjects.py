"""MQTT topics and filters as NATS subjects: vectors, round trips and matching semantics."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mqtt.cluster.subjects import (
    escape_token,
    filter_to_subjects,
    queue_group_name,
    subject_to_topic,
    topic_to_subject,
    unescape_token,
)
from trio_mqtt.mqtt.topics import topic_matches

TOKEN = re.compile(r"[-_=A-Za-z0-9]+")
KV_KEY = re.compile(r"[-/_=.A-Za-z0-9]+")


def nats_matches(pattern: str, subject: str) -> bool:
    """Reference NATS subject matching: ``*`` is one token, a last ``>`` one or more."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            assert index == len(pattern_tokens) - 1
            return len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if token != "*" and token != subject_tokens[index]:
            return False
    return len(pattern_tokens) == len(subject_tokens)


def assert_valid_subject(subject: str, *, wildcards: bool = False) -> None:
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if wildcards and (token == "*" or (token == ">" and index == len(tokens) - 1)):
            continue
        assert TOKEN.fullmatch(token), (subject, token)
    if not wildcards:
        assert KV_KEY.fullmatch(subject)
        assert not subject.startswith(".") and not subject.endswith(".")


VECTORS = [
    ("a/b/c", "m.a.b.c"),
    ("sensors/room-1/temp_c", "m.sensors.room-1.temp_c"),
    ("a.b", "m.a=2Eb"),
    ("*", "m.=2A"),
    (">", "m.=3E"),
    ("a/*/>", "m.a.=2A.=3E"),
    (" ", "m.=20"),
    ("a\tb", "m.a=09b"),
    ("=", "m.=3D"),
    ("==3D", "m.=3D=3D3D"),
    ("%41", "m.=2541"),
    ("é", "m.=C3=A9"),
    ("日本/語", "m.=E6=97=A5=E6=9C=AC.=E8=AA=9E"),
    ("/", "m.=.="),
    ("/a", "m.=.a"),
    ("a/", "m.a.="),
    ("a//b", "m.a.=.b"),
    ("//", "m.=.=.="),
    ("$SYS/broker/uptime", "m_d.SYS.broker.uptime"),
    ("$SYS", "m_d.SYS"),
    ("$", "m_d.="),
    ("$/a", "m_d.=.a"),
    ("$$", "m_d.=24"),
    ("$share", "m_d.share"),
    ("a/$SYS", "m.a.=24SYS"),
    ("A/z/0/9/-/_", "m.A.z.0.9.-._"),
]


@pytest.mark.parametrize(("topic", "subject"), VECTORS)
def test_topic_vectors(topic: str, subject: str) -> None:
    assert topic_to_subject(topic) == subject
    assert subject_to_topic(subject) == topic
    assert_valid_subject(subject)


def test_other_prefixes() -> None:
    assert topic_to_subject("a/b", "x.mqtt") == "x.mqtt.a.b"
    assert topic_to_subject("$SYS/x", "x.mqtt") == "x.mqtt_d.SYS.x"
    assert subject_to_topic("x.mqtt_d.SYS.x", "x.mqtt") == "$SYS/x"
    assert filter_to_subjects("#", "c-1") == ("c-1.>",)
    with pytest.raises(ValueError, match="not under prefix"):
        subject_to_topic("m.a.b", "x.mqtt")


@pytest.mark.parametrize("prefix", ["", "a b", "m.", ".m", "m..x", "m.*", "m.>", "é"])
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        topic_to_subject("a", prefix)
    with pytest.raises(ValueError, match="prefix"):
        subject_to_topic("m.a", prefix)
    with pytest.raises(ValueError, match="prefix"):
        filter_to_subjects("a", prefix)


@pytest.mark.parametrize(
    "subject",
    [
        "x.a",  # another prefix
        "m",
        "m.",
        "ma.b",
        "m.a..b",  # an empty token is not an empty level ("=" is)
        "m.*",
        "m.a.>",
        "m.=61",  # "a" escaped although it needs no escaping
        "m.=3d",  # lowercase hex
        "m.a=2",  # truncated escape
        "m.a=",
        "m.==",
        "m.=ZZ",
        "m.= 1",
        "m.a b",
        "m.a%20b",
        "m.=C3",  # half a UTF-8 sequence
        "m.=FF",
        "m.=ED=A0=80",  # a surrogate
        "m.=2B",  # "+": not a topic name
        "m.a.=23",  # "#"
        "m.=00",  # U+0000
        "m.=24SYS",  # "$SYS" lives under m_d
        "m_d",
        "m_d.",
        "m_x.a",
    ],
)
def test_not_our_subjects(subject: str) -> None:
    with pytest.raises(ValueError):
        subject_to_topic(subject)


def test_long_topics_round_trip() -> None:
    for topic in ["a" * 65535, "é" * 20000, "/".join(["x"] * 20000), "/" * 1000, "a." * 300]:
        subject = topic_to_subject(topic)
        assert subject_to_topic(subject) == topic
        assert topic_to_subject(topic) == subject  # uncached path twice: same answer
        assert_valid_subject(subject)
    assert len(topic_to_subject("é" * 20000)) == 2 + 6 * 20000
    for too_long in ["m." + "a" * 65536, "m_d." + "a" * 65535, "m." + "=C3=A9" * 32768]:
        with pytest.raises(ValueError, match="longer than"):
            subject_to_topic(too_long)


FILTERS = [
    ("a/b", ("m.a.b",)),
    ("+", ("m.*",)),
    ("+/+", ("m.*.*",)),
    ("a/+/c", ("m.a.*.c",)),
    ("#", ("m.>",)),
    ("a/#", ("m.a.>", "m.a")),
    ("+/#", ("m.*.>", "m.*")),
    ("/#", ("m.=.>", "m.=")),
    ("a//#", ("m.a.=.>", "m.a.=")),
    ("a.b/*/>", ("m.a=2Eb.=2A.=3E",)),
    ("$SYS/#", ("m_d.SYS.>", "m_d.SYS")),
    ("$SYS/+/uptime", ("m_d.SYS.*.uptime",)),
    ("$/#", ("m_d.=.>", "m_d.=")),
    ("$", ("m_d.=",)),
    ("a/$SYS/#", ("m.a.=24SYS.>", "m.a.=24SYS")),
    ("$share/g/a/#", ("m.a.>", "m.a")),
    ("$share/g/$SYS/+", ("m_d.SYS.*",)),
    ("$share/g/#", ("m.>",)),
    ("$share", ("m_d.share",)),  # no slash: an ordinary topic filter
]


@pytest.mark.parametrize(("topic_filter", "subjects"), FILTERS)
def test_filter_vectors(topic_filter: str, subjects: tuple[str, ...]) -> None:
    assert filter_to_subjects(topic_filter) == subjects
    for subject in subjects:
        assert_valid_subject(subject, wildcards=True)


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#", "a+", "+a/b", "$share/g", "\0"])
def test_invalid_filters(topic_filter: str) -> None:
    with pytest.raises(ValueError):
        filter_to_subjects(topic_filter)


def test_first_level_wildcards_do_not_reach_dollar_topics() -> None:
    """[MQTT-4.7.2-1] holds in NATS itself: nothing for the receiver to filter."""
    for topic in ["$SYS/broker/uptime", "$foo", "$", "$/a"]:
        subject = topic_to_subject(topic)
        for topic_filter in ["#", "+", "+/#", "+/broker/uptime", "+/+/+"]:
            assert not any(nats_matches(s, subject) for s in filter_to_subjects(topic_filter))
        assert any(nats_matches(s, subject) for s in filter_to_subjects(topic.split("/")[0] + "/#"))


def test_queue_group_names() -> None:
    names = {
        queue_group_name(group, topic_filter)
        for group in ["g", "G", "grp.1", "é", "a b", "=", "g-0"]
        for topic_filter in ["a", "a/#", "#", "+/x", "$SYS/#"]
    }
    assert len(names) == 35
    for name in names:
        assert TOKEN.fullmatch(name), name
    assert queue_group_name("g", "a/#") == queue_group_name("g", "a/#")
    assert queue_group_name("g", "a/#").startswith("g-")
    assert len(queue_group_name("g", "x" * 65535)) == len("g-") + 16


mqtt_topic_names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#"), min_size=1
)
prefixes = st.sampled_from(["m", "x.mqtt", "c-1_2"])


@given(mqtt_topic_names, prefixes)
def test_round_trip(topic: str, prefix: str) -> None:
    subject = topic_to_subject(topic, prefix)
    assert subject_to_topic(subject, prefix) == topic
    assert_valid_subject(subject)
    root = subject.split(".")[len(prefix.split(".")) - 1]
    assert root == (prefix.rsplit(".", maxsplit=1)[-1] + ("_d" if topic.startswith("$") else ""))


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_token_round_trip(text: str) -> None:
    token = escape_token(text)
    assert TOKEN.fullmatch(token)
    assert unescape_token(token) == text


@given(st.text(alphabet="=aZ09-_.Ff2 %", max_size=8))
def test_only_canonical_tokens_decode(token: str) -> None:
    """A token decodes only if it is what its decoding escapes to: one spelling per level."""
    try:
        text = unescape_token(token)
    except ValueError:
        return
    assert escape_token(text) == token


LEVELS = ["a", "b", "$", "$a", "", "a.b", "*", "="]
topics = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+", "+"]), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    topic_filter = "/".join(levels)
    if topic_filter and draw(st.integers(0, 5)) == 0:
        topic_filter = "$share/g/" + topic_filter
    return topic_filter or "#"


@settings(max_examples=500)
@given(topic_filters(), topics)
def test_nats_matching_is_mqtt_matching(topic_filter: str, topic: str) -> None:
    subject = topic_to_subject(topic)
    subjects = filter_to_subjects(topic_filter)
    hits = [s for s in subjects if nats_matches(s, subject)]
    assert bool(hits) == topic_matches(topic_filter, topic)
    assert len(hits) <= 1  # the two subjects of a trailing "#" never both match
