"""Retained messages and wills with paho-mqtt 2.x clients.

Retained: stored, replaced, deleted by an empty payload, sent with the retain flag to new
subscribers but forwarded without it to existing ones, and remembered with the address of
whoever set it. Wills: published when the connection ends without DISCONNECT (socket
closed, keep alive expired, 5.0 DISCONNECT 0x04), with their QoS and retain flag, and
not published after a normal DISCONNECT.
"""

from __future__ import annotations

import time

import pytest
import trio
from helpers import wait_until
from paho.mqtt.enums import MQTTProtocolVersion

from trio_mqtt.peer import Endpoint
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .paho_helpers import (
    QUIET,
    V5,
    V311,
    VERSION_IDS,
    VERSIONS,
    PahoClient,
    Received,
    blocking,
    paho_client,
)

WILL_TOPIC = "status/device"
WILL_PAYLOAD = b"offline"


async def fresh_subscriber_sees(
    broker: Broker, protocol: MQTTProtocolVersion, topic_filter: str
) -> list[Received]:
    """What a brand new subscriber to *topic_filter* receives right away."""
    async with paho_client(broker.port, "late-joiner", protocol=protocol) as late:
        assert await blocking(late.subscribe, topic_filter, 2) == [2]
        return await blocking(late.extra_messages, QUIET)


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_retained_message_is_stored_replaced_and_deleted(
    protocol: MQTTProtocolVersion,
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "setter", protocol=protocol) as setter,
    ):
        await blocking(setter.publish, "r/t", b"v1", 1, True)
        stored = broker.retained("r/t")
        assert stored is not None
        assert (stored.payload, stored.qos) == (b"v1", 1)
        (first,) = await fresh_subscriber_sees(broker, protocol, "r/#")
        assert (first.topic, first.payload, first.qos, first.retain) == ("r/t", b"v1", 1, True)

        await blocking(setter.publish, "r/t", b"v2", 2, True)
        (second,) = await fresh_subscriber_sees(broker, protocol, "r/#")
        assert (second.payload, second.qos, second.retain) == (b"v2", 2, True)

        # an empty retained payload deletes it (and is not itself stored)
        await blocking(setter.publish, "r/t", b"", 1, True)
        assert broker.retained("r/t") is None
        assert await fresh_subscriber_sees(broker, protocol, "r/#") == []


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_retained_delivery_is_capped_by_the_subscription_qos(
    protocol: MQTTProtocolVersion,
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "setter", protocol=protocol) as setter,
        paho_client(broker.port, "reader", protocol=protocol) as reader,
    ):
        await blocking(setter.publish, "cap/t", b"two", 2, True)
        assert await blocking(reader.subscribe, "cap/t", 1) == [1]
        message = await blocking(reader.wait_message)
        assert (message.payload, message.qos, message.retain) == (b"two", 1, True)


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_forwarding_to_an_existing_subscriber_clears_the_retain_flag(
    protocol: MQTTProtocolVersion,
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=protocol) as subscriber,
        paho_client(broker.port, "pub", protocol=protocol) as publisher,
    ):
        assert await blocking(subscriber.subscribe, "live/#", 1) == [1]
        await blocking(publisher.publish, "live/t", b"now", 1, True)
        message = await blocking(subscriber.wait_message)
        assert (message.payload, message.retain) == (b"now", False)
        # ... while it was still stored for later subscribers
        stored = broker.retained("live/t")
        assert stored is not None
        assert stored.payload == b"now"


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_retained_message_records_who_published_it(protocol: MQTTProtocolVersion) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sensor-7", protocol=protocol) as publisher,
    ):
        await blocking(publisher.publish, "who/t", b"x", 0, True)
        # QoS 0: nothing says when the broker has read it
        await wait_until(lambda: broker.retained("who/t") is not None, "retained")
        stored = broker.retained("who/t")
        assert stored is not None
        assert stored.publisher == "sensor-7"
        assert stored.peer.client == Endpoint("127.0.0.1", publisher.local_port)
        assert stored.peer.transport == "tcp"


# ----------------------------------------------------------------------------- wills


