"""The sans-IO NATS protocol: bytes in, events out; commands in, bytes out. No sockets."""

from __future__ import annotations

import ast
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mqtt.errors import TrioMQTTError
from trio_mqtt.nats.protocol import (
    DEFAULT_MAX_PAYLOAD,
    MAX_CONTROL_LINE,
    MSG_LINE_CACHE_SIZE,
    NEED_DATA,
    Closed,
    Err,
    Event,
    Headers,
    Info,
    Msg,
    NATSConnection,
    NATSLocalError,
    NATSProtocolError,
    Ok,
    Ping,
    Pong,
    decode_headers,
    encode_headers,
)

INFO = b'INFO {"server_id":"X","version":"2.15.1","headers":true,"max_payload":1048576}\r\n'


def events_of(*chunks: bytes, eof: bool = False) -> list[Event]:
    """Feed *chunks* one by one, collecting every event after each."""
    conn = NATSConnection()
    events: list[Event] = []
    for chunk in [*chunks, *([b""] if eof else [])]:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, Closed):  # returned again on every call, like h11's
                return events
    return events


def hmsg(subject: str, sid: int, block: bytes, payload: bytes, reply: str | None = None) -> bytes:
    target = f"{subject} {sid}" if reply is None else f"{subject} {sid} {reply}"
    head = f"HMSG {target} {len(block)} {len(block) + len(payload)}\r\n".encode()
    return head + block + payload + b"\r\n"


def test_protocol_module_does_no_io() -> None:
    """protocol.py is sans-IO: it imports neither trio nor sockets."""
    source = Path(__file__).parents[2] / "trio_mqtt" / "nats" / "protocol.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "asyncio", "ssl", "anyio", "selectors"}


# -- server -> client -----------------------------------------------------------------


def test_info_is_parsed_and_sets_max_payload() -> None:
    conn = NATSConnection()
    assert conn.max_payload == DEFAULT_MAX_PAYLOAD
    conn.receive_data(b'INFO {"server_id":"A","max_payload":100,"headers":true}\r\n')
    event = conn.next_event()
    assert event == Info({"server_id": "A", "max_payload": 100, "headers": True})
    assert conn.max_payload == 100
    assert conn.server_info == {"server_id": "A", "max_payload": 100, "headers": True}
    assert conn.next_event() is NEED_DATA


def test_async_info_updates_what_changed() -> None:
    conn = NATSConnection()
    conn.receive_data(b'INFO {"server_id":"A","max_payload":100}\r\nINFO {"ldm":true}\r\n')
    conn.next_event()
    assert conn.next_event() == Info({"ldm": True})
    assert conn.server_info == {"server_id": "A", "max_payload": 100, "ldm": True}
    assert conn.max_payload == 100


def test_msg_without_and_with_reply() -> None:
    events = events_of(INFO + b"MSG a.b 1 5\r\nhello\r\nMSG a.c 22 _INBOX.x 0\r\n\r\n")
    assert events[1:] == [
        Msg("a.b", 1, None, b"hello"),
        Msg("a.c", 22, "_INBOX.x", b""),
    ]
    assert events[1].headers is None and events[1].status is None  # type: ignore[union-attr]


def test_msg_payload_may_contain_crlf() -> None:
    payload = b"MSG x 1 2\r\n\r\nPING\r\n"
    line = f"MSG a 1 {len(payload)}\r\n".encode()
    assert events_of(line + payload + b"\r\nPING\r\n") == [Msg("a", 1, None, payload), Ping()]


def test_a_msg_line_seen_before_parses_the_same_and_is_still_checked() -> None:
    # the second and third lines are served from the connection's cache of parsed lines
    line = b"MSG a.b 7 5\r\n"
    events = events_of(INFO + line + b"hello\r\n" + line + b"world\r\n", line + b"again\r\n")
    assert events[1:] == [Msg("a.b", 7, None, p) for p in (b"hello", b"world", b"again")]
    with pytest.raises(NATSProtocolError, match="not followed by CRLF"):
        events_of(INFO + line + b"hello\r\n" + line + b"hello!!\r\n")


