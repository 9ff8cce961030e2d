"""``python -m benchmarks.latency_floor``: the floor under the QoS 1 round trip.

The ``qos1_latency_split`` scenario puts trio-mqtt's QoS 1 round trip (a publisher and a
subscriber on separate connections, window 1) at two to three times mosquitto's, and the
profile says that time is mostly epoll and socket calls. This measures how much of it
any Python server pays on this machine, whatever it does on top: the same round trips
against

1. ``bare trio``: a ``trio.serve_tcp`` relay that answers CONNECT with a CONNACK and
   SUBSCRIBE with a SUBACK (fixed bytes), tells the two connections apart by the client
   id in their CONNECT, and on a PUBLISH from the publisher writes a PUBACK to it and
   the same PUBLISH bytes to the subscriber; the subscriber's PUBACKs are read and
   dropped. It frames packets by their remaining length and reads the first byte, the
   client id and a PUBLISH's packet id (for the PUBACK); nothing else of MQTT;
2. ``trio, direct writes``: the same relay, one Trio task per connection, reading and
   writing as trio-mqtt's connections do (``os.read`` until ``EAGAIN``, then
   ``wait_readable``; answers with one non-blocking ``os.write``, no ``send_all``): one
   pass through Trio's scheduler per packet read, as trio-mqtt makes;
3. ``trio + nested epoll``: the same relay inside Trio, each connection parked after its
   CONNACK in an epoll of the relay's own, which one task serves
   (``wait_readable`` on the epoll, then every ready socket in one pass): the shape of
   serving established connections outside Trio's per-task scheduling;
4. ``bare selectors``: the same relay in one thread with ``selectors`` and non-blocking
   sockets, Python's floor without Trio's scheduling;
5. ``trio-mqtt`` in process (``open_broker``, one plain listener, the CLI's
   garbage-collector settings, as ``benchmarks.trio_floor``);
6. ``mosquitto``: Debian's, with its defaults (``benchmarks.brokers``, as the scenarios
   start it).

The client is one raw-socket process, as the load generators' latency worker: blocking
sockets for CONNECT/CONNACK (both connections) and SUBSCRIBE/SUBACK (QoS 1), then
200 warm-up and 5,000 measured round trips at window 1: it writes a QoS 1 PUBLISH
(64-byte payload) on the publisher connection, spins on non-blocking ``recv`` of both
connections (a client sleeping in ``poll`` would add its own wake-up to every sample)
until it has the PUBACK and the delivery, answers the delivery with a PUBACK and sends
the next. Reported per server: p50/p99 of the PUBACK latency (write -> PUBACK read) and
of the end-to-end latency (write -> delivery read), and the server's CPU time per round
trip over the client's whole run (``getrusage`` of this process for the servers
in it; the scheduler's run time of the mosquitto process from ``/proc/<pid>/schedstat``,
or its ``/proc/<pid>/stat`` ticks where that is not kept). Runs alternate between the
servers. Results go to ``benchmarks/results/latency-floor.json`` (``--output``).
``--deliver-first`` makes the bare relays write the delivery before the PUBACK, the
order mosquitto uses (its end-to-end latency is below its PUBACK latency). ``--gap-us``
makes the client spin that long before each PUBLISH, outside the timed span: the server
is idle when each round trip starts, nothing of the one before in its way (each run
reports ``period_us``, the client's time per round trip, gap included).

On a machine shared with other jobs, ``--max-load`` waits before each round (up to
``--wait-limit`` seconds) for a quiet machine, ``--wait-absent`` for other jobs' marker
files to go, and ``--busy-marker`` names a file that exists while this one measures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import os
import resource
import select
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from benchmarks.brokers import MOSQUITTO_PATH, BrokerKind, start_broker
from benchmarks.provenance import source_commit
from benchmarks.wire import (
    connect_packet,
    make_payload,
    parse_publish,
    puback_packet,
    publish_packet,
    split_packets,
    subscribe_packet,
)
from trio_mqtt import open_broker
from trio_mqtt.cli import GC_THRESHOLDS
from trio_mqtt.config import BrokerConfig, ListenerConfig

HOST = "127.0.0.1"
TOPIC = "floor/lat"
PAYLOAD_SIZE = 64
PUBLISHER_ID = "floor-pub"
SUBSCRIBER_ID = "floor-sub"
CONNACK = b"\x20\x02\x00\x00"
SUBACK = b"\x90\x03\x00\x01\x01"  # packet id 1 (the client's), QoS 1 granted
PUBACK = 0x40
DEADLINE_S = 120.0
SERVERS = (
    "bare trio",
    "trio, direct writes",
    "trio + nested epoll",
    "bare selectors",
    "trio-mqtt",
    "mosquitto",
)
#: the bare relays write the delivery before the PUBACK (``--deliver-first``; mosquitto's
#: order) instead of after it
DELIVER_FIRST = False
#: microseconds the client spins before each PUBLISH (``--gap-us``), outside the timed span
GAP_US = 0
METRICS = ("puback_p50_us", "puback_p99_us", "p50_us", "p99_us", "cpu_us_per_round_trip")


# --- the client ---------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    return data


def _open(port: int, client_id: str) -> socket.socket:
    """A blocking, TCP_NODELAY connection that has its CONNACK."""
    sock = socket.create_connection((HOST, port), timeout=DEADLINE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    if (reply := _recv_exactly(sock, 4)) != CONNACK:
        raise RuntimeError(f"{client_id}: CONNACK {reply.hex()}")
    return sock


def client(port: int, warmup: int, count: int, gap_us: int = 0) -> dict[str, Any]:
    """Round trips at window 1 against the server on *port*; the latencies in ns.

    *gap_us*: spin that long before each PUBLISH, before its clock starts.
    """
    subscriber = _open(port, SUBSCRIBER_ID)
    subscriber.sendall(subscribe_packet(1, TOPIC, 1))
    if (reply := _recv_exactly(subscriber, 5)) != SUBACK:
        raise RuntimeError(f"SUBACK {reply.hex()}")
    publisher = _open(port, PUBLISHER_ID)
    total = warmup + count
    payloads = [make_payload(0, seq, PAYLOAD_SIZE) for seq in range(total)]
    packets = [
        publish_packet(TOPIC, payloads[seq], qos=1, packet_id=seq % 65535 + 1)
        for seq in range(total)
    ]
    publisher.setblocking(False)
    subscriber.setblocking(False)
    from_publisher, from_subscriber = bytearray(), bytearray()
    puback_ns: list[int] = []
    end_to_end_ns: list[int] = []
    errors: list[str] = []
    deadline = time.monotonic() + DEADLINE_S + total * gap_us / 1e6
    gap_ns = gap_us * 1000
    run_start = time.perf_counter_ns()
    for seq in range(total):
        packet_id = seq % 65535 + 1
        if gap_ns:  # spun, not slept: the client's own wake-up stays out of the sample
            gap_end = time.perf_counter_ns() + gap_ns
            while time.perf_counter_ns() < gap_end:
                pass
        start = time.perf_counter_ns()
        if publisher.send(packets[seq]) != len(packets[seq]):  # tiny: the buffer is empty
            raise RuntimeError("short send of a PUBLISH")
        puback_at = delivered_at = spins = 0
        while not (puback_at and delivered_at):
            if not puback_at and _receive(publisher, from_publisher):
                now = time.perf_counter_ns()
                for packet in split_packets(from_publisher):
                    if packet.first_byte != PUBACK or packet.body != struct.pack(">H", packet_id):
                        errors.append(f"{seq}: {packet.first_byte:#04x} {packet.body.hex()}")
                    puback_at = now
            if not delivered_at and _receive(subscriber, from_subscriber):
                now = time.perf_counter_ns()
                for packet in split_packets(from_subscriber):
                    delivered_at = now
                    if packet.packet_type != 3:
                        errors.append(f"{seq}: {packet.first_byte:#04x} instead of a PUBLISH")
                        continue
                    topic, delivered_id, payload = parse_publish(packet)
                    if delivered_id is not None:
                        subscriber.send(puback_packet(delivered_id))
                    if topic != TOPIC.encode() or payload != payloads[seq]:
                        errors.append(f"{seq}: wrong delivery {packet.body.hex()}")
            spins += 1
            if spins % 4096 == 0 and time.monotonic() > deadline:
                raise TimeoutError(f"round trip {seq} unanswered")
        if seq >= warmup:
            puback_ns.append(puback_at - start)
            end_to_end_ns.append(delivered_at - start)
    run_ns = time.perf_counter_ns() - run_start
    for sock in (publisher, subscriber):
        sock.setblocking(True)
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT
        sock.close()
    return {
        "puback_ns": puback_ns,
        "end_to_end_ns": end_to_end_ns,
        "run_ns": run_ns,
        "errors": errors[:10],
    }


def _receive(sock: socket.socket, buffer: bytearray) -> bool:
    """One non-blocking recv into *buffer*; whether anything came."""
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    if not data:
        raise ConnectionError("the server closed a connection")
    buffer += data
    return True


# --- the two bare relays ------------------------------------------------------------


def _frames(buffer: bytearray) -> Iterator[bytes]:
    """Whole packets off the front of *buffer*, framed by their remaining length."""
    while len(buffer) >= 2:
        length = shift = 0
        pos = 1
        while True:
            if pos >= len(buffer):
                return
            byte = buffer[pos]
            length |= (byte & 0x7F) << shift
            shift += 7
            pos += 1
            if not byte & 0x80:
                break
        if pos + length > len(buffer):
            return
        packet = bytes(buffer[: pos + length])
        del buffer[: pos + length]
        yield packet


def _client_id(connect: bytes) -> bytes:
    """The client id of a 3.1.1 CONNECT with a one-byte remaining length (the client's)."""
    size = int.from_bytes(connect[12:14], "big")
    return connect[14 : 14 + size]


def _puback_for(publish: bytes) -> bytes:
    """The PUBACK of a QoS 1 PUBLISH with a one-byte remaining length (the client's)."""
    topic_size = int.from_bytes(publish[2:4], "big")
    return b"\x40\x02" + publish[4 + topic_size : 6 + topic_size]


class _TrioRelay:
    """The relay as one Trio task per connection (``trio.serve_tcp``)."""

    def __init__(self) -> None:
        self.subscriber: trio.SocketStream | None = None

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        is_publisher = False
        while data := await stream.receive_some(65536):
            buffer += data
            for packet in _frames(buffer):
                kind = packet[0] >> 4
                if kind == 3 and is_publisher:
                    assert self.subscriber is not None
                    if DELIVER_FIRST:
                        await self.subscriber.send_all(packet)
                    await stream.send_all(_puback_for(packet))
                    if not DELIVER_FIRST:
                        await self.subscriber.send_all(packet)
                elif kind == 1:
                    is_publisher = _client_id(packet) == PUBLISHER_ID.encode()
                    if not is_publisher:
                        self.subscriber = stream
                    await stream.send_all(CONNACK)
                elif kind == 8:
                    await stream.send_all(SUBACK)
                # anything else (the subscriber's PUBACKs, DISCONNECT): read and dropped


class _TrioDirectRelay:
    """The relay as one Trio task per connection, reading and writing the way trio-mqtt's
    connections do (``server/connection.py``): ``os.read`` on the socket, and
    ``wait_readable`` only when it has nothing; answers written with one non-blocking
    ``os.write`` instead of ``send_all`` (no checkpoint per write). One pass through
    Trio's scheduler per packet read, as trio-mqtt; the bare Trio relay pays two more
    per round trip (its ``send_all`` checkpoints)."""

    def __init__(self) -> None:
        self.subscriber = -1

    async def handle(self, stream: trio.SocketStream) -> None:
        fd = stream.socket.fileno()
        buffer = bytearray()
        is_publisher = False
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                continue
            if not data:
                return
            buffer += data
            for packet in _frames(buffer):
                kind = packet[0] >> 4
                if kind == 3 and is_publisher:
                    if DELIVER_FIRST:
                        _write(self.subscriber, packet)
                    _write(fd, _puback_for(packet))
                    if not DELIVER_FIRST:
                        _write(self.subscriber, packet)
                elif kind == 1:
                    is_publisher = _client_id(packet) == PUBLISHER_ID.encode()
                    if not is_publisher:
                        self.subscriber = fd
                    _write(fd, CONNACK)
                elif kind == 8:
                    _write(fd, SUBACK)


class _TrioEpollRelay:
    """The relay inside Trio, with a nested epoll: each connection's Trio task reads its
    CONNECT and writes the CONNACK, then parks the socket in an epoll of the relay's own
    and waits. One task (``serve_ready``) waits for that epoll to be readable
    (``trio.lowlevel.wait_readable``) and, per wake-up, reads and answers every ready
    socket with plain non-blocking ``os.read``/``os.write``, as the ``selectors`` relay
    does, without a trip through Trio's scheduler per connection. The shape a broker could
    serve established connections in (``docs/performance.md``, the QoS 1 floor: a
    wake-up of it costs about what a task's does; it gains where one wake-up finds
    several sockets ready, as the subscriber's PUBACK and the next PUBLISH often are
    when the PUBACK is written first)."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.buffers: dict[int, bytearray] = {}
        self.ended: dict[int, trio.Event] = {}
        self.publishers: set[int] = set()
        self.subscriber = -1

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        while data := await stream.receive_some(65536):
            buffer += data
            for packet in _frames(buffer):
                if packet[0] >> 4 != 1:
                    raise RuntimeError("the client sent something before its CONNACK")
                fd = stream.socket.fileno()
                if _client_id(packet) == PUBLISHER_ID.encode():
                    self.publishers.add(fd)
                else:
                    self.subscriber = fd
                await stream.send_all(CONNACK)
                self.buffers[fd] = buffer
                self.ended[fd] = ended = trio.Event()
                self.epoll.register(fd, select.EPOLLIN)
                try:
                    await ended.wait()  # the ready loop serves it until its EOF
                finally:
                    if fd in self.buffers:  # cancelled while parked
                        self.epoll.unregister(fd)
                        del self.buffers[fd]
                    del self.ended[fd]
                return

    async def serve_ready(self) -> None:
        epoll = self.epoll
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, _events in epoll.poll(0):
                    self._ready(fd)
        finally:
            trio.lowlevel.notify_closing(epoll)
            epoll.close()

    def _ready(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:  # EOF: the task closes the socket
            self.epoll.unregister(fd)
            del self.buffers[fd]
            self.ended[fd].set()
            return
        buffer = self.buffers[fd]
        buffer += data
        for packet in _frames(buffer):
            kind = packet[0] >> 4
            if kind == 3 and fd in self.publishers:
                if DELIVER_FIRST:
                    _write(self.subscriber, packet)
                _write(fd, _puback_for(packet))
                if not DELIVER_FIRST:
                    _write(self.subscriber, packet)
            elif kind == 8:
                _write(fd, SUBACK)


def _write(fd: int, data: bytes) -> None:
    if os.write(fd, data) != len(data):
        raise RuntimeError("short send")


def _selectors_relay(listener: socket.socket, stop: socket.socket) -> None:
    """The relay in one thread: a ``selectors`` loop over non-blocking sockets, until a
    byte arrives on *stop*. Answers are a few bytes to an idle socket, so ``send`` takes
    them whole (checked)."""
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(stop, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytearray] = {}
    publishers: set[socket.socket] = set()
    subscriber: socket.socket | None = None

    def send(sock: socket.socket, data: bytes) -> None:
        if sock.send(data) != len(data):
            raise RuntimeError("short send")

    while True:
        for key, _events in selector.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if sock is stop:
                for open_sock in buffers:
                    open_sock.close()
                selector.close()
                return
            if sock is listener:
                connection, _address = listener.accept()
                connection.setblocking(False)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffers[connection] = bytearray()
                selector.register(connection, selectors.EVENT_READ)
                continue
            data = sock.recv(65536)
            if not data:
                selector.unregister(sock)
                del buffers[sock]
                sock.close()
                continue
            buffer = buffers[sock]
            buffer += data
            for packet in _frames(buffer):
                kind = packet[0] >> 4
                if kind == 3 and sock in publishers:
                    assert subscriber is not None
                    if DELIVER_FIRST:
                        send(subscriber, packet)
                    send(sock, _puback_for(packet))
                    if not DELIVER_FIRST:
                        send(subscriber, packet)
                elif kind == 1:
                    if _client_id(packet) == PUBLISHER_ID.encode():
                        publishers.add(sock)
                    else:
                        subscriber = sock
                    send(sock, CONNACK)
                elif kind == 8:
                    send(sock, SUBACK)


# --- running one server -------------------------------------------------------------


def client_command(port: int, warmup: int, count: int) -> list[str]:
    module = "benchmarks.latency_floor"
    gap = str(GAP_US)
    return [sys.executable, "-m", module, "--client", str(port), str(warmup), str(count), gap]


def _outcome(stdout: bytes | str, cpu_s: float, round_trips: int) -> dict[str, Any]:
    """p50/p99 (us) of the client's latencies and the server's CPU per round trip."""
    result = json.loads(stdout)
    if result["errors"]:
        raise RuntimeError(f"wrong answers: {result['errors']}")
    puback, end_to_end = sorted(result["puback_ns"]), sorted(result["end_to_end_ns"])
    return {
        "puback_p50_us": _percentile(puback, 50) / 1000,
        "puback_p99_us": _percentile(puback, 99) / 1000,
        "p50_us": _percentile(end_to_end, 50) / 1000,
        "p99_us": _percentile(end_to_end, 99) / 1000,
        "cpu_us_per_round_trip": cpu_s / round_trips * 1e6,
        "period_us": result["run_ns"] / round_trips / 1000,
    }


def _percentile(ordered: list[int], percent: float) -> float:
    """Nearest-rank percentile of a sorted list (as the scenarios compute it)."""
    rank = max(1, round(percent / 100 * len(ordered) + 0.5 - 1e-9))
    return float(ordered[min(rank, len(ordered)) - 1])


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure_in_trio(port: int, warmup: int, count: int) -> dict[str, Any]:
    before = _own_cpu()
    done = await trio.run_process(client_command(port, warmup, count), capture_stdout=True)
    return _outcome(done.stdout, _own_cpu() - before, warmup + count)


async def _serve_relay(
    handle: Callable[[trio.SocketStream], Awaitable[None]], warmup: int, count: int
) -> dict[str, Any]:
    """Measure a relay whose connections ``handle`` serves, one task each."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host=HOST))
        port = listeners[0].socket.getsockname()[1]
        outcome = await _measure_in_trio(port, warmup, count)
        nursery.cancel_scope.cancel()
    return outcome


async def _bare_trio(warmup: int, count: int) -> dict[str, Any]:
    return await _serve_relay(_TrioRelay().handle, warmup, count)


async def _trio_direct(warmup: int, count: int) -> dict[str, Any]:
    return await _serve_relay(_TrioDirectRelay().handle, warmup, count)


async def _trio_epoll(warmup: int, count: int) -> dict[str, Any]:
    relay = _TrioEpollRelay()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.serve_ready)
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, relay.handle, 0, host=HOST)
        )
        port = listeners[0].socket.getsockname()[1]
        outcome = await _measure_in_trio(port, warmup, count)
        nursery.cancel_scope.cancel()
    return outcome


