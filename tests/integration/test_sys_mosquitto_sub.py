"""``$SYS/#`` read by Debian's ``mosquitto_sub``, as a dashboard made for mosquitto does.

A broker with a short ``sys_interval`` sees some traffic; then ``mosquitto_sub -t
'$SYS/#' -C N`` gets the retained statistics, whose names and values are checked. Without
mosquitto-clients the test skips (or fails under TRIO_MQTT_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import re

import trio
from helpers import wait_until
from mqtt5.raw_helpers import raw_client, receive_publish, subscribe
from mqtt5.test_sys_topics import TOPICS
from tools import require_tool

from trio_mqtt._version import __version__
from trio_mqtt.mqtt.packets import Puback, Publish
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

PROCESS_TIMEOUT = 10.0


def sys_value(broker: Broker, name: str) -> bytes | None:
    message = broker.retained(f"$SYS/broker/{name}")
    return None if message is None else message.payload


async def test_mosquitto_sub_reads_the_sys_topics() -> None:
    program = require_tool("mosquitto_sub")
    async with (
        open_test_broker(sys_interval=0.1) as broker,
        raw_client(broker.port, "reader") as (reader, _),
        raw_client(broker.port, "writer") as (writer, _),
    ):
        await subscribe(reader, ("t/#", 1))
        for packet_id in (1, 2):
            await writer.send(Publish("t/a", b"0123456789", qos=1, packet_id=packet_id))
            assert isinstance(await writer.receive(), Puback)
        await writer.send(Publish("keep/1", b"0123456789", retain=True))
        for _ in range(2):
            await receive_publish(reader)
        # a $SYS round after the traffic
        await wait_until(lambda: sys_value(broker, "publish/messages/received") == b"3")
        await wait_until(lambda: sys_value(broker, "publish/bytes/sent") == b"20")

        argv = [program, "-h", "127.0.0.1", "-p", str(broker.port), "-V", "311"]
        argv += ["-t", "$SYS/#", "-C", str(len(TOPICS)), "-F", "%t\t%p", "-W", "5"]
        with trio.fail_after(PROCESS_TIMEOUT):
            result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
    lines = result.stdout.decode().splitlines()
    values = dict(line.split("\t", 1) for line in lines)
    assert set(values) == TOPICS, sorted(set(values) ^ TOPICS)
    broker_values = {key.removeprefix("$SYS/broker/"): value for key, value in values.items()}
    assert broker_values["version"] == f"trio-mqtt {__version__}"
    assert re.fullmatch(r"\d+ seconds", broker_values["uptime"])
    # what the traffic did (counted before mosquitto_sub came, which only reads)
    assert broker_values["publish/messages/received"] == "3"
    assert broker_values["publish/bytes/received"] == "30"
    assert broker_values["retained messages/count"] == "1"  # keep/1, not the $SYS ones
    assert broker_values["shared_subscriptions/count"] == "0"
    assert broker_values["clients/expired"] == "0"
    assert broker_values["clients/disconnected"] == "0"
    # mosquitto_sub may be in the latest round or not
    assert broker_values["clients/connected"] in {"2", "3"}
    assert broker_values["subscriptions/count"] in {"1", "2"}
    assert int(broker_values["publish/messages/sent"]) >= 2
    assert int(broker_values["publish/bytes/sent"]) >= 20
    assert int(broker_values["clients/maximum"]) >= 2
    assert int(broker_values["messages/received"]) >= 6  # 2 CONNECT, SUBSCRIBE, 3 PUBLISH
    assert int(broker_values["bytes/received"]) > 30
    assert int(broker_values["heap/maximum"]) > 1_000_000
    for window in ("1min", "5min", "15min"):
        assert float(broker_values[f"load/publish/received/{window}"]) > 0
        assert re.fullmatch(r"\d+\.\d\d", broker_values[f"load/bytes/sent/{window}"])
