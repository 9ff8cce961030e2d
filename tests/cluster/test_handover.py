"""A persistent session handed over between nodes: chunks, time rebasing, a core round trip."""

from __future__ import annotations

import contextlib
import json
from collections import deque
from typing import Any

import attrs
import pytest
from helpers import V5, Client, FakeClock, make_core
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_mqtt.broker.message import Message, StoredMessage
from trio_mqtt.broker.router import SubscriptionOptions
from trio_mqtt.broker.sessions import (
    OutboundState,
    QueuedMessage,
    RetainedReplay,
    SavedSession,
    Session,
)
from trio_mqtt.cluster.envelope import Origin
from trio_mqtt.cluster.handover import (
    HandoverError,
    HandoverWindow,
    decode_handover,
    decode_session,
    encode_session,
    saved_session,
)
from trio_mqtt.errors import TrioMQTTError
from trio_mqtt.mqtt.packets import Properties, ProtocolVersion, Puback, Publish
from trio_mqtt.peer import Endpoint, PeerInfo

SENT = 1000.0
RECEIVED = 5.0
CLIENT = Endpoint("203.0.113.7", 51234)
PROXY = Endpoint("10.0.0.1", 40000)
# what crosses the cluster of a peer (no local endpoint, no TLS details)
PEER = PeerInfo(listener="edge", transport="tls", remote=PROXY, client=CLIENT, proxy=PROXY)
PROPS = Properties(
    message_expiry_interval=300,
    content_type="application/json",
    response_topic="reply/here",
    correlation_data=b"\x00\xff\n{binary}",
    user_properties=(("ключ", "значение"), ("k", "v"), ("k", "v2")),
)
PUBACK = OutboundState.AWAIT_PUBACK
PUBREC = OutboundState.AWAIT_PUBREC
PUBCOMP = OutboundState.AWAIT_PUBCOMP


def message(topic: str, payload: bytes, qos: int = 1, **fields: Any) -> Message:
    return Message(topic, payload, qos=qos, publisher="pub-1", peer=PEER, created=SENT, **fields)


def full_session() -> SavedSession:
    """A session using every field a handover must carry."""
    return SavedSession(
        client_id="client-ü",
        protocol_version=ProtocolVersion.V5,
        expiry_interval=3600,
        expires_at=SENT + 60,
        next_packet_id=42,
        dropped=7,
        inflight_in=(3, 9, 65535),
        subscriptions=(
            ("a/+/c", SubscriptionOptions(qos=2)),
            (
                "b/#",
                SubscriptionOptions(
                    qos=1,
                    no_local=True,
                    retain_as_published=True,
                    retain_handling=2,
                    subscription_identifier=268_435_455,
                ),
            ),
            ("$share/g/s/t", SubscriptionOptions(qos=0, retain_handling=1)),
        ),
        pending=(
            QueuedMessage(message("a/b/c", b"zero", qos=0), 0, False),
            QueuedMessage(
                message("b/1", b"\x00\r\n one", properties=PROPS), 1, True, (5, 268_435_455)
            ),
            QueuedMessage(message("s/t", b"two", qos=2, retain=True), 2, False, (), ("s/t",)),
            QueuedMessage(message("b/2", b"", qos=2, properties=PROPS), 1, False, (1,), ("b/#",)),
        ),
        inflight=(
            (17, QueuedMessage(message("b/3", b"ack me", properties=PROPS), 1, False), PUBACK),
            (18, QueuedMessage(message("b/4", b"rec me", qos=2), 2, False, (2,)), PUBREC),
            (65535, QueuedMessage(message("b/5", b"comp me", qos=2), 2, True), PUBCOMP),
        ),
        delayed_will=message("will/t", b"gone", qos=1, retain=True, properties=PROPS),
        will_due=SENT + 30,
    )


def rebased(original: Message, now: float) -> Message:
    """The message as the receiver gets it: its clock starts at the receiver's now."""
    return attrs.evolve(original, created=now)


def item_fields(item: QueuedMessage) -> tuple[object, ...]:
    return (item.message, item.qos, item.retain, item.subscription_identifiers, item.shared_filters)


def rebased_item(item: QueuedMessage, now: float) -> tuple[object, ...]:
    return (rebased(item.message, now), *item_fields(item)[1:])


