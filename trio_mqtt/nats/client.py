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
  client (the error is not swallowed).
- **Requests** share one wildcard inbox subscription (``_INBOX.<random>.*``); each
  request waits on its own slot. A 503 status reply means nobody listens:
  :class:`NoRespondersError`.

There is no reconnection: when the connection is lost the reader raises
:class:`NATSConnectionClosed`, pending requests and flushes fail with it, the nursery
fails and the context manager's body is cancelled. The caller restarts the client
(and re-creates its subscriptions).
"""

from __future__ import annotations

import logging
import math
import secrets
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


def _parse_url(url: str) -> tuple[str, int, dict[str, str]]:
    """``nats://[user:pass@|token@]host[:port]`` -> host, port, auth options."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.scheme != "nats":
        raise NATSConnectionError(f"unsupported URL scheme in {url!r} (only nats://, no TLS yet)")
    if not parts.hostname:
        raise NATSConnectionError(f"no host in {url!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise NATSConnectionError(f"invalid port in {url!r}") from None
    auth: dict[str, str] = {}
    if parts.username and parts.password is not None:
        auth = {"user": unquote(parts.username), "pass": unquote(parts.password)}
    elif parts.username:
        auth = {"auth_token": unquote(parts.username)}
    return parts.hostname, port, auth


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
    url: str, *, name: str, no_echo: bool
) -> tuple[trio.SocketStream, NATSConnection]:
    """Connect to *url*: INFO, CONNECT, PING, until PONG (or -ERR)."""
    host, port, auth = _parse_url(url)
    stream = await trio.open_tcp_stream(host, port)
    try:
        conn = NATSConnection()
        event = await _next_event(stream, conn)
        if isinstance(event, Err):
            raise NATSConnectionError(f"{url}: server refused the connection: {event.message}")
        if not isinstance(event, Info):
            raise NATSProtocolError(f"{url}: expected INFO first, got {event!r}")
        info = event.data
        if info.get("tls_required"):
            raise NATSConnectionError(f"{url}: the server requires TLS, which is not supported")
        headers = bool(info.get("headers", False))
        options: dict[str, object] = {
            "verbose": False,
            "pedantic": False,
            "headers": headers,
            "no_responders": headers,
            "echo": not no_echo,
            "name": name,
            "lang": "python-trio",
            "version": __version__,
            "protocol": 1,
            **auth,
        }
        await stream.send_all(conn.connect(options) + conn.ping())
        while True:
            event = await _next_event(stream, conn)
            if isinstance(event, Pong):
                return stream, conn
            if isinstance(event, Err):
                raise NATSConnectionError(f"{url}: server refused the connection: {event.message}")
            if isinstance(event, Ping):
                await stream.send_all(conn.pong())
            elif isinstance(event, Closed):
                raise NATSConnectionError(f"{url}: server closed the connection during CONNECT")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


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
        self._next_sid = 1
        self._pongs: deque[trio.Event] = deque()
        self._inbox_prefix: str | None = None
        self._requests: dict[str, _Pending] = {}
        self._next_token = 0
        self._closed: NATSConnectionClosed | None = None
        self._server_error: str | None = None

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
        self._check_open()
        sid = self._next_sid
        data = self._conn.sub(subject, sid, queue)
        self._next_sid += 1
        self._subs[sid] = callback
        self._send(data)
        return sid

    def unsubscribe(self, sid: int) -> None:
        """Stop the subscription *sid*; messages already on the way are dropped."""
        if self._subs.pop(sid, None) is not None and self._closed is None:
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
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return
            if type(event) is Msg:
                callback = subs.get(event.sid)
                if callback is not None:
                    callback(event)
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
) -> AsyncIterator[NATSClient]:
    """Connect to the first of *url* (one URL or several) that answers, as *name*.

    ``nats://[user:pass@]host[:port]``. Raises :class:`NATSConnectionError` with every
    URL's failure if none connects within *connect_timeout* each. A PING every
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
                stream, conn = await _handshake(candidate, name=name, no_echo=no_echo)
            break
        except NATSConnectionError as exc:
            failures.append(str(exc))
        except (OSError, trio.TooSlowError, NATSProtocolError) as exc:
            failures.append(f"{candidate}: {exc!r}")
    else:
        raise NATSConnectionError("could not connect: " + "; ".join(failures))
    log.debug("connected to %s as %r", candidate, name)
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
