"""How an MQTT message travels between nodes over NATS (pure code, no I/O).

The topic is the NATS subject (``trio_mqtt.cluster.subjects``). Everything else is a
few fields with one-letter names, present only when they say something: as NATS headers
(:func:`message_headers`, for what is stored in JetStream) or, for live traffic, as one
line in front of the payload (:func:`encode_wire`: a NATS MSG without a header block
parses in less than half the time). That line starts with what changes per message
(``n``, then ``s`` if present); from ``o`` on it is what a publisher's messages share,
which the receiver decodes once and remembers:

=====  =========================================================================
``o``  origin: the sending node's id, unique per process incarnation (required)
``n``  the origin's sequence number of this message, decimal (required)
``q``  QoS, ``1`` or ``2`` (absent: 0)
``r``  ``1`` for a retained message (absent: not retained)
``c``  the publisher's client id, %-escaped (absent: published in-process)
``e``  Message Expiry Interval left when sent, seconds (absent: no expiry)
``p``  the other MQTT 5 properties, as a PUBLISH encodes them, in base64
``a``  the publisher's peer (:func:`encode_peer`; absent: ``LOCAL_PEER``)
``s``  its sequence in the cluster's message stream (absent: not stored, 0)
=====  =========================================================================

Header values are printable ASCII without spaces (``%`` and two hex digits stand for
any other byte of UTF-8, and for ``%`` and ``|``, which separates the fields of ``a``),
so no header parser can trim, fold or split them; ``%`` alone is the empty string (an
empty header value might be dropped). Clocks are node-local: the sender writes the
expiry *left* and the receiver counts from its own now.
Other headers (``Nats-Sequence`` from a JetStream RePublish, ...) are ignored.

A message matching two of a node's subscriptions arrives once per subscription;
:class:`RepeatFilter` drops the repeats by (origin, sequence).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import attrs

from trio_mqtt.broker.message import Message, StoredMessage
from trio_mqtt.cluster.subjects import unescape_marked
from trio_mqtt.errors import MQTTProtocolError, TrioMQTTError
from trio_mqtt.mqtt.packets import NO_PROPERTIES, Properties
from trio_mqtt.mqtt.properties import PropertyContext, decode_properties, encode_properties
from trio_mqtt.nats.protocol import Headers
from trio_mqtt.peer import LOCAL_PEER, Endpoint, PeerInfo

__all__ = [
    "EnvelopeError",
    "Origin",
    "RepeatFilter",
    "decode_peer",
    "decode_wire",
    "decode_wire_parts",
    "encode_peer",
    "encode_wire",
    "message_from_nats",
    "message_headers",
    "stream_key",
]

ORIGIN = "o"
SEQUENCE = "n"
QOS = "q"
RETAIN = "r"
PUBLISHER = "c"
EXPIRY = "e"
PROPERTIES = "p"
PEER = "a"
STREAM_SEQUENCE = "s"
# where each field goes in the list _build takes
_SLOTS = {
    name: slot
    for slot, name in enumerate(
        (ORIGIN, SEQUENCE, QOS, RETAIN, PUBLISHER, PROPERTIES, EXPIRY, PEER, STREAM_SEQUENCE)
    )
}

_QOS_TEXT = ("0", "1", "2")
_QOS_VALUE = {"0": 0, "1": 1, "2": 2}
_MAX_UINT32 = 0xFFFF_FFFF

# %-escaping for header values: printable ASCII stays, except "%" and the "|" separator
_SAFE_VALUE = re.compile(r"[!-$&-{}~]*")
_ESCAPE = tuple(chr(b) if 0x21 <= b <= 0x7E and b not in b"%|" else f"%{b:02X}" for b in range(256))
_EMPTY_VALUE = "%"  # the empty string: "%" alone is no escape, and no header is empty


class EnvelopeError(TrioMQTTError, ValueError):
    """NATS headers that do not describe a message: the message says which and why."""


@attrs.frozen
class Origin:
    """Where a message entered the cluster: the node and that node's sequence number."""

    node: str
    sequence: int


def stream_key(message: StoredMessage, origin: Origin) -> tuple[str, int]:
    """How a node recognises a message read back from the stream as one it routed:
    QoS 1 by where it entered the cluster (its live copy carried the same), QoS 2 (routed
    once stored) by its stream sequence."""
    if message.qos == 2:
        return ("", message.sequence)
    return (origin.node, origin.sequence)


