"""The trio-mqtt command line; the real server is never started here."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_mqtt
from trio_mqtt import cli
from trio_mqtt._version import __version__
from trio_mqtt.config import BrokerConfig, ListenerConfig, Transport, parse_config
from trio_mqtt.errors import ConfigError

REPO_ROOT = Path(trio_mqtt.__file__).resolve().parent.parent


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[BrokerConfig]:
    """Replace run_broker: record the config main() would serve instead of serving it."""
    configs: list[BrokerConfig] = []

    def record(config: BrokerConfig, **_reloading: object) -> None:
        configs.append(config)

    monkeypatch.setattr(cli, "run_broker", record)
    return configs


def test_version(capsys: pytest.CaptureFixture[str], started: list[BrokerConfig]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"trio-mqtt {__version__}\n"
    assert started == []


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_mqtt", "--version"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, f"trio-mqtt {__version__}\n")


def test_help_returns_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: trio-mqtt ")
    for option in ("--config", "--listen", "--log-level", "--version"):
        assert option in out


def test_no_arguments_serves_the_embedded_default(started: list[BrokerConfig]) -> None:
    assert cli.main([]) == 0
    assert started == [BrokerConfig()]


def test_listen_replaces_listeners_with_plain_tcp(started: list[BrokerConfig]) -> None:
    assert cli.main(["--listen", "0.0.0.0:1884", "--listen", "[::1]:0"]) == 0
    [config] = started
    assert config.listeners == (
        ListenerConfig(name="listener0", host="0.0.0.0", port=1884, transport=Transport.TCP),
        ListenerConfig(name="listener1", host="::1", port=0, transport=Transport.TCP),
    )


def test_listen_overrides_the_config_files_listeners_only(
    tmp_path: Path, started: list[BrokerConfig]
) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        "[broker]\nreceive_maximum = 7\n\n"
        '[[listeners]]\nname = "lb"\nbind = "0.0.0.0:1883"\n'
        '[listeners.proxy_protocol]\nmode = "required"\n'
    )
    assert cli.main(["--config", str(path), "--listen", "127.0.0.1:2883"]) == 0
    [config] = started
    assert config.receive_maximum == 7
    assert config.listeners == (ListenerConfig(name="listener0", host="127.0.0.1", port=2883),)


def test_a_listener_given_no_name_has_one_name_in_python_toml_and_listen() -> None:
    def names(config: BrokerConfig) -> list[str]:
        return [listener.name for listener in config.listeners]

    def listen(*binds: str) -> BrokerConfig:
        return cli.build_config(cli.build_parser().parse_args([f"--listen={b}" for b in binds]))

    # the default listener
    assert names(BrokerConfig()) == ["listener0"]
    assert names(parse_config({"listeners": [{"bind": "127.0.0.1:1883"}]})) == ["listener0"]
    assert names(listen("127.0.0.1:1883")) == ["listener0"]
    # several, some named: by position; an explicit name is kept
    in_python = BrokerConfig(
        listeners=[
            ListenerConfig(port=1),
            ListenerConfig(name="lb", port=2),
            ListenerConfig(port=3),
        ]
    )
    in_toml = parse_config(
        {
            "listeners": [
                {"bind": "127.0.0.1:1"},
                {"name": "lb", "bind": "127.0.0.1:2"},
                {"bind": "127.0.0.1:3"},
            ]
        }
    )
    assert names(in_python) == names(in_toml) == ["listener0", "lb", "listener2"]
    assert in_python == in_toml
    assert names(listen("127.0.0.1:1", "127.0.0.1:2")) == ["listener0", "listener1"]


def test_config_file_is_used(tmp_path: Path, started: list[BrokerConfig]) -> None:
    path = tmp_path / "broker.toml"
    path.write_text('[[listeners]]\nname = "lb"\nbind = "127.0.0.1:0"\n')
    assert cli.main(["--config", str(path)]) == 0
    assert [listener.name for listener in started[0].listeners] == ["lb"]


def test_bad_config_exits_2_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[BrokerConfig]
) -> None:
    path = tmp_path / "broker.toml"
    path.write_text('[[listeners]]\nbind = "127.0.0.1:1883"\ntransport = "quic"\n')
    assert cli.main(["--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"trio-mqtt: error: {path}: listeners[0].transport: "
        "'quic' is not one of 'tcp', 'tls', 'ws', 'wss'\n"
    )
    assert captured.out == ""
    assert started == []


def test_missing_config_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[BrokerConfig]
) -> None:
    path = tmp_path / "missing.toml"
    assert cli.main(["--config", str(path)]) == 2
    assert capsys.readouterr().err == f"trio-mqtt: error: {path}: config file not found\n"
    assert started == []


def test_bad_listen_exits_2(
    capsys: pytest.CaptureFixture[str], started: list[BrokerConfig]
) -> None:
    assert cli.main(["--listen", "127.0.0.1:1883", "--listen", "localhost"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trio-mqtt: error: --listen: 'localhost' has no ':PORT'")
    assert started == []


def test_bad_log_level_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], started: list[BrokerConfig]
) -> None:
    assert cli.main(["--log-level", "loud"]) == 2
    err = capsys.readouterr().err
    assert "usage: trio-mqtt" in err
    assert "argument --log-level: invalid choice: 'loud'" in err
    assert started == []


def test_log_level_and_format_while_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    levels: list[int] = []

    def fake_run_broker(config: BrokerConfig) -> None:
        levels.append(logging.getLogger().level)
        logging.getLogger("trio_mqtt.test").debug("hello %s", "there")

    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # restored after the test
    handlers_before = list(root.handlers)
    monkeypatch.setattr(cli, "run_broker", fake_run_broker)

    assert cli.main(["--log-level", "DEBUG"]) == 0

    assert levels == [logging.DEBUG]
    line = capsys.readouterr().err.strip()
    # e.g. "2026-01-02 03:04:05,678 DEBUG   trio_mqtt.test: hello there"
    assert line.endswith(" DEBUG   trio_mqtt.test: hello there")
    assert line[:4].isdigit() and line[4] == "-"
    assert root.handlers == handlers_before  # main() removes its handler again


def test_info_is_the_default_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    levels: list[int] = []
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(cli, "run_broker", lambda config: levels.append(root.level))
    assert cli.main([]) == 0
    assert levels == [logging.INFO]


def after_startup_line(stderr: str) -> str:
    """*stderr* without its first line, which must be the start-up line."""
    first, _, rest = stderr.partition("\n")
    assert f"trio-mqtt {__version__} starting (no config file: defaults)" in first, stderr
    return rest


def test_startup_line_names_the_version_and_config_file(
    tmp_path: Path, started: list[BrokerConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt.cli")
    config = tmp_path / "broker.toml"
    config.write_text("[broker]\n")
    assert cli.main(["--config", str(config)]) == 0
    assert caplog.messages[0] == f"trio-mqtt {__version__} starting (config {config})"
    caplog.clear()
    assert cli.main([]) == 0
    assert caplog.messages[0] == f"trio-mqtt {__version__} starting (no config file: defaults)"


def test_startup_os_error_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(config: BrokerConfig) -> None:
        error = OSError(98, "Address already in use")
        raise ExceptionGroup("startup", [ExceptionGroup("listener", [error])])

    monkeypatch.setattr(cli, "run_broker", fail)
    assert cli.main([]) == 1
    assert after_startup_line(capsys.readouterr().err) == (
        "trio-mqtt: error: [Errno 98] Address already in use\n"
    )


def test_startup_config_error_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(config: BrokerConfig) -> None:
        raise ConfigError("cannot load certificate", key="listeners[0].tls.certfile")

    monkeypatch.setattr(cli, "run_broker", fail)
    assert cli.main([]) == 2
    assert after_startup_line(capsys.readouterr().err) == (
        "trio-mqtt: error: listeners[0].tls.certfile: cannot load certificate\n"
    )


def test_unexpected_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(config: BrokerConfig) -> None:
        raise ExceptionGroup("boom", [OSError("fine"), ZeroDivisionError("bug")])

    monkeypatch.setattr(cli, "run_broker", fail)
    with pytest.raises(ExceptionGroup):
        cli.main([])


# --------------------------------------------------------------------------- signals


class FakeServe:
    """Stands in for trio_mqtt.server.app.serve and records what happened to it."""

    def __init__(self, *, start: bool = True) -> None:
        self.start = start
        self.events: list[str] = []
        self.serving = trio.Event()

    async def __call__(
        self, config: BrokerConfig, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.events.append("serving")
        self.serving.set()
        if self.start:
            task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.events.append("cancelled")


@pytest.mark.parametrize(
    ("signum", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")]
)
async def test_signal_cancels_serve_and_logs(
    signum: signal.Signals, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    serve = FakeServe()
    caplog.set_level(logging.INFO, logger="trio_mqtt.cli")

    async def send_signal_once_started() -> None:
        await serve.serving.wait()
        await trio.testing.wait_all_tasks_blocked()  # serve is now inside sleep_forever
        signal.raise_signal(signum)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_signal_once_started)
            await cli._run(BrokerConfig(), serve=serve)

    assert serve.events == ["serving", "cancelled"]
    assert [record.getMessage() for record in caplog.records] == [f"shutting down ({name})"]


async def test_signal_during_startup_also_stops(caplog: pytest.LogCaptureFixture) -> None:
    serve = FakeServe(start=False)  # never reports started
    caplog.set_level(logging.INFO, logger="trio_mqtt.cli")

    async def send_signal() -> None:
        await serve.serving.wait()
        signal.raise_signal(signal.SIGTERM)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_signal)
            await cli._run(BrokerConfig(), serve=serve)

    assert serve.events == ["serving", "cancelled"]
    assert "shutting down (SIGTERM)" in caplog.messages


# --------------------------------------------------------------------------- --workers


@pytest.fixture
def supervised(monkeypatch: pytest.MonkeyPatch) -> list[tuple[BrokerConfig, str]]:
    """Replace the --workers supervisor: record what main() would supervise."""
    from trio_mqtt import supervisor

    calls: list[tuple[BrokerConfig, str]] = []

    def fake_run_workers(config: BrokerConfig, *, log_level: str) -> int:
        calls.append((config, log_level))
        return 0

    monkeypatch.setattr(supervisor, "run_workers", fake_run_workers)
    return calls


def test_workers_option_runs_the_supervisor(
    started: list[BrokerConfig], supervised: list[tuple[BrokerConfig, str]]
) -> None:
    assert cli.main(["--workers", "3", "--listen", "127.0.0.1:1900"]) == 0
    assert started == []
    [(config, log_level)] = supervised
    assert (config.workers, config.listeners[0].port, log_level) == (3, 1900, "info")


def test_workers_1_is_the_plain_broker(
    started: list[BrokerConfig], supervised: list[tuple[BrokerConfig, str]]
) -> None:
    assert cli.main(["--workers", "1"]) == 0
    assert (len(started), supervised) == (1, [])


def test_workers_from_the_config_file_and_the_option_wins(
    tmp_path: Path, supervised: list[tuple[BrokerConfig, str]]
) -> None:
    config = tmp_path / "broker.toml"
    # nats_urls = [] needs workers > 1: --workers counts before the file is checked
    config.write_text("[broker]\nworkers = 4\n[cluster]\nnats_urls = []\n")
    assert cli.main(["--config", str(config)]) == 0
    assert cli.main(["--config", str(config), "--workers", "2"]) == 0
    assert [c.workers for c, _ in supervised] == [4, 2]
    config.write_text("[cluster]\nnats_urls = []\n")
    assert cli.main(["--config", str(config), "--workers", "2"]) == 0


@pytest.mark.parametrize("value", ["0", "257", "two"])
def test_bad_workers_count_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str], started: list[BrokerConfig]
) -> None:
    assert cli.main(["--workers", value]) == 2
    assert "argument --workers: " in capsys.readouterr().err
    assert started == []


def test_supervisor_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_mqtt import supervisor

    def fail(config: BrokerConfig, *, log_level: str) -> int:
        raise ExceptionGroup("x", [supervisor.SupervisorError("no nats-server: pip install it")])

    monkeypatch.setattr(supervisor, "run_workers", fail)
    assert cli.main(["--workers", "2"]) == 1
    assert after_startup_line(capsys.readouterr().err) == (
        "trio-mqtt: error: no nats-server: pip install it\n"
    )


def test_log_name_goes_into_every_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_run_broker(config: BrokerConfig) -> None:
        logging.getLogger("trio_mqtt.test").warning("hello")

    monkeypatch.setattr(cli, "run_broker", fake_run_broker)
    assert cli.main(["--log-name", "edge-w1"]) == 0
    assert capsys.readouterr().err.strip().endswith(" WARNING [edge-w1] trio_mqtt.test: hello")


def test_supervisor_pid_reaches_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    pids: list[int | None] = []

    def fake_run_broker(config: BrokerConfig, *, supervisor_pid: int | None = None) -> None:
        pids.append(supervisor_pid)

    monkeypatch.setattr(cli, "run_broker", fake_run_broker)
    assert cli.main(["--supervisor-pid", "4242"]) == 0
    assert pids == [4242]


async def test_a_worker_stops_when_its_supervisor_is_gone(caplog: pytest.LogCaptureFixture) -> None:
    serve = FakeServe()
    caplog.set_level(logging.INFO, logger="trio_mqtt.cli")
    gone = 2**22 + 17  # not our parent: as if the supervisor had died
    with trio.fail_after(5):
        await cli._run(BrokerConfig(), serve=serve, supervisor_pid=gone)
    assert serve.events == ["serving", "cancelled"]
    assert caplog.messages == [f"shutting down: the supervisor (pid {gone}) is gone"]
