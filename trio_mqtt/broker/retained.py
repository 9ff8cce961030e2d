"""The retained-message store: one value per topic name, in a trie keyed by topic level.

A new subscription asks "which retained messages match this filter"; the trie answers by
walking only the branches the filter can reach (one child for a literal level, every child
for ``+``, the whole subtree for ``#``) instead of testing every stored topic.

The store is generic over the value so it holds whatever the broker keeps (a ``Message``);
expiry is the caller's policy, applied with :meth:`RetainedStore.remove_if`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import attrs

__all__ = ["RetainedStore"]

V = TypeVar("V")


@attrs.define(eq=False)
class _TopicNode(Generic[V]):
    """One level of the trie; ``entry`` is ``(topic, value)`` if a topic ends here."""

    children: dict[str, _TopicNode[V]] = attrs.Factory(dict)
    entry: tuple[str, V] | None = None


def _descendant_entries(node: _TopicNode[V], *, skip_dollar: bool) -> Iterator[tuple[str, V]]:
    """Entries strictly below ``node``; ``skip_dollar`` leaves out children named ``$...``.

    Children are copied onto the stack before anything is yielded, so no dict iterator is
    held across a ``yield``.
    """
    stack = [
        child
        for level, child in node.children.items()
        if not (skip_dollar and level.startswith("$"))
    ]
    while stack:
        current = stack.pop()
        if current.entry is not None:
            yield current.entry
        if current.children:
            stack.extend(current.children.values())


@attrs.define(eq=False)
class RetainedStore(Generic[V]):
    """Retained values by topic name, with wildcard lookup by topic filter.

    Iteration order is unspecified. Do not change the store while consuming a ``match`` or
    ``iter`` generator; take a ``list()`` first if the loop may set or delete topics.
    """

    _root: _TopicNode[V] = attrs.field(init=False, factory=_TopicNode)
    _count: int = attrs.field(init=False, default=0)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[str, V]]:
        """Every ``(topic, value)``, including ``$`` topics."""
        return _descendant_entries(self._root, skip_dollar=False)

    def _find(self, topic: str) -> _TopicNode[V] | None:
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        return node

    def set(self, topic: str, value: V) -> None:
        """Store ``value`` as the retained value of ``topic`` (a valid topic name)."""
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _TopicNode()
            node = child
        if node.entry is None:
            self._count += 1
        node.entry = (topic, value)

    def get(self, topic: str) -> V | None:
        node = self._find(topic)
        if node is None or node.entry is None:
            return None
        return node.entry[1]

    def delete(self, topic: str) -> bool:
        """Forget the value of ``topic``; True if there was one. Empty nodes are pruned."""
        path: list[tuple[_TopicNode[V], str]] = []
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.entry is None:
            return False
        node.entry = None
        self._count -= 1
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.entry is not None or child.children:
                break
            del parent.children[level]
        return True

    def clear(self) -> None:
        self._root = _TopicNode()
        self._count = 0

    def remove_if(self, predicate: Callable[[V], bool]) -> int:
        """Delete every value for which ``predicate(value)`` is true (expiry sweeps).

        Returns how many were deleted.
        """
        doomed = [topic for topic, value in self if predicate(value)]
        for topic in doomed:
            self.delete(topic)
        return len(doomed)

    def match(self, topic_filter: str) -> Iterator[tuple[str, V]]:
        """``(topic, value)`` for every stored topic that ``topic_filter`` matches.

        ``topic_filter`` must be a valid plain filter (no ``$share/`` prefix: shared
        subscriptions get no retained messages). ``a/#`` includes ``a``; a filter starting
        with ``+`` or ``#`` skips topics starting with ``$``.
        """
        levels = topic_filter.split("/")
        depth = len(levels)
        stack: list[tuple[_TopicNode[V], int]] = [(self._root, 0)]
        while stack:
            node, index = stack.pop()
            if index == depth:
                if node.entry is not None:
                    yield node.entry
                continue
            level = levels[index]
            if level == "#":
                if node.entry is not None:  # "a/#" includes "a"
                    yield node.entry
                yield from _descendant_entries(node, skip_dollar=index == 0)
            elif level == "+":
                skip_dollar = index == 0
                stack.extend(
                    (child, index + 1)
                    for name, child in node.children.items()
                    if not (skip_dollar and name.startswith("$"))
                )
            else:
                child = node.children.get(level)
                if child is not None:
                    stack.append((child, index + 1))

    def node_count(self) -> int:
        """Number of trie nodes below the root (walks the trie: for tests and metrics)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += len(node.children)
            stack.extend(node.children.values())
        return count
