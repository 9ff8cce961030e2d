"""A throwaway PKI for TLS tests (trustme): CA, server and client certificates as files.

``TestPKI.create(directory)`` writes PEM files; listeners and paho take paths, the raw
trio clients take ``ssl.SSLContext`` objects from ``client_context``.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import attrs
import trustme

from trio_mqtt.config import TLSConfig


@attrs.frozen
class CertFiles:
    """A leaf certificate (with its chain) and its private key, as PEM files."""

    certfile: str
    keyfile: str


@attrs.frozen
class TestPKI:
    """What the TLS tests need; CN of each client certificate in the comment."""

    directory: Path
    ca_file: str  # the CA that signs the server and the accepted clients
    ca: trustme.CA
    server: CertFiles  # localhost, 127.0.0.1
    alice: CertFiles  # CN=alice, signed by our CA
    no_cn: CertFiles  # no CN at all, signed by our CA
    mallory: CertFiles  # CN=mallory, signed by another CA
    expired: CertFiles  # CN=old, signed by our CA, expired yesterday

    __test__ = False  # not a test class, whatever pytest thinks of the name

    @classmethod
    def create(cls, directory: Path) -> TestPKI:
        ca = trustme.CA()
        other_ca = trustme.CA()
        now = datetime.datetime.now(datetime.UTC)
        ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))

        def write(name: str, cert: trustme.LeafCert) -> CertFiles:
            certfile, keyfile = directory / f"{name}.pem", directory / f"{name}.key"
            # the leaf first, then the chain up to (not including) the root
            certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
            cert.private_key_pem.write_to_path(str(keyfile))
            return CertFiles(str(certfile), str(keyfile))

        return cls(
            directory=directory,
            ca_file=str(ca_file),
            ca=ca,
            server=write("server", ca.issue_cert("localhost", "127.0.0.1")),
            alice=write("alice", ca.issue_cert("alice.example", common_name="alice")),
            no_cn=write("nocn", ca.issue_cert("nocn.example")),
            mallory=write("mallory", other_ca.issue_cert("mallory.example", common_name="mallory")),
            expired=write(
                "expired",
                ca.issue_cert(
                    "old.example",
                    common_name="old",
                    not_before=now - datetime.timedelta(days=30),
                    not_after=now - datetime.timedelta(days=1),
                ),
            ),
        )

    def tls_config(self, **options: bool) -> TLSConfig:
        """The server side: our server certificate, client certificates verified by our CA."""
        return TLSConfig(
            certfile=self.server.certfile,
            keyfile=self.server.keyfile,
            cafile=self.ca_file,
            **options,
        )

    def client_context(
        self, cert: CertFiles | None = None, *, ca_file: str | None = None
    ) -> ssl.SSLContext:
        """A client context trusting *ca_file* (our CA), presenting *cert* if given."""
        context = ssl.create_default_context(cafile=ca_file or self.ca_file)
        if cert is not None:
            context.load_cert_chain(cert.certfile, cert.keyfile)
        return context
