"""Benchmarks of trio-mqtt side by side with mosquitto (``python -m benchmarks``).

Modules: :mod:`~benchmarks.wire` (hand-built packets, fast verifying parser),
:mod:`~benchmarks.loadgen` (load generator worker processes),
:mod:`~benchmarks.brokers` (broker subprocesses), :mod:`~benchmarks.scenarios`,
:mod:`~benchmarks.report` (tables, targets, JSON, chart), :mod:`~benchmarks.profiling`
(``--profile``) and :mod:`~benchmarks.cli`. See docs/performance.md.
"""
