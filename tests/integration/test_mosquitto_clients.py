"""Interoperability with Debian's mosquitto_pub / mosquitto_sub (mosquitto-clients).

The command line clients run as real subprocesses against a broker on 127.0.0.1, with
MQTT 3.1 (``-V 31``), 3.1.1 (``-V 311``) and 5.0 (``-V 5``). Without the programs the
tests skip, or fail under ``TRIO_MQTT_REQUIRE_TOOLS=1`` (see tests/tools.py). Every
subprocess runs under ``fail_after`` and is killed if the test leaves early.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from helpers import wait_until
from tools import require_tool

from trio_mqtt.peer import PeerInfo
from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

# mosquitto's -V value -> the protocol level the broker should see
VERSIONS = {"31": 3, "311": 4, "5": 5}
VERSION_IDS = ["3.1", "3.1.1", "5.0"]
PROCESS_TIMEOUT = 10.0


@attrs.frozen
class Programs:
    """Where mosquitto_pub and mosquitto_sub are installed."""

    pub: str
    sub: str


@pytest.fixture
def mosquitto() -> Programs:
    """The client programs; skips (or fails, see tests/tools.py) before any broker starts."""
    return Programs(pub=require_tool("mosquitto_pub"), sub=require_tool("mosquitto_sub"))


def client_argv(program: str, broker: Broker, version: str, *args: str) -> list[str]:
    """The command line of *program* (mosquitto_pub or mosquitto_sub) for *broker*."""
    return [program, "-h", "127.0.0.1", "-p", str(broker.port), "-V", version, *args]


async def run_client(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    """Run a client to completion (killed after PROCESS_TIMEOUT); it must exit 0."""
    with trio.fail_after(PROCESS_TIMEOUT):
        result = await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, (argv, result.stderr)
    return result


@attrs.define
class BackgroundClient:
    """A client running while the test does other things; ``finish`` collects it."""

    argv: list[str]
    done: trio.Event = attrs.Factory(trio.Event)
    result: subprocess.CompletedProcess[bytes] | None = None

    async def run(self) -> None:
        # run_process kills the process if this task is cancelled
        self.result = await trio.run_process(
            self.argv, capture_stdout=True, capture_stderr=True, check=False
        )
        self.done.set()

    async def finish(self) -> list[str]:
        """Wait (bounded) for the client to exit 0; return its stdout lines."""
        with trio.fail_after(PROCESS_TIMEOUT):
            await self.done.wait()
        assert self.result is not None
        assert self.result.returncode == 0, (self.argv, self.result.stderr)
        return self.result.stdout.decode().splitlines()


@asynccontextmanager
async def background_client(argv: Sequence[str]) -> AsyncIterator[BackgroundClient]:
    """Start a client; on leaving, a client that is still running is killed."""
    client = BackgroundClient(list(argv))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def subscribed_client(
    broker: Broker, argv: Sequence[str], client_id: str, topic_filter: str
) -> AsyncIterator[BackgroundClient]:
    """A background mosquitto_sub, yielded once the broker has its subscription."""
    subscribed = trio.Event()
    wanted = (client_id, topic_filter)

    def watch(peer: PeerInfo, client_id: str, username: str | None, topic_filter: str) -> bool:
        if (client_id, topic_filter) == wanted:
            subscribed.set()
        return True

    broker.add_subscribe_hook(watch)
    async with background_client(argv) as client:
        with trio.fail_after(PROCESS_TIMEOUT):
            await subscribed.wait()
        # the hook runs inside SUBSCRIBE handling, which has finished by now
        summaries = {summary.client_id: summary for summary in broker.clients()}
        assert topic_filter in summaries[client_id].subscriptions
        yield client


@pytest.mark.parametrize("version", list(VERSIONS), ids=VERSION_IDS)
async def test_sub_receives_pub_at_every_qos_and_retained(
    mosquitto: Programs, version: str
) -> None:
    sub_id = f"sub-{version}"
    async with open_test_broker() as broker:
        sub_argv = client_argv(
            mosquitto.sub, broker, version, "-i", sub_id, "-t", "cli/#", "-C", "4", "-v"
        )
        sub_argv += ["-q", "1"]
        async with subscribed_client(broker, sub_argv, sub_id, "cli/#") as subscriber:
            [summary] = [c for c in broker.clients() if c.client_id == sub_id]
            assert summary.protocol_version == VERSIONS[version]
            for qos in (0, 1, 2):
                await run_client(
                    client_argv(
                        mosquitto.pub,
                        broker,
                        version,
                        *("-i", f"pub-{version}-{qos}", "-t", f"cli/q{qos}"),
                        *("-m", f"hello {qos}", "-q", str(qos)),
                    )
                )
            await run_client(
                client_argv(
                    mosquitto.pub,
                    broker,
                    version,
                    *("-i", f"pub-{version}-r", "-t", "cli/retained", "-m", "kept", "-r"),
                )
            )
            lines = await subscriber.finish()
        assert lines == ["cli/q0 hello 0", "cli/q1 hello 1", "cli/q2 hello 2", "cli/retained kept"]
        retained = broker.retained("cli/retained")
        assert retained is not None
        assert (retained.payload, retained.publisher) == (b"kept", f"pub-{version}-r")
        assert broker.stats.messages_received == 4


async def test_a_parked_subscriber_still_gets_every_message(mosquitto: Programs) -> None:
    # Defaults: a quiet mosquitto_sub parks (no task of its own, server/idle_park.py)
    # about a second after its SUBSCRIBE; what is published then still reaches it, and
    # its PUBACK / PUBREC / PUBCOMP resume it.
    async with open_test_broker() as broker:
        sub_argv = client_argv(
            mosquitto.sub, broker, "5", "-i", "quiet-sub", "-t", "quiet/#", "-C", "2", "-v"
        )
        sub_argv += ["-q", "2"]
        async with subscribed_client(broker, sub_argv, "quiet-sub", "quiet/#") as subscriber:
            await wait_until(lambda: broker.parked_connections() == 1, "the subscriber parked")
            for qos in (1, 2):
                await run_client(
                    client_argv(
                        mosquitto.pub,
                        broker,
                        "5",
                        *("-i", f"loud-{qos}", "-t", f"quiet/q{qos}"),
                        *("-m", f"after the park {qos}", "-q", str(qos)),
                    )
                )
            lines = await subscriber.finish()
        assert lines == ["quiet/q1 after the park 1", "quiet/q2 after the park 2"]


@pytest.mark.parametrize("version", list(VERSIONS), ids=VERSION_IDS)
async def test_retained_message_reaches_a_later_subscriber(
    mosquitto: Programs, version: str
) -> None:
    topic = f"cli/kept/{version}"
    async with open_test_broker() as broker:
        await run_client(
            client_argv(
                mosquitto.pub,
                broker,
                version,
                *("-t", topic, "-m", f"kept {version}", "-r", "-q", "1"),
            )
        )
        result = await run_client(
            client_argv(
                mosquitto.sub,
                broker,
                version,
                *("-t", topic, "-C", "1", "-q", "1", "-F", "%r %q %t %p", "-W", "5"),
            )
        )
        # retain flag 1 (a retained message sent on subscribe), QoS min(1, 1)
        assert result.stdout.decode().splitlines() == [f"1 1 {topic} kept {version}"]

        # an empty retained message clears it
        await run_client(client_argv(mosquitto.pub, broker, version, "-t", topic, "-r", "-n"))
        assert broker.retained(topic) is None


async def test_v5_properties_pass_through(mosquitto: Programs) -> None:
    async with open_test_broker() as broker:
        sub_argv = client_argv(
            mosquitto.sub, broker, "5", "-i", "props-sub", "-t", "cli/props", "-C", "1"
        )
        sub_argv += ["-F", "%t|%p|%P|%C|%R|%S"]
        sub_argv += ["-D", "subscribe", "subscription-identifier", "7"]
        async with subscribed_client(broker, sub_argv, "props-sub", "cli/props") as subscriber:
            await run_client(
                client_argv(
                    mosquitto.pub,
                    broker,
                    "5",
                    *("-t", "cli/props", "-m", "x"),
                    *("-D", "publish", "user-property", "color", "blue"),
                    *("-D", "publish", "user-property", "size", "9"),
                    *("-D", "publish", "content-type", "text/plain"),
                    *("-D", "publish", "response-topic", "cli/reply"),
                )
            )
            lines = await subscriber.finish()
        # user properties in order, content type, response topic, subscription id
        assert lines == ["cli/props|x|color:blue size:9|text/plain|cli/reply|7"]


async def test_versions_interoperate(mosquitto: Programs) -> None:
    """A 3.1 subscriber gets what a 5.0 publisher sends, and the other way round."""
    async with open_test_broker() as broker:
        old_argv = client_argv(
            mosquitto.sub, broker, "31", "-i", "old", "-t", "cli/to-old", "-C", "1", "-v"
        )
        new_argv = client_argv(
            mosquitto.sub, broker, "5", "-i", "new", "-t", "cli/to-new", "-C", "1", "-v"
        )
        async with (
            subscribed_client(broker, old_argv, "old", "cli/to-old") as old,
            subscribed_client(broker, new_argv, "new", "cli/to-new") as new,
        ):
            await run_client(
                client_argv(mosquitto.pub, broker, "5", "-t", "cli/to-old", "-m", "from 5")
            )
            await run_client(
                client_argv(mosquitto.pub, broker, "31", "-t", "cli/to-new", "-m", "from 3.1")
            )
            assert await old.finish() == ["cli/to-old from 5"]
            assert await new.finish() == ["cli/to-new from 3.1"]


# "sub" may read everything but test/nosubscribe (a deny rule); "pub" may write anywhere
DENY_ACL = """\
user sub
topic read #
topic deny test/nosubscribe
user pub
topic write #
"""


@pytest.mark.parametrize("version", list(VERSIONS), ids=VERSION_IDS)
async def test_hash_subscriber_does_not_receive_a_denied_topic(
    mosquitto: Programs, version: str, tmp_path: Path
) -> None:
    acl = tmp_path / "broker.acl"
    acl.write_text(DENY_ACL)
    sub_id = f"deny-sub-{version}"

    async def publish(topic: str, message: str, *options: str) -> None:
        argv = ("-u", "pub", "-t", topic, "-m", message, "-q", "1", *options)
        await run_client(client_argv(mosquitto.pub, broker, version, *argv))

    async with open_test_broker(acl_file=str(acl)) as broker:
        # the exact denied topic: refused (SUBACK 0x80 / 0x87), mosquitto_sub gives up
        refused = await run_client(
            client_argv(mosquitto.sub, broker, version, "-u", "sub", "-t", "test/nosubscribe")
        )
        assert b"All subscription requests were denied" in refused.stderr
        await publish("test/nosubscribe", "retained secret", "-r")
        await publish("test/ok", "retained ok", "-r")
        # '#' is allowed, and gets everything but the denied topic, retained or live
        sub_argv = client_argv(
            mosquitto.sub, broker, version, "-u", "sub", "-i", sub_id, "-t", "#", "-q", "1"
        )
        sub_argv += ["-C", "2", "-v"]
        async with subscribed_client(broker, sub_argv, sub_id, "#") as subscriber:
            await publish("test/nosubscribe", "live secret")
            await publish("test/ok", "live ok")
            lines = await subscriber.finish()
        assert lines == ["test/ok retained ok", "test/ok live ok"]
