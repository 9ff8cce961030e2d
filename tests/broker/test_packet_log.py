"""``--log-level debug``: a line for every packet received and sent (mosquitto ``-v``).

With DEBUG off the connection must not even call into the packet log (it checks a flag
once per read and per write batch); the instruction counts of the hot path are in the
commit message and the changelog.
"""

from __future__ import annotations

import logging

import pytest
from helpers import V5, V311, Client, make_core

from trio_mqtt.broker import mqtt_connection
from trio_mqtt.broker.packet_log import split_frames
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import Pingreq, Properties, Puback, Publish, Will

LOGGER = "trio_mqtt.connection"


def packet_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if getattr(r, "event", None) in {"packet-received", "packet-sent"}
    ]


def test_debug_logs_every_packet_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    core = make_core()
    publisher = Client(core, V5)
    publisher.connect("pub", username="alice", will=Will("gone/pub", b"bye", qos=1))
    subscriber = Client(core, V311)
    subscriber.connect("sub")
    subscriber.subscribe(("t/#", 1))
    subscriber.packets()
    caplog.clear()
    publisher.send(Publish("t/a", b"x" * 32, qos=1, packet_id=7))
    assert publisher.packets() == [Puback(7)]
    assert len(subscriber.publishes()) == 1

    lines = [r.getMessage() for r in packet_records(caplog)]
    assert lines == [
        "received PUBLISH from 'pub' (client=192.0.2.10:50000): qos=1 retain=0 dup=0 "
        "packet_id=7 topic='t/a' payload_size=32 (42 bytes)",
        "sending PUBACK to 'pub' (client=192.0.2.10:50000): packet_id=7 reason_code=0x00 (4 bytes)",
        "sending PUBLISH to 'sub' (client=192.0.2.10:50000): qos=1 retain=0 dup=0 "
        "packet_id=1 topic='t/a' payload_size=32 (41 bytes)",
    ]
    received = packet_records(caplog)[0]
    # the same facts as fields, for --log-format json
    assert {
        key: getattr(received, key)
        for key in ("event", "client_id", "packet_type", "qos", "topic", "packet_id", "size")
    } == {
        "event": "packet-received",
        "client_id": "pub",
        "packet_type": "PUBLISH",
        "qos": 1,
        "topic": "t/a",
        "packet_id": 7,
        "size": 42,
    }
    assert received.levelno == logging.DEBUG


def test_connect_subscribe_and_ping_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    core = make_core()
    client = Client(core, V5)
    client.connect("dev-1", username="alice", properties=Properties(session_expiry_interval=9))
    client.subscribe(("a/+", 1), ("b", 0), packet_id=3)
    client.send(Pingreq())
    client.packets()
    lines = [r.getMessage() for r in packet_records(caplog)]
    assert lines[0].startswith(
        "received CONNECT from 'dev-1' (client=192.0.2.10:50000): connect_client_id='dev-1' "
        "protocol=5 clean_start=1 keep_alive=60 username='alice' ("
    )
    assert lines[1].startswith("sending CONNACK to 'dev-1' (")
    assert "session_present=0 reason_code=0x00" in lines[1]
    assert lines[2] == (
        "received SUBSCRIBE from 'dev-1' (client=192.0.2.10:50000): packet_id=3 "
        "filters='a/+ q1, b q0' (15 bytes)"
    )
    assert lines[3] == (
        "sending SUBACK to 'dev-1' (client=192.0.2.10:50000): packet_id=3 "
        "reason_codes=0x01,0x00 (7 bytes)"
    )
    assert lines[4] == "received PINGREQ from 'dev-1' (client=192.0.2.10:50000): (2 bytes)"
    assert lines[5] == "sending PINGRESP to 'dev-1' (client=192.0.2.10:50000): (2 bytes)"


def test_debug_off_never_calls_the_packet_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*_args: object) -> None:
        raise AssertionError("the packet log ran with DEBUG off")

    monkeypatch.setattr(mqtt_connection, "log_received", forbidden)
    monkeypatch.setattr(mqtt_connection, "log_sent", forbidden)
    caplog.set_level(logging.INFO, logger=LOGGER)
    core = make_core()
    publisher = Client(core, V5)
    publisher.connect("pub")
    subscriber = Client(core, V5)
    subscriber.connect("sub")
    subscriber.subscribe(("t", 0))
    publisher.send(Publish("t", b"x", qos=1, packet_id=1))
    assert publisher.packets() == [Puback(1)]
    assert len(subscriber.publishes()) == 1
    assert packet_records(caplog) == []


def test_split_frames() -> None:
    small = encode(Pingreq(), V5)
    big = encode(Publish("t", b"y" * 300), V5)  # a two-byte Remaining Length
    frames = list(split_frames(small + big + small + big[:10]))
    assert frames == [small, big, small]  # the truncated tail is left out
    assert list(split_frames(b"")) == []
