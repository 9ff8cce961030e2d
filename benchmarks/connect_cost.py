"""``python -m benchmarks.connect_cost``: CPU instructions per connection, counted.

The connect-rate scenarios compare trio-mqtt with mosquitto in connects/s, and on a
machine shared with other jobs their runs spread by a third: too much to see a change of
a few percent in what one connection costs. This counts it instead. The broker runs in
process under callgrind (valgrind's instruction counter: the same code counted twice
comes out within half a percent, whatever else the machine does) with a plain listener
and a PROXY-required one (trusted 127.0.0.1, as the scenarios configure it) and the
CLI's garbage-collector settings.
Each kind is counted in a broker process of its own.

A client process opens 300 connections first (``--warmup``; not counted: caches and
code objects settle; what they leave is then frozen out of the garbage collector's
generations). Then two client processes open
``--count`` connections between them the way the ``connect_rate`` load does
(non-blocking connects, 50 handshakes in flight each, the PROXY header and the CONNECT
in one send). All are held until the count ends, so no close is counted. What is
counted is everything the broker's process runs from the first of those connections to
the CONNACK of the last: accept, PeerInfo, header, CONNECT, session, CONNACK, Trio's
scheduling (the kernel's share is not counted).

Reported per kind (``plain``; ``v1``, ``v2``: with a PROXY header; ``mqtt5``: plain with
an MQTT 5.0 CONNECT, no properties, whose CONNACK carries the broker's): instructions
per connection, and each kind's ratio to plain. Needs valgrind (Debian ``valgrind``);
takes a minute or two per kind at the default count (the start of Python under valgrind
is half a minute of it).
Results go to ``benchmarks/results/connect-cost.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import errno
import gc
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks.loadgen import HOST, proxy_header
from benchmarks.provenance import source_commit
from benchmarks.wire import connect_packet
from trio_mqtt import open_broker
from trio_mqtt.cli import GC_THRESHOLDS
from trio_mqtt.config import BrokerConfig, ListenerConfig, ProxyMode, ProxyPolicy

KINDS = ("plain", "v1", "v2", "mqtt5")
PROXY_KINDS = frozenset({"v1", "v2"})  # (the PROXY header versions, sent to the PROXY listener)
WARMUP = 300
CLIENTS = 2
CONCURRENCY = 50
# callgrind's markers: what the counted stretch begins and ends with, two C functions
# nothing else in the broker's process calls meanwhile (time.sleep, os.getppid)
ZERO_AT = "time_sleep"
DUMP_AT = "os_getppid"
_MODULE = (sys.executable, "-m", "benchmarks.connect_cost")


def client(port: int, count: int, kind: str, prefix: str) -> None:
    """Once told to go (a line on stdin), open ``count`` connections as one
    ``connect_rate`` load process does; say so on stdout once all have their CONNACK,
    and hold them until stdin closes."""
    sys.stdin.readline()
    selector = selectors.DefaultSelector()
    held: list[socket.socket] = []
    started = 0
    while len(held) < count:
        while started < count and started - len(held) < CONCURRENCY:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sock.connect_ex((HOST, port)) not in (0, errno.EINPROGRESS):
                raise RuntimeError("connect failed")
            selector.register(sock, selectors.EVENT_WRITE, f"{prefix}{started}")
            started += 1
        for key, _events in selector.select(60.0):
            sock = key.fileobj  # type: ignore[assignment]
            if key.events == selectors.EVENT_WRITE:
                header = proxy_header(sock, port, kind) if kind in PROXY_KINDS else b""
                level = 5 if kind == "mqtt5" else 4
                sock.send(header + connect_packet(key.data, level=level))
                selector.modify(sock, selectors.EVENT_READ)
                continue
            if sock.recv(4)[:1] != b"\x20":
                raise RuntimeError("expected a CONNACK")
            selector.unregister(sock)
            held.append(sock)
    print("connected", flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


async def _clients(port: int, kind: str, counts: list[int], prefix: str) -> list[trio.Process]:
    """Client processes started, waiting to be told to go."""
    return [
        await trio.lowlevel.open_process(
            [*_MODULE, "--client", str(port), str(count), kind, f"{prefix}{index}-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for index, count in enumerate(counts)
    ]


async def _go(processes: list[trio.Process]) -> None:
    """Tell the clients to go; return once each has all its connections."""
    for process in processes:
        assert process.stdin is not None
        await process.stdin.send_all(b"go\n")
    for process in processes:
        assert process.stdout is not None
        said = b""
        while not said.endswith(b"\n"):
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"a client ended with status {await process.wait()}")
            said += chunk


async def _close(processes: list[trio.Process]) -> None:
    for process in processes:
        assert process.stdin is not None
        await process.stdin.aclose()
    for process in processes:
        if await process.wait() != 0:
            raise RuntimeError(f"a client exited with status {process.returncode}")


async def serve(kind: str, count: int, warmup_count: int = WARMUP) -> None:
    """The broker, counted by callgrind between the two markers (run under valgrind)."""
    policy = ProxyPolicy(mode=ProxyMode.REQUIRED, trusted_sources=("127.0.0.1/32",))
    config = BrokerConfig(
        listeners=(
            ListenerConfig(name="plain", host="127.0.0.1", port=0),
            ListenerConfig(name="proxy", host="127.0.0.1", port=0, proxy_protocol=policy),
        ),
        sys_interval=0,
    )
    async with open_broker(config) as broker:
        port = broker.addresses("proxy" if kind in PROXY_KINDS else "plain")[0].port
        warmup = await _clients(port, kind, [warmup_count], "warm-")
        await _go(warmup)
        counts = [count // CLIENTS + (index < count % CLIENTS) for index in range(CLIENTS)]
        measured = await _clients(port, kind, counts, "c")
        # what the warm-up left, out of the garbage collector's generations: the count
        # is the measured connections' own
        gc.collect()
        gc.freeze()
        time.sleep(0)  # noqa: ASYNC251 - ZERO_AT, callgrind's marker: it does not block
        await _go(measured)
        os.getppid()  # DUMP_AT
        await _close(warmup + measured)  # (all held till now: no close is counted)


def _instructions(out: Path) -> int:
    """The instructions of the dump ``DUMP_AT`` triggered, among callgrind's files."""
    for path in out.parent.glob(out.name + "*"):
        text = path.read_text(errors="replace")
        found = re.search(r"^summary: (\d+)", text, re.MULTILINE)
        if f"Trigger: --dump-before={DUMP_AT}" in text and found:
            return int(found.group(1))
    raise RuntimeError(f"no callgrind dump at {DUMP_AT} in {out.parent}")


