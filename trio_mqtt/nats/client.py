"""The trio layer of the NATS client: one socket, a reader task and a writer task.

:func:`open_nats_client` connects (INFO, CONNECT, PING/PONG), then runs the reader and
the writer in a nursery that the context manager owns. The protocol itself is
:class:`~trio_mqtt.nats.protocol.NATSConnection`; this module only moves bytes and
dispatches events.

- **Publishing is synchronous** (callable from the sans-IO broker): ``publish()``
  appends the encoded PUB to an output buffer and wakes the writer, which sends all that
  is buffered in one ``send_all``. ``pending_bytes`` says how much waits; ``drain()``
  waits until it is below ``low_water``. ``publish()`` itself never blocks.
- **Subscriptions are callbacks** run by the reader task, synchronously, one per
  message: no channel per message on the hot path. A callback that raises ends the
  client (the error is not swallowed). ``subscribe()`` callbacks get a ``Msg``;
  ``subscribe_payloads()`` callbacks only the subject and payload, with no ``Msg`` built
  for a plain MSG (the cluster's per-message path).
- **Requests** share one wildcard inbox subscription (``_INBOX.<random>.*``); each
  request waits on its own slot. A 503 status reply means nobody listens:
  :class:`NoRespondersError`.

There is no reconnection: when the connection is lost the reader raises
:class:`NATSConnectionClosed`, pending requests and flushes fail with it, the nursery
fails and the context manager's body is cancelled. The caller restarts the client
(and re-creates its subscriptions).

**TLS** follows NATS's own flow: the server's INFO comes in plain text, and when it
says ``tls_required`` (or the URL is ``tls://``) the client runs the TLS handshake over
the same TCP connection (``trio.SSLStream``) and sends CONNECT over TLS. A server with
``handshake_first`` wants the handshake before its INFO: ``tls_handshake_first=True``.
The server name verified is the URL's host. **Credentials** come from the URL
(``user:password@`` or ``token@``); no message or log line shows the password or the
token (:func:`redact_url`). NKEY and JWT (``.creds``) authentication are not supported.
"""

from __future__ import annotations

import logging
import math
import secrets
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import attrs
import trio

from trio_mqtt._version import __version__
from trio_mqtt.nats.protocol import (
    NEED_DATA,
    Closed,
    Err,
    Headers,
    Info,
    Msg,
    NATSConnection,
    NATSError,
    NATSProtocolError,
    Ping,
    Pong,
)

log = logging.getLogger("trio_mqtt.nats")

RECEIVE_SIZE: Final = 65536
MAX_BATCH: Final = 1024 * 1024
"""At most this much (unless one command is larger) goes into one ``send_all``."""
DEFAULT_LOW_WATER: Final = 256 * 1024
CLOSE_FLUSH_TIMEOUT: Final = 1.0
"""How long leaving the context may spend sending what is still buffered."""
DEFAULT_PORT: Final = 4222
DEFAULT_PING_INTERVAL: Final = 30.0
MAX_OUTSTANDING_PINGS: Final = 2
"""PINGs unanswered after this many intervals: the connection is stale (a silent peer)."""

HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | Headers


class NATSConnectionError(NATSError):
    """Could not connect, or the server refused the connection (its message is kept)."""


class NATSConnectionClosed(NATSError):
    """The connection is closed; the message says why (server's -ERR, EOF, socket error)."""


class NoRespondersError(NATSError):
    """A request found nobody subscribed to its subject (a 503 status reply)."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"no responders on {subject!r}")
        self.subject = subject


class NATSTimeoutError(NATSError, trio.TooSlowError):
    """A request or flush got no answer in time."""


@attrs.define(eq=False)
class _Pending:
    """One request waiting for its reply (or, for request_many, its replies)."""

    subject: str
    many: bool
    max_msgs: int | None
    done: trio.Event = attrs.field(factory=trio.Event)
    replies: list[Msg] = attrs.field(factory=list)
    error: NATSError | None = None


def redact_url(url: str) -> str:
    """*url* with its password or token replaced by ``***``, for messages and logs.

    ``nats://user:pw@host:4222`` -> ``nats://user:***@host:4222``,
    ``nats://token@host:4222`` -> ``nats://***@host:4222``; a URL without credentials is
    returned as it is. Everything up to the last ``@`` is hidden, so a malformed URL
    (an unescaped ``/`` or ``@`` in the password) is not shown either.
    """
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    at = url.rfind("@")
    if at < start:
        return url
    user, colon, _ = url[start:at].partition(":")
    return f"{url[:start]}{user + ':***' if colon else '***'}{url[at:]}"


@attrs.frozen
class _ServerURL:
    """One parsed NATS URL: where to connect, how, with which credentials."""

    host: str
    port: int
    tls: bool
    """``tls://``: TLS or no connection at all (``nats://`` follows the server's INFO)."""
    auth: Mapping[str, str]
    """The CONNECT options with the credentials: ``user`` and ``pass``, or ``auth_token``."""
    shown: str
    """The URL as messages and logs show it (:func:`redact_url`)."""


