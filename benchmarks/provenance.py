"""Where a benchmark result came from: the commit of the measured source."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["source_commit"]

_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    """What ``git args...`` prints in the repository (stripped); raises if it fails."""
    done = subprocess.run(
        ["git", *args], cwd=_ROOT, capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def source_commit() -> str:
    """The git commit of the measured trio_mqtt/ source, '+dirty' if it has local edits."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        status = _git("status", "--porcelain", "--", "trio_mqtt")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if status else "")