def _escape(text: str) -> str:
    if _SAFE_VALUE.fullmatch(text):
        return text or _EMPTY_VALUE
    return "".join([_ESCAPE[b] for b in text.encode("utf-8")])


def _unescape(value: str, what: str) -> str:
    if "%" not in value:
        if not _SAFE_VALUE.fullmatch(value):
            raise EnvelopeError(f"{what} {value[:100]!r} has characters that must be escaped")
        return value
    if value == _EMPTY_VALUE:
        return ""
    try:
        text = unescape_marked(value, "%")
    except ValueError as exc:
        raise EnvelopeError(f"{what} {value[:100]!r} is badly escaped ({exc})") from None
    if _escape(text) != value:
        raise EnvelopeError(f"{what} {value[:100]!r} is not canonically escaped")
    return text


@functools.lru_cache(maxsize=4096)
def _cached_unescape(value: str) -> str:
    """``_unescape`` of a client id (publishers repeat: decoded once each)."""
    return _unescape(value, "client id")


def _endpoint_text(endpoint: Endpoint | None) -> str:
    return "" if endpoint is None else _escape(str(endpoint))


def _parse_endpoint(value: str) -> Endpoint | None:
    if not value:
        return None
    text = _unescape(value, "peer address")
    host, colon, port = text.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535:
        raise EnvelopeError(f"peer address {text[:100]!r} is not host:port")
    if ":" in host:  # Endpoint brackets exactly the hosts that contain ":"
        if not (host.startswith("[") and host.endswith("]")):
            raise EnvelopeError(f"peer address {text[:100]!r}: an IPv6 host needs brackets")
        host = host[1:-1]
    return Endpoint(host, int(port))


# id(peer) -> (peer, text): connections publish through one PeerInfo object each, so an
# identity lookup saves hashing and formatting it per message. The entry holds the peer,
# so its id cannot be reused while it is cached.
_peer_texts: dict[int, tuple[PeerInfo, str]] = {}
_PEER_CACHE_SIZE = 4096


def encode_peer(peer: PeerInfo) -> str:
    """``transport|listener|client|proxy``, each %-escaped; an absent endpoint is empty.

    What the SQLite store keeps of a peer, too: who published (the real client address)
    and through which proxy and listener. The socket's own endpoints, the PROXY header
    and TLS details stay on the node that accepted the connection.
    """
    entry = _peer_texts.get(id(peer))
    if entry is not None and entry[0] is peer:
        return entry[1]
    text = "|".join(
        (
            _escape(peer.transport),
            _escape(peer.listener),
            _endpoint_text(peer.client),
            _endpoint_text(peer.proxy),
        )
    )
    if len(_peer_texts) >= _PEER_CACHE_SIZE:
        _peer_texts.clear()
    _peer_texts[id(peer)] = (peer, text)
    return text


@functools.lru_cache(maxsize=1024)
def _decode_peer(value: str) -> PeerInfo:
    fields = value.split("|")
    if len(fields) < 4:  # later versions may add fields: ignored here
        raise EnvelopeError(f"peer {value[:100]!r} has {len(fields)} fields, expected 4")
    transport, listener, client_text, proxy_text = fields[:4]
    client = _parse_endpoint(client_text)
    proxy = _parse_endpoint(proxy_text)
    return PeerInfo(
        listener=_unescape(listener, "listener"),
        transport=_unescape(transport, "transport"),
        remote=proxy if proxy is not None else client,
        client=client,
        proxy=proxy,
    )


def decode_peer(value: str) -> PeerInfo:
    """The :class:`PeerInfo` that :func:`encode_peer` wrote; ``EnvelopeError`` if malformed.

    The remote end of the socket is the proxy when there is one, else the client.
    """
    if len(value) > 512:
        return _decode_peer.__wrapped__(value)
    return _decode_peer(value)


def message_headers(message: Message, *, origin: str, sequence: int, now: float) -> dict[str, str]:
    """The NATS headers that carry ``message`` (all but its topic and payload).

    ``origin`` must be unique per sending process incarnation (a node restarting with the
    same id would have its new, low sequence numbers dropped as repeats), and ``sequence``
    must increase with each message it sends. Raises ``LocalProtocolError`` if the
    message's properties cannot be encoded in a PUBLISH.
    """
    headers = {ORIGIN: origin, SEQUENCE: str(sequence)}
    if message.qos:
        headers[QOS] = _QOS_TEXT[message.qos]
    if message.retain:
        headers[RETAIN] = "1"
    if message.publisher is not None:
        headers[PUBLISHER] = _escape(message.publisher)
    if message.properties is not NO_PROPERTIES:
        expiry, blob = _expiry_and_properties(message, now)
        if expiry is not None:
            headers[EXPIRY] = expiry
        if blob is not None:
            headers[PROPERTIES] = blob
    if message.peer is not LOCAL_PEER:
        headers[PEER] = encode_peer(message.peer)
    if message.sequence:
        headers[STREAM_SEQUENCE] = str(message.sequence)
    return headers


