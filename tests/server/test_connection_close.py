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
import functools
import logging
import os
import socket
import ssl
from pathlib import Path

import pytest
import trio
from helpers import accept_fails_once, wait_until

from trio_mqtt import open_broker
from trio_mqtt.config import BrokerConfig, ListenerConfig, ProxyMode, ProxyPolicy
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import Connect, ProtocolVersion

from .certs import TestPKI

CONNECT = encode(Connect("one", keep_alive=60), ProtocolVersion.V311)
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
    failures = accept_fails_once(monkeypatch, errno.EMFILE)
    config = BrokerConfig(listeners=(ListenerConfig(host="127.0.0.1", port=0),), sys_interval=0)
    async with open_broker(config) as broker:
        assert await trio.to_thread.run_sync(_talk, broker.port, DISCONNECT) == b""
    assert failures == []
    [record] = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert f"EMFILE ({os.strerror(errno.EMFILE)}); accepting again in 0.1 s" in record.getMessage()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _connect_and_go(port: int, first_bytes: bytes, *, wrap: ssl.SSLContext | None = None) -> None:
    """A client that sends ``first_bytes`` (if any), then CONNECT + DISCONNECT, reads the
    broker's first answer (or its refusal) and closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if wrap is not None:
        sock = wrap.wrap_socket(sock, server_hostname="localhost")
    with sock:
        try:
            sock.sendall(first_bytes + CONNECT + DISCONNECT)
            sock.recv(4096)
        except (ConnectionResetError, ssl.SSLError):
            pass  # refused with a reset (or an unfinished TLS close): closed all the same


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
async def test_every_way_a_connection_ends_gives_its_descriptor_back(tmp_path: Path) -> None:
    """Plain TCP, PROXY (accepted, and refused for a bad header), a listener at
    max_connections, TLS and WebSocket: each connection's socket is closed however it
    ends, so the broker holds no more descriptors than before once they are gone."""
    pki = TestPKI.create(tmp_path)
    proxy = ProxyPolicy(mode=ProxyMode.REQUIRED, trusted_sources=("127.0.0.0/8",))
    listeners = (
        ListenerConfig(name="tcp", host="127.0.0.1", port=0),
        ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=proxy),
        ListenerConfig(name="full", host="127.0.0.1", port=0, max_connections=1),
        ListenerConfig(name="tls", host="127.0.0.1", port=0, transport="tls", tls=pki.tls_config()),
        ListenerConfig(name="ws", host="127.0.0.1", port=0, transport="ws"),
    )
    config = BrokerConfig(listeners=listeners, sys_interval=0)
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 1883\r\n"
    ws_request = (
        b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    async with open_broker(config) as broker:
        ports = {name: handle.addresses[0].port for name, handle in broker.listeners.items()}
        rounds = [
            (ports["tcp"], b"", None),
            (ports["lb"], header, None),
            (ports["lb"], b"PROXY garbage\r\n", None),  # refused: invalid header
            (ports["full"], b"", None),  # refused: max_connections
            (ports["tls"], b"", pki.client_context()),
            (ports["ws"], ws_request, None),  # upgraded, then not MQTT frames: closed
        ]
        await trio.to_thread.run_sync(_connect_and_go, ports["tcp"], b"")  # warm up
        await wait_until(lambda: all(h.connections == 0 for h in broker.listeners.values()))
        before = _open_descriptors()
        holder = socket.create_connection(("127.0.0.1", ports["full"]))  # "full" is full
        await wait_until(lambda: broker.listeners["full"].connections == 1, "holding full")
        for _ in range(5):
            for port, first_bytes, wrap in rounds:
                await trio.to_thread.run_sync(
                    functools.partial(_connect_and_go, port, first_bytes, wrap=wrap)
                )
        holder.close()
        await wait_until(
            lambda: all(h.connections == 0 for h in broker.listeners.values()), "all ended"
        )
        await trio.sleep(0.1)
        assert _open_descriptors() <= before
        assert broker.listeners["lb"].rejections["invalid-header"] == 5
        assert broker.listeners["full"].rejections["max-connections"] == 5
        assert broker.listeners["tls"].tls_handshakes["ok"] >= 5
