"""Shared test helpers: the broker core without sockets, its clock, and bounded waits.

- ``FakeClock`` and ``make_core``: a real ``BrokerCore`` on a clock the test moves by hand
  (the ``clock`` fixture of tests/conftest.py gives a fresh ``FakeClock``).
- ``Client``: one ``MQTTConnection`` driven with bytes from our encoder, its output read
  back with a client-side ``PacketReader``: no sockets, no trio.
- ``serving``, ``open_client``, ``GatedStream``: ``run_connection`` over trio memory
  streams, for the server layer in virtual time.
- ``wait_until``: poll in-process state from a trio test, bounded.
- ``lines_executed``: the work a call does, counted in lines of Python, so that a test can
  assert an algorithmic bound without a wall clock.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing
from rawclient import RawClient

from trio_mqtt.broker.connection_view import ClientConnection
from trio_mqtt.broker.core import BrokerCore, OffloadedCheck
from trio_mqtt.broker.message import Message
from trio_mqtt.broker.mqtt_connection import MQTTConnection, open_connection
from trio_mqtt.config import BrokerConfig
from trio_mqtt.mqtt.codec import PacketReader, encode
from trio_mqtt.mqtt.packets import (
    NO_PROPERTIES,
    Connack,
    Connect,
    Packet,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import Endpoint, PeerInfo
from trio_mqtt.server.connection import run_connection
from trio_mqtt.server.watched_stream import WatchedSocketStream

if TYPE_CHECKING:
    from _typeshed import TraceFunction

    from trio_mqtt import Broker

V31 = ProtocolVersion.V31
V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5

#: The peer of every test connection (192.0.2.0/24 is TEST-NET-1, RFC 5737).
PEER = PeerInfo.from_socket(
    "test", "tcp", Endpoint("127.0.0.1", 1883), Endpoint("192.0.2.10", 50000)
)


# ------------------------------------------------------------------ the core, sans IO


@attrs.define
class FakeClock:
    """The broker's clock: tests move ``now`` by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def make_core(clock: Callable[[], float] | None = None, **settings: Any) -> BrokerCore:
    """A core with ``BrokerConfig(**settings)``, on ``clock`` (a new ``FakeClock`` if None).

    The server-layer tests pass ``trio.current_time``: virtual time with autojump_clock.
    """
    return BrokerCore(
        config=BrokerConfig(**settings), clock=FakeClock() if clock is None else clock
    )


class Client:
    """One network connection as the core sees it, with a client-side decoder.

    ``wakeups`` counts how often the connection told its I/O layer that it has output.
    ``connect`` and ``subscribe`` return the CONNACK / SUBACK and keep whatever came with
    it (a resumed session's messages, retained messages) for the next ``packets()``.
    """

    def __init__(self, core: BrokerCore, version: ProtocolVersion = V5) -> None:
        self.version = version
        self.wakeups = 0
        self.conn: MQTTConnection = open_connection(core, PEER, self._on_output)
        self.reader = PacketReader(protocol_version=version, server_side=False)
        self._held: list[Packet] = []  # decoded but not yet returned by packets()

    def _on_output(self) -> None:
        self.wakeups += 1

    def send(self, packet: Packet) -> None:
        self.conn.receive_data(encode(packet, self.version))

    def raw(self) -> bytes:
        """Everything the server wants to write now, undecoded."""
        return self.conn.data_to_send()

    def packets(self) -> list[Packet]:
        """Everything the server wants to write now, decoded."""
        held, self._held = self._held, []
        return held + self.reader.feed(self.conn.data_to_send())

    def publishes(self) -> list[Publish]:
        out = self.packets()
        assert all(isinstance(p, Publish) for p in out), out
        return [p for p in out if isinstance(p, Publish)]

    def connect(self, client_id: str, **fields: Any) -> Connack:
        """Send CONNECT (``fields`` are ``Connect`` fields); the CONNACK."""
        self.send(Connect(client_id=client_id, protocol_version=self.version, **fields))
        connack, *self._held = self.packets()
        assert isinstance(connack, Connack), connack
        return connack

    def subscribe(
        self, *filters: tuple[str, int], packet_id: int = 1, sub_id: int | None = None
    ) -> Suback:
        """SUBSCRIBE to ``(filter, qos)`` pairs, with Subscription Identifier ``sub_id``."""
        requests = tuple(SubscriptionRequest(f, qos) for f, qos in filters)
        properties = (
            NO_PROPERTIES if sub_id is None else Properties(subscription_identifiers=(sub_id,))
        )
        self.send(Subscribe(packet_id, requests, properties))
        suback, *self._held = self.packets()
        assert isinstance(suback, Suback), suback
        return suback

    def subscribe_alone(self, *filters: tuple[str, int], sub_id: int | None = None) -> Suback:
        """``subscribe``, and nothing but the SUBACK comes back (no retained message)."""
        suback = self.subscribe(*filters, sub_id=sub_id)
        assert self._held == [], self._held
        return suback

    def drop(self) -> None:
        """The transport is gone (no DISCONNECT)."""
        self.conn.connection_lost()


