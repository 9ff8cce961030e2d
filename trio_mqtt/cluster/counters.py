"""ClusterCounters: what a broker's cluster nodes did, added up for ``/metrics``.

A broker is one cluster node at a time: when NATS is lost, its node ends and the broker
joins again with a new one (``server/app.py``). Each node counts its own messages in
plain integers on the hot path; when it ends, they are added here, so that the broker's
counters cover every node it has had.
"""

from __future__ import annotations

import attrs

__all__ = ["ClusterCounters", "ClusterFigures"]


@attrs.define
class ClusterCounters:
    """Totals over a broker's cluster nodes (the current node's own counts come on top).

    ``forwarded``: messages published here and handed to NATS; ``received``: messages
    from other nodes routed here; ``not_forwarded``: messages published here that NATS
    did not take (cut off, too large, subject too long: local subscribers only);
    ``caught_up``: messages read back from the stream after a NATS loss; ``refilled``:
    messages kept in the stream for slow clients and read back for them; ``joins`` and
    ``losses``: of NATS.
    """

    joins: int = 0
    losses: int = 0
    forwarded: int = 0
    received: int = 0
    not_forwarded: int = 0
    caught_up: int = 0
    refilled: int = 0

    def add_node(
        self,
        *,
        forwarded: int,
        received: int,
        not_forwarded: int,
        caught_up: int,
        refilled: int,
    ) -> None:
        """Add an ended node's counts."""
        self.forwarded += forwarded
        self.received += received
        self.not_forwarded += not_forwarded
        self.caught_up += caught_up
        self.refilled += refilled


@attrs.frozen
class ClusterFigures:
    """A broker's cluster counters at one moment (``Broker.cluster_figures``): the ended
    nodes' totals plus the current node's counts; ``connected``: a node is on NATS."""

    connected: bool
    joins: int
    losses: int
    forwarded: int
    received: int
    not_forwarded: int
    caught_up: int
    refilled: int = 0
    # messages kept in the stream for slow clients now (the current node's)
    kept: int = 0
