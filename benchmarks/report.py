"""Summaries of benchmark runs: medians, trio-mqtt / mosquitto ratios, targets, outputs.

:func:`summarize` turns the list of runs into one row per (scenario, metric) with the
median of each broker and their ratio; :func:`evaluate_targets` checks the goals of the
performance issue; :func:`format_table` / :func:`markdown_table` print them, and
:func:`write_chart` draws a PNG (matplotlib is optional).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.brokers import BrokerKind
from benchmarks.scenarios import SCENARIOS, MetricSpec, RunOutcome, Scenario

__all__ = [
    "TARGETS",
    "RunRecord",
    "SummaryRow",
    "Target",
    "TargetResult",
    "evaluate_targets",
    "format_table",
    "format_targets",
    "markdown_table",
    "markdown_targets",
    "records_from_json",
    "summarize",
    "write_chart",
    "write_json",
]

TRIO = BrokerKind.TRIO_MQTT.value
MOSQUITTO = BrokerKind.MOSQUITTO.value


@attrs.frozen
class RunRecord:
    """One run of one scenario against one broker."""

    scenario: str
    broker: str
    repetition: int
    outcome: RunOutcome
    wall_s: float
    background_busy: float

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self.outcome)
        data["errors"] = list(self.outcome.errors)
        return {
            "scenario": self.scenario,
            "broker": self.broker,
            "repetition": self.repetition,
            "wall_s": round(self.wall_s, 3),
            "background_busy": round(self.background_busy, 3),
            **data,
        }


@attrs.frozen
class SummaryRow:
    """Medians of one metric of one scenario, per broker, and their ratio."""

    scenario: Scenario
    metric: MetricSpec
    trio: float | None
    mosquitto: float | None
    trio_runs: int
    mosquitto_runs: int
    all_verified: bool

    @property
    def ratio(self) -> float | None:
        """trio-mqtt / mosquitto (None if either is missing or mosquitto is 0)."""
        if self.trio is None or not self.mosquitto:
            return None
        return self.trio / self.mosquitto

    @property
    def better(self) -> str:
        """Which broker this row favours, given the metric's direction."""
        ratio = self.ratio
        if ratio is None or ratio == 1.0:
            return ""
        trio_wins = ratio > 1.0 if self.metric.higher_is_better else ratio < 1.0
        return TRIO if trio_wins else MOSQUITTO

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "title": self.scenario.title,
            "metric": self.metric.key,
            "label": self.metric.label,
            "unit": self.metric.unit,
            "higher_is_better": self.metric.higher_is_better,
            TRIO: self.trio,
            MOSQUITTO: self.mosquitto,
            "ratio": self.ratio,
            "better": self.better,
            "runs": {TRIO: self.trio_runs, MOSQUITTO: self.mosquitto_runs},
            "all_verified": self.all_verified,
            "note": self.scenario.mosquitto_note,
        }


def _median(records: Sequence[RunRecord], key: str) -> float | None:
    values = [record.outcome.metrics[key] for record in records if key in record.outcome.metrics]
    return statistics.median(values) if values else None


def summarize(records: Sequence[RunRecord]) -> list[SummaryRow]:
    """One row per metric of every scenario that has runs, in scenario order.

    Medians use verified runs only; a run whose verification failed still counts
    against ``all_verified``.
    """
    rows: list[SummaryRow] = []
    for scenario in SCENARIOS:
        runs = [record for record in records if record.scenario == scenario.name]
        if not runs:
            continue
        good = [record for record in runs if record.outcome.verified]
        trio = [record for record in good if record.broker == TRIO]
        mosquitto = [record for record in good if record.broker == MOSQUITTO]
        for metric in scenario.metrics:
            rows.append(
                SummaryRow(
                    scenario=scenario,
                    metric=metric,
                    trio=_median(trio, metric.key),
                    mosquitto=_median(mosquitto, metric.key),
                    trio_runs=len(trio),
                    mosquitto_runs=len(mosquitto),
                    all_verified=len(good) == len(runs),
                )
            )
    return rows


# --- targets ------------------------------------------------------------------------


