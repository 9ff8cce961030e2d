"""Parking (server/idle_park.py): a plain-TCP connection whose client has been quiet for
PARK_AFTER has no task; one task per nursery waits for every parked socket. A connection
may also start parked (``start_parked``, as the listener starts plain-TCP connections
without PROXY protocol): the park reads and answers its CONNECT, and it gets a task when
it first needs one.

Each test runs connections on socket pairs (the listener's wrapping of an accepted
socket), in virtual time, and checks what the client and the broker see while the
connection is parked: its packets answered, its deliveries written, its keep alive
kept, its takeover and its close, and the broker's shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from helpers import PEER, V5, V311, make_core, offloaded_hook, open_client, wait_until
from rawclient import RawClient

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.message import Message
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    ProtocolVersion,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.server import connection
from trio_mqtt.server.connection import (
    PARK_AFTER,
    PARK_AFTER_MAX,
    PARK_GRAIN,
    PARK_WORTH,
    run_connection,
    start_parked,
)
from trio_mqtt.server.idle_park import IdlePark, idle_park_for
from trio_mqtt.server.keep_alive import keep_alive_watch_for
from trio_mqtt.server.watched_stream import WatchedSocketStream

born_parked = pytest.mark.parametrize("born_parked", [False, True], ids=["task", "born-parked"])


class _Serving:
    """Connections served in ``nursery`` (as the listener serves them), each calling
    back when it has closed; started parked if ``born_parked``."""

    def __init__(self, nursery: trio.Nursery, core: BrokerCore, born_parked: bool = False) -> None:
        self.nursery = nursery
        self.core = core
        self.born_parked = born_parked
        self.closed = 0

    def __call__(self, stream: trio.abc.Stream) -> None:
        if self.born_parked:
            assert isinstance(stream, WatchedSocketStream)
            start_parked(stream, self.core, PEER, self.nursery, self._ended)
        else:
            self.nursery.start_soon(
                run_connection, stream, self.core, PEER, self.nursery, self._ended
            )

    def _ended(self) -> None:
        self.closed += 1

    @property
    def park(self) -> IdlePark[object]:
        return idle_park_for(self.nursery, connection._resume)  # type: ignore[arg-type]

    def tasks(self, name: str) -> list[trio.lowlevel.Task]:
        return [task for task in self.nursery.child_tasks if task.name.endswith(name)]

    def connection_tasks(self) -> list[trio.lowlevel.Task]:
        return self.tasks("run_connection") + self.tasks("_resume")

    async def client(self, version: ProtocolVersion, client_id: str, **connect: Any) -> RawClient:
        """A client on a socket pair, connected as ``client_id``."""
        client = await open_client(self, version, "socket")
        await client.connect(client_id, **connect)
        return client

    async def parked_after_quiet_spell(self, count: int) -> None:
        """Quiet for PARK_AFTER (to the grain): then ``count`` connections are parked."""
        await _quiet(PARK_AFTER + PARK_GRAIN)
        assert len(self.park) == count


@asynccontextmanager
async def _serving(born_parked: bool = False, **settings: Any) -> AsyncIterator[_Serving]:
    """Connections served in a nursery of their own, on a fresh core (``settings``: its
    config); cancelled at the end."""
    async with trio.open_nursery() as nursery:
        yield _Serving(nursery, make_core(trio.current_time, **settings), born_parked)
        nursery.cancel_scope.cancel()


async def _quiet(seconds: float) -> None:
    await trio.sleep(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_quiet_connection_parks_and_its_client_is_still_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _serving() as serving:
        client = await serving.client(V5, "quiet", keep_alive=60)
        await _quiet(PARK_AFTER - PARK_GRAIN)
        assert len(serving.connection_tasks()) == 1
        assert len(serving.park) == 0
        await _quiet(2 * PARK_GRAIN)
        assert serving.connection_tasks() == []  # parked: no task of its own
        assert len(serving.park) == 1
        assert len(serving.tasks("IdlePark._run")) == 1  # one task for all parked sockets
        await client.send(Pingreq())  # resumed by its bytes, answered
        assert await client.receive() == Pingresp()
        assert len(serving.park) == 0
        assert len(serving.connection_tasks()) == 1
        await _quiet(2 * PARK_AFTER + PARK_GRAIN)  # (back soon: twice as long a wait)
        assert len(serving.park) == 1
        await client.send(Disconnect())
        assert await client.expect_closed(timeout=5) == []
        await client.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert serving.closed == 1
        assert serving.connection_tasks() == []
        assert len(serving.park) == 0
        assert serving.tasks("IdlePark._run") == []  # nothing parked: its task ended
        assert keep_alive_watch_for(serving.nursery).armed == 0


async def _parked_after(serving: _Serving, client: RawClient) -> float:
    """Ping, then how long the connection took to park again (to the grain)."""
    await client.send(Pingreq())
    assert await client.receive() == Pingresp()
    start = trio.current_time()
    while not len(serving.park):
        await _quiet(PARK_GRAIN)
    return trio.current_time() - start


async def test_a_client_back_soon_is_parked_later_and_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A park and a resume cost CPU: a client that sends again within PARK_WORTH of its
    park waits twice as long before the next (up to PARK_AFTER_MAX), and a client
    that stays away longer half as long, down to PARK_AFTER."""
    async with _serving() as serving:
        client = await serving.client(V5, "pinger", keep_alive=0)
        await serving.parked_after_quiet_spell(1)
        waits = [await _parked_after(serving, client) for _ in range(7)]
        expected = [min(PARK_AFTER * 2**n, PARK_AFTER_MAX) for n in range(1, 8)]
        assert [round(wait) for wait in waits] == expected  # (to the grain)
        await _quiet(PARK_WORTH)  # then away for longer than PARK_WORTH: half as long
        assert round(await _parked_after(serving, client)) == PARK_AFTER_MAX / 2


