"""BrokerCore: sessions, routing, retained messages and auth, with no I/O at all.

The core is driven by connections (``ClientConnection``: one per network connection) and by
the embedding API. Time comes from an injected ``clock`` so that tests can run it
without a real clock and the trio layer can hand it ``trio.current_time``.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Protocol, TypeAlias

import attrs

from trio_mqtt.broker.cluster_view import ClusterLink
from trio_mqtt.broker.connection_view import (
    CONGESTION_HIGH,
    MAX_IN_FLIGHT,
    ClientConnection,
    CloseReason,
)
from trio_mqtt.broker.enhanced_auth import (
    AuthContinue,
    Authenticator,
    AuthExchange,
    AuthFailure,
    AuthOutcome,
    AuthSuccess,
)
from trio_mqtt.broker.message import Message, StoredMessage, publish_size, will_message
from trio_mqtt.broker.retained import RetainedStore
from trio_mqtt.broker.router import Delivery, Router, SubscriptionOptions
from trio_mqtt.broker.sessions import (
    NEVER_EXPIRES,
    OutboundState,
    QueuedMessage,
    RetainedReplay,
    SavedSession,
    Session,
)
from trio_mqtt.broker.stats import DROP_OFFLINE_QOS0, DROP_QUEUE_FULL, BrokerStats
from trio_mqtt.config import BrokerConfig
from trio_mqtt.errors import RemoteProtocolError
from trio_mqtt.hot_value import hot_value
from trio_mqtt.mqtt.codec import DISCONNECT_REASON_CODES, encode
from trio_mqtt.mqtt.packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    Pubrec,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.mqtt.topics import (
    SHARE_PREFIX,
    parse_shared_filter,
    validate_topic_filter,
    validate_topic_name,
)
from trio_mqtt.peer import PeerInfo

log = logging.getLogger("trio_mqtt.broker")

# A topic of at most this many characters is at most 65535 bytes of UTF-8.
_SHORT_TOPIC = 65535 // 4

# Members the per-packet and per-connection paths use, as module constants: on Python
# 3.11 a member read from its enum class goes through the hook of EnumType's __getattr__.
_V5 = ProtocolVersion.V5
_SUCCESS = ReasonCode.SUCCESS

# Prefix of in-process subscriber ids: U+0000 can never appear in an MQTT client id.
LOCAL_PREFIX = "\x00local/"

# Topics only the broker publishes to ($SYS/broker/... statistics): a client's PUBLISH
# there is refused (MQTT 5: 0x87), as mosquitto does, so nobody can spoof them.
SYS_TOPICS = "$SYS"

# What subscribers share one QueuedMessage by: QoS, retain flag, subscription ids and
# the shared subscriptions the delivery was chosen for
_ItemKey = tuple[int, bool, tuple[int, ...], tuple[str, ...]]


@attrs.frozen
class OffloadedCheck:
    """What a connect hook answers when its decision is too slow for the event loop.

    ``work`` (a password hash, say) runs in a worker thread; what it returns decides as the
    hook's answer would: None to accept, a reason code to refuse. It must not touch the
    broker's state.
    """

    work: Callable[[], ReasonCode | None]


@attrs.frozen
class AwaitedCheck:
    """What a connect hook answers when it must ask someone else first (another node).

    The server awaits ``wait()`` in the connection's reader task, then goes on as with an
    ``OffloadedCheck``: None to accept, a reason code to refuse. It may change the
    broker's state only through the core's own methods (a cluster node restores a
    session handed over by another node this way). A SUBACK held for the cluster
    (``PendingSubscribe``) waits for one too; its answer is always None.
    """

    wait: Callable[[], Awaitable[ReasonCode | None]]


class ConnectHook(Protocol):
    """Decides whether a CONNECT may proceed. Return None to accept, a reason code to refuse.

    It sees the ``PeerInfo`` (real client address, proxy, TLS facts, certificate-derived
    username) and the CONNECT packet as the client sent it. A slow decision is returned as
    an ``OffloadedCheck``: the CONNECT waits for it without holding up other clients.
    """

    def __call__(
        self, peer: PeerInfo, connect: Connect
    ) -> ReasonCode | OffloadedCheck | AwaitedCheck | None: ...


class PublishHook(Protocol):
    """Decides whether a client may publish to a topic: True allows it.

    ``username`` is the one the client goes by (``PeerInfo.username_for``: the
    certificate's if the listener took one, else the CONNECT's); so for the other hooks.
    """

    def __call__(
        self, peer: PeerInfo, client_id: str, username: str | None, topic: str
    ) -> bool: ...


class ReadHook(Protocol):
    """Decides whether a client may receive a message on a topic: True allows it.

    Asked on every delivery (the answer is cached per connection and topic until the
    client reconnects or ``BrokerCore.auth_changed()``), so that a session taken over by
    another user, or an ACL reloaded without a grant, delivers nothing it may not read.
    """

    def __call__(
        self, peer: PeerInfo, client_id: str, username: str | None, topic: str
    ) -> bool: ...


class SubscribeHook(Protocol):
    """Decides whether a client may subscribe to a topic filter: True allows it."""

    def __call__(
        self, peer: PeerInfo, client_id: str, username: str | None, topic_filter: str
    ) -> bool: ...


@attrs.frozen
class ClientSummary:
    """What the embedding API reports about one connected client.

    ``queued_bytes`` is what counts against its ``max_queued_bytes`` now; ``dropped`` the
    messages dropped for it so far (its session's count, across connections).
    """

    client_id: str
    peer: PeerInfo
    username: str | None
    protocol_version: int
    keep_alive: int
    subscriptions: tuple[str, ...]
    queued_bytes: int = 0
    dropped: int = 0


def _nothing() -> None:
    pass


@attrs.frozen
class Restored:
    """What ``BrokerCore.restore`` did with what a persistence backend kept."""

    sessions: tuple[str, ...]  # restored, offline
    expired_sessions: tuple[str, ...]  # ended instead (their due wills were published)
    expired_topics: tuple[str, ...]  # retained messages that expired meanwhile
    skipped_sessions: tuple[str, ...]  # already live here: the live one stays


@hot_value
class ConnectPlan:
    """What CONNECT processing settled before enhanced authentication ran."""

    client_id: str
    assigned: str | None  # the Assigned Client Identifier (5.0), if the server chose it
    keep_alive: int
    server_keep_alive: int | None


# The core's answers to CONNECT and AUTH: the connection applies them to itself (its
# state, its packets); the core never sets a connection's fields.


@hot_value
class Accepted:
    """The CONNECT is accepted: what the connection takes on, and its CONNACK."""

    session: Session
    client_id: str
    username: str | None
    keep_alive: int
    will: Will | None
    receive_maximum: int  # QoS 1/2 in flight to the client
    max_packet_size: int | None  # the client's Maximum Packet Size, if it gave one
    topic_alias_maximum: int  # aliases we may use towards the client
    # what CONNACK told the client (a config reload changes them for later connections)
    our_receive_maximum: int  # QoS 2 in flight from the client
    our_topic_alias_maximum: int  # aliases the client may use towards us
    retain_available: bool
    connack: Connack
    session_present: bool
    authenticated: Connect | None  # the CONNECT of an enhanced authentication


@attrs.frozen
class Refused:
    """The CONNECT is refused: CONNACK with ``code``, then close (already logged).

    ``connack`` False: close without CONNACK (none fits the client's Maximum Packet Size).
    """

    code: ReasonCode
    why: str
    connack: bool = True


@attrs.frozen
class PendingConnect:
    """The CONNECT waits for an ``OffloadedCheck``; ``resume_connect`` goes on after it."""

    check: OffloadedCheck | AwaitedCheck
    hook_name: str
    connect: Connect
    plan: ConnectPlan
    auth_done: AuthSuccess | None
    next_hook: int  # the index of the connect hook after the one that offloaded


@attrs.frozen
class PendingSubscribe:
    """The SUBACK waits for ``check`` (the cluster's new routes being in place);
    ``resume_subscribe`` then queues the retained messages owed and gives the SUBACK.

    The subscriptions are in place already: matching messages may be delivered before
    the SUBACK (MQTT 3.1.1 section 3.8.4).
    """

    check: AwaitedCheck
    suback: Suback
    retained: tuple[tuple[str, int, SubscriptionOptions], ...]


@attrs.frozen
class Challenge:
    """Enhanced authentication goes on: send ``auth`` (0x18) and wait for the answer.

    ``plan`` is what the CONNECT settled (None when re-authenticating).
    """

    exchange: AuthExchange
    plan: ConnectPlan | None
    auth: Auth


@attrs.frozen
class Reauthenticated:
    """Re-authentication succeeded: send ``auth`` (0x00)."""

    auth: Auth


@attrs.frozen
class ReauthFailed:
    """Re-authentication failed: DISCONNECT with ``code``, then close."""

    code: ReasonCode
    why: str


ConnectDecision: TypeAlias = Accepted | Refused | PendingConnect | Challenge
AuthDecision: TypeAlias = ConnectDecision | Reauthenticated | ReauthFailed


def _cluster_will(
    will: Will | None, client_id: str, peer: PeerInfo, now: float
) -> tuple[Message | None, int]:
    """A client's will as the cluster keeps it: (the message it becomes, its delay)."""
    if will is None:
        return None, 0
    message = will_message(will, client_id, peer, now)
    return message, will.properties.will_delay_interval or 0


@attrs.define(eq=False)
class BrokerCore:
    config: BrokerConfig
    clock: Callable[[], float]
    # ``now()``, the time by ``clock``: the clock itself rather than a method that calls
    # it (a Python frame fewer per reading: five per connection, 2.7 per QoS 1 round trip)
    now: Callable[[], float] = attrs.field(init=False)
    router: Router = attrs.field(init=False)
    retained: RetainedStore[Message] = attrs.Factory(RetainedStore)
    sessions: dict[str, Session] = attrs.Factory(dict)
    # every live connection, CONNECTed or not yet (shutdown closes them all)
    open_connections: set[ClientConnection] = attrs.Factory(set)
    local_subscribers: dict[str, Callable[[Message], None]] = attrs.Factory(dict)
    connect_hooks: list[ConnectHook] = attrs.Factory(list)
    publish_hooks: list[PublishHook] = attrs.Factory(list)
    subscribe_hooks: list[SubscribeHook] = attrs.Factory(list)
    read_hooks: list[ReadHook] = attrs.Factory(list)
    # changes whenever what the hooks decide may change (a reload): cached answers expire
    auth_epoch: int = 0
    authenticators: dict[str, Authenticator] = attrs.Factory(dict)
    stats: BrokerStats = attrs.Factory(BrokerStats)
    # What changed since the persistence store last saved (client ids / retained topics),
    # recorded only while ``records_changes`` (``record_changes``: a store is attached):
    # nothing else would ever take these sets (``take_changes``).
    records_changes: bool = False
    dirty_sessions: set[str] = attrs.Factory(set)
    dirty_retained: set[str] = attrs.Factory(set)
    # The client ids whose sessions changed since a cluster node last looked at their
    # records (``take_changed_sessions``); None: nobody looks
    cluster_changed_sessions: set[str] | None = None
    # Flow control (see mqtt_connection): the congested connections routed to since the
    # publishing connection last took them, and the I/O layer's callback for "a
    # connection stopped being congested" (it wakes the publishers held back).
    congestion_hits: set[ClientConnection] = attrs.Factory(set)
    on_relief: Callable[[], None] = _nothing
    # retained topics whose message has an expiry interval (the only ones tick() checks)
    expiring_retained: set[str] = attrs.Factory(set)
    # The node's link to the rest of the cluster (trio_mqtt.cluster); None: one node.
    cluster: ClusterLink | None = None
    _local_counter: int = 0
    _started: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.now = self.clock
        self.router = Router(is_available=self._is_online)
        self._started = self.clock()

    def uptime(self) -> float:
        """Seconds since this core was made (the broker started)."""
        return self.clock() - self._started

    def apply_config(self, config: BrokerConfig) -> None:
        """Use *config* from now on (a reload; ``Broker.reload_config`` says what may change).

        Connections opened from now on get its limits; each open one keeps what its
        CONNACK told the client (Receive Maximum, Topic Alias Maximum, Maximum Packet
        Size, Server Keep Alive, retain). The queue limits apply to every session at once:
        what is queued stays, later messages obey the new limits.
        """
        old, self.config = self.config, config
        if (old.max_queued_messages, old.max_queued_bytes) != (
            config.max_queued_messages,
            config.max_queued_bytes,
        ):
            for session in self.sessions.values():
                session.set_limits(config.max_queued_messages, config.max_queued_bytes)

    def auth_changed(self) -> None:
        """The hooks may decide differently now (an ACL reload): forget cached answers."""
        self.auth_epoch += 1

    def add_connect_hook(self, hook: ConnectHook) -> None:
        """Ask ``hook`` about every CONNECT, after the hooks added before it."""
        self.connect_hooks.append(hook)

    def remove_connect_hook(self, hook: ConnectHook) -> None:
        """Stop asking ``hook`` (nothing happens if it was not added)."""
        if hook in self.connect_hooks:
            self.connect_hooks.remove(hook)

    def add_publish_hook(self, hook: PublishHook) -> None:
        """Ask ``hook`` about every PUBLISH a client sends."""
        self.publish_hooks.append(hook)

    def add_subscribe_hook(self, hook: SubscribeHook) -> None:
        """Ask ``hook`` about every topic filter a client subscribes to."""
        self.subscribe_hooks.append(hook)

    def add_read_hook(self, hook: ReadHook) -> None:
        """Ask ``hook`` before every delivery: a message on a topic it refuses is not
        sent. The answers cached for the hooks before it are forgotten."""
        self.read_hooks.append(hook)
        self.auth_changed()

    def add_authenticator(self, authenticator: Authenticator) -> None:
        """Serve the MQTT 5 enhanced Authentication Method ``authenticator.method``.

        Raises ValueError for an empty method name or one served already.
        """
        method = authenticator.method
        if not method:
            raise ValueError("an authenticator needs a non-empty method name")
        if method in self.authenticators:
            raise ValueError(f"an authenticator for method {method!r} is already registered")
        self.authenticators[method] = authenticator

    def session_changed(self, client_id: str) -> None:
        """Note that a session changed, for the persistence store (if one is attached)
        and the cluster's session records (if a node looks)."""
        if self.records_changes:
            self.dirty_sessions.add(client_id)
        marks = self.cluster_changed_sessions
        if marks is not None:
            marks.add(client_id)

    def retained_changed(self, topic: str) -> None:
        """Note that a retained topic changed, for the persistence store (if attached).
        Not ``$SYS`` topics: the broker publishes those afresh, they are never saved."""
        if self.records_changes and not topic.startswith(SYS_TOPICS):
            self.dirty_retained.add(topic)

    def record_changes(self) -> None:
        """Note from now on what a persistence store saves (``take_changes``)."""
        self.records_changes = True

    def take_changes(self) -> tuple[set[str], set[str]]:
        """The client ids whose sessions and the retained topics that changed since the
        last call (for a persistence store to save); the next call returns what changes
        from now on."""
        changed = self.dirty_sessions, self.dirty_retained
        self.dirty_sessions, self.dirty_retained = set(), set()
        return changed

    def give_back_changes(self, client_ids: Iterable[str], topics: Iterable[str]) -> None:
        """What ``take_changes`` returned and was not saved: the next call returns it again."""
        self.dirty_sessions.update(client_ids)
        self.dirty_retained.update(topics)

    def join_cluster(self, link: ClusterLink, on_interest: Callable[[], None]) -> None:
        """Become a node of a cluster: tell ``link`` what happens here, let the cluster
        pick the member of each share group, and call ``on_interest`` when a filter
        gains its first or loses its last subscriber (``router.take_interest_changes``)."""
        self.cluster = link
        self.router.serve_cluster(on_interest)

    def leave_cluster(self, stand_in: ClusterLink | None = None) -> None:
        """Be a single node again; ``stand_in`` takes the link's calls meanwhile (a node
        cut off from NATS refuses what it cannot store)."""
        self.cluster = stand_in
        self.router.serve_cluster(None)
        self.cluster_changed_sessions = None  # (nobody looks at them any more)

    def take_changed_sessions(self) -> set[str] | None:
        """The client ids whose sessions changed since the last call (``session_changed``
        and deliveries mark them), for a cluster node's session records; None on the
        first call, which starts the marking (``leave_cluster`` stops it)."""
        changed = self.cluster_changed_sessions
        self.cluster_changed_sessions = set()
        return changed

    def give_back_changed_sessions(self, client_ids: Iterable[str]) -> None:
        """What ``take_changed_sessions`` returned and was not dealt with: the next call
        returns it again."""
        marks = self.cluster_changed_sessions
        if marks is not None:
            marks.update(client_ids)

    def set_relief_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (instead of the one before) whenever a connection stops being
        congested: the I/O layer wakes the publishers it held back."""
        self.on_relief = callback

    def take_congestion_hits(self) -> set[ClientConnection]:
        """The congested connections routed to since the last call (and forget them)."""
        hits = self.congestion_hits
        self.congestion_hits = set()
        return hits

    def _is_online(self, client_id: str) -> bool:
        if client_id in self.local_subscribers:
            return True
        session = self.sessions.get(client_id)
        return session is not None and session.online

    # ---------------------------------------------------------------- persistence

    def restore(self, sessions: Iterable[SavedSession], retained: Iterable[Message]) -> Restored:
        """Take back what a persistence backend kept, at startup (or on a cluster join).

        Retained messages and sessions that expired while the broker was down are not
        restored; the delayed will of an expired session is published, after every other
        session is back (the session ended, so its will is due). Restored sessions are
        offline; their expiry counts from now for a session saved while online, and no
        session outlives ``max_session_expiry`` from now. Restoring is not a change to
        record.
        """
        now = self.now()
        expired_topics: list[str] = []
        for message in retained:
            if message.expired(now):
                expired_topics.append(message.topic)
            else:
                self.set_retained(message)
        restored: list[str] = []
        expired: list[str] = []
        skipped: list[str] = []
        due_wills: list[Message] = []
        max_expiry = self.config.max_session_expiry
        for saved in sessions:
            if saved.client_id in self.sessions:
                log.warning(
                    "session %r is already live; not restoring the stored one", saved.client_id
                )
                skipped.append(saved.client_id)
                continue
            interval = min(saved.expiry_interval, max_expiry)
            expires_at = saved.expires_at
            if expires_at is None and interval != NEVER_EXPIRES:
                expires_at = now + interval  # online when saved: it counts from now
            if max_expiry != NEVER_EXPIRES:
                expires_at = (
                    now + max_expiry if expires_at is None else min(expires_at, now + max_expiry)
                )
            if interval == 0 or (expires_at is not None and expires_at <= now):
                expired.append(saved.client_id)
                if saved.delayed_will is not None:
                    due_wills.append(saved.delayed_will)
                continue
            session = Session(
                client_id=saved.client_id,
                protocol_version=saved.protocol_version,
                max_queued_messages=self.config.max_queued_messages,
                max_queued_bytes=self.config.max_queued_bytes,
                on_drop=self.session_dropped,
                on_overflow=self.session_overflowed,
                expiry_interval=interval,
                next_packet_id=saved.next_packet_id,
                dropped=saved.dropped,
                expires_at=expires_at,
                delayed_will=saved.delayed_will,
                will_due=None if saved.delayed_will is None else saved.will_due,
                taken_from_front=saved.first_position,
            )
            for packet_id in saved.inflight_in:
                session.receive_incoming(packet_id)
            for topic_filter, options in saved.subscriptions:
                self.router.subscribe(saved.client_id, topic_filter, options)
            for item in saved.pending:
                session.append_pending(item)
            for packet_id, item, state in saved.inflight:
                session.add_inflight(packet_id, item, state)
            self.sessions[saved.client_id] = session
            restored.append(saved.client_id)
        for will in due_wills:
            self._publish_will(will, "session expired")
        return Restored(tuple(restored), tuple(expired), tuple(expired_topics), tuple(skipped))

    # ----------------------------------------------------------------- connections

    def connection_opened(self, conn: ClientConnection) -> None:
        """A new transport is ready (``shutdown`` will ask it to close)."""
        self.open_connections.add(conn)
        self.stats.connections_opened += 1

    def connected_clients(self) -> Iterator[ClientConnection]:
        for session in self.sessions.values():
            if session.connection is not None:
                yield session.connection

    def client_summaries(self) -> list[ClientSummary]:
        return [
            ClientSummary(
                client_id=conn.client_id,
                peer=conn.peer,
                username=conn.username,
                protocol_version=int(conn.version),
                keep_alive=conn.keep_alive,
                subscriptions=tuple(self.router.subscriptions_of(conn.client_id)),
                queued_bytes=session.queued_bytes,
                dropped=session.dropped,
            )
            for session in self.sessions.values()
            if (conn := session.connection) is not None
        ]

    def _refuse(
        self, peer: PeerInfo, connect: Connect, code: ReasonCode, why: str, connack: bool = True
    ) -> Refused:
        log.info(
            "refused CONNECT from %s (client id %r): %s [%s]",
            peer.describe(),
            connect.client_id,
            why,
            code.name,
            extra={
                **peer.log_fields(),
                "event": "connect-refused",
                "client_id": connect.client_id,
                "reason": f"{why} [{code.name}]",
            },
        )
        self.stats.connects_refused += 1
        return Refused(code, why, connack)

    def handle_connect(self, conn: ClientConnection, connect: Connect) -> ConnectDecision:
        """A CONNECT: accepted, refused, or waiting (AUTH exchange, offloaded check)."""
        config = self.config
        version = connect.protocol_version
        v5 = version is _V5

        def refuse(code: ReasonCode, why: str) -> Refused:
            return self._refuse(conn.peer, connect, code, why)

        # Client identifier rules [MQTT-3.1.3-7], [MQTT-3.1.3-8], 5.0 3.1.3.1.
        client_id = connect.client_id
        assigned: str | None = None
        if not client_id:
            if v5:
                assigned = client_id = f"auto-{uuid.uuid4()}"
            elif version is ProtocolVersion.V311 and connect.clean_start:
                client_id = f"auto-{uuid.uuid4()}"
            else:
                return refuse(
                    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client id needs clean session (3.1.1) or MQTT 5",
                )
        if connect.will is not None:
            try:
                validate_topic_name(connect.will.topic)
            except RemoteProtocolError as exc:
                return refuse(ReasonCode.TOPIC_NAME_INVALID, f"will topic: {exc}")
            if connect.will.topic.startswith("$"):
                # as for PUBLISH: a will is a publish the client set up in advance, and a
                # retained will on $SYS/... would stand in for the broker's own statistics
                return refuse(
                    _dollar_topic_refusal(connect.will.topic),
                    f"will topic {connect.will.topic[:100]!r}: clients may not publish to "
                    "topics starting with $",
                )
            if connect.will.retain and not config.retain_available:
                return refuse(ReasonCode.RETAIN_NOT_SUPPORTED, "will retain but retain unavailable")
        props = connect.properties
        authenticator: Authenticator | None = None
        if v5 and props.authentication_method is not None:
            authenticator = self.authenticators.get(props.authentication_method)
            if authenticator is None:
                return refuse(
                    ReasonCode.BAD_AUTHENTICATION_METHOD,
                    f"authentication method {props.authentication_method!r} is not supported",
                )

        # Keep alive: a 5.0 client asking for more than max_keepalive, or for none (0),
        # is told the server's value (Server Keep Alive, [MQTT-3.2.2-21]). An older one
        # cannot be told: 0 means "no keep alive" (3.1.1 section 3.1.2.10), which it may
        # ask for, and a value above max_keepalive is refused with return code 2
        # (identifier rejected), as mosquitto does.
        keep_alive = connect.keep_alive
        server_keep_alive: int | None = None
        if config.max_keepalive < 65535:
            if v5:
                if keep_alive == 0 or keep_alive > config.max_keepalive:
                    server_keep_alive = keep_alive = config.max_keepalive
            elif keep_alive > config.max_keepalive:
                return refuse(
                    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                    f"keep alive {connect.keep_alive} above max_keepalive {config.max_keepalive}",
                )

        if conn.peer.identity_error is not None:
            return refuse(ReasonCode.NOT_AUTHORIZED, conn.peer.identity_error)
        plan = ConnectPlan(client_id, assigned, keep_alive, server_keep_alive)
        if authenticator is not None:
            exchange = AuthExchange(authenticator, connect)
            decision = self._auth_outcome(
                conn, exchange, plan, authenticator.start(conn.peer, connect)
            )
            assert not isinstance(decision, Reauthenticated | ReauthFailed)  # not re-authenticating
            return decision
        return self._accept_connect(conn, connect, plan, None)

    def _accept_connect(
        self,
        conn: ClientConnection,
        connect: Connect,
        plan: ConnectPlan,
        auth_done: AuthSuccess | None,
        first_hook: int = 0,
    ) -> ConnectDecision:
        """The rest of CONNECT, once enhanced authentication (if any) has succeeded.

        A connect hook may answer with an ``OffloadedCheck``; the CONNECT then waits for
        it (``PendingConnect``) and ``resume_connect`` comes back here at the next hook
        (``first_hook``). Accepting attaches ``conn`` to the session (taking it over from
        another connection if needed); the connection applies the rest (``Accepted``).
        """
        config = self.config
        version = connect.protocol_version
        v5 = version is _V5
        props = connect.properties
        client_id = plan.client_id
        keep_alive = plan.keep_alive

        def refuse(code: ReasonCode, why: str) -> Refused:
            return self._refuse(conn.peer, connect, code, why)

        def refuse_silently(code: ReasonCode, why: str) -> Refused:
            return self._refuse(conn.peer, connect, code, why, connack=False)

        username = conn.peer.username_for(connect.username)
        if username is None and not config.allow_anonymous and auth_done is None:
            return refuse(ReasonCode.NOT_AUTHORIZED, "anonymous access is disabled")
        hooks = self.connect_hooks
        for index in range(first_hook, len(hooks)):
            hook = hooks[index]
            name = getattr(hook, "__name__", type(hook).__name__)
            code = hook(conn.peer, connect)
            if isinstance(code, (OffloadedCheck, AwaitedCheck)):
                return PendingConnect(code, name, connect, plan, auth_done, index + 1)
            if code is not None and code.is_error:
                return refuse(code, f"refused by {name}")

        if v5:
            requested_expiry = props.session_expiry_interval or 0
        else:
            requested_expiry = 0 if connect.clean_start else NEVER_EXPIRES
        expiry = min(requested_expiry, config.max_session_expiry)

        # In flight to the client: at most its Receive Maximum (5.0) and, if set,
        # max_inflight_messages. Our receive_maximum is what it may send us. By default a
        # client is bounded by its queue budget, not by a count: a fixed window makes a
        # fast client slow (at most that many messages per round trip).
        in_flight = config.max_inflight_messages or MAX_IN_FLIGHT
        connack_props = NO_PROPERTIES
        if v5:
            in_flight = min(props.receive_maximum or MAX_IN_FLIGHT, in_flight)
            connack_props = Properties(
                assigned_client_identifier=plan.assigned,
                server_keep_alive=plan.server_keep_alive,
                authentication_method=(None if auth_done is None else props.authentication_method),
                authentication_data=None if auth_done is None else auth_done.data,
                receive_maximum=config.receive_maximum,
                maximum_packet_size=config.max_packet_size,
                retain_available=None if config.retain_available else 0,
                session_expiry_interval=(expiry if expiry != requested_expiry else None),
                topic_alias_maximum=config.topic_alias_maximum or None,
                # said explicitly (absent means the same): all three are supported
                wildcard_subscription_available=1,
                subscription_identifier_available=1,
                shared_subscription_available=1,
            )
        if v5 and props.maximum_packet_size is not None:
            fitted = _fit_connack(connack_props, props.maximum_packet_size)
            if fitted is None:
                # [MQTT-3.1.2-24]: nothing larger than the client's maximum, not even this
                return refuse_silently(
                    ReasonCode.PACKET_TOO_LARGE,
                    f"CONNACK does not fit Maximum Packet Size {props.maximum_packet_size}",
                )
            connack_props = fitted

        # Session: takeover, resume or start fresh.
        now = self.now()
        existing = self.sessions.get(client_id)
        if existing is not None and existing.connection is not None:
            self._close_for_takeover(existing, f"reconnected from {conn.peer.describe()}")
            existing = self.sessions.get(client_id)
        if existing is not None and existing.expires_at is not None and existing.expires_at <= now:
            self._end_session(existing)
            existing = None
        if existing is not None and connect.clean_start:
            self._end_session(existing, publish_delayed_will=True)
            existing = None

        session_present = existing is not None
        if existing is None:
            session = Session(
                client_id=client_id,
                protocol_version=version,
                max_queued_messages=config.max_queued_messages,
                max_queued_bytes=config.max_queued_bytes,
                on_drop=self.session_dropped,
                on_overflow=self.session_overflowed,
            )
            self.sessions[client_id] = session
        else:
            session = existing
        # (a will waiting for its delay is dropped: reconnected in time, [MQTT-3.1.3-9])
        session.attach(conn, version, expiry)
        self.session_changed(client_id)

        self.stats.connects += 1
        if self.cluster is not None:
            self.cluster.connected(
                client_id, *_cluster_will(connect.will, client_id, conn.peer, now)
            )
        if log.isEnabledFor(logging.INFO):  # (its arguments cost a tenth of a connect)
            vpce = conn.peer.aws_vpc_endpoint_id
            protocol = {3: "3.1", 4: "3.1.1", 5: "5.0"}[int(version)]
            log.info(
                "connected %s client_id=%r username=%r protocol=%s keepalive=%d clean=%s "
                "session_present=%s listener=%s%s",
                conn.peer.describe(),
                client_id,
                username,
                protocol,
                keep_alive,
                connect.clean_start,
                session_present,
                conn.peer.listener,
                "" if vpce is None else f" aws_vpce={vpce}",
                extra={
                    **conn.peer.log_fields(),
                    "event": "connected",
                    "client_id": client_id,
                    "username": username,
                    "protocol": protocol,
                },
            )
        return Accepted(
            session=session,
            client_id=client_id,
            username=username,
            keep_alive=keep_alive,
            will=connect.will,
            receive_maximum=in_flight,
            max_packet_size=props.maximum_packet_size if v5 else None,
            topic_alias_maximum=(props.topic_alias_maximum or 0) if v5 else 0,
            our_receive_maximum=config.receive_maximum,
            our_topic_alias_maximum=config.topic_alias_maximum,
            retain_available=config.retain_available,
            connack=Connack(session_present=session_present, properties=connack_props),
            session_present=session_present,
            authenticated=None if auth_done is None else connect,
        )

    def resume_connect(
        self, conn: ClientConnection, pending: PendingConnect, code: ReasonCode | None
    ) -> ConnectDecision:
        """An offloaded check of ``pending`` answered ``code``: refuse, or go on."""
        if code is not None and code.is_error:
            return self._refuse(conn.peer, pending.connect, code, f"refused by {pending.hook_name}")
        return self._accept_connect(
            conn, pending.connect, pending.plan, pending.auth_done, pending.next_hook
        )

    def _auth_outcome(
        self,
        conn: ClientConnection,
        exchange: AuthExchange,
        plan: ConnectPlan | None,
        outcome: AuthOutcome,
    ) -> AuthDecision:
        """What an authenticator said, as a decision: AUTH 0x18, accept, or refuse."""
        method = exchange.authenticator.method
        connect = exchange.connect
        match outcome:
            case AuthContinue(data=data, state=state):
                exchange.state = state
                auth = Auth(
                    ReasonCode.CONTINUE_AUTHENTICATION,
                    Properties(authentication_method=method, authentication_data=data),
                )
                return Challenge(exchange, plan, auth)
            case AuthSuccess():
                if exchange.reauthentication:
                    log.info("client %r re-authenticated (%s)", conn.client_id, method)
                    props = Properties(
                        authentication_method=method, authentication_data=outcome.data
                    )
                    return Reauthenticated(Auth(ReasonCode.SUCCESS, props))
                assert plan is not None
                return self._accept_connect(conn, connect, plan, outcome)
            case AuthFailure(reason_code=code, reason=why):
                if exchange.reauthentication:
                    log.info("re-authentication of %r failed: %s", conn.client_id, why)
                    if code not in DISCONNECT_REASON_CODES:  # e.g. 0x86: CONNACK only
                        code = ReasonCode.NOT_AUTHORIZED
                    return ReauthFailed(code, why)
                return self._refuse(conn.peer, connect, code, why)
        raise AssertionError(f"not an AuthOutcome: {outcome!r}")  # pragma: no cover

    def handle_auth(
        self,
        conn: ClientConnection,
        packet: Auth,
        exchange: AuthExchange | None,
        plan: ConnectPlan | None,
        authenticated: Connect | None,
    ) -> AuthDecision:
        """An AUTH from the client: a step of ``exchange``, or a re-authentication request.

        ``plan`` is set while a CONNECT waits for the exchange; ``authenticated`` is the
        CONNECT that authenticated the connection (None: no enhanced authentication, so
        no re-authentication either).
        """
        props = packet.properties
        if exchange is None and plan is None:
            if authenticated is None:
                # 5.0 section 4.12: only a CONNECT with an Authentication Method allows AUTH
                raise RemoteProtocolError(
                    "AUTH without an authentication method in CONNECT", ReasonCode.PROTOCOL_ERROR
                )
            if packet.reason_code != ReasonCode.RE_AUTHENTICATE:
                raise RemoteProtocolError(
                    f"AUTH {packet.reason_code:#04x} outside an authentication exchange",
                    ReasonCode.PROTOCOL_ERROR,
                )
            self._check_auth_method(authenticated, props.authentication_method)
            authenticator = self.authenticators[
                authenticated.properties.authentication_method or ""
            ]
            again = attrs.evolve(
                authenticated,
                properties=attrs.evolve(
                    authenticated.properties, authentication_data=props.authentication_data
                ),
            )
            exchange = AuthExchange(authenticator, again, reauthentication=True)
            return self._auth_outcome(conn, exchange, None, authenticator.start(conn.peer, again))
        if exchange is None or packet.reason_code != ReasonCode.CONTINUE_AUTHENTICATION:
            raise RemoteProtocolError(
                f"AUTH {packet.reason_code:#04x} is not a continuation of the exchange",
                ReasonCode.PROTOCOL_ERROR,
            )
        self._check_auth_method(exchange.connect, props.authentication_method)
        outcome = exchange.authenticator.step(conn.peer, exchange.state, props.authentication_data)
        return self._auth_outcome(
            conn, exchange, None if exchange.reauthentication else plan, outcome
        )

    @staticmethod
    def _check_auth_method(connect: Connect, method: str | None) -> None:
        if method != connect.properties.authentication_method:
            # 5.0 section 4.12: the method must stay the one the CONNECT named
            raise RemoteProtocolError(
                f"AUTH with authentication method {method!r}, not "
                f"{connect.properties.authentication_method!r} as in CONNECT",
                ReasonCode.PROTOCOL_ERROR,
            )

    def handle_disconnect(self, session: Session, packet: Disconnect) -> None:
        """A DISCONNECT's effect on the session (its expiry); the connection closes itself."""
        props = packet.properties
        if props.session_expiry_interval is not None:
            if session.expiry_interval == 0 and props.session_expiry_interval != 0:
                # 5.0 section 3.14.2.2.2: a Protocol Error after CONNECT said 0
                raise RemoteProtocolError(
                    "DISCONNECT sets a session expiry interval after CONNECT set 0",
                    ReasonCode.PROTOCOL_ERROR,
                )
            session.set_expiry_interval(
                min(props.session_expiry_interval, self.config.max_session_expiry)
            )

    def connection_closed(
        self,
        conn: ClientConnection,
        session: Session | None,
        will: Will | None,
        reason: CloseReason,
        detail: str,
    ) -> None:
        """A connection that had been CONNECTED closed: it left ``session`` and ``will``."""
        self.open_connections.discard(conn)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "disconnected %s client_id=%r reason=%s%s",
                conn.peer.describe(),
                conn.client_id,
                reason.value,
                f" ({detail})" if detail else "",
                extra={
                    **conn.peer.log_fields(),
                    "event": "disconnected",
                    "client_id": conn.client_id,
                    "reason": f"{reason.value} ({detail})" if detail else reason.value,
                },
            )
        self.stats.disconnects += 1
        if session is None or session.connection is not conn:
            return  # already detached (session taken over)
        self._detach(session, will, conn.peer, reason)

    def connection_gone(self, conn: ClientConnection) -> None:
        """A connection that never got CONNECTED closed."""
        self.open_connections.discard(conn)

    def _detach(
        self, session: Session, will: Will | None, peer: PeerInfo, reason: CloseReason
    ) -> None:
        """The session's connection is gone: its will, then expiry or the end of it."""
        now = self.now()
        message = delayed_will = will_due = None
        if will is not None:
            message = will_message(will, session.client_id, peer, now)
            delay = will.properties.will_delay_interval or 0
            if delay > 0 and session.expiry_interval > 0:
                delayed_will, will_due = message, now + delay
        session.detach(now, delayed_will, will_due)
        self.session_changed(session.client_id)
        if self.cluster is not None:
            self.cluster.disconnected(session.client_id)
        if message is not None and delayed_will is None:
            self._publish_will(message, reason)
        if session.expiry_interval == 0:
            self._end_session(session)

    def _publish_will(self, message: Message, reason: CloseReason | str) -> None:
        why = reason.value if isinstance(reason, CloseReason) else reason
        log.info("publishing will of %r to %r (%s)", message.publisher, message.topic, why)
        self.stats.wills_published += 1
        self.publish(message)

    def _end_session(self, session: Session, *, publish_delayed_will: bool = True) -> None:
        self.session_changed(session.client_id)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        self.router.unsubscribe_all(session.client_id)
        self._redistribute_shared(session)
        if publish_delayed_will:
            # [MQTT-3.1.3-9]: the will goes out when the session ends, even before its delay
            will = session.take_delayed_will()
            if will is not None:
                self._publish_will(will, "session ended")

    def tick(self) -> None:
        """Periodic housekeeping: delayed wills, session expiry, retained expiry."""
        now = self.now()
        for session in list(self.sessions.values()):
            if session.will_due is not None and session.will_due <= now:
                will = session.take_delayed_will()
                self.session_changed(session.client_id)
                if will is not None:
                    self._publish_will(will, "will delay elapsed")
            if session.expires_at is not None and session.expires_at <= now:
                log.info("session %r expired", session.client_id)
                self.stats.sessions_expired += 1
                self._end_session(session)
        for topic in list(self.expiring_retained):
            message = self.retained.get(topic)
            if message is None or message.expired(now):
                self.expiring_retained.discard(topic)
                if message is not None:
                    self.retained.delete(topic)
                    self.retained_changed(topic)

    def shutdown(self) -> None:
        """Ask every connection to close: 5.0 clients get DISCONNECT 0x8B."""
        for conn in list(self.open_connections):
            conn.request_close(CloseReason.SHUTDOWN, ReasonCode.SERVER_SHUTTING_DOWN)

    # --------------------------------------------------------------------- publish

    def handle_publish(
        self, conn: ClientConnection, session: Session, packet: Publish
    ) -> Puback | Pubrec | None:
        """A PUBLISH: route it; the acknowledgement for the connection to send, if any."""
        props = packet.properties
        topic = packet.topic
        if props is not NO_PROPERTIES:  # the per-PUBLISH cost of 5.0 properties: only if any
            if props.topic_alias is not None:
                topic = conn.resolve_topic_alias(topic, props.topic_alias)
                props = attrs.evolve(props, topic_alias=None)  # per hop, never stored
            if props.subscription_identifiers:
                raise RemoteProtocolError(
                    "PUBLISH from a client carries a subscription identifier",
                    ReasonCode.PROTOCOL_ERROR,
                )
        v5 = conn.version is _V5
        if not topic and v5:
            raise RemoteProtocolError(
                "PUBLISH with an empty topic name and no Topic Alias", ReasonCode.PROTOCOL_ERROR
            )
        if not topic or "+" in topic or "#" in topic or len(topic) > _SHORT_TOPIC:
            validate_topic_name(topic)  # the codec already refused U+0000 and bad UTF-8
        retain = packet.retain
        if retain and not conn.retain_available:
            raise RemoteProtocolError(
                "retain is not available on this broker", ReasonCode.RETAIN_NOT_SUPPORTED
            )
        qos = packet.qos
        packet_id = packet.packet_id
        stats = self.stats
        stats.received_by_qos[qos] += 1
        stats.publish_bytes_received += len(packet.payload)

        if qos:
            if qos == 2 and packet_id is not None and packet_id in session.inflight_in:
                return Pubrec(packet_id)  # duplicate of a QoS 2 message we already have
            # (QoS 1 is unanswered only in a cluster, until stored: conn.unanswered_qos1)
            if v5 and len(session.inflight_in) + conn.unanswered_qos1 >= conn.receive_maximum:
                raise RemoteProtocolError(
                    f"more than Receive Maximum ({conn.receive_maximum}) QoS 1/2 messages "
                    "not acknowledged yet",
                    ReasonCode.RECEIVE_MAXIMUM_EXCEEDED,
                )

        code: ReasonCode = _SUCCESS
        if topic[0] == "$":
            code = _dollar_topic_refusal(topic)
            if conn.first_time("publish to $"):
                log.info(
                    "%s client_id=%r may not publish to %r (nor to other topics starting "
                    "with $): refused, not routed",
                    conn.peer.describe(),
                    conn.client_id,
                    topic,
                )
        elif props.payload_format_indicator == 1 and not _is_utf8(packet.payload):
            code = ReasonCode.PAYLOAD_FORMAT_INVALID
        elif self.publish_hooks and not all(
            hook(conn.peer, conn.client_id, conn.username, topic) for hook in self.publish_hooks
        ):
            code = ReasonCode.NOT_AUTHORIZED
            log.info("publish to %r by %r not authorized", topic, conn.client_id)
        else:
            # positional: measurably cheaper than keywords on this path
            message = Message(
                topic, packet.payload, qos, retain, props, conn.client_id, conn.peer, self.clock()
            )
            cluster = self.cluster
            if cluster is not None and packet_id is not None:
                # a cluster stores QoS 1/2 messages before acknowledging them (stored()).
                # QoS 1 is routed at once, while the stream stores it: if the store
                # fails, the publisher sends it again and subscribers may get it twice,
                # which QoS 1 allows. QoS 2 (exactly once) is routed once stored.
                conn.storing(len(packet.payload) + len(topic), qos)
                if qos == 2:
                    session.receive_incoming(packet_id)
                    cluster.store(message, conn, packet_id)
                    return None
                floor = cluster.store(message, conn, packet_id)
                if floor:
                    self.publish(StoredMessage.of(message, floor))
                return None
            if not self.publish(message) and v5 and self.cluster is None:
                # (in a cluster, subscribers on other nodes are not known here)
                code = ReasonCode.NO_MATCHING_SUBSCRIBERS

        if packet_id is None:
            return None
        if qos == 1:
            return Puback(packet_id, code)
        if not code.is_error:
            session.receive_incoming(packet_id)
        return Pubrec(packet_id, code)

    def publish(self, message: Message, from_cluster: bool = False) -> int:
        """Route a message to every matching subscriber; store it if retained.

        Returns the number of sessions (and in-process subscribers) it was routed to.
        ``from_cluster``: it came from another node, so it is routed to this node's
        subscribers only (not forwarded back), and its retained copy, if any, reaches
        this node through the cluster's retained store (``retained_from_cluster``).
        One method for both: a second call per message measurably slows the hot path.
        """
        if not from_cluster:
            if message.retain:
                if message.payload:
                    self.set_retained(message)
                else:
                    self.retained.delete(message.topic)
                self.retained_changed(message.topic)
            if self.cluster is not None and not message.topic.startswith(SYS_TOPICS):
                self.cluster.forward(message)  # each node has its own $SYS
        deliveries, shares = self.router.routed_deliveries(message.topic, message.publisher)
        if not deliveries:
            return 0
        if message.properties is NO_PROPERTIES:  # publish_size() without the call
            size = len(message.payload) + len(message.topic) + 7
        else:
            size = publish_size(message)
        if len(deliveries) == 1 and not shares:
            self._deliver(message, size, deliveries[0], None)  # one recipient: nothing to share
            return 1
        # subscribers that get the same QoS / retain / subscription ids share one item
        # (and so its encoded bytes)
        items: dict[_ItemKey, QueuedMessage] = {}
        if shares:
            for delivery in deliveries:
                self._deliver(message, size, delivery, items, shares.get(delivery.client_id, ()))
        else:
            for delivery in deliveries:
                self._deliver(message, size, delivery, items)
        return len(deliveries)

    def stored(
        self, conn: ClientConnection, packet_id: int, message: Message, sequence: int | None
    ) -> None:
        """The cluster's stream answered for a QoS 1/2 message that ``conn`` published.

        ``sequence`` is its place in the stream: acknowledge it, and route a QoS 2
        message (with that sequence; QoS 1 was routed when it arrived). None: it could
        not be stored; the client is disconnected (MQTT 5: 0x89 Server busy) so that it
        sends it again, as an unacknowledged message, once it reconnects.
        """
        if sequence is None:
            session = self.sessions.get(conn.client_id)
            if session is not None and session.connection is conn:
                session.release_incoming(packet_id)
            conn.request_close(
                CloseReason.CLUSTER_UNAVAILABLE,
                ReasonCode.SERVER_BUSY,
                "the cluster could not store a message",
            )
            return
        if message.qos == 1:
            conn.acknowledge(Puback(packet_id))
        else:
            self.publish(StoredMessage.of(message, sequence))
            conn.acknowledge(Pubrec(packet_id))

    def publish_shared_remote(self, message: Message, shared_filter: str) -> bool:
        """The cluster chose this node's member of share group ``shared_filter`` for
        ``message``: queue it for the next member in turn; False if none is left."""
        member = self.router.pick_shared_member(shared_filter)
        if member is None:
            return False
        self._deliver(message, publish_size(message), member.delivery(), None, (shared_filter,))
        return True

    def publish_to(
        self, client_id: str, messages: Iterable[Message], topic_filters: Iterable[str]
    ) -> int:
        """Route ``messages`` to ``client_id``'s session alone, through those of its
        subscriptions whose filters are in ``topic_filters`` (not share groups): a
        cluster node delivering what a session missed while it moved between nodes.
        Returns how many were queued for it."""
        if client_id not in self.sessions:
            return 0
        own = Router()
        wanted = set(topic_filters)
        for topic_filter, options in self.router.subscriptions_of(client_id).items():
            if topic_filter in wanted and not topic_filter.startswith(SHARE_PREFIX):
                own.subscribe(client_id, topic_filter, options)
        routed = 0
        for message in messages:
            size = publish_size(message)
            for delivery in own.deliveries(message.topic, message.publisher):
                self._deliver(message, size, delivery, None)
                routed += 1
        return routed

    def retained_from_cluster(self, topic: str, message: Message | None) -> None:
        """The cluster's retained store changed ``topic``: keep this node's copy in step.

        ``None`` clears it. Nothing is routed: live subscribers got the message itself.
        """
        if message is None:
            if self.retained.get(topic) is None:
                return
            self.retained.delete(topic)
        else:
            self.set_retained(message)
        self.retained_changed(topic)

    def connected_will(self, client_id: str) -> tuple[Message | None, int] | None:
        """The will of ``client_id`` as the cluster keeps it (the message it becomes, its
        delay); None if the client is not connected here.

        What a cluster node that joined again tells the cluster for each connected
        client (as ``connected`` did at its CONNECT): nothing reached the cluster while
        the node was cut off.
        """
        session = self.sessions.get(client_id)
        conn = None if session is None else session.connection
        if conn is None:
            return None
        return _cluster_will(conn.will, client_id, conn.peer, self.now())

    def hand_over(self, client_id: str, where: str) -> Session | None:
        """Another node resumes ``client_id``'s session: let go of it and return it.

        A live connection is closed as in a takeover (MQTT 5: DISCONNECT 0x8E; its will
        follows the takeover rules). The session leaves this node with its
        subscriptions, queue and in-flight messages, for the other node to restore.
        None if there is no session here (or it ended with its connection).
        """
        session = self.sessions.get(client_id)
        if session is None:
            return None
        if session.connection is not None:
            self._close_for_takeover(session, f"resumes its session on node {where}")
            if self.sessions.get(client_id) is not session:
                return None  # it ended with its connection (session expiry 0)
        del self.sessions[client_id]
        self.router.unsubscribe_all(client_id)
        self.session_changed(client_id)
        return session

    def _close_for_takeover(self, session: Session, why: str) -> None:
        """Close the session's connection because another connection, here or on another
        node, takes the client id over (5.0: DISCONNECT 0x8E); its will follows the
        takeover rules (``_detach``)."""
        old = session.connection
        assert old is not None
        log.info(
            "client %r %s: closing its connection here (%s)",
            session.client_id,
            why,
            old.peer.describe(),
        )
        will = old.release_session()
        self._detach(session, will, old.peer, CloseReason.TAKEN_OVER)
        old.request_close(CloseReason.TAKEN_OVER, ReasonCode.SESSION_TAKEN_OVER)

    def taken_over_elsewhere(self, client_id: str, where: str) -> bool:
        """Another node took ``client_id`` over: close it here; True if it was online.

        Its session here ends (the node that owns the client id now holds the session)
        and its will, if any, is published as for a takeover on this node.
        """
        session = self.sessions.get(client_id)
        if session is None or session.connection is None:
            return False
        self._close_for_takeover(session, f"connected on node {where}")
        if self.sessions.get(client_id) is session:
            self._end_session(session, publish_delayed_will=False)
        return True

    def set_retained(self, message: Message) -> None:
        """Store ``message`` as the retained message of its topic (no routing)."""
        self.retained.set(message.topic, message)
        if message.properties.message_expiry_interval is not None:
            self.expiring_retained.add(message.topic)

    def _deliver(
        self,
        message: Message,
        size: int,
        delivery: Delivery,
        items: dict[_ItemKey, QueuedMessage] | None,
        shared_filters: tuple[str, ...] = (),
    ) -> None:
        """Queue ``message`` for one recipient; ``items`` shares queue entries among them.

        The hot path of routing: runs once per message and recipient. ``size`` is
        ``publish_size(message)``, worked out once for all recipients.
        """
        client_id = delivery.client_id
        session = self.sessions.get(client_id)
        if session is None:
            local = self.local_subscribers.get(client_id)
            if local is not None:
                local(message)
            return
        qos = message.qos if message.qos < delivery.qos else delivery.qos
        retain = message.retain and delivery.retain_as_published
        if items is None:
            item = QueuedMessage(
                message, qos, retain, delivery.subscription_identifiers, shared_filters, None, size
            )
        else:
            key = (qos, retain, delivery.subscription_identifiers, shared_filters)
            shared_item = items.get(key)
            if shared_item is None:
                item = items[key] = QueuedMessage(message, *key, None, size)
            else:
                item = shared_item
                if item.encoded is None:
                    item.encoded = {}  # a second recipient: worth sharing the encoded header
        if not session.enqueue(item):
            if not item.qos and session.connection is None:
                # offline sessions queue no QoS 0 (counted, though not the session's drop)
                self.stats.dropped(DROP_OFFLINE_QOS0)
            return
        # (session_changed, inline: this runs once per message and recipient)
        if self.records_changes:
            self.dirty_sessions.add(client_id)
        marks = self.cluster_changed_sessions
        if marks is not None:
            marks.add(client_id)
        connection = session.connection
        if connection is not None:
            if not connection.woken:
                connection.wake()
            if session.pending_bytes > CONGESTION_HIGH and (
                connection.congested or connection.update_congestion()
            ):
                self.congestion_hits.add(connection)

    def session_overflowed(self, session: Session, item: QueuedMessage) -> bool:
        """A QoS 1/2 message does not fit in ``session``'s queue (its ``on_overflow``):
        True if the cluster keeps it for the session instead (it is in the stream:
        the node reads it back as the queue empties, ``refill``). Online sessions only:
        an offline one keeps what its budget allows, as on one node."""
        cluster = self.cluster
        return (
            cluster is not None
            and session.connection is not None  # (offline: max_queued_messages applies)
            and isinstance(item.message, StoredMessage)
            and cluster.spill(session.client_id, item.message)
        )

    def refill(
        self, client_id: str, messages: Iterable[Message], topic_filters: Iterable[str]
    ) -> bool:
        """Queue again, in order, messages the cluster kept for ``client_id``
        (``session_overflowed``), through its subscriptions in ``topic_filters``.

        ``messages`` are all that was kept while the session was spilling, up to some
        point. Returns whether the session is still spilling (a message overflowed
        again: it and the ones after it were kept again) or ended (False).
        """
        session = self.sessions.get(client_id)
        if session is None:
            return False
        session.end_spill()
        self.publish_to(client_id, messages, topic_filters)
        return session.spilling

    def spill_again(self, client_id: str) -> None:
        """More that the cluster kept waits for ``client_id``: later QoS 1/2 messages go
        the same way, in order (after a ``refill`` that did not get all of them)."""
        session = self.sessions.get(client_id)
        if session is not None:
            session.start_spill()

    def spill_lost(self, client_id: str, count: int) -> None:
        """``count`` messages the cluster kept for ``client_id`` could not be read back
        (the session ended or moved, or the stream no longer had them): count them as
        dropped."""
        for _ in range(count):
            self.stats.dropped(DROP_QUEUE_FULL)
        session = self.sessions.get(client_id)
        if session is not None:
            session.count_lost(count)

    def session_dropped(self, session: Session) -> None:
        """A session dropped a message (its ``on_drop``): count it, log an episode's first."""
        self.stats.dropped(DROP_QUEUE_FULL)
        if session.drop_episode != 1:
            return  # the episode was already under way (and logged)
        connection = session.connection
        if connection is not None:
            log.warning(
                "client %r (%s) is too slow: %d bytes wait for it (max_queued_bytes %d); "
                "dropping messages for it, QoS 0 first",
                session.client_id,
                connection.peer.describe(),
                session.queued_bytes,
                session.max_queued_bytes,
            )
        else:
            log.warning(
                "offline session %r has %d messages queued (max_queued_messages %d, "
                "%d bytes of max_queued_bytes %d); dropping messages for it",
                session.client_id,
                len(session.queued_entries),
                session.max_queued_messages,
                session.queued_bytes,
                session.max_queued_bytes,
            )

    def _redistribute_shared(self, session: Session) -> None:
        """Hand the unacknowledged shared-subscription messages of an ending session on.

        5.0 section 4.8.2: a QoS 1 message sent to a member of a shared subscription whose
        session ends before it acknowledged it SHOULD go to another member; a QoS 2 one
        that was sent MUST NOT [MQTT-4.8.2-5]. So unacknowledged in-flight QoS 1 messages
        and every queued (never sent) message are given to the next member in turn of
        each share group they were chosen for; call this after the session's
        subscriptions were removed.
        """
        # in-flight ones were sent first: they go first again
        items = [
            inflight.item
            for inflight in session.inflight_out.values()
            if inflight.item.qos == 1 and inflight.state is OutboundState.AWAIT_PUBACK
        ]
        items += session.clear_pending()  # (retained replays are never for shared ones)
        now = self.now()
        for item in items:
            if not item.shared_filters or item.message.expired(now):
                continue
            for shared_filter in item.shared_filters:
                member = self.router.pick_shared_member(shared_filter)
                if member is None:
                    continue  # the group is gone: nobody left to take it
                delivery = member.delivery()
                log.info(
                    "shared subscription %r: message on %r from ended session %r goes to %r",
                    shared_filter,
                    item.message.topic,
                    session.client_id,
                    member.client_id,
                )
                self._deliver(item.message, item.size, delivery, {}, (shared_filter,))

    # ------------------------------------------------------------------- subscribe

    def handle_subscribe(
        self, conn: ClientConnection, session: Session, packet: Subscribe
    ) -> Suback | PendingSubscribe:
        """A SUBSCRIBE: subscribe (queueing the retained messages owed); the SUBACK.

        In a cluster, a SUBSCRIBE that made this node subscribe to new filters in NATS
        answers ``PendingSubscribe``: the SUBACK (and the retained messages) wait until
        the other nodes' messages for them come here (``resume_subscribe``).
        """
        v5 = conn.version is _V5
        sub_id: int | None = None
        if packet.properties.subscription_identifiers:
            sub_id = packet.properties.subscription_identifiers[0]
        codes: list[int] = []
        retained_to_send: list[tuple[str, int, SubscriptionOptions]] = []
        subscribed: list[str] = []
        for request in packet.subscriptions:
            try:
                validate_topic_filter(request.topic_filter)
            except RemoteProtocolError as exc:
                log.info("SUBSCRIBE from %r: %s", conn.client_id, exc)
                codes.append(ReasonCode.TOPIC_FILTER_INVALID)
                continue
            group, _plain = parse_shared_filter(request.topic_filter)
            if group is not None and request.no_local and v5:
                # [MQTT-3.8.3-4]
                raise RemoteProtocolError(
                    "No Local on a shared subscription", ReasonCode.PROTOCOL_ERROR
                )
            if not all(
                hook(conn.peer, conn.client_id, conn.username, request.topic_filter)
                for hook in self.subscribe_hooks
            ):
                # as a refused PUBLISH is (handle_publish): the client only sees a code
                log.info(
                    "subscribe to %r by %r not authorized", request.topic_filter, conn.client_id
                )
                codes.append(ReasonCode.NOT_AUTHORIZED)
                continue
            options = SubscriptionOptions(
                qos=request.qos,
                no_local=request.no_local,
                retain_as_published=request.retain_as_published,
                retain_handling=request.retain_handling,
                subscription_identifier=sub_id,
            )
            existed = self.router.subscribe(session.client_id, request.topic_filter, options)
            codes.append(request.qos)
            subscribed.append(request.topic_filter)
            if group is None and (
                request.retain_handling == 0 or (request.retain_handling == 1 and not existed)
            ):
                retained_to_send.append((request.topic_filter, request.qos, options))
        suback = Suback(packet.packet_id, tuple(codes))
        cluster = self.cluster
        if cluster is not None and subscribed:
            wait = cluster.subscribed(session.client_id, subscribed)
            if wait is not None:
                return PendingSubscribe(AwaitedCheck(wait), suback, tuple(retained_to_send))
        for topic_filter, qos, options in retained_to_send:
            self._queue_retained(session, topic_filter, qos, options)
        return suback

    def resume_subscribe(self, session: Session, pending: PendingSubscribe) -> Suback:
        """The wait of a ``PendingSubscribe`` is over: queue the retained messages owed
        (as they are now); the SUBACK to send."""
        for topic_filter, qos, options in pending.retained:
            self._queue_retained(session, topic_filter, qos, options)
        return pending.suback

    def _queue_retained(
        self, session: Session, topic_filter: str, qos: int, options: SubscriptionOptions
    ) -> bool:
        """Queue the retained messages matching a new subscription; False if none.

        They go as one ``RetainedReplay`` entry, which the connection takes from as its
        output drains: however many there are, they neither count against the client's
        queue budget nor sit encoded in memory at once.
        """
        now = self.now()
        messages = deque(
            message
            for _topic, message in self.retained.match(topic_filter)
            if not message.expired(now)
        )
        if not messages:
            return False
        ids = () if options.subscription_identifier is None else (options.subscription_identifier,)
        session.append_replay(RetainedReplay(messages, qos, ids))
        return True

    def handle_unsubscribe(self, session: Session, packet: Unsubscribe) -> Unsuback:
        """An UNSUBSCRIBE: unsubscribe; the UNSUBACK for the connection to send."""
        codes: list[int] = []
        for topic_filter in packet.topic_filters:
            try:
                validate_topic_filter(topic_filter)
            except RemoteProtocolError:
                codes.append(ReasonCode.TOPIC_FILTER_INVALID)
                continue
            existed = self.router.unsubscribe(session.client_id, topic_filter)
            codes.append(ReasonCode.SUCCESS if existed else ReasonCode.NO_SUBSCRIPTION_EXISTED)
        return Unsuback(packet.packet_id, tuple(codes))

    # ------------------------------------------------------------ in-process clients

    def local_subscribe(
        self, topic_filter: str, callback: Callable[[Message], None], *, qos: int = 2
    ) -> str:
        """Register an in-process subscriber; returns its id for ``local_unsubscribe``."""
        validate_topic_filter(topic_filter)
        self._local_counter += 1
        local_id = f"{LOCAL_PREFIX}{self._local_counter}"
        self.local_subscribers[local_id] = callback
        self.router.subscribe(local_id, topic_filter, SubscriptionOptions(qos=qos))
        if parse_shared_filter(topic_filter)[0] is not None:
            return local_id  # shared subscriptions get no retained messages (5.0, 4.8.2)
        for _topic, message in self.retained.match(topic_filter):
            if not message.expired(self.now()):
                callback(message)
        return local_id

    def local_unsubscribe(self, local_id: str) -> None:
        self.local_subscribers.pop(local_id, None)
        self.router.unsubscribe_all(local_id)


def _dollar_topic_refusal(topic: str) -> ReasonCode:
    """Why a client may not PUBLISH to ``topic``, which starts with ``$``.

    Topics starting with ``$`` are the server's (5.0 section 4.7.2, 3.1.1 section 4.7.2:
    the server SHOULD prevent clients from using them to exchange messages with other
    clients). ``$share/...`` is the form of a Shared Subscription filter, which no
    subscription can match as a topic name: 0x90 (Topic Name invalid). The rest, $SYS
    above all: 0x87 (Not authorized), as mosquitto answers for $SYS.
    """
    if topic.startswith(SHARE_PREFIX):
        return ReasonCode.TOPIC_NAME_INVALID
    return ReasonCode.NOT_AUTHORIZED


def _fit_connack(props: Properties, maximum: int) -> Properties | None:
    """CONNACK properties that fit the client's Maximum Packet Size; None if none do.

    What may go: Reason String and User Properties [MQTT-3.2.2-19], [MQTT-3.2.2-20], and
    the properties that only say what their absence means as well (5.0 sections
    3.2.2.3.10 to 3.2.2.3.12: absent means available). The rest carries what the client
    must know (its assigned id, Server Keep Alive, our limits).
    """
    if _connack_size(props) <= maximum:
        return props
    props = attrs.evolve(
        props,
        reason_string=None,
        user_properties=(),
        wildcard_subscription_available=None,
        subscription_identifier_available=None,
        shared_subscription_available=None,
    )
    return props if _connack_size(props) <= maximum else None


def _connack_size(props: Properties) -> int:
    return len(encode(Connack(properties=props), ProtocolVersion.V5))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
