"""SIGHUP reloads the TOML config file of a real ``python -m trio_mqtt --config`` process.

A new password file, a lower limit and a moved listener: the new password works, the
limit applies to a new connection, the move is logged at WARNING as needing a restart
(naming the key and the address kept), the new log level applies; then a broken config
file on SIGHUP is logged and the broker runs on with the config it had.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import trio
from rawclient import RawClient

from integration.test_cli_process import PYTHON_M, broker_process
from trio_mqtt.auth import hash_password
from trio_mqtt.mqtt.packets import Connack, ProtocolVersion
from trio_mqtt.mqtt.reason_codes import ReasonCode

V5 = ProtocolVersion.V5
FAST = 1000  # PBKDF2 rounds in test files


def write_password_file(path: Path, user: str, password: bytes) -> None:
    path.write_text(f"{user}:{hash_password(password, iterations=FAST).encode()}\n")
    path.chmod(0o600)


def write_config(
    path: Path, *, password_file: str, max_keepalive: int, bind: str, level: str
) -> None:
    path.write_text(
        f"""\
[broker]
password_file = "{password_file}"
allow_anonymous = false
max_keepalive = {max_keepalive}
log_level = "{level}"

[[listeners]]
name = "main"
bind = "{bind}"
"""
    )


async def connack(port: int, client_id: str, user: str, password: bytes) -> Connack:
    client = await RawClient.open(port, V5)
    try:
        with trio.fail_after(5):
            return await client.connect(client_id, username=user, password=password, keep_alive=600)
    finally:
        await client.aclose()


async def test_sighup_reloads_the_config_file(tmp_path: Path) -> None:
    write_password_file(tmp_path / "one.passwd", "alice", b"alice-pw")
    write_password_file(tmp_path / "two.passwd", "bob", b"bob-pw")
    config = tmp_path / "broker.toml"
    write_config(
        config, password_file="one.passwd", max_keepalive=100, bind="127.0.0.1:0", level="info"
    )
    async with broker_process([*PYTHON_M, "--config", str(config)]) as broker:
        (port,) = (await broker.listener_ports()).values()
        answer = await connack(port, "a1", "alice", b"alice-pw")
        assert answer.reason_code == 0 and answer.properties.server_keep_alive == 100

        write_config(
            config,
            password_file="two.passwd",
            max_keepalive=30,
            bind="127.0.0.2:0",
            level="warning",
        )
        broker.process.send_signal(signal.SIGHUP)
        await broker.wait_for(re.compile(r"config reloaded; in use now: .*broker\.max_keepalive"))
        assert re.search(
            r" WARNING +trio_mqtt\.cli: listeners\[0\]\.bind changed: needs a restart; "
            r"kept 127\.0\.0\.1:0\n",
            broker.output,
        ), broker.output

        answer = await connack(port, "b1", "bob", b"bob-pw")  # the listener kept its port
        assert answer.reason_code == 0
        assert answer.properties.server_keep_alive == 30  # the new limit, for a new client
        answer = await connack(port, "a2", "alice", b"alice-pw")
        assert answer.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD

        # a broken file: logged, and the broker runs on with the config it had
        config.write_text("[broker\nmax_keepalive = 5\n")
        broker.process.send_signal(signal.SIGHUP)
        await broker.wait_for(
            re.compile(r"ERROR +trio_mqtt\.cli: config reload failed, .*broker\.toml: invalid TOML")
        )
        answer = await connack(port, "b2", "bob", b"bob-pw")
        assert answer.reason_code == 0 and answer.properties.server_keep_alive == 30

        broker.process.send_signal(signal.SIGTERM)
        assert await broker.wait_exit() == 0, broker.output
    assert "client_id='a1'" in broker.output  # logged at info, before the reload
    assert "client_id='b1'" not in broker.output  # log_level = "warning" since the reload
    assert "Traceback" not in broker.output
