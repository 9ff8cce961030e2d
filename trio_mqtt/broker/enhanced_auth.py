"""Enhanced authentication (MQTT 5.0 section 4.12): the AUTH exchange as a hook.

An ``Authenticator`` handles one Authentication Method. For a CONNECT naming its method
the broker calls ``start``; while the authenticator answers ``AuthContinue`` the broker
sends AUTH 0x18 (Continue authentication) with its data and hands the client's AUTH
answer to ``step``. ``AuthSuccess`` lets the CONNECT proceed (CONNACK carries the method
and any final data); ``AuthFailure`` refuses it with its reason code. After CONNACK a
client may re-authenticate (AUTH 0x19) the same way: success is answered with AUTH 0x00,
failure with DISCONNECT (with the failure's reason code when a DISCONNECT may carry
it, else 0x87 Not authorized).

Authenticators are called synchronously on the broker's path: they must not block. They
keep no per-connection state of their own; whatever a conversation needs between steps
travels in ``AuthContinue.state`` and comes back to ``step``.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias

import attrs

from trio_mqtt.mqtt.codec import CONNACK_REASON_CODES
from trio_mqtt.mqtt.packets import Connect
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import PeerInfo

__all__ = [
    "AuthContinue",
    "AuthExchange",
    "AuthFailure",
    "AuthOutcome",
    "AuthSuccess",
    "Authenticator",
]


@attrs.frozen
class AuthContinue:
    """More is needed: send ``data`` to the client; ``state`` comes back to ``step``."""

    data: bytes | None = None
    state: object = None


@attrs.frozen
class AuthSuccess:
    """Authenticated; ``data`` (if any) goes to the client in CONNACK (or AUTH 0x00)."""

    data: bytes | None = None


@attrs.frozen
class AuthFailure:
    """Refused with ``reason_code`` (an error code such as 0x87 Not authorized)."""

    reason_code: ReasonCode = ReasonCode.NOT_AUTHORIZED
    reason: str = "enhanced authentication failed"

    def __attrs_post_init__(self) -> None:
        if self.reason_code < 0x80 or self.reason_code not in CONNACK_REASON_CODES:
            raise ValueError(
                f"AuthFailure needs an error reason code a CONNACK may carry, "
                f"not {self.reason_code:#04x}"
            )


AuthOutcome: TypeAlias = AuthContinue | AuthSuccess | AuthFailure


class Authenticator(Protocol):
    """One Authentication Method (e.g. "SCRAM-SHA-256"), registered on the broker."""

    @property
    def method(self) -> str:
        """The Authentication Method name, as clients send it in CONNECT."""
        ...

    def start(self, peer: PeerInfo, connect: Connect) -> AuthOutcome:
        """Begin: ``connect.properties.authentication_data`` is the client's first data.

        On re-authentication ``connect`` is the original CONNECT with the data of the
        client's AUTH 0x19 in place of its first data.
        """
        ...

    def step(self, peer: PeerInfo, state: object, data: bytes | None) -> AuthOutcome:
        """The client answered AUTH 0x18 with ``data``; ``state`` from the last continue."""
        ...


@attrs.define(eq=False)
class AuthExchange:
    """One enhanced authentication in progress on a connection."""

    authenticator: Authenticator
    connect: Connect
    state: object = None
    reauthentication: bool = False
