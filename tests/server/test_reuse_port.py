"""``reuse_port = true``: several brokers accept on one port (SO_REUSEPORT).

Two brokers in this process bind the same fixed port of 127.0.0.1; the kernel spreads
new connections over their listening sockets (Linux: by a hash of the addresses, so
clients from different source ports land on both). Without ``reuse_port`` the second
broker fails to bind with EADDRINUSE, as before.
"""

from __future__ import annotations

import errno
import socket

import pytest
import trio
from helpers import free_port, wait_until
from rawclient import RawClient

from trio_mqtt import BrokerConfig, ListenerConfig, open_broker
from trio_mqtt.server.listener import open_reuse_port_listeners

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="this platform has no SO_REUSEPORT"
)

CLIENTS = 40  # all on one of two sockets by chance: 2 ** -39


def os_errors(exc: BaseException) -> list[OSError]:
    """The OSErrors in *exc* (inside exception groups, however nested)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in os_errors(inner)]
    return [exc] if isinstance(exc, OSError) else []


def config(port: int, *, reuse_port: bool) -> BrokerConfig:
    listener = ListenerConfig(name="shared", host="127.0.0.1", port=port, reuse_port=reuse_port)
    return BrokerConfig(listeners=(listener,), sys_interval=0, shutdown_timeout=1)


async def test_two_brokers_share_one_port_and_both_get_clients() -> None:
    port = free_port()
    with trio.fail_after(20):
        async with (
            open_broker(config(port, reuse_port=True)) as first,
            open_broker(config(port, reuse_port=True)) as second,
        ):
            assert first.port == second.port == port
            clients = []
            try:
                for index in range(CLIENTS):
                    client = await RawClient.open(port)
                    await client.connect(f"reuse-{index}")
                    clients.append(client)

                def counts() -> tuple[int, int]:
                    return len(first.clients()), len(second.clients())

                await wait_until(lambda: sum(counts()) == CLIENTS)
                assert all(count > 0 for count in counts()), counts()
            finally:
                for client in clients:
                    await client.aclose()


async def test_without_reuse_port_the_second_broker_cannot_bind() -> None:
    port = free_port()
    with trio.fail_after(10):
        async with open_broker(config(port, reuse_port=False)) as first:
            assert first.port == port
            with pytest.raises(BaseException) as info:
                async with open_broker(config(port, reuse_port=False)):
                    pytest.fail("the second broker bound a port the first one holds")
            assert [leaf.errno for leaf in os_errors(info.value)] == [errno.EADDRINUSE]
            assert "address already in use" in str(os_errors(info.value)[0])


async def test_reuse_port_does_not_share_with_a_socket_that_did_not_ask() -> None:
    port = free_port()
    with trio.fail_after(10):
        async with open_broker(config(port, reuse_port=False)):
            with pytest.raises(OSError) as info:
                await open_reuse_port_listeners(port, host="127.0.0.1")
            assert info.value.errno == errno.EADDRINUSE


async def test_reuse_port_with_port_0_gets_a_port_of_its_own() -> None:
    with trio.fail_after(10):
        async with (
            open_broker(config(0, reuse_port=True)) as first,
            open_broker(config(0, reuse_port=True)) as second,
        ):
            assert 0 != first.port != second.port != 0
