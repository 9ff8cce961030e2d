"""``$SYS/broker/...`` statistics: retained, refreshed every ``sys_interval`` seconds."""

from __future__ import annotations

import logging
import math

import pytest
import trio
from helpers import V5, V311, Client, FakeClock, make_core

from trio_mqtt._version import __version__
from trio_mqtt.broker.message import Message
from trio_mqtt.broker.sys_topics import LoadAverage, SysTopics, publish_sys_topics, sys_values
from trio_mqtt.mqtt.packets import Properties, Puback, Publish
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.testing import open_test_broker

from .raw_helpers import raw_client, receive_publish, subscribe

LOADS = (
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "connections",
    "sockets",
)
TOPICS = {
    f"$SYS/broker/{name}"
    for name in (
        "version",
        "uptime",
        "clients/connected",
        "clients/active",
        "clients/disconnected",
        "clients/inactive",
        "clients/total",
        "clients/maximum",
        "clients/expired",
        "messages/received",
        "messages/sent",
        "messages/inflight",
        "publish/messages/received",
        "publish/messages/sent",
        "publish/messages/dropped",
        "publish/bytes/received",
        "publish/bytes/sent",
        "bytes/received",
        "bytes/sent",
        "retained messages/count",
        "store/messages/count",
        "store/messages/bytes",
        "subscriptions/count",
        "shared_subscriptions/count",
        "heap/maximum",
        *(f"load/{load}/{window}" for load in LOADS for window in ("1min", "5min", "15min")),
    )
}


def ewma(count: int, elapsed: float, window: float, start: float = 0.0) -> str:
    """mosquitto's load average after one update: the rate per minute, blended in."""
    rate = count * 60.0 / elapsed
    return f"{rate + math.exp(-elapsed / window) * (start - rate):.2f}"


def test_values_from_the_core() -> None:
    clock = FakeClock(now=50.0)
    core = make_core(clock)
    sys_topics = SysTopics(started=50.0, memory=lambda: 12345)
    core.set_retained(Message("r/1", b"xyz", retain=True))
    client = Client(core)
    client.connect("c")
    client.send(Publish("a", b"1"))
    # an offline persistent session that a QoS 0 message cannot reach: one drop
    away = Client(core)
    away.connect("away", properties=Properties(session_expiry_interval=600))
    away.subscribe_alone(("a", 0), ("$share/g/b", 1))
    away.drop()
    client.send(Publish("a", b"2"))
    client.send(Publish("b", b"4567", qos=1, packet_id=1))  # queued for "away"
    assert client.packets() == [Puback(1)]
    sys_topics.publish(core)  # its own messages are not counted as retained ones
    clock.now += 12.7
    values = sys_topics.values(core)
    assert set(values) == TOPICS
    stats = core.stats
    assert stats.bytes_received > 0 and stats.bytes_sent == 0  # nothing written yet
    loads = {key: value for key, value in values.items() if "/load/" in key}
    assert {key: value for key, value in values.items() if key not in loads} == {
        "$SYS/broker/version": f"trio-mqtt {__version__}",
        "$SYS/broker/uptime": "12 seconds",
        "$SYS/broker/clients/connected": "1",
        "$SYS/broker/clients/active": "1",
        "$SYS/broker/clients/disconnected": "1",
        "$SYS/broker/clients/inactive": "1",
        "$SYS/broker/clients/total": "2",
        "$SYS/broker/clients/maximum": "1",  # "away" had left at the first publish()
        "$SYS/broker/clients/expired": "0",
        # CONNECT, 3 PUBLISH; CONNECT, SUBSCRIBE
        "$SYS/broker/messages/received": "6",
        # CONNACK, PUBACK; CONNACK, SUBACK
        "$SYS/broker/messages/sent": "4",
        "$SYS/broker/messages/inflight": "0",
        "$SYS/broker/publish/messages/received": "3",
        "$SYS/broker/publish/messages/sent": "0",
        "$SYS/broker/publish/messages/dropped": "1",
        "$SYS/broker/publish/bytes/received": "6",
        "$SYS/broker/publish/bytes/sent": "0",
        "$SYS/broker/bytes/received": str(stats.bytes_received),
        "$SYS/broker/bytes/sent": "0",
        "$SYS/broker/retained messages/count": "1",
        # r/1 and the message queued for "away"
        "$SYS/broker/store/messages/count": "2",
        "$SYS/broker/store/messages/bytes": str(3 + core.sessions["away"].pending_bytes),
        "$SYS/broker/subscriptions/count": "2",
        "$SYS/broker/shared_subscriptions/count": "1",
        "$SYS/broker/heap/maximum": "12345",
    }
    # the first publish() was at the start: the averages blend in the 12.7 s since
    assert loads["$SYS/broker/load/messages/received/1min"] == ewma(6, 12.7, 60)
    assert loads["$SYS/broker/load/publish/received/5min"] == ewma(3, 12.7, 300)
    assert loads["$SYS/broker/load/connections/15min"] == ewma(2, 12.7, 900)
    assert loads["$SYS/broker/load/sockets/1min"] == ewma(2, 12.7, 60)
    assert loads["$SYS/broker/load/publish/sent/1min"] == "0.00"


