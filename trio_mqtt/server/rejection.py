"""ConnectionRejected: a listener refused a connection before MQTT began.

The PROXY policy, the TLS handshake and the WebSocket upgrade each may refuse a
connection; they all raise this one type, so that the listener logs and counts every
refusal in one place (``ListenerHandle.rejections``).
"""

from __future__ import annotations

import logging


class ConnectionRejected(Exception):
    """Refused before MQTT: ``reason`` is the counter key, ``detail`` says why.

    ``level`` is the log level: a peer that connects and goes away without a word (a
    load balancer's TCP health check) is INFO; anything else is WARNING.
    """

    def __init__(self, reason: str, detail: str, *, level: int = logging.WARNING) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.level = level
