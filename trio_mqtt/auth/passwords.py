"""Passwords: hashes and the password file (who may connect, with what password).

The password file (``password_file``) holds ``username:hash`` lines
(docs/authentication.md) in the formats of mosquitto_passwd, so one file serves both
brokers:

- ``$7$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512 (mosquitto_passwd's default, and
  what :func:`hash_password` and ``trio-mqtt-passwd`` write);
- ``$6$<salt>$<hash>``: one salted SHA-512, ``sha512(password + salt)`` (``mosquitto_passwd
  -H sha512``, mosquitto 1.6 and older); read, but fast to brute-force;
- ``$pbkdf2-sha512$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512, what trio-mqtt wrote
  before it wrote ``$7$``.

Salt and hash are standard base64 with padding (mosquitto's ``src/password_mosq.c`` and
``src/security_default.c``: a 12-byte salt, a 64-byte hash). :class:`PasswordFile`
checks a username and password against the file. The check is slow on purpose, so the
broker runs it in a worker thread (see ``hooks.AuthFiles.password_file``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping

import attrs

from trio_mqtt.auth.textfile import content_lines, read_text
from trio_mqtt.errors import ConfigError

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_ITERATIONS",
    "HASH_SCHEME",
    "MAX_ITERATIONS",
    "SCHEME_PBKDF2",
    "SCHEME_SHA512",
    "SCHEME_TRIO_PBKDF2",
    "UnknownHashFormat",
    "PasswordFile",
    "PasswordHash",
    "hash_password",
    "split_password_line",
]

log = logging.getLogger("trio_mqtt.auth")

#: The identifiers between the first two ``$`` of a stored hash.
SCHEME_PBKDF2 = "7"  # mosquitto_passwd's sha512-pbkdf2 (its default)
SCHEME_SHA512 = "6"  # mosquitto_passwd -H sha512
SCHEME_TRIO_PBKDF2 = "pbkdf2-sha512"  # trio-mqtt's own format before $7$
#: The scheme of new hashes: ``$7$``, which mosquitto reads too.
HASH_SCHEME = SCHEME_PBKDF2
#: What an error says is accepted.
ACCEPTED_FORMATS = (
    "$7$<iterations>$<salt>$<hash> (mosquitto_passwd's default), "
    "$6$<salt>$<hash> (mosquitto_passwd -H sha512) or "
    "$pbkdf2-sha512$<iterations>$<salt>$<hash>"
)
_LAYOUTS = {
    SCHEME_PBKDF2: "$7$<iterations>$<salt>$<hash>",
    SCHEME_SHA512: "$6$<salt>$<hash>",
    SCHEME_TRIO_PBKDF2: "$pbkdf2-sha512$<iterations>$<salt>$<hash>",
}
#: PBKDF2 rounds for new hashes (OWASP's 2023 figure for PBKDF2-HMAC-SHA512).
DEFAULT_ITERATIONS = 210_000
#: A hash asking for more rounds than this is refused at load time: one CONNECT would
#: hold the event loop for many seconds.
MAX_ITERATIONS = 10_000_000
#: Salt length of new hashes: mosquitto reads ``$7$`` and ``$6$`` salts of exactly 12
#: bytes; trio-mqtt's ``$pbkdf2-sha512$`` used 16.
SALT_BYTES = 12
_TRIO_SALT_BYTES = 16
_DIGEST_BYTES = hashlib.sha512().digest_size  # 64
_MIN_SALT_BYTES = 8


# --------------------------------------------------------------------------- hashing


class UnknownHashFormat(ValueError):
    """The stored text is in none of the accepted formats (perhaps not a hash at all)."""


@attrs.frozen(repr=False)
class PasswordHash:
    """One stored password: ``$7$``, ``$6$`` or ``$pbkdf2-sha512$`` (see the module doc).

    ``iterations`` is 1 for ``$6$`` (one SHA-512, no PBKDF2).
    """

    iterations: int
    salt: bytes
    digest: bytes
    scheme: str = SCHEME_PBKDF2

    def __repr__(self) -> str:
        # never print the salt or digest
        return f"PasswordHash(scheme={self.scheme!r}, iterations={self.iterations})"

    def encode(self) -> str:
        """The text form stored in the password file."""
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        if self.scheme == SCHEME_SHA512:
            return f"${SCHEME_SHA512}${salt}${digest}"
        return f"${self.scheme}${self.iterations}${salt}${digest}"

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Parse the text form; ``ValueError`` says what is wrong (never echoing *text*)."""
        fields = text.split("$")
        scheme = fields[1] if len(fields) > 1 and not fields[0] else None
        if scheme not in _LAYOUTS:
            raise UnknownHashFormat(f"not a password hash: accepted formats are {ACCEPTED_FORMATS}")
        if len(fields) != (4 if scheme == SCHEME_SHA512 else 5):
            raise ValueError(f"a ${scheme}$ hash has the form {_LAYOUTS[scheme]}")
        if scheme == SCHEME_SHA512:
            rounds = "1"
            salt_text, digest_text = fields[2:]
        else:
            rounds, salt_text, digest_text = fields[2:]
        if not (rounds.isascii() and rounds.isdigit()) or not 1 <= int(rounds) <= MAX_ITERATIONS:
            raise ValueError(f"iteration count {rounds!r} is not an integer in 1..{MAX_ITERATIONS}")
        salt = _b64decode(salt_text, "salt")
        digest = _b64decode(digest_text, "hash")
        if len(salt) < _MIN_SALT_BYTES:
            raise ValueError(f"salt is {len(salt)} bytes; at least {_MIN_SALT_BYTES} are needed")
        if len(digest) != _DIGEST_BYTES:
            raise ValueError(f"hash is {len(digest)} bytes; ${scheme}$ hashes are 64 bytes")
        return cls(iterations=int(rounds), salt=salt, digest=digest, scheme=scheme)

    def verify(self, password: bytes) -> bool:
        """Whether *password* is the one this hash was made from (constant-time compare)."""
        if self.scheme == SCHEME_SHA512:
            candidate = hashlib.sha512(password + self.salt).digest()
        else:
            candidate = hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations)
        return hmac.compare_digest(candidate, self.digest)


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{what} is not valid base64") from None


