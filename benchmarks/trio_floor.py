"""``python -m benchmarks.trio_floor``: what one Trio task per connection costs here.

The connect-rate scenarios put trio-mqtt far below mosquitto. This measures the floor
under that: a bare ``trio.serve_tcp`` server that reads a CONNECT, writes a CONNACK and
holds the connection until the client closes it (no MQTT parsing, no session, no
logging), next to trio-mqtt serving the same load in the same way (``open_broker`` in
process, one plain listener, the CLI's garbage-collector settings). The client is one
raw-socket process with 50 handshakes in flight, as one load process of the
``connect_rate`` scenario; it keeps every connection open until all have their CONNACK.

Reported per server: connects/s (wall clock of the client) and the server's CPU time per
connection (``getrusage`` of this process over the client's run, so it includes the
accepts, the reads and writes, and Trio's scheduling). Runs alternate between the two
servers. Results go to ``benchmarks/results/trio-floor.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import resource
import selectors
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks.provenance import source_commit
from benchmarks.wire import connect_packet
from trio_mqtt import open_broker
from trio_mqtt.cli import GC_THRESHOLDS
from trio_mqtt.config import BrokerConfig, ListenerConfig

CONCURRENCY = 50
CONNACK = b"\x20\x02\x00\x00"


def client(port: int, count: int) -> float:
    """Open ``count`` connections, at most CONCURRENCY handshakes at once; connects/s."""
    selector = selectors.DefaultSelector()
    held: list[socket.socket] = []
    started = done = 0
    begin = time.perf_counter()
    while done < count:
        while started < count and started - done < CONCURRENCY:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            sock.send(connect_packet(f"floor-{started}", keep_alive=60))
            selector.register(sock, selectors.EVENT_READ)
            started += 1
        for key, _events in selector.select(10.0):
            sock = key.fileobj  # type: ignore[assignment]
            reply = sock.recv(16)
            if reply[:1] != CONNACK[:1]:
                raise RuntimeError(f"expected a CONNACK, got {reply!r}")
            selector.unregister(sock)
            held.append(sock)
            done += 1
    rate = count / (time.perf_counter() - begin)
    for sock in held:
        sock.close()
    return rate


async def _hold(stream: trio.SocketStream) -> None:
    await stream.receive_some(65536)
    await stream.send_all(CONNACK)
    while await stream.receive_some(65536):
        pass


async def _measure(port: int, count: int) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = await trio.run_process(
        [sys.executable, "-m", "benchmarks.trio_floor", "--client", str(port), str(count)],
        capture_stdout=True,
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"connects_per_s": float(result.stdout), "cpu_us_per_connection": cpu / count * 1e6}


async def bare_trio(count: int) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, _hold, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        outcome = await _measure(port, count)
        nursery.cancel_scope.cancel()
    return outcome


async def trio_mqtt(count: int) -> dict[str, float]:
    config = BrokerConfig(listeners=(ListenerConfig(host="127.0.0.1", port=0),))
    async with open_broker(config) as broker:
        return await _measure(broker.port, count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trio_floor", description=__doc__)
    parser.add_argument("--count", type=int, default=5000, help="connections per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "trio-floor.json"
    )
    parser.add_argument("--client", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(client(*args.client))
        return
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    runs: dict[str, list[dict[str, float]]] = {"bare trio": [], "trio-mqtt": []}
    for index in range(args.repeat):
        for name, server in (("bare trio", bare_trio), ("trio-mqtt", trio_mqtt)):
            outcome = trio.run(server, args.count)
            runs[name].append(outcome)
            print(
                f"[{index + 1}/{args.repeat}] {name}: {outcome['connects_per_s']:,.0f} connects/s, "
                f"{outcome['cpu_us_per_connection']:.0f} us CPU per connection",
                flush=True,
            )
    summary: dict[str, Any] = {}
    for name, outcomes in runs.items():
        summary[name] = {
            key: {
                "median": statistics.median(o[key] for o in outcomes),
                "min": min(o[key] for o in outcomes),
                "max": max(o[key] for o in outcomes),
            }
            for key in ("connects_per_s", "cpu_us_per_connection")
        }
        rate, cpu = summary[name]["connects_per_s"], summary[name]["cpu_us_per_connection"]
        print(
            f"{name:10s} {rate['median']:8,.0f} connects/s ({rate['min']:,.0f}-{rate['max']:,.0f})"
            f"  {cpu['median']:5.0f} us CPU per connection ({cpu['min']:.0f}-{cpu['max']:.0f})"
        )
    args.output.write_text(
        json.dumps(
            {
                "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "commit": source_commit(),
                "count": args.count,
                "concurrency": CONCURRENCY,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
