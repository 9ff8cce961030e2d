"""Summaries of benchmark runs: medians, spreads, ratios to mosquitto, targets, outputs.

:func:`summarize` turns the list of runs into one row per (scenario, metric) with, for
each broker (trio-mqtt, mosquitto with its own defaults, mosquitto-tuned), the median
and the min-max spread over the repetitions, and the ratios trio-mqtt / mosquitto and
trio-mqtt / mosquitto-tuned with their spreads (the lowest and the highest ratio any
pair of runs could give: trio-mqtt's min over mosquitto's max, and max over min);
:func:`evaluate_targets` checks the goals of the performance issue (against mosquitto's
defaults); :func:`format_table` / :func:`markdown_table` print them, and
:func:`write_chart` draws a PNG with min-max whiskers (matplotlib is optional).
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
    "BROKER_LABELS",
    "TARGETS",
    "Spread",
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
MOSQUITTO_TUNED = BrokerKind.MOSQUITTO_TUNED.value
BROKERS = (TRIO, MOSQUITTO, MOSQUITTO_TUNED)
#: Column headings: which mosquitto is which.
BROKER_LABELS = {
    TRIO: "trio-mqtt",
    MOSQUITTO: "mosquitto (its defaults)",
    MOSQUITTO_TUNED: "mosquitto-tuned (TCP_NODELAY, 100 in flight)",
}


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
class Spread:
    """One broker's values of one metric over the repetitions: median, min and max."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))


@attrs.frozen
class SummaryRow:
    """One metric of one scenario: each broker's :class:`Spread` and the ratios."""

    scenario: Scenario
    metric: MetricSpec
    stats: dict[str, Spread | None]
    all_verified: bool
    #: how mosquitto's column differs from trio-mqtt's, if it does in these runs
    note: str = ""

    def median(self, broker: str) -> float | None:
        spread = self.stats.get(broker)
        return spread.median if spread is not None else None

    def runs(self, broker: str) -> int:
        spread = self.stats.get(broker)
        return spread.runs if spread is not None else 0

    @property
    def trio(self) -> float | None:
        return self.median(TRIO)

    @property
    def mosquitto(self) -> float | None:
        """mosquitto with its own defaults."""
        return self.median(MOSQUITTO)

    @property
    def mosquitto_tuned(self) -> float | None:
        return self.median(MOSQUITTO_TUNED)

    @property
    def trio_runs(self) -> int:
        return self.runs(TRIO)

    @property
    def mosquitto_runs(self) -> int:
        return self.runs(MOSQUITTO)

    def ratio_to(self, broker: str) -> float | None:
        """trio-mqtt / *broker*, medians (None if either is missing or *broker*'s is 0)."""
        trio, other = self.trio, self.median(broker)
        if trio is None or not other:
            return None
        return trio / other

    def ratio_spread(self, broker: str) -> tuple[float, float] | None:
        """The lowest and highest trio-mqtt / *broker* ratio of any two runs."""
        trio, other = self.stats.get(TRIO), self.stats.get(broker)
        if trio is None or other is None or other.low <= 0:
            return None
        return trio.low / other.high, trio.high / other.low

    @property
    def ratio(self) -> float | None:
        """trio-mqtt / mosquitto with its defaults (what the targets are checked on)."""
        return self.ratio_to(MOSQUITTO)

    @property
    def ratio_tuned(self) -> float | None:
        return self.ratio_to(MOSQUITTO_TUNED)

    def better_than(self, broker: str) -> str:
        """Which of trio-mqtt and *broker* this row favours, given the metric's direction."""
        ratio = self.ratio_to(broker)
        if ratio is None or ratio == 1.0:
            return ""
        trio_wins = ratio > 1.0 if self.metric.higher_is_better else ratio < 1.0
        return TRIO if trio_wins else broker

    @property
    def better(self) -> str:
        return self.better_than(MOSQUITTO)

    def to_json(self) -> dict[str, Any]:
        spreads = {
            broker: [spread.low, spread.high]
            for broker, spread in self.stats.items()
            if spread is not None
        }
        return {
            "scenario": self.scenario.name,
            "title": self.scenario.title,
            "metric": self.metric.key,
            "label": self.metric.label,
            "unit": self.metric.unit,
            "higher_is_better": self.metric.higher_is_better,
            TRIO: self.trio,
            MOSQUITTO: self.mosquitto,
            MOSQUITTO_TUNED: self.mosquitto_tuned,
            "spread": spreads,
            "ratio": self.ratio,
            "ratio_spread": _pair(self.ratio_spread(MOSQUITTO)),
            "ratio_tuned": self.ratio_tuned,
            "ratio_tuned_spread": _pair(self.ratio_spread(MOSQUITTO_TUNED)),
            "better": self.better,
            "better_tuned": self.better_than(MOSQUITTO_TUNED),
            "runs": {broker: self.runs(broker) for broker in BROKERS},
            "all_verified": self.all_verified,
            "note": self.note,
        }


