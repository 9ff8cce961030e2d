"""The core's side of the cluster: what it tells its node, and what it takes back.

The node itself (NATS traffic) is tested against a real nats-server elsewhere; here the
core talks to a recording ``ClusterLink`` so each decision is checked on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from helpers import V5, V311, Client, FakeClock, make_core

from trio_mqtt.broker.connection_view import STORE_WINDOW, STORE_WINDOW_BYTES, ClientConnection
from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message, StoredMessage
from trio_mqtt.mqtt.packets import (
    Disconnect,
    Properties,
    Puback,
    Publish,
    Pubrec,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode


@attrs.define
class RecordingLink:
    forwarded: list[Message] = attrs.Factory(list)
    claimed: list[str] = attrs.Factory(list)
    wills: dict[str, tuple[Message, int]] = attrs.Factory(dict)
    gone: list[str] = attrs.Factory(list)
    stores: list[tuple[Message, ClientConnection, int]] = attrs.Factory(list)
    # what store() says: the lowest stream sequence a message can get (0: refused)
    floor: int = 40
    core: BrokerCore | None = None
    # what spill() kept, and whether it keeps anything
    spilled: list[tuple[str, StoredMessage]] = attrs.Factory(list)
    keeps: bool = True

    def forward(self, message: Message) -> None:
        self.forwarded.append(message)

    def store(self, message: Message, conn: ClientConnection, packet_id: int) -> int:
        if not self.floor:
            assert self.core is not None
            self.core.stored(conn, packet_id, message, None)
            return 0
        self.stores.append((message, conn, packet_id))
        return self.floor

    def answer_stores(self, core: BrokerCore, first_sequence: int = 1) -> None:
        """The stream took every message sent to it, in order."""
        stores, self.stores = self.stores, []
        for offset, (message, conn, packet_id) in enumerate(stores):
            core.stored(conn, packet_id, message, first_sequence + offset)

    def connected(self, client_id: str, will: Message | None, will_delay: int) -> None:
        self.claimed.append(client_id)
        if will is not None:
            self.wills[client_id] = (will, will_delay)

    def disconnected(self, client_id: str) -> None:
        self.gone.append(client_id)

    def spill(self, client_id: str, message: StoredMessage) -> bool:
        if not self.keeps:
            return False
        self.spilled.append((client_id, message))
        return True

    def subscribed(self, client_id: str, topic_filters: Sequence[str]) -> None:
        return None  # NATS has every filter already: no SUBACK waits (test_held_suback.py)


def clustered_core() -> tuple[BrokerCore, RecordingLink]:
    core = make_core()
    link = RecordingLink(core=core)
    core.join_cluster(link, lambda: None)
    return core, link


def test_a_client_publish_is_forwarded_once_and_delivered_locally() -> None:
    core, link = clustered_core()
    subscriber = Client(core)
    subscriber.connect("sub")
    subscriber.subscribe(("a/+", 1))
    publisher = Client(core)
    publisher.connect("pub")
    publisher.send(Publish(topic="a/b", payload=b"x", qos=1, packet_id=7))
    # QoS 1: sent to the stream, and routed at once with the lowest sequence the stream
    # can give it; acknowledged only when the stream answers
    assert [(m.topic, m.payload, m.qos) for m, _conn, pid in link.stores] == [("a/b", b"x", 1)]
    assert [(m.topic, m.payload, m.qos, m.publisher, m.sequence) for m in link.forwarded] == [
        ("a/b", b"x", 1, "pub", 40)
    ]
    assert [p.payload for p in subscriber.publishes()] == [b"x"]
    assert publisher.packets() == []
    link.answer_stores(core, first_sequence=41)
    assert len(link.forwarded) == 1  # not routed again
    assert subscriber.packets() == []
    assert publisher.packets() == [Puback(7)]


def test_qos_2_is_routed_only_once_stored_with_its_sequence() -> None:
    core, link = clustered_core()
    subscriber = Client(core)
    subscriber.connect("sub")
    subscriber.subscribe(("a/+", 2))
    publisher = Client(core)
    publisher.connect("pub")
    publisher.send(Publish(topic="a/b", payload=b"x", qos=2, packet_id=7))
    assert len(link.stores) == 1
    assert link.forwarded == []
    assert subscriber.packets() == []
    assert publisher.packets() == []
    link.answer_stores(core, first_sequence=41)
    assert [(m.payload, m.qos, m.sequence) for m in link.forwarded] == [(b"x", 2, 41)]
    assert [p.payload for p in subscriber.publishes()] == [b"x"]
    assert publisher.packets() == [Pubrec(7)]


def test_a_qos_1_message_the_link_refuses_at_once_is_not_routed() -> None:
    core, link = clustered_core()
    subscriber = Client(core)
    subscriber.connect("sub")
    subscriber.subscribe(("t", 1))
    publisher = Client(core, V5)
    publisher.connect("pub")
    link.floor = 0  # (NATS closed, or the message too large for it)
    publisher.send(Publish(topic="t", payload=b"x", qos=1, packet_id=2))
    assert link.forwarded == []
    assert subscriber.packets() == []
    (disconnect,) = publisher.packets()
    assert isinstance(disconnect, Disconnect)
    assert disconnect.reason_code == ReasonCode.SERVER_BUSY


def test_messages_without_local_subscribers_are_forwarded_too() -> None:
    core, link = clustered_core()
    publisher = Client(core, V311)
    publisher.connect("pub")
    publisher.send(Publish(topic="nobody/here", payload=b"x"))
    assert [m.topic for m in link.forwarded] == ["nobody/here"]


def test_sys_topics_stay_on_their_node() -> None:
    core, link = clustered_core()
    core.publish(Message("$SYS/broker/uptime", b"1", retain=True))
    assert link.forwarded == []


def test_a_message_from_the_cluster_is_routed_here_and_not_forwarded_back() -> None:
    core, link = clustered_core()
    subscriber = Client(core)
    subscriber.connect("sub")
    subscriber.subscribe(("a/#", 2))
    routed = core.publish(
        Message("a/b", b"remote", qos=1, retain=True, publisher="p"), from_cluster=True
    )
    assert routed == 1
    assert link.forwarded == []
    (publish,) = subscriber.publishes()
    assert (publish.payload, publish.qos) == (b"remote", 1)
    # its retained copy comes through retained_from_cluster, not through routing
    assert core.retained.get("a/b") is None


def test_no_local_holds_across_nodes_by_client_id() -> None:
    core, _link = clustered_core()
    client = Client(core, V5)
    client.connect("same")
    client.send(Subscribe(1, (SubscriptionRequest("t", 1, no_local=True),)))
    client.packets()
    assert core.publish(Message("t", b"own", qos=1, publisher="same"), from_cluster=True) == 0
    assert core.publish(Message("t", b"other", qos=1, publisher="else"), from_cluster=True) == 1
    assert [p.payload for p in client.publishes()] == [b"other"]


def test_a_connect_claims_the_client_id_and_arms_its_will_until_it_ends() -> None:
    core, link = clustered_core()
    first = Client(core)
    first.connect(
        "c1",
        will=Will(topic="w/c1", payload=b"x", properties=Properties(will_delay_interval=30)),
    )
    second = Client(core, V311)
    second.connect("c2")
    assert link.claimed == ["c1", "c2"]
    will, delay = link.wills["c1"]
    assert (will.topic, will.payload, will.publisher, delay) == ("w/c1", b"x", "c1", 30)
    assert will.properties.will_delay_interval is None  # not forwarded with the message
    assert "c2" not in link.wills
    first.send(Disconnect())
    first.drop()  # (the transport closes after a DISCONNECT)
    second.drop()
    assert link.gone == ["c1", "c2"]


def test_retained_from_the_cluster_sets_and_clears_this_nodes_copy() -> None:
    core, _link = clustered_core()
    core.retained_from_cluster("r/1", Message("r/1", b"v", retain=True))
    subscriber = Client(core)
    subscriber.connect("sub")
    subscriber.subscribe(("r/#", 0))
    assert [p.payload for p in subscriber.packets() if isinstance(p, Publish)] == [b"v"]
    core.retained_from_cluster("r/1", None)
    assert core.retained.get("r/1") is None


def test_taken_over_elsewhere_closes_with_0x8e_and_publishes_the_will() -> None:
    core, link = clustered_core()
    watcher = Client(core)
    watcher.connect("watcher")
    watcher.subscribe(("wills/#", 0))
    client = Client(core, V5)
    client.connect("moving", will=Will(topic="wills/moving", payload=b"gone"))
    assert core.taken_over_elsewhere("moving", "n2") is True
    (disconnect,) = client.packets()
    assert isinstance(disconnect, Disconnect)
    assert disconnect.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert "moving" not in core.sessions
    assert [p.payload for p in watcher.publishes()] == [b"gone"]
    assert [m.topic for m in link.forwarded] == ["wills/moving"]
    assert core.taken_over_elsewhere("moving", "n2") is False
    assert core.taken_over_elsewhere("never-here", "n2") is False


def test_router_notes_first_and_last_subscriber_of_each_filter() -> None:
    core = make_core()
    calls: list[None] = []
    core.router.serve_cluster(lambda: calls.append(None))
    first, second = Client(core), Client(core)
    first.connect("one")
    second.connect("two")
    first.subscribe(("a/+", 0), ("$share/g/b", 0))
    assert core.router.take_interest_changes() == {"a/+": True, "$share/g/b": True}
    second.subscribe(("a/+", 1), ("$share/g/b", 1))  # not the first: nothing new
    assert core.router.take_interest_changes() == {}
    first.subscribe(("a/+", 2))  # a replaced subscription is not new interest
    assert core.router.take_interest_changes() == {}
    first.drop()  # clean session: its subscriptions go
    second.drop()
    assert core.router.take_interest_changes() == {"a/+": False, "$share/g/b": False}
    assert len(calls) == 4


def test_router_lists_every_filter_with_subscribers() -> None:
    core = make_core()
    client = Client(core)
    client.connect("c")
    filters = ("a/+/c", "#", "/", "/x", "$share/g/q/#", "+")
    client.subscribe(*((f, 0) for f in filters))
    assert sorted(core.router.filters()) == sorted(filters)


def test_shared_members_are_chosen_by_the_cluster_when_it_says_so() -> None:
    core, _link = clustered_core()
    assert core.router.shared_elsewhere  # (join_cluster hands share groups to the cluster)
    member = Client(core)
    member.connect("m")
    member.subscribe(("$share/g/s", 1))
    assert core.publish(Message("s", b"local publish", qos=1)) == 0
    assert member.packets() == []
    assert core.publish_shared_remote(Message("s", b"chosen", qos=1), "$share/g/s") is True
    assert [p.payload for p in member.publishes()] == [b"chosen"]
    assert core.publish_shared_remote(Message("s", b"x"), "$share/other/s") is False


def test_hand_over_closes_the_connection_and_lets_go_of_the_session() -> None:
    core, _link = clustered_core()
    client = Client(core, V311)
    client.connect("mover", clean_start=False)
    client.subscribe(("m/#", 1))
    core.publish(Message("m/1", b"queued", qos=1))  # in flight to the client
    client.packets()
    session = core.hand_over("mover", "n2")
    assert session is not None and session.client_id == "mover"
    assert len(session.inflight_out) == 1
    assert "mover" not in core.sessions
    assert core.router.subscriptions_of("mover") == {}
    assert client.conn.wants_close
    assert core.hand_over("mover", "n2") is None


def test_hand_over_of_a_session_that_ends_with_its_connection_is_none() -> None:
    core, _link = clustered_core()
    client = Client(core, V5)
    client.connect("brief")  # 5.0, session expiry 0
    assert core.hand_over("brief", "n2") is None
    assert "brief" not in core.sessions


def test_an_awaited_check_holds_the_connect_until_it_answers() -> None:
    from trio_mqtt.broker.core import AwaitedCheck
    from trio_mqtt.mqtt.packets import Connect

    core, _link = clustered_core()

    async def never_called() -> None:  # the server awaits it; here the test answers
        raise AssertionError

    core.add_connect_hook(lambda peer, connect: AwaitedCheck(never_called))
    client = Client(core, V311)
    client.send(Connect(client_id="waits", protocol_version=V311))
    assert client.packets() == []
    assert client.conn.pending_check is not None
    assert isinstance(client.conn.pending_check.check, AwaitedCheck)
    client.conn.check_done(None)
    (connack,) = client.packets()
    assert connack.reason_code == 0  # type: ignore[union-attr]


def test_no_matching_subscribers_is_not_claimed_in_a_cluster() -> None:
    core, link = clustered_core()
    publisher = Client(core, V5)
    publisher.connect("pub")
    publisher.send(Publish(topic="elsewhere", payload=b"x", qos=1, packet_id=3))
    link.answer_stores(core)
    assert publisher.packets() == [Puback(3)]  # not 0x10: another node may have them


def test_qos_2_is_stored_then_pubrec_and_a_failed_store_disconnects_with_0x89() -> None:
    core, link = clustered_core()
    publisher = Client(core, V5)
    publisher.connect("pub")
    publisher.send(Publish(topic="t", payload=b"two", qos=2, packet_id=5))
    assert publisher.packets() == []
    link.answer_stores(core)
    assert publisher.packets() == [Pubrec(5)]
    publisher.send(Publish(topic="t", payload=b"lost", qos=2, packet_id=6))
    ((message, conn, packet_id),) = link.stores
    core.stored(conn, packet_id, message, None)
    (disconnect,) = publisher.packets()
    assert isinstance(disconnect, Disconnect)
    assert disconnect.reason_code == ReasonCode.SERVER_BUSY
    assert link.forwarded[-1].payload == b"two"  # the lost one was not routed


def test_a_failed_qos_1_store_disconnects_with_0x89_after_routing() -> None:
    core, link = clustered_core()
    subscriber = Client(core)
    subscriber.connect("sub")
    subscriber.subscribe(("t", 1))
    publisher = Client(core, V5)
    publisher.connect("pub")
    publisher.send(Publish(topic="t", payload=b"again", qos=1, packet_id=6))
    ((message, conn, packet_id),) = link.stores
    core.stored(conn, packet_id, message, None)
    (disconnect,) = publisher.packets()
    assert isinstance(disconnect, Disconnect)
    assert disconnect.reason_code == ReasonCode.SERVER_BUSY  # no PUBACK: it comes again
    assert [p.payload for p in subscriber.publishes()] == [b"again"]  # (at least once)


def test_an_answer_for_a_closed_connection_routes_qos_2_but_sends_nothing() -> None:
    core, link = clustered_core()
    subscriber = Client(core)
    subscriber.connect("sub")
    subscriber.subscribe(("t", 1))
    publisher = Client(core, V311)
    publisher.connect("pub")
    publisher.send(Publish(topic="t", payload=b"durable", qos=2, packet_id=1))
    publisher.drop()
    link.answer_stores(core)
    assert [p.payload for p in subscriber.publishes()] == [b"durable"]


def test_leaving_the_cluster_makes_a_single_node_again() -> None:
    core, _link = clustered_core()
    stand_in = RecordingLink()
    core.leave_cluster(stand_in=stand_in)
    assert core.cluster is stand_in
    assert not core.router.shared_elsewhere
    assert core.router.on_interest is None
    core.leave_cluster()
    assert core.cluster is None


def test_a_publisher_is_held_back_while_a_window_of_its_messages_is_being_stored() -> None:
    """A client that publishes QoS 1 without waiting for PUBACKs: the broker stops reading
    from it while STORE_WINDOW messages (or STORE_WINDOW_BYTES) wait for the stream."""
    core, link = clustered_core()
    reliefs: list[int] = []
    core.on_relief = lambda: reliefs.append(1)
    publisher = Client(core, V311)
    publisher.connect("pub")
    for packet_id in range(1, STORE_WINDOW):
        publisher.send(Publish(topic="t", payload=b"x", qos=1, packet_id=packet_id))
    assert not publisher.conn.held_back()
    publisher.send(Publish(topic="t", payload=b"x", qos=1, packet_id=STORE_WINDOW))
    assert publisher.conn.held_back()
    stores, link.stores = link.stores, []
    message, conn, packet_id = stores.pop(0)
    core.stored(conn, packet_id, message, 1)  # one answered: below the window again
    assert reliefs == [1]
    assert not publisher.conn.held_back()
    assert publisher.packets() == [Puback(1)]


def test_the_store_window_counts_bytes_too() -> None:
    core, link = clustered_core()
    publisher = Client(core, V311)
    publisher.connect("pub")
    payload = b"x" * (STORE_WINDOW_BYTES // 2)
    publisher.send(Publish(topic="t", payload=payload, qos=1, packet_id=1))
    assert not publisher.conn.held_back()
    publisher.send(Publish(topic="t", payload=payload, qos=2, packet_id=2))
    assert publisher.conn.held_back()
    link.answer_stores(core)
    assert not publisher.conn.held_back()
    assert publisher.packets() == [Puback(1), Pubrec(2)]


def test_time_held_back_by_the_store_window_does_not_count_towards_the_keep_alive() -> None:
    clock = FakeClock()
    core = make_core(clock)
    link = RecordingLink(core=core)
    core.join_cluster(link, lambda: None)
    publisher = Client(core, V311)
    publisher.connect("pub", keep_alive=10)
    for packet_id in range(1, STORE_WINDOW + 1):
        publisher.send(Publish(topic="t", payload=b"x", qos=1, packet_id=packet_id))
    deadline = publisher.conn.next_deadline()
    assert publisher.conn.held_back()
    clock.now += 60  # the stream is slow: a minute without reading from the client
    assert publisher.conn.held_back()
    link.answer_stores(core)
    assert not publisher.conn.held_back()
    assert publisher.conn.next_deadline() == deadline + 60


def test_publish_to_reaches_one_session_through_the_filters_named() -> None:
    core = make_core()
    moved, other = Client(core), Client(core)
    moved.connect("moved")
    moved.subscribe(("k/#", 1), ("x/#", 1), ("$share/g/k/#", 1), sub_id=5)
    other.connect("other")
    other.subscribe(("k/#", 1))
    messages = [
        Message("k/1", b"one", 1),
        Message("x/1", b"not named", 1),
        Message("z/1", b"matches nothing", 1),
    ]
    assert core.publish_to("moved", messages, ["k/#", "$share/g/k/#"]) == 1
    (got,) = moved.publishes()
    assert (got.topic, got.payload, got.qos) == ("k/1", b"one", 1)
    assert got.properties.subscription_identifiers == (5,)  # its subscription's options
    assert other.publishes() == []  # the others had theirs live
    assert core.publish_to("nobody", messages, ["k/#"]) == 0


def test_publish_to_keeps_no_local() -> None:
    core = make_core()
    moved = Client(core)
    moved.connect("moved")
    moved.send(Subscribe(1, (SubscriptionRequest("k/#", 1, no_local=True),), Properties()))
    moved.packets()
    own = Message("k/1", b"its own", 1, publisher="moved")
    assert core.publish_to("moved", [own], ["k/#"]) == 0
    assert moved.publishes() == []


def slow_subscriber(core: BrokerCore, queue: int) -> Client:
    """A connected client on ``s/#`` (QoS 1) whose queue holds ``queue`` bytes."""
    slow = Client(core)
    slow.connect("slow")
    slow.subscribe(("s/#", 1))
    session = core.sessions["slow"]
    session.set_limits(session.max_queued_messages, queue)
    slow.conn.on_output = lambda: None  # (it reads nothing: its queue fills up)
    return slow


