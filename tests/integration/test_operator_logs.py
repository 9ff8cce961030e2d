"""What ``trio-mqtt`` says on stderr to the operator, as a real process (issue 16).

The start-up line (version, config file), the persistence line said once, and with
``--log-level debug`` a line for every packet received and sent, like mosquitto ``-v``.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from trio_mqtt._version import __version__
from trio_mqtt.mqtt.packets import ProtocolVersion, Puback, Publish

from .test_cli_process import PYTHON_M, broker_process, connect, signal_and_wait_exit


def broker_toml(tmp_path: Path) -> Path:
    config = tmp_path / "broker.toml"
    config.write_text(
        '[broker]\npersistence = "state.db"\n\n[[listeners]]\nname = "main"\nbind = "127.0.0.1:0"\n'
    )
    return config


async def test_startup_line_and_persistence_line_once(tmp_path: Path) -> None:
    config = broker_toml(tmp_path)
    argv = [*PYTHON_M, "--config", str(config), "--log-level", "info"]
    async with broker_process(argv) as broker:
        await broker.listener_ports()
        await signal_and_wait_exit(broker, signal.SIGTERM)
    lines = broker.output.splitlines()
    assert f"trio-mqtt {__version__} starting (config {config})" in lines[0]
    persistence = [line for line in lines if str(tmp_path / "state.db") in line]
    assert len(persistence) == 1, broker.output
    assert "persistence: " in persistence[0]
    assert "restored 0 session(s) and 0 retained message(s)" in persistence[0]


async def test_startup_line_without_a_config_file() -> None:
    async with broker_process([*PYTHON_M, "--listen", "127.0.0.1:0"]) as broker:
        await broker.listener_ports()
        await signal_and_wait_exit(broker, signal.SIGTERM)
    first = broker.output.splitlines()[0]
    assert f"trio-mqtt {__version__} starting (no config file: defaults)" in first


async def test_debug_logs_each_packet() -> None:
    argv = [*PYTHON_M, "--listen", "127.0.0.1:0", "--log-level", "debug"]
    async with broker_process(argv) as broker:
        port = (await broker.listener_ports())["listener0"]
        client = await connect(port, ProtocolVersion.V5, "debugged")
        await client.send(Publish("d/t", b"12345", qos=1, packet_id=9))
        puback = await client.receive()
        assert isinstance(puback, Puback) and puback.packet_id == 9  # 0x10: no subscribers
        await broker.wait_for(re.compile(r"sending PUBACK to 'debugged'"))
        await client.aclose()
        await signal_and_wait_exit(broker, signal.SIGTERM)
    output = broker.output
    assert re.search(
        r"DEBUG .*received CONNECT from 'debugged' \(client=127\.0\.0\.1:\d+\)", output
    )
    assert re.search(r"sending CONNACK to 'debugged' .*reason_code=0x00 \(\d+ bytes\)", output)
    assert re.search(
        r"received PUBLISH from 'debugged' \(client=127\.0\.0\.1:\d+\): qos=1 retain=0 dup=0 "
        r"packet_id=9 topic='d/t' payload_size=5 \(\d+ bytes\)",
        output,
    ), output
    assert re.search(r"sending PUBACK to 'debugged' .*packet_id=9 reason_code=0x10", output)