@attrs.frozen
class Target:
    """A goal of the performance issue, on one summary row.

    ``kind`` is ``"ratio_min"`` (trio/mosquitto >= threshold), ``"ratio_max"``
    (trio/mosquitto <= threshold), ``"value_max"`` (trio-mqtt's value <= threshold) or
    ``"value_min"`` (trio-mqtt's value >= threshold).
    """

    scenario: str
    metric: str
    kind: str
    threshold: float
    description: str
    #: Only a full-scale run measures it (a quick run opens far fewer connections).
    full_scale_only: bool = False


@attrs.frozen
class TargetResult:
    """A target and whether the latest numbers meet it (None: not measured)."""

    target: Target
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


TARGETS: tuple[Target, ...] = (
    Target("fanin", "throughput", "ratio_min", 0.5, "QoS 0 fan-in >= 0.5x mosquitto"),
    Target("fanout", "throughput", "ratio_min", 0.5, "QoS 0 fan-out >= 0.5x mosquitto"),
    Target(
        "qos1_throughput",
        "throughput",
        "ratio_min",
        0.4,
        "QoS 1 window-100 throughput >= 0.4x mosquitto",
    ),
    Target("qos1_latency", "p50_us", "ratio_max", 2.0, "QoS 1 p50 latency <= 2x mosquitto"),
    Target(
        "connections",
        "rss_per_conn_kib",
        "value_max",
        20.0,
        "<= 20 KiB RSS per idle connection",
    ),
    Target(
        "connections",
        "held",
        "value_min",
        10_000,
        "10,000 idle connections held",
        full_scale_only=True,
    ),
)


def evaluate_targets(rows: Sequence[SummaryRow], *, full_scale: bool) -> list[TargetResult]:
    """Check every target against the summary rows (met is None where not measured)."""
    results: list[TargetResult] = []
    for target in TARGETS:
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
            value = row.ratio if target.kind.startswith("ratio") else row.trio
        if (
            row is None
            or value is None
            or not row.all_verified
            or (target.full_scale_only and not full_scale)
        ):
            results.append(TargetResult(target, value, None))
            continue
        if target.kind in ("ratio_min", "value_min"):
            met = value >= target.threshold
        else:
            met = value <= target.threshold
        results.append(TargetResult(target, value, met))
    return results


# --- text output --------------------------------------------------------------------


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) < 1:
        text = f"{value:.3g}"
    elif unit in ("KiB", "s") or abs(value) < 100:
        text = f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    else:
        text = f"{value:,.0f}"
    return f"{text} {unit}".strip()


def _ratio_text(row: SummaryRow) -> str:
    if row.ratio is None:
        return "-"
    direction = "higher" if row.metric.higher_is_better else "lower"
    return f"{row.ratio:.2f}x ({direction} is better)"


def _cells(row: SummaryRow) -> list[str]:
    verified = "yes" if row.all_verified else "NO"
    mosquitto = _number(row.mosquitto, row.metric.unit)
    if row.scenario.mosquitto_note and row.mosquitto is not None:
        mosquitto += " *"
    return [
        row.scenario.name,
        row.metric.label,
        _number(row.trio, row.metric.unit),
        mosquitto,
        _ratio_text(row),
        row.better or "-",
        verified,
    ]


HEADERS = [
    "scenario",
    "metric",
    "trio-mqtt",
    "mosquitto",
    "trio-mqtt / mosquitto",
    "better",
    "verified",
]


def _notes(rows: Sequence[SummaryRow]) -> list[str]:
    notes = sorted({row.scenario.mosquitto_note for row in rows if row.scenario.mosquitto_note})
    return [f"* {note}" for note in notes]


def format_table(rows: Sequence[SummaryRow]) -> str:
    """A plain-text table of medians and ratios, for the terminal."""
    lines = [HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(HEADERS))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out + _notes(rows))


def markdown_table(rows: Sequence[SummaryRow]) -> str:
    """The same table in Markdown, for docs/performance.md."""
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    notes = _notes(rows)
    if notes:
        out += ["", *(note.replace("* ", "\\* ", 1) for note in notes)]
    return "\n".join(out)


