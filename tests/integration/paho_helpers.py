"""paho-mqtt 2.x as the real client in integration tests.

paho is blocking and threaded while the broker under test runs in the trio thread, so
``PahoClient`` runs paho's own network thread (``loop_start``) and collects what arrives
(CONNACK, SUBACK, messages, disconnects, log lines) under one condition variable. Its
``wait_*`` methods block with a timeout: a trio test calls them through ``blocking`` (a
worker thread), so the broker keeps serving while the test waits.

Clients are built with ``reconnect_on_failure=False``: a connection that the broker
closes stays closed, so takeover and keep-alive tests see exactly one connection.
"""

from __future__ import annotations

import functools
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

V31 = MQTTProtocolVersion.MQTTv31
V311 = MQTTProtocolVersion.MQTTv311
V5 = MQTTProtocolVersion.MQTTv5
#: The versions most tests run with, and their pytest ids.
VERSIONS = [V311, V5]
VERSION_IDS = ["3.1.1", "5.0"]

HOST = "127.0.0.1"
#: How long a test waits for something that should happen (bounded, never hit when green).
WAIT = 5.0
#: How long a test watches for something that must NOT happen.
QUIET = 0.3

# paho logs "Received CONNACK (flags, rc)" for 3.x before calling on_connect; the raw
# return code is otherwise lost (on_connect gets it mapped onto a 5.0 reason code).
_CONNACK_LOG = re.compile(r"Received CONNACK \((\d+), (\d+)\)")

T = TypeVar("T")


