"""Persistence end to end: a real broker, a real SQLite file, a restart in between.

Each test runs one broker with a store loaded into its core, stops it, flushes (as the
broker does at shutdown), then starts a second broker on the same file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from rawclient import RawClient

from trio_mqtt.mqtt.packets import (
    Connack,
    Disconnect,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.peer import Endpoint
from trio_mqtt.persistence.sqlite import SQLiteStore
from trio_mqtt.server.app import SAVE_SHARING_BUDGET, Broker, _save
from trio_mqtt.testing import open_test_broker

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5


@asynccontextmanager
async def persistent_broker(
    path: str, wall_clock: Callable[[], float] = time.time
) -> AsyncIterator[Broker]:
    """A test broker whose state is loaded from ``path`` and saved there when it stops.

    With the real wall clock this is just the ``persistence`` setting (the broker wires
    the store itself); a fake wall clock needs the store wired by hand.
    """
    if wall_clock is time.time:
        async with open_test_broker(persistence=path) as broker:
            yield broker
        return
    store = SQLiteStore.open(path, wall_clock=wall_clock)
    try:
        async with open_test_broker() as broker:
            store.load_into(broker.core)
            yield broker
        store.flush(broker.core)  # after shutdown: every session is offline by now
    finally:
        store.close()


def rows(path: str, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(sql))


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "broker.db")


def connect_properties(version: ProtocolVersion, expiry: int) -> Properties:
    if version is V5 and expiry:
        return Properties(session_expiry_interval=expiry)
    return Properties()


async def connect(
    port: int, client_id: str, version: ProtocolVersion, *, clean: bool, expiry: int = 0
) -> tuple[RawClient, Connack]:
    client = await RawClient.open(port, version)
    connack = await client.connect(
        client_id,
        clean_start=clean,
        keep_alive=30,
        properties=connect_properties(version, expiry),
    )
    assert connack.reason_code == 0, connack
    return client, connack


async def subscribe(client: RawClient, topic_filter: str, qos: int) -> None:
    await client.send(Subscribe(1, (SubscriptionRequest(topic_filter, qos),)))
    suback = await client.receive()
    assert isinstance(suback, Suback) and suback.reason_codes == (qos,), suback


async def leave(client: RawClient) -> None:
    await client.send(Disconnect())
    await client.expect_closed()
    await client.aclose()


async def wait_offline(broker: Broker, client_id: str) -> None:
    """The server has processed the client's DISCONNECT (its session is detached).

    The broker has no event for "session detached", so this polls, bounded by 5 s.
    """
    with trio.fail_after(5):
        while any(summary.client_id == client_id for summary in broker.clients()):  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_retained_message_survives_restart_with_its_publisher(db_path: str) -> None:
    async with persistent_broker(db_path) as broker:
        publisher, _ = await connect(broker.port, "door-sensor", V311, clean=True)
        publisher_port = publisher.stream.socket.getsockname()[1]  # type: ignore[attr-defined]
        await publisher.send(Publish("status/door", b"open", qos=1, retain=True, packet_id=1))
        assert isinstance(await publisher.receive(), Puback)
        await leave(publisher)

    async with persistent_broker(db_path) as broker:
        stored = broker.retained("status/door")
        assert stored is not None
        assert stored.payload == b"open"
        assert stored.publisher == "door-sensor"
        assert stored.peer.listener == "test"
        assert stored.peer.client == Endpoint("127.0.0.1", publisher_port)
        assert stored.peer.proxy is None

        subscriber, _ = await connect(broker.port, "reader", V5, clean=True)
        await subscribe(subscriber, "status/#", 1)
        delivered = await subscriber.receive()
        assert isinstance(delivered, Publish)
        assert (delivered.topic, delivered.payload, delivered.retain) == (
            "status/door",
            b"open",
            True,
        )
        await leave(subscriber)


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1-clean-session-0", "5.0-expiry"])
async def test_persistent_session_keeps_subscriptions_and_queue_across_restart(
    db_path: str, version: ProtocolVersion
) -> None:
    client_id = f"device-{int(version)}"
    async with persistent_broker(db_path) as broker:
        client, connack = await connect(broker.port, client_id, version, clean=False, expiry=300)
        assert not connack.session_present
        await subscribe(client, "cmd/#", 1)
        await leave(client)
        await wait_offline(broker, client_id)
        assert await broker.publish("cmd/before", b"queued before restart", qos=1) == 1

    assert rows(db_path, "SELECT topic_filter, qos FROM subscriptions") == [("cmd/#", 1)]
    async with persistent_broker(db_path) as broker:
        # the restored subscription routes while the client is still offline
        assert await broker.publish("cmd/after", b"queued after restart", qos=1) == 1
        assert await broker.publish("cmd/qos0", b"not queued offline", qos=0) == 1
        client, connack = await connect(broker.port, client_id, version, clean=False, expiry=300)
        assert connack.session_present
        received = []
        for _ in range(2):
            packet = await client.receive()
            assert isinstance(packet, Publish) and packet.qos == 1, packet
            assert packet.packet_id is not None
            await client.send(Puback(packet.packet_id))
            received.append((packet.topic, packet.payload))
        assert received == [
            ("cmd/before", b"queued before restart"),
            ("cmd/after", b"queued after restart"),
        ]
        await leave(client)


async def test_clean_sessions_leave_nothing_in_the_file(db_path: str) -> None:
    async with persistent_broker(db_path) as broker:
        clean311, _ = await connect(broker.port, "clean-311", V311, clean=True)
        await subscribe(clean311, "a/#", 1)
        # 5.0 without a session expiry: the session ends with the connection
        clean5, _ = await connect(broker.port, "clean-5", V5, clean=False, expiry=0)
        await subscribe(clean5, "b/#", 1)
        with SQLiteStore.open(db_path) as peek:
            peek.flush(broker.core)  # while connected: still nothing to keep
        assert rows(db_path, "SELECT count(*) FROM sessions") == [(0,)]
        assert rows(db_path, "SELECT count(*) FROM subscriptions") == [(0,)]
        await leave(clean311)
        await leave(clean5)

    for table in ("sessions", "subscriptions", "session_messages", "retained"):
        assert rows(db_path, f"SELECT count(*) FROM {table}") == [(0,)]
    async with persistent_broker(db_path) as broker:
        assert broker.core.sessions == {}
        client, connack = await connect(broker.port, "clean-311", V311, clean=False)
        assert not connack.session_present
        await leave(client)


async def test_expired_session_is_not_restored(db_path: str) -> None:
    async with persistent_broker(db_path) as broker:
        client, _ = await connect(broker.port, "short-lived", V5, clean=False, expiry=5)
        await subscribe(client, "news/#", 1)
        await leave(client)
        await wait_offline(broker, "short-lived")
    assert rows(db_path, "SELECT client_id FROM sessions") == [("short-lived",)]

    # the restart happens 10 s later by the wall clock: the session expired meanwhile
    async with persistent_broker(db_path, wall_clock=lambda: time.time() + 10) as broker:
        assert "short-lived" not in broker.core.sessions
        assert broker.core.router.subscriptions_of("short-lived") == {}
        assert await broker.publish("news/today", b"x", qos=1) == 0
        client, connack = await connect(broker.port, "short-lived", V5, clean=False, expiry=5)
        assert not connack.session_present
        await client.send(Disconnect(properties=Properties(session_expiry_interval=0)))
        await client.expect_closed()
        await client.aclose()
    assert rows(db_path, "SELECT count(*) FROM sessions") == [(0,)]


async def test_running_broker_saves_within_seconds_without_a_shutdown(db_path: str) -> None:
    async with open_test_broker(persistence=db_path) as broker:
        await broker.publish("saved/while/running", b"v1", retain=True)
        with trio.fail_after(5):  # the housekeeping task saves about once a second
            while not rows(db_path, "SELECT topic FROM retained"):  # noqa: ASYNC110 (a file)
                await trio.sleep(0.1)
        assert rows(db_path, "SELECT topic FROM retained") == [("saved/while/running",)]
        await broker.publish("saved/while/running", b"", retain=True)  # delete
        with trio.fail_after(5):
            while rows(db_path, "SELECT topic FROM retained"):  # noqa: ASYNC110 (a file)
                await trio.sleep(0.1)


class _SlowBatch:
    session_ids = frozenset({"s"})
    topics: frozenset[str] = frozenset()


class _StoreOfManySteps:
    """A store whose every save is 100 steps (``write_steps``), counted as they run."""

    def __init__(self) -> None:
        self.steps_done = 0

    def collect(self, core: object) -> _SlowBatch:
        return _SlowBatch()

    def write_steps(self, batch: _SlowBatch) -> Iterator[None]:
        for _ in range(100):
            self.steps_done += 1
            yield


async def test_a_save_under_load_stops_sharing_the_loop_after_its_budget(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A client task that is always ready (flat-out publishing) and costs 10 ms a turn:
    the save lets it run between its first steps, then writes the rest in one go, so
    the save, and what a crash can lose, does not stretch with the load."""
    store = _StoreOfManySteps()
    turns = 0

    async def busy_client() -> None:
        nonlocal turns
        while store.steps_done < 100:
            turns += 1
            mock_clock.jump(0.01)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy_client)
        started = trio.current_time()
        await _save(None, store)  # type: ignore[arg-type]
        took = trio.current_time() - started
    assert took <= SAVE_SHARING_BUDGET + 0.02
    assert 2 <= turns <= SAVE_SHARING_BUDGET / 0.01 + 2  # shared at first, then not
