"""SQLiteStore: schema, round trip of every stored field, dirty-only flushes, deletions,
clock conversion across restarts, and clear errors for files that are not ours."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, make_core
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message
from trio_mqtt.broker.router import SubscriptionOptions
from trio_mqtt.broker.sessions import (
    EVICTED,
    NEVER_EXPIRES,
    OutboundInflight,
    OutboundState,
    QueuedMessage,
    Session,
)
from trio_mqtt.errors import ConfigError
from trio_mqtt.mqtt.packets import NO_PROPERTIES, Properties, ProtocolVersion
from trio_mqtt.peer import Endpoint, PeerInfo
from trio_mqtt.persistence.sqlite import (
    SCHEMA_VERSION,
    PersistenceError,
    PersistenceWriteError,
    SQLiteStore,
)

WALL_START = 1_700_000_000.0


def recording_core(core_now: float = 100.0, **settings: Any) -> tuple[BrokerCore, FakeClock]:
    """A core on its own clock, starting at ``core_now``, that records its changes for a
    store (as ``open_broker`` makes it when a store is attached)."""
    clock = FakeClock(core_now)
    core = make_core(clock, **settings)
    core.record_changes()
    return core, clock


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "broker.db")


@pytest.fixture
def wall() -> FakeClock:
    """The store's wall clock: settable, like the core's clock."""
    return FakeClock(WALL_START)


@pytest.fixture
def store(db_path: str, wall: FakeClock) -> Iterator[SQLiteStore]:
    with SQLiteStore.open(db_path, wall_clock=wall) as opened:
        yield opened


def query(path: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(sql, params))


PROXIED_PEER = PeerInfo(
    listener="lb",
    transport="tls",
    remote=Endpoint("10.0.0.2", 40000),
    client=Endpoint("203.0.113.7", 51234),
    proxy=Endpoint("10.0.0.2", 40000),
)
DIRECT_PEER = PeerInfo(
    listener="plain",
    transport="tcp",
    remote=Endpoint("::1", 1999),
    client=Endpoint("::1", 1999),
)
FULL_PROPERTIES = Properties(
    payload_format_indicator=1,
    message_expiry_interval=3600,
    content_type="application/json",
    response_topic="reply/here",
    correlation_data=b"\x00\xffcorr",
    user_properties=(("k", "v"), ("k", "v2"), ("ünï", "cødé")),
)


def message(topic: str, **fields: object) -> Message:
    values: dict[str, object] = {"payload": b"p", "qos": 1, "created": 90.0}
    values.update(fields)
    return Message(topic=topic, **values)  # type: ignore[arg-type]


def persistent_session(core: BrokerCore, client_id: str, **fields: object) -> Session:
    values: dict[str, object] = {
        "protocol_version": ProtocolVersion.V5,
        "max_queued_messages": 1000,
        "max_queued_bytes": 16 * 1024 * 1024,
        "expiry_interval": 300,
    }
    values.update(fields)
    session = Session(client_id=client_id, **values)  # type: ignore[arg-type]
    core.sessions[client_id] = session
    core.session_changed(client_id)
    return session


def assert_same_message(restored: Message, original: Message, *, time_shift: float) -> None:
    """Every stored field of a message; ``created`` moves with the clocks."""
    assert restored.topic == original.topic
    assert restored.payload == original.payload
    assert restored.qos == original.qos
    assert restored.retain == original.retain
    assert restored.properties == original.properties
    assert restored.publisher == original.publisher
    assert restored.peer.listener == original.peer.listener
    assert restored.peer.transport == original.peer.transport
    assert restored.peer.client == original.peer.client
    assert restored.peer.proxy == original.peer.proxy
    assert restored.peer.remote == original.peer.remote
    assert restored.created == pytest.approx(original.created + time_shift, abs=1e-3)


# ----------------------------------------------------------------------------- schema


def test_open_creates_versioned_schema_in_wal_mode(store: SQLiteStore, db_path: str) -> None:
    assert query(db_path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    tables = {name for (name,) in query(db_path, "SELECT name FROM sqlite_master")}
    assert {"retained", "sessions", "subscriptions", "session_messages"} <= tables
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)  # 1 = NORMAL


def test_reopening_keeps_data_and_schema(db_path: str, wall: FakeClock) -> None:
    core, _ = recording_core()
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        core.retained.set("a", message("a", retain=True))
        core.retained_changed("a")
        store.flush(core)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        fresh, _ = recording_core()
        store.load_into(fresh)
    assert fresh.retained.get("a") is not None
    assert query(db_path, "SELECT count(*) FROM schema_version") == [(1,)]


# ------------------------------------------------------------------------- round trips


def test_retained_round_trip_with_publisher_and_proxy_peer(db_path: str) -> None:
    wall = FakeClock(WALL_START)
    core, _ = recording_core(core_now=100.0)
    proxied = message(
        "sensors/1",
        payload=b"\x00binary\xff",
        qos=2,
        retain=True,
        properties=FULL_PROPERTIES,
        publisher="pub-1",
        peer=PROXIED_PEER,
        created=90.0,
    )
    direct = message("sensors/2", retain=True, publisher="pub-2", peer=DIRECT_PEER, qos=0)
    local = message("$local/x", retain=True)  # in-process publish: LOCAL_PEER, no publisher
    for item in (proxied, direct, local):
        core.retained.set(item.topic, item)
        core.retained_changed(item.topic)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        assert store.flush(core) == 3

    # the broker restarts 30 s later (wall clock) with a core clock that starts at 7
    wall.now += 30
    restarted, _ = recording_core(core_now=7.0)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.load_into(restarted)
    assert len(restarted.retained) == 3
    for original in (proxied, direct, local):
        restored = restarted.retained.get(original.topic)
        assert restored is not None
        assert_same_message(restored, original, time_shift=7.0 - 100.0 - 30)
    restored = restarted.retained.get("sensors/1")
    assert restored is not None
    # 10 s in the old broker + 30 s down: the forwarded expiry shrinks by 40 s
    assert restored.remaining_expiry(7.0) == 3600 - 40
    assert restored.peer.describe() == "client=203.0.113.7:51234 via proxy 10.0.0.2:40000"
    # the columns an operator can query directly
    assert query(
        db_path,
        "SELECT publisher, listener, transport, client_host, client_port, proxy_host, proxy_port "
        "FROM retained WHERE topic = 'sensors/1'",
    ) == [("pub-1", "lb", "tls", "203.0.113.7", 51234, "10.0.0.2", 40000)]


def build_full_session(core: BrokerCore) -> Session:
    """A session with a value in every stored field."""
    session = persistent_session(
        core,
        "full",
        protocol_version=ProtocolVersion.V311,
        expiry_interval=600,
        next_packet_id=4242,
        dropped=17,
        expires_at=core.now() + 500,
        will_due=core.now() + 20,
        delayed_will=message(
            "wills/full",
            payload=b"gone",
            qos=1,
            retain=True,
            properties=Properties(content_type="text/plain"),
            publisher="full",
            peer=PROXIED_PEER,
        ),
    )
    for packet_id in (1, 7, 65535):
        session.receive_incoming(packet_id)
    session.pending_queue().extend(
        [
            QueuedMessage(message("q/0", qos=0, properties=FULL_PROPERTIES), qos=0, retain=False),
            QueuedMessage(
                message("q/1", qos=2, publisher="x", peer=DIRECT_PEER),
                qos=1,
                retain=True,
                subscription_identifiers=(3, 268_435_455),
            ),
            QueuedMessage(
                message("jobs/2", payload=b""),
                qos=1,
                retain=False,
                shared_filters=("$share/g1/jobs/#", "$share/g2/jobs/+"),
            ),
        ]
    )
    for packet_id, state in ((9, OutboundState.AWAIT_PUBACK), (2, OutboundState.AWAIT_PUBCOMP)):
        item = QueuedMessage(message(f"in/{packet_id}", qos=2), qos=2, retain=False)
        session.inflight_out[packet_id] = OutboundInflight(packet_id, item, state)
    item = QueuedMessage(
        message("in/5", qos=2),
        qos=2,
        retain=True,
        subscription_identifiers=(1,),
        shared_filters=("$share/g1/in/#",),
    )
    session.inflight_out[5] = OutboundInflight(5, item, OutboundState.AWAIT_PUBREC)
    core.router.subscribe("full", "a/+/c", SubscriptionOptions(qos=2))
    core.router.subscribe(
        "full",
        "b/#",
        SubscriptionOptions(
            qos=1,
            no_local=True,
            retain_as_published=True,
            retain_handling=2,
            subscription_identifier=99,
        ),
    )
    core.router.subscribe("full", "$share/g1/jobs/#", SubscriptionOptions(qos=1))
    return session


def assert_same_item(restored: QueuedMessage, original: QueuedMessage, shift: float) -> None:
    assert restored.qos == original.qos
    assert restored.retain == original.retain
    assert restored.subscription_identifiers == original.subscription_identifiers
    assert restored.shared_filters == original.shared_filters
    assert_same_message(restored.message, original.message, time_shift=shift)


def test_session_round_trip_of_every_field(db_path: str) -> None:
    wall = FakeClock(WALL_START)
    core, _ = recording_core(core_now=100.0)
    original = build_full_session(core)
    subscriptions = core.router.subscriptions_of("full")
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        assert store.flush(core) == 1

    wall.now += 50  # down for 50 s; the new core clock starts at 1000
    restarted, _ = recording_core(core_now=1000.0)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.load_into(restarted)
    shift = 1000.0 - 100.0 - 50
    session = restarted.sessions["full"]
    assert session is not original
    assert not session.online
    assert session.protocol_version is ProtocolVersion.V311
    assert session.expiry_interval == 600
    assert session.next_packet_id == 4242
    assert session.dropped == 17
    assert session.max_queued_messages == restarted.config.max_queued_messages
    assert session.max_queued_bytes == restarted.config.max_queued_bytes
    assert session.inflight_in == {1, 7, 65535}
    # 500 s were left at the save; 50 s passed while down
    assert session.expires_at == pytest.approx(1000.0 + 450)
    assert session.will_due == pytest.approx(1000.0 - 30)  # overdue: next tick publishes it
    assert original.delayed_will is not None and session.delayed_will is not None
    assert_same_message(session.delayed_will, original.delayed_will, time_shift=shift)

    assert len(session.queued_entries) == 3
    for restored_item, original_item in zip(
        session.queued_entries, original.queued_entries, strict=True
    ):
        assert_same_item(restored_item, original_item, shift)
    assert list(session.inflight_out) == [9, 2, 5]  # resend order is kept
    for packet_id, inflight in session.inflight_out.items():
        expected = original.inflight_out[packet_id]
        assert inflight.packet_id == packet_id
        assert inflight.state is expected.state
        assert_same_item(inflight.item, expected.item, shift)

    assert restarted.router.subscriptions_of("full") == subscriptions
    # the restored subscriptions route: a match on the plain and the shared filter
    routed = {d.client_id: d for d in restarted.router.deliveries("b/x", None)}
    assert routed["full"].qos == 1
    assert routed["full"].subscription_identifiers == (99,)
    assert [d.client_id for d in restarted.router.deliveries("jobs/1", None)] == ["full"]
    assert not restarted.dirty_sessions  # loading is not a change


def test_session_saved_while_online_restores_offline_with_full_expiry(db_path: str) -> None:
    wall = FakeClock(WALL_START)
    core, _ = recording_core()
    persistent_session(core, "online", expiry_interval=120, expires_at=None)
    persistent_session(core, "forever", expiry_interval=NEVER_EXPIRES, expires_at=None)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.flush(core)
    restarted, _ = recording_core(core_now=5.0, max_session_expiry=NEVER_EXPIRES)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.load_into(restarted)
    assert restarted.sessions["online"].expires_at == pytest.approx(125.0)
    assert restarted.sessions["forever"].expires_at is None
    assert not restarted.sessions["online"].online


def test_load_caps_expiry_at_the_configured_maximum(db_path: str) -> None:
    wall = FakeClock(WALL_START)
    core, _ = recording_core()
    persistent_session(core, "long", expiry_interval=10_000, expires_at=100.0 + 9_000)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.flush(core)
    restarted, _ = recording_core(core_now=0.0, max_session_expiry=60)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.load_into(restarted)
    assert restarted.sessions["long"].expiry_interval == 60
    assert restarted.sessions["long"].expires_at == pytest.approx(60.0)


mqtt_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=10
)


@st.composite
def stored_messages(draw: st.DrawFn) -> Message:
    properties = Properties(
        payload_format_indicator=draw(st.none() | st.integers(0, 1)),
        message_expiry_interval=draw(st.none() | st.integers(0, 0xFFFFFFFF)),
        content_type=draw(st.none() | mqtt_text),
        # a topic name: a Response Topic with a wildcard is a protocol error
        response_topic=draw(st.none() | mqtt_text.filter(lambda t: t and not set(t) & {"+", "#"})),
        correlation_data=draw(st.none() | st.binary(max_size=20)),
        user_properties=tuple(draw(st.lists(st.tuples(mqtt_text, mqtt_text), max_size=3))),
    )
    return Message(
        topic="t/" + draw(mqtt_text.filter(lambda t: not set(t) & set("+#"))),
        payload=draw(st.binary(min_size=1, max_size=64)),
        qos=draw(st.integers(0, 2)),
        retain=True,
        properties=properties,
        publisher=draw(st.none() | mqtt_text),
        peer=draw(st.sampled_from([PROXIED_PEER, DIRECT_PEER])),
        created=draw(st.floats(0, 1e6)),
    )


@settings(max_examples=40, deadline=None)
@given(original=stored_messages())
def test_any_retained_message_round_trips(original: Message) -> None:
    path = ":memory:"  # one fresh database per example
    wall = FakeClock(WALL_START)
    core, _ = recording_core(core_now=2e6)
    core.retained.set(original.topic, original)
    core.retained_changed(original.topic)
    with SQLiteStore.open(path, wall_clock=wall) as store:
        store.flush(core)
        restarted, _ = recording_core(core_now=2e6)
        store.load_into(restarted)
    restored = restarted.retained.get(original.topic)
    if original.expired(2e6):
        assert restored is None
    else:
        assert restored is not None
        assert_same_message(restored, original, time_shift=0.0)


# --------------------------------------------------------------------- dirty flushes


def test_flush_writes_only_dirty_rows_and_clears_the_sets(db_path: str, store: SQLiteStore) -> None:
    core, _ = recording_core()
    for name in ("a", "b", "c"):
        persistent_session(core, name)
        core.retained.set(f"r/{name}", message(f"r/{name}", retain=True))
        core.retained_changed(f"r/{name}")
    assert store.flush(core) == 6
    assert not core.dirty_sessions and not core.dirty_retained
    assert store.flush(core) == 0  # nothing changed, nothing written

    # Tamper with rows behind the store's back: a flush that rewrote them would undo it.
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE sessions SET dropped = 777")
        db.execute("UPDATE retained SET payload = x'00'")
    core.sessions["b"].dropped = 1
    core.session_changed("b")
    core.retained.set("r/c", message("r/c", payload=b"new", retain=True))
    core.retained_changed("r/c")
    assert store.flush(core) == 2
    assert query(db_path, "SELECT client_id, dropped FROM sessions ORDER BY client_id") == [
        ("a", 777),
        ("b", 1),
        ("c", 777),
    ]
    assert query(db_path, "SELECT topic, payload FROM retained ORDER BY topic") == [
        ("r/a", b"\x00"),
        ("r/b", b"\x00"),
        ("r/c", b"new"),
    ]


def test_saving_an_idle_session_gives_it_no_queue(db_path: str, store: SQLiteStore) -> None:
    # (an empty deque is 0.75 KiB: a store that made one per saved session would cost
    # every idle persistent client that much)
    core, _ = recording_core()
    session = persistent_session(core, "idle")
    core.router.subscribe("idle", "x/#", SubscriptionOptions(qos=1))
    store.flush(core)
    assert query(db_path, "SELECT client_id FROM sessions") == [("idle",)]
    assert session.pending is None
    assert session.evicted_entries == () and not session.has_replays


def test_dirty_session_saves_its_queue_and_subscriptions(db_path: str, store: SQLiteStore) -> None:
    core, _ = recording_core()
    session = persistent_session(core, "s")
    core.router.subscribe("s", "x/#", SubscriptionOptions(qos=1))
    session.pending_queue().append(QueuedMessage(message("x/1"), qos=1, retain=False))
    session.pending_queue().append(QueuedMessage(message("x/2"), qos=1, retain=False))
    store.flush(core)
    assert query(db_path, "SELECT count(*) FROM session_messages") == [(2,)]

    taken = session.pending_queue().popleft()  # as a connection takes it
    assert taken is not None
    session.took_from_front(1, taken.size)
    core.router.unsubscribe("s", "x/#")
    core.router.subscribe("s", "y", SubscriptionOptions(qos=0))
    core.session_changed("s")
    store.flush(core)
    assert query(db_path, "SELECT topic FROM session_messages ORDER BY position") == [("x/2",)]
    assert query(db_path, "SELECT topic_filter, qos FROM subscriptions") == [("y", 0)]


def test_a_queue_is_saved_by_what_changed_not_all_again(db_path: str, store: SQLiteStore) -> None:
    """A long queue: a flush writes the messages queued since the last one and deletes
    those sent or evicted since, and what is loaded is exactly the queue."""
    core, _ = recording_core(max_queued_bytes=1_000_000)
    session = persistent_session(core, "s", max_queued_bytes=1_000_000)
    core.router.subscribe("s", "x/#", SubscriptionOptions(qos=1))
    for n in range(1000):
        session.append_pending(QueuedMessage(message(f"x/{n}"), qos=1, retain=False))
    store.flush(core)
    changes = store._db.total_changes

    taken = session.pending_queue().popleft()  # one sent...
    assert taken is not None
    session.took_from_front(1, taken.size)
    session.append_pending(QueuedMessage(message("x/new"), qos=1, retain=False))  # one more
    session.pending_queue()[10] = EVICTED  # ...and one evicted
    session.evicted_positions.append(11)
    core.session_changed("s")
    store.flush(core)
    # the session row, its subscription (both replaced), 2 messages deleted, 1 inserted
    assert store._db.total_changes - changes < 10

    restarted, _ = recording_core()
    store.load_into(restarted)
    loaded = [item.message.topic for item in restarted.sessions["s"].queued_items()]
    expected = [f"x/{n}" for n in range(1, 1000) if n != 11] + ["x/new"]
    assert loaded == expected


def test_after_a_restart_a_queue_is_still_saved_by_what_changed(
    db_path: str, store: SQLiteStore
) -> None:
    """The restored queue goes on from the positions in the file: the first save after a
    restart does not write a long backlog again (it stalled every client for most of a
    second), and what is loaded after it is exactly the queue."""
    core, _ = recording_core(max_queued_bytes=1_000_000)
    session = persistent_session(core, "s", max_queued_bytes=1_000_000)
    for n in range(1000):
        session.append_pending(QueuedMessage(message(f"x/{n}"), qos=1, retain=False))
    store.flush(core)
    taken = session.pending_queue().popleft()  # positions in the file now start at 1
    assert taken is not None
    session.took_from_front(1, taken.size)
    core.session_changed("s")
    store.flush(core)

    restarted, _ = recording_core(max_queued_bytes=1_000_000)
    store.load_into(restarted)
    again = restarted.sessions["s"]
    taken = again.pending_queue().popleft()  # one sent after the restart, one more queued
    assert taken is not None
    again.took_from_front(1, taken.size)
    again.append_pending(QueuedMessage(message("x/new"), qos=1, retain=False))
    restarted.session_changed("s")
    changes = store._db.total_changes
    store.flush(restarted)
    assert store._db.total_changes - changes < 10

    third, _ = recording_core(max_queued_bytes=1_000_000)
    store.load_into(third)
    loaded = [item.message.topic for item in third.sessions["s"].queued_items()]
    assert loaded == [f"x/{n}" for n in range(2, 1000)] + ["x/new"]


def test_a_restored_queue_with_gaps_is_written_in_full_and_stays_exact(
    db_path: str, store: SQLiteStore
) -> None:
    core, _ = recording_core(max_queued_bytes=1_000_000)
    session = persistent_session(core, "s", max_queued_bytes=1_000_000)
    for n in range(20):
        session.append_pending(QueuedMessage(message(f"x/{n}"), qos=1, retain=False))
    store.flush(core)
    session.pending_queue()[5] = EVICTED  # a gap in the file's positions
    session.evicted_positions.append(5)
    core.session_changed("s")
    store.flush(core)

    restarted, _ = recording_core(max_queued_bytes=1_000_000)
    store.load_into(restarted)
    again = restarted.sessions["s"]
    taken = again.pending_queue().popleft()
    assert taken is not None
    again.took_from_front(1, taken.size)
    again.append_pending(QueuedMessage(message("x/new"), qos=1, retain=False))
    restarted.session_changed("s")
    store.flush(restarted)

    third, _ = recording_core(max_queued_bytes=1_000_000)
    store.load_into(third)
    loaded = [item.message.topic for item in third.sessions["s"].queued_items()]
    assert loaded == [f"x/{n}" for n in range(1, 20) if n != 5] + ["x/new"]


def test_ended_session_is_deleted_with_everything_it_owned(
    db_path: str, store: SQLiteStore
) -> None:
    core, _ = recording_core()
    build_full_session(core)
    persistent_session(core, "other")
    store.flush(core)
    for table in ("sessions", "subscriptions", "session_messages"):
        assert query(db_path, f"SELECT count(*) FROM {table} WHERE client_id = 'full'") != [(0,)]

    core._end_session(core.sessions["full"], publish_delayed_will=False)
    assert store.flush(core) == 1
    for table in ("sessions", "subscriptions", "session_messages"):
        assert query(db_path, f"SELECT count(*) FROM {table} WHERE client_id = 'full'") == [(0,)]
    assert query(db_path, "SELECT client_id FROM sessions") == [("other",)]


def test_sessions_with_expiry_zero_are_never_stored(db_path: str, store: SQLiteStore) -> None:
    core, _ = recording_core()
    persistent_session(core, "clean", expiry_interval=0)
    assert store.flush(core) == 0
    assert query(db_path, "SELECT count(*) FROM sessions") == [(0,)]

    # a stored session resumed with expiry 0 (5.0 reconnect) is removed from the file
    session = persistent_session(core, "resumed", expiry_interval=60)
    core.router.subscribe("resumed", "a", SubscriptionOptions(qos=1))
    store.flush(core)
    session.set_expiry_interval(0)
    core.session_changed("resumed")
    assert store.flush(core) == 1
    assert query(db_path, "SELECT count(*) FROM sessions") == [(0,)]
    assert query(db_path, "SELECT count(*) FROM subscriptions") == [(0,)]


def test_cleared_retained_topic_is_deleted(db_path: str, store: SQLiteStore) -> None:
    core, _ = recording_core()
    core.publish(message("keep", retain=True))
    core.publish(message("drop", retain=True))
    assert store.flush(core) == 2
    core.publish(message("drop", payload=b"", retain=True))  # empty retained payload clears
    core.publish(message("never-stored", payload=b"", retain=True))
    assert store.flush(core) == 1  # one row deleted; the unknown topic costs nothing
    assert query(db_path, "SELECT topic FROM retained") == [("keep",)]


def test_failed_flush_writes_nothing_and_keeps_the_change_sets(
    db_path: str, store: SQLiteStore
) -> None:
    core, _ = recording_core()
    persistent_session(core, "s")
    core.publish(message("r", retain=True))
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON sessions "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    with pytest.raises(PersistenceWriteError, match="disk on fire") as info:
        store.flush(core)
    assert db_path in str(info.value)
    assert core.dirty_sessions == {"s"} and core.dirty_retained == {"r"}
    assert query(db_path, "SELECT count(*) FROM retained") == [(0,)]  # all or nothing

    with sqlite3.connect(db_path) as db:
        db.execute("DROP TRIGGER fail")
    assert store.flush(core) == 2
    assert not core.dirty_sessions and not core.dirty_retained


# ------------------------------------------------------------------------------ expiry


def test_expired_session_is_not_restored_and_its_delayed_will_goes_out(db_path: str) -> None:
    wall = FakeClock(WALL_START)
    core, _ = recording_core(core_now=100.0)
    persistent_session(
        core,
        "gone",
        expiry_interval=10,
        expires_at=110.0,
        will_due=105.0,
        delayed_will=message("wills/gone", retain=True, publisher="gone"),
    )
    core.router.subscribe("gone", "a", SubscriptionOptions(qos=1))
    persistent_session(core, "alive", expiry_interval=100, expires_at=200.0)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.flush(core)

    wall.now += 60  # "gone" expired 50 s ago, "alive" has 40 s left
    restarted, _ = recording_core(core_now=0.0)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.load_into(restarted)
        assert set(restarted.sessions) == {"alive"}
        assert restarted.sessions["alive"].expires_at == pytest.approx(40.0)
        assert restarted.router.subscriptions_of("gone") == {}
        for table in ("sessions", "subscriptions", "session_messages"):
            assert query(db_path, f"SELECT count(*) FROM {table} WHERE client_id = 'gone'") == [
                (0,)
            ]
        will = restarted.retained.get("wills/gone")
        assert will is not None and will.publisher == "gone"
        assert restarted.stats.wills_published == 1
        store.flush(restarted)  # the will became a retained message: saved like any other
    assert query(db_path, "SELECT topic FROM retained") == [("wills/gone",)]


def test_expired_retained_message_is_not_restored(db_path: str) -> None:
    wall = FakeClock(WALL_START)
    core, _ = recording_core(core_now=100.0)
    short = Properties(message_expiry_interval=20)
    core.publish(message("short", retain=True, properties=short, created=95.0))
    core.publish(message("long", retain=True, properties=Properties(message_expiry_interval=99)))
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.flush(core)
    wall.now += 30
    restarted, _ = recording_core(core_now=0.0)
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.load_into(restarted)
    assert restarted.retained.get("short") is None
    assert restarted.retained.get("long") is not None
    assert query(db_path, "SELECT topic FROM retained") == [("long",)]


# ------------------------------------------------------------------------------ errors


def assert_names_file(error: PersistenceError, path: str) -> None:
    assert isinstance(error, ConfigError)
    assert str(error).startswith(f"{path}: ")
    assert "[broker] persistence" in str(error)


def test_a_file_that_is_not_sqlite_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite file, just text " * 200)
    with pytest.raises(PersistenceError, match="not a readable SQLite database") as info:
        SQLiteStore.open(str(path))
    assert_names_file(info.value, str(path))
    assert path.read_bytes().startswith(b"this is not")  # left untouched


@pytest.mark.parametrize("intact_pages", [1, 20], ids=["schema-damaged", "data-damaged"])
def test_a_corrupted_store_is_refused_by_name(
    db_path: str, wall: FakeClock, intact_pages: int
) -> None:
    core, _ = recording_core()
    for index in range(200):
        core.publish(message(f"t/{index}", payload=b"x" * 500, retain=True))
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.flush(core)
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(Path(db_path).read_bytes())
    page_size = 4096
    assert len(data) > 30 * page_size
    intact = intact_pages * page_size
    data[intact:] = b"\xa5" * (len(data) - intact)  # the pages after these are garbage
    Path(db_path).write_bytes(bytes(data))
    with (
        pytest.raises(PersistenceError, match="is damaged") as info,
        SQLiteStore.open(db_path, wall_clock=wall) as store,
    ):
        store.load_into(recording_core()[0])
    assert_names_file(info.value, db_path)


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "other.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(PersistenceError, match=r"another program \(tables: customers\)") as info:
        SQLiteStore.open(path)
    assert_names_file(info.value, path)


def test_a_different_schema_version_is_refused(db_path: str) -> None:
    SQLiteStore.open(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(PersistenceError, match="schema version 99; this trio-mqtt reads") as info:
        SQLiteStore.open(db_path)
    assert_names_file(info.value, db_path)


def test_a_version_1_store_is_upgraded_in_place(db_path: str) -> None:
    # version 1 had no shared_filters column: make one from a fresh store, with a row
    wall = FakeClock(WALL_START)
    core, _ = recording_core()
    build_full_session(core).queued_entries[2].shared_filters = ()  # nothing version 1 can hold
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.flush(core)
    with sqlite3.connect(db_path) as db:
        db.execute("ALTER TABLE session_messages DROP COLUMN shared_filters")
        db.execute("UPDATE schema_version SET version = 1")

    restarted, _ = recording_core()
    with SQLiteStore.open(db_path, wall_clock=wall) as store:
        store.load_into(restarted)
    assert query(db_path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    pending = restarted.sessions["full"].queued_entries
    assert [item.message.topic for item in pending] == ["q/0", "q/1", "jobs/2"]
    assert all(item.shared_filters == () for item in pending)


def test_an_invalid_shared_filter_list_is_reported_by_name(db_path: str) -> None:
    core, _ = recording_core()
    build_full_session(core)
    with SQLiteStore.open(db_path) as store:
        store.flush(core)
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE session_messages SET shared_filters = '[1, 2]' WHERE kind = 'pending'")
    with pytest.raises(PersistenceError, match="invalid shared subscription list") as info:
        SQLiteStore.open(db_path).load_into(recording_core()[0])
    assert_names_file(info.value, db_path)


def test_a_missing_table_is_refused(db_path: str) -> None:
    SQLiteStore.open(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("DROP TABLE subscriptions")
    with pytest.raises(PersistenceError, match="lacks the table"):
        SQLiteStore.open(db_path)


def test_a_missing_directory_is_reported_by_name(tmp_path: Path) -> None:
    path = str(tmp_path / "no" / "such" / "dir" / "broker.db")
    with pytest.raises(PersistenceError, match=r"directory .* does not exist") as info:
        SQLiteStore.open(path)
    assert_names_file(info.value, path)


def test_unreadable_properties_are_reported_by_name(db_path: str, store: SQLiteStore) -> None:
    core, _ = recording_core()
    core.publish(message("t", retain=True, properties=Properties(content_type="c")))
    store.flush(core)
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE retained SET properties = x'05FF00000000'")
    with pytest.raises(PersistenceError, match="unreadable properties for topic 't'") as info:
        store.load_into(recording_core()[0])
    assert_names_file(info.value, db_path)


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("retained", "client_port = NULL"),
        ("retained", "created = 'yesterday'"),
        ("sessions", "protocol_version = 9"),
        ("sessions", "inflight_in = '[1, \"x\"]'"),
        ("subscriptions", "qos = 3"),
        ("session_messages", "state = 'lost'"),
    ],
)
def test_an_invalid_value_in_a_row_is_reported_by_name(
    db_path: str, store: SQLiteStore, table: str, change: str
) -> None:
    core, _ = recording_core()
    build_full_session(core)
    core.publish(message("t", retain=True, peer=DIRECT_PEER))
    store.flush(core)
    with sqlite3.connect(db_path) as db:
        db.execute(f"UPDATE {table} SET {change}")
    with pytest.raises(PersistenceError, match="has an") as info:
        store.load_into(recording_core()[0])
    assert_names_file(info.value, db_path)


def test_messages_without_properties_store_null(db_path: str, store: SQLiteStore) -> None:
    core, _ = recording_core()
    core.publish(message("t", retain=True, properties=NO_PROPERTIES))
    store.flush(core)
    assert query(db_path, "SELECT properties FROM retained") == [(None,)]


# ------------------------------------------------------------- collect / write in two halves


def test_collect_snapshots_and_write_runs_in_another_thread(
    db_path: str, store: SQLiteStore
) -> None:
    core, _ = recording_core()
    session = persistent_session(core, "s")
    session.pending_queue().append(QueuedMessage(message("q/1"), qos=1, retain=False))
    core.publish(message("r", payload=b"v1", retain=True))
    batch = store.collect(core)
    assert not core.dirty_sessions and not core.dirty_retained  # taken by the batch

    # the core moves on while the batch is written elsewhere
    session.pending_queue().append(QueuedMessage(message("q/2"), qos=1, retain=False))
    core.session_changed("s")
    core.publish(message("r", payload=b"v2", retain=True))
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(store.write(batch)))
    worker.start()
    worker.join(timeout=10)
    assert results == [2]
    assert query(db_path, "SELECT topic FROM session_messages") == [("q/1",)]
    assert query(db_path, "SELECT payload FROM retained") == [(b"v1",)]
    assert core.dirty_sessions == {"s"} and core.dirty_retained == {"r"}  # the later changes

    assert store.flush(core) == 2
    assert query(db_path, "SELECT topic FROM session_messages ORDER BY position") == [
        ("q/1",),
        ("q/2",),
    ]
    assert query(db_path, "SELECT payload FROM retained") == [(b"v2",)]


def test_failed_write_can_be_requeued(db_path: str, store: SQLiteStore) -> None:
    core, _ = recording_core()
    persistent_session(core, "s")
    batch = store.collect(core)
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON sessions BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    with pytest.raises(PersistenceWriteError, match="1 session"):
        store.write(batch)
    assert not core.dirty_sessions
    batch.requeue(core)
    assert core.dirty_sessions == {"s"}


def test_an_empty_batch_writes_nothing(store: SQLiteStore) -> None:
    core, _ = recording_core()
    assert store.write(store.collect(core)) == 0


# ------------------------------------------------------------ core change tracking (bugs)


def test_a_will_published_by_tick_is_not_stored_again(db_path: str, store: SQLiteStore) -> None:
    core, clock = recording_core(core_now=100.0)
    persistent_session(
        core,
        "w",
        expiry_interval=300,
        expires_at=400.0,
        will_due=105.0,
        delayed_will=message("wills/w", publisher="w"),
    )
    store.flush(core)
    clock.now = 106.0
    core.tick()
    assert core.stats.wills_published == 1
    store.flush(core)
    # otherwise a restart restores the will and publishes it a second time
    assert query(db_path, "SELECT count(*) FROM session_messages WHERE kind = 'will'") == [(0,)]


def test_a_retained_message_expired_by_tick_is_deleted(db_path: str, store: SQLiteStore) -> None:
    core, clock = recording_core(core_now=100.0)
    core.publish(message("t", retain=True, properties=Properties(message_expiry_interval=5)))
    store.flush(core)
    clock.now = 200.0
    core.tick()
    assert core.retained.get("t") is None
    store.flush(core)
    assert query(db_path, "SELECT count(*) FROM retained") == [(0,)]
