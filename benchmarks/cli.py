"""``python -m benchmarks``: run the scenarios against trio-mqtt and mosquitto, report.

Every (repetition, scenario) pair runs against each broker in turn, alternating which
broker goes first, each time on a freshly started broker. The summary table holds the
medians over the repetitions of the runs whose verification passed, and the ratio
trio-mqtt / mosquitto. Results go to ``benchmarks/results/`` (``latest.*`` for a full run
of every scenario against both brokers; ``quick.*`` / ``partial.*`` otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.brokers import (
    BrokerKind,
    BrokerStartError,
    mosquitto_version,
    raise_fd_limit,
    running_broker,
)
from benchmarks.profiling import PROFILERS, ProfileError, profile_scenario
from benchmarks.report import (
    RunRecord,
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

__all__ = ["build_parser", "machine_info", "main", "run_benchmarks"]

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
    parser.add_argument(
        "--scenario",
        action="append",
        choices=names,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(names)}",
    )
    parser.add_argument(
        "--broker",
        action="append",
        choices=[kind.value for kind in BrokerKind],
        help="run only against this broker (repeatable; default: both)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="repetitions per scenario and broker (default: 3; 1 with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run of a few seconds"
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
        choices=names,
        metavar="SCENARIO",
        help="run SCENARIO --repeat times against one trio-mqtt under a profiler and write "
        "its report to the output directory",
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
        "trio_mqtt_commit": _source_commit(),
        "mosquitto": mosquitto_version(),
        "fd_limit": raise_fd_limit(),
    }


def _trio_mqtt_version() -> str:
    """trio-mqtt's version, read from its source (importing the package is not needed)."""
    source = Path(__file__).resolve().parent.parent / "trio_mqtt" / "_version.py"
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", source.read_text())
    return match.group(1) if match else "unknown"


def _source_commit() -> str:
    """The git commit of the measured trio_mqtt/ source, '+dirty' if it has local edits."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "trio_mqtt"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if status else "")


def _broker_order(brokers: Sequence[BrokerKind], repetition: int) -> list[BrokerKind]:
    """Alternate which broker runs first, so that neither always gets the warm machine."""
    order = list(brokers)
    return order if repetition % 2 == 0 else order[::-1]


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


def _output_stem(
    args: argparse.Namespace, scenarios: Sequence[Scenario], brokers: Sequence[BrokerKind]
) -> str:
    if args.quick:
        return "quick"
    if len(scenarios) == len(SCENARIOS) and len(brokers) == len(BrokerKind):
        return "latest"
    return "partial"


def _profile(args: argparse.Namespace, scale: Scale, repeat: int) -> int:
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
        f"medians of {repeat} run(s), {machine['nproc']} cores, Python {machine['python']}"
    )


def _replot(path: Path, *, chart: bool) -> int:
    """Rewrite the Markdown tables and the chart next to results file *path*."""
    document = json.loads(path.read_text())
    rows = summarize(records_from_json(document))
    targets = evaluate_targets(rows, full_scale=document["settings"]["scale"] == FULL.name)
    print(format_table(rows))
    print()
    print(format_targets(targets))
    markdown_path = path.with_suffix(".md")
    markdown_path.write_text(markdown_table(rows) + "\n\n" + markdown_targets(targets) + "\n")
    print(f"\nwrote {markdown_path}")
    if chart:
        chart_path = path.with_suffix(".png")
        title = _chart_title(document["machine"], document["settings"]["repeat"])
        skipped = write_chart(chart_path, rows, title)
        print(f"note: {skipped}" if skipped else f"wrote {chart_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 if every run was verified, 1 otherwise, 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for scenario in SCENARIOS:
            note = f" ({scenario.mosquitto_note})" if scenario.mosquitto_note else ""
            print(f"{scenario.name:16} {scenario.title}{note}")
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
    scenarios = (
        [scenario_by_name(name) for name in args.scenario] if args.scenario else list(SCENARIOS)
    )
    brokers = [BrokerKind(name) for name in args.broker] if args.broker else list(BrokerKind)
    if BrokerKind.MOSQUITTO in brokers and not mosquitto_version():
        parser.error(
            "mosquitto is not installed (apt-get install mosquitto), or pass --broker trio-mqtt"
        )
    machine = machine_info()
    print(
        f"{machine['nproc']} cores ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['mosquitto'] or 'no mosquitto'}, trio-mqtt {machine['trio_mqtt_commit']}; "
        f"{scale.name} scale, {repeat} repetition(s)",
        flush=True,
    )
    started = time.perf_counter()
    records = run_benchmarks(scenarios, brokers, scale, repeat)
    rows = summarize(records)
    targets = evaluate_targets(rows, full_scale=scale is FULL)
    print()
    print(format_table(rows))
    print()
    print(format_targets(targets))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = _output_stem(args, scenarios, brokers)
    settings = {
        "scale": scale.name,
        "sizes": {key: value for key, value in attrs.asdict(scale).items() if key != "name"},
        "repeat": repeat,
        "scenarios": [scenario.name for scenario in scenarios],
        "brokers": [kind.value for kind in brokers],
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
    }
    json_path = args.output_dir / f"{stem}.json"
    write_json(
        json_path, machine=machine, settings=settings, records=records, rows=rows, targets=targets
    )
    markdown_path = args.output_dir / f"{stem}.md"
    markdown_path.write_text(markdown_table(rows) + "\n\n" + markdown_targets(targets) + "\n")
    print(f"\nwrote {json_path}\nwrote {markdown_path}")
    if not args.no_chart:
        chart_path = args.output_dir / f"{stem}.png"
        title = _chart_title(machine, repeat)
        skipped = write_chart(chart_path, rows, title)
        print(f"note: {skipped}" if skipped else f"wrote {chart_path}")
    failed = [record for record in records if not record.outcome.verified]
    if failed:
        print(f"\n{len(failed)} run(s) failed verification", file=sys.stderr)
        return 1
    return 0