# ------------------------------------------------------------ the server, in memory


class GatedStream(trio.abc.Stream):
    """Wraps the server's end: records every send_all and can hold writes at a gate."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []
        self.gate: trio.Event | None = None  # while set to an unset Event, writes wait

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        if self.gate is not None:
            await self.gate.wait()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def serving(core: BrokerCore) -> AsyncIterator[Callable[[trio.abc.Stream], None]]:
    """Yields ``serve(server_stream)``, which runs a connection on it in the background."""
    async with trio.open_nursery() as nursery:

        def serve(stream: trio.abc.Stream) -> None:
            nursery.start_soon(run_connection, stream, core, PEER, nursery)

        yield serve
        nursery.cancel_scope.cancel()


class SocketReads:
    """What each ``os.read`` returned while installed: its length, or None for EAGAIN
    (BlockingIOError). The broker reads sockets with ``os.read``: a read that found
    nothing is a system call and an exception wasted."""

    def __init__(self) -> None:
        self.results: list[int | None] = []

    @property
    def eagain(self) -> int:
        return self.results.count(None)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_read = os.read

        def read(fd: int, size: int) -> bytes:
            try:
                data = real_read(fd, size)
            except BlockingIOError:
                self.results.append(None)
                raise
            self.results.append(len(data))
            return data

        monkeypatch.setattr(os, "read", read)


async def open_client(
    serve: Callable[[trio.abc.Stream], None],
    version: ProtocolVersion = V311,
    transport: str = "memory",
) -> RawClient:
    """A RawClient on a stream whose other end ``serve`` runs a connection on: a memory
    stream (``transport="memory"``), or a connected pair of Unix sockets ("socket"),
    the server's end wrapped as the listener wraps an accepted socket (the reader then
    reads the socket itself and its keep alive is the ``KeepAliveWatch``'s)."""
    if transport == "memory":
        client_stream, server_stream = trio.testing.memory_stream_pair()
        serve(server_stream)
        return RawClient(client_stream, version)
    assert transport == "socket", transport
    client_socket, server_socket = trio.socket.socketpair()
    serve(WatchedSocketStream(server_socket))
    return RawClient(trio.SocketStream(client_socket), version)


#: Socket buffers far below what the tests send (the kernel rounds them up a little).
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of ``host`` that was free a moment ago (bound to port 0, then
    released): for a program that cannot be told port 0 (mosquitto, haproxy, a worker
    process). Another process may take it meanwhile; the tests that use it say so."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


SMALL_SOCKET_BUFFER = 4096


