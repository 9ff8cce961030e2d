"""The KeepAliveWatch (server/keep_alive.py), alone and under connections on sockets.

A connection reading a socket waits for its client in no cancel scope of its own: one
task per nursery keeps every reader's deadline and wakes (rings) a reader whose deadline
came while it waited. The timeouts themselves, on sockets and on memory streams, are in
test_connection.py ("timeouts").
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable

import pytest
import trio
import trio.testing
from helpers import PEER, V5, make_core, open_client, wait_until

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message
from trio_mqtt.mqtt.packets import (
    Disconnect,
    Pingreq,
    Pingresp,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.server import connection
from trio_mqtt.server.connection import run_connection
from trio_mqtt.server.idle_park import idle_park_for
from trio_mqtt.server.keep_alive import PRUNE_SLACK, Entry, KeepAliveWatch, keep_alive_watch_for


class _Reader:
    """A reader as the watch sees it: a deadline to ask for, a wait to ring; and, as a
    connection's reader does, the entry its last ``arm`` gave back."""

    def __init__(self, deadline: float, idle: bool = True) -> None:
        self.entry: Entry | None = None
        self.idle = idle
        self._deadline = deadline
        self.rung_at: list[float] = []

    def arm(self, watch: KeepAliveWatch) -> None:
        self.entry = watch.arm(self.entry, self, self._deadline)

    def disarm(self, watch: KeepAliveWatch) -> None:
        watch.disarm(self.entry)

    def deadline(self) -> float:
        return self._deadline

    def ring(self) -> None:
        self.rung_at.append(trio.current_time())


def _watch_tasks(nursery: trio.Nursery) -> list[trio.lowlevel.Task]:
    return [task for task in nursery.child_tasks if task.name.endswith("KeepAliveWatch._run")]


async def test_a_waiting_reader_is_rung_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        watch = KeepAliveWatch(nursery)
        start = trio.current_time()
        early, late = _Reader(start + 5), _Reader(start + 9)
        late.arm(watch)
        early.arm(watch)  # earlier than the task's sleep: it wakes sooner
        await trio.sleep(20)
        assert [t - start for t in early.rung_at] == [5]
        assert [t - start for t in late.rung_at] == [9]
        assert watch.armed == 0


async def test_a_deadline_moved_by_packets_is_asked_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        watch = KeepAliveWatch(nursery)
        start = trio.current_time()
        reader = _Reader(start + 5)
        reader.arm(watch)
        await trio.sleep(3)
        reader._deadline = start + 8  # a packet came: arming again with it does nothing
        reader.arm(watch)
        await trio.sleep(20)
        assert [t - start for t in reader.rung_at] == [8]  # asked at 5, rung at 8


async def test_a_reader_not_waiting_is_not_rung(autojump_clock: trio.testing.MockClock) -> None:
    """Busy, or waiting for the broker (backpressure, an offloaded check): it arms the
    watch again before its next wait."""
    async with trio.open_nursery() as nursery:
        watch = KeepAliveWatch(nursery)
        reader = _Reader(trio.current_time() + 5, idle=False)
        reader.arm(watch)
        await trio.sleep(20)
        assert reader.rung_at == []
        assert watch.armed == 0


async def test_no_deadline_arms_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        watch = KeepAliveWatch(nursery)
        _Reader(math.inf).arm(watch)  # keep alive 0
        assert watch.armed == 0
        assert _watch_tasks(nursery) == []


