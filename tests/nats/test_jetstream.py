"""JetStream and key-value buckets against a real nats-server, with nats-py reading and
writing the same streams and buckets as an independent client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats_peer import run_nats_py
from nats_server import NatsServer
from scripted_server import ScriptedJetStream, fake_server, greet

from trio_mqtt.nats import (
    Entry,
    InvalidKeyError,
    JetStreamError,
    KeyExistsError,
    KeyValue,
    NATSClient,
    NATSLocalError,
    NoRespondersError,
    PubAck,
    WrongRevisionError,
    api_request,
    ensure_stream,
    open_nats_client,
    publish_acked,
)


@asynccontextmanager
async def connected(server: NatsServer, timeout: float = 5.0) -> AsyncIterator[NATSClient]:
    with trio.fail_after(timeout):
        async with open_nats_client(server.url, name="js-test") as client:
            yield client


async def wait_for(predicate: Callable[[], object], what: str, timeout: float = 3.0) -> None:
    """Poll *predicate* until true; fail the test saying *what* did not happen."""
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state that other tasks change
            await trio.sleep(0.01)
        return
    pytest.fail(f"timed out waiting for {what}")


async def stored_messages(client: NATSClient, stream: str) -> int:
    info = await api_request(client, f"STREAM.INFO.{stream}")
    return int(info["state"]["messages"])


# -- streams and acknowledged publishing ------------------------------------------------


async def test_ensure_stream_creates_then_updates(nats_server: NatsServer) -> None:
    config: dict[str, object] = {"name": "ORDERS", "subjects": ["orders.>"], "max_msgs": 10}
    async with connected(nats_server) as client:
        info = await ensure_stream(client, config)
        assert info["config"]["name"] == "ORDERS"
        assert info["config"]["max_msgs"] == 10
        again = await ensure_stream(client, config)  # same config: a no-op
        assert again["created"] == info["created"]
        updated = await ensure_stream(client, {**config, "max_msgs": 20})
        assert updated["config"]["max_msgs"] == 20
        assert (await api_request(client, "STREAM.INFO.ORDERS"))["config"]["max_msgs"] == 20
        with pytest.raises(JetStreamError) as caught:
            await ensure_stream(client, {**config, "storage": "memory"})  # not updatable
        assert caught.value.code == 500 or caught.value.err_code > 0
        with pytest.raises(NATSLocalError):
            await ensure_stream(client, {"subjects": ["x"]})


async def test_publish_acked_dedup_and_expectations(nats_server: NatsServer) -> None:
    async with connected(nats_server) as client:
        await ensure_stream(client, {"name": "S", "subjects": ["s.>"]})
        first = await publish_acked(client, "s.a", b"1", msg_id="m-1")
        assert first == PubAck("S", 1, False)
        repeat = await publish_acked(client, "s.a", b"1 again", msg_id="m-1")
        assert repeat == PubAck("S", 1, True)
        second = await publish_acked(client, "s.b", b"2", headers={"X": "y"})
        assert second.seq == 2
        with pytest.raises(JetStreamError) as caught:
            await publish_acked(
                client, "s.a", b"3", headers={"Nats-Expected-Last-Subject-Sequence": "7"}
            )
        assert caught.value.err_code == 10071
        with pytest.raises(NoRespondersError):
            await publish_acked(client, "no.stream.here", b"")
        assert await stored_messages(client, "S") == 2


async def test_nats_py_reads_what_publish_acked_stored(nats_server: NatsServer) -> None:
    async def read(nc: Client) -> tuple[int, bytes, dict[str, str] | None]:
        msg = await nc.jetstream().get_msg("S", 1)
        return msg.seq, msg.data, msg.headers

    async with connected(nats_server, 10) as client:
        await ensure_stream(client, {"name": "S", "subjects": ["s.>"]})
        await publish_acked(client, "s.x", b"payload", headers={"Trace": "t-1"})
        seq, data, headers = await run_nats_py(nats_server.url, read)
    assert (seq, data) == (1, b"payload")
    assert headers is not None and headers["Trace"] == "t-1"


# -- key-value ------------------------------------------------------------------------


async def test_kv_bucket_follows_the_kv_conventions(nats_server: NatsServer) -> None:
    async with connected(nats_server) as client:
        await KeyValue.open(client, "conf", history=5, ttl=60)
        info = await api_request(client, "STREAM.INFO.KV_conf")
    config = info["config"]
    assert config["subjects"] == ["$KV.conf.>"]
    assert config["max_msgs_per_subject"] == 5
    assert config["max_age"] == 60 * 10**9
    assert config["duplicate_window"] == 60 * 10**9  # at most the TTL
    assert config["allow_direct"] is True
    assert config["allow_rollup_hdrs"] is True
    assert config["deny_delete"] is True
    assert config["discard"] == "new"


async def test_kv_put_get_create_update_delete_purge(nats_server: NatsServer) -> None:
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "b", history=3)
        assert await kv.get("missing") is None
        r1 = await kv.put("a.b", b"one")
        entry = await kv.get("a.b")
        assert entry is not None
        assert (entry.key, entry.value, entry.revision, entry.operation) == (
            "a.b",
            b"one",
            r1,
            "PUT",
        )

        with pytest.raises(KeyExistsError) as exists:
            await kv.create("a.b", b"two")
        assert exists.value.err_code == 10071
        r2 = await kv.update("a.b", b"two", r1)
        assert r2 > r1
        with pytest.raises(WrongRevisionError):
            await kv.update("a.b", b"stale", r1)
        assert (await kv.get("a.b")).value == b"two"  # type: ignore[union-attr]

        await kv.delete("a.b")
        assert await kv.get("a.b") is None
        deleted = await kv.last("a.b")
        assert deleted is not None and deleted.operation == "DEL"
        r3 = await kv.create("a.b", b"three")  # allowed: the latest is a delete
        assert (await kv.get("a.b")).revision == r3  # type: ignore[union-attr]

        created = await kv.create("fresh", b"new")
        with pytest.raises(KeyExistsError):
            await kv.create("fresh", b"again")
        assert (await kv.get("fresh")).revision == created  # type: ignore[union-attr]

        await kv.purge("a.b")
        purged = await kv.last("a.b")
        assert purged is not None and purged.operation == "PURGE"
        # The purge rolled up the key's history: only the purge marker is left of it.
        assert await stored_messages(client, "KV_b") == 2  # fresh + the purge


@pytest.mark.parametrize("key", ["", ".a", "a.", "a b", "a*", "a.>", "ключ", "a\r\n"])
async def test_invalid_keys_are_refused_before_any_request(key: str) -> None:
    kv = KeyValue(client=None, bucket="b", stream="KV_b", prefix="$KV.b.")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        await kv.put(key, b"")
    with pytest.raises(InvalidKeyError):
        await kv.get(key)


@pytest.mark.parametrize("key_filter", ["a.>.b", "a*", "", ".>", "a b"])
async def test_invalid_key_filters(key_filter: str) -> None:
    kv = KeyValue(client=None, bucket="b", stream="KV_b", prefix="$KV.b.")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        await kv.entries(key_filter)


async def test_invalid_bucket_name(nats_server: NatsServer) -> None:
    async with connected(nats_server) as client:
        with pytest.raises(InvalidKeyError):
            await KeyValue.open(client, "a.b")


async def test_entries_current_values_only(nats_server: NatsServer) -> None:
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "b", history=4)
        await kv.put("x.1", b"old")
        await kv.put("x.2", b"gone")
        await kv.put("y.1", b"other")
        await kv.put("x.1", b"new")
        await kv.delete("x.2")
        await kv.put("x.3", b"purged")
        await kv.purge("x.3")
        everything = await kv.entries()
        under_x = await kv.entries("x.*")
        nothing = await kv.entries("z.>")
    assert [(e.key, e.value) for e in everything] == [("y.1", b"other"), ("x.1", b"new")]
    assert [(e.key, e.value) for e in under_x] == [("x.1", b"new")]
    assert nothing == []


async def test_entries_beyond_the_direct_get_limit(nats_server: NatsServer) -> None:
    """DIRECT.GET multi_last refuses more than 1,024 keys (413): entries() switches to a
    consumer, whose flow-control requests it answers."""
    async with connected(nats_server, 10) as client:
        kv = await KeyValue.open(client, "many")
        for index in range(1100):
            client.publish(f"$KV.many.k{index}", b"v" * 500)
        await client.flush()
        while await stored_messages(client, "KV_many") < 1100:  # noqa: ASYNC110 - the server
            await trio.sleep(0.01)
        refused = await client.request_many(
            "$JS.API.DIRECT.GET.KV_many", json.dumps({"multi_last": ["$KV.many.>"]}).encode()
        )
        assert refused[-1].status == 413
        entries = await kv.entries()
    assert sorted(int(e.key[1:]) for e in entries) == list(range(1100))


async def test_direct_get_batch_ends_with_eob(nats_server: NatsServer) -> None:
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "b")
        for key in ("a", "b", "c"):
            await kv.put(key, key.encode())
        replies = await client.request_many(
            "$JS.API.DIRECT.GET.KV_b",
            json.dumps({"seq": 1, "batch": 2, "next_by_subj": "$KV.b.>"}).encode(),
        )
    assert [r.payload for r in replies] == [b"a", b"b", b""]
    assert (replies[-1].status, replies[-1].description) == (204, "EOB")
    assert replies[-1].headers is not None
    assert replies[-1].headers.get("Nats-Num-Pending") == "1"


# -- watching -------------------------------------------------------------------------


def summary(entries: list[Entry]) -> list[tuple[str, str, bytes]]:
    return [(e.key, e.operation, e.value) for e in entries]


async def test_watch_current_then_changes(nats_server: NatsServer) -> None:
    seen: list[Entry] = []
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "w")
        await kv.put("k.1", b"a")
        await kv.put("k.1", b"b")  # history 1: only this one is current
        await kv.put("k.2", b"c")
        await kv.put("other.k", b"not watched")
        watcher = await kv.watch("k.*", seen.append)
        await watcher.initial_done.wait()
        assert summary(seen) == [("k.1", "PUT", b"b"), ("k.2", "PUT", b"c")]
        await kv.put("k.3", b"d")
        await kv.delete("k.1")
        await kv.purge("k.2")
        await kv.put("other.k", b"still not watched")
        await wait_for(lambda: len(seen) == 5, "three changes")
        await watcher.stop()
        await kv.put("k.4", b"after stop")
        await client.flush()
        await trio.sleep(0.05)
    assert summary(seen[2:]) == [
        ("k.3", "PUT", b"d"),
        ("k.1", "DEL", b""),
        ("k.2", "PURGE", b""),
    ]
    assert [e.revision for e in seen] == sorted(e.revision for e in seen)
    assert watcher.resets == 0


async def test_watch_updates_only(nats_server: NatsServer) -> None:
    seen: list[Entry] = []
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "w")
        await kv.put("old", b"x")
        watcher = await kv.watch(">", seen.append, include_current=False)
        assert watcher.initial_done.is_set()
        await kv.put("new", b"y")
        await wait_for(lambda: seen, "the new value")
        await watcher.stop()
    assert summary(seen) == [("new", "PUT", b"y")]


async def test_watch_of_an_empty_bucket_is_initially_done(nats_server: NatsServer) -> None:
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "empty")
        watcher = await kv.watch(">", lambda entry: None)
        with trio.fail_after(1):
            await watcher.initial_done.wait()
        await watcher.stop()


async def send_raw(server: NatsServer, data: bytes) -> None:
    """Publish raw protocol bytes from a bare socket (headers with a status line)."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.receive_some(4096)  # INFO
        await stream.send_all(b'CONNECT {"headers":true,"verbose":false}\r\n' + data + b"PING\r\n")
        received = b""
        while b"PONG" not in received:
            received += await stream.receive_some(4096)


