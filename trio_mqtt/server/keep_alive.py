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
transports wait under a cancel scope per read (``server/connection.py``). The
deadline a plain-TCP reader gives is also the time to park it (``server/idle_park.py``)
if that comes first; what a ring means is the reader's to decide (``ring()``).

Heap entries are lists, ``[deadline, sequence, watched]``, and the watch's alone: the
reader keeps the entry ``arm`` returns, as a token for its next ``arm`` and its
``disarm``, and the watch never writes to the reader. An entry whose deadline came is
pushed again with a later one while its reader is still armed, or cut loose (its
``watched`` set to None) when it rings or its reader is busy; a re-armed or disarmed
reader's old entry is cut loose too, so it holds no reference to the connection, and
entries cut loose are pruned once they outnumber the live ones.
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

# A heap entry: [deadline: float, sequence: int, watched: Watched | None (cut loose)]
Entry = list[Any]


class Watched(Protocol):
    """What the watch needs of a connection's reader (``server/connection._Output``)."""

    idle: bool  # the reader waits for its socket now

    def deadline(self) -> float:
        """When the reader must be rung (Trio's clock; inf: never)."""
        ...

    def ring(self) -> None:
        """The deadline came while the reader waited: wake it (or, parked, resume it)."""
        ...


class KeepAliveWatch:
    """The armed readers of one nursery's connections, earliest deadline first."""

    __slots__ = ("__weakref__", "_heap", "_live", "_nursery", "_running", "_sequence", "_sleep")

    def __init__(self, nursery: trio.Nursery) -> None:
        # weakly: the watch is the value of a weak mapping keyed by its nursery
        self._nursery = weakref.ref(nursery)
        self._heap: list[Entry] = []
        self._live = 0  # armed readers: the entries not cut loose
        self._sequence = itertools.count()  # ties: never compare the readers themselves
        self._running = False
        self._sleep: trio.CancelScope | None = None  # the task's sleep, while it sleeps

    @property
    def armed(self) -> int:
        """How many readers are armed now."""
        return self._live

    def arm(self, entry: Entry | None, watched: Watched, deadline: float) -> Entry | None:
        """``watched``'s reader waits for its client until ``deadline`` at the latest;
        ``entry`` is what the reader's last ``arm`` returned (None at first). Returns the
        reader's entry now, to give to the next ``arm`` and to ``disarm``.

        Cheap when called again before every wait: nothing happens unless ``deadline``
        comes before the reader's entry (its entry asks ``deadline()`` again when due).
        """
        if entry is not None and entry[2] is not None:
            if entry[0] <= deadline:
                return entry
            entry[2] = None  # replaced by an earlier one
        elif deadline == math.inf:
            return None
        else:
            self._live += 1
        entry = [deadline, next(self._sequence), watched]
        self._push(entry)
        return entry

    def _push(self, entry: Entry) -> None:
        deadline = entry[0]
        heapq.heappush(self._heap, entry)
        if not self._running:
            nursery = self._nursery()
            assert nursery is not None  # (a connection in it is arming the watch)
            self._running = True
            nursery.start_soon(self._run)
        elif self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline
        self._prune_if_needed()

    def disarm(self, entry: Entry | None) -> None:
        """The connection whose reader's last ``arm`` returned ``entry`` has ended."""
        if entry is None or entry[2] is None:
            return
        entry[2] = None
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
                    deadline = watched.deadline()
                    if deadline > now:
                        # packets came: not yet (the same entry, the reader's token)
                        entry[0] = deadline
                        entry[1] = next(self._sequence)
                        self._push(entry)
                        continue
                    entry[2] = None
                    self._live -= 1
                    if watched.idle:
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
