"""Where a listener applies its PROXY protocol policy to a freshly accepted connection.

``read_proxy_preamble`` runs before TLS, WebSocket and MQTT. Per ``ProxyPolicy``:

- ``off``: nothing is read.
- ``required``: a peer outside a non-empty ``trusted_sources`` is refused before a single
  byte is read; everyone else must send a complete, valid v1 or v2 header within
  ``timeout`` seconds (the deadline covers the whole header, so a peer trickling one
  byte a second is closed at the deadline).
- ``optional``: the first byte decides ('P' starts v1, '\\r' starts the v2 signature;
  MQTT and TLS can start with neither). A header from a trusted source is parsed; a
  header from anyone else is a spoofing attempt and refused; no header means the
  socket's addresses stand.

Once a header is read, ``require_tls`` and ``require_verified_client_cert`` refuse a
relayed client whose header does not say, in the v2 SSL TLV, that it reached the proxy
over TLS (PP2_CLIENT_SSL) and, for the second, that it presented a certificate
(PP2_CLIENT_CERT_CONN or PP2_CLIENT_CERT_SESS) which the proxy verified (``verify`` 0).
A v1 header carries no TLVs, so it can never meet them; a v2 LOCAL header (the proxy's
own health check) relays no client and is not checked.

A refusal raises ``ConnectionRejected``; the listener logs it once and counts it, and the
connection never reaches MQTT code. A peer that closes (or resets) before sending a byte
is a load balancer's TCP health check: ``HealthCheck``, counted and logged at DEBUG only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping
from typing import TypeAlias

import trio

from trio_mqtt.config import ProxyMode, ProxyPolicy
from trio_mqtt.errors import ProxyProtocolError
from trio_mqtt.hot_value import hot_value
from trio_mqtt.peer import Endpoint, PeerInfo, SocketEnds, TLSInfo, certificate_identity
from trio_mqtt.proxy import (
    HEADER_FIRST_BYTES,
    Address,
    ClientFlags,
    Command,
    ProxyHeader,
    ProxyParser,
    parse_proxy_header,
)
from trio_mqtt.server.rejection import ConnectionRejected, HealthCheck
from trio_mqtt.server.watched_stream import WatchedSocketStream

RECEIVE_SIZE = 4096

#: Headers counted by (version, result), a missing key read as 0: the listener's
#: ``proxy_headers`` Counter, or a ``defaultdict(int)`` to merge into it later.
ProxyCounts: TypeAlias = MutableMapping[tuple[str, str], int]

# The members every connection's checks compare with, as module constants: on Python
# 3.11 a member read from its enum class goes through the hook of EnumType's __getattr__.
_OFF = ProxyMode.OFF
_REQUIRED = ProxyMode.REQUIRED
_OPTIONAL = ProxyMode.OPTIONAL
_LOCAL = Command.LOCAL
# The header version its first byte announces (the ``proxy_headers`` counter's label).
_VERSION_OF_FIRST_BYTE = {ord("P"): "v1", ord("\r"): "v2"}
_VERSION_LABEL = {1: "v1", 2: "v2"}  # (a parsed header's, without formatting one)


@hot_value
class Preamble:
    peer: PeerInfo
    leftover: bytes  # bytes read past the header: the next layer's


async def read_proxy_preamble(
    stream: trio.abc.ReceiveStream,
    policy: ProxyPolicy,
    ends: SocketEnds,
    counts: ProxyCounts | None = None,
    received: bytes = b"",
) -> Preamble:
    """Apply ``policy`` to the connection of the socket ``ends``: returns its PeerInfo
    (as the header, if any, tells it) and the bytes after the header.

    ``counts`` (the listener's ``proxy_headers``) counts each header by (version, result):
    version "v1", "v2", "local" (a header naming no client) or "unknown" (nothing told);
    result "ok", "invalid", "timeout", "untrusted_source", "closed" or
    "requirements_unmet" (``require_tls`` / ``require_verified_client_cert``).
    ``received``: the connection's first bytes, read already (``preamble_at_once`` found
    them too few to decide).
    """
    if policy.mode is _OFF:
        return Preamble(ends.peer(), received)
    if counts is None:
        counts = Counter()
    trusted = _trusted(policy, ends, counts)
    parser = ProxyParser(max_header_size=policy.max_header_size)
    version = "unknown"
    # One deadline for the whole header, however it trickles in; each wait for more
    # bytes is under it (_receive), and bytes already there are taken without one.
    deadline = trio.current_time() + policy.timeout
    try:
        first = received or await _receive(stream, deadline, nothing_yet=True)
        version = _VERSION_OF_FIRST_BYTE.get(first[0], "unknown")
        if policy.mode is _OPTIONAL and _without_header(first, trusted, ends, counts):
            return Preamble(ends.peer(), first)  # no header: the socket's addresses stand
        header = parser.feed(first)
        while header is None:
            header = parser.feed(await _receive(stream, deadline))
    except trio.TooSlowError:
        counts[version, "timeout"] += 1
        raise ConnectionRejected(
            "timeout",
            f"no complete PROXY header within {policy.timeout:g}s "
            f"({parser.buffered} bytes received)",
        ) from None
    except ProxyProtocolError as exc:
        raise _invalid(exc, version, counts) from None
    except ConnectionRejected as exc:
        if exc.reason == "closed":  # the peer went away in the middle of the header
            counts[version, "closed"] += 1
        raise
    return _with_header(header, parser.leftover, policy, ends, counts)


def preamble_at_once(
    received: bytes,
    policy: ProxyPolicy,
    ends: SocketEnds,
    counts: ProxyCounts,
    *,
    trusted: bool = False,
) -> Preamble | None:
    """``read_proxy_preamble`` when ``received``, the connection's first bytes, decide it
    (a whole header, or none where it is optional): the same Preamble, or the same
    refusal raised and counted. None if more bytes are needed: nothing is counted then.

    A proxy sends its header right behind the TCP handshake, so in a burst of new
    connections it is often in the socket with the client's first bytes when the
    connection is accepted: then no task has to wait for it. ``trusted=True``: the
    caller found the socket's peer trusted already (``is_trusted``); otherwise it is
    asked here, and an untrusted one refused and counted where a header is required.
    """
    if not trusted:
        trusted = _trusted(policy, ends, counts)
    if policy.mode is _OPTIONAL and _without_header(received, trusted, ends, counts):
        return Preamble(ends.peer(), received)
    try:  # (what a new ProxyParser does with one feed, without the parser)
        parsed = parse_proxy_header(received, max_header_size=policy.max_header_size)
    except ProxyProtocolError as exc:
        version = _VERSION_OF_FIRST_BYTE.get(received[0], "unknown")
        raise _invalid(exc, version, counts) from None
    if parsed is None:
        return None
    header, consumed = parsed
    return _with_header(header, received[consumed:], policy, ends, counts)


def is_trusted(policy: ProxyPolicy, ends: SocketEnds) -> bool:
    """Whether ``policy`` lets the socket's peer (the proxy, if any) send a header."""
    return policy.is_trusted(_remote_host(ends))


