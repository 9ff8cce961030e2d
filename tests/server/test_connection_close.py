"""How a connection's transport is closed when the connection ends, on real sockets.

A plain-TCP connection closes its socket directly: every layer's ``aclose()`` would only
close the socket, and ``trio.aclose_forcefully`` on each of them (the stream the
connection ran on, the listener's socket wrapper, the accept loop's wrapper) raised and
caught a ``Cancelled`` apiece, a tenth of a short-lived connection's CPU. TLS and
WebSocket streams have something to say before closing (close_notify, a Close frame), so
they still close through ``aclose_forcefully``. The listener's accept loop is our own
for the same reason, and it keeps trio's behaviour when accept() runs out of resources.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

import pytest
import trio
from helpers import wait_until

from trio_mqtt import open_broker
from trio_mqtt.config import BrokerConfig, ListenerConfig

CONNECT = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03one"  # MQTT 3.1.1, client id "one"
CONNACK = b"\x20\x02\x00\x00"
DISCONNECT = b"\xe0\x00"


def _talk(port: int, last_words: bytes) -> bytes:
    """Connect, send ``last_words`` (or nothing) and then close; read to EOF first."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(CONNECT)
        assert sock.recv(4) == CONNACK
        if last_words:
            sock.sendall(last_words)
            return sock.recv(16)  # b"": the broker closed the connection
        sock.shutdown(socket.SHUT_WR)  # EOF without DISCONNECT
        return sock.recv(16)


@pytest.mark.parametrize("last_words", [DISCONNECT, b""], ids=["disconnect", "eof"])
async def test_a_plain_tcp_connection_is_closed_without_aclose_forcefully(
    monkeypatch: pytest.MonkeyPatch, last_words: bytes
) -> None:
    closed: list[object] = []
    real = trio.aclose_forcefully

    async def counting(resource: trio.abc.AsyncResource) -> None:
        closed.append(resource)
        await real(resource)

    monkeypatch.setattr(trio, "aclose_forcefully", counting)
    config = BrokerConfig(listeners=(ListenerConfig(host="127.0.0.1", port=0),), sys_interval=0)
    async with open_broker(config) as broker:
        assert await trio.to_thread.run_sync(_talk, broker.port, last_words) == b""
        await wait_until(lambda: not broker.core.sessions, "the session to end")
        handle = next(iter(broker.listeners.values()))
        await wait_until(lambda: handle.connections == 0, "the connection task to end")
        await trio.sleep(0.05)  # nothing closes anything afterwards either
        assert closed == []  # the client saw the close above: the socket was closed


async def test_the_accept_loop_waits_and_accepts_again_when_out_of_descriptors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE (or ENFILE, ENOMEM, ENOBUFS) from accept(): logged, then accepted again
    after ACCEPT_RETRY_DELAY; the connection waiting in the backlog is served."""
    real_accept = trio.SocketListener.accept
    failures = [OSError(errno.EMFILE, os.strerror(errno.EMFILE))]

    async def accept(self: trio.SocketListener) -> trio.SocketStream:
        if failures:
            await trio.lowlevel.checkpoint()
            raise failures.pop()
        return await real_accept(self)

    monkeypatch.setattr(trio.SocketListener, "accept", accept)
    config = BrokerConfig(listeners=(ListenerConfig(host="127.0.0.1", port=0),), sys_interval=0)
    async with open_broker(config) as broker:
        assert await trio.to_thread.run_sync(_talk, broker.port, DISCONNECT) == b""
    assert failures == []
    [record] = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert f"EMFILE ({os.strerror(errno.EMFILE)}); accepting again in 0.1 s" in record.getMessage()