def broker_config() -> BrokerConfig:
    """The trio-mqtt measured here (and traced by ``benchmarks.round_trip_trace``): one
    plain listener on a free port, every other setting the default."""
    return BrokerConfig(listeners=(ListenerConfig(host=HOST, port=0),))


async def _trio_mqtt(warmup: int, count: int) -> dict[str, Any]:
    async with open_broker(broker_config()) as broker:
        return await _measure_in_trio(broker.port, warmup, count)


def bare_trio(warmup: int, count: int) -> dict[str, Any]:
    return trio.run(_bare_trio, warmup, count)


def trio_direct(warmup: int, count: int) -> dict[str, Any]:
    return trio.run(_trio_direct, warmup, count)


def trio_epoll(warmup: int, count: int) -> dict[str, Any]:
    return trio.run(_trio_epoll, warmup, count)


def trio_mqtt(warmup: int, count: int) -> dict[str, Any]:
    return trio.run(_trio_mqtt, warmup, count)


def bare_selectors(warmup: int, count: int) -> dict[str, Any]:
    listener = socket.create_server((HOST, 0))
    listener.setblocking(False)
    stop_reader, stop_writer = socket.socketpair()
    thread = threading.Thread(target=_selectors_relay, args=(listener, stop_reader))
    thread.start()
    try:
        before = _own_cpu()  # this thread only waits for the client meanwhile
        done = subprocess.run(
            client_command(listener.getsockname()[1], warmup, count),
            capture_output=True,
            check=True,
        )
        cpu = _own_cpu() - before
    finally:
        stop_writer.send(b"x")
        thread.join()
        for sock in (listener, stop_reader, stop_writer):
            sock.close()
    return _outcome(done.stdout, cpu, warmup + count)