def refused_unread(policy: ProxyPolicy, trusted: bool) -> bool:
    """Whether ``policy`` refuses a peer before a byte of it is read: ``required``, and
    the peer is not trusted (``is_trusted``)."""
    return policy.mode is _REQUIRED and not trusted


def _remote_host(ends: SocketEnds) -> str:
    return ends.remote.host if ends.remote is not None else ""


def _trusted(policy: ProxyPolicy, ends: SocketEnds, counts: ProxyCounts) -> bool:
    """Whether the socket's peer may send a header; under ``required``, an untrusted
    peer is refused before a byte is read."""
    host = _remote_host(ends)
    trusted = policy.is_trusted(host)
    if policy.mode is _REQUIRED and not trusted:
        counts["unknown", "untrusted_source"] += 1
        raise ConnectionRejected(
            "untrusted-source", f"{host} is not in trusted_sources; closed before reading"
        )
    return trusted


def _without_header(first: bytes, trusted: bool, ends: SocketEnds, counts: ProxyCounts) -> bool:
    """Under ``optional`` (the caller's to check), whether the first bytes come without
    a header (a header from an untrusted peer is refused as spoofed)."""
    if first[0] not in HEADER_FIRST_BYTES:
        return True
    if not trusted:
        counts[_VERSION_OF_FIRST_BYTE[first[0]], "untrusted_source"] += 1
        raise ConnectionRejected(
            "spoofed-header",
            f"PROXY header from {_remote_host(ends)}, which is not in trusted_sources",
        )
    return False


def _invalid(exc: ProxyProtocolError, version: str, counts: ProxyCounts) -> ConnectionRejected:
    counts[version, "invalid"] += 1
    return ConnectionRejected("invalid-header", str(exc))


def _with_header(
    header: ProxyHeader,
    leftover: bytes,
    policy: ProxyPolicy,
    ends: SocketEnds,
    counts: ProxyCounts,
) -> Preamble:
    """A whole header read: the policy's requirements checked, the header counted."""
    version = "local" if header.is_local else _VERSION_LABEL[header.version]
    if policy.require_tls or policy.require_verified_client_cert:
        try:
            check_requirements(header, policy)
        except ConnectionRejected:
            counts[version, "requirements_unmet"] += 1
            raise
    counts[version, "ok"] += 1
    return Preamble(apply_header(ends, header, policy), leftover)