async def test_watch_recovers_from_a_gap(nats_server: NatsServer) -> None:
    """A heartbeat saying the consumer delivered more than we saw (deliveries were lost)
    makes the watcher recreate its consumer after the last entry it passed on."""
    seen: list[Entry] = []
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "g")
        watcher = await kv.watch(">", seen.append)
        await kv.put("a", b"1")
        await wait_for(lambda: len(seen) == 1, "first entry")
        assert watcher.deliver_subject is not None
        block = (
            b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 5\r\nNats-Last-Stream: 9\r\n\r\n"
        )
        subject = watcher.deliver_subject.encode()
        await send_raw(
            nats_server, b"HPUB %s %d %d\r\n%s\r\n" % (subject, len(block), len(block), block)
        )
        await wait_for(lambda: watcher.resets == 1, "the reset")
        assert watcher.deliver_subject.encode() != subject  # a new consumer, a new inbox
        await kv.put("b", b"2")
        await wait_for(lambda: len(seen) == 2, "the entry after the reset")
        await watcher.stop()
    assert summary(seen) == [("a", "PUT", b"1"), ("b", "PUT", b"2")]  # nothing twice


async def test_watch_recovers_when_heartbeats_stop(nats_server: NatsServer) -> None:
    """The server deleting the consumer silences it; after three missed heartbeats the
    watcher recreates it and sees what was written meanwhile."""
    seen: list[Entry] = []
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "h")
        watcher = await kv.watch(">", seen.append, idle_heartbeat=0.1)
        await kv.put("a", b"1")
        await wait_for(lambda: len(seen) == 1, "first entry")
        await api_request(client, f"CONSUMER.DELETE.KV_h.{watcher.consumer}")
        # the server answers the delete before the consumer has quite stopped: a put
        # right after could still be delivered by it (seen once in CI), so wait a little
        await trio.sleep(0.2)
        await kv.put("b", b"written while the consumer is gone")
        await wait_for(lambda: len(seen) == 2, "the entry after the reset")
        assert watcher.resets == 1
        await watcher.stop()
    assert summary(seen)[1] == ("b", "PUT", b"written while the consumer is gone")


