"""Cluster scenarios: trio-mqtt across two nodes compared with trio-mqtt on one node.

Each cluster scenario runs on two setups, alternating which goes first, each time freshly
started:

- ``one-node``: one trio-mqtt without ``[cluster]`` (as in the other scenarios);
  publishers and subscribers connect to it.
- ``cross-node``: a nats-server (JetStream on) and two trio-mqtt nodes ``a`` and ``b``
  joined to it; the publishers connect to node a, the subscribers to node b, so that
  every message crosses NATS.

The ratio is always cross-node / one-node. mosquitto takes no part: these scenarios
compare trio-mqtt with itself. Both setups run trio-mqtt on its defaults.

Before the clock starts, a probe message is published on the publishers' node until it
reaches a probe subscriber on the subscribers' node (:func:`wait_for_route`): node b
subscribes in NATS after it sent the SUBACK, and the probe's NATS subscription, sent
after the workers', shows that theirs are in place. Every delivered message is verified
as in the other scenarios; a run that loses one fails.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import attrs

from benchmarks.brokers import (
    BrokerKind,
    BrokerProcess,
    BrokerStartError,
    ClusterJoin,
    NatsProcess,
    launch_broker,
    start_broker,
    start_nats_server,
    wait_until_ready,
)
from benchmarks.loadgen import LatencyTask, _open, _subscribe
from benchmarks.scenarios import (
    FANOUT_SUBSCRIBERS,
    PUBLISHERS,
    QOS1_WINDOW,
    MetricSpec,
    RunOutcome,
    Scale,
    ScenarioError,
    _ready_all,
    _results,
    _workers,
    latency_outcome,
    pubsub,
)
from benchmarks.wire import WireError, publish_packet, split_packets

__all__ = [
    "CLUSTER_SCENARIOS",
    "ClusterScenario",
    "Nodes",
    "Setup",
    "cluster_scenario_by_name",
    "running_setup",
    "wait_for_route",
    "wait_for_stops",
]


class Setup(enum.Enum):
    """Where a cluster scenario's clients connect."""

    ONE_NODE = "one-node"
    CROSS_NODE = "cross-node"


@attrs.frozen
class Nodes:
    """The brokers of one run: publishers connect to *publisher*, subscribers to
    *subscriber* (the same process on one node); *nats* is None on one node."""

    publisher: BrokerProcess
    subscriber: BrokerProcess
    nats: NatsProcess | None = None

    @property
    def cross(self) -> bool:
        """Whether messages cross NATS (publishers and subscribers on different nodes)."""
        return self.publisher is not self.subscriber

    def cpu_pids(self) -> dict[str, int]:
        """The processes whose CPU time a run reports besides the publishers' node."""
        pids = {"receiver": self.subscriber.process.pid}
        if self.nats is not None:
            pids["nats"] = self.nats.pid
        return pids

    def log_warnings(self) -> list[str]:
        """What the brokers (which log warnings only) and nats-server warned about."""
        lines: list[str] = []
        brokers = {id(b): b for b in (self.publisher, self.subscriber)}.values()
        for index, broker in enumerate(brokers):
            lines += [f"node {index}: {line}" for line in broker.log_tail(4000).splitlines()]
        if self.nats is not None:
            lines += [
                f"nats-server: {line}"
                for line in self.nats.log_tail(4000).splitlines()
                if "[WRN]" in line or "[ERR]" in line or "[FTL]" in line
            ]
        return lines[-20:]


@contextlib.contextmanager
def running_setup(setup: Setup, nats_binary: str | None) -> Iterator[Nodes]:
    """Start *setup* fresh (two nodes start at once), yield its Nodes, stop everything."""
    if setup is Setup.ONE_NODE:
        broker = start_broker(BrokerKind.TRIO_MQTT)
        try:
            yield Nodes(broker, broker)
        finally:
            broker.stop()
        return
    if nats_binary is None:
        raise BrokerStartError("nats-server is not installed")
    nats = start_nats_server(nats_binary)
    nodes: list[BrokerProcess] = []
    try:
        launches = [
            functools.partial(
                launch_broker, BrokerKind.TRIO_MQTT, cluster=ClusterJoin(name, nats.url)
            )
            for name in ("a", "b")
        ]
        nodes = [launch() for launch in launches]
        for index, launch in enumerate(launches):
            nodes[index] = wait_until_ready(nodes[index], relaunch=launch)
        yield Nodes(nodes[0], nodes[1], nats)
    finally:
        _stop_in_background(nodes, nats)


#: Clusters still leaving (see _stop_in_background); wait_for_stops() joins them.
_stopping: list[threading.Thread] = []