def _parse_url(url: str) -> _ServerURL:
    """``nats|tls://[user:pass@|token@]host[:port]`` (``host:port`` alone is ``nats://``)."""
    shown = redact_url(url)
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.scheme not in ("nats", "tls"):
        raise NATSConnectionError(
            f"unsupported URL scheme in {shown!r} (nats:// or tls://, e.g. 'tls://host:4222')"
        )
    try:
        host = parts.hostname
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise NATSConnectionError(f"invalid port in {shown!r}") from None
    if not host:
        raise NATSConnectionError(f"no host in {shown!r}")
    auth: dict[str, str] = {}
    if parts.username and parts.password is not None:
        auth = {"user": unquote(parts.username), "pass": unquote(parts.password)}
    elif parts.username:
        auth = {"auth_token": unquote(parts.username)}
    return _ServerURL(host, port, parts.scheme == "tls", auth, shown)


async def _next_event(
    stream: trio.abc.Stream, conn: NATSConnection
) -> Info | Msg | Ping | Pong | Err | Closed:
    """The next event other than +OK, reading as needed (handshake only)."""
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
            continue
        if isinstance(event, Info | Msg | Ping | Pong | Err | Closed):
            return event


async def _handshake(
    url: str,
    *,
    name: str,
    no_echo: bool,
    ssl_context: ssl.SSLContext | None,
    tls_handshake_first: bool,
) -> tuple[trio.abc.Stream, NATSConnection]:
    """Connect to *url*: INFO, TLS if wanted, CONNECT, PING, until PONG (or -ERR)."""
    server = _parse_url(url)
    shown = server.shown
    tcp = await trio.open_tcp_stream(server.host, server.port)
    stream: trio.abc.Stream = tcp
    try:
        try:
            conn = NATSConnection()
            if tls_handshake_first:
                first = ssl_context or ssl.create_default_context()
                stream = await _start_tls(tcp, server, first)
            event = await _next_event(stream, conn)
            if isinstance(event, Err):
                raise NATSConnectionError(
                    f"{shown}: server refused the connection: {event.message}"
                )
            if isinstance(event, Closed) and not tls_handshake_first:
                raise NATSConnectionError(
                    f"{shown}: the server closed the connection before its INFO (a server "
                    "with TLS handshake_first waits for the TLS handshake: pass "
                    "tls_handshake_first=True; in [cluster], nats_tls_handshake_first = true)"
                )
            if not isinstance(event, Info):
                raise NATSProtocolError(f"{shown}: expected INFO first, got {event!r}")
            info = event.data
            if not tls_handshake_first:
                context = _tls_context(server, info, ssl_context)
                if context is not None:
                    if conn.buffered:  # nothing may come between INFO and the handshake
                        raise NATSProtocolError(f"{shown}: unexpected bytes after INFO, before TLS")
                    stream = await _start_tls(tcp, server, context)
            await _connect(stream, conn, server, info, name=name, no_echo=no_echo)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError):
                raise NATSConnectionError(_tls_failure(server, cause)) from None
            raise NATSConnectionError(
                f"{shown}: connection lost during CONNECT: {cause or exc!r}"
            ) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, conn


async def _connect(
    stream: trio.abc.Stream,
    conn: NATSConnection,
    server: _ServerURL,
    info: Mapping[str, Any],
    *,
    name: str,
    no_echo: bool,
) -> None:
    """Send CONNECT and PING; return at the PONG, raise at an -ERR (or EOF) before it."""
    headers = bool(info.get("headers", False))
    options: dict[str, object] = {
        "verbose": False,
        "pedantic": False,
        "tls_required": isinstance(stream, trio.SSLStream),
        "headers": headers,
        "no_responders": headers,
        "echo": not no_echo,
        "name": name,
        "lang": "python-trio",
        "version": __version__,
        "protocol": 1,
        **server.auth,
    }
    await stream.send_all(conn.connect(options) + conn.ping())
    while True:
        event = await _next_event(stream, conn)
        if isinstance(event, Pong):
            return
        if isinstance(event, Err):
            raise NATSConnectionError(_refusal(server, info, event.message))
        if isinstance(event, Ping):
            await stream.send_all(conn.pong())
        elif isinstance(event, Closed):
            raise NATSConnectionError(
                f"{server.shown}: server closed the connection during CONNECT"
            )