async def test_per_key_ttl_expiry_is_seen_as_a_marker(nats_server: NatsServer) -> None:
    seen: list[Entry] = []
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "ttl", per_key_ttl=True, marker_ttl=5)
        info = await api_request(client, "STREAM.INFO.KV_ttl")
        assert info["config"]["allow_msg_ttl"] is True
        assert info["config"]["subject_delete_marker_ttl"] == 5 * 10**9
        watcher = await kv.watch(">", seen.append)
        await kv.put("lease", b"alive", ttl=1)
        await kv.put("forever", b"stays")
        await wait_for(lambda: len(seen) == 3, "the expiry marker")
        assert await kv.get("lease") is None
        assert (await kv.get("forever")) is not None
        assert await kv.create("lease", b"again", ttl=1) > 0  # the marker counts as deleted
        await watcher.stop()
    marker = seen[2]
    assert (marker.key, marker.operation, marker.reason) == ("lease", "PURGE", "MaxAge")


async def test_ttl_on_a_bucket_without_per_key_ttl_is_refused(nats_server: NatsServer) -> None:
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "plain")
        with pytest.raises(JetStreamError):
            await kv.put("k", b"v", ttl=5)
        with pytest.raises(NATSLocalError):
            await kv.put("k", b"v", ttl=0)