def assert_same_session(back: SavedSession, saved: SavedSession, now: float) -> None:
    assert back.client_id == saved.client_id
    assert back.protocol_version is saved.protocol_version
    assert back.expiry_interval == saved.expiry_interval
    assert back.next_packet_id == saved.next_packet_id
    assert back.dropped == saved.dropped
    assert back.inflight_in == saved.inflight_in
    assert back.subscriptions == saved.subscriptions
    assert [item_fields(item) for item in back.pending] == [
        rebased_item(item, now) for item in saved.pending
    ]
    assert [(pid, item_fields(item), state) for pid, item, state in back.inflight] == [
        (pid, rebased_item(item, now), state) for pid, item, state in saved.inflight
    ]
    if saved.delayed_will is None:
        assert back.delayed_will is None
    else:
        assert back.delayed_will == rebased(saved.delayed_will, now)


def round_trip(saved: SavedSession, *, max_chunk: int = 512 * 1024) -> list[bytes]:
    chunks = encode_session(saved, origin="node-a", now=SENT, max_chunk=max_chunk)
    assert_same_session(decode_session(chunks, now=RECEIVED), saved, RECEIVED)
    return chunks


# ------------------------------------------------------------------------ round trips


def test_full_session_round_trip() -> None:
    saved = full_session()
    (chunk,) = round_trip(saved)
    back = decode_session([chunk], now=RECEIVED)
    assert back.pending[1].message.properties == PROPS  # 300 s left: sent when created
    assert back.delayed_will is not None
    assert back.delayed_will.peer == PEER
    assert back.delayed_will.publisher == "pub-1"
    assert b"\x00\r\n one" in chunk  # payloads travel raw, not base64


def test_times_rebased_onto_the_receivers_clock() -> None:
    chunks = encode_session(full_session(), origin="node-a", now=1000.0)
    back = decode_session(chunks, now=5.0)
    assert back.expires_at == 65.0
    assert back.will_due == 35.0
    assert all(item.message.created == 5.0 for item in back.pending)


def test_message_expiry_counts_down_while_waiting() -> None:
    waited = QueuedMessage(
        Message(
            "t", b"x", qos=1, properties=Properties(message_expiry_interval=100), created=900.0
        ),
        1,
        False,
    )
    saved = SavedSession("c", ProtocolVersion.V5, 10, None, pending=(waited,))
    (item,) = decode_session(encode_session(saved, origin="a", now=SENT), now=RECEIVED).pending
    assert item.message.properties.message_expiry_interval == 0  # 100 s spent queued
    assert item.message.expired(RECEIVED)


def test_online_and_never_expiring_sessions_have_no_expiry_time() -> None:
    saved = SavedSession("c", ProtocolVersion.V311, 0xFFFFFFFF, None)
    back = decode_session(encode_session(saved, origin="a", now=SENT), now=RECEIVED)
    assert back == saved  # nothing in it depends on the clock


def test_large_payload_gets_a_chunk_of_its_own() -> None:
    big = QueuedMessage(message("big", bytes(range(256)) * 8192, qos=1), 1, False)  # 2 MiB
    small = QueuedMessage(message("small", b"s"), 1, False)
    saved = attrs.evolve(full_session(), pending=(small, big, small))
    chunks = round_trip(saved, max_chunk=512 * 1024)
    oversized = [chunk for chunk in chunks if len(chunk) > 512 * 1024]
    assert len(oversized) == 1
    assert 2 * 1024 * 1024 < len(oversized[0]) < 2 * 1024 * 1024 + 1024
    assert len(chunks) == 3  # before it, it, after it


def test_many_small_messages_split_into_chunks_within_the_limit() -> None:
    pending = tuple(
        QueuedMessage(message(f"t/{n}", bytes([n % 256]) * 1000, properties=PROPS), 1, False)
        for n in range(500)
    )
    saved = attrs.evolve(full_session(), pending=pending)
    chunks = round_trip(saved, max_chunk=64 * 1024)
    assert len(chunks) >= 8
    assert all(len(chunk) <= 64 * 1024 for chunk in chunks)
    back = decode_session(chunks, now=RECEIVED)
    assert [item.message.topic for item in back.pending] == [f"t/{n}" for n in range(500)]


def test_max_chunk_too_small_for_the_header() -> None:
    with pytest.raises(ValueError, match="no room"):
        encode_session(full_session(), origin="node-a", now=SENT, max_chunk=40)


# ----------------------------------------------------------------- malformed input


