"""serve_listener: one nursery per listener; one task per accepted connection.

Each connection goes: accept -> PeerInfo from the socket -> (PROXY preamble, TLS,
WebSocket: per the listener's config) -> MQTT. A listener can stop accepting while its
connections finish (graceful shutdown).
"""

from __future__ import annotations

import errno
import logging
from collections import Counter

import attrs
import trio

from trio_mqtt.broker.core import BrokerCore
from trio_mqtt.config import ListenerConfig, Transport
from trio_mqtt.errors import ConfigError
from trio_mqtt.peer import Endpoint, PeerInfo
from trio_mqtt.server.connection import run_connection
from trio_mqtt.server.prefixed_stream import PrefixedStream
from trio_mqtt.server.proxy_policy import read_proxy_preamble
from trio_mqtt.server.rejection import ConnectionRejected
from trio_mqtt.server.tls import ServerTLS, tls_handshake
from trio_mqtt.server.watched_stream import WatchedSocketStream
from trio_mqtt.server.websocket import accept_websocket

log = logging.getLogger("trio_mqtt.listener")

# accept() errors that mean "out of resources right now", not "this listener is broken"
_TRANSIENT_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BACKOFF = 0.1
_TLS_TRANSPORTS = frozenset({Transport.TLS, Transport.WSS})
_WEBSOCKET_TRANSPORTS = frozenset({Transport.WS, Transport.WSS})


@attrs.define(eq=False)
class ListenerHandle:
    """A running listener: its bound addresses, live connections, and a way to stop it."""

    config: ListenerConfig
    addresses: list[Endpoint] = attrs.Factory(list)
    connections: int = 0
    # refused connections by reason ("untrusted-source", "timeout", "invalid-header",
    # "spoofed-header", "closed", "max-connections", "tls-handshake", "ws-upgrade")
    rejections: Counter[str] = attrs.Factory(Counter)
    # the certificates of a tls/wss listener (None for tcp/ws); reload_tls() swaps them
    tls: ServerTLS | None = None
    _accept_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _idle: trio.Event = attrs.Factory(trio.Event)
    # One shielded scope per connection task: cancelling the listener (e.g. the broker
    # being cancelled) must not cut connections off before they are asked to close
    # (MQTT 5 clients get DISCONNECT 0x8B); shutdown cancels these after its grace time.
    _connection_scopes: set[trio.CancelScope] = attrs.Factory(set)
    # connections closed at max_connections since the limit was last reached (0: below)
    _refused_at_limit: int = 0

    @property
    def name(self) -> str:
        return self.config.name

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
            where = f"tls.{exc.key}: " if exc.key else ""
            raise ConfigError(
                f"listener {self.name!r}: TLS reload failed, the previous certificates stay "
                f"in use: {where}{exc.detail}"
            ) from None
        log.info("listener %r: TLS certificates reloaded", self.name)
        return True

    def stop_accepting(self) -> None:
        self._accept_scope.cancel()

    def cancel_connections(self) -> None:
        """Cut every remaining connection off now (the end of a graceful shutdown)."""
        for scope in self._connection_scopes:
            scope.cancel()

    async def wait_idle(self) -> None:
        """Return once no connection of this listener is left."""
        while self.connections:
            self._idle = trio.Event()
            await self._idle.wait()

    def _connection_ended(self) -> None:
        self.connections -= 1
        if self.connections == 0:
            self._idle.set()


async def serve_listener(
    core: BrokerCore,
    config: ListenerConfig,
    *,
    task_status: trio.TaskStatus[ListenerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind, report the handle through ``task_status``, and serve until cancelled.

    A ``tls``/``wss`` listener loads its certificates first: a bad file is a ConfigError
    before anything is bound.
    """
    tls = None
    if config.transport in _TLS_TRANSPORTS and config.tls is not None:
        tls = ServerTLS.load(config.tls)
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    handle = ListenerHandle(config, tls=tls)
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
    async with trio.open_nursery() as nursery:
        with handle._accept_scope:
            task_status.started(handle)
            async with trio.open_nursery() as accept_nursery:
                for listener in listeners:
                    accept_nursery.start_soon(_accept_loop, core, handle, listener, nursery)
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        log.info("listener %r stopped accepting", config.name)


async def _accept_loop(
    core: BrokerCore,
    handle: ListenerHandle,
    listener: trio.SocketListener,
    nursery: trio.Nursery,
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _TRANSIENT_ACCEPT_ERRNOS:
                    log.error("listener %r: accept failed: %s; retrying", handle.name, exc)
                    await trio.sleep(_ACCEPT_BACKOFF)
                    continue
                raise
            if handle.connections >= handle.config.max_connections:
                handle.rejections["max-connections"] += 1
                if not handle._refused_at_limit:  # once per episode, not per connection
                    log.warning(
                        "listener %r: max_connections (%d) reached; closing new connections "
                        "until one ends",
                        handle.name,
                        handle.config.max_connections,
                    )
                handle._refused_at_limit += 1
                await trio.aclose_forcefully(stream)
                continue
            if handle._refused_at_limit:
                log.warning(
                    "listener %r: below max_connections again; %d connection(s) were closed",
                    handle.name,
                    handle._refused_at_limit,
                )
                handle._refused_at_limit = 0
            handle.connections += 1
            nursery.start_soon(_handle_connection, core, handle, stream)


async def _handle_connection(
    core: BrokerCore, handle: ListenerHandle, stream: trio.SocketStream
) -> None:
    scope = trio.CancelScope(shield=True)
    handle._connection_scopes.add(scope)
    try:
        with scope:
            await _serve_connection(core, handle, stream)
    finally:
        handle._connection_scopes.discard(scope)
        handle._connection_ended()


async def _serve_connection(
    core: BrokerCore, handle: ListenerHandle, socket_stream: trio.SocketStream
) -> None:
    stream = WatchedSocketStream(socket_stream)  # flow control: is the client reading?
    try:
        local = Endpoint.from_sockaddr(socket_stream.socket.getsockname())
        try:
            remote = Endpoint.from_sockaddr(socket_stream.socket.getpeername())
        except OSError:
            return  # the peer is already gone
        peer = PeerInfo.from_socket(handle.name, handle.config.transport.value, local, remote)
        who = str(remote) if remote is not None else "?"  # until a PROXY header says more
        try:
            preamble = await read_proxy_preamble(stream, handle.config.proxy_protocol, peer)
            peer = preamble.peer
            who = peer.describe()
            if peer.proxy_header is not None:
                log.debug("listener %r: PROXY header: %s", handle.name, who)
            mqtt_stream, peer = await _open_transport(
                core, handle, PrefixedStream(stream, preamble.leftover), peer
            )
        except ConnectionRejected as exc:
            handle.rejections[exc.reason] += 1
            log.log(
                exc.level,
                "listener %r: refused connection from %s: %s",
                handle.name,
                who,
                exc.detail,
            )
            return
        await run_connection(mqtt_stream, core, peer)
    finally:
        await trio.aclose_forcefully(stream)


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
        stream, peer = await tls_handshake(stream, handle.tls, peer, handshake_timeout=timeout)
    if config.transport in _WEBSOCKET_TRANSPORTS:
        stream = await accept_websocket(
            stream,
            path=config.ws_path,
            upgrade_timeout=timeout,
            peer=peer,
        )
    return stream, peer
