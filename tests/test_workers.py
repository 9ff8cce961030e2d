"""``trio-mqtt --workers 2`` as a real process: a supervisor, two workers, a nats-server.

The tests read the supervisor's stderr, which the workers share: the supervisor logs the
pid of each child ("worker NODE started (pid N)", "nats-server (pid N) up at URL"), and
each worker logs its clients with its node name ("[NODE] trio_mqtt.broker: connected
... client_id='...'"). Every test ends by checking that no child outlived the command;
if a test leaves early, every process it saw is killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import attrs
import pytest
import trio
from helpers import free_port
from integration.test_cli_process import BrokerProcess
from nats_server import nats_server_binary
from rawclient import RawClient

from trio_mqtt.mqtt.packets import (
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)

WORKER_STARTED = re.compile(r"worker (?P<node>\S+) started \(pid (?P<pid>\d+)\)")
NATS_UP = re.compile(r"nats-server \(pid (?P<pid>\d+)\) up at (?P<url>\S+)")
LISTENER_UP = re.compile(r"\[(?P<node>[\w-]+)\] trio_mqtt\.listener: listener .* up on ")
CONNECTED = re.compile(
    r"\[(?P<node>[\w-]+)\] trio_mqtt\.broker: connected .*? client_id='(?P<client_id>[^']*)'"
)
STARTUP_TIMEOUT = 30.0  # three processes importing and starting on a busy 2-core machine
EXIT_TIMEOUT = 30.0  # shutdown_timeout 1 s per worker, leaving the cluster, nats-server
CLIENTS = 20


def is_running(pid: int) -> bool:
    """Whether process *pid* exists (our own children are reaped, so no zombies here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@attrs.define
class Supervisor(BrokerProcess):
    """The running ``--workers`` command and what it (and its workers) wrote to stderr."""

    async def wait_for(
        self, pattern: re.Pattern[str], count: int = 1, *, timeout: float = STARTUP_TIMEOUT
    ) -> list[re.Match[str]]:
        """The first *count* matches of *pattern* in the output, waiting for them."""
        with trio.fail_after(timeout):
            while len(matches := list(pattern.finditer(self.output))) < count:
                if not await self._read_more():
                    code = await self.process.wait()
                    raise AssertionError(
                        f"exited with {code} before {count} x {pattern.pattern!r}:\n{self.output}"
                    )
        return matches[:count]

    def child_pids(self) -> set[int]:
        """Every worker and nats-server pid logged so far."""
        return {int(m["pid"]) for m in WORKER_STARTED.finditer(self.output)} | {
            int(m["pid"]) for m in NATS_UP.finditer(self.output)
        }

    async def terminate(self, signum: int = signal.SIGTERM) -> int:
        """Send *signum*, read the output to EOF, and return the exit code (bounded)."""
        self.process.send_signal(signum)
        with trio.fail_after(EXIT_TIMEOUT):
            while await self._read_more():
                pass
            return await self.process.wait()

    def node_of(self, client_id: str) -> str:
        """The worker whose log says it connected *client_id*."""
        nodes = [m["node"] for m in CONNECTED.finditer(self.output) if m["client_id"] == client_id]
        assert len(nodes) == 1, (client_id, nodes)
        return nodes[0]


def write_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "broker.toml"
    config.write_text(
        "[broker]\n"
        "shutdown_timeout = 1\n"
        "sys_interval = 0\n"
        "\n"
        "[[listeners]]\n"
        'name = "shared"\n'
        f'bind = "127.0.0.1:{port}"\n'
        "\n"
        "[cluster]\n"
        'node_name = "wtest"\n'
        "nats_urls = []\n"
    )
    return config


@asynccontextmanager
async def supervisor(tmp_path: Path, port: int) -> AsyncIterator[Supervisor]:
    """``python -m trio_mqtt --workers 2``, up once both workers listen on *port*."""
    nats_server_binary()  # skips (or fails under TRIO_MQTT_REQUIRE_TOOLS=1) without one
    config = write_config(tmp_path, port)
    argv = [sys.executable, "-m", "trio_mqtt", "--workers", "2", "--config", str(config)]
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C on the test run is not sent to it as well
    )
    assert process.stderr is not None
    running = Supervisor(process, process.stderr)
    try:
        await running.wait_for(LISTENER_UP, 2)
        yield running
    finally:
        with trio.CancelScope(shield=True):
            for pid in [process.pid, *running.child_pids()]:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await process.wait()
            await process.stderr.aclose()


async def assert_all_gone(pids: set[int]) -> None:
    """Every pid in *pids* exits soon (the supervisor waited for them: at once)."""
    with trio.move_on_after(5):
        while any(is_running(pid) for pid in pids):  # noqa: ASYNC110 - no event for that
            await trio.sleep(0.05)
    assert [pid for pid in pids if is_running(pid)] == []


