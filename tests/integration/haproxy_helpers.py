"""Run a real HAProxy in front of the broker, and a paho-mqtt client through it.

``run_haproxy`` writes a config into a test's directory, starts ``haproxy -db -f cfg`` as
a child process, waits (bounded) until it serves, and always stops it (terminate, wait,
kill). Readiness is asked of HAProxy's stats socket, a TCP listener in ``global`` that
HAProxy binds together with the frontend: probing the frontend itself would make HAProxy
open a connection to the broker, which tests that count connections or log lines must
not see. The stats socket also tells whether HAProxy sees the broker as UP.

paho-mqtt is blocking, so ``PahoClient`` is meant to be driven from a worker thread
(``trio.to_thread.run_sync``) while the broker runs in the trio thread.
"""

from __future__ import annotations

import csv
import io
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import paho.mqtt.client as mqtt
import trio
from helpers import free_port
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
START_ATTEMPTS = 3
BACKEND = "be_mqtt"
SERVER = "broker"


def haproxy_config(
    *,
    frontend_port: int,
    broker_port: int,
    stats_port: int,
    server_options: str,
    bind_options: str = "",
    frontend_lines: Sequence[str] = (),
    backend_lines: Sequence[str] = (),
) -> str:
    """A minimal TCP-mode config: one frontend on 127.0.0.1 relaying to the broker."""
    frontend = "\n".join(f"    {line}" for line in frontend_lines)
    backend = "\n".join(f"    {line}" for line in backend_lines)
    return f"""\
global
    maxconn 256
    stats socket ipv4@127.0.0.1:{stats_port} level admin
    stats timeout 10s

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s

frontend fe_mqtt
    bind 127.0.0.1:{frontend_port} {bind_options}
{frontend}
    default_backend {BACKEND}

backend {BACKEND}
{backend}
    server {SERVER} 127.0.0.1:{broker_port} {server_options}
"""


@attrs.define(eq=False)
class RunningHAProxy:
    """A started HAProxy: where it listens and how to ask it things."""

    port: int  # the frontend: clients connect here
    stats_port: int
    config_path: Path
    output_path: Path
    process: trio.Process

    async def command(self, text: str, timeout: float = 5.0) -> str:
        """One stats socket command (``show info``, ``show stat``); returns the reply."""
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream("127.0.0.1", self.stats_port)
            async with stream:
                await stream.send_all(text.encode() + b"\n")
                reply = bytearray()
                while chunk := await stream.receive_some(65536):
                    reply += chunk
        return reply.decode()

    async def server_state(self) -> dict[str, str]:
        """The ``show stat`` row of the broker's server (``status``, ``check_status``, ...)."""
        text = await self.command("show stat")
        rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
        for row in rows:
            if row["pxname"] == BACKEND and row["svname"] == SERVER:
                return dict(row)
        raise AssertionError(f"no {BACKEND}/{SERVER} row in show stat:\n{text}")

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")


@asynccontextmanager
async def run_haproxy(
    haproxy: str,
    workdir: Path,
    *,
    broker_port: int,
    server_options: str,
    bind_options: str = "",
    frontend_lines: Sequence[str] = (),
    backend_lines: Sequence[str] = (),
) -> AsyncIterator[RunningHAProxy]:
    """Start HAProxy relaying 127.0.0.1:<free port> to the broker; stop it on exit."""
    for attempt in range(1, START_ATTEMPTS + 1):
        frontend_port, stats_port = free_port(), free_port()
        config_path = workdir / "haproxy.cfg"
        config_path.write_text(
            haproxy_config(
                frontend_port=frontend_port,
                broker_port=broker_port,
                stats_port=stats_port,
                server_options=server_options,
                bind_options=bind_options,
                frontend_lines=frontend_lines,
                backend_lines=backend_lines,
            )
        )
        output_path = workdir / "haproxy.out"
        with output_path.open("wb") as output:
            process = await trio.lowlevel.open_process(
                [haproxy, "-db", "-f", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        running = RunningHAProxy(frontend_port, stats_port, config_path, output_path, process)
        try:
            try:
                await _wait_ready(running)
            except _PortTaken:
                if attempt == START_ATTEMPTS:
                    raise
                continue  # another process took a "free" port in between: new ports
            yield running
            return
        finally:
            with trio.CancelScope(shield=True):
                await _stop(process)


class _PortTaken(RuntimeError):
    """HAProxy could not bind one of its ports."""


async def _wait_ready(running: RunningHAProxy) -> None:
    deadline = trio.current_time() + STARTUP_TIMEOUT
    while True:
        if running.process.returncode is not None:
            error = _PortTaken if "cannot bind" in running.output() else RuntimeError
            raise error(
                f"haproxy exited with status {running.process.returncode} at startup:\n"
                f"{running.output()}\nconfig:\n{running.config_path.read_text()}"
            )
        try:
            if "Name: HAProxy" in await running.command("show info", timeout=1.0):
                return
        except (OSError, trio.TooSlowError):
            pass
        if trio.current_time() > deadline:
            raise RuntimeError(f"haproxy not ready after {STARTUP_TIMEOUT}s:\n{running.output()}")
        await trio.sleep(0.02)


async def _stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


class PahoClient:
    """A paho-mqtt client with blocking connect/disconnect (call them from a thread)."""

    def __init__(
        self,
        client_id: str,
        *,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
        username: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        if username is not None:
            self.client.username_pw_set(username)
        if tls_context is not None:
            self.client.tls_set_context(tls_context)
        self.client.on_connect = self._on_connect
        self.connack: ReasonCode | None = None

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        self.connack = reason_code

    def connect(
        self, host: str, port: int, *, bind_address: str = "", timeout: float = 5.0
    ) -> ReasonCode:
        """Connect and wait for the CONNACK; returns its reason code (paho maps 3.1.1's
        return codes onto 5.0 reason codes: return code 5 becomes 0x87)."""
        self.client.connect(host, port, keepalive=10, bind_address=bind_address)
        deadline = time.monotonic() + timeout
        while self.connack is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CONNACK from {host}:{port} within {timeout}s")
            result = self.client.loop(timeout=0.05)
            if result is not MQTTErrorCode.MQTT_ERR_SUCCESS and self.connack is None:
                raise ConnectionError(f"connection to {host}:{port} lost before CONNACK: {result}")
        return self.connack

    @property
    def local_port(self) -> int:
        """The port of our end of the TCP connection (what HAProxy reports as the source)."""
        sock = self.client.socket()
        assert isinstance(sock, socket.socket), "not connected"  # ssl.SSLSocket is one too
        port: int = sock.getsockname()[1]
        return port

    def disconnect(self) -> None:
        if self.client.socket() is not None:
            self.client.disconnect()
