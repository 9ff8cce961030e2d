"""The auth files as the broker's hooks: loading, reloading, and what each hook decides.

:func:`install_auth` loads the password and ACL files a config names and registers
:class:`AuthFiles`' methods as the core's connect, publish, subscribe and read hooks.
"""

from __future__ import annotations

import logging

import attrs

from trio_mqtt.auth.acl import AclFile
from trio_mqtt.auth.passwords import PasswordFile
from trio_mqtt.broker.core import (
    BrokerCore,
    ConnectHook,
    OffloadedCheck,
    PublishHook,
    SubscribeHook,
)
from trio_mqtt.config import AclTopicsBeforeUser, BrokerConfig
from trio_mqtt.mqtt.packets import Connect
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import PeerInfo

__all__ = [
    "AuthFiles",
    "acl_connect_hook",
    "acl_publish_hook",
    "acl_subscribe_hook",
    "install_auth",
    "password_connect_hook",
]

log = logging.getLogger("trio_mqtt.auth")


def password_connect_hook(passwords: PasswordFile) -> ConnectHook:
    """A connect hook that refuses a username/password not in *passwords* (0x86 / 4).

    A CONNECT without a username is left to ``allow_anonymous``, and a username derived
    from a client certificate (``PeerInfo.username``) is already authenticated by that
    certificate, so neither is checked here.
    """
    return AuthFiles(passwords=passwords).password_file


def acl_publish_hook(acl: AclFile) -> PublishHook:
    """A publish hook that allows a PUBLISH only where the ACL grants write."""
    return AuthFiles(acl=acl).acl_file_publish


def acl_subscribe_hook(acl: AclFile) -> SubscribeHook:
    """A subscribe hook that allows a filter only where an ACL read rule covers it."""
    return AuthFiles(acl=acl).acl_file_subscribe


def acl_connect_hook(acl: AclFile) -> ConnectHook:
    """A connect hook that refuses (0x87 / 5) a will the client could not publish itself.

    The broker publishes wills without the publish hooks, so without this check a will
    would be a way around the ACL. An empty client id (to be assigned by the broker)
    matches no ``%c`` pattern here.
    """
    return AuthFiles(acl=acl).acl_file_will