def hash_password(
    password: bytes,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    salt: bytes | None = None,
    scheme: str = HASH_SCHEME,
) -> PasswordHash:
    """Hash *password*: by default ``$7$``, PBKDF2-HMAC-SHA512 with a random 12-byte salt.

    ``scheme=SCHEME_SHA512`` makes a ``$6$`` hash (one salted SHA-512: only for a
    mosquitto 1.6 or older; *iterations* is then ignored).
    """
    if scheme not in _LAYOUTS:
        raise ValueError(f"unknown hash scheme {scheme!r}")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be in 1..{MAX_ITERATIONS}, not {iterations}")
    if salt is None:
        salt = secrets.token_bytes(_TRIO_SALT_BYTES if scheme == SCHEME_TRIO_PBKDF2 else SALT_BYTES)
    if scheme == SCHEME_SHA512:
        digest = hashlib.sha512(password + salt).digest()
        return PasswordHash(iterations=1, salt=salt, digest=digest, scheme=scheme)
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
    return PasswordHash(iterations=iterations, salt=salt, digest=digest, scheme=scheme)


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
        text = read_text(path, "password file")
        _warn_if_readable_by_others(path)
        return cls.parse(text, source=source)

    @classmethod
    def parse(cls, text: str, *, source: str = "<password file>") -> PasswordFile:
        """Build from the text of a password file (*source* names it in errors)."""
        users: dict[str, PasswordHash] = {}
        first_line: dict[str, int] = {}
        for number, line in content_lines(text):
            try:
                username, stored = split_password_line(line)
                if not username:
                    raise ValueError("the username is empty")
                password_hash = PasswordHash.parse(stored)
            except UnknownHashFormat as exc:
                raise ConfigError(
                    f"line {number}: {exc} (a file of plaintext passwords can be hashed in "
                    f"place with 'trio-mqtt-passwd -U {source}')",
                    file=source,
                ) from None
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
