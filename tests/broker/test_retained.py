"""The retained-message store: a topic trie matched by topic filters."""

from __future__ import annotations

import random

import pytest
from helpers import lines_executed
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mqtt.broker.retained import RetainedStore
from trio_mqtt.mqtt.topics import topic_matches


def matched(store: RetainedStore[int], topic_filter: str) -> dict[str, int]:
    pairs = list(store.match(topic_filter))
    result = dict(pairs)
    assert len(result) == len(pairs), "each topic at most once"
    return result


def test_set_get_delete_len() -> None:
    store: RetainedStore[str] = RetainedStore()
    assert len(store) == 0
    assert store.get("a/b") is None
    store.set("a/b", "one")
    store.set("a/b", "two")  # replaces
    store.set("a", "parent")
    assert len(store) == 2
    assert store.get("a/b") == "two"
    assert store.get("a") == "parent"
    assert store.get("a/b/c") is None
    assert store.get("a/") is None
    assert store.delete("a/b/c") is False
    assert store.delete("a/") is False
    assert store.delete("a/b") is True
    assert store.delete("a/b") is False
    assert store.get("a/b") is None
    assert store.get("a") == "parent"
    assert len(store) == 1
    assert sorted(store) == [("a", "parent")]


def test_delete_prunes_empty_nodes() -> None:
    store: RetainedStore[int] = RetainedStore()
    store.set("a/b/c/d", 1)
    store.set("a/b", 2)
    store.set("x", 3)
    assert store.node_count() == 5
    assert store.delete("a/b/c/d")
    assert store.node_count() == 3  # "a", "a/b", "x" remain
    assert store.delete("a/b")
    assert store.node_count() == 1
    assert store.delete("x")
    assert store.node_count() == 0
    assert len(store) == 0


def test_iter_includes_dollar_topics() -> None:
    store: RetainedStore[int] = RetainedStore()
    for index, topic in enumerate(["a", "/", "$SYS/x", "a/b/c"]):
        store.set(topic, index)
    assert sorted(store) == [("$SYS/x", 2), ("/", 1), ("a", 0), ("a/b/c", 3)]


STORED = {
    "sport": 1,
    "sport/": 2,
    "sport/tennis": 3,
    "sport/tennis/player1": 4,
    "sport/tennis/player1/ranking": 5,
    "sport/golf/player1": 6,
    "/finance": 7,
    "finance": 8,
    "/": 9,
    "$SYS/broker/load": 10,
    "$SYS": 11,
    "a/$x": 12,
}


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("#", set(STORED) - {"$SYS/broker/load", "$SYS"}),
        ("+", {"sport", "finance"}),
        ("+/+", {"sport/", "sport/tennis", "/finance", "/", "a/$x"}),
        ("/+", {"/finance", "/"}),
        ("sport/#", {"sport", "sport/", "sport/tennis", "sport/tennis/player1",
                     "sport/tennis/player1/ranking", "sport/golf/player1"}),
        ("sport/+", {"sport/", "sport/tennis"}),
        ("sport/+/player1", {"sport/tennis/player1", "sport/golf/player1"}),
        ("sport/tennis/player1/#", {"sport/tennis/player1", "sport/tennis/player1/ranking"}),
        ("+/tennis/#", {"sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking"}),
        ("$SYS/#", {"$SYS", "$SYS/broker/load"}),
        ("$SYS/+/load", {"$SYS/broker/load"}),
        ("+/broker/load", set()),
        ("a/+", {"a/$x"}),
        ("sport/tennis", {"sport/tennis"}),
        ("missing/#", set()),
        ("sport/tennis/player1/ranking/#", {"sport/tennis/player1/ranking"}),
    ],
)  # fmt: skip
def test_match_table(topic_filter: str, expected: set[str]) -> None:
    store: RetainedStore[int] = RetainedStore()
    for topic, value in STORED.items():
        store.set(topic, value)
    assert matched(store, topic_filter) == {topic: STORED[topic] for topic in expected}
    # The table agrees with the reference matcher.
    assert {t for t in STORED if topic_matches(topic_filter, t)} == expected


def test_remove_if() -> None:
    store: RetainedStore[int] = RetainedStore()
    for index in range(10):
        store.set(f"t/{index}", index)
    assert store.remove_if(lambda value: value % 2 == 0) == 5
    assert sorted(value for _topic, value in store) == [1, 3, 5, 7, 9]
    assert len(store) == 5
    assert store.remove_if(lambda value: False) == 0
    assert store.remove_if(lambda value: True) == 5
    assert len(store) == 0
    assert store.node_count() == 0


def test_clear() -> None:
    store: RetainedStore[int] = RetainedStore()
    store.set("a/b", 1)
    store.clear()
    assert len(store) == 0
    assert list(store.match("#")) == []
    assert store.node_count() == 0


