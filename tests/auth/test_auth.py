"""Password file and ACL file (trio_mqtt.auth): hashing, loading, matching, hooks.

Hash vectors are the published PBKDF2-HMAC-SHA512 test vectors, not our own output.
Tests hash with a few thousand rounds at most, so the whole file stays fast.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers import PEER, make_core

from trio_mqtt.auth import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    Access,
    AclFile,
    AclRule,
    AuthFiles,
    PasswordFile,
    PasswordHash,
    acl_connect_hook,
    acl_publish_hook,
    acl_subscribe_hook,
    filter_covers,
    hash_password,
    install_auth,
    password_connect_hook,
)
from trio_mqtt.auth.passwords import SCHEME_TRIO_PBKDF2
from trio_mqtt.broker.core import OffloadedCheck
from trio_mqtt.errors import ConfigError, RemoteProtocolError
from trio_mqtt.mqtt.packets import Connect, ProtocolVersion, Will
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.mqtt.topics import topic_matches, validate_topic_filter, validate_topic_name
from trio_mqtt.peer import Endpoint, PeerInfo

# PBKDF2-HMAC-SHA512 published vector: P = "passwordPASSWORDpassword",
# S = "saltSALTsaltSALTsaltSALTsaltSALTsalt", c = 4096, dkLen = 64.
VECTOR_PASSWORD = b"passwordPASSWORDpassword"
VECTOR_SALT = b"saltSALTsaltSALTsaltSALTsaltSALTsalt"
VECTOR_ITERATIONS = 4096
VECTOR_DIGEST = bytes.fromhex(
    "8c0511f4c6e597c6ac6315d8f0362e225f3c501495ba23b868c005174dc4ee71"
    "115b59f9e60cd9532fa33e0f75aefe30225c583a186cd82bd4daea9724a3d3b8"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


VECTOR_LINE = f"$pbkdf2-sha512$4096${b64(VECTOR_SALT)}${b64(VECTOR_DIGEST)}"
GOOD_SALT = b64(bytes(range(16)))
GOOD_DIGEST = b64(bytes(64))

CERT_PEER = PeerInfo(listener="tls", transport="tls", username="cert-user")

FAST = 1000  # rounds for hashes made in tests


# --------------------------------------------------------------------------- hashing


def test_published_vector_verifies() -> None:
    stored = PasswordHash.parse(VECTOR_LINE)
    assert stored.iterations == VECTOR_ITERATIONS
    assert stored.salt == VECTOR_SALT
    assert stored.digest == VECTOR_DIGEST
    assert stored.verify(VECTOR_PASSWORD)
    assert not stored.verify(VECTOR_PASSWORD + b"x")
    assert not stored.verify(b"")


def test_encode_gives_back_the_stored_text() -> None:
    assert PasswordHash.parse(VECTOR_LINE).encode() == VECTOR_LINE


def test_hash_password_with_fixed_salt_matches_the_vector() -> None:
    made = hash_password(
        VECTOR_PASSWORD,
        iterations=VECTOR_ITERATIONS,
        salt=VECTOR_SALT,
        scheme=SCHEME_TRIO_PBKDF2,
    )
    assert made.digest == VECTOR_DIGEST
    assert made.encode() == VECTOR_LINE


def test_hash_password_defaults() -> None:
    assert DEFAULT_ITERATIONS == 210_000
    made = hash_password(b"pw")  # the one full-strength hash in this file (~0.15 s)
    text = made.encode()
    fields = text.split("$")
    assert fields[:3] == ["", "7", "210000"]  # mosquitto_passwd's layout
    assert len(base64.b64decode(fields[3])) == 12  # the only salt length mosquitto reads
    assert len(base64.b64decode(fields[4])) == 64
    expected = hashlib.pbkdf2_hmac("sha512", b"pw", made.salt, 210_000)
    assert made.digest == expected


def test_hash_password_uses_a_fresh_salt_each_time() -> None:
    first = hash_password(b"same", iterations=1)
    second = hash_password(b"same", iterations=1)
    assert first.salt != second.salt
    assert first.digest != second.digest
    assert first.verify(b"same") and second.verify(b"same")


@pytest.mark.parametrize("iterations", [0, -1, MAX_ITERATIONS + 1])
def test_hash_password_refuses_bad_iterations(iterations: int) -> None:
    with pytest.raises(ValueError, match="iterations"):
        hash_password(b"pw", iterations=iterations)


def test_repr_hides_salt_and_digest() -> None:
    stored = PasswordHash.parse(VECTOR_LINE)
    assert repr(stored) == "PasswordHash(scheme='pbkdf2-sha512', iterations=4096)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("secret", "not a password hash: accepted formats are $7$"),
        ("$pbkdf2-sha256$1000$" + GOOD_SALT + "$" + GOOD_DIGEST, "accepted formats"),
        ("$pbkdf2-sha512$1000$" + GOOD_SALT, "has the form $pbkdf2-sha512$<iterations>$"),
        ("pbkdf2-sha512$1000$" + GOOD_SALT + "$" + GOOD_DIGEST + "$", "accepted formats"),
        ("$pbkdf2-sha512$0$" + GOOD_SALT + "$" + GOOD_DIGEST, "iteration count '0'"),
        ("$pbkdf2-sha512$-5$" + GOOD_SALT + "$" + GOOD_DIGEST, "iteration count '-5'"),
        ("$pbkdf2-sha512$1e3$" + GOOD_SALT + "$" + GOOD_DIGEST, "iteration count '1e3'"),
        ("$pbkdf2-sha512$10000001$" + GOOD_SALT + "$" + GOOD_DIGEST, "1..10000000"),
        ("$pbkdf2-sha512$1000$not*base64$" + GOOD_DIGEST, "salt is not valid base64"),
        ("$pbkdf2-sha512$1000$" + GOOD_SALT + "$abc", "hash is not valid base64"),
        ("$pbkdf2-sha512$1000$" + b64(b"1234567") + "$" + GOOD_DIGEST, "salt is 7 bytes"),
        ("$pbkdf2-sha512$1000$" + GOOD_SALT + "$" + b64(bytes(32)), "hash is 32 bytes"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("$", r"\$").replace(".", r"\.")):
        PasswordHash.parse(text)


# --------------------------------------------------------------------------- password file


def make_line(username: str, password: bytes, iterations: int = FAST) -> str:
    return f"{username}:{hash_password(password, iterations=iterations).encode()}"


def test_password_file_parse_and_check() -> None:
    text = "\n".join(
        [
            "# users of the test broker",
            "",
            make_line("alice", b"alice-pw"),
            "   # an indented comment",
            f"bob:{VECTOR_LINE}",
            make_line("urn:dev:42", b"colon-user"),  # usernames may contain ':'
            "  " + make_line("padded", b"pw") + "  ",
        ]
    )
    passwords = PasswordFile.parse(text, source="users.txt")
    assert sorted(passwords.users) == ["alice", "bob", "padded", "urn:dev:42"]
    assert passwords.check("alice", b"alice-pw")
    assert not passwords.check("alice", b"bob-pw")
    assert passwords.check("bob", VECTOR_PASSWORD)
    assert passwords.check("urn:dev:42", b"colon-user")
    assert not passwords.check("urn", b"colon-user")
    assert passwords.check("padded", b"pw")
    assert not passwords.check("carol", b"alice-pw")
    assert not passwords.check("alice", None)
    assert not passwords.check("alice", b"")


def test_empty_password_file_has_no_users() -> None:
    passwords = PasswordFile.parse("# nothing yet\n\n")
    assert dict(passwords.users) == {}
    assert not passwords.check("anyone", b"pw")


@pytest.mark.parametrize(
    ("lines", "line_number", "message"),
    [
        (["alice:hunter2"], 1, "accepted formats are $7$"),
        (["# header", "", "alice"], 3, "expected 'username:hash'"),
        ([f":{VECTOR_LINE}"], 1, "the username is empty"),
        (["# c", f"bob:{VECTOR_LINE}", "alice:$pbkdf2-sha512$x$y$z"], 3, "iteration count 'x'"),
        ([f"bob:{VECTOR_LINE}", "", f"bob:{VECTOR_LINE}"], 3, "already defined on line 1"),
    ],
)
def test_password_file_errors_name_file_and_line(
    tmp_path: Path, lines: list[str], line_number: int, message: str
) -> None:
    path = tmp_path / "users.passwd"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        PasswordFile.load(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: line {line_number}: ")
    assert message in text
    assert caught.value.file == str(path)


def test_password_file_error_never_shows_the_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    path.write_text("alice:correct-horse-battery\n")
    with pytest.raises(ConfigError) as caught:
        PasswordFile.load(path)
    assert "correct-horse" not in str(caught.value)


def test_missing_password_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.passwd"
    with pytest.raises(ConfigError, match="cannot read password file: No such file") as caught:
        PasswordFile.load(path)
    assert str(path) in str(caught.value)


def test_password_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    path.write_bytes(b"\xff\xfe:x\n")
    with pytest.raises(ConfigError, match="password file is not UTF-8") as caught:
        PasswordFile.load(path)
    assert str(path) in str(caught.value)


def test_load_warns_when_others_can_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "users.passwd"
    path.write_text(make_line("alice", b"pw") + "\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="trio_mqtt.auth"):
        PasswordFile.load(path)
    assert any("readable by other users (mode 644)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="trio_mqtt.auth"):
        loaded = PasswordFile.load(path)
    assert caplog.records == []
    assert loaded.check("alice", b"pw")


@pytest.fixture
def pbkdf2_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts hashlib.pbkdf2_hmac calls (their iteration counts) while still computing them."""
    calls: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int, *args: Any) -> bytes:
        calls.append(iterations)
        return real(name, password, salt, iterations, *args)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    return calls


