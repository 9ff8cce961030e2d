"""``python -m benchmarks --profile SCENARIO``: where trio-mqtt spends its CPU time.

Two profilers, both from the ``bench`` extra:

- ``py-spy`` (default): attaches to the running broker for the duration of the scenario
  only (no start-up noise, no instrumentation inside the broker) and records folded
  stacks; this module turns them into a text report of the top functions and source
  lines by own time and the top functions by inclusive time (``profile-SCENARIO.txt``)
  and keeps the folded stacks
  (``profile-SCENARIO.folded``, loadable in speedscope or flamegraph.pl).
- ``pyinstrument``: runs the whole broker under pyinstrument (start-up included) and
  writes its text and HTML reports (``profile-SCENARIO.pyinstrument.txt`` / ``.html``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from benchmarks.brokers import BrokerKind, BrokerProcess, start_broker
from benchmarks.scenarios import RunOutcome, Scale, Scenario

__all__ = [
    "PROFILERS",
    "ProfileError",
    "profile_scenario",
    "py_spy_recording",
    "summarize_folded",
    "summarize_folded_file",
]

PROFILERS = ("py-spy", "pyinstrument")
PY_SPY_RATE = 250
TOP = 30


class ProfileError(RuntimeError):
    """The profiler is missing or failed."""


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise ProfileError("py-spy is not installed (pip install -e '.[bench]')")
    return found


_LINE_NUMBER = re.compile(r":\d+\)$")


def _function_of(frame: str) -> str:
    """'handle (trio_mqtt/broker/core.py)': the frame without its line number."""
    return _LINE_NUMBER.sub(")", frame)


def summarize_folded(lines: Iterable[str], *, root: str = "", top: int = TOP) -> str:
    """Text report of folded stacks (py-spy ``--format raw``, one line per stack).

    Three tables: functions by own time (samples where the function itself was running),
    source lines by own time (which lines of those functions), and functions by
    inclusive time (own time plus everything they called).
    """
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame.replace(root, "") for frame in stack.split(";")]
        total += count
        own_lines[frames[-1]] += count
        own[_function_of(frames[-1])] += count
        for function in {_function_of(frame) for frame in frames}:
            inclusive[function] += count
    if not total:
        return "no samples (was the broker busy during the scenario?)\n"
    # Frames on (nearly) every stack (runpy, trio.run, the CLI) say nothing: leave them out.
    everywhere = {frame for frame, count in inclusive.items() if count >= 0.9 * total}
    for frame in everywhere:
        del inclusive[frame]
    out = [f"{total} samples of the broker's main thread while it was on the CPU", ""]
    tables = (
        ("functions by own time", own),
        ("lines by own time", own_lines),
        ("functions by inclusive time", inclusive),
    )
    for title, counter in tables:
        out.append(f"top {top} {title}:")
        out.append(f"{'share':>7}  {'samples':>7}  function (file[:line])")
        for frame, count in counter.most_common(top):
            out.append(f"{100 * count / total:6.1f}%  {count:7d}  {frame}")
        out.append("")
    return "\n".join(out)


def _describe(outcome: RunOutcome) -> str:
    metrics = ", ".join(f"{key}={value:,.1f}" for key, value in outcome.metrics.items())
    status = "verified" if outcome.verified else f"NOT verified ({outcome.errors[:3]})"
    return f"last run under the profiler (slower than without it): {metrics}; {status}"


def _run_repeatedly(
    scenario: Scenario, broker: BrokerProcess, scale: Scale, runs: int
) -> RunOutcome:
    """Run *scenario* *runs* times on the same broker (more samples); the last outcome,
    marked unverified if any run was not."""
    outcomes = [scenario.run(broker, scale) for _ in range(runs)]
    last = outcomes[-1]
    if all(outcome.verified for outcome in outcomes):
        return last
    return attrs.evolve(last, verified=False)


@contextlib.contextmanager
def py_spy_recording(pid: int, folded: Path) -> Iterator[None]:
    """Record folded stacks of process *pid* with py-spy while the block runs.

    Samples without stopping the process (``--nonblocking``), PY_SPY_RATE per second;
    writes *folded* when the block ends. ProfileError if py-spy is missing or fails.
    """
    command = [
        _py_spy(),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--nonblocking",
        "--rate",
        str(PY_SPY_RATE),
        "--output",
        str(folded),
    ]
    recorder = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    time.sleep(1.0)  # let py-spy attach before the load starts
    if recorder.poll() is not None:
        output = recorder.stdout.read().decode(errors="replace") if recorder.stdout else ""
        raise ProfileError(f"py-spy exited with status {recorder.returncode}:\n{output}")
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.communicate()
    if not folded.exists():
        raise ProfileError("py-spy wrote no profile")


def summarize_folded_file(folded: Path, *, top: int = TOP) -> str:
    """:func:`summarize_folded` of a file, with the repository's path left out."""
    root = str(Path(__file__).resolve().parent.parent) + os.sep
    with open(folded, encoding="utf-8", errors="replace") as lines:
        return summarize_folded(lines, root=root, top=top)


