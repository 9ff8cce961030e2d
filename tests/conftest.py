"""Shared test fixtures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import FakeClock
from nats_server import NatsServer, running_nats_server
from tools import require_tool as _require_tool


@pytest.fixture
def require_tool() -> Callable[[str], str]:
    """``require_tool("haproxy")`` -> path, or skip/fail the test (see tests/tools.py)."""
    return _require_tool


@pytest.fixture
def clock() -> FakeClock:
    """The broker's clock for a core built with ``make_core(clock)`` (tests/helpers.py)."""
    return FakeClock()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on 127.0.0.1 for this test (tests/nats_server.py)."""
    with running_nats_server(tmp_path / "nats") as server:
        yield server


@pytest.fixture(autouse=True)
def _restore_root_log_level() -> Iterator[None]:
    """Put the root logger's level (and logging's record switches) back after each test.

    A config reload applies ``log_level`` to the root logger (trio_mqtt/cli.py); a test
    that reloads would otherwise leave INFO on for the rest of the session, and pytest's
    log capture would then keep every INFO record of a later test in memory (50,000
    connects in tests/broker/test_flow_control.py measured as 1.65M blocks "leaked").
    """
    root = logging.getLogger()
    level = root.level
    # (the command's configure_logging also turns off what its formats never show)
    switches = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    saved = {name: getattr(logging, name) for name in switches}
    yield
    root.setLevel(level)
    for name, value in saved.items():
        setattr(logging, name, value)
