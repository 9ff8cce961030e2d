"""serve_listener: one listener's accept loops, and where a listener applies its policy
to each connection it accepts.

The accept loops (``_accept_loop``, one per bound socket) run under the listener's own
cancel scope (``stop_accepting`` cancels only that); the connections run in the handler
nursery the broker owns (``server/app.py``), so they outlive the accept loops during a
graceful shutdown. Each connection goes: accept -> the listener's limit -> PeerInfo from
the socket -> (PROXY preamble, TLS, WebSocket: per the listener's config) -> MQTT. A
connection gets a task of its own (``_serve_connection``) for the steps that may wait;
on plain TCP, a connection with nothing to wait for before MQTT (no PROXY protocol, or
its header in the socket already) starts parked instead (``_start_parked``), and so does
one whose task has read its header.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import attrs
import trio

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.broker.limits import REASON_CONNECTIONS, REASON_DENIED, AddressLimiter
from trio_mqtt.config import ListenerConfig, ProxyMode, Transport
from trio_mqtt.errors import ConfigError, ListenerBindError, ProxyProtocolError
from trio_mqtt.networks import address_in
from trio_mqtt.peer import Endpoint, PeerInfo, SocketEnds
from trio_mqtt.proxy import looks_like_proxy_header, parse_proxy_header
from trio_mqtt.server.connection import run_connection, start_parked
from trio_mqtt.server.idle_park import supported as parking_supported
from trio_mqtt.server.prefixed_stream import PrefixedStream
from trio_mqtt.server.proxy_policy import (
    Preamble,
    is_trusted,
    preamble_at_once,
    read_proxy_preamble,
    refused_unread,
)
from trio_mqtt.server.rejection import (
    AddressRefused,
    ConnectionRejected,
    HealthCheck,
    TLSHandshakeRejected,
)
from trio_mqtt.server.tls import ServerTLS, tls_handshake
from trio_mqtt.server.watched_stream import WatchedSocketStream
from trio_mqtt.server.websocket import accept_websocket

log = logging.getLogger("trio_mqtt.listener")

RECEIVE_SIZE = 4096
# accept(2) errors that mean the system is out of a resource (descriptors, memory): the
# loop waits ACCEPT_RETRY_DELAY and accepts again, as trio.serve_listeners does, rather
# than ending the listener
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY = 0.1
# accept(2) errors about the one connection it was taking (gone before it was taken, a
# network error, a firewall's veto): the loop goes on with the next, as trio's does
_ACCEPT_SKIP_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "ECONNRESET",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ENETDOWN",
        "ENETUNREACH",
        "ENONET",
        "ENOPROTOOPT",
        "ENOSR",
        "EOPNOTSUPP",
        "EPERM",
        "EPROTO",
        "EPROTONOSUPPORT",
        "ESOCKTNOSUPPORT",
        "ETIMEDOUT",
    )
    if hasattr(errno, name)
)
# At most this many connections are taken from the backlog per wake-up of an accept loop;
# then it lets the other tasks run. Each accept through trio's SocketListener was a pass
# through the scheduler: with a burst of new connections waiting, about 30 % of their
# CPU (benchmarks.trio_floor, connections started parked: 225 -> 157 us each).
ACCEPT_BATCH = 64

# What trio.SocketStream sets on every socket it wraps: TCP_NODELAY (a packet goes out
# when it is written) and TCP_NOTSENT_LOWAT 16 KiB (the kernel holds at most that much
# not yet sent, so a client that stops reading shows as a full socket soon:
# watched_stream.py). Accepted connections are not wrapped in one (watched_stream.py),
# so the listening socket gets them, and Linux passes them on to every connection it
# accepts; elsewhere each accepted socket is given them.
_TCP_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),) + (
    ((socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 2**14),)
    if hasattr(socket, "TCP_NOTSENT_LOWAT")
    else ()
)
_ACCEPTED_INHERIT_OPTIONS = sys.platform == "linux"

_TLS_TRANSPORTS = frozenset({Transport.TLS, Transport.WSS})
_WEBSOCKET_TRANSPORTS = frozenset({Transport.WS, Transport.WSS})
# (members as module constants: on Python 3.11 a member read from its enum class goes
# through the hook of EnumType's __getattr__, on every connection here)
_TCP = Transport.TCP
_PROXY_OFF = ProxyMode.OFF


@attrs.define(eq=False)
class ListenerHandle:
    """A running listener: its bound addresses, live connections, and a way to stop it."""

    config: ListenerConfig
    addresses: list[Endpoint] = attrs.Factory(list)
    connections: int = 0
    # refused connections by reason ("untrusted-source", "timeout", "invalid-header",
    # "spoofed-header", "tls-required", "client-cert-required", "closed",
    # "second-header", "max-connections", "tls-handshake", "ws-upgrade"; per client
    # address: "denied-source", "connect-rate", "connections-per-address")
    rejections: Counter[str] = attrs.Factory(Counter)
    # connections handed to MQTT (past the PROXY header, TLS and the WebSocket upgrade)
    accepted: int = 0
    # PROXY headers by (version, result): see proxy_policy.read_proxy_preamble
    proxy_headers: Counter[tuple[str, str]] = attrs.Factory(Counter)
    # TLS handshakes by result: "ok", "failed", "closed" (the peer went away), "timeout"
    tls_handshakes: Counter[str] = attrs.Factory(Counter)
    # load balancers' health checks seen (never refusals, logged at DEBUG only): a peer
    # that closed before sending anything, a PROXY v2 LOCAL / v1 UNKNOWN header, a PROXY
    # header followed by the close (HAProxy's check-send-proxy)
    health_checks: int = 0
    # connections and connection attempts per client address (None: no such limit)
    address_limits: AddressLimiter | None = None
    # the certificates of a tls/wss listener (None for tcp/ws); reload_tls() swaps them
    tls: ServerTLS | None = None
    _accept_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    # connections closed at max_connections since the limit was last reached (0: below)
    _refused_at_limit: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def accepting(self) -> bool:
        """Whether the listener accepts new connections (``stop_accepting`` not called)."""
        return not self._accept_scope.cancel_called

    def reload_tls(self) -> bool:
        """Re-read this listener's certificate files for new connections.

        Returns False for a listener without TLS. On an error the current certificates
        stay in use and ConfigError (naming the listener) says what is wrong.
        """
        if self.tls is None:
            return False
        try:
            self.tls.reload()
        except ConfigError as exc:
            raise self._tls_error("TLS reload failed, the previous certificates", exc) from None
        log.info("listener %r: TLS certificates reloaded", self.name)
        return True

    def apply_config(self, config: ListenerConfig) -> None:
        """Use *config* for new connections (a config reload); open ones are not touched.

        What needs a new socket (name, bind, transport, reuse_port) and
        ``limits.ipv6_prefix_length`` must be as before: ``Broker.reload_config`` keeps
        them. The certificate files are read again (changed or not); if they fail to
        load, ConfigError says why and nothing changes.
        """
        tls = self.tls
        if config.transport in _TLS_TRANSPORTS and config.tls is not None:
            if tls is not None and tls.config == config.tls:
                self.reload_tls()
            else:
                try:
                    tls = ServerTLS.load(config.tls)
                except ConfigError as exc:
                    raise self._tls_error(
                        "the new TLS settings failed to load, the previous ones", exc
                    ) from None
        limits = config.limits
        if self.address_limits is not None:
            # kept even with the limits off: it counts the connections open now
            self.address_limits.reconfigure(
                max_connections=limits.max_connections_per_address,
                rate=limits.connect_rate_per_address,
                burst=limits.connect_burst_per_address,
                now=trio.current_time(),
            )
        elif limits.limits_addresses:
            self.address_limits = _address_limiter(config)  # counts from now on
        self.config, self.tls = config, tls

    def _tls_error(self, what: str, exc: ConfigError) -> ConfigError:
        """*exc* (a certificate that failed to load) naming this listener and its key."""
        where = f"tls.{exc.key}: " if exc.key else ""
        return ConfigError(f"listener {self.name!r}: {what} stay in use: {where}{exc.detail}")

    def stop_accepting(self) -> None:
        """Accept no more connections; those open stay (the broker's shutdown ends them)."""
        self._accept_scope.cancel()

    def admit(self) -> bool:
        """Count a new connection in, or refuse it at ``max_connections`` (logged once)."""
        limit = self.config.max_connections
        if self.connections >= limit:
            self.rejections["max-connections"] += 1
            if not self._refused_at_limit:  # once per episode, not per connection
                log.warning(
                    "listener %r: max_connections (%d) reached; closing new connections "
                    "until one ends",
                    self.name,
                    limit,
                )
            self._refused_at_limit += 1
            return False
        if self._refused_at_limit:
            log.warning(
                "listener %r: below max_connections again; %d connection(s) were closed",
                self.name,
                self._refused_at_limit,
            )
            self._refused_at_limit = 0
        self.connections += 1
        return True

    def connection_ended(self) -> None:
        self.connections -= 1


#: The listen backlog trio.open_tcp_listeners uses: "as large as possible" (the kernel
#: truncates it to its configured maximum, e.g. net.core.somaxconn).
LISTEN_BACKLOG = 0xFFFF


async def open_reuse_port_listeners(port: int, *, host: str) -> list[trio.SocketListener]:
    """Like ``trio.open_tcp_listeners``, with SO_REUSEPORT set before bind.

    Several processes (or brokers) may then listen on the same address and the kernel
    spreads new connections across them (on Linux: by a hash of the connection's
    addresses). One socket per address *host* resolves to; with port 0 each one gets its
    own port, as with trio. A port another socket holds without SO_REUSEPORT still fails
    with EADDRINUSE, as without.
    """
    reuse_port: int | None = getattr(trio.socket, "SO_REUSEPORT", None)
    if reuse_port is None:
        raise ConfigError("reuse_port = true: this platform has no SO_REUSEPORT")
    addresses = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    unsupported: OSError | None = None
    try:
        for family, type_, proto, _, sockaddr in addresses:
            try:
                sock = trio.socket.socket(family, type_, proto)
            except OSError as exc:
                # e.g. "localhost" gives ::1 too on a host without IPv6: as trio does,
                # skip a family the system lacks if another one works
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
                unsupported = exc
                continue
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, reuse_port, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(sockaddr)
                sock.listen(LISTEN_BACKLOG)
                listeners.append(trio.SocketListener(sock))
            except BaseException:
                sock.close()
                raise
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    if not listeners and unsupported is not None:
        raise unsupported
    return listeners


def _address_limiter(config: ListenerConfig) -> AddressLimiter:
    limits = config.limits
    return AddressLimiter(
        max_connections=limits.max_connections_per_address,
        rate=limits.connect_rate_per_address,
        burst=limits.connect_burst_per_address,
        ipv6_prefix_length=limits.ipv6_prefix_length,
    )


def bind_error(config: ListenerConfig, exc: OSError) -> ListenerBindError:
    """*exc*, from resolving or binding *config*'s address, as an error naming both."""
    if isinstance(exc, trio.socket.gaierror):
        reason = f"host {config.host!r} does not resolve ({_lower_first(exc.strerror)})"
    elif exc.errno == errno.EADDRINUSE:
        reason = "address already in use"
    elif exc.errno == errno.EACCES and 0 < config.port < 1024:
        reason = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = f"{config.host!r} is not an address of this machine"
    else:
        reason = _lower_first(exc.strerror) or str(exc)
    return ListenerBindError(config.name, config.bind, reason, exc.errno)


def _lower_first(text: str | None) -> str:
    """'Address already in use' -> 'address already in use' (a message goes on)."""
    return text[:1].lower() + text[1:] if text else ""


async def serve_listener(
    core: BrokerCore,
    config: ListenerConfig,
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[ListenerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind, report the handle through ``task_status``, and accept until cancelled.

    Connection tasks start in ``handler_nursery``: stopping or cancelling the accept
    loops leaves them running. A ``tls``/``wss`` listener loads its certificates first:
    a bad file is a ConfigError before anything is bound.
    """
    tls = None
    if config.transport in _TLS_TRANSPORTS and config.tls is not None:
        tls = ServerTLS.load(config.tls)
    try:
        if config.reuse_port:
            listeners = await open_reuse_port_listeners(config.port, host=config.host)
        else:
            listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    except OSError as exc:
        raise bind_error(config, exc) from None
    handle = ListenerHandle(config, tls=tls)
    if config.limits.limits_addresses:
        handle.address_limits = _address_limiter(config)
    for listener in listeners:
        address = Endpoint.from_sockaddr(listener.socket.getsockname())
        if address is not None:
            handle.addresses.append(address)
    log.info(
        "listener %r (%s) up on %s",
        config.name,
        config.transport.value,
        ", ".join(str(a) for a in handle.addresses),
    )
    proxy = config.proxy_protocol
    if proxy.use_cn_as_username and not proxy.trusted_sources:
        # The CN and its "verified" flag are in the header itself: whoever may send a
        # header may claim any certificate (docs/load-balancers.md, security notes).
        log.warning(
            "listener %r: use_cn_as_username with an empty trusted_sources lets anyone "
            "who reaches the port log in as any certificate CN; list the proxies' "
            "addresses in proxy_protocol.trusted_sources",
            config.name,
        )
    requirements = [
        option
        for option in ("require_tls", "require_verified_client_cert")
        if getattr(proxy, option)
    ]
    if requirements and not proxy.trusted_sources:
        log.warning(
            "listener %r: %s with an empty trusted_sources is met by anyone who reaches the "
            "port and sends a PROXY v2 header that claims it; list the proxies' addresses in "
            "proxy_protocol.trusted_sources",
            config.name,
            " and ".join(requirements),
        )
    # the accept loops take connections with accept(2) themselves (ACCEPT_BATCH)
    sockets = [ListeningSocket(listener.socket.detach()) for listener in listeners]
    try:
        with handle._accept_scope:
            task_status.started(handle)
            async with trio.open_nursery() as accepting:
                for sock in sockets:
                    accepting.start_soon(_accept_loop, core, handle, sock, handler_nursery)
    finally:
        for sock in sockets:
            trio.lowlevel.notify_closing(sock)
            sock.close()
    log.info("listener %r stopped accepting", config.name)


def _give_tcp_options(sock: socket.socket) -> None:
    for level, option, value in _TCP_OPTIONS:
        with contextlib.suppress(OSError):  # (as trio.SocketStream: not on every socket)
            sock.setsockopt(level, option, value)


class ListeningSocket(socket.socket):
    """A listening socket that an accept loop takes connections from.

    ``socket.accept`` builds each accepted socket from the listener's ``family`` and
    ``type``: properties that convert the kernel's numbers to enum members on every
    read, about 12k CPU instructions per connection on Python 3.11. They are the same
    for every connection, so they are read once here. The socket options accepted
    connections need are set on it (``_TCP_OPTIONS``).
    """

    __slots__ = ("_family", "_type")

    def __init__(self, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self._family = super().family
        self._type = super().type
        _give_tcp_options(self)

    @property
    def family(self) -> socket.AddressFamily:
        return self._family

    @property
    def type(self) -> socket.SocketKind:
        return self._type

    def accept(self) -> tuple[socket.socket, Any]:
        """``socket.accept`` as a non-blocking listener needs it: the new socket made
        from the family and type read once, and no blocking mode to pass on (the
        stdlib's asks two timeouts per connection, and this socket's ``family`` and
        ``type`` through these properties: two Python calls and two C calls fewer)."""
        fd, address = self._accept()  # type: ignore[attr-defined]
        return socket.socket(self._family, self._type, self.proto, fileno=fd), address


async def _accept_loop(
    core: BrokerCore,
    handle: ListenerHandle,
    sock: socket.socket,
    handler_nursery: trio.Nursery,
) -> None:
    """Accept on the listening ``sock`` until cancelled; each connection starts parked
    (``_start_parked``) or in a task of its own (``_serve_connection``), in
    ``handler_nursery``.

    Up to ACCEPT_BATCH connections per wake-up, each taken with accept(2) here: trio's
    ``SocketListener.accept`` passes through the scheduler for every connection. And no
    wrapper around each connection, as ``trio.serve_listeners`` has: its
    ``aclose_forcefully`` raised and caught a ``Cancelled`` per connection (about a
    tenth of a short connection's CPU); a connection closes its socket itself.
    """
    # A socket bound to one address: every connection's local end is that address (a
    # wildcard bind: each connection's own, asked per connection)
    local = Endpoint.from_sockaddr(sock.getsockname())
    if local is not None and ipaddress.ip_address(local.host.partition("%")[0]).is_unspecified:
        local = None
    sock.setblocking(False)
    batch: list[socket.socket] = []
    first_steps: list[Callable[[], None]] = []
    while True:
        await trio.lowlevel.wait_readable(sock)
        out_of_capacity = _accept_batch(handle, sock, batch)
        # In phases: the whole batch accepted, then each connection taken in, then the
        # first steps of those started parked with their first bytes (read with a PROXY
        # header). The same code run over a batch stays in the CPU's caches: one phase
        # after another, a PROXY connection costs about a fifth less CPU than taken
        # through all its steps one by one (in process, 197 -> 164 us each).
        for accepted in batch:
            if not _ACCEPTED_INHERIT_OPTIONS:
                _give_tcp_options(accepted)
            # flow control: is the client reading?
            stream = WatchedSocketStream(trio.socket.from_stdlib_socket(accepted))
            _accepted(core, handle, handler_nursery, stream, local, first_steps=first_steps)
        for step in first_steps:
            step()
        batch.clear()
        first_steps.clear()
        if out_of_capacity:
            await trio.sleep(ACCEPT_RETRY_DELAY)


def _accept_batch(handle: ListenerHandle, sock: socket.socket, batch: list[socket.socket]) -> bool:
    """Accept up to ACCEPT_BATCH connections from ``sock`` into ``batch``; True if
    accept(2) said the system is out of a resource (logged): the loop waits a while."""
    for _ in range(ACCEPT_BATCH):
        try:
            accepted, _ = sock.accept()
        except BlockingIOError:
            return False  # the backlog is empty
        except OSError as exc:
            if exc.errno in _ACCEPT_SKIP_ERRNOS:
                continue
            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            log.error(
                "listener %r: accept failed: %s (%s); accepting again in %g s",
                handle.name,
                errno.errorcode[exc.errno],
                os.strerror(exc.errno),
                ACCEPT_RETRY_DELAY,
            )
            return True
        batch.append(accepted)
    return False


def _accepted(
    core: BrokerCore,
    handle: ListenerHandle,
    handler_nursery: trio.Nursery,
    stream: WatchedSocketStream,
    local: Endpoint | None,
    *,
    first_steps: list[Callable[[], None]],
) -> None:
    """A connection just accepted: counted in (``max_connections``), its socket's ends;
    then, on plain TCP, parked at once (``_start_parked``) when nothing needs waiting for
    first, else a task of its own (``_serve_connection``).

    Nothing needs waiting for without PROXY protocol, nor when the PROXY header (or
    the first bytes of a client that sends none, where it is optional) is in the socket
    already, as in a burst of connections: ``_preamble_at_once``. The step that handles
    the bytes read with that header is left in ``first_steps``, for the accept loop.
    """
    if not handle.admit():
        stream.socket.close()
        return
    started = False
    try:
        try:
            remote = Endpoint.from_sockaddr(stream.socket.getpeername())
        except OSError:
            # gone already: HAProxy's plain TCP check resets right after the handshake
            _health_check(handle, "?", "connection reset right after it was accepted", None)
            return
        if local is None:  # (the listener's socket is bound to a wildcard address)
            local = Endpoint.from_sockaddr(stream.socket.getsockname())
        received = b""
        config = handle.config  # (per connection: a reload may change it)
        # (the member's value: .value is a Python-level property, ~1.5k instructions)
        transport = config.transport._value_
        parks = _parks_at_mqtt(config)
        preamble: Preamble | None = None
        if parks and config.proxy_protocol.mode is _PROXY_OFF:
            # the socket's PeerInfo at once, with no SocketEnds to build it from
            preamble = Preamble(PeerInfo.from_socket(handle.name, transport, local, remote), b"")
        else:
            ends = SocketEnds(handle.name, transport, local, remote)
            if parks:
                preamble, received = _preamble_at_once(handle, ends, stream)
            if preamble is None:
                handler_nursery.start_soon(
                    _serve_connection, core, handle, handler_nursery, stream, ends, received
                )
                started = True
                return
        started = True  # (it ends the connection itself if it refuses it)
        _start_parked(core, handle, handler_nursery, stream, preamble, first_steps=first_steps)
    finally:
        if not started:
            handle.connection_ended()
            stream.socket.close()


def _parks_at_mqtt(config: ListenerConfig) -> bool:
    """Whether this listener's connections start parked once MQTT begins (plain TCP,
    where sockets can park): nothing but the PROXY preamble comes before it."""
    return parking_supported and config.transport is _TCP


def _preamble_at_once(
    handle: ListenerHandle, ends: SocketEnds, stream: WatchedSocketStream
) -> tuple[Preamble | None, bytes]:
    """The connection's PROXY preamble, if what its socket holds already decides it and
    nothing after it needs waiting for: no header (where it is optional), or a header
    naming a client followed by bytes that cannot begin a second one; and the bytes
    read. Otherwise the preamble is None and nothing was counted: the connection's task
    reads on, and refuses, counts and logs in one place. A peer that ``required`` mode
    refuses before reading is not read here either."""
    policy = handle.config.proxy_protocol
    trusted = is_trusted(policy, ends)
    if refused_unread(policy, trusted):
        return None, b""
    try:
        received = stream.receive_nowait(RECEIVE_SIZE) or b""
    except trio.BrokenResourceError:
        received = b""  # (reset: its task meets it as EOF)
    if not received:  # nothing yet, or EOF (which its task meets again)
        return None, b""
    counts: defaultdict[tuple[str, str], int] = defaultdict(int)  # (a Counter costs more)
    try:
        preamble = preamble_at_once(received, policy, ends, counts, trusted=trusted)
    except (ConnectionRejected, HealthCheck):
        return None, received  # refused: its task finds the same in the same bytes
    header = None if preamble is None else preamble.peer.proxy_header
    if preamble is None or (
        header is not None
        and (header.is_local or looks_like_proxy_header(preamble.leftover) is not False)
    ):
        # more of the header, a health check, a second header, or too few bytes to tell
        return None, received
    proxy_headers = handle.proxy_headers
    for key, count in counts.items():
        proxy_headers[key] += count
    return preamble, received


def _start_parked(
    core: BrokerCore,
    handle: ListenerHandle,
    handler_nursery: trio.Nursery,
    stream: WatchedSocketStream,
    preamble: Preamble,
    *,
    first_steps: list[Callable[[], None]],
) -> None:
    """The rest of ``_serve_connection`` for a plain-TCP connection whose preamble is
    known (none, or a PROXY header read at once), with no task: the client's address
    limits, then the connection starts parked, and its CONNECT (or what came with the
    header) is read and answered by the park (``connection.start_parked``)."""
    peer = preamble.peer
    counted_as: str | None = None
    handed_over = False
    try:
        try:
            _refuse_denied(handle, peer)
            counted_as = _admit_address(handle, peer)
        except AddressRefused as exc:
            _log_address_refused(handle, exc, peer)
            return
        if peer.proxy_header is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("listener %r: PROXY header: %s", handle.name, peer.describe())
        handle.accepted += 1
        handed_over = True
        start_parked(
            stream,
            core,
            peer,
            handler_nursery,
            _ConnectionEnd(handle, counted_as),
            received=preamble.leftover,
            first_steps=first_steps,
        )
    finally:
        if not handed_over:
            _ConnectionEnd(handle, counted_as)()
            stream.socket.close()


async def _serve_connection(  # noqa: PLR0917 (nursery.start_soon passes positionals)
    core: BrokerCore,
    handle: ListenerHandle,
    handler_nursery: trio.Nursery,
    stream: WatchedSocketStream,
    ends: SocketEnds,
    received: bytes,
) -> None:
    # The task of a connection counted in (admit) with its socket's ends, from its PROXY
    # header to its close (or to its park, on plain TCP); it always closes ``stream``.
    # ``received``: its first bytes, read already. One coroutine from here to
    # run_connection, no wrapper: each is a frame that every idle connection keeps.
    counted_as: str | None = None  # the key address_limits counts this connection under
    handed_over = False
    peer: PeerInfo | None = None  # once the PROXY preamble tells who the client is
    try:
        # until a PROXY header says more
        who = str(ends.remote) if ends.remote is not None else "?"
        try:
            preamble = await read_proxy_preamble(
                stream, handle.config.proxy_protocol, ends, handle.proxy_headers, received
            )
            peer = preamble.peer
            who = peer.describe()
            leftover = preamble.leftover
            header = peer.proxy_header
            if header is None or not header.is_local:  # else the proxy itself: no limits
                _refuse_denied(handle, peer)
                counted_as = _admit_address(handle, peer)
            if header is not None:
                log.debug("listener %r: PROXY header: %s", handle.name, who)
                leftover = await _refuse_second_header(
                    stream, leftover, core.config.connect_timeout
                )
                if header.is_local:  # the proxy's own connection (an MQTT-level check)
                    _health_check(handle, who, "PROXY header naming no client", peer)
            if _parks_at_mqtt(handle.config):
                mqtt_stream = None  # starts parked, past its PROXY header (below)
            else:
                mqtt_stream, peer = await _open_transport(
                    core, handle, PrefixedStream(stream, leftover), peer
                )
        except HealthCheck as exc:
            if counted_as is not None and handle.address_limits is not None:
                # a header and nothing more (check-send-proxy): the attempt is given back
                handle.address_limits.release(counted_as, trio.current_time(), refund=True)
                counted_as = None
            _health_check(handle, who, exc.detail, peer or ends.peer())
            return
        except AddressRefused as exc:
            _log_address_refused(handle, exc, peer or ends.peer())
            return
        except ConnectionRejected as exc:
            handle.rejections[exc.reason] += 1
            log.log(
                exc.level,
                "listener %r: refused connection from %s: %s",
                handle.name,
                who,
                exc.detail,
                extra={
                    **(peer or ends.peer()).log_fields(),
                    "event": "connection-refused",
                    "reason": exc.reason,
                },
            )
            return
        handle.accepted += 1
        handed_over = True  # run_connection ends it, maybe in a later task (it parks)
        end = _ConnectionEnd(handle, counted_as)
        if mqtt_stream is None:
            # plain TCP after a PROXY header: this task has done its part, and the
            # connection parks (what came with the header, a CONNECT most likely, is
            # handled first) as one without PROXY protocol starts
            start_parked(stream, core, peer, handler_nursery, end, received=leftover)
            return
        # (its writers, and its later tasks if it parks, run in handler_nursery too)
        await run_connection(mqtt_stream, core, peer, handler_nursery, end)
    finally:
        if not handed_over:  # refused, or failed, before run_connection
            _ConnectionEnd(handle, counted_as)()
            # (nothing above the socket has anything to say)
            stream.socket.close()


class _ConnectionEnd:
    """The listener's part of a connection's end, which ``run_connection`` calls once it
    has closed the connection's stream: from a later task than the one that accepted it
    if the connection parked. (A small object: a parked connection keeps it.)"""

    __slots__ = ("_counted_as", "_handle")

    def __init__(self, handle: ListenerHandle, counted_as: str | None) -> None:
        self._handle = handle
        self._counted_as = counted_as  # the key address_limits counts it under

    def __call__(self) -> None:
        handle = self._handle
        if self._counted_as is not None and handle.address_limits is not None:
            handle.address_limits.release(self._counted_as, trio.current_time())
        handle.connection_ended()


def _log_address_refused(handle: ListenerHandle, exc: AddressRefused, peer: PeerInfo) -> None:
    handle.rejections[exc.reason] += 1
    # ONE fixed format, matched by the fail2ban filter of docs/operations.md
    log.warning(
        "refused client %s on listener %r: %s (%s)",
        exc.host,
        handle.name,
        exc.reason,
        exc.detail,
        extra={**peer.log_fields(), "event": "client-refused", "reason": exc.reason},
    )


def _refuse_denied(handle: ListenerHandle, peer: PeerInfo) -> None:
    """Refuse a client whose real address is in the listener's ``deny_sources``."""
    deny = handle.config.limits.deny_sources
    host = peer.client_host
    if deny and host is not None and address_in(host, deny):
        raise AddressRefused(REASON_DENIED, host, "in deny_sources")


def _admit_address(handle: ListenerHandle, peer: PeerInfo) -> str | None:
    """Count the connection in under its client address, or refuse it (AddressRefused)."""
    limiter = handle.address_limits
    host = peer.client_host
    if limiter is None or host is None:
        return None
    key, reason = limiter.admit(host, trio.current_time())
    if reason is None:
        return key
    if reason == REASON_CONNECTIONS:
        detail = f"{limiter.max_connections} connections open from {key}"
    else:
        detail = (
            f"more than {limiter.rate:g} new connections a second from {key} "
            f"(bursts of {limiter.burst})"
        )
    raise AddressRefused(reason, host, detail)


def _health_check(handle: ListenerHandle, who: str, detail: str, peer: PeerInfo | None) -> None:
    handle.health_checks += 1
    fields = peer.log_fields() if peer is not None else {}
    log.debug(
        "listener %r: health check from %s: %s",
        handle.name,
        who,
        detail,
        extra={**fields, "event": "health-check"},
    )


async def _refuse_second_header(
    stream: trio.abc.ReceiveStream, leftover: bytes, wait: float
) -> bytes:
    """The first bytes after a PROXY header, refused if they begin another PROXY header.

    Chained load balancers (an AWS NLB behind another, each with PROXY protocol on) send
    one header each; only the first is ours to read. MQTT, TLS and HTTP never begin like
    a header, so the first bytes after it tell: the connection is refused and logged
    as what it is, rather than as garbage at the next layer. Reads only until that is
    known (one or two bytes), within ``wait`` seconds; EOF is passed on to the next layer,
    except right after the header: a header and nothing else is a health check
    (HAProxy's ``check-send-proxy``), raised as ``HealthCheck``.
    """
    data = leftover
    verdict = looks_like_proxy_header(data)
    if verdict is None:  # (else the bytes read with the header tell: no scope, no read)
        try:
            with trio.fail_after(wait):
                while verdict is None:
                    try:
                        chunk = await stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        chunk = b""  # the next layer would meet the same
                    if not chunk:
                        if not data:
                            raise HealthCheck("closed right after the PROXY header")
                        return data
                    data += chunk
                    verdict = looks_like_proxy_header(data)
        except trio.TooSlowError:
            raise ConnectionRejected(
                "timeout",
                f"nothing after the PROXY header within {wait:g}s ({len(data)} bytes)",
                level=logging.INFO,
            ) from None
    if verdict:
        second = ""
        with contextlib.suppress(ProxyProtocolError):
            parsed = parse_proxy_header(data)
            if parsed is not None and parsed[0].source is not None:
                second = f" (it names client {parsed[0].source})"
        raise ConnectionRejected(
            "second-header",
            f"a second PROXY header follows the first{second}: only one is read, and the "
            "bytes after it must be MQTT, TLS or HTTP. Chained load balancers (e.g. an AWS "
            "NLB behind another) must not both send PROXY protocol",
        )
    return data


async def _open_transport(
    core: BrokerCore, handle: ListenerHandle, stream: trio.abc.Stream, peer: PeerInfo
) -> tuple[trio.abc.Stream, PeerInfo]:
    """TLS and/or the WebSocket upgrade, per the listener's transport (after PROXY).

    Each step gets the broker's ``connect_timeout``: the same "from connected to useful"
    bound a client has for its CONNECT, so a peer that opens TCP and then says nothing
    holds a connection slot no longer at any layer.
    """
    config = handle.config
    timeout = core.config.connect_timeout
    if handle.tls is not None:
        try:
            stream, peer = await tls_handshake(stream, handle.tls, peer, handshake_timeout=timeout)
        except TLSHandshakeRejected as exc:
            handle.tls_handshakes[exc.result] += 1
            raise
        handle.tls_handshakes["ok"] += 1
    if config.transport in _WEBSOCKET_TRANSPORTS:
        stream, peer = await accept_websocket(
            stream,
            path=config.ws_path,
            upgrade_timeout=timeout,
            peer=peer,
            trusted_proxies=config.ws_trusted_proxies,
            forwarded_header=config.ws_forwarded_header,
            max_frame_size=core.config.max_packet_size,
        )
    return stream, peer
