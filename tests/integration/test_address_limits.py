"""[listeners.limits] on the real client address: deny_sources, max_connections_per_address,
connect_rate_per_address; the fixed refusal log line and the fail2ban filter of
docs/operations.md matched against it.

Over real sockets: hand-built PROXY headers (tests/proxy/builders.py) from one trusted
proxy (127.0.0.1) claiming the same client, and Debian's HAProxy sending v1 and v2
headers for paho clients on 127.0.0.3 (so that every client shares one address).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from helpers import wait_until
from proxy.builders import SIG, inet, v2
from rawclient import RawClient
from tools import require_tool

from trio_mqtt.config import ListenerConfig, ListenerLimits, ProxyMode, ProxyPolicy
from trio_mqtt.mqtt.packets import Connack
from trio_mqtt.testing import open_test_broker

from .haproxy_helpers import PahoClient, run_haproxy

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
CLIENT = "203.0.113.7"
T = TypeVar("T")


def v1_header(client: str, port: int = 51234) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 1883\r\n".encode()


def v2_header(client: str, port: int = 51234) -> bytes:
    src = bytes(int(part) for part in client.split("."))
    return v2(0x21, 0x11, inet(src, bytes([127, 0, 0, 1]), port, 1883))


V2_LOCAL = SIG + b"\x20\x00\x00\x00"


def listener(limits: ListenerLimits, *, mode: ProxyMode = ProxyMode.REQUIRED) -> ListenerConfig:
    policy = ProxyPolicy(mode=mode, trusted_sources=("127.0.0.0/8",), timeout=2.0)
    if mode is ProxyMode.OFF:
        policy = ProxyPolicy()
    return ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=policy, limits=limits)


async def client_through(port: int, header: bytes) -> RawClient:
    client = await RawClient.open(port)
    await client.send_raw(header)
    return client


async def connects(client: RawClient, client_id: str) -> bool:
    """True on CONNACK accepted; False if the broker closed the connection instead."""
    try:
        connack = await client.connect(client_id)
    except (EOFError, trio.BrokenResourceError):
        return False
    assert isinstance(connack, Connack)
    return connack.reason_code == 0


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused client")]


def fail2ban_regex() -> re.Pattern[str]:
    """The failregex of docs/operations.md, <HOST> as a named group (as fail2ban does)."""
    [line] = [x for x in OPERATIONS.read_text().splitlines() if x.startswith("failregex = ")]
    failregex = line.removeprefix("failregex = ")
    assert "<HOST>" in failregex
    host = r"(?P<host>[0-9A-Fa-f.:]+)"
    return re.compile(failregex.replace("<HOST>", host))


@pytest.mark.parametrize("header", [v1_header, v2_header], ids=["v1", "v2"])
async def test_max_connections_per_address_counts_the_proxied_client(
    caplog: pytest.LogCaptureFixture, header: Callable[[str], bytes]
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    limits = ListenerLimits(max_connections_per_address=2)
    async with open_test_broker(listeners=(listener(limits),)) as broker:
        handle = broker.listeners["lb"]
        first = await client_through(broker.port, header(CLIENT))
        second = await client_through(broker.port, header(CLIENT))
        assert await connects(first, "a")
        assert await connects(second, "b")
        third = await client_through(broker.port, header(CLIENT))
        assert await third.expect_closed() == []  # closed right after the header
        other = await client_through(broker.port, header("203.0.113.8"))
        assert await connects(other, "c")  # another client, same proxy: fine
        assert handle.rejections == Counter({"connections-per-address": 1})

        await first.aclose()
        await wait_until(lambda: handle.connections == 2, "the first gone")  # second, other
        again = await client_through(broker.port, header(CLIENT))
        assert await connects(again, "d")
        for client in (second, other, again):
            await client.aclose()
    [line] = refusal_lines(caplog)
    assert line == (
        f"refused client {CLIENT} on listener 'lb': connections-per-address "
        f"(2 connections open from {CLIENT})"
    )
    match = fail2ban_regex().search(line)
    assert match is not None and match.group("host") == CLIENT


async def test_connect_rate_per_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    limits = ListenerLimits(connect_rate_per_address=0.5, connect_burst_per_address=3)
    async with open_test_broker(listeners=(listener(limits),)) as broker:
        handle = broker.listeners["lb"]
        results = []
        for index in range(5):
            client = await client_through(broker.port, v2_header(CLIENT, 40000 + index))
            results.append(await connects(client, f"r{index}"))
            await client.aclose()
        assert results == [True, True, True, False, False]
        assert handle.rejections == Counter({"connect-rate": 2})
        # the proxy's own health checks (LOCAL) are no client: never limited
        for _ in range(5):
            check = await client_through(broker.port, V2_LOCAL)
            await check.aclose()
        await wait_until(lambda: handle.health_checks == 5, "five health checks")
        assert handle.rejections == Counter({"connect-rate": 2})
    lines = refusal_lines(caplog)
    assert len(lines) == 2
    regex = fail2ban_regex()
    for line in lines:
        assert line.startswith(f"refused client {CLIENT} on listener 'lb': connect-rate (")
        match = regex.search(line)
        assert match is not None and match.group("host") == CLIENT


@pytest.mark.parametrize("mode", [ProxyMode.REQUIRED, ProxyMode.OFF], ids=["proxied", "direct"])
async def test_deny_sources_on_the_real_address(
    caplog: pytest.LogCaptureFixture, mode: ProxyMode
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    denied = "203.0.113.0/24" if mode is ProxyMode.REQUIRED else "127.0.0.0/8"
    limits = ListenerLimits(deny_sources=(denied,))
    async with open_test_broker(listeners=(listener(limits, mode=mode),)) as broker:
        handle = broker.listeners["lb"]
        header = v1_header(CLIENT) if mode is ProxyMode.REQUIRED else b""
        refused = await client_through(broker.port, header)
        assert await refused.expect_closed() == []
        assert handle.rejections == Counter({"denied-source": 1})
        if mode is ProxyMode.REQUIRED:
            # the proxy itself is not denied: another client through it connects
            allowed = await client_through(broker.port, v1_header("198.51.100.4"))
            assert await connects(allowed, "ok")
            await allowed.aclose()
    [line] = refusal_lines(caplog)
    host = CLIENT if mode is ProxyMode.REQUIRED else "127.0.0.1"
    assert line == f"refused client {host} on listener 'lb': denied-source (in deny_sources)"
    match = fail2ban_regex().search(line)
    assert match is not None and match.group("host") == host


async def test_ipv6_prefix_aggregation_over_a_v1_header() -> None:
    limits = ListenerLimits(max_connections_per_address=1, ipv6_prefix_length=64)
    async with open_test_broker(listeners=(listener(limits),)) as broker:
        handle = broker.listeners["lb"]

        def header(client: str) -> bytes:
            return f"PROXY TCP6 {client} ::1 51234 1883\r\n".encode()

        first = await client_through(broker.port, header("2001:db8::1"))
        assert await connects(first, "a")
        same_64 = await client_through(broker.port, header("2001:db8::2"))
        assert await same_64.expect_closed() == []
        other_64 = await client_through(broker.port, header("2001:db8:0:1::1"))
        assert await connects(other_64, "b")
        assert handle.rejections == Counter({"connections-per-address": 1})
        await first.aclose()
        await other_64.aclose()


# --------------------------------------------------------------------------- HAProxy

CLIENT_HOST = "127.0.0.3"  # every paho client: one address
PROXY_HOST = "127.0.0.2"


@pytest.fixture
def haproxy() -> str:
    return require_tool("haproxy")


async def in_thread(function: Callable[..., T], *args: object, **kwargs: object) -> T:
    return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


@pytest.mark.parametrize("server_option", ["send-proxy", "send-proxy-v2"], ids=["v1", "v2"])
async def test_haproxy_clients_share_their_address_limit(
    haproxy: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, server_option: str
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    policy = ProxyPolicy(
        mode=ProxyMode.REQUIRED, trusted_sources=(f"{PROXY_HOST}/32",), timeout=2.0
    )
    config = ListenerConfig(
        name="lb",
        host="127.0.0.1",
        port=0,
        proxy_protocol=policy,
        limits=ListenerLimits(max_connections_per_address=2),
    )
    async with (
        open_test_broker(listeners=(config,)) as broker,
        run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=f"{server_option} source {PROXY_HOST}",
        ) as hap,
    ):
        handle = broker.listeners["lb"]
        clients = [PahoClient(f"p{index}") for index in range(3)]
        for paho in clients[:2]:
            connack = await in_thread(paho.connect, "127.0.0.1", hap.port, bind_address=CLIENT_HOST)
            assert connack.value == 0
        with pytest.raises(OSError):  # closed before a CONNACK
            await in_thread(clients[2].connect, "127.0.0.1", hap.port, bind_address=CLIENT_HOST)
        assert handle.rejections == Counter({"connections-per-address": 1})
        for paho in clients:
            await in_thread(paho.disconnect)
    [line] = refusal_lines(caplog)
    match = fail2ban_regex().search(line)
    assert match is not None and match.group("host") == CLIENT_HOST
    assert "connections-per-address" in line
