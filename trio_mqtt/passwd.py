"""``trio-mqtt-passwd``: manage a password file, with mosquitto_passwd's interface.

::

    trio-mqtt-passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c | -D] FILE USERNAME
    trio-mqtt-passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c] -b FILE USERNAME PASSWORD
    trio-mqtt-passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] -U FILE

Without ``-b`` the password is asked for twice, without echo (or read from the first line
of standard input with ``--password-stdin``). ``-c`` creates the file, overwriting it;
``-D`` deletes the user; ``-U`` hashes, in place, every entry whose password is not yet a
hash (entries already hashed are kept as they are, never hashed twice). The same command
is ``python -m trio_mqtt.passwd``.

New entries are ``$7$`` hashes (PBKDF2-HMAC-SHA512, 210,000 rounds unless ``-I``), which
mosquitto reads too; ``-H sha512`` writes mosquitto 1.6's ``$6$`` (one salted SHA-512: fast
to brute-force, only for brokers that read nothing else). Other lines (users, comments,
blank lines) are kept as they are. The file is rewritten atomically (a temporary file in
the same directory, then ``os.replace``), so the broker never reads a half-written file:
a new file gets mode 0600; an existing one (also with ``-c``) keeps its owner, group and
mode, minus any access for other users (so a ``root:mosquitto`` 0640 file stays readable
by the broker's group).

Exit status: 0 done, 1 error (the reason is on standard error), 2 bad arguments (usage).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from trio_mqtt.auth.passwords import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    SCHEME_PBKDF2,
    SCHEME_SHA512,
    PasswordHash,
    UnknownHashFormat,
    hash_password,
    split_password_line,
)

__all__ = [
    "PasswdError",
    "delete_user",
    "hash_plaintext_entries",
    "main",
    "set_user",
    "validate_username",
]

PROG = "trio-mqtt-passwd"
FILE_MODE = 0o600
#: ``-H`` names (mosquitto_passwd's) -> hash scheme.
HASH_TYPES = {"sha512-pbkdf2": SCHEME_PBKDF2, "sha512": SCHEME_SHA512}

USAGE = f"""\
{PROG} [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c | -D] FILE USERNAME
       {PROG} [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c] -b FILE USERNAME PASSWORD
       {PROG} [-H sha512-pbkdf2|sha512] [-I ITERATIONS] -U FILE"""


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


def _target(path: str | os.PathLike[str]) -> Path:
    # Follow a symbolic link, so the rename replaces the file it points to, not the link.
    return Path(os.path.realpath(path))


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswdError(f"cannot read {path}: {exc}") from None


def _keep_metadata(fd: int, old: os.stat_result) -> None:
    """Give the new file the old one's owner, group and mode, minus access for others."""
    os.fchmod(fd, stat.S_IMODE(old.st_mode) & ~0o007)
    new = os.fstat(fd)
    if (new.st_uid, new.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        # not root: we may still give it the old group, if we are in it
        with contextlib.suppress(PermissionError):
            os.fchown(fd, -1, old.st_gid)
    new = os.fstat(fd)
    if (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
        print(
            f"warning: the rewritten file is owned by uid {new.st_uid} gid {new.st_gid}, "
            f"not uid {old.st_uid} gid {old.st_gid} as before: check the broker can read it",
            file=sys.stderr,
        )


def _write_atomically(path: Path, lines: list[str]) -> None:
    """Replace *path* by *lines*, atomically (see the module doc for the mode)."""
    try:
        old: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise PasswdError(f"cannot read {path}: {exc.strerror}") from None
    text = "".join(f"{line}\n" for line in lines)
    directory = path.parent
    try:
        fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise PasswdError(f"cannot create a temporary file in {directory}: {exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp:
            if old is None:
                os.fchmod(temp.fileno(), FILE_MODE)
            else:
                _keep_metadata(temp.fileno(), old)
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
    scheme: str = SCHEME_PBKDF2,
    create: bool = False,
) -> bool:
    """Add *username* or replace its line; returns True if it replaced an existing user.

    *create* starts a new file holding only this user (replacing any file at *path*).
    """
    validate_username(username)
    if not password:
        raise PasswdError("the password is empty")
    target = _target(path)
    lines = [] if create else _read_lines(target)
    stored = hash_password(password, iterations=iterations, scheme=scheme)
    entry = f"{username}:{stored.encode()}"
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
    target = _target(path)
    if not target.exists():
        raise PasswdError(f"{path} does not exist")
    lines = _read_lines(target)
    kept = [line for line in lines if _username_of(line) != username]
    if len(kept) == len(lines):
        raise PasswdError(f"user {username!r} is not in {path}")
    _write_atomically(target, kept)


def hash_plaintext_entries(
    path: str | os.PathLike[str],
    *,
    iterations: int = DEFAULT_ITERATIONS,
    scheme: str = SCHEME_PBKDF2,
) -> tuple[int, int]:
    """Hash every ``username:plaintext`` line of *path* in place (``-U``).

    Lines already holding a hash in an accepted format are kept as they are (unlike
    mosquitto_passwd -U, running it twice does no harm). Returns (hashed, already
    hashed). A line that starts like a hash but is not a valid one, or whose username
    cannot be told from its password (more than one ``:``), is an error naming the line;
    the file is then left untouched.
    """
    target = _target(path)
    if not target.exists():
        raise PasswdError(f"{path} does not exist")
    lines = _read_lines(target)
    out: list[str] = []
    hashed = already = 0
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            out.append(line)
            continue
        where = f"{path}: line {number}"
        try:
            username, stored = split_password_line(stripped)
        except ValueError:
            raise PasswdError(f"{where}: expected 'username:password'") from None
        try:
            PasswordHash.parse(stored.strip())
        except UnknownHashFormat:
            pass
        except ValueError as exc:
            raise PasswdError(f"{where}: {exc}") from None
        else:
            out.append(line)
            already += 1
            continue
        username, _colon, password = stripped.partition(":")
        if ":" in password:
            raise PasswdError(
                f"{where}: more than one ':', so the username cannot be told from the "
                "password: fix the line by hand, or set that user's password with "
                f"'{PROG} {path} USERNAME'"
            )
        username, password = username.strip(), password.strip()
        try:
            validate_username(username)
        except PasswdError as exc:
            raise PasswdError(f"{where}: {exc}") from None
        if not password:
            raise PasswdError(f"{where}: the password is empty")
        new = hash_password(password.encode("utf-8"), iterations=iterations, scheme=scheme)
        out.append(f"{username}:{new.encode()}")
        hashed += 1
    if hashed:
        _write_atomically(target, out)
    return hashed, already


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
        prog=PROG,
        usage=USAGE,
        description=(
            "Add, replace or delete a user in a password file that trio-mqtt and "
            "mosquitto both read (the interface of mosquitto_passwd)."
        ),
        epilog=(
            "Also run as 'python -m trio_mqtt.passwd'. Exit status: 0 done, 1 error, "
            "2 bad arguments."
        ),
    )
    parser.add_argument(
        "-H",
        dest="hash_type",
        choices=list(HASH_TYPES),
        default="sha512-pbkdf2",
        help="hash of new entries: sha512-pbkdf2 ($7$, the default) or sha512 ($6$, one "
        "salted SHA-512, only for mosquitto 1.6 and older: fast to brute-force)",
    )
    parser.add_argument(
        "-I",
        "--iterations",
        type=_iterations,
        default=DEFAULT_ITERATIONS,
        metavar="ITERATIONS",
        help=f"PBKDF2 rounds of new sha512-pbkdf2 entries (default {DEFAULT_ITERATIONS})",
    )
    parser.add_argument(
        "-c", dest="create", action="store_true", help="create the file, overwriting it"
    )
    parser.add_argument(
        "-b",
        dest="batch",
        action="store_true",
        help="take the password from the command line (other users can see it in the "
        "process list: prefer --password-stdin)",
    )
    parser.add_argument(
        "-D", "--delete", action="store_true", help="delete the user instead of setting it"
    )
    parser.add_argument(
        "-U",
        dest="upgrade",
        action="store_true",
        help="hash, in place, every entry whose password is plaintext",
    )
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )
    parser.add_argument("operands", nargs="*", metavar="FILE USERNAME [PASSWORD]")
    return parser


