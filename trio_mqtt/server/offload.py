"""Running the core's offloaded checks (password hashes) in worker threads.

A connect hook whose decision is slow returns an ``OffloadedCheck`` (PBKDF2 takes a
tenth of a second of CPU on purpose); the connection's reader task runs its ``work``
here, in a worker thread, and hands the answer back to the state machine. hashlib
releases the GIL while it hashes, so the event loop keeps serving everyone else.

At most ``max(1, cores - 1)`` checks run at once (one core stays with the event loop),
and at most ``MAX_WAITING`` wait for their turn: a flood of CONNECTs with wrong
passwords gets "server busy" at once instead of queueing minutes of hashing. A check
still waiting when its client's connect_timeout runs out is never run.
"""

from __future__ import annotations

import os

import trio

from trio_mqtt.broker.core import AwaitedCheck, OffloadedCheck
from trio_mqtt.mqtt.reason_codes import ReasonCode

#: Checks that may wait for a thread at once (beyond that: 0x89 Server busy).
MAX_WAITING = 100

_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("offload_limiter")


def _limiter() -> trio.CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(max(1, (os.cpu_count() or 2) - 1))
        _LIMITER.set(limiter)
        return limiter


async def run_offloaded(check: OffloadedCheck | AwaitedCheck) -> ReasonCode | None:
    """Run ``check.work`` in a worker thread; its answer, or 0x89 if too many wait.

    An ``AwaitedCheck`` (asking another node) is awaited here, in the reader task.
    """
    if isinstance(check, AwaitedCheck):
        return await check.wait()
    limiter = _limiter()
    if limiter.statistics().tasks_waiting >= MAX_WAITING:
        return ReasonCode.SERVER_BUSY
    return await trio.to_thread.run_sync(check.work, limiter=limiter, abandon_on_cancel=True)
