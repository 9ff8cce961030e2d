"""Offloaded checks run in a worker thread, a bounded number at a time.

A password hash takes a tenth of a second of CPU; on the event loop, 100 wrong passwords
stalled every client for seconds. Here the check's work blocks on a ``threading.Event``
that the test releases: while it waits in its thread, the broker goes on serving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import trio
from rawclient import RawClient

from trio_mqtt.broker.core import OffloadedCheck
from trio_mqtt.mqtt.packets import Connack, Connect, Pingreq, Pingresp, ProtocolVersion
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import PeerInfo
from trio_mqtt.server import offload
from trio_mqtt.testing import open_test_broker

V311 = ProtocolVersion.V311


def blocking_hook(
    release: threading.Event, started: list[str], answer: ReasonCode | None = None
) -> Callable[[PeerInfo, Connect], OffloadedCheck | None]:
    """Offloads CONNECTs of client ids starting with "slow"; the work waits for *release*."""

    def hook(peer: PeerInfo, connect: Connect) -> OffloadedCheck | None:
        if not connect.client_id.startswith("slow"):
            return None

        def work() -> ReasonCode | None:
            started.append(connect.client_id)
            release.wait(10)
            return answer

        return OffloadedCheck(work)

    return hook


async def test_the_loop_serves_others_while_a_check_runs_in_a_thread() -> None:
    release = threading.Event()
    started: list[str] = []
    async with open_test_broker() as broker:
        broker.add_connect_hook(blocking_hook(release, started))
        busy = await RawClient.open(broker.port, V311)
        other = await RawClient.open(broker.port, V311)
        try:
            await busy.send(Connect("slow-1"))
            with trio.fail_after(5):
                while not started:  # noqa: ASYNC110 - the thread has no trio event to wait on
                    await trio.sleep(0.01)
            # the check is blocked in its thread: everybody else is served meanwhile
            connack = await other.connect("other")
            assert connack.reason_code == 0
            await other.send(Pingreq())
            assert await other.receive() == Pingresp()
            assert "slow-1" not in broker.core.sessions
            release.set()
            connack = await busy.receive()
            assert isinstance(connack, Connack) and connack.reason_code == 0
        finally:
            release.set()
            await busy.aclose()
            await other.aclose()


async def test_too_many_waiting_checks_get_server_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    started: list[str] = []
    monkeypatch.setattr(offload, "MAX_WAITING", 2)
    async with open_test_broker() as broker:
        limiter = trio.CapacityLimiter(1)  # one check at a time, whatever the cores
        offload._LIMITER.set(limiter)
        broker.add_connect_hook(blocking_hook(release, started))
        clients = [await RawClient.open(broker.port, V311) for _ in range(4)]
        try:
            for number, client in enumerate(clients[:3]):
                await client.send(Connect(f"slow-{number}"))
            with trio.fail_after(5):
                while limiter.statistics().tasks_waiting < 2:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            # one runs, two wait: the fourth is refused at once (3.1.1: "server unavailable")
            await clients[3].send(Connect("slow-3"))
            last = await clients[3].receive()
            assert isinstance(last, Connack)
            assert last.reason_code == ReasonCode.SERVER_UNAVAILABLE
            with trio.fail_after(5):
                while not started:  # noqa: ASYNC110 - (its thread may start a little later)
                    await trio.sleep(0.01)
            assert len(started) == 1  # only one runs; the others wait their turn
            release.set()
            for client in clients[:3]:
                connack = await client.receive()
                assert isinstance(connack, Connack) and connack.reason_code == 0
        finally:
            release.set()
            for client in clients:
                await client.aclose()
