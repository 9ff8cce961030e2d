"""``python -m trio_mqtt.passwd``: add, replace and delete users, atomically, mode 0600.

The command is run in-process through ``main(argv, stdin=...)``; the subprocess round trip
(the real ``python -m`` entry point) is in tests/integration/test_auth_files.py.
"""

from __future__ import annotations

import getpass
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_mqtt.auth import PasswordFile, PasswordHash
from trio_mqtt.passwd import main

FAST = ["--iterations", "1000"]


def run(argv: list[str], stdin_text: str = "") -> int:
    return main(argv, stdin=io.StringIO(stdin_text))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def entry_of(path: Path, username: str) -> PasswordHash:
    return PasswordFile.load(path).users[username]


def test_add_creates_file_with_mode_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.passwd"
    assert run([*FAST, "--password-stdin", str(path), "alice"], "s3cret\n") == 0
    assert mode_of(path) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    username, _, stored = lines[0].partition(":")
    assert username == "alice"
    assert stored.startswith("$7$1000$")  # mosquitto_passwd's format
    assert PasswordFile.load(path).check("alice", b"s3cret")
    assert not PasswordFile.load(path).check("alice", b"s3cret\n")  # newline stripped
    assert capsys.readouterr().out == f"added 'alice' in {path}\n"
    assert os.listdir(tmp_path) == ["users.passwd"]  # no temporary file left behind


def test_default_iterations_are_210000(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    assert run(["--password-stdin", str(path), "alice"], "pw\n") == 0
    assert entry_of(path, "alice").iterations == 210_000


def test_stdin_password_keeps_inner_spaces_and_strips_crlf(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    assert run([*FAST, "--password-stdin", str(path), "bob"], " two words \r\nignored\n") == 0
    assert PasswordFile.load(path).check("bob", b" two words ")


def test_replace_keeps_other_lines_and_position(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    for user in ("alice", "bob", "carol"):
        assert run([*FAST, "--password-stdin", str(path), user], f"{user}-old\n") == 0
    original = path.read_text().splitlines()
    path.write_text("# operators\n" + "\n".join(original) + "\n\n# end\n")
    path.chmod(0o644)

    assert run([*FAST, "--password-stdin", str(path), "bob"], "bob-new\n") == 0
    lines = path.read_text().splitlines()
    assert lines[0] == "# operators"
    assert lines[1] == original[0]  # alice untouched, byte for byte
    assert lines[2].startswith("bob:") and lines[2] != original[1]
    assert lines[3] == original[2]
    assert lines[4:] == ["", "# end"]
    assert mode_of(path) == 0o600  # tightened on rewrite
    users = PasswordFile.load(path)
    assert users.check("bob", b"bob-new")
    assert not users.check("bob", b"bob-old")
    assert users.check("alice", b"alice-old")


def test_replace_removes_duplicate_lines_of_the_user(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    path.write_text("alice:plaintext-from-elsewhere\nbob:x\nalice:another\n")
    assert run([*FAST, "--password-stdin", str(path), "alice"], "fresh\n") == 0
    lines = path.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "bob"]
    assert lines[1] == "bob:x"
    assert entry_of_line(lines[0]).verify(b"fresh")


def entry_of_line(line: str) -> PasswordHash:
    return PasswordHash.parse(line.rpartition(":")[2])


def test_prompts_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []
    answers: Iterator[str] = iter(["typed-pw", "typed-pw"])

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    path = tmp_path / "users.passwd"
    assert run([*FAST, str(path), "alice"]) == 0
    assert prompts == ["Password: ", "Password (again): "]
    assert PasswordFile.load(path).check("alice", b"typed-pw")


def test_prompt_mismatch_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["one", "two"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    path = tmp_path / "users.passwd"
    assert run([*FAST, str(path), "alice"]) == 1
    assert not path.exists()
    assert capsys.readouterr().err == "error: the passwords do not match\n"


def test_prompt_end_of_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_input(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(getpass, "getpass", no_input)
    assert run([*FAST, str(tmp_path / "p"), "alice"]) == 1
    assert "no password given" in capsys.readouterr().err


def test_empty_password_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.passwd"
    assert run([*FAST, "--password-stdin", str(path), "alice"], "\n") == 1
    assert not path.exists()
    assert capsys.readouterr().err == "error: the password is empty\n"


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("", "the username is empty"),
        (" alice", "starts or ends with whitespace"),
        ("alice\t", "starts or ends with whitespace"),
        ("#alice", "starts with '#'"),
        ("ali\nce", "control character"),
        ("ali\x7fce", "control character"),
    ],
)
def test_bad_usernames_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], username: str, message: str
) -> None:
    path = tmp_path / "users.passwd"
    assert run([*FAST, "--password-stdin", str(path), username], "pw\n") == 1
    assert message in capsys.readouterr().err
    assert not path.exists()


def test_username_with_colon_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    assert run([*FAST, "--password-stdin", str(path), "urn:dev:7"], "pw\n") == 0
    assert PasswordFile.load(path).check("urn:dev:7", b"pw")
    assert run(["-D", str(path), "urn:dev:7"]) == 0
    assert dict(PasswordFile.load(path).users) == {}


def test_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.passwd"
    for user in ("alice", "bob"):
        assert run([*FAST, "--password-stdin", str(path), user], "pw\n") == 0
    bob_line = path.read_text().splitlines()[1]
    capsys.readouterr()
    assert run(["-D", str(path), "alice"]) == 0
    assert path.read_text() == bob_line + "\n"
    assert capsys.readouterr().out == f"deleted 'alice' from {path}\n"
    assert mode_of(path) == 0o600


def test_delete_unknown_user_leaves_file_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.passwd"
    path.write_text("# just a comment\n")
    path.chmod(0o640)
    assert run(["--delete", str(path), "alice"]) == 1
    assert path.read_text() == "# just a comment\n"
    assert mode_of(path) == 0o640
    assert capsys.readouterr().err == f"error: user 'alice' is not in {path}\n"


def test_delete_from_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-D", str(tmp_path / "none"), "alice"]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-3", "abc", "10000001"])
def test_bad_iterations_is_a_usage_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(SystemExit) as caught:
        run(["--iterations", value, "--password-stdin", str(tmp_path / "p"), "alice"], "pw\n")
    assert caught.value.code == 2


def test_failed_replace_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.passwd"
    assert run([*FAST, "--password-stdin", str(path), "alice"], "old\n") == 0
    before = path.read_text()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    assert run([*FAST, "--password-stdin", str(path), "alice"], "new\n") == 1
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["users.passwd"]  # the temporary file was removed
    assert "No space left on device" in capsys.readouterr().err
