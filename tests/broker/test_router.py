"""The subscription router: trie matching, aggregation, No Local, shared groups, cache."""

from __future__ import annotations

import random
from collections import Counter
from functools import partial

import pytest
from helpers import lines_executed
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mqtt.broker.router import Delivery, Router, Subscription, SubscriptionOptions
from trio_mqtt.errors import RemoteProtocolError
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.mqtt.topics import topic_matches

QOS0 = SubscriptionOptions(qos=0)
QOS1 = SubscriptionOptions(qos=1)
QOS2 = SubscriptionOptions(qos=2)


def matched(router: Router, topic: str) -> set[tuple[str, str]]:
    return {(sub.client_id, sub.topic_filter) for sub in router.match(topic)}


def by_client(deliveries: list[Delivery]) -> dict[str, Delivery]:
    result = {d.client_id: d for d in deliveries}
    assert len(result) == len(deliveries), "one delivery per client"
    return result


# ------------------------------------------------------------------------ basic matching


def test_empty_router_matches_nothing() -> None:
    router = Router()
    assert router.match("a/b") == []
    assert router.deliveries("a/b") == []
    assert len(router) == 0


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("sport/tennis/player1", {"sport/tennis/player1", "sport/tennis/+", "sport/#", "#"}),
        ("sport", {"sport/#", "#", "+"}),
        ("sport/", {"sport/#", "sport/+", "+/+", "#"}),
        ("/finance", {"/+", "+/+", "#"}),
        ("finance", {"+", "#"}),
        ("$SYS/broker/load", {"$SYS/#"}),
        ("$SYS", {"$SYS/#"}),
        ("other/x", {"+/+", "#"}),
    ],
)
def test_match_wildcards(topic: str, expected: set[str]) -> None:
    router = Router()
    filters = [
        "sport/tennis/player1",
        "sport/tennis/+",
        "sport/#",
        "sport/+",
        "#",
        "+",
        "+/+",
        "/+",
        "$SYS/#",
    ]
    for index, topic_filter in enumerate(filters):
        router.subscribe(f"c{index}", topic_filter, QOS0)
    assert {f for _c, f in matched(router, topic)} == expected


def test_subscription_fields() -> None:
    router = Router()
    options = SubscriptionOptions(qos=1, retain_as_published=True, subscription_identifier=7)
    router.subscribe("c", "a/+", options)
    assert router.match("a/b") == [Subscription("c", "a/+", options, None)]


def test_subscribe_replaces_and_reports_it() -> None:
    router = Router()
    assert router.subscribe("c", "a/b", QOS0) is False
    assert router.subscribe("c", "a/b", QOS2) is True
    assert len(router) == 1
    assert router.subscriptions_of("c") == {"a/b": QOS2}
    assert by_client(router.deliveries("a/b"))["c"].qos == 2
    # Another client on the same filter is a separate subscription.
    assert router.subscribe("d", "a/b", QOS1) is False
    assert len(router) == 2


def test_unsubscribe() -> None:
    router = Router()
    router.subscribe("c", "a/#", QOS0)
    router.subscribe("d", "a/#", QOS0)
    assert router.unsubscribe("c", "a/b") is False
    assert router.unsubscribe("x", "a/#") is False
    assert router.unsubscribe("c", "a/#") is True
    assert router.unsubscribe("c", "a/#") is False
    assert matched(router, "a/b") == {("d", "a/#")}
    assert len(router) == 1


def test_unsubscribe_all_and_subscriptions_of() -> None:
    router = Router()
    router.subscribe("c", "a/#", QOS1)
    router.subscribe("c", "$share/g/b", QOS2)
    router.subscribe("d", "a/#", QOS0)
    assert router.subscriptions_of("c") == {"a/#": QOS1, "$share/g/b": QOS2}
    assert router.subscriptions_of("nobody") == {}
    router.unsubscribe_all("c")
    router.unsubscribe_all("nobody")
    assert router.subscriptions_of("c") == {}
    assert matched(router, "a/x") == {("d", "a/#")}
    assert router.match("b") == []
    assert len(router) == 1


