"""The subscription router: a trie of topic filters, keyed by topic level.

``Router.deliveries(topic)`` answers "who gets this PUBLISH, at which QoS, with which
subscription identifiers". It walks only the trie branches a topic can reach (the literal
level, ``+`` and ``#`` at each level), so its cost grows with the topic's depth and the
number of wildcard branches, not with the number of subscriptions.

Shared subscriptions (``$share/{group}/{filter}``) are kept per (group, filter) at the
filter's trie node; each matching PUBLISH goes to exactly one member, chosen round-robin,
preferring members that ``is_available`` says are online.

The result of a walk (the matching plain subscriptions and shared groups) is cached per
topic in a bounded LRU and dropped whenever the subscriptions change. The cache holds the
candidates, not the shared-group pick, so round-robin keeps rotating on cache hits.

Topics passed to :meth:`Router.match` / :meth:`Router.deliveries` must be valid topic names
(checked by the codec / broker once per PUBLISH, not again here).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

import attrs

from trio_mqtt.mqtt.topics import parse_shared_filter, validate_topic_filter

__all__ = ["Delivery", "Router", "Subscription", "SubscriptionOptions"]

#: Largest Subscription Identifier (a Variable Byte Integer, MQTT 5.0 section 3.8.2.1.2).
MAX_SUBSCRIPTION_IDENTIFIER = 268_435_455


def _check_subscription_identifier(
    _instance: object, _attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and not 1 <= value <= MAX_SUBSCRIPTION_IDENTIFIER:
        raise ValueError(
            f"subscription_identifier must be 1..{MAX_SUBSCRIPTION_IDENTIFIER} or None, got {value}"
        )


@attrs.frozen
class SubscriptionOptions:
    """What a client asked for when subscribing to one filter (QoS is the granted one)."""

    qos: int = attrs.field(validator=attrs.validators.in_((0, 1, 2)))
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = attrs.field(default=0, validator=attrs.validators.in_((0, 1, 2)))
    subscription_identifier: int | None = attrs.field(
        default=None, validator=_check_subscription_identifier
    )


@attrs.frozen
class Subscription:
    """One client's subscription to one topic filter.

    ``topic_filter`` is the filter exactly as the client sent it, including a
    ``$share/{group}/`` prefix; ``share_group`` is that group, or None.
    """

    client_id: str
    topic_filter: str
    options: SubscriptionOptions
    share_group: str | None

    def delivery(self) -> Delivery:
        """The delivery of a message to this subscription alone."""
        identifier = self.options.subscription_identifier
        return Delivery(
            client_id=self.client_id,
            qos=self.options.qos,
            retain_as_published=self.options.retain_as_published,
            subscription_identifiers=() if identifier is None else (identifier,),
        )


@attrs.frozen
class Delivery:
    """Everything needed to send one PUBLISH to one client.

    A client whose subscriptions overlap gets one delivery: at the highest QoS of its
    matching subscriptions, retain-as-published if any of them asks for it, and with the
    identifiers of all of them (sorted, without duplicates).
    """

    client_id: str
    qos: int
    retain_as_published: bool
    subscription_identifiers: tuple[int, ...]


@attrs.define(eq=False)
class _ShareGroup:
    """The members of one shared subscription (one group name on one filter).

    ``order`` lists client ids in join order; ``cursor`` is the index of the next member to
    try, so that members take turns.
    """

    members: dict[str, Subscription] = attrs.Factory(dict)
    order: list[str] = attrs.Factory(list)
    cursor: int = 0

    def add(self, subscription: Subscription) -> bool:
        """Add or replace a member; True if it replaced one (its turn is kept)."""
        client_id = subscription.client_id
        replaced = client_id in self.members
        if not replaced:
            self.order.append(client_id)
        self.members[client_id] = subscription
        return replaced

    def remove(self, client_id: str) -> bool:
        if self.members.pop(client_id, None) is None:
            return False
        index = self.order.index(client_id)
        del self.order[index]
        if index < self.cursor:
            self.cursor -= 1
        if self.cursor >= len(self.order):
            self.cursor = 0
        return True

    def pick(self, is_available: Callable[[str], bool] | None) -> Subscription:
        """The next member in turn, skipping unavailable ones unless all are."""
        order = self.order
        count = len(order)
        start = self.cursor % count
        chosen = start
        if is_available is not None:
            for step in range(count):
                index = (start + step) % count
                if is_available(order[index]):
                    chosen = index
                    break
        self.cursor = (chosen + 1) % count
        return self.members[order[chosen]]


@attrs.define(eq=False)
class _FilterNode:
    """One trie node: the filters that end here, and the next levels.

    ``plus`` and ``hash`` are the wildcard children, kept apart from the literal ones so a
    topic level can never be mistaken for a wildcard.
    """

    children: dict[str, _FilterNode] = attrs.Factory(dict)
    plus: _FilterNode | None = None
    hash: _FilterNode | None = None
    subscriptions: dict[str, Subscription] = attrs.Factory(dict)
    groups: dict[str, _ShareGroup] = attrs.Factory(dict)

    def is_empty(self) -> bool:
        return not (
            self.children
            or self.plus is not None
            or self.hash is not None
            or self.subscriptions
            or self.groups
        )

    def child(self, level: str) -> _FilterNode | None:
        if level == "+":
            return self.plus
        if level == "#":
            return self.hash
        return self.children.get(level)

    def child_or_new(self, level: str) -> _FilterNode:
        node = self.child(level)
        if node is None:
            node = _FilterNode()
            if level == "+":
                self.plus = node
            elif level == "#":
                self.hash = node
            else:
                self.children[level] = node
        return node

    def drop_child(self, level: str) -> None:
        if level == "+":
            self.plus = None
        elif level == "#":
            self.hash = None
        else:
            del self.children[level]


@attrs.define(eq=False)
class _MatchPlan:
    """The cached result of one trie walk for one topic.

    ``deliveries`` aggregates ``plain`` per client (``delivery_list``: its values, ready
    to hand out on the common path). ``no_local`` maps each client with a
    matching No Local subscription to all its matching plain subscriptions, so the
    publisher's own delivery can be rebuilt without them.
    """

    plain: tuple[Subscription, ...]
    groups: tuple[_ShareGroup, ...]
    deliveries: dict[str, Delivery]
    no_local: dict[str, tuple[Subscription, ...]]
    delivery_list: tuple[Delivery, ...] = ()

    def __attrs_post_init__(self) -> None:
        self.delivery_list = tuple(self.deliveries.values())


# The plan of every topic no subscription matches (never changed: callers copy before
# they edit a plan's dicts).
_NO_MATCH = _MatchPlan(plain=(), groups=(), deliveries={}, no_local={})


class _Aggregate:
    """Accumulates one client's matching subscriptions into a :class:`Delivery`."""

    __slots__ = ("identifiers", "qos", "retain_as_published")

    def __init__(self) -> None:
        self.qos = 0
        self.retain_as_published = False
        self.identifiers: set[int] = set()

    def add(self, options: SubscriptionOptions) -> None:
        self.qos = max(self.qos, options.qos)
        self.retain_as_published = self.retain_as_published or options.retain_as_published
        if options.subscription_identifier is not None:
            self.identifiers.add(options.subscription_identifier)

    def delivery(self, client_id: str) -> Delivery:
        return Delivery(
            client_id=client_id,
            qos=self.qos,
            retain_as_published=self.retain_as_published,
            subscription_identifiers=tuple(sorted(self.identifiers)),
        )


