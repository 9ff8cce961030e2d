"""One broker's membership of a cluster: its NATS traffic, in a nursery it owns.

``open_cluster_node(core, config)`` connects to NATS, hands the core a
:class:`ClusterNode` as its ``ClusterLink`` and keeps this node in step with the others
until the block ends:

- **Routing**: one NATS subscription per distinct topic filter the node's clients hold
  (the router says when a filter gains its first or loses its last subscriber), on a
  connection with ``no_echo`` so that the node never gets its own messages back. A
  SUBSCRIBE that made the node subscribe in NATS gets its SUBACK once NATS has processed
  those subscriptions (a PING after them answered: ``subscribed``), at most
  ``SUBACK_WAIT_TIMEOUT`` later; one whose filters NATS has already does not wait. Every
  message published here goes to NATS once, on the subject of its topic, with the
  envelope headers (origin node and sequence, publisher, QoS, properties). A message that
  matches several filters of one node arrives once per filter and is routed once
  (``RepeatFilter``).
- **Shared subscriptions**: ``$share/g/f`` is a NATS queue group on a second connection
  (with echo), so that exactly one member across all nodes, this one included, gets each
  message; the router leaves share groups out of local routing (``shared_elsewhere``).
- **Retained messages** live in the JetStream key-value bucket ``RETAINED_BUCKET``
  (key: the topic's subject). Every node watches it and keeps a full copy in its core's
  retained store, so a SUBSCRIBE's retained lookup stays local and synchronous.
- **Client ids**: a CONNECT puts ``{node, client}`` under the client id's key in
  ``OWNERS_BUCKET``; every node watches the bucket and closes its own connection of a
  client id that a later write (higher revision) gave to another node (MQTT 5
  DISCONNECT 0x8E). The last writer wins on every node alike, so of simultaneous
  CONNECTs exactly one stays.
- **QoS 1/2** messages of clients are published to the stream ``MESSAGES_STREAM`` and
  acknowledged once it answers (``store``/``_on_stored``); QoS 1 is routed meanwhile,
  with a lower bound of its stream sequence (``_stream_floor``), QoS 2 once stored.
- **Losing NATS**: the node steps back at once (``stand_down``: the core gets a
  ``DetachedLink``); the broker joins again with a new node, which takes its clients
  back (``take_back``) and reads back from the stream what was stored meanwhile
  (``catch_up``), as the lost node's ``CatchUp`` says.

The core never waits for NATS: what the core decides is written to NATS in order, by
the client's writer task (publishes) or by this node's own task (key-value writes); a
held SUBACK is awaited by its client's reader task (``server/connection.py``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from trio_mqtt.broker.connection_view import ClientConnection
from trio_mqtt.broker.core import LOCAL_PREFIX, AwaitedCheck, BrokerCore
from trio_mqtt.broker.message import Message, StoredMessage
from trio_mqtt.broker.router import Router, SubscriptionOptions
from trio_mqtt.broker.sessions import OutboundState, QueuedMessage, SavedSession, Session
from trio_mqtt.cluster.counters import ClusterCounters
from trio_mqtt.cluster.envelope import (
    EnvelopeError,
    Origin,
    RepeatFilter,
    decode_wire_parts,
    encode_wire,
    message_from_nats,
    message_headers,
    stream_key,
)
from trio_mqtt.cluster.handover import (
    HandoverError,
    HandoverWindow,
    chunk_position,
    decode_handover,
    encode_session,
    saved_session,
)
from trio_mqtt.cluster.nats_tls import nats_client_ssl_context
from trio_mqtt.cluster.records import (
    Owner,
    decode_owner,
    decode_retained,
    decode_will,
    encode_owner,
    encode_retained,
    encode_will,
)
from trio_mqtt.cluster.subjects import (
    filter_to_subjects,
    queue_group_name,
    subject_to_topic,
    topic_to_subject,
)
from trio_mqtt.config import ClusterConfig
from trio_mqtt.mqtt.packets import Connect, ProtocolVersion
from trio_mqtt.mqtt.topics import SHARE_PREFIX, parse_shared_filter, topic_matches
from trio_mqtt.nats import (
    Entry,
    KeyExistsError,
    KeyValue,
    Msg,
    NATSClient,
    NATSConnectionClosed,
    NATSError,
    NATSLocalError,
    NATSTimeoutError,
    NoRespondersError,
    api_request,
    ensure_stream,
    open_nats_client,
    redact_url,
)
from trio_mqtt.peer import PeerInfo

log = logging.getLogger("trio_mqtt.cluster")

#: At most one log line per this many seconds about messages NATS could not take.
REFUSAL_LOG_INTERVAL = 10.0

RETAINED_BUCKET = "mqtt_retained"
OWNERS_BUCKET = "mqtt_owners"
# the will of every client connected anywhere, under "<node id>.<client key>"
WILLS_BUCKET = "mqtt_wills"
# one heartbeat key per live node (its id), with a short TTL; and "reaped.<id>" markers
NODES_BUCKET = "mqtt_nodes"
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL = 5.0
# where a node asks another for a client's session: "<prefix>.<node id>"
HANDOVER_SUBJECT = "mqtt.handover"
# how long a CONNECT waits for the node that has its session, per attempt: a node that
# was just killed may still look subscribed to NATS for a moment (its request then goes
# unanswered), so one more attempt follows; after both, the session starts anew
HANDOVER_TIMEOUTS = (1.0, 2.0)
# how long a session taken over waits at most, before the stream is read back for what
# reached neither node, for the live copies of what was stored until then (normally the
# 1-2 s of the floor, _fill_handover_gap)
HANDOVER_SETTLE_LIMIT = 5.0
# the stream of clients' QoS 1/2 messages, stored before they are acknowledged
MESSAGES_STREAM = "MQTT_MESSAGES"
STREAM_PREFIX = "q"
# how long a QoS 1/2 message may wait for the stream before its publisher is disconnected
STORE_TIMEOUT = 5.0
# each node's persistent sessions, under "<node id>.<client key>": subscriptions and the
# stream cursor, so that a survivor can rebuild a session of a dead node
SESSIONS_BUCKET = "mqtt_sessions"
SESSION_SAVE_INTERVAL = 0.2
# How often every persistent session is checked, marked as changed or not (seconds)
SESSION_CHECK_ALL = 5.0
# at most this many stream messages are replayed into one recovered session
MAX_REPLAY = 100_000
#: ... and at most this many payload bytes (what a replay holds in memory at once).
MAX_REPLAY_BYTES = 64 * 1024 * 1024
#: At most this many QoS 1 messages received live per heartbeat interval are remembered
#: for a catch-up (QoS 2 always are): past it, a catch-up may deliver QoS 1 ones twice.
MAX_RECENT = 50_000
#: At most this many QoS 1/2 messages are kept in the stream for one slow session
#: (``ClusterNode.spill``): past it, they are dropped as on one node.
MAX_SPILLED = 100_000
#: At most this many of them travel with a session handed over (one NATS message).
MAX_SPILLED_HANDED_OVER = 10_000
# how often the messages kept for slow sessions are read back, and how many per subject
# at a time; one the stream never had after this long is counted as lost
REFILL_INTERVAL = 0.1
REFILL_BATCH = 500
SPILL_GIVE_UP = 30.0
# How long the last key-value writes may take when the node leaves.
CLOSE_TIMEOUT = 2.0
# How long a SUBACK waits at most for NATS to confirm the node's new subscriptions; then
# it goes out anyway (the local subscription works; messages from other nodes may miss it
# until NATS has the subscription)
SUBACK_WAIT_TIMEOUT = 2.0
# received messages' subjects whose topic is remembered: how many, and how long at most
TOPIC_CACHE_SIZE = 16384
TOPIC_CACHE_MAX_CHARS = 768


def default_node_name() -> str:
    """A node name from the host name and the process id (valid as a config value)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{os.getpid()}"


def owner_key(client_id: str) -> str:
    """The owners bucket's key for ``client_id`` (client ids may hold any character)."""
    return hashlib.sha256(client_id.encode()).hexdigest()[:40]


def _last_sequence(info: dict[str, Any]) -> int:
    """``state.last_seq`` of a stream info reply (0 if it has none)."""
    state = info.get("state")
    last = state.get("last_seq") if isinstance(state, dict) else None
    return last if isinstance(last, int) else 0


def _stream_subjects(topic_filters: Iterable[str]) -> set[str]:
    """The stream's subjects that hold the messages for ``topic_filters``."""
    subjects: set[str] = set()
    for topic_filter in topic_filters:
        _group, plain = parse_shared_filter(topic_filter)
        subjects.update(filter_to_subjects(plain, STREAM_PREFIX))
    return subjects


@attrs.frozen
class CatchUp:
    """What a node that lost NATS leaves to the node that joins after it.

    ``first``: the stream sequence to read back from; ``origins``: this broker's earlier
    nodes' origins, the lost one's included (their messages were routed here already;
    their claims, wills and heartbeat keys are this broker's to take back); ``seen``:
    the (origin, sequence) of the QoS 1/2 messages received live in its last seconds
    (not to deliver twice); ``owners_revision``: the owners bucket's last revision it
    had seen (a claim above it was written while it was cut off).
    """

    first: int
    origins: frozenset[str]
    seen: frozenset[tuple[str, int]]
    owners_revision: int = 0
    # the messages kept in the stream for slow sessions (``ClusterNode.spill``), which
    # the next node reads back for them
    spilled: Mapping[str, Spilled] = attrs.field(factory=dict)