def _tls_context(
    server: _ServerURL, info: Mapping[str, Any], ssl_context: ssl.SSLContext | None
) -> ssl.SSLContext | None:
    """The context to upgrade the connection to TLS with after the server's INFO, or None.

    ``tls://`` insists on TLS (the system's CAs verify the server unless *ssl_context*
    says otherwise); ``nats://`` upgrades when the server requires it and the caller gave
    a context. Refusing to go on in plain text is what keeps a downgrade from passing.
    """
    required = bool(info.get("tls_required"))
    if server.tls:
        if not (required or info.get("tls_available")):
            raise NATSConnectionError(
                f"{server.shown}: a tls:// URL, but the server does not offer TLS "
                "(its INFO has no tls_required nor tls_available); use nats:// or "
                "configure TLS on the server"
            )
        return ssl_context or ssl.create_default_context()
    if not required:
        return None
    if ssl_context is None:
        raise NATSConnectionError(
            f"{server.shown}: the server requires TLS and no TLS context was given: pass "
            "ssl_context (in [cluster], nats_tls_ca_file names the CA that signs the "
            "server's certificate), or use a tls:// URL to verify it with the system's CAs"
        )
    return ssl_context


async def _start_tls(
    tcp: trio.SocketStream, server: _ServerURL, context: ssl.SSLContext
) -> trio.SSLStream[trio.SocketStream]:
    """The TLS handshake over *tcp*, checking the certificate against the URL's host."""
    stream = trio.SSLStream(tcp, context, server_hostname=server.host)
    await stream.do_handshake()
    return stream


def _tls_failure(server: _ServerURL, error: ssl.SSLError) -> str:
    """Why the TLS connection to *server* failed, and what to change."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"{server.shown}: TLS certificate verification failed: {error.verify_message} "
            f"(the server's certificate must be signed by a trusted CA, e.g. [cluster] "
            f"nats_tls_ca_file, and be issued for {server.host!r})"
        )
    reason = str(error.reason or error)
    upper = reason.upper()
    if "CERTIFICATE_REQUIRED" in upper:
        hint = (
            "the server requires a client certificate (ssl_context.load_cert_chain; in "
            "[cluster], nats_tls_cert_file and nats_tls_key_file)"
        )
    elif any(word in upper for word in ("BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN")):
        hint = "the server refused our client certificate (is it signed by the server's CA?)"
    elif "WRONG_VERSION_NUMBER" in upper or "RECORD_LAYER_FAILURE" in upper:
        hint = "the server did not answer in TLS (does it use handshake_first, or no TLS?)"
    else:
        hint = "the TLS handshake failed"
    return f"{server.shown}: {hint}: {reason}"


def _refusal(server: _ServerURL, info: Mapping[str, Any], message: str) -> str:
    """The message for the server's ``-ERR`` answer to CONNECT; no credentials in it."""
    text = f"{server.shown}: server refused the connection: {message}"
    if info.get("auth_required") and "authorization" in message.lower():
        if "user" in server.auth:
            text += " (check the user name and password in the URL)"
        elif "auth_token" in server.auth:
            text += " (check the token in the URL)"
        else:
            text += (
                " (the server requires authentication and the URL has no credentials: "
                "nats://USER:PASSWORD@HOST:PORT or nats://TOKEN@HOST:PORT)"
            )
    return text


