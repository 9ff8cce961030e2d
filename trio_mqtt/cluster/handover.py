"""A persistent session handed from one node to another over NATS (pure code, no I/O).

When a client with a persistent session reconnects on another node, the node that held
the session sends it there: :func:`saved_session` takes it out of the core as a
``SavedSession``, :func:`encode_session` turns that into chunks that each fit in a NATS
message, and on the new node :func:`decode_session` gives back the ``SavedSession`` for
``BrokerCore.restore``.

Chunk format (version 1). Every chunk is a header line, then records::

    TMQHO1 {"id":client_id,"o":origin,"at":sent_at,"i":index,"n":total,"r":records,"b":bytes}\\n
    record*

``i``/``n`` say which chunk of how many it is (the receiver checks it got all, in
order); ``r`` and ``b`` count the records and bytes after the header line (so a chunk cut
at a record boundary is caught); ``id``, ``o`` and ``at`` are the same in every chunk of
one handover. A record is one line of compact JSON whose ``k`` says what it is, followed,
for a message, by exactly ``l`` bytes of raw payload (never base64)::

    {"k":"s", ...}        the session's own fields (first record of chunk 0, once),
                          with the handover's window ("hw", see HandoverWindow)
    {"k":"f", ...}        a subscription: filter and options
    {"k":"q", ...}payload a queued message
    {"k":"i", ...}payload an in-flight message: packet id and state
    {"k":"w", ...}payload the delayed will (at most once)

A message's metadata (QoS, retain, publisher, MQTT 5 properties, expiry, ``PeerInfo``)
is the envelope's NATS headers (``trio_mqtt.cluster.envelope``), without the origin
and sequence, so a message arrives exactly as it would from another node. Clocks are
node-local: the sender writes the seconds *left* (session expiry, will delay, message
expiry) and the receiver counts them from its own now.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from trio_mqtt.broker.message import Message, StoredMessage
from trio_mqtt.broker.router import MAX_SUBSCRIPTION_IDENTIFIER, SubscriptionOptions
from trio_mqtt.broker.sessions import OutboundState, QueuedMessage, SavedSession, Session
from trio_mqtt.cluster.envelope import (
    ORIGIN,
    SEQUENCE,
    EnvelopeError,
    Origin,
    message_from_nats,
    message_headers,
    stream_key,
)
from trio_mqtt.errors import RemoteProtocolError, TrioMQTTError
from trio_mqtt.mqtt.packets import ProtocolVersion
from trio_mqtt.mqtt.topics import validate_topic_filter, validate_topic_name

__all__ = [
    "DEFAULT_MAX_CHUNK",
    "HandoverError",
    "HandoverWindow",
    "chunk_position",
    "decode_handover",
    "decode_session",
    "encode_session",
    "saved_session",
]

#: Half of NATS's default max_payload (1 MiB): room for headers and a bigger header line.
DEFAULT_MAX_CHUNK = 512 * 1024

_MAGIC = b"TMQHO1 "
_SESSION = "s"
_SUBSCRIPTION = "f"
_QUEUED = "q"
_INFLIGHT = "i"
_WILL = "w"
_MAX_PACKET_ID = 65535
_MAX_UINT32 = 0xFFFF_FFFF
_QOS_OF_STATE = {
    OutboundState.AWAIT_PUBACK: 1,
    OutboundState.AWAIT_PUBREC: 2,
    OutboundState.AWAIT_PUBCOMP: 2,
}


class HandoverError(TrioMQTTError, ValueError):
    """Chunks that do not make up a handed-over session: the message says what is wrong."""


@attrs.frozen
class HandoverWindow:
    """What the node that handed a session over had routed to it, so that the node that
    took it can deliver what fell between them.

    From the moment the old node lets go of the session until the new node's NATS
    subscriptions for it are in place, messages for it reach neither. The stream has the
    QoS 1/2 ones: the new node reads them back from ``first`` (the old node's stream
    floor of 1-2 s earlier: everything stored before it had reached the old node) and
    delivers those the old node had not routed to the session: not its own clients'
    QoS 1 messages up to ``origin_sequence`` (routed when published), nor those in
    ``seen``, the messages matching the session's filters that arrived there (QoS 1:
    (origin, origin sequence); QoS 2, routed once stored: ("", stream sequence)). Also
    owed: ``spilled``, what the old node kept in the stream for the session because its
    queue was full (from ``spilled_from`` on).
    """

    first: int
    origin: str
    origin_sequence: int
    seen: frozenset[tuple[str, int]] = frozenset()
    spilled: frozenset[tuple[str, int]] = frozenset()
    spilled_from: int = 0

    def read_from(self) -> int:
        """The stream sequence to read back from."""
        return min(self.first, self.spilled_from) if self.spilled else self.first

    def owes(self, message: StoredMessage, origin: Origin) -> bool:
        """Whether the old node may not have routed ``message`` (read back from the
        stream, entered the cluster at ``origin``) to the session."""
        if self.spilled and stream_key(message, origin) in self.spilled:
            return True
        if message.sequence < self.first:
            return False
        if message.qos == 2:
            return ("", message.sequence) not in self.seen
        if not origin.sequence:
            return True  # (stored by an older version: nothing to compare, may come twice)
        if origin.node == self.origin:
            return origin.sequence > self.origin_sequence
        return (origin.node, origin.sequence) not in self.seen

    def to_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "from": self.first,
            "o": self.origin,
            "os": self.origin_sequence,
            "seen": _by_origin(self.seen),
        }
        if self.spilled:
            fields["spilled"] = _by_origin(self.spilled)
            fields["sfrom"] = self.spilled_from
        return fields

    @classmethod
    def from_json(cls, fields: object, what: str) -> HandoverWindow:
        if not isinstance(fields, dict):
            raise HandoverError(f"{what}: 'hw' is not an object")
        return cls(
            first=_int(fields, "from", what, 0, 2**63),
            origin=_text(fields, "o", what),
            origin_sequence=_int(fields, "os", what, 0, 2**63),
            seen=_keys(fields, "seen", what),
            spilled=_keys(fields, "spilled", what),
            spilled_from=_int(fields, "sfrom", what, 0, 2**63) if "spilled" in fields else 0,
        )


def _by_origin(keys: frozenset[tuple[str, int]]) -> dict[str, list[int]]:
    """(origin, sequence) keys as {origin: [sequences]} (compact JSON)."""
    by_origin: dict[str, list[int]] = {}
    for node, sequence in keys:
        by_origin.setdefault(node, []).append(sequence)
    return {node: sorted(sequences) for node, sequences in by_origin.items()}


def _keys(fields: dict[str, Any], key: str, what: str) -> frozenset[tuple[str, int]]:
    """The keys ``_by_origin`` wrote under ``key`` (none if it is not there)."""
    value = fields.get(key, {})
    if not isinstance(value, dict):
        raise HandoverError(f"{what}: 'hw' {key!r} is not an object")
    keys: set[tuple[str, int]] = set()
    for node in value:
        keys.update((node, sequence) for sequence in _ints(value, node, what, 1, 2**63))
    return frozenset(keys)


# ------------------------------------------------------------------------- encoding


def saved_session(
    session: Session, now: float, *, subscriptions: Mapping[str, SubscriptionOptions]
) -> SavedSession:
    """What a persistence store would keep of ``session``, for a handover.

    ``subscriptions`` live in the router, not the session: pass
    ``core.router.subscriptions_of(client_id)``. Like the SQLite store, retained replays
    still under way are saved as the messages they still hold; unlike it, queued
    messages already expired at ``now`` are left out (the writer would skip them).
    """
    return SavedSession(
        client_id=session.client_id,
        protocol_version=session.protocol_version,
        expiry_interval=session.expiry_interval,
        expires_at=session.expires_at,
        next_packet_id=session.next_packet_id,
        dropped=session.dropped,
        inflight_in=tuple(sorted(session.inflight_in)),
        subscriptions=tuple(subscriptions.items()),
        pending=tuple(item for item in session.queued_items() if not item.message.expired(now)),
        inflight=tuple(
            (inflight.packet_id, inflight.item, inflight.state)
            for inflight in session.inflight_out.values()
        ),
        delayed_will=session.delayed_will,
        will_due=session.will_due,
    )


@attrs.frozen
class _Record:
    head: bytes  # the JSON line, with its newline
    payload: bytes = b""

    @property
    def size(self) -> int:
        return len(self.head) + len(self.payload)


def _json_line(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def _left(when: float | None, now: float) -> float | None:
    return None if when is None else when - now


def _message_record(
    kind: str, message: Message, now: float, fields: dict[str, Any] | None = None
) -> _Record:
    headers = message_headers(message, origin="-", sequence=0, now=now)
    del headers[ORIGIN], headers[SEQUENCE]
    record: dict[str, Any] = {"k": kind, "t": message.topic, "h": headers}
    if fields:
        record.update(fields)
    record["l"] = len(message.payload)
    return _Record(_json_line(record), message.payload)


def _item_record(kind: str, item: QueuedMessage, now: float, **extra: Any) -> _Record:
    fields: dict[str, Any] = {"q": item.qos, **extra}
    if item.retain:
        fields["r"] = True
    if item.subscription_identifiers:
        fields["si"] = list(item.subscription_identifiers)
    if item.shared_filters:
        fields["sf"] = list(item.shared_filters)
    return _message_record(kind, item.message, now, fields)


def _records(saved: SavedSession, now: float, window: HandoverWindow | None) -> list[_Record]:
    session: dict[str, Any] = {
        "k": _SESSION,
        "pv": int(saved.protocol_version),
        "ei": saved.expiry_interval,
        "el": _left(saved.expires_at, now),
        "np": saved.next_packet_id,
        "d": saved.dropped,
        "ii": list(saved.inflight_in),
        "wl": _left(saved.will_due, now),
    }
    if window is not None:
        session["hw"] = window.to_json()  # (a key older versions ignore)
    records = [_Record(_json_line(session))]
    for topic_filter, options in saved.subscriptions:
        subscription: dict[str, Any] = {"k": _SUBSCRIPTION, "f": topic_filter, "q": options.qos}
        if options.no_local:
            subscription["nl"] = True
        if options.retain_as_published:
            subscription["rap"] = True
        if options.retain_handling:
            subscription["rh"] = options.retain_handling
        if options.subscription_identifier is not None:
            subscription["id"] = options.subscription_identifier
        records.append(_Record(_json_line(subscription)))
    records.extend(_item_record(_QUEUED, item, now) for item in saved.pending)
    records.extend(
        _item_record(_INFLIGHT, item, now, p=packet_id, s=state.value)
        for packet_id, item, state in saved.inflight
    )
    if saved.delayed_will is not None:
        records.append(_message_record(_WILL, saved.delayed_will, now))
    return records


def _chunk_header(
    client_id: str, origin: str, now: float, *, index: int, total: int, count: int, size: int
) -> bytes:
    fields = {"id": client_id, "o": origin, "at": now, "i": index, "n": total, "r": count}
    return _MAGIC + _json_line({**fields, "b": size})


def encode_session(
    saved: SavedSession,
    *,
    origin: str,
    now: float,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    window: HandoverWindow | None = None,
) -> list[bytes]:
    """``saved`` as chunks to send in order, one NATS message each (module docstring).

    ``now`` is the sender's clock, the one ``saved``'s times are on; ``origin`` names the
    sending node; ``window`` goes with the session (:func:`decode_handover`). Each
    chunk is at most ``max_chunk`` bytes, except one that holds a single record too big
    for that alone (a message with a large payload): it gets a chunk of its own, larger
    than ``max_chunk`` (a caller bound by NATS max_payload should check the sizes and
    refuse the handover). Raises ``ValueError`` if
    ``max_chunk`` leaves no room after the chunk header, and ``LocalProtocolError`` if a
    message's properties cannot be encoded (as between nodes).
    """
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite time, got {now}")
    records = _records(saved, now, window)
    # the largest header any chunk can have: every count at its highest
    most = len(records)
    reserve = len(
        _chunk_header(
            saved.client_id,
            origin,
            now,
            index=most,
            total=most,
            count=most,
            size=sum(r.size for r in records),
        )
    )
    room = max_chunk - reserve
    if room <= 0:
        raise ValueError(f"max_chunk {max_chunk} leaves no room after a {reserve}-byte header")
    groups: list[list[_Record]] = []
    group: list[_Record] = []
    size = 0
    for record in records:
        if group and size + record.size > room:
            groups.append(group)
            group, size = [], 0
        group.append(record)
        size += record.size
    groups.append(group)
    chunks: list[bytes] = []
    for index, group in enumerate(groups):
        parts: list[bytes] = []
        for record in group:
            parts.append(record.head)
            parts.append(record.payload)
        body_size = sum(len(part) for part in parts)
        header = _chunk_header(
            saved.client_id,
            origin,
            now,
            index=index,
            total=len(groups),
            count=len(group),
            size=body_size,
        )
        chunks.append(b"".join([header, *parts]))
    return chunks


# ------------------------------------------------------------------------- decoding


def _load_line(data: bytes, start: int, what: str) -> tuple[dict[str, Any], int]:
    """The JSON object on the line at ``start`` in ``data``, and where the line ends."""
    end = data.find(b"\n", start)
    if end < 0:
        raise HandoverError(f"{what} is truncated: its line has no end")
    try:
        value = json.loads(data[start:end].decode("ascii"))
    except (ValueError, RecursionError) as exc:
        raise HandoverError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise HandoverError(f"{what} is not a JSON object")
    return value, end + 1


def _int(fields: dict[str, Any], key: str, what: str, low: int, high: int) -> int:
    value = fields.get(key)
    if type(value) is not int or not low <= value <= high:
        raise HandoverError(f"{what}: {key!r} is {value!r}, not an integer from {low} to {high}")
    return value


def _text(fields: dict[str, Any], key: str, what: str) -> str:
    value = fields.get(key)
    if type(value) is not str:
        raise HandoverError(f"{what}: {key!r} is {value!r}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise HandoverError(f"{what}: {key!r} is not valid UTF-8 text") from None
    return value


def _flag(fields: dict[str, Any], key: str, what: str) -> bool:
    value = fields.get(key, False)
    if type(value) is not bool:
        raise HandoverError(f"{what}: {key!r} is {value!r}, not true or false")
    return value


def _time(fields: dict[str, Any], key: str, what: str) -> float:
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HandoverError(f"{what}: {key!r} is {value!r}, not a finite number of seconds")
    return float(value)


def _time_left(fields: dict[str, Any], key: str, what: str) -> float | None:
    return None if fields.get(key) is None else _time(fields, key, what)


def _ints(fields: dict[str, Any], key: str, what: str, low: int, high: int) -> tuple[int, ...]:
    values = fields.get(key, [])
    if type(values) is not list:
        raise HandoverError(f"{what}: {key!r} is not a list")
    for value in values:
        if type(value) is not int or not low <= value <= high:
            raise HandoverError(f"{what}: {key!r} holds {value!r}, not from {low} to {high}")
    return tuple(values)


def _strings(fields: dict[str, Any], key: str, what: str) -> tuple[str, ...]:
    values = fields.get(key, [])
    if type(values) is not list:
        raise HandoverError(f"{what}: {key!r} is not a list")
    return tuple(_text({key: value}, key, what) for value in values)


@attrs.define
class _Header:
    client_id: str
    origin: str
    sent_at: float
    index: int
    total: int
    records: int
    size: int


def _chunk_records(
    chunk: bytes, position: int, total: int
) -> tuple[_Header, list[tuple[dict[str, Any], bytes]]]:
    what = f"chunk {position} of {total}"
    if not chunk.startswith(_MAGIC):
        raise HandoverError(f"{what} does not start with {_MAGIC!r}: not a session handover")
    fields, start = _load_line(chunk, len(_MAGIC), f"{what}'s header")
    header = _Header(
        client_id=_text(fields, "id", f"{what}'s header"),
        origin=_text(fields, "o", f"{what}'s header"),
        sent_at=_time(fields, "at", f"{what}'s header"),
        index=_int(fields, "i", f"{what}'s header", 0, 2**63),
        total=_int(fields, "n", f"{what}'s header", 1, 2**63),
        records=_int(fields, "r", f"{what}'s header", 0, 2**63),
        size=_int(fields, "b", f"{what}'s header", 0, 2**63),
    )
    if header.index != position or header.total != total:
        raise HandoverError(
            f"{what} says it is chunk {header.index} of {header.total}: "
            "chunks are missing, extra or out of order"
        )
    if len(chunk) - start != header.size:
        raise HandoverError(
            f"{what} has {len(chunk) - start} bytes after its header, "
            f"the header says {header.size}: truncated or padded"
        )
    records: list[tuple[dict[str, Any], bytes]] = []
    while start < len(chunk):
        where = f"record {len(records)} of {what}"
        record, start = _load_line(chunk, start, where)
        length = record.get("l", 0)
        if type(length) is not int or length < 0:
            raise HandoverError(f"{where}: payload length 'l' is {length!r}")
        if start + length > len(chunk):
            raise HandoverError(f"{where}: its {length}-byte payload is truncated")
        records.append((record, chunk[start : start + length]))
        start += length
    if len(records) != header.records:
        raise HandoverError(f"{what} has {len(records)} records, the header says {header.records}")
    return header, records


def _message(fields: dict[str, Any], payload: bytes, origin: str, what: str, now: float) -> Message:
    topic = _text(fields, "t", what)
    try:
        validate_topic_name(topic)
    except RemoteProtocolError as exc:
        raise HandoverError(f"{what}: {exc}") from None
    headers = fields.get("h")
    if not isinstance(headers, dict) or not all(type(value) is str for value in headers.values()):
        raise HandoverError(f"{what}: 'h' is not an object of strings")
    headers = {**headers, ORIGIN: origin or "-", SEQUENCE: "0"}
    try:
        message, _origin = message_from_nats(topic, payload, headers, now=now)
    except EnvelopeError as exc:
        raise HandoverError(f"{what}: {exc}") from None
    return message


def _item(
    fields: dict[str, Any], payload: bytes, origin: str, what: str, now: float
) -> QueuedMessage:
    return QueuedMessage(
        message=_message(fields, payload, origin, what, now),
        qos=_int(fields, "q", what, 0, 2),
        retain=_flag(fields, "r", what),
        subscription_identifiers=_ints(fields, "si", what, 1, MAX_SUBSCRIPTION_IDENTIFIER),
        shared_filters=_strings(fields, "sf", what),
    )


def _subscription(fields: dict[str, Any], what: str) -> tuple[str, SubscriptionOptions]:
    topic_filter = _text(fields, "f", what)
    try:
        validate_topic_filter(topic_filter)
    except RemoteProtocolError as exc:
        raise HandoverError(f"{what}: {exc}") from None
    identifier = fields.get("id")
    return topic_filter, SubscriptionOptions(
        qos=_int(fields, "q", what, 0, 2),
        no_local=_flag(fields, "nl", what),
        retain_as_published=_flag(fields, "rap", what),
        retain_handling=_int(fields, "rh", what, 0, 2) if "rh" in fields else 0,
        subscription_identifier=(
            None if identifier is None else _int(fields, "id", what, 1, MAX_SUBSCRIPTION_IDENTIFIER)
        ),
    )


def chunk_position(chunk: bytes) -> tuple[int, int]:
    """``(index, total)`` that a chunk's header gives, so a receiver knows when it has
    them all; ``HandoverError`` if it is not a chunk of a handover."""
    if not chunk.startswith(_MAGIC):
        raise HandoverError(f"does not start with {_MAGIC!r}: not a session handover")
    fields, _start = _load_line(chunk, len(_MAGIC), "the chunk's header")
    index = _int(fields, "i", "the chunk's header", 0, 2**63)
    total = _int(fields, "n", "the chunk's header", 1, 2**63)
    if index >= total:
        raise HandoverError(f"the chunk's header says chunk {index} of {total}")
    return index, total


def decode_session(chunks: Sequence[bytes], *, now: float) -> SavedSession:
    """The session that :func:`encode_session` cut into ``chunks``, on this node's clock.

    ``now`` is the receiver's clock: times left when sent count from it. Raises
    ``HandoverError`` for anything malformed or incomplete (chunks missing, repeated or
    out of order, truncated, from two handovers, bad values), never anything else.
    """
    return decode_handover(chunks, now=now)[0]


def decode_handover(
    chunks: Sequence[bytes], *, now: float
) -> tuple[SavedSession, HandoverWindow | None]:
    """Like :func:`decode_session`, with the window that came with the session (None
    from a sender that sent none)."""
    if not chunks:
        raise HandoverError("no chunks: a handover has at least one")
    total = len(chunks)
    first: _Header | None = None
    records: list[tuple[dict[str, Any], bytes]] = []
    for position, chunk in enumerate(chunks):
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise HandoverError(f"chunk {position} of {total} is {type(chunk).__name__}, not bytes")
        header, found = _chunk_records(bytes(chunk), position, total)
        if first is None:
            first = header
        elif (header.client_id, header.origin, header.sent_at) != (
            first.client_id,
            first.origin,
            first.sent_at,
        ):
            raise HandoverError(
                f"chunk {position} of {total} belongs to another handover "
                f"(client {header.client_id!r} from {header.origin!r} at {header.sent_at})"
            )
        records.extend(found)
    assert first is not None
    if not records or records[0][0].get("k") != _SESSION:
        raise HandoverError("the first record is not the session's")
    session, _payload = records[0]
    what = "the session record"
    level = _int(session, "pv", what, 0, 255)  # (a HandoverError is a ValueError too)
    try:
        version = ProtocolVersion(level)
    except ValueError:
        raise HandoverError(f"{what}: unknown protocol version {level!r}") from None
    expires_left = _time_left(session, "el", what)
    will_left = _time_left(session, "wl", what)
    expiry_interval = _int(session, "ei", what, 0, _MAX_UINT32)
    next_packet_id = _int(session, "np", what, 1, _MAX_PACKET_ID)
    dropped = _int(session, "d", what, 0, 2**63)
    inflight_in = _ints(session, "ii", what, 1, _MAX_PACKET_ID)
    if len(set(inflight_in)) != len(inflight_in):
        raise HandoverError(f"{what}: 'ii' repeats a packet id")
    window = None if "hw" not in session else HandoverWindow.from_json(session["hw"], what)
    subscriptions: list[tuple[str, SubscriptionOptions]] = []
    pending: list[QueuedMessage] = []
    inflight: dict[int, tuple[int, QueuedMessage, OutboundState]] = {}
    will: Message | None = None
    origin = first.origin
    for number, (fields, payload) in enumerate(records[1:], 1):
        kind = fields.get("k")
        what = f"record {number} ({kind!r})"
        if kind == _SUBSCRIPTION:
            subscriptions.append(_subscription(fields, what))
        elif kind == _QUEUED:
            pending.append(_item(fields, payload, origin, what, now))
        elif kind == _INFLIGHT:
            packet_id = _int(fields, "p", what, 1, _MAX_PACKET_ID)
            if packet_id in inflight:
                raise HandoverError(f"{what}: packet id {packet_id} is in flight twice")
            try:
                state = OutboundState(fields.get("s"))
            except ValueError:
                raise HandoverError(
                    f"{what}: unknown in-flight state {fields.get('s')!r}"
                ) from None
            item = _item(fields, payload, origin, what, now)
            if item.qos != _QOS_OF_STATE[state]:
                raise HandoverError(f"{what}: a QoS {item.qos} message cannot be {state.value}")
            inflight[packet_id] = (packet_id, item, state)
        elif kind == _WILL:
            if will is not None:
                raise HandoverError(f"{what}: a second delayed will")
            will = _message(fields, payload, origin, what, now)
        else:
            raise HandoverError(f"{what}: unknown record kind")
    saved = SavedSession(
        client_id=first.client_id,
        protocol_version=version,
        expiry_interval=expiry_interval,
        expires_at=None if expires_left is None else now + expires_left,
        next_packet_id=next_packet_id,
        dropped=dropped,
        inflight_in=inflight_in,
        subscriptions=tuple(subscriptions),
        pending=tuple(pending),
        inflight=tuple(inflight.values()),
        delayed_will=will,
        will_due=None if will_left is None else now + will_left,
    )
    return saved, window