def _expiry_and_properties(message: Message, now: float) -> tuple[str | None, str | None]:
    """The values of fields ``e`` and ``p`` of ``message`` (None: absent)."""
    properties = message.properties
    expiry = message.remaining_expiry(now)
    if expiry is not None:
        properties = attrs.evolve(properties, message_expiry_interval=None)
    blob = None
    if properties:
        encoded = encode_properties(properties, PropertyContext.PUBLISH, "PUBLISH")
        blob = base64.b64encode(encoded).decode("ascii")
    return (None if expiry is None else str(expiry)), blob


def _decode_properties(value: str) -> Properties:
    try:
        blob = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise EnvelopeError(f"properties header is not base64 ({exc})") from None
    try:
        properties, end = decode_properties(blob, 0, len(blob), PropertyContext.PUBLISH, "NATS")
    except MQTTProtocolError as exc:
        raise EnvelopeError(f"properties header: {exc}") from None
    if end != len(blob):
        raise EnvelopeError(f"properties header has {len(blob) - end} stray byte(s)")
    if properties.topic_alias is not None or properties.subscription_identifiers:
        raise EnvelopeError("properties header carries per-hop properties (topic alias, ...)")
    if properties.message_expiry_interval is not None:
        raise EnvelopeError("properties header carries the expiry: it belongs in header 'e'")
    return properties


# equal property blocks decode to one shared (immutable) value: less work and memory
_cached_decode_properties = functools.lru_cache(maxsize=1024)(_decode_properties)


def _number(value: str, what: str, limit: int) -> int:
    if value.isdigit() and value.isascii() and len(value) <= 20:
        number = int(value)
        if number <= limit:
            return number
    raise EnvelopeError(f"{what} {value[:100]!r} is not an integer from 0 to {limit}")


def _build(
    topic: str, payload: bytes, now: float, fields: list[str | None]
) -> tuple[Message, Origin]:
    """The message and origin from the envelope's fields, by ``_SLOTS`` (None: absent)."""
    node, sequence, qos_text, retain_text, publisher, blob, expiry_text, peer_text, stream_text = (
        fields
    )
    if not node or sequence is None:
        raise EnvelopeError(
            f"message lacks its origin: headers {ORIGIN!r} and {SEQUENCE!r} are required"
        )
    origin = Origin(node, _number(sequence, "sequence", 2**64 - 1))
    qos = 0
    if qos_text is not None:
        qos = _QOS_VALUE.get(qos_text, -1)
        if qos < 0:
            raise EnvelopeError(f"QoS {qos_text[:100]!r} is not 0, 1 or 2")
    retain = False
    if retain_text is not None:
        if retain_text != "1":
            raise EnvelopeError(f"retain flag {retain_text[:100]!r} is not '1'")
        retain = True
    if publisher is not None:
        publisher = (
            _cached_unescape(publisher)
            if len(publisher) <= 256
            else _unescape(publisher, "client id")
        )
    properties = NO_PROPERTIES
    if blob is not None:
        if len(blob) > 4096:
            properties = _decode_properties(blob)
        else:
            properties = _cached_decode_properties(blob)
    if expiry_text is not None:
        expiry = _number(expiry_text, "expiry", _MAX_UINT32)
        properties = attrs.evolve(properties, message_expiry_interval=expiry)
    peer = LOCAL_PEER if peer_text is None else decode_peer(peer_text)
    # positional: measurably cheaper than keywords, per received message
    if stream_text is None:
        message = Message(topic, payload, qos, retain, properties, publisher, peer, now)
    else:
        stream_sequence = _number(stream_text, "stream sequence", 2**64 - 1)
        message = StoredMessage(
            topic, payload, qos, retain, properties, publisher, peer, now, stream_sequence
        )
    return message, origin


