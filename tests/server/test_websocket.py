"""MQTT over WebSockets (ws listeners) with a hand-written client.

The client below builds upgrade requests and frames byte by byte from RFC 6455 (it
shares no code with the server), so each test controls framing exactly: packets split
across frames and continuation frames, several packets in one frame, pings, text
frames, oversized messages, bad upgrade requests.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from helpers import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.protocol import Protocol, Side, State

from trio_mqtt.config import ListenerConfig
from trio_mqtt.mqtt.codec import PacketReader, encode
from trio_mqtt.mqtt.packets import Connack, Connect, Disconnect, ProtocolVersion, Publish
from trio_mqtt.peer import PeerInfo
from trio_mqtt.server.app import Broker
from trio_mqtt.server.websocket import MAX_UPGRADE_REQUEST_SIZE, WebSocketStream
from trio_mqtt.testing import open_test_broker

# Opcodes (RFC 6455 section 5.2)
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# MQTT 3.1.1 packets, by hand (spec section 3): CONNECT client id "ws" keep alive 60,
# SUBSCRIBE id 1 to "a/b" QoS 0, PINGREQ; and the broker's answers.
CONNECT = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02ws"
SUBSCRIBE = b"\x82\x08\x00\x01\x00\x03a/b\x00"
PINGREQ = b"\xc0\x00"
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
SUBACK_QOS0 = b"\x90\x03\x00\x01\x00"
PINGRESP = b"\xd0\x00"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # the sample key of RFC 6455 section 1.3


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x37\xfa\x21\x3d"
) -> bytes:
    """A client frame: FIN/opcode byte, MASK bit + length, masking key, masked payload."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return head + mask + masked


@attrs.frozen
class Frame:
    fin: bool
    opcode: int
    payload: bytes


@attrs.define
class WSClient:
    """One TCP connection speaking the client side of RFC 6455, by hand."""

    stream: trio.SocketStream
    buffer: bytearray = attrs.Factory(bytearray)

    @classmethod
    async def connect(cls, port: int) -> WSClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def http_response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of the server's HTTP response."""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in self.buffer:
                assert await self._fill(), f"closed before a response: {bytes(self.buffer)!r}"
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        with trio.fail_after(5):
            while len(rest) < length and await self._fill():
                rest = bytes(self.buffer).partition(b"\r\n\r\n")[2]
        self.buffer[:] = rest[length:]
        return int(status_line.split()[1]), headers, rest[:length]

    async def upgrade(self, path: str = "/mqtt", protocols: str | None = "mqtt") -> dict[str, str]:
        await self.send(upgrade_request(path, protocols))
        status, headers, _body = await self.http_response()
        assert status == 101, (status, headers)
        return headers

    async def receive_frame(self) -> Frame:
        with trio.fail_after(5):
            while True:
                parsed = self._parse()
                if parsed is not None:
                    return parsed
                assert await self._fill(), "connection closed"

    def _parse(self) -> Frame | None:
        if len(self.buffer) < 2:
            return None
        first, second = self.buffer[0], self.buffer[1]
        assert second & 0x80 == 0, "server frames are never masked"
        length, offset = second & 0x7F, 2
        if length == 126:
            if len(self.buffer) < 4:
                return None
            length, offset = int.from_bytes(self.buffer[2:4], "big"), 4
        elif length == 127:
            if len(self.buffer) < 10:
                return None
            length, offset = int.from_bytes(self.buffer[2:10], "big"), 10
        if len(self.buffer) < offset + length:
            return None
        payload = bytes(self.buffer[offset : offset + length])
        del self.buffer[: offset + length]
        return Frame(bool(first & 0x80), first & 0x0F, payload)

    async def receive_mqtt(self, size: int) -> bytes:
        """*size* bytes of MQTT from binary frames (asserting every frame is binary)."""
        data = b""
        while len(data) < size:
            received = await self.receive_frame()
            assert received.opcode in (BINARY, CONTINUATION), received
            data += received.payload
        return data

    async def expect_eof(self) -> bytes:
        """Whatever arrives until the server closes TCP."""
        with trio.fail_after(5):
            try:
                while await self._fill():
                    pass
            except trio.BrokenResourceError:
                pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