def test_the_cache_of_msg_lines_is_bounded() -> None:
    conn = NATSConnection()
    count = MSG_LINE_CACHE_SIZE * 3
    conn.receive_data(b"".join(b"MSG s.%d 1 1\r\nx\r\n" % i for i in range(count)))
    subjects = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert isinstance(event, Msg)
        subjects.append(event.subject)
    assert subjects == [f"s.{i}" for i in range(count)]
    assert len(conn._msg_lines) <= MSG_LINE_CACHE_SIZE


def test_hmsg_with_headers_and_reply() -> None:
    block = b"NATS/1.0\r\nNats-Msg-Id: 7\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n"
    (event,) = events_of(hmsg("s.t", 3, block, b"body", reply="r.1"))
    assert isinstance(event, Msg)
    assert (event.subject, event.sid, event.reply, event.payload) == ("s.t", 3, "r.1", b"body")
    assert event.status is None and event.description == ""
    assert event.headers is not None
    assert event.headers.get("Nats-Msg-Id") == "7"
    assert event.headers.get("nats-msg-id") == "7"  # case-insensitive
    assert event.headers.get_all("X-Multi") == ["a", "b"]
    assert event.headers.get("Missing") is None
    assert "X-Multi" in event.headers and "Nope" not in event.headers


@pytest.mark.parametrize(
    ("block", "status", "description"),
    [
        (b"NATS/1.0 503\r\n\r\n", 503, ""),
        (b"NATS/1.0 100 Idle Heartbeat\r\n\r\n", 100, "Idle Heartbeat"),
        (b"NATS/1.0 404 No Messages\r\n\r\n", 404, "No Messages"),
        (
            b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n",
            408,
            "Request Timeout",
        ),
        (b"NATS/1.0 204 EOB\r\nNats-Num-Pending: 0\r\n\r\n", 204, "EOB"),
    ],
)
def test_hmsg_status_line(block: bytes, status: int, description: str) -> None:
    (event,) = events_of(hmsg("_INBOX.a", 1, block, b""))
    assert isinstance(event, Msg)
    assert event.status == status
    assert event.description == description
    assert event.payload == b""


def test_heartbeat_headers_after_status() -> None:
    block = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 5\r\nNats-Last-Stream: 9\r\n\r\n"
    (event,) = events_of(hmsg("_INBOX.hb", 4, block, b""))
    assert isinstance(event, Msg) and event.headers is not None
    assert event.headers.get("Nats-Last-Consumer") == "5"
    assert event.headers.as_dict() == {"Nats-Last-Consumer": "5", "Nats-Last-Stream": "9"}


def test_control_lines() -> None:
    events = events_of(b"PING\r\nPONG\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\n")
    assert events == [Ping(), Pong(), Ok(), Err("Unknown Protocol Operation")]


def test_err_fatality() -> None:
    assert Err("Authorization Violation").is_fatal
    assert Err("Maximum Payload Violation").is_fatal
    assert not Err("Permissions Violation for Publish to foo").is_fatal
    assert not Err("Invalid Subject").is_fatal


def test_lowercase_operations_are_accepted() -> None:
    events = events_of(b"ping\r\nmsg a 1 2\r\nhi\r\n")
    assert events == [Ping(), Msg("a", 1, None, b"hi")]


def test_eof_gives_closed_once_buffer_is_empty() -> None:
    assert events_of(b"PING\r\n", eof=True) == [Ping(), Closed()]
    conn = NATSConnection()
    conn.receive_data(b"")
    assert conn.next_event() == Closed()
    assert conn.next_event() == Closed()


@pytest.mark.parametrize("partial", [b"PIN", b"MSG a 1 5\r\nhel"])
def test_eof_in_the_middle_is_an_error(partial: bytes) -> None:
    with pytest.raises(NATSProtocolError, match="closed in the middle"):
        events_of(partial, eof=True)


