"""How a connection's transport is closed when the connection ends, on real sockets.

A plain-TCP connection closes its socket directly: every layer's ``aclose()`` would only
close the socket, and ``trio.aclose_forcefully`` on each of them (the stream the
connection ran on, the listener's socket wrapper) raised and caught a ``Cancelled``
apiece, a tenth of a short-lived connection's CPU. Only trio's own accept loop still
calls it, once. TLS and WebSocket streams have something to say before closing
(close_notify, a Close frame), so they still close through ``aclose_forcefully``.
"""

from __future__ import annotations

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
        await wait_until(lambda: bool(closed), "trio's accept loop to close its stream")
        await trio.sleep(0.05)  # nothing else closes anything afterwards
        # trio's accept loop, on its SocketStream; the three layers above it are not
        assert [type(resource).__name__ for resource in closed] == ["SocketStream"]
        assert closed[0].socket.fileno() == -1  # type: ignore[attr-defined]