def _stop_in_background(nodes: Sequence[BrokerProcess], nats: NatsProcess) -> None:
    """SIGTERM the nodes now; wait for them, then stop nats-server, in a thread.

    A node takes about 3 s to leave the cluster, nearly all of it waiting (for replies
    to its last NATS requests) rather than computing: the next run need not wait for it.
    """
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)

    def stop() -> None:
        for node in nodes:
            node.stop()
        nats.stop()

    thread = threading.Thread(target=stop, name="stop-cluster")
    thread.start()
    _stopping.append(thread)


def wait_for_stops() -> None:
    """Wait until every cluster started here has stopped."""
    while _stopping:
        _stopping.pop().join()


# --- the route barrier --------------------------------------------------------------

PROBE_TOPIC = "probe/route"
PROBE_INTERVAL_S = 0.02


def wait_for_route(nodes: Nodes, timeout: float = 10.0) -> float:
    """Publish probes on the publishers' node until one reaches the subscribers' node.

    Called once every worker has its SUBACK: node b subscribes in NATS after it sent the
    SUBACK, on one connection in order, so once the probe subscription (made after the
    workers') routes, theirs do too. The probe topic matches none of the scenarios'
    filters. Returns the seconds it took; ScenarioError on timeout.
    """
    started = time.perf_counter()
    if not nodes.cross:
        return 0.0
    deadline = started + timeout
    subscriber = _open(nodes.subscriber.broker.port, "probe-sub", deadline)
    publisher = _open(nodes.publisher.broker.port, "probe-pub", deadline)
    try:
        _subscribe(subscriber, PROBE_TOPIC, 0, deadline)
        probe = publish_packet(PROBE_TOPIC, b"probe")
        buffer = bytearray()
        while True:
            if time.perf_counter() > deadline:
                raise ScenarioError(f"no route from node a to node b within {timeout} s")
            publisher.sendall(probe)
            subscriber.settimeout(PROBE_INTERVAL_S)
            with contextlib.suppress(TimeoutError):
                data = subscriber.recv(65536)
                if not data:
                    raise WireError("the probe subscriber's connection closed")
                buffer += data
            if any(packet.packet_type == 0x3 for packet in split_packets(buffer)):
                return time.perf_counter() - started
    finally:
        for sock in (subscriber, publisher):
            with contextlib.suppress(OSError):
                sock.close()


# --- the scenarios ------------------------------------------------------------------


def _receiver_cost(outcome: RunOutcome) -> RunOutcome:
    """Add the subscribers' node's CPU time per delivered message (us) to the metrics."""
    cpu = outcome.details.get("receiver_cpu_s")
    if cpu is None or not outcome.received:
        return outcome
    metrics = {**outcome.metrics, "receiver_us_per_msg": cpu / outcome.received * 1e6}
    return attrs.evolve(outcome, metrics=metrics)


def _with_logs(outcome: RunOutcome, nodes: Nodes) -> RunOutcome:
    warnings = nodes.log_warnings()
    if not warnings:
        return outcome
    return attrs.evolve(outcome, details={**outcome.details, "log_warnings": warnings})


def cluster_fanin(nodes: Nodes, scale: Scale) -> RunOutcome:
    """QoS 0 fan-in: 4 publishers (node a) on bench/p0..p3 -> 1 subscriber (node b)."""
    outcome = pubsub(
        nodes.publisher,
        scale,
        publishers=PUBLISHERS,
        per_publisher=scale.fanin_per_publisher,
        subscribers=1,
        topic_filter="bench/#",
        topics=[f"bench/p{source}" for source in range(PUBLISHERS)],
        proxy=False,
        tag="cfanin",
        subscriber_broker=nodes.subscriber,
        before_go=lambda: wait_for_route(nodes),
        cpu_pids=nodes.cpu_pids(),
    )
    return _with_logs(_receiver_cost(outcome), nodes)


def cluster_qos1_fanin(nodes: Nodes, scale: Scale) -> RunOutcome:
    """QoS 1 fan-in: 4 publishers (node a), each with 100 unacknowledged -> 1 QoS 1
    subscriber (node b). In a cluster each QoS 1 PUBLISH is stored in the JetStream
    stream before it is routed and acknowledged."""
    outcome = pubsub(
        nodes.publisher,
        scale,
        publishers=PUBLISHERS,
        per_publisher=scale.qos1_fanin_per_publisher,
        subscribers=1,
        topic_filter="bench/#",
        topics=[f"bench/p{source}" for source in range(PUBLISHERS)],
        proxy=False,
        tag="cqos1fanin",
        qos=1,
        window=QOS1_WINDOW,
        subscriber_broker=nodes.subscriber,
        before_go=lambda: wait_for_route(nodes),
        cpu_pids=nodes.cpu_pids(),
    )
    return _with_logs(_receiver_cost(outcome), nodes)


