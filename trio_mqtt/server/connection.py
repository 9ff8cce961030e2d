"""Drive one MQTTConnection over a trio stream: a reader task and a writer task.

The reader feeds received bytes to the sans-IO state machine under the idle timeout
(CONNECT timeout before CONNECT, 1.5x keep alive after). The writer sleeps until the
state machine has output, then writes everything queued in one ``send_all`` (acks and
messages from other clients are batched). When the state machine wants the connection
closed, the writer flushes what is left, within a bound, and both tasks end.
"""

from __future__ import annotations

import logging
import math

import trio

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.mqtt_connection import ConnectionState, MQTTConnection
from trio_mqtt.peer import PeerInfo

log = logging.getLogger("trio_mqtt.server")

RECEIVE_SIZE = 65536
# How long the final flush (CONNACK refusal, DISCONNECT) may take before we just close.
FINAL_FLUSH_TIMEOUT = 2.0


class _Wakeup:
    """A level-triggered "there is output" flag the writer can wait on."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


async def run_connection(stream: trio.abc.Stream, core: BrokerCore, peer: PeerInfo) -> None:
    """Serve MQTT on ``stream`` until either side closes it. Always closes ``stream``."""
    wakeup = _Wakeup()
    conn = core.open_connection(peer, wakeup.set)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write_loop, stream, conn, wakeup, nursery.cancel_scope)
            await _read_loop(stream, conn, wakeup)
            if conn.wants_close:
                wakeup.set()  # the writer flushes the last packets, then ends
            else:
                nursery.cancel_scope.cancel()  # EOF or broken transport: nothing to say
    finally:
        conn.connection_lost()
        await trio.aclose_forcefully(stream)


async def _read_loop(stream: trio.abc.Stream, conn: MQTTConnection, wakeup: _Wakeup) -> None:
    # The CONNECT deadline is absolute (from transport ready): trickled bytes don't move
    # it. Once connected, each complete Control Packet (not each read: a packet trickled
    # byte by byte must not keep the connection alive) restarts the keep-alive timer.
    # One cancel scope for the whole loop, its deadline moved as packets arrive: cheaper
    # than a new scope per read on the hot path.
    packets_seen = 0
    with trio.CancelScope(deadline=trio.current_time() + (conn.idle_timeout or math.inf)) as idle:
        while not conn.wants_close:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return  # EOF without DISCONNECT: an abnormal close (will is published)
            conn.receive_data(data)
            wakeup.set()
            if conn.packets_received != packets_seen and conn.state is ConnectionState.CONNECTED:
                packets_seen = conn.packets_received
                timeout = conn.idle_timeout
                idle.deadline = math.inf if timeout is None else trio.current_time() + timeout
    if idle.cancelled_caught:
        conn.keepalive_expired()
        wakeup.set()


async def _write_loop(
    stream: trio.abc.Stream, conn: MQTTConnection, wakeup: _Wakeup, scope: trio.CancelScope
) -> None:
    try:
        while True:
            await wakeup.wait()
            data = conn.data_to_send()
            if conn.wants_close:
                if data:
                    with trio.move_on_after(FINAL_FLUSH_TIMEOUT):
                        await stream.send_all(data)
                return
            if data:
                await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        # Writer done means the connection is done: stop the reader too.
        scope.cancel()
