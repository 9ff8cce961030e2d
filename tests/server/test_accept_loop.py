"""The accept loop (server/listener.py): connections taken from the backlog in batches
with accept(2); plain-TCP ones start parked, with no task until they need one, when no
PROXY header is expected or it is in the socket already when they are accepted (else a
task reads it, and the connection parks after); an error about one connection skips it.

Real sockets on 127.0.0.1, a broker in process.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing
from helpers import accept_fails_once, wait_until
from rawclient import RawClient

from trio_mqtt import open_broker
from trio_mqtt.config import BrokerConfig, ListenerConfig, ProxyMode, ProxyPolicy
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import Connack, Connect, Pingreq, Pingresp, ProtocolVersion
from trio_mqtt.peer import Endpoint
from trio_mqtt.server import connection, listener
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


async def _connected(port: int, count: int) -> list[RawClient]:
    """``count`` clients: all connect first, with blocking calls and no checkpoint
    between, so that all wait in the broker's backlog at once; then each sends its
    CONNECT and reads its CONNACK."""
    clients = [_client(socket.create_connection(("127.0.0.1", port))) for _ in range(count)]
    for index, client in enumerate(clients):
        connack = await client.connect(f"c{index}", keep_alive=60)
        assert isinstance(connack, Connack) and connack.reason_code == 0
    return clients


def _config(**listeners: ListenerConfig) -> BrokerConfig:
    return BrokerConfig(listeners=tuple(listeners.values()), sys_interval=0)


@pytest.mark.parametrize("batch", [ACCEPT_BATCH, 1])
async def test_plain_tcp_connections_start_parked_with_no_task(
    monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """All served, also when each wake-up takes one connection (the loop comes back for
    the rest of the backlog); none has a task after its CONNACK."""
    monkeypatch.setattr(listener, "ACCEPT_BATCH", batch)
    config = _config(plain=ListenerConfig(name="plain", host="127.0.0.1", port=0))
    async with open_broker(config) as broker:
        with _counting_spawns() as spawns:
            clients = await _connected(broker.port, CLIENTS)
            assert broker.parked_connections() == CLIENTS
            assert spawns.names["_serve_connection"] == 0
            assert spawns.names["_resume"] == 0
        handle = broker.listeners["plain"]
        assert handle.connections == handle.accepted == CLIENTS
        await clients[0].send(Pingreq())  # a task again, for its first packet since
        assert await clients[0].receive() == Pingresp()
        for client in clients:
            await client.aclose()


@contextmanager
def _counting_spawns() -> Iterator[_Spawns]:
    spawns = _Spawns()
    trio.lowlevel.add_instrument(spawns)
    try:
        yield spawns
    finally:
        trio.lowlevel.remove_instrument(spawns)


HEADER = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 1883\r\n"
CONNECT = encode(Connect(client_id="behind", protocol_version=V5), V5)


def _sent_before_accept(port: int, data: bytes) -> RawClient:
    """A client whose ``data`` is in the broker's socket before the broker accepts it:
    connected and sent with blocking calls, no checkpoint between, so the broker's accept
    loop (in this thread) has not run."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(data)
    return _client(sock)


def _client(sock: socket.socket) -> RawClient:
    return RawClient(trio.SocketStream(trio.socket.from_stdlib_socket(sock)), V5)


def _proxied(mode: ProxyMode = ProxyMode.REQUIRED) -> BrokerConfig:
    policy = ProxyPolicy(mode=mode, trusted_sources=("127.0.0.1",))
    return _config(
        proxied=ListenerConfig(name="proxied", host="127.0.0.1", port=0, proxy_protocol=policy)
    )


async def _connack_then_parked(broker: Broker, client: RawClient) -> None:
    connack = await client.receive()
    assert isinstance(connack, Connack) and connack.reason_code == 0
    await trio.testing.wait_all_tasks_blocked()
    assert broker.parked_connections() == 1


@pytest.mark.parametrize(
    ("first", "later", "tasks"),
    [
        (HEADER + CONNECT, b"", 0),  # all there when accepted: no task
        (HEADER, CONNECT, 1),  # what follows the header not there yet: a task waits
        (HEADER[:20], HEADER[20:] + CONNECT, 1),  # half a header: a task waits
    ],
    ids=["header-and-connect", "header-alone", "half-a-header"],
)
async def test_a_connection_behind_a_proxy_parks_once_its_header_is_read(
    first: bytes, later: bytes, tasks: int
) -> None:
    """Read at accept if it is all there, else by the connection's task: either way the
    client's address is the header's, the header is counted once, and the connection
    parks after its CONNACK, to be answered when its client sends again."""
    async with open_broker(_proxied()) as broker:
        with _counting_spawns() as spawns:
            client = _sent_before_accept(broker.port, first)
            if later:
                await trio.sleep(0.05)
                await client.send_raw(later)
            await _connack_then_parked(broker, client)
            assert spawns.names["_serve_connection"] == tasks
        [summary] = broker.clients()
        assert summary.peer.client == Endpoint("192.0.2.7", 40000)
        assert broker.listeners["proxied"].proxy_headers == Counter({("v1", "ok"): 1})
        await client.send(Pingreq())
        assert await client.receive() == Pingresp()
        await client.aclose()


