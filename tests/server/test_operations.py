"""The operators' HTTP endpoint ([http]): /metrics, /healthz, /readyz over real sockets.

Metrics are scraped over HTTP and parsed with prometheus_client's own parser, before and
after real MQTT traffic; readiness is followed through start-up, service and a graceful
shutdown that still has a client to close; the server's bounds (request size, slow
clients, concurrent connections) are checked with short limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from helpers import free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families
from rawclient import RawClient

from trio_mqtt import Broker, BrokerConfig, ListenerConfig, open_broker, serve
from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.config import ClusterConfig, HttpConfig, ProxyMode, ProxyPolicy
from trio_mqtt.mqtt.packets import (
    Disconnect,
    ProtocolVersion,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.nats import NATSError
from trio_mqtt.server import connection
from trio_mqtt.server.operations import Endpoints, HttpHandle, serve_http

V311 = ProtocolVersion.V311
LISTENER = ListenerConfig(name="mqtt", host="127.0.0.1", port=0)
HTTP = HttpConfig(host="127.0.0.1", port=0)


def config(**settings: Any) -> BrokerConfig:
    settings.setdefault("listeners", (LISTENER,))
    return BrokerConfig(http=HTTP, sys_interval=0, **settings)


def http_port(broker: Broker) -> int:
    assert broker.http is not None
    return broker.http.addresses[0].port


async def request(port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``; the answer's status, headers (lower-case names) and body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data = bytearray()
    async with stream:
        await stream.send_all(raw)
        with trio.fail_after(timeout):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics: (name, sorted labels) -> value."""
    status, headers, body = await get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --------------------------------------------------------------------------- /metrics


async def test_metrics_follow_real_traffic() -> None:
    async with open_broker(config()) as broker:
        port = http_port(broker)
        before = await scrape(port)
        assert value(before, "trio_mqtt_connections", listener="mqtt") == 0
        assert value(before, "trio_mqtt_messages_received_total", qos="0") == 0
        assert value(before, "trio_mqtt_sessions") == 0

        subscriber = await RawClient.open(broker.port)
        await subscriber.connect("sub", keep_alive=0)
        await subscriber.send(Subscribe(1, (SubscriptionRequest("t/#", 1),)))
        assert isinstance(await subscriber.receive(), Suback)
        publisher = await RawClient.open(broker.port)
        await publisher.connect("pub", keep_alive=0)
        await publisher.send(Publish(topic="t/0", payload=b"zero", qos=0))
        await publisher.send(Publish(topic="t/1", payload=b"one", qos=1, packet_id=7))
        await publisher.send(Publish(topic="t/r", payload=b"kept", qos=0, retain=True))
        assert await publisher.receive() == Puback(7)
        received = [await subscriber.receive() for _ in range(3)]
        assert sorted(p.qos for p in received if isinstance(p, Publish)) == [0, 0, 1]

        after = await scrape(port)
        assert value(after, "trio_mqtt_connections", listener="mqtt") == 2
        assert value(after, "trio_mqtt_connects_total", listener="mqtt", result="accepted") == 2
        assert value(after, "trio_mqtt_mqtt_connects_total", result="accepted") == 2
        assert value(after, "trio_mqtt_messages_received_total", qos="0") == 2
        assert value(after, "trio_mqtt_messages_received_total", qos="1") == 1
        assert value(after, "trio_mqtt_messages_sent_total", qos="0") == 2
        assert value(after, "trio_mqtt_messages_sent_total", qos="1") == 1
        assert value(after, "trio_mqtt_bytes_received_total") > 0
        assert value(after, "trio_mqtt_bytes_sent_total") > 0
        assert value(after, "trio_mqtt_sessions") == 2
        assert value(after, "trio_mqtt_subscriptions") == 1
        assert value(after, "trio_mqtt_retained_messages") == 1
        # the same text from the embedding API
        assert "trio_mqtt_retained_messages 1.0" in broker.metrics_text()
        assert "trio_mqtt_cluster_" not in broker.metrics_text()  # (no [cluster] here)

        await publisher.aclose()
        await subscriber.aclose()
        await wait_until(lambda: not broker.listeners["mqtt"].connections, "closed")
        closed = await scrape(port)
        assert value(closed, "trio_mqtt_connections", listener="mqtt") == 0