def _aggregate(subscriptions: Iterable[Subscription]) -> dict[str, Delivery]:
    per_client: dict[str, _Aggregate] = {}
    for subscription in subscriptions:
        aggregate = per_client.get(subscription.client_id)
        if aggregate is None:
            aggregate = per_client[subscription.client_id] = _Aggregate()
        aggregate.add(subscription.options)
    return {client_id: agg.delivery(client_id) for client_id, agg in per_client.items()}


def _merge(delivery: Delivery | None, subscription: Subscription) -> Delivery:
    options = subscription.options
    if delivery is None:
        identifier = options.subscription_identifier
        return Delivery(
            client_id=subscription.client_id,
            qos=options.qos,
            retain_as_published=options.retain_as_published,
            subscription_identifiers=() if identifier is None else (identifier,),
        )
    identifiers = delivery.subscription_identifiers
    if options.subscription_identifier is not None:
        identifiers = tuple(sorted({*identifiers, options.subscription_identifier}))
    return Delivery(
        client_id=delivery.client_id,
        qos=max(delivery.qos, options.qos),
        retain_as_published=delivery.retain_as_published or options.retain_as_published,
        subscription_identifiers=identifiers,
    )


# client id -> the shared filters (``$share/g/f``) its delivery was chosen for
SharedFilters: TypeAlias = dict[str, tuple[str, ...]]
NO_SHARES: SharedFilters = {}


