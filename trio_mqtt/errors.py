"""Typed exceptions raised by trio-mqtt.

Protocol errors follow h11/wsproto: an error caused by the peer's bytes is a
``RemoteProtocolError``; an error caused by our own attempt to send something the
protocol forbids is a ``LocalProtocolError``.
"""

from __future__ import annotations

from trio_mqtt.mqtt.reason_codes import ReasonCode


class TrioMQTTError(Exception):
    """Base class of every exception raised by trio-mqtt."""


class ConfigError(TrioMQTTError):
    """The configuration is invalid.

    The message names the file (when there is one), the key, the bad value and the
    allowed values, so that a user can fix it without reading our source.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        self.detail = message  # the message without the "file: key: " prefix
        where = ""
        if file is not None:
            where = f"{file}: "
        if key is not None:
            where += f"{key}: "
        super().__init__(f"{where}{message}")


class MQTTProtocolError(TrioMQTTError):
    """Base class of MQTT protocol violations; carries the MQTT 5 reason code."""

    def __init__(self, message: str, reason_code: ReasonCode = ReasonCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class RemoteProtocolError(MQTTProtocolError):
    """The peer sent bytes that break the MQTT protocol (malformed, too large, ...)."""


class LocalProtocolError(MQTTProtocolError):
    """We were asked to encode or send something the MQTT protocol forbids."""


class ProxyProtocolError(TrioMQTTError):
    """A PROXY protocol header (v1 or v2) is invalid; the message says what was wrong."""


class ListenerBindError(TrioMQTTError, OSError):
    """A listener cannot start: its address cannot be bound, or its host resolved.

    The message names the listener and the address, e.g. ``listener 'lb' cannot bind
    0.0.0.0:1883: address already in use``. It is an ``OSError`` too, with the ``errno``
    of the failure (``errno.EADDRINUSE``, ``errno.EACCES``, ...; for a host that does not
    resolve, the ``socket.gaierror`` code).
    """

    def __init__(self, listener: str, bind: str, reason: str, errno: int | None = None) -> None:
        super().__init__(errno, f"listener {listener!r} cannot bind {bind}: {reason}")
        self.listener = listener
        self.bind = bind
        self.reason = reason

    def __str__(self) -> str:
        return str(self.strerror)
