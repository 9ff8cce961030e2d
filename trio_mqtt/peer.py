"""PeerInfo: everything we know about who is on the other end of a connection.

Built from what the socket tells (``SocketEnds``) and the PROXY header, if any, once
that is read; then refined by the TLS handshake. Immutable: each refinement makes a new
value, so whatever a session, an auth hook, a log line or a retained message
holds can never change under it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from trio_mqtt.hot_value import hot_value

if TYPE_CHECKING:
    from trio_mqtt.proxy.header import TLV, ProxyHeader


@attrs.frozen
class Endpoint:
    """An IP address (or a UNIX path, with port 0) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def from_sockaddr(cls, sockaddr: object) -> Endpoint | None:
        """Build from what ``socket.getpeername()`` returns (None if not an IP address)."""
        if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
            host, port = sockaddr[0], sockaddr[1]
            if isinstance(host, str) and isinstance(port, int):
                return cls(host, port)
        return None


@hot_value
class SocketEnds:
    """What a connection's socket tells when it is accepted: the listener, its transport
    and the socket's two ends, before a PROXY header may say who the client really is.

    The listener's PROXY policy turns it into the connection's PeerInfo, ``peer()`` or
    ``proxy_policy.apply_header``: one PeerInfo per connection, built once the client is
    known (a frozen PeerInfo is a field-by-field ``object.__setattr__``, about 12k
    instructions; this, about 2k).
    """

    listener: str
    transport: str
    local: Endpoint | None
    remote: Endpoint | None

    def peer(self) -> PeerInfo:
        """The PeerInfo when nothing but the socket speaks: the client is its peer."""
        return PeerInfo.from_socket(self.listener, self.transport, self.local, self.remote)


@attrs.frozen
class TLSInfo:
    """Facts about a TLS session, whether we terminated it or a proxy told us about it."""

    version: str | None = None
    cipher: str | None = None
    peer_cn: str | None = None  # subject CN of the client certificate, if any
    peer_verified: bool = False  # the client certificate was verified against our CA
    sni: str | None = None
    terminated_by_proxy: bool = False


@attrs.frozen
class PeerInfo:
    """Who is connected: the real client, the proxy in between, the listener and TLS facts."""

    listener: str
    transport: str  # "tcp" | "tls" | "ws" | "wss" | "local" (in-process)
    local: Endpoint | None = None  # our end of the socket
    remote: Endpoint | None = None  # the socket's peer (the proxy, when there is one)
    client: Endpoint | None = None  # the real client, as the proxy tells it (else = remote)
    proxy: Endpoint | None = None  # set when a PROXY header supplied the client address
    proxy_header: ProxyHeader | None = None
    tls: TLSInfo | None = None
    username: str | None = None  # derived from a certificate CN, overriding CONNECT's
    # Set when the listener requires a certificate-derived username but could not derive
    # one; the CONNECT is then refused as not authorized, and this says why.
    identity_error: str | None = None
    # The HTTP header the client address came from on a WebSocket listener behind an
    # HTTP proxy ("forwarded" or "x-forwarded-for"); None when it is the socket's or
    # the PROXY header's. ``proxy`` is then the HTTP proxy that sent the header.
    forwarded_by: str | None = None

    @classmethod
    def from_socket(
        cls, listener: str, transport: str, local: Endpoint | None, remote: Endpoint | None
    ) -> PeerInfo:
        # (by position, in the fields' order: keyword arguments cost a dict per call,
        # and every connection makes one)
        return cls(listener, transport, local, remote, remote)

    @property
    def client_host(self) -> str | None:
        return None if self.client is None else self.client.host

    @property
    def tlvs(self) -> tuple[TLV, ...]:
        """Every TLV of the PROXY v2 header, raw, as received (empty without one)."""
        return () if self.proxy_header is None else self.proxy_header.tlvs

    @property
    def custom_tlvs(self) -> tuple[TLV, ...]:
        """The PROXY v2 header's application-specific (0xE0-0xEF) and experimental
        (0xF0-0xF7) TLVs, raw."""
        return () if self.proxy_header is None else self.proxy_header.custom_tlvs

    @property
    def aws_vpc_endpoint_id(self) -> str | None:
        """The VPC endpoint id an AWS NLB reports in its 0xEA TLV (PrivateLink), if any."""
        return None if self.proxy_header is None else self.proxy_header.aws_vpc_endpoint_id

    def username_for(self, claimed: str | None) -> str | None:
        """The username a client goes by: the certificate's, else the one it claimed.

        The one place that says it: a certificate-derived username overrides whatever the
        CONNECT packet carried, which is never trusted alongside it.
        """
        return self.username if self.username is not None else claimed

    def with_certificate_identity(self, cn: str | None, verified: bool, why_not: str) -> PeerInfo:
        """The certificate's CN as the username, but only if the certificate was verified.

        Otherwise ``why_not`` becomes ``identity_error`` and the CONNECT is refused as not
        authorized. An identity problem found earlier (by the PROXY policy, before TLS)
        is kept: the CONNECT is then refused whatever this certificate says.
        """
        username, identity_error = certificate_identity(cn, verified, why_not)
        if username is not None:
            return attrs.evolve(self, username=username)
        if self.identity_error is not None:
            return self
        return attrs.evolve(self, identity_error=identity_error)

    def log_fields(self) -> dict[str, str]:
        """The facts a structured log line carries about this peer (``extra=`` fields)."""
        fields = {"listener": self.listener, "transport": self.transport}
        if self.client is not None:
            fields["client_address"] = str(self.client)
        if self.proxy is not None:
            fields["proxy_address"] = str(self.proxy)
        if self.forwarded_by is not None:
            fields["forwarded_by"] = self.forwarded_by
        vpce = self.aws_vpc_endpoint_id
        if vpce is not None:
            fields["aws_vpc_endpoint_id"] = vpce
        return fields

    def describe(self) -> str:
        """The form used in logs: ``client=203.0.113.7:51234 via proxy 127.0.0.1:40000``."""
        text = f"client={self.client if self.client is not None else '?'}"
        if self.proxy is not None:
            text += f" via proxy {self.proxy}"
        return text


def certificate_identity(
    cn: str | None, verified: bool, why_not: str
) -> tuple[str | None, str | None]:
    """``(username, identity_error)`` from a client certificate: its CN as the username
    only if the certificate was verified, else ``why_not`` as the error (the one place
    that says it: ``PeerInfo.with_certificate_identity``, and the PROXY policy's
    ``apply_header`` when it builds a PeerInfo)."""
    if verified and cn:
        return cn, None
    return None, why_not


LOCAL_PEER = PeerInfo(listener="local", transport="local")
"""The peer of messages published in-process through the embedding API."""
