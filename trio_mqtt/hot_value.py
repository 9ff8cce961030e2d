"""``hot_value``: an immutable value class that is cheap to build, for the per-message path.

An ``attrs.frozen`` instance is built through ``object.__setattr__``, one call per
field: about 1.1 us for an eight-field class against 0.34 us for ``attrs.define``
(Python 3.11). Every PUBLISH builds two such values, its ``Publish`` and its
``Message``: with both frozen they were a fifth of the broker's instructions per
message (callgrind, one publisher to one subscriber: 59.8k against 47.3k).

So a ``hot_value`` class is ``attrs.frozen`` to the type checker, which refuses any
assignment to its fields under ``mypy --strict`` (the project's ``typecheck`` session,
run by CI), and ``attrs.define(unsafe_hash=True)`` at run time: equal and hashable by
value as a frozen class is, built by plain slot stores. The values built once per
message use it (MQTT 5 ``Properties`` too: 27 fields, 26.7k instructions frozen, 6.8k
as a hot value), and those built once per connection: the ``Connect`` and ``Connack``,
the core's ``ConnectPlan`` and ``Accepted``, the listener's ``SocketEnds`` and
``Preamble``, the parsed PROXY header's values. Everything else is ``attrs.frozen``.
``PeerInfo``, with its ``Endpoint`` values and ``TLSInfo``, stays frozen at run time: it
is the one record of who a client is, which every hook, log line and stored message
reads, and user code may count on it not changing (so a connection builds one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["hot_value"]

if TYPE_CHECKING:
    from attrs import frozen as hot_value
else:
    import functools

    import attrs

    hot_value = functools.partial(attrs.define, unsafe_hash=True)