class NATSClient:
    """A connected NATS client; made by :func:`open_nats_client`, not directly."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: NATSConnection,
        nursery: trio.Nursery,
        *,
        low_water: int = DEFAULT_LOW_WATER,
        ping_interval: float = DEFAULT_PING_INTERVAL,
    ) -> None:
        self._stream = stream
        self._ping_interval = ping_interval
        self._conn = connection
        self._nursery = nursery
        self.low_water = low_water
        self.pending_bytes = 0
        """Bytes handed to ``publish()`` & co. and not yet taken by the socket."""
        self._out: list[bytes] = []
        self._has_output = trio.Event()
        self._progress = trio.Event()  # set and replaced after each send_all
        self._subs: dict[int, Callable[[Msg], None]] = {}
        self._payload_subs: dict[int, Callable[[str, bytes], None]] = {}
        self._next_sid = 1
        self._pongs: deque[trio.Event] = deque()
        self._inbox_prefix: str | None = None
        self._requests: dict[str, _Pending] = {}
        self._next_token = 0
        self._closed: NATSConnectionClosed | None = None
        self._server_error: str | None = None
        self.on_closed: Callable[[NATSConnectionClosed], None] | None = None
        """Called once, synchronously, the moment the connection is found closed (lost,
        or closed by us): before any task sees ``NATSConnectionClosed``. Must not raise."""

    # -- state ------------------------------------------------------------------------

    @property
    def server_info(self) -> dict[str, Any]:
        """The server's INFO (updated by later INFO messages)."""
        return dict(self._conn.server_info or {})

    @property
    def is_closed(self) -> bool:
        """Whether the connection is closed (by us or by the server)."""
        return self._closed is not None

    def new_inbox(self) -> str:
        """A fresh, unique subject to receive replies or deliveries on."""
        return f"_INBOX.{secrets.token_urlsafe(16).replace('-', 'A').replace('_', 'B')}"

    def start_soon(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run a task that lives as long as this connection (JetStream watchers use it)."""
        self._nursery.start_soon(async_fn, *args)

    # -- output -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed is not None:
            raise NATSConnectionClosed(str(self._closed))

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        self.pending_bytes += len(data)
        self._has_output.set()

    def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        reply: str | None = None,
        headers: HeadersArg | None = None,
    ) -> None:
        """Queue a message for *subject*; never blocks (see ``drain()`` for the bound)."""
        self._check_open()
        self._send(self._conn.pub(subject, payload, reply=reply, headers=headers))

    async def drain(self) -> None:
        """Wait until ``pending_bytes`` is at most ``low_water``."""
        while self.pending_bytes > self.low_water:
            self._check_open()
            await self._progress.wait()
        self._check_open()

    async def flush(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 (always bounded)
        """PING and wait for the PONG: the server has processed all we sent before."""
        self._check_open()
        pong = trio.Event()
        self._pongs.append(pong)
        self._send(self._conn.ping())
        with trio.move_on_after(timeout):
            await pong.wait()
        self._check_open()
        if not pong.is_set():
            raise NATSTimeoutError(f"no PONG within {timeout} s")

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(
        self, subject: str, callback: Callable[[Msg], None], *, queue: str | None = None
    ) -> int:
        """Subscribe *callback* (run by the reader task) to *subject*; returns the sid."""
        sid = self._sub(subject, queue)
        self._subs[sid] = callback
        return sid

    def subscribe_payloads(
        self, subject: str, callback: Callable[[str, bytes], None], *, queue: str | None = None
    ) -> int:
        """Subscribe *callback* to *subject* with ``callback(subject, payload)``; the sid.

        For subscribers that need nothing else of a message (its reply subject, headers
        and status are not passed): a plain MSG reaches the callback without a
        :class:`Msg` being built (``NATSConnection.deliver_msgs``): 9 % fewer
        instructions per message on a cluster's receiving node.
        """
        sid = self._sub(subject, queue)
        self._payload_subs[sid] = callback
        return sid

    def _sub(self, subject: str, queue: str | None) -> int:
        """Send the SUB of a new subscription; its sid."""
        self._check_open()
        sid = self._next_sid
        data = self._conn.sub(subject, sid, queue)
        self._next_sid += 1
        self._send(data)
        return sid

    def unsubscribe(self, sid: int) -> None:
        """Stop the subscription *sid*; messages already on the way are dropped."""
        found = self._subs.pop(sid, None) or self._payload_subs.pop(sid, None)
        if found is not None and self._closed is None:
            self._send(self._conn.unsub(sid))

    # -- requests ---------------------------------------------------------------------

    def _ensure_inbox(self) -> str:
        if self._inbox_prefix is None:
            prefix = self.new_inbox() + "."
            self.subscribe(prefix + "*", self._on_reply)
            self._inbox_prefix = prefix
        return self._inbox_prefix

    def _on_reply(self, msg: Msg) -> None:
        prefix = self._inbox_prefix
        assert prefix is not None
        pending = self._requests.get(msg.subject[len(prefix) :])
        if pending is None or pending.done.is_set():
            return  # a late reply to a request that gave up
        if msg.status == 503 and not pending.replies:
            pending.error = NoRespondersError(pending.subject)
            pending.done.set()
            return
        pending.replies.append(msg)
        if (
            not pending.many
            or msg.status is not None
            or (pending.max_msgs is not None and len(pending.replies) >= pending.max_msgs)
        ):
            pending.done.set()

    async def _request(
        self,
        subject: str,
        payload: bytes,
        headers: HeadersArg | None,
        timeout: float,  # noqa: ASYNC109 - a request is always bounded
        *,
        many: bool,
        max_msgs: int | None,
    ) -> list[Msg]:
        self._check_open()
        prefix = self._ensure_inbox()
        self._next_token += 1
        token = f"{self._next_token:x}"
        pending = _Pending(subject, many, max_msgs)
        self._requests[token] = pending
        try:
            self.publish(subject, payload, reply=prefix + token, headers=headers)
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            del self._requests[token]
        if pending.error is not None:
            raise pending.error
        if not pending.done.is_set():
            self._check_open()
            raise NATSTimeoutError(f"no reply on {subject!r} within {timeout} s")
        return pending.replies

    async def request(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: HeadersArg | None = None,
        timeout: float = 2.0,  # noqa: ASYNC109 - a request is always bounded
    ) -> Msg:
        """Publish with a reply subject and return the first reply.

        Raises :class:`NoRespondersError` (nobody listens on *subject*),
        :class:`NATSTimeoutError` or :class:`NATSConnectionClosed`.
        """
        replies = await self._request(subject, payload, headers, timeout, many=False, max_msgs=1)
        return replies[0]

    async def request_many(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: HeadersArg | None = None,
        timeout: float = 2.0,  # noqa: ASYNC109 - a request is always bounded
        max_msgs: int | None = None,
    ) -> list[Msg]:
        """Publish with a reply subject and collect replies until one has a status.

        The status reply (JetStream's ``204 EOB`` after a DIRECT.GET batch, ``404``,
        ``408``...) ends the list and is its last element, so the caller sees why it
        ended. *max_msgs* replies also end it. Raises like :meth:`request`; a timeout
        before the end raises too (the replies so far are dropped).
        """
        return await self._request(subject, payload, headers, timeout, many=True, max_msgs=max_msgs)

    # -- the tasks --------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Handle every complete event the connection has buffered."""
        conn = self._conn
        subs = self._subs
        payload_subs = self._payload_subs
        while True:
            if payload_subs:
                conn.deliver_msgs(payload_subs)
            event = conn.next_event()
            if event is NEED_DATA:
                return
            if type(event) is Msg:
                callback = subs.get(event.sid)
                if callback is not None:
                    callback(event)
                else:
                    handler = payload_subs.get(event.sid)
                    if handler is not None:
                        handler(event.subject, event.payload)
            elif isinstance(event, Ping):
                self._send(conn.pong())
            elif isinstance(event, Pong):
                if self._pongs:
                    self._pongs.popleft().set()
            elif isinstance(event, Err):
                if event.is_fatal:
                    log.error("nats server error (fatal): %s", event.message)
                    self._server_error = event.message
                else:
                    log.warning("nats server error: %s", event.message)
            elif isinstance(event, Closed):
                reason = "server closed the connection"
                if self._server_error is not None:
                    reason += f" after -ERR {self._server_error!r}"
                raise NATSConnectionClosed(reason)
            elif isinstance(event, Info):
                log.debug("nats server INFO update: %s", event.data)

    async def _reader(self) -> None:
        try:
            while True:
                self._dispatch()
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, OSError) as exc:
                    raise NATSConnectionClosed(f"connection lost: {exc!r}") from exc
                self._conn.receive_data(data)
        except (NATSConnectionClosed, NATSProtocolError) as exc:
            self._mark_closed(NATSConnectionClosed(str(exc)))
            raise
        finally:
            # (cancelled too: nobody reads the answers any more, so fail at once)
            self._mark_closed(NATSConnectionClosed("the client stopped reading"))

    async def _writer(self) -> None:
        try:
            while True:
                await self._has_output.wait()
                self._has_output = trio.Event()
                while self._out:
                    batch, size = [], 0
                    for chunk in self._out:
                        if size and size + len(chunk) > MAX_BATCH:
                            break
                        batch.append(chunk)
                        size += len(chunk)
                    del self._out[: len(batch)]
                    await self._stream.send_all(b"".join(batch))
                    self.pending_bytes -= size
                    self._progress.set()
                    self._progress = trio.Event()
        except (trio.BrokenResourceError, OSError) as exc:
            closed = NATSConnectionClosed(f"connection lost while sending: {exc!r}")
            self._mark_closed(closed)
            raise closed from exc

    async def _pinger(self) -> None:
        """PING every interval; too many unanswered means the server is gone silently."""
        outstanding: deque[trio.Event] = deque()
        while True:
            await trio.sleep(self._ping_interval)
            while outstanding and outstanding[0].is_set():
                outstanding.popleft()
            if len(outstanding) >= MAX_OUTSTANDING_PINGS:
                closed = NATSConnectionClosed(
                    f"stale connection: {len(outstanding)} PINGs unanswered"
                )
                self._mark_closed(closed)
                raise closed
            pong = trio.Event()
            outstanding.append(pong)
            self._pongs.append(pong)
            self._send(self._conn.ping())

    def _mark_closed(self, exc: NATSConnectionClosed) -> None:
        """Fail everything waiting on this connection with *exc*."""
        if self._closed is not None:
            return
        self._closed = exc
        for pending in self._requests.values():
            if not pending.done.is_set():
                pending.error = NATSConnectionClosed(str(exc))
                pending.done.set()
        while self._pongs:
            self._pongs.popleft().set()
        self._progress.set()
        if self.on_closed is not None:
            self.on_closed(exc)

    async def _close(self) -> None:
        """Send what is buffered (briefly), mark the client closed, stop its tasks.

        The socket is closed by ``open_nats_client`` once the tasks have stopped. The
        cancel comes last, with no checkpoint after it: a checkpoint in the cancelled
        nursery would raise Cancelled over an exception leaving the ``async with``
        body, and the nursery would then swallow both.
        """
        if self._closed is None:
            with trio.move_on_after(CLOSE_FLUSH_TIMEOUT) as scope:
                scope.shield = True
                while self.pending_bytes and self._closed is None:
                    await self._progress.wait()
            self._mark_closed(NATSConnectionClosed("the client was closed"))
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_nats_client(
    url: str | Sequence[str],
    *,
    name: str,
    no_echo: bool = False,
    connect_timeout: float = 5.0,
    low_water: int = DEFAULT_LOW_WATER,
    ping_interval: float = DEFAULT_PING_INTERVAL,
    ssl_context: ssl.SSLContext | None = None,
    tls_handshake_first: bool = False,
) -> AsyncIterator[NATSClient]:
    """Connect to the first of *url* (one URL or several) that answers, as *name*.

    ``nats://[user:pass@|token@]host[:port]``, or ``tls://`` to insist on TLS.
    *ssl_context* verifies the server (and may hold a client certificate); without it,
    a ``tls://`` URL uses the system's CAs and a ``nats://`` server that requires TLS is
    an error. *tls_handshake_first*: for servers configured with ``handshake_first``.
    Raises :class:`NATSConnectionError` with every URL's failure (no password or token
    in it) if none connects within *connect_timeout* each. A PING every
    *ping_interval* seconds detects a server that went silent. Leaving the context
    sends what is buffered (at most ``CLOSE_FLUSH_TIMEOUT``) and closes the connection.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise NATSConnectionError("no URL to connect to")
    failures: list[str] = []
    for candidate in urls:
        try:
            with trio.fail_after(connect_timeout if connect_timeout > 0 else math.inf):
                stream, conn = await _handshake(
                    candidate,
                    name=name,
                    no_echo=no_echo,
                    ssl_context=ssl_context,
                    tls_handshake_first=tls_handshake_first,
                )
            break
        except NATSConnectionError as exc:
            failures.append(str(exc))
        except (OSError, trio.TooSlowError, NATSProtocolError) as exc:
            failures.append(f"{redact_url(candidate)}: {exc!r}")
    else:
        raise NATSConnectionError("could not connect: " + "; ".join(failures))
    log.debug("connected to %s as %r", redact_url(candidate), name)
    try:
        async with trio.open_nursery() as nursery:
            client = NATSClient(
                stream, conn, nursery, low_water=low_water, ping_interval=ping_interval
            )
            nursery.start_soon(client._reader)
            nursery.start_soon(client._writer)
            nursery.start_soon(client._pinger)
            try:
                yield client
            finally:
                await client._close()
    finally:
        await trio.aclose_forcefully(stream)
