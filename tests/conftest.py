"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tools import require_tool as _require_tool


@pytest.fixture
def require_tool() -> Callable[[str], str]:
    """``require_tool("haproxy")`` -> path, or skip/fail the test (see tests/tools.py)."""
    return _require_tool
