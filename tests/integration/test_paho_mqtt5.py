"""MQTT 5 features end to end, with paho-mqtt 2.x clients at protocol level 5.

One or more tests per feature of docs/mqtt5.md that paho can express: message expiry
(queued and retained), subscription options (No Local, Retain As Published, Retain
Handling), subscription identifiers, shared subscriptions, the Will Delay Interval
(and a session ending before it), session expiry changed on DISCONNECT,
request/response properties and the payload format check, Receive Maximum both ways
(0x93 for a client that exceeds ours), Maximum Packet Size, single-step enhanced
authentication and the ``$SYS/broker`` topics.
Topic aliases have their own tests (tests/mqtt5/test_topic_aliases.py). Multi-step
enhanced authentication is not tested here: paho 2.2 does not answer AUTH packets.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import trio
from helpers import wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from trio_mqtt import AuthFailure, AuthSuccess
from trio_mqtt.broker.enhanced_auth import AuthOutcome
from trio_mqtt.mqtt.packets import Connect
from trio_mqtt.peer import PeerInfo
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .paho_helpers import V5, Connack, PahoClient, blocking, paho_client, properties

# --------------------------------------------------------------------------- helpers


def keep_raw_messages(client: PahoClient) -> list[mqtt.MQTTMessage]:
    """Also keep paho's own message objects (all their MQTT 5 properties), in order.

    The raw message is appended before ``PahoClient`` records it, so once
    ``wait_message`` returned the n-th message, the list holds it at index n-1.
    """
    raw: list[mqtt.MQTTMessage] = []
    record = client.client.on_message
    assert record is not None

    def on_message(paho: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        raw.append(message)
        record(paho, userdata, message)

    client.client.on_message = on_message
    return raw


def keep_ack_codes(client: PahoClient) -> list[int]:
    """The reason codes of the PUBACKs/PUBCOMPs the client gets, in order."""
    codes: list[int] = []

    def on_publish(
        _paho: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reason_code: PahoReasonCode,
        _props: Properties,
    ) -> None:
        codes.append(reason_code.value)

    client.client.on_publish = on_publish
    return codes


async def subscribe_with(
    client: PahoClient,
    topic_filter: str,
    options: SubscribeOptions,
    *,
    identifier: int | None = None,
) -> list[int]:
    """SUBSCRIBE with MQTT 5 subscription options (and a subscription identifier)."""
    # paho takes options as a (filter, SubscribeOptions) pair in place of the filter
    request: Any = (topic_filter, options)
    props = None
    if identifier is not None:
        props = properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=identifier)
    return await blocking(client.subscribe, request, subscribe_properties=props)


def prop(props: Properties | None, name: str) -> Any:
    """One MQTT 5 property of a paho packet (paho sets them as dynamic attributes)."""
    assert props is not None, "the packet had no properties"
    return getattr(props, name)


def publish_props(**values: Any) -> Properties:
    return properties(PacketTypes.PUBLISH, **values)


async def connect_v5(
    broker: Broker,
    client: PahoClient,
    *,
    clean_start: bool = True,
    **connect_values: Any,
) -> Connack:
    """Connect an MQTT 5 paho client with CONNECT properties; expects acceptance."""
    props = properties(PacketTypes.CONNECT, **connect_values) if connect_values else None
    connack = await blocking(
        client.connect, broker.port, clean_start=clean_start, connect_properties=props
    )
    assert connack.accepted, connack
    return connack


async def close(client: PahoClient) -> None:
    with trio.CancelScope(shield=True):
        await blocking(client.close)


async def wait_offline(broker: Broker, client_id: str) -> None:
    session = broker.core.sessions[client_id]
    await wait_until(lambda: not session.online, f"{client_id!r} offline")


# ------------------------------------------------------------ 1. Message Expiry Interval


async def test_queued_message_is_dropped_once_expired_and_forwarded_with_reduced_expiry() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        subscriber = PahoClient("away", protocol=V5)
        try:
            await connect_v5(broker, subscriber, clean_start=True, SessionExpiryInterval=60)
            assert await blocking(subscriber.subscribe, "exp/#", 1) == [1]
            await blocking(subscriber.disconnect)
        finally:
            await close(subscriber)
        await wait_offline(broker, "away")

        published_at = trio.current_time()
        await blocking(
            publisher.publish,
            "exp/short",
            b"1s",
            1,
            publish_properties=publish_props(MessageExpiryInterval=1),
        )
        await blocking(
            publisher.publish,
            "exp/long",
            b"60s",
            1,
            publish_properties=publish_props(MessageExpiryInterval=60),
        )
        await trio.sleep_until(published_at + 1.2)  # the waiting time is what is tested

        subscriber = PahoClient("away", protocol=V5)
        raw = keep_raw_messages(subscriber)
        try:
            connack = await connect_v5(
                broker, subscriber, clean_start=False, SessionExpiryInterval=60
            )
            assert connack.session_present is True
            message = await blocking(subscriber.wait_message)
            assert (message.topic, message.payload, message.qos) == ("exp/long", b"60s", 1)
            forwarded = prop(raw[0].properties, "MessageExpiryInterval")
            assert 55 <= forwarded < 60  # lowered by the >= 1.2 s it waited
            assert await blocking(subscriber.extra_messages) == []  # exp/short expired
        finally:
            await close(subscriber)


async def test_retained_message_expires_from_the_store() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        await blocking(
            publisher.publish,
            "rexp/short",
            b"brief",
            1,
            True,
            publish_properties=publish_props(MessageExpiryInterval=1),
        )
        await blocking(
            publisher.publish,
            "rexp/long",
            b"lasting",
            1,
            True,
            publish_properties=publish_props(MessageExpiryInterval=60),
        )
        stored_at = trio.current_time()
        async with paho_client(broker.port, "early", protocol=V5) as early:
            assert await blocking(early.subscribe, "rexp/#", 1) == [1]
            first = await blocking(early.wait_messages, 2)
            assert sorted((m.topic, m.payload, m.retain) for m in first) == [
                ("rexp/long", b"lasting", True),
                ("rexp/short", b"brief", True),
            ]

        await trio.sleep_until(stored_at + 1.5)
        # housekeeping (every 1 s) removes it from the store
        await wait_until(lambda: broker.retained("rexp/short") is None, "expired from the store")
        async with paho_client(broker.port, "late", protocol=V5) as late:
            raw = keep_raw_messages(late)
            assert await blocking(late.subscribe, "rexp/#", 1) == [1]
            only = await blocking(late.wait_message)
            assert (only.topic, only.payload, only.retain) == ("rexp/long", b"lasting", True)
            assert prop(raw[0].properties, "MessageExpiryInterval") < 60
            assert await blocking(late.extra_messages) == []


# --------------------------------------------------------------- 2. Subscription options


async def test_no_local_keeps_a_clients_own_messages_from_it() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "self", protocol=V5) as own,
        paho_client(broker.port, "other", protocol=V5) as other,
    ):
        assert await subscribe_with(own, "nl/t", SubscribeOptions(qos=1, noLocal=True)) == [1]
        assert await blocking(other.subscribe, "nl/t", 1) == [1]

        await blocking(own.publish, "nl/t", b"from self", 1)
        seen_by_other = await blocking(other.wait_message)
        assert seen_by_other.payload == b"from self"

        await blocking(other.publish, "nl/t", b"from other", 1)
        seen_by_self = await blocking(own.wait_message)
        assert seen_by_self.payload == b"from other"  # not its own, which came first
        assert await blocking(own.extra_messages) == []
        # "other" has no No Local: it gets its own message
        assert (await blocking(other.wait_message)).payload == b"from other"


async def test_retain_as_published_keeps_the_retain_flag_only_when_asked() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "rap", protocol=V5) as rap,
        paho_client(broker.port, "plain", protocol=V5) as plain,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        assert await subscribe_with(rap, "rap/#", options) == [1]
        assert await subscribe_with(plain, "rap/#", SubscribeOptions(qos=1)) == [1]

        await blocking(publisher.publish, "rap/kept", b"r", 1, True)
        await blocking(publisher.publish, "rap/live", b"l", 1, False)

        assert [(m.topic, m.retain) for m in await blocking(rap.wait_messages, 2)] == [
            ("rap/kept", True),
            ("rap/live", False),
        ]
        assert [(m.topic, m.retain) for m in await blocking(plain.wait_messages, 2)] == [
            ("rap/kept", False),
            ("rap/live", False),
        ]


async def test_retain_handling_0_1_2() -> None:
    always = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
    if_new = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
    never = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "rh0", protocol=V5) as rh0,
        paho_client(broker.port, "rh1", protocol=V5) as rh1,
        paho_client(broker.port, "rh2", protocol=V5) as rh2,
    ):
        await broker.publish("rh/t", b"stored", qos=1, retain=True)

        assert await subscribe_with(rh0, "rh/#", always) == [1]
        assert await subscribe_with(rh1, "rh/#", if_new) == [1]
        assert await subscribe_with(rh2, "rh/#", never) == [1]
        for client in (rh0, rh1):
            message = await blocking(client.wait_message)
            assert (message.topic, message.payload, message.retain) == ("rh/t", b"stored", True)
        assert await blocking(rh2.extra_messages) == []

        # the same subscriptions again
        assert await subscribe_with(rh0, "rh/#", always) == [1]
        assert await subscribe_with(rh1, "rh/#", if_new) == [1]
        assert await subscribe_with(rh2, "rh/#", never) == [1]
        again = await blocking(rh0.wait_message)
        assert (again.payload, again.retain) == (b"stored", True)
        assert await blocking(rh1.extra_messages) == []  # not a new subscription
        assert await blocking(rh2.extra_messages) == []

        # every one of them is subscribed all the same
        await broker.publish("rh/t", b"live", qos=1)
        for client in (rh0, rh1, rh2):
            live = await blocking(client.wait_message)
            assert (live.payload, live.retain) == (b"live", False)


# ----------------------------------------------------------- 3. Subscription identifiers


async def test_one_message_carries_the_identifiers_of_all_matching_subscriptions() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=V5) as subscriber,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        assert await subscribe_with(subscriber, "sid/#", SubscribeOptions(qos=1), identifier=5)
        assert await subscribe_with(subscriber, "sid/+/x", SubscribeOptions(qos=1), identifier=7)

        await blocking(publisher.publish, "sid/a/x", b"both", 1)
        await blocking(publisher.publish, "sid/b", b"one", 1)
        both, one = await blocking(subscriber.wait_messages, 2)
        assert both.payload == b"both"
        assert sorted(both.subscription_identifiers) == [5, 7]
        assert (one.payload, one.subscription_identifiers) == (b"one", (5,))
        assert await blocking(subscriber.extra_messages) == []  # one copy each


# ------------------------------------------------------------- 4. Shared subscriptions


async def test_shared_subscription_alternates_and_moves_on_when_a_member_leaves() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "m1", protocol=V5) as member1,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        member2 = PahoClient("m2", protocol=V5)
        try:
            await connect_v5(broker, member2)  # clean start, session expiry 0
            assert await blocking(member1.subscribe, "$share/g/t/#", 1) == [1]
            assert await blocking(member2.subscribe, "$share/g/t/#", 1) == [1]

            for n in range(10):
                await blocking(publisher.publish, f"t/{n}", str(n).encode(), 1)
            got1 = await blocking(member1.wait_messages, 5)
            got2 = await blocking(member2.wait_messages, 5)
            numbers1 = [int(m.payload) for m in got1]
            numbers2 = [int(m.payload) for m in got2]
            assert sorted(numbers1 + numbers2) == list(range(10))  # each exactly once
            # round robin: one member has the even ones, the other the odd ones
            assert {n % 2 for n in numbers1} != {n % 2 for n in numbers2}
            assert len({n % 2 for n in numbers1}) == 1
            assert await blocking(member1.extra_messages) == []
            assert await blocking(member2.extra_messages) == []

            await blocking(member2.disconnect)
        finally:
            await close(member2)
        await wait_until(lambda: "m2" not in broker.core.sessions, "m2's session ended")

        for n in range(10, 14):
            await blocking(publisher.publish, f"t/{n}", str(n).encode(), 1)
        rest = await blocking(member1.wait_messages, 4)
        assert [int(m.payload) for m in rest] == [10, 11, 12, 13]
        assert await blocking(member1.extra_messages) == []


# --------------------------------------------------------------- 5. Will Delay Interval


async def delayed_will_client(broker: Broker, *, clean_start: bool) -> tuple[PahoClient, Connack]:
    device = PahoClient("dev", protocol=V5)
    will_props = properties(PacketTypes.WILLMESSAGE, WillDelayInterval=2)
    device.client.will_set("will/dev", b"gone", 1, False, properties=will_props)
    connack = await connect_v5(broker, device, clean_start=clean_start, SessionExpiryInterval=10)
    return device, connack


async def test_will_waits_for_its_delay_after_an_abnormal_disconnect() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "watcher", protocol=V5) as watcher,
    ):
        assert await blocking(watcher.subscribe, "will/#", 1) == [1]
        device, _ = await delayed_will_client(broker, clean_start=True)
        dropped_at = trio.current_time()
        try:
            await blocking(device.drop)
        finally:
            await close(device)
        assert await blocking(watcher.extra_messages, 1.0) == []  # not yet at 1 s
        will = await blocking(watcher.wait_message, 3.0)
        elapsed = trio.current_time() - dropped_at
        assert (will.topic, will.payload, will.qos) == ("will/dev", b"gone", 1)
        assert 2.0 <= elapsed < 4.0  # the delay, plus at most one housekeeping period
        assert broker.stats.wills_published == 1


async def test_reconnect_within_the_will_delay_cancels_the_will() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "watcher", protocol=V5) as watcher,
    ):
        assert await blocking(watcher.subscribe, "will/#", 1) == [1]
        device, _ = await delayed_will_client(broker, clean_start=True)
        try:
            await blocking(device.drop)
        finally:
            await close(device)
        await wait_offline(broker, "dev")
        assert broker.core.sessions["dev"].delayed_will is not None

        device, connack = await delayed_will_client(broker, clean_start=False)
        try:
            assert connack.session_present is True
            # well past the 2 s delay and a housekeeping period: still no will
            assert await blocking(watcher.extra_messages, 2.6) == []
            assert broker.stats.wills_published == 0
            await blocking(device.disconnect)  # normal DISCONNECT: the new will goes too
        finally:
            await close(device)


async def test_will_goes_when_the_session_ends_before_the_delay() -> None:
    """[MQTT-3.1.3-9]: a session expiring first sends the will, not the delay."""
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "watcher", protocol=V5) as watcher,
    ):
        assert await blocking(watcher.subscribe, "will/#", 1) == [1]
        device = PahoClient("short", protocol=V5)
        will_props = properties(PacketTypes.WILLMESSAGE, WillDelayInterval=60)
        device.client.will_set("will/short", b"gone", 1, False, properties=will_props)
        try:
            await connect_v5(broker, device, SessionExpiryInterval=1)
            dropped_at = trio.current_time()
            await blocking(device.drop)
        finally:
            await close(device)
        will = await blocking(watcher.wait_message, 4.0)
        elapsed = trio.current_time() - dropped_at
        assert (will.topic, will.payload) == ("will/short", b"gone")
        assert 1.0 <= elapsed < 3.5  # the 1 s session, far short of the 60 s delay
        await wait_until(lambda: "short" not in broker.core.sessions, "session expired")


# ------------------------------------------------- 5b. Session expiry changed on DISCONNECT


async def subscribe_then_disconnect(
    broker: Broker, connect_expiry: int, disconnect_expiry: int
) -> None:
    """Client "dev" subscribes to kept/#, then sends DISCONNECT with a new expiry."""
    device = PahoClient("dev", protocol=V5)
    try:
        await connect_v5(broker, device, SessionExpiryInterval=connect_expiry)
        assert await blocking(device.subscribe, "kept/#", 1) == [1]
        device.client.disconnect(
            properties=properties(PacketTypes.DISCONNECT, SessionExpiryInterval=disconnect_expiry)
        )
        await blocking(device.wait_disconnect)
        device.client.loop_stop()
    finally:
        await close(device)


