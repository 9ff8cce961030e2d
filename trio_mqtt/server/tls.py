"""TLS termination for ``tls`` and ``wss`` listeners.

``ServerTLS`` holds a listener's :class:`~trio_mqtt.config.TLSConfig` and the
``ssl.SSLContext`` built from it; ``reload()`` re-reads the certificate files and swaps
the context for new connections (connections already open keep theirs).

``tls_handshake`` wraps a stream (the socket, or what the PROXY preamble left of it) in a
server-side ``TLSStream`` (``server/tls_stream.py``: ``ssl.MemoryBIO`` driven from the
socket itself, so that TLS connections get plain TCP's direct reads and writes),
completes the handshake within a timeout, and returns the
PeerInfo refined with the TLS facts and, with ``use_identity_as_username``, the username
taken from the verified client certificate. A failed handshake raises ``ConnectionRejected``:
the listener logs it once and counts it; nothing else sees the connection.
"""

from __future__ import annotations

import contextvars
import ssl
from typing import Any

import attrs
import trio

from trio_mqtt.config import TLSConfig
from trio_mqtt.errors import ConfigError
from trio_mqtt.peer import PeerInfo, TLSInfo
from trio_mqtt.server.rejection import TLSHandshakeRejected
from trio_mqtt.server.tls_stream import TLSStream

__all__ = [
    "MIN_TLS_VERSION",
    "ServerTLS",
    "build_server_context",
    "peer_certificate_cn",
    "tls_handshake",
]

#: TLS 1.0 and 1.1 are deprecated (RFC 8996); every current MQTT client speaks 1.2.
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2


# ----------------------------------------------------------------------------- contexts

# The SNI callback runs synchronously inside the handshake, in the task doing it, so a
# context variable set by that task tells the callback where to record the server name.
_sni_sink: contextvars.ContextVar[list[str]] = contextvars.ContextVar("trio_mqtt_sni_sink")


def _record_sni(_ssl_object: Any, server_name: str | None, _context: Any) -> None:
    if server_name is not None:
        sink = _sni_sink.get(None)
        if sink is not None:
            sink.append(server_name)


def build_server_context(config: TLSConfig) -> ssl.SSLContext:
    """A server-side SSLContext for *config*; raises ConfigError naming the bad file.

    ``cafile`` turns on client certificate verification: required with
    ``require_client_cert``, else optional (a client may present none, but a certificate
    it presents must verify). The system CA store is never used to verify clients.
    """
    files = {"certfile": config.certfile, "keyfile": config.keyfile}
    if config.cafile is not None:
        files["cafile"] = config.cafile
    for key, path in files.items():
        _check_readable(path, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_TLS_VERSION
    # Client-initiated renegotiation (TLS 1.2) only costs the server CPU.
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"cannot load certificate {config.certfile!r} with key {config.keyfile!r}: "
            f"{_ssl_reason(exc)} (are both PEM files, and does the key match?)",
            key="certfile",
        ) from None
    if config.cafile is not None:
        try:
            context.load_verify_locations(cafile=config.cafile)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"cannot load CA certificates from {config.cafile!r}: {_ssl_reason(exc)}",
                key="cafile",
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED if config.require_client_cert else ssl.CERT_OPTIONAL
    context.sni_callback = _record_sni
    return context


def _check_readable(path: str, key: str) -> None:
    """ConfigError naming *key* and *path* unless the file can be opened."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror}", key=key) from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    verify_message = getattr(exc, "verify_message", None)
    if verify_message:
        return f"certificate verify failed: {verify_message}"
    if exc.reason:
        return str(exc.reason)
    return str(exc)


@attrs.define(eq=False)
class ServerTLS:
    """A listener's TLS settings and the SSLContext that new connections use."""

    config: TLSConfig
    context: ssl.SSLContext

    @classmethod
    def load(cls, config: TLSConfig) -> ServerTLS:
        """Build the context from *config*'s files (ConfigError if one is bad)."""
        return cls(config, build_server_context(config))

    def reload(self) -> None:
        """Re-read the certificate, key and CA files for new connections.

        On an error the current context stays in use and ConfigError says what is wrong.
        """
        self.context = build_server_context(self.config)


