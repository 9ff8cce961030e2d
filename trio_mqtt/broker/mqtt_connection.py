"""MQTTConnection: the sans-IO state machine of one client connection.

Like h11's ``Connection``: the server layer feeds it the bytes it read
(``receive_data``), asks it for the bytes to write (``data_to_send``), and tells it
when the transport went away (``connection_lost``). It never touches a socket, and its
time is the broker core's clock (which the server layer runs on trio's). Like aioquic's
``get_timer()``/``handle_timer()``, it says when it next needs the time
(``next_deadline``: the CONNECT timeout, then the keep-alive timeout) and the server
calls ``handle_timer`` once that time has come. ``on_output`` is the one callback into
the I/O layer: "there is something new to send" (for example a message published by
another client).

Flow control: the server layer also reports what the transport did with the bytes it
was given (``bytes_written``, ``transport_blocked``). From that the connection knows
whether it is *congested*: more than ``CONGESTION_HIGH`` bytes queued that its writer
could send right now but has not had the time to. Publishers whose messages went to a
congested connection are ``held_back()`` (the server stops reading from them) until it
has caught up. A client whose socket is full but still takes bytes fast
(``FAST_READER_RATE``) counts like a writer that is behind. A client that reads slowly
or not at all (its socket is full), or does not acknowledge (its Receive Maximum is
reached), is never congested: it holds nobody back, and only its own queue budget
(``Session``) limits what waits for it.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import NoReturn

import attrs

from trio_mqtt.broker.connection_view import (
    CONGESTION_HIGH,
    CONGESTION_LOW,
    MAX_IN_FLIGHT,
    STORE_WINDOW,
    STORE_WINDOW_BYTES,
    ClientConnection,
    CloseReason,
)
from trio_mqtt.broker.core import (
    Accepted,
    AuthDecision,
    BrokerCore,
    Challenge,
    ConnectPlan,
    PendingConnect,
    PendingSubscribe,
    Reauthenticated,
    ReauthFailed,
    Refused,
)
from trio_mqtt.broker.enhanced_auth import AuthExchange
from trio_mqtt.broker.limits import PublishBudget
from trio_mqtt.broker.packet_log import log_received, log_sent
from trio_mqtt.broker.sessions import OutboundState, QueuedMessage, Session
from trio_mqtt.broker.stats import DROP_TOO_LARGE
from trio_mqtt.errors import RemoteProtocolError
from trio_mqtt.mqtt.codec import (
    MAX_PACKET_SIZE,
    PacketReader,
    UnsupportedProtocolVersion,
    append_plain_publish,
    encode,
    encode_publish,
)
from trio_mqtt.mqtt.packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
    Will,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.mqtt.topics import validate_topic_name
from trio_mqtt.peer import PeerInfo

log = logging.getLogger("trio_mqtt.connection")

# Upper bound of one data_to_send() batch; keeps a writer's buffer bounded.
MAX_BATCH_BYTES = 256 * 1024
# A client whose socket is full but takes at least FAST_READER_RATE bytes a second reads,
# only not as fast as messages come for it: once half of its budget waits for it, it
# holds its publishers back (update_congestion) instead of counting as slow. Faster than
# a 100 Mbit/s link carries, so a client behind one (or anything slower) never slows
# publishers down. The rate is measured over READ_RATE_SAMPLE bytes from the moment the
# socket first refused bytes; a write of such a client that its socket has not taken
# FAST_READER_STALL seconds later means it stopped reading (a batch is at most about
# 512 KiB, which a fast reader takes in a few tens of milliseconds, however the kernel
# wakes the writer).
FAST_READER_RATE = 16 * 1024 * 1024
READ_RATE_SAMPLE = 1024 * 1024
FAST_READER_STALL = 0.25
# Topics whose read access one connection remembers (then it starts again).
READ_CACHE_SIZE = 4096


class ConnectionState(enum.Enum):
    AWAIT_CONNECT = "await-connect"
    AUTHENTICATING = "authenticating"  # CONNECT received, AUTH exchange under way (5.0)
    CHECKING = "checking"  # CONNECT received, a slow check (password hash) under way
    CONNECTED = "connected"
    CLOSED = "closed"


# The members the per-packet paths compare with, as module constants: on Python 3.11 a
# member read from its enum class goes through the hook of EnumType's __getattr__
# (about a fifth of a microsecond each, several times a packet).
_V5 = ProtocolVersion.V5
_AWAIT_CONNECT = ConnectionState.AWAIT_CONNECT
_AUTHENTICATING = ConnectionState.AUTHENTICATING
_CONNECTED = ConnectionState.CONNECTED
_CLOSED = ConnectionState.CLOSED
_AWAIT_PUBACK = OutboundState.AWAIT_PUBACK


@attrs.define(eq=False)
class MQTTConnection:
    core: BrokerCore
    peer: PeerInfo
    on_output: Callable[[], None]
    reader: PacketReader
    state: ConnectionState = ConnectionState.AWAIT_CONNECT
    session: Session | None = None
    version: ProtocolVersion = ProtocolVersion.V311
    client_id: str = ""
    username: str | None = None
    keep_alive: int = 0
    will: Will | None = None
    # limits the client asked for (5.0)
    client_receive_maximum: int = MAX_IN_FLIGHT
    # none given: the protocol's own limit (5.0 section 3.1.2.11.4)
    client_max_packet_size: int = MAX_PACKET_SIZE
    # Topic Alias Maximum from the client's CONNECT: how many aliases we may use (5.0)
    client_topic_alias_maximum: int = 0
    # what our CONNACK said (the config then; a reload does not change it for this one)
    receive_maximum: int = 0
    topic_alias_maximum: int = 0
    retain_available: bool = True
    # topic aliases of this network connection: the client's (alias -> topic) and ours
    inbound_topic_aliases: dict[int, str] = attrs.Factory(dict)
    outbound_topic_aliases: dict[str, int] = attrs.Factory(dict)
    _proposed_alias: tuple[str, int] | None = None  # (topic, alias) not yet written
    # enhanced authentication (5.0): the exchange under way, what CONNECT settled before
    # it, and the CONNECT that authenticated (re-authentication uses its method)
    auth_exchange: AuthExchange | None = None
    auth_plan: ConnectPlan | None = None
    auth_connect: Connect | None = None
    # when the timer of next_deadline() started: the transport ready (the CONNECT timeout
    # counts from there), then the last complete Control Packet (keep alive) [MQTT-3.1.2-24]
    _timer_start: float = attrs.field(init=False)
    _held_since: float = 0.0  # when held_back() began to hold this client back
    close_reason: CloseReason | None = None
    close_detail: str = ""
    #: True once the connection must be closed after ``data_to_send()`` is flushed (set
    #: with ``close_reason``; an attribute, not a property: the server layer asks about
    #: ten times per QoS 1 round trip)
    wants_close: bool = attrs.field(default=False, init=False)
    # flow control (module docstring): bytes handed to the server layer by
    # data_to_send() and not yet reported written; whether the transport is refusing
    # bytes; whether QoS 1/2 messages wait for the client's Receive Maximum
    in_transit: int = 0
    congested: bool = False
    # the server layer was told (wake) about queued messages it has not taken yet
    woken: bool = False
    _transport_blocked: bool = False
    _window_full: bool = False
    # how fast its socket takes bytes while it is behind (FAST_READER_RATE): when the
    # current sample began (None: not behind) and the bytes written since
    _fast_reader: bool = False
    _sample_start: float | None = None
    _sample_bytes: int = 0
    # congested connections this one published to in its last read (held_back())
    _held_back_by: set[ClientConnection] | None = None
    # sizes of its QoS 1/2 messages a cluster is storing, oldest first (the answers come
    # in order), and their sum; when the store window held it back (None: it does not).
    # Made on first use: an empty deque is 0.75 KiB, and only a cluster's clients need it
    _storing: deque[int] | None = None
    _storing_bytes: int = 0
    unanswered_qos1: int = 0  # (ClientConnection.unanswered_qos1)
    _store_held_since: float | None = None
    # what was already logged about this connection (log once, not per packet)
    _logged: frozenset[str] = frozenset()  # replaced, not grown: most stay empty
    # a CONNECT waiting for an offloaded check, or a SUBACK waiting for the cluster, and
    # the packets that came after it (3.1.1 allows a client to send more before CONNACK):
    # the server layer awaits the check, reading nothing more meanwhile; the packets are
    # handled once it is done (check_done)
    pending_check: PendingConnect | PendingSubscribe | None = None
    _held_packets: tuple[Packet, ...] = ()
    # read access per topic (may_read), valid while core.auth_epoch is _read_epoch; made
    # on first use (an idle connection costs no empty dict)
    _read_cache: dict[str, bool] | None = None
    _read_epoch: int = -1
    _out: bytearray = attrs.Factory(bytearray)
    # max_publish_rate / max_publish_bytes_rate for this client; None: no limit
    _publish_budget: PublishBudget | None = None
    # whether to log every packet (packet_log): DEBUG enabled on this module's logger
    # when the connection opened. Read once per read and per write batch, never per
    # packet: with DEBUG off, a plain attribute test is all the packet log costs.
    _log_packets: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        now = self._timer_start = self.core.now()
        self._log_packets = log.isEnabledFor(logging.DEBUG)
        config = self.core.config
        if config.max_publish_rate or config.max_publish_bytes_rate:
            self._publish_budget = PublishBudget.create(
                config.max_publish_rate, config.max_publish_bytes_rate, now
            )

    # ------------------------------------------------------------------ I/O side API

    def next_deadline(self) -> float:
        """When the server layer must call ``handle_timer`` (core clock); inf for never.

        Before CONNACK: ``connect_timeout`` after the transport was ready, however the
        CONNECT trickles in. Once connected: 1.5 times the keep alive after the last
        complete Control Packet (a packet sent byte by byte does not keep it alive).
        """
        state = self.state
        if state is _CONNECTED:
            keep_alive = self.keep_alive
            if keep_alive and self.pending_check is None:
                return self._timer_start + keep_alive * 1.5
            return math.inf  # (a held SUBACK: the wait is the broker's, not the client's)
        if state is _CLOSED:
            return math.inf
        return self._timer_start + self.core.config.connect_timeout

    def awaits_connect(self) -> bool:
        """True until a CONNECT has been read: the server layer serves such a connection's
        first bytes without a task of its own (``server/connection.py``, start_parked)."""
        return self.state is _AWAIT_CONNECT

    def quiet_deadline(self, quiet: float) -> float:
        """When the client will have sent no complete packet for ``quiet`` seconds (core
        clock), if nothing happens meanwhile; inf unless connected with nothing pending.

        The server layer parks the reader of a connection that is this quiet (see
        ``server/idle_park.py``); it changes nothing here.
        """
        if self.state is _CONNECTED and self.pending_check is None:
            return self._timer_start + quiet
        return math.inf

    def handle_timer(self) -> None:
        """The time of ``next_deadline`` may have come: close the connection if it has."""
        if self.close_reason is not None or self.core.now() < self.next_deadline():
            return  # closing anyway, or a packet came meanwhile: ask next_deadline again
        match self.state:
            case ConnectionState.AWAIT_CONNECT:
                self._close(CloseReason.PROTOCOL_ERROR, "no CONNECT within connect_timeout")
            case ConnectionState.AUTHENTICATING:
                self._close(CloseReason.PROTOCOL_ERROR, "authentication exchange timed out")
            case ConnectionState.CHECKING:
                self._close(CloseReason.PROTOCOL_ERROR, "CONNECT check did not end in time")
            case _:
                self._send_disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)
                self._close(
                    CloseReason.KEEPALIVE_TIMEOUT, f"no packet for {self.keep_alive * 1.5:g}s"
                )

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Handle bytes read from the transport. Never raises for bad input."""
        if self.wants_close:
            return
        # the set the core adds congested recipients to while this read is handled
        hits = self.core.congestion_hits
        if hits:
            hits.clear()  # routed by someone else (a will, $SYS): not this client's doing
        self.core.stats.bytes_received += len(data)
        try:
            packets = self.reader.feed(data)
        except UnsupportedProtocolVersion as exc:
            self._refuse_unsupported_version(exc)
            return
        except RemoteProtocolError as exc:
            self._protocol_error(exc.reason_code, str(exc))
            return
        self.core.stats.packets_received += len(packets)
        if self._log_packets and packets:
            log_received(log, packets, self.version, self.client_id, self.peer)
        if self.session is not None:
            self.core.session_changed(self.client_id)
        if self._publish_budget is not None:
            self._charge_publishes(self._publish_budget, packets)
        self._handle_all(packets)
        if packets and self.state is _CONNECTED:
            self._timer_start = self.core.now()  # keep alive: counts from the last packet
        error = self.reader.error
        if error is not None and not self.wants_close:
            # the packets before the bad bytes were handled above; now the error
            if isinstance(error, UnsupportedProtocolVersion):
                self._refuse_unsupported_version(error)
            else:
                self._protocol_error(error.reason_code, str(error))
        if hits:
            self._hold_back()

    def _charge_publishes(self, budget: PublishBudget, packets: list[Packet]) -> None:
        publishes = [packet for packet in packets if type(packet) is Publish]
        if publishes:
            size = sum(len(packet.payload) for packet in publishes)
            budget.charge(self.core.now(), len(publishes), size)

    def publish_pause(self) -> float:
        """Seconds to read nothing more from this client (0: read on).

        Non-zero while the client is over its publish budget (``max_publish_rate``,
        ``max_publish_bytes_rate``): its further PUBLISH packets wait in its TCP window,
        nothing is dropped. The pause is the broker's doing, so it does not count
        towards the keep-alive timeout.
        """
        budget = self._publish_budget
        if budget is None:
            return 0.0
        pause = budget.delay(self.core.now())
        if pause > 0:
            self._timer_start += pause
        return pause

    def _hold_back(self) -> None:
        self._held_back_by = self.core.take_congestion_hits()
        self._held_since = self.core.now()

    def _handle_all(self, packets: list[Packet]) -> None:
        for index, packet in enumerate(packets):
            if self.close_reason is not None:  # an earlier packet of this batch ended it
                break
            if self.pending_check is not None:
                self._held_packets += tuple(packets[index:])  # after the check (check_done)
                break
            try:
                self._handle(packet)
            except RemoteProtocolError as exc:
                self._protocol_error(exc.reason_code, str(exc))

    def _apply(self, decision: AuthDecision) -> None:
        """Take on what the core decided about a CONNECT or AUTH: state, then packets."""
        match decision:
            case Accepted():
                self._connected(decision)
            case Refused(code=code, why=why, connack=connack):
                self.auth_exchange = None
                if connack:
                    self._send(Connack(reason_code=code))
                self._close(CloseReason.CONNECT_REFUSED, why)
            case PendingConnect():
                # an offloaded check (a password hash): see check_done
                self.state = ConnectionState.CHECKING
                self.pending_check = decision
            case Challenge(exchange=exchange, plan=plan, auth=auth):
                self.auth_exchange = exchange
                if plan is not None:
                    self.auth_plan = plan
                    self.state = ConnectionState.AUTHENTICATING
                self._send(auth)
            case Reauthenticated(auth=auth):
                self.auth_exchange = None
                self._send(auth)
            case ReauthFailed(code=code, why=why):
                self.auth_exchange = None
                self._send_disconnect(code, why)
                self._close(CloseReason.PROTOCOL_ERROR, f"re-authentication failed: {why}")

    def _connected(self, accepted: Accepted) -> None:
        self.state = ConnectionState.CONNECTED
        self._timer_start = self.core.now()  # keep alive counts from CONNACK
        self.auth_exchange = None
        self.auth_plan = None
        if accepted.authenticated is not None:
            self.auth_connect = accepted.authenticated  # re-authentication goes by it
        self.session = accepted.session
        self.client_id = accepted.client_id
        self.username = accepted.username
        self.keep_alive = accepted.keep_alive
        self.will = accepted.will
        self.client_receive_maximum = accepted.receive_maximum
        self.client_topic_alias_maximum = accepted.topic_alias_maximum
        self.receive_maximum = accepted.our_receive_maximum
        self.topic_alias_maximum = accepted.our_topic_alias_maximum
        self.retain_available = accepted.retain_available
        self._send(accepted.connack)
        if accepted.session_present:
            self.resend_inflight(accepted.session)

    def check_done(self, code: ReasonCode | None) -> None:
        """The server layer ran ``pending_check.check``, which answered ``code``.

        The CONNECT goes on (CONNACK, or a refusal), or the held SUBACK goes out (with
        the retained messages owed); then the packets that came after it.
        """
        pending = self.pending_check
        self.pending_check = None
        if pending is None or self.wants_close:
            return  # closed meanwhile: nothing to say any more
        if isinstance(pending, PendingSubscribe):
            session = self.session
            if session is None or self.state is not ConnectionState.CONNECTED:
                return  # the session was taken over meanwhile
            # the wait was the broker's doing: keep alive counts from its end
            self._timer_start = self.core.now()
            self._send(self.core.resume_subscribe(session, pending))
            if session.pending:  # retained messages owed to the new subscriptions
                self.on_output()
        elif self.state is ConnectionState.CHECKING:
            self.state = ConnectionState.AWAIT_CONNECT  # as before CONNECT completes
            self._apply(self.core.resume_connect(self, pending, code))
        else:
            return  # timed out meanwhile
        held, self._held_packets = list(self._held_packets), ()
        hits = self.core.congestion_hits
        if hits:
            hits.clear()
        self._handle_all(held)
        if hits:
            self._hold_back()

    def wake(self) -> None:
        """A message was queued for this connection: tell the server layer, once until it
        takes the output (the core asks ``woken`` first: a delivery to an already woken
        connection costs no call)."""
        self.woken = True
        self.on_output()

    def data_to_send(self) -> bytes:
        """Everything ready to be written, batched into one buffer (bounded in size).

        The bytes count as in transit until the server layer reports them written
        (``bytes_written``).
        """
        self.woken = False
        session = self.session
        if self.state is _CONNECTED and session is not None:
            if session.pending:
                self.core.session_changed(self.client_id)
                self._fill_from_session(session)
            if self.congested:
                self.update_congestion()
            if session.drop_episode and session.queued_bytes < session.max_queued_bytes // 2:
                self._drop_episode_ended(session)
        data = bytes(self._out)
        self._out.clear()
        if not data:
            self._sample_start = None  # nothing left to write: not behind any more
        self.in_transit += len(data)
        if self._log_packets and data:
            log_sent(log, data, self.version, self.client_id, self.peer)
        return data

    def bytes_written(self, count: int) -> None:
        """The transport took ``count`` bytes of what ``data_to_send`` returned."""
        self.in_transit -= count
        self.core.stats.bytes_sent += count
        start = self._sample_start
        if start is not None:
            self._sample_bytes += count
            if self._sample_bytes >= READ_RATE_SAMPLE:
                now = self.core.now()
                self._fast_reader = self._sample_bytes >= FAST_READER_RATE * (now - start)
                self._sample_start = now
                self._sample_bytes = 0

    def transport_blocked(self, blocked: bool) -> float:
        """The transport stopped taking bytes (its socket is full), or took the rest.

        Returns the seconds after which the transport should say ``True`` again if it
        is still blocked then (inf: no need). A second ``True`` means the write has not
        finished in that time: the client is no longer a fast reader.
        """
        if not blocked:
            self._transport_blocked = False
            return math.inf
        if self._transport_blocked:  # still blocked, FAST_READER_STALL later
            self._fast_reader = False
            self._sample_start = None
        else:
            self._transport_blocked = True
            if self._sample_start is None:
                self._sample_start = self.core.now()
                self._sample_bytes = 0
        if self.congested:
            self.update_congestion()
        return FAST_READER_STALL if self._fast_reader else math.inf

    def update_congestion(self) -> bool:
        """Re-decide ``congested`` (module docstring); True if it is.

        Congested: more than CONGESTION_HIGH bytes queued, none of them waiting for the
        client (its socket refusing bytes, its Receive Maximum reached); or, for a fast
        reader whose socket is full, more than half of its ``max_queued_bytes`` (a
        reader's pace varies: the rest of its budget takes the bursts, and the
        publishers wait well before it is full). Leaving the state calls the core's
        ``on_relief`` so that held-back publishers are read again.
        """
        session = self.session
        # (nothing its writer could send: a backlog of 0, below any low, above no high)
        backlog = 0
        high = low = 1
        if session is not None and not self._window_full and self.state is _CONNECTED:
            if not self._transport_blocked:
                backlog, high, low = session.pending_bytes, CONGESTION_HIGH, CONGESTION_LOW
            elif self._fast_reader:
                backlog = session.queued_bytes
                high = max(CONGESTION_HIGH, session.max_queued_bytes // 2)
                low = high // 2
        if self.congested:
            if backlog < low:
                self.congested = False
                self.core.on_relief()
        elif backlog > high:
            self.congested = True
        return self.congested

    def held_back(self) -> bool:
        """True while a client this one last published to is congested, or while a
        cluster is storing a window's worth of its messages (``STORE_WINDOW``).

        The server layer reads no more from this client until it is False: the broker
        takes messages no faster than it can hand them on (or store them).
        """
        if self._storing and self._store_window_full():
            if self._store_held_since is None:
                self._store_held_since = self.core.now()
            return True
        if self._store_held_since is not None:
            # the broker's wait, not the client's silence: not counted in the keep alive
            self._timer_start += self.core.now() - self._store_held_since
            self._store_held_since = None
        held_back_by = self._held_back_by
        if held_back_by is None:
            return False
        if any(conn.congested for conn in held_back_by):
            return True
        self._held_back_by = None
        # the wait was the broker's doing, not the client's silence: it does not count
        # towards the keep-alive timeout
        self._timer_start += self.core.now() - self._held_since
        return False

    def may_read(self, topic: str) -> bool:
        """Whether this client may receive a message on ``topic`` (the core's read hooks).

        Asked for every message sent, so cached per topic; the cache lives as long as
        this connection (a session taken over by another user starts afresh) and the
        core's ``auth_epoch`` (a reloaded ACL starts afresh).
        """
        core = self.core
        cache = self._read_cache
        if cache is None or self._read_epoch != core.auth_epoch:
            cache = self._read_cache = {}
            self._read_epoch = core.auth_epoch
        allowed = cache.get(topic)
        if allowed is None:
            allowed = all(
                hook(self.peer, self.client_id, self.username, topic) for hook in core.read_hooks
            )
            if len(cache) >= READ_CACHE_SIZE:
                cache.clear()
            cache[topic] = allowed
            if not allowed and self.first_time("read denied"):
                log.info(
                    "client %r (%s) may not read %r (nor maybe other topics) under the "
                    "access rules: such messages are not delivered",
                    self.client_id,
                    self.peer.describe(),
                    topic,
                )
        return allowed

    def first_time(self, note: str) -> bool:
        """True the first time ``note`` is asked about on this connection (log it once)."""
        if note in self._logged:
            return False
        self._logged |= {note}
        return True

    def release_session(self) -> Will | None:
        """Another connection takes the session over: let go of it; the will, if any.

        This connection closes soon after (``request_close``); until then it handles
        nothing more for the session.
        """
        will, self.will = self.will, None
        self.session = None
        if self.congested:
            self.update_congestion()  # without a session it is not: wake who waited
        return will

    def resolve_topic_alias(self, topic: str, alias: int) -> str:
        """Apply a Topic Alias of an incoming PUBLISH; returns the topic it stands for.

        A PUBLISH with a topic name (re)binds the alias on this connection; one with an
        empty topic name uses the binding [MQTT-3.3.2-12]. Aliases live only as long as
        the network connection (5.0 section 3.3.2.3.4).
        """
        maximum = self.topic_alias_maximum
        if not 1 <= alias <= maximum:
            # [MQTT-3.3.2-8] (0 is not permitted), [MQTT-3.3.2-9] (above our maximum)
            raise RemoteProtocolError(
                f"Topic Alias {alias} is outside 1..{maximum}",
                ReasonCode.TOPIC_ALIAS_INVALID,
            )
        if topic:
            validate_topic_name(topic)
            self.inbound_topic_aliases[alias] = topic
            return topic
        bound = self.inbound_topic_aliases.get(alias)
        if bound is None:
            raise RemoteProtocolError(
                f"empty topic name with Topic Alias {alias}, which this connection never set",
                ReasonCode.PROTOCOL_ERROR,
            )
        return bound

    def request_close(self, reason: CloseReason, code: ReasonCode, detail: str = "") -> None:
        """Server-initiated close (takeover, shutdown): DISCONNECT on 5.0, then close."""
        if self.close_reason is not None:
            return
        if self.state is ConnectionState.CONNECTED:
            self._send_disconnect(code, detail)
        self._close(reason, detail)
        self.on_output()

    def storing(self, size: int, qos: int) -> None:
        if self._storing is None:
            self._storing = deque()
        self._storing.append(size)
        self._storing_bytes += size
        if qos == 1:
            self.unanswered_qos1 += 1

    def _store_window_full(self) -> bool:
        """Whether a window's worth of its messages waits for the cluster's stream."""
        storing = self._storing
        return storing is not None and (
            len(storing) >= STORE_WINDOW or self._storing_bytes >= STORE_WINDOW_BYTES
        )

    def acknowledge(self, packet: Puback | Pubrec) -> None:
        """Send an acknowledgement the core decided after the PUBLISH was read (a
        cluster stored the message first); nothing once the connection is closing."""
        if self._storing:
            held = self._store_held_since is not None
            self._storing_bytes -= self._storing.popleft()
            if isinstance(packet, Puback):
                self.unanswered_qos1 -= 1
            if held and not self._store_window_full():
                self.core.on_relief()  # (its reader waits for held_back() to change)
        if self.state is ConnectionState.CONNECTED and self.close_reason is None:
            self._send(packet)
            self.on_output()

    def connection_lost(self) -> None:
        """The transport is gone (or we closed it). Idempotent."""
        if self.state is ConnectionState.CLOSED:
            return
        was_connected = self.state is ConnectionState.CONNECTED
        self.state = ConnectionState.CLOSED
        self._held_back_by = None
        if self.congested:
            self.update_congestion()  # CLOSED is never congested: wake who waited for it
        if not was_connected:
            self.core.connection_gone(self)
            return
        # the session stays readable here (``session`` is kept once CLOSED); the will
        # goes to the core, which publishes or delays it
        will, self.will = self.will, None
        reason = self.close_reason or CloseReason.TRANSPORT_CLOSED
        self.core.connection_closed(self, self.session, will, reason, self.close_detail)

    # ------------------------------------------------------------------ internals

    def _close(self, reason: CloseReason, detail: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self.close_detail = detail
            self.wants_close = True

    def _send(self, packet: Packet) -> None:
        data = encode(packet, self.version)
        if len(data) > self.client_max_packet_size:
            self._too_big_for_client(packet, len(data))
        else:
            self._out += data
            self.core.stats.packets_sent += 1

    def _too_big_for_client(self, packet: Packet, size: int) -> None:
        """[MQTT-3.1.2-24]: ``packet`` exceeds the client's Maximum Packet Size: not sent.

        (PUBLISH, the one packet the spec says to drop and go on without [MQTT-3.1.2-25],
        never comes here: see ``_append_delivery``.) Without the acknowledgement or answer
        the protocol goes no further: DISCONNECT 0x95 (Packet too large: a packet
        greater than this client's maximum) if that fits, and close.
        """
        name = type(packet).__name__.upper()
        detail = f"{name} of {size} bytes exceeds the client's Maximum Packet Size"
        log.info("%s (client id %r): %s", self.peer.describe(), self.client_id, detail)
        if not isinstance(packet, Disconnect | Connack):
            self._send_disconnect(ReasonCode.PACKET_TOO_LARGE)
        self._close(CloseReason.PROTOCOL_ERROR, detail)

    def _send_disconnect(self, code: ReasonCode, reason_string: str = "") -> None:
        if self.version is ProtocolVersion.V5 and self.state is ConnectionState.CONNECTED:
            if reason_string:
                # the Reason String is left out if it would make the packet too big
                # for the client (5.0 section 3.14.2.2.3)
                data = encode(
                    Disconnect(code, Properties(reason_string=reason_string)), self.version
                )
                if len(data) <= self.client_max_packet_size:
                    self._out += data
                    self.core.stats.packets_sent += 1
                    return
            self._send(Disconnect(reason_code=code))

    def _protocol_error(self, code: ReasonCode, detail: str) -> None:
        log.info(
            "protocol error from %s (client id %r): %s [%s]",
            self.peer.describe(),
            self.client_id,
            detail,
            code.name,
        )
        self.core.stats.protocol_errors += 1
        if self.state is ConnectionState.AUTHENTICATING:
            self._send(Connack(reason_code=code))  # no CONNACK yet: it carries the error
        elif (
            self.state is ConnectionState.AWAIT_CONNECT and self.reader.protocol_version is not None
        ):
            # A malformed CONNECT of a known version: 5.0 answers with a CONNACK reason code.
            self.version = self.reader.protocol_version
            if self.version is ProtocolVersion.V5:
                self._send(Connack(reason_code=code))
        else:
            self._send_disconnect(code, detail)
        self._close(CloseReason.PROTOCOL_ERROR, detail)

    def _refuse_unsupported_version(self, exc: UnsupportedProtocolVersion) -> None:
        log.info("refused %s: %s", self.peer.describe(), exc)
        self.core.stats.protocol_errors += 1
        # [MQTT-3.1.2-2]: CONNACK return code 1 (3.1.1 form; a 5.0 client reads 0x84 alike)
        self._out += encode(
            Connack(reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION), ProtocolVersion.V311
        )
        self.core.stats.packets_sent += 1
        self._close(CloseReason.CONNECT_REFUSED, str(exc))

    def _handle(self, packet: Packet) -> None:
        session = self.session
        # The hot path first. A connection has a session only once CONNECTED (it keeps it
        # when CLOSED), the states where every PUBLISH goes to the core.
        if session is not None and type(packet) is Publish:
            ack = self.core.handle_publish(self, session, packet)
            if ack is not None:
                self._send(ack)
            return
        if self.state is _AWAIT_CONNECT:
            if not isinstance(packet, Connect):
                raise RemoteProtocolError(
                    f"expected CONNECT, got {type(packet).__name__.upper()}",
                    ReasonCode.PROTOCOL_ERROR,
                )
            self.version = packet.protocol_version
            if packet.properties.maximum_packet_size is not None:  # 5.0 only
                # from now on nothing larger goes to the client [MQTT-3.1.2-24]
                self.client_max_packet_size = packet.properties.maximum_packet_size
            self._apply(self.core.handle_connect(self, packet))
            return
        if self.state is _AUTHENTICATING:
            # until CONNACK only AUTH and DISCONNECT may come (5.0 section 4.12)
            if isinstance(packet, Auth):
                self._handle_auth(packet)
            elif isinstance(packet, Disconnect):
                self._close(CloseReason.CLIENT_DISCONNECT, "during authentication")
            else:
                raise RemoteProtocolError(
                    f"{type(packet).__name__.upper()} before the authentication exchange ended",
                    ReasonCode.PROTOCOL_ERROR,
                )
            return
        if session is None:  # taken over; ignore whatever is still in flight
            return
        match packet:
            case Puback(packet_id=pid):
                self._acked(session, pid, _AWAIT_PUBACK)
            case Pubrec(packet_id=pid, reason_code=code):
                inflight = session.inflight_out.get(pid)
                if inflight is not None and inflight.state is OutboundState.AWAIT_PUBACK:
                    _wrong_ack("PUBREC", pid, "a QoS 1 message")
                if inflight is not None and inflight.state is OutboundState.AWAIT_PUBREC:
                    if code >= 0x80:
                        # a failure ends the QoS 2 exchange: no PUBREL, and the message
                        # leaves the in-flight window (5.0 section 4.3.3)
                        session.remove_inflight(pid)
                        self._window_full = False
                    else:
                        session.await_pubcomp(pid)
                        self._send(Pubrel(pid))
                elif inflight is not None and inflight.state is OutboundState.AWAIT_PUBCOMP:
                    self._send(Pubrel(pid))
                else:
                    self._send(Pubrel(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
                self.on_output()
            case Pubrel(packet_id=pid):
                if session.release_incoming(pid):
                    self._send(Pubcomp(pid))
                else:
                    self._send(Pubcomp(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
            case Pubcomp(packet_id=pid):
                self._acked(session, pid, OutboundState.AWAIT_PUBCOMP)
            case Subscribe():
                answer = self.core.handle_subscribe(self, session, packet)
                if isinstance(answer, PendingSubscribe):
                    # the cluster's new routes first: the server layer awaits the check
                    # and reads nothing more meanwhile; see check_done
                    self.pending_check = answer
                else:
                    self._send(answer)
                    if session.pending:  # retained messages owed to the new subscriptions
                        self.on_output()
            case Unsubscribe():
                self._send(self.core.handle_unsubscribe(session, packet))
            case Pingreq():
                self._send(Pingresp())
            case Disconnect():
                self.core.handle_disconnect(session, packet)
                if packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
                    self.will = None  # [MQTT-3.1.2-10]: a normal DISCONNECT discards the will
                self._close(CloseReason.CLIENT_DISCONNECT, f"reason {packet.reason_code:#04x}")
            case Auth():
                self._handle_auth(packet)
            case Connect():
                raise RemoteProtocolError("second CONNECT", ReasonCode.PROTOCOL_ERROR)
            case _:
                raise RemoteProtocolError(
                    f"{type(packet).__name__.upper()} is a server-to-client packet",
                    ReasonCode.PROTOCOL_ERROR,
                )

    def _handle_auth(self, packet: Auth) -> None:
        decision = self.core.handle_auth(
            self, packet, self.auth_exchange, self.auth_plan, self.auth_connect
        )
        self._apply(decision)

    def _acked(self, session: Session, packet_id: int, expected: OutboundState) -> None:
        """A PUBACK (``expected`` AWAIT_PUBACK) or PUBCOMP (AWAIT_PUBCOMP) came.

        One for a packet identifier not in flight is ignored (a late duplicate, or one
        of a message given up on); one of the wrong type for a message in flight (PUBACK
        for QoS 2, PUBCOMP for QoS 1 or before our PUBREL) is a protocol error.
        """
        inflight = session.inflight_out.get(packet_id)
        if inflight is None:
            return
        if inflight.state is not expected:
            if expected is OutboundState.AWAIT_PUBACK:
                _wrong_ack("PUBACK", packet_id, "a QoS 2 message")
            elif inflight.state is OutboundState.AWAIT_PUBACK:
                _wrong_ack("PUBCOMP", packet_id, "a QoS 1 message")
            _wrong_ack("PUBCOMP", packet_id, "a QoS 2 message we sent no PUBREL for")
        else:
            session.remove_inflight(packet_id)
            self._window_full = False
            if session.pending:
                self.on_output()

    # -------------------------------------------------------------- outgoing messages

    def resend_inflight(self, session: Session) -> None:
        """On resuming a session: resend unacknowledged PUBLISH (DUP) and PUBREL."""
        now = self.core.now()
        check_read = self.core.read_hooks
        for inflight in list(session.inflight_out.values()):
            if inflight.state is OutboundState.AWAIT_PUBCOMP:
                self._send(Pubrel(inflight.packet_id))
            elif check_read and not self.may_read(inflight.item.message.topic):
                session.remove_inflight(inflight.packet_id)  # sent to someone who could
            else:
                self._out += self._encode_fresh(inflight.item, inflight.packet_id, now, dup=True)
                self._commit_alias()
                self.core.stats.packets_sent += 1

    def _fill_from_session(self, session: Session) -> None:
        pending = session.pending
        if not pending:
            return
        inflight = session.inflight_out
        now = self.core.now()
        limit = self.client_receive_maximum
        out = self._out
        taken = 0  # bytes of QueuedMessages taken off ``pending``
        entries = len(pending)
        sent0 = sent1 = sent2 = 0  # by the QoS sent with
        payload_bytes = 0  # of the messages sent
        may_read = self.may_read if self.core.read_hooks else None
        self._window_full = False
        while pending and len(out) < MAX_BATCH_BYTES:
            item = pending.popleft()
            if item is None:
                # a retained replay's place: it stays first until its last message is out
                replay = session.replays[0]
                item = replay.next_item()
                if item is None:
                    session.replay_done()
                    continue
                pending.appendleft(None)
                if item.qos and len(inflight) >= limit:
                    self._window_full = True
                    break
                replay.take()
            else:
                taken += item.size
            message = item.message
            if (message.properties is not NO_PROPERTIES and message.expired(now)) or (
                may_read is not None and not may_read(message.topic)
            ):
                continue
            if not item.qos:
                if self._append_delivery(item, None, now):
                    sent0 += 1
                    payload_bytes += len(message.payload)
                continue
            if len(inflight) >= limit:
                pending.appendleft(item)  # waits for the client's acknowledgements
                taken -= item.size
                self._window_full = True
                break
            packet_id = session.allocate_packet_id()
            if not self._append_delivery(item, packet_id, now):
                continue
            if item.qos == 1:
                state = _AWAIT_PUBACK
                sent1 += 1
            else:
                state = OutboundState.AWAIT_PUBREC
                sent2 += 1
            payload_bytes += len(message.payload)
            session.add_inflight(packet_id, item, state)
        session.took_from_front(entries - len(pending), taken)
        stats = self.core.stats
        sent_by_qos = stats.sent_by_qos
        sent_by_qos[0] += sent0
        sent_by_qos[1] += sent1
        sent_by_qos[2] += sent2
        stats.packets_sent += sent0 + sent1 + sent2
        stats.publish_bytes_sent += payload_bytes
        if pending and len(out) >= MAX_BATCH_BYTES:
            self.on_output()  # batch full: come back for the rest after this write

    def _drop_episode_ended(self, session: Session) -> None:
        dropped = session.end_drop_episode()
        log.info(
            "client %r (%s) has room in its queue again; %d message(s) were dropped for it",
            self.client_id,
            self.peer.describe(),
            dropped,
        )

    def _append_delivery(self, item: QueuedMessage, packet_id: int | None, now: float) -> bool:
        """Write one PUBLISH of ``item`` to the output; False if too big for this client.

        Subscribers of the same message share the encoded header (fixed header, topic,
        properties) through ``item.encoded``; only the packet id is patched per client,
        and the payload is copied straight from the message.
        """
        message = item.message
        cache = item.encoded
        if (
            cache is None
            and message.properties is NO_PROPERTIES
            and not item.subscription_identifiers
            and not self.client_topic_alias_maximum
        ):
            # one recipient, nothing of this connection's own in it: the common case,
            # written straight into the output
            if append_plain_publish(
                self._out,
                message.topic,
                message.payload,
                item.qos,
                item.retain,
                packet_id,
                self.version,
                self.client_max_packet_size,
            ):
                return True
            return self._dropped_too_big()
        if (
            cache is None
            or message.properties.message_expiry_interval is not None
            or (self.client_topic_alias_maximum and self._outbound_alias(message.topic) is not None)
        ):
            # a single recipient has nothing to share; the forwarded expiry interval
            # shrinks while queued; a topic alias is this connection's own: encode now
            data = self._encode_fresh(item, packet_id, now, dup=False)
            if len(data) > self.client_max_packet_size:
                self._proposed_alias = None
                return self._dropped_too_big()
            self._out += data
            self._commit_alias()
            return True
        entry = cache.get(self.version)
        if entry is None:
            placeholder = None if item.qos == 0 else 1
            data = self._encode_fresh(item, placeholder, now, dup=False)
            header = data[: len(data) - len(message.payload)]
            entry = cache[self.version] = (
                header,
                -1 if placeholder is None else _packet_id_offset(header),
            )
        header, offset = entry
        if len(header) + len(message.payload) > self.client_max_packet_size:
            return self._dropped_too_big()
        out = self._out
        if packet_id is None:
            out += header
        else:
            out += header[:offset]
            out += packet_id.to_bytes(2, "big")
            out += header[offset + 2 :]
        out += message.payload
        return True

    def _dropped_too_big(self) -> bool:
        """[MQTT-3.1.2-25]: a PUBLISH too big for this client is dropped for it alone."""
        self.core.stats.dropped(DROP_TOO_LARGE)
        return False

    def _outbound_alias(self, topic: str) -> int | None:
        """The Topic Alias to send ``topic`` with on this connection, or None for none.

        A topic already bound is sent as an empty name plus its alias; otherwise, while
        the client's Topic Alias Maximum leaves room, the next free alias is proposed (sent
        with the full name to bind it) and recorded only once the PUBLISH is written
        (``_commit_alias``), so a PUBLISH dropped as too big never binds an alias.
        """
        self._proposed_alias = None
        bound = self.outbound_topic_aliases.get(topic)
        if bound is not None:
            return bound
        if len(self.outbound_topic_aliases) < self.client_topic_alias_maximum:
            alias = len(self.outbound_topic_aliases) + 1
            self._proposed_alias = (topic, alias)
            return alias
        return None

    def _commit_alias(self) -> None:
        proposed = self._proposed_alias
        if proposed is not None:
            self.outbound_topic_aliases[proposed[0]] = proposed[1]
            self._proposed_alias = None

    def _encode_fresh(
        self, item: QueuedMessage, packet_id: int | None, now: float, *, dup: bool
    ) -> bytes:
        message = item.message
        props = message.properties
        topic = message.topic
        if self.version is _V5:
            expiry = message.remaining_expiry(now)
            alias = None
            if self.client_topic_alias_maximum:
                alias = self._outbound_alias(topic)
                if alias is not None and self._proposed_alias is None:
                    topic = ""  # bound earlier on this connection: the alias alone names it
            if (
                item.subscription_identifiers
                or expiry != props.message_expiry_interval
                or alias != props.topic_alias
            ):
                props = attrs.evolve(
                    props,
                    subscription_identifiers=item.subscription_identifiers,
                    message_expiry_interval=expiry,
                    topic_alias=alias,
                )
        return encode_publish(
            topic,
            message.payload,
            item.qos,
            item.retain,
            dup,
            packet_id,
            props,
            self.version,
        )


def open_connection(
    core: BrokerCore, peer: PeerInfo, on_output: Callable[[], None]
) -> MQTTConnection:
    """A new transport is ready: its protocol state machine, known to ``core``."""
    reader = PacketReader(max_packet_size=core.config.max_packet_size, server_side=True)
    conn = MQTTConnection(core=core, peer=peer, on_output=on_output, reader=reader)
    core.connection_opened(conn)
    return conn


def _wrong_ack(name: str, packet_id: int, what: str) -> NoReturn:
    """An acknowledgement of the wrong type for a message in flight: a protocol error
    (5.0 section 4.3: QoS 1 is answered by PUBACK, QoS 2 by PUBREC then PUBCOMP)."""
    raise RemoteProtocolError(
        f"{name} for packet identifier {packet_id}, which is {what}", ReasonCode.PROTOCOL_ERROR
    )


def _packet_id_offset(publish: bytes) -> int:
    """Where the packet identifier sits in an encoded QoS 1/2 PUBLISH."""
    index = 1
    while publish[index] & 0x80:  # the Remaining Length varint (at most 4 bytes)
        index += 1
    topic_length = int.from_bytes(publish[index + 1 : index + 3], "big")
    return index + 3 + topic_length
