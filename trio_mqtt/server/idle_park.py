"""IdlePark: the sockets of quiet connections, watched by one task instead of one each.

Why: a connection's task, waiting for its client, keeps about 3.5 KiB of Trio's and
Python's objects alive (the task, its coroutine frames, the ``wait_readable`` chain),
half of what an idle plain-TCP connection costs. Most of a broker's connections are
idle most of the time: a sensor that publishes once a minute, a subscriber that only
receives.

What: a reader whose client has been quiet for a while (``server/connection.py``
decides when) ``park``s its socket here and its task ends; the connection's state (the
state machine, its output, its stream) stays where it was. One task (``_run``, in the
connections' nursery, only while some socket is parked) waits on an epoll set of its
own holding every parked socket, registered in Trio's loop as one descriptor. When a
socket becomes readable (bytes, EOF or an error), ``serve(connection)`` may handle
it in place, with no task (a connection's handshake: ``server/connection.py``,
``start_parked``), and keep it parked; otherwise it is taken out of the set and its
connection gets a task again: ``resume(connection)`` starts in the nursery. Whatever
else needs a parked reader back (its keep alive ran out, a writer ended the
connection) calls ``unpark``. Writes never need the reader: deliveries to a parked
subscriber are written as before (the publisher's reader, or a writer task).

Cancelled (the connections' nursery at the end of a shutdown), the task resumes every
parked connection in that nursery: they start cancelled, and close as any cancelled
connection does. The set is Linux's epoll, as Trio's own loop on Linux; elsewhere
``supported`` is False and readers never park.
"""

from __future__ import annotations

import select
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

_C = TypeVar("_C")

#: Whether sockets can park on this platform (an epoll set; Linux).
supported = hasattr(select, "epoll")


class IdlePark(Generic[_C]):
    """The parked sockets of one nursery's connections, and their connections."""

    __slots__ = (
        "__weakref__",
        "_epoll",
        "_nursery",
        "_parked",
        "_resume",
        "_running",
        "_serve",
        "_wait",
    )

    def __init__(
        self,
        nursery: trio.Nursery,
        resume: Callable[[_C], Awaitable[None]],
        serve: Callable[[_C], bool] | None = None,
    ) -> None:
        # weakly: the park is the value of a weak mapping keyed by its nursery
        self._nursery = weakref.ref(nursery)
        self._resume = resume
        self._serve = serve
        self._parked: dict[int, _C] = {}
        self._epoll: select.epoll | None = None  # while the task runs (or is to)
        self._running = False
        self._wait: trio.CancelScope | None = None  # the task's wait, while it waits

    def __len__(self) -> int:
        """How many sockets are parked now."""
        return len(self._parked)

    def park(self, fd: int, connection: _C) -> None:
        """The reader of ``connection`` leaves; ``resume(connection)`` runs when ``fd``
        becomes readable, or when ``unpark(fd)`` is called."""
        epoll = self._epoll
        if epoll is None:
            epoll = self._epoll = select.epoll()
        epoll.register(fd, select.EPOLLIN)
        self._parked[fd] = connection
        if not self._running:
            nursery = self._nursery()
            assert nursery is not None  # (a connection in it is parking)
            self._running = True
            nursery.start_soon(self._run)

    def unpark(self, fd: int) -> None:
        """Resume the connection parked on ``fd`` now (nothing if none is)."""
        connection = self._parked.pop(fd, None)
        if connection is None:
            return
        self._take_out(fd, connection)
        if not self._parked and self._wait is not None:
            self._wait.cancel()  # nothing left to watch: the task ends

    def _take_out(self, fd: int, connection: _C) -> None:
        assert self._epoll is not None
        self._epoll.unregister(fd)
        nursery = self._nursery()
        assert nursery is not None  # (its task, running, keeps it open)
        nursery.start_soon(self._resume, connection)

    async def _run(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        parked = self._parked
        try:
            while parked:
                with trio.CancelScope() as self._wait:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                self._wait = None
                serve = self._serve
                for fd, _ in epoll.poll(0):
                    connection = parked.get(fd)
                    if connection is None:
                        continue  # (unparked since the poll)
                    if serve is not None and serve(connection):
                        continue  # served in place: it stays parked
                    if parked.get(fd) is connection:  # (serving may have unparked it)
                        del parked[fd]
                        self._take_out(fd, connection)
        finally:
            self._wait = None
            # cancelled: every connection still parked closes in a task of its own
            while parked:
                self._take_out(*parked.popitem())
            self._epoll = None
            self._running = False
            epoll.close()


_PARKS: weakref.WeakKeyDictionary[trio.Nursery, IdlePark[object]] = weakref.WeakKeyDictionary()


def idle_park_for(
    nursery: trio.Nursery,
    resume: Callable[[_C], Awaitable[None]],
    serve: Callable[[_C], bool] | None = None,
) -> IdlePark[_C]:
    """The park of the connections that run in ``nursery`` (its task runs there too);
    ``resume`` gives a parked connection its task back, ``serve`` (if given) may answer
    a readable one in place first, True if it stays parked (the same for every call)."""
    park = _PARKS.get(nursery)
    if park is None:
        park = _PARKS[nursery] = IdlePark(nursery, resume, serve)  # type: ignore[arg-type]
    return park  # type: ignore[return-value]


def parked_in(nursery: trio.Nursery) -> int:
    """How many sockets of ``nursery``'s connections are parked now (``/metrics``)."""
    park = _PARKS.get(nursery)
    return 0 if park is None else len(park)
