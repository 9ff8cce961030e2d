"""Reading the line-based auth files: UTF-8 text, comments and blank lines skipped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from trio_mqtt.errors import ConfigError

__all__ = ["content_lines", "read_text"]


def read_text(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text ({exc.reason})", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", file=str(path)) from None


def content_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` of every line that is neither blank nor a comment."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line
