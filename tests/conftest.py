"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import FakeClock
from tools import require_tool as _require_tool


@pytest.fixture
def require_tool() -> Callable[[str], str]:
    """``require_tool("haproxy")`` -> path, or skip/fail the test (see tests/tools.py)."""
    return _require_tool


@pytest.fixture
def clock() -> FakeClock:
    """The broker's clock for a core built with ``make_core(clock)`` (tests/helpers.py)."""
    return FakeClock()
