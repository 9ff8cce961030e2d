"""Load generator workers: each runs in its own OS process with raw blocking sockets.

A worker is started by :func:`run_worker` with a task (a frozen attrs object saying what
to do), one end of a pipe and two shared events. It connects and subscribes, reports
``("ready", None)``, waits for ``go``, does its timed work, and reports
``("result", dict)`` (or ``("error", traceback)``). ``stop`` tells it to give up early;
every loop is also bounded by the task's ``deadline_s``.

Packets are built by :mod:`benchmarks.wire` before ``go``; the timed part only moves
pre-built bytes and parses what comes back. Timestamps are ``time.perf_counter()``,
which is CLOCK_MONOTONIC on Linux and so comparable between processes.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import selectors
import socket
import ssl
import struct
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import attrs

from benchmarks.wire import (
    CONNACK_ACCEPTED,
    DISCONNECT,
    PAYLOAD,
    PINGREQ,
    PINGRESP,
    DeliveryParser,
    GeneralPacket,
    WireError,
    WsDeframer,
    connect_packet,
    make_payload,
    parse_publish,
    proxy_v1_header,
    proxy_v2_header,
    puback_packet,
    publish_packet,
    split_packets,
    subscribe_packet,
    ws_frame,
)

__all__ = [
    "ConnectionTask",
    "LatencyTask",
    "PublisherTask",
    "RetainedTask",
    "SubscriberTask",
    "Task",
    "publish_chunks",
    "run_worker",
]

HOST = "127.0.0.1"
RECV_SIZE = 1 << 18
#: QoS 0 subscribers ask the kernel (SO_RCVLOWAT) to wake them only once this many bytes
#: are waiting (or all that is still expected, if less): one wake-up and one recv per
#: ~900 messages instead of per message, so that the load generator's CPU use stays small
#: next to the broker's even when the broker writes one small packet at a time.
RECV_BATCH = 32 * 1024
#: QoS 1: wake up for this many deliveries (subscriber) or PUBACKs (publisher) at once.
QOS1_BATCH = 20
#: How long a worker waits for ``go`` before giving up.
GO_TIMEOUT = 120.0
#: Give up waiting for PINGRESPs after this long without any.
PING_STALL_S = 10.0
#: QoS 0 publishers write their stream in chunks of about this many bytes and note when
#: each chunk's write began: with the subscriber's read times this gives every message's
#: end-to-end latency, so that a backlog growing in the broker shows.
PUBLISH_CHUNK = 64 * 1024
#: How a load process reaches the broker: plain TCP, MQTT over TLS, MQTT over WebSocket.
TRANSPORTS = ("tcp", "tls", "ws")
#: The HTTP path of the WebSocket endpoint (trio-mqtt's default; mosquitto takes any).
WS_PATH = "/mqtt"


class WorkerTimeout(Exception):
    """A worker ran past its deadline; the message says where."""


@attrs.frozen
class PublisherTask:
    """Publish *count* messages as publisher *source* on *topic*.

    QoS 0: the whole stream is one pre-built buffer written with ``sendall``, then a
    PINGREQ whose PINGRESP shows that the broker has read everything before it. QoS 1:
    at most *window* messages unacknowledged at any time. Over a WebSocket the QoS 0
    stream goes in frames of many packets each, or with *frame_each_packet* one frame
    per PUBLISH, as paho-mqtt and MQTT.js send them.
    """

    port: int
    client_id: str
    topic: str
    source: int
    count: int
    deadline_s: float
    qos: int = 0
    window: int = 1
    proxy: bool = False
    payload_size: int = PAYLOAD.size
    transport: str = "tcp"
    frame_each_packet: bool = False


@attrs.frozen
class SubscriberTask:
    """Hold one connection per client id subscribed to *topic_filter*; verify deliveries.

    Each connection must receive *expected_per_connection* messages, publisher ``s``'s on
    ``source_topics[s]`` with sequence numbers in order.
    """

    port: int
    client_ids: tuple[str, ...]
    topic_filter: str
    qos: int
    expected_per_connection: int
    source_topics: tuple[tuple[int, str], ...]
    deadline_s: float
    proxy: bool = False
    payload_size: int = PAYLOAD.size
    transport: str = "tcp"


@attrs.frozen
class LatencyTask:
    """One client subscribed to *topic* publishes QoS 1 there, one message at a time.

    Latency is the time from writing the PUBLISH to reading its delivery; the next
    PUBLISH goes out once both the delivery and the PUBACK are in (window 1). With a
    *publish_port*, a second connection (client id ``<client_id>-pub``, to that port:
    another node of a cluster, or the same broker) publishes instead. The time from
    writing the PUBLISH to reading its PUBACK is recorded too (``puback_ns``).
    """

    port: int
    client_id: str
    topic: str
    count: int
    warmup: int
    deadline_s: float
    publish_port: int = 0
    transport: str = "tcp"  # or "tls": both connections (the ports must be TLS listeners)


@attrs.frozen
class ConnectionTask:
    """Open *count* MQTT connections (at most *concurrency* handshakes at once), hold them.

    After ``go`` it connects; it reports the result, then on the pipe command ``"ping"``
    sends PINGREQ on every connection and reports how many PINGRESPs came back; on
    ``"close"`` (or ``stop``) it closes them all. *proxy* ``"v1"`` or ``"v2"``: each
    connection starts with a PROXY protocol header of that version. *rate*: new
    connections a second (0: as fast as the handshakes go).
    """

    port: int
    client_prefix: str
    count: int
    concurrency: int
    deadline_s: float
    proxy: str = ""
    rate: float = 0.0


@attrs.frozen
class RetainedTask:
    """Store *count* retained messages, then time a ``#`` subscription receiving them."""

    port: int
    client_prefix: str
    count: int
    deadline_s: float