# ---------------------------------------------------------------------------- handshake


async def tls_handshake(
    stream: trio.abc.Stream, tls: ServerTLS, peer: PeerInfo, handshake_timeout: float
) -> tuple[TLSStream, PeerInfo]:
    """Run the server side of a TLS handshake on *stream* within *handshake_timeout* seconds.

    Returns the TLSStream to speak the next layer over and *peer* with ``tls`` set (and
    ``username`` or ``identity_error`` when the listener uses the certificate identity).
    Raises TLSHandshakeRejected (a ConnectionRejected) if the handshake fails or takes too long.
    """
    ssl_stream = TLSStream(stream, tls.context)
    server_names: list[str] = []
    token = _sni_sink.set(server_names)
    try:
        with trio.fail_after(handshake_timeout):
            await ssl_stream.do_handshake()
    except trio.TooSlowError:
        raise TLSHandshakeRejected(
            "timeout", f"no TLS handshake within {handshake_timeout:g}s"
        ) from None
    except trio.BrokenResourceError as exc:
        raise _rejection(exc) from None
    except trio.ClosedResourceError:
        raise TLSHandshakeRejected("closed", "connection closed during the TLS handshake") from None
    finally:
        _sni_sink.reset(token)
    info = tls_info(ssl_stream, server_names[-1] if server_names else None)
    return ssl_stream, apply_tls(peer, info, tls.config)


def _rejection(exc: trio.BrokenResourceError) -> TLSHandshakeRejected:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLEOFError) or cause is None:
        return TLSHandshakeRejected("closed", "connection closed during the TLS handshake")
    if isinstance(cause, ssl.SSLError):
        reason = _ssl_reason(cause)
        if cause.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
            reason += " (not a TLS client?)"
        return TLSHandshakeRejected("failed", f"TLS handshake failed: {reason}")
    if isinstance(cause, OSError):
        return TLSHandshakeRejected("closed", f"connection lost during the TLS handshake: {cause}")
    return TLSHandshakeRejected("failed", f"TLS handshake failed: {cause}")


def tls_info(ssl_stream: TLSStream | trio.SSLStream[Any], sni: str | None) -> TLSInfo:
    """The facts of a completed server-side handshake (our TLSStream or trio's SSLStream)."""
    cipher = ssl_stream.cipher()
    # getpeercert() returns a decoded certificate only when it was verified; with no
    # cafile we never ask for one, and an unverifiable one fails the handshake.
    certificate = ssl_stream.getpeercert()
    return TLSInfo(
        version=ssl_stream.version(),
        cipher=None if cipher is None else cipher[0],
        peer_cn=peer_certificate_cn(certificate) if certificate else None,
        peer_verified=bool(certificate),
        sni=sni,
    )


def peer_certificate_cn(certificate: Any) -> str | None:
    """The subject CN of a certificate as ``getpeercert()`` decodes it.

    None when the subject has no CN or several (an ambiguous identity is no identity).
    """
    names = [
        value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    return names[0] if len(names) == 1 and names[0] else None


def apply_tls(peer: PeerInfo, info: TLSInfo, config: TLSConfig) -> PeerInfo:
    """*peer* with the TLS facts and, per *config*, the certificate identity as username.

    An identity problem found earlier (e.g. by the PROXY policy) is kept: the CONNECT is
    then refused, whatever the certificate says.
    """
    peer = attrs.evolve(peer, tls=info)
    if config.use_identity_as_username:
        peer = peer.with_certificate_identity(
            info.peer_cn, info.peer_verified, _why_no_identity(info)
        )
    return peer


def _why_no_identity(info: TLSInfo) -> str:
    if not info.peer_verified:
        return "use_identity_as_username: the client presented no certificate"
    return "use_identity_as_username: the client certificate has no single subject CN"