def test_what_a_slow_subscribers_queue_cannot_take_goes_to_the_cluster_in_order() -> None:
    core, link = clustered_core()
    slow_subscriber(core, queue=300)
    for index in range(6):
        core.publish(StoredMessage.of(Message(f"s/{index}", b"x" * 90, 1), 100 + index))
    core.publish(Message("s/plain", b"x" * 300, 1))  # in-process: not in the stream
    core.publish(StoredMessage.of(Message("s/zero", b"x", 0), 0))
    kept = [message.topic for _client, message in link.spilled]
    assert kept[0] == "s/2" and kept == [f"s/{index}" for index in range(2, 6)]
    session = core.sessions["slow"]
    assert session.spilling and session.dropped == 1  # (only the in-process one)
    # queued again in order once there is room; the rest of the queue comes first
    session.pending_queue().clear()
    session.pending_bytes = 0
    back = [message for _client, message in link.spilled[:2]]
    link.spilled.clear()
    assert core.refill("slow", back, ["s/#"]) is False
    assert [item.message.topic for item in session.queued_entries] == ["s/2", "s/3"]
    core.spill_again("slow")  # (more to come: later ones wait their turn)
    core.publish(StoredMessage.of(Message("s/late", b"x", 1), 120))
    assert [message.topic for _client, message in link.spilled] == ["s/late"]
    core.spill_lost("slow", 3)
    assert session.dropped == 4 and core.stats.messages_dropped == 4