def _process_cpu(pid: int) -> float:
    """CPU seconds of process *pid*: the scheduler's run time of its threads (ns, from
    ``schedstat``) where the kernel keeps it, else its user + system clock ticks."""
    total_ns = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as file:
                total_ns += int(file.read().split()[0])
    if total_ns:
        return total_ns / 1e9
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mosquitto(warmup: int, count: int) -> dict[str, Any]:
    broker = start_broker(BrokerKind.MOSQUITTO)
    try:
        pid = broker.process.pid
        before = _process_cpu(pid)
        done = subprocess.run(
            client_command(broker.broker.port, warmup, count), capture_output=True, check=True
        )
        cpu = _process_cpu(pid) - before
    finally:
        broker.stop()
    return _outcome(done.stdout, cpu, warmup + count)


MEASURE: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "bare trio": bare_trio,
    "trio, direct writes": trio_direct,
    "trio + nested epoll": trio_epoll,
    "bare selectors": bare_selectors,
    "trio-mqtt": trio_mqtt,
    "mosquitto": mosquitto,
}


# --- sharing the machine ------------------------------------------------------------


def _load() -> float:
    with open("/proc/loadavg") as file:
        return float(file.read().split()[0])


def wait_until_quiet(max_load: float | None, absent: list[Path], limit_s: float) -> dict[str, Any]:
    """Poll every 15 s until the 1-minute load average is below *max_load* and none of
    *absent* exists, at most *limit_s*; what was found (``gave_up`` if the limit hit)."""
    began = time.monotonic()
    while True:
        load = _load()
        busy = [str(path) for path in absent if path.exists()]
        quiet = (max_load is None or load < max_load) and not busy
        waited = time.monotonic() - began
        if quiet or waited >= limit_s:
            return {"load": load, "waited_s": round(waited), "gave_up": not quiet, "busy": busy}
        print(f"waiting for a quiet machine: load {load}, busy {busy}", flush=True)
        time.sleep(15)


