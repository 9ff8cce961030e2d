"""The benchmark scenarios: which workers each one starts, and what it measures.

A scenario runs against one already-started broker (:class:`benchmarks.brokers.Broker`)
and returns a :class:`RunOutcome`: its metrics and whether every delivered message was
verified (right count, right payload, right order). Sizes come from a :class:`Scale`
(``FULL`` or ``QUICK``).
"""

from __future__ import annotations

import bisect
import contextlib
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import attrs

from benchmarks.brokers import BrokerKind, BrokerProcess, read_rss_kib
from benchmarks.loadgen import (
    ConnectionTask,
    LatencyTask,
    PublisherTask,
    RetainedTask,
    SubscriberTask,
    Task,
    run_worker,
)
from benchmarks.wire import PAYLOAD

__all__ = [
    "FULL",
    "QUICK",
    "SCENARIOS",
    "CpuMeter",
    "MetricSpec",
    "ProcessCpu",
    "RunOutcome",
    "Scale",
    "Scenario",
    "ScenarioError",
    "end_to_end_latencies",
    "machine_busy",
    "pubsub",
    "scenario_by_name",
]


class ScenarioError(RuntimeError):
    """A scenario could not run to the end (a worker failed or timed out)."""


@attrs.frozen
class Scale:
    """How big each scenario is; ``QUICK`` is a smoke run, ``FULL`` the real benchmark."""

    name: str
    fanin_per_publisher: int
    fanout_messages: int
    latency_messages: int
    latency_warmup: int
    qos1_messages: int
    qos1_fanin_per_publisher: int
    sustained_per_publisher: int
    connections: int
    retained: int
    deadline_s: float


FULL = Scale(
    name="full",
    fanin_per_publisher=50_000,
    fanout_messages=5_000,
    latency_messages=5_000,
    latency_warmup=200,
    qos1_messages=50_000,
    qos1_fanin_per_publisher=50_000,
    sustained_per_publisher=1_000_000,
    connections=10_000,
    retained=100_000,
    deadline_s=120.0,
)
QUICK = Scale(
    name="quick",
    fanin_per_publisher=1_000,
    fanout_messages=100,
    latency_messages=200,
    latency_warmup=20,
    qos1_messages=1_000,
    qos1_fanin_per_publisher=1_000,
    sustained_per_publisher=5_000,
    connections=500,
    retained=2_000,
    deadline_s=15.0,
)


@attrs.frozen
class MetricSpec:
    """One number a scenario reports."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


@attrs.frozen
class RunOutcome:
    """What one run of one scenario against one broker measured and verified."""

    metrics: dict[str, float]
    verified: bool
    expected: int
    received: int
    error_count: int = 0
    errors: tuple[str, ...] = ()
    details: dict[str, Any] = attrs.Factory(dict)


ScenarioFunction = Callable[[BrokerProcess, Scale], RunOutcome]


@attrs.frozen
class Scenario:
    """A named scenario; *mosquitto_note* says how mosquitto's row differs, if it does."""

    name: str
    title: str
    metrics: tuple[MetricSpec, ...]
    run: ScenarioFunction
    mosquitto_note: str = ""


# --- worker processes ---------------------------------------------------------------


@attrs.define
class Workers:
    """The load generator processes of one run, started with the ``spawn`` method."""

    context: Any = attrs.Factory(lambda: multiprocessing.get_context("spawn"))
    go: Any = None
    stop: Any = None
    processes: list[BaseProcess] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        self.go = self.context.Event()
        self.stop = self.context.Event()

    def start(self, task: Task) -> Connection:
        """Start a worker for *task*; returns the parent's end of its pipe."""
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(
            target=run_worker, args=(task, child_end, self.go, self.stop), daemon=True
        )
        process.start()
        child_end.close()
        self.processes.append(process)
        return parent_end  # type: ignore[no-any-return]

    def close(self) -> None:
        """Tell every worker to stop; wait for them (bounded), then terminate stragglers."""
        self.stop.set()
        deadline = time.monotonic() + 10.0
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(5.0)


@contextmanager
def _workers() -> Iterator[Workers]:
    workers = Workers()
    try:
        yield workers
    finally:
        workers.close()


