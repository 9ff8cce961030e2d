"""The nats-server the cluster tests run is the pinned one, and it answers on loopback."""

from __future__ import annotations

import socket
import subprocess

from nats_server import PINNED_VERSION, NatsServer, nats_server_binary


def test_binary_is_the_pinned_version() -> None:
    out = subprocess.run(
        [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10, check=True
    )
    assert out.stdout.strip() == f"nats-server: v{PINNED_VERSION}"


def test_fixture_server_greets_with_info_and_jetstream(nats_server: NatsServer) -> None:
    with socket.create_connection(("127.0.0.1", nats_server.port), timeout=5) as sock:
        greeting = sock.recv(4096)
    assert greeting.startswith(b"INFO {")
    assert b'"jetstream":true' in greeting
