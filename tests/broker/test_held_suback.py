"""A SUBACK held until the cluster has the new subscriptions (``PendingSubscribe``).

In a cluster, a SUBSCRIBE that made the node subscribe to new filters in NATS is answered
only once NATS has them, so that a message published on another node after the SUBACK
reaches the subscriber. The core asks its ``ClusterLink`` (``subscribed``) and answers
``PendingSubscribe``; the connection holds the SUBACK, and every packet that came after
the SUBSCRIBE, in ``pending_check`` while the server layer awaits the check, and
``check_done`` releases them in order. Sans-IO here: the test plays the server layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import attrs
from helpers import V5, V311, Client, FakeClock, LocalOnlyLink, make_core

from trio_mqtt.broker.core import AwaitedCheck, BrokerCore, OffloadedCheck, PendingSubscribe
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)


async def _awaited_by_the_server() -> None:
    raise AssertionError("the server layer awaits it; here the test answers with check_done")


@attrs.define
class HoldingLink(LocalOnlyLink):
    """A cluster link for which NATS has the filters in ``in_nats`` only: a SUBSCRIBE
    to any other filter waits (and then NATS has it)."""

    in_nats: set[str] = attrs.Factory(set)
    asked: list[tuple[str, tuple[str, ...]]] = attrs.Factory(list)

    def subscribed(
        self, client_id: str, topic_filters: Sequence[str]
    ) -> Callable[[], Awaitable[None]] | None:
        self.asked.append((client_id, tuple(topic_filters)))
        new = set(topic_filters) - self.in_nats
        if not new:
            return None
        self.in_nats |= new
        return _awaited_by_the_server


def clustered_core(clock: FakeClock) -> tuple[BrokerCore, HoldingLink]:
    core = make_core(clock)
    link = HoldingLink()
    core.join_cluster(link, lambda: None)
    return core, link


def held(client: Client) -> PendingSubscribe:
    pending = client.conn.pending_check
    assert isinstance(pending, PendingSubscribe), pending
    assert isinstance(pending.check, AwaitedCheck)
    return pending


def test_the_suback_and_what_came_after_wait_and_then_go_out_in_order(
    clock: FakeClock,
) -> None:
    core, link = clustered_core(clock)
    setter = Client(core, V311)
    setter.connect("setter")
    setter.send(Publish("t/kept", b"retained", retain=True))
    client = Client(core, V311)
    client.connect("c")
    # SUBSCRIBE, then a PUBLISH to itself and a PINGREQ, in one read
    client.conn.receive_data(
        encode(Subscribe(1, (SubscriptionRequest("t/#", 0),)), V311)
        + encode(Publish("t/self", b"mine"), V311)
        + encode(Pingreq(), V311)
    )
    assert link.asked == [("c", ("t/#",))]
    held(client)
    assert client.packets() == []  # no SUBACK, no retained message, nothing after it
    assert "t/#" in core.router.subscriptions_of("c")  # the subscription is in place
    # a message routed meanwhile may come before the SUBACK (MQTT 3.1.1 section 3.8.4)
    setter.send(Publish("t/live", b"early"))
    assert [(p.topic, p.payload) for p in client.publishes()] == [("t/live", b"early")]

    client.conn.check_done(None)
    assert client.conn.pending_check is None
    packets = client.packets()
    assert packets[:2] == [Suback(1, (0,)), Pingresp()]
    assert [(p.topic, p.payload, p.retain) for p in packets[2:]] == [  # type: ignore[attr-defined]
        ("t/kept", b"retained", True),  # queued when the SUBACK went out
        ("t/self", b"mine", False),  # the PUBLISH that came after the SUBSCRIBE
    ]


def test_filters_the_cluster_has_already_are_answered_at_once(clock: FakeClock) -> None:
    core, link = clustered_core(clock)
    link.in_nats = {"a", "$share/g/b"}
    client = Client(core, V5)
    client.connect("c")
    assert client.subscribe(("a", 1), ("$share/g/b", 0)) == Suback(1, (1, 0))
    assert client.conn.pending_check is None
    assert link.asked == [("c", ("a", "$share/g/b"))]
    # refused filters are not asked about; nothing accepted: no question at all
    core.add_subscribe_hook(lambda peer, client_id, username, topic: topic != "secret")
    assert client.subscribe(("secret", 0), packet_id=2) == Suback(2, (0x87,))
    assert len(link.asked) == 1


def test_one_node_answers_at_once(clock: FakeClock) -> None:
    core = make_core(clock)
    client = Client(core, V311)
    client.connect("c")
    assert client.subscribe(("x/#", 1)) == Suback(1, (1,))
    assert client.conn.pending_check is None


def test_the_keep_alive_does_not_run_while_the_suback_is_held(clock: FakeClock) -> None:
    core, _link = clustered_core(clock)
    client = Client(core, V311)
    client.connect("c", keep_alive=10)
    client.send(Subscribe(1, (SubscriptionRequest("k", 0),)))
    held(client)
    assert client.conn.next_deadline() == float("inf")
    clock.now += 100  # the wait is the broker's doing, however long
    client.conn.handle_timer()
    assert not client.conn.wants_close
    client.conn.check_done(None)
    assert client.packets() == [Suback(1, (0,))]
    assert client.conn.next_deadline() == clock.now + 15  # counts from the SUBACK


def test_a_connection_closed_while_its_suback_waits_sends_nothing_more(
    clock: FakeClock,
) -> None:
    core, _link = clustered_core(clock)
    old = Client(core, V5)
    old.connect("c", clean_start=False)
    old.conn.receive_data(
        encode(Subscribe(1, (SubscriptionRequest("k", 0),)), V5) + encode(Pingreq(), V5)
    )
    held(old)
    new = Client(core, V5)
    new.connect("c", clean_start=False)  # takes the session over
    assert old.conn.wants_close
    old.conn.check_done(None)
    assert old.packets() == [Disconnect(0x8E)]  # no SUBACK, no PINGRESP after it


def test_a_held_connect_then_a_held_suback_in_the_same_read(clock: FakeClock) -> None:
    core, _link = clustered_core(clock)
    core.add_connect_hook(lambda peer, connect: OffloadedCheck(lambda: None))
    client = Client(core, V311)
    client.conn.receive_data(
        encode(Connect("c"), V311)
        + encode(Subscribe(1, (SubscriptionRequest("n", 0),)), V311)
        + encode(Pingreq(), V311)
    )
    assert client.packets() == []
    client.conn.check_done(None)  # the CONNECT's check: CONNACK, then the SUBSCRIBE waits
    (connack,) = client.packets()
    assert isinstance(connack, Connack) and connack.reason_code == 0
    held(client)
    client.conn.check_done(None)
    assert client.packets() == [Suback(1, (0,)), Pingresp()]