def socket_stream_pair(
    *, small_buffers: bool = True
) -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two connected socket streams (a socketpair), by default with small send and
    receive buffers, so that a peer that does not read fills them at once."""
    ends = trio.socket.socketpair()
    if small_buffers:
        for sock in ends:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKET_BUFFER)
    return trio.SocketStream(ends[0]), trio.SocketStream(ends[1])


async def accepted_client(
    broker: Broker, client_id: str, version: ProtocolVersion = V5, **connect: object
) -> RawClient:
    """A RawClient on ``broker``'s first listener that connected as ``client_id``
    (``connect``: more Connect fields) and was accepted."""
    raw = await RawClient.open(broker.port, version)
    connack = await raw.connect(client_id, **connect)
    assert connack.reason_code == 0, connack
    return raw


async def published(raw: RawClient, topic: str, payload: bytes, qos: int, packet_id: int) -> None:
    """Publish and complete the acknowledgement of QoS 1 or 2."""
    await raw.send(Publish(topic=topic, payload=payload, qos=qos, packet_id=packet_id))
    if qos == 1:
        assert await raw.receive() == Puback(packet_id)
    elif qos == 2:
        assert await raw.receive() == Pubrec(packet_id)
        await raw.send(Pubrel(packet_id))
        assert await raw.receive() == Pubcomp(packet_id)


async def deliveries(
    raw: RawClient, count: int, quiet: float = 1.0, wait: float = 20.0
) -> list[Publish]:
    """``count`` PUBLISHes delivered to ``raw`` (each acknowledged as its QoS wants;
    fewer if ``wait`` seconds pass without one), then any more that come before
    ``quiet`` seconds pass without one."""
    got: list[Publish] = []
    while True:
        with trio.move_on_after(wait if len(got) < count else quiet) as waited:
            packet = await raw.receive(wait + quiet + 1)
        if waited.cancelled_caught:
            return got
        if isinstance(packet, Pubrel):
            await raw.send(Pubcomp(packet.packet_id))
            continue
        assert isinstance(packet, Publish), packet
        got.append(packet)
        assert packet.packet_id is not None
        if packet.qos == 1:
            await raw.send(Puback(packet.packet_id))
        elif packet.qos == 2:
            await raw.send(Pubrec(packet.packet_id))


async def read_packets(
    stream: trio.abc.ReceiveStream, reader: PacketReader, count: int
) -> list[Any]:
    """The next ``count`` packets ``reader`` decodes from ``stream`` (fails at EOF)."""
    packets: list[Any] = []
    while len(packets) < count:
        data = await stream.receive_some(65536)
        assert data, f"connection closed after {len(packets)} of {count} packets"
        packets += reader.feed(data)
    return packets


# ------------------------------------------------------------------------ waiting


async def wait_until(
    condition: Callable[[], object], what: str = "true", timeout: float = 5.0
) -> None:
    """Poll ``condition`` (cheap in-process state) until it holds; fail after ``timeout``.

    For broker state that has no event to wait on (counters, sessions going offline).
    """
    with trio.move_on_after(timeout):
        while not condition():  # noqa: ASYNC110 - broker counters have no event to wait on
            await trio.sleep(0.01)
        return
    raise AssertionError(f"still not {what} after {timeout}s")


# --------------------------------------------------------------------- work counts


def lines_executed(call: Callable[[], object]) -> int:
    """How many lines of Python ``call()`` runs, in every frame it enters.

    A count of the work done, for tests of algorithmic bounds ("does not grow with the
    number of subscriptions"): exact and repeatable where a wall clock is neither. It is
    blind to loops that run inside C code (a ``dict`` lookup counts as one line).
    """
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> TraceFunction:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    previous = sys.gettrace()
    # a garbage collection during the call would run other objects' finalizers (left
    # by earlier tests) and count their lines: collect now, and not during the call
    gc.collect()
    gc.disable()
    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(previous)
        gc.enable()
    return count


class LocalOnlyLink:
    """A cluster link that reaches no other node and confirms subscriptions at once.

    Tests subclass it and override the one method they are about.
    """

    def forward(self, message: Message) -> None:
        pass

    def store(self, message: Message, conn: ClientConnection, packet_id: int) -> int:
        raise AssertionError("no QoS 1/2 PUBLISH through this test link")

    def connected(self, client_id: str, will: Message | None, will_delay: int) -> None:
        pass

    def disconnected(self, client_id: str) -> None:
        pass

    def subscribed(
        self, client_id: str, topic_filters: Sequence[str]
    ) -> Callable[[], Awaitable[None]] | None:
        return None


def accept_fails_once(monkeypatch: pytest.MonkeyPatch, error: int) -> list[OSError]:
    """The next accept(2) of any listening socket raises OSError ``error``; the list
    holds that error until it has been raised (then it is empty)."""
    # (accept(2) itself is the C method ``_accept``, which socket.accept and the
    # listener's ListeningSocket.accept both call)
    real_accept = socket.socket._accept  # type: ignore[attr-defined]
    failures = [OSError(error, os.strerror(error))]

    def accept(self: socket.socket) -> tuple[int, Any]:
        if failures:
            raise failures.pop()
        result: tuple[int, Any] = real_accept(self)
        return result

    monkeypatch.setattr(socket.socket, "_accept", accept)
    return failures


def offloaded_hook(
    answer: ReasonCode | None,
) -> tuple[Callable[[PeerInfo, Connect], OffloadedCheck], list[str]]:
    """A connect hook whose decision, ``answer``, comes from work to run elsewhere (as a
    password hash would), and the client ids that work ran for."""
    ran: list[str] = []

    def slow_hook(peer: PeerInfo, connect: Connect) -> OffloadedCheck:
        def work() -> ReasonCode | None:
            ran.append(connect.client_id)
            return answer

        return OffloadedCheck(work)

    return slow_hook, ran
