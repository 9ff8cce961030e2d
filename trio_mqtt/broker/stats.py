"""Counters the broker keeps; readable from the embedding API, $SYS and ``/metrics``.

Plain integers, incremented where the event happens (one increment, never a lookup
more, on the PUBLISH path); the metrics endpoint reads them when it is scraped.
"""

from __future__ import annotations

from collections import Counter

import attrs

#: ``dropped_by_reason`` keys: why a message was not delivered to a subscriber.
DROP_QUEUE_FULL = "queue_full"  # the session's max_queued_bytes / max_queued_messages
DROP_OFFLINE_QOS0 = "offline_qos0"  # QoS 0 for an offline session (never queued)
DROP_TOO_LARGE = "too_large"  # larger than the client's Maximum Packet Size
DROP_LOCAL_BUFFER_FULL = "local_buffer_full"  # an in-process subscriber fell behind


@attrs.define
class BrokerStats:
    connects: int = 0
    connects_refused: int = 0
    disconnects: int = 0
    protocol_errors: int = 0
    # PUBLISH packets received from clients, by their QoS (index 0, 1, 2)
    received_by_qos: list[int] = attrs.Factory(lambda: [0, 0, 0])
    # PUBLISH packets sent to clients, by the QoS they were sent with
    sent_by_qos: list[int] = attrs.Factory(lambda: [0, 0, 0])
    messages_dropped: int = 0
    # the drops by reason (DROP_*); a drop counted only in messages_dropped is "other"
    dropped_by_reason: Counter[str] = attrs.Factory(Counter)
    wills_published: int = 0
    # MQTT bytes read from and written to clients (after TLS / WebSocket / PROXY framing)
    bytes_received: int = 0
    bytes_sent: int = 0
    # MQTT packets of every type read from and written to clients (PUBLISH included)
    packets_received: int = 0
    packets_sent: int = 0
    # the payload bytes of the PUBLISH packets counted in received_by_qos / sent_by_qos
    publish_bytes_received: int = 0
    publish_bytes_sent: int = 0
    # network connections opened (before any CONNECT), and sessions ended by expiry
    connections_opened: int = 0
    sessions_expired: int = 0

    @property
    def messages_received(self) -> int:
        received = self.received_by_qos
        return received[0] + received[1] + received[2]

    @property
    def messages_sent(self) -> int:
        sent = self.sent_by_qos
        return sent[0] + sent[1] + sent[2]

    def dropped(self, reason: str) -> None:
        """Count one dropped message, for ``reason`` (a DROP_* name)."""
        self.messages_dropped += 1
        self.dropped_by_reason[reason] += 1
