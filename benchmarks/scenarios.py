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
    #: (payload bytes, messages per publisher) of the fan-in payload-size scenarios
    payload_fanin: tuple[tuple[int, int], ...] = ()
    #: handshakes of the connect-rate scenarios (each connection closed afterwards)
    connects: int = 0
    #: subscribers of the latency topic besides the measuring one (qos1_latency_crowd)
    crowd_subscribers: int = 0
    #: measured round trips of qos1_latency_crowd (each one delivered N + 1 times)
    crowd_messages: int = 0


FULL = Scale(
    name="full",
    # 4 x 250,000: long enough to reach steady state (a broker may read faster than it
    # writes for the first second or so, until its queues or buffers fill)
    fanin_per_publisher=250_000,
    # 1 -> 50 x 20,000: a million deliveries, a second or more per run (5,000 until
    # December 2026: runs of a quarter of a second, whose ratios spread 1.5-2.7x)
    fanout_messages=20_000,
    latency_messages=5_000,
    latency_warmup=200,
    qos1_messages=50_000,
    qos1_fanin_per_publisher=50_000,
    sustained_per_publisher=1_000_000,
    connections=10_000,
    retained=100_000,
    deadline_s=120.0,
    # the publishers build their whole stream in memory before the clock starts: the
    # larger payloads send fewer messages (1 KiB: 400 MB in all; 64 KiB: 640 MB)
    payload_fanin=((16, 250_000), (64, 250_000), (1024, 100_000), (65536, 2_500)),
    connects=10_000,
    crowd_subscribers=1_000,
    crowd_messages=1_000,
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
    payload_fanin=((16, 1_000), (64, 1_000), (1024, 500), (65536, 50)),
    connects=300,
    crowd_subscribers=100,
    crowd_messages=200,
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
    """A named scenario; *mosquitto_note* says how mosquitto's row differs, if it does,
    and *note_applies* (if given) which of mosquitto's runs it is true of."""

    name: str
    title: str
    metrics: tuple[MetricSpec, ...]
    run: ScenarioFunction
    mosquitto_note: str = ""
    note_applies: Callable[[RunOutcome], bool] | None = None

    def note_for(self, mosquitto_runs: Sequence[RunOutcome]) -> str:
        """The note, if any of *mosquitto_runs* is one it is true of."""
        if not self.mosquitto_note:
            return ""
        if self.note_applies is None:
            return self.mosquitto_note
        return self.mosquitto_note if any(map(self.note_applies, mosquitto_runs)) else ""


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
#: ... and how often a sample goes into the run's RSS timeline (details.rss_timeline).
RSS_TIMELINE_S = 0.5
#: Throughput "after the first second": deliveries from then on / the time they took.
WARMUP_S = 1.0
#: The "late" latency is that of the messages delivered in the last tenth of the run.
LATE_SHARE = 0.1


class RssSampler:
    """Samples a process's resident memory in a thread while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first_kib = read_rss_kib(pid)
        self.peak_kib = self.first_kib
        self.last_kib = self.first_kib
        self.started = time.perf_counter()
        #: (seconds since the start, KiB) every RSS_TIMELINE_S
        self.timeline: list[tuple[float, int]] = [(0.0, self.first_kib)]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(RSS_SAMPLE_S):
            with contextlib.suppress(OSError, ValueError):
                self.last_kib = read_rss_kib(self.pid)
                self.peak_kib = max(self.peak_kib, self.last_kib)
                elapsed = time.perf_counter() - self.started
                if elapsed - self.timeline[-1][0] >= RSS_TIMELINE_S:
                    self.timeline.append((round(elapsed, 2), self.last_kib))

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
    transport: str = "tcp",
    frame_each_packet: bool = False,
    deadline_s: float | None = None,
    subscriber_broker: BrokerProcess | None = None,
    before_go: Callable[[], None] | None = None,
    cpu_pids: Mapping[str, int] | None = None,
) -> RunOutcome:
    """Publishers blast (QoS 0) or keep *window* unacknowledged (QoS 1); subscribers verify.

    Rate = deliveries / elapsed time; ``steady_throughput`` leaves out the first second.
    The broker's resident memory is sampled during the run: ``peak_rss_mib`` is its
    highest value, ``details.rss_timeline`` the samples every half second. With one
    subscriber, every message's end-to-end latency (publisher's write -> subscriber's
    read) gives ``p50_ms`` / ``p99_ms``, and ``late_p50_ms`` for the messages delivered
    in the last tenth of the run: a backlog growing in the broker shows there. *transport*
    ``"tls"`` / ``"ws"``: through the broker's TLS / WebSocket listener; over a WebSocket,
    *frame_each_packet* sends every PUBLISH in a frame of its own.

    Cluster runs: the subscribers connect to *subscriber_broker* (default: *broker*, where
    the publishers connect); *before_go* runs once every worker is connected and
    subscribed, before the clock starts; the CPU time of each process in *cpu_pids* is
    reported as ``<name>_cpu_s`` in the details (the broker's own is ``broker_cpu_s``).
    """
    deadline_s = scale.deadline_s if deadline_s is None else deadline_s
    port = _port(broker, proxy=proxy, transport=transport)
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
                    transport=transport,
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
                    transport=transport,
                    frame_each_packet=frame_each_packet,
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
    if subscribers == 1:
        progress = sub_results[0]["progress"]
        timed = arrivals([result["sends"] for result in pub_results], progress)
        if timed:
            latencies = sorted(latency for _arrived, latency in timed)
            metrics["p50_ms"] = _percentile(latencies, 50) / 1e6
            metrics["p99_ms"] = _percentile(latencies, 99) / 1e6
            late_from = last_rx - LATE_SHARE * elapsed
            late = sorted(latency for arrived, latency in timed if arrived >= late_from)
            if late:
                metrics["late_p50_ms"] = _percentile(late, 50) / 1e6
        steady = steady_throughput(progress, start, last_rx, received)
        if steady is not None:
            metrics["steady_throughput"] = steady
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
            "rss_last_mib": round(rss.last_kib / 1024, 1),
            "rss_timeline": [[at, round(kib / 1024, 1)] for at, kib in rss.timeline],
            "transport": transport,
            "frame_each_packet": frame_each_packet,
        },
    )


def _port(broker: BrokerProcess, *, proxy: bool = False, transport: str = "tcp") -> int:
    """The broker's port for a PROXY-v2 / TLS / WebSocket / plain client."""
    if proxy:
        if transport != "tcp":
            raise ScenarioError("PROXY headers are only sent on plain TCP here")
        port = broker.broker.proxy_port
    else:
        port = {
            "tcp": broker.broker.port,
            "tls": broker.broker.tls_port,
            "ws": broker.broker.ws_port,
        }[transport]
    if port is None:
        what = "PROXY protocol" if proxy else transport
        raise ScenarioError(f"{broker.broker.kind.value} has no {what} listener")
    return port


def steady_throughput(
    progress: Sequence[tuple[float, dict[int, int]]], start: float, last_rx: float, received: int
) -> float | None:
    """Deliveries after the first WARMUP_S seconds / the time they took (None if the run
    was too short: under 2 x WARMUP_S)."""
    if last_rx - start < 2 * WARMUP_S:
        return None
    for arrived, next_seq in progress:
        if arrived >= start + WARMUP_S:
            before = sum(next_seq.values())
            return (received - before) / max(last_rx - arrived, 1e-9)
    return None


def arrivals(
    sends: Sequence[Sequence[tuple[int, float]]],
    progress: Sequence[tuple[float, dict[int, int]]],
) -> list[tuple[float, int]]:
    """(arrival time, publish-to-delivery time in ns) of every message.

    ``sends[source]`` lists (first sequence number, time) of each write of publisher
    *source*; ``progress`` lists (time, next expected sequence number per source) after
    each read of the subscriber. A message arrived at the first read after which its
    publisher's next expected number is beyond it.
    """
    timed: list[tuple[float, int]] = []
    for source, writes in enumerate(sends):
        if not writes:
            continue
        firsts = [first for first, _time in writes]
        seq = 0
        for arrived, next_seq in progress:
            done = next_seq.get(source, 0)
            while seq < done:
                sent = writes[bisect.bisect_right(firsts, seq) - 1][1]
                timed.append((arrived, int((arrived - sent) * 1e9)))
                seq += 1
    return timed


def end_to_end_latencies(
    sends: Sequence[Sequence[tuple[int, float]]],
    progress: Sequence[tuple[float, dict[int, int]]],
) -> list[int]:
    """Publish-to-delivery time of every message, in ns, sorted (see :func:`arrivals`)."""
    return sorted(latency for _arrived, latency in arrivals(sends, progress))


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


def _payload_count(scale: Scale, size: int) -> int:
    for payload_size, count in scale.payload_fanin:
        if payload_size == size:
            return count
    raise ScenarioError(f"scale {scale.name!r} has no fan-in size for {size}-byte payloads")


def fanin_payload(size: int) -> ScenarioFunction:
    """QoS 0 fan-in with *size*-byte payloads (the message counts are in the Scale)."""

    def run(broker: BrokerProcess, scale: Scale) -> RunOutcome:
        count = _payload_count(scale, size)
        return _fanin(broker, count, f"fanin{size}", scale=scale, payload_size=size)

    run.__doc__ = f"QoS 0 fan-in of {size}-byte payloads."
    return run


def fanin_transport(transport: str, *, frame_each_packet: bool = False) -> ScenarioFunction:
    """QoS 0 fan-in through the broker's TLS or WebSocket listener; a broker without one
    (mosquitto built without WebSocket support) runs plain TCP, as its details say.
    *frame_each_packet*: a WebSocket frame per PUBLISH, not per 64 KiB of them."""

    def run(broker: BrokerProcess, scale: Scale) -> RunOutcome:
        port = broker.broker.tls_port if transport == "tls" else broker.broker.ws_port
        used = transport if port is not None else "tcp"
        return _fanin(
            broker,
            scale.fanin_per_publisher,
            f"fanin{transport}",
            scale=scale,
            transport=used,
            frame_each_packet=frame_each_packet and used == "ws",
        )

    run.__doc__ = f"QoS 0 fan-in over {transport}."
    return run


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
    pubacks = sorted(result.get("puback_ns", ()))
    if pubacks:
        metrics["puback_p50_us"] = _percentile(pubacks, 50) / 1000
        metrics["puback_p99_us"] = _percentile(pubacks, 99) / 1000
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


def _latency_task(
    broker: BrokerProcess, scale: Scale, topic: str, transport: str = "tcp"
) -> LatencyTask:
    """Window-1 QoS 1 round trips with a publisher and a subscriber connection."""
    port = broker.broker.tls_port if transport == "tls" else broker.broker.port
    assert port is not None
    return LatencyTask(
        port=port,
        client_id=f"latency-{topic.replace('/', '-')}",
        topic=topic,
        count=scale.latency_messages,
        warmup=scale.latency_warmup,
        deadline_s=scale.deadline_s,
        publish_port=port,
        transport=transport,
    )


def qos1_latency_split(broker: BrokerProcess, scale: Scale, transport: str = "tcp") -> RunOutcome:
    """Window 1, a publisher and a subscriber connection: PUBACK and end-to-end latency."""
    with _workers() as workers:
        pipe = workers.start(_latency_task(broker, scale, "bench/lat", transport))
        _ready_all([pipe], 60.0)
        workers.go.set()
        (result,) = _results([pipe], scale.deadline_s + 30)
    return latency_outcome(result, scale.latency_messages)


def qos1_latency_tls(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """qos1_latency_split with both connections over TLS."""
    return qos1_latency_split(broker, scale, transport="tls")


def qos1_latency_loaded(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """qos1_latency_split while a QoS 0 fan-in (4 x N -> 1, as ``fanin``) runs.

    The latency topic is outside the fan-in subscriber's ``bench/#``. Reported: the
    latencies, the fan-in's throughput, and which share of the latency run overlapped
    the fan-in (``overlap``: below 1 when the fan-in ended first).
    """
    port = broker.broker.port
    count = scale.fanin_per_publisher
    topics = [f"bench/p{source}" for source in range(PUBLISHERS)]
    deadline_s = scale.deadline_s
    with _workers() as workers:
        latency_pipe = workers.start(_latency_task(broker, scale, "lat/loaded"))
        sub_pipe = workers.start(
            SubscriberTask(
                port=port,
                client_ids=("loaded-sub",),
                topic_filter="bench/#",
                qos=0,
                expected_per_connection=PUBLISHERS * count,
                source_topics=tuple(enumerate(topics)),
                deadline_s=deadline_s,
            )
        )
        pub_pipes = [
            workers.start(
                PublisherTask(
                    port=port,
                    client_id=f"loaded-pub{source}",
                    topic=topics[source],
                    source=source,
                    count=count,
                    deadline_s=deadline_s,
                )
            )
            for source in range(PUBLISHERS)
        ]
        _ready_all([latency_pipe, sub_pipe, *pub_pipes], 60.0)
        with RssSampler(broker.process.pid) as rss:
            workers.go.set()
            pubs = _results(pub_pipes, deadline_s + 30)
            (sub,) = _results([sub_pipe], deadline_s + 30)
            (latency,) = _results([latency_pipe], deadline_s + 30)
    outcome = latency_outcome(latency, scale.latency_messages)
    start = min(result["start"] for result in pubs)
    received = sum(sub["received"])
    elapsed = max(sub["last_rx"] - start, 1e-9)
    overlap = max(0.0, min(sub["last_rx"], latency["end"]) - max(start, latency["start"]))
    metrics = {
        **outcome.metrics,
        "fanin_throughput": received / elapsed,
        "overlap": overlap / max(latency["end"] - latency["start"], 1e-9),
        "peak_rss_mib": rss.peak_kib / 1024,
    }
    expected = PUBLISHERS * count
    return attrs.evolve(
        outcome,
        metrics=metrics,
        verified=outcome.verified and received == expected and sub["error_count"] == 0,
        expected=outcome.expected + expected,
        received=outcome.received + received,
        error_count=outcome.error_count + sub["error_count"],
        errors=(*outcome.errors, *sub["errors"][:10]),
    )


def qos1_latency_crowd(broker: BrokerProcess, scale: Scale) -> RunOutcome:
    """qos1_latency_split with N more subscribers (QoS 0) of the latency topic, each of
    which must receive every message (warm-up included) in order; ``crowd_messages``
    round trips, with twice the usual deadline."""
    scale = attrs.evolve(
        scale, latency_messages=scale.crowd_messages, deadline_s=2 * scale.deadline_s
    )
    port = broker.broker.port
    topic = "lat/crowd"
    total = scale.latency_warmup + scale.latency_messages
    client_ids = [f"crowd{index}" for index in range(scale.crowd_subscribers)]
    with _workers() as workers:
        crowd_pipes = [
            workers.start(
                SubscriberTask(
                    port=port,
                    client_ids=group,
                    topic_filter=topic,
                    qos=0,
                    expected_per_connection=total,
                    source_topics=((0, topic),),
                    deadline_s=scale.deadline_s,
                )
            )
            for group in _split(client_ids, SUBSCRIBER_PROCESSES)
        ]
        _ready_all(crowd_pipes, 120.0)
        latency_pipe = workers.start(_latency_task(broker, scale, topic))
        _ready_all([latency_pipe], 60.0)
        workers.go.set()
        (latency,) = _results([latency_pipe], scale.deadline_s + 30)
        crowd = _results(crowd_pipes, scale.deadline_s + 30)
    outcome = latency_outcome(latency, scale.latency_messages)
    received = sum(sum(result["received"]) for result in crowd)
    expected = total * len(client_ids)
    error_count = sum(result["error_count"] for result in crowd)
    errors = [error for result in crowd for error in result["errors"]]
    return attrs.evolve(
        outcome,
        verified=outcome.verified and received == expected and error_count == 0,
        expected=outcome.expected + expected,
        received=outcome.received + received,
        error_count=outcome.error_count + error_count,
        errors=(*outcome.errors, *errors[:10]),
        details={"crowd_subscribers": len(client_ids)},
    )


# --- idle connections ---------------------------------------------------------------

CONNECTION_PROCESSES = 2
CONNECTION_CONCURRENCY = 50
#: Pause after the last CONNACK before reading RSS, so the broker settles.
RSS_SETTLE_S = 1.0
#: connections_paced: clients that arrive over time, as a fleet's do (a broker's memory
#: per idle client then depends on what it keeps for a client that has gone quiet, not
#: only on what a burst of handshakes leaves)
PACED_CONNECT_RATE = 1_000.0


def _start_connection_load(
    workers: Workers,
    port: int,
    total: int,
    prefix: str,
    scale: Scale,
    proxy: str = "",
    rate: float = 0.0,
) -> list[Connection]:
    """CONNECTION_PROCESSES load processes that open *total* connections between them
    (client ids ``<prefix><process>-<n>``), waiting for ``go``; *rate* connections a
    second between them (0: as fast as they go)."""
    counts = [
        total // CONNECTION_PROCESSES + (1 if index < total % CONNECTION_PROCESSES else 0)
        for index in range(CONNECTION_PROCESSES)
    ]
    pipes = [
        workers.start(
            ConnectionTask(
                port=port,
                client_prefix=f"{prefix}{index}-",
                count=count,
                concurrency=CONNECTION_CONCURRENCY,
                deadline_s=scale.deadline_s,
                proxy=proxy,
                rate=rate / CONNECTION_PROCESSES,
            )
        )
        for index, count in enumerate(counts)
    ]
    _ready_all(pipes, 60.0)
    return pipes


@attrs.frozen
class _Opened:
    """What the load processes of ``_start_connection_load`` reported once connected."""

    connected: int
    failed: int
    rate: float  # connections per second, first start to last end
    errors: tuple[str, ...]  # the first ten
    loadgen_cpu_s: float

    @classmethod
    def of(cls, opened: Sequence[dict[str, Any]]) -> _Opened:
        connected = sum(result["connected"] for result in opened)
        elapsed = max(
            max(result["end"] for result in opened) - min(result["start"] for result in opened),
            1e-9,
        )
        return cls(
            connected=connected,
            failed=sum(result["failed"] for result in opened),
            rate=connected / elapsed,
            errors=tuple(error for result in opened for error in result["errors"])[:10],
            loadgen_cpu_s=round(sum(result["cpu_s"] for result in opened), 3),
        )


def idle_connections(rate: float) -> ScenarioFunction:
    """Open N idle connections, as fast as they go (*rate* 0) or *rate* a second: the
    handshake rate, RSS per connection one second after the last, all still answer PINGs.
    """

    def run(broker: BrokerProcess, scale: Scale) -> RunOutcome:
        return _idle_connections(broker, scale, rate)

    run.__doc__ = idle_connections.__doc__
    return run


def _idle_connections(broker: BrokerProcess, scale: Scale, rate: float) -> RunOutcome:
    pid = broker.process.pid
    total = scale.connections
    with _workers() as workers:
        pipes = _start_connection_load(workers, broker.broker.port, total, "idle", scale, rate=rate)
        # Baseline after the workers are up (their start-up does not touch the broker).
        rss_before = read_rss_kib(pid)
        workers.go.set()
        opened = _Opened.of([expect(pipe, "connected", scale.deadline_s + 30) for pipe in pipes])
        time.sleep(RSS_SETTLE_S)
        rss_after = read_rss_kib(pid)
        for pipe in pipes:
            pipe.send("ping")
        pinged = [expect(pipe, "pinged", scale.deadline_s + 30) for pipe in pipes]
        for pipe in pipes:
            pipe.send("close")
        _results(pipes, 30.0)
    connected = opened.connected
    pongs = sum(result["pongs"] for result in pinged)
    return RunOutcome(
        metrics={
            "connect_rate": opened.rate,
            "rss_per_conn_kib": (rss_after - rss_before) / max(connected, 1),
            "held": float(pongs),
        },
        verified=connected == total and pongs == total,
        expected=total,
        received=pongs,
        error_count=opened.failed + (connected - pongs),
        errors=opened.errors,
        details={
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "connected": connected,
            "loadgen_cpu_s": opened.loadgen_cpu_s,
            "ping_all_s": round(max(result["seconds"] for result in pinged), 3),
        },
    )


def connects(proxy: str) -> ScenarioFunction:
    """Connection rate with a PROXY *proxy* ("v1", "v2") header, or none (""): N
    handshakes, 50 in flight per load process; then all are closed. mosquitto, which has
    no PROXY protocol, is measured without a header."""

    def run(broker: BrokerProcess, scale: Scale) -> RunOutcome:
        with_header = proxy and broker.broker.proxy_port is not None
        port = broker.broker.proxy_port if with_header else broker.broker.port
        assert port is not None
        total = scale.connects
        with _workers() as workers:
            pipes = _start_connection_load(
                workers, port, total, f"conn{proxy}-", scale, proxy if with_header else ""
            )
            # the broker's CPU for the handshakes: on a machine shared with other work a
            # steadier figure than the rate, whose wall clock other processes stretch
            broker_cpu = ProcessCpu(broker.process.pid)
            workers.go.set()
            opened = _Opened.of(
                [expect(pipe, "connected", scale.deadline_s + 30) for pipe in pipes]
            )
            broker_cpu_s = broker_cpu.seconds()
            for pipe in pipes:
                pipe.send("close")
            _results(pipes, 30.0)
        return RunOutcome(
            metrics={"connect_rate": opened.rate},
            verified=opened.connected == total and opened.failed == 0,
            expected=total,
            received=opened.connected,
            error_count=opened.failed,
            errors=opened.errors,
            details={
                "proxy_header": proxy if with_header else "",
                "loadgen_cpu_s": opened.loadgen_cpu_s,
                "broker_cpu_s": broker_cpu_s,
                "broker_cpu_us_per_connection": round(
                    broker_cpu_s / max(opened.connected, 1) * 1e6, 1
                ),
            },
        )

    run.__doc__ = f"Connection rate, PROXY header {proxy or 'none'}."
    return run


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
#: What every QoS 0 fan-in reports: the rate over the whole run and after its first
#: second, the end-to-end latency (overall and of the last tenth of the run: a backlog
#: growing in the broker shows there) and the broker's peak RSS.
FANIN_METRICS = (
    MSG_RATE,
    MetricSpec("steady_throughput", "throughput after the first second", "msg/s", True),
    MetricSpec("p50_ms", "end-to-end p50 latency", "ms", higher_is_better=False),
    MetricSpec("p99_ms", "end-to-end p99 latency", "ms", higher_is_better=False),
    MetricSpec("late_p50_ms", "end-to-end p50, last tenth of the run", "ms", False),
    MetricSpec("peak_rss_mib", "broker peak RSS", "MiB", higher_is_better=False),
)
SPLIT_LATENCY_METRICS = (
    MetricSpec("puback_p50_us", "PUBACK p50 latency", "us", higher_is_better=False),
    MetricSpec("puback_p99_us", "PUBACK p99 latency", "us", higher_is_better=False),
    MetricSpec("p50_us", "end-to-end p50 latency", "us", higher_is_better=False),
    MetricSpec("p99_us", "end-to-end p99 latency", "us", higher_is_better=False),
)
CONNECT_RATE = (MetricSpec("connect_rate", "connection rate", "conn/s", True),)
NO_WEBSOCKET_NOTE = (
    "a mosquitto built without WebSocket support (Debian's 2.0.11) runs plain-TCP fan-in "
    "in fanin_ws and fanin_ws_frames (details.transport says which)"
)


def _ran_without_websocket(outcome: RunOutcome) -> bool:
    return outcome.details.get("transport") != "ws"


NO_PROXY_NOTE = "mosquitto 2.0 has no PROXY protocol: its column is connects without a header"

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "fanin",
        "QoS 0 fan-in (4 publishers -> 1 subscriber on bench/#)",
        FANIN_METRICS,
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
        FANIN_METRICS,
        fanin_sustained,
    ),
    Scenario(
        "qos1_latency",
        "QoS 1 round trip, window 1, one client publishing to itself (publish -> delivery)",
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
        idle_connections(0.0),
    ),
    Scenario(
        "connections_paced",
        f"Idle connections arriving at {PACED_CONNECT_RATE:,.0f}/s (a fleet, not a burst)",
        (
            MetricSpec("rss_per_conn_kib", "RSS per idle connection", "KiB", False),
            MetricSpec("held", "connections held (answer PINGREQ)", "conn", True),
        ),
        idle_connections(PACED_CONNECT_RATE),
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
        FANIN_METRICS,
        fanin_proxy,
        mosquitto_note="mosquitto 2.0 has no PROXY protocol: its column is plain-TCP fan-in",
    ),
    *(
        Scenario(
            f"fanin_{name}",
            f"QoS 0 fan-in of {label} payloads (4 -> 1)",
            FANIN_METRICS,
            fanin_payload(size),
        )
        for name, label, size in (
            ("16b", "16 B", 16),
            ("64b", "64 B", 64),
            ("1kib", "1 KiB", 1024),
            ("64kib", "64 KiB", 65536),
        )
    ),
    Scenario("fanin_tls", "QoS 0 fan-in over TLS (4 -> 1)", FANIN_METRICS, fanin_transport("tls")),
    Scenario(
        "fanin_ws",
        "QoS 0 fan-in over WebSocket (4 -> 1)",
        FANIN_METRICS,
        fanin_transport("ws"),
        mosquitto_note=NO_WEBSOCKET_NOTE,
        note_applies=_ran_without_websocket,
    ),
    Scenario(
        "fanin_ws_frames",
        "QoS 0 fan-in over WebSocket, a frame per PUBLISH (4 -> 1)",
        FANIN_METRICS,
        fanin_transport("ws", frame_each_packet=True),
        mosquitto_note=NO_WEBSOCKET_NOTE,
        note_applies=_ran_without_websocket,
    ),
    Scenario(
        "qos1_latency_split",
        "QoS 1 round trip, window 1, publisher and subscriber on separate connections",
        SPLIT_LATENCY_METRICS,
        qos1_latency_split,
    ),
    Scenario(
        "qos1_latency_tls",
        "QoS 1 round trip, window 1, publisher and subscriber on separate TLS connections",
        SPLIT_LATENCY_METRICS,
        qos1_latency_tls,
    ),
    Scenario(
        "qos1_latency_loaded",
        "qos1_latency_split during a QoS 0 fan-in (4 -> 1, as fanin)",
        (
            *SPLIT_LATENCY_METRICS,
            MetricSpec("fanin_throughput", "fan-in throughput meanwhile", "msg/s", True),
            MetricSpec("overlap", "share of the latency run under fan-in", "", True),
        ),
        qos1_latency_loaded,
    ),
    Scenario(
        "qos1_latency_crowd",
        "qos1_latency_split with 1,000 more (QoS 0) subscribers of the topic (quick: 100)",
        SPLIT_LATENCY_METRICS,
        qos1_latency_crowd,
    ),
    Scenario("connect_rate", "Connects/s, no PROXY header", CONNECT_RATE, connects("")),
    Scenario(
        "connect_rate_proxy_v1",
        "Connects/s with a PROXY v1 header",
        CONNECT_RATE,
        connects("v1"),
        mosquitto_note=NO_PROXY_NOTE,
    ),
    Scenario(
        "connect_rate_proxy_v2",
        "Connects/s with a PROXY v2 header",
        CONNECT_RATE,
        connects("v2"),
        mosquitto_note=NO_PROXY_NOTE,
    ),
)


def scenario_by_name(name: str) -> Scenario:
    """The scenario called *name*; ValueError listing the names otherwise."""
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    names = ", ".join(scenario.name for scenario in SCENARIOS)
    raise ValueError(f"unknown scenario {name!r} (choose from: {names})")