async def test_metrics_count_the_parked_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    # a connection parks once its client has been quiet for PARK_AFTER (shortened here)
    monkeypatch.setattr(connection, "PARK_AFTER", 0.05)
    monkeypatch.setattr(connection, "PARK_GRAIN", 0.05)
    async with open_broker(config()) as broker:
        port = http_port(broker)
        assert value(await scrape(port), "trio_mqtt_connections_parked") == 0
        clients = [await RawClient.open(broker.port) for _ in range(2)]
        for n, client in enumerate(clients):
            await client.connect(f"quiet{n}", keep_alive=60)
        await wait_until(lambda: broker.parked_connections() == 2, "both parked")
        assert value(await scrape(port), "trio_mqtt_connections_parked") == 2
        assert value(await scrape(port), "trio_mqtt_connections", listener="mqtt") == 2
        await clients[0].send(Disconnect())
        await clients[0].expect_closed()
        await wait_until(lambda: broker.parked_connections() == 1, "one left")
        assert value(await scrape(port), "trio_mqtt_connections_parked") == 1
        for client in clients:
            await client.aclose()


async def test_drops_by_reason_and_event_loop_lag() -> None:
    async with open_broker(config()) as broker:
        async with broker.subscribe("d", max_buffer=1) as _messages:
            for _ in range(3):
                await broker.publish("d", b"x")
            samples = await scrape(http_port(broker))
        assert value(samples, "trio_mqtt_messages_dropped_total", reason="local_buffer_full") == 2
        await wait_until(lambda: broker.loop_lag.count, "measured")  # every 0.5 s
        samples = await scrape(http_port(broker))
        assert value(samples, "trio_mqtt_event_loop_lag_seconds_count") >= 1
        assert value(samples, "trio_mqtt_event_loop_lag_seconds_bucket", le="+Inf") >= 1
        assert ("trio_mqtt_event_loop_lag_max_seconds", ()) in samples


async def test_proxy_headers_counted_by_version_and_result() -> None:
    proxied = ListenerConfig(
        name="lb",
        host="127.0.0.1",
        port=0,
        proxy_protocol=ProxyPolicy(mode=ProxyMode.REQUIRED),
    )
    async with open_broker(config(listeners=(proxied,))) as broker:
        client = await RawClient.open(broker.port)
        await client.send_raw(b"PROXY TCP4 192.0.2.1 192.0.2.2 4000 1883\r\n")
        await client.connect("behind-lb")
        bad = await RawClient.open(broker.port)
        await bad.send_raw(b"PROXY NONSENSE\r\n")
        await bad.expect_closed()
        samples = await scrape(http_port(broker))
        await client.aclose()
    headers = "trio_mqtt_proxy_headers_total"
    assert value(samples, headers, listener="lb", version="v1", result="ok") == 1
    assert value(samples, headers, listener="lb", version="v1", result="invalid") == 1
    assert value(samples, "trio_mqtt_connects_total", listener="lb", result="invalid_header") == 1
    assert value(samples, "trio_mqtt_health_checks_total", listener="lb") == 0


# --------------------------------------------------------------------------- health


async def test_healthz_and_readyz_while_serving() -> None:
    async with open_broker(config()) as broker:
        port = http_port(broker)
        assert (await get(port, "/healthz"))[0] == 200
        status, _, body = await get(port, "/readyz")
        assert (status, body) == (200, b"ready\n")
        # HEAD: the same status, no body
        status, headers, body = await get(port, "/readyz", method="HEAD")
        assert (status, body) == (200, b"")
        assert headers["content-length"] == "6"


async def test_readyz_is_503_from_the_start_of_shutdown_while_clients_are_still_open() -> None:
    broker_scope = trio.CancelScope()

    async def run_broker(*, task_status: trio.TaskStatus[Broker]) -> None:
        with broker_scope:
            await serve(config(shutdown_timeout=10), task_status=task_status)

    async with trio.open_nursery() as nursery:
        broker: Broker = await nursery.start(run_broker)
        port = http_port(broker)
        # a v5 client that does not answer the DISCONNECT by closing: the broker waits
        client = await RawClient.open(broker.port, ProtocolVersion.V5)
        await client.connect("lingers", keep_alive=0)
        assert (await get(port, "/readyz"))[0] == 200
        broker_scope.cancel()  # what SIGTERM does
        with trio.fail_after(5):
            while True:
                status, _, body = await get(port, "/readyz")
                if status == 503:
                    break
                await trio.sleep(0.01)
        assert b"shutting down" in body
        assert (await get(port, "/healthz"))[0] == 200  # still serving
        await client.aclose()  # the last client goes: the broker stops, and so does HTTP
    with trio.fail_after(5):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                break
            await stream.aclose()
            await trio.sleep(0.01)


