"""Waiting for congested connections: the trio side of the core's flow control.

The sans-IO core decides who is congested and whom that holds back
(``MQTTConnection.congested`` / ``held_back()``); this module only waits. One ``Relief``
per core is the core's ``on_relief`` callback: every time a connection stops being
congested it wakes whoever waits, and each waiter checks whether it may go on.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from trio_mqtt.broker.core import BrokerCore


class Relief:
    """The event "a congested connection caught up", re-armed after every wake-up."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def __call__(self) -> None:
        self._event.set()

    async def wait_while(self, held_back: Callable[[], bool]) -> None:
        """Return once ``held_back()`` is False (at once if it already is)."""
        while held_back():
            if self._event.is_set():
                self._event = trio.Event()
            await self._event.wait()


def relief_for(core: BrokerCore) -> Relief:
    """The core's ``Relief``, installed as its ``on_relief`` callback on first use."""
    relief = core.on_relief
    if not isinstance(relief, Relief):
        relief = Relief()
        core.set_relief_callback(relief)
    return relief
