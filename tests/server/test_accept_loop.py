"""The accept loop (server/listener.py): connections taken from the backlog in batches
with accept(2); those of a plain-TCP listener without PROXY protocol start parked, with
no task until they need one; an error about one connection skips it.

Real sockets on 127.0.0.1, a broker in process.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from helpers import wait_until
from rawclient import RawClient

from trio_mqtt import open_broker
from trio_mqtt.config import BrokerConfig, ListenerConfig, ProxyMode, ProxyPolicy
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import Connack, Connect, Disconnect, Pingreq, Pingresp, ProtocolVersion
from trio_mqtt.peer import Endpoint
from trio_mqtt.server.app import Broker
from trio_mqtt.server.listener import ACCEPT_BATCH

V5 = ProtocolVersion.V5
# more than one batch, all waiting in the backlog at once
CLIENTS = 2 * ACCEPT_BATCH + 10


class _Spawns(trio.abc.Instrument):
    """The names (without their module) of the tasks spawned while it is installed."""

    def __init__(self) -> None:
        self.names: Counter[str] = Counter()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names[task.name.rpartition(".")[2]] += 1


async def _connected(port: int, count: int, prefix: str = "c") -> list[RawClient]:
    """``count`` clients: all connect first (the broker's backlog fills), then each
    sends its CONNECT and reads its CONNACK."""
    clients = [await RawClient.open(port, ProtocolVersion.V5) for _ in range(count)]
    for index, client in enumerate(clients):
        connack = await client.connect(f"{prefix}{index}", keep_alive=60)
        assert isinstance(connack, Connack) and connack.reason_code == 0
    return clients


def _config(**listeners: ListenerConfig) -> BrokerConfig:
    return BrokerConfig(listeners=tuple(listeners.values()), sys_interval=0)


def _port(broker: Broker, name: str) -> int:
    return broker.addresses(name)[0].port


async def test_plain_tcp_connections_start_parked_with_no_task() -> None:
    proxied = ListenerConfig(
        name="proxied",
        host="127.0.0.1",
        port=0,
        proxy_protocol=ProxyPolicy(mode=ProxyMode.OPTIONAL, trusted_sources=("127.0.0.1",)),
    )
    config = _config(plain=ListenerConfig(name="plain", host="127.0.0.1", port=0), proxied=proxied)
    async with open_broker(config) as broker:
        spawns = _Spawns()
        trio.lowlevel.add_instrument(spawns)
        try:
            clients = await _connected(_port(broker, "plain"), CLIENTS)
            assert broker.parked_connections() == CLIENTS
            assert spawns.names["_serve_connection"] == 0
            assert spawns.names["_resume"] == 0
            # a PROXY header may come first: a task reads it, then the connection parks
            others = await _connected(_port(broker, "proxied"), 3, "p")
            assert spawns.names["_serve_connection"] == 3
            await trio.testing.wait_all_tasks_blocked()
            assert broker.parked_connections() == CLIENTS + 3
        finally:
            trio.lowlevel.remove_instrument(spawns)
        assert broker.listeners["plain"].connections == CLIENTS
        assert broker.listeners["plain"].accepted == CLIENTS
        await clients[0].send(Pingreq())  # a task again, for its first packet since
        assert await clients[0].receive() == Pingresp()
        for client in clients + others:
            await client.aclose()


async def test_an_error_about_one_connection_skips_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ECONNABORTED (the client reset before it was taken) and the like: the loop goes
    on with the next connection in the backlog, and logs nothing about it."""
    real_accept = socket.socket.accept
    failures = [OSError(errno.ECONNABORTED, os.strerror(errno.ECONNABORTED))]

    def accept(self: socket.socket) -> tuple[socket.socket, Any]:
        if failures:
            raise failures.pop()
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", accept)
    caplog.set_level(logging.DEBUG, logger="trio_mqtt")
    config = _config(plain=ListenerConfig(name="plain", host="127.0.0.1", port=0))
    async with open_broker(config) as broker:
        [client] = await _connected(broker.port, 1)
        await client.aclose()
    assert failures == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_connection_behind_a_proxy_parks_once_its_header_is_read() -> None:
    """The header's client address is the connection's; what came with the header (the
    CONNECT) is answered, and the connection has no task until its client sends again."""
    policy = ProxyPolicy(mode=ProxyMode.REQUIRED, trusted_sources=("127.0.0.1",))
    config = _config(
        proxied=ListenerConfig(name="proxied", host="127.0.0.1", port=0, proxy_protocol=policy)
    )
    async with open_broker(config) as broker:
        for header_alone in (False, True):
            client = await RawClient.open(broker.port, ProtocolVersion.V5)
            header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 1883\r\n"
            connect = encode(
                Connect(client_id="behind", protocol_version=ProtocolVersion.V5), ProtocolVersion.V5
            )
            if header_alone:  # the CONNECT later: the task waits for its first bytes
                await client.send_raw(header)
                await trio.sleep(0.05)
                await client.send_raw(connect)
            else:
                await client.send_raw(header + connect)
            connack = await client.receive()
            assert isinstance(connack, Connack) and connack.reason_code == 0
            [summary] = broker.clients()
            assert summary.peer.client == Endpoint("192.0.2.7", 40000)
            await trio.testing.wait_all_tasks_blocked()
            assert broker.parked_connections() == 1
            await client.send(Pingreq())
            assert await client.receive() == Pingresp()
            await client.send(Disconnect())
            assert await client.expect_closed() == []
            await client.aclose()
            await wait_until(lambda: not broker.clients(), "the client gone")