async def test_readyz_is_503_while_starting_up() -> None:
    # a "NATS server" that accepts and says nothing: the cluster join (before the MQTT
    # listeners open) waits, while the HTTP endpoint already answers
    silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    nats_port = silent.socket.getsockname()[1]
    port = free_port()
    settings = config(
        cluster=ClusterConfig(node_name="n1", nats_urls=(f"nats://127.0.0.1:{nats_port}",)),
    )
    settings = attrs.evolve(settings, http=HttpConfig(host="127.0.0.1", port=port))
    joined = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, settings)
            with trio.fail_after(3):
                nats_connection = await silent.accept()  # the node waits for INFO
                while True:
                    try:
                        status, _, body = await get(port, "/readyz")
                        break
                    except OSError:
                        await trio.sleep(0.01)
            assert (status, body) == (503, b"starting up\n")
            assert (await get(port, "/healthz"))[0] == 200
            await nats_connection.aclose()  # the join fails: the broker does not start
            await silent.aclose()
            joined = True
    except* NATSError:
        pass
    assert joined
    with pytest.raises(OSError):  # and the HTTP endpoint is gone with it
        await trio.open_tcp_stream("127.0.0.1", port)


def test_readiness_needs_the_cluster_connected() -> None:
    settings = BrokerConfig(listeners=(), cluster=ClusterConfig(node_name="n1"))
    broker = Broker(config=settings, core=BrokerCore(config=settings, clock=lambda: 0.0))
    broker._phase = "serving"
    assert broker.readiness() == (False, ["cluster: not connected to NATS"])
    broker._persistence_error = "disk full"
    assert broker.readiness()[1][0] == "persistence: the last save failed: disk full"


# --------------------------------------------------------------------------- HTTP


async def test_other_paths_are_404_and_other_methods_405() -> None:
    async with open_broker(config()) as broker:
        port = http_port(broker)
        assert (await get(port, "/"))[0] == 404
        assert (await get(port, "/metrics/x"))[0] == 404
        status, headers, _ = await get(port, "/metrics", method="DELETE")
        assert status == 405
        assert headers["allow"] == "GET, HEAD"
        post = b"POST /readyz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        assert (await request(port, post))[0] == 405
        assert (await get(port, "/metrics?name=x"))[0] == 200  # a query string is ignored
        assert (await request(port, b"NOT HTTP AT ALL\r\n\r\n"))[0] == 400


async def test_an_oversized_request_is_refused_with_431() -> None:
    async with open_broker(config()) as broker:
        huge = b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        status, _, _ = await request(http_port(broker), huge)
        assert status == 431


@asynccontextmanager
async def bounded_server(**limits: Any) -> AsyncIterator[tuple[HttpHandle, int]]:
    """serve_http with ``limits``, stopped at the end (it ignores cancellation)."""
    endpoints = Endpoints(metrics=lambda: ("text/plain", b""), readiness=lambda: (True, []))
    async with trio.open_nursery() as nursery:
        handle: HttpHandle = await nursery.start(
            lambda task_status: serve_http(HTTP, endpoints, task_status=task_status, **limits)
        )
        try:
            yield handle, handle.addresses[0].port
        finally:
            handle.stop()


async def test_a_slow_request_is_closed_at_the_timeout() -> None:
    async with bounded_server(request_timeout=0.2) as (_handle, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\n")  # ... and never the rest
        started = trio.current_time()
        with trio.fail_after(3):
            assert await stream.receive_some(1024) == b""  # closed without an answer
        assert 0.15 <= trio.current_time() - started < 2
        await stream.aclose()


async def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    async with bounded_server(max_connections=2, request_timeout=10) as (handle, port):
        slow = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await wait_until(lambda: handle.connections == 2, "serving two")
        third = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(3):
            assert await third.receive_some(1024) == b""
        assert handle.refused == 1
        for stream in [*slow, third]:
            await stream.aclose()
        await wait_until(lambda: not handle.connections, "free again")  # then answered
        assert (await get(port, "/healthz"))[0] == 200
