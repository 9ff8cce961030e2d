"""``trio-mqtt --from-mosquitto``: a mosquitto.conf as trio-mqtt TOML (trio_mqtt/mosquitto_conf.py).

Every converted text is written to a file and read back with ``load_config``, the way a
user runs it. The files Debian's mosquitto package ships are converted too; without them
those tests skip, or fail under ``TRIO_MQTT_REQUIRE_TOOLS=1`` (see tests/tools.py).
"""

from __future__ import annotations

import gzip
import re
import textwrap
import tomllib
from pathlib import Path

import pytest
from tools import REQUIRE_TOOLS_ENV, tools_required

from trio_mqtt import cli
from trio_mqtt.config import BrokerConfig, ProxyMode, Transport, load_config
from trio_mqtt.errors import ConfigError
from trio_mqtt.mosquitto_conf import Conversion, convert, include_order

DEBIAN_EXAMPLES = Path("/usr/share/doc/mosquitto/examples")
DEBIAN_CONF = Path("/etc/mosquitto/mosquitto.conf")


def loaded(conversion: Conversion, tmp_path: Path) -> BrokerConfig:
    """What load_config makes of the converted text, written next to *tmp_path*'s files."""
    path = tmp_path / "converted.toml"
    path.write_text(conversion.toml, encoding="utf-8")
    config = load_config(path)
    assert config == conversion.config
    return config


def unmapped(conversion: Conversion) -> dict[int, str]:
    """Line number -> the unmapped line's text (one file)."""
    return {item.line: item.text for item in conversion.unmapped}


