"""The operators' HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` (``[http]``).

A small HTTP/1.1 server on h11, in the broker's own process and event loop. It serves
one request per connection and closes it, and it is bounded so that a scanner or a slow
client cannot hurt the broker: at most ``max_connections`` at once (more are closed at
once), a request head of at most ``max_request_size`` bytes (431 beyond), and
``request_timeout`` seconds from accept to the end of the answer. Only GET (and HEAD)
is served: other methods get 405, other paths 404.

What the answers say comes from the broker (``Endpoints``): this module knows nothing
of MQTT. docs/operations.md describes the endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import attrs
import h11
import trio

from trio_mqtt.config import HttpConfig
from trio_mqtt.peer import Endpoint

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_REQUEST_SIZE",
    "REQUEST_TIMEOUT",
    "Endpoints",
    "HttpHandle",
    "serve_http",
]

log = logging.getLogger("trio_mqtt.http")

#: Connections served at once; more are closed without an answer.
MAX_CONNECTIONS = 8
#: The largest request head (request line and headers), in bytes.
MAX_REQUEST_SIZE = 8192
#: Seconds from accept to the end of the answer.
REQUEST_TIMEOUT = 5.0
RECEIVE_SIZE = 4096
# What an answered client may still send (an unread body) that is read and dropped before
# the close, so that the close does not reset the connection under the answer.
DRAIN_LIMIT = 65536
DRAIN_TIMEOUT = 0.5
_ALLOWED = b"GET, HEAD"


@attrs.frozen
class Endpoints:
    """What the paths answer: ``metrics()`` (content type, body) and ``readiness()``
    (ready?, the reasons it is not)."""

    metrics: Callable[[], tuple[str, bytes]]
    readiness: Callable[[], tuple[bool, list[str]]]


@attrs.define(eq=False)
class HttpHandle:
    """The running endpoint: its bound addresses, its counters, and a way to stop it."""

    config: HttpConfig
    addresses: list[Endpoint] = attrs.Factory(list)
    connections: int = 0
    # connections closed unanswered because max_connections were being served
    refused: int = 0
    requests: int = 0
    _scope: trio.CancelScope = attrs.Factory(lambda: trio.CancelScope(shield=True))

    def stop(self) -> None:
        self._scope.cancel()


@attrs.frozen
class _Limits:
    max_connections: int
    max_request_size: int
    request_timeout: float


async def serve_http(
    config: HttpConfig,
    endpoints: Endpoints,
    *,
    max_connections: int = MAX_CONNECTIONS,
    max_request_size: int = MAX_REQUEST_SIZE,
    request_timeout: float = REQUEST_TIMEOUT,
    task_status: trio.TaskStatus[HttpHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind, report the handle, serve until ``handle.stop()``.

    Shielded from the caller's cancellation: the broker's graceful shutdown goes on
    answering ``/readyz`` with 503 while its clients are closed, and stops the endpoint
    itself (``stop()``) at the end.
    """
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    handle = HttpHandle(config)
    for listener in listeners:
        address = Endpoint.from_sockaddr(listener.socket.getsockname())
        if address is not None:
            handle.addresses.append(address)
    log.info("http: serving /metrics, /healthz, /readyz on %s", _describe(handle.addresses))
    limits = _Limits(max_connections, max_request_size, request_timeout)
    try:
        with handle._scope:
            task_status.started(handle)
            await trio.serve_listeners(partial(_serve_one, handle, endpoints, limits), listeners)
    finally:
        for listener in listeners:  # stopped before the loops began: close here
            await trio.aclose_forcefully(listener)


def _describe(addresses: list[Endpoint]) -> str:
    return ", ".join(str(a) for a in addresses)


async def _serve_one(
    handle: HttpHandle, endpoints: Endpoints, limits: _Limits, stream: trio.SocketStream
) -> None:
    # serve_listeners closes ``stream`` after this returns
    if handle.connections >= limits.max_connections:
        handle.refused += 1
        return
    handle.connections += 1
    try:
        with trio.move_on_after(limits.request_timeout):
            await _answer(handle, endpoints, limits, stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        handle.connections -= 1


async def _answer(
    handle: HttpHandle, endpoints: Endpoints, limits: _Limits, stream: trio.SocketStream
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_request_size)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
                continue
            break
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint
        await _send(stream, conn, status, b"text/plain", f"{exc}\n".encode())
        await _drain(stream)  # the rest of the request: not read
        return
    if not isinstance(event, h11.Request):
        return  # closed without a request
    handle.requests += 1
    method = event.method
    path = event.target.split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        status, content_type, body = 405, b"text/plain", b"only GET and HEAD are served\n"
    elif path == b"/metrics":
        media, body = endpoints.metrics()
        status, content_type = 200, media.encode()
    elif path == b"/healthz":
        status, content_type, body = 200, b"text/plain", b"ok\n"
    elif path == b"/readyz":
        ready, problems = endpoints.readiness()
        status, content_type = (200, b"text/plain") if ready else (503, b"text/plain")
        body = b"ready\n" if ready else "".join(f"{p}\n" for p in problems).encode()
    else:
        status, content_type, body = (
            404,
            b"text/plain",
            b"not found: try /metrics, /healthz, /readyz\n",
        )
    body_to_send = b"" if method == b"HEAD" else body
    await _send(stream, conn, status, content_type, body_to_send, content_length=len(body))
    if conn.their_state is not h11.DONE:
        await _drain(stream)


async def _send(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    content_type: bytes,
    body: bytes,
    *,
    content_length: int | None = None,
) -> None:
    headers = [
        (b"Content-Type", content_type),
        (b"Content-Length", str(len(body) if content_length is None else content_length).encode()),
        (b"Connection", b"close"),
        (b"Cache-Control", b"no-store"),
    ]
    if status == 405:
        headers.append((b"Allow", _ALLOWED))
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
        if body:
            data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError:
        return  # nothing more can be said on this connection (e.g. a response was sent)
    await stream.send_all(data)


async def _drain(stream: trio.SocketStream) -> None:
    """Read and drop what the client still sends (bounded), after our half-close."""
    try:
        await stream.send_eof()
        received = 0
        with trio.move_on_after(DRAIN_TIMEOUT):
            while received < DRAIN_LIMIT:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                received += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")