def test_successful_check_is_cached(pbkdf2_calls: list[int]) -> None:
    passwords = PasswordFile.parse(make_line("alice", b"pw", 3000))
    pbkdf2_calls.clear()
    assert passwords.check("alice", b"pw")
    assert pbkdf2_calls == [3000]
    assert passwords.check("alice", b"pw")
    assert passwords.check("alice", b"pw")
    assert pbkdf2_calls == [3000]  # reconnects cost no PBKDF2


def test_failed_checks_are_never_cached(pbkdf2_calls: list[int]) -> None:
    passwords = PasswordFile.parse(make_line("alice", b"pw", 3000))
    pbkdf2_calls.clear()
    assert passwords.check("alice", b"pw")
    assert not passwords.check("alice", b"wrong")
    assert not passwords.check("alice", b"wrong")
    assert pbkdf2_calls == [3000, 3000, 3000]
    assert passwords.check("alice", b"pw")  # the right one is still cached
    assert len(pbkdf2_calls) == 3


def test_unknown_user_costs_like_the_slowest_entry(pbkdf2_calls: list[int]) -> None:
    passwords = PasswordFile.parse(
        make_line("alice", b"pw", 2000) + "\n" + make_line("bob", b"pw", 3000)
    )
    pbkdf2_calls.clear()
    assert not passwords.check("mallory", b"pw")
    assert pbkdf2_calls == [3000]


def test_missing_password_costs_nothing(pbkdf2_calls: list[int]) -> None:
    passwords = PasswordFile.parse(make_line("alice", b"pw"))
    pbkdf2_calls.clear()
    assert not passwords.check("alice", None)
    assert not passwords.check("mallory", None)
    assert pbkdf2_calls == []


