"""``--log-format json`` / ``[broker] log_format = "json"``: every stderr line of the real
process is one JSON object, and the connect / disconnect / refusal lines carry fields."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import trio

from trio_mqtt.mqtt.packets import ProtocolVersion

from .test_cli_process import PYTHON_M, BrokerProcess, broker_process, connect


def json_lines(output: str) -> list[dict[str, Any]]:
    lines = output.splitlines()
    assert lines, "no log lines"
    entries = [json.loads(line) for line in lines]  # every line, or this raises
    for entry in entries:
        assert isinstance(entry, dict), entry
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    return entries


async def connect_and_leave(broker: BrokerProcess) -> list[dict[str, Any]]:
    port = (await broker.listener_ports())["listener0"]
    client = await connect(port, ProtocolVersion.V5, "json-client")
    assert isinstance(client.stream, trio.SocketStream)
    local_port = client.stream.socket.getsockname()[1]
    await client.aclose()
    with trio.fail_after(10):
        while '"event": "disconnected"' not in broker.output:
            await broker._read_more()
    broker.process.send_signal(signal.SIGTERM)
    assert await broker.wait_exit() == 0, broker.output
    entries = json_lines(broker.output)
    [connected] = [e for e in entries if e.get("event") == "connected"]
    assert connected["level"] == "INFO"
    assert connected["logger"] == "trio_mqtt.broker"
    assert connected["client_id"] == "json-client"
    assert connected["listener"] == "listener0"
    assert connected["client_address"] == f"127.0.0.1:{local_port}"
    assert connected["protocol"] == "5.0"
    assert "proxy_address" not in connected
    assert connected["message"].startswith("connected client=127.0.0.1:")
    [disconnected] = [e for e in entries if e.get("event") == "disconnected"]
    assert disconnected["client_id"] == "json-client"
    assert disconnected["reason"]
    return entries


async def test_log_format_json_on_the_command_line() -> None:
    argv = (*PYTHON_M, "--listen", "127.0.0.1:0", "--log-format", "json")
    async with broker_process(argv) as broker:
        entries = await connect_and_leave(broker)
    assert any(e["message"] == "shutting down (SIGTERM)" for e in entries)


async def test_log_format_json_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[broker]\nlog_format = "json"\n')
    argv = (*PYTHON_M, "--config", str(config), "--listen", "127.0.0.1:0")
    async with broker_process(argv) as broker:
        await connect_and_leave(broker)
