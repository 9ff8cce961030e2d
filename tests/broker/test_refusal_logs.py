"""A SUBSCRIBE refused by the access rules is logged, like a refused PUBLISH: the client
only sees a reason code (0x87 / 0x80), the operator needs the line."""

from __future__ import annotations

import logging

import pytest
from helpers import V5, V311, Client, make_core

from trio_mqtt.mqtt.packets import Puback, Publish, Suback
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import PeerInfo


def only_public(_peer: PeerInfo, _client_id: str, _username: str | None, topic: str) -> bool:
    return topic.startswith("public/")


def test_refused_subscribe_is_logged_like_a_refused_publish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mqtt")
    core = make_core()
    core.add_publish_hook(only_public)
    core.add_subscribe_hook(only_public)
    client = Client(core, V5)
    client.connect("dev-1")
    suback = client.subscribe(("secret/#", 1), ("public/x", 0))
    assert suback == Suback(1, (ReasonCode.NOT_AUTHORIZED, 0))
    client.send(Publish("secret/x", b"", qos=1, packet_id=2))
    assert client.packets() == [Puback(2, ReasonCode.NOT_AUTHORIZED)]
    old = Client(core, V311)
    old.connect("dev-2")
    assert old.subscribe(("secret/y", 0)) == Suback(1, (0x80,))

    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "subscribe to 'secret/#' by 'dev-1' not authorized" in messages
    assert "publish to 'secret/x' by 'dev-1' not authorized" in messages
    assert "subscribe to 'secret/y' by 'dev-2' not authorized" in messages
    assert not any("public/x" in message for message in messages)
