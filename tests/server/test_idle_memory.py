"""What an idle MQTT connection keeps in Python objects, counted with tracemalloc.

The benchmarks measure the broker's RSS per idle connection against mosquitto; this
test keeps the Python part from growing back unnoticed: the connection's Trio task and
frames, its cancel scopes, its socket wrappers, the protocol state and the session.
"""

from __future__ import annotations

import gc
import socket
import tracemalloc

import trio

from trio_mqtt import open_broker
from trio_mqtt.config import BrokerConfig, ListenerConfig
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import Connect, ProtocolVersion

CONNECTIONS = 300
# bytes per idle connection: 10,395 before sessions made their queue on first use,
# 8,942 once the connection's coroutine wrappers went (Python 3.11)
BUDGET = 10_000
V311 = ProtocolVersion.V311


def _connect_all(sockets: list[socket.socket], port: int, first: int = 0) -> None:
    for number, sock in enumerate(sockets, first):
        sock.connect(("127.0.0.1", port))
        sock.sendall(encode(Connect(f"idle-{number}", keep_alive=60), V311))
        assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted


async def test_an_idle_connection_keeps_under_10_kib_of_python_objects() -> None:
    config = BrokerConfig(listeners=(ListenerConfig(host="127.0.0.1", port=0),), sys_interval=0)
    sockets = [socket.socket() for _ in range(CONNECTIONS)]  # (made before counting)
    try:
        async with open_broker(config) as broker:
            await trio.to_thread.run_sync(_connect_all, sockets[:20], broker.port)  # warm up
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                await trio.to_thread.run_sync(_connect_all, sockets[20:], broker.port, 20)
                await trio.sleep(0.2)  # every connection back in its idle wait
                gc.collect()
                per_connection = (tracemalloc.get_traced_memory()[0] - before) / (CONNECTIONS - 20)
            finally:
                tracemalloc.stop()
            assert len(broker.core.sessions) == CONNECTIONS
            assert per_connection < BUDGET, f"{per_connection:.0f} bytes per idle connection"
    finally:
        for sock in sockets:
            sock.close()
