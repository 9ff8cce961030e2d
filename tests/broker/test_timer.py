"""Time in, deadline out: ``next_deadline`` and ``handle_timer`` without any I/O.

The connection reads the core's clock where it needs the time and says when it next
needs it; the test plays the server layer (move the clock, call ``handle_timer``).
"""

from __future__ import annotations

import math

from helpers import V5, V311, Client, FakeClock, make_core

from trio_mqtt.broker.mqtt_connection import CloseReason
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Publish,
)
from trio_mqtt.mqtt.reason_codes import ReasonCode


def test_the_connect_deadline_counts_from_the_transport_and_trickled_bytes_do_not_move_it(
    clock: FakeClock,
) -> None:
    core = make_core(clock, connect_timeout=7)
    client = Client(core, V311)
    opened = clock.now
    assert client.conn.next_deadline() == opened + 7
    connect = encode(Connect("slow", V311), V311)
    for byte in connect[:-1]:
        clock.now += 1
        client.conn.receive_data(bytes([byte]))
        assert client.conn.next_deadline() == opened + 7
    clock.now = opened + 6.9
    client.conn.handle_timer()  # early: nothing happens
    assert not client.conn.wants_close
    clock.now = opened + 7
    client.conn.handle_timer()
    assert client.conn.close_reason is CloseReason.PROTOCOL_ERROR
    assert client.conn.close_detail == "no CONNECT within connect_timeout"
    assert client.raw() == b""  # 3.1.1: no CONNACK for a CONNECT that never came


def test_keep_alive_counts_from_the_last_complete_packet(clock: FakeClock) -> None:
    client = Client(make_core(clock), V311)
    client.connect("k", keep_alive=10)
    assert client.conn.next_deadline() == clock.now + 15  # 1.5 x keep alive
    clock.now += 14
    client.send(Pingreq())
    assert client.packets() == [Pingresp()]
    assert client.conn.next_deadline() == clock.now + 15
    ping = encode(Pingreq(), V311)
    clock.now += 14
    client.conn.receive_data(ping[:1])  # half a packet keeps nothing alive
    assert client.conn.next_deadline() == clock.now + 1
    clock.now += 1
    client.conn.handle_timer()
    assert client.conn.close_reason is CloseReason.KEEPALIVE_TIMEOUT
    assert client.conn.close_detail == "no packet for 15s"


def test_a_timer_that_fires_after_a_packet_moved_the_deadline_does_nothing(
    clock: FakeClock,
) -> None:
    client = Client(make_core(clock), V311)
    client.connect("k", keep_alive=10)
    old_deadline = client.conn.next_deadline()
    clock.now += 10
    client.send(Pingreq())
    client.packets()
    clock.now = old_deadline  # the server's scope fires on the deadline it had
    client.conn.handle_timer()
    assert not client.conn.wants_close
    assert client.conn.next_deadline() == old_deadline + 10


def test_keep_alive_zero_has_no_deadline(clock: FakeClock) -> None:
    client = Client(make_core(clock), V311)
    client.connect("forever", keep_alive=0)
    assert client.conn.next_deadline() == math.inf
    clock.now += 1e9
    client.conn.handle_timer()
    assert not client.conn.wants_close


def test_the_keep_alive_timeout_sends_disconnect_0x8d_on_5_0(clock: FakeClock) -> None:
    client = Client(make_core(clock), V5)
    client.connect("k5", keep_alive=4)
    clock.now = client.conn.next_deadline()
    client.conn.handle_timer()
    assert client.packets() == [Disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)]
    assert client.conn.close_reason is CloseReason.KEEPALIVE_TIMEOUT


def test_a_closed_connection_has_no_deadline(clock: FakeClock) -> None:
    client = Client(make_core(clock), V311)
    client.connect("gone", keep_alive=10)
    client.conn.connection_lost()
    assert client.conn.next_deadline() == math.inf


def test_time_held_back_by_a_congested_subscriber_does_not_count_towards_keep_alive(
    clock: FakeClock,
) -> None:
    core = make_core(clock)
    subscriber = Client(core, V311)
    subscriber.connect("slow-reader")
    subscriber.subscribe(("t", 0))
    publisher = Client(core, V311)
    publisher.connect("fast-writer", keep_alive=10)
    payload = b"x" * 65536
    while not publisher.conn.held_back():  # until the subscriber is congested
        publisher.send(Publish("t", payload))
    read_at = clock.now
    assert publisher.conn.next_deadline() == read_at + 15
    clock.now += 100  # the server reads nothing from the publisher meanwhile
    assert publisher.conn.held_back()
    while subscriber.conn.congested:  # the subscriber's writer catches up
        subscriber.conn.bytes_written(len(subscriber.raw()))
    assert not publisher.conn.held_back()
    assert publisher.conn.next_deadline() == read_at + 100 + 15
