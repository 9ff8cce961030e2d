"""Counters the broker keeps; readable from the embedding API and, later, $SYS."""

from __future__ import annotations

import attrs


@attrs.define
class BrokerStats:
    connects: int = 0
    connects_refused: int = 0
    disconnects: int = 0
    protocol_errors: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0
    wills_published: int = 0
