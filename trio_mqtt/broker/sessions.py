"""Session state: what the broker keeps for one client id across connections.

A session outlives its network connection when the client asked for it (3.1.1 clean
session = 0, 5.0 Session Expiry Interval > 0). It holds the messages waiting for the
client (``pending``), the QoS 1/2 messages sent but not yet acknowledged
(``inflight_out``) and the QoS 2 packet ids received but not yet released
(``inflight_in``). Subscriptions live in the router, keyed by client id.

Queue policy (documented in docs/configuration.md): ``pending`` holds at most
``max_queued`` messages. When it is full, a new QoS 0 message is dropped; a new QoS 1/2
message evicts the oldest queued QoS 0 message, and is itself dropped when there is none.
Every drop is counted in ``dropped``. Offline sessions do not queue QoS 0 at all.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING

import attrs

from trio_mqtt.broker.message import Message
from trio_mqtt.mqtt.packets import ProtocolVersion

if TYPE_CHECKING:
    from trio_mqtt.broker.mqtt_connection import MQTTConnection

NEVER_EXPIRES = 0xFFFFFFFF


@attrs.define(eq=False, slots=True)
class QueuedMessage:
    """A message on its way to a session, at the QoS and flags of that delivery.

    Never changed once made, so one instance is shared by every subscriber that gets
    the message with the same QoS, retain flag and subscription identifiers; ``encoded``
    then lets them share its PUBLISH bytes too (see ``MQTTConnection``).
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


class OutboundState(enum.Enum):
    AWAIT_PUBACK = "puback"  # QoS 1 sent
    AWAIT_PUBREC = "pubrec"  # QoS 2 sent
    AWAIT_PUBCOMP = "pubcomp"  # QoS 2, PUBREL sent


@attrs.define(eq=False, slots=True)
class OutboundInflight:
    packet_id: int
    item: QueuedMessage
    state: OutboundState


@attrs.define(eq=False)
class Session:
    client_id: str
    protocol_version: ProtocolVersion
    max_queued: int
    # seconds the session outlives its connection; NEVER_EXPIRES = forever, 0 = not at all
    expiry_interval: int = 0
    connection: MQTTConnection | None = None
    pending: deque[QueuedMessage] = attrs.Factory(deque)
    inflight_out: dict[int, OutboundInflight] = attrs.Factory(dict)
    inflight_in: set[int] = attrs.Factory(set)
    next_packet_id: int = 1
    dropped: int = 0
    expires_at: float | None = None  # broker clock, set while offline
    # a will waiting for its Will Delay Interval (5.0), cancelled by a reconnect
    delayed_will: Message | None = None
    will_due: float | None = None

    @property
    def online(self) -> bool:
        return self.connection is not None

    def enqueue(self, item: QueuedMessage) -> bool:
        """Queue a message for this session per the module's policy; False if dropped.

        Runs once per message and recipient: attributes, not the ``online`` property.
        """
        if item.qos == 0 and self.connection is None:
            return False
        pending = self.pending
        if len(pending) < self.max_queued:
            pending.append(item)
            return True
        if item.qos > 0:
            for index, queued in enumerate(pending):
                if queued.qos == 0:
                    del pending[index]
                    self.dropped += 1
                    pending.append(item)
                    return True
        self.dropped += 1
        return False

    def allocate_packet_id(self) -> int:
        """The next packet id not in use by an outbound in-flight message."""
        for _ in range(65535):
            packet_id = self.next_packet_id
            self.next_packet_id = packet_id % 65535 + 1
            if packet_id not in self.inflight_out:
                return packet_id
        raise RuntimeError("all 65535 packet identifiers are in flight")  # pragma: no cover
