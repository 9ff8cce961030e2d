"""Drive one MQTTConnection over a trio stream: a reader task, and a writer task while
there is output the reader could not write.

The reader feeds received bytes to the sans-IO state machine under the deadline the
state machine gives (CONNECT timeout before CONNECT, 1.5x keep alive after). A writer
task exists only while the connection has output pending: the state machine's wake-up
(``on_output``) starts one, it writes everything queued in one ``send_all`` (acks and
messages from other clients are batched) until nothing is left, then ends. An idle
connection is one task and no writer: about 2 KiB less per connection than a writer
that sleeps until there is output. Writers start in the nursery the connection's task
runs in (``run_connection``'s ``writers``), not in one of its own, which every idle
connection would keep; the connection stops and waits for its writer before it closes
the stream, so none outlives it. When the state machine wants the connection closed,
the writer flushes what is left, within a bound (which also cuts short a send under way
when the close came), and both tasks end. If that flush wrote a last word (DISCONNECT,
a CONNACK refusal), the connection then lingers (``_linger``): it shuts its write side
and reads what the client still sends, within a bound, before it closes. Closing a
socket with unread input makes the kernel send RST, which can destroy the last packet
in the client's receive buffer, or fail the client's next write, before the client has
read it.

Parking: a connection on a socket (plain TCP, TLS, WebSocket) whose client has been
quiet for a while has no task at all. Its reader parks the socket (``IdlePark``, one task and an
epoll set for all) and its task ends, which takes half of what an idle plain-TCP
connection costs; a new task (``_resume``) picks the connection up where it stopped
when the client sends, its keep alive runs out, or a writer ends it. A park and a
resume cost about as much CPU as a packet, so a client that comes back soon after it
was parked is left a longer quiet spell before the next (``_Output.park_after``):
parking is for clients quiet for tens of seconds (subscribers, keep-alive pings, slow
sensors) and for the first second after CONNECT.

One shortcut (plain TCP, and TLS through our own ``TLSStream``): when no writer is
running, the reader writes the answer to what it just read itself, with one
non-blocking write, and starts a writer only for what the socket did not take at once.
Over TLS the answer is encrypted first (``TLSStream.send_nowait``); the ciphertext the
socket did not take waits in the stream's backlog, which the writer flushes first. A
request/response exchange (PUBLISH -> PUBACK, PINGREQ -> PINGRESP, a client's own
subscription) then costs one pass through Trio's scheduler and no task. The reader
never waits for the socket to become writable: a client may be blocked writing to us
until we read, so the reader must keep reading.
Deliveries get the same shortcut: the connections a reader's step routed messages to are
written by that reader right after its step (``_Deliveries``), not by a writer task each.

Backpressure: after a read whose messages went to a congested connection (one whose
writer has more queued than it has had the time to send), the reader waits until that
connection has caught up before it reads again (``MQTTConnection.held_back``). The
client's unread bytes then back up into its TCP window. The writer reports to the
state machine what the transport took (``bytes_written``) and, through the
``WatchedSocketStream`` under every transport, when the socket is full.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import attrs
import trio

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.mqtt_connection import MQTTConnection, open_connection
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import PeerInfo
from trio_mqtt.server.backpressure import Relief, relief_for
from trio_mqtt.server.idle_park import IdlePark, idle_park_for
from trio_mqtt.server.idle_park import supported as parking_supported
from trio_mqtt.server.keep_alive import Entry as KeepAliveEntry
from trio_mqtt.server.keep_alive import KeepAliveWatch, keep_alive_watch_for
from trio_mqtt.server.offload import run_offloaded
from trio_mqtt.server.prefixed_stream import PrefixedStream, send_eof_beneath_prefix
from trio_mqtt.server.tls_stream import TLSStream
from trio_mqtt.server.watched_stream import WatchedSocketStream, socket_fd
from trio_mqtt.server.websocket import WebSocketStream

log = logging.getLogger("trio_mqtt.server")
_A = TypeVar("_A")

RECEIVE_SIZE = 65536
# How long the final flush (CONNACK refusal, DISCONNECT) may take before we just close.
FINAL_FLUSH_TIMEOUT = 2.0
# After the final flush, how long and how much we still read (and discard) while the
# client takes in our last packet and closes (see _linger): long enough for a client on a
# slow link to read a DISCONNECT, short enough that a client that never stops sending
# holds a closing connection for at most this long.
LINGER_TIMEOUT = 1.0
LINGER_BYTES = 64 * 1024
# How long a client on a socket may send nothing before its reader parks (IdlePark): its
# task ends, and one task waits for every parked socket; an idle connection's memory
# halves. At first, PARK_AFTER. A park and a resume cost about as much CPU as a packet:
# a client that sends again within PARK_WORTH of being parked waits twice as long before
# its next park (up to PARK_AFTER_MAX), one that stayed away longer half as long.
PARK_AFTER = 1.0
PARK_AFTER_MAX = 32.0
PARK_WORTH = 30.0
# Park times are rounded up to a multiple of this: the connections that went quiet within
# one grain park in one pass of the KeepAliveWatch's task, not in one wake-up each.
PARK_GRAIN = 0.25


class _Deliveries:
    """The outputs that a reader's step woke: that reader writes them right after it.

    A PUBLISH read by one connection's reader wakes the connections it is routed to.
    Each wake-up used to start a writer task; now, while some reader is inside its step
    (``steps`` > 0), a plain-TCP output that no writer owns is only noted here, and the
    reader writes each noted output with one non-blocking write once its step is done
    (``write_now``), starting a writer only for what a socket did not take. A message
    then reaches its subscribers in the publisher's reader pass: no task per subscriber
    and no trip through Trio's scheduler (QoS 1 end-to-end latency, fan-out to many
    subscribers). One per core (``_deliveries_for``): the steps of one event loop.
    """

    __slots__ = ("steps", "woken")

    def __init__(self) -> None:
        self.steps = 0
        self.woken: list[_Output] = []

    def write_woken(self) -> None:
        woken, self.woken = self.woken, []
        for output in woken:
            output.write_noted()


_DELIVERIES: weakref.WeakKeyDictionary[BrokerCore, _Deliveries] = weakref.WeakKeyDictionary()


def _deliveries_for(core: BrokerCore) -> _Deliveries:
    deliveries = _DELIVERIES.get(core)
    if deliveries is None:
        deliveries = _DELIVERIES[core] = _Deliveries()
    return deliveries


class _Shared:
    """What every connection of ``core`` that runs in one nursery works with: the core's
    deliveries and relief, the nursery's keep-alive watch and park. Looked up once per
    nursery (``_shared_by``) rather than each once per connection (three weak-mapping
    lookups and four calls, about 4k instructions a connection)."""

    __slots__ = ("core", "deliveries", "park", "relief", "watch")

    def __init__(self, core: BrokerCore, writers: trio.Nursery) -> None:
        # weakly: the value of a weak mapping keyed by the nursery, which the core's
        # connections reference while they are open
        self.core = weakref.ref(core)
        self.deliveries = _deliveries_for(core)
        self.relief = relief_for(core)
        self.watch = keep_alive_watch_for(writers)
        self.park: IdlePark[_Task] | None = None
        if parking_supported:
            self.park = idle_park_for(writers, _resume, _serve_parked)


_SHARED: weakref.WeakKeyDictionary[trio.Nursery, _Shared] = weakref.WeakKeyDictionary()


def _shared_by(core: BrokerCore, writers: trio.Nursery) -> _Shared:
    shared = _SHARED.get(writers)
    if shared is None or shared.core() is not core:  # (one core per nursery but in tests)
        shared = _SHARED[writers] = _Shared(core, writers)
    return shared


class _Output:
    """The write side of one connection, shared by its reader and its writer task.

    ``wakeup()`` (the state machine's ``on_output``) starts a writer task unless one is
    running; the writer sends until nothing is left, then ends. ``write_now()`` is the
    reader's shortcut (see the module docstring); ``writing`` (a writer task exists) and
    ``carry`` (bytes the shortcut could not write, which the writer sends first) keep
    the two from reordering or interleaving bytes. Over TLS the shortcut leaves no
    plaintext carry: what the socket did not take is ciphertext in the ``TLSStream``'s
    backlog, and ``unsent`` counts the bytes of output it holds (reported to the
    connection as written once the writer has flushed them).
    """

    __slots__ = (
        "_conn",
        "_deliveries",
        "_nursery",
        "_reading",
        "_stream",
        "_writer_ended",
        "_writer_scope",
        "born_parked",
        "carry",
        "fd",
        "idle",
        "keep_alive_entry",
        "last_word",
        "noted",
        "park",
        "park_after",
        "park_asked",
        "park_unarmed",
        "parked",
        "parked_at",
        "rang",
        "reader_scope",
        "ring_fd",
        "step_pending",
        "stopped",
        "tls",
        "unsent",
        "writing",
    )

    def __init__(self, stream: trio.abc.Stream, deliveries: _Deliveries) -> None:
        self._stream = stream
        self._deliveries = deliveries
        self.noted = False  # in deliveries.woken: a reader writes it after its step
        self._nursery: trio.Nursery | None = None  # set while writers may start
        self._reading = False  # inside feed_and_answer(): write_now() comes next anyway
        self.fd = socket_fd(stream)  # plain TCP: the reader reads it, write_now() writes
        # TLS on a socket: write_now() encrypts and writes through it (asked only when
        # the stream is not a socket: an ABC's isinstance that fails costs ~2k instructions)
        self.tls: TLSStream | None = None
        if self.fd < 0 and isinstance(stream, TLSStream) and stream.direct:
            self.tls = stream
        self.unsent = 0  # TLS: output bytes still in the TLSStream's backlog
        self.writing = False  # a writer task runs (or is about to): it sends everything
        self.carry = b""
        self.last_word = False  # the writer wrote the packets that came with the close
        # The last writer started: its scope (stop_writer) and its end (writer_ended).
        self._writer_scope: trio.CancelScope | None = None
        self._writer_ended: trio.Event | None = None
        self.reader_scope: trio.CancelScope | None = None  # the reader's current scope
        self.stopped = False  # a writer ended the connection: the reader stops too
        # Keep alive on a socket (server/keep_alive.py): the socket the reader waits for
        # (-1: none, it waits under reader_scope); whether it waits for it now; whether
        # the deadline came first; and what the KeepAliveWatch's last arm() gave back.
        self.ring_fd = self.fd if self.fd >= 0 else _fd_waited_in(stream)
        self.idle = False
        self.rang = False
        self.keep_alive_entry: KeepAliveEntry | None = None
        # Parking (on a socket): where (None: never), after how long a quiet spell, whether
        # the watch asked the reader to park, whether the watch has no entry for the park
        # time (the reader's next arm gives it), whether it has parked (idle stays True)
        # and when
        self.park: IdlePark[_Task] | None = None
        self.park_after = PARK_AFTER
        self.park_asked = False
        self.park_unarmed = True
        self.parked = False
        self.parked_at = 0.0
        # Started parked (start_parked): the park serves the handshake, no task has run
        # yet; and a step the park took that left something to wait for (its task's
        # first job when it resumes)
        self.born_parked = False
        self.step_pending = False

    def open(self, nursery: trio.Nursery, conn: MQTTConnection) -> None:
        """Writers may start now, in ``nursery``, for ``conn``'s output."""
        self._nursery = nursery
        self._conn = conn
        if self.writing:  # woken before: start the writer it asked for
            self.writing = False
            self.wakeup()

    def close(self) -> None:
        """No writer starts any more (the connection is ending)."""
        self._nursery = None

    def _bound_writer(self) -> None:
        """The connection is to close while its writer runs: the writer gets at most
        FINAL_FLUSH_TIMEOUT from now, whatever it is sending. A send under way when the
        close came (to a client that reads nothing) would otherwise hold the connection,
        its reader and its socket for as long as the client does not read."""
        scope = self._writer_scope
        assert scope is not None
        deadline = trio.current_time() + FINAL_FLUSH_TIMEOUT
        scope.deadline = min(scope.deadline, deadline)

    def stop_writer(self) -> None:
        """Cancel the running writer, if any (the connection ends with nothing to say)."""
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    async def writer_ended(self) -> None:
        """Wait until the last writer started has ended (shielded: a writer ends soon
        once cancelled, and a final flush is bounded by FINAL_FLUSH_TIMEOUT)."""
        ended = self._writer_ended
        if ended is not None and not ended.is_set():
            with trio.CancelScope(shield=True):
                await ended.wait()

    def stop_reading(self) -> None:
        """A writer ended the connection (its transport broke, or it wrote the last
        word): the reader, wherever it waits, stops."""
        self.stopped = True
        if self.reader_scope is not None:
            self.reader_scope.cancel()
        elif self.parked:
            self._unpark()
        elif self.idle:
            trio.lowlevel.notify_closing(self.ring_fd)  # its wait raises ClosedResourceError

    @contextlib.contextmanager
    def reader_waiting(self, deadline: float = math.inf) -> Iterator[trio.CancelScope]:
        """A wait of the reader's other than for its socket: under a scope that ends it
        at ``deadline`` and that ``stop_reading`` cancels."""
        with trio.move_on_at(deadline) as scope:
            self.reader_scope = scope
            try:
                yield scope
            finally:
                self.reader_scope = None

    def deadline(self) -> float:
        """When the reader waiting for its socket must be rung (the ``KeepAliveWatch``
        asks): the connection's own deadline, or sooner, to park it once its client has
        been quiet for ``park_after``. Not while a writer runs: ringing wakes every wait on
        the socket (the writer's would raise ClosedResourceError), so it asks again later.
        """
        conn = self._conn
        deadline = conn.next_deadline()
        if self.park is None or self.parked:
            return deadline
        park_at = _park_time(conn.quiet_deadline(self.park_after))
        if self.writing:
            park_at = max(park_at, _park_time(conn.core.now() + self.park_after))
        return min(park_at, deadline)

    def ring(self) -> None:
        """The ``deadline()`` came while the reader waited for its socket: wake it (its
        wait raises ``ClosedResourceError``; ``rang`` says the connection's deadline came,
        ``park_asked`` that it is to park)."""
        conn = self._conn
        self.park_unarmed = True  # (the watch let go of the entry)
        if self.parked:
            self.rang = True  # (parked: only the connection's own deadline is watched)
            self._unpark()
            return
        if conn.next_deadline() <= conn.core.now():
            self.rang = True
        else:
            self.park_asked = True
        trio.lowlevel.notify_closing(self.ring_fd)

    def arm(self, watch: KeepAliveWatch) -> None:
        """The reader is about to wait for its socket: the watch has its deadline and,
        once per entry, the time to ask whether to park if that comes first (an entry
        due earlier than needed is harmless: the watch asks ``deadline()`` again).

        That time is ``park_after`` from now, not from the client's last complete
        packet: a client whose large packet trickles in is not quiet, and would
        otherwise be parked after every read once its last whole packet is that old.
        """
        conn = self._conn
        deadline = conn.next_deadline()
        if (
            self.park_unarmed
            and self.park is not None
            and conn.quiet_deadline(0.0) != math.inf  # connected, nothing pending: may park
        ):
            park_at = _park_time(conn.core.now() + self.park_after)
            if park_at < deadline:
                deadline = park_at
                self.park_unarmed = False
        self.keep_alive_entry = watch.arm(self.keep_alive_entry, self, deadline)
        self.idle = True

    def park_now(self, watch: KeepAliveWatch, task: _Task) -> bool:
        """The reader, rung to park (``park_asked``), parks unless something needs it
        now (a writer waits on its socket, the connection is closing, or its deadline
        came): then the watch keeps only the connection's own deadline and ``task``
        waits in the park. False: the reader goes on."""
        self.park_asked = False
        park = self.park
        if park is None or self.writing or self.stopped or self.rang or self._conn.wants_close:
            return False
        self.park_in(park, watch, task)
        return True

    def park_in(self, park: IdlePark[_Task], watch: KeepAliveWatch, task: _Task) -> None:
        """Park (no reader waits): the watch keeps only the connection's own deadline."""
        conn = self._conn
        self.keep_alive_entry = watch.arm(self.keep_alive_entry, self, conn.next_deadline())
        self.parked = self.idle = True
        self.parked_at = conn.core.now()
        park.park(self.ring_fd, task)

    def resumed(self) -> None:
        """The parked reader has a task again. A client that sent something (or closed)
        soon after its park waits twice as long before the next, one that stayed away
        longer half as long (PARK_WORTH). The end of a park it was born in says nothing
        about how the client comes back: no change then."""
        self.parked = self.idle = self.park_asked = False
        self.park_unarmed = True  # (its entry has the keep alive's deadline)
        if self.born_parked:
            self.born_parked = False
        elif not (self.rang or self.stopped):  # its client sent something, or closed
            if self._conn.core.now() - self.parked_at < PARK_WORTH:
                self.park_after = min(self.park_after * 2, PARK_AFTER_MAX)
            else:
                self.park_after = max(self.park_after / 2, PARK_AFTER)

    def _unpark(self) -> None:
        park = self.park
        assert park is not None
        park.unpark(self.ring_fd)

    def wakeup(self) -> None:
        # called once per message routed to this connection: keep it cheap
        if self.writing or self._reading or self.noted:
            if self.writing and self._writer_scope is not None and self._conn.wants_close:
                self._bound_writer()
            return
        deliveries = self._deliveries
        if (
            deliveries.steps
            and (self.fd >= 0 or self.tls is not None)
            and not self.carry
            and self._nursery is not None
        ):
            self.noted = True  # the reader whose step this is writes it (_Deliveries)
            deliveries.woken.append(self)
            return
        self.writing = True
        nursery = self._nursery
        if nursery is not None:
            scope = self._writer_scope = trio.CancelScope()
            ended = self._writer_ended = trio.Event()
            nursery.start_soon(_write_loop, self._stream, self._conn, self, scope, ended)

    def feed_and_answer(self, conn: MQTTConnection, data: bytes | bytearray) -> None:
        """The reader's step: hand ``data`` to ``conn``, then ``write_now()`` its answer.

        While ``conn`` handles the data, its wake-ups are held back: the reader writes
        the answer right after (or starts a writer if it cannot), and a writer started
        for it would only find nothing left to send.
        """
        self._step_and_answer(conn, conn.receive_data, data)

    def check_done_and_answer(self, conn: MQTTConnection, code: ReasonCode | None) -> None:
        """Like ``feed_and_answer``, for the answer of an offloaded check."""
        self._step_and_answer(conn, conn.check_done, code)

    def _step_and_answer(self, conn: MQTTConnection, step: Callable[[_A], None], arg: _A) -> None:
        deliveries = self._deliveries
        self._reading = True
        deliveries.steps += 1
        try:
            step(arg)
        finally:
            self._reading = False
            deliveries.steps -= 1
        # the subscribers first, then the publisher's answer (its PUBACK): a message
        # reaches them one write sooner, as mosquitto orders it
        if deliveries.woken and not deliveries.steps:
            deliveries.write_woken()
        self.write_now(conn)

    def write_noted(self) -> None:
        """Write what a wake-up noted in ``_Deliveries`` instead of starting a writer."""
        self.noted = False
        conn = self._conn
        # Not closed since it was noted: close() runs before the stream is closed, and
        # nothing else ran in between, so the descriptor is still this connection's.
        if self._nursery is not None and conn is not None:
            self.write_now(conn)

    def take(self, conn: MQTTConnection) -> bytes:
        """Everything to write next, in order: the carry, then the connection's output."""
        data = conn.data_to_send()
        if self.carry:
            data, self.carry = self.carry + data, b""
        return data

    def write_now(self, conn: MQTTConnection) -> None:
        """Write the connection's output without blocking, or leave it to a writer.

        A connection about to close is always left to the writer: it owns the last flush.
        """
        if (self.fd < 0 and self.tls is None) or self.writing or self.carry or conn.wants_close:
            self.wakeup()
            return
        data = conn.data_to_send()
        if not data:
            return
        tls = self.tls
        if tls is not None:
            if tls.send_nowait(data):
                conn.bytes_written(len(data))
            else:
                self.unsent = len(data)  # in the backlog: the writer flushes it first
                self.wakeup()
            return
        try:
            sent = os.write(self.fd, data)
        except OSError:
            # would block, or the connection broke: the writer's send_all waits for
            # room, or meets the same error and ends the connection
            sent = 0
        conn.bytes_written(sent)
        if sent < len(data):
            self.carry = data[sent:]
            self.wakeup()


def _park_time(quiet: float) -> float:
    """``quiet`` (when a client will have been quiet long enough to park) on the grain."""
    if quiet == math.inf:
        return quiet
    return math.ceil(quiet / PARK_GRAIN) * PARK_GRAIN


def _fd_waited_in(stream: trio.abc.Stream) -> int:
    """The socket a TLS or WebSocket stream's ``receive_some`` waits for in no cancel
    scope of its own, so that the keep-alive watch can ring its reader; -1: none."""
    if isinstance(stream, TLSStream):
        return stream.fd  # (-1 without a socket of its own)
    if isinstance(stream, WebSocketStream):
        return stream.wait_fd
    return -1


def _watched_socket(stream: trio.abc.Stream) -> WatchedSocketStream | None:
    """The ``WatchedSocketStream`` at the bottom of ``stream``'s layers, if there is one."""
    layer: object = stream
    while layer is not None:
        if isinstance(layer, WatchedSocketStream):
            return layer
        layer = getattr(layer, "transport_stream", None)  # TLS, WebSocket, PROXY prefix
    return None


@attrs.define(kw_only=True, weakref_slot=False)
class _Task:
    """What a connection's task works with: kept while the connection lives, so that a
    parked connection (no task) gets a task again (``_resume``) where it left off."""

    stream: trio.abc.Stream
    conn: MQTTConnection
    output: _Output
    relief: Relief
    watch: KeepAliveWatch
    watched: WatchedSocketStream | None
    on_closed: Callable[[], None] | None


async def run_connection(
    stream: trio.abc.Stream,
    core: BrokerCore,
    peer: PeerInfo,
    writers: trio.Nursery,
    on_closed: Callable[[], None] | None = None,
) -> None:
    """Serve MQTT on ``stream`` until either side closes it. Always closes ``stream``,
    then calls ``on_closed``.

    ``core`` must run on trio's clock: the connection's deadlines are in its time.
    Writer tasks start in ``writers``, the nursery this task runs in (the listener's):
    an idle connection has no nursery of its own (about 1 KiB, and a tenth of a short
    connection's CPU). The connection still outlives its writers: it waits for the last
    one before it closes ``stream``. A connection on a socket whose client is quiet parks
    (``IdlePark``): this returns, and the connection, its closing and ``on_closed`` go
    on in later tasks of ``writers``.
    """
    try:
        task = _new_task(stream, core, peer, writers, on_closed)
    except BaseException:
        await trio.aclose_forcefully(stream)
        if on_closed is not None:
            on_closed()
        raise
    # (_resume's body too, written out rather than called: a call is one more frame for
    # every connection that waits with a task)
    parked = flush = False
    try:
        task.output.open(writers, task.conn)
        parked = await _read_loop(task, resumed=False)
        flush = task.conn.wants_close
    finally:
        if not parked:
            await _close(task, flush)


def _new_task(
    stream: trio.abc.Stream,
    core: BrokerCore,
    peer: PeerInfo,
    writers: trio.Nursery,
    on_closed: Callable[[], None] | None,
) -> _Task:
    """A new connection on ``stream``: its state machine, known to ``core``, and what
    its task (or the park) works with."""
    shared = _shared_by(core, writers)
    output = _Output(stream, shared.deliveries)
    conn = open_connection(core, peer, output.wakeup)
    watched = _watched_socket(stream)
    if watched is not None:
        watched.on_blocked = conn.transport_blocked
    if output.ring_fd >= 0:  # plain TCP, TLS, WebSocket on a socket (if it can park)
        output.park = shared.park
    return _Task(
        stream=stream,
        conn=conn,
        output=output,
        relief=shared.relief,
        watch=shared.watch,
        watched=watched,
        on_closed=on_closed,
    )


def start_parked(
    stream: WatchedSocketStream,
    core: BrokerCore,
    peer: PeerInfo,
    writers: trio.Nursery,
    on_closed: Callable[[], None] | None = None,
    *,
    received: bytes = b"",
    first_steps: list[Callable[[], None]] | None = None,
) -> None:
    """Serve MQTT on a plain-TCP ``stream`` just accepted, as ``run_connection`` does,
    but without a task to begin with: the connection starts parked. ``received``: its
    first bytes, read already (with a PROXY header), handled first: here, or by the
    caller if it passes ``first_steps``, where that step is left for it to take (the
    accept loop takes those of a batch of connections together, after the batch).

    Its handshake is served by the park (``_serve_parked``): the CONNECT read and
    answered in place, and the connection stays parked, as a connection whose client
    has gone quiet does, until its client sends again (or its keep alive runs out, or
    it needs a task sooner: a slow check, a CONNACK the socket did not take). A burst
    of new connections (clients coming back after a load balancer's failover) then
    costs no task each, only the socket reads and writes and the MQTT work: with the
    accept loop's batches, about 40 % less CPU per connection (benchmarks.trio_floor).
    Only where sockets can park (``idle_park.supported``).
    """
    try:
        task = _new_task(stream, core, peer, writers, on_closed)
    except BaseException:
        stream.socket.close()
        if on_closed is not None:
            on_closed()
        raise
    output = task.output
    assert output.park is not None and output.fd >= 0  # (a socket: where parking works)
    output.open(writers, task.conn)
    output.born_parked = True
    if not received:
        output.park_in(output.park, task.watch, task)
    elif first_steps is None:
        _first_step(task, received, writers)
    else:
        first_steps.append(functools.partial(_first_step, task, received, writers))


def _first_step(task: _Task, received: bytes, writers: trio.Nursery) -> None:
    """A connection started parked handles the bytes read with its PROXY header: it
    parks, or its task takes over if that left something to wait for."""
    output = task.output
    if _step_in_park(task, received):
        assert output.park is not None  # (started parked: it has one)
        output.park_in(output.park, task.watch, task)
    else:
        writers.start_soon(_resume, task)


def _serve_parked(task: _Task) -> bool:
    """The park's ``serve``: ``task``'s parked socket is readable. A connection born
    parked (``start_parked``) that waits for its CONNECT is read and answered here, in
    the park's task. True: it stays parked (its deadline now the keep alive's, once
    connected); False: its task takes over (``_resume``), and with it whatever the
    step left to wait for."""
    output, conn = task.output, task.conn
    if not output.born_parked or not conn.awaits_connect():
        return False
    try:
        data = os.read(output.fd, RECEIVE_SIZE)
    except BlockingIOError:
        return True  # woken for nothing
    except OSError:
        return False  # broken: its task ends the connection (its next read is EOF)
    if not data:
        return False  # EOF: its task reads it again (EOF stays) and closes
    return _step_in_park(task, data)


def _step_in_park(task: _Task, data: bytes) -> bool:
    """Feed ``data`` to ``task``'s connection, which has no task: True if that left
    nothing to wait for (its deadline armed again), else its task is to take over."""
    output, conn = task.output, task.conn
    output.feed_and_answer(conn, data)
    if (
        conn.pending_check is None
        and not conn.wants_close
        and not output.writing
        and not conn.held_back()
        and conn.publish_pause() <= 0
    ):
        output.keep_alive_entry = task.watch.arm(
            output.keep_alive_entry, output, conn.next_deadline()
        )
        return True
    output.step_pending = True
    return False


async def _resume(task: _Task) -> None:
    """A parked connection's task again (``IdlePark``): its socket is readable, its keep
    alive ran out, a writer ended the connection, or a step the park took in its place
    left something to wait for."""
    output = task.output
    output.resumed()
    stepped, output.step_pending = output.step_pending, False
    parked = flush = False
    try:
        parked = await _read_loop(task, resumed=not stepped, stepped=stepped)
        flush = task.conn.wants_close
    finally:
        if not parked:
            await _close(task, flush)


async def _close(task: _Task, flush: bool) -> None:
    """End the connection: its last packets flushed by a writer (``flush``), or its
    writer stopped; then its stream closed (after a linger if a last word went out)."""
    conn, output = task.conn, task.output
    try:
        try:
            if flush:
                output.wakeup()  # a writer flushes the last packets, then ends
        finally:
            task.watch.disarm(output.keep_alive_entry)
            output.close()  # no writer starts any more
            if not flush:
                output.stop_writer()  # EOF, broken transport or cancelled: nothing to say
            await output.writer_ended()
    finally:
        try:
            conn.connection_lost()
            if output.last_word:
                await _linger(task.stream)
        finally:
            if output.fd >= 0 and task.watched is not None:
                # plain TCP: every layer's aclose() only closes the socket, so close it
                # here without aclose_forcefully's cancelled checkpoint (a Cancelled
                # raised and caught: a tenth of a short-lived connection's CPU)
                task.watched.socket.close()
            else:
                await trio.aclose_forcefully(task.stream)
            if task.on_closed is not None:
                task.on_closed()


async def _linger(stream: trio.abc.Stream) -> None:
    """Let the last packet arrive: send EOF, read and discard until the client's EOF.

    Bounded by LINGER_TIMEOUT and LINGER_BYTES. Over TLS the EOF is our close_notify
    (``TLSStream.send_eof``), then the socket's FIN. A stream that cannot half-close
    (WebSocket) still drains; the client reads our last packet before it sees the close.
    """
    with trio.move_on_after(LINGER_TIMEOUT):
        try:
            await send_eof_beneath_prefix(stream)
            drained = 0
            while drained < LINGER_BYTES:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return  # the client closed too: nothing unread, no RST
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # gone already: nothing more to protect


async def _read_loop(task: _Task, resumed: bool, stepped: bool = False) -> bool:
    # Returns True when the reader parked (output.park): the connection is not over.
    # ``resumed``: the task was started for what the parked socket has (no need to yield
    # after the first read: it has just been scheduled). ``stepped``: the park has fed
    # the connection its last read (_serve_parked): what that step left comes first.
    # The connection says when it needs the time (next_deadline: the CONNECT timeout,
    # then the keep-alive timeout), and decides what it means (handle_timer). On a
    # socket (plain TCP; TLS, WebSocket on one) the reader waits for its client in no cancel
    # scope of its own: it arms the broker's KeepAliveWatch, which rings it (the wait
    # raises ClosedResourceError, ``output.rang`` says why) if the deadline comes
    # first. A scope per idle connection cost it 0.8 KiB and a short one a tenth of its
    # CPU. Other streams (memory streams in tests) wait under a scope per read.
    stream, conn, output, watch = task.stream, task.conn, task.output, task.watch
    fd = output.fd
    ring_fd = output.ring_fd
    # asked once: PrefixedStream is a trio.abc.Stream, whose isinstance goes through
    # ABCMeta's Python-level __instancecheck__ (about 1 % of a QoS 1 round trip per read);
    # and once drained, a prefix is not asked again (it never fills up again)
    prefixed = stream if isinstance(stream, PrefixedStream) and stream.prefix_pending else None
    drained = False  # the last socket read left the socket empty (as far as we know)
    tls = output.tls  # TLS on a socket: read as plain TCP is once no PROXY leftover is
    tls_direct = False  # pending (then tls_direct, for good)
    while not conn.wants_close and not output.stopped:
        if stepped:  # what the last step left: slow checks, subscribers to catch up
            stepped = False
            while (pending := conn.pending_check) is not None and not conn.wants_close:
                # e.g. a password hash: in a worker thread, while the loop serves the
                # rest; or a SUBACK held until the cluster's new routes are in place
                # (which does not count towards the keep alive: next_deadline says so).
                # What it hands back may hold the next one (CONNECT, then SUBSCRIBE).
                with output.reader_waiting(conn.next_deadline()) as waited:
                    code = await run_offloaded(pending.check)
                if waited.cancelled_caught:
                    output.rang = not output.stopped
                    break
                output.check_done_and_answer(conn, code)
            if output.rang or conn.wants_close:
                continue
            if conn.held_back():
                # Read no more until the subscribers this read went to have caught up.
                # The connection does not count the wait towards its keep alive.
                with output.reader_waiting() as waited:
                    await task.relief.wait_while(conn.held_back)
                if waited.cancelled_caught:
                    return False  # stop_reading
            pause = conn.publish_pause()
            if pause > 0 and not conn.wants_close:
                # over its publish budget: the client's bytes wait in its TCP window (not
                # counted towards the keep alive either)
                with output.reader_waiting():
                    await trio.sleep(pause)
            continue
        if output.rang:  # the deadline came (after the bytes of the last read, if any)
            output.rang = False
            conn.handle_timer()  # closes, or a packet came in time
            output.wakeup()
            continue
        # The next bytes from the client, b"" at EOF; None if the deadline came first.
        data: bytes | bytearray | None = None
        try:
            if prefixed is not None:
                data = await prefixed.receive_some(RECEIVE_SIZE)  # in memory: no wait
                # what came with a PROXY header: most likely all the socket had then
                drained = True
                if not prefixed.prefix_pending:
                    prefixed = None
            elif fd >= 0:
                # Plain TCP: the socket read here, as trio's SocketStream would, without
                # its layers of coroutines: an idle connection waits in three frames of
                # ours (the listener's _serve_connection, run_connection, this one).
                # Written out, not called: a call is one more frame (~0.24 KiB) for
                # every idle connection.
                # A read that took less than the socket could give left it empty,
                # most likely: then wait first, rather than read once more for EAGAIN
                # (a system call and an exception per packet of request/response
                # traffic); bytes that came meanwhile make the wait end at once. The
                # wait is a cancel point; a read without one has a checkpoint of its own.
                if drained:
                    data = None
                else:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    try:
                        data = os.read(fd, RECEIVE_SIZE)
                    except BlockingIOError:
                        data = None  # (wait outside the handler: it would keep the error)
                if data is None:
                    output.arm(watch)
                    try:
                        while data is None:
                            await trio.lowlevel.wait_readable(fd)
                            try:
                                data = os.read(fd, RECEIVE_SIZE)
                            except BlockingIOError:
                                continue  # woken, yet nothing to read after all: wait again
                    finally:
                        output.idle = False
                elif resumed:
                    resumed = False
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                drained = len(data) < RECEIVE_SIZE
            elif tls is not None and (tls_direct or (tls_direct := tls.reads_socket())):
                # TLS on a socket, no PROXY leftover pending: as plain TCP above, the
                # TLSStream decrypting (and reading the socket when it may have more),
                # without its receive_some's coroutine frames to resume per read
                if tls.wait_first and not resumed:
                    data = None
                else:  # (resumed: the park saw the socket readable)
                    await trio.lowlevel.checkpoint_if_cancelled()
                    data = tls.receive_nowait(RECEIVE_SIZE, socket_ready=resumed)
                if data is None:
                    output.arm(watch)
                    try:
                        while data is None:
                            await trio.lowlevel.wait_readable(ring_fd)
                            data = tls.receive_nowait(RECEIVE_SIZE, socket_ready=True)
                    finally:
                        output.idle = False
                elif resumed:
                    resumed = False
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()
            elif ring_fd >= 0:
                # TLS or WebSocket on a socket: TLSStream, or the socket stream under
                # the WebSocketStream, waits in wait_readable(ring_fd) as well
                output.arm(watch)
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                finally:
                    output.idle = False
            else:
                with output.reader_waiting(conn.next_deadline()) as waited:
                    data = await stream.receive_some(RECEIVE_SIZE)
                output.rang = waited.cancelled_caught and not output.stopped
        except trio.ClosedResourceError:
            if output.park_asked:
                if output.park_now(watch, task):
                    return True  # quiet for park_after: the park watches the socket
            elif not output.rang:
                return False  # stopped (stop_reading), or closed under us
            drained = False  # (rung before it read what woke it, if anything did)
        except (trio.BrokenResourceError, OSError):
            return False  # (OSError: the socket broke under os.read)
        if data is None:
            continue  # rang: the top of the loop asks the connection
        if not data:
            return False  # EOF without DISCONNECT: an abnormal close (will is published)
        output.feed_and_answer(conn, data)
        stepped = True
    return False


async def _write_loop(
    stream: trio.abc.Stream,
    conn: MQTTConnection,
    output: _Output,
    scope: trio.CancelScope,
    ended: trio.Event,
) -> None:
    """Send the connection's output until none is left, then end (``output.wakeup``
    starts the next writer). If the connection is to close, flush the last packets and
    end the connection. The connection cancels ``scope`` to stop this writer and waits
    for ``ended``."""
    done = True  # the connection: unless the writer just ran out of things to send
    try:
        with scope:
            while True:
                data = output.take(conn)
                # output.unsent: the TLS shortcut's leftover, which send_all flushes first
                if conn.wants_close:
                    if data or output.unsent:
                        with trio.move_on_after(FINAL_FLUSH_TIMEOUT) as flush:
                            await stream.send_all(data)
                        # a last word (DISCONNECT, a refusal) was written: let it arrive
                        output.last_word = not flush.cancelled_caught
                    return
                if not data and not output.unsent:
                    done = False
                    output.writing = False
                    return
                await stream.send_all(data)
                conn.bytes_written(len(data) + output.unsent)
                output.unsent = 0
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        if done:
            # Writer done means the connection is done: stop the reader too.
            output.stop_reading()
        ended.set()
