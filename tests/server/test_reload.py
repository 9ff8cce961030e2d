"""Broker.reload_config: what a reload changes live, what it keeps for a restart.

Embedded brokers on 127.0.0.1 port 0, plus the core under virtual time (autojump_clock)
where the timing is the point (keep alive of open and new connections).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from helpers import V5, make_core, open_client, serving
from rawclient import RawClient

from trio_mqtt.auth import hash_password
from trio_mqtt.config import (
    BrokerConfig,
    ClusterConfig,
    HttpConfig,
    ListenerConfig,
    ListenerLimits,
)
from trio_mqtt.config_reload import RestartNeeded, plan_reload
from trio_mqtt.mqtt.packets import Connack, Disconnect, Properties, Publish
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.server.app import Broker, open_broker
from trio_mqtt.testing import TEST_LISTENER

FAST = 1000  # PBKDF2 rounds in test files


def write_password_file(path: Path, users: dict[str, bytes]) -> str:
    lines = [f"{name}:{hash_password(pw, iterations=FAST).encode()}" for name, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return str(path)


@asynccontextmanager
async def running(**settings: Any) -> AsyncIterator[Broker]:
    config = BrokerConfig(**{"listeners": (TEST_LISTENER,), "shutdown_timeout": 1.0, **settings})
    async with open_broker(config) as broker:
        yield broker


async def connack_of(port: int, client_id: str, **connect: Any) -> tuple[RawClient, Connack]:
    client = await RawClient.open(port, V5)
    with trio.fail_after(5):
        return client, await client.connect(client_id, **connect)


def evolve(broker: Broker, **changes: Any) -> BrokerConfig:
    return attrs.evolve(broker.config, **changes)


# ------------------------------------------------------------------- limits


async def test_limits_apply_to_new_connections_open_ones_keep_their_connack() -> None:
    async with running(max_keepalive=100, topic_alias_maximum=5) as broker:
        old, connack = await connack_of(broker.port, "old", keep_alive=600)
        assert connack.properties.server_keep_alive == 100

        report = broker.reload_config(
            evolve(broker, max_keepalive=30, topic_alias_maximum=2, max_queued_messages=7)
        )

        assert report.needs_restart == () and report.errors == ()
        assert set(report.changed) == {
            "broker.max_keepalive",
            "broker.topic_alias_maximum",
            "broker.max_queued_messages",
        }
        assert broker.config.max_keepalive == 30 and broker.core.config.max_keepalive == 30
        new, connack = await connack_of(broker.port, "new", keep_alive=600)
        assert connack.properties.server_keep_alive == 30
        assert connack.properties.topic_alias_maximum == 2
        # the queue limits apply to every session at once
        assert {s.max_queued_messages for s in broker.core.sessions.values()} == {7}
        # the open connection was told 5 aliases: alias 4 still works for it ...
        await old.send(Publish("a/b", b"x", properties=Properties(topic_alias=4)))
        await old.send(Publish("", b"y", properties=Properties(topic_alias=4)))
        # ... and not for the new one
        await new.send(Publish("a/b", b"x", properties=Properties(topic_alias=4)))
        packets = await new.expect_closed()
        assert isinstance(packets[0], Disconnect)
        assert packets[0].reason_code == ReasonCode.TOPIC_ALIAS_INVALID
        assert [c.client_id for c in broker.clients()] == ["old"]
        await old.aclose()
        await new.aclose()


async def test_a_listeners_max_connections_applies_at_once() -> None:
    async with running() as broker:
        first, _ = await connack_of(broker.port, "first")
        listener = attrs.evolve(broker.config.listeners[0], max_connections=1)
        report = broker.reload_config(evolve(broker, listeners=(listener,)))
        assert report.changed == ("listeners[0].max_connections",)
        second = await RawClient.open(broker.port, V5)
        with trio.fail_after(5):
            assert await second.stream.receive_some(10) == b""  # closed at once
        assert broker.listeners["test"].rejections["max-connections"] == 1
        await first.aclose()
        await second.aclose()


async def test_address_limits_can_be_turned_on_and_changed() -> None:
    async with running() as broker:
        limits = ListenerLimits(max_connections_per_address=1)
        listener = attrs.evolve(broker.config.listeners[0], limits=limits)
        broker.reload_config(evolve(broker, listeners=(listener,)))
        first, _ = await connack_of(broker.port, "first")
        second = await RawClient.open(broker.port, V5)
        with trio.fail_after(5):
            assert await second.stream.receive_some(10) == b""
        await second.aclose()
        # raised while "first" is open: it stays counted
        limits = ListenerLimits(max_connections_per_address=2)
        listener = attrs.evolve(broker.config.listeners[0], limits=limits)
        broker.reload_config(evolve(broker, listeners=(listener,)))
        limiter = broker.listeners["test"].address_limits
        assert limiter is not None and limiter.connections("127.0.0.1") == 1
        third, connack = await connack_of(broker.port, "third")
        assert connack.reason_code == 0
        await first.aclose()
        await third.aclose()


async def test_keep_alive_of_open_and_new_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An open connection keeps the Server Keep Alive it was given; new ones get the new."""
    core = make_core(trio.current_time, max_keepalive=10)
    async with serving(core) as serve:
        old = await open_client(serve, V5)
        connack = await old.connect("old", keep_alive=60)
        assert connack.properties.server_keep_alive == 10
        core.apply_config(attrs.evolve(core.config, max_keepalive=4))
        new = await open_client(serve, V5)
        connack = await new.connect("new", keep_alive=60)
        assert connack.properties.server_keep_alive == 4
        start = trio.current_time()
        with trio.fail_after(100):
            await new.expect_closed(timeout=100)
            assert trio.current_time() - start == pytest.approx(6, abs=0.01)  # 1.5 x 4
            await old.expect_closed(timeout=100)
            assert trio.current_time() - start == pytest.approx(15, abs=0.01)  # 1.5 x 10