def test_receive_after_eof_is_a_local_error() -> None:
    conn = NATSConnection()
    conn.receive_data(b"")
    with pytest.raises(NATSLocalError):
        conn.receive_data(b"PING\r\n")


# -- bounds and bad input -------------------------------------------------------------


def test_control_line_too_long_without_crlf() -> None:
    conn = NATSConnection()
    conn.receive_data(b"MSG " + b"a" * MAX_CONTROL_LINE)
    with pytest.raises(NATSProtocolError, match="control line longer than 4096"):
        conn.next_event()


def test_control_line_too_long_arriving_in_pieces() -> None:
    conn = NATSConnection()
    with pytest.raises(NATSProtocolError, match="control line longer"):
        for _ in range(MAX_CONTROL_LINE // 100 + 2):
            conn.receive_data(b"x" * 100)
            assert conn.next_event() is NEED_DATA
    assert conn.buffered <= MAX_CONTROL_LINE + 200


def test_control_line_too_long_with_crlf() -> None:
    with pytest.raises(NATSProtocolError, match="control line longer"):
        events_of(b"MSG " + b"a" * MAX_CONTROL_LINE + b" 1 0\r\n\r\n")


def test_payload_above_default_max_payload() -> None:
    with pytest.raises(NATSProtocolError, match="exceeds max_payload 1048576"):
        events_of(f"MSG a 1 {DEFAULT_MAX_PAYLOAD + 1}\r\n".encode())


def test_payload_above_info_max_payload_before_it_arrives() -> None:
    info = b'INFO {"max_payload":10}\r\n'
    with pytest.raises(NATSProtocolError, match="11 bytes on 'a' exceeds max_payload 10"):
        events_of(info + b"MSG a 1 11\r\n")
    # Exactly max_payload is fine.
    assert events_of(info + b"MSG a 1 10\r\n0123456789\r\n")[1] == Msg("a", 1, None, b"0123456789")


def test_hmsg_total_counts_against_max_payload() -> None:
    block = b"NATS/1.0\r\n\r\n"
    with pytest.raises(NATSProtocolError, match="exceeds max_payload 20"):
        events_of(b'INFO {"max_payload":20}\r\n' + hmsg("a", 1, block, b"x" * 10))


@pytest.mark.parametrize(
    "data",
    [
        b"MSG a 1 x\r\n",  # size not a number
        b"MSG a one 1\r\nx\r\n",  # sid not a number
        b"MSG a 1\r\n",  # too few fields
        b"MSG a b c d 1\r\n",  # too many fields
        b"MSG a 1 -1\r\n",
        b"HMSG a 1 10 5\r\n",  # header larger than total
        b"HMSG a 1 5\r\n",  # one size only
        b"MSG \xff 1 1\r\nx\r\n",  # subject not UTF-8
    ],
)
def test_bad_message_lines(data: bytes) -> None:
    with pytest.raises(NATSProtocolError, match="invalid message line"):
        events_of(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"MSG a 1 3\r\nabcXY", "not followed by CRLF"),
        (b"HELLO\r\n", "unknown protocol line"),
        (b"MSGX a 1 1\r\n", "unknown protocol line"),
        (b"\r\n", "unknown protocol line"),
        (b"INFO {nope\r\n", "INFO is not valid JSON"),
        (b"INFO [1]\r\n", "INFO is not a JSON object"),
    ],
)
def test_bad_input(data: bytes, match: str) -> None:
    with pytest.raises(NATSProtocolError, match=match):
        events_of(data)


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (b"HTTP/1.1\r\n\r\n", "does not start with NATS/1.0"),
        (b"NATS/1.0 5x3\r\n\r\n", "invalid status"),
        (b"NATS/1.0\r\nno colon here\r\n\r\n", "invalid header line"),
        (b"NATS/1.0\r\nA: b\r\n", "does not end with an empty line"),
    ],
)
def test_bad_header_blocks(block: bytes, match: str) -> None:
    with pytest.raises(NATSProtocolError, match=match):
        events_of(hmsg("a", 1, block, b"x"))


