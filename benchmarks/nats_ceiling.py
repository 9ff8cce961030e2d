"""``python -m benchmarks.nats_ceiling``: how many messages one nats-server passes here.

The cluster sends every cross-node message through NATS once, and NATS hands it to
every node that subscribes; this measures that ceiling on this machine, without
trio-mqtt, with messages shaped as the cluster sends them (subject ``m.bench.p0``, the
envelope headers of a QoS 0 PUBLISH from a TCP client, the benchmarks' 24-byte payload).

Core NATS, each pattern on a fresh nats-server, with raw-socket load processes (one per
connection) that cost little CPU next to the server: a publisher writes a pre-built
buffer of HPUBs in one ``sendall`` per 1,000 messages, then PING and waits for the PONG;
a subscriber counts the bytes and ``HMSG`` lines it reads, and the run counts only if
every subscriber got exactly every message.

- ``1 -> 1``: one publisher connection to one subscriber connection (one node to
  another);
- ``4 -> 1``: four publishers to one subscriber (four nodes' publishers to the node of
  one fan-in subscriber);
- ``1 -> 4``: one publisher to four subscribers (one node's messages to four nodes).

JetStream, with trio-mqtt's own client (``trio_mqtt.nats``): acknowledged publishes
(``publish_acked``) to one stream on file storage with one replica, as QoS >= 1 would
use it: one at a time (the latency of a publish and its ack), then with 20 and 100 in
flight (20: trio-mqtt's default Receive Maximum, what one MQTT publisher may have
unacknowledged).

Results go to ``benchmarks/results/nats-ceiling.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import attrs

from benchmarks.brokers import (
    HOST,
    NATS_INSTALL_HINT,
    NatsProcess,
    nats_server_binary,
    start_nats_server,
)
from benchmarks.wire import make_payload

__all__ = ["Pattern", "cluster_message", "main", "measure_core", "measure_jetstream"]

RESULTS = Path(__file__).resolve().parent / "results" / "nats-ceiling.json"
SUBJECT = "m.bench.p0"
CHUNK = 1_000
RECV_SIZE = 1 << 20
PING = b"PING\r\n"


def cluster_message(sequence: int = 1_234_567) -> bytes:
    """One HPUB as a cluster node sends a QoS 0 PUBLISH of the benchmarks to NATS."""
    from trio_mqtt.broker.message import Message
    from trio_mqtt.cluster.envelope import message_headers
    from trio_mqtt.mqtt.packets import NO_PROPERTIES
    from trio_mqtt.nats.protocol import NATSConnection
    from trio_mqtt.peer import Endpoint, PeerInfo

    client = Endpoint("127.0.0.1", 54321)
    message = Message(
        topic="bench/p0",
        payload=make_payload(0, 0),
        qos=0,
        retain=False,
        properties=NO_PROPERTIES,
        publisher="cfanin-pub0",
        peer=PeerInfo(listener="plain", transport="tcp", remote=client, client=client),
        created=0.0,
    )
    headers = message_headers(message, origin="a-1a2b3c4d", sequence=sequence, now=0.0)
    return NATSConnection().pub(SUBJECT, message.payload, headers=headers)


def delivered_size(published: bytes, sid: int = 1) -> int:
    """The size of the HMSG a subscriber with *sid* gets for the HPUB *published*."""
    line, _, rest = published.partition(b"\r\n")
    _op, subject, header_size, total = line.split()
    return len(b"HMSG %s %d %s %s\r\n" % (subject, sid, header_size, total)) + len(rest)


# --- raw-socket load processes ------------------------------------------------------


@attrs.frozen
class NatsTask:
    """One load process: publish *count* messages, or subscribe and expect *count*."""

    role: str  # "pub" or "sub"
    port: int
    count: int
    deadline_s: float
    message: bytes  # the HPUB (made by the parent: load processes import no trio_mqtt)


def _read_line(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("nats-server closed the connection")
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\r\n")
    buffer[:] = rest
    return line


def _read_until_pong(sock: socket.socket, buffer: bytearray, what: str) -> None:
    """Read lines until PONG; the server may send an INFO update (or +OK) at any time."""
    while (line := _read_line(sock, buffer)) != b"PONG":
        if not (line.startswith((b"INFO ", b"+OK")) or line == b"PING"):
            raise ConnectionError(f"expected PONG {what}, got {line[:80]!r}")
        if line == b"PING":
            sock.sendall(b"PONG\r\n")


def _nats_open(port: int, deadline_s: float) -> socket.socket:
    """Connect, read INFO, CONNECT (headers on, no echo of +OK), PING until PONG."""
    sock = socket.create_connection((HOST, port), timeout=deadline_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    info = _read_line(sock, buffer)
    if not info.startswith(b"INFO "):
        raise ConnectionError(f"expected INFO, got {info[:80]!r}")
    options = {"verbose": False, "pedantic": False, "headers": True, "protocol": 1}
    sock.sendall(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
    _read_until_pong(sock, buffer, "after CONNECT")
    return sock


def _publisher(task: NatsTask, pipe: Connection, go: Event) -> dict[str, Any]:
    sock = _nats_open(task.port, task.deadline_s)
    chunk = task.message * CHUNK
    rounds, rest = divmod(task.count, CHUNK)
    tail = task.message * rest
    pipe.send(("ready", None))
    if not go.wait(60):
        raise TimeoutError("no go signal")
    start = time.perf_counter()
    for _ in range(rounds):
        sock.sendall(chunk)
    sock.sendall(tail + b"PING\r\n")
    buffer = bytearray()
    while (line := _read_line(sock, buffer)) != b"PONG":
        if line.startswith(b"-ERR"):
            raise ConnectionError(line.decode(errors="replace"))
    end = time.perf_counter()
    sock.close()
    return {"start": start, "acked": end, "cpu_s": time.process_time()}


def _subscriber(task: NatsTask, pipe: Connection, go: Event) -> dict[str, Any]:
    sock = _nats_open(task.port, task.deadline_s)
    sock.sendall(f"SUB {SUBJECT} 1\r\nPING\r\n".encode())
    buffer = bytearray()
    _read_until_pong(sock, buffer, "after SUB")
    size = delivered_size(task.message)
    expected = task.count * size
    pipe.send(("ready", None))
    if not go.wait(60):
        raise TimeoutError("no go signal")
    deadline = time.perf_counter() + task.deadline_s
    cpu_start = time.process_time()
    received = len(buffer)
    lines = bytes(buffer).count(b"HMSG ")
    pings = bytes(buffer).count(b"PING\r\n")
    tail = bytes(buffer[-5:])
    first = last = 0.0
    sock.settimeout(1.0)
    while received - len(PING) * pings < expected:
        if time.perf_counter() > deadline:
            break
        try:
            data = sock.recv(RECV_SIZE)
        except TimeoutError:
            continue
        if not data:
            break
        last = time.perf_counter()
        first = first or last
        received += len(data)
        # a token split between two reads: only (its length - 1 bytes of each side) holds
        # it, and neither side can hold it whole, so nothing is counted twice
        lines += (tail[-4:] + data[:4]).count(b"HMSG ") + data.count(b"HMSG ")
        new_pings = (tail + data[:5]).count(PING) + data.count(PING)
        if new_pings:  # the server checks that we are alive (a first PING after ~2 s)
            pings += new_pings
            sock.sendall(b"PONG\r\n" * new_pings)
        tail = data[-5:] if len(data) >= 5 else (tail + data)[-5:]
    sock.close()
    return {
        "first_rx": first,
        "last_rx": last,
        "bytes": received - len(PING) * pings,
        "server_pings": pings,
        "expected_bytes": expected,
        "messages": lines,
        "cpu_s": time.process_time() - cpu_start,
    }


def _worker(task: NatsTask, pipe: Connection, go: Event) -> None:
    try:
        result = _publisher(task, pipe, go) if task.role == "pub" else _subscriber(task, pipe, go)
        pipe.send(("result", result))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


def _expect(pipe: Connection, tag: str, timeout: float) -> Any:
    if not pipe.poll(timeout):
        raise TimeoutError(f"no {tag!r} from a load process within {timeout:.0f} s")
    kind, payload = pipe.recv()
    if kind != tag:
        raise RuntimeError(f"a load process failed:\n{payload}")
    return payload


# --- core NATS ----------------------------------------------------------------------


@attrs.frozen
class Pattern:
    """*publishers* connections each publish *per_publisher* messages on one subject;
    *subscribers* connections subscribe to it."""

    name: str
    publishers: int
    subscribers: int


PATTERNS = (Pattern("1 -> 1", 1, 1), Pattern("4 -> 1", 4, 1), Pattern("1 -> 4", 1, 4))


def _cpu_seconds(pid: int) -> float:
    import os

    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_core(
    nats: NatsProcess, pattern: Pattern, per_publisher: int, deadline_s: float
) -> dict[str, Any]:
    """One run of *pattern* through *nats*: rates, CPU, and whether all arrived."""
    port = int(nats.url.rsplit(":", 1)[1])
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    expected = per_publisher * pattern.publishers
    message = cluster_message()
    tasks = [NatsTask("sub", port, expected, deadline_s, message)] * pattern.subscribers
    tasks += [NatsTask("pub", port, per_publisher, deadline_s, message)] * pattern.publishers
    pipes: list[Connection] = []
    processes = []
    for task in tasks:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(task, child, go), daemon=True)
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)
    try:
        for pipe in pipes:
            _expect(pipe, "ready", 60)
        cpu_before = _cpu_seconds(nats.pid)
        go.set()
        results = [_expect(pipe, "result", deadline_s + 30) for pipe in pipes]
        server_cpu = _cpu_seconds(nats.pid) - cpu_before
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
    subs = results[: pattern.subscribers]
    pubs = results[pattern.subscribers :]
    start = min(result["start"] for result in pubs)
    end = max(result["last_rx"] for result in subs)
    delivered = sum(result["messages"] for result in subs)
    complete = all(
        result["messages"] == expected and result["bytes"] == result["expected_bytes"]
        for result in subs
    )
    elapsed = max(end - start, 1e-9)
    return {
        "pattern": pattern.name,
        "published": expected,
        "delivered": delivered,
        "verified": complete,
        "elapsed_s": round(elapsed, 4),
        "published_per_s": expected / elapsed,
        "delivered_per_s": delivered / elapsed,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_delivery": server_cpu / max(delivered, 1) * 1e6,
        "message_bytes": {
            "published": len(cluster_message()),
            "delivered": delivered_size(cluster_message()),
        },
    }


# --- JetStream ----------------------------------------------------------------------


async def _jetstream(url: str, sequential: int, windowed: int, windows: Sequence[int]) -> Any:
    import trio

    from trio_mqtt.nats import ensure_stream, open_nats_client, publish_acked

    payload = make_payload(0, 0)
    out: dict[str, Any] = {}
    async with open_nats_client(url, name="nats-ceiling") as client:
        await ensure_stream(
            client,
            {"name": "BENCH", "subjects": ["q.>"], "storage": "file", "num_replicas": 1},
        )
        for _ in range(50):  # warm-up
            await publish_acked(client, "q.bench.p0", payload)
        latencies = []
        for _ in range(sequential):
            start = time.perf_counter_ns()
            await publish_acked(client, "q.bench.p0", payload)
            latencies.append(time.perf_counter_ns() - start)
        latencies.sort()
        out["one_at_a_time"] = {
            "count": sequential,
            "p50_us": latencies[len(latencies) // 2] / 1000,
            "p99_us": latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)))] / 1000,
            "per_s": sequential / (sum(latencies) / 1e9),
        }
        for window in windows:
            acked = 0

            async def lane(count: int) -> None:
                nonlocal acked
                for _ in range(count):
                    await publish_acked(client, "q.bench.p0", payload, timeout=10.0)
                    acked += 1

            per_lane = windowed // window
            start_s = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(window):
                    nursery.start_soon(lane, per_lane)
            elapsed = time.perf_counter() - start_s
            out[f"window_{window}"] = {
                "count": acked,
                "acked_per_s": acked / elapsed,
                "mean_in_flight_us": elapsed / max(acked, 1) * window * 1e6,
            }
    return out


def measure_jetstream(
    nats: NatsProcess, *, sequential: int, windowed: int, windows: Sequence[int]
) -> dict[str, Any]:
    """Acknowledged publishes to one file-backed, one-replica stream (see module doc)."""
    import trio

    cpu_before = _cpu_seconds(nats.pid)
    result: dict[str, Any] = trio.run(_jetstream, nats.url, sequential, windowed, windows)
    result["server_cpu_s"] = round(_cpu_seconds(nats.pid) - cpu_before, 3)
    return result


# --- command line -------------------------------------------------------------------


def _print_core(row: dict[str, Any]) -> None:
    status = "verified" if row["verified"] else "NOT ALL DELIVERED"
    print(
        f"core NATS {row['pattern']}: {row['published_per_s']:,.0f} msg/s in, "
        f"{row['delivered_per_s']:,.0f} msg/s delivered; nats-server "
        f"{row['server_cpu_us_per_delivery']:.2f} us CPU per delivery ({status}, "
        f"{row['delivered']:,} delivered)",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nats_ceiling", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per pattern (default 3)")
    parser.add_argument("--nats-server", metavar="PATH", help="the nats-server binary to run")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    args = parser.parse_args(argv)
    binary = nats_server_binary(args.nats_server)
    if binary is None:
        parser.error(f"nats-server not found: {NATS_INSTALL_HINT}")
    per_publisher = 20_000 if args.quick else 2_000_000
    repeat = 1 if args.quick else args.repeat
    core: list[dict[str, Any]] = []
    for _ in range(repeat):
        for pattern in PATTERNS:
            nats = start_nats_server(binary, jetstream=False)
            try:
                per = per_publisher // pattern.publishers
                row = measure_core(nats, pattern, per, 15.0 if args.quick else 120.0)
            finally:
                nats.stop()
            _print_core(row)
            core.append(row)
    nats = start_nats_server(binary)
    try:
        jetstream = measure_jetstream(
            nats,
            sequential=200 if args.quick else 5_000,
            windowed=1_000 if args.quick else 50_000,
            windows=(20, 100),
        )
    finally:
        nats.stop()
    once = jetstream["one_at_a_time"]
    print(
        f"JetStream, one stream (file, 1 replica), publish + ack one at a time: "
        f"p50 {once['p50_us']:.0f} us, p99 {once['p99_us']:.0f} us ({once['per_s']:,.0f}/s)"
    )
    for key, value in jetstream.items():
        if key.startswith("window_"):
            print(
                f"JetStream, {key.removeprefix('window_')} in flight: "
                f"{value['acked_per_s']:,.0f} acked publishes/s"
            )
    summary = {
        pattern.name: {
            "published_per_s": statistics.median(
                row["published_per_s"] for row in core if row["pattern"] == pattern.name
            ),
            "delivered_per_s": statistics.median(
                row["delivered_per_s"] for row in core if row["pattern"] == pattern.name
            ),
        }
        for pattern in PATTERNS
    }
    document = {
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nats_server": binary,
        "scale": "quick" if args.quick else "full",
        "repeat": repeat,
        "core_median": summary,
        "core_runs": core,
        "jetstream": jetstream,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if all(row["verified"] for row in core) else 1


if __name__ == "__main__":
    sys.exit(main())