@contextlib.contextmanager
def _marker(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    path.touch()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


# --- main ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.latency_floor", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--count", type=int, default=5000, help="measured round trips per run")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--server", action="append", choices=SERVERS, help="measure only these (repeatable)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "latency-floor.json"
    )
    parser.add_argument("--max-load", type=float, help="wait for a load average below this")
    parser.add_argument("--wait-absent", type=Path, action="append", default=[])
    parser.add_argument("--wait-limit", type=float, default=600.0, help="seconds (per round)")
    parser.add_argument("--busy-marker", type=Path, help="a file that exists while measuring")
    parser.add_argument(
        "--deliver-first",
        action="store_true",
        help="the bare relays write the delivery before the PUBACK (mosquitto's order)",
    )
    parser.add_argument(
        "--gap-us",
        type=int,
        default=0,
        help="the client spins this long before each PUBLISH (not timed): an idle server",
    )
    parser.add_argument("--client", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(client(*args.client)))
        return
    servers = args.server or list(SERVERS)
    global DELIVER_FIRST, GAP_US  # noqa: PLW0603 (read by the relays and client_command)
    DELIVER_FIRST = args.deliver_first
    GAP_US = args.gap_us
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    waits: list[dict[str, Any]] = []
    for index in range(args.repeat):
        waits.append(wait_until_quiet(args.max_load, args.wait_absent, args.wait_limit))
        with _marker(args.busy_marker):
            for name in servers:
                outcome = MEASURE[name](args.warmup, args.count)
                runs[name].append(outcome)
                print(
                    f"[{index + 1}/{args.repeat}] {name}: PUBACK p50 "
                    f"{outcome['puback_p50_us']:.0f} us, end-to-end p50 {outcome['p50_us']:.0f} "
                    f"us, {outcome['cpu_us_per_round_trip']:.0f} us CPU per round trip",
                    flush=True,
                )
    summary = {
        name: {
            key: {
                "median": statistics.median(o[key] for o in outcomes),
                "min": min(o[key] for o in outcomes),
                "max": max(o[key] for o in outcomes),
            }
            for key in METRICS
        }
        for name, outcomes in runs.items()
    }
    print(_table(summary))
    args.output.write_text(
        json.dumps(
            {
                "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "commit": source_commit(),
                "warmup": args.warmup,
                "count": args.count,
                "payload_bytes": PAYLOAD_SIZE,
                "bare_relays_write": "delivery, PUBACK" if DELIVER_FIRST else "PUBACK, delivery",
                "gap_us": GAP_US,
                "mosquitto": MOSQUITTO_PATH,
                "waits": waits,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.output}")


def _table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """Medians (min-max) per server, and each p50 as a multiple of mosquitto's."""
    lines = [
        f"{'server':19s} {'PUBACK p50':>17s} {'p99':>5s} {'end-to-end p50':>17s} {'p99':>5s}"
        f" {'CPU/round trip':>16s}"
    ]
    for name, metrics in summary.items():
        cells = []
        for key in METRICS:
            value = metrics[key]
            if key.endswith("p99_us"):
                cells.append(f"{value['median']:5.0f}")
            else:
                spread = f"({value['min']:.0f}-{value['max']:.0f})"
                cells.append(f"{value['median']:5.0f} {spread:>11s}")
        lines.append(f"{name:19s} " + " ".join(cells))
    if "mosquitto" in summary:
        base = summary["mosquitto"]
        for name, metrics in summary.items():
            if name != "mosquitto":
                puback = metrics["puback_p50_us"]["median"] / base["puback_p50_us"]["median"]
                end_to_end = metrics["p50_us"]["median"] / base["p50_us"]["median"]
                lines.append(
                    f"{name} / mosquitto: PUBACK p50 {puback:.2f}x, end-to-end p50 "
                    f"{end_to_end:.2f}x"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
