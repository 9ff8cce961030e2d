"""The broker's Prometheus metrics, read from its own counters when scraped.

Nothing here runs on the PUBLISH path: the broker keeps plain integers where events
happen (``BrokerStats``, each ``ListenerHandle``), and ``BrokerCollector`` turns them
into metric families each time ``/metrics`` (or ``Broker.metrics_text()``) is asked for.
Every broker has its own ``CollectorRegistry``, so several brokers in one process (tests,
embedding) never mix their numbers. docs/operations.md lists the metrics.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping

import attrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.cluster.counters import ClusterFigures
from trio_mqtt.server.listener import ListenerHandle

__all__ = [
    "CONTENT_TYPE",
    "LAG_BUCKETS",
    "LAG_INTERVAL",
    "BrokerCollector",
    "LoopLag",
    "make_registry",
    "measure_loop_lag",
    "render",
]

PREFIX = "trio_mqtt"
#: What ``render`` returns, for the Content-Type header.
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: How often the event-loop lag is measured (seconds).
LAG_INTERVAL = 0.5
#: The lag histogram's upper bounds (seconds); +Inf comes last.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@attrs.define
class LoopLag:
    """How late the lag task woke from its sleeps: the event loop's responsiveness.

    A late wake-up means some step held the loop (a big batch, a slow hook, a save)
    while every connection waited.
    """

    last: float = 0.0
    max: float = 0.0
    count: int = 0
    total: float = 0.0
    # per LAG_BUCKETS bound, then +Inf: not cumulative (the collector adds them up)
    buckets: list[int] = attrs.Factory(lambda: [0] * (len(LAG_BUCKETS) + 1))

    def observe(self, lag: float) -> None:
        self.last = lag
        self.max = max(self.max, lag)
        self.count += 1
        self.total += lag
        self.buckets[bisect.bisect_left(LAG_BUCKETS, lag)] += 1


async def measure_loop_lag(lag: LoopLag, interval: float = LAG_INTERVAL) -> None:
    """Sleep ``interval`` again and again; record how late each wake-up was."""
    while True:
        due = trio.current_time() + interval
        await trio.sleep_until(due)
        lag.observe(max(0.0, trio.current_time() - due))


def _label(reason: str) -> str:
    return reason.replace("-", "_")


class BrokerCollector(Collector):
    """Reads a broker's counters at scrape time (see the module docstring)."""

    def __init__(
        self,
        core: BrokerCore,
        listeners: Mapping[str, ListenerHandle],
        lag: LoopLag,
        cluster: Callable[[], ClusterFigures] | None = None,
        parked: Callable[[], int] = lambda: 0,
    ) -> None:
        self._core = core
        self._listeners = listeners  # the Broker's dict: listeners started later appear
        self._lag = lag
        self._cluster = cluster  # None: no [cluster], no cluster metrics
        self._parked = parked

    def collect(self) -> Iterator[Metric]:
        yield from self._listener_metrics()
        yield from self._message_metrics()
        yield from self._state_metrics()
        yield from self._lag_metrics()
        if self._cluster is not None:
            yield from self._cluster_metrics(self._cluster())

    def _cluster_metrics(self, figures: ClusterFigures) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_cluster_nats_connected",
            "1 while this node is connected to NATS, 0 while it serves its clients alone.",
            value=int(figures.connected),
        )
        for name, text, value in (
            (
                "joins",
                "Times this broker joined the cluster (at start, and after a loss).",
                figures.joins,
            ),
            ("nats_losses", "Times this broker lost its NATS connection.", figures.losses),
            (
                "messages_forwarded",
                "Messages published here and handed to NATS.",
                figures.forwarded,
            ),
            ("messages_received", "Messages from other nodes routed here.", figures.received),
            (
                "messages_not_forwarded",
                "Messages published here that NATS did not take (cut off, too large, subject "
                "too long): they reached this node's subscribers only.",
                figures.not_forwarded,
            ),
            (
                "messages_caught_up",
                "Messages read back from the stream after a NATS loss and delivered here.",
                figures.caught_up,
            ),
            (
                "messages_refilled",
                "Messages kept in the stream for slow clients (their queues were full), "
                "read back and queued for them.",
                figures.refilled,
            ),
        ):
            yield CounterMetricFamily(f"{PREFIX}_cluster_{name}", text, value=value)
        yield GaugeMetricFamily(
            f"{PREFIX}_cluster_messages_kept",
            "Messages kept in the stream for slow clients now, waiting for room in their queues.",
            value=figures.kept,
        )

    def _listener_metrics(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            f"{PREFIX}_connections",
            "Open connections per listener (from accept to close, MQTT or not yet).",
            labels=["listener"],
        )
        connects = CounterMetricFamily(
            f"{PREFIX}_connects",
            "Connections per listener by result: accepted (handed to MQTT), or the reason "
            "it was refused before MQTT.",
            labels=["listener", "result"],
        )
        proxy = CounterMetricFamily(
            f"{PREFIX}_proxy_headers",
            "PROXY protocol headers read, by version (v1, v2, local, unknown) and result.",
            labels=["listener", "version", "result"],
        )
        health = CounterMetricFamily(
            f"{PREFIX}_health_checks",
            "Load balancer health checks seen on the listener.",
            labels=["listener"],
        )
        tls = CounterMetricFamily(
            f"{PREFIX}_tls_handshakes",
            "TLS handshakes on tls/wss listeners by result (ok, failed, closed, timeout).",
            labels=["listener", "result"],
        )
        for name, handle in list(self._listeners.items()):
            connections.add_metric([name], handle.connections)
            connects.add_metric([name, "accepted"], handle.accepted)
            for reason, count in sorted(handle.rejections.items()):
                connects.add_metric([name, _label(reason)], count)
            for (version, result), count in sorted(handle.proxy_headers.items()):
                proxy.add_metric([name, version, result], count)
            health.add_metric([name], handle.health_checks)
            for result, count in sorted(handle.tls_handshakes.items()):
                tls.add_metric([name, result], count)
        yield from (connections, connects, proxy, health, tls)
        yield GaugeMetricFamily(
            f"{PREFIX}_connections_parked",
            "Open connections whose client is quiet, held without a task of their own "
            "(all listeners; plain TCP, TLS and WebSocket).",
            value=self._parked(),
        )

    def _message_metrics(self) -> Iterator[Metric]:
        stats = self._core.stats
        received = CounterMetricFamily(
            f"{PREFIX}_messages_received",
            "PUBLISH packets received from clients, by QoS.",
            labels=["qos"],
        )
        sent = CounterMetricFamily(
            f"{PREFIX}_messages_sent",
            "PUBLISH packets sent to clients, by the QoS they were sent with.",
            labels=["qos"],
        )
        for qos in range(3):
            received.add_metric([str(qos)], stats.received_by_qos[qos])
            sent.add_metric([str(qos)], stats.sent_by_qos[qos])
        dropped = CounterMetricFamily(
            f"{PREFIX}_messages_dropped",
            "Messages not delivered to a subscriber, by reason.",
            labels=["reason"],
        )
        by_reason = dict(stats.dropped_by_reason)
        for reason, count in sorted(by_reason.items()):
            dropped.add_metric([reason], count)
        other = stats.messages_dropped - sum(by_reason.values())
        if other > 0:
            dropped.add_metric(["other"], other)
        yield from (received, sent, dropped)
        yield CounterMetricFamily(
            f"{PREFIX}_bytes_received",
            "MQTT bytes read from clients (inside TLS / WebSocket framing).",
            value=stats.bytes_received,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_bytes_sent",
            "MQTT bytes written to clients (inside TLS / WebSocket framing).",
            value=stats.bytes_sent,
        )
        mqtt_connects = CounterMetricFamily(
            f"{PREFIX}_mqtt_connects",
            "CONNECT packets by result: accepted, or refused (CONNACK with an error).",
            labels=["result"],
        )
        mqtt_connects.add_metric(["accepted"], stats.connects)
        mqtt_connects.add_metric(["refused"], stats.connects_refused)
        yield mqtt_connects
        yield CounterMetricFamily(
            f"{PREFIX}_protocol_errors",
            "Connections closed for a protocol error.",
            value=stats.protocol_errors,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_wills_published", "Will messages published.", value=stats.wills_published
        )

    def _state_metrics(self) -> Iterator[Metric]:
        core = self._core
        yield GaugeMetricFamily(
            f"{PREFIX}_sessions",
            "Sessions held, connected or not (persistent sessions of offline clients too).",
            value=len(core.sessions),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_subscriptions", "Subscriptions (topic filters).", value=len(core.router)
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_retained_messages", "Retained messages held.", value=len(core.retained)
        )

    def _lag_metrics(self) -> Iterator[Metric]:
        lag = self._lag
        yield GaugeMetricFamily(
            f"{PREFIX}_event_loop_lag_last_seconds",
            f"How late the last of the {LAG_INTERVAL:g} s lag probes woke up.",
            value=lag.last,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_event_loop_lag_max_seconds",
            "The largest event-loop lag measured since start-up.",
            value=lag.max,
        )
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*LAG_BUCKETS, float("inf")), lag.buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            f"{PREFIX}_event_loop_lag_seconds",
            f"How late the event loop ran a task due every {LAG_INTERVAL:g} s.",
            buckets=buckets,
            sum_value=lag.total,
        )


def make_registry(
    core: BrokerCore,
    listeners: Mapping[str, ListenerHandle],
    lag: LoopLag,
    cluster: Callable[[], ClusterFigures] | None = None,
    parked: Callable[[], int] = lambda: 0,
) -> CollectorRegistry:
    """A registry of its own for one broker, with the process's CPU, memory and fds too.

    ``cluster``: what reads the cluster's counters (a broker with ``[cluster]``);
    ``parked``: how many connections are parked now.
    """
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BrokerCollector(core, listeners, lag, cluster, parked))
    ProcessCollector(registry=registry)  # process_* (Linux: from /proc)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format."""
    return generate_latest(registry)