def count_instructions(kind: str, count: int, warmup: int = WARMUP) -> float:
    """Instructions per connection of ``kind``, in a broker process of its own under
    callgrind (counted after another kind in the same process, a kind came out a few
    percent apart from its count alone)."""
    with tempfile.TemporaryDirectory() as workdir:
        out = Path(workdir) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            f"--zero-before={ZERO_AT}",
            f"--dump-before={DUMP_AT}",
            *_MODULE,
            "--serve",
            kind,
            "--count",
            str(count),
            "--warmup",
            str(warmup),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"valgrind exited with {done.returncode}:\n{done.stderr[-2000:]}")
        return _instructions(out) / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.connect_cost", description=__doc__)
    parser.add_argument("--count", type=int, default=1000, help="connections counted per run")
    parser.add_argument("--kind", action="append", choices=KINDS, help="only these (repeatable)")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="connections not counted")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "connect-cost.json"
    )
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        port, count, kind, prefix = args.client
        client(int(port), int(count), kind, prefix)
        return
    if args.serve:
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        trio.run(serve, args.serve, args.count, args.warmup)
        return
    if shutil.which("valgrind") is None:
        parser.exit(2, "valgrind is not installed (Debian: apt-get install valgrind)\n")
    per_connection: dict[str, float] = {}
    for kind in args.kind or KINDS:
        per_connection[kind] = count_instructions(kind, args.count, args.warmup)
        print(f"{kind:6s} {per_connection[kind]:10,.0f} instructions per connection", flush=True)
    plain = per_connection.get("plain")
    if plain:
        for kind, value in per_connection.items():
            print(f"{kind:6s} {value / plain:.3f}x plain")
    report: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": source_commit(),
        "count": args.count,
        "warmup": args.warmup,
        "instructions_per_connection": per_connection,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
