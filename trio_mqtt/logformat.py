"""Log line formats of the ``trio-mqtt`` command: human text (the default) or JSON.

``JSONFormatter`` writes one JSON object per line, for log collectors: ``time`` (UTC,
ISO 8601 with milliseconds), ``level``, ``logger``, ``message``, then every field a log
call passed with ``extra=`` (the connect, disconnect and refusal lines pass ``event``,
``listener``, ``client_id``, ``client_address``, ``proxy_address``, ``reason``, ...),
``node`` for a ``--workers`` worker, and ``exception`` with its traceback, if any.
Standard library only.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

__all__ = ["LOG_FORMATS", "TEXT_FORMAT", "JSONFormatter", "TextFormatter", "make_formatter"]

#: The values of ``--log-format`` and ``[broker] log_format``.
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# What every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, *, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.node:
            entry["node"] = self.node
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` whose time stamp text is worked out once per second.

    The same text as the standard one (local time, ``2026-12-06 03:47:37,157``): the
    part before the milliseconds changes once a second, and ``time.strftime`` of it was
    a tenth of the cost of a connect or disconnect line.
    """

    _second: int | None = None
    _second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"


def make_formatter(log_format: str, *, node: str | None = None) -> logging.Formatter:
    """The formatter for ``log_format`` ("text" or "json"); *node* goes into every line."""
    if log_format == "json":
        return JSONFormatter(node=node)
    text = TEXT_FORMAT
    if node:
        text = TEXT_FORMAT.replace("%(name)s", "[" + node.replace("%", "%%") + "] %(name)s", 1)
    return TextFormatter(text)
