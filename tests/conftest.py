"""Shared test fixtures."""

from __future__ import annotations

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