async def blocking(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking paho call in a worker thread, so the trio broker keeps serving."""
    return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


def properties(packet_type: int, **values: Any) -> Properties:
    """paho MQTT 5 properties for *packet_type*, e.g. ``SessionExpiryInterval=60``."""
    props = Properties(packet_type)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


def disconnect_reason(code: int) -> ReasonCode:
    """A DISCONNECT reason code as paho wants it (e.g. 0x04, with will message)."""
    return ReasonCode(PacketTypes.DISCONNECT, identifier=code)


@attrs.frozen
class Connack:
    """One CONNACK as paho reported it."""

    reason_code: int  # 5.0 reason code; paho maps a 3.x return code onto one
    session_present: bool
    properties: Properties
    return_code: int | None  # the 3.x return code byte as received; None for 5.0

    @property
    def accepted(self) -> bool:
        return self.reason_code == 0


@attrs.frozen
class Received:
    """One application message delivered to a paho subscriber."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    subscription_identifiers: tuple[int, ...]
    user_properties: tuple[tuple[str, str], ...]

    @classmethod
    def from_paho(cls, message: mqtt.MQTTMessage) -> Received:
        props = message.properties
        identifiers: list[int] = []
        user_properties: list[tuple[str, str]] = []
        if props is not None:
            raw_ids = getattr(props, "SubscriptionIdentifier", [])
            identifiers = list(raw_ids) if isinstance(raw_ids, list) else [raw_ids]
            user_properties = [tuple(pair) for pair in getattr(props, "UserProperty", [])]
        return cls(
            topic=message.topic,
            payload=bytes(message.payload),
            qos=message.qos,
            retain=bool(message.retain),
            dup=bool(message.dup),
            mid=message.mid,
            subscription_identifiers=tuple(identifiers),
            user_properties=tuple(user_properties),
        )


@attrs.frozen
class Disconnected:
    """How a connection ended, as paho's on_disconnect saw it."""

    reason_code: int  # from the server's 5.0 DISCONNECT, or paho's own code (0 = normal)
    is_failure: bool


class PahoClient:
    """A paho client whose callbacks feed thread-safe lists; blocking ``wait_*`` reads.

    Call the blocking methods from a worker thread (``await blocking(c.wait_message)``).
    """

    def __init__(
        self,
        client_id: str = "",
        *,
        protocol: MQTTProtocolVersion = V311,
        clean_session: bool | None = None,
        username: str | None = None,
        password: str | None = None,
        reconnect_on_failure: bool = False,
    ) -> None:
        self.protocol = protocol
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=protocol,
            reconnect_on_failure=reconnect_on_failure,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self._changed = threading.Condition()
        self._connacks: list[Connack] = []
        self._subacks: dict[int, list[int]] = {}
        self._messages: list[Received] = []
        self._disconnects: list[Disconnected] = []
        self.log: list[str] = []
        self._return_code: int | None = None
        self._started = False
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_log = self._on_log

    # ------------------------------------------------------------ callbacks (paho thread)

    def _on_log(self, _client: mqtt.Client, _userdata: Any, _level: int, text: str) -> None:
        with self._changed:
            self.log.append(text)
            match = _CONNACK_LOG.match(text)
            if match is not None:
                self._return_code = int(match.group(2))

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        props: Properties | None,
    ) -> None:
        with self._changed:
            return_code = None if self.protocol is V5 else self._return_code
            self._connacks.append(
                Connack(
                    reason_code=reason_code.value,
                    session_present=flags.session_present,
                    properties=props if props is not None else properties(PacketTypes.CONNACK),
                    return_code=return_code,
                )
            )
            self._changed.notify_all()

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        with self._changed:
            self._subacks[mid] = [code.value for code in reason_codes]
            self._changed.notify_all()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self._messages.append(Received.from_paho(message))
            self._changed.notify_all()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _props: Properties | None,
    ) -> None:
        with self._changed:
            self._disconnects.append(
                Disconnected(reason_code=reason_code.value, is_failure=reason_code.is_failure)
            )
            self._changed.notify_all()

    # ------------------------------------------------------------ waiting (test thread)

    def _wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(ready, timeout):
                raise TimeoutError(f"{self.client_id!r}: no {what} within {timeout}s")

    @property
    def client_id(self) -> str:
        return bytes(self.client._client_id).decode()

    def wait_connack(self, timeout: float = WAIT) -> Connack:
        """The next CONNACK (each call consumes one)."""
        self._wait_for(lambda: bool(self._connacks), timeout, "CONNACK")
        with self._changed:
            return self._connacks.pop(0)

    def wait_message(self, timeout: float = WAIT) -> Received:
        """The next application message (each call consumes one)."""
        self._wait_for(lambda: bool(self._messages), timeout, "message")
        with self._changed:
            return self._messages.pop(0)

    def wait_messages(self, count: int, timeout: float = WAIT) -> list[Received]:
        """The next *count* messages, in arrival order."""
        self._wait_for(lambda: len(self._messages) >= count, timeout, f"{count} messages")
        with self._changed:
            taken, self._messages[:count] = self._messages[:count], []
            return taken

    def extra_messages(self, quiet: float = QUIET) -> list[Received]:
        """Whatever else arrives within *quiet* seconds (should usually be nothing)."""
        time.sleep(quiet)
        with self._changed:
            taken, self._messages[:] = self._messages[:], []
            return taken

    def wait_disconnect(self, timeout: float = WAIT) -> Disconnected:
        """How the connection ended (waits for paho's on_disconnect)."""
        self._wait_for(lambda: bool(self._disconnects), timeout, "disconnect")
        with self._changed:
            return self._disconnects.pop(0)

    # ------------------------------------------------------------ actions (test thread)

    def start(
        self,
        port: int,
        *,
        keepalive: int = 10,
        clean_start: bool | None = None,
        connect_properties: Properties | None = None,
    ) -> None:
        """Send CONNECT and start paho's network thread (does not wait for CONNACK)."""
        extra: dict[str, Any] = {}
        if clean_start is not None:
            extra["clean_start"] = clean_start
        self.client.connect(HOST, port, keepalive=keepalive, properties=connect_properties, **extra)
        self.client.loop_start()
        self._started = True

    def connect(
        self,
        port: int,
        *,
        keepalive: int = 10,
        clean_start: bool | None = None,
        connect_properties: Properties | None = None,
        timeout: float = WAIT,
    ) -> Connack:
        """Connect and wait for the CONNACK (accepted or not)."""
        self.start(
            port,
            keepalive=keepalive,
            clean_start=clean_start,
            connect_properties=connect_properties,
        )
        return self.wait_connack(timeout)

    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        *,
        subscribe_properties: Properties | None = None,
        timeout: float = WAIT,
    ) -> list[int]:
        """Subscribe and wait for the SUBACK; returns its codes (granted QoS or error)."""
        result, mid = self.client.subscribe(topic, qos, properties=subscribe_properties)
        assert result is MQTTErrorCode.MQTT_ERR_SUCCESS, result
        assert mid is not None
        self._wait_for(lambda: mid in self._subacks, timeout, f"SUBACK for {topic!r}")
        with self._changed:
            return self._subacks.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        *,
        publish_properties: Properties | None = None,
        timeout: float = WAIT,
    ) -> None:
        """Publish and wait until the flow completes (sent; PUBACK; PUBCOMP)."""
        info = self.client.publish(topic, payload, qos, retain, properties=publish_properties)
        assert info.rc is MQTTErrorCode.MQTT_ERR_SUCCESS, info.rc
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"{self.client_id!r}: QoS {qos} publish to {topic!r} unfinished")

    def disconnect(self, reason_code: int | None = None, timeout: float = WAIT) -> Disconnected:
        """A clean DISCONNECT (5.0: with *reason_code*); waits until paho is done."""
        reason = None if reason_code is None else disconnect_reason(reason_code)
        self.client.disconnect(reasoncode=reason)
        ended = self.wait_disconnect(timeout)
        self.client.loop_stop()
        return ended

    def drop(self, timeout: float = WAIT) -> None:
        """End the TCP connection without DISCONNECT (an abnormal disconnect for MQTT)."""
        sock = self.client.socket()
        assert isinstance(sock, socket.socket), "not connected"
        sock.shutdown(socket.SHUT_RDWR)  # FIN to the broker; wakes paho's select too
        self.wait_disconnect(timeout)
        self.client.loop_stop()

    def freeze(self) -> None:
        """Stop paho's network thread, leaving the socket open: no more PINGREQs."""
        self.client.loop_stop()
        self._started = False

    @property
    def local_port(self) -> int:
        """Our end of the TCP connection (what the broker sees as the client's port)."""
        sock = self.client.socket()
        assert isinstance(sock, socket.socket), "not connected"
        port: int = sock.getsockname()[1]
        return port

    def close(self) -> None:
        """Best-effort cleanup: stop the thread and close every socket paho holds."""
        if self._started:
            if self.client.is_connected():
                self.client.disconnect()
            self.client.loop_stop()
            self._started = False
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        for pair_end in (self.client._sockpairR, self.client._sockpairW):
            if pair_end is not None:
                pair_end.close()


