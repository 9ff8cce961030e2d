"""Read access is checked on every delivery, not only at SUBSCRIBE (paho clients).

bob may not read ``secret/#``. Taking over alice's session (her client id, clean session
0, allowed as in mosquitto) must not hand him her ``secret/#`` subscription's messages,
queued or new. And an ACL reloaded without eve's ``read #`` stops her existing ``#``
subscription at once: the per-connection cache of read decisions is dropped on reload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .paho_helpers import blocking, paho_client

ACL = """\
user alice
topic read secret/#
topic read public/#
user bob
topic read public/#
user eve
topic read #
user publisher
topic write #
"""


@asynccontextmanager
async def acl_broker(tmp_path: Path, acl: str = ACL) -> AsyncIterator[tuple[Broker, Path]]:
    path = tmp_path / "broker.acl"
    path.write_text(acl)
    async with open_test_broker(acl_file=str(path)) as broker:
        yield broker, path


async def test_a_taken_over_session_delivers_only_what_the_new_user_may_read(
    tmp_path: Path,
) -> None:
    async with acl_broker(tmp_path) as (broker, _path):
        async with paho_client(
            broker.port, "shared", clean_session=False, username="alice"
        ) as alice:
            assert await blocking(alice.subscribe, "secret/#", 1) == [1]
            assert await blocking(alice.subscribe, "public/#", 1) == [1]
            await blocking(alice.disconnect)
        async with paho_client(broker.port, "publisher", username="publisher") as publisher:
            # queued for the offline session, both kinds
            await blocking(publisher.publish, "secret/plans", b"queued secret", 1)
            await blocking(publisher.publish, "public/news", b"queued news", 1)
            async with paho_client(
                broker.port, "shared", clean_session=False, username="bob"
            ) as bob:
                # bob resumes alice's session: her subscriptions, her queue
                await blocking(publisher.publish, "secret/plans", b"new secret", 1)
                await blocking(publisher.publish, "public/news", b"new news", 1)
                messages = await blocking(bob.wait_messages, 2)
                assert [(m.topic, m.payload) for m in messages] == [
                    ("public/news", b"queued news"),
                    ("public/news", b"new news"),
                ]
                assert await blocking(bob.extra_messages) == []


async def test_a_reload_that_removes_a_grant_stops_existing_subscriptions(
    tmp_path: Path,
) -> None:
    async with (
        acl_broker(tmp_path) as (broker, path),
        paho_client(broker.port, "eve-1", username="eve") as eve,
        paho_client(broker.port, "publisher", username="publisher") as publisher,
    ):
        assert await blocking(eve.subscribe, "#", 1) == [1]
        await blocking(publisher.publish, "secret/z", b"before", 1)
        # delivered, and the read decision for secret/z is now cached for eve
        message = await blocking(eve.wait_message)
        assert (message.topic, message.payload) == ("secret/z", b"before")

        path.write_text(ACL.replace("user eve\ntopic read #\n", "user eve\ntopic read public/#\n"))
        assert broker.reload_auth()
        await blocking(publisher.publish, "secret/z", b"after", 1)
        await blocking(publisher.publish, "public/ok", b"still", 1)
        message = await blocking(eve.wait_message)
        assert (message.topic, message.payload) == ("public/ok", b"still")
        assert await blocking(eve.extra_messages) == []