def cluster_fanout(nodes: Nodes, scale: Scale) -> RunOutcome:
    """QoS 0 fan-out: 1 publisher (node a) on bench/fo -> 50 subscribers (node b)."""
    outcome = pubsub(
        nodes.publisher,
        scale,
        publishers=1,
        per_publisher=scale.fanout_messages,
        subscribers=FANOUT_SUBSCRIBERS,
        topic_filter="bench/fo",
        topics=["bench/fo"],
        proxy=False,
        tag="cfanout",
        subscriber_broker=nodes.subscriber,
        before_go=lambda: wait_for_route(nodes),
        cpu_pids=nodes.cpu_pids(),
    )
    return _with_logs(_receiver_cost(outcome), nodes)


def cluster_qos1_latency(nodes: Nodes, scale: Scale) -> RunOutcome:
    """QoS 1, window 1: a publisher (node a) -> a subscriber of its topic (node b).

    Two connections on one node too, so that only the node count differs.
    """
    with _workers() as workers:
        pipe = workers.start(
            LatencyTask(
                port=nodes.subscriber.broker.port,
                client_id="clatency",
                topic="bench/lat",
                count=scale.latency_messages,
                warmup=scale.latency_warmup,
                deadline_s=scale.deadline_s,
                publish_port=nodes.publisher.broker.port,
            )
        )
        _ready_all([pipe], 60.0)
        wait_for_route(nodes)
        workers.go.set()
        (result,) = _results([pipe], scale.deadline_s + 30)
    outcome = latency_outcome(result, scale.latency_messages)
    return _with_logs(outcome, nodes)


ClusterFunction = Callable[[Nodes, Scale], RunOutcome]


@attrs.frozen
class ClusterScenario:
    """A scenario run on one node and across two nodes; the ratio is cross / one."""

    name: str
    title: str
    metrics: tuple[MetricSpec, ...]
    run: ClusterFunction


RECEIVER_COST = MetricSpec(
    "receiver_us_per_msg", "CPU of the subscribers' node per delivery", "us", False
)

CLUSTER_SCENARIOS: tuple[ClusterScenario, ...] = (
    ClusterScenario(
        "cluster_fanin",
        "QoS 0 fan-in: 4 publishers on node a -> 1 subscriber on node b",
        (MetricSpec("throughput", "throughput", "msg/s", True), RECEIVER_COST),
        cluster_fanin,
    ),
    ClusterScenario(
        "cluster_fanout",
        "QoS 0 fan-out: 1 publisher on node a -> 50 subscribers on node b",
        (MetricSpec("throughput", "deliveries", "msg/s", True), RECEIVER_COST),
        cluster_fanout,
    ),
    ClusterScenario(
        "cluster_qos1_fanin",
        "QoS 1 fan-in: 4 publishers on node a, 100 unacknowledged each -> 1 subscriber on b",
        (
            MetricSpec("throughput", "throughput", "msg/s", True),
            MetricSpec("p50_ms", "end-to-end p50 latency", "ms", False),
            RECEIVER_COST,
        ),
        cluster_qos1_fanin,
    ),
    ClusterScenario(
        "cluster_qos1_latency",
        "QoS 1 round trip, window 1: publisher on node a -> subscriber on node b",
        (
            MetricSpec("p50_us", "p50 latency", "us", False),
            MetricSpec("p99_us", "p99 latency", "us", False),
        ),
        cluster_qos1_latency,
    ),
)


def cluster_scenario_by_name(name: str) -> ClusterScenario:
    """The cluster scenario called *name*; ValueError otherwise."""
    for scenario in CLUSTER_SCENARIOS:
        if scenario.name == name:
            return scenario
    raise ValueError(f"unknown cluster scenario {name!r}")


def setup_order(repetition: int) -> list[Setup]:
    """Alternate which setup runs first, so that neither always gets the warm machine."""
    order = [Setup.ONE_NODE, Setup.CROSS_NODE]
    return order if repetition % 2 == 0 else order[::-1]


def run_cluster_scenario(
    scenario: ClusterScenario, setup: Setup, scale: Scale, nats_binary: str | None
) -> RunOutcome:
    """One run of *scenario* on a fresh *setup*; a failure becomes an unverified outcome."""
    try:
        with running_setup(setup, nats_binary) as nodes:
            return scenario.run(nodes, scale)
    except (ScenarioError, BrokerStartError, OSError, WireError) as exc:
        return RunOutcome(
            metrics={},
            verified=False,
            expected=0,
            received=0,
            error_count=1,
            errors=(str(exc)[-2000:],),
        )


def describe(outcome: RunOutcome, metrics: Sequence[MetricSpec]) -> str:
    """One line about a run, for the progress output."""
    parts = [
        f"{metric.label} {outcome.metrics[metric.key]:,.1f} {metric.unit}"
        for metric in metrics
        if metric.key in outcome.metrics
    ]
    status = "verified" if outcome.verified else "VERIFICATION FAILED"
    detail = f" {outcome.received}/{outcome.expected}"
    if not outcome.verified and outcome.errors:
        detail += f": {outcome.errors[0].splitlines()[-1][:200]}"
    return f"{'; '.join(parts) or 'no result'} ({status}{detail})"
