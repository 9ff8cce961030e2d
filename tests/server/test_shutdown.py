"""Graceful shutdown of open_broker / serve over real sockets on 127.0.0.1.

Leaving ``open_broker`` stops the listeners first, asks every client to leave (MQTT 5
clients get DISCONNECT 0x8B Server shutting down) and gives up on clients that do not
go away after ``shutdown_timeout`` seconds.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from rawclient import RawClient

from trio_mqtt import Broker, BrokerConfig, ListenerConfig, open_broker, serve
from trio_mqtt.mqtt.codec import encode
from trio_mqtt.mqtt.packets import (
    Connect,
    Disconnect,
    ProtocolVersion,
    Suback,
    Subscribe,
    SubscriptionRequest,
)

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
LISTENER = ListenerConfig(name="shutdown-test", host="127.0.0.1", port=0)
# DISCONNECT with reason 0x8B Server shutting down: the short form, or with an empty
# property length (both valid, 5.0 section 3.14.2.1)
DISCONNECT_SHUTTING_DOWN = (b"\xe0\x01\x8b", b"\xe0\x02\x8b\x00")


def config(**settings: Any) -> BrokerConfig:
    return BrokerConfig(listeners=(LISTENER,), **settings)


async def read_to_eof(client: RawClient, timeout: float = 5.0) -> bytes:
    """Every byte the server sends until it closes the connection; then close ours."""
    data = bytearray()
    try:
        with trio.fail_after(timeout):
            while True:
                try:
                    chunk = await client.stream.receive_some(65536)
                except trio.BrokenResourceError:  # connection reset
                    break
                if not chunk:
                    break
                data += chunk
    finally:
        await client.aclose()
    return bytes(data)


async def connect_never_reading(broker: Broker) -> RawClient:
    """A client whose socket buffers are full, so the broker's writer is stuck on it."""
    client = await RawClient.open(broker.port, V311)
    await client.connect("never-reads", keep_alive=0)
    await client.send(Subscribe(1, (SubscriptionRequest("flood", 0),)))
    assert isinstance(await client.receive(), Suback)
    session = broker.core.sessions["never-reads"]
    payload = b"x" * 65536
    # keep publishing until the session's queue stays full: the writer cannot drain it
    with trio.fail_after(10):
        while len(session.queued_entries) < broker.config.max_queued_messages:
            for _ in range(8):
                await broker.publish("flood", payload)
            await trio.sleep(0.005)
    return client


async def test_shutdown_disconnects_v5_and_closes_v311() -> None:
    async with open_broker(config(shutdown_timeout=5)) as broker:
        v5 = await RawClient.open(broker.port, V5)
        assert (await v5.connect("five", keep_alive=0)).reason_code == 0
        v311 = await RawClient.open(broker.port, V311)
        assert (await v311.connect("three", keep_alive=0)).reason_code == 0
        assert len(broker.clients()) == 2
        start = trio.current_time()
    assert trio.current_time() - start < 2  # no waiting for the timeout: both went away
    assert await read_to_eof(v5) in DISCONNECT_SHUTTING_DOWN
    assert await read_to_eof(v311) == b""
    assert broker.clients() == []
    assert broker.stats.disconnects == 2


async def test_shutdown_bounded_when_client_never_reads() -> None:
    shutdown_timeout = 0.5
    with trio.fail_after(20):
        async with open_broker(
            config(shutdown_timeout=shutdown_timeout, max_queued_messages=32)
        ) as broker:
            stuck = await connect_never_reading(broker)
            polite = await RawClient.open(broker.port, V5)
            await polite.connect("polite", keep_alive=0)
            start = trio.current_time()
        elapsed = trio.current_time() - start
    assert elapsed < shutdown_timeout + 1.0
    assert await read_to_eof(polite) in DISCONNECT_SHUTTING_DOWN
    await stuck.aclose()