def expect(pipe: Connection, tag: str, timeout: float) -> Any:
    """The payload of the next *tag* message from a worker; ScenarioError otherwise."""
    try:
        if not pipe.poll(timeout):
            raise ScenarioError(f"no {tag!r} from a worker within {timeout:.0f} s")
        kind, payload = pipe.recv()
    except (EOFError, OSError) as exc:
        raise ScenarioError(f"a worker died before sending {tag!r}: {exc!r}") from None
    if kind == "error":
        raise ScenarioError(f"a worker failed:\n{payload}")
    if kind != tag:
        raise ScenarioError(f"expected {tag!r} from a worker, got {kind!r}")
    return payload


def _ready_all(pipes: Sequence[Connection], timeout: float) -> None:
    for pipe in pipes:
        expect(pipe, "ready", timeout)


def _results(pipes: Sequence[Connection], timeout: float) -> list[dict[str, Any]]:
    return [expect(pipe, "result", timeout) for pipe in pipes]


def _split(items: Sequence[str], parts: int) -> list[tuple[str, ...]]:
    return [tuple(items[index::parts]) for index in range(parts) if items[index::parts]]


# --- QoS 0 fan-in / fan-out ---------------------------------------------------------

PUBLISHERS = 4
FANOUT_SUBSCRIBERS = 50
SUBSCRIBER_PROCESSES = 2
#: QoS 1 publishers keep at most this many messages unacknowledged.
QOS1_WINDOW = 100
#: How often the broker's resident memory is sampled during a run.
RSS_SAMPLE_S = 0.05