# -- with nats-py's KV --------------------------------------------------------------------


async def test_kv_values_cross_between_us_and_nats_py(nats_server: NatsServer) -> None:
    async def py_side(nc: Client) -> tuple[bytes | None, int | None]:
        kv = await nc.jetstream().key_value("shared")
        ours = await kv.get("from.trio")
        await kv.put("from.py", b"written by nats-py")
        return ours.value, ours.revision

    async with connected(nats_server, 10) as client:
        kv = await KeyValue.open(client, "shared", history=2)
        revision = await kv.put("from.trio", b"written by trio")
        value, py_revision = await run_nats_py(nats_server.url, py_side)
        theirs = await kv.get("from.py")
    assert (value, py_revision) == (b"written by trio", revision)
    assert theirs is not None and theirs.value == b"written by nats-py"


async def test_our_watch_sees_nats_py_put_and_delete(nats_server: NatsServer) -> None:
    seen: list[Entry] = []

    async def py_side(nc: Client) -> None:
        kv = await nc.jetstream().key_value("shared")
        await kv.put("svc.a", b"up")
        await kv.delete("svc.a")
        await kv.put("svc.b", b"up")

    async with connected(nats_server, 10) as client:
        kv = await KeyValue.open(client, "shared")
        watcher = await kv.watch("svc.>", seen.append)
        await run_nats_py(nats_server.url, py_side)
        await wait_for(lambda: len(seen) == 3, "three entries")
        await watcher.stop()
    assert summary(seen) == [
        ("svc.a", "PUT", b"up"),
        ("svc.a", "DEL", b""),
        ("svc.b", "PUT", b"up"),
    ]


