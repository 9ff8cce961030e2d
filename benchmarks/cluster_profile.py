"""``python -m benchmarks --profile cluster_fanin``: what a cross-node message costs.

Two parts, written to ``profile-SCENARIO.txt`` in the output directory:

1. **CPU per message, by placement** (no profiler attached): the scenario runs
   ``runs`` times in each of three placements, each on freshly started brokers, and
   the CPU time (utime + stime from /proc) of each process is divided by the messages
   delivered:

   - ``one node``: one trio-mqtt without ``[cluster]``, publishers and subscribers on it;
   - ``local on node b``: a two-node cluster, publishers and subscribers on node b
     (node b still forwards each message to NATS, where nobody wants it);
   - ``cross-node``: publishers on node a, subscribers on node b; node b's CPU per
     delivered message is the cost of a message received from NATS, node a's the cost
     of one published into it.

2. **Where the time goes** in the cross-node placement: py-spy samples nodes a and b
   during ``runs`` more runs (``profile-SCENARIO-a.folded`` / ``-b.folded``), summarized
   as in :mod:`benchmarks.profiling`.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from benchmarks.brokers import BrokerKind, BrokerStartError, start_broker
from benchmarks.cluster import (
    ClusterScenario,
    Nodes,
    Setup,
    describe,
    running_setup,
    wait_for_stops,
)
from benchmarks.profiling import PY_SPY_RATE, py_spy_recording, summarize_folded_file
from benchmarks.scenarios import RunOutcome, Scale

__all__ = ["PLACEMENTS", "Placement", "profile_cluster"]


@attrs.frozen
class Placement:
    """Where the clients of a profiled run connect."""

    name: str
    description: str
    nodes: Callable[[str | None], contextlib.AbstractContextManager[Nodes]]


@contextlib.contextmanager
def _one_node(_nats_binary: str | None) -> Iterator[Nodes]:
    broker = start_broker(BrokerKind.TRIO_MQTT)
    try:
        yield Nodes(broker, broker)
    finally:
        broker.stop()


@contextlib.contextmanager
def _local_on_b(nats_binary: str | None) -> Iterator[Nodes]:
    with running_setup(Setup.CROSS_NODE, nats_binary) as nodes:
        yield Nodes(nodes.subscriber, nodes.subscriber, nodes.nats)


@contextlib.contextmanager
def _cross_node(nats_binary: str | None) -> Iterator[Nodes]:
    with running_setup(Setup.CROSS_NODE, nats_binary) as nodes:
        yield nodes


PLACEMENTS: tuple[Placement, ...] = (
    Placement("one node", "one trio-mqtt without [cluster]", _one_node),
    Placement(
        "local on node b",
        "2-node cluster, publishers and subscribers on node b",
        _local_on_b,
    ),
    Placement("cross-node", "publishers on node a, subscribers on node b", _cross_node),
)


def _per_message(outcome: RunOutcome) -> dict[str, float]:
    """CPU microseconds per delivered message of each measured process of one run."""
    received = outcome.received
    if not received:
        return {}
    details = outcome.details
    out: dict[str, float] = {}
    if "receiver_cpu_s" in details:
        out["subscribers' node"] = details["receiver_cpu_s"] / received * 1e6
    if "broker_cpu_s" in details:
        out["publishers' node"] = details["broker_cpu_s"] / received * 1e6
    if "nats_cpu_s" in details:
        out["nats-server"] = details["nats_cpu_s"] / received * 1e6
    return out


def _cpu_table(
    scenario: ClusterScenario, scale: Scale, runs: int, nats_binary: str | None
) -> tuple[list[str], list[RunOutcome]]:
    lines = [
        f"CPU time per delivered message, median of {runs} run(s) per placement "
        "(utime + stime from /proc, no profiler attached):",
        "",
        f"{'placement':<18} {'process':<18} {'us/msg':>8}  runs (us/msg)",
    ]
    outcomes: list[RunOutcome] = []
    for placement in PLACEMENTS:
        samples: dict[str, list[float]] = {}
        for _ in range(runs):
            with placement.nodes(nats_binary) as nodes:
                outcome = scenario.run(nodes, scale)
            outcomes.append(outcome)
            if not outcome.verified:
                lines.append(f"{placement.name:<18} run not verified: {describe(outcome, ())}")
                continue
            for process, value in _per_message(outcome).items():
                samples.setdefault(process, []).append(value)
        for process, values in samples.items():
            if process == "publishers' node" and placement.name != "cross-node":
                continue  # the same process as the subscribers' node
            runs_text = ", ".join(f"{value:.2f}" for value in values)
            lines.append(
                f"{placement.name:<18} {process:<18} {statistics.median(values):8.2f}  {runs_text}"
            )
    lines += [
        "",
        "one node / local on node b: the whole broker per message (read the PUBLISH, route,",
        "deliver; on node b also the copy sent to NATS). cross-node: node b does only the",
        "receiving half (NATS message in, deliver), node a the publishing half (PUBLISH in,",
        "NATS message out). CPU time is counted in clock ticks (10 ms): a run must be long.",
    ]
    return lines, outcomes


def profile_cluster(
    scenario: ClusterScenario,
    scale: Scale,
    output_dir: Path,
    *,
    runs: int,
    nats_binary: str | None,
) -> tuple[RunOutcome, list[Path]]:
    """Measure and profile *scenario* as the module docstring says; the last cross-node
    outcome (unverified if any run was not) and the files written."""
    if nats_binary is None:
        raise BrokerStartError("nats-server is not installed")
    output_dir.mkdir(parents=True, exist_ok=True)
    report = output_dir / f"profile-{scenario.name}.txt"
    folded = {node: output_dir / f"profile-{scenario.name}-{node}.folded" for node in ("a", "b")}
    table, outcomes = _cpu_table(scenario, scale, runs, nats_binary)
    with contextlib.ExitStack() as stack:
        nodes = stack.enter_context(running_setup(Setup.CROSS_NODE, nats_binary))
        stack.enter_context(py_spy_recording(nodes.publisher.process.pid, folded["a"]))
        stack.enter_context(py_spy_recording(nodes.subscriber.process.pid, folded["b"]))
        profiled = [scenario.run(nodes, scale) for _ in range(runs)]
    wait_for_stops()
    outcomes += profiled
    last = profiled[-1]
    if not all(outcome.verified for outcome in outcomes):
        last = attrs.evolve(last, verified=False)
    sections = [
        f"trio-mqtt cluster, scenario {scenario.name} ({scale.name} scale): {scenario.title}",
        "",
        *table,
        "",
        f"py-spy, {runs} cross-node run(s) on one cluster, {PY_SPY_RATE} samples/s; last run "
        f"(slower under the profiler): {describe(profiled[-1], scenario.metrics)}",
        "",
        "=== node b (subscribers: messages in from NATS) ===",
        summarize_folded_file(folded["b"]),
        "=== node a (publishers: messages out to NATS) ===",
        summarize_folded_file(folded["a"]),
    ]
    report.write_text("\n".join(sections))
    return last, [report, folded["b"], folded["a"]]
