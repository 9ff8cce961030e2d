"""A retained message, a will or a client id's owner as one value of a cluster bucket
(pure, no I/O).

The value carries the same fields as a message between nodes
(``trio_mqtt.cluster.envelope``), so a retained message keeps its publisher, its
properties and the publisher's real address (``PeerInfo``) on every node: the envelope's
headers, one ``name:value`` per line, an empty line, then the payload untouched.
Header values are printable ASCII without spaces, so the lines need no quoting.
"""

from __future__ import annotations

import json

import attrs

from trio_mqtt.broker.message import Message
from trio_mqtt.cluster.envelope import EnvelopeError, message_from_nats, message_headers
from trio_mqtt.cluster.subjects import subject_to_topic, topic_to_subject

__all__ = [
    "Owner",
    "decode_owner",
    "decode_retained",
    "decode_will",
    "encode_owner",
    "encode_retained",
    "encode_will",
]

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


def encode_will(message: Message, delay: int, origin: str, now: float) -> bytes:
    """The wills bucket value: ``<delay> <topic's subject>``, a newline, then the message
    as :func:`encode_retained` writes it (the key names the client, not the topic)."""
    head = f"{delay} {topic_to_subject(message.topic)}\n".encode()
    return head + encode_retained(message, origin, now)


def decode_will(value: bytes, now: float) -> tuple[Message, int]:
    """``(will message, will delay)`` from :func:`encode_will`; ``ValueError`` if bad
    (``EnvelopeError`` is one)."""
    head, _newline, record = value.partition(b"\n")
    delay_text, _space, subject = head.decode("ascii").partition(" ")
    delay = int(delay_text)
    if delay < 0:
        raise EnvelopeError(f"will delay {delay} is negative")
    return decode_retained(subject_to_topic(subject), record, now), delay


@attrs.frozen
class Owner:
    """Who holds a client id: the node (its name, and the origin of its current run)
    whose CONNECT wrote the client id's key in the owners bucket."""

    node: str
    origin: str
    client: str


def encode_owner(owner: Owner) -> bytes:
    """The owners bucket value for ``owner`` (JSON)."""
    return json.dumps({"node": owner.node, "origin": owner.origin, "client": owner.client}).encode()


def decode_owner(value: bytes) -> Owner:
    """The owner in an owners bucket value; ``ValueError`` unless it is a JSON object with
    the three fields as strings."""
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError(f"an owner is a JSON object, not {type(data).__name__}")
    node, origin, client = data.get("node"), data.get("origin"), data.get("client")
    if not (isinstance(node, str) and isinstance(origin, str) and isinstance(client, str)):
        raise ValueError(f"an owner has string fields node, origin and client: {data!r:.200}")
    return Owner(node, origin, client)
