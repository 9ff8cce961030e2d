"""What the broker core and a session see of a client's connection.

The connection (``mqtt_connection.MQTTConnection``) owns its state and its state
machine; the core asks it questions, calls these public methods, and otherwise answers
with decisions that the connection applies. This module holds only that contract, so
that neither ``core`` nor ``sessions`` imports the connection.
"""

from __future__ import annotations

import enum
from typing import Protocol

from trio_mqtt.mqtt.packets import ProtocolVersion, Puback, Pubrec, Will
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import PeerInfo

__all__ = [
    "CONGESTION_HIGH",
    "CONGESTION_LOW",
    "MAX_IN_FLIGHT",
    "STORE_WINDOW",
    "STORE_WINDOW_BYTES",
    "ClientConnection",
    "CloseReason",
]

# A connection is congested above CONGESTION_HIGH bytes queued for a writer that could
# send them, and stays so until they are below CONGESTION_LOW. High enough that a read of
# a few publishers fits without holding anyone back, low enough that what waits is a few
# milliseconds of work (see docs/configuration.md, "Queues and flow control").
CONGESTION_HIGH = 512 * 1024
CONGESTION_LOW = 256 * 1024
# A client's QoS 1/2 messages that a cluster is storing (not yet acknowledged): while it
# has STORE_WINDOW of them, or STORE_WINDOW_BYTES, the broker reads no more from it, so
# that a client publishing without waiting for acknowledgements cannot fill the
# broker's memory while the stream answers (held_back()).
STORE_WINDOW = 100
STORE_WINDOW_BYTES = 1024 * 1024
# The largest packet identifier: clients without a Receive Maximum of their own (3.1.1,
# or 5.0 without the property) can have this many QoS 1/2 messages in flight.
MAX_IN_FLIGHT = 65535


class CloseReason(enum.Enum):
    """Why the server side ends a connection (drives logging and the will)."""

    CLIENT_DISCONNECT = "client sent DISCONNECT"
    PROTOCOL_ERROR = "protocol error"
    KEEPALIVE_TIMEOUT = "keep alive timeout"
    CONNECT_REFUSED = "CONNECT refused"
    TAKEN_OVER = "session taken over"
    CLUSTER_UNAVAILABLE = "the cluster could not store a message"
    SHUTDOWN = "server shutting down"
    TRANSPORT_CLOSED = "connection lost"


class ClientConnection(Protocol):
    """A client connection as the core and its session see it (read, or call)."""

    @property
    def peer(self) -> PeerInfo: ...

    @property
    def client_id(self) -> str: ...

    @property
    def username(self) -> str | None: ...

    @property
    def version(self) -> ProtocolVersion: ...

    @property
    def keep_alive(self) -> int: ...

    @property
    def receive_maximum(self) -> int:
        """The Receive Maximum its CONNACK gave: QoS 1/2 messages it may have sent and
        not had acknowledged (QoS 1 only counts in a cluster, which acknowledges it
        once stored; one node answers at once)."""
        ...

    @property
    def unanswered_qos1(self) -> int:
        """Its QoS 1 messages waiting for the cluster's stream (no PUBACK yet)."""
        ...

    @property
    def retain_available(self) -> bool:
        """Whether retained messages were available when it connected."""
        ...

    @property
    def in_transit(self) -> int:
        """Bytes handed to the transport and not yet taken by it (the queue budget)."""
        ...

    @property
    def congested(self) -> bool:
        """More queued for it than its writer could send yet (flow control)."""
        ...

    @property
    def woken(self) -> bool:
        """Its server layer was told about queued messages and has not taken them yet:
        another ``wake()`` would change nothing."""
        ...

    def wake(self) -> None:
        """Something new to send (a message was queued for it)."""

    def update_congestion(self) -> bool:
        """Re-decide ``congested`` after its queue grew; True if it is."""
        ...

    def request_close(self, reason: CloseReason, code: ReasonCode, detail: str = "") -> None:
        """Close it from the server side (MQTT 5: DISCONNECT ``code`` first)."""

    def acknowledge(self, packet: Puback | Pubrec) -> None:
        """Send the acknowledgement of a PUBLISH decided after it was read."""

    def storing(self, size: int, qos: int) -> None:
        """A QoS ``qos`` message of ``size`` bytes from it went to the cluster's stream;
        its ``acknowledge`` follows in the same order (or the connection is closed)."""
        ...

    @property
    def will(self) -> Will | None:
        """Its will while it is connected (None: it has none, or it was dealt with)."""
        ...

    def release_session(self) -> Will | None:
        """Another connection takes its session over: let go of it; its will, if any."""
        ...

    def resolve_topic_alias(self, topic: str, alias: int) -> str:
        """The topic an incoming PUBLISH's Topic Alias stands for (binding it if named)."""
        ...

    def first_time(self, note: str) -> bool:
        """True the first time ``note`` is asked about on it (to log something once)."""
        ...
