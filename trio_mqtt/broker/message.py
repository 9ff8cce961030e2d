"""The application message as the broker routes and stores it."""

from __future__ import annotations

import contextlib

import attrs

from trio_mqtt.errors import LocalProtocolError
from trio_mqtt.hot_value import hot_value
from trio_mqtt.mqtt.packets import NO_PROPERTIES, Properties, Will
from trio_mqtt.mqtt.properties import PropertyContext, encode_properties
from trio_mqtt.peer import LOCAL_PEER, PeerInfo


@hot_value
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

    @property
    def sequence(self) -> int:
        """Its place in a cluster's stream of QoS 1/2 messages; 0: not stored there.

        A property, not a field: one more field costs every PUBLISH's ``Message``
        (about 2 % of a single node's work per message); a ``StoredMessage`` has it.
        """
        return 0

    def expired(self, now: float) -> bool:
        interval = self.properties.message_expiry_interval
        return interval is not None and now - self.created >= interval

    def remaining_expiry(self, now: float) -> int | None:
        """The Message Expiry Interval to forward: reduced by the time spent waiting."""
        interval = self.properties.message_expiry_interval
        if interval is None:
            return None
        return max(0, interval - int(now - self.created))


@hot_value
class StoredMessage(Message):
    """A message a cluster stored in its stream of QoS 1/2 messages, at ``sequence``."""

    sequence: int = 0

    @classmethod
    def of(cls, message: Message, sequence: int) -> StoredMessage:
        """``message`` as stored at ``sequence``."""
        return cls(
            message.topic,
            message.payload,
            message.qos,
            message.retain,
            message.properties,
            message.publisher,
            message.peer,
            message.created,
            sequence,
        )


def publish_size(message: Message) -> int:
    """About the bytes of ``message`` as one PUBLISH (what queue budgets count).

    Payload, topic and the MQTT 5 properties, plus 7 for the fixed header, the topic's
    length prefix and a packet identifier. Topic Alias and the per-subscriber
    subscription identifiers are left out: a few bytes either way.
    """
    size = len(message.payload) + len(message.topic) + 7
    properties = message.properties
    if properties is not NO_PROPERTIES:
        # properties not sendable as they are count nothing: encoding will refuse them
        with contextlib.suppress(LocalProtocolError):
            size += len(encode_properties(properties, PropertyContext.PUBLISH, "PUBLISH"))
    return size


def will_message(will: Will, client_id: str, peer: PeerInfo, now: float) -> Message:
    """The message a will becomes when it is published (its delay is not forwarded)."""
    props = will.properties
    if props.will_delay_interval is not None:
        props = attrs.evolve(props, will_delay_interval=None)
    return Message(
        topic=will.topic,
        payload=will.payload,
        qos=will.qos,
        retain=will.retain,
        properties=props,
        publisher=client_id,
        peer=peer,
        created=now,
    )