def test_invalid_filter_is_rejected() -> None:
    router = Router()
    with pytest.raises(RemoteProtocolError) as info:
        router.subscribe("c", "a/#/b", QOS0)
    assert info.value.reason_code is ReasonCode.TOPIC_FILTER_INVALID
    assert len(router) == 0
    assert router.node_count() == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"qos": 3},
        {"qos": -1},
        {"qos": 0, "retain_handling": 3},
        {"qos": 0, "subscription_identifier": 0},
        {"qos": 0, "subscription_identifier": 268_435_456},
    ],
)
def test_subscription_options_are_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SubscriptionOptions(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ aggregation, no local


def test_overlapping_subscriptions_give_one_delivery() -> None:
    router = Router()
    router.subscribe("c", "a/+", SubscriptionOptions(qos=1, subscription_identifier=5))
    router.subscribe("c", "a/#", SubscriptionOptions(qos=2, subscription_identifier=3))
    router.subscribe(
        "c", "a/b", SubscriptionOptions(qos=0, subscription_identifier=5, retain_as_published=True)
    )
    router.subscribe("c", "#", QOS0)
    router.subscribe("d", "a/b", QOS0)
    deliveries = by_client(router.deliveries("a/b"))
    assert deliveries == {
        "c": Delivery("c", qos=2, retain_as_published=True, subscription_identifiers=(3, 5)),
        "d": Delivery("d", qos=0, retain_as_published=False, subscription_identifiers=()),
    }
    # Only "a/#" and "#" match "a": the identifiers follow the matching subscriptions.
    assert by_client(router.deliveries("a"))["c"] == Delivery("c", 2, False, (3,))


def test_no_local_skips_the_publisher_only() -> None:
    router = Router()
    no_local = SubscriptionOptions(qos=1, no_local=True, subscription_identifier=1)
    router.subscribe("pub", "a/#", no_local)
    router.subscribe("other", "a/#", no_local)
    assert set(by_client(router.deliveries("a/b", "pub"))) == {"other"}
    assert set(by_client(router.deliveries("a/b", "other"))) == {"pub"}
    assert set(by_client(router.deliveries("a/b"))) == {"pub", "other"}
    assert set(by_client(router.deliveries("a/b", "someone"))) == {"pub", "other"}


def test_no_local_keeps_the_publishers_other_subscriptions() -> None:
    router = Router()
    router.subscribe(
        "pub", "a/#", SubscriptionOptions(qos=2, no_local=True, subscription_identifier=1)
    )
    router.subscribe("pub", "a/+", SubscriptionOptions(qos=0, subscription_identifier=2))
    assert router.deliveries("a/b", "pub") == [Delivery("pub", 0, False, (2,))]
    assert router.deliveries("a/b", "x") == [Delivery("pub", 2, False, (1, 2))]
    # Twice, so the cached plan is used and not damaged by the first call.
    assert router.deliveries("a/b", "pub") == [Delivery("pub", 0, False, (2,))]
    assert router.deliveries("a/b", "x") == [Delivery("pub", 2, False, (1, 2))]


def test_deliveries_result_is_a_fresh_list() -> None:
    router = Router()
    router.subscribe("c", "a", QOS0)
    first = router.deliveries("a")
    first.clear()
    assert len(router.deliveries("a")) == 1


# ---------------------------------------------------------------------- shared groups


@pytest.mark.parametrize("cache_size", [4096, 0])
def test_shared_group_round_robin(cache_size: int) -> None:
    router = Router(cache_size=cache_size)
    for client in ("a", "b", "c"):
        router.subscribe(client, "$share/g/jobs/+", QOS1)
    picks = [router.deliveries("jobs/1")[0].client_id for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    # match() rotates too, and one member per group per call.
    picks = []
    for _ in range(3):
        subs = router.match("jobs/2")
        assert len(subs) == 1
        assert subs[0].share_group == "g"
        assert subs[0].topic_filter == "$share/g/jobs/+"
        picks.append(subs[0].client_id)
    assert picks == ["a", "b", "c"]


def test_shared_group_prefers_available_members() -> None:
    online = {"a": False, "b": True, "c": True}
    router = Router(is_available=lambda client_id: online[client_id])
    for client in ("a", "b", "c"):
        router.subscribe(client, "$share/g/t", QOS0)
    picks = [router.deliveries("t")[0].client_id for _ in range(4)]
    assert picks == ["b", "c", "b", "c"]
    online["a"] = True
    picks = [router.deliveries("t")[0].client_id for _ in range(3)]
    assert Counter(picks) == Counter({"a": 1, "b": 1, "c": 1})


def test_shared_group_falls_back_to_any_member() -> None:
    router = Router(is_available=lambda client_id: False)
    router.subscribe("a", "$share/g/t", QOS0)
    router.subscribe("b", "$share/g/t", QOS0)
    picks = [router.deliveries("t")[0].client_id for _ in range(4)]
    assert picks == ["a", "b", "a", "b"]


def test_shared_groups_are_per_group_and_filter() -> None:
    router = Router()
    router.subscribe("a1", "$share/A/x/+", QOS0)
    router.subscribe("a2", "$share/A/x/+", QOS0)
    router.subscribe("b1", "$share/B/x/+", QOS0)
    router.subscribe("a3", "$share/A/x/#", QOS0)  # same group name, other filter
    router.subscribe("plain", "x/+", QOS0)
    for _ in range(4):
        subs = router.match("x/y")
        filters = Counter((s.share_group, s.topic_filter) for s in subs)
        assert filters == Counter(
            {("A", "$share/A/x/+"): 1, ("B", "$share/B/x/+"): 1, ("A", "$share/A/x/#"): 1,
             (None, "x/+"): 1}
        )  # fmt: skip
    # A shared subscription does not match "$" topics through a leading wildcard either.
    router.subscribe("s", "$share/S/#", QOS0)
    assert router.match("$SYS/x") == []


def test_shared_member_leaving_keeps_rotation_fair() -> None:
    router = Router()
    for client in ("a", "b", "c", "d"):
        router.subscribe(client, "$share/g/t", QOS0)
    assert [router.deliveries("t")[0].client_id for _ in range(2)] == ["a", "b"]
    router.unsubscribe("a", "$share/g/t")  # before the cursor: "c" is still next
    assert [router.deliveries("t")[0].client_id for _ in range(3)] == ["c", "d", "b"]
    router.unsubscribe("c", "$share/g/t")  # the next one leaves: "d" takes its turn
    assert [router.deliveries("t")[0].client_id for _ in range(3)] == ["d", "b", "d"]
    router.unsubscribe("b", "$share/g/t")
    router.unsubscribe("d", "$share/g/t")
    assert router.deliveries("t") == []
    assert router.node_count() == 0


def test_resubscribing_shared_member_keeps_its_turn() -> None:
    router = Router()
    for client in ("a", "b", "c"):
        router.subscribe(client, "$share/g/t", QOS0)
    assert router.deliveries("t")[0].client_id == "a"
    assert router.subscribe("a", "$share/g/t", QOS2) is True
    assert [router.deliveries("t")[0] for _ in range(3)] == [
        Delivery("b", 0, False, ()),
        Delivery("c", 0, False, ()),
        Delivery("a", 2, False, ()),
    ]


def test_shared_and_plain_subscription_of_one_client_aggregate() -> None:
    router = Router()
    router.subscribe("c", "t/#", SubscriptionOptions(qos=0, subscription_identifier=4))
    router.subscribe("c", "$share/g/t/+", SubscriptionOptions(qos=2, subscription_identifier=9))
    router.subscribe("d", "t/x", QOS1)
    assert by_client(router.deliveries("t/x")) == {
        "c": Delivery("c", 2, False, (4, 9)),
        "d": Delivery("d", 1, False, ()),
    }


def test_shared_pick_of_the_publisher_with_no_local_is_dropped() -> None:
    # MQTT 5 forbids No Local on shared subscriptions; the router still never echoes.
    router = Router()
    router.subscribe("pub", "$share/g/t", SubscriptionOptions(qos=0, no_local=True))
    assert router.deliveries("t", "pub") == []
    assert router.deliveries("t", "x") == [Delivery("pub", 0, False, ())]


# ------------------------------------------------------------------------------ cache


def test_cache_is_invalidated_by_subscribe_and_unsubscribe() -> None:
    router = Router()
    router.subscribe("a", "t/+", QOS0)
    assert matched(router, "t/1") == {("a", "t/+")}
    generation = router.generation
    router.subscribe("b", "t/1", QOS0)
    assert router.generation > generation
    assert matched(router, "t/1") == {("a", "t/+"), ("b", "t/1")}
    router.subscribe("a", "t/+", QOS2)  # replacing changes the options delivered
    assert by_client(router.deliveries("t/1"))["a"].qos == 2
    router.unsubscribe("a", "t/+")
    assert matched(router, "t/1") == {("b", "t/1")}
    router.unsubscribe_all("b")
    assert router.match("t/1") == []


def test_cache_is_bounded() -> None:
    router = Router(cache_size=8)
    router.subscribe("a", "#", QOS0)
    for index in range(100):
        assert len(router.deliveries(f"t/{index}")) == 1
    assert len(router._cache) == 8
    # The most recent topics stay cached.
    assert list(router._cache) == [f"t/{index}" for index in range(92, 100)]


def test_cache_can_be_disabled() -> None:
    router = Router(cache_size=0)
    router.subscribe("a", "#", QOS0)
    assert len(router.deliveries("t")) == 1
    assert len(router._cache) == 0


# ------------------------------------------------------------------ memory, scalability


def random_filter(rng: random.Random) -> str:
    levels = [rng.choice(["a", "b", "c", "", "+", "$x", str(rng.randrange(50))]) for _ in range(4)]
    levels = levels[: rng.randint(1, 4)]
    if rng.random() < 0.3:
        levels.append("#")
    topic_filter = "/".join(levels) or "/"
    if rng.random() < 0.2:
        topic_filter = f"$share/g{rng.randrange(3)}/{topic_filter}"
    return topic_filter


def test_churn_leaves_an_empty_trie() -> None:
    rng = random.Random(1234)
    router = Router()
    subscribed: list[tuple[str, str]] = []
    for _ in range(10_000):
        client, topic_filter = f"c{rng.randrange(200)}", random_filter(rng)
        router.subscribe(client, topic_filter, QOS1)
        subscribed.append((client, topic_filter))
        router.deliveries("a/b/c")  # keep the cache involved
    assert len(router) == len(set(subscribed))
    assert router.node_count() > 0
    rng.shuffle(subscribed)
    for client, topic_filter in subscribed:
        router.unsubscribe(client, topic_filter)
    assert len(router) == 0
    assert router.node_count() == 0
    assert router._by_client == {}
    assert router.match("a/b/c") == []


def device_router(count: int) -> Router:
    """``count`` devices on their own state topic, and a monitor of all; no match cache."""
    router = Router(cache_size=0)
    for index in range(count):
        router.subscribe(f"dev{index}", f"devices/{index}/state", QOS0)
    router.subscribe("monitor", "devices/+/state", QOS0)
    return router


def test_match_cost_does_not_grow_with_subscription_count() -> None:
    router = device_router(50_000)
    for index in range(10_000):
        assert len(router.deliveries(f"devices/{index}/state")) == 2
    # The work of one match, in lines of Python run: the same with a hundred times fewer
    # subscriptions. A scan of the 50k subscriptions would run at least 50k lines.
    few = device_router(500)
    for index in (0, 250, 499):
        topic = f"devices/{index}/state"
        work = lines_executed(partial(router.deliveries, topic))
        assert work == lines_executed(partial(few.deliveries, topic)), topic


# -------------------------------------------------------------- property: vs reference

LEVELS = st.sampled_from(["a", "b", "", "$x", "$SYS"])


@st.composite
def topics(draw: st.DrawFn) -> str:
    return "/".join(draw(st.lists(LEVELS, min_size=1, max_size=4)))


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(LEVELS, st.just("+")), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    topic_filter = "/".join(levels) or "/"
    if draw(st.integers(0, 4)) == 0:
        topic_filter = f"$share/{draw(st.sampled_from(['g', 'h']))}/{topic_filter}"
    return topic_filter


@settings(max_examples=200, deadline=None)
@given(st.lists(filters(), max_size=25, unique=True), st.lists(topics(), min_size=1, max_size=10))
def test_router_match_agrees_with_reference(topic_filters: list[str], names: list[str]) -> None:
    router = Router()
    for index, topic_filter in enumerate(topic_filters):
        router.subscribe(f"c{index}", topic_filter, QOS0)
    for name in names:
        expected = {
            (f"c{index}", topic_filter)
            for index, topic_filter in enumerate(topic_filters)
            if topic_matches(topic_filter, name)
        }
        assert matched(router, name) == expected


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["c1", "c2", "c3"]),
            filters().filter(lambda f: not f.startswith("$share/")),
            st.integers(0, 2),
            st.one_of(st.none(), st.integers(1, 4)),
            st.booleans(),
        ),
        max_size=15,
    ),
    topics(),
    st.sampled_from([None, "c1", "c2"]),
)
def test_router_deliveries_agree_with_reference(
    subscriptions: list[tuple[str, str, int, int | None, bool]],
    name: str,
    publisher: str | None,
) -> None:
    router = Router()
    final: dict[tuple[str, str], SubscriptionOptions] = {}
    for client, topic_filter, qos, identifier, no_local in subscriptions:
        options = SubscriptionOptions(
            qos=qos, no_local=no_local, subscription_identifier=identifier
        )
        router.subscribe(client, topic_filter, options)
        final[client, topic_filter] = options
    expected: dict[str, Delivery] = {}
    for client in ("c1", "c2", "c3"):
        relevant = [
            options
            for (owner, topic_filter), options in final.items()
            if owner == client
            and topic_matches(topic_filter, name)
            and not (options.no_local and client == publisher)
        ]
        if relevant:
            expected[client] = Delivery(
                client,
                qos=max(o.qos for o in relevant),
                retain_as_published=False,
                subscription_identifiers=tuple(
                    sorted(
                        {
                            o.subscription_identifier
                            for o in relevant
                            if o.subscription_identifier is not None
                        }
                    )
                ),
            )
    # Twice: the second call is served from the cache.
    assert by_client(router.deliveries(name, publisher)) == expected
    assert by_client(router.deliveries(name, publisher)) == expected
