"""Debian's mosquitto broker accepts a password file written by ``trio-mqtt-passwd``.

mosquitto_passwd cannot check a password, so the proof is the broker itself: a real
``mosquitto`` (package mosquitto) is started on 127.0.0.1 with ``password_file`` set to a
file our command wrote (``$7$`` entries, a ``$6$`` one from ``-H sha512``, and entries
hashed by ``-U``), and Debian's ``mosquitto_pub`` (package mosquitto-clients) connects
with ``-u``/``-P``: right passwords publish, wrong ones are refused. Without the programs
the test skips, or fails under ``TRIO_MQTT_REQUIRE_TOOLS=1`` (see tests/tools.py).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from helpers import free_port
from tools import require_tool

from trio_mqtt.auth import PasswordFile
from trio_mqtt.passwd import main as passwd_main

STARTUP_TIMEOUT = 10.0
PROCESS_TIMEOUT = 10.0
START_ATTEMPTS = 3


@asynccontextmanager
async def run_mosquitto(program: str, directory: Path, password_file: Path) -> AsyncIterator[int]:
    """Start mosquitto on a free 127.0.0.1 port; yields the port; always stops it."""
    log_path = directory / "mosquitto.log"
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        config = directory / "mosquitto.conf"
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {password_file}",
            "persistence false",
            f"log_dest file {log_path}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto', which cannot read tmp
        config.write_text("\n".join(lines) + "\n")
        log_path.write_text("")
        process = await trio.lowlevel.open_process(
            [program, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            with trio.fail_after(STARTUP_TIMEOUT):
                while " running" not in log_path.read_text(errors="replace"):
                    if process.poll() is not None:
                        break
                    await trio.sleep(0.05)
            if process.poll() is None:
                yield port
                return
            log = log_path.read_text(errors="replace")
            if "Address already in use" not in log or attempt == START_ATTEMPTS - 1:
                raise AssertionError(f"mosquitto exited ({process.returncode}):\n{log}")
        finally:
            if process.poll() is None:
                process.terminate()
                with trio.move_on_after(5):
                    await process.wait()
                if process.poll() is None:
                    process.kill()
                    await process.wait()


async def publish(pub: str, port: int, username: str, password: str) -> int:
    """mosquitto_pub's exit status for one QoS 1 publish as *username*."""
    argv = [pub, "-h", "127.0.0.1", "-p", str(port), "-V", "311", "-q", "1"]
    argv += ["-u", username, "-P", password, "-t", "t", "-m", "hello"]
    with trio.fail_after(PROCESS_TIMEOUT):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    return result.returncode


async def test_mosquitto_accepts_passwords_written_by_trio_mqtt_passwd(tmp_path: Path) -> None:
    broker = require_tool("mosquitto")
    pub = require_tool("mosquitto_pub")
    path = tmp_path / "shared.passwd"
    assert passwd_main(["-c", "-b", str(path), "alice", "alice-pw"]) == 0  # default rounds
    assert passwd_main(["-I", "1000", "-b", str(path), "bob", "bob pw é"]) == 0
    assert passwd_main(["-H", "sha512", "-b", str(path), "carol", "carol-pw"]) == 0
    with path.open("a") as file:
        file.write("dave:dave-pw\n")
    assert passwd_main(["-I", "1000", "-U", str(path)]) == 0
    text = path.read_text()
    assert [line.split("$")[1] for line in text.splitlines()] == ["7", "7", "6", "7"]
    PasswordFile.load(path)  # and we read it too

    async with run_mosquitto(broker, tmp_path, path) as port:
        for username, password in [
            ("alice", "alice-pw"),
            ("bob", "bob pw é"),
            ("carol", "carol-pw"),
            ("dave", "dave-pw"),
        ]:
            assert await publish(pub, port, username, password) == 0, username
        for username, password in [("alice", "bob pw é"), ("carol", "carol"), ("eve", "x")]:
            assert await publish(pub, port, username, password) != 0, username
    log = (tmp_path / "mosquitto.log").read_text()
    assert "removing entry" not in log  # mosquitto dropped no line of ours