class RssSampler:
    """Samples a process's resident memory in a thread while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first_kib = read_rss_kib(pid)
        self.peak_kib = self.first_kib
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(RSS_SAMPLE_S):
            with contextlib.suppress(OSError, ValueError):
                self.peak_kib = max(self.peak_kib, read_rss_kib(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        with contextlib.suppress(OSError, ValueError):
            self.peak_kib = max(self.peak_kib, read_rss_kib(self.pid))


def pubsub(
    broker: BrokerProcess,
    scale: Scale,
    *,
    publishers: int,
    per_publisher: int,
    subscribers: int,
    topic_filter: str,
    topics: Sequence[str],
    proxy: bool,
    tag: str,
    qos: int = 0,
    window: int = 1,
    payload_size: int = PAYLOAD.size,
    deadline_s: float | None = None,
    subscriber_broker: BrokerProcess | None = None,
    before_go: Callable[[], None] | None = None,
    cpu_pids: Mapping[str, int] | None = None,
) -> RunOutcome:
    """Publishers blast (QoS 0) or keep *window* unacknowledged (QoS 1); subscribers verify.

    Rate = deliveries / elapsed time. The broker's resident memory is sampled during the
    run: ``peak_rss_mib`` is its highest value.

    Cluster runs: the subscribers connect to *subscriber_broker* (default: *broker*, where
    the publishers connect); *before_go* runs once every worker is connected and
    subscribed, before the clock starts; the CPU time of each process in *cpu_pids* is
    reported as ``<name>_cpu_s`` in the details (the broker's own is ``broker_cpu_s``).
    """
    deadline_s = scale.deadline_s if deadline_s is None else deadline_s
    port = broker.broker.proxy_port if proxy else broker.broker.port
    if port is None:
        raise ScenarioError(f"{broker.broker.kind.value} has no PROXY protocol listener")
    sub_port = port
    if subscriber_broker is not None:
        sub_port = subscriber_broker.broker.proxy_port if proxy else subscriber_broker.broker.port
        if sub_port is None:
            raise ScenarioError("the subscribers' broker has no PROXY protocol listener")
    source_topics = tuple(enumerate(topics))
    client_ids = [f"{tag}-sub{index}" for index in range(subscribers)]
    groups = _split(client_ids, min(SUBSCRIBER_PROCESSES, subscribers))
    with _workers() as workers:
        sub_pipes = [
            workers.start(
                SubscriberTask(
                    port=sub_port,
                    client_ids=group,
                    topic_filter=topic_filter,
                    qos=qos,
                    expected_per_connection=publishers * per_publisher,
                    source_topics=source_topics,
                    deadline_s=deadline_s,
                    proxy=proxy,
                    payload_size=payload_size,
                )
            )
            for group in groups
        ]
        pub_pipes = [
            workers.start(
                PublisherTask(
                    port=port,
                    client_id=f"{tag}-pub{source}",
                    topic=topics[source],
                    source=source,
                    count=per_publisher,
                    deadline_s=deadline_s,
                    proxy=proxy,
                    qos=qos,
                    window=window,
                    payload_size=payload_size,
                )
            )
            for source in range(publishers)
        ]
        _ready_all(sub_pipes + pub_pipes, 60.0)
        if before_go is not None:
            before_go()
        meter = CpuMeter(broker.process.pid)
        others = {name: ProcessCpu(pid) for name, pid in (cpu_pids or {}).items()}
        meter.start()
        with RssSampler(broker.process.pid) as rss:
            workers.go.set()
            pub_results = _results(pub_pipes, deadline_s + 30)
            sub_results = _results(sub_pipes, deadline_s + 30)
        cpu: dict[str, float] = {
            **meter.stop(),
            **{f"{name}_cpu_s": other.seconds() for name, other in others.items()},
        }
    start = min(result["start"] for result in pub_results)
    acked = max(result["acked"] for result in pub_results)
    last_rx = max(result["last_rx"] for result in sub_results)
    received = sum(sum(result["received"]) for result in sub_results)
    expected = subscribers * publishers * per_publisher
    errors = [error for result in sub_results for error in result["errors"]]
    error_count = sum(result["error_count"] for result in sub_results)
    elapsed = max(last_rx - start, 1e-9)
    published = publishers * per_publisher
    metrics = {
        "throughput": received / elapsed,
        "publish_rate": published / max(acked - start, 1e-9),
        "elapsed_s": elapsed,
        "peak_rss_mib": rss.peak_kib / 1024,
    }
    if qos and subscribers == 1:
        latencies = end_to_end_latencies(
            [result["sends"] for result in pub_results], sub_results[0]["progress"]
        )
        if latencies:
            metrics["p50_ms"] = _percentile(latencies, 50) / 1e6
            metrics["p99_ms"] = _percentile(latencies, 99) / 1e6
    return RunOutcome(
        metrics=metrics,
        verified=received == expected and error_count == 0,
        expected=expected,
        received=received,
        error_count=error_count,
        errors=tuple(errors[:10]),
        details={
            **cpu,
            "publisher_cpu_s": sum(result["cpu_s"] for result in pub_results),
            "subscriber_cpu_s": sum(result["cpu_s"] for result in sub_results),
            "messages_published": published,
            "rss_before_mib": round(rss.first_kib / 1024, 1),
        },
    )


def end_to_end_latencies(
    sends: Sequence[Sequence[tuple[int, float]]],
    progress: Sequence[tuple[float, dict[int, int]]],
) -> list[int]:
    """Publish-to-delivery time of every message, in ns, sorted.

    ``sends[source]`` lists (first sequence number, time) of each write of publisher
    *source*; ``progress`` lists (time, next expected sequence number per source) after
    each read of the subscriber. A message arrived at the first read after which its
    publisher's next expected number is beyond it.
    """
    latencies: list[int] = []
    for source, writes in enumerate(sends):
        firsts = [first for first, _time in writes]
        seq = 0
        for arrived, next_seq in progress:
            done = next_seq.get(source, 0)
            while seq < done:
                sent = writes[bisect.bisect_right(firsts, seq) - 1][1]
                latencies.append(int((arrived - sent) * 1e9))
                seq += 1
    latencies.sort()
    return latencies


def _fanin(broker: BrokerProcess, per_publisher: int, tag: str, **options: Any) -> RunOutcome:
    """4 publishers on bench/p0..p3 -> 1 subscriber on bench/#; *options* go to pubsub."""
    options.setdefault("proxy", False)
    return pubsub(
        broker,
        publishers=PUBLISHERS,
        per_publisher=per_publisher,
        subscribers=1,
        topic_filter="bench/#",
        topics=[f"bench/p{source}" for source in range(PUBLISHERS)],
        tag=tag,
        **options,
    )


def fanin(broker: BrokerProcess, scale: Scale, *, proxy: bool = False) -> RunOutcome:
    """QoS 0 fan-in: 4 publishers on bench/p0..p3 -> 1 subscriber on bench/#."""
    return _fanin(broker, scale.fanin_per_publisher, "fanin", scale=scale, proxy=proxy)


def fanin_sustained(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """QoS 0 fan-in kept up for long: 4 x 1,000,000 messages, and the broker's peak RSS.

    A broker that reads publishers faster than it writes to the subscriber either loses
    messages or grows a backlog; this run shows which, and how much memory it takes.
    """
    return _fanin(
        broker,
        scale.sustained_per_publisher,
        "sustained",
        scale=scale,
        deadline_s=scale.deadline_s * 4,
    )


def qos1_fanin(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """QoS 1 fan-in: 4 publishers, each with 100 unacknowledged -> 1 QoS 1 subscriber."""
    return _fanin(
        broker, scale.qos1_fanin_per_publisher, "qos1fanin", scale=scale, qos=1, window=QOS1_WINDOW
    )


def fanin_proxy(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """Fan-in through the PROXY-v2-required listener (mosquitto: plain fan-in)."""
    return fanin(broker, scale, proxy=broker.broker.kind is BrokerKind.TRIO_MQTT)


def fanout(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """QoS 0 fan-out: 1 publisher on bench/fo -> 50 subscribers of bench/fo."""
    return pubsub(
        broker,
        scale,
        publishers=1,
        per_publisher=scale.fanout_messages,
        subscribers=FANOUT_SUBSCRIBERS,
        topic_filter="bench/fo",
        topics=["bench/fo"],
        proxy=False,
        tag="fanout",
    )


# --- QoS 1 --------------------------------------------------------------------------


def qos1_latency(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """Window 1: one client publishes QoS 1 to a topic it subscribes to; publish->delivery."""
    with _workers() as workers:
        pipe = workers.start(
            LatencyTask(
                port=broker.broker.port,
                client_id="latency",
                topic="bench/lat",
                count=scale.latency_messages,
                warmup=scale.latency_warmup,
                deadline_s=scale.deadline_s,
            )
        )
        _ready_all([pipe], 60.0)
        workers.go.set()
        (result,) = _results([pipe], scale.deadline_s + 30)
    return latency_outcome(result, scale.latency_messages)


def latency_outcome(result: dict[str, Any], expected: int) -> RunOutcome:
    """The outcome of a latency worker's result: p50, p99 and mean, verified when every
    one of ``expected`` round trips came back without an error."""
    latencies = sorted(result["latencies_ns"])
    received = len(latencies)
    metrics: dict[str, float] = {}
    if latencies:
        metrics = {
            "p50_us": _percentile(latencies, 50) / 1000,
            "p99_us": _percentile(latencies, 99) / 1000,
            "mean_us": statistics.fmean(latencies) / 1000,
        }
    return RunOutcome(
        metrics=metrics,
        verified=received == expected and result["error_count"] == 0,
        expected=expected,
        received=received,
        error_count=result["error_count"],
        errors=tuple(result["errors"][:10]),
    )


def _percentile(ordered: Sequence[int], percent: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    rank = max(1, round(percent / 100 * len(ordered) + 0.5 - 1e-9))
    return float(ordered[min(rank, len(ordered)) - 1])


def qos1_throughput(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """QoS 1, window 100: 1 publisher -> 1 subscriber (QoS 1, PUBACKs every delivery)."""
    port = broker.broker.port
    count = scale.qos1_messages
    with _workers() as workers:
        sub_pipe = workers.start(
            SubscriberTask(
                port=port,
                client_ids=("qos1-sub",),
                topic_filter="bench/q1",
                qos=1,
                expected_per_connection=count,
                source_topics=((0, "bench/q1"),),
                deadline_s=scale.deadline_s,
            )
        )
        pub_pipe = workers.start(
            PublisherTask(
                port=port,
                client_id="qos1-pub",
                topic="bench/q1",
                source=0,
                count=count,
                deadline_s=scale.deadline_s,
                qos=1,
                window=QOS1_WINDOW,
            )
        )
        _ready_all([sub_pipe, pub_pipe], 60.0)
        meter = CpuMeter(broker.process.pid)
        meter.start()
        workers.go.set()
        (pub,) = _results([pub_pipe], scale.deadline_s + 30)
        (sub,) = _results([sub_pipe], scale.deadline_s + 30)
        cpu = meter.stop()
    received = sum(sub["received"])
    elapsed = max(max(pub["acked"], sub["last_rx"]) - pub["start"], 1e-9)
    return RunOutcome(
        metrics={"throughput": received / elapsed, "elapsed_s": elapsed},
        verified=received == count and sub["error_count"] == 0,
        expected=count,
        received=received,
        error_count=sub["error_count"],
        errors=tuple(sub["errors"][:10]),
        details={
            **cpu,
            "publisher_cpu_s": pub["cpu_s"],
            "subscriber_cpu_s": sub["cpu_s"],
        },
    )


# --- idle connections ---------------------------------------------------------------

CONNECTION_PROCESSES = 2
CONNECTION_CONCURRENCY = 50
#: Pause after the last CONNACK before reading RSS, so the broker settles.
RSS_SETTLE_S = 1.0


def connections(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """Open N idle connections: handshake rate, RSS per connection, all still answer PINGs."""
    pid = broker.process.pid
    total = scale.connections
    counts = [
        total // CONNECTION_PROCESSES + (1 if index < total % CONNECTION_PROCESSES else 0)
        for index in range(CONNECTION_PROCESSES)
    ]
    with _workers() as workers:
        pipes = [
            workers.start(
                ConnectionTask(
                    port=broker.broker.port,
                    client_prefix=f"idle{index}-",
                    count=count,
                    concurrency=CONNECTION_CONCURRENCY,
                    deadline_s=scale.deadline_s,
                )
            )
            for index, count in enumerate(counts)
        ]
        _ready_all(pipes, 60.0)
        # Baseline after the workers are up (their start-up does not touch the broker).
        rss_before = read_rss_kib(pid)
        workers.go.set()
        opened = [expect(pipe, "connected", scale.deadline_s + 30) for pipe in pipes]
        time.sleep(RSS_SETTLE_S)
        rss_after = read_rss_kib(pid)
        for pipe in pipes:
            pipe.send("ping")
        pinged = [expect(pipe, "pinged", scale.deadline_s + 30) for pipe in pipes]
        for pipe in pipes:
            pipe.send("close")
        _results(pipes, 30.0)
    connected = sum(result["connected"] for result in opened)
    pongs = sum(result["pongs"] for result in pinged)
    failed = sum(result["failed"] for result in opened)
    elapsed = max(
        max(result["end"] for result in opened) - min(result["start"] for result in opened),
        1e-9,
    )
    errors = [error for result in opened for error in result["errors"]]
    return RunOutcome(
        metrics={
            "connect_rate": connected / elapsed,
            "rss_per_conn_kib": (rss_after - rss_before) / max(connected, 1),
            "held": float(pongs),
        },
        verified=connected == total and pongs == total,
        expected=total,
        received=pongs,
        error_count=failed + (connected - pongs),
        errors=tuple(errors[:10]),
        details={
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "connected": connected,
            "loadgen_cpu_s": round(sum(result["cpu_s"] for result in opened), 3),
            "ping_all_s": round(max(result["seconds"] for result in pinged), 3),
        },
    )


# --- retained -----------------------------------------------------------------------


def retained(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """Store N retained topics, then time a ``#`` subscriber until all N arrived."""
    with _workers() as workers:
        pipe = workers.start(
            RetainedTask(
                port=broker.broker.port,
                client_prefix="retained-",
                count=scale.retained,
                deadline_s=scale.deadline_s,
            )
        )
        _ready_all([pipe], 60.0)
        workers.go.set()
        (result,) = _results([pipe], scale.deadline_s + 30)
    store_s = result["stored"] - result["start"]
    deliver_s = result["done"] - result["subscribe_start"]
    count = scale.retained
    return RunOutcome(
        metrics={
            "deliver_s": deliver_s,
            "deliver_rate": result["received"] / max(deliver_s, 1e-9),
            "store_rate": count / max(store_s, 1e-9),
        },
        verified=result["unique"] == count
        and result["received"] == count
        and result["error_count"] == 0,
        expected=count,
        received=result["unique"],
        error_count=result["error_count"],
        errors=tuple(result["errors"][:10]),
    )


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine from /proc/stat, in clock ticks."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def machine_busy(duration: float) -> float:
    """Share of all cores that were busy during the next *duration* seconds (0..1)."""
    busy_start, total_start = _machine_jiffies()
    time.sleep(duration)
    busy, total = _machine_jiffies()
    return (busy - busy_start) / max(total - total_start, 1)


@attrs.define
class CpuMeter:
    """CPU use of the broker process and of the whole machine over a timed section."""

    pid: int
    _broker_start: float = 0.0
    _machine_start: tuple[int, int] = (0, 0)

    def start(self) -> None:
        self._broker_start = _cpu_seconds(self.pid)
        self._machine_start = _machine_jiffies()

    def stop(self) -> dict[str, float]:
        """broker_cpu_s, and machine_busy: the busy share of all cores (0..1)."""
        busy, total = _machine_jiffies()
        busy -= self._machine_start[0]
        total -= self._machine_start[1]
        return {
            "broker_cpu_s": round(_cpu_seconds(self.pid) - self._broker_start, 3),
            "machine_busy": round(busy / total, 3) if total else 0.0,
        }


class ProcessCpu:
    """CPU time a process uses from now on (utime + stime from /proc/PID/stat)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = _cpu_seconds(pid)

    def seconds(self) -> float:
        """CPU seconds used since this object was made, rounded to the clock tick."""
        return round(_cpu_seconds(self.pid) - self.start, 3)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of process *pid* from /proc/PID/stat, in seconds."""
    import os

    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# --- the table of scenarios ---------------------------------------------------------

MSG_RATE = MetricSpec("throughput", "throughput", "msg/s", higher_is_better=True)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "fanin",
        "QoS 0 fan-in (4 publishers -> 1 subscriber on bench/#)",
        (MSG_RATE,),
        fanin,
    ),
    Scenario(
        "fanout",
        "QoS 0 fan-out (1 publisher -> 50 subscribers)",
        (MetricSpec("throughput", "deliveries", "msg/s", higher_is_better=True),),
        fanout,
    ),
    Scenario(
        "qos1_fanin",
        "QoS 1 fan-in (4 publishers, 100 unacknowledged each -> 1 QoS 1 subscriber)",
        (
            MSG_RATE,
            MetricSpec("p50_ms", "end-to-end p50 latency", "ms", higher_is_better=False),
            MetricSpec("p99_ms", "end-to-end p99 latency", "ms", higher_is_better=False),
        ),
        qos1_fanin,
    ),
    Scenario(
        "fanin_sustained",
        "QoS 0 fan-in kept up: 4 x 1,000,000 messages -> 1 subscriber",
        (
            MSG_RATE,
            MetricSpec("peak_rss_mib", "broker peak RSS", "MiB", higher_is_better=False),
        ),
        fanin_sustained,
    ),
    Scenario(
        "qos1_latency",
        "QoS 1 round trip, window 1 (publish -> delivery)",
        (
            MetricSpec("p50_us", "p50 latency", "us", higher_is_better=False),
            MetricSpec("p99_us", "p99 latency", "us", higher_is_better=False),
        ),
        qos1_latency,
    ),
    Scenario(
        "qos1_throughput",
        "QoS 1 throughput, window 100 (1 publisher -> 1 subscriber)",
        (MSG_RATE,),
        qos1_throughput,
    ),
    Scenario(
        "connections",
        "Idle connections",
        (
            MetricSpec("connect_rate", "connection rate", "conn/s", higher_is_better=True),
            MetricSpec("rss_per_conn_kib", "RSS per idle connection", "KiB", False),
            MetricSpec("held", "connections held (answer PINGREQ)", "conn", True),
        ),
        connections,
    ),
    Scenario(
        "retained",
        "Retained: N topics, then a # subscriber",
        (
            MetricSpec("deliver_s", "time until all arrive", "s", higher_is_better=False),
            MetricSpec("store_rate", "retained store rate", "msg/s", higher_is_better=True),
        ),
        retained,
    ),
    Scenario(
        "fanin_proxy",
        "QoS 0 fan-in through a PROXY v2 listener",
        (MSG_RATE,),
        fanin_proxy,
        mosquitto_note="mosquitto 2.0 has no PROXY protocol: its column is plain-TCP fan-in",
    ),
)


def scenario_by_name(name: str) -> Scenario:
    """The scenario called *name*; ValueError listing the names otherwise."""
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    names = ", ".join(scenario.name for scenario in SCENARIOS)
    raise ValueError(f"unknown scenario {name!r} (choose from: {names})")