def split(chunk: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = chunk.partition(b"\n")
    return json.loads(head.removeprefix(b"TMQHO1 ")), body


def join(header: dict[str, Any], body: bytes) -> bytes:
    return b"TMQHO1 " + json.dumps(header).encode() + b"\n" + body


def several_chunks() -> list[bytes]:
    pending = tuple(QueuedMessage(message(f"t/{n}", b"x" * 300), 1, False) for n in range(40))
    saved = attrs.evolve(full_session(), pending=pending)
    chunks = encode_session(saved, origin="node-a", now=SENT, max_chunk=4096)
    assert len(chunks) >= 3
    return chunks


def test_chunks_missing_repeated_or_out_of_order() -> None:
    chunks = several_chunks()
    with pytest.raises(HandoverError, match="missing, extra or out of order"):
        decode_session(chunks[:-1], now=RECEIVED)
    with pytest.raises(HandoverError, match="missing, extra or out of order"):
        decode_session([chunks[0], chunks[2], chunks[1], *chunks[3:]], now=RECEIVED)
    with pytest.raises(HandoverError, match="missing, extra or out of order"):
        decode_session([*chunks, chunks[-1]], now=RECEIVED)
    with pytest.raises(HandoverError, match="no chunks"):
        decode_session([], now=RECEIVED)


def test_chunks_of_another_handover() -> None:
    chunks = several_chunks()
    other = encode_session(
        attrs.evolve(full_session(), pending=()), origin="node-a", now=SENT + 1, max_chunk=4096
    )
    header, body = split(other[0])
    header.update(i=1, n=len(chunks))
    with pytest.raises(HandoverError, match="another handover"):
        decode_session([chunks[0], join(header, body), *chunks[2:]], now=RECEIVED)


def test_truncated_at_a_record_boundary() -> None:
    (chunk,) = encode_session(full_session(), origin="node-a", now=SENT)
    header, body = split(chunk)
    last = body.rfind(b'{"k":"w"')  # the will record, the last one
    header["b"] = last
    with pytest.raises(HandoverError, match="records, the header says"):
        decode_session([join(header, body[:last])], now=RECEIVED)
    with pytest.raises(HandoverError, match="truncated or padded"):
        decode_session([chunk[:-1]], now=RECEIVED)


FULL_CHUNK = encode_session(full_session(), origin="node-a", now=SENT)[0]


def record_with(change: dict[str, Any], kind: str = "q") -> bytes:
    """The full session's chunk, with ``change`` made to its first record of ``kind``."""
    header, body = split(FULL_CHUNK)
    start = body.index(b'{"k":"' + kind.encode())
    end = body.index(b"\n", start)
    fields = json.loads(body[start:end])
    fields.update(change)
    body = body[:start] + json.dumps(fields).encode() + body[end:]
    header["b"] = len(body)
    return join(header, body)


@pytest.mark.parametrize(
    ("change", "kind", "error"),
    [
        ({"q": 3}, "q", "'q' is 3, not an integer from 0 to 2"),
        ({"q": "1"}, "q", "'q' is '1'"),
        ({"h": {"q": "7"}}, "q", "QoS '7' is not 0, 1 or 2"),
        ({"t": "a/+"}, "q", "wildcard"),
        ({"si": [0]}, "q", "'si' holds 0"),
        ({"s": "nope"}, "i", "unknown in-flight state"),
        ({"q": 2}, "i", "cannot be puback"),
        ({"p": 0}, "i", "'p' is 0"),
        ({"f": "a/#/b"}, "f", "a/#/b"),
        ({"rh": 3}, "f", "'rh' is 3"),
        ({"el": "soon"}, "s", "'el' is 'soon'"),
        ({"pv": 9}, "s", "unknown protocol version"),
        ({"np": 0}, "s", "'np' is 0"),
        ({"ii": [1, 1]}, "s", "repeats a packet id"),
        ({"k": "x"}, "w", "unknown record kind"),
        ({"k": "w"}, "i", "a second delayed will"),
        ({"k": "s"}, "f", "unknown record kind"),
    ],
)
def test_bad_values(change: dict[str, Any], kind: str, error: str) -> None:
    with pytest.raises(HandoverError, match=error.replace("+", r"\+")):
        decode_session([record_with(change, kind)], now=RECEIVED)


@pytest.mark.parametrize(
    ("window", "error"),
    [
        ([], "'hw' is not an object"),
        ({"from": 1, "o": "a", "os": 0, "seen": []}, "'seen' is not an object"),
        ({"from": 1, "o": "a", "os": 0, "seen": {"b": [0]}}, "'b' holds 0"),
        ({"from": 1, "o": "a", "os": 0, "seen": {"b": "7"}}, "'b' is not a list"),
        ({"from": -1, "o": "a", "os": 0}, "'from' is -1"),
        ({"from": 1, "o": 5, "os": 0}, "'o' is 5"),
        ({"from": 1, "o": "a"}, "'os' is None"),
    ],
)
def test_bad_windows(window: object, error: str) -> None:
    with pytest.raises(HandoverError, match=error):
        decode_handover([record_with({"hw": window}, "s")], now=RECEIVED)


WINDOW = HandoverWindow(
    first=100, origin="node-a", origin_sequence=40, seen=frozenset({("node-c", 7), ("", 120)})
)


SPILLED = attrs.evolve(WINDOW, spilled=frozenset({("node-c", 3), ("", 60)}), spilled_from=50)


@pytest.mark.parametrize("sent", [WINDOW, SPILLED])
def test_the_window_travels_with_the_session_and_older_readers_ignore_it(
    sent: HandoverWindow,
) -> None:
    chunks = encode_session(full_session(), origin="node-a", now=SENT, window=sent)
    saved, window = decode_handover(chunks, now=RECEIVED)
    assert window == sent
    assert_same_session(saved, full_session(), RECEIVED)
    assert_same_session(decode_session(chunks, now=RECEIVED), full_session(), RECEIVED)
    # a sender without a window (an older version)
    assert decode_handover(encode_session(full_session(), origin="a", now=SENT), now=1)[1] is None


def stored(qos: int, sequence: int) -> StoredMessage:
    return StoredMessage.of(message("k/x", b"", qos), sequence)


@pytest.mark.parametrize(
    ("qos", "sequence", "origin", "owed"),
    [
        (1, 99, Origin("node-c", 9), False),  # stored before the window: it had arrived
        (2, 99, Origin("node-c", 9), False),
        (1, 100, Origin("node-c", 9), True),  # in the window, never seen on node-a
        (1, 130, Origin("node-c", 7), False),  # seen there
        (2, 120, Origin("node-c", 8), False),  # QoS 2: by its stream sequence
        (2, 121, Origin("node-c", 7), True),
        (1, 130, Origin("node-a", 40), False),  # node-a's own, routed when published
        (1, 130, Origin("node-a", 41), True),  # published there after the handover
        (2, 130, Origin("node-a", 30), True),  # its own QoS 2: routed only once stored
        (1, 130, Origin("node-c", 0), True),  # no origin sequence: nothing to compare
    ],
)
def test_what_a_window_says_the_session_may_have_missed(
    qos: int, sequence: int, origin: Origin, owed: bool
) -> None:
    assert WINDOW.owes(stored(qos, sequence), origin) is owed


def test_not_a_handover() -> None:
    with pytest.raises(HandoverError, match="not a session handover"):
        decode_session([b"hello"], now=RECEIVED)
    with pytest.raises(HandoverError, match="not valid JSON"):
        decode_session([b"TMQHO1 {nope\n"], now=RECEIVED)
    with pytest.raises(HandoverError, match="not bytes"):
        decode_session(["TMQHO1 {}\n"], now=RECEIVED)  # type: ignore[list-item]
    assert issubclass(HandoverError, TrioMQTTError)
    assert issubclass(HandoverError, ValueError)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = several_chunks()


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_fuzz_random_bytes(chunks: list[bytes]) -> None:
    with pytest.raises(HandoverError):
        decode_session([b"TMQHO1 " + chunk for chunk in chunks], now=RECEIVED)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_records_behind_a_valid_header(body: bytes) -> None:
    header = {"id": "c", "o": "node-a", "at": SENT, "i": 0, "n": 1, "r": 1, "b": len(body)}
    with contextlib.suppress(HandoverError):
        decode_session([join(header, b'{"k":"s","pv":5,"ei":1,"np":1,"d":0}\n' + body)], now=5)


@FUZZ
@given(st.data())
def test_fuzz_truncated_or_corrupted(data: st.DataObject) -> None:
    chunks = list(GOOD)
    index = data.draw(st.integers(0, len(chunks) - 1))
    chunk = bytearray(chunks[index])
    if data.draw(st.booleans()):
        del chunk[data.draw(st.integers(0, len(chunk) - 1)) :]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            chunk[data.draw(st.integers(0, len(chunk) - 1))] = data.draw(st.integers(0, 255))
    chunks[index] = bytes(chunk)
    with contextlib.suppress(HandoverError):  # a payload byte may change unnoticed
        decode_session(chunks, now=RECEIVED)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(JSON_VALUES)
def test_fuzz_json_values(value: object) -> None:
    for key in ("k", "q", "h", "si", "sf", "t", "f", "s", "p", "l", "pv", "el", "ii"):
        for kind in ("s", "f", "q", "i", "w"):
            with contextlib.suppress(HandoverError):
                decode_session([record_with({key: value}, kind)], now=RECEIVED)


# ------------------------------------------------------------- between two cores


def test_saved_session_keeps_replays_and_drops_expired_messages() -> None:
    session = Session("c", ProtocolVersion.V5, 100, 1 << 20, expiry_interval=60)
    fresh = QueuedMessage(message("q/1", b"fresh"), 1, False)
    stale = Message("q/2", b"stale", qos=1, properties=Properties(message_expiry_interval=5))
    session.append_pending(fresh)
    session.append_pending(QueuedMessage(stale, 1, False))
    retained = [message("r/1", b"r1", retain=True), message("r/2", b"r2", qos=2, retain=True)]
    session.append_replay(RetainedReplay(deque(retained), qos=1, subscription_identifiers=(4,)))
    session.receive_incoming(7)
    session.receive_incoming(3)
    options = SubscriptionOptions(qos=1)
    saved = saved_session(session, SENT, subscriptions={"r/#": options})
    assert saved.subscriptions == (("r/#", options),)
    assert saved.inflight_in == (3, 7)
    assert [
        (i.message.topic, i.qos, i.retain, i.subscription_identifiers) for i in saved.pending
    ] == [
        ("q/1", 1, False, ()),
        ("r/1", 1, True, (4,)),
        ("r/2", 1, True, (4,)),
    ]


def test_core_round_trip() -> None:
    old_clock = FakeClock(now=SENT)
    old = make_core(old_clock)
    client = Client(old, V5)
    client.connect("mover", properties=Properties(session_expiry_interval=600))
    client.subscribe(("m/#", 2), sub_id=12)
    old.publish(Message("m/inflight", b"unacked", qos=1, created=old_clock.now))
    (unacked,) = client.publishes()
    client.drop()
    old_clock.now += 10
    sent = [
        Message("m/1", b"one", qos=1, properties=PROPS, publisher="p", created=old_clock.now),
        Message("m/2", b"two", qos=2, created=old_clock.now),
        Message("m/3", b"\x00" * 100_000, qos=1, created=old_clock.now),
        Message("m/0", b"qos0 is not kept offline", qos=0, created=old_clock.now),
    ]
    for each in sent:
        old.publish(each)

    saved = saved_session(
        old.sessions["mover"],
        old_clock.now,
        subscriptions=old.router.subscriptions_of("mover"),
    )
    assert saved.expires_at == SENT + 600
    chunks = encode_session(saved, origin="node-a", now=old_clock.now, max_chunk=64 * 1024)
    assert len(chunks) == 3

    new_clock = FakeClock(now=50.0)
    new = make_core(new_clock)
    back = decode_session(chunks, now=new_clock.now)
    assert back.expires_at == 50.0 + 590
    restored = new.restore([back], [])
    assert restored.sessions == ("mover",)
    assert new.sessions["mover"].expires_at == 640.0

    again = Client(new, V5)
    assert again.connect("mover", clean_start=False).session_present
    publishes = again.publishes()
    assert [(p.topic, p.payload, p.qos, p.dup) for p in publishes] == [
        ("m/inflight", b"unacked", 1, True),
        *((m.topic, m.payload, m.qos, False) for m in sent[:3]),
    ]
    assert publishes[0].packet_id == unacked.packet_id
    assert all(p.properties.subscription_identifiers == (12,) for p in publishes)
    assert publishes[1].properties.user_properties == PROPS.user_properties
    assert publishes[1].properties.correlation_data == PROPS.correlation_data
    assert publishes[1].properties.message_expiry_interval == 300

    # the subscription came along: new messages on the new node reach the client
    for publish in publishes:
        if publish.qos == 1:
            again.send(Puback(publish.packet_id or 0))
    again.packets()
    new.publish(Message("m/after", b"new node", qos=0, created=new_clock.now))
    assert [(p.topic, p.payload) for p in again.publishes()] == [("m/after", b"new node")]
    assert isinstance(publishes[0], Publish)


def test_what_the_old_node_kept_in_the_stream_is_owed_wherever_it_is() -> None:
    assert (WINDOW.read_from(), SPILLED.read_from()) == (100, 50)
    assert SPILLED.owes(stored(1, 70), Origin("node-c", 3))  # before the window
    assert SPILLED.owes(stored(2, 60), Origin("node-c", 1))
    assert not SPILLED.owes(stored(1, 70), Origin("node-c", 4))