def test_cache_keeps_no_plaintext() -> None:
    password = b"very-recognisable-password"
    passwords = PasswordFile.parse(make_line("alice", password))
    assert passwords.check("alice", password)
    cached = passwords._verified
    assert list(cached) == ["alice"]
    assert all(password not in value for value in cached.values())
    assert all(len(value) == 32 for value in cached.values())  # a SHA-256 digest
    assert hashlib.sha256(password).digest() not in cached.values()  # salted
    assert password.decode() not in repr(passwords)


def test_cache_is_per_file_so_a_reload_drops_it(pbkdf2_calls: list[int]) -> None:
    line = make_line("alice", b"pw")
    first = PasswordFile.parse(line)
    assert first.check("alice", b"pw")
    pbkdf2_calls.clear()
    assert PasswordFile.parse(line).check("alice", b"pw")
    assert pbkdf2_calls == [FAST]


# --------------------------------------------------------------------------- connect hook


def connect(
    username: str | None = None,
    password: bytes | None = None,
    *,
    client_id: str = "dev",
    will_topic: str | None = None,
) -> Connect:
    will = None if will_topic is None else Will(topic=will_topic, payload=b"gone")
    return Connect(
        client_id=client_id,
        protocol_version=ProtocolVersion.V5,
        username=username,
        password=password,
        will=will,
    )


@pytest.mark.parametrize(
    ("peer", "username", "password", "expected"),
    [
        (PEER, "alice", b"alice-pw", None),
        (PEER, "alice", b"wrong", ReasonCode.BAD_USER_NAME_OR_PASSWORD),
        (PEER, "alice", None, ReasonCode.BAD_USER_NAME_OR_PASSWORD),
        (PEER, "mallory", b"alice-pw", ReasonCode.BAD_USER_NAME_OR_PASSWORD),
        (PEER, "Alice", b"alice-pw", ReasonCode.BAD_USER_NAME_OR_PASSWORD),
        (PEER, None, None, None),  # anonymous: allow_anonymous decides, in the core
        (PEER, None, b"alice-pw", None),
        (CERT_PEER, None, None, None),  # the certificate authenticated the client
        (CERT_PEER, "alice", b"wrong", None),
    ],
)
def test_password_connect_hook(
    peer: PeerInfo,
    username: str | None,
    password: bytes | None,
    expected: ReasonCode | None,
) -> None:
    hook = password_connect_hook(PasswordFile.parse(make_line("alice", b"alice-pw")))
    assert decide(hook(peer, connect(username, password))) == expected


def decide(answer: ReasonCode | OffloadedCheck | None) -> ReasonCode | None:
    """A connect hook's decision: run its offloaded check (here, not in a thread)."""
    return answer.work() if isinstance(answer, OffloadedCheck) else answer


def test_password_check_is_offloaded_unless_the_password_verified_before() -> None:
    """PBKDF2 never runs on the event loop; a known-good password costs one SHA-256."""
    hook = password_connect_hook(PasswordFile.parse(make_line("alice", b"alice-pw")))
    first = hook(PEER, connect("alice", b"alice-pw"))
    assert isinstance(first, OffloadedCheck)
    assert first.work() is None
    assert hook(PEER, connect("alice", b"alice-pw")) is None  # verified before: at once
    wrong = hook(PEER, connect("alice", b"wrong"))
    assert isinstance(wrong, OffloadedCheck)
    assert wrong.work() == ReasonCode.BAD_USER_NAME_OR_PASSWORD


def test_password_hook_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    hook = password_connect_hook(PasswordFile.parse(make_line("alice", b"alice-pw")))
    with caplog.at_level(logging.INFO, logger="trio_mqtt.auth"):
        decide(hook(PEER, connect("alice", b"nope")))
        decide(hook(PEER, connect("bob", b"nope")))
        decide(hook(PEER, connect("alice", None)))
    messages = [record.getMessage() for record in caplog.records]
    assert [m.rsplit(": ", 1)[1] for m in messages] == [
        "wrong password",
        "unknown user",
        "no password",
    ]
    assert all("client=192.0.2.10:50000" in m for m in messages)
    assert not any("nope" in m for m in messages)


# --------------------------------------------------------------------------- filter_covers


@pytest.mark.parametrize(
    ("rule", "requested", "expected"),
    [
        ("sensors/#", "sensors/+/temp", True),
        ("sensors/+/temp", "sensors/#", False),
        ("sensors/#", "sensors/#", True),
        ("sensors/#", "sensors", True),  # '#' includes the parent level
        ("sensors/#", "sensors/a/b/c", True),
        ("sensors/+", "sensors/a", True),
        ("sensors/+", "sensors/+", True),
        ("sensors/+", "sensors/a/b", False),
        ("sensors/+", "sensors/#", False),
        ("sensors/+", "sensors", False),
        ("sensors/a", "sensors/+", False),
        ("sensors/a", "sensors/a", True),
        ("sensors/a", "sensors/b", False),
        ("sensors/a/#", "sensors/+/#", False),
        ("+/+", "a/+", True),
        ("+/#", "#", True),  # '+/#' matches "a" too ('#' includes the parent level)
        ("a/+/#", "a/#", False),  # but not "a", which 'a/#' matches
        ("+/+/#", "/#", True),  # '/#' cannot match its parent: "" is not a topic name
        ("+/+/#", "a/#", False),
        ("#", "#", True),
        ("#", "a/+/b", True),
        ("#", "$SYS/#", False),  # rules starting with a wildcard do not match $ topics
        ("+/uptime", "$SYS/uptime", False),
        ("$SYS/#", "$SYS/broker/+", True),
        ("$SYS/#", "#", False),
        ("a//b", "a/+/b", False),
        ("a/+/b", "a//b", True),
    ],
)
def test_filter_covers(rule: str, requested: str, expected: bool) -> None:
    assert filter_covers(rule, requested) is expected