@attrs.define
class Spilled:
    """The QoS 1/2 messages kept in the stream for one slow session, to read back as
    its queue empties: (origin, origin sequence), or ("", stream sequence) for QoS 2,
    -> (a lower bound of its stream sequence, when it was kept). ``session``: the one
    they were kept for, compared by identity (a new session of the same client id, after
    a clean start, does not get them)."""

    session: object
    keys: dict[tuple[str, int], tuple[int, float]] = attrs.Factory(dict)
    # where the next read-back continues (None: from ``first()``): past what the last
    # read covered, or lower for a message kept since
    scan_from: int | None = None

    def first(self) -> int:
        """Where the stream is read from to find them all."""
        return min((bound for bound, _when in self.keys.values()), default=0)


@attrs.define(eq=False)
class ClusterNode:
    """This broker's side of the cluster (the core's ``ClusterLink``)."""

    core: BrokerCore
    name: str
    nats: NATSClient
    shared_nats: NATSClient
    retained: KeyValue
    owners: KeyValue
    wills: KeyValue
    nodes: KeyValue
    sessions: KeyValue
    # filter -> the NATS subscription ids that carry it
    _routes: dict[str, list[int]] = attrs.Factory(dict)
    # NATS subscriptions confirmed (see ``subscribed``): SUBs sent so far, counted; per
    # filter the count at its SUB; the count at the last PING answered, per connection
    _subs_sent: int = 0
    _route_sent: dict[str, int] = attrs.Factory(dict)
    _confirmed: int = 0
    _shared_confirmed: int = 0
    # SUBACKs sent without NATS's confirmation in the current episode of NATS not
    # answering (0: none; the first one logs a warning, the next confirmation the count)
    _unconfirmed_subacks: int = 0
    _sequence: int = 0
    _repeats: RepeatFilter = attrs.Factory(RepeatFilter)
    # A message reaches this node once per plain NATS subscription that matches it, so
    # a repeat needs two plain filters (the two subjects of one "a/#" never match one
    # subject): _on_message asks _repeats only while the node has more than one, and
    # until NATS has answered a PING sent after it went down to one (the last copies of
    # a message may still be on the way then): that is _repeat_grace
    _plain_routes: int = 0
    _repeat_grace: int = 0
    # subject -> topic of the messages received (bounded: TOPIC_CACHE_SIZE)
    _topics: dict[str, str] = attrs.Factory(dict)
    # key-value writes waiting for _write_loop: the latest per topic / per client id
    _retained_writes: dict[str, Message] = attrs.Factory(dict)
    _claims_due: set[str] = attrs.Factory(set)
    # client id -> its will to keep in the wills bucket (None: delete it)
    _wills_due: dict[str, tuple[Message, int] | None] = attrs.Factory(dict)
    # our latest acknowledged claim of a client id (its revision in the owners bucket);
    # and the highest revision another node wrote for it while ours was in the air
    _claimed: dict[str, int] = attrs.Factory(dict)
    _contested: dict[str, tuple[int, str]] = attrs.Factory(dict)
    # the highest revision of the owners bucket seen (watched, or our own claims)
    _owners_revision: int = 0
    # QoS 1/2 messages sent to the stream, waiting for its answer: token -> what to do
    _stores: dict[int, tuple[ClientConnection, int, Message, float]] = attrs.Factory(dict)
    _store_token: int = 0
    _ack_prefix: str = ""
    # The lowest stream sequence a message this node stores from now on can get: above
    # every sequence the stream gave one of this node's messages, at least every one a
    # message from another node carried (that node sent it after the stream had stored
    # everything below it), and the stream's last sequence when last asked (at join,
    # and by every heartbeat). A QoS 1 message is
    # routed with it while the stream stores it, as a lower bound of its place in the
    # stream: a session's cursor stays below every message still owed to it.
    _stream_floor: int = 1
    _floor_seen: int = 0  # its value at the last heartbeat
    # its value one heartbeat earlier (1-2 s ago): every message stored before then and
    # routed here has arrived; where a catch-up after losing NATS starts (CatchUp)
    _floor_back: int = 1
    # the QoS 1/2 messages received live since the last heartbeat, and in the two
    # intervals before, with their topics: what a catch-up must not deliver again, and
    # what a handover tells the next node the session had (HandoverWindow). QoS 1:
    # (origin, origin sequence), which the stream's copy carries too; QoS 2 (routed once
    # stored): ("", stream sequence), this node's own QoS 2 messages included
    _recent: dict[tuple[str, int], str] = attrs.Factory(dict)
    _recent_back: tuple[dict[tuple[str, int], str], ...] = ({}, {})
    # sessions taken over from another node, waiting to be sent what fell between the
    # nodes: each gets the (origin, sequence) of every QoS 1/2 message routed here since
    # (_fill_handover_gap)
    _watches: list[set[tuple[str, int]]] = attrs.Factory(list)
    # set (and replaced) by each heartbeat, once _floor_back moved
    _beat: trio.Event = attrs.Factory(trio.Event)
    # the QoS 1/2 message being routed (its payload object) and how the stream's copy
    # is found again: what ``spill`` keeps for a session whose queue is full
    _routing: tuple[bytes, tuple[str, int]] | None = None
    # client id -> the messages kept in the stream for it (spill), read back by refill
    _spilled: dict[str, Spilled] = attrs.Factory(dict)
    # the origin sequence store() gave a QoS 1 message's stream copy, for the forward()
    # of the same message that follows at once: its payload object and the sequence
    _reserved: tuple[bytes, int] | None = None
    _catching_up: bool = False
    # this broker's earlier nodes (joined before this one, then lost NATS)
    _previous_origins: frozenset[str] = frozenset()
    # per persistent session: what its record last said (to skip unchanged ones) and the
    # highest stream sequence seen outstanding in it
    _session_records: dict[str, tuple[object, int]] = attrs.Factory(dict)
    # when save_sessions_once next checks every session, not only those marked changed
    _check_all_at: float = 0.0
    # the clients whose will this node has put in the wills bucket
    _armed_wills: set[str] = attrs.Factory(set)
    # runs the reaping of dead nodes' wills (set by open_cluster_node)
    _nursery: trio.Nursery | None = None
    _wake: trio.Event = attrs.Factory(trio.Event)
    _idle: trio.Event = attrs.Factory(trio.Event)
    # what other nodes see as this node's messages' origin: unique per process run, so
    # that a restarted node's new sequence numbers are not taken for repeats
    # (also its key in the nodes bucket: only [-_A-Za-z0-9])
    origin: str = attrs.Factory(lambda self: f"{self.name}-{secrets.token_hex(4)}", takes_self=True)
    received: int = 0
    forwarded: int = 0
    # log level -> when a refused message was last logged, how many since were not
    _refusal_logs: dict[int, tuple[float, int]] = attrs.Factory(dict)
    # messages published here that NATS did not take (its connection closed, or one too
    # large for it): they reached this node's subscribers only
    dropped: int = 0
    # messages read back from the stream by catch_up
    caught_up: int = 0
    refilled: int = 0
    # the broker's totals over its nodes: this node's counts are added when it ends
    counters: ClusterCounters = attrs.Factory(ClusterCounters)

    def stand_down(self, _why: object = None) -> None:
        """NATS is gone: the core gets a ``DetachedLink`` (``detach``), and the QoS 1/2
        messages waiting for the stream's answer, which cannot come, are refused
        (``refuse_pending_stores``). Called the moment either NATS connection is found
        closed, before the node's block ends."""
        self.detach()
        self.refuse_pending_stores()

    def detach(self) -> None:
        """From now on the core has a ``DetachedLink``: its own clients only (local
        routing, share groups served here, QoS 1/2 refused). Idempotent."""
        if self.core.cluster is self:
            self.core.leave_cluster(stand_in=DetachedLink(self.core, self.counters))

    def refuse_pending_stores(self) -> None:
        """Refuse (5.0: 0x89) the QoS 1/2 messages still waiting for the stream's answer,
        so that their publishers send them again (to a node that can store them)."""
        stores, self._stores = self._stores, {}
        for conn, packet_id, message, _sent in stores.values():
            self.core.stored(conn, packet_id, message, None)

    # ------------------------------------------------------------ ClusterLink (core)

    # Every method the core calls behaves like DetachedLink's once the NATS client is
    # closed. The node stands down the moment a NATS client finds its connection closed
    # (``on_closed``), but a call may already be under way, and an exception from NATS
    # must not reach the clients' tasks that call the node. A try costs nothing in
    # CPython 3.11 when nothing is raised, unlike a check per message.

    def forward(self, message: Message) -> None:
        reserved = self._reserved
        if reserved is not None and reserved[0] is message.payload:
            self._reserved = None
            sequence = reserved[1]  # the one its stream copy carries
        else:
            self._sequence += 1
            sequence = self._sequence
        if message.qos:  # (the core routes it here next: spill's key for its stored copy)
            key = ("", message.sequence) if message.qos == 2 else (self.origin, sequence)
            self._routing = (message.payload, key)
        data = encode_wire(message, origin=self.origin, sequence=sequence, now=self.core.now())
        try:
            self.nats.publish(topic_to_subject(message.topic), data)
        except NATSError as exc:
            self._not_forwarded(message, exc)
            return
        self.forwarded += 1
        if message.retain:
            self._retained_writes[message.topic] = message
            self._wake.set()

    def _not_forwarded(self, message: Message, exc: NATSError) -> None:
        """``forward`` could not hand ``message`` to NATS: it reached local subscribers
        only (counted in ``dropped``, as DetachedLink counts)."""
        self.dropped += 1
        if not isinstance(exc, NATSConnectionClosed):
            # (NATSLocalError: larger than the NATS server's max_payload, or a subject
            # longer than a control line)
            self._log_refusal(
                logging.WARNING,
                f"a message to {message.topic[:200]!r} from {message.publisher!r} reached "
                f"this node's subscribers only: {exc}",
            )

    def _log_refusal(self, level: int, text: str) -> None:
        """Log a message NATS could not take: per level (WARNING: not forwarded, ERROR:
        not stored) at most one line per REFUSAL_LOG_INTERVAL, with a count of those
        left out (any client can send such messages as fast as it likes)."""
        now = self.core.now()
        logged_at, unlogged = self._refusal_logs.get(level, (-math.inf, 0))
        if now - logged_at < REFUSAL_LOG_INTERVAL:
            self._refusal_logs[level] = (logged_at, unlogged + 1)
            return
        if unlogged:
            text += f" ({unlogged} more such since the last line)"
        self._refusal_logs[level] = (now, 0)
        log.log(level, "cluster: %s", text)

    def store(self, message: Message, conn: ClientConnection, packet_id: int) -> int:
        self._store_token += 1
        token = self._store_token
        now = self.core.now()
        # the live copy (forward) carries the same origin sequence as the stream's, so
        # that a catch-up knows what arrived live
        self._reserved = None
        self._sequence += 1
        sequence = self._sequence
        self._stores[token] = (conn, packet_id, message, now)
        headers = message_headers(message, origin=self.origin, sequence=sequence, now=now)
        try:
            self.nats.publish(
                topic_to_subject(message.topic, STREAM_PREFIX),
                message.payload,
                headers=headers,
                reply=f"{self._ack_prefix}{token}",
            )
        except NATSError as exc:
            # refused as DetachedLink refuses it: the publisher is disconnected (5.0:
            # 0x89) and sends it again once it reconnects
            del self._stores[token]
            if not isinstance(exc, NATSConnectionClosed):
                self._log_refusal(
                    logging.ERROR,
                    f"a message to {message.topic[:200]!r} could not be stored: {exc}",
                )
            self.core.stored(conn, packet_id, message, None)
            return 0
        if message.qos == 1:
            self._reserved = (message.payload, sequence)  # (the core forwards it now)
        return self._stream_floor

    def _on_stored(self, msg: Msg) -> None:
        """The stream's answer to one ``store``: the core routes and acknowledges."""
        try:
            token = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        pending = self._stores.pop(token, None)
        if pending is None:
            return  # it timed out already
        conn, packet_id, message, _sent = pending
        sequence: int | None = None
        try:
            reply = json.loads(msg.payload) if msg.payload else {}
            if isinstance(reply, dict) and isinstance(reply.get("seq"), int):
                sequence = reply["seq"]
            else:
                why = reply.get("error", reply) if isinstance(reply, dict) else reply
                log.error("cluster: the stream refused a message (status %s): %s", msg.status, why)
        except ValueError:
            log.error("cluster: the stream answered %r (status %s)", msg.payload[:100], msg.status)
        if sequence is not None:
            if sequence >= self._stream_floor:
                self._stream_floor = sequence + 1
            if message.qos == 2:  # (routed now: a handover's window must know it)
                key = ("", sequence)
                self._recent[key] = message.topic
                for watch in self._watches:
                    watch.add(key)
        self.core.stored(conn, packet_id, message, sequence)

    def _expire_stores(self) -> None:
        """Give up on stores the stream has not answered within STORE_TIMEOUT."""
        limit = self.core.now() - STORE_TIMEOUT
        while self._stores:
            token, (conn, packet_id, message, sent) = next(iter(self._stores.items()))
            if sent > limit:
                break
            del self._stores[token]
            log.error("cluster: no answer from the message stream in %.0f s", STORE_TIMEOUT)
            self.core.stored(conn, packet_id, message, None)

    def connected(self, client_id: str, will: Message | None, will_delay: int) -> None:
        self._claims_due.add(client_id)
        if will is not None or client_id in self._wills_due:
            self._wills_due[client_id] = None if will is None else (will, will_delay)
        self._wake.set()

    def disconnected(self, client_id: str) -> None:
        self._wills_due[client_id] = None
        self._wake.set()

    # --------------------------------------------------------------- routing (NATS)

    def interest_changed(self) -> None:
        """The router's ``on_interest``: (un)subscribe in NATS at once, in order.

        Never raises (it runs inside ``Router.subscribe``): a filter NATS cannot take
        now (the connection is closed) gets no route here; the node that joins next
        subscribes every filter the router has (``subscribe_existing``).
        """
        for topic_filter, present in self.core.router.take_interest_changes().items():
            if present and topic_filter not in self._routes:
                try:
                    self._add_route(topic_filter)
                except NATSError as exc:
                    if not isinstance(exc, NATSConnectionClosed):
                        log.error("cluster: cannot subscribe to %r in NATS: %s", topic_filter, exc)
            elif not present and topic_filter in self._routes:
                # (NATSClient.unsubscribe does not raise: a closed client sends nothing)
                group, _plain = parse_shared_filter(topic_filter)
                client = self.nats if group is None else self.shared_nats
                self._route_sent.pop(topic_filter, None)
                for sid in self._routes.pop(topic_filter):
                    client.unsubscribe(sid)
                if group is None:
                    self._plain_routes -= 1
                    if self._plain_routes == 1:
                        self._repeat_grace += 1
                        if self._nursery is not None:  # (else the check stays on)
                            self._nursery.start_soon(self._end_repeat_grace)

    def _add_route(self, topic_filter: str) -> None:
        self._routes[topic_filter] = self._subscribe(topic_filter)
        self._subs_sent += 1
        self._route_sent[topic_filter] = self._subs_sent
        if not topic_filter.startswith(SHARE_PREFIX):
            self._plain_routes += 1

    async def _end_repeat_grace(self) -> None:
        """Stop checking for repeats once NATS has answered a PING sent after the node
        went down to one plain filter: every copy of a message that matched two of its
        filters arrived before the PONG. A PING not answered in time is sent again; if
        the connection is lost, the check stays on (the node is done anyway)."""
        while True:
            try:
                await self.nats.flush(timeout=SUBACK_WAIT_TIMEOUT)
            except NATSTimeoutError:
                continue
            except NATSError:
                return
            self._repeat_grace -= 1
            return

    def subscribed(
        self, client_id: str, topic_filters: Sequence[str]
    ) -> Callable[[], Awaitable[None]] | None:
        """The core's question after a SUBSCRIBE: what must its SUBACK wait for?

        Nothing if NATS has confirmed every NATS subscription behind ``topic_filters``
        (the common case: filters other clients here hold already). Otherwise a PING on
        the connection(s) that carry them: NATS handles a connection's commands in order,
        so its PONG says that the SUBs sent before it are in place, and a message
        published on another node after the SUBACK reaches this node.
        """
        plain = shared = False
        route_sent = self._route_sent
        for topic_filter in topic_filters:
            sent = route_sent.get(topic_filter)
            if sent is None:
                continue  # (not subscribed in NATS here)
            if topic_filter.startswith(SHARE_PREFIX):
                shared = shared or sent > self._shared_confirmed
            else:
                plain = plain or sent > self._confirmed
        if not (plain or shared):
            return None
        if self.nats.is_closed or self.shared_nats.is_closed:
            return None  # no confirmation will come; this node is being replaced
        return functools.partial(self._confirm_routes, client_id, plain, shared)

    async def _confirm_routes(self, client_id: str, plain: bool, shared: bool) -> None:
        """Wait until NATS has the SUBs sent so far (on the connections asked for), at
        most SUBACK_WAIT_TIMEOUT; never raises for NATS (the SUBACK goes out anyway)."""
        mark = self._subs_sent
        try:
            with trio.fail_after(SUBACK_WAIT_TIMEOUT):
                if plain:
                    await self.nats.flush(timeout=SUBACK_WAIT_TIMEOUT)
                    self._confirmed = max(self._confirmed, mark)
                if shared:
                    await self.shared_nats.flush(timeout=SUBACK_WAIT_TIMEOUT)
                    self._shared_confirmed = max(self._shared_confirmed, mark)
        except (NATSError, trio.TooSlowError) as exc:
            if not self._unconfirmed_subacks:
                log.warning(
                    "cluster: NATS did not confirm new subscriptions (%s): the SUBACK to "
                    "%r goes out anyway; messages from other nodes may miss its new "
                    "subscriptions for a while (logged once until NATS answers again)",
                    str(exc) or type(exc).__name__,
                    client_id,
                )
            self._unconfirmed_subacks += 1
            return
        if self._unconfirmed_subacks:
            log.info(
                "cluster: NATS confirms subscriptions again; %d SUBACK(s) went out without",
                self._unconfirmed_subacks,
            )
            self._unconfirmed_subacks = 0

    def _subscribe(self, topic_filter: str) -> list[int]:
        """Subscribe to ``topic_filter``'s subjects: all of them, or none (NATSError)."""
        group, plain = parse_shared_filter(topic_filter)
        subjects = filter_to_subjects(plain)
        client = self.nats if group is None else self.shared_nats
        callback: Callable[[str, bytes], None] = self._on_message
        queue: str | None = None
        if group is not None:

            def callback(subject: str, payload: bytes) -> None:
                self._on_shared(subject, payload, topic_filter)

            queue = queue_group_name(group, plain)
        sids: list[int] = []
        try:
            for subject in subjects:
                sids.append(client.subscribe_payloads(subject, callback, queue=queue))
        except NATSError:
            for sid in sids:  # (e.g. "a/#": "a.>" taken, "a" too long for a control line)
                client.unsubscribe(sid)
            raise
        return sids

    def _topic(self, subject: str) -> str:
        """The topic of a message's subject; ``ValueError`` if it is not one of ours."""
        topic = subject_to_topic(subject)
        topics = self._topics
        if len(topics) >= TOPIC_CACHE_SIZE:
            topics.clear()
        if len(subject) <= TOPIC_CACHE_MAX_CHARS:
            topics[subject] = topic
        return topic

    def _decode(self, subject: str, payload: bytes) -> tuple[Message, str, int] | None:
        """The message in a NATS message, its origin node and sequence; None (logged) if
        malformed."""
        try:
            topic = self._topics.get(subject) or self._topic(subject)
            return decode_wire_parts(topic, payload, self.core.now())
        except (EnvelopeError, ValueError) as exc:
            log.warning("cluster: dropped a message on %r: %s", subject, exc)
            return None

    def _on_message(self, subject: str, payload: bytes) -> None:
        # the hot path of a receiving node: _decode inline, core.now() as core.clock()
        core = self.core
        try:
            topic = self._topics.get(subject) or self._topic(subject)
            message, node, sequence = decode_wire_parts(topic, payload, core.clock())
        except (EnvelopeError, ValueError) as exc:
            log.warning("cluster: dropped a message on %r: %s", subject, exc)
            return
        if (self._plain_routes > 1 or self._repeat_grace) and self._repeats.repeated(
            node, sequence
        ):
            return  # (a repeat: it matched several of this node's filters)
        self.received += 1
        if message.qos:
            self._stream_floor = max(self._stream_floor, message.sequence)
            recent = self._recent
            # QoS 2 is routed once stored: its stream sequence is exact
            key = ("", message.sequence) if message.qos == 2 else (node, sequence)
            if message.qos == 2 or len(recent) < MAX_RECENT:  # (past it, QoS 1 may come twice)
                recent[key] = topic
            for watch in self._watches:
                watch.add(key)
            self._routing = (message.payload, key)
        core.publish(message, from_cluster=True)
        # Cross-node traffic is not held back per publisher: a slow subscriber here is
        # bounded by its queue budget; QoS 1/2 past it waits in the stream (spill).
        if core.congestion_hits:
            core.take_congestion_hits()

    def _on_shared(self, subject: str, payload: bytes, shared_filter: str) -> None:
        # no repeat check: one message matches at most one subject of a share group's
        # filter, and its plain copy (if any) must not be taken for a repeat
        decoded = self._decode(subject, payload)
        if decoded is None:
            return
        self.received += 1
        self.core.publish_shared_remote(decoded[0], shared_filter)
        self.core.take_congestion_hits()

    # ----------------------------------------------------- retained and client ids

    def _on_retained(self, entry: Entry) -> None:
        try:
            topic = subject_to_topic(entry.key)
            if entry.operation != "PUT":
                self.core.retained_from_cluster(topic, None)
                return
            self.core.retained_from_cluster(
                topic, decode_retained(topic, entry.value, self.core.now())
            )
        except (EnvelopeError, ValueError) as exc:
            log.warning("cluster: ignored retained entry %r: %s", entry.key, exc)

    def _on_owner(self, entry: Entry) -> None:
        self._owners_revision = max(self._owners_revision, entry.revision)
        if entry.operation != "PUT":
            return
        try:
            owner = decode_owner(entry.value)
        except ValueError as exc:
            log.warning("cluster: ignored owner entry %r: %s", entry.key, exc)
            return
        node, origin, client_id = owner.node, owner.origin, owner.client
        if origin == self.origin:
            return  # our own claim (a restarted node of the same name is another owner)
        ours = self._claimed.get(client_id)
        if ours is None and client_id in self._claims_due:
            # our own claim is still in the air: decide when its revision is known
            seen = self._contested.get(client_id)
            if seen is None or seen[0] < entry.revision:
                self._contested[client_id] = (entry.revision, node)
            return
        if ours is None or ours < entry.revision:
            self._claimed.pop(client_id, None)
            self.core.taken_over_elsewhere(client_id, node)

    async def _claim(self, client_id: str) -> None:
        value = encode_owner(Owner(self.name, self.origin, client_id))
        revision = await self.owners.put(owner_key(client_id), value)
        self._owners_revision = max(self._owners_revision, revision)
        contested = self._contested.pop(client_id, None)
        if contested is not None and contested[0] > revision:
            self.core.taken_over_elsewhere(client_id, contested[1])
            return
        self._claimed[client_id] = revision

    async def _write_retained(self, topic: str, message: Message) -> None:
        key = topic_to_subject(topic)
        if message.payload:
            now = self.core.now()
            # an MQTT 5 Message Expiry Interval is the key's TTL: when it runs out, the
            # server deletes the key and every node's copy goes with it
            left = message.remaining_expiry(now)
            value = encode_retained(message, self.origin, now)
            await self.retained.put(key, value, ttl=None if left is None else max(1, left))
        else:
            await self.retained.delete(key)

    async def _write_will(self, client_id: str, will: tuple[Message, int] | None) -> None:
        key = f"{self.origin}.{owner_key(client_id)}"
        if will is None:
            if client_id in self._armed_wills:
                self._armed_wills.discard(client_id)
                await self.wills.delete(key)
            return
        message, delay = will
        await self.wills.put(key, encode_will(message, delay, self.origin, self.core.now()))
        self._armed_wills.add(client_id)

    def _spawn(self, *args: Any) -> None:
        assert self._nursery is not None, "the node runs inside open_cluster_node"
        self._nursery.start_soon(*args)

    # ---------------------------------------------------------- session handover

    def connect_hook(self, peer: PeerInfo, connect: Connect) -> AwaitedCheck | None:
        """Fetch the session of a resuming client from the node that has it, if any."""
        client_id = connect.client_id
        if connect.clean_start or not client_id or client_id in self.core.sessions:
            return None
        return AwaitedCheck(functools.partial(self._fetch_session, client_id))

    async def _fetch_session(self, client_id: str) -> None:
        """Ask the client id's last owner for its session and restore it here.

        A failure to get it is logged, never a refusal: the client starts a new session,
        as it would if its node had died.
        """
        try:
            owner = await self.owners.get(owner_key(client_id))
            if owner is None or owner.operation != "PUT":
                return
            origin = decode_owner(owner.value).origin
            if origin == self.origin:
                return
            window: HandoverWindow | None = None
            try:
                chunks = await self._request_chunks(f"{HANDOVER_SUBJECT}.{origin}", client_id)
            except NoRespondersError:
                # its node is gone: rebuild the session from its record and the stream
                recovered = await self._recover_session(client_id, origin)
                if recovered is None:
                    return
                saved = recovered
            else:
                if not chunks:
                    return
                saved, window = decode_handover(chunks, now=self.core.now())
        except (
            NATSError,
            HandoverError,
            ValueError,
            KeyError,
            TypeError,
            trio.TooSlowError,
        ) as exc:
            log.warning("cluster: could not fetch the session of %r: %s", client_id, exc)
            return
        if saved.client_id != client_id or client_id in self.core.sessions:
            return
        # from the restore on, what arrives here is routed to the session: the window
        # (if any) is what arrived before, on neither node
        watch: set[tuple[str, int]] = set()
        self._watches.append(watch)
        own_sequence = self._sequence
        restored = self.core.restore([saved], [])
        if not restored.sessions or window is None:
            self._watches.remove(watch)
        if restored.sessions:
            self.core.session_changed(client_id)
            log.info(
                "cluster: session of %r taken from node %s (%d queued, %d in flight)",
                client_id,
                origin,
                len(saved.pending),
                len(saved.inflight),
            )
            # its subscriptions may be new to this node: the CONNACK (session present)
            # waits, as a SUBACK does, until NATS has them
            filters = [name for name, _ in saved.subscriptions]
            confirm = self.subscribed(client_id, filters)
            if confirm is not None:
                await confirm()
            if window is not None:
                self._spawn(
                    self._fill_handover_gap, client_id, filters, window, watch, own_sequence
                )

    async def _fill_handover_gap(
        self,
        client_id: str,
        filters: list[str],
        window: HandoverWindow,
        watch: set[tuple[str, int]],
        own_sequence: int,
    ) -> None:
        """Deliver to a session taken over from another node the QoS 1/2 messages that
        reached neither node: stored after the old node let go of it and before this
        node's subscriptions for it were in place.

        They are read back from the stream (from ``window.first``) once every live copy
        of what the stream had when this node's subscriptions were in place has had time
        to arrive (the floor of 1-2 s later), and sent to that session alone, except
        those the old node had routed to it (``window``) and those that reached it here
        (``watch``: what arrived since the restore; this node's own clients' QoS 1
        messages after ``own_sequence``). They come after the live ones of that time.
        """
        try:
            last = await self._stream_last()
            if last < window.read_from():
                return  # nothing stored since the old node's floor
            with trio.move_on_after(HANDOVER_SETTLE_LIMIT):
                while self._floor_back <= last:
                    await self._beat.wait()
            plain = [f for f in filters if not f.startswith(SHARE_PREFIX)]
            replayed, complete = await self._replay(plain, window.read_from())
            owed: list[tuple[StoredMessage, tuple[str, int]]] = []
            for message, origin in replayed:
                if message.sequence > last or not window.owes(message, origin):
                    continue
                if message.qos == 2:
                    if ("", message.sequence) in watch:
                        continue
                elif (origin.node, origin.sequence) in watch or (
                    origin.node == self.origin and origin.sequence > own_sequence
                ):
                    continue
                owed.append((message, stream_key(message, origin)))
            delivered = self.core.publish_to(client_id, self._routed(owed), plain)
            if delivered:
                log.warning(
                    "cluster: session of %r: delivered %d message(s) stored while it moved "
                    "between nodes",
                    client_id,
                    delivered,
                )
            if not complete:
                log.error(
                    "cluster: session of %r: more was stored while it moved between nodes "
                    "than is read back (%d messages or %d MiB)",
                    client_id,
                    MAX_REPLAY,
                    MAX_REPLAY_BYTES // (1024 * 1024),
                )
        except (NATSError, trio.TooSlowError) as exc:
            log.error(
                "cluster: session of %r: could not read back what was stored while it "
                "moved between nodes: %s",
                client_id,
                exc,
            )
        finally:
            self._watches.remove(watch)

    # ------------------------------------------------ session records and recovery

    def _session_signature(
        self, session: Session, subscriptions: dict[str, SubscriptionOptions]
    ) -> object:
        """What changes whenever a session's record would (cheap: no queue scan)."""
        return (
            len(session.queued_entries),
            len(session.inflight_out),
            session.next_packet_id,
            session.dropped,
            session.expiry_interval,
            tuple(sorted(session.inflight_in)),
            # (options compare by value; a dict keeps its order: a reordering only
            # costs one write more)
            tuple(subscriptions.items()),
            self._spilled[session.client_id].first() if session.client_id in self._spilled else 0,
        )

    def _session_record(
        self, session: Session, subscriptions: dict[str, SubscriptionOptions], seen: int
    ) -> tuple[bytes, int]:
        """(record, highest stream sequence seen outstanding) of a persistent session.

        The record's cursor ``acked`` is a stream sequence below every QoS 1/2 message
        still owed to the client; ``sent`` the highest one sent to it. ``seen`` is what
        the last record saw.
        """
        client_id = session.client_id
        sent = [i.item.message.sequence for i in session.inflight_out.values()]
        queued = [item.message.sequence for item in session.queued_items()]
        spilled = self._spilled.get(client_id)
        kept = [bound for bound, _when in spilled.keys.values()] if spilled else []
        outstanding = [seq for seq in (*sent, *queued, *kept) if seq]
        if outstanding:
            seen = max(seen, *outstanding)
            acked = min(outstanding) - 1
        else:
            acked = seen  # everything seen was acknowledged; later ones were not seen
        record = {
            "client": client_id,
            "version": int(session.protocol_version),
            "expiry": session.expiry_interval,
            "subscriptions": [[f, *attrs.astuple(o)] for f, o in subscriptions.items()],
            "acked": acked,
            "sent": max((seq for seq in sent if seq), default=acked),
            # QoS 2 messages it published that were stored and answered with PUBREC:
            # a retransmission of one of them is not delivered twice
            "received": sorted(session.inflight_in),
        }
        return json.dumps(record).encode(), seen

    async def save_sessions(self) -> None:
        """Keep this node's persistent sessions' records current (every 0.2 s)."""
        while True:
            await trio.sleep(SESSION_SAVE_INTERVAL)
            try:
                await self.save_sessions_once()
            except (NATSError, trio.TooSlowError) as exc:
                log.warning("cluster: session records not saved (will retry): %s", exc)

    async def save_sessions_once(self, *, every: bool = False) -> None:
        """Write the records of the persistent sessions that changed since the last call
        (the core marks them: ``take_changed_sessions``), of every one (*every*, or
        at least every SESSION_CHECK_ALL seconds: a change nothing marked, such as a
        message dropped for a full queue, is written then), and delete those of sessions
        that ended here."""
        core = self.core
        changed = core.take_changed_sessions()
        now = core.now()
        everything = every or changed is None or now >= self._check_all_at
        try:
            if everything:
                self._check_all_at = now + SESSION_CHECK_ALL
                await self._save_sessions(list(core.sessions), everything=True)
            else:
                assert changed is not None
                await self._save_sessions(changed, everything=False)
        except BaseException:
            # not all written (NATS, cancelled): the next call looks at them again
            if everything:
                self._check_all_at = now
            elif changed:
                core.give_back_changed_sessions(changed)
            raise

    async def _save_sessions(self, client_ids: Iterable[str], *, everything: bool) -> None:
        live: set[str] = set()
        for client_id in client_ids:
            session = self.core.sessions.get(client_id)
            if (
                session is None
                or session.expiry_interval == 0
                or client_id.startswith(LOCAL_PREFIX)
            ):
                if not everything and self._session_records.pop(client_id, None) is not None:
                    await self.sessions.delete(f"{self.origin}.{owner_key(client_id)}")
                continue  # nothing to resume
            live.add(client_id)
            subscriptions = self.core.router.subscriptions_of(client_id)
            signature = self._session_signature(session, subscriptions)
            previous = self._session_records.get(client_id)
            if previous is not None and previous[0] == signature:
                continue  # unchanged: no queue scan, no write
            record, seen = self._session_record(
                session, subscriptions, 0 if previous is None else previous[1]
            )
            await self.sessions.put(f"{self.origin}.{owner_key(client_id)}", record)
            self._session_records[client_id] = (signature, seen)
        if everything:
            for client_id in set(self._session_records) - live:
                del self._session_records[client_id]
                await self.sessions.delete(f"{self.origin}.{owner_key(client_id)}")

    async def _recover_session(self, client_id: str, dead: str) -> SavedSession | None:
        """The session ``client_id`` had on dead node ``dead``: its record, and the QoS
        1/2 messages the stream holds for it after its cursor (those it had been sent
        go out again with DUP)."""
        entry = await self.sessions.get(f"{dead}.{owner_key(client_id)}")
        if entry is None or entry.operation != "PUT":
            return None
        record = json.loads(entry.value)
        if record.get("client") != client_id:
            return None
        subscriptions = tuple(
            (item[0], SubscriptionOptions(*item[1:])) for item in record["subscriptions"]
        )
        acked, sent = int(record["acked"]), int(record["sent"])
        replayed, _complete = await self._replay([f for f, _options in subscriptions], acked + 1)
        messages = [message for message, _origin in replayed]
        router = Router()
        for topic_filter, options in subscriptions:
            router.subscribe(client_id, topic_filter, options)
        inflight: list[tuple[int, QueuedMessage, OutboundState]] = []
        pending: list[QueuedMessage] = []
        for message in messages:
            for delivery in router.deliveries(message.topic):
                qos = min(message.qos, delivery.qos)
                retain = message.retain and delivery.retain_as_published
                item = QueuedMessage(message, qos, retain, delivery.subscription_identifiers)
                if qos and message.sequence <= sent and len(inflight) < 65535:
                    state = OutboundState.AWAIT_PUBACK if qos == 1 else OutboundState.AWAIT_PUBREC
                    inflight.append((len(inflight) + 1, item, state))
                else:
                    pending.append(item)
        log.warning(
            "cluster: recovered the session of %r from dead node %s: %d to send again "
            "(DUP), %d queued",
            client_id,
            dead,
            len(inflight),
            len(pending),
        )
        return SavedSession(
            client_id=client_id,
            protocol_version=ProtocolVersion(int(record["version"])),
            expiry_interval=int(record["expiry"]),
            expires_at=None,
            next_packet_id=len(inflight) + 1,
            inflight_in=tuple(int(packet_id) for packet_id in record.get("received", ())),
            subscriptions=subscriptions,
            pending=tuple(pending),
            inflight=tuple(inflight),
        )

    async def _replay(
        self, topic_filters: Iterable[str], first: int
    ) -> tuple[list[tuple[StoredMessage, Origin]], bool]:
        """The stream's messages from sequence ``first`` on that match ``topic_filters``,
        in stream order, each once, with where they entered the cluster; and whether
        that is all of them (False: MAX_REPLAY messages or MAX_REPLAY_BYTES reached)."""
        found: dict[int, tuple[StoredMessage, Origin]] = {}
        size = 0
        for subject in _stream_subjects(topic_filters):
            start = first
            while len(found) < MAX_REPLAY and size < MAX_REPLAY_BYTES:
                got, more = await self._direct_get(subject, start, 1000)
                for message, origin in got:
                    found[message.sequence] = (message, origin)
                    size += len(message.payload)
                if more is None:
                    break
                start = more + 1
        complete = len(found) < MAX_REPLAY and size < MAX_REPLAY_BYTES
        return [found[sequence] for sequence in sorted(found)], complete

    async def _direct_get(
        self, subject: str, first: int, batch: int
    ) -> tuple[list[tuple[StoredMessage, Origin]], int | None]:
        """Up to ``batch`` of the stream's messages on ``subject`` from sequence
        ``first`` on, in stream order (one direct-get request); and, if the batch was
        full (there may be more), the last sequence it read, else None.

        A stored message that is not a trio-mqtt node's (anyone may publish to the
        stream's subjects) is skipped with a WARNING, never raised.
        """
        request = {"seq": first, "next_by_subj": subject, "batch": batch}
        replies = await self.nats.request_many(
            f"$JS.API.DIRECT.GET.{MESSAGES_STREAM}", json.dumps(request).encode()
        )
        now = self.core.now()
        got: list[tuple[StoredMessage, Origin]] = []
        read = 0
        sequence = 0
        for reply in replies:
            if reply.status is not None or reply.headers is None:
                continue
            read += 1
            sequence = int(reply.headers.get("Nats-Sequence") or 0)
            try:
                topic = subject_to_topic(reply.headers.get("Nats-Subject") or "", STREAM_PREFIX)
                message, origin = message_from_nats(
                    topic, reply.payload, reply.headers.as_dict(), now=now
                )
            except ValueError as exc:  # (EnvelopeError is one)
                log.warning("cluster: skipped stream message %d: %s", sequence, exc)
                continue
            got.append((StoredMessage.of(message, sequence), origin))
        return got, (sequence if read == batch else None)

    # ------------------------------------------------- slow sessions (spill, refill)

    def spill(self, client_id: str, message: StoredMessage) -> bool:
        """Keep a stored message that does not fit in ``client_id``'s queue in the
        stream, to read it back as the queue empties (``refill_spilled``).

        Only a message being routed now (``_routing``: its stream copy can be found
        again), at most MAX_SPILLED per session; False: it is dropped.
        """
        routing = self._routing
        if routing is None or routing[0] is not message.payload:
            return False
        session = self.core.sessions.get(client_id)
        spilled = self._spilled.get(client_id)
        if spilled is None or spilled.session is not session:
            spilled = self._spilled[client_id] = Spilled(session)
            log.warning(
                "cluster: client %r is too slow: QoS 1/2 messages for it that do not fit "
                "in its queue wait in the stream, and are sent as it catches up",
                client_id,
            )
        elif len(spilled.keys) >= MAX_SPILLED:
            return False
        bound = message.sequence
        spilled.keys[routing[1]] = (bound, self.core.now())
        if spilled.scan_from is not None and bound < spilled.scan_from:
            spilled.scan_from = bound
        self.core.session_changed(client_id)  # (its record's cursor stays below it)
        return True

    def kept(self) -> int:
        """How many messages are kept in the stream for slow clients now."""
        return sum(len(spilled.keys) for spilled in self._spilled.values())

    def _routed(
        self, messages: Iterable[tuple[StoredMessage, tuple[str, int]]]
    ) -> Iterator[StoredMessage]:
        """``messages`` for the core to route, each with its ``_routing`` set first."""
        for message, key in messages:
            self._routing = (message.payload, key)
            yield message

    async def refill_spilled(self) -> None:
        """Send slow sessions what was kept in the stream for them, as their queues
        empty (every REFILL_INTERVAL)."""
        while True:
            await trio.sleep(REFILL_INTERVAL)
            for client_id in list(self._spilled):
                try:
                    while await self._refill(client_id):
                        pass  # (a full batch went out and there is room for more)
                except (NATSError, trio.TooSlowError) as exc:
                    log.warning(
                        "cluster: messages kept for %r not read back yet (will retry): %s",
                        client_id,
                        exc,
                    )

    async def _refill(self, client_id: str) -> bool:
        """Read back a batch of what was kept for ``client_id`` and queue it, in stream
        order, if its queue is at most half full; True if there may be room for more."""
        spilled = self._spilled.get(client_id)
        session = self.core.sessions.get(client_id)
        if spilled is None or session is None or spilled.session is not session:
            self._spilled.pop(client_id, None)  # (it ended: what was queued for it is gone)
            return False
        if session.connection is None or not session.has_room_to_refill():
            return False  # (offline: kept until it is back, here or on another node)
        filters = [
            f
            for f in self.core.router.subscriptions_of(client_id)
            if not f.startswith(SHARE_PREFIX)
        ]
        if not filters:  # (it unsubscribed: nothing kept is for it any more)
            del self._spilled[client_id]
            self.core.refill(client_id, (), ())
            return False
        first = spilled.first() if spilled.scan_from is None else spilled.scan_from
        spilled.scan_from = None  # (spill() lowers nothing meanwhile: first() covers it)
        # every message up to it was stored before the reads below: each read sees those
        # of its subject (one stored during the reads may be missed by an earlier one)
        last = await self._stream_last()
        read: list[tuple[StoredMessage, Origin]] = []
        through = math.inf  # what was read is all there is up to this sequence
        for subject in _stream_subjects(filters):
            got, more = await self._direct_get(subject, first, REFILL_BATCH)
            read += got
            if more is not None:
                through = min(through, more)
        if self._spilled.get(client_id) is not spilled:
            return False  # (handed over meanwhile)
        if spilled.scan_from is None:  # the next read goes on after this one
            spilled.scan_from = int(min(through, last)) + 1
        read.sort(key=lambda found: found[0].sequence)
        batch: list[tuple[StoredMessage, tuple[str, int]]] = []
        for message, origin in read:
            if message.sequence > through:
                break
            key = stream_key(message, origin)
            if spilled.keys.pop(key, None) is not None:
                batch.append((message, key))
        if through == math.inf:
            now = self.core.now()
            gone = [key for key, (_b, when) in spilled.keys.items() if now - when > SPILL_GIVE_UP]
            for key in gone:
                del spilled.keys[key]
            if gone:
                log.error(
                    "cluster: %d message(s) kept in the stream for %r were not found there "
                    "after %d s: lost",
                    len(gone),
                    client_id,
                    SPILL_GIVE_UP,
                )
                self.core.spill_lost(client_id, len(gone))
        full = False  # the queue overflowed again
        if batch or not spilled.keys:
            left = len(spilled.keys)
            full = self.core.refill(client_id, self._routed(batch), filters)
            self.refilled += len(batch) - (len(spilled.keys) - left)  # (less those kept again)
            if spilled.keys and not full:
                self.core.spill_again(client_id)  # (more to come: later ones after them)
        if not spilled.keys:
            del self._spilled[client_id]
            log.info("cluster: client %r caught up with what was kept for it", client_id)
            return False
        return through != math.inf and not full

    async def _request_chunks(self, subject: str, client_id: str) -> list[bytes]:
        """Send one request, collect the reply chunks (none: no session there).

        ``NoRespondersError`` if no node listens on ``subject`` (it died).
        """
        inbox = self.nats.new_inbox()
        chunks: dict[int, bytes] = {}
        total: list[int] = []
        nobody: list[bool] = []
        done = trio.Event()

        def on_chunk(msg: Msg) -> None:
            if msg.status == 503:
                nobody.append(True)  # no node listens there: that node is gone
            if not msg.payload:
                if not chunks:  # (an answer to a repeated request may follow the chunks)
                    done.set()  # "no session here" (or nobody to ask)
                return
            try:
                index, count = chunk_position(msg.payload)
            except HandoverError:
                done.set()
                return
            chunks[index] = msg.payload
            total[:] = [count]
            if len(chunks) == count:
                done.set()

        sid = self.nats.subscribe(inbox, on_chunk)
        try:
            # the same inbox for every attempt: a late answer to the first still counts
            for attempt, timeout in enumerate(HANDOVER_TIMEOUTS, 1):
                self.nats.publish(subject, client_id.encode(), reply=inbox)
                with trio.move_on_after(timeout):
                    await done.wait()
                if done.is_set():
                    break
                if attempt == len(HANDOVER_TIMEOUTS):
                    raise trio.TooSlowError(f"no answer on {subject}")
                log.info("cluster: no answer on %s for %r yet: asking again", subject, client_id)
        finally:
            self.nats.unsubscribe(sid)
        if nobody:
            raise NoRespondersError(subject)
        if not total or len(chunks) != total[0]:
            return []
        return [chunks[index] for index in range(total[0])]

    def _on_handover(self, msg: Msg) -> None:
        """Another node resumes one of our clients' sessions: hand it over."""
        if msg.reply is None:
            return
        try:
            client_id = msg.payload.decode()
        except UnicodeDecodeError:
            return
        now = self.core.now()
        subscriptions = self.core.router.subscriptions_of(client_id)
        session = self.core.hand_over(client_id, msg.subject)
        if session is None:
            self.nats.publish(msg.reply, b"")
            return
        self._claimed.pop(client_id, None)
        saved = saved_session(session, now, subscriptions=subscriptions)
        window = self._handover_window(subscriptions, self._spilled.pop(client_id, None))
        for chunk in encode_session(saved, origin=self.origin, now=now, window=window):
            self.nats.publish(msg.reply, chunk)

    def _handover_window(
        self, subscriptions: Iterable[str], spilled: Spilled | None
    ) -> HandoverWindow:
        """What this node routed to a session it hands over now, for the node that takes
        it (``HandoverWindow``): the recent QoS 1/2 messages whose topics match the
        session's filters (its share groups' left out, as in a catch-up), and those kept
        in the stream for it (``spilled``), up to MAX_SPILLED_HANDED_OVER."""
        plain = [f for f in subscriptions if not f.startswith(SHARE_PREFIX)]
        matched: dict[str, bool] = {}
        seen: set[tuple[str, int]] = set()
        for generation in (self._recent, *self._recent_back):
            for key, topic in generation.items():
                hit = matched.get(topic)
                if hit is None:
                    hit = matched[topic] = any(topic_matches(f, topic) for f in plain)
                if hit:
                    seen.add(key)
        kept: dict[tuple[str, int], tuple[int, float]] = {}
        if spilled is not None:
            kept = dict(sorted(spilled.keys.items(), key=lambda k: k[1][0]))
            if len(kept) > MAX_SPILLED_HANDED_OVER:
                lost = len(kept) - MAX_SPILLED_HANDED_OVER
                kept = dict(list(kept.items())[:MAX_SPILLED_HANDED_OVER])
                log.error(
                    "cluster: %d message(s) kept in the stream for a session handed over "
                    "are not sent (at most %d go with it)",
                    lost,
                    MAX_SPILLED_HANDED_OVER,
                )
        return HandoverWindow(
            self._floor_back,
            self.origin,
            self._sequence,
            frozenset(seen - kept.keys()),
            spilled=frozenset(kept),
            spilled_from=min((bound for bound, _when in kept.values()), default=0),
        )

    def catch_up_point(self) -> CatchUp:
        """Where the node that joins after this one (NATS lost) catches up from."""
        return CatchUp(
            self._floor_back,
            self._previous_origins | {self.origin},
            frozenset().union(self._recent, *self._recent_back),
            self._owners_revision,
            self._spilled,
        )

    async def take_back(self, previous: CatchUp) -> None:
        """Join again as the same broker: claim the clients connected here, record their
        wills under this node's origin, and retire the earlier nodes' keys.

        Nothing reached NATS while the broker was cut off: clients that connected
        meanwhile are not claimed, and the earlier node's wills and heartbeat key are
        under its own origin, which other nodes would take for a dead node's (and
        publish the wills of clients still connected here). A client id that another
        node claimed while this broker was cut off (a revision above the last it had
        seen) is the newer connection: the one here is closed as taken over (5.0:
        DISCONNECT 0x8E). An older claim by another node is a connection the client
        left for this one: it is claimed here.
        """
        ours = previous.origins | {self.origin}
        try:
            clients = [conn.client_id for conn in self.core.connected_clients()]
            entries = await self.owners.get_many([owner_key(c) for c in clients])
            for client_id in clients:
                entry = entries.get(owner_key(client_id))
                current = self.core.connected_will(client_id)  # (after the wait)
                if current is None:
                    continue  # gone meanwhile: its will was dealt with here
                if entry is not None and entry.operation == "PUT":
                    try:
                        owner: Owner | None = decode_owner(entry.value)
                    except ValueError:
                        owner = None
                    if (
                        owner is not None
                        and owner.origin not in ours
                        and entry.revision > previous.owners_revision
                    ):
                        self.core.taken_over_elsewhere(client_id, owner.node)
                        continue
                self.connected(client_id, *current)
            await self.settled()
            await self.save_sessions_once(every=True)  # (its records first, then the old ones go)
            for origin in previous.origins:
                await self.nodes.delete(origin)  # (not expired: nobody reaps it)
                for bucket in (self.wills, self.sessions):
                    for entry in await bucket.entries(f"{origin}.>"):
                        if entry.operation == "PUT":
                            await bucket.delete(entry.key)
        except (NATSError, trio.TooSlowError) as exc:
            log.error("cluster: could not take back this broker's clients: %s", exc)

    async def catch_up(self, since: CatchUp) -> None:
        """Deliver here what the stream stored while this node was cut off from NATS.

        Live messages between nodes travel over core NATS, so the QoS 1/2 messages
        routed to this node while it had no NATS connection never arrived: read them
        back from the stream (from ``since.first``, a little before the loss) for the
        filters held here, and route them as if they had just come from their node. Not
        again: what this broker's clients published (routed here already) and what
        arrived live in the last seconds before the loss or since the join (``_recent``:
        a QoS 1 message's stream copy carries its live copy's origin sequence, a QoS 2
        message's live copy its stream sequence). Share groups are left out (their
        members elsewhere may have had them).
        """
        self._catching_up = True
        try:
            filters = [f for f in self.core.router.filters() if not f.startswith(SHARE_PREFIX)]
            if not filters:
                return
            replayed, complete = await self._replay(filters, since.first)
            own = since.origins | {self.origin}
            delivered = 0
            for message, origin in replayed:
                # what _on_message remembers of a message received live (an origin
                # sequence 0: stored by an older version, nothing to compare)
                key = stream_key(message, origin)
                if origin.node in own or (
                    key[1]  # (the lost node's recent ones are in _recent: open_cluster_node)
                    and (key in self._recent or any(key in back for back in self._recent_back))
                ):
                    continue
                self._recent[key] = message.topic
                self._routing = (message.payload, key)
                self.core.publish(message, from_cluster=True)
                delivered += 1
                self.caught_up += 1
                if delivered % 500 == 0:
                    await trio.lowlevel.checkpoint()  # (let the clients' tasks run too)
            if delivered:
                log.warning(
                    "cluster: delivered %d message(s) stored while this node was cut off from NATS",
                    delivered,
                )
            if not complete:
                log.error(
                    "cluster: more was stored while this node was cut off from NATS than "
                    "a catch-up reads back (%d messages or %d MiB): only the first %d "
                    "were read",
                    MAX_REPLAY,
                    MAX_REPLAY_BYTES // (1024 * 1024),
                    len(replayed),
                )
        except (NATSError, trio.TooSlowError) as exc:
            log.error("cluster: could not read back what was stored meanwhile: %s", exc)
        finally:
            self._catching_up = False

    async def heartbeat(self) -> None:
        """Keep this node's key alive; when it expires, the others take its wills."""
        value = json.dumps({"node": self.name}).encode()
        while True:
            self._expire_stores()
            try:
                await self.nodes.put(self.origin, value, ttl=HEARTBEAT_TTL)
            except (NATSError, trio.TooSlowError) as exc:
                # one slow answer is no reason to die; HEARTBEAT_TTL allows a few misses
                log.warning("cluster: heartbeat not written: %s", exc)
            # every heartbeat, so that _floor_back is never older than 1-2 s: a catch-up
            # or a handover's window reads back from it
            try:
                await self.refresh_stream_floor()
            except (NATSError, trio.TooSlowError) as exc:
                log.debug("cluster: stream's last sequence not read: %s", exc)
            if not self._catching_up:  # (until then, a new loss catches up from as far)
                self._floor_back = self._floor_seen
                self._recent_back = (self._recent, self._recent_back[0])
                self._recent = {}
                self._beat.set()
                self._beat = trio.Event()
            self._floor_seen = self._stream_floor
            await trio.sleep(HEARTBEAT_INTERVAL)

    async def refresh_stream_floor(self) -> None:
        """Raise ``_stream_floor`` to the stream's last sequence + 1 (so that the
        floor of a node that stored and received nothing for a while is not old)."""
        last = await self._stream_last()
        if last >= self._stream_floor:
            self._stream_floor = last + 1

    async def _stream_last(self) -> int:
        """The stream's last sequence now (0: empty, or an answer without it)."""
        return _last_sequence(await api_request(self.nats, f"STREAM.INFO.{MESSAGES_STREAM}"))

    def raise_stream_floor(self, info: dict[str, Any]) -> None:
        """Raise ``_stream_floor`` from a stream info reply (``state.last_seq``)."""
        last = _last_sequence(info)
        if last >= self._stream_floor:
            self._stream_floor = last + 1

    def _on_node(self, entry: Entry) -> None:
        if entry.operation == "PUT" or entry.key == self.origin or "." in entry.key:
            return
        if entry.reason != "MaxAge":
            return  # deleted by the node itself: it left cleanly and saw to its wills
        log.warning("cluster: node %s stopped heartbeating", entry.key)
        self._spawn(self._reap, entry.key)

    async def _reap(self, dead: str) -> None:
        """Publish the wills of node ``dead`` (if this node wins the race to do it)."""
        try:
            await self.nodes.create(f"reaped.{dead}", self.origin.encode())
            entries = await self.wills.entries(f"{dead}.>")
        except KeyExistsError:
            return  # another survivor does it
        except (NATSError, trio.TooSlowError) as exc:
            log.error("cluster: could not take over the wills of node %s: %s", dead, exc)
            return
        wills = [entry for entry in entries if entry.operation == "PUT"]
        log.warning("cluster: publishing the %d wills of dead node %s", len(wills), dead)
        for entry in wills:
            try:
                message, delay = decode_will(entry.value, self.core.now())
            except ValueError as exc:
                log.warning("cluster: ignored will %r of dead node %s: %s", entry.key, dead, exc)
                continue
            self._spawn(self._publish_orphan_will, dead, entry.key, message, delay)

    async def _publish_orphan_will(self, dead: str, key: str, message: Message, delay: int) -> None:
        """Publish the will of a client of dead node ``dead``, after its delay, unless
        the client has connected elsewhere meanwhile ([MQTT-3.1.3-9]).

        NATS failing to answer is logged, not fatal to the node.
        """
        try:
            await self._settle_orphan_will(dead, key, message, delay)
        except (NATSError, trio.TooSlowError) as exc:
            log.error("cluster: will of %r (dead node %s): %s", message.publisher, dead, exc)

    async def _settle_orphan_will(self, dead: str, key: str, message: Message, delay: int) -> None:
        if delay:
            await trio.sleep(delay)
        alive = await self.nodes.get(dead)
        if alive is not None and alive.operation == "PUT":
            log.warning("cluster: node %s is back (it was only slow): its wills stay", dead)
            return
        client_id = message.publisher
        if client_id is not None:
            owner = await self.owners.get(owner_key(client_id))
            if owner is not None and owner.operation == "PUT":
                try:
                    moved = decode_owner(owner.value).origin != dead
                except ValueError:
                    moved = False
                if moved:
                    log.info("cluster: will of %r dropped: it reconnected elsewhere", client_id)
                    await self.wills.delete(key)
                    return
        log.info("cluster: publishing will of %r to %r (its node died)", client_id, message.topic)
        self.core.stats.wills_published += 1
        self.core.publish(message)
        await self.wills.delete(key)

    async def write_loop(self) -> None:
        """Write what the core decided to the key-value buckets, in order, one at a time.

        A write NATS does not answer in time is logged and not retried: the next write
        of the same key says the newer truth anyway.
        """
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                self._idle = trio.Event()
                while self._retained_writes or self._claims_due or self._wills_due:
                    try:
                        await self._write_one()
                    except (NATSError, trio.TooSlowError) as exc:
                        log.warning("cluster: a key-value write failed: %s", exc)
                self._idle.set()
        finally:
            self._idle.set()  # (cancelled: nobody may wait for writes that will not come)

    async def _write_one(self) -> None:
        if self._wills_due:
            client_id = next(iter(self._wills_due))
            await self._write_will(client_id, self._wills_due.pop(client_id))
        if self._claims_due:
            client_id = next(iter(self._claims_due))
            try:
                await self._claim(client_id)
            finally:
                self._claims_due.discard(client_id)
        if self._retained_writes:
            topic = next(iter(self._retained_writes))
            message = self._retained_writes.pop(topic)
            await self._write_retained(topic, message)

    async def settled(self) -> None:
        """Wait until every key-value write decided so far is done (tests, shutdown)."""
        while (
            self._retained_writes or self._claims_due or self._wills_due or not self._idle.is_set()
        ) and not self.nats.is_closed:
            await self._idle.wait()
            await trio.lowlevel.checkpoint()

    async def sync(self) -> None:
        """Wait until NATS has everything this node decided so far: its (un)subscriptions
        and publishes (a PING/PONG on each connection) and its key-value writes."""
        await self.nats.flush()
        await self.shared_nats.flush()
        await self.settled()

    def subscribe_existing(self) -> None:
        """Subscribe in NATS for the filters that exist already (restored sessions)."""
        self.core.router.take_interest_changes()
        for topic_filter in self.core.router.filters():
            if topic_filter not in self._routes:
                try:
                    self._add_route(topic_filter)
                except NATSLocalError as exc:  # one client's filter must not stop the join
                    log.error("cluster: cannot subscribe to %r in NATS: %s", topic_filter, exc)


