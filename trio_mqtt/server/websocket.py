"""MQTT over WebSockets (``ws`` and ``wss`` listeners), as MQTT 5.0 section 6 describes.

``accept_websocket`` reads the HTTP upgrade request (h11 parses it, with a bound on its
size and a deadline), checks path, method, version and subprotocol (our policy, with the
HTTP status each refusal deserves), then lets the ``websockets`` handshake accept it
(the 101 response and its Sec-WebSocket-Accept), and returns a ``WebSocketStream``: a
``trio.abc.Stream`` whose ``receive_some`` returns the payload bytes of binary frames
(MQTT packets may span frames and a frame may hold several packets: the MQTT layer just
sees a byte stream) and whose ``send_all`` sends one binary message.

The handshake's 101 and the framing are the ``websockets`` library's sans-IO protocol
(``ServerProtocol`` for the 101, ``Protocol`` for the frames; no I/O of their own,
like our own protocol layers). It replaced wsproto, whose frame parser cost about three
times as much per frame: 11.5 against 3.6 us for a frame of one small PUBLISH, as
clients such as paho-mqtt and MQTT.js send them (docs/performance.md). A frame is
handed on once it is complete, so one frame may take at most the broker's
``max_packet_size`` (or ``RECEIVE_SIZE``, if larger): enough for the largest packet a
client may send; a larger frame is closed with 1009. A message may run over any number
of frames. The one frame shape that carries almost all the traffic, a binary message in
one masked frame, is unmasked by ``WebSocketStream`` itself: ``websockets`` parses each
frame in a generator, which was a third of the broker's CPU with a frame per PUBLISH.
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
from websockets.datastructures import Headers
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

try:  # the C one, which websockets' own parser uses where it was built
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a websockets without its C extension
    from websockets.utils import apply_mask

from trio_mqtt.networks import IPNetwork, address_in
from trio_mqtt.peer import Endpoint, PeerInfo
from trio_mqtt.proxy.forwarded import ForwardedHeader, forwarded_client
from trio_mqtt.server.prefixed_stream import take_front
from trio_mqtt.server.rejection import ConnectionRejected
from trio_mqtt.server.tls_stream import TLSStream
from trio_mqtt.server.watched_stream import socket_fd

__all__ = [
    "MAX_UPGRADE_REQUEST_SIZE",
    "MQTT_SUBPROTOCOLS",
    "WebSocketStream",
    "accept_websocket",
    "forwarded_peer",
]

log = logging.getLogger("trio_mqtt.websocket")
#: The logger handed to ``websockets``: it says "connection open" and "connection closed"
#: at INFO for every connection, which our own connect and disconnect lines already say.
_protocol_log = logging.getLogger("trio_mqtt.websocket.protocol")
_protocol_log.setLevel(logging.WARNING)

#: The largest HTTP upgrade request (request line and headers) we buffer; larger: 431.
MAX_UPGRADE_REQUEST_SIZE = 16 * 1024
#: Subprotocols we answer, in order of preference: "mqtt" (MQTT 3.1.1 and 5.0) and
#: "mqttv3.1" (what MQTT 3.1 clients offer).
MQTT_SUBPROTOCOLS = ("mqtt", "mqttv3.1")
RECEIVE_SIZE = 65536
#: How long ``aclose`` (or a protocol error) may spend sending a Close frame before it
#: just closes the socket.
CLOSE_FRAME_TIMEOUT = 0.5
#: A frame's first byte with FIN set, no RSV bits (no extension is negotiated) and the
#: binary opcode: a whole binary message, the frame MQTT clients send.
_FINAL_BINARY = 0x80 | Opcode.BINARY
#: Close codes a peer's Close frame carries without anything to log.
_ORDINARY_CLOSE_CODES = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY})


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
    max_frame_size: int = RECEIVE_SIZE,
) -> tuple[WebSocketStream, PeerInfo]:
    """Complete the server side of a WebSocket upgrade on *stream* within *upgrade_timeout* seconds.

    Raises ConnectionRejected (after sending an HTTP error when one applies) if the
    request is not a WebSocket upgrade to *path* that the MQTT subprotocol can serve.
    Returns the stream and the PeerInfo: the client address from *forwarded_header* when
    the peer is one of *trusted_proxies* (see ``forwarded_peer``), else *peer*. A frame
    longer than *max_frame_size* (the broker's ``max_packet_size``; at least 64 KiB) closes
    the WebSocket (1009).
    """
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_UPGRADE_REQUEST_SIZE)
    try:
        with trio.fail_after(upgrade_timeout):
            try:
                request = await _read_request(stream, http)
                subprotocol = _check_request(request, path)
                websocket, response = _accept(request, subprotocol, max_frame_size)
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
    # (the client's first frames may have come right behind its request)
    trailing, _closed = http.trailing_data
    websocket_stream = WebSocketStream(
        stream,
        websocket,
        peer=peer,
        max_frame_size=_frame_limit(max_frame_size),
        received=bytes(trailing),
    )
    return websocket_stream, peer


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


def _accept(
    request: h11.Request, subprotocol: str | None, max_frame_size: int
) -> tuple[Protocol, bytes]:
    """The ``websockets`` server handshake for the request h11 read and we checked: the
    101 (Sec-WebSocket-Accept, our choice of subprotocol), and the open WebSocket that
    frames what follows it."""
    chosen = None if subprotocol is None else Subprotocol(subprotocol)
    handshake = ServerProtocol(
        select_subprotocol=lambda _handshake, _offered: chosen, logger=_protocol_log
    )
    headers = Headers(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
    )
    response = handshake.accept(Request(request.target.decode("ascii", "replace"), headers))
    if response.status_code != 101:  # what our checks let through and websockets does not
        raise _Refusal(response.status_code, response.body.decode("utf-8", "replace").strip())
    handshake.send_response(response)
    websocket = Protocol(
        Side.SERVER,
        state=State.OPEN,
        max_size=(None, _frame_limit(max_frame_size)),
        logger=_protocol_log,
    )
    return websocket, b"".join(handshake.data_to_send())


def _frame_limit(max_frame_size: int) -> int:
    """The longest frame taken: ``max_frame_size``, but never below RECEIVE_SIZE."""
    return max(max_frame_size, RECEIVE_SIZE)


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

    ``receive_some`` answers pings and the closing handshake itself (``websockets``
    queues the Pong and the Close, this class writes them), and returns b"" (end of
    stream) once the peer closes. A text frame (MQTT-6.0.0-1) makes it close the
    connection (code 1003) and raise ``trio.BrokenResourceError``; so does a framing
    error (1002) or a frame over the size limit (1009). ``send_all`` may run while
    ``receive_some`` does (a lock keeps the frames they write whole).

    Binary payload is handed on frame by frame, whatever the message sizes: MQTT
    packets need not line up with frames or messages [MQTT-6.0.0-2], so a message may
    carry any number of packets, and the MQTT reader above enforces ``max_packet_size``
    per packet (an oversized one gets DISCONNECT 0x95 on 5.0).

    The frame a client sends for each MQTT packet (binary, final, masked, outside a
    fragmented message) is unmasked here (``_frame``); every other frame, whole, goes
    to ``websockets``, which checks it and answers it as before. Its generator-based
    parser cost about a third of the broker's CPU with a frame per PUBLISH.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        protocol: Protocol,
        *,
        peer: PeerInfo,
        max_frame_size: int = RECEIVE_SIZE,
        received: bytes = b"",
    ) -> None:
        self.transport_stream = transport_stream
        self._ws = protocol
        self._peer = peer
        self._max_frame_size = max_frame_size  # (as the protocol's max_fragment_size)
        self._inbound = bytearray()  # bytes received, not yet a whole frame
        self._pending = bytearray()  # payload bytes received, not yet returned
        self._fragmented = False  # a message of several frames is not over yet
        self._by_protocol = False  # every byte goes to websockets from now on
        self._handed = False  # websockets was given bytes since _process_events ran
        self._events: list[Frame] = []  # frames for _process_events to see to
        self._eof = False
        self._closed = False
        self._send_lock = trio.Lock()
        if received:
            self._frame(received)

    @property
    def wait_fd(self) -> int:
        """The socket ``receive_some`` waits for, in no cancel scope of its own (ws on a
        socket, wss through a ``TLSStream`` on one); -1 if none.

        ``trio.lowlevel.notify_closing`` on it makes that wait raise
        ``ClosedResourceError`` and leaves this stream as it was (a partial frame stays
        in the protocol's buffer): the reader's keep-alive watch rings it so, and a
        reader rung to park calls ``receive_some`` again once resumed.
        """
        transport = self.transport_stream
        if isinstance(transport, TLSStream):
            return transport.fd  # (-1 without a socket of its own)
        return socket_fd(transport)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._closed:
            raise trio.ClosedResourceError("the WebSocket stream is closed")
        while True:
            if self._handed:
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
                self._frame(received)

    def _frame(self, data: bytes | bytearray) -> None:
        """Split ``data`` (after what came before it) into frames: the payload of a
        binary frame to ``_pending``, any other frame to ``websockets``. A frame stays
        in ``_inbound`` until it is whole; one announced longer than the limit goes to
        ``websockets`` at once, which refuses it from its header (1009)."""
        if self._by_protocol:
            self._to_protocol(data)
            return
        inbound = self._inbound
        inbound += data
        end = len(inbound)
        pos = 0
        aside = False  # websockets takes every byte from here on
        while end - pos >= 2:
            head1, head2 = inbound[pos], inbound[pos + 1]
            length = head2 & 0x7F
            start = pos + 2
            if length == 126:
                length = int.from_bytes(inbound[start : start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(inbound[start : start + 8], "big")
                start += 8
            if start > end:
                break  # the length is not all there yet
            if length > self._max_frame_size:
                self._by_protocol = aside = True
                break
            masked = head2 & 0x80
            if masked:
                start += 4
            frame_end = start + length
            if frame_end > end:
                break
            if head1 == _FINAL_BINARY and masked and not self._fragmented:
                self._pending += apply_mask(inbound[start:frame_end], inbound[start - 4 : start])
            else:
                aside = self._to_protocol(bytes(inbound[pos:frame_end]))
            pos = frame_end
            if aside:
                break
        if aside:  # what follows is the protocol's to read or discard
            rest = bytes(inbound[pos:])
            inbound.clear()
            if rest:
                self._to_protocol(rest)
        else:
            del inbound[:pos]

    def _to_protocol(self, data: bytes | bytearray) -> bool:
        """Bytes for ``websockets``: whole frames the fast path does not take (a control
        frame, a text frame, a fragment, an unmasked or otherwise faulty frame), or all
        of them once it stands aside. Payload goes to ``_pending`` in the order it came;
        anything but payload, a Ping or a Pong is left for ``_process_events``, and from
        then on every byte goes to ``websockets`` (True once it does)."""
        websocket = self._ws
        websocket.receive_data(data)
        self._handed = True  # a Pong to send, or an error to see to
        for frame in websocket.events_received():
            if not isinstance(frame, Frame):  # pragma: no cover - only frames once open
                continue
            opcode = frame.opcode
            if opcode is Opcode.BINARY or opcode is Opcode.CONT:
                self._pending += frame.data
                self._fragmented = not frame.fin
            elif opcode is not Opcode.PING and opcode is not Opcode.PONG:
                # (a Ping: websockets queued its Pong; a Pong: nothing to do)
                self._events.append(frame)
                self._by_protocol = True
        if websocket.parser_exc is not None or websocket.state is not State.OPEN:
            self._by_protocol = True
        return self._by_protocol

    async def _process_events(self) -> None:
        """See to what ``_to_protocol`` left: a text frame, a Close, a protocol error;
        and write what ``websockets`` queued (a Pong, a Close)."""
        self._handed = False
        websocket = self._ws
        events, self._events = self._events, []
        for frame in events:
            opcode = frame.opcode
            if opcode is Opcode.TEXT:
                await self._fail(
                    CloseCode.UNSUPPORTED_DATA, "text frame (MQTT must use binary frames)"
                )
            elif opcode is Opcode.CLOSE:
                close = websocket.close_rcvd
                if close is not None and close.code not in _ORDINARY_CLOSE_CODES:
                    log.info(
                        "WebSocket closed by %s: code %d %s",
                        self._peer.describe(),
                        close.code,
                        close.reason,
                    )
                self._eof = True
        if websocket.parser_exc is not None and not self._eof:
            # websockets queued the Close (1002 framing error, 1009 frame too long)
            await self._fail(None, f"WebSocket protocol error: {websocket.parser_exc}")
        await self._flush()

    async def _flush(self) -> None:
        """Write what the protocol queued: a Pong, a Close (b"" marks the end: the socket
        is closed by whoever owns this stream)."""
        data = b"".join(self._ws.data_to_send())
        if data:
            await self._send_frame(data)

    async def _fail(self, code: CloseCode | None, why: str) -> None:
        """Close the WebSocket with *code* after a violation (None: websockets already
        queued the Close); raises BrokenResourceError."""
        log.warning("closing WebSocket from %s: %s", self._peer.describe(), why)
        self._eof = True
        if self._inbound:  # (a Close frame may have begun in them)
            self._to_protocol(bytes(self._inbound))
            self._inbound.clear()
        self._by_protocol = True
        if code is not None and self._ws.state is State.OPEN:
            self._ws.send_close(code, why)
        with trio.move_on_after(CLOSE_FRAME_TIMEOUT):
            await self._flush()
            await self._drain_until_closed()
        raise trio.BrokenResourceError(why)

    async def _drain_until_closed(self) -> None:
        """Read and drop data until the peer's Close frame or EOF.

        Closing a socket with unread data makes the kernel reset the connection, and the
        peer may then lose our Close frame; RFC 6455 has the peer answer it instead.
        """
        try:
            while self._ws.close_rcvd is None:
                data = await self.transport_stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                self._ws.receive_data(data)
                self._ws.events_received()
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
        websocket = self._ws
        if not data or (websocket.state is not State.OPEN and websocket.close_rcvd is None):
            # After our Close frame nothing more may be sent; the data is dropped rather
            # than failing the writer, which would cut the closing handshake short.
            await trio.lowlevel.checkpoint()
            return
        if websocket.state is not State.OPEN:
            raise trio.BrokenResourceError("the WebSocket connection is closing")
        websocket.send_binary(data)
        frame = b"".join(websocket.data_to_send())
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
            if self._ws.state is State.OPEN:
                self._ws.send_close(CloseCode.NORMAL_CLOSURE)
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_FRAME_TIMEOUT):
                    await self._flush()
        finally:
            await self.transport_stream.aclose()