def upgrade_request(
    path: str = "/mqtt",
    protocols: str | None = "mqtt",
    *,
    method: str = "GET",
    extra: str = "",
    key: str = KEY,
    version: str = "13",
    upgrade: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: keep-alive, Upgrade"]
    lines += [f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Version: {version}"]
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


@asynccontextmanager
async def ws_broker(**settings: Any) -> AsyncIterator[Broker]:
    ws_path = settings.pop("ws_path", "/mqtt")
    listener = ListenerConfig(name="ws", host="127.0.0.1", port=0, transport="ws", ws_path=ws_path)
    async with open_test_broker(listeners=(listener,), **settings) as broker:
        yield broker


# ----------------------------------------------------------------------------- handshake


async def test_upgrade_answers_the_mqtt_subprotocol_and_carries_mqtt() -> None:
    async with ws_broker() as broker:
        client = await WSClient.connect(broker.port)
        headers = await client.upgrade(protocols="mqtt")
        assert headers["upgrade"].lower() == "websocket"
        assert headers["connection"].lower() == "upgrade"
        assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert headers["sec-websocket-protocol"] == "mqtt"
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        [summary] = broker.clients()
        assert summary.client_id == "ws"
        assert summary.peer.transport == "ws"
        assert summary.peer.client is not None and summary.peer.client.host == "127.0.0.1"
        await client.aclose()


@pytest.mark.parametrize(
    ("offered", "answered"),
    [("wamp, mqtt", "mqtt"), ("mqttv3.1", "mqttv3.1"), ("mqttv3.1,mqtt", "mqtt"), (None, None)],
)
async def test_subprotocol_choice(offered: str | None, answered: str | None) -> None:
    async with ws_broker() as broker:
        client = await WSClient.connect(broker.port)
        headers = await client.upgrade(protocols=offered)
        assert headers.get("sec-websocket-protocol") == answered
        await client.aclose()


async def test_path_with_query_string_is_the_mqtt_path() -> None:
    async with ws_broker(ws_path="/broker/mqtt") as broker:
        client = await WSClient.connect(broker.port)
        await client.upgrade(path="/broker/mqtt?token=abc")
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        await client.aclose()


@pytest.mark.parametrize(
    ("request_bytes", "status", "detail"),
    [
        (upgrade_request("/other"), 404, "path '/other' is not the MQTT endpoint '/mqtt'"),
        (upgrade_request(protocols="wamp, chat"), 400, "subprotocols wamp, chat offered"),
        (upgrade_request(method="POST"), 405, "method POST"),
        (upgrade_request(upgrade=False), 426, "not a WebSocket upgrade"),
        (upgrade_request(version="8"), 426, "unsupported Sec-WebSocket-Version"),
        (upgrade_request(key="short"), 400, "missing or invalid Sec-WebSocket-Key"),
        (b"GARBAGE\r\n\r\n", 400, "bad HTTP request"),
        (
            upgrade_request(extra="X-Big: " + "a" * MAX_UPGRADE_REQUEST_SIZE + "\r\n"),
            431,
            "bad HTTP request",
        ),
    ],
    ids=["path", "subprotocol", "method", "no-upgrade", "version", "key", "garbage", "too-big"],
)
async def test_bad_upgrade_is_refused_with_http_status(
    request_bytes: bytes, status: int, detail: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with ws_broker() as broker:
        client = await WSClient.connect(broker.port)
        with contextlib.suppress(trio.BrokenResourceError):  # closed while we still send
            await client.send(request_bytes)
        got_status, headers, body = await client.http_response()
        assert got_status == status
        assert headers["connection"] == "close"
        assert detail in body.decode()
        assert await client.expect_eof() == b""
        await client.aclose()
        handle = broker.listeners["ws"]
        await wait_until(lambda: handle.rejections["ws-upgrade"] == 1)
        # the broker keeps serving
        good = await WSClient.connect(broker.port)
        await good.upgrade()
        await good.aclose()
    [line] = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert f"WebSocket upgrade refused ({status})" in line.getMessage()
    assert detail in line.getMessage()


async def test_silent_client_is_closed_after_the_upgrade_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ws_broker(connect_timeout=0.3) as broker:
        start = trio.current_time()  # before the connection: its timer starts at accept
        client = await WSClient.connect(broker.port)
        await client.send(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert await client.expect_eof() == b""
        assert 0.29 <= trio.current_time() - start < 3
        await client.aclose()
        await wait_until(lambda: broker.listeners["ws"].rejections["ws-upgrade"] == 1)
    assert any("no WebSocket upgrade within 0.3s" in r.getMessage() for r in caplog.records)


async def test_client_closing_before_upgrade_is_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt.listener")
    async with ws_broker() as broker:
        client = await WSClient.connect(broker.port)
        await client.aclose()
        await wait_until(lambda: broker.listeners["ws"].rejections["ws-upgrade"] == 1)
    [line] = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert "closed before the WebSocket upgrade" in line.getMessage()


async def test_frame_sent_right_behind_the_upgrade_request_is_kept() -> None:
    async with ws_broker() as broker:
        client = await WSClient.connect(broker.port)
        await client.send(upgrade_request() + frame(BINARY, CONNECT))
        status, _headers, _body = await client.http_response()
        assert status == 101
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        await client.aclose()


# -------------------------------------------------------------------------------- frames


@asynccontextmanager
async def upgraded(**settings: Any) -> AsyncIterator[tuple[Broker, WSClient]]:
    async with ws_broker(**settings) as broker:
        client = await WSClient.connect(broker.port)
        await client.upgrade()
        try:
            yield broker, client
        finally:
            await client.aclose()


async def test_one_packet_across_many_frames_and_messages() -> None:
    async with upgraded() as (_broker, client):
        # CONNECT in three messages; the second one itself in three frames
        # (BINARY fin=0, CONTINUATION fin=0, CONTINUATION fin=1), the others unfragmented
        await client.send(frame(BINARY, CONNECT[:3]))
        await client.send(frame(BINARY, CONNECT[3:5], fin=False))
        await client.send(frame(CONTINUATION, CONNECT[5:9], fin=False))
        await client.send(frame(CONTINUATION, CONNECT[9:11]))
        await client.send(frame(BINARY, CONNECT[11:]))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED


async def test_several_packets_in_one_frame() -> None:
    async with upgraded() as (_broker, client):
        await client.send(frame(BINARY, CONNECT + SUBSCRIBE + PINGREQ))
        answers = CONNACK_ACCEPTED + SUBACK_QOS0 + PINGRESP
        assert await client.receive_mqtt(len(answers)) == answers


async def test_large_publish_in_many_small_frames_is_delivered() -> None:
    payload = bytes(range(256)) * 1200  # 307,200 bytes
    topic = b"big"
    # PUBLISH QoS 0: remaining length = 2 + len(topic) + len(payload), as a varint
    remaining = 2 + len(topic) + len(payload)
    varint = bytearray()
    while True:
        byte, remaining = remaining % 128, remaining // 128
        varint.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    publish = b"\x30" + bytes(varint) + len(topic).to_bytes(2, "big") + topic + payload
    async with upgraded() as (broker, client), broker.subscribe("big") as messages:
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        chunk = 4096
        pieces = [publish[i : i + chunk] for i in range(0, len(publish), chunk)]
        assert len(pieces) > 70
        for index, piece in enumerate(pieces):  # one message in 76 frames
            opcode = BINARY if index == 0 else CONTINUATION
            await client.send(frame(opcode, piece, fin=index == len(pieces) - 1))
        with trio.fail_after(5):
            message = await messages.receive()
        assert message.payload == payload


async def test_messages_to_the_client_are_binary_frames() -> None:
    async with upgraded() as (broker, client):
        await client.send(frame(BINARY, CONNECT + SUBSCRIBE))
        await client.receive_mqtt(len(CONNACK_ACCEPTED + SUBACK_QOS0))
        await broker.publish("a/b", b"hi")
        received = await client.receive_frame()
        assert (received.opcode, received.fin) == (BINARY, True)
        assert received.payload == b"\x30\x07\x00\x03a/bhi"


async def test_ping_is_answered_with_pong() -> None:
    async with upgraded() as (_broker, client):
        await client.send(frame(PING, b"are you there"))
        assert await client.receive_frame() == Frame(True, PONG, b"are you there")
        # ... and MQTT still works after it
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED


async def test_text_frame_closes_with_1003(caplog: pytest.LogCaptureFixture) -> None:
    async with upgraded() as (broker, client):
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        await client.send(frame(TEXT, b"hello"))
        close = await client.receive_frame()
        assert close.opcode == CLOSE
        assert close.payload[:2] == (1003).to_bytes(2, "big")
        await client.send(frame(CLOSE, close.payload[:2]))  # the closing handshake
        assert await client.expect_eof() == b""
        await wait_until(lambda: broker.clients() == [])
    assert any("text frame" in r.getMessage() for r in caplog.records)


async def test_message_larger_than_max_packet_size_carries_many_packets() -> None:
    # [MQTT-6.0.0-2]: packets need not line up with messages; only each MQTT packet is
    # bounded by max_packet_size. 600 PINGREQs (1,200 bytes) in one message of two
    # frames: every one is answered and the connection stays up.
    async with upgraded(max_packet_size=1024) as (broker, client):
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        await client.send(frame(BINARY, PINGREQ * 400, fin=False))
        await client.send(frame(CONTINUATION, PINGREQ * 200))
        assert await client.receive_mqtt(2 * 600) == PINGRESP * 600
        assert [c.client_id for c in broker.clients()] == ["ws"]


async def test_mqtt_packet_larger_than_max_packet_size_gets_disconnect_0x95() -> None:
    # A 5.0 PUBLISH of 2,000 bytes against max_packet_size 1024, in small frames: the
    # MQTT layer refuses it from its Remaining Length, as on any other transport.
    v5 = ProtocolVersion.V5
    publish = encode(Publish(topic="big", payload=bytes(2000)), v5)
    async with upgraded(max_packet_size=1024) as (broker, client):
        await client.send(frame(BINARY, encode(Connect(client_id="ws5", protocol_version=v5), v5)))
        reader = PacketReader(protocol_version=v5, server_side=False)
        packets: list[object] = []
        while not packets:
            packets += reader.feed((await client.receive_frame()).payload)
        assert isinstance(packets[0], Connack) and packets[0].reason_code == 0
        for start in range(0, 600, 100):
            await client.send(frame(BINARY, publish[start : start + 100]))
        [disconnect] = reader.feed((await client.receive_frame()).payload)
        assert isinstance(disconnect, Disconnect)
        assert disconnect.reason_code == 0x95  # Packet too large
        assert (await client.receive_frame()).opcode == CLOSE
        await wait_until(lambda: broker.clients() == [])


async def test_frame_of_many_packets_up_to_64_kib_passes_a_small_max_packet_size() -> None:
    # A frame is handed on once complete, so its length is bounded: by max_packet_size,
    # but never below 64 KiB, so that a client batching small packets is not refused.
    async with upgraded(max_packet_size=1024) as (broker, client):
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        await client.send(frame(BINARY, PINGREQ * 32_768))  # 65,536 bytes
        assert await client.receive_mqtt(2 * 32_768) == PINGRESP * 32_768
        assert [c.client_id for c in broker.clients()] == ["ws"]


async def test_frame_longer_than_the_limit_is_closed_with_1009(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "trio_mqtt.websocket")
    async with upgraded(max_packet_size=100_000) as (broker, client):
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        # only the header: the broker refuses the frame before its payload comes
        await client.send(bytes([0x82, 0x80 | 127]) + (100_001).to_bytes(8, "big") + b"\0" * 4)
        close = await client.receive_frame()
        assert close.opcode == CLOSE
        assert close.payload[:2] == (1009).to_bytes(2, "big")
        await client.expect_eof()
        await wait_until(lambda: broker.clients() == [])
    assert any("100001" in record.getMessage() for record in caplog.records)


async def test_a_quiet_connection_parks_and_a_frame_split_across_the_park_is_read() -> None:
    # As on plain TCP and TLS (test_idle_park.py): the reader waits for the socket under
    # the WebSocket, the keep-alive watch rings it to park after PARK_AFTER quiet, and the
    # client's next bytes resume it, even half a frame: the rest comes to the same
    # protocol buffer once the task that took the first half has parked again.
    async with upgraded() as (broker, client):
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        await wait_until(lambda: broker.parked_connections() == 1, "parked")
        ping = frame(BINARY, PINGREQ)
        await client.send(ping[:3])
        await wait_until(lambda: broker.parked_connections() == 0, "resumed")
        await wait_until(lambda: broker.parked_connections() == 1, "parked again", timeout=8)
        await client.send(ping[3:])
        assert await client.receive_mqtt(2) == PINGRESP
        await client.send(frame(PING, b"still there?"))
        pong = await client.receive_frame()
        assert (pong.opcode, pong.payload) == (PONG, b"still there?")


async def test_the_keep_alive_of_a_parked_connection_runs_out_on_time() -> None:
    connect = CONNECT[:10] + b"\x00\x02" + CONNECT[12:]  # keep alive 2 s: closed at 3 s
    async with upgraded() as (broker, client):
        await client.send(frame(BINARY, connect))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        start = trio.current_time()
        await wait_until(lambda: broker.parked_connections() == 1, "parked")
        close = await client.receive_frame()
        assert close.opcode == CLOSE
        assert 2.9 < trio.current_time() - start < 4.5
        await wait_until(lambda: broker.clients() == [], "closed")
        assert broker.parked_connections() == 0


async def test_unmasked_client_frame_is_a_protocol_error() -> None:
    async with upgraded() as (_broker, client):
        await client.send(bytes([0x82, len(CONNECT)]) + CONNECT)  # MASK bit clear
        close = await client.receive_frame()
        assert close.opcode == CLOSE
        assert close.payload[:2] == (1002).to_bytes(2, "big")
        assert await client.expect_eof() == b""


async def test_close_frame_is_answered_and_ends_the_session() -> None:
    async with upgraded() as (broker, client):
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        assert len(broker.clients()) == 1
        await client.send(frame(CLOSE, (1000).to_bytes(2, "big")))
        reply = await client.receive_frame()
        assert reply == Frame(True, CLOSE, (1000).to_bytes(2, "big"))
        assert await client.expect_eof() == b""
        await wait_until(lambda: broker.clients() == [])


async def test_broker_closing_sends_a_close_frame() -> None:
    async with upgraded() as (_broker, client):
        # a second CONNECT is a protocol violation: the broker closes the connection
        await client.send(frame(BINARY, CONNECT))
        assert await client.receive_mqtt(4) == CONNACK_ACCEPTED
        await client.send(frame(BINARY, CONNECT))
        rest = await client.expect_eof()
        # a Close frame (1000), unmasked: 0x88, length 2, the code
        assert rest.endswith(b"\x88\x02" + (1000).to_bytes(2, "big")), rest


def test_base64_key_in_test_is_sixteen_bytes() -> None:
    assert len(base64.b64decode(KEY)) == 16


# ------------------------------------------------------------------- framing, no broker
# WebSocketStream over a memory stream: the frames a client sends for each packet are
# unmasked by the stream itself, every other frame goes to websockets; whatever the
# mix and wherever the bytes are cut, the payload comes out whole and in order.


def _websocket_stream(
    max_frame_size: int = 65536,
) -> tuple[WebSocketStream, trio.testing.MemorySendStream, trio.testing.MemorySendStream]:
    """A server-side WebSocketStream on memory streams; what the client sends it, and
    what it sent the client."""
    to_server, from_client = trio.testing.memory_stream_one_way_pair()
    to_client = trio.testing.MemorySendStream()
    transport = trio.StapledStream(to_client, from_client)
    protocol = Protocol(Side.SERVER, state=State.OPEN, max_size=(None, max_frame_size))
    peer = PeerInfo(listener="ws", transport="ws")
    stream = WebSocketStream(transport, protocol, peer=peer, max_frame_size=max_frame_size)
    return stream, to_server, to_client


def _sent_so_far(sent: trio.testing.MemorySendStream) -> bytes:
    try:
        return bytes(sent.get_data_nowait())
    except trio.WouldBlock:
        return b""


async def _payload(stream: WebSocketStream, size: int) -> bytes:
    data = b""
    with trio.fail_after(5):
        while len(data) < size:
            received = await stream.receive_some()
            assert received, f"end of stream after {data!r}"
            data += received
    return data


_piece = st.binary(min_size=0, max_size=300)
_frames = st.lists(
    st.one_of(
        st.tuples(st.just("binary"), _piece),
        st.tuples(st.just("fragmented"), st.lists(_piece, min_size=2, max_size=4)),
        st.tuples(st.just("ping"), st.binary(max_size=125)),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(_frames, st.binary(min_size=4, max_size=4), st.lists(st.integers(1, 400), max_size=12))
def test_payload_comes_out_whole_however_frames_mix_and_bytes_are_cut(
    frames: list[tuple[str, Any]], mask: bytes, cuts: list[int]
) -> None:
    wire = b""
    expected = b""
    pongs = b""
    for kind, content in frames:
        if kind == "binary":
            wire += frame(BINARY, content, mask=mask)
            expected += content
        elif kind == "fragmented":  # with a ping in the middle, as RFC 6455 allows
            wire += frame(BINARY, content[0], fin=False, mask=mask)
            wire += frame(PING, b"mid", mask=mask)
            pongs += bytes([0x80 | PONG, 3]) + b"mid"
            for index, part in enumerate(content[1:], 2):
                wire += frame(CONTINUATION, part, fin=index == len(content), mask=mask)
            expected += b"".join(content)
        else:
            wire += frame(PING, content, mask=mask)
            pongs += bytes([0x80 | PONG, len(content)]) + content

    async def check() -> None:
        stream, to_server, sent = _websocket_stream()
        chunks, rest = [], wire
        for cut in cuts:
            chunks.append(rest[:cut])
            rest = rest[cut:]
        chunks.append(rest)
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for chunk in chunks:
                    if chunk:
                        await to_server.send_all(chunk)
                        await trio.testing.wait_all_tasks_blocked()
                await to_server.aclose()

            nursery.start_soon(send)
            assert await _payload(stream, len(expected)) == expected
            assert await stream.receive_some() == b""  # EOF, nothing more
        assert _sent_so_far(sent) == pongs

    trio.run(check)


@pytest.mark.parametrize(
    ("before", "code"),
    [
        (frame(BINARY, b"start", fin=False), 1002),  # a new message inside a message
        (b"", None),  # (the same frame on its own: delivered)
    ],
    ids=["inside-a-fragmented-message", "alone"],
)
async def test_a_whole_binary_frame_inside_a_fragmented_message_is_refused(
    before: bytes, code: int | None
) -> None:
    stream, to_server, sent = _websocket_stream()
    await to_server.send_all(before + frame(BINARY, b"whole"))
    if code is None:
        assert await stream.receive_some() == b"whole"
        return
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()
    close = _sent_so_far(sent)
    assert close[0] == 0x80 | CLOSE and close[2:4] == code.to_bytes(2, "big")


async def test_no_payload_is_taken_after_a_close_frame() -> None:
    stream, to_server, sent = _websocket_stream()
    await to_server.send_all(
        frame(BINARY, b"before") + frame(CLOSE, (1000).to_bytes(2, "big")) + frame(BINARY, b"after")
    )
    assert await stream.receive_some() == b"before"
    assert await stream.receive_some() == b""
    assert _sent_so_far(sent)[:4] == bytes([0x80 | CLOSE, 2, 0x03, 0xE8])


async def test_a_frame_announced_longer_than_the_limit_is_refused_from_its_header() -> None:
    """Closed with 1009 as soon as the length is read: the payload is not waited for."""
    stream, to_server, sent = _websocket_stream(max_frame_size=1024)
    await to_server.send_all(bytes([0x80 | BINARY, 0x80 | 127]) + (1 << 40).to_bytes(8, "big"))
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()
    close = _sent_so_far(sent)
    assert close[0] == 0x80 | CLOSE and close[2:4] == (1009).to_bytes(2, "big")