Task = PublisherTask | SubscriberTask | LatencyTask | ConnectionTask | RetainedTask


def run_worker(task: Task, pipe: Connection, go: Event, stop: Event) -> None:
    """Process entry point: run *task* and report through *pipe* (never raises)."""
    try:
        from benchmarks.brokers import raise_fd_limit

        raise_fd_limit()
        if isinstance(task, PublisherTask):
            result = _publisher(task, pipe, go, stop)
        elif isinstance(task, SubscriberTask):
            result = _subscriber(task, pipe, go, stop)
        elif isinstance(task, LatencyTask):
            result = _latency(task, pipe, go)
        elif isinstance(task, ConnectionTask):
            result = _connections(task, pipe, go, stop)
        else:
            result = _retained(task, pipe, go)
        pipe.send(("result", result))
    except BaseException:
        with contextlib.suppress(OSError):
            pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


# --- helpers -----------------------------------------------------------------------


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.perf_counter()
    if left <= 0:
        raise WorkerTimeout(f"deadline passed while {what}")
    return left


def _recv_exactly(sock: socket.socket, size: int, deadline: float, what: str) -> bytes:
    data = bytearray()
    while len(data) < size:
        sock.settimeout(_remaining(deadline, what))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise WireError(f"connection closed by the broker while {what}")
        data += chunk
    return bytes(data)


def proxy_header(sock: socket.socket, port: int, version: str = "v2") -> bytes:
    """The header a proxy would send for this connection to ``port`` on HOST (the
    socket's own address as the client's)."""
    source = sock.getsockname()
    build = proxy_v1_header if version == "v1" else proxy_v2_header
    return build((source[0], source[1]), (HOST, port))