def _profile_py_spy(
    scenario: Scenario, scale: Scale, output_dir: Path, runs: int
) -> tuple[RunOutcome, list[Path]]:
    folded = output_dir / f"profile-{scenario.name}.folded"
    report = output_dir / f"profile-{scenario.name}.txt"
    broker = start_broker(BrokerKind.TRIO_MQTT)
    try:
        with py_spy_recording(broker.process.pid, folded):
            outcome = _run_repeatedly(scenario, broker, scale, runs)
    finally:
        broker.stop()
    summary = summarize_folded_file(folded)
    report.write_text(
        f"py-spy profile of trio-mqtt, scenario {scenario.name} ({scale.name} scale, "
        f"{runs} run(s) on one broker, {PY_SPY_RATE} samples/s)\n"
        f"{_describe(outcome)}\n\n{summary}"
    )
    return outcome, [report, folded]


def _profile_pyinstrument(
    scenario: Scenario, scale: Scale, output_dir: Path, runs: int
) -> tuple[RunOutcome, list[Path]]:
    session = output_dir / f"profile-{scenario.name}.pyisession"
    text = output_dir / f"profile-{scenario.name}.pyinstrument.txt"
    html = output_dir / f"profile-{scenario.name}.pyinstrument.html"
    wrapper = [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(session)]
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        raise ProfileError("pyinstrument is not installed (pip install -e '.[bench]')") from None
    broker: BrokerProcess = start_broker(BrokerKind.TRIO_MQTT, wrapper=wrapper)
    try:
        outcome = _run_repeatedly(scenario, broker, scale, runs)
    finally:
        broker.stop()
    if not session.exists():
        raise ProfileError(f"pyinstrument wrote no session:\n{broker.log_tail()}")
    for renderer, path in (("text", text), ("html", html)):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pyinstrument",
                "--load",
                str(session),
                "-r",
                renderer,
                "-o",
                str(path),
            ],
            check=True,
            timeout=120,
        )
    text.write_text(_describe(outcome) + "\n" + text.read_text())
    return outcome, [text, html, session]


def profile_scenario(
    scenario: Scenario,
    scale: Scale,
    output_dir: Path,
    *,
    profiler: str = "py-spy",
    runs: int = 3,
) -> tuple[RunOutcome, list[Path]]:
    """Run *scenario* *runs* times against one profiled trio-mqtt; the outcome and files."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if profiler == "py-spy":
        return _profile_py_spy(scenario, scale, output_dir, runs)
    if profiler == "pyinstrument":
        return _profile_pyinstrument(scenario, scale, output_dir, runs)
    raise ProfileError(f"unknown profiler {profiler!r} (choose from: {', '.join(PROFILERS)})")