async def test_disconnect_can_shorten_the_session_expiry_to_zero() -> None:
    async with open_test_broker() as broker:
        await subscribe_then_disconnect(broker, 600, 0)
        await wait_until(lambda: "dev" not in broker.core.sessions, "session discarded")

        device = PahoClient("dev", protocol=V5)
        try:
            connack = await connect_v5(broker, device, clean_start=False)
            assert connack.session_present is False
        finally:
            await close(device)


async def test_disconnect_can_lengthen_a_nonzero_session_expiry() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        await subscribe_then_disconnect(broker, 1, 300)
        await wait_offline(broker, "dev")
        await trio.sleep(2.5)  # past the first 1 s (and a housekeeping period)
        await blocking(publisher.publish, "kept/x", b"queued", 1)

        device = PahoClient("dev", protocol=V5)
        try:
            connack = await connect_v5(broker, device, clean_start=False)
            assert connack.session_present is True
            message = await blocking(device.wait_message)
            assert (message.topic, message.payload) == ("kept/x", b"queued")
        finally:
            await close(device)


# ------------------------------------------------------------------ 6. Request/response


async def test_request_response_properties_pass_through_unchanged() -> None:
    payload = '{"temp": "21 °C"}'.encode()
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "requester", protocol=V5) as requester,
        paho_client(broker.port, "responder", protocol=V5) as responder,
    ):
        request_raw = keep_raw_messages(responder)
        reply_raw = keep_raw_messages(requester)
        assert await blocking(responder.subscribe, "svc/request", 1) == [1]
        assert await blocking(requester.subscribe, "svc/reply/requester", 1) == [1]

        sent = publish_props(
            ResponseTopic="svc/reply/requester",
            CorrelationData=b"\x00\x01corr\xff",
            ContentType="application/json; charset=utf-8",
            PayloadFormatIndicator=1,
        )
        await blocking(requester.publish, "svc/request", payload, 1, publish_properties=sent)
        request = await blocking(responder.wait_message)
        assert request.payload == payload
        got = request_raw[0].properties
        assert prop(got, "ResponseTopic") == "svc/reply/requester"
        assert prop(got, "CorrelationData") == b"\x00\x01corr\xff"
        assert prop(got, "ContentType") == "application/json; charset=utf-8"
        assert prop(got, "PayloadFormatIndicator") == 1

        # the responder answers where it was told, with the same correlation data
        answer = publish_props(CorrelationData=prop(got, "CorrelationData"))
        await blocking(
            responder.publish, prop(got, "ResponseTopic"), b"ok", 1, publish_properties=answer
        )
        reply = await blocking(requester.wait_message)
        assert (reply.topic, reply.payload) == ("svc/reply/requester", b"ok")
        assert prop(reply_raw[0].properties, "CorrelationData") == b"\x00\x01corr\xff"


