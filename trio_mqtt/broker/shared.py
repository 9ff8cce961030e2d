"""Shared subscriptions: which deliveries came through a share group, and handing them on.

MQTT 5.0 section 4.8.2: a QoS 1 message sent to one member of a shared subscription
whose session then ends without acknowledging it SHOULD go to another member (a QoS 2
one MUST NOT, [MQTT-4.8.2-5]; the core decides which). To do that the
broker must know, per delivery, the share groups it was chosen for; the plain
``Router.deliveries`` merges those into the client's delivery and forgets them.
``SharingRouter`` is a ``Router`` that also reports them, and that picks a replacement
member of a group when one leaves.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs

from trio_mqtt.broker.router import Delivery, Router, Subscription, _aggregate, _merge
from trio_mqtt.mqtt.topics import parse_shared_filter

__all__ = ["NO_SHARES", "SharedFilters", "SharingRouter"]

# client id -> the shared filters (``$share/g/f``) its delivery was chosen for
SharedFilters: TypeAlias = dict[str, tuple[str, ...]]
NO_SHARES: SharedFilters = {}


@attrs.define(eq=False)
class SharingRouter(Router):
    """A ``Router`` that tells which deliveries came from shared subscriptions."""

    def routed_deliveries(
        self, topic: str, publisher_client_id: str | None = None
    ) -> tuple[list[Delivery], SharedFilters]:
        """Like :meth:`Router.deliveries`, plus the shared filters of each delivery.

        Advances the round-robin of the matching share groups exactly as ``deliveries``.
        The common case (no share group, no No Local) builds no per-delivery objects:
        it is on the path of every PUBLISH.
        """
        plan = self._plan(topic)
        skip_own = publisher_client_id is not None and publisher_client_id in plan.no_local
        if not plan.groups and not skip_own:
            return list(plan.deliveries.values()), NO_SHARES
        result = dict(plan.deliveries)
        if skip_own:
            assert publisher_client_id is not None
            del result[publisher_client_id]
            kept = [s for s in plan.no_local[publisher_client_id] if not s.options.no_local]
            result.update(_aggregate(kept))
        shared: dict[str, list[str]] = {}
        for group in plan.groups:
            chosen = group.pick(self.is_available)
            if chosen.options.no_local and chosen.client_id == publisher_client_id:
                continue
            result[chosen.client_id] = _merge(result.get(chosen.client_id), chosen)
            shared.setdefault(chosen.client_id, []).append(chosen.topic_filter)
        return list(result.values()), {
            client_id: tuple(filters) for client_id, filters in shared.items()
        }

    def pick_shared_member(self, shared_filter: str) -> Subscription | None:
        """The next member in turn of the share group ``$share/g/f``; None if it is empty."""
        group_name, plain = parse_shared_filter(shared_filter)
        if group_name is None:
            return None
        node = self._root
        for level in plain.split("/"):
            child = node.child(level)
            if child is None:
                return None
            node = child
        group = node.groups.get(group_name)
        if group is None or not group.members:
            return None
        return group.pick(self.is_available)