# ------------------------------------------------------------------- auth files


async def test_another_password_file(tmp_path: Path) -> None:
    one = write_password_file(tmp_path / "one.passwd", {"alice": b"alice-pw"})
    two = write_password_file(tmp_path / "two.passwd", {"bob": b"bob-pw"})
    async with running(password_file=one, allow_anonymous=False) as broker:
        report = broker.reload_config(evolve(broker, password_file=two))
        assert report.changed == ("broker.password_file",) and report.errors == ()
        bob, connack = await connack_of(broker.port, "b", username="bob", password=b"bob-pw")
        assert connack.reason_code == 0
        alice, connack = await connack_of(broker.port, "a", username="alice", password=b"alice-pw")
        assert connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        await bob.aclose()
        await alice.aclose()


async def test_a_password_file_the_broker_started_without(tmp_path: Path) -> None:
    passwd = write_password_file(tmp_path / "users.passwd", {"bob": b"bob-pw"})
    async with running() as broker:
        assert broker.auth_files is None
        broker.reload_config(evolve(broker, password_file=passwd))
        client, connack = await connack_of(broker.port, "b", username="bob", password=b"wrong")
        assert connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        await client.aclose()


async def test_a_bad_password_file_keeps_the_previous_and_the_rest_applies(
    tmp_path: Path,
) -> None:
    one = write_password_file(tmp_path / "one.passwd", {"alice": b"alice-pw"})
    bad = tmp_path / "bad.passwd"
    bad.write_text("this line has no colon\n")
    bad.chmod(0o600)
    async with running(password_file=one) as broker:
        report = broker.reload_config(evolve(broker, password_file=str(bad), max_keepalive=30))
        assert len(report.errors) == 1 and "bad.passwd" in report.errors[0]
        assert report.changed == ("broker.max_keepalive",)
        assert broker.config.password_file == one
        alice, connack = await connack_of(broker.port, "a", username="alice", password=b"alice-pw")
        assert connack.reason_code == 0
        await alice.aclose()


# ------------------------------------------------------------------- restart needed


async def test_what_needs_a_restart_is_kept_and_reported(tmp_path: Path) -> None:
    async with running() as broker:
        port = broker.port
        moved = ListenerConfig(name="test", host="127.0.0.2", port=1884, max_connections=5)
        new = evolve(
            broker,
            listeners=(moved,),
            persistence=str(tmp_path / "state.db"),
            http=HttpConfig(port=0),
            max_keepalive=30,
        )
        report = broker.reload_config(new)
        assert [str(item) for item in report.needs_restart] == [
            "broker.persistence changed: needs a restart; kept ''",
            "http added: needs a restart; kept no [http] table",
            "listeners[0].bind changed: needs a restart; kept 127.0.0.1:0",
        ]
        assert set(report.changed) == {"broker.max_keepalive", "listeners[0].max_connections"}
        assert broker.config.listeners[0].bind == "127.0.0.1:0"
        assert broker.config.listeners[0].max_connections == 5
        assert broker.config.persistence == "" and broker.config.http is None
        assert broker.port == port
        client, connack = await connack_of(port, "still-here")
        assert connack.reason_code == 0
        await client.aclose()


def test_plan_listeners_added_removed_and_transport() -> None:
    a = ListenerConfig(name="a", port=1883)
    b = ListenerConfig(name="b", port=1884)
    running_config = BrokerConfig(listeners=(a, b))

    effective, restart = plan_reload(running_config, BrokerConfig(listeners=(a,)))
    assert effective.listeners == (a, b)
    assert restart == (RestartNeeded("listeners[1]", "'b' on 127.0.0.1:1884", "removed"),)

    c = ListenerConfig(name="c", port=1885)
    effective, restart = plan_reload(running_config, BrokerConfig(listeners=(a, b, c)))
    assert effective.listeners == (a, b)
    assert [str(r) for r in restart] == [
        "listeners[2] added: needs a restart; kept no listener 'c' on 127.0.0.1:1885"
    ]

    ws = attrs.evolve(a, transport="ws", ws_trusted_proxies=["10.0.0.0/8"])
    effective, restart = plan_reload(running_config, BrokerConfig(listeners=(ws, b)))
    # ws_trusted_proxies does not fit the tcp listener that stays: it stays as it was
    assert effective.listeners == (a, b)
    assert [r.key for r in restart] == ["listeners[0].transport", "listeners[0]"]
    assert str(restart[0]) == "listeners[0].transport changed: needs a restart; kept 'tcp'"


def test_a_nats_url_change_is_reported_without_the_password() -> None:
    running_config = BrokerConfig(cluster=ClusterConfig(nats_urls=["tls://n:s3cret@h:4222"]))
    new = BrokerConfig(cluster=ClusterConfig(nats_urls=["tls://n:0ther@h:4222"]))
    effective, restart = plan_reload(running_config, new)
    assert effective.cluster == running_config.cluster
    assert [str(r) for r in restart] == [
        "cluster.nats_urls changed: needs a restart; kept ['tls://n:***@h:4222']"
    ]