def _valid_filters(levels: tuple[str, ...], depth: int) -> list[str]:
    result = []
    for size in range(1, depth + 1):
        for parts in itertools.product(levels, repeat=size):
            text = "/".join(parts)
            try:
                validate_topic_filter(text, allow_shared=False)
            except RemoteProtocolError:
                continue
            result.append(text)
    return result


def _valid_topics(levels: tuple[str, ...], depth: int) -> list[str]:
    result = []
    for size in range(1, depth + 1):
        for parts in itertools.product(levels, repeat=size):
            text = "/".join(parts)
            try:
                validate_topic_name(text)
            except RemoteProtocolError:
                continue
            result.append(text)
    return result


def test_filter_covers_agrees_with_matching_on_every_small_case() -> None:
    """covers(R, S) exactly when every topic S matches is matched by R.

    Filters have up to 3 levels from {a, '', $x, +, #}; topics up to 4 levels from
    {a, z, '', $x}: 'z' is a level no filter names (what '+' and '#' can reach), and a
    fourth level is what separates '#' from any fixed-length filter.
    """
    filters = _valid_filters(("a", "", "$x", "+", "#"), 3)
    topics = _valid_topics(("a", "z", "", "$x"), 4)
    matched = {f: frozenset(t for t in topics if topic_matches(f, t)) for f in filters}
    disagreements = [
        (rule, requested)
        for rule in filters
        for requested in filters
        if filter_covers(rule, requested) != (matched[requested] <= matched[rule])
    ]
    assert disagreements == []
    assert len(filters) > 80  # the universe is not accidentally tiny


# --------------------------------------------------------------------------- ACL file

EXAMPLE_ACL = """\
# anonymous / all users before the first "user" line
topic read $SYS/#
topic public/#

user alice
topic readwrite sensors/alice/#
topic write cmd/+/in
topic read   alerts/#   # spaces and an inline comment

user bob
topic read sensors/#
pattern readwrite clients/%c/#    # %c = client id, %u = username (applies to every user)
pattern write users/%u/out
pattern read inbox/%u/%c
"""


@pytest.fixture
def acl() -> AclFile:
    return AclFile.parse(EXAMPLE_ACL, source="example.acl")


def test_acl_parse_structure(acl: AclFile) -> None:
    assert acl.global_rules == (
        AclRule(Access.READ, "$SYS/#", 2),
        AclRule(Access.READWRITE, "public/#", 3),
    )
    assert dict(acl.user_rules) == {
        "alice": (
            AclRule(Access.READWRITE, "sensors/alice/#", 6),
            AclRule(Access.WRITE, "cmd/+/in", 7),
            AclRule(Access.READ, "alerts/#", 8),
        ),
        "bob": (AclRule(Access.READ, "sensors/#", 11),),
    }
    assert acl.patterns == (
        AclRule(Access.READWRITE, "clients/%c/#", 12),
        AclRule(Access.WRITE, "users/%u/out", 13),
        AclRule(Access.READ, "inbox/%u/%c", 14),
    )


# (username, client id, topic, may publish)
PUBLISH_CASES = [
    ("alice", "a1", "sensors/alice/temp", True),
    ("alice", "a1", "sensors/alice", True),
    ("alice", "a1", "sensors/bob/temp", False),
    ("alice", "a1", "cmd/lamp/in", True),
    ("alice", "a1", "cmd/lamp/out", False),
    ("alice", "a1", "alerts/fire", False),  # read only
    ("alice", "a1", "public/chat", True),  # global rule applies to users too
    ("alice", "a1", "$SYS/broker/uptime", False),
    ("bob", "b1", "sensors/bob/temp", False),  # bob only reads sensors
    ("bob", "b1", "cmd/lamp/in", False),
    (None, "anon", "public/chat", True),
    (None, "anon", "sensors/alice/temp", False),
    # patterns
    ("alice", "a1", "clients/a1/status", True),
    ("alice", "a1", "clients/a2/status", False),
    (None, "anon", "clients/anon/x", True),  # %c needs no username
    ("alice", "a1", "users/alice/out", True),
    ("alice", "a1", "users/bob/out", False),
    (None, "anon", "users/anon/out", False),  # %u never matches without a username
    ("alice", "a1", "inbox/alice/a1", False),  # read-only pattern
    ("carol", "c1", "users/carol/out", True),  # patterns apply to users with no section
]


@pytest.mark.parametrize(("username", "client_id", "topic", "expected"), PUBLISH_CASES)
def test_acl_can_publish(
    acl: AclFile, username: str | None, client_id: str, topic: str, expected: bool
) -> None:
    assert acl.can_publish(username, client_id, topic) is expected


# (username, client id, topic filter, may subscribe)
SUBSCRIBE_CASES = [
    ("alice", "a1", "sensors/alice/#", True),
    ("alice", "a1", "sensors/alice/+/temp", True),
    ("alice", "a1", "sensors/#", False),
    ("alice", "a1", "sensors/+/temp", False),
    ("alice", "a1", "cmd/lamp/in", False),  # write only
    ("alice", "a1", "alerts/#", True),
    ("alice", "a1", "$SYS/broker/uptime", True),
    ("alice", "a1", "#", False),
    ("bob", "b1", "sensors/+/temp", True),
    ("bob", "b1", "sensors/#", True),
    ("bob", "b1", "sensors", True),
    ("bob", "b1", "alerts/#", False),
    (None, "anon", "public/#", True),
    (None, "anon", "$SYS/#", True),
    (None, "anon", "sensors/bob/temp", False),
    # patterns
    ("alice", "a1", "clients/a1/#", True),
    ("alice", "a1", "clients/+/#", False),
    ("alice", "a1", "inbox/alice/a1", True),
    ("alice", "a1", "inbox/alice/+", False),
    ("alice", "a2", "inbox/alice/a1", False),
    ("alice", "a1", "users/alice/out", False),  # write-only pattern
    # shared subscriptions are checked without their prefix
    ("bob", "b1", "$share/g1/sensors/+/temp", True),
    ("alice", "a1", "$share/g1/sensors/#", False),
]