async def test_two_workers_share_the_clients_and_stop_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    async with supervisor(tmp_path, port) as running:
        nodes = {m["node"] for m in await running.wait_for(WORKER_STARTED, 2)}
        assert nodes == {"wtest-w0", "wtest-w1"}
        clients = []
        for index in range(CLIENTS):
            client = await RawClient.open(port)
            await client.connect(f"spread-{index}")
            clients.append(client)
        connected = await running.wait_for(CONNECTED, CLIENTS)
        per_node = Counter(m["node"] for m in connected)
        assert set(per_node) == nodes, per_node  # both workers got clients

        # SIGHUP goes to both workers (they reload their config, TLS and auth files)
        running.process.send_signal(signal.SIGHUP)
        await running.wait_for(re.compile(r"\] trio_mqtt\.cli: reloading the config"), 2)

        pids = running.child_pids()
        assert len(pids) == 3  # two workers and the nats-server
        assert await running.terminate(signal.SIGTERM) == 0
        for client in clients:
            await client.aclose()
    assert "shutting down (SIGTERM): stopping the workers" in running.output
    assert "Traceback" not in running.output
    await assert_all_gone(pids)


async def test_a_worker_that_dies_is_restarted(tmp_path: Path) -> None:
    port = free_port()
    async with supervisor(tmp_path, port) as running:
        first = {m["node"]: int(m["pid"]) for m in await running.wait_for(WORKER_STARTED, 2)}
        os.kill(first["wtest-w0"], signal.SIGKILL)
        await running.wait_for(
            re.compile(r"worker wtest-w0 \(pid \d+\) was killed by SIGKILL unexpectedly; restart")
        )
        again = await running.wait_for(WORKER_STARTED, 3)
        assert again[2]["node"] == "wtest-w0"
        await running.wait_for(LISTENER_UP, 3)
        client = await RawClient.open(port)  # still served
        await client.connect("after-restart")
        await client.aclose()
        pids = running.child_pids()
        assert len(pids) == 4
        assert await running.terminate(signal.SIGINT) == 0
    await assert_all_gone(pids)


async def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    port = free_port()
    async with supervisor(tmp_path, port) as running:
        workers = {int(m["pid"]) for m in await running.wait_for(WORKER_STARTED, 2)}
        running.process.kill()
        await running.process.wait()
        with trio.fail_after(EXIT_TIMEOUT):
            while await running._read_more():
                pass
        await assert_all_gone(workers)
        assert running.output.count("the supervisor (pid") == 2
        # the nats-server has no such watch: the context manager kills it


async def test_clients_on_different_workers_talk_to_each_other(tmp_path: Path) -> None:
    port = free_port()
    async with supervisor(tmp_path, port) as running:
        subscriber = await RawClient.open(port)
        await subscriber.connect("subscriber")
        await running.wait_for(CONNECTED)
        sub_node = running.node_of("subscriber")
        await subscriber.send(Subscribe(1, (SubscriptionRequest("across/#", qos=0),)))
        suback = await subscriber.receive()
        assert isinstance(suback, Suback) and suback.reason_codes == (0,)

        # publishers until one lands on the other worker (each one: 1 in 2)
        for attempt in range(40):
            publisher = await RawClient.open(port)
            await publisher.connect(f"publisher-{attempt}")
            await running.wait_for(CONNECTED, attempt + 2)
            if running.node_of(f"publisher-{attempt}") != sub_node:
                break
            await publisher.aclose()
        else:
            pytest.fail("40 publishers in a row landed on the subscriber's worker")

        # the other worker learns of the subscription through NATS: publish until it did
        received = None
        with trio.fail_after(10):
            while received is None:
                await publisher.send(Publish("across/workers", b"hello from the other side"))
                with trio.move_on_after(0.2):
                    received = await subscriber.receive()
        assert isinstance(received, Publish)
        assert received.topic == "across/workers"
        assert received.payload == b"hello from the other side"
        pids = running.child_pids()
        assert await running.terminate() == 0
        await publisher.aclose()
        await subscriber.aclose()
    await assert_all_gone(pids)


async def test_nats_server_that_dies_comes_back_on_the_same_port(tmp_path: Path) -> None:
    async with supervisor(tmp_path, free_port()) as running:
        [up] = await running.wait_for(NATS_UP)
        os.kill(int(up["pid"]), signal.SIGKILL)
        await running.wait_for(re.compile(r"nats-server \(pid \d+\) was killed by SIGKILL"))
        again = (await running.wait_for(NATS_UP, 2))[1]
        assert again["url"] == up["url"] and again["pid"] != up["pid"]
        pids = running.child_pids()
        assert await running.terminate() == 0
    await assert_all_gone(pids)
