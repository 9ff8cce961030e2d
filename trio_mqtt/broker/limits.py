"""Limits on what one client address or one client may do, with times as arguments.

Sans-IO: no clock of its own. The server layer (trio_mqtt/server/listener.py and
trio_mqtt/server/connection.py) passes ``now`` (trio's clock) and applies the answers.

- ``TokenBucket``: ``rate`` tokens a second up to ``burst``. ``take`` is all or nothing
  (a connection attempt); ``charge`` may go into debt (a read whose messages are already
  in), and ``delay`` says how long until the debt is repaid.
- ``AddressLimiter``: per client address (IPv6 aggregated by prefix), the connections
  open now (``max_connections``) and a bucket of connection attempts. Memory is bounded:
  an address is forgotten once it has no connection open and its bucket is full again,
  i.e. at most ``burst / rate`` seconds after its last attempt.
- ``PublishBudget``: a client's messages and bytes a second.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

import attrs

from trio_mqtt.networks import normalize_ip

__all__ = [
    "REASON_CONNECTIONS",
    "REASON_DENIED",
    "REASON_RATE",
    "AddressLimiter",
    "PublishBudget",
    "TokenBucket",
    "address_key",
]

#: The reasons an address is refused: ``ListenerHandle.rejections`` keys, and the last
#: word of the ``refused client ...`` log line (docs/operations.md, fail2ban).
REASON_DENIED = "denied-source"
REASON_RATE = "connect-rate"
REASON_CONNECTIONS = "connections-per-address"


@attrs.define
class TokenBucket:
    """``rate`` tokens a second, at most ``burst``; starts full at ``now``."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if there are that many; False (and none taken) if not."""
        self.refill(now)
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True

    def charge(self, now: float, amount: float) -> None:
        """Take ``amount`` tokens, into debt if need be (``delay`` says for how long)."""
        self.refill(now)
        self.tokens -= amount

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until the bucket is out of debt (0: it is not in debt)."""
        self.refill(now)
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate

    def is_full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.burst


def address_key(host: str, ipv6_prefix_length: int = 128) -> str:
    """What ``host`` counts as: the address, or its IPv6 network of that prefix length.

    An IPv4-mapped IPv6 address counts as the IPv4 address; a host that is no IP address
    (a UNIX socket path) counts as itself.
    """
    address = normalize_ip(host)
    if address is None:
        return host
    if isinstance(address, ipaddress.IPv6Address) and ipv6_prefix_length < 128:
        return str(ipaddress.IPv6Network((address, ipv6_prefix_length), strict=False))
    return str(address)


@attrs.define
class _Entry:
    connections: int
    bucket: TokenBucket | None


@attrs.define
class AddressLimiter:
    """Connections per client address: how many at once, and how many new a second.

    ``max_connections`` 0 and ``rate`` 0 each turn that limit off. ``admit`` either
    counts a connection in (the caller must ``release`` the returned key when it ends)
    or says why not.
    """

    max_connections: int = 0
    rate: float = 0.0
    burst: int = 10
    ipv6_prefix_length: int = 128
    _entries: OrderedDict[str, _Entry] = attrs.Factory(OrderedDict)

    def __len__(self) -> int:
        """Addresses remembered now (the memory this limiter holds)."""
        return len(self._entries)

    def admit(self, host: str, now: float) -> tuple[str, str | None]:
        """``(key, None)``: counted in; ``(key, reason)``: refused (REASON_RATE/_CONNECTIONS).

        Every attempt, refused or not, takes a token: a client that keeps retrying past
        ``max_connections`` also runs out of attempts.
        """
        self._forget_idle(now)
        key = address_key(host, self.ipv6_prefix_length)
        entry = self._entries.get(key)
        if entry is None:
            bucket = TokenBucket.full(self.rate, self.burst, now) if self.rate > 0 else None
            entry = self._entries[key] = _Entry(0, bucket)
        else:
            self._entries.move_to_end(key)  # most recently used last: idle ones come first
        if entry.bucket is not None and not entry.bucket.take(now):
            return key, REASON_RATE
        if self.max_connections and entry.connections >= self.max_connections:
            return key, REASON_CONNECTIONS
        entry.connections += 1
        return key, None

    def release(self, key: str, now: float, *, refund: bool = False) -> None:
        """A connection that ``admit`` counted in has ended.

        ``refund``: it turned out not to be a client (a load balancer's health check that
        sent a PROXY header and closed): its attempt is given back too.
        """
        entry = self._entries.get(key)
        if entry is None or entry.connections == 0:
            return
        entry.connections -= 1
        if refund and entry.bucket is not None:
            entry.bucket.refill(now)
            entry.bucket.tokens = min(entry.bucket.burst, entry.bucket.tokens + 1)
        if entry.connections == 0 and entry.bucket is None:
            del self._entries[key]  # nothing more to remember

    def reconfigure(self, *, max_connections: int, rate: float, burst: int, now: float) -> None:
        """New limits (a config reload); the connections open now stay counted.

        Every remembered address gets a bucket of the new ``rate`` and ``burst`` (its
        tokens capped at the new burst), or loses it when ``rate`` is 0. The keys stay:
        ``ipv6_prefix_length`` cannot change here.
        """
        self.max_connections, self.rate, self.burst = max_connections, rate, burst
        for key, entry in list(self._entries.items()):
            if rate <= 0:
                entry.bucket = None
                if not entry.connections:
                    del self._entries[key]
            elif entry.bucket is None:
                entry.bucket = TokenBucket.full(rate, burst, now)
            else:
                entry.bucket.refill(now)
                entry.bucket.rate, entry.bucket.burst = rate, burst
                entry.bucket.tokens = min(entry.bucket.tokens, burst)

    def connections(self, host: str) -> int:
        entry = self._entries.get(address_key(host, self.ipv6_prefix_length))
        return 0 if entry is None else entry.connections

    def _forget_idle(self, now: float) -> None:
        """Drop the least recently used entries that have nothing left to remember."""
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.connections or (entry.bucket is not None and not entry.bucket.is_full(now)):
                return
            del entries[key]


@attrs.define
class PublishBudget:
    """One client's PUBLISH messages and bytes a second (0: that limit is off).

    Each bucket holds one second's worth. The reader charges what it has just read and
    then reads no more for ``delay(now)`` seconds: the client's bytes wait in its TCP
    window (back-pressure), nothing is dropped.
    """

    messages: TokenBucket | None
    bytes: TokenBucket | None

    @classmethod
    def create(
        cls, messages_per_second: float, bytes_per_second: float, now: float
    ) -> PublishBudget:
        def bucket(rate: float) -> TokenBucket | None:
            return TokenBucket.full(rate, max(rate, 1.0), now) if rate > 0 else None

        return cls(bucket(messages_per_second), bucket(bytes_per_second))

    @property
    def enabled(self) -> bool:
        return self.messages is not None or self.bytes is not None

    def charge(self, now: float, messages: int, size: int) -> None:
        if self.messages is not None and messages:
            self.messages.charge(now, messages)
        if self.bytes is not None and size:
            self.bytes.charge(now, size)

    def delay(self, now: float) -> float:
        """Seconds to wait before reading more (0: read on)."""
        delays = [b.delay(now) for b in (self.messages, self.bytes) if b is not None]
        return max(delays, default=0.0)
