"""Password file and ACL file: who may connect, publish and subscribe.

Two plain-text files, both optional (see docs/authentication.md):

- the *password file* (``password_file``) holds ``username:$pbkdf2-sha512$...`` lines;
  :class:`PasswordFile` checks a CONNECT's username and password against it;
- the *ACL file* (``acl_file``) holds mosquitto-style ``topic`` / ``user`` / ``pattern``
  lines; :class:`AclFile` says whether a client may publish to a topic or subscribe to
  a topic filter.

They plug into :class:`~trio_mqtt.broker.core.BrokerCore` through its connect, publish
and subscribe hooks; :func:`install_auth` loads the files a config names and registers
the hooks. Everything here is synchronous and free of I/O apart from reading the files
at load time.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs

from trio_mqtt.broker.core import (
    BrokerCore,
    ConnectHook,
    OffloadedCheck,
    PublishHook,
    SubscribeHook,
)
from trio_mqtt.config import BrokerConfig
from trio_mqtt.errors import ConfigError, RemoteProtocolError
from trio_mqtt.mqtt.packets import Connect
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.mqtt.topics import (
    SHARE_PREFIX,
    parse_shared_filter,
    topic_matches,
    validate_topic_filter,
)
from trio_mqtt.networks import IPNetwork, address_in, parse_network
from trio_mqtt.peer import PeerInfo

__all__ = [
    "DEFAULT_ITERATIONS",
    "HASH_SCHEME",
    "MAX_ITERATIONS",
    "Access",
    "AclFile",
    "AclRule",
    "PasswordFile",
    "PasswordHash",
    "acl_connect_hook",
    "acl_publish_hook",
    "acl_subscribe_hook",
    "filter_covers",
    "hash_password",
    "install_auth",
    "password_connect_hook",
    "split_password_line",
]

log = logging.getLogger("trio_mqtt.auth")

#: The identifier between the first two ``$`` of a stored hash.
HASH_SCHEME = "pbkdf2-sha512"
#: PBKDF2 rounds for new hashes (OWASP's 2023 figure for PBKDF2-HMAC-SHA512).
DEFAULT_ITERATIONS = 210_000
#: A hash asking for more rounds than this is refused at load time: one CONNECT would
#: hold the event loop for many seconds.
MAX_ITERATIONS = 10_000_000
SALT_BYTES = 16
_DIGEST_BYTES = hashlib.sha512().digest_size  # 64
_MIN_SALT_BYTES = 8


# --------------------------------------------------------------------------- hashing


@attrs.frozen(repr=False)
class PasswordHash:
    """One stored password: ``$pbkdf2-sha512$<iterations>$<salt b64>$<hash b64>``."""

    iterations: int
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:
        return f"PasswordHash(iterations={self.iterations})"  # never print the digest

    def encode(self) -> str:
        """The text form stored in the password file."""
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"${HASH_SCHEME}${self.iterations}${salt}${digest}"

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Parse the text form; ``ValueError`` says what is wrong (never echoing *text*)."""
        fields = text.split("$")
        if len(fields) != 5 or fields[0] or fields[1] != HASH_SCHEME:
            raise ValueError(
                f"not a ${HASH_SCHEME}$<iterations>$<salt>$<hash> password hash "
                "(plaintext passwords are not accepted: create entries with "
                "'python -m trio_mqtt.passwd FILE USERNAME')"
            )
        _empty, _scheme, rounds, salt_text, digest_text = fields
        if not (rounds.isascii() and rounds.isdigit()) or not 1 <= int(rounds) <= MAX_ITERATIONS:
            raise ValueError(f"iteration count {rounds!r} is not an integer in 1..{MAX_ITERATIONS}")
        salt = _b64decode(salt_text, "salt")
        digest = _b64decode(digest_text, "hash")
        if len(salt) < _MIN_SALT_BYTES:
            raise ValueError(f"salt is {len(salt)} bytes; at least {_MIN_SALT_BYTES} are needed")
        if len(digest) != _DIGEST_BYTES:
            raise ValueError(f"hash is {len(digest)} bytes; {HASH_SCHEME} hashes are 64 bytes")
        return cls(iterations=int(rounds), salt=salt, digest=digest)

    def verify(self, password: bytes) -> bool:
        """Whether *password* is the one this hash was made from (constant-time compare)."""
        candidate = hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations)
        return hmac.compare_digest(candidate, self.digest)


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{what} is not valid base64") from None


