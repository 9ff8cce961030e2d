"""A broker that cannot start says which listener and which address, as one exception.

A port held by another socket, a host that does not resolve: ``open_broker`` raises
``ListenerBindError`` (an ``OSError`` too, with the errno) naming the listener and its
``bind``, not an exception group, and logs no "broker stopped" for a broker that never
started. (The command line's side, exit status 1, is in
tests/integration/test_cli_process.py.)
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator

import pytest
import trio

from trio_mqtt import BrokerConfig, ListenerBindError, ListenerConfig, open_broker

UNRESOLVABLE = "no-such-host.invalid"  # RFC 6761: .invalid never resolves


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 that another socket listens on (without SO_REUSEPORT)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def broker_config(*listeners: ListenerConfig) -> BrokerConfig:
    return BrokerConfig(listeners=listeners, sys_interval=0, shutdown_timeout=1)


async def start_failure(config: BrokerConfig) -> ListenerBindError:
    """What ``async with open_broker(config)`` raises (it must not start)."""
    with trio.fail_after(10), pytest.raises(ListenerBindError) as info:
        async with open_broker(config):
            pytest.fail("the broker started")
    return info.value


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "reuse_port"])
async def test_a_busy_port_names_the_listener_and_the_address(
    busy_port: int, reuse_port: bool, caplog: pytest.LogCaptureFixture
) -> None:
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("this platform has no SO_REUSEPORT")
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    listener = ListenerConfig(name="lb", host="127.0.0.1", port=busy_port, reuse_port=reuse_port)
    error = await start_failure(broker_config(listener))
    assert str(error) == f"listener 'lb' cannot bind 127.0.0.1:{busy_port}: address already in use"
    assert isinstance(error, OSError)
    assert error.errno == errno.EADDRINUSE
    assert (error.listener, error.bind) == ("lb", f"127.0.0.1:{busy_port}")
    assert "stopped" not in caplog.text  # it never started
    async with open_broker(broker_config(ListenerConfig(host="127.0.0.1", port=0))):
        pass
    assert caplog.messages[-1] == "broker stopped"  # one that did start says so


async def test_the_listener_that_failed_is_named_not_the_first(
    busy_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    error = await start_failure(
        broker_config(
            ListenerConfig(name="free", host="127.0.0.1", port=0),
            ListenerConfig(name="busy", host="127.0.0.1", port=busy_port),
        )
    )
    assert str(error).startswith(f"listener 'busy' cannot bind 127.0.0.1:{busy_port}: ")
    assert "broker stopped" not in caplog.text


async def test_an_unresolvable_host_is_named(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    error = await start_failure(broker_config(ListenerConfig(name="lb", host=UNRESOLVABLE)))
    assert str(error).startswith(
        f"listener 'lb' cannot bind {UNRESOLVABLE}:1883: host {UNRESOLVABLE!r} does not resolve ("
    ), str(error)
    assert isinstance(error, OSError)
    assert "broker stopped" not in caplog.text