def test_one_off_values_and_clients_maximum() -> None:
    clock = FakeClock(now=10.0)
    core = make_core(clock)
    clock.now += 5
    values = sys_values(core)  # a one-off: its averages cover the whole uptime
    assert values["$SYS/broker/uptime"] == "5 seconds"
    assert values["$SYS/broker/load/messages/received/1min"] == "0.00"
    sys_topics = SysTopics(started=10.0)
    first, second = Client(core), Client(core)
    first.connect("one")
    second.connect("two")
    assert sys_topics.values(core)["$SYS/broker/clients/maximum"] == "2"
    second.drop()
    later = sys_topics.values(core)
    assert later["$SYS/broker/clients/maximum"] == "2"  # the most at once, kept
    assert later["$SYS/broker/clients/connected"] == "1"
    assert later["$SYS/broker/clients/disconnected"] == "0"  # a clean session ends
    assert later["$SYS/broker/load/sockets/1min"] == ewma(2, 5, 60)


def test_expired_sessions_are_counted() -> None:
    clock = FakeClock()
    core = make_core(clock)
    client = Client(core)
    client.connect("brief", properties=Properties(session_expiry_interval=5))
    client.drop()
    assert sys_values(core)["$SYS/broker/clients/disconnected"] == "1"
    clock.now += 6
    core.tick()
    values = sys_values(core)
    assert values["$SYS/broker/clients/expired"] == "1"
    assert values["$SYS/broker/clients/disconnected"] == "0"


def test_load_average_is_mosquittos() -> None:
    """rate per minute since the last update, blended with exp(-elapsed / window)."""
    load = LoadAverage(last_time=100.0)
    assert load.update(100.0, 0) == [0.0, 0.0, 0.0]  # no time passed: nothing to blend
    # 50 in 10 s = 300 a minute; 1 min: 300 * (1 - e^(-1/6))
    one, five, fifteen = load.update(110.0, 50)
    assert one == pytest.approx(300 * (1 - math.exp(-10 / 60)))
    assert one == pytest.approx(46.0554, abs=1e-4)
    assert five == pytest.approx(300 * (1 - math.exp(-10 / 300)))
    assert fifteen == pytest.approx(300 * (1 - math.exp(-10 / 900)))


def test_load_average_converges_and_decays() -> None:
    load = LoadAverage(last_time=0.0)
    count = 0
    for step in range(1, 7):  # 720 a minute for one minute, in updates 10 s apart
        count += 120
        averages = load.update(step * 10.0, count)
    # steps of a steady rate compound to one step: 1 - e^(-t / window) of the rate
    assert averages[0] == pytest.approx(720 * (1 - math.exp(-1)))
    assert averages[1] == pytest.approx(720 * (1 - math.exp(-60 / 300)))
    assert averages[2] == pytest.approx(720 * (1 - math.exp(-60 / 900)))
    for step in range(1, 91):  # then 15 minutes of nothing
        averages = load.update(60.0 + step * 10.0, count)
    assert averages[0] == pytest.approx(720 * (1 - math.exp(-1)) * math.exp(-15))
    assert averages[0] < 0.01
    # uneven intervals: the same as one update over the whole time
    uneven, even = LoadAverage(last_time=0.0), LoadAverage(last_time=0.0)
    uneven.update(3.0, 0)
    uneven.update(20.0, 0)
    assert uneven.update(37.0, 0) == even.update(37.0, 0) == [0.0, 0.0, 0.0]


def test_published_retained_and_not_persisted() -> None:
    core = make_core()
    core.record_changes()  # (a persistence store is attached)
    publish_sys_topics(core)
    core.publish(Message("r/kept", b"1", qos=0, retain=True))
    for topic in TOPICS:
        stored = core.retained.get(topic)
        assert stored is not None
        assert stored.retain
    _, topics = core.take_changes()
    assert topics == {"r/kept"}  # a client's retained message is saved, $SYS ones never


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
                if (
                    packet.topic == "$SYS/broker/publish/messages/received"
                    and packet.payload == b"1"
                ):
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
