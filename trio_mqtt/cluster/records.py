"""A retained message as one value of the cluster's retained bucket (pure, no I/O).

The value carries the same fields as a message between nodes
(``trio_mqtt.cluster.envelope``), so a retained message keeps its publisher, its
properties and the publisher's real address (``PeerInfo``) on every node: the envelope's
headers, one ``name:value`` per line, an empty line, then the payload untouched.
Header values are printable ASCII without spaces, so the lines need no quoting.
"""

from __future__ import annotations

from trio_mqtt.broker.message import Message
from trio_mqtt.cluster.envelope import EnvelopeError, message_from_nats, message_headers

__all__ = ["decode_retained", "encode_retained"]

_SEPARATOR = b"\n\n"


def encode_retained(message: Message, origin: str, now: float) -> bytes:
    """The bucket value for ``message`` (its expiry counted down to ``now``)."""
    headers = message_headers(message, origin=origin, sequence=0, now=now)
    head = "\n".join(f"{name}:{value}" for name, value in headers.items())
    return head.encode("ascii") + _SEPARATOR + message.payload


def decode_retained(topic: str, value: bytes, now: float) -> Message:
    """The retained message of ``topic`` from its bucket value; ``EnvelopeError`` if bad."""
    head, separator, payload = value.partition(_SEPARATOR)
    if not separator:
        raise EnvelopeError("retained value has no header block")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise EnvelopeError("retained value's header block is not ASCII") from None
    pairs: list[tuple[str, str]] = []
    for line in lines:
        name, colon, text = line.partition(":")
        if not colon:
            raise EnvelopeError(f"retained value's header line {line[:100]!r} has no ':'")
        pairs.append((name, text))
    message, _origin = message_from_nats(topic, payload, pairs, now=now)
    return message
