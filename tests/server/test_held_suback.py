"""The reader awaits a held SUBACK (``PendingSubscribe``), in virtual time.

The cluster's link says how long a SUBACK waits (here a plain sleep stands for NATS
confirming the node's new subscriptions); the reader reads nothing more from the client
meanwhile, the wait does not count towards the client's keep alive, and a CONNECT check
and a held SUBACK that come in one read are awaited one after the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio
import trio.testing
from helpers import V311, LocalOnlyLink, make_core, open_client, serving

from trio_mqtt.broker.core import AwaitedCheck
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Pingreq,
    Pingresp,
    Suback,
    Subscribe,
    SubscriptionRequest,
)

SUBACK_WAIT = 3.0
CONNECT_WAIT = 0.5


class SlowLink(LocalOnlyLink):
    """A cluster link whose every new subscription takes SUBACK_WAIT to confirm."""

    def subscribed(
        self, client_id: str, topic_filters: Sequence[str]
    ) -> Callable[[], Awaitable[None]] | None:
        return confirm


async def confirm() -> None:
    await trio.sleep(SUBACK_WAIT)


async def slow_connect_check() -> None:
    await trio.sleep(CONNECT_WAIT)


async def test_connect_check_then_held_suback_then_the_rest_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = make_core(trio.current_time)
    core.join_cluster(SlowLink(), lambda: None)
    core.add_connect_hook(lambda peer, connect: AwaitedCheck(slow_connect_check))
    async with serving(core) as serve:
        client = await open_client(serve, V311)
        start = trio.current_time()
        # keep alive 1 s (1.5 s without a packet): shorter than the SUBACK's wait
        await client.send_raw(
            encode(Connect("c", keep_alive=1), V311)
            + encode(Subscribe(1, (SubscriptionRequest("t", 0),)), V311)
            + encode(Pingreq(), V311)
        )
        with trio.fail_after(30):
            connack = await client.receive(10)
            assert isinstance(connack, Connack) and connack.reason_code == 0
            assert trio.current_time() - start == pytest.approx(CONNECT_WAIT, abs=0.001)
            assert await client.receive(10) == Suback(1, (0,))
            assert trio.current_time() - start == pytest.approx(
                CONNECT_WAIT + SUBACK_WAIT, abs=0.001
            )
            assert await client.receive(10) == Pingresp()
            # not closed for its keep alive: it counts from the SUBACK
            await trio.sleep(1)
            await client.send(Pingreq())
            assert await client.receive(10) == Pingresp()
            # and still counts: silence for 1.5 s closes the connection
            before = trio.current_time()
            assert await client.expect_closed(10) == []
            assert trio.current_time() - before <= 1.5 + 0.001