def _target_cells(result: TargetResult) -> list[str]:
    kind = result.target.kind
    if result.value is None:
        value = "-"
    elif kind.startswith("ratio"):
        value = f"{result.value:.2f}x"
    else:
        unit = "KiB" if result.target.metric.endswith("_kib") else ""
        value = _number(result.value, unit)
    status = {True: "met", False: "missed", None: "not measured"}[result.met]
    return [result.target.description, value, status]


def format_targets(results: Sequence[TargetResult]) -> str:
    """The targets of the issue with the measured value and met / missed."""
    lines = [["target", "measured", "status"], *(_target_cells(result) for result in results)]
    widths = [max(len(line[column]) for line in lines) for column in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in lines
    )


def markdown_targets(results: Sequence[TargetResult]) -> str:
    """The targets as a Markdown table."""
    out = ["| target | measured | status |", "|---|---|---|"]
    out += ["| " + " | ".join(_target_cells(result)) + " |" for result in results]
    return "\n".join(out)


def records_from_json(document: dict[str, Any]) -> list[RunRecord]:
    """The runs of a results document written by :func:`write_json`."""
    records = []
    for run in document["runs"]:
        outcome = RunOutcome(
            metrics=dict(run["metrics"]),
            verified=bool(run["verified"]),
            expected=int(run["expected"]),
            received=int(run["received"]),
            error_count=int(run["error_count"]),
            errors=tuple(run["errors"]),
            details=dict(run["details"]),
        )
        records.append(
            RunRecord(
                run["scenario"],
                run["broker"],
                int(run["repetition"]),
                outcome,
                float(run["wall_s"]),
                float(run["background_busy"]),
            )
        )
    return records


# --- files --------------------------------------------------------------------------


def write_json(
    path: Path,
    *,
    machine: dict[str, Any],
    settings: dict[str, Any],
    records: Sequence[RunRecord],
    rows: Sequence[SummaryRow],
    targets: Sequence[TargetResult],
    extra: dict[str, Any] | None = None,
) -> None:
    """Everything about a benchmark run, as JSON (*extra*: more top-level keys, e.g. the
    cluster scenarios' summary)."""
    document = {
        "schema": 1,
        "machine": machine,
        "settings": settings,
        "summary": [row.to_json() for row in rows],
        "targets": [result.to_json() for result in targets],
        **(extra or {}),
        "runs": [record.to_json() for record in records],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_chart(path: Path, rows: Sequence[SummaryRow], title: str) -> str | None:
    """A PNG with one small bar chart per metric; returns a note if it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install -e '.[bench]')"
    shown = [row for row in rows if row.trio is not None or row.mosquitto is not None]
    if not shown:
        return "nothing to chart"
    columns = min(4, len(shown))
    lines = (len(shown) + columns - 1) // columns
    figure, axes = plt.subplots(
        lines, columns, figsize=(max(3.4 * columns, 8.0), 3.0 * lines + 0.4), squeeze=False
    )
    colors = {TRIO: "#4c72b0", MOSQUITTO: "#dd8452"}
    for index, row in enumerate(shown):
        axis = axes[index // columns][index % columns]
        names = [TRIO, MOSQUITTO]
        values = [row.trio or 0.0, row.mosquitto or 0.0]
        labels = [TRIO, f"{MOSQUITTO} *" if row.scenario.mosquitto_note else MOSQUITTO]
        bars = axis.bar(labels, values, color=[colors[name] for name in names])
        axis.bar_label(bars, labels=[_number(value) for value in values], fontsize=7)
        direction = "higher" if row.metric.higher_is_better else "lower"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        axis.set_title(
            f"{row.scenario.name}: {row.metric.label}\nratio {ratio} ({direction} is better)",
            fontsize=8,
        )
        axis.set_ylabel(row.metric.unit, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.margins(y=0.15)
    for index in range(len(shown), lines * columns):
        axes[index // columns][index % columns].axis("off")
    notes = sorted({row.scenario.mosquitto_note for row in shown if row.scenario.mosquitto_note})
    if notes:
        figure.text(0.01, 0.005, "  ".join(f"* {note}" for note in notes), fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0.0, 0.03, 1.0, 1.0))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