@pytest.mark.parametrize(("username", "client_id", "topic_filter", "expected"), SUBSCRIBE_CASES)
def test_acl_can_subscribe(
    acl: AclFile, username: str | None, client_id: str, topic_filter: str, expected: bool
) -> None:
    assert acl.can_subscribe(username, client_id, topic_filter) is expected


WIDENING_ACL = AclFile.parse(
    "pattern readwrite clients/%c/#\npattern readwrite users/%u/#\npattern readwrite %u/#\n"
    "pattern read both/%u/%c\n"
)


@pytest.mark.parametrize(
    ("username", "client_id", "topic", "expected"),
    [
        # A username with '+', '#' or '/' must not turn into a wildcard or a deeper path.
        ("+", "c1", "users/alice/x", False),
        ("#", "c1", "users/alice/x", False),
        ("a/b", "c1", "users/a/b/x", False),
        ("a+b", "c1", "users/a+b/x", False),
        ("", "c1", "users//x", False),
        ("$SYS", "c1", "$SYS/broker", False),  # '%u/#' must not reach $ topics
        # ... the same for client ids
        ("alice", "+", "clients/bob/x", False),
        ("alice", "#", "clients/bob/x", False),
        ("alice", "x/y", "clients/x/y/z", False),
        # Safe identities still work, and an unsafe one only loses its own patterns.
        ("alice", "c1", "users/alice/x", True),
        ("alice", "c1", "alice/x", True),
        ("a/b", "c1", "clients/c1/x", True),
        ("alice", "x/y", "users/alice/x", True),
        ("bob%c", "c1", "users/bob%c/x", True),
    ],
)
def test_patterns_never_widen_for_unsafe_identities(
    username: str, client_id: str, topic: str, expected: bool
) -> None:
    assert WIDENING_ACL.can_publish(username, client_id, topic) is expected


@pytest.mark.parametrize(
    ("username", "client_id", "topic_filter", "expected"),
    [
        ("+", "c1", "users/+/#", False),
        ("#", "c1", "users/#", False),
        ("#", "c1", "#", False),
        ("alice", "+", "clients/+/#", False),
        ("alice", "c1", "users/alice/#", True),
        # '%c' inside a username is substituted once, never again
        ("u%c", "x", "both/u%c/x", True),
        ("u%c", "x", "both/ux/x", False),
    ],
)
def test_pattern_subscribe_with_unsafe_identities(
    username: str, client_id: str, topic_filter: str, expected: bool
) -> None:
    assert WIDENING_ACL.can_subscribe(username, client_id, topic_filter) is expected


def test_empty_acl_denies_everything() -> None:
    empty = AclFile.parse("# nothing\n")
    assert not empty.can_publish("alice", "c", "a")
    assert not empty.can_subscribe("alice", "c", "a")


def test_topic_read_hash_reads_everything_but_dollar_topics() -> None:
    acl = AclFile.parse("topic read #\n")
    assert acl.global_rules == (AclRule(Access.READ, "#", 1),)
    assert acl.can_subscribe(None, "c", "#")
    assert acl.can_subscribe(None, "c", "a/b/+")
    assert not acl.can_subscribe(None, "c", "$SYS/#")
    assert not acl.can_publish(None, "c", "a")


def test_bare_topic_word_is_the_filter() -> None:
    # 'topic read' has no word after the access, so "read" is the topic (readwrite)
    acl = AclFile.parse("topic read\ntopic write #  # write anything\n")
    assert acl.global_rules == (
        AclRule(Access.READWRITE, "read", 1),
        AclRule(Access.WRITE, "#", 2),
    )


def test_user_sections_merge() -> None:
    acl = AclFile.parse("user a\ntopic x\nuser b\ntopic y\nuser a\ntopic z\n")
    assert [rule.topic_filter for rule in acl.user_rules["a"]] == ["x", "z"]
    assert [rule.topic_filter for rule in acl.user_rules["b"]] == ["y"]


# ------------------------------------------------------------ deny rules (issue 14)

DENY_ACL = """\
topic readwrite #
topic deny test/nosubscribe
topic deny private/+/secret     # deny: read and write
topic read $SYS/#
topic deny $SYS/broker/clients/#

user alice
topic readwrite alice/#
topic deny alice/locked/#
topic deny public/#             # a user's deny wins over the rule for everyone

pattern readwrite clients/%c/#
pattern deny clients/%c/admin/#
pattern deny inbox/%u           # a deny for every user, on their own topic
"""


@pytest.fixture
def deny_acl() -> AclFile:
    return AclFile.parse(DENY_ACL, source="deny.acl")


def test_deny_rules_are_parsed(deny_acl: AclFile) -> None:
    assert deny_acl.global_rules == (
        AclRule(Access.READWRITE, "#", 1),
        AclRule(Access.READWRITE, "test/nosubscribe", 2, deny=True),
        AclRule(Access.READWRITE, "private/+/secret", 3, deny=True),
        AclRule(Access.READ, "$SYS/#", 4),
        AclRule(Access.READWRITE, "$SYS/broker/clients/#", 5, deny=True),
    )
    assert deny_acl.user_rules["alice"] == (
        AclRule(Access.READWRITE, "alice/#", 8),
        AclRule(Access.READWRITE, "alice/locked/#", 9, deny=True),
        AclRule(Access.READWRITE, "public/#", 10, deny=True),
    )
    assert deny_acl.patterns == (
        AclRule(Access.READWRITE, "clients/%c/#", 12),
        AclRule(Access.READWRITE, "clients/%c/admin/#", 13, deny=True),
        AclRule(Access.READWRITE, "inbox/%u", 14, deny=True),
    )
    denied = deny_acl.global_rules[1]
    assert not denied.grants(Access.READ) and not denied.grants(Access.WRITE)
    assert denied.denies(Access.READ) and denied.denies(Access.WRITE)


