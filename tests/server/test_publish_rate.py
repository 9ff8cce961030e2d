"""max_publish_rate / max_publish_bytes_rate: a client over its budget is not read from
for a while (back-pressure): nothing it sent is lost, and the pause does not count as
its silence."""

from __future__ import annotations

import pytest
import trio
from helpers import V311, Client, FakeClock, make_core
from rawclient import RawClient

from trio_mqtt.config import parse_config
from trio_mqtt.errors import ConfigError
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import Publish, Suback, Subscribe, SubscriptionRequest
from trio_mqtt.server.connection import RECEIVE_SIZE
from trio_mqtt.testing import open_test_broker


def test_a_client_over_its_message_budget_is_paused_and_loses_nothing() -> None:
    clock = FakeClock(100.0)
    core = make_core(clock, max_publish_rate=10)
    subscriber = Client(core, V311)
    subscriber.connect("sub")
    subscriber.subscribe_alone(("t", 0))
    publisher = Client(core, V311)
    publisher.connect("pub", keep_alive=10)
    assert publisher.conn.publish_pause() == 0.0
    deadline = publisher.conn.next_deadline()

    # 30 messages in one read: 10 a second with a burst of 10, so 2 s of debt
    publisher.conn.receive_data(b"".join(encode(Publish("t", b"m"), V311) for _ in range(30)))
    assert len(subscriber.publishes()) == 30  # what was read is routed: nothing dropped
    assert publisher.conn.publish_pause() == 2.0
    assert publisher.conn.next_deadline() == deadline + 2.0  # the pause is ours, not its
    clock.now += 2.0
    assert publisher.conn.publish_pause() == 0.0


def test_the_bytes_budget_counts_payload_bytes() -> None:
    clock = FakeClock(100.0)
    core = make_core(clock, max_publish_bytes_rate=1000)
    publisher = Client(core, V311)
    publisher.connect("pub")
    publisher.conn.receive_data(encode(Publish("t", bytes(3000)), V311))
    assert publisher.conn.publish_pause() == 2.0  # 3,000 bytes, 1,000 of burst, 1,000/s


def test_without_limits_nothing_pauses() -> None:
    core = make_core(FakeClock(100.0))
    publisher = Client(core, V311)
    publisher.connect("pub")
    publisher.conn.receive_data(b"".join(encode(Publish("t", b"m"), V311) for _ in range(1000)))
    assert publisher.conn.publish_pause() == 0.0


async def test_a_fast_publisher_is_held_to_its_rate_over_a_real_socket() -> None:
    """The budget is charged per read (up to RECEIVE_SIZE bytes), then reading waits: the
    average rate is held, a burst of up to one read gets through at once."""
    rate, count = 1000, 3000
    messages = [encode(Publish("t", b"%04d" % n + bytes(100)), V311) for n in range(count)]
    per_read = RECEIVE_SIZE // len(messages[0]) + 1
    async with open_test_broker(max_publish_rate=rate) as broker:
        port = broker.addresses()[0].port
        subscriber = await RawClient.open(port, V311)
        publisher = await RawClient.open(port, V311)
        await subscriber.connect("sub", keep_alive=0)
        await subscriber.send(Subscribe(1, (SubscriptionRequest("t", 0),)))
        assert isinstance(await subscriber.receive(), Suback)
        # keep alive 1: pauses adding up to 1.5 s would end it if they counted as silence
        await publisher.connect("pub", keep_alive=1)
        started = trio.current_time()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher.send_raw, b"".join(messages))
                received = []
                while len(received) < count:
                    packet = await subscriber.receive()
                    assert isinstance(packet, Publish)
                    received.append(packet.payload[:4])
        took = trio.current_time() - started
        assert received == [b"%04d" % n for n in range(count)]  # all, in order
        # what was charged beyond the burst and the last read: without the limit, ms
        assert took >= (count - rate - per_read) / rate
        assert broker.core.sessions["pub"].connection is not None  # still connected
        await subscriber.aclose()
        await publisher.aclose()


def test_the_rates_are_read_from_the_broker_table_and_checked() -> None:
    config = parse_config({"broker": {"max_publish_rate": 50, "max_publish_bytes_rate": 4096}})
    assert (config.max_publish_rate, config.max_publish_bytes_rate) == (50, 4096)
    with pytest.raises(ConfigError, match=r"broker\.toml.*broker\.max_publish_rate"):
        parse_config({"broker": {"max_publish_rate": -1}}, file="broker.toml")
