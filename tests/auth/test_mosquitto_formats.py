"""Password files in mosquitto_passwd's formats: ``$7$`` (PBKDF2-SHA512) and ``$6$`` (SHA-512).

The files are made by Debian's real ``mosquitto_passwd`` (package mosquitto); without it
those tests skip, or fail under ``TRIO_MQTT_REQUIRE_TOOLS=1`` (see tests/tools.py). The
layouts are from mosquitto's src/password_mosq.c and src/security_default.c: a 12-byte
salt and a 64-byte hash in standard base64; ``$7$`` is PBKDF2-HMAC-SHA512 with the given
iterations, ``$6$`` is ``sha512(password + salt)``.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest
from tools import require_tool

from trio_mqtt.auth import PasswordFile, PasswordHash, hash_password
from trio_mqtt.auth.passwords import SCHEME_SHA512, SCHEME_TRIO_PBKDF2
from trio_mqtt.errors import ConfigError

# The published PBKDF2-HMAC-SHA512 vector (also in test_auth.py).
VECTOR_PASSWORD = b"passwordPASSWORDpassword"
VECTOR_SALT = b"saltSALTsaltSALTsaltSALTsaltSALTsalt"
VECTOR_DIGEST = bytes.fromhex(
    "8c0511f4c6e597c6ac6315d8f0362e225f3c501495ba23b868c005174dc4ee71"
    "115b59f9e60cd9532fa33e0f75aefe30225c583a186cd82bd4daea9724a3d3b8"
)
SALT12 = bytes(range(12))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def mosquitto_passwd(*args: str) -> None:
    """Run Debian's mosquitto_passwd; it must succeed."""
    program = require_tool("mosquitto_passwd")
    result = subprocess.run(
        [program, *args], capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)


# --------------------------------------------------------------------------- layouts


def test_published_pbkdf2_vector_in_mosquitto_layout() -> None:
    text = f"$7$4096${b64(VECTOR_SALT)}${b64(VECTOR_DIGEST)}"
    stored = PasswordHash.parse(text)
    assert (stored.scheme, stored.iterations) == ("7", 4096)
    assert stored.verify(VECTOR_PASSWORD)
    assert not stored.verify(VECTOR_PASSWORD + b"x")
    assert stored.encode() == text


def test_sha512_layout_is_password_then_salt() -> None:
    right = PasswordHash.parse(f"$6${b64(SALT12)}${b64(hashlib.sha512(b'pw' + SALT12).digest())}")
    assert (right.scheme, right.iterations) == ("6", 1)
    assert right.verify(b"pw")
    assert not right.verify(b"pw2")
    swapped = f"$6${b64(SALT12)}${b64(hashlib.sha512(SALT12 + b'pw').digest())}"
    assert not PasswordHash.parse(swapped).verify(b"pw")


def test_new_hashes_are_mosquitto_pbkdf2_with_a_12_byte_salt() -> None:
    made = hash_password(b"pw", iterations=1000)
    salt, digest = made.encode().split("$")[3:]
    assert made.encode().startswith("$7$1000$")
    assert len(base64.b64decode(salt)) == 12
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac("sha512", b"pw", made.salt, 1000)
    sha = hash_password(b"pw", scheme=SCHEME_SHA512)
    assert sha.encode().startswith("$6$") and sha.encode().count("$") == 3
    assert PasswordHash.parse(sha.encode()).verify(b"pw")


def test_our_old_format_is_still_read() -> None:
    old = hash_password(b"pw", iterations=1000, scheme=SCHEME_TRIO_PBKDF2)
    assert old.encode().startswith("$pbkdf2-sha512$1000$")
    assert len(old.salt) == 16
    assert PasswordHash.parse(old.encode()).verify(b"pw")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"$7${b64(SALT12)}${b64(bytes(64))}", "a $7$ hash has the form $7$<iterations>$"),
        (f"$6$101${b64(SALT12)}${b64(bytes(64))}", "a $6$ hash has the form $6$<salt>$<hash>"),
        (f"$7$0${b64(SALT12)}${b64(bytes(64))}", "iteration count '0'"),
        (f"$7$101${b64(SALT12)}${b64(bytes(63))}", "hash is 63 bytes; $7$ hashes are 64"),
        (f"$6${b64(SALT12)}$not-base64", "hash is not valid base64"),
        ("$2y$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234", "accepted formats"),
    ],
    ids=["7-no-iterations", "6-with-iterations", "7-zero-rounds", "7-short", "6-bad-b64", "2y"],
)
def test_parse_rejects_mosquitto_layouts(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("$", r"\$")):
        PasswordHash.parse(text)


def test_unknown_format_error_names_file_line_and_formats(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    path.write_text(f"# users\nbob:$7$101${b64(SALT12)}${b64(bytes(64))}\nalice:$2y$10$Secret\n")
    with pytest.raises(ConfigError) as caught:
        PasswordFile.load(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: line 3: not a password hash: accepted formats are ")
    for layout in ("$7$<iterations>$<salt>$<hash>", "$6$<salt>$<hash>", "$pbkdf2-sha512$"):
        assert layout in text
    assert f"trio-mqtt-passwd -U {path}" in text
    assert "Secret" not in text
    assert "plaintext passwords are not accepted" not in text


# --------------------------------------------------------------------------- real mosquitto_passwd


def test_reads_a_file_made_by_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto.passwd"
    mosquitto_passwd("-c", "-b", "-I", "1000", str(path), "alice", "alice-pw")
    mosquitto_passwd("-b", str(path), "bob", "sécret with spaces")  # its default: 101 rounds
    mosquitto_passwd("-H", "sha512", "-b", str(path), "carol", "carol-pw")
    users = PasswordFile.load(path)
    assert {name: (h.scheme, h.iterations) for name, h in users.users.items()} == {
        "alice": ("7", 1000),
        "bob": ("7", 101),
        "carol": ("6", 1),
    }
    assert users.check("alice", b"alice-pw")
    assert users.check("bob", "sécret with spaces".encode())
    assert users.check("carol", b"carol-pw")
    assert not users.check("alice", b"alice-pw ")
    assert not users.check("bob", b"alice-pw")
    assert not users.check("carol", b"carol-PW")
    assert not users.check("dave", b"alice-pw")


def test_reads_a_file_upgraded_by_mosquitto_passwd_u(tmp_path: Path) -> None:
    path = tmp_path / "mosquitto.passwd"
    path.write_text("alice:alice-pw\nbob:bob-pw\n")
    mosquitto_passwd("-U", str(path))
    users = PasswordFile.load(path)
    assert users.check("alice", b"alice-pw")
    assert users.check("bob", b"bob-pw")
    assert not users.check("alice", b"bob-pw")


def test_mosquitto_passwd_keeps_our_entries_readable(tmp_path: Path) -> None:
    """mosquitto_passwd edits a file our hash_password wrote, and we still read all of it."""
    path = tmp_path / "mixed.passwd"
    ours = hash_password(b"ours-pw", iterations=1000)
    path.write_text(f"ours:{ours.encode()}\n")
    mosquitto_passwd("-b", str(path), "theirs", "theirs-pw")
    users = PasswordFile.load(path)
    assert users.check("ours", b"ours-pw")
    assert users.check("theirs", b"theirs-pw")
