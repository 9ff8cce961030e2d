"""``$SYS/broker/...``: broker statistics published as retained messages.

The trio layer calls :func:`publish_sys_topics` every ``config.sys_interval`` seconds.
Topics start with ``$``, so wildcard subscriptions such as ``#`` never match them
[MQTT-4.7.2-1]; a client subscribes to ``$SYS/#`` explicitly. The messages are not
marked for persistence: they describe this run of the broker only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trio_mqtt._version import __version__
from trio_mqtt.broker.message import Message

if TYPE_CHECKING:
    from trio_mqtt.broker.core import BrokerCore

__all__ = ["SYS_PREFIX", "publish_sys_topics", "sys_values"]

SYS_PREFIX = "$SYS/broker/"


def sys_values(core: BrokerCore) -> dict[str, str]:
    """Topic -> payload text of every ``$SYS`` statistic, as of now."""
    stats = core.stats
    connected = sum(1 for _ in core.connected_clients())
    return {
        f"{SYS_PREFIX}version": f"trio-mqtt {__version__}",
        f"{SYS_PREFIX}uptime": f"{int(core.uptime())} seconds",
        f"{SYS_PREFIX}clients/connected": str(connected),
        # sessions, connected or not (the names follow mosquitto's, for existing dashboards)
        f"{SYS_PREFIX}clients/total": str(len(core.sessions)),
        f"{SYS_PREFIX}messages/received": str(stats.messages_received),
        f"{SYS_PREFIX}messages/sent": str(stats.messages_sent),
        f"{SYS_PREFIX}publish/messages/dropped": str(stats.messages_dropped),
        f"{SYS_PREFIX}retained messages/count": str(len(core.retained)),
    }


def publish_sys_topics(core: BrokerCore) -> None:
    """Publish every statistic as a retained QoS 0 message (routed like any other)."""
    now = core.now()
    for topic, value in sys_values(core).items():
        core.publish(Message(topic, value.encode(), qos=0, retain=True, created=now))
        core.dirty_retained.discard(topic)  # never persisted