def test_offline_sessions_and_links_that_keep_nothing_drop_as_on_one_node() -> None:
    core, link = clustered_core()
    slow_subscriber(core, queue=100)
    session = core.sessions["slow"]
    link.keeps = False
    core.publish(StoredMessage.of(Message("s/1", b"x" * 200, 1), 5))
    assert session.dropped == 1 and not session.spilling
    link.keeps = True
    session.connection = None  # (offline, as a persistent session)
    core.publish(StoredMessage.of(Message("s/3", b"x" * 200, 1), 7))
    assert link.spilled == [] and session.dropped == 2


def test_receive_maximum_counts_qos1_messages_waiting_for_the_stream() -> None:
    """On one node a QoS 1 message is acknowledged at once; in a cluster only once
    stored, so an MQTT 5 client may not have more than Receive Maximum of them (and of
    QoS 2 ones) unanswered [MQTT-3.3.4-7]: the next is refused with DISCONNECT 0x93."""
    core, link = clustered_core()
    publisher = Client(core, V5)
    connack = publisher.connect("pub")
    maximum = connack.properties.receive_maximum
    assert maximum is not None and maximum < STORE_WINDOW
    for packet_id in range(1, maximum):
        publisher.send(Publish(topic="t", payload=b"x", qos=1, packet_id=packet_id))
    publisher.send(Publish(topic="t", payload=b"x", qos=2, packet_id=maximum))
    link.answer_stores(core)  # all answered: room for as many again
    assert len(publisher.packets()) == maximum
    for packet_id in range(1, maximum):
        publisher.send(Publish(topic="t", payload=b"x", qos=1, packet_id=packet_id))
    # one QoS 2 still waits for its PUBREL: that makes Receive Maximum
    publisher.send(Publish(topic="t", payload=b"x", qos=1, packet_id=maximum + 1))
    (disconnect,) = publisher.packets()
    assert disconnect == Disconnect(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, disconnect.properties)