def conf(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --------------------------------------------------------------------------- Debian's files


def debian_file(path: Path) -> Path:
    if path.exists():
        return path
    message = f"{path} not installed (Debian package mosquitto)"
    if tools_required():
        pytest.fail(f"{message} but {REQUIRE_TOOLS_ENV}=1", pytrace=False)
    pytest.skip(f"{message}; set {REQUIRE_TOOLS_ENV}=1 to make this a failure")


def debian_examples() -> list[Path]:
    found = sorted(DEBIAN_EXAMPLES.glob("mosquitto.conf*")) if DEBIAN_EXAMPLES.is_dir() else []
    return found or [DEBIAN_EXAMPLES / "mosquitto.conf"]


@pytest.mark.parametrize("path", debian_examples(), ids=lambda path: path.name)
def test_debians_example_config_converts(path: Path, tmp_path: Path) -> None:
    # every line of the example is a comment: mosquitto's defaults, no listener
    data = debian_file(path).read_bytes()
    text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    conversion = convert(text, file=path.name)
    assert conversion.unmapped == ()
    config = loaded(conversion, tmp_path)
    assert config.listeners == BrokerConfig().listeners  # 127.0.0.1:1883, local only
    assert config.allow_anonymous is True  # mosquitto 2.x's default without listeners


def test_debians_etc_config_converts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = debian_file(DEBIAN_CONF)
    assert cli.main(["--from-mosquitto", str(path)]) == 0
    out, err = capsys.readouterr()
    converted = tmp_path / "broker.toml"
    converted.write_text(out, encoding="utf-8")
    config = load_config(converted)
    assert config.persistence == "/var/lib/mosquitto/mosquitto.sqlite3"
    assert config.allow_anonymous is True
    lines = path.read_text().splitlines()
    for option in ("pid_file", "log_dest"):
        number = next(n for n, line in enumerate(lines, 1) if line.startswith(option))
        assert f"not mapped: {path}:{number}: {option} " in err
        assert f"# - {path}:{number}: {option} " in out


# --------------------------------------------------------------------------- hand-written


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Empty certificate, password and ACL files (load_config checks that they exist)."""
    for name in ("ca.pem", "server.pem", "server.key", "passwd", "acl", "other.acl"):
        (tmp_path / name).write_text("")
    return tmp_path


def test_every_mapped_option(files: Path) -> None:
    text = conf(f"""
        # comments and blank lines are skipped

        allow_anonymous true
        password_file {files}/passwd
        acl_file {files}/acl
        max_keepalive 60
        max_queued_messages 500
        max_packet_size 65536
        max_inflight_messages 10
        retain_available false
        sys_interval 30
        persistence true
        persistence_location /var/lib/mosquitto/
        persistence_file broker.db

        listener 1883
        max_connections 500

        listener 8883 ::1
        cafile {files}/ca.pem
        certfile {files}/server.pem
        keyfile {files}/server.key
        require_certificate true
        use_identity_as_username true

        listener 9001 127.0.0.1
        protocol websockets

        listener 9002
        protocol websockets
        certfile {files}/server.pem
        keyfile {files}/server.key

        listener 1884 10.0.0.1
        enable_proxy_protocol 2
        max_connections -1

        listener 1885 localhost
        enable_proxy_protocol 1
    """)
    conversion = convert(text)
    assert conversion.unmapped == ()
    config = loaded(conversion, files)
    assert config.allow_anonymous is True
    assert config.password_file == f"{files}/passwd"
    assert config.acl_file == f"{files}/acl"
    assert config.acl_topics_before_user.value == "anonymous"
    assert (config.max_keepalive, config.max_queued_messages) == (60, 500)
    assert (config.max_packet_size, config.max_inflight_messages) == (65536, 10)
    assert (config.retain_available, config.sys_interval) == (False, 30)
    assert config.persistence == "/var/lib/mosquitto/broker.sqlite3"
    assert "/var/lib/mosquitto/broker.db has another format" in conversion.toml

    plain, tls, ws, wss, proxy_v2, proxy_v1 = config.listeners
    assert (plain.bind, plain.transport, plain.max_connections) == (
        "0.0.0.0:1883",
        Transport.TCP,
        500,
    )
    assert (tls.bind, tls.transport) == ("[::1]:8883", Transport.TLS)
    assert tls.tls is not None
    assert (tls.tls.certfile, tls.tls.keyfile, tls.tls.cafile) == (
        f"{files}/server.pem",
        f"{files}/server.key",
        f"{files}/ca.pem",
    )
    assert tls.tls.require_client_cert and tls.tls.use_identity_as_username
    assert (ws.bind, ws.transport, ws.tls) == ("127.0.0.1:9001", Transport.WS, None)
    assert (wss.bind, wss.transport) == ("0.0.0.0:9002", Transport.WSS)
    assert wss.tls is not None and wss.tls.cafile is None
    assert proxy_v2.proxy_protocol.mode is ProxyMode.REQUIRED
    assert proxy_v2.max_connections == BrokerConfig().listeners[0].max_connections
    assert (proxy_v1.bind, proxy_v1.proxy_protocol.mode) == ("localhost:1885", ProxyMode.REQUIRED)
    assert len({listener.name for listener in config.listeners}) == 6
    # each value names its line
    assert "max_keepalive = 60  # mosquitto.conf:6" in conversion.toml


def test_allow_anonymous_is_written_with_mosquitto_2s_default(tmp_path: Path) -> None:
    # a listener and no allow_anonymous: mosquitto 2.x refuses anonymous clients
    conversion = convert("listener 1883\n")
    assert "allow_anonymous = false  # mosquitto 2.x's default with a listener" in (conversion.toml)
    assert loaded(conversion, tmp_path).allow_anonymous is False
    # the deprecated port option is a listener too
    config = loaded(convert("port 1884\n"), tmp_path)
    assert config.allow_anonymous is False
    assert [listener.bind for listener in config.listeners] == ["0.0.0.0:1884"]
    # no listener at all: local only, anonymous allowed
    config = loaded(convert("max_keepalive 30\n"), tmp_path)
    assert config.allow_anonymous is True
    assert config.listeners == BrokerConfig().listeners


def test_port_and_bind_address_make_the_default_listener(tmp_path: Path) -> None:
    text = conf("""
        bind_address 127.0.0.1
        port 1999
        certfile server.pem
        listener 2000
    """)
    conversion = convert(text)
    names = unmapped(conversion)
    assert list(names) == [3]  # certfile without keyfile: no TLS
    assert "TLS needs both certfile and keyfile" in conversion.unmapped[0].reason
    config = loaded(conversion, tmp_path)
    assert [listener.bind for listener in config.listeners] == [
        "127.0.0.1:1999",
        "0.0.0.0:2000",
    ]


def test_options_for_a_default_listener_that_is_not_started(tmp_path: Path) -> None:
    conversion = convert("protocol websockets\nlistener 1883\n")
    assert unmapped(conversion) == {1: "protocol websockets"}
    assert "not started" in conversion.unmapped[0].reason
    assert [listener.transport for listener in loaded(conversion, tmp_path).listeners] == [
        Transport.TCP
    ]


def test_unmapped_lines_are_named_with_their_line_number(tmp_path: Path) -> None:
    text = conf("""
        pid_file /run/mosquitto/mosquitto.pid
        # a comment
        listener 1883
        mount_point site/
        max_queued_messages 0
        protocol http
        listener 0 /run/mosquitto.sock
        max_connections 10
        no_such_option 1
        enable_proxy_protocol 3
        allow_anonymous maybe
        include_dir /etc/mosquitto/conf.d
    """)
    conversion = convert(text)
    assert unmapped(conversion) == {
        1: "pid_file /run/mosquitto/mosquitto.pid",
        4: "mount_point site/",
        5: "max_queued_messages 0",
        6: "protocol http",
        7: "listener 0 /run/mosquitto.sock",
        8: "max_connections 10",  # belongs to the UNIX socket listener
        9: "no_such_option 1",
        10: "enable_proxy_protocol 3",
        11: "allow_anonymous maybe",
        12: "include_dir /etc/mosquitto/conf.d",  # no reader given
    }
    # ... as comments on top of the TOML
    for item in conversion.unmapped:
        assert f"# - mosquitto.conf:{item.line}: {item.text} (" in conversion.toml
    config = loaded(conversion, tmp_path)
    assert [listener.bind for listener in config.listeners] == ["0.0.0.0:1883"]
    assert config.listeners[0].max_connections == BrokerConfig().listeners[0].max_connections


def test_per_listener_settings_map_when_trio_mqtt_can_mirror_them(files: Path) -> None:
    text = conf(f"""
        per_listener_settings true
        listener 1883
        allow_anonymous true
        password_file {files}/passwd
        acl_file {files}/acl
        listener 1884
        password_file {files}/passwd
        acl_file {files}/other.acl
    """)
    conversion = convert(text)
    # the second listener refuses anonymous clients (unset: false), so one setting for
    # both cannot allow them; it has another ACL file
    assert unmapped(conversion) == {3: "allow_anonymous true", 8: f"acl_file {files}/other.acl"}
    config = loaded(conversion, files)
    assert config.allow_anonymous is False
    assert (config.password_file, config.acl_file) == (f"{files}/passwd", f"{files}/acl")
    # when every listener allows anonymous clients, so does the converted config
    text = "per_listener_settings true\nlistener 1\nallow_anonymous true\n"
    assert loaded(convert(text), files).allow_anonymous is True


def test_include_dir_is_read_in_mosquittos_order(tmp_path: Path) -> None:
    assert sorted(
        ["b.conf", "A.conf", "01.conf", "a.conf", "B.conf", "00.conf"], key=include_order
    ) == [
        "00.conf",
        "01.conf",
        "A.conf",
        "a.conf",
        "B.conf",
        "b.conf",
    ]
    included = {
        "b.conf": "listener 1884\nlog_type all\n",
        "a.conf": "listener 1883\nallow_anonymous true\n",
    }
    seen: list[str] = []

    def read(directory: str) -> list[tuple[str, str]]:
        seen.append(directory)
        return sorted(included.items(), key=lambda item: include_order(item[0]))

    conversion = convert("include_dir /etc/mosquitto/conf.d\n", read_include_dir=read)
    assert seen == ["/etc/mosquitto/conf.d"]
    assert [(item.file, item.line, item.text) for item in conversion.unmapped] == [
        ("/etc/mosquitto/conf.d/b.conf", 2, "log_type all")
    ]
    config = loaded(conversion, tmp_path)
    assert [listener.port for listener in config.listeners] == [1883, 1884]
    assert config.allow_anonymous is True

    def broken(directory: str) -> list[tuple[str, str]]:
        raise FileNotFoundError(2, "No such file or directory", directory)

    conversion = convert("include_dir /nowhere\n", read_include_dir=broken)
    assert unmapped(conversion) == {1: "include_dir /nowhere"}
    assert "No such file or directory" in conversion.unmapped[0].reason


def test_a_converted_config_that_trio_mqtt_refuses_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"mosquitto.conf: the converted config is not valid"):
        convert("listener 1883 127.0.0.1\nport 1883\nbind_address 127.0.0.1\n")


# --------------------------------------------------------------------------- the command


def test_the_command_prints_toml_and_names_unmapped_lines_on_stderr(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (files / "conf.d").mkdir()
    (files / "conf.d" / "tls.conf").write_text(
        f"listener 8883\ncertfile {files}/server.pem\nkeyfile {files}/server.key\n"
    )
    (files / "conf.d" / "README").write_text("not a .conf file\n")
    mosquitto_conf = files / "mosquitto.conf"
    mosquitto_conf.write_text(f"listener 1883\nuser mosquitto\ninclude_dir {files}/conf.d\n")
    assert cli.main(["--from-mosquitto", str(mosquitto_conf)]) == 0
    out, err = capsys.readouterr()
    tomllib.loads(out)
    converted = files / "broker.toml"
    converted.write_text(out)
    config = load_config(converted)
    assert [(item.port, item.transport) for item in config.listeners] == [
        (1883, Transport.TCP),
        (8883, Transport.TLS),
    ]
    assert err == (
        f"trio-mqtt: not mapped: {mosquitto_conf}:2: user mosquitto "
        "(run trio-mqtt as the user it should be (e.g. User= in systemd))\n"
    )


@pytest.mark.parametrize("what", ["missing", "directory", "not utf-8"])
def test_the_command_exits_2_for_a_file_it_cannot_read(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mosquitto.conf"
    if what == "directory":
        path.mkdir()
    elif what == "not utf-8":
        path.write_bytes(b"listener 1883\n# caf\xe9\n")
    assert cli.main(["--from-mosquitto", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"trio-mqtt: error: {path}: ")


def test_the_example_in_the_docs_is_what_the_converter_prints() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "mosquitto.md").read_text()
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", page, flags=re.MULTILINE | re.DOTALL)
    mosquitto = next(code for info, code in blocks if code.startswith("# mosquitto.conf\n"))
    toml = next(code for info, code in blocks if info == "toml")
    assert convert(mosquitto, file="mosquitto.conf").toml == toml


def test_bad_values_and_tabs(tmp_path: Path) -> None:
    # a bad value before any listener line starts no default listener
    conversion = convert("max_connections many\nmax_keepalive\t70000\nmax_keepalive\t30\n")
    assert unmapped(conversion) == {1: "max_connections many", 2: "max_keepalive\t70000"}
    assert "out of trio-mqtt's range (1..65535)" in conversion.unmapped[1].reason
    config = loaded(conversion, tmp_path)
    assert config.listeners == BrokerConfig().listeners
    assert config.max_keepalive == 30