async def will_client(
    broker: Broker,
    protocol: MQTTProtocolVersion,
    *,
    qos: int = 1,
    retain: bool = True,
    keepalive: int = 10,
) -> PahoClient:
    """A connected client "dev" whose will is WILL_TOPIC / WILL_PAYLOAD."""
    client = PahoClient("dev", protocol=protocol)
    client.client.will_set(WILL_TOPIC, WILL_PAYLOAD, qos, retain)
    connack = await blocking(client.connect, broker.port, keepalive=keepalive)
    assert connack.accepted
    return client


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize(("qos", "retain"), [(0, False), (1, True), (2, True), (2, False)])
async def test_will_is_published_when_the_socket_closes_without_disconnect(
    protocol: MQTTProtocolVersion, qos: int, retain: bool
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "watcher", protocol=protocol) as watcher,
    ):
        assert await blocking(watcher.subscribe, "status/#", 2) == [2]
        device = await will_client(broker, protocol, qos=qos, retain=retain)
        try:
            await blocking(device.drop)
        finally:
            await blocking(device.close)
        will = await blocking(watcher.wait_message)
        # an existing subscriber gets it at the will QoS, retain flag cleared by forwarding
        assert (will.topic, will.payload, will.qos, will.retain) == (
            WILL_TOPIC,
            WILL_PAYLOAD,
            qos,
            False,
        )
        assert await blocking(watcher.extra_messages) == []
        assert broker.stats.wills_published == 1
        stored = broker.retained(WILL_TOPIC)
        if retain:
            assert stored is not None
            assert (stored.payload, stored.publisher) == (WILL_PAYLOAD, "dev")
            (late,) = await fresh_subscriber_sees(broker, protocol, "status/#")
            assert (late.payload, late.qos, late.retain) == (WILL_PAYLOAD, qos, True)
        else:
            assert stored is None


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_will_is_not_published_after_a_normal_disconnect(
    protocol: MQTTProtocolVersion,
) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "watcher", protocol=protocol) as watcher,
    ):
        assert await blocking(watcher.subscribe, "status/#", 2) == [2]
        device = await will_client(broker, protocol)
        try:
            ended = await blocking(device.disconnect)
            assert ended.reason_code == 0
        finally:
            await blocking(device.close)
        await wait_until(
            lambda: all(s.client_id != "dev" for s in broker.clients()), "disconnected"
        )
        assert await blocking(watcher.extra_messages) == []
        assert broker.stats.wills_published == 0
        assert broker.retained(WILL_TOPIC) is None


@pytest.mark.parametrize("protocol", VERSIONS, ids=VERSION_IDS)
async def test_will_is_published_when_keep_alive_expires(protocol: MQTTProtocolVersion) -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "watcher", protocol=protocol) as watcher,
    ):
        assert await blocking(watcher.subscribe, "status/#", 2) == [2]
        device = await will_client(broker, protocol, keepalive=1)
        try:
            # paho pings every second while its loop runs: the broker keeps it
            await trio.sleep(1.6)
            assert [s.client_id for s in broker.clients() if s.client_id == "dev"] == ["dev"]
            assert await blocking(watcher.extra_messages, 0) == []

            await blocking(device.freeze)  # no more PINGREQ; the socket stays open
            # paho stamps its last write with time.monotonic(): the broker's timer starts then
            last_packet_at: float = device.client._last_msg_out
            will = await blocking(watcher.wait_message, 5.0)
            silent_for = time.monotonic() - last_packet_at
        finally:
            await blocking(device.close)
        assert (will.topic, will.payload, will.qos) == (WILL_TOPIC, WILL_PAYLOAD, 1)
        # closed 1.5 x keep alive after the last packet (not at 1 x, not at 2 x)
        assert 1.4 <= silent_for <= 1.9, silent_for
        assert "dev" not in {s.client_id for s in broker.clients()}
        assert broker.stats.wills_published == 1


async def test_mqtt5_disconnect_with_reason_0x04_publishes_the_will() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "watcher", protocol=V5) as watcher,
    ):
        assert await blocking(watcher.subscribe, "status/#", 2) == [2]
        device = await will_client(broker, V5, qos=2, retain=True)
        try:
            ended = await blocking(device.disconnect, 0x04)
            assert ended.is_failure is False
        finally:
            await blocking(device.close)
        will = await blocking(watcher.wait_message)
        assert (will.topic, will.payload, will.qos) == (WILL_TOPIC, WILL_PAYLOAD, 2)
        stored = broker.retained(WILL_TOPIC)
        assert stored is not None
        assert stored.payload == WILL_PAYLOAD
        assert broker.stats.wills_published == 1


async def test_mqtt311_will_goes_to_a_mqtt5_subscriber_and_back() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "v5-watcher", protocol=V5) as v5_watcher,
        paho_client(broker.port, "v3-watcher", protocol=V311) as v3_watcher,
    ):
        for watcher in (v5_watcher, v3_watcher):
            assert await blocking(watcher.subscribe, WILL_TOPIC, 1) == [1]
        device = await will_client(broker, V311, qos=1, retain=False)
        try:
            await blocking(device.drop)
        finally:
            await blocking(device.close)
        for watcher in (v5_watcher, v3_watcher):
            will = await blocking(watcher.wait_message)
            assert (will.payload, will.qos) == (WILL_PAYLOAD, 1)
