"""A graceful shutdown behind a load balancer: /readyz turns 503 first, HAProxy's HTTP
health check sees it and marks the broker DOWN, and only after ``[http] drain`` do the
listeners close and the clients get asked to leave."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio
from rawclient import RawClient
from tools import require_tool

from trio_mqtt.config import HttpConfig
from trio_mqtt.mqtt.packets import Disconnect, ProtocolVersion
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .haproxy_helpers import RunningHAProxy, run_haproxy

DRAIN = 2.0


@pytest.fixture
def haproxy() -> str:
    return require_tool("haproxy")


async def test_haproxy_marks_the_broker_down_before_its_clients_are_closed(
    haproxy: str, tmp_path: Path
) -> None:
    http = HttpConfig(host="127.0.0.1", port=0, drain=DRAIN)
    async with trio.open_nursery() as nursery:
        broker: Broker = await nursery.start(_run_broker, http)
        assert broker.http is not None
        http_port = broker.http.addresses[0].port
        options = f"check port {http_port} inter 100ms rise 1 fall 1"
        async with run_haproxy(
            haproxy,
            tmp_path,
            broker_port=broker.port,
            server_options=options,
            backend_lines=["option httpchk GET /readyz"],
        ) as hap:
            await status_becomes(hap, "UP", timeout=10)
            client = await RawClient.open(hap.port, ProtocolVersion.V5)
            await client.connect("through-haproxy", keep_alive=0)

            nursery.cancel_scope.cancel()  # what SIGTERM does to the trio-mqtt command
            stopping_at = trio.current_time()
            with trio.CancelScope(shield=True):
                await status_becomes(hap, "DOWN", timeout=DRAIN)
                down_after = trio.current_time() - stopping_at
                # DOWN, and the client is still served: nothing asked it to leave yet
                got: object = None
                with trio.move_on_after(0.1) as quiet:
                    got = await client.receive_or_eof(timeout=5.0)
                assert quiet.cancelled_caught, f"during the drain the client got {got!r}"
            assert down_after < DRAIN
            with trio.CancelScope(shield=True):
                last = await client.receive(timeout=DRAIN + 5)
                assert last == Disconnect(ReasonCode.SERVER_SHUTTING_DOWN)
                assert trio.current_time() - stopping_at >= DRAIN
                await client.aclose()


async def status_becomes(hap: RunningHAProxy, status: str, *, timeout: float) -> None:
    """Wait until HAProxy reports the broker's server as ``status`` (polling its stats)."""
    deadline = trio.current_time() + timeout
    for _poll in itertools.count():
        state = await hap.server_state()
        if state["status"] == status:
            return
        if trio.current_time() > deadline:
            raise AssertionError(f"not {status} after {timeout} s: {state}\n{hap.output()}")
        await trio.sleep(0.05)


async def _run_broker(http: HttpConfig, task_status: trio.TaskStatus[Broker]) -> None:
    async with open_test_broker(http=http) as broker:
        task_status.started(broker)
        await trio.sleep_forever()