# (username, client id, topic, may publish, may read)
DENY_TOPIC_CASES = [
    (None, "anon", "test/other", True, True),
    (None, "anon", "test/nosubscribe", False, False),
    (None, "anon", "test/nosubscribe/below", True, True),  # the deny has no '#'
    (None, "anon", "private/a/secret", False, False),
    (None, "anon", "private/a/public", True, True),
    (None, "anon", "$SYS/broker/uptime", False, True),
    (None, "anon", "$SYS/broker/clients/connected", False, False),
    ("alice", "a1", "test/nosubscribe", False, False),  # rules for everyone
    ("alice", "a1", "alice/locked/door", False, False),  # her own deny over her grant
    ("alice", "a1", "alice/open", True, True),
    ("alice", "a1", "public/news", False, False),  # her deny over the grant for everyone
    ("bob", "b1", "public/news", True, True),  # alice's deny is hers only
    # patterns
    ("bob", "b1", "clients/b1/status", True, True),
    ("bob", "b1", "clients/b1/admin/reset", False, False),
    ("bob", "b1", "clients/a1/admin/reset", True, True),  # another client's: only '#'
    ("bob", "b1", "inbox/bob", False, False),
    ("bob", "b1", "inbox/alice", True, True),
    (None, "anon", "inbox/bob", True, True),  # %u never applies without a username
]


@pytest.mark.parametrize(("username", "client_id", "topic", "publish", "read"), DENY_TOPIC_CASES)
def test_deny_wins_over_grants_for_publish_and_read(
    deny_acl: AclFile, username: str | None, client_id: str, topic: str, publish: bool, read: bool
) -> None:
    assert deny_acl.can_publish(username, client_id, topic) is publish
    assert deny_acl.can_read(username, client_id, topic) is read


# (username, client id, topic filter, may subscribe)
DENY_SUBSCRIBE_CASES = [
    # a filter that only overlaps denied topics is allowed (can_read filters them out)
    (None, "anon", "#", True),
    (None, "anon", "test/#", True),
    (None, "anon", "test/+", True),
    (None, "anon", "private/+/+", True),
    (None, "anon", "$SYS/#", True),
    ("alice", "a1", "alice/#", True),
    # a filter entirely inside denied space is refused
    (None, "anon", "test/nosubscribe", False),
    (None, "anon", "private/a/secret", False),
    (None, "anon", "private/+/secret", False),
    (None, "anon", "$SYS/broker/clients/#", False),
    (None, "anon", "$SYS/broker/clients/+/x", False),
    (None, "anon", "$share/g/test/nosubscribe", False),
    ("alice", "a1", "alice/locked/#", False),
    ("alice", "a1", "alice/locked/+", False),
    ("alice", "a1", "public/#", False),
    ("bob", "b1", "public/#", True),
    ("bob", "b1", "clients/b1/admin/#", False),
    ("bob", "b1", "clients/b1/#", True),
]


@pytest.mark.parametrize(
    ("username", "client_id", "topic_filter", "expected"), DENY_SUBSCRIBE_CASES
)
def test_deny_refuses_subscriptions_entirely_inside_it(
    deny_acl: AclFile, username: str | None, client_id: str, topic_filter: str, expected: bool
) -> None:
    assert deny_acl.can_subscribe(username, client_id, topic_filter) is expected


def test_deny_is_order_independent() -> None:
    # a deny before the grant it restricts, and one in an earlier section of the same user
    before = AclFile.parse("topic deny a/b\ntopic a/#\n")
    assert not before.can_publish(None, "c", "a/b")
    assert before.can_publish(None, "c", "a/c")
    sections = AclFile.parse("user u\ntopic deny a/b\nuser v\ntopic a/#\nuser u\ntopic a/#\n")
    assert not sections.can_read("u", "c", "a/b")
    assert sections.can_read("v", "c", "a/b")


def test_deny_alone_grants_nothing_and_a_bare_deny_word_is_still_a_topic() -> None:
    acl = AclFile.parse("topic deny secret\ntopic deny\npattern deny\n")
    assert not acl.can_publish(None, "c", "other")
    assert not acl.can_subscribe(None, "c", "other")
    # as before deny rules existed: with no word after it, "deny" is the topic (readwrite)
    assert acl.global_rules == (
        AclRule(Access.READWRITE, "secret", 1, deny=True),
        AclRule(Access.READWRITE, "deny", 2),
    )
    assert acl.patterns == (AclRule(Access.READWRITE, "deny", 3),)
    assert acl.can_publish(None, "c", "deny")


def test_deny_hash_denies_every_topic_but_dollar_topics() -> None:
    acl = AclFile.parse("topic readwrite #\ntopic read $SYS/#\ntopic deny #\n")
    assert not acl.can_publish(None, "c", "a")
    assert not acl.can_subscribe(None, "c", "#")
    assert acl.can_read(None, "c", "$SYS/broker/uptime")  # '#' does not match $ topics


# ----------------------------------- rules before the first "user" line, mosquitto's way

SECTIONS_ACL = """\
topic read public/#
topic deny public/secret
address 10.0.0.0/8
user alice
topic readwrite alice/#
pattern write clients/%c/out
"""


def test_global_rules_apply_to_everyone_by_default() -> None:
    acl = AclFile.parse(SECTIONS_ACL)
    assert not acl.global_rules_anonymous_only
    assert acl.can_read(None, "c", "public/news")
    assert acl.can_read("alice", "c", "public/news")
    assert acl.can_read("carol", "c", "public/news")
    assert not acl.can_read("carol", "c", "public/secret")