@attrs.define(eq=False)
class AuthFiles:
    """The password and ACL files of a broker, reloadable while it runs.

    ``install_auth`` registers this object's methods as the broker's hooks, and they
    read the files loaded last: after ``reload()`` every later CONNECT, PUBLISH and
    SUBSCRIBE is checked against the new files, and every delivery too (read access is
    checked per message, ``acl_file_read``). Connected clients stay connected and keep
    their subscriptions; one they may no longer read delivers nothing.
    """

    password_path: str | None = None
    acl_path: str | None = None
    passwords: PasswordFile | None = None
    acl: AclFile | None = None
    #: ``acl_topics_before_user = "anonymous"``: mosquitto's meaning of the ACL file
    acl_global_rules_anonymous_only: bool = False
    # which hooks ``hook_into`` registered already (a reload may name a file added since)
    _password_hooked: bool = False
    _acl_hooked: bool = False

    @classmethod
    def load(cls, config: BrokerConfig) -> AuthFiles:
        """Read the files ``config`` names; ``ConfigError`` names the file and line."""
        files = cls(
            password_path=config.password_file,
            acl_path=config.acl_file,
            acl_global_rules_anonymous_only=(
                config.acl_topics_before_user is AclTopicsBeforeUser.ANONYMOUS
            ),
        )
        files.reload()
        return files

    def reconfigure(self, config: BrokerConfig) -> None:
        """Use the files *config* names from now on (a config reload), read them now.

        If either fails to load (ConfigError), the files in use stay as they were. Call
        ``hook_into`` afterwards: a file the broker started without needs its hooks.
        """
        fresh = AuthFiles.load(config)
        self.password_path, self.acl_path = fresh.password_path, fresh.acl_path
        self.acl_global_rules_anonymous_only = fresh.acl_global_rules_anonymous_only
        self.passwords, self.acl = fresh.passwords, fresh.acl

    def hook_into(self, core: BrokerCore) -> None:
        """Register the hooks of the files named now, those not registered before.

        A hook stays once registered; with its file no longer named it allows everything.
        """
        if self.password_path and not self._password_hooked:
            core.add_connect_hook(self.password_file)
            self._password_hooked = True
        if self.acl_path and not self._acl_hooked:
            core.add_connect_hook(self.acl_file_address)
            core.add_connect_hook(self.acl_file_will)
            core.add_publish_hook(self.acl_file_publish)
            core.add_subscribe_hook(self.acl_file_subscribe)
            core.add_read_hook(self.acl_file_read)
            self._acl_hooked = True

    def reload(self) -> None:
        """Read both files again; if either fails (ConfigError), both stay as they were."""
        passwords = PasswordFile.load(self.password_path) if self.password_path else None
        acl = (
            AclFile.load(
                self.acl_path, global_rules_anonymous_only=self.acl_global_rules_anonymous_only
            )
            if self.acl_path
            else None
        )
        self.passwords, self.acl = passwords, acl
        if passwords is not None:
            log.info("password file %s: %d users", passwords.source, len(passwords.users))
        if acl is not None:
            log.info(
                "ACL file %s: %d rules for %s, %d users, %d patterns",
                acl.source,
                len(acl.global_rules),
                "anonymous clients" if acl.global_rules_anonymous_only else "all",
                len(acl.user_rules),
                len(acl.patterns),
            )
            if acl.user_rules and passwords is None:
                log.warning(
                    "ACL file %s has per-user rules but no password_file is set: unless a "
                    "listener takes usernames from client certificates, clients can claim "
                    "any username",
                    acl.source,
                )

    # The hooks (their names are what a refusal's log line shows).

    def password_file(self, peer: PeerInfo, connect: Connect) -> ReasonCode | OffloadedCheck | None:
        """Connect hook: see ``password_connect_hook``.

        A password that verified before is accepted at once; any other check is
        PBKDF2, far too slow for the event loop, so it is handed back as an
        ``OffloadedCheck`` that the server runs in a worker thread.
        """
        passwords = self.passwords
        username, password = connect.username, connect.password
        if passwords is None or peer.username is not None or username is None:
            return None
        if password is not None and passwords.verified_before(username, password):
            return None

        def check() -> ReasonCode | None:
            if passwords.check(username, password):
                return None
            if password is None:
                why = "no password"
            elif username in passwords.users:
                why = "wrong password"
            else:
                why = "unknown user"
            log.info("password check failed for %s username=%r: %s", peer.describe(), username, why)
            return ReasonCode.BAD_USER_NAME_OR_PASSWORD

        return OffloadedCheck(check)

    def acl_file_will(self, peer: PeerInfo, connect: Connect) -> ReasonCode | None:
        """Connect hook: see ``acl_connect_hook``."""
        if self.acl is None or connect.will is None:
            return None
        username = peer.username_for(connect.username)
        if self.acl.can_publish(username, connect.client_id, connect.will.topic):
            return None
        log.info(
            "will topic %r of client %r is not writable under the ACL",
            connect.will.topic,
            connect.client_id,
        )
        return ReasonCode.NOT_AUTHORIZED

    def acl_file_address(self, peer: PeerInfo, connect: Connect) -> ReasonCode | None:
        """Connect hook: the ACL file's ``address`` lines."""
        if self.acl is None:
            return None
        username = peer.username_for(connect.username)
        if self.acl.can_connect_from(username, peer.client_host):
            return None
        log.info(
            "%s username=%r may not connect from that address under the ACL",
            peer.describe(),
            username,
        )
        return ReasonCode.NOT_AUTHORIZED

    def acl_file_publish(
        self, peer: PeerInfo, client_id: str, username: str | None, topic: str
    ) -> bool:
        """Publish hook: see ``acl_publish_hook``."""
        if self.acl is None:
            return True
        return self.acl.can_publish(peer.username_for(username), client_id, topic)

    def acl_file_read(
        self, peer: PeerInfo, client_id: str, username: str | None, topic: str
    ) -> bool:
        """Read hook: the ACL file's read grants, checked on every delivery."""
        if self.acl is None:
            return True
        return self.acl.can_read(peer.username_for(username), client_id, topic)

    def acl_file_subscribe(
        self, peer: PeerInfo, client_id: str, username: str | None, topic_filter: str
    ) -> bool:
        """Subscribe hook: see ``acl_subscribe_hook``."""
        if self.acl is None:
            return True
        return self.acl.can_subscribe(peer.username_for(username), client_id, topic_filter)


def install_auth(core: BrokerCore, config: BrokerConfig) -> AuthFiles | None:
    """Load ``config.password_file`` and ``config.acl_file`` (when set) into *core*'s hooks.

    Returns the loaded files (``reload()`` them to apply edits), or None when the config
    names neither. Raises ``ConfigError`` (naming the file and line) if either file is
    unreadable or invalid; nothing is registered then.
    """
    if not config.password_file and not config.acl_file:
        return None
    files = AuthFiles.load(config)
    files.hook_into(core)
    return files
