"""``$SYS/broker/...``: broker statistics published as retained messages.

The names and meanings are mosquitto's (mosquitto(8), "BROKER STATUS"), so that the
dashboards written for it read this broker too. The trio layer makes one ``SysTopics``
at start-up and calls its ``publish`` every ``config.sys_interval`` seconds. Topics
start with ``$``, so wildcard subscriptions such as ``#`` never match them
[MQTT-4.7.2-1]; a client subscribes to ``$SYS/#`` explicitly. The messages are not
marked for persistence: they describe this run of the broker only.

The load averages (``$SYS/broker/load/.../1min``, ``5min``, ``15min``) are computed
like mosquitto's: at each update, the rate of a counter since the last update (per
minute) is blended into each average with the weight ``exp(-elapsed / window)`` for the
old value, as the Unix load averages are. ``LoadAverage`` does this with explicit
times, for tests.

``heap/maximum`` is the process's peak resident set size (``getrusage``), where the
platform has it; mosquitto's ``heap/current`` is not published (Python has no cheap
measure of the memory in use: ``tracemalloc`` slows every allocation).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from trio_mqtt._version import __version__
from trio_mqtt.broker.message import Message

if TYPE_CHECKING:
    from trio_mqtt.broker.core import BrokerCore
    from trio_mqtt.broker.stats import BrokerStats

__all__ = [
    "LOAD_WINDOWS",
    "SYS_PREFIX",
    "LoadAverage",
    "SysTopics",
    "peak_memory",
    "publish_sys_topics",
    "sys_values",
]

SYS_PREFIX = "$SYS/broker/"

#: The averaging windows of the load topics: (topic suffix, seconds).
LOAD_WINDOWS = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))


@attrs.define
class LoadAverage:
    """One counter's rate per minute, exponentially averaged over 1, 5 and 15 minutes.

    ``update(now, count)`` takes the counter's running total at time ``now`` (seconds);
    the averages start at 0 at ``last_time`` with the counter at ``last_count``.
    """

    last_time: float
    last_count: int = 0
    averages: list[float] = attrs.Factory(lambda: [0.0] * len(LOAD_WINDOWS))

    def update(self, now: float, count: int) -> list[float]:
        """Blend in the rate since the last update; the averages (1, 5, 15 min)."""
        elapsed = now - self.last_time
        if elapsed > 0:
            rate = (count - self.last_count) * 60.0 / elapsed  # per minute
            for index, (_suffix, window) in enumerate(LOAD_WINDOWS):
                weight = math.exp(-elapsed / window)
                self.averages[index] = rate + weight * (self.averages[index] - rate)
            self.last_time = now
            self.last_count = count
        return self.averages


#: Load topic (under ``$SYS/broker/load/``) -> the counter it averages.
_LOADS: dict[str, Callable[[BrokerStats], int]] = {
    "messages/received": lambda stats: stats.packets_received,
    "messages/sent": lambda stats: stats.packets_sent,
    "publish/received": lambda stats: stats.messages_received,
    "publish/sent": lambda stats: stats.messages_sent,
    "publish/dropped": lambda stats: stats.messages_dropped,
    "bytes/received": lambda stats: stats.bytes_received,
    "bytes/sent": lambda stats: stats.bytes_sent,
    "connections": lambda stats: stats.connects + stats.connects_refused,
    "sockets": lambda stats: stats.connections_opened,
}


def peak_memory() -> int | None:
    """The peak resident set size of this process in bytes, or None where unknown."""
    try:
        import resource  # Unix only
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, else KiB


@attrs.define
class SysTopics:
    """The ``$SYS`` statistics of one broker, with what they remember between updates
    (the load averages, the most clients seen connected at once)."""

    started: float  # core clock: when the counters were all 0
    memory: Callable[[], int | None] = peak_memory
    loads: dict[str, LoadAverage] = attrs.field(init=False)
    clients_maximum: int = attrs.field(init=False, default=0)

    @loads.default
    def _loads(self) -> dict[str, LoadAverage]:
        return {name: LoadAverage(self.started) for name in _LOADS}

    def values(self, core: BrokerCore) -> dict[str, str]:
        """Topic -> payload text of every statistic, as of now (updating the averages)."""
        stats = core.stats
        now = core.now()
        sessions = core.sessions
        connected = sum(1 for _ in core.connected_clients())
        self.clients_maximum = max(self.clients_maximum, connected)
        queued = queued_bytes = 0
        for session in sessions.values():
            queued += session.queued_messages()
            queued_bytes += session.pending_bytes + session.inflight_bytes
        # the broker's own $SYS messages are not counted as retained messages
        retained = [message for topic, message in core.retained if not topic.startswith("$SYS/")]
        retained_bytes = sum(len(message.payload) for message in retained)
        p = SYS_PREFIX
        values = {
            f"{p}version": f"trio-mqtt {__version__}",
            f"{p}uptime": f"{int(core.uptime())} seconds",
            f"{p}clients/connected": str(connected),
            f"{p}clients/active": str(connected),  # mosquitto's deprecated name
            # persistent sessions whose client is not connected
            f"{p}clients/disconnected": str(len(sessions) - connected),
            f"{p}clients/inactive": str(len(sessions) - connected),  # deprecated name
            f"{p}clients/total": str(len(sessions)),
            f"{p}clients/maximum": str(self.clients_maximum),
            f"{p}clients/expired": str(stats.sessions_expired),
            # packets of every type, as mosquitto counts them
            f"{p}messages/received": str(stats.packets_received),
            f"{p}messages/sent": str(stats.packets_sent),
            f"{p}messages/inflight": str(
                sum(len(session.inflight_out) for session in sessions.values())
            ),
            f"{p}publish/messages/received": str(stats.messages_received),
            f"{p}publish/messages/sent": str(stats.messages_sent),
            f"{p}publish/messages/dropped": str(stats.messages_dropped),
            f"{p}publish/bytes/received": str(stats.publish_bytes_received),
            f"{p}publish/bytes/sent": str(stats.publish_bytes_sent),
            f"{p}bytes/received": str(stats.bytes_received),
            f"{p}bytes/sent": str(stats.bytes_sent),
            f"{p}retained messages/count": str(len(retained)),
            # retained messages and those queued for sessions (one per session queued for)
            f"{p}store/messages/count": str(len(retained) + queued),
            f"{p}store/messages/bytes": str(retained_bytes + queued_bytes),
            f"{p}subscriptions/count": str(len(core.router)),
            f"{p}shared_subscriptions/count": str(core.router.shared_count),
        }
        memory = self.memory()
        if memory is not None:
            values[f"{p}heap/maximum"] = str(memory)
        for name, counter in _LOADS.items():
            averages = self.loads[name].update(now, counter(stats))
            for (suffix, _window), average in zip(LOAD_WINDOWS, averages, strict=True):
                values[f"{p}load/{name}/{suffix}"] = f"{average:.2f}"
        return values

    def publish(self, core: BrokerCore) -> None:
        """Publish every statistic as a retained QoS 0 message (routed like any other)."""
        now = core.now()
        for topic, value in self.values(core).items():
            core.publish(Message(topic, value.encode(), qos=0, retain=True, created=now))


def _for(core: BrokerCore) -> SysTopics:
    return SysTopics(core.now() - core.uptime())


def sys_values(core: BrokerCore) -> dict[str, str]:
    """Every statistic as of now, with load averages over the whole uptime (one-off)."""
    return _for(core).values(core)


def publish_sys_topics(core: BrokerCore) -> None:
    """Publish every statistic once (``SysTopics.publish`` of a fresh ``SysTopics``)."""
    _for(core).publish(core)
