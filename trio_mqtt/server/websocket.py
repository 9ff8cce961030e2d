"""MQTT over WebSockets (``ws`` and ``wss`` listeners), as MQTT 5.0 section 6 describes.

``accept_websocket`` reads the HTTP upgrade request (h11 parses it, with a bound on its
size and a deadline), checks path, method, version and subprotocol (our policy, with the
HTTP status each refusal deserves), then lets wsproto's own handshake accept it (the 101
response and its Sec-WebSocket-Accept), and returns a ``WebSocketStream``: a
``trio.abc.Stream`` whose ``receive_some`` returns the payload bytes of binary frames
(MQTT packets may span frames and a frame may hold several packets: the MQTT layer just
sees a byte stream) and whose ``send_all`` sends one binary message. wsproto does the
framing (sans-IO, like our own protocol layers); partial frames are passed on as they
arrive, so memory stays bounded by the read size whatever length a frame header
announces.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus

import attrs
import h11
import trio
from wsproto import WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from trio_mqtt.networks import IPNetwork, address_in
from trio_mqtt.peer import Endpoint, PeerInfo
from trio_mqtt.proxy.forwarded import ForwardedHeader, forwarded_client
from trio_mqtt.server.prefixed_stream import take_front
from trio_mqtt.server.rejection import ConnectionRejected

__all__ = [
    "MAX_UPGRADE_REQUEST_SIZE",
    "MQTT_SUBPROTOCOLS",
    "WebSocketStream",
    "accept_websocket",
    "forwarded_peer",
]

log = logging.getLogger("trio_mqtt.websocket")

#: The largest HTTP upgrade request (request line and headers) we buffer; larger: 431.
MAX_UPGRADE_REQUEST_SIZE = 16 * 1024
#: Subprotocols we answer, in order of preference: "mqtt" (MQTT 3.1.1 and 5.0) and
#: "mqttv3.1" (what MQTT 3.1 clients offer).
MQTT_SUBPROTOCOLS = ("mqtt", "mqttv3.1")
RECEIVE_SIZE = 65536
#: How long ``aclose`` (or a protocol error) may spend sending a Close frame before it
#: just closes the socket.
CLOSE_FRAME_TIMEOUT = 0.5


class _Refusal(Exception):
    """An HTTP error response to send before closing."""

    def __init__(self, status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


async def accept_websocket(
    stream: trio.abc.Stream,
    *,
    path: str,
    upgrade_timeout: float,
    peer: PeerInfo,
    trusted_proxies: Sequence[IPNetwork] = (),
    forwarded_header: ForwardedHeader = ForwardedHeader.X_FORWARDED_FOR,
) -> tuple[WebSocketStream, PeerInfo]:
    """Complete the server side of a WebSocket upgrade on *stream* within *upgrade_timeout* seconds.

    Raises ConnectionRejected (after sending an HTTP error when one applies) if the
    request is not a WebSocket upgrade to *path* that the MQTT subprotocol can serve.
    Returns the stream and the PeerInfo: the client address from *forwarded_header* when
    the peer is one of *trusted_proxies* (see ``forwarded_peer``), else *peer*.
    """
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_UPGRADE_REQUEST_SIZE)
    try:
        with trio.fail_after(upgrade_timeout):
            try:
                request = await _read_request(stream, http)
                subprotocol = _check_request(request, path)
                websocket, response = _accept(request, subprotocol)
                peer = forwarded_peer(request.headers, peer, trusted_proxies, forwarded_header)
            except _Refusal as refusal:
                await _send_refusal(stream, http, refusal)
                raise ConnectionRejected(
                    "ws-upgrade", f"WebSocket upgrade refused ({refusal.status}): {refusal.detail}"
                ) from None
            await _send(stream, response)
    except trio.TooSlowError:
        raise ConnectionRejected(
            "ws-upgrade", f"no WebSocket upgrade within {upgrade_timeout:g}s"
        ) from None
    trailing, _closed = http.trailing_data
    if trailing:  # the client's first frames, sent right behind its request
        websocket.receive_data(bytes(trailing))
    return WebSocketStream(stream, websocket, peer=peer), peer


_FORWARDING_HEADERS = frozenset(h.value.encode() for h in ForwardedHeader)


def forwarded_peer(
    headers: Iterable[tuple[bytes, bytes]],
    peer: PeerInfo,
    trusted_proxies: Sequence[IPNetwork],
    header: ForwardedHeader,
) -> PeerInfo:
    """*peer* with the client address an HTTP reverse proxy reports in *header*.

    Only when the connection had no PROXY header (a PROXY header's address wins) and
    the socket's peer is one of *trusted_proxies*; the address is then the right-most
    entry that is not a trusted proxy (``trio_mqtt.proxy.forwarded``). Otherwise, or when
    the header names no usable address, *peer* stays as it is and a forwarding header
    that was sent is logged at DEBUG.
    """
    present = [(name, value) for name, value in headers if name in _FORWARDING_HEADERS]
    if not present:
        return peer
    names = ", ".join(sorted({name.decode() for name, _ in present}))
    who = peer.describe()
    if peer.proxy_header is not None:
        log.debug("%s from %s ignored: the PROXY header's address is used", names, who)
        return peer
    if not address_in(peer.client_host, trusted_proxies):
        log.debug("%s from %s ignored: not in ws_trusted_proxies", names, who)
        return peer
    wanted = header.value.encode()
    values = [value for name, value in present if name == wanted]
    if not values:
        log.debug("%s from %s ignored: ws_forwarded_header is %s", names, who, header.value)
        return peer
    found = forwarded_client(header, values, trusted_proxies)
    if found is None:
        log.debug("%s from %s names no usable client address; keeping the peer", names, who)
        return peer
    return attrs.evolve(
        peer,
        client=Endpoint(found.host, found.port),
        proxy=peer.remote,
        forwarded_by=header.value,
    )


def _accept(request: h11.Request, subprotocol: str | None) -> tuple[WSConnection, bytes]:
    """wsproto's server handshake for the request h11 read: the WebSocket, and its 101."""
    websocket = WSConnection(ConnectionType.SERVER)
    try:
        websocket.initiate_upgrade_connection(list(request.headers), request.target)
    except RemoteProtocolError as exc:  # what our checks let through and wsproto does not
        hint = exc.event_hint
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        raise _Refusal(status, str(exc)) from None
    for _request in websocket.events():
        pass  # the request again, as wsproto's Request event: already checked
    return websocket, websocket.send(AcceptConnection(subprotocol=subprotocol))


async def _read_request(stream: trio.abc.Stream, http: h11.Connection) -> h11.Request:
    request: h11.Request | None = None
    eof = False
    received = 0
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            if eof:
                raise ConnectionRejected(
                    "ws-upgrade",
                    "connection closed in the middle of the WebSocket upgrade request",
                    level=logging.INFO,
                ) from None
            raise _Refusal(exc.error_status_hint, f"bad HTTP request: {exc}") from None
        if event is h11.NEED_DATA:
            # Never read past the bound: h11 then refuses an incomplete request that
            # fills it (431), and a complete one is at most MAX_UPGRADE_REQUEST_SIZE.
            size = min(4096, MAX_UPGRADE_REQUEST_SIZE + 1 - received)
            try:
                data = await stream.receive_some(size)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionRejected(
                    "ws-upgrade",
                    f"connection lost before the WebSocket upgrade: {exc}",
                    level=logging.INFO,
                ) from None
            eof = not data
            received += len(data)
            http.receive_data(bytes(data))
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionRejected(
                "ws-upgrade", "connection closed before the WebSocket upgrade", level=logging.INFO
            )
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            raise _Refusal(400, "a WebSocket upgrade request has no body")
        elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            if request is None:  # pragma: no cover - h11 always gives the Request first
                raise _Refusal(400, "no request")
            return request
        else:  # pragma: no cover - nothing else comes before a response is sent
            raise _Refusal(400, f"unexpected HTTP event {event!r}")


def _check_request(request: h11.Request, path: str) -> str | None:
    """The subprotocol to answer with (None if the client offered none), or _Refusal."""
    target = request.target.decode("ascii", "replace")
    request_path = target.partition("?")[0]
    if request_path != path:
        raise _Refusal(404, f"path {request_path!r} is not the MQTT endpoint {path!r}")
    if request.method != b"GET":
        method = request.method.decode("ascii", "replace")
        raise _Refusal(405, f"method {method} (a WebSocket upgrade is a GET)", (("Allow", "GET"),))
    headers = _headers(request)
    connection_tokens = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
    if headers.get(b"upgrade", b"").strip().lower() != b"websocket" or (
        b"upgrade" not in connection_tokens
    ):
        raise _Refusal(
            426,
            "not a WebSocket upgrade (needs 'Upgrade: websocket' and 'Connection: Upgrade')",
            (("Upgrade", "websocket"),),
        )
    if headers.get(b"sec-websocket-version", b"").strip() != b"13":
        raise _Refusal(
            426, "unsupported Sec-WebSocket-Version (need 13)", (("Sec-WebSocket-Version", "13"),)
        )
    key = headers.get(b"sec-websocket-key", b"").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid_key = False
    if not valid_key:
        raise _Refusal(400, "missing or invalid Sec-WebSocket-Key")
    offered = [
        token.strip()
        for token in headers.get(b"sec-websocket-protocol", b"")
        .decode("ascii", "replace")
        .split(",")
        if token.strip()
    ]
    if not offered:
        return None
    for subprotocol in MQTT_SUBPROTOCOLS:
        if subprotocol in offered:
            return subprotocol
    raise _Refusal(
        400,
        f"subprotocols {', '.join(offered)} offered; MQTT needs 'mqtt'",
    )


def _headers(request: h11.Request) -> dict[bytes, bytes]:
    """Header name (lower case) -> value; repeated headers joined with ", "."""
    joined: dict[bytes, bytes] = {}
    for name, value in request.headers:
        joined[name] = joined[name] + b", " + value if name in joined else value
    return joined


async def _send_refusal(stream: trio.abc.Stream, http: h11.Connection, refusal: _Refusal) -> None:
    """The HTTP error response, written by h11 (it may answer even a request it could not
    parse), with the detail as a plain-text body."""
    body = f"{refusal.detail}\n".encode()
    head = h11.Response(
        status_code=refusal.status,
        reason=HTTPStatus(refusal.status).phrase,
        headers=[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *refusal.headers,
        ],
    )
    response = b"".join(
        http.send(event) or b"" for event in (head, h11.Data(data=body), h11.EndOfMessage())
    )
    with contextlib.suppress(ConnectionRejected):  # the client is gone; the refusal is logged
        await _send(stream, response)


async def _send(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectionRejected(
            "ws-upgrade", f"connection lost during the WebSocket upgrade: {exc}", level=logging.INFO
        ) from None


class WebSocketStream(trio.abc.Stream):
    """An open WebSocket connection carrying MQTT, as a byte stream.

    ``receive_some`` answers pings and the closing handshake itself, and returns b""
    (end of stream) once the peer closes. A text frame (MQTT-6.0.0-1) makes it close the
    connection (code 1003) and raise ``trio.BrokenResourceError``. ``send_all`` may run
    while ``receive_some`` does (a lock keeps the frames they write whole).

    Binary payload is handed on as it arrives, whatever the frame and message sizes:
    MQTT packets need not line up with frames or messages [MQTT-6.0.0-2], so a message
    may carry any number of packets, and the MQTT reader above enforces
    ``max_packet_size`` per packet (an oversized one gets DISCONNECT 0x95 on 5.0).
    Memory stays bounded: at most one transport read of payload waits here.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        connection: WSConnection,
        *,
        peer: PeerInfo,
    ) -> None:
        self.transport_stream = transport_stream
        self._ws = connection
        self._peer = peer
        self._pending = bytearray()  # payload bytes received, not yet returned
        self._eof = False
        self._closed = False
        self._send_lock = trio.Lock()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._closed:
            raise trio.ClosedResourceError("the WebSocket stream is closed")
        while True:
            await self._process_events()
            if self._pending:
                await trio.lowlevel.checkpoint()
                return take_front(self._pending, max_bytes)
            if self._eof:
                await trio.lowlevel.checkpoint()
                return b""
            received = await self.transport_stream.receive_some(RECEIVE_SIZE)
            if not received:
                self._eof = True  # TCP closed without a Close frame
            else:
                self._ws.receive_data(bytes(received))

    async def _process_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, BytesMessage):
                self._pending += event.data
            elif isinstance(event, TextMessage):
                await self._fail(
                    CloseReason.UNSUPPORTED_DATA, "text frame (MQTT must use binary frames)"
                )
            elif isinstance(event, Ping):
                await self._send_frame(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.OPEN:
                    # wsproto reports a framing error as a CloseConnection it did not get
                    await self._fail(event.code, f"WebSocket protocol error: {event.reason}")
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._send_frame(self._ws.send(event.response()))
                if event.code not in (CloseReason.NORMAL_CLOSURE, CloseReason.GOING_AWAY):
                    log.info(
                        "WebSocket closed by %s: code %d %s",
                        self._peer.describe(),
                        event.code,
                        event.reason or "",
                    )
                self._eof = True
                return
            # Pong: nothing to do.

    async def _fail(self, code: int, why: str) -> None:
        """Close the WebSocket with *code* after a violation; raises BrokenResourceError."""
        log.warning("closing WebSocket from %s: %s", self._peer.describe(), why)
        self._eof = True
        if self._ws.state is ConnectionState.OPEN:
            data = self._ws.send(CloseConnection(code=code, reason=why))
            with trio.move_on_after(CLOSE_FRAME_TIMEOUT):
                await self._send_frame(data)
                await self._drain_until_closed()
        raise trio.BrokenResourceError(why)

    async def _drain_until_closed(self) -> None:
        """Read and drop data until the peer's Close frame or EOF.

        Closing a socket with unread data makes the kernel reset the connection, and the
        peer may then lose our Close frame; RFC 6455 has the peer answer it instead.
        """
        try:
            while self._ws.state is not ConnectionState.CLOSED:
                data = await self.transport_stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                self._ws.receive_data(bytes(data))
                for _event in self._ws.events():
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _send_frame(self, data: bytes) -> None:
        try:
            async with self._send_lock:
                await self.transport_stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._eof = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the WebSocket stream is closed")
        if not data or self._ws.state is ConnectionState.LOCAL_CLOSING:
            # After our Close frame nothing more may be sent; the data is dropped rather
            # than failing the writer, which would cut the closing handshake short.
            await trio.lowlevel.checkpoint()
            return
        try:
            frame = self._ws.send(BytesMessage(data=bytes(data)))
        except LocalProtocolError:
            raise trio.BrokenResourceError("the WebSocket connection is closing") from None
        async with self._send_lock:
            await self.transport_stream.send_all(frame)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send a Close frame (1000) if the connection is still open, then close.

        The Close frame is tried even when the caller is cancelled (``aclose_forcefully``,
        as the connection runner does), for at most CLOSE_FRAME_TIMEOUT: a few bytes that
        tell a browser client the close was intended (1000, not 1006).
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._ws.state is ConnectionState.OPEN:
                data = self._ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_FRAME_TIMEOUT):
                    await self._send_frame(data)
        finally:
            await self.transport_stream.aclose()