def message_from_nats(
    topic: str,
    payload: bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
    *,
    now: float,
) -> tuple[Message, Origin]:
    """The message and its origin from what NATS delivered (``topic`` from the subject).

    ``headers`` is a mapping (nats-py) or (name, value) pairs (``trio_mqtt.nats.Headers``);
    names are matched exactly, as written. The message's clock starts at ``now``, this
    node's time. Raises ``EnvelopeError`` for missing or malformed headers, never
    anything else.
    """
    if headers is None:
        raise EnvelopeError("message has no headers: not sent by a trio-mqtt node")
    if type(headers) is Headers:
        pairs: Iterable[tuple[str, str]] = headers.items
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    # one pass over the few headers present (a later repeat of a name wins, as in a dict)
    fields: list[str | None] = [None] * len(_SLOTS)
    for name, value in pairs:
        slot = _SLOTS.get(name)
        if slot is not None:
            fields[slot] = value
    return _build(topic, payload, now, fields)


def encode_wire(message: Message, *, origin: str, sequence: int, now: float) -> bytes:
    """``message`` as one NATS payload: the envelope on one line, then its payload.

    What live traffic between nodes uses: a plain NATS MSG is parsed in less than half
    the time of an HMSG with a header block. The line holds the same fields as
    :func:`message_headers`, each as its one-letter name followed by its value,
    separated by spaces (values never contain spaces or newlines). What changes from
    one message to the next comes first (the sequence, then the stream sequence if
    any), then from the origin on what a publisher's messages have in common: the
    receiver decodes that part once (:func:`decode_wire`).
    """
    stream = message.sequence
    fields = [f"n{sequence} s{stream} o{origin}" if stream else f"n{sequence} o{origin}"]
    if message.qos:
        fields.append("q" + _QOS_TEXT[message.qos])
    if message.retain:
        fields.append("r1")
    if message.publisher is not None:
        fields.append("c" + _escape(message.publisher))
    if message.properties is not NO_PROPERTIES:
        expiry, blob = _expiry_and_properties(message, now)
        if expiry is not None:
            fields.append("e" + expiry)
        if blob is not None:
            fields.append("p" + blob)
    if message.peer is not LOCAL_PEER:
        fields.append("a" + encode_peer(message.peer))
    return b"%s\n%s" % (" ".join(fields).encode("ascii"), message.payload)


# The constant part of an envelope line (from " o" on: origin, QoS, retain, publisher,
# expiry, properties, peer) -> what it decodes to: (node, qos, retain, properties,
# publisher, peer). A publisher's messages share it, so the common case parses only
# the sequence numbers in front.
_WireConstants = tuple[str, int, bool, Properties, str | None, PeerInfo]
_wire_constants: dict[bytes, _WireConstants] = {}
_WIRE_CACHE_SIZE = 4096
_WIRE_CACHE_MAX_BYTES = 1024
_MAX_UINT64 = 2**64 - 1
_WIRE_HEAD = re.compile(rb"n[0-9]{1,20}(?: s[0-9]{1,20})?")


def decode_wire_parts(topic: str, data: bytes, now: float) -> tuple[Message, str, int]:
    """:func:`decode_wire` as (message, origin node, origin sequence): no ``Origin``."""
    # the common case: a line as encode_wire writes it, its constant part seen before
    head, newline, payload = data.partition(b"\n")
    numbers, marker, key = head.partition(b" o")
    constants = _wire_constants.get(key) if marker and newline else None
    if constants is not None and numbers[:1] == b"n":
        node, qos, retain, properties, publisher, peer = constants
        digits = numbers[1:]
        if digits.isdigit():
            if len(digits) <= 20:
                sequence = int(digits)
                if sequence <= _MAX_UINT64:
                    message = Message(topic, payload, qos, retain, properties, publisher, peer, now)
                    return message, node, sequence
        else:
            text, _, stream_text = digits.partition(b" s")
            if (
                text.isdigit()
                and stream_text.isdigit()
                and len(text) <= 20
                and len(stream_text) <= 20
            ):
                sequence = int(text)
                stream_sequence = int(stream_text)
                if sequence <= _MAX_UINT64 and stream_sequence <= _MAX_UINT64:
                    message = StoredMessage(
                        topic,
                        payload,
                        qos,
                        retain,
                        properties,
                        publisher,
                        peer,
                        now,
                        stream_sequence,
                    )
                    return message, node, sequence
    end = data.find(b"\n")
    message, origin = _decode_wire_fields(topic, data, end, now)
    # remember the constant part if this line has the layout encode_wire writes
    split = data.find(b" o", 0, end)
    if split > 0 and end - split <= _WIRE_CACHE_MAX_BYTES and _WIRE_HEAD.fullmatch(data, 0, split):
        key = data[split + 2 : end]
        if b" n" not in key and b" s" not in key:
            if len(_wire_constants) >= _WIRE_CACHE_SIZE:
                _wire_constants.clear()
            _wire_constants[key] = (
                origin.node,
                message.qos,
                message.retain,
                message.properties,
                message.publisher,
                message.peer,
            )
    return message, origin.node, origin.sequence