@attrs.define(eq=False)
class DetachedLink:
    """The core's ``ClusterLink`` while its node is cut off from NATS.

    The node serves its own clients alone: messages reach local subscribers only, and a
    QoS 1/2 message, which cannot be stored, is refused as ``store`` refuses it when the
    stream does not answer (the publisher is disconnected, 5.0: 0x89, and sends it again
    once it reconnects).
    """

    core: BrokerCore
    # the broker's totals (a detached broker's messages count as not forwarded)
    counters: ClusterCounters | None = None
    dropped: int = 0

    def forward(self, message: Message) -> None:
        self.dropped += 1
        if self.counters is not None:
            self.counters.not_forwarded += 1

    def store(self, message: Message, conn: ClientConnection, packet_id: int) -> int:
        self.core.stored(conn, packet_id, message, None)
        return 0

    def spill(self, client_id: str, message: StoredMessage) -> bool:
        return False  # (the stream cannot be read now: dropped as on one node)

    def connected(self, client_id: str, will: Message | None, will_delay: int) -> None:
        pass

    def disconnected(self, client_id: str) -> None:
        pass

    def subscribed(
        self, client_id: str, topic_filters: Sequence[str]
    ) -> Callable[[], Awaitable[None]] | None:
        return None  # nobody else to tell: the SUBACK goes out at once


