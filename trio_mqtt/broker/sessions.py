"""Session state: what the broker keeps for one client id across connections.

A session outlives its network connection when the client asked for it (3.1.1 clean
session = 0, 5.0 Session Expiry Interval > 0). It holds the messages waiting for the
client (``pending``), the QoS 1/2 messages sent but not yet acknowledged
(``inflight_out``) and the QoS 2 packet ids received but not yet released
(``inflight_in``). Subscriptions live in the router, keyed by client id.

Queue policy (documented in docs/configuration.md):

- An online client has a budget of ``max_queued_bytes``: the PUBLISH bytes waiting for
  it (queued, plus encoded but not yet taken by its socket) and sent but not yet
  acknowledged. A client that keeps up never comes near it; the broker slows down
  publishers before its writers fall behind (``ClientConnection.congested``).
- An offline session keeps at most ``max_queued_messages`` QoS 1/2 messages (and at
  most ``max_queued_bytes``); it queues no QoS 0 at all.
- Over the limit, a new QoS 0 message is dropped; a new QoS 1/2 message evicts queued
  QoS 0 messages, oldest first, and is itself dropped when that is not enough. Every
  drop is counted in ``dropped`` and reported to ``on_drop`` (the core counts it in the
  broker's statistics and logs the first of each episode).
- In a cluster, a QoS 1/2 message that would be dropped is in the cluster's stream
  already: ``on_overflow`` may take it (the node reads it back later), and then it is
  not a drop. From then on the session is ``spilling``: every QoS 1/2 message goes that
  way, in order, until the node has refilled the queue and ends it (``end_spill``).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import attrs

from trio_mqtt.broker.connection_view import ClientConnection
from trio_mqtt.broker.message import Message, publish_size
from trio_mqtt.broker.router import SubscriptionOptions
from trio_mqtt.mqtt.packets import Properties, ProtocolVersion

NEVER_EXPIRES = 0xFFFFFFFF


def _ignore_drop(_session: Session) -> None:
    pass


def _no_overflow(_session: Session, _item: QueuedMessage) -> bool:
    return False


@attrs.define(eq=False, slots=True)
class QueuedMessage:
    """A message on its way to a session, at the QoS and flags of that delivery.

    Never changed once made, so one instance is shared by every subscriber that gets
    the message with the same QoS, retain flag and subscription identifiers; ``encoded``
    then lets them share its PUBLISH bytes too (see ``mqtt_connection``).
    """

    message: Message
    qos: int
    retain: bool
    subscription_identifiers: tuple[int, ...] = ()
    # the shared subscriptions ($share/g/f) this delivery was chosen for: if the session
    # ends before the message is acknowledged, another member of each gets it
    shared_filters: tuple[str, ...] = ()
    # protocol level -> (PUBLISH bytes up to the payload, offset of the packet id or -1);
    # None until a second recipient shares the item (one recipient: nothing to share)
    encoded: dict[int, tuple[bytes, int]] | None = None
    # about the bytes of its PUBLISH: what the queue budget counts (``publish_size``)
    size: int = attrs.field(
        default=attrs.Factory(lambda self: publish_size(self.message), takes_self=True)
    )


# What an evicted QoS 0 message leaves in its place in a queue (Session._take_oldest_qos0):
# a message that has always expired, so a writer skips it like any expired message.
EVICTED = QueuedMessage(
    Message("", properties=Properties(message_expiry_interval=0), created=-math.inf),
    0,
    False,
    size=0,
)


@attrs.define(eq=False, slots=True)
class RetainedReplay:
    """The retained messages a new subscription is owed, in the queue as one entry.

    A subscription to ``#`` on a broker with 100,000 retained topics must get all of
    them, without a burst that fills the client's budget: the replay holds references to
    the matching messages (a snapshot taken at SUBSCRIBE) and the connection takes them
    one by one as its output drains. Its place in the queue is a ``None`` in
    ``Session.pending`` (the replay itself waits in ``Session.replays``), so it goes out
    in order with what was queued before and after it.
    """

    messages: deque[Message]
    qos: int
    subscription_identifiers: tuple[int, ...] = ()

    def next_item(self) -> QueuedMessage | None:
        """The next retained message as a delivery (not taken yet); None when done."""
        if not self.messages:
            return None
        message = self.messages[0]
        qos = self.qos if self.qos < message.qos else message.qos
        return QueuedMessage(message, qos, True, self.subscription_identifiers)

    def take(self) -> None:
        """The connection sent the message ``next_item`` gave it."""
        self.messages.popleft()

    def items(self) -> Iterator[QueuedMessage]:
        """What is left, as deliveries (persistence saves them as queued messages)."""
        for message in self.messages:
            qos = self.qos if self.qos < message.qos else message.qos
            yield QueuedMessage(message, qos, True, self.subscription_identifiers)


class OutboundState(enum.Enum):
    AWAIT_PUBACK = "puback"  # QoS 1 sent
    AWAIT_PUBREC = "pubrec"  # QoS 2 sent
    AWAIT_PUBCOMP = "pubcomp"  # QoS 2, PUBREL sent


@attrs.define(eq=False, slots=True)
class OutboundInflight:
    packet_id: int
    item: QueuedMessage
    state: OutboundState


_NO_PACKET_IDS: frozenset[int] = frozenset()


@attrs.define(eq=False)
class Session:
    client_id: str
    protocol_version: ProtocolVersion
    # the queue limits (module docstring): QoS 1/2 messages kept offline, bytes always
    max_queued_messages: int
    max_queued_bytes: int
    # seconds the session outlives its connection; NEVER_EXPIRES = forever, 0 = not at all
    expiry_interval: int = 0
    connection: ClientConnection | None = None
    # messages waiting to be sent, in order; None marks the place of the first of
    # ``replays``. ``pending`` itself is None until something is queued
    # (``pending_queue``), and ``replays`` and ``evicted_positions`` are made on first
    # use too: an empty deque is 0.75 KiB, and an idle client's session needs none
    pending: deque[QueuedMessage | None] | None = attrs.field(default=None, init=False)
    pending_bytes: int = 0  # the sizes of the QueuedMessages in ``pending``
    _replays: deque[RetainedReplay] | None = attrs.field(default=None, init=False)
    # positions counted from the first entry ever queued (see _take_oldest_qos0): how
    # many entries left the front, where the QoS 0 messages are (while kept), and which
    # entries are EVICTED
    taken_from_front: int = 0
    qos0_index: deque[int] | None = None
    _evicted: deque[int] | None = attrs.field(default=None, init=False)
    fast_limit: int = attrs.field(
        default=attrs.Factory(lambda self: self.max_queued_bytes, takes_self=True)
    )
    inflight_out: dict[int, OutboundInflight] = attrs.Factory(dict)
    inflight_bytes: int = 0  # the sizes of the messages in ``inflight_out``
    # packet ids of QoS 2 messages received and not yet released (PUBREL); made on first
    # use and dropped once empty
    _inflight_in: set[int] | None = attrs.field(default=None, init=False)
    next_packet_id: int = 1
    dropped: int = 0
    # messages dropped since the queue last had room to spare (0: not dropping now)
    drop_episode: int = 0
    # called after each drop (the broker's statistics and log)
    on_drop: Callable[[Session], None] = _ignore_drop
    # asked for a QoS 1/2 message that does not fit: True if it is kept elsewhere (a
    # cluster's stream) to be queued again later; and whether that is under way
    on_overflow: Callable[[Session, QueuedMessage], bool] = _no_overflow
    spilling: bool = False
    expires_at: float | None = None  # broker clock, set while offline
    # a will waiting for its Will Delay Interval (5.0), cancelled by a reconnect
    delayed_will: Message | None = None
    will_due: float | None = None

    def pending_queue(self) -> deque[QueuedMessage | None]:
        """``pending``, made if there is none yet: for code that changes the queue."""
        pending = self.pending
        if pending is None:
            pending = self.pending = deque()
        return pending

    @property
    def queued_entries(self) -> Sequence[QueuedMessage | None]:
        """``pending``, read only (empty if there is none)."""
        return self.pending or ()

    @property
    def inflight_in(self) -> set[int] | frozenset[int]:
        """Packet ids of the incoming QoS 2 messages not released yet (read only)."""
        return self._inflight_in or _NO_PACKET_IDS

    def receive_incoming(self, packet_id: int) -> None:
        """An incoming QoS 2 message was accepted (PUBREC): its packet id is in use
        until the client releases it."""
        received = self._inflight_in
        if received is None:
            received = self._inflight_in = set()
        received.add(packet_id)

    def release_incoming(self, packet_id: int) -> bool:
        """The client released ``packet_id`` (PUBREL); False if it was not in use."""
        received = self._inflight_in
        if received is None or packet_id not in received:
            return False
        received.discard(packet_id)
        if not received:
            self._inflight_in = None
        return True

    @property
    def replays(self) -> deque[RetainedReplay]:
        """The retained replays queued (their places in ``pending`` are None), in order."""
        if self._replays is None:
            self._replays = deque()
        return self._replays

    @property
    def has_replays(self) -> bool:
        """Whether retained replays are queued (read without making ``replays``)."""
        return bool(self._replays)

    @property
    def evicted_entries(self) -> Sequence[int]:
        """``evicted_positions``, read only (empty without making the deque)."""
        return self._evicted or ()

    @property
    def evicted_positions(self) -> deque[int]:
        """The positions of the ``EVICTED`` entries in ``pending``, in order."""
        if self._evicted is None:
            self._evicted = deque()
        return self._evicted

    @property
    def online(self) -> bool:
        return self.connection is not None

    @property
    def queued_bytes(self) -> int:
        """What counts against ``max_queued_bytes`` now."""
        total = self.pending_bytes + self.inflight_bytes
        if self.connection is not None:
            total += self.connection.in_transit
        return total

    def enqueue(self, item: QueuedMessage) -> bool:
        """Queue a message for this session per the module's policy; False if not queued.

        Runs once per message and recipient: the common case (online, within budget)
        reads plain attributes and returns. ``fast_limit`` is ``max_queued_bytes``, or -1
        while the queue keeps an index of its QoS 0 messages (``_take_oldest_qos0``) or
        is ``spilling``: then every message takes the slow path, which keeps the index
        and spills.
        """
        connection = self.connection
        if connection is not None:
            pending_bytes = self.pending_bytes + item.size
            if pending_bytes + self.inflight_bytes + connection.in_transit <= self.fast_limit:
                pending = self.pending  # (pending_queue(), inline: once per delivery)
                if pending is None:
                    pending = self.pending = deque()
                pending.append(item)
                self.pending_bytes = pending_bytes
                return True
        elif item.qos == 0:
            return False  # offline sessions do not queue QoS 0 (not a drop: MQTT allows it)
        elif (
            not self._evicted  # else len(pending) is not what counts
            and not self.spilling
            and len(self.queued_entries) < self.max_queued_messages
            and self.pending_bytes + self.inflight_bytes + item.size <= self.max_queued_bytes
        ):
            self.pending_queue().append(item)  # QoS 1/2: no position to note, even for the index
            self.pending_bytes += item.size
            return True
        return self._enqueue_slowly(item)

    def _enqueue_slowly(self, item: QueuedMessage) -> bool:
        """``enqueue`` near or over the limits: make room by evicting QoS 0, or drop."""
        if item.qos and self.spilling and self.on_overflow(self, item):
            return False  # (after older ones that went the same way)
        if not self._fits(item) and item.qos > 0:
            while not self._fits(item):
                evicted = self._take_oldest_qos0()
                if evicted is None:
                    break
                self.pending_bytes -= evicted.size
                self._count_drop()
        if not self._fits(item):
            if item.qos and self.on_overflow(self, item):
                self.start_spill()
                return False
            self._count_drop()
            return False
        index = self.qos0_index
        if index is not None and not item.qos:
            index.append(self.taken_from_front + len(self.queued_entries))
        self.pending_queue().append(item)
        self.pending_bytes += item.size
        return True

    def _take_oldest_qos0(self) -> QueuedMessage | None:
        """Take the oldest queued QoS 0 message out of the queue, if there is one.

        A full queue is asked this for every further QoS 1/2 message, so it must not
        search: the first time, one pass lists where the QoS 0 messages are
        (``qos0_index``, positions counted from the first entry ever queued, which do
        not move as the writer takes entries off the front); from then on every message
        queued keeps the list up to date (the slow path of ``enqueue``), until the
        queue is half empty again. The evicted entry becomes ``EVICTED`` in place: a
        deque cannot delete from its middle without moving what follows.
        """
        index = self.qos0_index
        if index is None:
            first = self.taken_from_front
            index = self.qos0_index = deque(
                first + offset
                for offset, queued in enumerate(self.queued_entries)
                if queued is not None and queued is not EVICTED and not queued.qos
            )
            self.fast_limit = -1
        taken = self.taken_from_front
        while index and index[0] < taken:
            index.popleft()  # sent since it was listed
        if not index:
            return None
        position = index.popleft()
        pending = self.pending_queue()
        evicted = pending[position - taken]
        assert evicted is not None and evicted is not EVICTED
        pending[position - taken] = EVICTED
        self.evicted_positions.append(position)
        return evicted

    def took_from_front(self, count: int, size: int) -> None:
        """The connection took ``count`` entries off the front of ``pending``, QueuedMessages
        of ``size`` bytes in all (``QueuedMessage.size``; a replay's place counts none)."""
        self.pending_bytes -= size
        self.taken_from_front += count
        if self.qos0_index is not None and self.pending_bytes < self.max_queued_bytes // 2:
            self.qos0_index = None  # room again: back to the fast path
            if not self.spilling:
                self.fast_limit = self.max_queued_bytes

    def attach(
        self, connection: ClientConnection, protocol_version: ProtocolVersion, expiry_interval: int
    ) -> None:
        """``connection`` CONNECTed to this session, with these CONNECT settings.

        A will still waiting for its delay is dropped: its client came back in time
        ([MQTT-3.1.3-9]).
        """
        self.protocol_version = protocol_version
        self.expiry_interval = expiry_interval
        self.expires_at = None
        self.connection = connection
        self.delayed_will = self.will_due = None

    def set_expiry_interval(self, seconds: int) -> None:
        """The client changed the session's expiry interval (5.0 DISCONNECT)."""
        self.expiry_interval = seconds

    def detach(self, now: float, delayed_will: Message | None, will_due: float | None) -> None:
        """The connection is gone (at ``now``, the broker's clock): the session starts
        to expire (unless it never does; at 0 the broker ends it at once), and keeps
        ``delayed_will``, if any, until ``will_due`` (``take_delayed_will``)."""
        self.connection = None
        if delayed_will is not None:
            self.delayed_will, self.will_due = delayed_will, will_due
        if self.expiry_interval and self.expiry_interval != NEVER_EXPIRES:
            self.expires_at = now + self.expiry_interval

    def take_delayed_will(self) -> Message | None:
        """The will waiting for its delay, if any; the session keeps it no longer."""
        will = self.delayed_will
        self.delayed_will = self.will_due = None
        return will

    def start_spill(self) -> None:
        """QoS 1/2 messages go to ``on_overflow``, in order, until ``end_spill``."""
        self.spilling = True
        self.fast_limit = -1  # (every message takes the slow path while spilling)

    def end_spill(self) -> None:
        """What ``on_overflow`` took is queued again: QoS 1/2 messages queue as usual."""
        self.spilling = False
        if self.qos0_index is None:
            self.fast_limit = self.max_queued_bytes

    def has_room_to_refill(self) -> bool:
        """Whether the queue is at most half full: room for messages read back."""
        if self.queued_bytes > self.max_queued_bytes // 2:
            return False
        return self.connection is not None or self._entries() <= self.max_queued_messages // 2

    def set_limits(self, max_queued_messages: int, max_queued_bytes: int) -> None:
        """New queue limits (a config reload): what is queued stays, later messages obey."""
        self.max_queued_messages = max_queued_messages
        self.max_queued_bytes = max_queued_bytes
        if self.qos0_index is None and not self.spilling:  # else -1: the slow path
            self.fast_limit = max_queued_bytes

    def _entries(self) -> int:
        """How many messages (and replays) are queued, the evicted ones left out."""
        evicted = self._evicted
        if not evicted:
            return len(self.queued_entries)
        while evicted and evicted[0] < self.taken_from_front:
            evicted.popleft()
        return len(self.queued_entries) - len(evicted)

    def queued_messages(self) -> int:
        """Messages waiting for the client or its acknowledgement (a retained replay
        counts as one): what ``$SYS/broker/store/messages/count`` adds up."""
        return self._entries() + len(self.inflight_out)

    def _fits(self, item: QueuedMessage) -> bool:
        if self.queued_bytes + item.size > self.max_queued_bytes:
            return False
        return self.connection is not None or self._entries() < self.max_queued_messages

    def _count_drop(self) -> None:
        self.dropped += 1
        self.drop_episode += 1
        self.on_drop(self)

    def count_lost(self, count: int) -> None:
        """``count`` messages that ``on_overflow`` kept elsewhere for this session could
        not be given back: they count as dropped for it."""
        self.dropped += count

    def end_drop_episode(self) -> int:
        """The queue has room again: how many were dropped in the episode that ends."""
        dropped, self.drop_episode = self.drop_episode, 0
        return dropped

    def append_pending(self, item: QueuedMessage) -> None:
        """Queue without the policy (restoring a saved session)."""
        self.pending_queue().append(item)
        self.pending_bytes += item.size

    def append_replay(self, replay: RetainedReplay) -> None:
        """Queue the retained messages of a new subscription (no budget: see the class)."""
        self.replays.append(replay)
        self.pending_queue().append(None)

    def queued_items(self) -> Iterator[QueuedMessage]:
        """Everything queued, in order, replays as the messages they still hold."""
        replays = iter(self._replays or ())
        for item in self.queued_entries:
            if item is None:
                yield from next(replays).items()
            elif item is not EVICTED:
                yield item

    def clear_pending(self) -> list[QueuedMessage]:
        """Take the queued messages (the session ends); replays are dropped."""
        entries = self.queued_entries
        items = [item for item in entries if item is not None and item is not EVICTED]
        self.taken_from_front += len(entries)
        self.pending = None
        self.pending_bytes = 0
        self.qos0_index = None
        self._evicted = None
        self.fast_limit = -1 if self.spilling else self.max_queued_bytes
        self._replays = None
        return items

    def replay_done(self) -> None:
        """The first of ``replays`` has nothing left (its place in ``pending`` was taken)."""
        self.replays.popleft()

    def await_pubcomp(self, packet_id: int) -> None:
        """The QoS 2 message in flight as ``packet_id`` was received (PUBREC): its PUBREL
        is sent, its PUBCOMP awaited."""
        self.inflight_out[packet_id].state = OutboundState.AWAIT_PUBCOMP

    def add_inflight(self, packet_id: int, item: QueuedMessage, state: OutboundState) -> None:
        self.inflight_out[packet_id] = OutboundInflight(packet_id, item, state)
        self.inflight_bytes += item.size

    def remove_inflight(self, packet_id: int) -> None:
        inflight = self.inflight_out.pop(packet_id)
        self.inflight_bytes -= inflight.item.size

    def allocate_packet_id(self) -> int:
        """The next packet id not in use by an outbound in-flight message."""
        for _ in range(65535):
            packet_id = self.next_packet_id
            self.next_packet_id = packet_id % 65535 + 1
            if packet_id not in self.inflight_out:
                return packet_id
        raise RuntimeError("all 65535 packet identifiers are in flight")  # pragma: no cover


@attrs.frozen
class SavedSession:
    """A persistent session as a persistence backend kept it (``BrokerCore.restore``).

    Times are on the broker's clock. ``expires_at`` is None for a session that was online
    when it was saved (its expiry counts from the restore) or one that never expires.
    """

    client_id: str
    protocol_version: ProtocolVersion
    expiry_interval: int
    expires_at: float | None
    next_packet_id: int = 1
    dropped: int = 0
    inflight_in: tuple[int, ...] = ()
    subscriptions: tuple[tuple[str, SubscriptionOptions], ...] = ()
    pending: tuple[QueuedMessage, ...] = ()
    inflight: tuple[tuple[int, QueuedMessage, OutboundState], ...] = ()
    delayed_will: Message | None = None
    will_due: float | None = None
    # the position of ``pending[0]`` as the backend counted it: the restored queue goes on
    # counting from there (``Session.taken_from_front``), so that a backend that numbers
    # queued messages can keep writing only what changes
    first_position: int = 0