def test_deep_topics_do_not_recurse() -> None:
    store: RetainedStore[int] = RetainedStore()
    deep = "/" * 30_000  # 30001 empty levels: far deeper than Python's recursion limit
    store.set(deep, 1)
    store.set(deep + "x", 2)
    assert matched(store, "#") == {deep: 1, deep + "x": 2}
    assert matched(store, deep + "+") == {deep: 1, deep + "x": 2}  # "+" matches "" too
    assert matched(store, deep + "x") == {deep + "x": 2}
    assert store.get(deep) == 1
    assert store.delete(deep + "x")
    assert store.delete(deep)
    assert store.node_count() == 0


def sensor_store(count: int, *, humidity: bool = True) -> RetainedStore[int]:
    """``count`` sensors with a temperature (and a humidity) topic each, and a $SYS topic."""
    store: RetainedStore[int] = RetainedStore()
    for index in range(count):
        store.set(f"sensors/{index}/temp", index)
        if humidity:
            store.set(f"sensors/{index}/humidity", -index)
    store.set("$SYS/uptime", 0)
    return store


def match_work(store: RetainedStore[int], topic_filter: str) -> int:
    """The work of matching ``topic_filter``, in lines of Python run."""
    return lines_executed(lambda: list(store.match(topic_filter)))


def test_100k_topics_match_by_walking_the_trie() -> None:
    store = sensor_store(50_000)
    assert len(store) == 100_001

    temps = matched(store, "sensors/+/temp")
    one = matched(store, "sensors/4711/+")
    everything = sum(1 for _ in store.match("#"))

    assert len(temps) == 50_000
    assert temps["sensors/123/temp"] == 123
    assert one == {"sensors/4711/temp": 4711, "sensors/4711/humidity": -4711}
    assert everything == 100_000  # "#" leaves "$SYS/uptime" out
    for index in range(1000):
        assert matched(store, f"sensors/{index}/temp") == {f"sensors/{index}/temp": index}

    # Work counted in lines of Python run, not time. A literal level follows one child:
    # a filter whose wildcards are all below literal levels costs the same in a store a
    # hundred times smaller.
    small = sensor_store(500)
    for topic_filter in ("sensors/123/+", "sensors/456/temp"):
        assert match_work(store, topic_filter) == match_work(small, topic_filter), topic_filter
    # "+" and "#" cost what they visit: ten times the topics, at most ten times the work.
    tenfold = sensor_store(5_000)
    for topic_filter in ("sensors/+/temp", "#"):
        assert match_work(tenfold, topic_filter) <= 10 * match_work(small, topic_filter)
    # Below "+", the literal "temp" skips the humidity topics: the same work without them.
    temps_only = sensor_store(5_000, humidity=False)
    assert match_work(tenfold, "sensors/+/temp") == match_work(temps_only, "sensors/+/temp")


def test_match_against_reference_on_random_topics() -> None:
    rng = random.Random(99)
    words = ["a", "b", "c", "", "$x", "$SYS"]
    topics = {"/".join(rng.choice(words) for _ in range(rng.randint(1, 5))) for _ in range(2000)}
    store: RetainedStore[int] = RetainedStore()
    for index, topic in enumerate(sorted(topics)):
        store.set(topic, index)
    for _ in range(300):
        levels = [rng.choice([*words, "+"]) for _ in range(rng.randint(0, 4))]
        if not levels or rng.random() < 0.4:
            levels.append("#")
        topic_filter = "/".join(levels) or "/"
        expected = {t for t in topics if topic_matches(topic_filter, t)}
        assert set(matched(store, topic_filter)) == expected, topic_filter


# -------------------------------------------------------------- property: vs reference

LEVELS = st.sampled_from(["a", "b", "", "$x", "$SYS"])
TOPICS = st.lists(LEVELS, min_size=1, max_size=4).map("/".join)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(LEVELS, st.just("+")), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "/"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(TOPICS, max_size=30, unique=True),
    st.lists(filters(), min_size=1, max_size=8),
    st.lists(TOPICS, max_size=10),
)
def test_retained_match_agrees_with_reference(
    stored: list[str], topic_filters: list[str], deleted: list[str]
) -> None:
    store: RetainedStore[int] = RetainedStore()
    for index, topic in enumerate(stored):
        store.set(topic, index)
    for topic in deleted:
        assert store.delete(topic) is (topic in stored)
        if topic in stored:
            stored.remove(topic)
    assert len(store) == len(stored)
    for topic_filter in topic_filters:
        expected = {t for t in stored if topic_matches(topic_filter, t)}
        assert set(matched(store, topic_filter)) == expected
    for topic in list(stored):
        store.delete(topic)
    assert store.node_count() == 0