async def test_payload_format_utf8_with_invalid_utf8_gets_puback_0x99() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "sub", protocol=V5) as subscriber,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        codes = keep_ack_codes(publisher)
        assert await blocking(subscriber.subscribe, "pf/t", 1) == [1]
        utf8 = publish_props(PayloadFormatIndicator=1)
        await blocking(publisher.publish, "pf/t", b"\xff\xfe bad", 1, publish_properties=utf8)
        await blocking(publisher.publish, "pf/t", "good é".encode(), 1, publish_properties=utf8)
        await blocking(publisher.publish, "pf/t", b"\xff raw", 1)  # no indicator: bytes
        assert codes == [0x99, 0x00, 0x00]
        delivered = await blocking(subscriber.wait_messages, 2)
        assert [m.payload for m in delivered] == ["good é".encode(), b"\xff raw"]
        assert await blocking(subscriber.extra_messages) == []


# ---------------------------------------------------------------------- 7. Flow control


async def test_receive_maximum_1_keeps_one_qos1_message_in_flight() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        slow = PahoClient("slow", protocol=V5)
        slow.client.manual_ack_set(True)  # it acknowledges only when the test says so
        try:
            await connect_v5(broker, slow, ReceiveMaximum=1)
            assert await blocking(slow.subscribe, "rm/#", 1) == [1]
            for n in range(5):
                await blocking(publisher.publish, f"rm/{n}", str(n).encode(), 1)
            session = broker.core.sessions["slow"]
            for n in range(5):
                message = await blocking(slow.wait_message)
                assert (message.payload, message.qos) == (str(n).encode(), 1)
                assert await blocking(slow.extra_messages, 0.15) == []  # the next waits
                assert len(session.inflight_out) == 1
                assert len(session.queued_entries) == 4 - n
                slow.client.ack(message.mid, 1)
            await wait_until(lambda: not session.inflight_out, "last PUBACK processed")
            await blocking(slow.disconnect)
        finally:
            await close(slow)