def _decode_wire_fields(topic: str, data: bytes, end: int, now: float) -> tuple[Message, Origin]:
    """Any envelope line, by its fields' names (in any order; the last of a name wins)."""
    if end < 0:
        raise EnvelopeError("no envelope line: not sent by a trio-mqtt node")
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise EnvelopeError("the envelope line is not ASCII") from None
    fields: list[str | None] = [None] * len(_SLOTS)
    for field in line.split(" "):
        slot = _SLOTS.get(field[:1])
        if slot is not None:
            fields[slot] = field[1:]
    return _build(topic, data[end + 1 :], now, fields)


def decode_wire(topic: str, data: bytes, *, now: float) -> tuple[Message, Origin]:
    """The message and its origin from an :func:`encode_wire` payload.

    Raises ``EnvelopeError`` if malformed. The fields may come in any order (a later
    repeat of a name wins); the constant part of a line laid out as ``encode_wire``
    writes it is decoded once and remembered.
    """
    message, node, sequence = decode_wire_parts(topic, data, now)
    return message, Origin(node, sequence)


@attrs.define
class _Seen:
    """One origin's recent sequences: the highest, and bit i for ``highest - i``."""

    highest: int
    mask: int


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


@attrs.define
class RepeatFilter:
    """Drops the repeats of a message that reached this node through several subscriptions.

    A message matching two of the node's NATS subscriptions arrives twice, with one
    (origin, sequence). Per origin it keeps the highest sequence and a bitmap of the
    ``window`` sequences below it. A sequence older than the window counts as seen: NATS
    delivers one publisher's messages to one connection in order, across all its
    subscriptions, so a copy that far behind is a repeat. At most ``max_origins`` origins
    are remembered, least recently heard from forgotten first (a repeat of a forgotten
    origin's message passes: at worst a duplicate, which QoS 0 and 1 allow).
    """

    window: int = attrs.field(default=4096, validator=_positive)
    max_origins: int = attrs.field(default=1024, validator=_positive)
    _origins: OrderedDict[str, _Seen] = attrs.field(factory=OrderedDict, init=False)
    _full: int = attrs.field(init=False)
    # the origin heard from last (the last of _origins) and its state
    _last: str | None = attrs.field(default=None, init=False)
    _last_state: _Seen = attrs.field(factory=lambda: _Seen(0, 0), init=False)

    def __attrs_post_init__(self) -> None:
        self._full = (1 << self.window) - 1

    def seen(self, origin: Origin) -> bool:
        """Whether ``origin`` was seen before (a repeat, to drop); records it if not."""
        return self.repeated(origin.node, origin.sequence)

    def repeated(self, node: str, sequence: int) -> bool:
        """:meth:`seen` of the origin ``(node, sequence)``, without making an ``Origin``."""
        if node == self._last:  # the common case: the same origin again
            state = self._last_state
        else:
            origins = self._origins
            found = origins.get(node)
            if found is None:
                if len(origins) >= self.max_origins:
                    origins.popitem(last=False)
                origins[node] = self._last_state = _Seen(sequence, 1)
                self._last = node
                return False
            origins.move_to_end(node)
            self._last = node
            self._last_state = state = found
        ahead = sequence - state.highest
        if ahead > 0:
            full = self._full
            if ahead == 1 and state.mask == full:  # in order, no gap in the window
                state.highest = sequence
            else:
                state.mask = ((state.mask << ahead) | 1) & full if ahead < self.window else 1
                state.highest = sequence
            return False
        if -ahead >= self.window:
            return True
        bit = 1 << -ahead
        if state.mask & bit:
            return True
        state.mask |= bit
        return False

    def forget(self, node: str) -> None:
        """Drop what is remembered of ``node`` (it left the cluster)."""
        self._origins.pop(node, None)
        if node == self._last:
            self._last = None

    def __len__(self) -> int:
        """How many origins are remembered."""
        return len(self._origins)
