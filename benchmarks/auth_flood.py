"""A flood of wrong passwords while a connected client does QoS 1 round trips.

``python -m benchmarks.auth_flood`` starts trio-mqtt (``python -m trio_mqtt``) with a
password file on 127.0.0.1, connects a client with the right password, and measures its
QoS 1 round trips (PUBLISH to a topic it subscribes to -> PUBACK and delivery) while 100
CONNECTs with wrong passwords arrive, 20 at a time. Each wrong password costs the broker
a full PBKDF2 check (210,000 rounds); the round trips show whether that work holds the
connected client up. Prints the round-trip percentiles with and without the flood.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.brokers import HOST, free_port
from trio_mqtt.auth import hash_password
from trio_mqtt.mqtt.codec import PacketReader, encode
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Packet,
    ProtocolVersion,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)

V311 = ProtocolVersion.V311


class Client:
    """A blocking MQTT 3.1.1 client on a raw socket (our codec, no library)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = PacketReader(protocol_version=V311, server_side=False)
        self.packets: list[Packet] = []

    def send(self, packet: Packet) -> None:
        self.sock.sendall(encode(packet, V311))

    def receive(self) -> Packet | None:
        while not self.packets:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.packets += self.reader.feed(data)
        return self.packets.pop(0)

    def close(self) -> None:
        self.sock.close()


def start_broker(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    passwd = workdir / "passwd"
    passwd.write_text(f"alice:{hash_password(b'alice-pw').encode()}\n")
    passwd.chmod(0o600)
    config = workdir / "broker.toml"
    config.write_text(
        f'[broker]\npassword_file = "{passwd}"\nsys_interval = 0\n\n'
        f'[[listeners]]\nbind = "{HOST}:{port}"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "trio_mqtt", "--config", str(config), "--log-level", "warning"],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("trio-mqtt did not start")


def wrong_password(port: int, number: int) -> int:
    """One CONNECT with a wrong password; its CONNACK return code."""
    client = Client(port)
    try:
        client.send(Connect(f"guess{number}", username="alice", password=b"wrong"))
        answer = client.receive()
        return answer.reason_code if isinstance(answer, Connack) else -1
    finally:
        client.close()


def round_trips(port: int, stop: threading.Event, samples: list[float]) -> None:
    client = Client(port)
    client.send(Connect("measure", username="alice", password=b"alice-pw"))
    assert isinstance(client.receive(), Connack)
    client.send(Subscribe(1, (SubscriptionRequest("rtt", 1),)))
    assert isinstance(client.receive(), Suback)
    packet_id = 0
    while not stop.is_set():
        packet_id = packet_id % 65535 + 1
        start = time.perf_counter()
        client.send(Publish("rtt", b"x", qos=1, packet_id=packet_id))
        got_ack = got_message = False
        while not (got_ack and got_message):
            packet = client.receive()
            if isinstance(packet, Puback) and packet.packet_id == packet_id:
                got_ack = True
            elif isinstance(packet, Publish):
                got_message = True
                client.send(Puback(packet.packet_id or 0))
        samples.append(time.perf_counter() - start)
        time.sleep(0.001)
    client.close()


def percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(percent / 100 * len(ordered) + 0.5) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        broker = start_broker(Path(workdir), port)
        try:
            quiet: list[float] = []
            flood: list[float] = []
            stop = threading.Event()
            measurer = threading.Thread(target=round_trips, args=(port, stop, quiet))
            measurer.start()
            time.sleep(2)
            stop.set()
            measurer.join()
            stop = threading.Event()
            measurer = threading.Thread(target=round_trips, args=(port, stop, flood))
            measurer.start()
            time.sleep(0.5)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                codes = list(pool.map(lambda n: wrong_password(port, n), range(args.connects)))
            flood_s = time.perf_counter() - started
            stop.set()
            measurer.join()
        finally:
            broker.terminate()
            broker.wait(10)
    for name, values in (("quiet", quiet), ("during the flood", flood)):
        print(
            f"QoS 1 round trip, {name}: {len(values)} samples, "
            f"p50 {statistics.median(values) * 1000:.2f} ms, "
            f"p99 {percentile(values, 99) * 1000:.2f} ms, max {max(values) * 1000:.2f} ms"
        )
    refused = {code: codes.count(code) for code in sorted(set(codes))}
    print(
        f"{args.connects} wrong passwords, {args.concurrency} at a time: {flood_s:.2f} s; "
        f"CONNACK return codes {refused}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
