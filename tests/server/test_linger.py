"""The last word arrives: after a server-sent DISCONNECT the connection lingers.

The broker shuts its write side and reads (and discards) what the client still sends, up
to LINGER_TIMEOUT / LINGER_BYTES, before it closes: closing a socket with unread input
makes the kernel answer with RST, which can destroy the DISCONNECT before the client
reads it.
"""

from __future__ import annotations

import trio
import trio.testing
from helpers import V5, make_core, open_client, serving
from rawclient import RawClient

from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import Disconnect, Pingreq, Publish, Pubrec
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.server.connection import LINGER_TIMEOUT
from trio_mqtt.testing import open_test_broker

# Two QoS 2 messages in flight with receive_maximum = 1: DISCONNECT 0x93.
TOO_MANY = encode(Publish("t", b"1", qos=2, packet_id=1), V5) + encode(
    Publish("t", b"2", qos=2, packet_id=2), V5
)
PING = encode(Pingreq(), V5)


async def test_a_client_still_sending_reads_the_disconnect_over_tcp() -> None:
    async with open_test_broker(receive_maximum=1) as broker:
        client = await RawClient.open(broker.port, V5)
        try:
            await client.connect("eager")
            # the violation, then more than the broker reads at once: it never reads the
            # rest before it closes, unless it lingers
            await client.send_raw(TOO_MANY + PING * 50_000)
            await trio.sleep(0.3)  # the broker has sent its DISCONNECT by now
            # and the client, busy writing, has not read it yet: it writes on (as paho
            # does), which fails with a broken pipe once the broker has closed
            for _ in range(3):
                await client.send_raw(PING)
                await trio.sleep(0.05)
            packets = await client.expect_closed()
        finally:
            await client.aclose()
    assert [(type(p), getattr(p, "reason_code", None)) for p in packets] == [
        (Pubrec, ReasonCode.NO_MATCHING_SUBSCRIBERS),
        (Disconnect, ReasonCode.RECEIVE_MAXIMUM_EXCEEDED),
    ]


async def send_until_closed(client: RawClient, chunk: bytes) -> float:
    """Send ``chunk`` every 10 ms until the server closes; how long that took."""
    start = trio.current_time()
    try:
        while True:
            await client.send_raw(chunk)
            await trio.sleep(0.01)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return trio.current_time() - start


async def disconnected(client: RawClient) -> None:
    """Connect, exceed Receive Maximum, read PUBREC, DISCONNECT 0x93 and the EOF."""
    await client.connect("eager")
    await client.send_raw(TOO_MANY)
    packets = await client.expect_closed()  # the server's EOF: it shut its write side
    assert [type(p) for p in packets] == [Pubrec, Disconnect]


async def test_a_client_that_never_stops_sending_is_closed_after_linger_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = make_core(trio.current_time, receive_maximum=1)
    async with serving(core) as serve:
        client = await open_client(serve, V5)
        await disconnected(client)
        elapsed = await send_until_closed(client, PING)  # 200 bytes a second
        assert LINGER_TIMEOUT <= elapsed < LINGER_TIMEOUT + 0.05


async def test_a_client_that_sends_a_flood_is_closed_after_linger_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = make_core(trio.current_time, receive_maximum=1)
    async with serving(core) as serve:
        client = await open_client(serve, V5)
        await disconnected(client)
        # 16 KiB every 10 ms: LINGER_BYTES (64 KiB) come long before LINGER_TIMEOUT
        elapsed = await send_until_closed(client, PING * 8192)
        assert 0.02 <= elapsed < 0.1