async def test_connections_read_at_accept_take_their_first_steps_after_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Headers and CONNECTs of several clients in their sockets when the broker accepts
    them: every connection of the batch is taken in (counted as accepted) before the
    first CONNECT is handled, so the same code runs over the batch (``_accept_loop``)."""
    accepted_at_step: list[int] = []
    step_in_park = connection._step_in_park

    def step(task: connection._Task, data: bytes) -> bool:
        accepted_at_step.append(broker.listeners["proxied"].accepted)
        return step_in_park(task, data)

    monkeypatch.setattr(connection, "_step_in_park", step)
    async with open_broker(_proxied()) as broker:
        clients = [_sent_before_accept(broker.port, HEADER + CONNECT) for _ in range(5)]
        for client in clients:
            connack = await client.receive()
            assert isinstance(connack, Connack) and connack.reason_code == 0
        assert accepted_at_step == [5] * 5
        for client in clients:
            await client.aclose()


async def test_a_client_without_a_header_where_it_is_optional_parks_at_once() -> None:
    async with open_broker(_proxied(ProxyMode.OPTIONAL)) as broker:
        with _counting_spawns() as spawns:
            client = _sent_before_accept(broker.port, CONNECT)
            await _connack_then_parked(broker, client)
            assert spawns.names["_serve_connection"] == 0
        [summary] = broker.clients()
        assert summary.peer.proxy_header is None
        await client.aclose()


async def test_a_bad_header_there_at_accept_is_refused_and_counted_once() -> None:
    async with open_broker(_proxied()) as broker:
        client = _sent_before_accept(broker.port, b"PROXY TCP4 nonsense\r\n" + CONNECT)
        assert await client.expect_closed() == []
        handle = broker.listeners["proxied"]
        await wait_until(lambda: handle.connections == 0, "the connection closed")
        assert handle.rejections == Counter({"invalid-header": 1})
        assert handle.proxy_headers == Counter({("v1", "invalid"): 1})
        await client.aclose()


async def test_an_error_about_one_connection_skips_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ECONNABORTED (the client reset before it was taken) and the like: the loop goes
    on with the next connection in the backlog, and logs nothing about it."""
    failures = accept_fails_once(monkeypatch, errno.ECONNABORTED)
    caplog.set_level(logging.DEBUG, logger="trio_mqtt")
    config = _config(plain=ListenerConfig(name="plain", host="127.0.0.1", port=0))
    async with open_broker(config) as broker:
        [client] = await _connected(broker.port, 1)
        await client.aclose()
    assert failures == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _broker_end(client: socket.socket) -> socket.socket:
    """The broker's socket of ``client``'s connection (a duplicate of its descriptor),
    found among this process's descriptors by its peer address."""
    for name in os.listdir("/proc/self/fd"):
        try:
            candidate = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket (or gone meanwhile)
        try:
            if candidate.getpeername() == client.getsockname():
                return candidate
        except OSError:
            pass  # a listening or unconnected socket
        candidate.close()
    raise AssertionError(f"no socket of this process is connected to {client.getsockname()}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
@pytest.mark.parametrize("proxy", [False, True])
async def test_accepted_connections_have_the_socket_options_of_a_trio_stream(
    proxy: bool,
) -> None:
    """TCP_NODELAY (a packet goes out when written) and TCP_NOTSENT_LOWAT 16 KiB (a
    client that stops reading shows as a full socket soon), as trio.SocketStream sets
    them, on connections that never had one: the listening socket passes them on."""
    policy = ProxyPolicy(mode=ProxyMode.REQUIRED if proxy else ProxyMode.OFF)
    config = _config(
        plain=ListenerConfig(name="plain", host="127.0.0.1", port=0, proxy_protocol=policy)
    )
    async with open_broker(config) as broker:
        raw = socket.create_connection(("127.0.0.1", broker.port))
        if proxy:
            raw.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 1883\r\n")
        client = _client(raw)
        connack = await client.connect("options", keep_alive=60)
        assert isinstance(connack, Connack) and connack.reason_code == 0
        ours = _broker_end(raw)
        with ours:
            assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 2**14
        await client.aclose()