def _pair(pair: tuple[float, float] | None) -> list[float] | None:
    return list(pair) if pair is not None else None


def _spread(records: Sequence[RunRecord], key: str) -> Spread | None:
    return Spread.of(
        [record.outcome.metrics[key] for record in records if key in record.outcome.metrics]
    )


def summarize(records: Sequence[RunRecord]) -> list[SummaryRow]:
    """One row per metric of every scenario that has runs, in scenario order.

    Medians and spreads use verified runs only; a run whose verification failed still
    counts against ``all_verified``.
    """
    rows: list[SummaryRow] = []
    for scenario in SCENARIOS:
        runs = [record for record in records if record.scenario == scenario.name]
        if not runs:
            continue
        good = [record for record in runs if record.outcome.verified]
        by_broker = {
            broker: [record for record in good if record.broker == broker] for broker in BROKERS
        }
        for metric in scenario.metrics:
            rows.append(
                SummaryRow(
                    scenario=scenario,
                    metric=metric,
                    stats={
                        broker: _spread(broker_runs, metric.key)
                        for broker, broker_runs in by_broker.items()
                    },
                    all_verified=len(good) == len(runs),
                    note=scenario.note_for(
                        [record.outcome for record in runs if record.broker != TRIO]
                    ),
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


def _value_text(row: SummaryRow, broker: str) -> str:
    """``median unit (min-max)``; just the median for a single run."""
    spread = row.stats.get(broker)
    if spread is None:
        return "-"
    text = _number(spread.median, row.metric.unit)
    if spread.runs > 1:
        text += f" ({_number(spread.low)}-{_number(spread.high)})"
    if broker != TRIO and row.note:
        text += " *"
    return text


def _ratio_text(row: SummaryRow, broker: str = MOSQUITTO) -> str:
    """``0.50x (0.45-0.55) higher is better``: the ratio of the medians, then the spread."""
    ratio = row.ratio_to(broker)
    if ratio is None:
        return "-"
    direction = "higher" if row.metric.higher_is_better else "lower"
    text = f"{ratio:.2f}x"
    spread = row.ratio_spread(broker)
    if spread is not None:
        text += f" ({spread[0]:.2f}-{spread[1]:.2f})"
    return f"{text} {direction} is better"


def _cells(row: SummaryRow) -> list[str]:
    verified = "yes" if row.all_verified else "NO"
    return [
        row.scenario.name,
        row.metric.label,
        _value_text(row, TRIO),
        _value_text(row, MOSQUITTO),
        _value_text(row, MOSQUITTO_TUNED),
        _ratio_text(row, MOSQUITTO),
        _ratio_text(row, MOSQUITTO_TUNED),
        row.better or "-",
        verified,
    ]


HEADERS = [
    "scenario",
    "metric",
    BROKER_LABELS[TRIO],
    BROKER_LABELS[MOSQUITTO],
    BROKER_LABELS[MOSQUITTO_TUNED],
    "trio-mqtt / mosquitto (defaults)",
    "trio-mqtt / mosquitto-tuned",
    "better (vs defaults)",
    "verified",
]
#: Printed under every table: what the columns are.
LEGEND = (
    "Values: median (min-max over the repetitions). Ratios: of the medians (in brackets "
    "the lowest and highest ratio of any two runs). mosquitto (its defaults): "
    "mosquitto.conf with only the queue limits raised so that it drops nothing; "
    "mosquitto-tuned: the same plus set_tcp_nodelay true and max_inflight_messages 100, "
    "the configuration of the results before issue 17."
)


def _notes(rows: Sequence[SummaryRow]) -> list[str]:
    notes = sorted({row.note for row in rows if row.note})
    return [f"* {note}" for note in notes]


def _wrap(text: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def format_table(rows: Sequence[SummaryRow]) -> str:
    """A plain-text table of medians and ratios, for the terminal."""
    lines = [HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(HEADERS))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out + _notes(rows) + _wrap(LEGEND))


def markdown_table(rows: Sequence[SummaryRow]) -> str:
    """The same table in Markdown, for docs/performance.md."""
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    notes = _notes(rows)
    if notes:
        out += ["", *(note.replace("* ", "\\* ", 1) for note in notes)]
    out += ["", LEGEND]
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
        lines, columns, figsize=(max(3.8 * columns, 8.0), 3.4 * lines + 0.6), squeeze=False
    )
    colors = {TRIO: "#4c72b0", MOSQUITTO: "#dd8452", MOSQUITTO_TUNED: "#c9a27e"}
    short = {
        TRIO: "trio-mqtt",
        MOSQUITTO: "mosquitto\ndefaults",
        MOSQUITTO_TUNED: "mosquitto\ntuned",
    }
    for index, row in enumerate(shown):
        axis = axes[index // columns][index % columns]
        names = [name for name in BROKERS if row.stats.get(name) is not None]
        stats = [row.stats[name] for name in names]
        values = [spread.median for spread in stats if spread is not None]
        below = [spread.median - spread.low for spread in stats if spread is not None]
        above = [spread.high - spread.median for spread in stats if spread is not None]
        labels = [short[name] + (" *" if name != TRIO and row.note else "") for name in names]
        bars = axis.bar(
            labels,
            values,
            yerr=[below, above],
            capsize=3,
            ecolor="#333333",
            color=[colors[name] for name in names],
        )
        axis.bar_label(bars, labels=[_number(value) for value in values], fontsize=7)
        direction = "higher" if row.metric.higher_is_better else "lower"
        ratios = []
        for broker, name in ((MOSQUITTO, "defaults"), (MOSQUITTO_TUNED, "tuned")):
            ratio = row.ratio_to(broker)
            spread = row.ratio_spread(broker)
            if ratio is not None:
                extra = f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread is not None else ""
                ratios.append(f"vs {name}: {ratio:.2f}x{extra}")
        axis.set_title(
            f"{row.scenario.name}: {row.metric.label}\n"
            f"{chr(10).join(ratios) or 'no ratio'}\n({direction} is better)",
            fontsize=7,
        )
        axis.set_ylabel(row.metric.unit, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.margins(y=0.15)
    for index in range(len(shown), lines * columns):
        axes[index // columns][index % columns].axis("off")
    notes = sorted({row.note for row in shown if row.note})
    legend = (
        "bars: medians; whiskers: min-max over the repetitions. mosquitto defaults: its "
        "own settings (queues raised so that it drops nothing); mosquitto tuned: + "
        "TCP_NODELAY, 100 in flight."
    )
    figure.text(0.01, 0.005, "\n".join([legend, *(f"* {note}" for note in notes)]), fontsize=7)
    figure.suptitle(title, fontsize=10)
    height = figure.get_figheight()
    bottom = (0.3 + 0.15 * (len(notes) + 2)) / height
    figure.tight_layout(rect=(0.0, bottom, 1.0, 1.0 - 0.45 / height))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
