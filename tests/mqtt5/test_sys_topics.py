"""``$SYS/broker/...`` statistics: retained, refreshed every ``sys_interval`` seconds."""

from __future__ import annotations

import logging

import pytest
import trio
from helpers import V5, V311, Client, FakeClock, make_core

from trio_mqtt._version import __version__
from trio_mqtt.broker.message import Message
from trio_mqtt.broker.sys_topics import publish_sys_topics, sys_values
from trio_mqtt.mqtt.packets import Properties, Puback, Publish
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.testing import open_test_broker

from .raw_helpers import raw_client, receive_publish, subscribe

TOPICS = {
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/retained messages/count",
    "$SYS/broker/clients/total",
    "$SYS/broker/publish/messages/dropped",
}


def test_values_from_the_core() -> None:
    clock = FakeClock(now=50.0)
    core = make_core(clock)
    core.set_retained(Message("r/1", b"x", retain=True))
    client = Client(core)
    client.connect("c")
    client.send(Publish("a", b"1"))
    # an offline persistent session that a QoS 0 message cannot reach: one drop
    away = Client(core)
    away.connect("away", properties=Properties(session_expiry_interval=600))
    away.subscribe_alone(("a", 0))
    away.drop()
    client.send(Publish("a", b"2"))
    clock.now += 12.7
    assert sys_values(core) == {
        "$SYS/broker/version": f"trio-mqtt {__version__}",
        "$SYS/broker/uptime": "12 seconds",
        "$SYS/broker/clients/connected": "1",
        "$SYS/broker/clients/total": "2",
        "$SYS/broker/messages/received": "2",
        "$SYS/broker/messages/sent": "0",
        "$SYS/broker/publish/messages/dropped": "1",
        "$SYS/broker/retained messages/count": "1",
    }


def test_published_retained_and_not_persisted() -> None:
    core = make_core()
    publish_sys_topics(core)
    for topic in TOPICS:
        stored = core.retained.get(topic)
        assert stored is not None
        assert stored.retain
    assert not (core.dirty_retained & TOPICS)


async def test_subscriber_gets_retained_values_then_updates() -> None:
    async with (
        open_test_broker(sys_interval=0.2) as broker,
        raw_client(broker.port, "watcher") as (client, _),
    ):
        await subscribe(client, ("$SYS/broker/#", 0))
        first: dict[str, bytes] = {}
        for _ in range(len(TOPICS)):
            packet = await receive_publish(client)
            assert packet.retain  # from the retained store [MQTT-3.3.1-8]
            first[packet.topic] = packet.payload
        assert set(first) == TOPICS
        assert first["$SYS/broker/version"] == f"trio-mqtt {__version__}".encode()
        await client.send(Publish("x/y", b"counted"))
        # the next rounds: live messages (retain 0 for a plain subscription)
        with trio.fail_after(3):
            while True:
                packet = await receive_publish(client)
                assert not packet.retain
                if packet.topic == "$SYS/broker/messages/received" and packet.payload == b"1":
                    break
        connected = broker.retained("$SYS/broker/clients/connected")
        assert connected is not None
        assert connected.payload == b"1"


async def test_wildcard_subscription_does_not_see_sys() -> None:
    # [MQTT-4.7.2-1]: a filter starting with a wildcard never matches a topic starting with $
    async with (
        open_test_broker(sys_interval=0.05) as broker,
        raw_client(broker.port, "all") as (client, _),
    ):
        await subscribe(client, ("#", 0))
        await trio.sleep(0.2)  # several $SYS rounds happen meanwhile
        await broker.publish("plain", b"p")
        packet = await receive_publish(client)
        assert packet.topic == "plain"


async def test_zero_interval_disables_sys() -> None:
    async with open_test_broker(sys_interval=0) as broker:
        await trio.sleep(0.05)
        assert broker.retained("$SYS/broker/version") is None


def test_clients_may_not_publish_to_sys(caplog: pytest.LogCaptureFixture) -> None:
    """$SYS belongs to the broker: a client's PUBLISH there is refused and not routed,
    retained or not (MQTT 5: 0x87; 3.1.1 has no way to say it: PUBACK, then dropped),
    and logged once per connection."""
    core = make_core()
    watcher = Client(core, V5)
    watcher.connect("watcher")
    watcher.subscribe_alone(("$SYS/#", 0))
    publish_sys_topics(core)
    assert len(watcher.packets()) == len(TOPICS)
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    spoofer = Client(core, V5)
    spoofer.connect("spoofer")
    for packet_id in (1, 2):
        spoofer.send(
            Publish("$SYS/broker/version", b"SPOOFED 0.0", qos=1, retain=True, packet_id=packet_id)
        )
    assert spoofer.packets() == [
        Puback(1, ReasonCode.NOT_AUTHORIZED),
        Puback(2, ReasonCode.NOT_AUTHORIZED),
    ]
    old_style = Client(core, V311)
    old_style.connect("old")
    old_style.send(Publish("$SYS/anything", b"x", qos=1, packet_id=7))
    old_style.send(Publish("$SYS", b"x"))
    assert old_style.packets() == [Puback(7)]

    assert watcher.packets() == []  # nothing was routed
    stored = core.retained.get("$SYS/broker/version")
    assert stored is not None and stored.payload == f"trio-mqtt {__version__}".encode()
    assert core.retained.get("$SYS/anything") is None
    refusals = [r.getMessage() for r in caplog.records if "may not publish" in r.getMessage()]
    assert len(refusals) == 2, refusals  # one for each client, not one per PUBLISH
    assert "'spoofer'" in refusals[0] and "'old'" in refusals[1]


def test_the_broker_itself_may_publish_to_sys() -> None:
    core = make_core()
    core.publish(Message("$SYS/broker/custom", b"from the broker", retain=True))
    stored = core.retained.get("$SYS/broker/custom")
    assert stored is not None and stored.payload == b"from the broker"
