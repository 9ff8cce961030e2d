"""run_connection over in-memory trio streams, in virtual time (pytest-trio autojump_clock).

The broker core is real; only the transport is a trio.testing memory stream, so the
timings (connect timeout, 1.5x keep alive) can be checked exactly, and the writer's
batching and back-pressure can be observed by wrapping the server's end of the stream.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from helpers import PEER, V5, V311, GatedStream, SocketReads, make_core, open_client, serving
from rawclient import RawClient

from trio_mqtt.broker.message import Message
from trio_mqtt.mqtt.codec import PacketReader, encode
from trio_mqtt.mqtt.packets import (
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Will,
)
from trio_mqtt.server.connection import run_connection

# Virtual time is exact, but leave room for a scheduling round or two.
EPSILON = 0.001

# The timeouts on both kinds of reads: a memory stream (a cancel scope per read) and a
# socket (the reader reads it itself; the KeepAliveWatch rings it)
TRANSPORTS = pytest.mark.parametrize("transport", ["memory", "socket"])


# --------------------------------------------------------------------------- timeouts


@TRANSPORTS
async def test_connect_timeout_closes_at_exactly_connect_timeout(
    autojump_clock: trio.testing.MockClock,
    transport: str,
) -> None:
    core = make_core(trio.current_time, connect_timeout=7)
    async with serving(core) as serve:
        client = await open_client(serve, transport=transport)
        start = trio.current_time()
        with trio.fail_after(100):
            assert await client.stream.receive_some(100) == b""
        assert trio.current_time() - start == 7
    assert core.sessions == {}


@TRANSPORTS
async def test_connect_timeout_not_reset_by_trickled_bytes(
    autojump_clock: trio.testing.MockClock,
    transport: str,
) -> None:
    """A client may not hold a connection open by sending its CONNECT a byte at a time."""
    core = make_core(trio.current_time, connect_timeout=7)
    connect = encode(Connect("slowloris", V311), V311)
    async with serving(core) as serve:
        client = await open_client(serve, transport=transport)
        start = trio.current_time()

        async def trickle() -> None:
            for byte in connect[:-1]:
                await trio.sleep(3)
                try:
                    await client.send_raw(bytes((byte,)))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            with trio.fail_after(100):
                assert await client.stream.receive_some(100) == b""
            nursery.cancel_scope.cancel()
        assert trio.current_time() - start <= 7 + EPSILON


@TRANSPORTS
async def test_connect_in_time_is_accepted(
    autojump_clock: trio.testing.MockClock, transport: str
) -> None:
    core = make_core(trio.current_time, connect_timeout=7)
    async with serving(core) as serve:
        client = await open_client(serve, transport=transport)
        await trio.sleep(6.9)
        connack = await client.connect("punctual", keep_alive=0)
        assert connack.reason_code == 0
        await trio.sleep(60)  # keep alive 0: no timeout at all
        assert core.sessions["punctual"].online


@TRANSPORTS
async def test_keepalive_enforced_at_one_and_a_half(
    autojump_clock: trio.testing.MockClock,
    transport: str,
) -> None:
    core = make_core(trio.current_time)
    wills: list[tuple[float, Message]] = []
    core.local_subscribe("will/#", lambda m: wills.append((trio.current_time(), m)))
    async with serving(core) as serve:
        client = await open_client(serve, V5, transport)
        await client.connect("ka", keep_alive=10, will=Will("will/ka", b"lost"))
        start = trio.current_time()

        await trio.sleep(14)
        assert core.sessions["ka"].online  # 14 s of silence is still fine
        assert wills == []

        packets = await client.expect_closed(timeout=100)
        closed = trio.current_time() - start

    assert 15 <= closed <= 15 + EPSILON
    assert packets == [Disconnect(reason_code=0x8D)]  # Keep Alive timeout
    assert len(wills) == 1
    will_time, will = wills[0]
    assert 15 <= will_time - start <= 15 + EPSILON
    assert (will.topic, will.payload, will.publisher) == ("will/ka", b"lost", "ka")
    assert "ka" not in core.sessions


@TRANSPORTS
async def test_keepalive_will_seen_by_other_connection(
    autojump_clock: trio.testing.MockClock,
    transport: str,
) -> None:
    core = make_core(trio.current_time)
    async with serving(core) as serve:
        watcher = await open_client(serve, V311, transport)
        await watcher.connect("watcher", keep_alive=0)
        await watcher.send(Subscribe(1, (SubscriptionRequest("will/#", 1),)))
        assert isinstance(await watcher.receive(), Suback)

        quiet = await open_client(serve, V311, transport)
        await quiet.connect("quiet", keep_alive=2, will=Will("will/quiet", b"gone", qos=1))
        start = trio.current_time()
        will = await watcher.receive(timeout=100)
        assert isinstance(will, Publish)
        assert (will.topic, will.payload, will.qos) == ("will/quiet", b"gone", 1)
        assert 3 <= trio.current_time() - start <= 3 + EPSILON
        assert await quiet.expect_closed() == []  # 3.1.1: no DISCONNECT from the server


@TRANSPORTS
async def test_pingreq_resets_keepalive(
    autojump_clock: trio.testing.MockClock, transport: str
) -> None:
    core = make_core(trio.current_time)
    async with serving(core) as serve:
        client = await open_client(serve, V311, transport)
        await client.connect("pinger", keep_alive=10)
        start = trio.current_time()
        await trio.sleep(14)
        await client.send(Pingreq())
        assert await client.receive() == Pingresp()
        await trio.sleep(14)  # 28 s after CONNECT, 14 s after the PINGREQ
        assert core.sessions["pinger"].online

        await client.expect_closed(timeout=100)
        assert 29 <= trio.current_time() - start <= 29 + EPSILON


@TRANSPORTS
async def test_busy_connection_times_out_counted_from_its_last_packet(
    autojump_clock: trio.testing.MockClock,
    transport: str,
) -> None:
    # Packets every 0.1 ms: the timeout counts from the last packet, never from an
    # earlier one, and comes on time.
    core = make_core(trio.current_time)
    async with serving(core) as serve:
        client = await open_client(serve, V311, transport)
        await client.connect("busy", keep_alive=2)
        for _ in range(37):
            await trio.sleep(0.0001)
            await client.send(Pingreq())
            assert await client.receive() == Pingresp()
        last_packet = trio.current_time()
        await client.expect_closed(timeout=100)
        silence = trio.current_time() - last_packet
    assert 3 <= silence <= 3 + EPSILON / 100


# --------------------------------------------------------------------------- reads


async def test_after_a_short_read_the_reader_waits_before_reading_again(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Request/response on a socket: each read that took less than the socket could
    give is followed by a wait, not by one more read that finds nothing (EAGAIN, a
    system call and an exception per packet)."""
    reads = SocketReads()
    core = make_core(trio.current_time)
    async with serving(core) as serve:
        client = await open_client(serve, V311, "socket")
        await client.connect("pinger", keep_alive=60)
        reads.install(monkeypatch)
        for _ in range(10):
            await client.send(Pingreq())
            assert await client.receive() == Pingresp()
        monkeypatch.undo()
    assert reads.results == [2] * 10  # one read per PINGREQ, each after a wait