def check_requirements(header: ProxyHeader, policy: ProxyPolicy) -> None:
    """Refuse per ``require_tls`` / ``require_verified_client_cert`` (see the module doc)."""
    if header.command is _LOCAL:
        return  # the proxy itself (a health check), not a client it relays
    ssl = header.ssl
    used_tls = ssl is not None and bool(ssl.client & ClientFlags.SSL)
    if policy.require_tls and not used_tls:
        reason, option = "tls-required", "require_tls"
    elif policy.require_verified_client_cert and not (ssl is not None and ssl.cert_verified):
        reason, option = "client-cert-required", "require_verified_client_cert"
    else:
        return
    if header.version == 1:
        problem = (
            "a PROXY v1 header carries no TLS information; the proxy must send PROXY v2 "
            "with the SSL TLV (HAProxy: send-proxy-v2-ssl or send-proxy-v2-ssl-cn)"
        )
    elif ssl is None:
        problem = (
            "the PROXY v2 header has no SSL TLV: the client did not use TLS to reach the "
            "proxy, or the proxy does not send the TLV (HAProxy: send-proxy-v2-ssl or "
            "send-proxy-v2-ssl-cn)"
        )
    elif not used_tls:
        problem = (
            f"the client did not use TLS to reach the proxy (client flags {int(ssl.client):#x})"
        )
    else:
        problem = (
            "the proxy reports no verified client certificate "
            f"(client flags {int(ssl.client):#x}, verify {ssl.verify})"
        )
    client = f"client {header.source} via the proxy: " if header.source is not None else ""
    raise ConnectionRejected(reason, f"{client}{option}: {problem}")


async def _receive(
    stream: trio.abc.ReceiveStream, deadline: float, *, nothing_yet: bool = False
) -> bytes:
    """The next bytes of the header, waiting for them until ``deadline`` at most.

    On a socket, bytes already received are read without a cancel scope: a proxy sends
    its header right behind the TCP handshake, so it is usually there when the
    connection's task first runs, and a scope with a deadline costs a connection more
    than the read (trio's deadline heap, on entry and exit).
    """
    try:
        data: bytes | bytearray | None = None
        if isinstance(stream, WatchedSocketStream):
            data = stream.receive_nowait(RECEIVE_SIZE)
        if data is None:
            with trio.fail_at(deadline):
                data = await stream.receive_some(RECEIVE_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        if nothing_yet:  # HAProxy ends its TCP checks with a reset
            raise HealthCheck(f"connection reset without sending anything ({exc})") from None
        raise ConnectionRejected(
            "closed", f"connection lost before the PROXY header: {exc}"
        ) from None
    if not data:
        if nothing_yet:
            raise HealthCheck("connection closed without sending anything")
        raise ConnectionRejected("closed", "connection closed before a complete PROXY header")
    return bytes(data)


def apply_header(ends: SocketEnds, header: ProxyHeader, policy: ProxyPolicy) -> PeerInfo:
    """The PeerInfo as the header tells it: real client, proxy, TLS facts, CN username.

    The connection's one PeerInfo, built here from the socket's ends rather than from
    a PeerInfo of the socket: a frozen value is built field by field, about 12k
    instructions a connection.
    """
    client, proxy = ends.remote, None
    source = header.source
    if isinstance(source, Address):
        client, proxy = Endpoint(source.host, source.port), ends.remote
    elif source is not None:
        client, proxy = Endpoint(str(source), 0), ends.remote  # a UNIX socket path
    ssl = header.ssl
    tls = None
    if ssl is not None:
        tls = TLSInfo(
            version=ssl.version,
            cipher=ssl.cipher,
            peer_cn=ssl.cn,
            peer_verified=ssl.cert_verified,
            sni=header.authority,
            terminated_by_proxy=True,
        )
    username = identity_error = None
    if policy.use_cn_as_username:  # (as with_certificate_identity, in the one PeerInfo)
        verified = ssl is not None and ssl.cert_verified
        cn = None if ssl is None else ssl.cn
        username, identity_error = certificate_identity(cn, verified, _why_no_cn(header))
    # every field, by position in the fields' order, not keywords: no dict of them
    # (tests/server/test_proxy_policy.py checks that the rest is the socket's PeerInfo)
    return PeerInfo(
        ends.listener,
        ends.transport,
        ends.local,
        ends.remote,
        client,
        proxy,
        header,  # proxy_header
        tls,
        username,
        identity_error,
    )


def _why_no_cn(header: ProxyHeader) -> str:
    ssl = header.ssl
    if ssl is None:
        return "use_cn_as_username: the PROXY header has no SSL TLV"
    if not ssl.cert_verified:
        return (
            f"use_cn_as_username: the proxy did not verify a client certificate "
            f"(client flags {int(ssl.client):#x}, verify {ssl.verify})"
        )
    return "use_cn_as_username: the SSL TLV carries no CN"