async def test_nats_py_sees_our_delete_and_purge(nats_server: NatsServer) -> None:
    async def py_side(nc: Client) -> list[tuple[str, str, str | None]]:
        kv = await nc.jetstream().key_value("shared")
        entries = []
        for key in ("gone", "purged"):
            try:
                await kv.get(key)
                entries.append((key, "found", None))
            except KeyNotFoundError as exc:  # nats-py says which operation removed it
                entries.append((key, "not found", exc.op))
        return entries

    async with connected(nats_server, 10) as client:
        kv = await KeyValue.open(client, "shared")
        await kv.put("gone", b"x")
        await kv.put("purged", b"y")
        await kv.delete("gone")
        await kv.purge("purged")
        result = await run_nats_py(nats_server.url, py_side)
    assert result == [("gone", "not found", "DEL"), ("purged", "not found", "PURGE")]


# -- the ordered-consumer rules, against a scripted server ------------------------------


async def test_a_delivery_gap_restarts_after_the_last_entry() -> None:
    """Consumer sequence 1 then 3: the second delivery is dropped and the consumer is
    recreated at the stream sequence after the last entry passed on."""
    seen: list[Entry] = []
    done = trio.Event()
    servers: list[ScriptedJetStream] = []

    async def handler(stream: trio.SocketStream) -> None:
        await greet(stream)
        server = ScriptedJetStream(stream)
        servers.append(server)
        reply, config = await server.until_consumer_create()
        assert config["deliver_policy"] == "last_per_subject"
        info = {"name": "C1", "num_pending": 3, "delivered": {"consumer_seq": 0, "stream_seq": 0}}
        await server.send(reply, None, json.dumps(info).encode())
        await server.deliver(config, "C1", sseq=10, cseq=1)
        await server.deliver(config, "C1", sseq=12, cseq=3)  # cseq 2 was lost
        reply, config = await server.until_consumer_create()
        info = {"name": "C2", "num_pending": 2, "delivered": {"consumer_seq": 0, "stream_seq": 10}}
        await server.send(reply, None, json.dumps(info).encode())
        await server.deliver(config, "C2", sseq=11, cseq=1)
        await server.deliver(config, "C2", sseq=12, cseq=2)
        done.set()
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with fake_server(handler) as url, open_nats_client(url, name="t") as client:
            kv = KeyValue(client, "b", "KV_b", "$KV.b.")
            watcher = await kv.watch(">", seen.append)
            await done.wait()
            await wait_for(lambda: len(seen) == 3, "three entries")
            assert watcher.resets == 1
            assert watcher.initial_done.is_set()  # the last delivery said 0 pending
    assert [(e.revision, e.value) for e in seen] == [(10, b"v10"), (11, b"v11"), (12, b"v12")]
    first, second = servers[0].creates
    assert second["deliver_policy"] == "by_start_sequence"
    assert second["opt_start_seq"] == 11
    assert second["deliver_subject"] != first["deliver_subject"]
    assert second["filter_subject"] == first["filter_subject"] == "$KV.b.>"
    assert (second["ack_policy"], second["flow_control"]) == ("none", True)


async def test_get_many_reads_keys_in_batches(nats_server: NatsServer) -> None:
    async with connected(nats_server) as client:
        kv = await KeyValue.open(client, "b", history=2)
        for index in range(600):  # more than two batches
            await kv.put(f"k{index}", b"%d" % index)
        await kv.put("k5", b"newer")
        await kv.delete("k7")

        requests: list[str] = []
        request_many = client.request_many

        async def counted(subject: str, *args: Any, **kwargs: Any) -> Any:
            requests.append(subject)
            return await request_many(subject, *args, **kwargs)

        client.request_many = counted  # type: ignore[method-assign]
        found = await kv.get_many([f"k{index}" for index in range(700)])
        assert len(requests) == 3  # (256 keys a request, not one request a key)
        assert await kv.get_many(["nothing", "none"]) == {}
    assert sorted(found) == sorted(f"k{index}" for index in range(600) if index != 7)
    assert found["k5"].value == b"newer" and found["k599"].value == b"599"
