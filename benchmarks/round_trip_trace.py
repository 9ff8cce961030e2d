"""``python -m benchmarks.round_trip_trace``: the QoS 1 round trip's bytecodes, by stretch.

callgrind counts everything a round trip costs (``benchmarks.latency_floor``'s load,
docs/performance.md); the end-to-end latency depends on part of it: what the broker runs
between being woken for the PUBLISH and writing the delivery. This counts that part. An
in-process broker (one plain listener, the CLI's garbage-collector settings) serves
``latency_floor``'s client (a publisher and a subscriber connection, window 1); over the
measured round trips every bytecode the broker's process runs is counted
(``sys.settrace`` with opcode events) and the count is cut at the system calls that
bound the stretches (``sys.setprofile``): the return of ``epoll.poll`` (Trio's wait for
I/O), and each ``os.read`` and ``os.write`` of a socket.

Reported per round trip: bytecodes and Python calls in all; the bytecodes of each kind
of stretch (``epoll -> read``: Trio resuming a reader; ``read -> write``: a packet
handled up to the first bytes written; and so on); and per wake-up that wrote
something, the bytecodes from ``epoll``'s return to its first write (for the
publisher's PUBLISH: the delivery, which trio-mqtt writes before the PUBACK), with the
functions that run them. Bytecodes are not time (a call into C counts as one), but
unlike the clock they come out about the same run after run, and tracing slows the
broker without changing what it runs. The client's two connections and its SUBSCRIBE
are counted too (a fraction of a percent at the default 2,000 round trips). Results go
to ``benchmarks/results/round-trip-trace.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import json
import statistics
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import trio

from benchmarks.latency_floor import broker_config, client_command
from benchmarks.provenance import source_commit
from trio_mqtt import open_broker
from trio_mqtt.cli import GC_THRESHOLDS

WARMUP = 300
#: the socket calls that end a stretch (os.read / os.write), by the builtin's name
SOCKET_CALLS = frozenset({"read", "write"})

FunctionKey = tuple[str, int, str]


class Tracer:
    """Counts bytecodes per function and cuts them into stretches at the socket calls
    and at ``epoll``'s returns (``profile``)."""

    def __init__(self) -> None:
        self.calls = 0
        self.by_function: collections.Counter[FunctionKey] = collections.Counter()
        self.stretches: collections.Counter[tuple[str, str]] = collections.Counter()
        self.stretch_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.to_first_write: list[int] = []
        self.first_write_functions: collections.Counter[FunctionKey] = collections.Counter()
        self._last = ""
        self._since = 0
        self._wake: collections.Counter[FunctionKey] | None = None

    def trace(self, frame: FrameType, event: str, _arg: object) -> Any:
        if event == "call":
            self.calls += 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            code = frame.f_code
            key = (code.co_filename, code.co_firstlineno, code.co_qualname)
            self.by_function[key] += 1
            self._since += 1
            if self._wake is not None:
                self._wake[key] += 1
        return self.trace

    def profile(self, _frame: FrameType, event: str, arg: object) -> None:
        if event == "c_return" and getattr(arg, "__name__", "") == "poll":
            self._mark("epoll")
            self._wake = collections.Counter()  # (until its first write, if any)
        elif event == "c_call" and (mark := getattr(arg, "__name__", "")) in SOCKET_CALLS:
            self._mark(mark)
            if mark == "write" and self._wake is not None:
                self.to_first_write.append(self._wake.total())
                self.first_write_functions.update(self._wake)
                self._wake = None

    def _mark(self, mark: str) -> None:
        if self._last:
            self.stretches[self._last, mark] += self._since
            self.stretch_counts[self._last, mark] += 1
        self._last = mark
        self._since = 0


def _name(key: FunctionKey) -> str:
    filename, line, qualname = key
    for root in (str(Path(trio.__file__).parents[1]) + "/", str(Path(__file__).parents[1]) + "/"):
        filename = filename.removeprefix(root)
    return f"{qualname} ({filename}:{line})"


async def _run(count: int) -> Tracer:
    tracer = Tracer()
    async with open_broker(broker_config()) as broker:
        await trio.run_process(client_command(broker.port, WARMUP, 100), capture_stdout=True)
        gc.collect()
        gc.freeze()  # what the warm-up left is not this count's
        with tempfile.TemporaryFile() as output:  # (a pipe would fill: nobody reads it)
            process = await trio.lowlevel.open_process(
                client_command(broker.port, 0, count), stdout=output
            )
            sys.settrace(tracer.trace)
            sys.setprofile(tracer.profile)
            try:
                await process.wait()
            finally:
                sys.settrace(None)
                sys.setprofile(None)
            output.seek(0)
            result = output.read()
        if process.returncode or json.loads(result)["errors"]:
            raise RuntimeError(f"the client failed: {result[-2000:]!r}")
    return tracer


def measure(count: int, top: int) -> dict[str, Any]:
    """Trace ``count`` round trips; the per-round-trip figures (see the module doc)."""
    gc.set_threshold(*GC_THRESHOLDS)
    tracer = trio.run(_run, count)
    wakes = len(tracer.to_first_write)
    return {
        "round_trips": count,
        "bytecodes": tracer.by_function.total() / count,
        "calls": tracer.calls / count,
        "stretches": {
            f"{a} -> {b}": {
                "bytecodes": total / count,
                "per_round_trip": tracer.stretch_counts[a, b] / count,
            }
            for (a, b), total in tracer.stretches.most_common()
        },
        "wake_to_first_write": {
            "wakes_per_round_trip": wakes / count,
            "median": statistics.median(tracer.to_first_write) if wakes else 0,
            "functions": {
                _name(key): total / wakes
                for key, total in tracer.first_write_functions.most_common(top)
            },
        },
        "functions": {
            _name(key): total / count for key, total in tracer.by_function.most_common(top)
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.round_trip_trace", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--count", type=int, default=2000, help="round trips traced")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).parent / "results" / "round-trip-trace.json",
    )
    args = parser.parse_args(argv)
    report = measure(args.count, args.top)
    print(f"{report['bytecodes']:.0f} bytecodes, {report['calls']:.1f} Python calls per round trip")
    for name, stretch in report["stretches"].items():
        print(
            f"  {name:<16} {stretch['bytecodes']:7.0f} bytecodes "
            f"({stretch['per_round_trip']:.2f} a round trip)"
        )
    first = report["wake_to_first_write"]
    print(
        f"wake-up to its first write: {first['median']:.0f} bytecodes (median; "
        f"{first['wakes_per_round_trip']:.2f} such wake-ups a round trip), in:"
    )
    for name, value in list(first["functions"].items())[:15]:
        print(f"  {value:7.1f}  {name}")
    document = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": source_commit(),
        **report,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