class WsSocket:
    """A client's WebSocket over a socket: ``sendall`` sends one masked binary frame,
    ``send_framed`` pre-built frames, ``recv`` returns the MQTT bytes of the server's
    frames (at least one byte, b"" at the end; raises BlockingIOError in non-blocking
    mode while no complete frame is in). Everything else is the socket's."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.deframer = WsDeframer()
        self._pending = self.deframer.feed(leftover)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def fileno(self) -> int:
        return self.sock.fileno()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(ws_frame(data))

    def send_framed(self, frames: bytes) -> None:
        self.sock.sendall(frames)

    def recv(self, size: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        while True:
            raw = self.sock.recv(size)
            if not raw:
                return b""
            data = self.deframer.feed(raw)
            if data:
                return data
            if self.deframer.closed:
                return b""

    def close(self) -> None:
        self.sock.close()


def _ws_upgrade(sock: socket.socket, port: int, deadline: float) -> WsSocket:
    """The HTTP upgrade to a WebSocket carrying MQTT (subprotocol ``mqtt``)."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {WS_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        sock.settimeout(_remaining(deadline, "waiting for the WebSocket upgrade"))
        chunk = sock.recv(4096)
        if not chunk:
            raise WireError(f"connection closed during the WebSocket upgrade: {response!r}")
        response += chunk
    head, _, leftover = response.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise WireError(f"WebSocket upgrade refused: {head[:200]!r}")
    return WsSocket(sock, leftover)


