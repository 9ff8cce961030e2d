"""Load balancers' health checks are counted (ListenerHandle.health_checks), not logged at INFO.

Over real sockets on 127.0.0.1, with hand-built PROXY headers (tests/proxy/builders.py)
and with Debian's HAProxy (``check`` + ``check-send-proxy``). Real refusals stay loud.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
import trio
from helpers import wait_until
from proxy.builders import SIG, inet, v2
from rawclient import RawClient
from tools import require_tool

from trio_mqtt.config import ListenerConfig, ProxyMode, ProxyPolicy
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .haproxy_helpers import run_haproxy

PROXY_HOST = "127.0.0.2"
V2_LOCAL = SIG + b"\x20\x00\x00\x00"  # v2 LOCAL, UNSPEC: the proxy's own connection
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
V1_TCP4 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 1883\r\n"
V2_TCP4 = v2(0x21, 0x11, inet(bytes([203, 0, 113, 7]), bytes([127, 0, 0, 1]), 51234, 1883))


def proxied(trusted: str = "127.0.0.0/8") -> tuple[ListenerConfig, ...]:
    policy = ProxyPolicy(mode=ProxyMode.REQUIRED, trusted_sources=(trusted,), timeout=2.0)
    return (ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=policy),)


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("trio_mqtt") and r.levelno >= logging.INFO
    ]


def up_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """INFO lines other than the broker's and the listener's start and stop."""
    lifecycle = (" up on ", "stopped accepting", "broker stopped", "broker started")
    return [line for line in info_lines(caplog) if not any(t in line for t in lifecycle)]


async def open_and_close(broker: Broker, data: bytes) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    if data:
        await stream.send_all(data)
    await stream.aclose()


@pytest.mark.parametrize(
    "data",
    [b"", V2_LOCAL, V1_UNKNOWN, V1_TCP4, V2_TCP4],
    ids=["nothing", "v2-local", "v1-unknown", "v1-header-only", "v2-header-only"],
)
async def test_health_checks_are_counted_and_logged_at_debug_only(
    caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_mqtt")
    async with open_test_broker(listeners=proxied()) as broker:
        handle = broker.listeners["lb"]
        for _ in range(3):
            await open_and_close(broker, data)
        await wait_until(lambda: handle.health_checks == 3, "three health checks")
        await wait_until(lambda: handle.connections == 0, "all closed")
        assert handle.rejections == Counter()
    assert up_lines(caplog) == []
    debug = [r.getMessage() for r in caplog.records if "health check from" in r.getMessage()]
    assert len(debug) == 3
    assert all(line.startswith("listener 'lb': health check from ") for line in debug)


async def test_a_local_header_then_mqtt_is_a_counted_check_that_connects() -> None:
    async with open_test_broker(listeners=proxied()) as broker:
        handle = broker.listeners["lb"]
        client = await RawClient.open(broker.port)
        await client.send_raw(V2_LOCAL)
        connack = await client.connect("hc")
        assert connack.reason_code == 0
        await client.aclose()
        assert handle.health_checks == 1
        assert handle.rejections == Counter()


async def test_real_refusals_are_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    async with open_test_broker(listeners=proxied()) as broker:
        handle = broker.listeners["lb"]
        await open_and_close(broker, b"PROXY garbage\r\n")
        await open_and_close(broker, V1_TCP4[:10])  # closed in the middle of a header
        await wait_until(lambda: sum(handle.rejections.values()) == 2, "two refusals")
        assert handle.rejections == Counter({"invalid-header": 1, "closed": 1})
        assert handle.health_checks == 0
    refused = [line for line in up_lines(caplog) if "refused connection" in line]
    assert len(refused) == 2
    assert all(line.startswith("WARNING") for line in refused)


# --------------------------------------------------------------------------- HAProxy


@pytest.fixture
def haproxy() -> str:
    return require_tool("haproxy")


# a check that connects (sending the PROXY header, with check-send-proxy) and closes
CONNECT_ONLY = ["option tcp-check", "tcp-check connect default"]


@pytest.mark.parametrize(
    ("server_option", "backend_lines"),
    [
        # connect, a PROXY header (v2 / v1, naming HAProxy itself), close or reset: HAProxy
        # resets as soon as the check passes, which may come before the header is read
        ("send-proxy-v2 check-send-proxy", CONNECT_ONLY),
        ("send-proxy check-send-proxy", CONNECT_ONLY),
        # plain L4 check: connect, reset (check-send-proxy sends nothing then)
        ("send-proxy-v2 check-send-proxy", []),
        ("send-proxy-v2", []),
    ],
    ids=["v2-local", "v1", "l4-check-send-proxy", "l4"],
)
async def test_haproxy_checks_are_counted_not_logged(
    haproxy: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    server_option: str,
    backend_lines: list[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_mqtt")
    options = f"{server_option} source {PROXY_HOST} check inter 100ms rise 1 fall 1"
    async with (
        open_test_broker(listeners=proxied(f"{PROXY_HOST}/32")) as broker,
        run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=options,
            backend_lines=backend_lines,
        ) as hap,
    ):
        handle = broker.listeners["lb"]
        await wait_until(lambda: handle.health_checks >= 5, "five health checks", timeout=10)
        state = await hap.server_state()
        assert state["status"] == "UP", (state, hap.output())
        assert handle.rejections == Counter()
    assert up_lines(caplog) == [], hap.output()
    checks = [r.getMessage() for r in caplog.records if "health check from" in r.getMessage()]
    assert len(checks) >= 5