def test_global_rules_for_anonymous_clients_only(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto.acl"
    path.write_text(SECTIONS_ACL)
    acl = AclFile.load(path, global_rules_anonymous_only=True)
    assert acl.global_rules_anonymous_only
    # anonymous clients get the rules before the first "user" line, deny included ...
    assert acl.can_read(None, "c", "public/news")
    assert not acl.can_read(None, "c", "public/secret")
    assert acl.can_subscribe(None, "c", "public/#")
    # ... clients with a username do not: their section and the patterns only
    assert not acl.can_read("alice", "c", "public/news")
    assert not acl.can_subscribe("alice", "c", "public/#")
    assert acl.can_publish("alice", "c", "alice/x")
    assert not acl.can_read("carol", "c", "public/news")
    assert acl.can_publish("carol", "c", "clients/c/out")
    assert acl.can_publish(None, "c", "clients/c/out")
    # address lines (not mosquitto's) still apply to everyone
    assert not acl.can_connect_from("alice", "192.168.1.1")
    assert acl.can_connect_from("alice", "10.1.2.3")


@pytest.mark.parametrize(
    ("lines", "line_number", "message"),
    [
        (["topic read a", "toppic read b"], 2, "unknown keyword 'toppic'"),
        (["# c", "topic denied secret/#"], 2, "unknown access 'denied'"),
        (["topic nope a"], 1, "(allowed: read, write, readwrite, deny;"),
        (["topic deny # everything"], 1, "unexpected 'everything' after the rule"),
        (["pattern deny a/%x"], 1, "unknown placeholder '%x'"),
        (["topic deny a/#/b"], 1, "'#' must be the last level"),
        (["topic deny $share/g/a"], 1, "without the '$share/<group>/' prefix"),
        (["topic"], 1, "expected a topic filter"),
        (["topic # only a comment"], 1, "expected a topic filter"),
        (["user"], 1, "'user' needs a username"),
        (["user alice", "", "topic read a/#/b"], 3, "'#' must be the last level"),
        (["topic write a+"], 1, "'+' must be alone in its level"),
        (["topic read $share/g/a/#"], 1, "without the '$share/<group>/' prefix"),
        (["pattern read clients/%x/#"], 1, "unknown placeholder '%x'"),
        (["pattern read clients/%"], 1, "unknown placeholder '%'"),
        (["pattern read c/%u#"], 1, "'#' must be alone in its level"),
        (["topic read my topic"], 1, "unexpected 'topic' after the rule"),
        (["topic read a b # c"], 1, "unexpected 'b # c' after the rule"),
        (["user alice bob"], 1, "unexpected 'bob'"),
        (["address"], 1, "'address' needs a network"),
        (["address # only a comment"], 1, "'address' needs a network"),
        (["address 10.0.0.1/8"], 1, "has host bits set; did you mean '10.0.0.0/8'?"),
        (["user a", "address 10.0.0.0/8 sensors/#"], 2, "'sensors/#' is not a valid CIDR"),
    ],
)
def test_acl_errors_name_file_and_line(
    tmp_path: Path, lines: list[str], line_number: int, message: str
) -> None:
    path = tmp_path / "broker.acl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        AclFile.load(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: line {line_number}: ")
    assert message in text


ADDRESS_ACL = """\
topic readwrite #
address 10.0.0.0/8 192.168.1.0/24   # every client, from these networks only
address 2001:db8::/32
user alice
address 10.1.0.0/16                 # alice only from here (and within the above)
user bob
topic read x
"""


def test_address_lines_are_parsed_per_section() -> None:
    acl = AclFile.parse(ADDRESS_ACL)
    assert [str(n) for n in acl.global_networks] == [
        "10.0.0.0/8",
        "192.168.1.0/24",
        "2001:db8::/32",
    ]
    assert {name: [str(n) for n in nets] for name, nets in acl.user_networks.items()} == {
        "alice": ["10.1.0.0/16"]
    }
    assert acl.can_publish("bob", "c", "any/topic")  # address lines leave the rules alone


@pytest.mark.parametrize(
    ("username", "host", "allowed"),
    [
        (None, "10.9.9.9", True),
        (None, "192.168.1.77", True),
        (None, "192.168.2.1", False),
        (None, "203.0.113.7", False),
        (None, "2001:db8::1", True),
        (None, "2001:db9::1", False),
        (None, "::ffff:10.0.0.1", True),  # IPv4-mapped IPv6: the IPv4 address counts
        (None, None, False),  # no address at all: refused when addresses are restricted
        (None, "/run/mqtt.sock", False),
        ("bob", "10.9.9.9", True),  # no lines of his own: the lines for every client
        ("alice", "10.1.2.3", True),
        ("alice", "10.9.9.9", False),  # inside the global networks, outside alice's
        ("alice", "2001:db8::1", False),
    ],
)
def test_can_connect_from(username: str | None, host: str | None, allowed: bool) -> None:
    assert AclFile.parse(ADDRESS_ACL).can_connect_from(username, host) is allowed


def test_without_address_lines_any_address_may_connect(acl: AclFile) -> None:
    assert acl.can_connect_from("alice", "203.0.113.7")
    assert acl.can_connect_from(None, None)


def test_address_hook_uses_the_real_client_address_and_certificate_username() -> None:
    files = AuthFiles(acl=AclFile.parse("user alice\naddress 203.0.113.0/24\n"))
    behind_proxy = attrs.evolve(PEER, client=Endpoint("203.0.113.7", 40000))
    assert files.acl_file_address(behind_proxy, connect("alice")) is None
    # from anywhere else (here 192.0.2.10) alice is refused; other users are not limited
    assert files.acl_file_address(PEER, connect("alice")) == ReasonCode.NOT_AUTHORIZED
    assert files.acl_file_address(PEER, connect("bob")) is None
    # a certificate's username overrides the one in CONNECT
    as_alice = attrs.evolve(PEER, username="alice")
    assert files.acl_file_address(as_alice, connect("bob")) == ReasonCode.NOT_AUTHORIZED