def _check_combination(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """mosquitto_passwd's rules on which options go together (usage errors: exit 2)."""
    flags = {"-c": args.create, "-D": args.delete, "-U": args.upgrade, "-b": args.batch}
    for first, second in (("-c", "-D"), ("-c", "-U"), ("-D", "-U"), ("-b", "-D"), ("-b", "-U")):
        if flags[first] and flags[second]:
            parser.error(f"{first} and {second} cannot be used together")
    if args.password_stdin and (args.batch or args.delete or args.upgrade):
        parser.error("--password-stdin goes with neither -b, -D nor -U")
    wanted = 1 if args.upgrade else 3 if args.batch else 2
    names = {1: "FILE", 2: "FILE and USERNAME", 3: "FILE, USERNAME and PASSWORD"}[wanted]
    if len(args.operands) != wanted:
        option = next((flag for flag in ("-U", "-b") if flags[flag]), None)
        prefix = f"{option} " if option else ""
        parser.error(f"{prefix}takes {names}, but {len(args.operands)} operand(s) were given")


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 error, 2 usage)."""
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    _check_combination(parser, args)
    scheme = HASH_TYPES[args.hash_type]
    file = args.operands[0]
    try:
        if args.upgrade:
            hashed, already = hash_plaintext_entries(
                file, iterations=args.iterations, scheme=scheme
            )
            print(f"hashed {hashed} plaintext password(s) in {file}; {already} already hashed")
            return 0
        username = args.operands[1]
        if args.delete:
            delete_user(file, username)
            print(f"deleted {username!r} from {file}")
            return 0
        validate_username(username)
        if args.batch:
            password = os.fsencode(args.operands[2])
        else:
            password = _read_password(args.password_stdin, stdin or sys.stdin)
        replaced = set_user(
            file,
            username,
            password,
            iterations=args.iterations,
            scheme=scheme,
            create=args.create,
        )
    except PasswdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'updated' if replaced else 'added'} {username!r} in {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