async def test_listeners_stop_accepting_first() -> None:
    """Once a client sees the shutdown DISCONNECT, new clients are no longer served."""
    results: dict[str, object] = {}

    async def try_new_client(port: int, first: RawClient) -> None:
        packet = await first.receive(timeout=5)
        results["first"] = packet
        try:
            late = await RawClient.open(port, V311)
        except OSError:
            results["late"] = "refused"
            return
        try:
            await late.send_raw(encode(Connect("late", V311), V311))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            results["late"] = "reset"
            await late.aclose()
            return
        results["late"] = await late.receive_or_eof(timeout=5)
        await late.aclose()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_broker(config(shutdown_timeout=1, max_queued_messages=32)) as broker:
                stuck = await connect_never_reading(broker)  # keeps the shutdown going
                first = await RawClient.open(broker.port, V5)
                await first.connect("first", keep_alive=0)
                nursery.start_soon(try_new_client, broker.port, first)
                await trio.sleep(0.05)
            await stuck.aclose()
            await first.aclose()

    assert results["first"] == Disconnect(reason_code=0x8B)
    assert results["late"] in ("refused", "reset", None)  # never a CONNACK


async def test_serve_started_returns_broker_and_cancel_stops_it() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(serve, config(shutdown_timeout=0.5))
            assert isinstance(broker, Broker)
            port = broker.port
            client = await RawClient.open(port, V311)
            assert (await client.connect("served", keep_alive=0)).reason_code == 0
            assert [c.client_id for c in broker.clients()] == ["served"]
            nursery.cancel_scope.cancel()
        assert await read_to_eof(client) == b""
        assert broker.clients() == []
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_cancelling_serve_is_graceful() -> None:
    """The CLI stops ``serve`` by cancelling it: 5.0 clients should still hear 0x8B."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(serve, config(shutdown_timeout=0.5))
            client = await RawClient.open(broker.port, V5)
            await client.connect("five", keep_alive=0)
            nursery.cancel_scope.cancel()
        assert await read_to_eof(client) in DISCONNECT_SHUTTING_DOWN


async def test_cancelling_serve_does_not_wait_for_gone_connections() -> None:
    shutdown_timeout = 2.0
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(serve, config(shutdown_timeout=shutdown_timeout))
            client = await RawClient.open(broker.port, V311)
            await client.connect("served", keep_alive=0)
            start = trio.current_time()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
    await client.aclose()
    assert broker.listeners[LISTENER.name].connections == 0
    assert elapsed < shutdown_timeout / 2


async def test_code_inside_open_broker_stays_cancellable() -> None:
    """The connections' shield covers the connections only, not the embedding app."""
    with trio.fail_after(10):
        with trio.move_on_after(0.2) as scope:
            async with open_broker(config(shutdown_timeout=5)) as broker:
                client = await RawClient.open(broker.port, V5)
                await client.connect("inside", keep_alive=0)
                await trio.sleep_forever()
    assert scope.cancelled_caught
    assert await read_to_eof(client) in DISCONNECT_SHUTTING_DOWN  # and still graceful


async def test_stopping_a_listener_leaves_its_connections_served() -> None:
    async with open_broker(config()) as broker:
        client = await RawClient.open(broker.port, V311)
        await client.connect("stays", keep_alive=0)
        port = broker.port
        handle = broker.listeners[LISTENER.name]
        handle.stop_accepting()
        with trio.fail_after(5):
            while True:  # the accept loop ends and closes its socket
                try:
                    late = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    break
                await late.aclose()
                await trio.sleep(0.01)
        await client.send(Subscribe(1, (SubscriptionRequest("still/here", 0),)))
        assert isinstance(await client.receive(), Suback)
        assert [c.client_id for c in broker.clients()] == ["stays"]
        assert handle.connections == 1
    assert await read_to_eof(client) == b""


async def test_connections_left_at_the_deadline_are_cancelled_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(20):
        async with open_broker(config(shutdown_timeout=0.3, max_queued_messages=32)) as broker:
            stuck = await connect_never_reading(broker)
    assert broker.clients() == []
    assert broker.listeners[LISTENER.name].connections == 0
    assert any(
        "connections still open after 0.3s were cancelled" in r.getMessage() for r in caplog.records
    )
    await stuck.aclose()
