"""The TLS context a cluster node connects to NATS with, from ``[cluster]``'s files.

``nats_client_ssl_context`` reads ``nats_tls_ca_file`` (the CA that signs the NATS
servers' certificates) and ``nats_tls_cert_file`` / ``nats_tls_key_file`` (the node's
client certificate, for servers with ``verify: true``) once per join; both NATS
connections of the node use the context. Without any of them there is no context of our
own: the NATS client then verifies ``tls://`` servers with the system's CAs and refuses
a ``nats://`` server that requires TLS, saying what to set.
"""

from __future__ import annotations

import ssl

from trio_mqtt.config import ClusterConfig
from trio_mqtt.errors import ConfigError
from trio_mqtt.nats import NATSError

__all__ = ["MIN_TLS_VERSION", "NATSTLSFileError", "nats_client_ssl_context"]

#: TLS 1.0 and 1.1 are deprecated (RFC 8996); nats-server speaks 1.2 and 1.3.
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2


class NATSTLSFileError(ConfigError, NATSError):
    """A ``nats_tls_*`` file cannot be loaded; the message names the key and the file.

    A ConfigError, so that a broker that cannot join at startup says what to fix; a
    NATSError too, so that a node rejoining later (the files were replaced meanwhile)
    logs it and tries again, as when NATS is unreachable, instead of stopping.
    """


def nats_client_ssl_context(config: ClusterConfig) -> ssl.SSLContext | None:
    """The context that verifies the NATS servers (and presents the node's certificate).

    None when no ``nats_tls_*`` file is set. Raises :class:`NATSTLSFileError` for a file
    that cannot be read or is not what its key says.
    """
    if not config.uses_nats_tls_files:
        return None
    ca_file = config.nats_tls_ca_file
    try:
        # cafile=None: the system's trust store (what a public CA's certificate needs)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise NATSTLSFileError(
            f"cannot load CA certificates from {ca_file!r}: {_reason(exc)} (expected PEM)",
            key="cluster.nats_tls_ca_file",
        ) from None
    context.minimum_version = MIN_TLS_VERSION
    cert_file, key_file = config.nats_tls_cert_file, config.nats_tls_key_file
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise NATSTLSFileError(
                f"cannot load client certificate {cert_file!r} with key {key_file!r}: "
                f"{_reason(exc)} (are both PEM files, and does the key match?)",
                key="cluster.nats_tls_cert_file",
            ) from None
    return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return exc.strerror or str(exc)
