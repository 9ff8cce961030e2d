"""Summaries of the cluster scenarios: medians per setup, cross-node / one-node, targets.

The counterpart of :mod:`benchmarks.report` for :mod:`benchmarks.cluster`: one row per
(scenario, metric) with the one-node and cross-node medians (verified runs only), their
ratio and difference, and the cluster targets of the issue.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import attrs

from benchmarks.cluster import CLUSTER_SCENARIOS, ClusterScenario, Setup
from benchmarks.report import RunRecord
from benchmarks.scenarios import MetricSpec

__all__ = [
    "CLUSTER_TARGETS",
    "ClusterRow",
    "ClusterTarget",
    "ClusterTargetResult",
    "evaluate_cluster_targets",
    "format_cluster_table",
    "format_cluster_targets",
    "markdown_cluster_table",
    "markdown_cluster_targets",
    "summarize_cluster",
]

ONE = Setup.ONE_NODE.value
CROSS = Setup.CROSS_NODE.value


@attrs.frozen
class ClusterRow:
    """Medians of one metric of one cluster scenario on each setup."""

    scenario: ClusterScenario
    metric: MetricSpec
    one: float | None
    cross: float | None
    one_runs: int
    cross_runs: int
    all_verified: bool

    @property
    def ratio(self) -> float | None:
        """cross-node / one-node (None if either is missing or one-node is 0)."""
        if self.cross is None or not self.one:
            return None
        return self.cross / self.one

    @property
    def difference(self) -> float | None:
        """cross-node - one-node, in the metric's unit."""
        if self.cross is None or self.one is None:
            return None
        return self.cross - self.one

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "title": self.scenario.title,
            "metric": self.metric.key,
            "label": self.metric.label,
            "unit": self.metric.unit,
            "higher_is_better": self.metric.higher_is_better,
            ONE: self.one,
            CROSS: self.cross,
            "ratio": self.ratio,
            "difference": self.difference,
            "runs": {ONE: self.one_runs, CROSS: self.cross_runs},
            "all_verified": self.all_verified,
        }


def _median(records: Sequence[RunRecord], key: str) -> float | None:
    values = [record.outcome.metrics[key] for record in records if key in record.outcome.metrics]
    return statistics.median(values) if values else None


def summarize_cluster(records: Sequence[RunRecord]) -> list[ClusterRow]:
    """One row per metric of every cluster scenario that has runs, in scenario order."""
    rows: list[ClusterRow] = []
    for scenario in CLUSTER_SCENARIOS:
        runs = [record for record in records if record.scenario == scenario.name]
        if not runs:
            continue
        good = [record for record in runs if record.outcome.verified]
        one = [record for record in good if record.broker == ONE]
        cross = [record for record in good if record.broker == CROSS]
        for metric in scenario.metrics:
            rows.append(
                ClusterRow(
                    scenario,
                    metric,
                    _median(one, metric.key),
                    _median(cross, metric.key),
                    len(one),
                    len(cross),
                    len(good) == len(runs),
                )
            )
    return rows


# --- targets ------------------------------------------------------------------------


@attrs.frozen
class ClusterTarget:
    """A cluster goal of the issue: ``ratio_min`` (cross / one >= threshold),
    ``difference_max`` (cross - one <= threshold) or ``value_max`` (cross <= threshold)."""

    scenario: str
    metric: str
    kind: str
    threshold: float
    description: str


@attrs.frozen
class ClusterTargetResult:
    target: ClusterTarget
    value: float | None
    met: bool | None

    def to_json(self) -> dict[str, Any]:
        return {
            "description": self.target.description,
            "scenario": self.target.scenario,
            "metric": self.target.metric,
            "kind": self.target.kind,
            "threshold": self.target.threshold,
            "value": self.value,
            "met": self.met,
        }


CLUSTER_TARGETS: tuple[ClusterTarget, ...] = (
    ClusterTarget(
        "cluster_fanin", "throughput", "ratio_min", 0.5, "cross-node QoS 0 fan-in >= 0.5x one node"
    ),
    ClusterTarget(
        "cluster_fanout",
        "throughput",
        "ratio_min",
        0.5,
        "cross-node QoS 0 fan-out >= 0.5x one node",
    ),
    ClusterTarget(
        "cluster_qos1_latency",
        "p50_us",
        "difference_max",
        400.0,
        "cross-node QoS 1 p50 <= one node + 0.4 ms",
    ),
    ClusterTarget(
        "cluster_fanin",
        "receiver_us_per_msg",
        "value_max",
        5.0,
        "receiving node's CPU per cross-node message <= 5 us",
    ),
)


def evaluate_cluster_targets(rows: Sequence[ClusterRow]) -> list[ClusterTargetResult]:
    """Check every cluster target against the rows (met is None where not measured)."""
    results = []
    for target in CLUSTER_TARGETS:
        row = next(
            (
                r
                for r in rows
                if r.scenario.name == target.scenario and r.metric.key == target.metric
            ),
            None,
        )
        value: float | None = None
        if row is not None:
            value = {"ratio_min": row.ratio, "difference_max": row.difference}.get(
                target.kind, row.cross
            )
        if row is None or value is None or not row.all_verified:
            results.append(ClusterTargetResult(target, value, None))
            continue
        met = value >= target.threshold if target.kind == "ratio_min" else value <= target.threshold
        results.append(ClusterTargetResult(target, value, met))
    return results


# --- text ---------------------------------------------------------------------------

HEADERS = ["scenario", "metric", "one node", "cross-node", "cross / one", "verified"]


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}" if abs(value) < 1 else f"{value:,.2f} {unit}"


def _cells(row: ClusterRow) -> list[str]:
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
    if row.difference is not None and row.metric.unit == "us":
        spec = "+,.1f" if abs(row.difference) < 10 else "+,.0f"
        ratio += f" ({row.difference:{spec}} us)"
    return [
        row.scenario.name,
        row.metric.label,
        _number(row.one, row.metric.unit),
        _number(row.cross, row.metric.unit),
        ratio,
        "yes" if row.all_verified else "NO",
    ]


def _text_table(lines: list[list[str]]) -> str:
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def format_cluster_table(rows: Sequence[ClusterRow]) -> str:
    """Plain-text table of the cluster rows, for the terminal."""
    return _text_table([HEADERS, *(_cells(row) for row in rows)])


def markdown_cluster_table(rows: Sequence[ClusterRow]) -> str:
    """The same in Markdown."""
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(out)


def _target_cells(result: ClusterTargetResult) -> list[str]:
    kind = result.target.kind
    if result.value is None:
        value = "-"
    elif kind == "ratio_min":
        value = f"{result.value:.2f}x"
    elif kind == "difference_max":
        value = f"{result.value:+,.0f} us ({result.value / 1000:+.2f} ms)"
    else:
        value = f"{result.value:.2f} us"
    status = {True: "met", False: "missed", None: "not measured"}[result.met]
    return [result.target.description, value, status]


def format_cluster_targets(results: Sequence[ClusterTargetResult]) -> str:
    return _text_table([["target", "measured", "status"], *map(_target_cells, results)])


def markdown_cluster_targets(results: Sequence[ClusterTargetResult]) -> str:
    out = ["| target | measured | status |", "|---|---|---|"]
    out += ["| " + " | ".join(_target_cells(result)) + " |" for result in results]
    return "\n".join(out)