def test_errors_are_trio_mqtt_errors() -> None:
    assert issubclass(NATSProtocolError, TrioMQTTError)
    assert issubclass(NATSLocalError, TrioMQTTError)


# -- split reads ------------------------------------------------------------------------

STREAM = (
    INFO
    + b"PING\r\n"
    + b"MSG a.b 1 5\r\nhello\r\n"
    + hmsg("c", 2, b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Stream: 3\r\n\r\n", b"")
    + hmsg("d", 3, b"NATS/1.0\r\nK: v\r\n\r\n", b"\r\nbody\r\n", reply="_INBOX.r")
    + b"-ERR 'Stale Connection'\r\n"
    + b"MSG e 4 r 0\r\n\r\n"
)


def test_byte_by_byte_gives_the_same_events() -> None:
    whole = events_of(STREAM)
    assert len(whole) == 7
    assert events_of(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == whole


def test_large_payload_in_many_reads_is_joined_once() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB
    data = f"MSG big 1 {len(payload)}\r\n".encode() + payload + b"\r\n"
    conn = NATSConnection()
    for i in range(0, len(data), 1000):
        conn.receive_data(data[i : i + 1000])
        event = conn.next_event()
        if i + 1000 < len(data):
            assert event is NEED_DATA
    assert event == Msg("big", 1, None, payload)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted({0, len(STREAM), *cuts})
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert events_of(*chunks) == events_of(STREAM)


# -- deliver_msgs: the fast path for plain MSGs ------------------------------------------

HANDLED = (1, 5)  # the sids with a handler in these tests
FAST_STREAM = (
    INFO
    + b"MSG a.b 1 5\r\nhello\r\n"  # first seen: next_event
    + b"MSG a.b 1 5\r\nworld\r\n"  # seen before: deliver_msgs
    + b"PING\r\n"
    + b"MSG a.b 1 5\r\nagain\r\n"
    + b"MSG c 2 3\r\nxyz\r\n"  # no handler for sid 2
    + b"MSG c 2 3\r\nxyz\r\n"
    + b"MSG a.b 1 _INBOX.r 5\r\nreply\r\n"  # a reply subject: next_event
    + hmsg("a.b", 1, b"NATS/1.0\r\nK: v\r\n\r\n", b"head")  # headers: next_event
    + b"MSG a.b 1 5\r\nlast!\r\n"
    + b"MSG e.f 5 9\r\nx\r\nMSG y \r\n"  # a payload with CRLF in it
    + b"MSG e.f 5 9\r\nMSG e.f 5\r\n"
    + b"-ERR 'Stale Connection'\r\n"
)


def delivered_of(*chunks: bytes) -> tuple[list[Event], int]:
    """Like ``events_of`` (no EOF), with ``deliver_msgs`` first each time for HANDLED's sids.

    What the handlers got comes back as ``Msg`` events in its place, so the list
    compares with ``events_of``'s; also how many messages took the fast path.
    """
    conn = NATSConnection()
    events: list[Event] = []
    fast = 0

    def handler(sid: int) -> Any:
        def handle(subject: str, payload: bytes) -> None:
            nonlocal fast
            fast += 1
            events.append(Msg(subject, sid, None, payload))

        return handle

    handlers = {sid: handler(sid) for sid in HANDLED}
    for chunk in chunks:
        if not chunk:
            continue  # (b"" would be the end of the connection)
        conn.receive_data(chunk)
        while True:
            conn.deliver_msgs(handlers)
            event = conn.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
    return events, fast


def test_deliver_msgs_takes_the_plain_msgs_seen_before() -> None:
    events, fast = delivered_of(FAST_STREAM)
    assert events == events_of(FAST_STREAM)
    # "world", "again", "last!" and the second message on e.f; not the first of a line,
    # sid 2 (no handler), the reply, the HMSG
    assert fast == 4
    assert [e.payload for e in events if isinstance(e, Msg)][:3] == [b"hello", b"world", b"again"]


def test_deliver_msgs_split_at_every_byte_gives_the_same_events() -> None:
    whole = events_of(FAST_STREAM)
    for cut in range(len(FAST_STREAM) + 1):
        events, _ = delivered_of(FAST_STREAM[:cut], FAST_STREAM[cut:])
        assert events == whole, cut
    events, _ = delivered_of(*(FAST_STREAM[i : i + 1] for i in range(len(FAST_STREAM))))
    assert events == whole


@given(st.lists(st.integers(min_value=0, max_value=len(FAST_STREAM)), max_size=30))
def test_deliver_msgs_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted({0, len(FAST_STREAM), *cuts})
    chunks = [FAST_STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert delivered_of(*chunks)[0] == events_of(FAST_STREAM)


def test_deliver_msgs_consumes_a_message_whose_handler_raises() -> None:
    conn = NATSConnection()
    line = b"MSG a 1 1\r\n"
    conn.receive_data(line + b"0\r\n" + line + b"1\r\n" + line + b"2\r\n")
    assert conn.next_event() == Msg("a", 1, None, b"0")
    got: list[bytes] = []

    def handle(subject: str, payload: bytes) -> None:
        got.append(payload)
        if payload == b"1":
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        conn.deliver_msgs({1: handle})
    conn.deliver_msgs({1: handle})
    assert got == [b"1", b"2"]
    assert conn.next_event() is NEED_DATA


def test_deliver_msgs_leaves_a_message_waiting_for_its_payload() -> None:
    conn = NATSConnection()
    conn.receive_data(b"MSG a 1 3\r\nabc\r\nMSG a 1 3\r\nab")
    assert conn.next_event() == Msg("a", 1, None, b"abc")
    got: list[bytes] = []
    conn.deliver_msgs({1: lambda subject, payload: got.append(payload)})
    assert got == []
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"c\r\n")
    conn.deliver_msgs({1: lambda subject, payload: got.append(payload)})
    assert got == [] and conn.next_event() == Msg("a", 1, None, b"abc")  # (was pending)


# -- client -> server -------------------------------------------------------------------


def test_connect_is_compact_json() -> None:
    data = NATSConnection().connect({"verbose": False, "name": "n"})
    assert data.startswith(b"CONNECT ") and data.endswith(b"\r\n")
    assert json.loads(data[8:]) == {"verbose": False, "name": "n"}
    assert b" " not in data[8:]


def test_pub_forms() -> None:
    conn = NATSConnection()
    assert conn.pub("a.b", b"hi") == b"PUB a.b 2\r\nhi\r\n"
    assert conn.pub("a.b", b"", reply="r.1") == b"PUB a.b r.1 0\r\n\r\n"
    block = b"NATS/1.0\r\nX: 1\r\n\r\n"
    expected = f"HPUB a r {len(block)} {len(block) + 2}\r\n".encode() + block + b"hi\r\n"
    assert conn.pub("a", b"hi", reply="r", headers={"X": "1"}) == expected
    assert conn.pub("a", b"hi", reply="r", headers=Headers((("X", "1"),))) == expected


def test_sub_unsub_ping_pong() -> None:
    conn = NATSConnection()
    assert conn.sub("a.*", 7) == b"SUB a.* 7\r\n"
    assert conn.sub("a.>", 8, queue="workers") == b"SUB a.> workers 8\r\n"
    assert conn.unsub(7) == b"UNSUB 7\r\n"
    assert conn.unsub(7, max_msgs=3) == b"UNSUB 7 3\r\n"
    assert conn.ping() == b"PING\r\n"
    assert conn.pong() == b"PONG\r\n"


def test_a_published_message_parses_back() -> None:
    """What pub() encodes, an HMSG with the same sizes decodes to the same headers."""
    pub = NATSConnection().pub("s", b"payload", headers={"A": "1", "B": "x y"})
    line, _, rest = pub.partition(b"\r\n")
    _, subject, header_size, total = line.split()
    as_msg = b"HMSG %s 1 %s %s\r\n" % (subject, header_size, total) + rest
    (event,) = events_of(as_msg)
    assert isinstance(event, Msg) and event.headers is not None
    assert event.payload == b"payload"
    assert event.headers.items == (("A", "1"), ("B", "x y"))


@pytest.mark.parametrize("subject", ["", "a b", "a\tb", "a\r\nPING", "a\nb"])
def test_invalid_subjects_are_refused(subject: str) -> None:
    conn = NATSConnection()
    with pytest.raises(NATSLocalError, match="invalid subject"):
        conn.pub(subject, b"")
    with pytest.raises(NATSLocalError, match="invalid subject"):
        conn.sub(subject, 1)
    with pytest.raises(NATSLocalError, match="invalid reply subject"):
        conn.pub("ok", b"", reply=subject)
    with pytest.raises(NATSLocalError, match="invalid queue group"):
        conn.sub("ok", 1, queue=subject)


@pytest.mark.parametrize(
    "headers", [{"": "v"}, {"A B": "v"}, {"A:B": "v"}, {"A": "v\r\nInjected: 1"}, {"A": "\n"}]
)
def test_invalid_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(NATSLocalError, match="invalid header"):
        NATSConnection().pub("a", b"", headers=headers)


def test_pub_respects_server_limits() -> None:
    conn = NATSConnection()
    conn.receive_data(b'INFO {"max_payload":10,"headers":false}\r\n')
    conn.next_event()
    assert conn.pub("a", b"x" * 10) == b"PUB a 10\r\n" + b"x" * 10 + b"\r\n"
    with pytest.raises(NATSLocalError, match="11 bytes exceeds the server's max_payload 10"):
        conn.pub("a", b"x" * 11)
    with pytest.raises(NATSLocalError, match="does not support headers"):
        conn.pub("a", b"", headers={"A": "1"})


def test_unsub_negative_max() -> None:
    with pytest.raises(NATSLocalError):
        NATSConnection().unsub(1, max_msgs=-1)


# -- header helpers ---------------------------------------------------------------------


def test_header_block_round_trip_keeps_order_duplicates_and_utf8() -> None:
    pairs = [("B", "2"), ("A", "1"), ("A", "één"), ("Empty", "")]
    headers, status, description = decode_headers(encode_headers(pairs))
    assert headers.items == tuple(pairs)
    assert (status, description) == (None, "")


def test_headers_of() -> None:
    assert Headers.of({"a": "1"}) == Headers((("a", "1"),))
    assert Headers.of([("a", "1"), ("a", "2")]).get_all("A") == ["1", "2"]
    headers = Headers((("x", "y"),))
    assert Headers.of(headers) is headers
    assert len(headers) == 1 and list(headers) == [("x", "y")]


@pytest.mark.parametrize(
    "build",
    [
        lambda conn, subject: conn.pub(subject, b"x"),
        lambda conn, subject: conn.pub(subject, b"x", reply="_INBOX.r"),
        lambda conn, subject: conn.pub(subject, b"x", headers={"K": "v"}),
        lambda conn, subject: conn.sub(subject, 1),
        lambda conn, subject: conn.sub(subject, 1, queue="q"),
    ],
    ids=["PUB", "PUB reply", "HPUB", "SUB", "SUB queue"],
)
def test_no_control_line_longer_than_the_server_takes(build: Any) -> None:
    # nats-server closes the connection on a control line over max_control_line (4 KiB):
    # refused here instead, before anything is queued
    conn = NATSConnection()
    conn.receive_data(INFO)
    assert conn.next_event() is not NEED_DATA
    assert len(build(conn, "a." + "b" * 3000)) > 3000  # long, but fits
    with pytest.raises(NATSLocalError, match="max_control_line"):
        build(conn, "a." + "b" * MAX_CONTROL_LINE)
