"""JSONFormatter, configure_logging's formats, and --log-format / [broker] log_format."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

from trio_mqtt.cli import build_config, build_parser, configure_logging, main
from trio_mqtt.config import load_config
from trio_mqtt.errors import ConfigError
from trio_mqtt.logformat import TEXT_FORMAT, JSONFormatter, make_formatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("trio_mqtt.x", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_one_object_per_line_with_the_extra_fields() -> None:
    line = JSONFormatter(node="n1").format(
        record("refused %s:\nline two", "x", event="connection-refused", reason="timeout")
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "trio_mqtt.x"
    assert entry["message"] == "refused x:\nline two"
    assert entry["node"] == "n1"
    assert (entry["event"], entry["reason"]) == ("connection-refused", "timeout")
    assert entry["time"].endswith("+00:00")
    assert "args" not in entry and "msg" not in entry


def test_an_exception_and_values_json_cannot_hold() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("failed", odd={1, 2}, peer=Path("/x"))
        made.exc_info = sys.exc_info()
    entry = json.loads(JSONFormatter().format(made))
    assert "ValueError: boom" in entry["exception"]
    assert entry["peer"] == "/x"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configure_logging(log_format: str) -> None:
    stream = io.StringIO()
    handler = configure_logging("info", stream, name="w1", log_format=log_format)
    try:
        logging.getLogger("trio_mqtt.test").info("hello %s", "there", extra={"event": "e"})
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue().strip()
    if log_format == "json":
        assert json.loads(line)["message"] == "hello there"
        assert json.loads(line)["node"] == "w1"
    else:
        assert line.endswith("INFO    [w1] trio_mqtt.test: hello there")


def test_command_line_overrides_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[broker]\nlog_format = "json"\n')
    args = build_parser().parse_args(["--config", str(config)])
    assert build_config(args).log_format == "json"
    args = build_parser().parse_args(["--config", str(config), "--log-format", "TEXT"])
    assert build_config(args).log_format == "text"
    assert build_config(build_parser().parse_args(["--log-format", "json"])).log_format == "json"
    assert build_config(build_parser().parse_args([])).log_format == "text"


def test_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[broker]\nlog_format = "xml"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert (caught.value.file, caught.value.key) == (str(config), "broker.log_format")
    assert "'xml' is not one of 'text', 'json'" in str(caught.value)
    assert main(["--log-format", "xml"]) == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_text_time_stamps_are_the_standard_ones() -> None:
    # the time text is worked out once per second: it must stay what logging writes
    # (local time, milliseconds after a comma), across a second's change too
    ours = make_formatter("text")
    standard = logging.Formatter(TEXT_FORMAT)
    for created in (1_780_000_000.001, 1_780_000_000.999, 1_780_000_001.5, 1_780_003_600.25):
        record = logging.makeLogRecord({"msg": "m", "created": created, "msecs": 0})
        record.msecs = (created - int(created)) * 1000
        assert ours.format(record) == standard.format(record)
    record = logging.makeLogRecord({"msg": "m", "created": 1_780_000_000.0, "msecs": 0})
    assert ours.formatTime(record, "%H") == standard.formatTime(record, "%H")


def test_the_command_skips_caller_thread_and_process_lookups() -> None:
    stream = io.StringIO()
    handler = configure_logging("info", stream)
    try:
        logging.getLogger("trio_mqtt.test").info("hello %s", "there")
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue().endswith(" INFO    trio_mqtt.test: hello there\n")
    assert logging._srcfile is None and not logging.logThreads and not logging.logProcesses
