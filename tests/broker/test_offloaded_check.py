"""A connect hook whose decision is too slow for the event loop (a password hash).

The hook answers ``OffloadedCheck``; the connection waits (CHECKING, ``pending_check``)
while the server layer runs the work elsewhere, and ``check_done`` carries the CONNECT on:
CONNACK or a refusal, then the packets the client sent after CONNECT (3.1.1 section 3.1.4
allows them before CONNACK). Sans-IO here: the test plays the server layer.
"""

from __future__ import annotations

from helpers import V311, Client, FakeClock, make_core, offloaded_hook

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.mqtt_connection import ConnectionState
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Packet,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode


def offloading_core(clock: FakeClock, answer: ReasonCode | None) -> tuple[BrokerCore, list[str]]:
    slow_hook, ran = offloaded_hook(answer)
    core = make_core(clock)
    core.add_connect_hook(slow_hook)
    return core, ran


def connect_subscribe_publish(client: Client) -> None:
    """CONNECT, then SUBSCRIBE and PUBLISH in the same write, without waiting."""
    client.conn.receive_data(
        encode(Connect("c"), V311)
        + encode(Subscribe(1, (SubscriptionRequest("t", 0),)), V311)
        + encode(Publish("t", b"to myself"), V311)
    )


def run_check(client: Client) -> None:
    pending = client.conn.pending_check
    assert pending is not None
    client.conn.check_done(pending.check.work())


def test_connect_waits_for_the_check_and_then_handles_what_came_after(clock: FakeClock) -> None:
    core, ran = offloading_core(clock, None)
    client = Client(core, V311)
    connect_subscribe_publish(client)
    assert client.conn.state is ConnectionState.CHECKING
    assert client.packets() == []  # no CONNACK yet, and nothing else handled
    assert ran == []  # the work is the server layer's to run
    assert "c" not in core.sessions

    run_check(client)
    packets: list[Packet] = client.packets()
    assert ran == ["c"]
    assert isinstance(packets[0], Connack) and packets[0].reason_code == 0
    assert isinstance(packets[1], Suback)
    assert isinstance(packets[2], Publish) and packets[2].payload == b"to myself"
    assert client.conn.state is ConnectionState.CONNECTED


def test_a_refused_check_refuses_the_connect_and_drops_what_came_after(
    clock: FakeClock,
) -> None:
    core, _ran = offloading_core(clock, ReasonCode.BAD_USER_NAME_OR_PASSWORD)
    client = Client(core, V311)
    connect_subscribe_publish(client)
    run_check(client)
    (connack,) = client.packets()
    assert isinstance(connack, Connack)
    assert connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert client.conn.wants_close
    assert "c" not in core.sessions
    assert core.stats.messages_received == 0


def test_the_hooks_after_an_offloaded_one_still_run(clock: FakeClock) -> None:
    core, _ran = offloading_core(clock, None)
    core.add_connect_hook(lambda peer, connect: ReasonCode.NOT_AUTHORIZED)
    client = Client(core, V311)
    connect_subscribe_publish(client)
    run_check(client)
    (connack,) = client.packets()
    assert isinstance(connack, Connack) and connack.reason_code == ReasonCode.NOT_AUTHORIZED


def test_a_check_that_does_not_end_in_time_closes_the_connection(clock: FakeClock) -> None:
    core, _ran = offloading_core(clock, None)
    client = Client(core, V311)
    connect_subscribe_publish(client)
    clock.now += core.config.connect_timeout  # the CONNECT timeout, the check still waiting
    client.conn.handle_timer()
    assert client.conn.wants_close
    assert client.conn.close_detail == "CONNECT check did not end in time"
    client.conn.check_done(None)  # too late: ignored
    assert client.packets() == []