async def test_the_task_runs_only_while_a_reader_is_armed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Disarming the last reader ends the task at once: the nursery it runs in (the
    connections') need not be cancelled to end."""
    with trio.fail_after(1):  # virtual time: the task must not wait for the deadline
        async with trio.open_nursery() as nursery:
            watch = KeepAliveWatch(nursery)
            reader = _Reader(trio.current_time() + 3600)
            reader.arm(watch)
            await trio.testing.wait_all_tasks_blocked()
            assert len(_watch_tasks(nursery)) == 1
            reader.disarm(watch)
            await trio.testing.wait_all_tasks_blocked()
            assert _watch_tasks(nursery) == []
            reader.arm(watch)  # armed again: a task again
            await trio.testing.wait_all_tasks_blocked()
            assert len(_watch_tasks(nursery)) == 1
            reader.disarm(watch)


async def test_disarmed_readers_are_not_kept_and_their_entries_are_pruned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Connections come and go faster than their deadlines: the heap keeps no reference
    to an ended one, and no more entries than twice the armed readers (and a slack)."""
    async with trio.open_nursery() as nursery:
        watch = KeepAliveWatch(nursery)
        now = trio.current_time()
        staying = [_Reader(now + 90) for _ in range(10)]
        for reader in staying:
            reader.arm(watch)
        gone: list[weakref.ref[_Reader]] = []
        for _ in range(1000):
            reader = _Reader(now + 90)
            reader.arm(watch)
            reader.disarm(watch)
            gone.append(weakref.ref(reader))
            del reader
        gc.collect()
        assert all(ref() is None for ref in gone)
        assert watch.armed == 10
        assert len(watch._heap) <= 2 * 10 + PRUNE_SLACK + 1
        for reader in staying:
            reader.disarm(watch)


def _serving_in(nursery: trio.Nursery, core: BrokerCore) -> Callable[[trio.abc.Stream], None]:
    def serve(stream: trio.abc.Stream) -> None:
        nursery.start_soon(run_connection, stream, core, PEER, nursery)

    return serve


def _connection_tasks(nursery: trio.Nursery) -> list[trio.lowlevel.Task]:
    return [task for task in nursery.child_tasks if task.name.endswith("run_connection")]


def _connections(nursery: trio.Nursery) -> int:
    """Connections still open in ``nursery``: with a task, or parked (IdlePark)."""
    resumed = [task for task in nursery.child_tasks if task.name.endswith("_resume")]
    parked = len(idle_park_for(nursery, connection._resume))
    return len(_connection_tasks(nursery)) + len(resumed) + parked


def _writer_tasks(nursery: trio.Nursery) -> list[trio.lowlevel.Task]:
    return [task for task in nursery.child_tasks if task.name.endswith("_write_loop")]


@pytest.mark.parametrize(("transport", "scopes"), [("socket", False), ("memory", True)])
async def test_a_connection_on_a_socket_waits_in_no_cancel_scope_of_its_own(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
    scopes: bool,
) -> None:
    """From CONNECT to idle: no cancel scope entered by the connection's task on a
    socket (the watch has its deadline); a memory stream's reads each take one."""
    entered: list[str] = []
    real_enter = trio.CancelScope.__enter__

    def enter(scope: trio.CancelScope) -> trio.CancelScope:
        entered.append(trio.lowlevel.current_task().name)
        return real_enter(scope)

    monkeypatch.setattr(trio.CancelScope, "__enter__", enter)
    core = make_core(trio.current_time)
    async with trio.open_nursery() as nursery:
        client = await open_client(_serving_in(nursery, core), V5, transport)
        await client.connect("idle", keep_alive=60)
        await client.send(Pingreq())
        assert await client.receive() == Pingresp()
        await trio.testing.wait_all_tasks_blocked()
        [task] = _connection_tasks(nursery)
        assert (task.name in entered) is scopes
        assert keep_alive_watch_for(nursery).armed == (0 if scopes else 1)
        nursery.cancel_scope.cancel()


async def test_a_connection_idle_on_its_socket_is_taken_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The old connection's writer writes the last word (DISCONNECT 0x8E) and stops its
    reader, which waits for its socket in no scope: notify_closing wakes it."""
    core = make_core(trio.current_time)
    async with trio.open_nursery() as nursery:
        serve = _serving_in(nursery, core)
        old = await open_client(serve, V5, "socket")
        await old.connect("twice", keep_alive=60)
        await trio.testing.wait_all_tasks_blocked()
        new = await open_client(serve, V5, "socket")
        await new.connect("twice", keep_alive=60)
        assert await old.expect_closed(timeout=5) == [Disconnect(reason_code=0x8E)]
        await old.stream.aclose()  # (the server lingers for this)
        await trio.testing.wait_all_tasks_blocked()
        assert len(_connection_tasks(nursery)) == 1
        assert keep_alive_watch_for(nursery).armed == 1  # the new one's
        await new.send(Disconnect())
        assert await new.expect_closed(timeout=5) == []
        await new.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        # the last connection gone: nothing armed, and the watch's task ended with it
        assert _connection_tasks(nursery) == []
        assert keep_alive_watch_for(nursery).armed == 0
        assert _watch_tasks(nursery) == []


async def test_keep_alive_ends_a_connection_whose_writer_is_stuck(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that neither reads nor sends: its writer waits for room in the socket
    when the keep alive runs out. Waking the reader (notify_closing) wakes that writer
    too; the connection still ends on time, its task and writer gone."""
    core = make_core(trio.current_time)
    async with trio.open_nursery() as nursery:
        client = await open_client(_serving_in(nursery, core), V5, "socket")
        await client.connect("stuck", keep_alive=2)
        await client.send(Subscribe(1, (SubscriptionRequest("flood", 0),)))
        assert isinstance(await client.receive(), Suback)
        start = trio.current_time()
        for _ in range(64):  # far more than the socket pair holds: the writer waits
            core.publish(Message("flood", bytes(16384)))
            await trio.testing.wait_all_tasks_blocked()
        assert _writer_tasks(nursery)
        await wait_until(lambda: "stuck" not in core.sessions, "the session ended", 100)
        assert 3 <= trio.current_time() - start <= 3 + 0.02  # 1.5 x keep alive
        await wait_until(
            lambda: not _connection_tasks(nursery) and not _writer_tasks(nursery),
            "the connection's task and writer ended",
            1,
        )
        assert keep_alive_watch_for(nursery).armed == 0


async def test_a_client_that_reads_nothing_is_taken_over_within_the_final_flush_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The old connection's writer is stuck in a send (its client reads nothing) when a
    new connection takes the session over: the close bounds that writer by
    FINAL_FLUSH_TIMEOUT, then the old connection ends (it waited for that send forever,
    its reader idle, its socket held)."""
    core = make_core(trio.current_time)
    async with trio.open_nursery() as nursery:
        serve = _serving_in(nursery, core)
        stuck = await open_client(serve, V5, "socket")
        await stuck.connect("twice", keep_alive=0, clean_start=False)
        await stuck.send(Subscribe(1, (SubscriptionRequest("flood", 0),)))
        assert isinstance(await stuck.receive(), Suback)
        for _ in range(64):  # far more than the socket pair holds: the writer waits
            core.publish(Message("flood", bytes(16384)))
            await trio.testing.wait_all_tasks_blocked()
        assert _writer_tasks(nursery)
        new = await open_client(serve, V5, "socket")
        start = trio.current_time()
        await new.connect("twice", keep_alive=0, clean_start=False)
        await wait_until(
            lambda: _connections(nursery) == 1 and not _writer_tasks(nursery),
            "the old connection gone",
            100,
        )
        assert trio.current_time() - start <= connection.FINAL_FLUSH_TIMEOUT + 0.02
        await new.send(Disconnect())
        await new.expect_closed(timeout=5)
        await new.stream.aclose()
        await stuck.stream.aclose()


async def test_a_watch_does_not_keep_its_nursery_alive() -> None:
    """One watch per nursery, found through a weak mapping: the watch must not hold its
    nursery (an embedding app that opens and closes brokers would keep every one)."""
    async with trio.open_nursery() as nursery:
        watch = keep_alive_watch_for(nursery)
        assert keep_alive_watch_for(nursery) is watch
        gone = weakref.ref(nursery)
    del nursery, watch
    gc.collect()
    assert gone() is None