async def test_client_exceeding_our_receive_maximum_gets_disconnect_0x93() -> None:
    async with open_test_broker(receive_maximum=1) as broker:
        greedy = PahoClient("greedy", protocol=V5)
        try:
            connack = await connect_v5(broker, greedy)
            assert prop(connack.properties, "ReceiveMaximum") == 1
            # paho does not apply the server's Receive Maximum: two QoS 2 PUBLISHes
            # written back to back, the second long before the first's PUBREL
            first = greedy.client.publish("rm/a", b"1", 2)
            second = greedy.client.publish("rm/b", b"2", 2)
            assert (first.rc, second.rc) == (0, 0)
            ended = await blocking(greedy.wait_disconnect)
            assert ended.reason_code == 0x93
        finally:
            await close(greedy)


async def test_message_larger_than_the_clients_maximum_packet_size_is_not_sent_to_it() -> None:
    async with (
        open_test_broker() as broker,
        paho_client(broker.port, "unlimited", protocol=V5) as unlimited,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        small = PahoClient("small", protocol=V5)
        try:
            await connect_v5(broker, small, MaximumPacketSize=200)
            assert await blocking(small.subscribe, "mps/t", 1) == [1]
            assert await blocking(unlimited.subscribe, "mps/t", 1) == [1]
            dropped_before = broker.stats.messages_dropped

            await blocking(publisher.publish, "mps/t", b"L" * 1000, 1)
            await blocking(publisher.publish, "mps/t", b"s" * 50, 1)

            only = await blocking(small.wait_message)
            assert only.payload == b"s" * 50
            assert await blocking(small.extra_messages) == []
            both = await blocking(unlimited.wait_messages, 2)  # dropped for "small" only
            assert [len(m.payload) for m in both] == [1000, 50]
            assert broker.stats.messages_dropped == dropped_before + 1
        finally:
            await close(small)


# ------------------------------------------------------------ 8. Enhanced authentication


class OneStepToken:
    """A single-step method paho can speak: the token travels in CONNECT."""

    method = "X-TOKEN"

    def start(self, peer: PeerInfo, connect: Connect) -> AuthOutcome:
        if connect.properties.authentication_data == b"letmein":
            return AuthSuccess(data=b"welcome")
        return AuthFailure(reason="wrong token")

    def step(self, peer: PeerInfo, state: object, data: bytes | None) -> AuthOutcome:
        return AuthFailure(reason="single step only")


async def connack_for(broker: Broker, client_id: str, **connect_values: Any) -> Connack:
    client = PahoClient(client_id, protocol=V5)
    try:
        props = properties(PacketTypes.CONNECT, **connect_values)
        return await blocking(client.connect, broker.port, connect_properties=props)
    finally:
        await close(client)


async def test_authentication_methods_known_unknown_and_failed() -> None:
    async with open_test_broker() as broker:
        broker.add_authenticator(OneStepToken())

        unknown = await connack_for(broker, "u", AuthenticationMethod="X-UNKNOWN")
        assert unknown.reason_code == 0x8C  # Bad authentication method

        wrong = await connack_for(
            broker, "w", AuthenticationMethod="X-TOKEN", AuthenticationData=b"guess"
        )
        assert wrong.reason_code == 0x87  # Not authorized

        right = await connack_for(
            broker, "r", AuthenticationMethod="X-TOKEN", AuthenticationData=b"letmein"
        )
        assert right.accepted
        assert prop(right.properties, "AuthenticationMethod") == "X-TOKEN"
        assert prop(right.properties, "AuthenticationData") == b"welcome"
        assert broker.stats.connects_refused == 2


# ------------------------------------------------------------------------------ 9. $SYS

SYS_TOPICS = {
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
}


def latest_values(
    client: PahoClient, done: Callable[[dict[str, str]], bool], timeout: float = 5.0
) -> dict[str, str]:
    """Read messages (blocking) until the latest payload per topic satisfies *done*."""
    latest: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while not done(latest):
        message = client.wait_message(deadline - time.monotonic())
        latest[message.topic] = message.payload.decode()
    return latest


async def test_sys_topics_reach_an_explicit_subscriber_but_not_hash() -> None:
    async with (
        open_test_broker(sys_interval=0.2) as broker,
        paho_client(broker.port, "sys", protocol=V5) as sys_client,
        paho_client(broker.port, "all", protocol=V5) as everything,
        paho_client(broker.port, "pub", protocol=V5) as publisher,
    ):
        assert await blocking(everything.subscribe, "#", 0) == [0]
        assert await blocking(sys_client.subscribe, "$SYS/broker/#", 0) == [0]

        def complete(seen: dict[str, str]) -> bool:
            # the retained values sent on SUBSCRIBE may predate our connections
            return seen.keys() >= SYS_TOPICS and seen["$SYS/broker/clients/connected"] != "0"

        first = await blocking(latest_values, sys_client, complete)
        assert first["$SYS/broker/version"].startswith("trio-mqtt ")
        assert re.fullmatch(r"\d+ seconds", first["$SYS/broker/uptime"])
        assert int(first["$SYS/broker/clients/connected"]) >= 1
        assert int(first["$SYS/broker/messages/received"]) >= 0
        assert int(first["$SYS/broker/messages/sent"]) >= 0

        for n in range(3):
            await blocking(publisher.publish, "plain/t", str(n).encode(), 1)

        def counted(seen: dict[str, str]) -> bool:
            return (
                int(seen.get("$SYS/broker/messages/received", "0")) >= 3
                and int(seen.get("$SYS/broker/clients/connected", "0")) == 3
            )

        later = await blocking(latest_values, sys_client, counted)
        assert int(later["$SYS/broker/messages/sent"]) >= 3

        plain = await blocking(everything.wait_messages, 3)
        assert [(m.topic, m.payload) for m in plain] == [
            ("plain/t", b"0"),
            ("plain/t", b"1"),
            ("plain/t", b"2"),
        ]
        # several $SYS rounds went by: "#" never matches a topic starting with "$"
        assert await blocking(everything.extra_messages, 0.5) == []