@attrs.define(eq=False)
class Router:
    """All subscriptions of all clients, and the matching of topics against them.

    ``is_available(client_id)`` (e.g. "has an online session") steers shared subscriptions
    towards members that can receive now; when no member is available one is still chosen,
    so the message waits in that member's session. ``cache_size`` bounds the per-topic
    match cache (0 disables it).
    """

    is_available: Callable[[str], bool] | None = None
    cache_size: int = 4096
    # Called when a filter gains its first or loses its last subscriber (the cluster
    # layer holds one NATS subscription per filter; it takes the changes with
    # take_interest_changes). None: nothing is noted.
    on_interest: Callable[[], None] | None = None
    # Whether shared subscriptions are served by someone else (the cluster: one member
    # across every node gets each message): routed_deliveries then leaves them out.
    shared_elsewhere: bool = False
    _interest: dict[str, bool] = attrs.field(init=False, factory=dict)
    _root: _FilterNode = attrs.field(init=False, factory=_FilterNode)
    _by_client: dict[str, dict[str, Subscription]] = attrs.field(init=False, factory=dict)
    _count: int = attrs.field(init=False, default=0)
    _shared_count: int = attrs.field(init=False, default=0)  # of _count: $share/g/f ones
    _generation: int = attrs.field(init=False, default=0)
    _cache: OrderedDict[str, _MatchPlan] = attrs.field(init=False, factory=OrderedDict)

    @property
    def generation(self) -> int:
        """Increases on every change of the subscriptions; callers may key caches on it."""
        return self._generation

    def __len__(self) -> int:
        return self._count

    @property
    def shared_count(self) -> int:
        """How many of the subscriptions are shared ones (``$share/group/filter``)."""
        return self._shared_count

    def _changed(self) -> None:
        self._generation += 1
        self._cache.clear()

    # ---------------------------------------------------------------- subscriptions

    def subscribe(self, client_id: str, topic_filter: str, options: SubscriptionOptions) -> bool:
        """Add (or replace) ``client_id``'s subscription to ``topic_filter``.

        Returns True if the client was already subscribed to this exact filter (the
        subscription is replaced, as MQTT requires; a shared member keeps its turn).
        Raises ``RemoteProtocolError`` if the filter is invalid.
        """
        validate_topic_filter(topic_filter)
        group, plain = parse_shared_filter(topic_filter)
        subscription = Subscription(client_id, topic_filter, options, group)
        node = self._root
        for level in plain.split("/"):
            node = node.child_or_new(level)
        if group is None:
            replaced = client_id in node.subscriptions
            node.subscriptions[client_id] = subscription
            if self.on_interest is not None and len(node.subscriptions) == 1 and not replaced:
                self._note_interest(topic_filter, True)
        else:
            share = node.groups.get(group)
            if share is None:
                share = node.groups[group] = _ShareGroup()
                if self.on_interest is not None:
                    self._note_interest(topic_filter, True)
            replaced = share.add(subscription)
        self._by_client.setdefault(client_id, {})[topic_filter] = subscription
        if not replaced:
            self._count += 1
            if group is not None:
                self._shared_count += 1
        self._changed()
        return replaced

    def unsubscribe(self, client_id: str, topic_filter: str) -> bool:
        """Remove one subscription; True if it existed. Empty trie nodes are pruned."""
        own = self._by_client.get(client_id)
        if own is None or topic_filter not in own:
            return False
        group, plain = parse_shared_filter(topic_filter)
        path: list[tuple[_FilterNode, str]] = []
        node = self._root
        for level in plain.split("/"):
            child = node.child(level)
            if child is None:  # pragma: no cover - _by_client and the trie agree
                raise AssertionError(f"router trie lost the node for {topic_filter!r}")
            path.append((node, level))
            node = child
        if group is None:
            del node.subscriptions[client_id]
            if self.on_interest is not None and not node.subscriptions:
                self._note_interest(topic_filter, False)
        else:
            share = node.groups[group]
            share.remove(client_id)
            if not share.members:
                del node.groups[group]
                if self.on_interest is not None:
                    self._note_interest(topic_filter, False)
        for parent, level in reversed(path):
            child = parent.child(level)
            if child is None or not child.is_empty():
                break
            parent.drop_child(level)
        del own[topic_filter]
        if not own:
            del self._by_client[client_id]
        self._count -= 1
        if group is not None:
            self._shared_count -= 1
        self._changed()
        return True

    def unsubscribe_all(self, client_id: str) -> None:
        """Remove every subscription of ``client_id`` (session ended)."""
        for topic_filter in list(self._by_client.get(client_id, ())):
            self.unsubscribe(client_id, topic_filter)

    def _note_interest(self, topic_filter: str, present: bool) -> None:
        self._interest[topic_filter] = present
        assert self.on_interest is not None
        self.on_interest()

    def serve_cluster(self, on_interest: Callable[[], None] | None) -> None:
        """Route for a cluster node (``on_interest`` is called when a filter gains its
        first or loses its last subscriber; shared subscriptions are served across the
        nodes, not here), or again for a single node (None)."""
        self.on_interest = on_interest
        self.shared_elsewhere = on_interest is not None

    def take_interest_changes(self) -> dict[str, bool]:
        """``{filter: has subscribers now}`` for the filters whose first subscriber came
        or last one went since the last call (noted only while ``on_interest`` is set)."""
        changes = self._interest
        self._interest = {}
        return changes

    def filters(self) -> list[str]:
        """Every filter with at least one subscriber (shared ones as ``$share/g/f``)."""
        found: list[str] = []
        stack: list[tuple[_FilterNode, str]] = [(self._root, "")]
        while stack:
            node, path = stack.pop()
            if node.subscriptions:
                found.append(path)
            found.extend(f"$share/{group}/{path}" for group in node.groups)
            children = [*node.children.items()]
            if node.plus is not None:
                children.append(("+", node.plus))
            if node.hash is not None:
                children.append(("#", node.hash))
            for level, child in children:
                stack.append((child, level if node is self._root else f"{path}/{level}"))
        return found

    def subscriptions_of(self, client_id: str) -> dict[str, SubscriptionOptions]:
        """``{topic_filter: options}`` of one client (a new dict; empty if none)."""
        own = self._by_client.get(client_id, {})
        return {topic_filter: sub.options for topic_filter, sub in own.items()}

    def node_count(self) -> int:
        """Number of trie nodes below the root (walks the trie: for tests and metrics)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            for child in (*node.children.values(), node.plus, node.hash):
                if child is not None:
                    count += 1
                    stack.append(child)
        return count

    # --------------------------------------------------------------------- matching

    def _walk(self, topic: str) -> tuple[list[Subscription], list[_ShareGroup]]:
        levels = topic.split("/")
        depth = len(levels)
        plain: list[Subscription] = []
        groups: list[_ShareGroup] = []

        def collect(node: _FilterNode) -> None:
            if node.subscriptions:
                plain.extend(node.subscriptions.values())
            if node.groups:
                groups.extend(node.groups.values())

        # A filter starting with a wildcard must not match a topic starting with '$'.
        wildcards_at_root = not topic.startswith("$")
        stack: list[tuple[_FilterNode, int]] = [(self._root, 0)]
        while stack:
            node, index = stack.pop()
            if index == depth:
                collect(node)
                if node.hash is not None:  # "a/#" matches "a"
                    collect(node.hash)
                continue
            if index or wildcards_at_root:
                if node.hash is not None:
                    collect(node.hash)
                if node.plus is not None:
                    stack.append((node.plus, index + 1))
            child = node.children.get(levels[index])
            if child is not None:
                stack.append((child, index + 1))
        return plain, groups

    def _plan(self, topic: str) -> _MatchPlan:
        cache = self._cache
        plan = cache.get(topic)
        if plan is not None:
            cache.move_to_end(topic)
            return plan
        plain, groups = self._walk(topic)
        if not plain and not groups:
            plan = _NO_MATCH  # common for new topics (retained values, telemetry): share one
        else:
            no_local_clients = {sub.client_id for sub in plain if sub.options.no_local}
            no_local: dict[str, tuple[Subscription, ...]] = {}
            for client_id in no_local_clients:
                no_local[client_id] = tuple(sub for sub in plain if sub.client_id == client_id)
            plan = _MatchPlan(
                plain=tuple(plain),
                groups=tuple(groups),
                deliveries=_aggregate(plain),
                no_local=no_local,
            )
        if self.cache_size > 0:
            cache[topic] = plan
            if len(cache) > self.cache_size:
                cache.popitem(last=False)
        return plan

    def match(self, topic: str) -> list[Subscription]:
        """Every matching non-shared subscription, plus one chosen member per shared group.

        Each call advances the round-robin of the matching shared groups.
        """
        plan = self._plan(topic)
        result = list(plan.plain)
        for group in plan.groups:
            result.append(group.pick(self.is_available))
        return result

    def deliveries(self, topic: str, publisher_client_id: str | None = None) -> list[Delivery]:
        """One :class:`Delivery` per client that should receive a PUBLISH to ``topic``.

        Subscriptions with No Local are skipped for the publishing client itself. Each
        call advances the round-robin of the matching shared groups.
        """
        return list(self.routed_deliveries(topic, publisher_client_id)[0])

    def routed_deliveries(
        self, topic: str, publisher_client_id: str | None = None
    ) -> tuple[Sequence[Delivery], SharedFilters]:
        """Like :meth:`Router.deliveries`, plus the shared filters of each delivery.

        Advances the round-robin of the matching share groups exactly as ``deliveries``.
        The common case (no share group, no No Local) builds no per-delivery objects:
        it is on the path of every PUBLISH.
        """
        cache = self._cache
        plan = cache.get(topic)  # (_plan's cache hit, inline: once per PUBLISH)
        if plan is None:
            plan = self._plan(topic)
        else:
            cache.move_to_end(topic)
        skip_own = publisher_client_id is not None and publisher_client_id in plan.no_local
        groups = plan.groups
        if groups and self.shared_elsewhere:
            groups = ()  # the cluster picks the member (share_delivery)
        if not groups and not skip_own:
            return plan.delivery_list, NO_SHARES
        result = dict(plan.deliveries)
        if skip_own:
            assert publisher_client_id is not None
            del result[publisher_client_id]
            kept = [s for s in plan.no_local[publisher_client_id] if not s.options.no_local]
            result.update(_aggregate(kept))
        shared: dict[str, list[str]] = {}
        for group in groups:
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
