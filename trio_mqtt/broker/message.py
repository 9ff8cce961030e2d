"""The application message as the broker routes and stores it."""

from __future__ import annotations

import attrs

from trio_mqtt.mqtt.packets import NO_PROPERTIES, Properties
from trio_mqtt.peer import LOCAL_PEER, PeerInfo


@attrs.frozen
class Message:
    """One application message, independent of who receives it and at which QoS.

    ``properties`` are the MQTT 5 properties that travel with the message (topic alias and
    subscription identifiers are per hop, so they are never stored here). ``publisher`` and
    ``peer`` say who published it: an operator can answer "who set this retained value".
    ``created`` is the broker clock (seconds) when the message arrived, for expiry.
    """

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES
    publisher: str | None = None
    peer: PeerInfo = LOCAL_PEER
    created: float = 0.0

    def expired(self, now: float) -> bool:
        interval = self.properties.message_expiry_interval
        return interval is not None and now - self.created >= interval

    def remaining_expiry(self, now: float) -> int | None:
        """The Message Expiry Interval to forward: reduced by the time spent waiting."""
        interval = self.properties.message_expiry_interval
        if interval is None:
            return None
        return max(0, interval - int(now - self.created))
