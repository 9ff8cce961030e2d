"""KeepAliveWatch: the CONNECT and keep-alive timeouts of many connections, one task.

Why: a connection's reader used to wait for its client inside a cancel scope of its
own whose deadline was the connection's timeout. Each such scope costs an idle
connection about 0.8 KiB (the scope, its cancel status with two sets, its entry in
Trio's deadline heap) and a short-lived one about a tenth of its CPU
(``python -m benchmarks.trio_floor``).

What: a reader about to wait for its socket asks its connection when it must hear
from the client (``MQTTConnection.next_deadline``) and ``arm``s the watch with it. One
task (``_run``, in the connections' nursery, only while some connection is armed)
sleeps until the earliest deadline, asks the connection again (packets since may have
moved it) and, if it has come while the reader still waits, ``ring``s it: the reader
is woken with ``trio.ClosedResourceError`` by ``trio.lowlevel.notify_closing`` on its
socket, and lets the connection decide (``handle_timer``: close, or a packet came in
time). A reader that is not waiting for its socket when its deadline comes arms the
watch again before its next wait. Rung only where a wait for the socket is all that
stands between the reader and its deadline (plain TCP, TLS on a socket); other
transports wait under a cancel scope per read (``server/connection.py``).

Heap entries are lists, ``[deadline, sequence, watched]``: a re-armed or disarmed
connection's old entry is cut loose (its ``watched`` set to None), so it holds no
reference to the connection, and entries cut loose are pruned once they outnumber the
live ones.
"""

from __future__ import annotations

import heapq
import itertools
import math
import weakref
from typing import Any, Protocol

import trio

# Entries cut loose that may stay in the heap besides the live ones, before a prune.
PRUNE_SLACK = 64

# A heap entry: [deadline: float, sequence: int, watched: Watched | None]
_Entry = list[Any]


class Watched(Protocol):
    """What the watch needs of a connection's reader (``server/connection._Output``)."""

    # the watch's own: this reader's live heap entry, None when not armed
    keep_alive_entry: _Entry | None
    idle: bool  # the reader waits for its socket now

    def deadline(self) -> float:
        """When the connection must hear from its client (Trio's clock; inf: never)."""
        ...

    def ring(self) -> None:
        """The deadline came while the reader waited: wake it."""
        ...


class KeepAliveWatch:
    """The armed readers of one nursery's connections, earliest deadline first."""

    __slots__ = ("__weakref__", "_heap", "_live", "_nursery", "_running", "_sequence", "_sleep")

    def __init__(self, nursery: trio.Nursery) -> None:
        # weakly: the watch is the value of a weak mapping keyed by its nursery
        self._nursery = weakref.ref(nursery)
        self._heap: list[_Entry] = []
        self._live = 0  # armed readers: the entries not cut loose
        self._sequence = itertools.count()  # ties: never compare the readers themselves
        self._running = False
        self._sleep: trio.CancelScope | None = None  # the task's sleep, while it sleeps

    @property
    def armed(self) -> int:
        """How many readers are armed now."""
        return self._live

    def arm(self, watched: Watched, deadline: float) -> None:
        """``watched``'s reader waits for its client until ``deadline`` at the latest.

        Cheap when called again before every wait: nothing happens unless ``deadline``
        comes before the reader's entry (its entry asks ``deadline()`` again when due).
        """
        entry = watched.keep_alive_entry
        if entry is not None:
            if entry[0] <= deadline:
                return
            entry[2] = None  # replaced by an earlier one
        elif deadline == math.inf:
            return
        else:
            self._live += 1
        entry = watched.keep_alive_entry = [deadline, next(self._sequence), watched]
        heapq.heappush(self._heap, entry)
        if not self._running:
            nursery = self._nursery()
            assert nursery is not None  # (a connection in it is arming the watch)
            self._running = True
            nursery.start_soon(self._run)
        elif self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline
        self._prune_if_needed()

    def disarm(self, watched: Watched) -> None:
        """``watched``'s connection has ended (or waits for no deadline any more)."""
        entry = watched.keep_alive_entry
        if entry is None:
            return
        entry[2] = None
        watched.keep_alive_entry = None
        self._live -= 1
        if not self._live and self._sleep is not None:
            self._sleep.cancel()  # nothing left to watch: the task ends
        self._prune_if_needed()

    def _prune_if_needed(self) -> None:
        heap = self._heap
        if len(heap) > 2 * self._live + PRUNE_SLACK:
            heap[:] = [entry for entry in heap if entry[2] is not None]
            heapq.heapify(heap)

    async def _run(self) -> None:
        heap = self._heap
        try:
            while self._live:
                with trio.CancelScope(deadline=heap[0][0]) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    entry = heapq.heappop(heap)
                    watched: Watched | None = entry[2]
                    if watched is None:
                        continue  # cut loose
                    watched.keep_alive_entry = None
                    self._live -= 1
                    deadline = watched.deadline()
                    if deadline > now:
                        self.arm(watched, deadline)  # packets came: not yet
                    elif watched.idle:
                        watched.ring()
                    # else its reader is busy, or waits for the broker (an offloaded
                    # check, backpressure): it arms the watch again before it next waits
        finally:
            self._sleep = None
            self._running = False


_WATCHES: weakref.WeakKeyDictionary[trio.Nursery, KeepAliveWatch] = weakref.WeakKeyDictionary()


def keep_alive_watch_for(nursery: trio.Nursery) -> KeepAliveWatch:
    """The watch of the connections that run in ``nursery`` (its task runs there too)."""
    watch = _WATCHES.get(nursery)
    if watch is None:
        watch = _WATCHES[nursery] = KeepAliveWatch(nursery)
    return watch
