"""ConnectionRejected: a listener refused a connection before MQTT began.

The PROXY policy, the TLS handshake and the WebSocket upgrade each may refuse a
connection; they all raise this one type, so that the listener logs and counts every
refusal in one place (``ListenerHandle.rejections``).

A load balancer's health check is no refusal: it raises ``HealthCheck``, which the
listener counts (``ListenerHandle.health_checks``) and logs at DEBUG only.
"""

from __future__ import annotations

import logging


class ConnectionRejected(Exception):
    """Refused before MQTT: ``reason`` is the counter key, ``detail`` says why.

    ``level`` is the log level: WARNING unless the raiser says otherwise (INFO for a
    peer that merely went away or was slow).
    """

    def __init__(self, reason: str, detail: str, *, level: int = logging.WARNING) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.level = level


class TLSHandshakeRejected(ConnectionRejected):
    """The TLS handshake failed: ``result`` says how, for the listener's counter
    (``ListenerHandle.tls_handshakes``): "timeout", "closed" (the peer went away) or
    "failed" (a TLS error)."""

    def __init__(self, result: str, detail: str) -> None:
        super().__init__(
            "tls-handshake", detail, level=logging.INFO if result == "closed" else logging.WARNING
        )
        self.result = result


class HealthCheck(Exception):
    """The connection was a load balancer's health check; ``detail`` says what it did.

    A peer that closes before sending anything, a PROXY v2 ``LOCAL`` or v1 ``UNKNOWN``
    header (the proxy's own connection, no client relayed), or a PROXY header followed by
    the close (HAProxy's ``check-send-proxy``). Counted, logged at DEBUG, never refused.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AddressRefused(ConnectionRejected):
    """The client's real address is refused: ``deny_sources`` or a per-address limit.

    ``host`` is that address (the PROXY header's, else the socket's); the listener logs
    it in one fixed format for fail2ban (docs/operations.md).
    """

    def __init__(self, reason: str, host: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.host = host
