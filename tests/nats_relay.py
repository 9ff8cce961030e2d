"""A TCP relay between a cluster node and nats-server, for tests that need to delay or
cut one node's NATS traffic while the others' goes straight through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio
from nats_server import NatsServer

from trio_mqtt import Broker, open_broker
from trio_mqtt.config import BrokerConfig, ClusterConfig, ListenerConfig


class DelayingRelay:
    """A TCP relay to nats-server; what its clients send arrives ``delay`` seconds late.

    Bytes keep their order; the delay applies to bytes as they come in, and setting it
    back to 0 lets what waits through at once. Bytes from nats-server pass at once.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.port = 0
        # while set, new connections are closed at once (the relay's clients stay cut off)
        self.refusing = False
        self._scopes: set[trio.CancelScope] = set()

    def cut(self) -> None:
        """Break every relayed connection now, and refuse new ones until ``refusing`` is
        set back to False."""
        self.refusing = True
        for scope in self._scopes:
            scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, downstream: trio.SocketStream) -> None:
        if self.refusing:
            await downstream.aclose()
            return
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await downstream.aclose()
            return
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                async with downstream, upstream, trio.open_nursery() as nursery:
                    send, receive = trio.open_memory_channel[tuple[float, bytes]](float("inf"))
                    nursery.start_soon(self._read, downstream, send, nursery.cancel_scope)
                    nursery.start_soon(self._write_late, receive, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pass, upstream, downstream, nursery.cancel_scope)
        finally:
            self._scopes.discard(scope)

    async def _read(
        self,
        source: trio.SocketStream,
        late: trio.MemorySendChannel[tuple[float, bytes]],
        scope: trio.CancelScope,
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                late.send_nowait((trio.current_time(), data))
        except trio.BrokenResourceError:
            scope.cancel()
        await late.aclose()  # (EOF: the writer sends what is left, then ends the relay)

    async def _write_late(
        self,
        late: trio.MemoryReceiveChannel[tuple[float, bytes]],
        target: trio.SocketStream,
        scope: trio.CancelScope,
    ) -> None:
        try:
            async for arrived, data in late:
                # (polled: the test may change the delay while bytes wait)
                while trio.current_time() < arrived + self.delay:  # noqa: ASYNC110
                    await trio.sleep(0.005)
                await target.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()

    async def _pass(
        self, source: trio.SocketStream, target: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await target.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()


@asynccontextmanager
async def two_nodes(nats: NatsServer) -> AsyncIterator[tuple[Broker, Broker, DelayingRelay]]:
    """Node a on nats-server directly, node b through a ``DelayingRelay`` (no delay yet)."""
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)  # (once the nodes have left)
        relay = DelayingRelay(nats.port)
        await nursery.start(relay.run)
        nodes = []
        for name, port in (("a", nats.port), ("b", relay.port)):
            config = BrokerConfig(
                listeners=[ListenerConfig(port=0)],
                sys_interval=0,
                shutdown_timeout=1,
                cluster=ClusterConfig(node_name=name, nats_urls=[f"nats://127.0.0.1:{port}"]),
            )
            nodes.append(await stack.enter_async_context(open_broker(config)))
        try:
            yield nodes[0], nodes[1], relay
        finally:
            relay.delay = 0.0  # node b leaves without waiting for the relay
