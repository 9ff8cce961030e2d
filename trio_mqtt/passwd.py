"""``python -m trio_mqtt.passwd``: add, replace or delete a user in a password file.

::

    python -m trio_mqtt.passwd broker.passwd alice          # prompts twice
    printf '%s\\n' "$PW" | python -m trio_mqtt.passwd --password-stdin broker.passwd alice
    python -m trio_mqtt.passwd -D broker.passwd alice       # delete alice

Other lines (users, comments, blank lines) are kept as they are. The file is rewritten
atomically (a temporary file in the same directory, then ``os.replace``) with mode 0600,
so the broker never reads a half-written file.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from trio_mqtt.auth.passwords import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    hash_password,
    split_password_line,
)

__all__ = ["PasswdError", "delete_user", "main", "set_user", "validate_username"]

FILE_MODE = 0o600


class PasswdError(Exception):
    """A problem the command reports on stderr with exit status 1."""


def validate_username(username: str) -> None:
    """Refuse usernames the password file format cannot hold unambiguously."""
    if not username:
        raise PasswdError("the username is empty")
    if username != username.strip():
        raise PasswdError(f"username {username!r} starts or ends with whitespace")
    if username.startswith("#"):
        raise PasswdError(f"username {username!r} starts with '#', which marks a comment")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in username):
        raise PasswdError(f"username {username!r} contains a control character")


def _username_of(line: str) -> str | None:
    """The username a password file line is for (None for comments and blank lines)."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        return split_password_line(stripped)[0]
    except ValueError:
        return None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswdError(f"cannot read {path}: {exc}") from None


def _write_atomically(path: Path, lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in lines)
    directory = path.parent
    try:
        fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise PasswdError(f"cannot create a temporary file in {directory}: {exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp:
            os.fchmod(temp.fileno(), FILE_MODE)
            temp.write(text)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except OSError as exc:
        Path(temp_name).unlink(missing_ok=True)
        raise PasswdError(f"cannot write {path}: {exc}") from None


def set_user(
    path: str | os.PathLike[str],
    username: str,
    password: bytes,
    *,
    iterations: int = DEFAULT_ITERATIONS,
) -> bool:
    """Add *username* or replace its line; returns True if it replaced an existing user."""
    validate_username(username)
    if not password:
        raise PasswdError("the password is empty")
    target = Path(path)
    lines = _read_lines(target)
    entry = f"{username}:{hash_password(password, iterations=iterations).encode()}"
    kept: list[str] = []
    replaced = False
    for line in lines:
        if _username_of(line) != username:
            kept.append(line)
        elif not replaced:
            kept.append(entry)  # keep the user where it was
            replaced = True
    if not replaced:
        kept.append(entry)
    _write_atomically(target, kept)
    return replaced


def delete_user(path: str | os.PathLike[str], username: str) -> None:
    """Remove every line of *username*; ``PasswdError`` if the file has none."""
    target = Path(path)
    if not target.exists():
        raise PasswdError(f"{target} does not exist")
    lines = _read_lines(target)
    kept = [line for line in lines if _username_of(line) != username]
    if len(kept) == len(lines):
        raise PasswdError(f"user {username!r} is not in {target}")
    _write_atomically(target, kept)


def _read_password(from_stdin: bool, stdin: TextIO) -> bytes:
    if from_stdin:
        line = stdin.readline()
        return line.removesuffix("\n").removesuffix("\r").encode("utf-8")
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Password (again): ")
    except EOFError:
        raise PasswdError("no password given (end of input)") from None
    if first != second:
        raise PasswdError("the passwords do not match")
    return first.encode("utf-8")


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= MAX_ITERATIONS:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..{MAX_ITERATIONS}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_mqtt.passwd",
        description="Add, replace or delete a user in a trio-mqtt password file.",
    )
    parser.add_argument("file", help="the password file (created if missing)")
    parser.add_argument("username")
    parser.add_argument(
        "-D", "--delete", action="store_true", help="delete the user instead of setting it"
    )
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )
    parser.add_argument(
        "--iterations",
        type=_iterations,
        default=DEFAULT_ITERATIONS,
        help=f"PBKDF2 rounds (default {DEFAULT_ITERATIONS})",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 error, 2 usage)."""
    args = _parser().parse_args(argv)
    try:
        if args.delete:
            delete_user(args.file, args.username)
            print(f"deleted {args.username!r} from {args.file}")
            return 0
        validate_username(args.username)
        password = _read_password(args.password_stdin, stdin or sys.stdin)
        replaced = set_user(args.file, args.username, password, iterations=args.iterations)
    except PasswdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'updated' if replaced else 'added'} {args.username!r} in {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
