"""Read access is checked on every delivery, not only at SUBSCRIBE (paho clients).

bob may not read ``secret/#``. Taking over alice's session (her client id, clean session
0, allowed as in mosquitto) must not hand him her ``secret/#`` subscription's messages,
queued or new. And an ACL reloaded without eve's ``read #`` stops her existing ``#``
subscription at once: the per-connection cache of read decisions is dropped on reload.

Deny rules work on delivery too: a ``#`` subscriber whose ACL denies ``test/nosubscribe``
receives everything else, live or retained, but nothing on that topic, here with a
mosquitto ACL file read with mosquitto's meaning (``acl_topics_before_user``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from trio_mqtt.server.app import Broker
from trio_mqtt.testing import open_test_broker

from .paho_helpers import V5, VERSION_IDS, VERSIONS, blocking, paho_client

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
async def acl_broker(
    tmp_path: Path, acl: str = ACL, **settings: object
) -> AsyncIterator[tuple[Broker, Path]]:
    path = tmp_path / "broker.acl"
    path.write_text(acl)
    async with open_test_broker(acl_file=str(path), **settings) as broker:
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


# A mosquitto ACL file: anonymous clients read everything but test/nosubscribe; the
# rules before the first "user" line are theirs only (acl_topics_before_user).
MOSQUITTO_ACL = """\
topic read #
topic deny test/nosubscribe
user publisher
topic write #
"""


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
async def test_a_hash_subscriber_gets_nothing_on_a_denied_topic(
    tmp_path: Path, version: MQTTProtocolVersion
) -> None:
    refused = 0x87 if version is V5 else 0x80
    async with (
        acl_broker(tmp_path, MOSQUITTO_ACL, acl_topics_before_user="anonymous") as (broker, _),
        paho_client(broker.port, "publisher", protocol=version, username="publisher") as pub,
    ):
        # the deny is for anonymous clients: the publisher may write there, and retain
        await blocking(pub.publish, "test/nosubscribe", b"retained secret", 1, True)
        await blocking(pub.publish, "test/ok", b"retained ok", 1, True)
        async with paho_client(broker.port, "anon", protocol=version) as anon:
            assert await blocking(anon.subscribe, "#", 1) == [1]
            assert await blocking(anon.subscribe, "test/nosubscribe", 1) == [refused]
            message = await blocking(anon.wait_message)
            assert (message.topic, message.payload, message.retain) == (
                "test/ok",
                b"retained ok",
                True,
            )
            await blocking(pub.publish, "test/nosubscribe", b"live secret", 1)
            await blocking(pub.publish, "test/ok", b"live ok", 1)
            message = await blocking(anon.wait_message)
            assert (message.topic, message.payload) == ("test/ok", b"live ok")
            assert await blocking(anon.extra_messages) == []
        # the rules before "user publisher" are not a user's (mosquitto's meaning)
        async with paho_client(broker.port, "alice", protocol=version, username="alice") as alice:
            assert await blocking(alice.subscribe, "#", 1) == [refused]