@asynccontextmanager
async def paho_client(
    port: int,
    client_id: str = "",
    *,
    protocol: MQTTProtocolVersion = V311,
    clean_session: bool | None = None,
    keepalive: int = 10,
    clean_start: bool | None = None,
    connect_properties: Properties | None = None,
    will: tuple[str, bytes, int, bool] | None = None,
    **client_options: Any,
) -> AsyncIterator[PahoClient]:
    """A paho client connected and accepted (CONNACK 0); closed on leaving.

    *will* is ``(topic, payload, qos, retain)``.
    """
    client = PahoClient(client_id, protocol=protocol, clean_session=clean_session, **client_options)
    try:
        if will is not None:
            client.client.will_set(*will)
        connack = await blocking(
            client.connect,
            port,
            keepalive=keepalive,
            clean_start=clean_start,
            connect_properties=connect_properties,
        )
        assert connack.accepted, connack
        yield client
    finally:
        with trio.CancelScope(shield=True):  # close even when the test is cancelled
            await blocking(client.close)


__all__ = [
    "HOST",
    "QUIET",
    "V5",
    "V31",
    "V311",
    "VERSIONS",
    "VERSION_IDS",
    "WAIT",
    "Connack",
    "Disconnected",
    "PahoClient",
    "Received",
    "blocking",
    "disconnect_reason",
    "paho_client",
    "properties",
]