def test_missing_acl_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.acl"
    with pytest.raises(ConfigError, match="cannot read ACL file") as caught:
        AclFile.load(path)
    assert str(path) in str(caught.value)


def test_acl_hooks_use_the_certificate_username(acl: AclFile) -> None:
    publish = acl_publish_hook(acl)
    subscribe = acl_subscribe_hook(acl)
    alice_cert = PeerInfo(listener="tls", transport="tls", username="alice")
    # The core passes the effective username; the hooks also prefer PeerInfo.username.
    assert publish(PEER, "a1", "alice", "sensors/alice/t")
    assert not publish(PEER, "a1", "bob", "sensors/alice/t")
    assert publish(alice_cert, "a1", "bob", "sensors/alice/t")
    assert subscribe(PEER, "b1", "bob", "sensors/#")
    assert not subscribe(alice_cert, "b1", "bob", "sensors/#")


@pytest.mark.parametrize(
    ("peer", "username", "client_id", "will_topic", "expected"),
    [
        (PEER, "alice", "a1", None, None),
        (PEER, "alice", "a1", "sensors/alice/status", None),
        (PEER, "alice", "a1", "sensors/bob/status", ReasonCode.NOT_AUTHORIZED),
        (PEER, None, "anon", "public/gone", None),
        (PEER, None, "anon", "clients/anon/gone", None),
        (PEER, None, "", "clients//gone", ReasonCode.NOT_AUTHORIZED),  # id not yet assigned
        (PEER, "alice", "a1", "alerts/x", ReasonCode.NOT_AUTHORIZED),  # read only
        (CERT_PEER, "alice", "a1", "sensors/alice/status", ReasonCode.NOT_AUTHORIZED),
    ],
)
def test_acl_connect_hook_checks_the_will(
    acl: AclFile,
    peer: PeerInfo,
    username: str | None,
    client_id: str,
    will_topic: str | None,
    expected: ReasonCode | None,
) -> None:
    hook = acl_connect_hook(acl)
    packet = connect(username, b"pw", client_id=client_id, will_topic=will_topic)
    assert hook(peer, packet) == expected


# --------------------------------------------------------------------------- install_auth


def hook_names(hooks: Sequence[object]) -> list[str]:
    return [getattr(hook, "__name__", "?") for hook in hooks]


def test_install_auth_without_files_registers_nothing() -> None:
    core = make_core()
    install_auth(core, core.config)
    assert (core.connect_hooks, core.publish_hooks, core.subscribe_hooks) == ([], [], [])


def test_install_auth_registers_both(tmp_path: Path) -> None:
    passwd = tmp_path / "users.passwd"
    passwd.write_text(make_line("alice", b"pw") + "\n")
    os.chmod(passwd, 0o600)
    acl_path = tmp_path / "broker.acl"
    acl_path.write_text(EXAMPLE_ACL)
    core = make_core(password_file=str(passwd), acl_file=str(acl_path))
    install_auth(core, core.config)
    assert hook_names(core.connect_hooks) == ["password_file", "acl_file_address", "acl_file_will"]
    assert hook_names(core.publish_hooks) == ["acl_file_publish"]
    assert hook_names(core.subscribe_hooks) == ["acl_file_subscribe"]
    check_password = core.connect_hooks[0]
    assert decide(check_password(PEER, connect("alice", b"pw"))) is None
    refused = decide(check_password(PEER, connect("alice", b"no")))
    assert refused == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert core.publish_hooks[0](PEER, "a1", "alice", "sensors/alice/x")
    assert not core.subscribe_hooks[0](PEER, "a1", "alice", "sensors/#")


def test_install_auth_password_only(tmp_path: Path) -> None:
    passwd = tmp_path / "users.passwd"
    passwd.write_text(make_line("alice", b"pw") + "\n")
    core = make_core(password_file=str(passwd))
    install_auth(core, core.config)
    assert hook_names(core.connect_hooks) == ["password_file"]
    assert (core.publish_hooks, core.subscribe_hooks) == ([], [])


def test_install_auth_registers_nothing_when_a_file_is_bad(tmp_path: Path) -> None:
    passwd = tmp_path / "users.passwd"
    passwd.write_text(make_line("alice", b"pw") + "\n")
    acl_path = tmp_path / "broker.acl"
    acl_path.write_text("topic read a\nbogus line\n")
    core = make_core(password_file=str(passwd), acl_file=str(acl_path))
    with pytest.raises(ConfigError, match=r"broker\.acl: line 2: unknown keyword 'bogus'"):
        install_auth(core, core.config)
    assert (core.connect_hooks, core.publish_hooks, core.subscribe_hooks) == ([], [], [])


@pytest.mark.parametrize(
    ("setting", "alice_reads_public"), [("everyone", True), ("anonymous", False)]
)
def test_install_auth_applies_acl_topics_before_user(
    tmp_path: Path, setting: str, alice_reads_public: bool
) -> None:
    acl_path = tmp_path / "broker.acl"
    acl_path.write_text(SECTIONS_ACL)
    core = make_core(acl_file=str(acl_path), acl_topics_before_user=setting)
    files = install_auth(core, core.config)
    assert files is not None
    [read] = core.read_hooks
    assert read(PEER, "c1", None, "public/news")
    assert read(PEER, "c1", "alice", "public/news") is alice_reads_public
    files.reload()  # a reload keeps the setting
    assert read(PEER, "c1", "alice", "public/news") is alice_reads_public


def test_install_auth_warns_about_user_rules_without_passwords(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl_path = tmp_path / "broker.acl"
    acl_path.write_text("user alice\ntopic a/#\n")
    core = make_core(acl_file=str(acl_path))
    with caplog.at_level(logging.WARNING, logger="trio_mqtt.auth"):
        install_auth(core, core.config)
    assert any("clients can claim any username" in r.getMessage() for r in caplog.records)
