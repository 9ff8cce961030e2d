"""The broker as a real process: ``python -m trio_mqtt`` and the ``trio-mqtt`` script.

The tests start the command, learn the port from the listener's log line on stderr
("listener 'listener0' (tcp) up on 127.0.0.1:PORT"), talk MQTT to it, and stop it with
SIGTERM / SIGINT: clients must be told (MQTT 5: DISCONNECT 0x8B) and the process must
exit 0 promptly. Every process is killed if a test leaves early.
"""

from __future__ import annotations

import codecs
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from rawclient import RawClient

import trio_mqtt
from trio_mqtt._version import __version__
from trio_mqtt.mqtt.packets import (
    Disconnect,
    ProtocolVersion,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode

REPO_ROOT = Path(trio_mqtt.__file__).resolve().parent.parent
PYTHON_M = (sys.executable, "-m", "trio_mqtt")
LISTENER_UP = re.compile(
    r"listener '(?P<name>[^']+)' \((?P<transport>\w+)\) up on (?P<host>[0-9.]+):(?P<port>\d+)"
)
STARTUP_TIMEOUT = 15.0  # a cold interpreter importing trio can take a few seconds
EXIT_TIMEOUT = 10.0


def console_script() -> list[str]:
    """The installed ``trio-mqtt`` script (next to this interpreter, else on PATH)."""
    beside = Path(sys.executable).with_name("trio-mqtt")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("trio-mqtt")
    if found is None:
        pytest.skip("the trio-mqtt script is not installed (pip install -e .)")
    return [found]


@attrs.define
class BrokerProcess:
    """A running broker process and what it has written to stderr so far."""

    process: trio.Process
    stderr: trio.abc.ReceiveStream
    output: str = ""
    _decoder: codecs.IncrementalDecoder = attrs.Factory(
        lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )

    async def _read_more(self) -> bool:
        """Append the next chunk of stderr to ``output``; False at EOF."""
        data = await self.stderr.receive_some(65536)
        self.output += self._decoder.decode(data, final=not data)
        return bool(data)

    async def wait_for(self, pattern: re.Pattern[str], count: int = 1) -> list[re.Match[str]]:
        """The first *count* matches of *pattern* in stderr, waiting for them (bounded)."""
        with trio.fail_after(STARTUP_TIMEOUT):
            while len(matches := list(pattern.finditer(self.output))) < count:
                if not await self._read_more():
                    code = await self.process.wait()
                    raise AssertionError(
                        f"broker exited with {code} before logging {pattern.pattern!r}:\n"
                        f"{self.output}"
                    )
        return matches[:count]

    async def listener_ports(self, count: int = 1) -> dict[str, int]:
        """Listener name -> port, from the first *count* "listener ... up on" log lines."""
        matches = await self.wait_for(LISTENER_UP, count)
        for match in matches:
            assert (match["transport"], match["host"]) == ("tcp", "127.0.0.1"), match[0]
        return {match["name"]: int(match["port"]) for match in matches}

    async def wait_exit(self) -> int:
        """Read stderr to EOF and return the exit code, within EXIT_TIMEOUT."""
        with trio.fail_after(EXIT_TIMEOUT):
            while await self._read_more():
                pass
            return await self.process.wait()


@asynccontextmanager
async def broker_process(argv: Sequence[str]) -> AsyncIterator[BrokerProcess]:
    """Start the broker command *argv*; kill it on leaving if it is still running."""
    process = await trio.lowlevel.open_process(
        list(argv),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C on the test run is not sent to it as well
    )
    assert process.stderr is not None
    try:
        yield BrokerProcess(process, process.stderr)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.stderr.aclose()


async def connect(port: int, version: ProtocolVersion, client_id: str) -> RawClient:
    client = await RawClient.open(port, version)
    connack = await client.connect(client_id)
    assert connack.reason_code == 0
    return client


SIGNALS = pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
LISTEN_ARGV = (*PYTHON_M, "--listen", "127.0.0.1:0", "--log-level", "info")


async def signal_and_wait_exit(broker: BrokerProcess, signum: int) -> None:
    """Send *signum*; the process must log why, exit 0 in time and without a traceback."""
    broker.process.send_signal(signum)
    assert await broker.wait_exit() == 0, broker.output
    assert f"shutting down ({signal.Signals(signum).name})" in broker.output
    assert "Traceback" not in broker.output


@SIGNALS
async def test_signal_stops_the_broker_gracefully(signum: int) -> None:
    async with broker_process(LISTEN_ARGV) as broker:
        ports = await broker.listener_ports()
        assert list(ports) == ["listener0"]
        v5 = await connect(ports["listener0"], ProtocolVersion.V5, "cli-v5")
        v311 = await connect(ports["listener0"], ProtocolVersion.V311, "cli-v311")
        start = trio.current_time()
        await signal_and_wait_exit(broker, signum)
        # every client left at once, so the default 5 s shutdown_timeout was not needed
        assert trio.current_time() - start < 3.0
        assert "connections still open" not in broker.output
        packets = await v5.expect_closed(1.0)
        assert len(packets) == 1 and isinstance(packets[0], Disconnect), packets
        assert packets[0].reason_code == ReasonCode.SERVER_SHUTTING_DOWN
        assert await v311.expect_closed(1.0) == []  # 3.1.1 has no server DISCONNECT


async def test_log_says_broker_stopped_after_a_signal() -> None:
    async with broker_process(LISTEN_ARGV) as broker:
        await broker.listener_ports()
        await signal_and_wait_exit(broker, signal.SIGTERM)
        assert "broker stopped" in broker.output


async def test_log_names_connected_clients() -> None:
    async with broker_process(LISTEN_ARGV) as broker:
        ports = await broker.listener_ports()
        client = await connect(ports["listener0"], ProtocolVersion.V5, "logged-client")
        [match] = await broker.wait_for(re.compile(r"connected \S+ client_id='logged-client'.*"))
        assert "protocol=5.0" in match[0]
        assert "listener=listener0" in match[0]
        await client.aclose()
        await signal_and_wait_exit(broker, signal.SIGTERM)


async def test_config_file_with_two_listeners(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        "[broker]\n"
        "max_packet_size = 2048\n"
        "\n"
        "[[listeners]]\n"
        'name = "first"\n'
        'bind = "127.0.0.1:0"\n'
        "\n"
        "[[listeners]]\n"
        'name = "second"\n'
        'bind = "127.0.0.1:0"\n'
    )
    argv = [*console_script(), "--config", str(config), "--log-level", "info"]
    async with broker_process(argv) as broker:
        ports = await broker.listener_ports(count=2)
        assert sorted(ports) == ["first", "second"]
        assert ports["first"] != ports["second"]

        subscriber = await RawClient.open(ports["first"], ProtocolVersion.V5)
        connack = await subscriber.connect("on-first")
        assert connack.reason_code == 0
        assert connack.properties.maximum_packet_size == 2048  # [broker] was applied
        await subscriber.send(Subscribe(1, (SubscriptionRequest("across/#", qos=1),)))
        assert isinstance(await subscriber.receive(), Suback)

        publisher = await connect(ports["second"], ProtocolVersion.V311, "on-second")
        await publisher.send(Publish("across/listeners", b"hello", qos=0))
        message = await subscriber.receive()
        assert isinstance(message, Publish)
        assert (message.topic, message.payload) == ("across/listeners", b"hello")
        await publisher.aclose()
        await subscriber.aclose()
        await signal_and_wait_exit(broker, signal.SIGTERM)


@pytest.mark.parametrize(
    ("toml", "key", "detail"),
    [
        pytest.param(
            "[broker]\nmax_queued_messages = 0\n",
            "broker.max_queued_messages",
            "out of range",
            id="out-of-range",
        ),
        pytest.param(
            "[broker]\nmax_packet_sise = 1024\n",
            "broker.max_packet_sise",
            "did you mean 'max_packet_size'?",
            id="typo",
        ),
        pytest.param(
            '[[listeners]]\nbind = "127.0.0.1:99999"\n',
            "listeners[0].bind",
            "out of range",
            id="bad-port",
        ),
        pytest.param(
            '[[listeners]]\nname = "no-bind"\n', "listeners[0].bind", "missing", id="no-bind"
        ),
        pytest.param(
            '[[listeners]]\nbind = "127.0.0.1:0"\ntransport = "quic"\n',
            "listeners[0].transport",
            "'quic' is not one of",
            id="bad-transport",
        ),
    ],
)
async def test_bad_config_exits_2_naming_file_and_key(
    tmp_path: Path, toml: str, key: str, detail: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with trio.fail_after(EXIT_TIMEOUT):
        result = await trio.run_process(
            [*console_script(), "--config", str(config)],
            cwd=REPO_ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert stderr.startswith(f"trio-mqtt: error: {config}: {key}: "), stderr
    assert detail in stderr
    assert "Traceback" not in stderr
    assert result.stdout == b""


@pytest.mark.parametrize(
    ("name", "content", "detail"),
    [
        pytest.param("missing.toml", None, "config file not found", id="missing"),
        pytest.param("broken.toml", "[broker\n", "invalid TOML", id="invalid-toml"),
    ],
)
async def test_unreadable_config_exits_2_naming_the_file(
    tmp_path: Path, name: str, content: str | None, detail: str
) -> None:
    config = tmp_path / name
    if content is not None:
        config.write_text(content)
    with trio.fail_after(EXIT_TIMEOUT):
        result = await trio.run_process(
            [*console_script(), "--config", str(config)],
            cwd=REPO_ROOT,
            capture_stderr=True,
            check=False,
        )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert stderr.startswith(f"trio-mqtt: error: {config}: {detail}"), stderr


async def test_version_prints_the_version() -> None:
    with trio.fail_after(EXIT_TIMEOUT):
        result = await trio.run_process(
            [*console_script(), "--version"],
            cwd=REPO_ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"trio-mqtt {__version__}\n".encode(),
        b"",
    )


DEFAULT_PORT = 1883


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:*port* can be bound (with SO_REUSEADDR, as the broker does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_no_arguments_listens_on_localhost_1883() -> None:
    if not port_is_free(DEFAULT_PORT):
        pytest.skip(f"127.0.0.1:{DEFAULT_PORT} is in use; cannot test the default listener")
    async with broker_process(PYTHON_M) as broker:
        try:
            ports = await broker.listener_ports()
        except AssertionError:
            if "address already in use" in broker.output.lower():
                pytest.skip(f"127.0.0.1:{DEFAULT_PORT} was taken while the broker started")
            raise
        assert ports == {"listener0": DEFAULT_PORT}
        client = await connect(DEFAULT_PORT, ProtocolVersion.V5, "on-1883")
        await client.aclose()
        await signal_and_wait_exit(broker, signal.SIGTERM)


async def run_to_exit(argv: Sequence[str]) -> tuple[int, str]:
    """Run the command to its end (bounded); its exit code and stderr."""
    with trio.fail_after(STARTUP_TIMEOUT):
        result = await trio.run_process(
            list(argv), cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False
        )
    return result.returncode, result.stderr.decode()


async def test_a_busy_port_exits_1_naming_the_listener_and_address(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config.write_text(f'[[listeners]]\nname = "lb"\nbind = "127.0.0.1:{port}"\n')
        code, stderr = await run_to_exit([*PYTHON_M, "--config", str(config)])
    assert code == 1, stderr
    first, _, stderr = stderr.partition("\n")
    assert f"trio-mqtt {__version__} starting (config {config})" in first
    assert stderr == (
        f"trio-mqtt: error: listener 'lb' cannot bind 127.0.0.1:{port}: address already in use\n"
    )  # one line: no traceback, no "broker stopped" for a broker that never started


async def test_an_unresolvable_host_exits_1_naming_the_listener_and_host(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[[listeners]]\nname = "lb"\nbind = "no-such-host.invalid:1883"\n')
    code, stderr = await run_to_exit([*PYTHON_M, "--config", str(config)])
    assert code == 1, stderr
    first, _, stderr = stderr.partition("\n")
    assert f"trio-mqtt {__version__} starting (config {config})" in first
    assert stderr.startswith(
        "trio-mqtt: error: listener 'lb' cannot bind no-such-host.invalid:1883: "
        "host 'no-such-host.invalid' does not resolve ("
    ), stderr
    assert stderr.count("\n") == 1, stderr
    assert "stopped" not in stderr


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("tcp://0.0.0.0:1883", "use 0.0.0.0:1883"),
        ("mqtt://[::1]:1884", "use [::1]:1884"),
        ("mqtt://localhost", "use localhost:1883"),
    ],
)
async def test_listen_with_a_url_says_to_drop_the_scheme(url: str, advice: str) -> None:
    code, stderr = await run_to_exit([*PYTHON_M, "--listen", url])
    assert code == 2, stderr
    assert stderr == f"trio-mqtt: error: --listen takes HOST:PORT, not a URL: {advice}\n"
