"""The cluster as the core sees it: what the core tells its node (no I/O here).

A broker that is part of a cluster (``trio_mqtt.cluster``) hands the core a
:class:`ClusterLink`. The core calls it synchronously from its own decisions; the link
turns them into NATS traffic. What arrives from the cluster comes back through the
core's own methods (``publish(..., from_cluster=True)``, ``retained_from_cluster``,
``taken_over_elsewhere``): the core stays the only owner of sessions, routes and the
retained store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from trio_mqtt.broker.connection_view import ClientConnection
from trio_mqtt.broker.message import Message, StoredMessage


class ClusterLink(Protocol):
    """What the core tells the rest of the cluster.

    No method raises for the cluster's sake: a link whose connection to the cluster is
    gone drops what it would forward, refuses what it would store (``stored(..., None)``)
    and lets SUBACKs go out at once, as ``DetachedLink`` does. The core calls it from
    every client's task: an exception here would end more than one client's connection.
    """

    def forward(self, message: Message) -> None:
        """A message was published on this node: the other nodes' subscribers want it."""

    def store(self, message: Message, conn: ClientConnection, packet_id: int) -> int:
        """Store a client's QoS 1/2 message in the cluster's stream.

        The link answers with ``BrokerCore.stored`` once the stream has it (or could
        not take it); only then is the message acknowledged. Returns the lowest stream
        sequence the message can get (what a QoS 1 message is routed with while the
        stream stores it), or 0 if the link refused it at once (``stored(..., None)``
        was called already).
        """

    def connected(self, client_id: str, will: Message | None, will_delay: int) -> None:
        """A client connected here: this node claims its client id cluster-wide.

        ``will`` is the message to publish if this node dies while the client is
        connected to it (after ``will_delay`` seconds); None if it has no will.
        """

    def spill(self, client_id: str, message: StoredMessage) -> bool:
        """A stored QoS 1/2 message for ``client_id`` does not fit in its queue: True if
        the link keeps track of it and gives it back later (``BrokerCore.refill``) once
        the queue has room; False: it is dropped."""

    def disconnected(self, client_id: str) -> None:
        """The client's connection here ended; this node has dealt with its will."""

    def subscribed(
        self, client_id: str, topic_filters: Sequence[str]
    ) -> Callable[[], Awaitable[None]] | None:
        """A SUBSCRIBE of ``client_id`` added ``topic_filters`` here: what its SUBACK waits for.

        None if the other nodes' messages for these filters already come to this node;
        otherwise a step the server layer awaits before the SUBACK goes out (the link's
        new subscriptions being in place). The step is bounded in time and never raises:
        when the cluster does not answer, the SUBACK goes out anyway.
        """