# --------------------------------------------------------------------------- writer


async def test_output_queued_while_writer_blocked_goes_in_one_send_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = make_core(trio.current_time)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    gated = GatedStream(server_stream)
    async with serving(core) as serve:
        serve(gated)
        client = RawClient(client_stream, V311)
        await client.connect("batch", keep_alive=0)
        await client.send(Subscribe(1, (SubscriptionRequest("b", 0),)))
        assert isinstance(await client.receive(), Suback)
        writes_before = len(gated.writes)

        gated.gate = trio.Event()
        core.publish(Message("b", b"first"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(gated.writes) == writes_before + 1  # the writer is stuck on "first"
        for n in range(5):
            core.publish(Message("b", f"queued {n}".encode()))
            await trio.testing.wait_all_tasks_blocked()
        assert len(gated.writes) == writes_before + 1

        gated.gate.set()
        received = [await client.receive() for _ in range(6)]
        await trio.testing.wait_all_tasks_blocked()

    assert [p.payload for p in received if isinstance(p, Publish)] == [
        b"first",
        *(f"queued {n}".encode() for n in range(5)),
    ]
    assert len(gated.writes) == writes_before + 2
    reader = PacketReader(protocol_version=V311, server_side=False)
    batch = reader.feed(gated.writes[-1])
    assert [p.payload for p in batch if isinstance(p, Publish)] == [
        f"queued {n}".encode() for n in range(5)
    ]


async def test_acks_batched_with_messages(autojump_clock: trio.testing.MockClock) -> None:
    """Several packets read in one chunk are answered in one write."""
    core = make_core(trio.current_time)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    gated = GatedStream(server_stream)
    async with serving(core) as serve:
        serve(gated)
        client = RawClient(client_stream, V311)
        await client.connect("acks", keep_alive=0)
        writes_before = len(gated.writes)
        burst = b"".join(
            encode(Publish("nobody", b"x", qos=1, packet_id=n), V311) for n in range(1, 6)
        )
        await client.send_raw(burst + encode(Pingreq(), V311))
        answers = [await client.receive() for _ in range(6)]
    assert answers == [*(Puback(n) for n in range(1, 6)), Pingresp()]
    assert len(gated.writes) == writes_before + 1


async def test_subscriber_that_stops_reading_does_not_block_publisher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    max_bytes = 200  # a dozen of these messages
    core = make_core(trio.current_time, max_queued_bytes=max_bytes)
    async with serving(core) as serve:
        stuck_stream, stuck_server = trio.testing.lockstep_stream_pair()
        serve(stuck_server)
        stuck = RawClient(stuck_stream, V311)
        await stuck.connect("stuck", keep_alive=0)
        await stuck.send(Subscribe(1, (SubscriptionRequest("flood", 0),)))
        assert isinstance(await stuck.receive(), Suback)
        # from here on, "stuck" never reads again

        fast = await open_client(serve, V311)
        await fast.connect("fast", keep_alive=0)
        await fast.send(Subscribe(1, (SubscriptionRequest("flood", 0),)))
        assert isinstance(await fast.receive(), Suback)

        publisher = await open_client(serve, V311)
        await publisher.connect("publisher", keep_alive=0)
        stuck_session = core.sessions["stuck"]
        count = 300
        with trio.fail_after(5):  # virtual seconds: a blocked publisher would hit this
            for n in range(count):
                await publisher.send(Publish("flood", str(n).encode()))
                if n % 50 == 49:
                    await publisher.send(Publish("flood", b"ack me", qos=1, packet_id=n))
                    assert await publisher.receive() == Puback(n)
                await trio.testing.wait_all_tasks_blocked()
                assert stuck_session.queued_bytes <= max_bytes
            await publisher.send(Pingreq())
            assert await publisher.receive() == Pingresp()

            fast_payloads: list[bytes] = []
            while len(fast_payloads) < count + count // 50:
                packet = await fast.receive()
                assert isinstance(packet, Publish)
                fast_payloads.append(packet.payload)

    assert [p for p in fast_payloads if p != b"ack me"] == [str(n).encode() for n in range(count)]
    # every message is at least 12 bytes (publish_size): at most a few kept
    assert stuck_session.queued_bytes <= max_bytes
    assert stuck_session.dropped >= count - max_bytes // 12
    assert core.stats.messages_dropped >= stuck_session.dropped


# ------------------------------------------------------------- writers beside the reader


def _writer_tasks(nursery: trio.Nursery) -> list[trio.lowlevel.Task]:
    return [task for task in nursery.child_tasks if task.name.endswith("_write_loop")]


async def test_writers_start_beside_the_connection_which_opens_no_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An idle connection is one task with no nursery of its own (memory per idle
    connection); a writer, when one is needed, runs in the nursery the connection runs in."""
    core = make_core(trio.current_time)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    gated = GatedStream(server_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_connection, gated, core, PEER, nursery)
        client = RawClient(client_stream, V311)
        await client.connect("idle", keep_alive=0)
        await client.send(Subscribe(1, (SubscriptionRequest("b", 0),)))
        assert isinstance(await client.receive(), Suback)
        await trio.testing.wait_all_tasks_blocked()
        [connection_task] = nursery.child_tasks
        assert connection_task.child_nurseries == []

        gated.gate = trio.Event()
        core.publish(Message("b", b"held"))  # no reader's step: a writer sends it
        await trio.testing.wait_all_tasks_blocked()
        assert len(_writer_tasks(nursery)) == 1  # stuck at the gate
        assert connection_task.child_nurseries == []

        gated.gate.set()
        packet = await client.receive()
        assert isinstance(packet, Publish) and packet.payload == b"held"
        await trio.testing.wait_all_tasks_blocked()
        assert _writer_tasks(nursery) == []  # nothing left to send: it ended
        nursery.cancel_scope.cancel()


class _SlowToStop(GatedStream):
    """Its writes wait at the gate; a cancelled write takes a (virtual) second to stop,
    as a transport that must still flush something would. Notes the order of events."""

    def __init__(self, inner: trio.abc.Stream, events: list[str]) -> None:
        super().__init__(inner)
        self.events = events

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await super().send_all(data)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(1)
            self.events.append("writer stopped")
            raise

    async def aclose(self) -> None:
        self.events.append("stream closed")
        await super().aclose()


@pytest.mark.parametrize("ending", ["eof", "cancelled"])
async def test_a_connection_ends_after_its_writer(
    autojump_clock: trio.testing.MockClock, ending: str
) -> None:
    """A writer stuck on a client that does not read is stopped and waited for before
    the connection closes its stream, whether the client went away (EOF) or the
    connection was cancelled (the broker's shutdown)."""
    core = make_core(trio.current_time)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    events: list[str] = []
    stream = _SlowToStop(server_stream, events)
    async with trio.open_nursery() as nursery:

        async def connection() -> None:
            try:
                await run_connection(stream, core, PEER, nursery)
            finally:
                events.append(f"connection ended, {len(_writer_tasks(nursery))} writer(s) left")

        nursery.start_soon(connection)
        client = RawClient(client_stream, V311)
        await client.connect("stuck", keep_alive=0)
        await client.send(Subscribe(1, (SubscriptionRequest("b", 0),)))
        assert isinstance(await client.receive(), Suback)
        stream.gate = trio.Event()  # never set: the writer waits for good
        core.publish(Message("b", b"never read"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(_writer_tasks(nursery)) == 1
        if ending == "eof":
            await client_stream.aclose()
        else:
            nursery.cancel_scope.cancel()
    assert events == ["writer stopped", "stream closed", "connection ended, 0 writer(s) left"]
    assert "stuck" not in core.sessions  # a clean session: it ended with its connection
