"""``trio-mqtt-passwd`` (``python -m trio_mqtt.passwd``): mosquitto_passwd's interface.

Users are added, replaced and deleted atomically; new files get mode 0600.

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

from trio_mqtt.auth import PasswordFile, PasswordHash, hash_password
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
    assert mode_of(path) == 0o640  # its mode is kept, minus access for others
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


# --------------------------------------------------------------------- mosquitto_passwd's flags


def test_console_script_is_the_same_entry_point() -> None:
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["trio-mqtt-passwd"] == "trio_mqtt.passwd:main"


def test_batch_mode_takes_the_password_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    assert run([*FAST, "-b", str(path), "alice", "alice pw"]) == 0
    assert run([*FAST, "-b", str(path), "bob", "--", "-starts-with-dash"]) == 0
    users = PasswordFile.load(path)
    assert users.check("alice", b"alice pw")
    assert users.check("bob", b"-starts-with-dash")
    assert mode_of(path) == 0o600


def test_create_overwrites_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.passwd"
    path.write_text("# old\nold:whatever\n")
    assert run([*FAST, "-c", "-b", str(path), "alice", "pw"]) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alice:$7$1000$")
    assert capsys.readouterr().out == f"added 'alice' in {path}\n"


def test_create_prompts_like_the_plain_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "typed")
    path = tmp_path / "new.passwd"
    assert run([*FAST, "-c", str(path), "alice"]) == 0
    assert PasswordFile.load(path).check("alice", b"typed")
    assert mode_of(path) == 0o600


def test_hash_type_sha512_writes_mosquitto_16_entries(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    assert run(["-H", "sha512", "-b", str(path), "alice", "pw"]) == 0
    stored = entry_of(path, "alice")
    assert (stored.scheme, len(stored.salt)) == ("6", 12)
    assert path.read_text().startswith("alice:$6$")
    assert PasswordFile.load(path).check("alice", b"pw")
    assert run(["-H", "sha512-pbkdf2", "-I", "2000", "-b", str(path), "alice", "pw2"]) == 0
    assert (entry_of(path, "alice").scheme, entry_of(path, "alice").iterations) == ("7", 2000)


def test_short_iterations_option(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    assert run(["-I", "1234", "-b", str(path), "alice", "pw"]) == 0
    assert entry_of(path, "alice").iterations == 1234


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-H", "md5", "-b", "F", "alice", "pw"], "invalid choice: 'md5'"),
        (["-I", "0", "-b", "F", "alice", "pw"], "0 is not in 1..10000000"),
        (["-c", "-D", "F", "alice"], "-c and -D cannot be used together"),
        (["-c", "-U", "F"], "-c and -U cannot be used together"),
        (["-D", "-U", "F"], "-D and -U cannot be used together"),
        (["-b", "-D", "F", "alice", "pw"], "-b and -D cannot be used together"),
        (["-b", "F", "alice"], "-b takes FILE, USERNAME and PASSWORD, but 2 operand(s)"),
        (["F", "alice", "extra"], "takes FILE and USERNAME, but 3 operand(s)"),
        (["-U", "F", "alice"], "-U takes FILE, but 2 operand(s)"),
        ([], "takes FILE and USERNAME, but 0 operand(s)"),
        (["--password-stdin", "-b", "F", "a", "pw"], "--password-stdin goes with neither"),
        (["-Z", "F", "alice"], "unrecognized arguments: -Z"),
    ],
)
def test_bad_arguments_print_usage_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        run(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: trio-mqtt-passwd ")
    assert message in err
    assert os.listdir(tmp_path) == []


def test_upgrade_hashes_plaintext_entries_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.passwd"
    kept = f"carol:{hash_password(b'carol-pw', iterations=1000).encode()}"
    path.write_text(f"# users\nalice:alice-pw\n\n{kept}\n bob : two words \n")
    path.chmod(0o640)
    assert run([*FAST, "-U", str(path)]) == 0
    assert (
        capsys.readouterr().out == f"hashed 2 plaintext password(s) in {path}; 1 already hashed\n"
    )
    lines = path.read_text().splitlines()
    assert lines[0] == "# users" and lines[2] == "" and lines[3] == kept
    assert lines[1].startswith("alice:$7$1000$") and lines[4].startswith("bob:$7$1000$")
    users = PasswordFile.load(path)
    assert users.check("alice", b"alice-pw")
    assert users.check("bob", b"two words")  # blanks around fields trimmed, as mosquitto does
    assert users.check("carol", b"carol-pw")
    assert mode_of(path) == 0o640

    before = path.read_text()
    assert run([*FAST, "-U", str(path)]) == 0  # nothing is hashed twice
    assert path.read_text() == before
    assert (
        capsys.readouterr().out == f"hashed 0 plaintext password(s) in {path}; 3 already hashed\n"
    )


def test_upgrade_with_sha512(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    path.write_text("alice:alice-pw\n")
    assert run(["-H", "sha512", "-U", str(path)]) == 0
    assert path.read_text().startswith("alice:$6$")
    assert PasswordFile.load(path).check("alice", b"alice-pw")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("alice:a\nbob:pass:word\n", "line 2: more than one ':', so the username cannot"),
        ("alice:a\nbob:$7$1000$xx$yy\n", "line 2: salt is not valid base64"),
        ("alice:a\nbob:\n", "line 2: the password is empty"),
        ("alice:a\njust-a-name\n", "line 2: expected 'username:password'"),
        ("alice:a\n#x:pw\n :pw\n", "line 3: the username is empty"),
    ],
)
def test_upgrade_refuses_lines_it_cannot_read_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "users.passwd"
    path.write_text(content)
    assert run([*FAST, "-U", str(path)]) == 1
    assert path.read_text() == content
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {message}")
    assert err.count("\n") == 1


def test_upgrade_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-U", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_rewrite_goes_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.passwd"
    link = tmp_path / "link.passwd"
    assert run([*FAST, "-b", str(real), "alice", "pw"]) == 0
    link.symlink_to(real)
    assert run([*FAST, "-b", str(link), "bob", "pw"]) == 0
    assert link.is_symlink()
    assert set(PasswordFile.load(real).users) == {"alice", "bob"}


def test_rewrite_keeps_group_readable_mode(tmp_path: Path) -> None:
    path = tmp_path / "users.passwd"
    assert run([*FAST, "-b", str(path), "alice", "pw"]) == 0
    path.chmod(0o640)  # e.g. root:mosquitto, read by the broker's group
    assert run([*FAST, "-b", str(path), "bob", "pw"]) == 0
    assert mode_of(path) == 0o640
    assert run(["-D", str(path), "bob"]) == 0
    assert mode_of(path) == 0o640
    assert run([*FAST, "-c", "-b", str(path), "carol", "pw"]) == 0
    assert mode_of(path) == 0o640