def hash_password(
    password: bytes, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> PasswordHash:
    """Hash *password* with PBKDF2-HMAC-SHA512 and a random 16-byte salt."""
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be in 1..{MAX_ITERATIONS}, not {iterations}")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
    return PasswordHash(iterations=iterations, salt=salt, digest=digest)


# --------------------------------------------------------------------------- file reading


def _read_text(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text ({exc.reason})", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", file=str(path)) from None


def _content_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` of every line that is neither blank nor a comment."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


# --------------------------------------------------------------------------- password file


def split_password_line(line: str) -> tuple[str, str]:
    """Split a stripped ``username:hash`` line at its last ``:`` (hashes contain none).

    Usernames may therefore contain ``:``. Raises ``ValueError`` if there is no ``:``.
    """
    username, colon, stored = line.rpartition(":")
    if not colon:
        raise ValueError("expected 'username:hash'")
    return username, stored


@attrs.define(eq=False)
class PasswordFile:
    """The users of a password file, with a cache of recently verified passwords.

    PBKDF2 is slow on purpose (about 0.1-0.2 s of CPU at the default 210,000 rounds), so
    the broker runs ``check`` in a worker thread (see ``AuthFiles.password_file``). A
    successful check is remembered: for each user we keep ``sha256(random per-process
    key + stored hash + password)`` of the last password that verified, and a reconnect
    with the same password costs one SHA-256 (``verified_before``, on the event loop).
    No plaintext is kept, but whoever can read the broker's memory can attack that
    digest much faster than the PBKDF2 hash in the file; see docs/authentication.md.
    """

    source: str
    users: Mapping[str, PasswordHash]
    _cache_key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), repr=False)
    _verified: dict[str, bytes] = attrs.field(factory=dict, repr=False)
    # Checked for unknown usernames, so they cost as much as the slowest real entry.
    _dummy: PasswordHash = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        rounds = max((entry.iterations for entry in self.users.values()), default=1)
        self._dummy = PasswordHash(rounds, bytes(SALT_BYTES), bytes(_DIGEST_BYTES))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PasswordFile:
        """Read and check a password file; ``ConfigError`` names the file and line."""
        source = str(path)
        text = _read_text(path, "password file")
        _warn_if_readable_by_others(path)
        return cls.parse(text, source=source)

    @classmethod
    def parse(cls, text: str, *, source: str = "<password file>") -> PasswordFile:
        """Build from the text of a password file (*source* names it in errors)."""
        users: dict[str, PasswordHash] = {}
        first_line: dict[str, int] = {}
        for number, line in _content_lines(text):
            try:
                username, stored = split_password_line(line)
                if not username:
                    raise ValueError("the username is empty")
                password_hash = PasswordHash.parse(stored)
            except ValueError as exc:
                raise ConfigError(f"line {number}: {exc}", file=source) from None
            if username in users:
                raise ConfigError(
                    f"line {number}: user {username!r} is already defined on line "
                    f"{first_line[username]}",
                    file=source,
                )
            users[username] = password_hash
            first_line[username] = number
        return cls(source=source, users=users)

    def check(self, username: str, password: bytes | None) -> bool:
        """Whether *username* exists and *password* is its password.

        An unknown username costs as much as a wrong password, so response times do not
        tell which usernames exist.
        """
        if password is None:
            return False
        stored = self.users.get(username)
        if stored is None:
            self._dummy.verify(password)
            return False
        fast = self._fast_digest(stored, password)
        known = self._verified.get(username)
        if known is not None and hmac.compare_digest(known, fast):
            return True
        if not stored.verify(password):
            return False
        self._verified[username] = fast  # one dict store: safe from a worker thread
        return True

    def verified_before(self, username: str, password: bytes) -> bool:
        """True if *password* is the last one that verified for *username* (cheap)."""
        stored = self.users.get(username)
        known = self._verified.get(username)
        if stored is None or known is None:
            return False
        return hmac.compare_digest(known, self._fast_digest(stored, password))

    def _fast_digest(self, stored: PasswordHash, password: bytes) -> bytes:
        # Binding the stored hash means a changed entry never matches an old cache entry.
        return hashlib.sha256(self._cache_key + stored.encode().encode() + password).digest()


def _warn_if_readable_by_others(path: str | os.PathLike[str]) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "password file %s is readable by other users (mode %03o); chmod 600 it",
            path,
            mode & 0o777,
        )


def password_connect_hook(passwords: PasswordFile) -> ConnectHook:
    """A connect hook that refuses a username/password not in *passwords* (0x86 / 4).

    A CONNECT without a username is left to ``allow_anonymous``, and a username derived
    from a client certificate (``PeerInfo.username``) is already authenticated by that
    certificate, so neither is checked here.
    """
    return AuthFiles(passwords=passwords).password_file


# --------------------------------------------------------------------------- ACL file


class Access(enum.Flag):
    """What an ACL rule grants: ``read`` (subscribe), ``write`` (publish), or both."""

    READ = 1
    WRITE = 2
    READWRITE = READ | WRITE


_ACCESS_WORDS = {"read": Access.READ, "write": Access.WRITE, "readwrite": Access.READWRITE}
_PLACEHOLDERS = {"u", "c"}
_PLACEHOLDER = re.compile(r"%([uc])")


@attrs.frozen
class AclRule:
    """One ``topic`` or ``pattern`` line: an access and a topic filter (line for messages)."""

    access: Access
    topic_filter: str
    line: int = 0

    def grants(self, access: Access) -> bool:
        return access in self.access


def filter_covers(rule_filter: str, requested: str) -> bool:
    """Whether every topic *requested* matches is also matched by *rule_filter*.

    Both are valid, non-shared topic filters. ``sensors/#`` covers ``sensors/+/temp``;
    ``sensors/+/temp`` does not cover ``sensors/#``. A rule starting with a wildcard
    does not cover a filter for ``$`` topics (it does not match them either).
    """
    rule = rule_filter.split("/")
    wanted = requested.split("/")
    if wanted[0].startswith("$") and rule[0] in ("+", "#"):
        return False
    for index, level in enumerate(rule):
        if level == "#":
            return True  # matches the levels so far and anything below them
        if index >= len(wanted):
            return False  # requested matches a topic that ends here; the rule needs more
        asked = wanted[index]
        if asked == "#":
            # Requested also matches the parent topic (the levels before this one), which
            # only a '#' here would match too; but when that parent would be an empty
            # topic name (none, or a single empty level) it does not exist, and a rule
            # ending in '+/#' here matches exactly the same topics.
            no_parent = index == 0 or (index == 1 and wanted[0] == "")
            return no_parent and rule[index:] == ["+", "#"]
        if level == "+":
            continue
        if asked == "+" or asked != level:
            return False
    return len(rule) == len(wanted)


def _safe_identity(identity: str | None) -> bool:
    """Whether a username / client id may be substituted into a pattern.

    An empty identity, one with a wildcard or level separator, or one starting with
    ``$`` could widen the pattern to other users' topics or to server topics.
    """
    if not identity:
        return False
    return not ("+" in identity or "#" in identity or "/" in identity or identity[0] == "$")


@attrs.frozen
class _Pattern:
    rule: AclRule
    uses_username: bool
    uses_client_id: bool

    def expand(self, username: str | None, client_id: str) -> AclRule | None:
        """The rule for one client, or None when its identity cannot be substituted."""
        values: dict[str, str] = {}
        if self.uses_username:
            if username is None or not _safe_identity(username):
                return None
            values["u"] = username
        if self.uses_client_id:
            if not _safe_identity(client_id):
                return None
            values["c"] = client_id
        if not values:
            return self.rule
        return attrs.evolve(self.rule, topic_filter=_substitute(self.rule.topic_filter, values))


def _substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace ``%u`` / ``%c`` in one pass, so a username containing ``%c`` stays literal."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def _check_placeholders(text: str) -> tuple[bool, bool]:
    """``(uses %u, uses %c)``; ``ValueError`` for any other ``%`` sequence."""
    index = text.find("%")
    while index != -1:
        letter = text[index + 1 : index + 2]
        if letter not in _PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {text[index : index + 2]!r} in {text!r} "
                "(allowed: %u for the username, %c for the client id)"
            )
        index = text.find("%", index + 2)
    return "%u" in text, "%c" in text


def _check_filter(text: str) -> None:
    if text.startswith(SHARE_PREFIX):
        raise ValueError(
            f"{text!r}: write rules without the '$share/<group>/' prefix; "
            "a shared subscription is checked against its topic filter"
        )
    try:
        validate_topic_filter(text, allow_shared=False)
    except RemoteProtocolError as exc:
        raise ValueError(str(exc)) from None


def _parse_rule(words: list[str], number: int) -> tuple[AclRule, int]:
    """Parse ``[access] filter`` after the keyword; returns the rule and words used.

    With an access word and a word after it, that word is the filter (``topic read #``
    reads everything); otherwise the first word is the filter and the rule is readwrite.
    """
    if not words or _is_comment(words, 0):
        raise ValueError("expected a topic filter, e.g. 'topic read sensors/#'")
    access = _ACCESS_WORDS.get(words[0])
    if access is not None and len(words) >= 2:
        return AclRule(access, words[1], number), 2
    if len(words) >= 2 and not _is_comment(words, 1) and words[0].isalpha():
        raise ValueError(
            f"unknown access {words[0]!r} (allowed: read, write, readwrite; "
            "without one the rule grants readwrite)"
        )
    return AclRule(Access.READWRITE, words[0], number), 1


def _is_comment(words: list[str], index: int) -> bool:
    return words[index].startswith("#")


@attrs.frozen
class AclFile:
    """The rules of an ACL file.

    - ``topic`` lines before the first ``user`` line apply to every client, anonymous
      or not;
    - ``topic`` lines after ``user NAME`` apply to clients with that username;
    - ``pattern`` lines apply to every client, wherever they are, with ``%u`` replaced by
      the username and ``%c`` by the client id.
    - ``address`` lines say where clients may connect from (their real address, as a
      PROXY header tells it): before the first ``user`` line for every client, after
      ``user NAME`` for that username, on top of the lines for every client.

    Whatever no rule grants is denied; without ``address`` lines any address may connect.
    """

    source: str
    global_rules: tuple[AclRule, ...] = ()
    user_rules: Mapping[str, tuple[AclRule, ...]] = attrs.field(factory=dict)
    patterns: tuple[AclRule, ...] = ()
    global_networks: tuple[IPNetwork, ...] = ()
    user_networks: Mapping[str, tuple[IPNetwork, ...]] = attrs.field(factory=dict)
    _patterns: tuple[_Pattern, ...] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        compiled = []
        for rule in self.patterns:
            uses_username, uses_client_id = _check_placeholders(rule.topic_filter)
            compiled.append(_Pattern(rule, uses_username, uses_client_id))
        object.__setattr__(self, "_patterns", tuple(compiled))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AclFile:
        """Read and check an ACL file; ``ConfigError`` names the file and line."""
        return cls.parse(_read_text(path, "ACL file"), source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<ACL file>") -> AclFile:
        """Build from the text of an ACL file (*source* names it in errors)."""
        builder = _AclBuilder()
        for number, line in _content_lines(text):
            try:
                builder.add_line(line, number)
            except ValueError as exc:
                raise ConfigError(f"line {number}: {exc}", file=source) from None
        return cls(
            source=source,
            global_rules=tuple(builder.rules[None]),
            user_rules={
                name: tuple(rules) for name, rules in builder.rules.items() if name is not None
            },
            patterns=tuple(builder.patterns),
            global_networks=tuple(builder.networks.get(None, ())),
            user_networks={
                name: tuple(nets) for name, nets in builder.networks.items() if name is not None
            },
        )

    def can_connect_from(self, username: str | None, host: str | None) -> bool:
        """Whether the ``address`` lines let a client with *username* connect from *host*."""
        if self.global_networks and not address_in(host, self.global_networks):
            return False
        networks = None if username is None else self.user_networks.get(username)
        return not networks or address_in(host, networks)

    def rules_for(self, username: str | None, client_id: str) -> Iterator[AclRule]:
        """Every rule that applies to one client, patterns already substituted."""
        yield from self.global_rules
        if username is not None:
            yield from self.user_rules.get(username, ())
        for pattern in self._patterns:
            rule = pattern.expand(username, client_id)
            if rule is not None:
                yield rule

    def can_publish(self, username: str | None, client_id: str, topic: str) -> bool:
        """Whether a rule granting write matches *topic*."""
        return any(
            rule.grants(Access.WRITE) and topic_matches(rule.topic_filter, topic)
            for rule in self.rules_for(username, client_id)
        )

    def can_read(self, username: str | None, client_id: str, topic: str) -> bool:
        """Whether a rule granting read matches *topic* (a message about to be delivered)."""
        return any(
            rule.grants(Access.READ) and topic_matches(rule.topic_filter, topic)
            for rule in self.rules_for(username, client_id)
        )

    def can_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        """Whether a rule granting read covers all of *topic_filter*.

        A shared subscription is checked without its ``$share/<group>/`` prefix.
        """
        try:
            _group, plain = parse_shared_filter(topic_filter)
        except RemoteProtocolError:
            return False
        return any(
            rule.grants(Access.READ) and filter_covers(rule.topic_filter, plain)
            for rule in self.rules_for(username, client_id)
        )


@attrs.define
class _AclBuilder:
    """The sections of an ACL file as its lines are read (None: before any ``user``)."""

    rules: dict[str | None, list[AclRule]] = attrs.Factory(lambda: {None: []})
    networks: dict[str | None, list[IPNetwork]] = attrs.Factory(dict)
    patterns: list[AclRule] = attrs.Factory(list)
    user: str | None = None

    def add_line(self, line: str, number: int) -> None:
        keyword, *words = line.split()
        if keyword == "user":
            if not words or _is_comment(words, 0):
                raise ValueError("'user' needs a username, e.g. 'user alice'")
            used = 1
            self.user = words[0]
            self.rules.setdefault(self.user, [])
        elif keyword in ("topic", "pattern"):
            rule, used = _parse_rule(words, number)
            if keyword == "pattern":
                _check_placeholders(rule.topic_filter)
                _check_filter(_substitute(rule.topic_filter, {"u": "u", "c": "c"}))
                self.patterns.append(rule)
            else:
                _check_filter(rule.topic_filter)
                self.rules[self.user].append(rule)
        elif keyword == "address":
            used = next((i for i, word in enumerate(words) if word.startswith("#")), len(words))
            if not used:
                raise ValueError("'address' needs a network, e.g. 'address 10.0.0.0/8'")
            networks = self.networks.setdefault(self.user, [])
            networks.extend(parse_network(word) for word in words[:used])
        else:
            raise ValueError(
                f"unknown keyword {keyword!r} (allowed: topic, user, pattern, address)"
            )
        if len(words) > used and not _is_comment(words, used):
            raise ValueError(
                f"unexpected {' '.join(words[used:])!r} after the rule "
                "(topic filters cannot contain spaces; comments start with '#')"
            )


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


# --------------------------------------------------------------------------- wiring


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

    @classmethod
    def load(cls, config: BrokerConfig) -> AuthFiles:
        """Read the files ``config`` names; ``ConfigError`` names the file and line."""
        files = cls(password_path=config.password_file, acl_path=config.acl_file)
        files.reload()
        return files

    def reload(self) -> None:
        """Read both files again; if either fails (ConfigError), both stay as they were."""
        passwords = PasswordFile.load(self.password_path) if self.password_path else None
        acl = AclFile.load(self.acl_path) if self.acl_path else None
        self.passwords, self.acl = passwords, acl
        if passwords is not None:
            log.info("password file %s: %d users", passwords.source, len(passwords.users))
        if acl is not None:
            log.info(
                "ACL file %s: %d rules for all, %d users, %d patterns",
                acl.source,
                len(acl.global_rules),
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
        username = peer.username if peer.username is not None else connect.username
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
        username = peer.username if peer.username is not None else connect.username
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
        effective = peer.username if peer.username is not None else username
        return self.acl.can_publish(effective, client_id, topic)

    def acl_file_read(
        self, peer: PeerInfo, client_id: str, username: str | None, topic: str
    ) -> bool:
        """Read hook: the ACL file's read grants, checked on every delivery."""
        if self.acl is None:
            return True
        effective = peer.username if peer.username is not None else username
        return self.acl.can_read(effective, client_id, topic)

    def acl_file_subscribe(
        self, peer: PeerInfo, client_id: str, username: str | None, topic_filter: str
    ) -> bool:
        """Subscribe hook: see ``acl_subscribe_hook``."""
        if self.acl is None:
            return True
        effective = peer.username if peer.username is not None else username
        return self.acl.can_subscribe(effective, client_id, topic_filter)


def install_auth(core: BrokerCore, config: BrokerConfig) -> AuthFiles | None:
    """Load ``config.password_file`` and ``config.acl_file`` (when set) into *core*'s hooks.

    Returns the loaded files (``reload()`` them to apply edits), or None when the config
    names neither. Raises ``ConfigError`` (naming the file and line) if either file is
    unreadable or invalid; nothing is registered then.
    """
    if not config.password_file and not config.acl_file:
        return None
    files = AuthFiles.load(config)
    if config.password_file:
        core.connect_hooks.append(files.password_file)
    if config.acl_file:
        core.connect_hooks.append(files.acl_file_address)
        core.connect_hooks.append(files.acl_file_will)
        core.publish_hooks.append(files.acl_file_publish)
        core.subscribe_hooks.append(files.acl_file_subscribe)
        core.read_hooks.append(files.acl_file_read)
    return files