#: About what a message's envelope adds on its way through NATS (origin, sequence
#: numbers, publisher, addresses): a NATS server must take max_packet_size plus this.
ENVELOPE_ALLOWANCE = 4096


def payload_limit_warning(server_info: dict[str, Any], max_packet_size: int) -> str | None:
    """Why PUBLISH packets the broker accepts may not fit the NATS server, or None.

    nats-server refuses a message above its ``max_payload`` (1 MiB unless configured):
    such a PUBLISH reaches this node's subscribers only (QoS 0) or is refused (QoS 1/2).
    """
    max_payload = server_info.get("max_payload")
    if not isinstance(max_payload, int) or max_packet_size + ENVELOPE_ALLOWANCE <= max_payload:
        return None
    return (
        f"the NATS server takes messages of up to {max_payload} bytes (its max_payload) but "
        f"[broker] max_packet_size is {max_packet_size}: a PUBLISH larger than about "
        f"{max(0, max_payload - ENVELOPE_ALLOWANCE)} bytes cannot reach the other nodes "
        f"(QoS 0: this node's subscribers only; QoS 1/2: refused, 0x89). Set "
        f"'max_payload: {max_packet_size + ENVELOPE_ALLOWANCE}' in the NATS server's "
        f"config, or lower max_packet_size"
    )