async def test_a_packet_that_trickles_in_does_not_park_the_connection_at_every_read(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The park time counts from the last complete packet; a client sending a large
    packet slowly is not quiet. Its reads, a tenth of a second apart, cost no park and
    resume each (at most one per PARK_AFTER while it goes on)."""
    parks: list[float] = []
    real_park = IdlePark.park

    def park(self: IdlePark[object], fd: int, connection: object) -> None:
        parks.append(trio.current_time())
        real_park(self, fd, connection)

    monkeypatch.setattr(IdlePark, "park", park)
    async with _serving() as serving:
        client = await serving.client(V311, "slow", keep_alive=60)
        await _quiet(PARK_WORTH + 10)
        assert len(parks) == 1  # quiet since its CONNECT: parked (for long: PARK_AFTER)
        packet = encode(Publish(topic="t", payload=bytes(3000), qos=0), V311)
        start = trio.current_time()
        for offset in range(0, len(packet), 100):  # 3 s, a chunk every 0.1 s
            await client.stream.send_all(packet[offset : offset + 100])
            await trio.sleep(0.1)
        trickled = trio.current_time() - start
        assert len(parks) - 1 <= trickled / PARK_AFTER
        await client.send(Pingreq())  # and the packet arrived whole
        assert await client.receive() == Pingresp()


@born_parked
async def test_a_parked_subscriber_receives_without_being_resumed(
    autojump_clock: trio.testing.MockClock, born_parked: bool
) -> None:
    async with _serving(born_parked) as serving:
        core = serving.core
        subscriber = await serving.client(V311, "sub", keep_alive=60)
        await subscriber.send(Subscribe(1, (SubscriptionRequest("t/#", 0),)))
        assert isinstance(await subscriber.receive(), Suback)
        await serving.parked_after_quiet_spell(1)
        for n in range(5):
            core.publish(Message(f"t/{n}", b"%d" % n))
        got = [await subscriber.receive() for _ in range(5)]
        assert [(p.topic, p.payload) for p in got if isinstance(p, Publish)] == [
            (f"t/{n}", b"%d" % n) for n in range(5)
        ]
        await trio.testing.wait_all_tasks_blocked()
        assert len(serving.park) == 1  # writes need no reader
        assert serving.connection_tasks() == []


@born_parked
async def test_the_keep_alive_of_a_parked_connection_runs_out_on_time(
    autojump_clock: trio.testing.MockClock, born_parked: bool
) -> None:
    async with _serving(born_parked) as serving:
        core = serving.core
        client = await serving.client(V5, "silent", keep_alive=4)
        start = trio.current_time()
        await serving.parked_after_quiet_spell(1)
        assert await client.expect_closed(timeout=60) == [Disconnect(reason_code=0x8D)]
        assert 6 <= trio.current_time() - start <= 6 + 0.02  # 1.5 x keep alive
        await client.stream.aclose()
        await wait_until(lambda: serving.closed == 1, "closed", 5)
        assert "silent" not in core.sessions
        assert len(serving.park) == 0


@born_parked
async def test_a_parked_connection_is_taken_over(
    autojump_clock: trio.testing.MockClock, born_parked: bool
) -> None:
    async with _serving(born_parked) as serving:
        old = await serving.client(V5, "twice", keep_alive=60)
        await serving.parked_after_quiet_spell(1)
        new = await serving.client(V5, "twice", keep_alive=60)
        assert await old.expect_closed(timeout=5) == [Disconnect(reason_code=0x8E)]
        await old.stream.aclose()
        await wait_until(lambda: serving.closed == 1, "the old connection closed", 5)
        await new.send(Disconnect())
        await new.expect_closed(timeout=5)
        await new.stream.aclose()
        await wait_until(lambda: serving.closed == 2, "the new connection closed", 5)


@born_parked
async def test_a_parked_client_that_goes_away_leaves_its_will(
    autojump_clock: trio.testing.MockClock, born_parked: bool
) -> None:
    async with _serving(born_parked) as serving:
        watcher = await serving.client(V311, "watcher", keep_alive=0)
        await watcher.send(Subscribe(1, (SubscriptionRequest("will/#", 0),)))
        assert isinstance(await watcher.receive(), Suback)
        client = await serving.client(V311, "dev", keep_alive=60, will=Will("will/dev", b"gone"))
        await serving.parked_after_quiet_spell(2)
        await client.stream.aclose()  # EOF, no DISCONNECT
        will = await watcher.receive()
        assert isinstance(will, Publish)
        assert (will.topic, will.payload) == ("will/dev", b"gone")
        await wait_until(lambda: serving.closed == 1, "closed", 5)


async def test_a_connection_whose_writer_waits_does_not_park(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Parking wakes every wait on the socket: not while a writer waits for room in it
    (its client reads nothing). The writer stays; the connection parks once it is done."""
    async with _serving() as serving:
        core = serving.core
        client = await serving.client(V311, "slow", keep_alive=0)
        await client.send(Subscribe(1, (SubscriptionRequest("flood", 0),)))
        assert isinstance(await client.receive(), Suback)
        for _ in range(64):  # far more than the socket pair holds: the writer waits
            core.publish(Message("flood", bytes(16384)))
            await trio.testing.wait_all_tasks_blocked()
        await _quiet(10 * PARK_AFTER)
        assert serving.tasks("_write_loop")
        assert len(serving.park) == 0
        assert len(serving.connection_tasks()) == 1
        received = 0
        while received < 64:
            packet = await client.receive()
            assert isinstance(packet, Publish)
            received += 1
        await _quiet(PARK_AFTER + 0.01)
        assert serving.tasks("_write_loop") == []
        assert len(serving.park) == 1
        assert serving.closed == 0


@born_parked
async def test_cancelling_the_nursery_closes_parked_connections(
    autojump_clock: trio.testing.MockClock, born_parked: bool
) -> None:
    """The end of a shutdown: the park's task is cancelled, and each parked connection
    closes in a task of its own (its socket closed, its end reported)."""
    core = make_core(trio.current_time)

    async def serve(task_status: trio.TaskStatus[_Serving] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started(_Serving(nursery, core, born_parked))
            await trio.sleep_forever()

    async with trio.open_nursery() as outer:
        serving: _Serving = await outer.start(serve)
        clients = [await serving.client(V5, f"c{n}", keep_alive=60) for n in range(3)]
        await serving.parked_after_quiet_spell(3)
        serving.nursery.cancel_scope.cancel()
        for client in clients:
            assert await client.expect_closed(timeout=5) == []
        await wait_until(lambda: serving.closed == 3, "all closed", 5)
        outer.cancel_scope.cancel()


# --- connections that start parked ------------------------------------------------------


async def test_a_connection_started_parked_has_its_connect_answered_by_the_park(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No task until its client sends after the CONNECT; then one, which parks again
    after PARK_AFTER (the park it started in does not count as a client back soon)."""
    async with _serving(born_parked=True) as serving:
        client = await serving.client(V5, "born", keep_alive=60)
        await trio.testing.wait_all_tasks_blocked()
        assert serving.connection_tasks() == []
        assert len(serving.park) == 1
        assert "born" in serving.core.sessions
        await client.send(Pingreq())
        assert await client.receive() == Pingresp()
        assert len(serving.connection_tasks()) == 1  # (resumed by its PINGREQ)
        await serving.parked_after_quiet_spell(1)
        assert serving.connection_tasks() == []
        await client.send(Disconnect())
        assert await client.expect_closed(timeout=5) == []
        await wait_until(lambda: serving.closed == 1, "closed", 5)
        assert "born" not in serving.core.sessions


async def test_a_connect_that_trickles_in_is_read_in_the_park(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _serving(born_parked=True) as serving:
        client = await open_client(serving, V311, "socket")
        connect = encode(Connect(client_id="slow", keep_alive=60), V311)
        for offset in range(0, len(connect) - 1, 3):
            await client.stream.send_all(connect[offset : min(offset + 3, len(connect) - 1)])
            await _quiet(0.1)
            assert serving.connection_tasks() == []
            assert len(serving.park) == 1
        assert "slow" not in serving.core.sessions  # not whole yet
        await client.stream.send_all(connect[-1:])
        connack = await client.receive()
        assert isinstance(connack, Connack) and connack.reason_code == 0
        await trio.testing.wait_all_tasks_blocked()
        assert serving.connection_tasks() == []


async def test_packets_that_come_with_the_connect_are_answered_in_the_park(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _serving(born_parked=True) as serving:
        client = await open_client(serving, V311, "socket")
        await client.send_raw(
            encode(Connect(client_id="eager", keep_alive=60), V311)
            + encode(Subscribe(1, (SubscriptionRequest("me", 0),)), V311)
            + encode(Publish(topic="me", payload=b"to myself"), V311)
        )
        assert isinstance(await client.receive(), Connack)
        assert isinstance(await client.receive(), Suback)
        delivery = await client.receive()
        assert isinstance(delivery, Publish) and delivery.payload == b"to myself"
        await trio.testing.wait_all_tasks_blocked()
        assert serving.connection_tasks() == []
        assert len(serving.park) == 1


async def test_a_connection_started_parked_that_sends_nothing_is_closed_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _serving(born_parked=True, connect_timeout=5.0) as serving:
        start = trio.current_time()
        client = await open_client(serving, V5, "socket")
        assert await client.expect_closed(timeout=60) == []
        assert 5 <= trio.current_time() - start <= 5 + 0.02
        await wait_until(lambda: serving.closed == 1, "closed", 5)
        assert len(serving.park) == 0
        assert keep_alive_watch_for(serving.nursery).armed == 0


async def test_a_connection_started_parked_that_closes_first_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _serving(born_parked=True) as serving:
        client = await open_client(serving, V5, "socket")
        await client.send_raw(encode(Connect(client_id="half", protocol_version=V5), V5)[:5])
        await client.stream.aclose()
        await wait_until(lambda: serving.closed == 1, "closed", 5)
        assert len(serving.park) == 0
        assert serving.connection_tasks() == []


def _start_with(serving: _Serving, received: bytes, version: ProtocolVersion = V311) -> RawClient:
    """A client whose connection starts parked with ``received`` read already (as
    what came with a PROXY header is)."""
    client_socket, server_socket = trio.socket.socketpair()
    stream = WatchedSocketStream(server_socket)
    start_parked(stream, serving.core, PEER, serving.nursery, serving._ended, received=received)
    return RawClient(trio.SocketStream(client_socket), version)


async def test_bytes_read_before_the_start_are_handled_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _serving(born_parked=True) as serving:
        client = _start_with(
            serving,
            encode(Connect(client_id="proxied", keep_alive=60), V311)
            + encode(Subscribe(1, (SubscriptionRequest("t", 0),)), V311),
        )
        assert isinstance(await client.receive(), Connack)
        assert isinstance(await client.receive(), Suback)
        await trio.testing.wait_all_tasks_blocked()
        assert serving.connection_tasks() == []
        assert len(serving.park) == 1
        await client.send(Pingreq())
        assert await client.receive() == Pingresp()


@pytest.mark.parametrize("answer", [None, ReasonCode.BAD_USER_NAME_OR_PASSWORD])
@pytest.mark.parametrize("read_before", [False, True], ids=["sent", "read-before"])
async def test_a_slow_check_of_the_connect_gives_the_connection_its_task(
    answer: ReasonCode | None, read_before: bool
) -> None:
    """The park cannot wait for a check that runs in a thread (a password hash): the
    connection's task does, then answers the CONNECT and what came with it. (Real
    time: a virtual clock would jump past the thread.)"""
    slow_hook, checked = offloaded_hook(answer)
    async with _serving(born_parked=True) as serving:
        serving.core.add_connect_hook(slow_hook)
        first = encode(Connect(client_id="checked", protocol_version=V5), V5) + encode(
            Subscribe(1, (SubscriptionRequest("t", 0),)), V5
        )
        if read_before:
            client = _start_with(serving, first, V5)
        else:
            client = await open_client(serving, V5, "socket")
            await client.send_raw(first)
        connack = await client.receive()
        assert checked == ["checked"]
        assert isinstance(connack, Connack)
        if answer is None:
            assert connack.reason_code == 0
            assert isinstance(await client.receive(), Suback)
            assert len(serving.connection_tasks()) == 1
            await client.send(Pingreq())
            assert await client.receive() == Pingresp()
        else:
            assert connack.reason_code == answer
            assert await client.expect_closed(timeout=5) == []
            await wait_until(lambda: serving.closed == 1, "closed", 5)
