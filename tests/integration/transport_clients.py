"""paho-mqtt over tls, ws and wss, blocking, for trio tests (call it through ``run``).

``Paho`` records CONNACKs, messages and disconnects; ``connect`` returns the CONNACK
reason code, or None when the connection failed before one (TLS refused, WebSocket
upgrade refused, connection closed).
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from server.certs import CertFiles

WAIT = 5.0


class Paho:
    """A blocking paho client (call it through ``trio.to_thread``) that records events."""

    def __init__(
        self,
        client_id: str,
        *,
        websockets: bool = False,
        ws_path: str = "/mqtt",
        ws_headers: dict[str, str] | None = None,
        ca_file: str | None = None,
        cert: CertFiles | None = None,
        username: str | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            transport="websockets" if websockets else "tcp",
            reconnect_on_failure=False,
        )
        if websockets:
            self.client.ws_set_options(path=ws_path, headers=ws_headers)
        if ca_file is not None:
            self.client.tls_set(
                ca_certs=ca_file,
                certfile=None if cert is None else cert.certfile,
                keyfile=None if cert is None else cert.keyfile,
            )
        if username is not None:
            self.client.username_pw_set(username, "ignored")
        self.connack: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.connack_or_disconnect = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_disconnect = self._on_disconnect
        self._looping = False

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        self.connack.put(code.value)
        self.connack_or_disconnect.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnected.set()
        self.connack_or_disconnect.set()

    def connect(self, port: int, bind_address: str = "") -> int | None:
        """The CONNACK reason code, or None if the connection failed before one."""
        try:
            self.client.connect("127.0.0.1", port, keepalive=10, bind_address=bind_address)
        except (OSError, mqtt.WebsocketConnectionError):  # ssl.SSLError is an OSError
            return None
        self.client.loop_start()
        self._looping = True
        assert self.connack_or_disconnect.wait(WAIT), "neither CONNACK nor disconnect"
        try:
            return self.connack.get_nowait()
        except queue.Empty:
            return None

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, _mid = self.client.subscribe(topic, qos)
        assert result is MQTTErrorCode.MQTT_ERR_SUCCESS
        assert self.subscribed.wait(WAIT), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    @property
    def local_port(self) -> int:
        """Our end of the TCP connection (what a proxy reports as the client's port)."""
        sock = self.client.socket()
        sock = getattr(sock, "_socket", sock)  # paho's WebSocket wrapper holds the socket
        assert isinstance(sock, socket.socket), sock  # ssl.SSLSocket is one too
        port: int = sock.getsockname()[1]
        return port

    def message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=WAIT)

    def close(self) -> None:
        if self._looping:
            if self.client.is_connected():
                self.client.disconnect()
            self.client.loop_stop()
            self._looping = False
        sock = self.client.socket()
        if sock is not None:
            sock.close()


async def run(function: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(function, *args)


@asynccontextmanager
async def paho(**options: Any) -> AsyncIterator[Paho]:
    client = Paho(**options)
    try:
        yield client
    finally:
        await run(client.close)