def _tls_context() -> ssl.SSLContext:
    """TLS to the benchmark's self-signed certificate: encrypted, not verified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _open(
    port: int, client_id: str, deadline: float, *, proxy: bool = False, transport: str = "tcp"
) -> Any:
    """Connect, (PROXY v2 header,) (TLS or WebSocket handshake,) CONNECT, and check the
    CONNACK; a blocking socket (an SSLSocket for TLS, a :class:`WsSocket` for ws)."""
    sock: Any = socket.create_connection((HOST, port), timeout=_remaining(deadline, "connecting"))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = proxy_header(sock, port) if proxy else b""
    if transport == "tcp":
        sock.sendall(header + connect_packet(client_id))
    else:
        if header:
            sock.sendall(header)
        if transport == "tls":
            sock = _tls_context().wrap_socket(sock)
        elif transport == "ws":
            sock = _ws_upgrade(sock, port, deadline)
        else:
            raise ValueError(f"unknown transport {transport!r} (one of {TRANSPORTS})")
        sock.sendall(connect_packet(client_id))
    connack = _recv_exactly(sock, 4, deadline, f"waiting for CONNACK of {client_id}")
    if connack != CONNACK_ACCEPTED:
        raise WireError(f"{client_id}: CONNACK {connack.hex()} instead of {CONNACK_ACCEPTED.hex()}")
    return sock


def _subscribe(sock: socket.socket, topic_filter: str, qos: int, deadline: float) -> None:
    sock.sendall(subscribe_packet(1, topic_filter, qos))
    suback = _recv_exactly(sock, 5, deadline, f"waiting for SUBACK of {topic_filter!r}")
    if suback != b"\x90\x03\x00\x01" + bytes([qos]):
        raise WireError(f"SUBACK {suback.hex()} for {topic_filter!r} at QoS {qos}")


def _ping(sock: socket.socket, deadline: float) -> float:
    """PINGREQ, wait for PINGRESP; the broker has now read everything sent before."""
    sock.sendall(PINGREQ)
    reply = _recv_exactly(sock, 2, deadline, "waiting for PINGRESP")
    if reply != PINGRESP:
        raise WireError(f"expected PINGRESP, got {reply.hex()}")
    return time.perf_counter()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(DISCONNECT)
    sock.close()


def _wait_go(go: Event) -> None:
    if not go.wait(GO_TIMEOUT):
        raise WorkerTimeout("no go signal")


# --- publisher ----------------------------------------------------------------------


def publish_chunks(task: PublisherTask) -> list[tuple[int, bytes]]:
    """A QoS 0 publisher's stream as (first sequence number, bytes) chunks of about
    ``PUBLISH_CHUNK`` bytes, already framed for a WebSocket: a frame per chunk, or per
    PUBLISH with *frame_each_packet*."""
    topic = task.topic.encode()
    size = len(publish_packet(topic, make_payload(task.source, 0, task.payload_size)))
    per_chunk = max(1, PUBLISH_CHUNK // size)
    frame = ws_frame if task.transport == "ws" else bytes
    each, whole = (frame, bytes) if task.frame_each_packet else (bytes, frame)
    chunks = []
    for first in range(0, task.count, per_chunk):
        chunk = b"".join(
            each(publish_packet(topic, make_payload(task.source, seq, task.payload_size)))
            for seq in range(first, min(first + per_chunk, task.count))
        )
        chunks.append((first, whole(chunk)))
    return chunks


def _publisher(task: PublisherTask, pipe: Connection, go: Event, stop: Event) -> dict[str, Any]:
    deadline = time.perf_counter() + task.deadline_s
    sock = _open(task.port, task.client_id, deadline, proxy=task.proxy, transport=task.transport)
    topic = task.topic.encode()
    chunks: list[tuple[int, bytes]] = []
    if task.qos == 0:
        chunks = publish_chunks(task)
        packets: list[bytes] = []
    else:
        packets = [
            publish_packet(
                topic,
                make_payload(task.source, seq, task.payload_size),
                qos=1,
                packet_id=seq % 65535 + 1,
            )
            for seq in range(task.count)
        ]
    pipe.send(("ready", None))
    _wait_go(go)
    deadline = time.perf_counter() + task.deadline_s
    cpu_start = time.process_time()
    start = time.perf_counter()
    sends: list[tuple[int, float]] = []
    if task.qos == 0:
        sock.settimeout(_remaining(deadline, "publishing"))
        write = sock.send_framed if isinstance(sock, WsSocket) else sock.sendall
        for first, chunk in chunks:
            sends.append((first, time.perf_counter()))
            write(chunk)
        written = time.perf_counter()
        acked = _ping(sock, deadline)
    else:
        lowat = task.transport == "tcp"
        written = acked = _publish_windowed(
            sock, packets, task.window, deadline, stop, sends, lowat=lowat
        )
    result = {
        "start": start,
        "written": written,
        "acked": acked,
        "sent": task.count,
        "sends": sends,
        "cpu_s": time.process_time() - cpu_start,
    }
    _close(sock)
    return result


def _publish_windowed(
    sock: socket.socket,
    packets: list[bytes],
    window: int,
    deadline: float,
    stop: Event,
    sends: list[tuple[int, float]],
    *,
    lowat: bool = True,
) -> float:
    """Send QoS 1 *packets* with at most *window* unacknowledged; time of the last PUBACK.

    *sends* gets (first sequence number, time) of every write, for end-to-end latency.
    *lowat* False (TLS, WebSocket): no SO_RCVLOWAT, whose byte counts would be wrong.
    """
    total = len(packets)
    sent = min(window, total)
    batch = min(QOS1_BATCH, window) if lowat else 1
    if lowat:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 4 * min(batch, total))
    sends.append((0, time.perf_counter()))
    sock.sendall(b"".join(packets[:sent]))
    acked = 0
    expected_id = 1
    buffer = bytearray()
    while acked < total:
        sock.settimeout(min(_remaining(deadline, f"waiting for PUBACK {acked + 1}/{total}"), 1.0))
        try:
            data = sock.recv(RECV_SIZE)
        except TimeoutError:
            if stop.is_set():
                raise WorkerTimeout(f"stopped after {acked}/{total} PUBACKs") from None
            continue
        if not data:
            raise WireError(f"connection closed after {acked}/{total} PUBACKs")
        buffer += data
        complete = len(buffer) // 4
        for first, length, packet_id in struct.iter_unpack(">BBH", bytes(buffer[: complete * 4])):
            if first != 0x40 or length != 2:
                raise WireError(f"expected PUBACK, got first byte {first:#x}")
            if packet_id != expected_id:
                raise WireError(f"PUBACK for {packet_id}, expected {expected_id} (in order)")
            expected_id = expected_id % 65535 + 1
        del buffer[: complete * 4]
        acked += complete
        if lowat and 0 < total - acked < batch:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, 4 * (total - acked) - len(buffer))
            )
        more = min(total, acked + window) - sent
        if more > 0:
            sends.append((sent, time.perf_counter()))
            sock.sendall(b"".join(packets[sent : sent + more]))
            sent += more
    return time.perf_counter()


# --- subscriber ---------------------------------------------------------------------


def _subscriber(task: SubscriberTask, pipe: Connection, go: Event, stop: Event) -> dict[str, Any]:
    deadline = time.perf_counter() + task.deadline_s
    topics = {source: topic.encode() for source, topic in task.source_topics}
    lengths = {len(topic) for topic in topics.values()}
    if len(lengths) != 1:
        raise ValueError("all publisher topics of a scenario must have the same length")
    (topic_length,) = lengths
    selector = selectors.DefaultSelector()
    parsers: dict[socket.socket, DeliveryParser] = {}
    # SO_RCVLOWAT counts the bytes of the MQTT stream: not those of TLS records or frames
    lowat = task.transport == "tcp"
    for client_id in task.client_ids:
        sock = _open(task.port, client_id, deadline, proxy=task.proxy, transport=task.transport)
        _subscribe(sock, task.topic_filter, task.qos, deadline)
        sock.setblocking(False)
        parser = DeliveryParser(
            topic_length, task.qos, source_topics=topics, payload_size=task.payload_size
        )
        parsers[sock] = parser
        if lowat:
            _set_low_water_mark(sock, parser, task.expected_per_connection)
        selector.register(sock, selectors.EVENT_READ, sock)
    pipe.send(("ready", None))
    _wait_go(go)
    deadline = time.perf_counter() + task.deadline_s
    cpu_start = time.process_time()
    expected = task.expected_per_connection
    incomplete = set(parsers)
    first_rx = last_rx = 0.0
    stopped = False
    # (time, next expected sequence number of each publisher) after each read: with the
    # publishers' send times this gives every message's end-to-end latency
    progress: list[tuple[float, dict[int, int]]] = []
    while incomplete:
        now = time.perf_counter()
        if now > deadline:
            stopped = True
            break
        events = selector.select(0.05)
        if not events:
            if stop.is_set():
                stopped = True
                break
            continue
        for key, _mask in events:
            sock = key.data
            try:
                data = sock.recv(RECV_SIZE)
                # TLS: what OpenSSL already decrypted is not in the kernel's buffer any
                # more, so select() would not report it
                while data and isinstance(sock, ssl.SSLSocket) and sock.pending():
                    data += sock.recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            parser = parsers[sock]
            if not data:
                parser.errors.append("connection closed by the broker")
                parser.error_count += 1
                selector.unregister(sock)
                incomplete.discard(sock)
                continue
            last_rx = time.perf_counter()
            if not first_rx:
                first_rx = last_rx
            parser.feed(data)
            if len(parsers) == 1:
                progress.append((last_rx, dict(parser.next_seq)))
            if parser.pending_acks:
                sock.setblocking(True)
                sock.settimeout(_remaining(deadline, "sending PUBACKs"))
                sock.sendall(parser.pending_acks)
                sock.setblocking(False)
                parser.pending_acks.clear()
            if parser.received >= expected:
                incomplete.discard(sock)
            elif not lowat:
                pass
            elif parser.qos or (
                (expected - parser.received) * parser.packet_size - parser.buffered < 2 * RECV_BATCH
            ):
                _set_low_water_mark(sock, parser, expected)
    cpu_s = time.process_time() - cpu_start
    selector.close()
    received = [parser.received for parser in parsers.values()]
    errors: list[str] = []
    error_count = 0
    for parser in parsers.values():
        error_count += parser.error_count
        errors.extend(parser.errors[: 10 - len(errors)])
        for packet in parser.other_packets:
            error_count += 1
            if len(errors) < 10:
                errors.append(f"unexpected packet {packet.first_byte:#04x} {packet.body.hex()}")
    for sock in parsers:
        sock.setblocking(True)
        _close(sock)
    return {
        "first_rx": first_rx,
        "last_rx": last_rx,
        "received": received,
        "expected_per_connection": expected,
        "error_count": error_count,
        "errors": errors,
        "stopped": stopped,
        "progress": progress,
        "cpu_s": cpu_s,
    }


def _set_low_water_mark(sock: socket.socket, parser: DeliveryParser, expected: int) -> None:
    """Wake up for a batch of deliveries, or for exactly what is still to come.

    QoS 0: RECV_BATCH bytes. QoS 1: QOS1_BATCH messages, well below the broker's
    in-flight limit (it sends no more until we PUBACK, so a batch must fit under it).
    """
    still_to_come = (expected - parser.received) * parser.packet_size - parser.buffered
    batch = QOS1_BATCH * parser.packet_size if parser.qos else RECV_BATCH
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, min(batch, still_to_come)))


# --- QoS 1 latency ------------------------------------------------------------------


def _latency(task: LatencyTask, pipe: Connection, go: Event) -> dict[str, Any]:
    deadline = time.perf_counter() + task.deadline_s
    sock = _open(task.port, task.client_id, deadline, transport=task.transport)
    _subscribe(sock, task.topic, 1, deadline)
    publisher = sock
    if task.publish_port:
        publisher = _open(
            task.publish_port, f"{task.client_id}-pub", deadline, transport=task.transport
        )
    topic = task.topic.encode()
    total = task.warmup + task.count
    packets = [
        publish_packet(topic, make_payload(0, seq), qos=1, packet_id=seq % 65535 + 1)
        for seq in range(total)
    ]
    pipe.send(("ready", None))
    _wait_go(go)
    deadline = time.perf_counter() + task.deadline_s
    started = time.perf_counter()
    latencies_ns: list[int] = []
    puback_ns: list[int] = []
    errors: list[str] = []
    # one buffer per connection (the subscriber's first: deliveries and their PUBACKs
    # from us; then the publisher's, if it is another connection: its PUBACKs)
    connections = [(sock, bytearray())]
    if publisher is not sock:
        connections.append((publisher, bytearray()))
    # Busy-poll: a client that sleeps in poll() adds its own wake-up time (tens of us on
    # an idle VM) to every sample; spinning on a non-blocking recv keeps that out, so
    # what is measured is the broker's turnaround plus the loopback.
    for conn, _buffer in connections:
        conn.setblocking(False)
    for seq in range(total):
        packet_id = seq % 65535 + 1
        start = time.perf_counter_ns()
        if publisher.send(packets[seq]) != len(packets[seq]):  # tiny: the buffer is empty
            raise WireError("short send of a 30-byte PUBLISH")
        delivered_at = 0
        got_puback = False
        puback_at = 0
        while not (delivered_at and got_puback):
            what = f"waiting for message {seq}"
            if len(connections) == 1:
                data = _spin_recv(sock, deadline, what)
                ready = [(sock, connections[0][1], data)]
            else:
                ready = _spin_recv_any(connections, deadline, what)
            now = time.perf_counter_ns()
            for conn, buffer, data in ready:
                buffer.extend(data)
                for packet in split_packets(buffer):
                    if packet.packet_type == 0x3 and conn is sock:
                        _latency_packet(packet, seq, packet_id, topic, sock, errors)
                        delivered_at = delivered_at or now
                    elif packet.packet_type == 0x4 and conn is publisher:
                        got_puback |= _latency_packet(packet, seq, packet_id, topic, sock, errors)
                        puback_at = puback_at or now
                    else:
                        errors.append(f"unexpected packet {packet.first_byte:#04x}")
        if seq >= task.warmup:
            latencies_ns.append(delivered_at - start)
            puback_ns.append(puback_at - start)
    ended = time.perf_counter()
    for conn, _buffer in connections:
        conn.setblocking(True)
        _close(conn)
    return {
        "latencies_ns": latencies_ns,
        "puback_ns": puback_ns,
        "start": started,
        "end": ended,
        "errors": errors,
        "error_count": len(errors),
    }


def _spin_recv_any(
    connections: list[tuple[socket.socket, bytearray]], deadline: float, what: str
) -> list[tuple[socket.socket, bytearray, bytes]]:
    """Spin over non-blocking sockets until at least one has data; what each had."""
    spins = 0
    while True:
        ready = []
        for conn, buffer in connections:
            try:
                data = conn.recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):  # (TLS: no whole record yet)
                continue
            if not data:
                raise WireError(f"connection closed while {what}")
            ready.append((conn, buffer, data))
        if ready:
            return ready
        spins += 1
        if spins % 1024 == 0:
            _remaining(deadline, what)


def _spin_recv(sock: socket.socket, deadline: float, what: str) -> bytes:
    """recv on a non-blocking socket, spinning until data arrives (bounded by *deadline*)."""
    spins = 0
    while True:
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError):  # (TLS: no whole record yet)
            spins += 1
            if spins % 1024 == 0:
                _remaining(deadline, what)
            continue
        if not data:
            raise WireError(f"connection closed while {what}")
        return data


def _latency_packet(
    packet: GeneralPacket,
    seq: int,
    packet_id: int,
    topic: bytes,
    sock: socket.socket,
    errors: list[str],
) -> bool:
    """Handle one packet of the latency loop; True if it is the PUBACK for *packet_id*."""
    if packet.packet_type == 0x4:
        (acked_id,) = struct.unpack(">H", packet.body[:2])
        if acked_id != packet_id:
            errors.append(f"PUBACK for {acked_id}, expected {packet_id}")
        return True
    if packet.packet_type != 0x3:
        errors.append(f"unexpected packet {packet.first_byte:#04x}")
        return False
    delivered_topic, delivered_id, payload = parse_publish(packet)
    if delivered_id is not None:
        sock.sendall(puback_packet(delivered_id))
    if delivered_topic != topic or payload != make_payload(0, seq):
        errors.append(f"message {seq}: wrong delivery {delivered_topic!r} {payload.hex()}")
    return False


# --- idle connections ---------------------------------------------------------------


@attrs.define
class _Handshake:
    sock: socket.socket
    client_id: str
    sent: bool = False
    reply: bytes = b""


def _connections(task: ConnectionTask, pipe: Connection, go: Event, stop: Event) -> dict[str, Any]:
    pipe.send(("ready", None))
    _wait_go(go)
    deadline = time.perf_counter() + task.deadline_s
    cpu_start = time.process_time()
    start = time.perf_counter()
    selector = selectors.DefaultSelector()
    connected: list[socket.socket] = []
    errors: list[str] = []
    failed = 0
    next_index = 0
    in_progress = 0
    while (next_index < task.count or in_progress) and not stop.is_set():
        if time.perf_counter() > deadline:
            errors.append(f"deadline passed with {len(connected)} connected")
            break
        due = task.count if not task.rate else int((time.perf_counter() - start) * task.rate) + 1
        while in_progress < task.concurrency and next_index < min(task.count, due):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex((HOST, task.port))
            if err not in (0, errno.EINPROGRESS):
                failed += 1
                errors.append(f"connect: errno {err}")
                sock.close()
                next_index += 1
                continue
            handshake = _Handshake(sock, f"{task.client_prefix}{next_index}")
            selector.register(sock, selectors.EVENT_WRITE, handshake)
            next_index += 1
            in_progress += 1
        for key, _mask in selector.select(0.5 if not task.rate else 0.005):
            handshake = key.data
            assert isinstance(handshake, _Handshake)
            sock = handshake.sock
            try:
                if not handshake.sent:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect failed")
                    header = proxy_header(sock, task.port, task.proxy) if task.proxy else b""
                    sock.send(header + connect_packet(handshake.client_id))
                    handshake.sent = True
                    selector.modify(sock, selectors.EVENT_READ, handshake)
                    continue
                chunk = sock.recv(4 - len(handshake.reply))
                if not chunk:
                    raise WireError("closed before CONNACK")
                handshake.reply += chunk
                if len(handshake.reply) < 4:
                    continue
                if handshake.reply != CONNACK_ACCEPTED:
                    raise WireError(f"CONNACK {handshake.reply.hex()}")
            except (OSError, WireError) as exc:
                failed += 1
                if len(errors) < 10:
                    errors.append(f"{handshake.client_id}: {exc}")
                selector.unregister(sock)
                sock.close()
                in_progress -= 1
                continue
            selector.unregister(sock)
            connected.append(sock)
            in_progress -= 1
    end = time.perf_counter()
    cpu_s = time.process_time() - cpu_start
    selector.close()
    pipe.send(
        (
            "connected",
            {
                "start": start,
                "end": end,
                "connected": len(connected),
                "failed": failed,
                "errors": errors,
                "cpu_s": cpu_s,
            },
        )
    )
    pongs = 0
    while not stop.is_set() and time.perf_counter() < deadline:
        if not pipe.poll(0.2):
            continue
        command = pipe.recv()
        if command == "ping":
            ping_start = time.perf_counter()
            pongs = _ping_all(connected, deadline)
            pipe.send(("pinged", {"pongs": pongs, "seconds": time.perf_counter() - ping_start}))
        elif command == "close":
            break
    for sock in connected:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    return {"connected": len(connected), "pongs": pongs}


def _ping_all(connected: list[socket.socket], deadline: float) -> int:
    """PINGREQ on every connection; how many answered with PINGRESP.

    Waits until all have answered, the deadline passes, or no answer came for
    PING_STALL_S seconds (a broker busy with 10,000 PINGREQs at once may pause).
    """
    selector = selectors.DefaultSelector()
    for sock in connected:
        with contextlib.suppress(OSError):
            sock.send(PINGREQ)
            selector.register(sock, selectors.EVENT_READ, (sock, bytearray()))
    pongs = 0
    waiting = len(selector.get_map())
    last_progress = time.perf_counter()
    while waiting and time.perf_counter() < deadline:
        events = selector.select(0.5)
        if not events:
            if time.perf_counter() - last_progress > PING_STALL_S:
                break
            continue
        last_progress = time.perf_counter()
        for key, _mask in events:
            sock, reply = key.data
            try:
                chunk = sock.recv(2 - len(reply))
            except OSError:
                chunk = b""
            reply += chunk
            if len(reply) == 2 or not chunk:
                selector.unregister(sock)
                waiting -= 1
                pongs += reply == PINGRESP
    selector.close()
    return pongs


# --- retained -----------------------------------------------------------------------


def _retained(task: RetainedTask, pipe: Connection, go: Event) -> dict[str, Any]:
    deadline = time.perf_counter() + task.deadline_s
    publisher = _open(task.port, f"{task.client_prefix}pub", deadline)
    subscriber = _open(task.port, f"{task.client_prefix}sub", deadline)
    width = len(str(task.count - 1))

    def topic_of_seq(seq: int) -> bytes:
        return b"r/%0*d" % (width, seq)

    stream = b"".join(
        publish_packet(topic_of_seq(seq), make_payload(0, seq), retain=True)
        for seq in range(task.count)
    )
    pipe.send(("ready", None))
    _wait_go(go)
    deadline = time.perf_counter() + task.deadline_s
    start = time.perf_counter()
    publisher.settimeout(_remaining(deadline, "publishing retained messages"))
    publisher.sendall(stream)
    stored = _ping(publisher, deadline)
    parser = DeliveryParser(2 + width, 0, topic_of_seq=topic_of_seq)
    subscribe_start = time.perf_counter()
    subscriber.sendall(subscribe_packet(1, "#", 0))
    while parser.received < task.count:
        subscriber.settimeout(
            _remaining(deadline, f"receiving retained {parser.received}/{task.count}")
        )
        data = subscriber.recv(RECV_SIZE)
        if not data:
            raise WireError(f"connection closed after {parser.received} retained messages")
        parser.feed(data)
    done = time.perf_counter()
    errors = list(parser.errors)
    error_count = parser.error_count
    subacks = [p for p in parser.other_packets if p.packet_type == 0x9]
    if len(subacks) != 1 or subacks[0].body != b"\x00\x01\x00":
        error_count += 1
        errors.append(f"expected one SUBACK granting QoS 0, got {parser.other_packets[:3]}")
    for packet in parser.other_packets:
        if packet.packet_type != 0x9:
            error_count += 1
            errors.append(f"unexpected packet {packet.first_byte:#04x}")
    _close(publisher)
    _close(subscriber)
    return {
        "start": start,
        "stored": stored,
        "subscribe_start": subscribe_start,
        "done": done,
        "received": parser.received,
        "unique": len(parser.seen),
        "error_count": error_count,
        "errors": errors[:10],
    }
