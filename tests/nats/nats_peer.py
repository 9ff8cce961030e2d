"""nats-py as an independent NATS peer for the trio client's tests.

nats-py runs on asyncio, so each peer runs ``asyncio.run`` in a worker thread
(``trio.to_thread.run_sync``). ``NatsPyPeer.start`` runs a coroutine in the
background and returns once it called ``ready()`` (e.g. after subscribing), so the
trio side can then publish to it; ``result()`` waits for what it returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import trio
from nats.aio.client import Client


async def run_nats_py(url: str, body: Callable[[Client], Awaitable[Any]], **options: Any) -> Any:
    """Connect nats-py to *url* in a thread, run ``body(client)``, return its result.

    *options* go to ``nats.connect`` (``tls=ssl_context`` for a TLS server).
    """

    async def main() -> Any:
        client = await nats.connect(url, allow_reconnect=False, connect_timeout=5, **options)
        try:
            return await body(client)
        finally:
            await client.close()

    return await trio.to_thread.run_sync(asyncio.run, main())


class NatsPyPeer:
    """A nats-py coroutine running in the background of a trio test."""

    def __init__(self) -> None:
        self._ready = trio.Event()
        self._done = trio.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def ready(self) -> None:
        """Called from the nats-py thread: the peer is set up (subscribed...)."""
        trio.from_thread.run_sync(self._ready.set)

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        url: str,
        body: Callable[[Client, NatsPyPeer], Awaitable[Any]],
        **options: Any,
    ) -> NatsPyPeer:
        peer = cls()

        async def run() -> None:
            try:
                peer._result = await run_nats_py(url, lambda client: body(client, peer), **options)
            except BaseException as exc:
                peer._error = exc
            finally:
                peer._ready.set()
                peer._done.set()

        nursery.start_soon(run)
        await peer._ready.wait()
        if peer._error is not None:
            raise peer._error
        return peer

    async def result(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result