@asynccontextmanager
async def open_cluster_node(
    core: BrokerCore,
    config: ClusterConfig,
    catch_up: CatchUp | None = None,
    counters: ClusterCounters | None = None,
) -> AsyncIterator[ClusterNode]:
    """Join the cluster for the duration of the block (see the module docstring).

    ``catch_up``: this broker's previous node lost NATS (``catch_up_point``); once the
    node's subscriptions are in place, what was stored meanwhile is delivered here.
    ``counters``: the broker's totals; this node's counts are added to them when it ends.

    From the block's end until this returns the core has a ``DetachedLink``; if the
    node fails (NATS lost) it keeps it, and the caller decides what comes next.
    """
    name = config.node_name or default_node_name()
    urls = list(config.nats_urls)
    ssl_context = nats_client_ssl_context(config)  # None: no nats_tls_* files
    first = config.nats_tls_handshake_first
    async with (
        open_nats_client(
            urls,
            name=f"trio-mqtt {name}",
            no_echo=True,
            ssl_context=ssl_context,
            tls_handshake_first=first,
        ) as nats,
        open_nats_client(
            urls,
            name=f"trio-mqtt {name} shared",
            ssl_context=ssl_context,
            tls_handshake_first=first,
        ) as shared_nats,
    ):
        warning = payload_limit_warning(nats.server_info, core.config.max_packet_size)
        if warning is not None:
            log.warning("cluster: %s", warning)
        retained = await KeyValue.open(
            nats, RETAINED_BUCKET, replicas=config.replicas, per_key_ttl=True
        )
        owners = await KeyValue.open(nats, OWNERS_BUCKET, replicas=config.replicas)
        wills = await KeyValue.open(nats, WILLS_BUCKET, replicas=config.replicas)
        sessions = await KeyValue.open(nats, SESSIONS_BUCKET, replicas=config.replicas)
        nodes = await KeyValue.open(
            nats, NODES_BUCKET, replicas=config.replicas, per_key_ttl=True, ttl=24 * 3600
        )
        stream_info = await ensure_stream(
            nats,
            {
                "name": MESSAGES_STREAM,
                "subjects": [f"{STREAM_PREFIX}.>", f"{STREAM_PREFIX}_d.>"],
                "retention": "limits",
                "storage": "file",
                "num_replicas": config.replicas,
                "discard": "old",
                # kept as long as a session may wait for them, at least a minute
                "max_age": int(max(60, min(core.config.max_session_expiry, 7 * 86400)) * 1e9),
                "allow_direct": True,
            },
        )
        node = ClusterNode(
            core=core,
            name=name,
            nats=nats,
            shared_nats=shared_nats,
            retained=retained,
            owners=owners,
            wills=wills,
            nodes=nodes,
            sessions=sessions,
            counters=ClusterCounters() if counters is None else counters,
        )
        node._idle.set()
        nats.on_closed = shared_nats.on_closed = node.stand_down
        node.raise_stream_floor(stream_info)
        node._floor_back = node._floor_seen = node._stream_floor
        if catch_up is not None:
            node._floor_back = min(node._floor_back, catch_up.first)
            node._recent.update(dict.fromkeys(catch_up.seen, ""))
            node._spilled.update(catch_up.spilled)
            node._previous_origins = catch_up.origins
        async with trio.open_nursery() as nursery:
            retained_watch = await retained.watch(">", node._on_retained, include_current=True)
            owners_watch = await owners.watch(">", node._on_owner, include_current=False)
            node._nursery = nursery
            node._ack_prefix = nats.new_inbox() + "."
            nats.subscribe(node._ack_prefix + "*", node._on_stored)
            nats.subscribe(f"{HANDOVER_SUBJECT}.{node.origin}", node._on_handover)
            core.add_connect_hook(node.connect_hook)
            await nodes.put(node.origin, b"{}", ttl=HEARTBEAT_TTL)
            nodes_watch = await nodes.watch(">", node._on_node, include_current=False)
            nursery.start_soon(node.heartbeat)
            nursery.start_soon(node.save_sessions)
            nursery.start_soon(node.refill_spilled)
            core.join_cluster(node, node.interest_changed)
            node.subscribe_existing()
            nursery.start_soon(node.write_loop)
            if catch_up is not None:
                # after the subscriptions: what is stored from now on comes live (if it
                # is read back too, catch_up knows it arrived: _recent)
                await node.nats.flush()
                nursery.start_soon(node.catch_up, catch_up)
                nursery.start_soon(node.take_back, catch_up)
            log.info("cluster: node %s joined through %s", name, ", ".join(map(redact_url, urls)))
            try:
                yield node
            finally:
                # a stand-in until the block is left: what this node decides from here on
                # cannot reach NATS (a QoS 1/2 message is refused, not acknowledged
                # unstored); it stays if the block ends with an error (NATS lost)
                node.detach()
                core.remove_connect_hook(node.connect_hook)
                with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                    scope.shield = True
                    try:
                        await node.settled()
                        # kept, not deleted: another node resumes these sessions
                        await node.save_sessions_once(every=True)
                        await retained_watch.stop()
                        await owners_watch.stop()
                        await nodes_watch.stop()
                        await nodes.delete(node.origin)  # a clean leave: nobody reaps it
                    except (NATSError, trio.TooSlowError) as exc:
                        log.warning("cluster: node %s left without a clean goodbye: %s", name, exc)
                # (stores answered meanwhile were acknowledged; no answer comes any more)
                node.refuse_pending_stores()
                nursery.cancel_scope.cancel()
                node.counters.add_node(
                    forwarded=node.forwarded,
                    received=node.received,
                    not_forwarded=node.dropped,
                    caught_up=node.caught_up,
                    refilled=node.refilled,
                )
    core.leave_cluster()
    log.info("cluster: node %s left", name)
