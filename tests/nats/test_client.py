"""The trio NATS client against a real nats-server, nats-py as the other peer, and a
scripted fake server for what a real one will not do on demand (PING us, -ERR, go
silent)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg as PyMsg
from nats_peer import NatsPyPeer, run_nats_py
from nats_server import NatsServer
from scripted_server import INFO, fake_server, greet, read_until

from trio_mqtt.nats import (
    Msg,
    NATSConnectionClosed,
    NATSConnectionError,
    NATSLocalError,
    NATSProtocolError,
    NATSTimeoutError,
    NoRespondersError,
    open_nats_client,
)


async def collect(
    client: Client, subject: str, count: int, peer: NatsPyPeer, timeout: float = 5.0
) -> list[PyMsg]:
    """In nats-py: subscribe, say ready, return the first *count* messages."""
    sub = await client.subscribe(subject)
    await client.flush()
    peer.ready()
    return [await sub.next_msg(timeout=timeout) for _ in range(count)]


# -- against nats-server ----------------------------------------------------------------


async def test_connects_and_keeps_server_info(nats_server: NatsServer) -> None:
    with trio.fail_after(5):
        async with open_nats_client(nats_server.url, name="t") as client:
            assert client.server_info["version"] == "2.15.1"
            assert client.server_info["headers"] is True
            assert not client.is_closed
            await client.flush()
        assert client.is_closed
        with pytest.raises(NATSConnectionClosed):
            client.publish("a", b"")


async def test_publish_subscribe_with_reply_and_headers(nats_server: NatsServer) -> None:
    got: list[Msg] = []
    with trio.fail_after(5):
        async with open_nats_client(nats_server.url, name="t") as client:
            sid = client.subscribe("a.*", got.append)
            client.publish("a.b", b"one")
            client.publish("a.c", b"two", reply="r.1", headers={"X-Key": "v 1", "X-Key2": "v2"})
            client.publish("b.c", b"not matched")
            await client.flush()
            client.unsubscribe(sid)
            client.publish("a.d", b"after unsubscribe")
            await client.flush()
    assert [(m.subject, m.payload, m.reply) for m in got] == [
        ("a.b", b"one", None),
        ("a.c", b"two", "r.1"),
    ]
    assert got[0].headers is None
    assert got[1].headers is not None
    assert got[1].headers.items == (("X-Key", "v 1"), ("X-Key2", "v2"))
    assert got[0].sid == got[1].sid == sid


async def test_subscribe_payloads_gets_every_message_as_subject_and_payload(
    nats_server: NatsServer,
) -> None:
    got: list[tuple[str, bytes]] = []
    plain: list[Msg] = []
    with trio.fail_after(5):
        async with open_nats_client(nats_server.url, name="t") as client:
            sid = client.subscribe_payloads("a.*", lambda s, p: got.append((s, p)))
            client.subscribe("a.*", plain.append)  # the same messages as Msg events
            for i in range(50):  # (all but the first of a line take deliver_msgs)
                client.publish("a.b", b"%d" % i)
            client.publish("a.c", b"with reply", reply="r.1")
            client.publish("a.c", b"with headers", headers={"K": "v"})
            await client.flush()
            client.unsubscribe(sid)
            client.publish("a.d", b"after unsubscribe")
            await client.flush()
    assert got == [("a.b", b"%d" % i) for i in range(50)] + [
        ("a.c", b"with reply"),
        ("a.c", b"with headers"),
    ]
    assert [(m.subject, m.payload) for m in plain][:-1] == got


async def test_queue_group_delivers_each_message_once(nats_server: NatsServer) -> None:
    first: list[Msg] = []
    second: list[Msg] = []
    with trio.fail_after(5):
        async with open_nats_client(nats_server.url, name="t") as client:
            client.subscribe("work", first.append, queue="q")
            client.subscribe("work", second.append, queue="q")
            for index in range(40):
                client.publish("work", str(index).encode())
            await client.flush()
    payloads = sorted(int(m.payload) for m in first + second)
    assert payloads == list(range(40))


async def test_no_echo(nats_server: NatsServer) -> None:
    got: list[bytes] = []
    with trio.fail_after(5):
        async with (
            open_nats_client(nats_server.url, name="quiet", no_echo=True) as quiet,
            open_nats_client(nats_server.url, name="other") as other,
        ):
            quiet.subscribe("e", lambda m: got.append(m.payload))
            await quiet.flush()
            quiet.publish("e", b"mine")
            other.publish("e", b"theirs")
            await quiet.flush()
            await other.flush()
            await quiet.flush()
    assert got == [b"theirs"]


async def test_request_reply_no_responders_and_timeout(nats_server: NatsServer) -> None:
    with trio.fail_after(5):
        async with open_nats_client(nats_server.url, name="t") as client:
            client.subscribe("echo", lambda m: client.publish(m.reply or "", m.payload.upper()))
            client.subscribe("silent", lambda m: None)
            replies = [await client.request("echo", f"r{i}".encode()) for i in range(3)]
            assert [r.payload for r in replies] == [b"R0", b"R1", b"R2"]
            with pytest.raises(NoRespondersError, match="'nobody'"):
                await client.request("nobody", b"x")
            with pytest.raises(NATSTimeoutError) as caught:
                await client.request("silent", b"x", timeout=0.1)
            assert isinstance(caught.value, trio.TooSlowError)
            # Concurrent requests each get their own reply.
            results: dict[int, bytes] = {}

            async def ask(i: int) -> None:
                results[i] = (await client.request("echo", f"c{i}".encode())).payload

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(ask, i)
            assert results == {i: f"C{i}".encode() for i in range(10)}


async def test_request_many_collects_until_max(nats_server: NatsServer) -> None:
    def answer_three(msg: Msg) -> None:
        for i in range(3):
            client.publish(msg.reply or "", f"part {i}".encode())

    with trio.fail_after(5):
        async with open_nats_client(nats_server.url, name="t") as client:
            client.subscribe("parts", answer_three)
            replies = await client.request_many("parts", b"", max_msgs=3)
            assert [r.payload for r in replies] == [b"part 0", b"part 1", b"part 2"]
            with pytest.raises(NATSTimeoutError):
                await client.request_many("parts", b"", max_msgs=4, timeout=0.2)


async def test_pending_bytes_drain_and_batching(nats_server: NatsServer) -> None:
    got: list[bytes] = []
    payload = b"x" * 1000
    with trio.fail_after(5):
        async with open_nats_client(nats_server.url, name="t", low_water=10_000) as client:
            client.subscribe("bulk", lambda m: got.append(m.payload))
            await client.flush()
            for _ in range(500):
                client.publish("bulk", payload)  # never blocks
            assert client.pending_bytes > 500 * 1000
            await client.drain()
            assert client.pending_bytes <= 10_000
            await client.flush()
            assert client.pending_bytes == 0
    assert len(got) == 500


async def test_leaving_the_context_sends_what_is_buffered(nats_server: NatsServer) -> None:
    async def body(nc: Client, peer: NatsPyPeer) -> list[PyMsg]:
        return await collect(nc, "last.words", 50, peer)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            peer = await NatsPyPeer.start(nursery, nats_server.url, body)
            async with open_nats_client(nats_server.url, name="t") as client:
                for index in range(50):
                    client.publish("last.words", str(index).encode())
            received = await peer.result()
    assert [int(m.data) for m in received] == list(range(50))


class _BodyError(Exception):
    pass


async def test_an_error_in_the_body_leaves_the_context(nats_server: NatsServer) -> None:
    # with pending output to flush on the way out (the close path awaits)
    with trio.fail_after(5), pytest.RaisesGroup(_BodyError):
        async with open_nats_client(nats_server.url, name="t") as client:
            client.publish("a", b"x" * 100_000)
            raise _BodyError


async def test_invalid_arguments_raise_at_once(nats_server: NatsServer) -> None:
    with trio.fail_after(5):
        async with open_nats_client(nats_server.url, name="t") as client:
            with pytest.raises(NATSLocalError):
                client.publish("a b", b"")
            with pytest.raises(NATSLocalError):
                client.subscribe("", lambda m: None)
            with pytest.raises(NATSLocalError, match="max_payload"):
                client.publish("big", b"x" * (client.server_info["max_payload"] + 1))
            assert client.pending_bytes == 0


async def test_callback_error_ends_the_client(nats_server: NatsServer) -> None:
    def explode(msg: Msg) -> None:
        raise ValueError("bug in a callback")

    with trio.fail_after(5), pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="bug in")):
        async with open_nats_client(nats_server.url, name="t") as client:
            client.subscribe("boom", explode)
            client.publish("boom", b"")
            await trio.sleep_forever()


async def test_server_death_fails_requests_and_the_body(nats_server: NatsServer) -> None:
    failures: list[BaseException] = []

    async def waiting_request() -> None:
        try:
            await client.request("silent", b"", timeout=5)
        except NATSConnectionClosed as exc:
            failures.append(exc)
            raise

    with trio.fail_after(5), pytest.raises(ExceptionGroup) as caught:
        async with open_nats_client(nats_server.url, name="t") as client:
            client.subscribe("silent", lambda m: None)
            await client.flush()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiting_request)
                await trio.sleep(0.05)
                nats_server.kill()
                await trio.sleep_forever()
    assert caught.group_contains(NATSConnectionClosed, match="server closed|connection lost")
    _, others = caught.value.split(NATSConnectionClosed)
    assert others is None  # nothing but the closed connection
    assert client.is_closed
    assert len(failures) <= 1  # the request saw it too, unless cancelled first


async def test_on_closed_is_called_once_before_the_tasks_see_the_loss(
    nats_server: NatsServer,
) -> None:
    seen: list[tuple[str, bool]] = []
    with trio.fail_after(5), pytest.raises(ExceptionGroup) as caught:
        async with open_nats_client(nats_server.url, name="t") as client:
            client.on_closed = lambda exc: seen.append((str(exc), client.is_closed))
            await client.flush()
            nats_server.kill()
            await trio.sleep_forever()
    assert caught.group_contains(NATSConnectionClosed)
    assert len(seen) == 1, seen  # once, although the client is also closed at the end
    assert seen[0][1]  # (already marked closed: calls into it fail from then on)


async def test_connect_failure_lists_every_url(nats_server: NatsServer) -> None:
    bad = "nats://127.0.0.1:1"
    with trio.fail_after(5):
        async with open_nats_client([bad, nats_server.url], name="t") as client:
            await client.flush()  # the second URL worked
        with pytest.raises(NATSConnectionError, match=r"127\.0\.0\.1:1.*127\.0\.0\.1:2"):
            async with open_nats_client([bad, "nats://127.0.0.1:2"], name="t"):
                pass  # pragma: no cover
        with pytest.raises(NATSConnectionError, match="unsupported URL scheme"):
            async with open_nats_client("ws://127.0.0.1:4222", name="t"):
                pass  # pragma: no cover


# -- with nats-py as the other peer -----------------------------------------------------


async def test_nats_py_receives_our_publish_with_headers(nats_server: NatsServer) -> None:
    async def body(nc: Client, peer: NatsPyPeer) -> list[PyMsg]:
        return await collect(nc, "to.py.>", 2, peer)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            peer = await NatsPyPeer.start(nursery, nats_server.url, body)
            async with open_nats_client(nats_server.url, name="t") as client:
                client.publish("to.py.plain", b"plain", reply="re.ply")
                client.publish("to.py.hdr", b"\x00bin\xff", headers={"Trace-Id": "abc", "K": "v"})
            first, second = await peer.result()
    assert (first.subject, first.data, first.reply, first.headers) == (
        "to.py.plain",
        b"plain",
        "re.ply",
        None,
    )
    assert second.subject == "to.py.hdr"
    assert second.data == b"\x00bin\xff"
    assert second.headers == {"Trace-Id": "abc", "K": "v"}


async def test_our_subscriber_and_responder_serve_nats_py(nats_server: NatsServer) -> None:
    got: list[Msg] = []

    def respond(msg: Msg) -> None:
        assert msg.headers is not None
        client.publish(msg.reply or "", msg.payload[::-1], headers={"Seen": msg.headers["X"]})

    async def body(nc: Client) -> tuple[bytes, dict[str, str] | None]:
        await nc.publish("from.py", b"hello", headers={"Origin": "nats-py"})
        reply = await nc.request("svc.reverse", b"abc", timeout=2, headers={"X": "42"})
        return reply.data, reply.headers

    with trio.fail_after(10):
        async with open_nats_client(nats_server.url, name="t") as client:
            client.subscribe("from.py", got.append)
            client.subscribe("svc.reverse", respond, queue="svc")
            await client.flush()
            data, headers = await run_nats_py(nats_server.url, body)
            await client.flush()
    assert (data, headers) == (b"cba", {"Seen": "42"})
    assert [(m.subject, m.payload) for m in got] == [("from.py", b"hello")]
    assert got[0].headers is not None
    assert got[0].headers.get("Origin") == "nats-py"


async def test_nats_py_responder_answers_our_request(nats_server: NatsServer) -> None:
    async def body(nc: Client, peer: NatsPyPeer) -> int:
        served = 0
        done = asyncio.Event()

        async def handler(msg: PyMsg) -> None:
            nonlocal served
            served += 1
            await msg.respond(json.dumps({"n": int(msg.data)}).encode())
            if served == 3:
                done.set()

        await nc.subscribe("py.svc", cb=handler)
        await nc.flush()
        peer.ready()
        await asyncio.wait_for(done.wait(), 5)
        return served

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            peer = await NatsPyPeer.start(nursery, nats_server.url, body)
            async with open_nats_client(nats_server.url, name="t") as client:
                answers = [
                    json.loads((await client.request("py.svc", str(i).encode())).payload)
                    for i in range(3)
                ]
            assert await peer.result() == 3
    assert answers == [{"n": 0}, {"n": 1}, {"n": 2}]


# -- a scripted fake server -------------------------------------------------------------


async def test_connect_options_sent() -> None:
    seen: list[dict[str, object]] = []

    async def handler(stream: trio.SocketStream) -> None:
        buffer = await greet(stream)
        line = bytes(buffer).split(b"\r\n")[0]
        seen.append(json.loads(line.removeprefix(b"CONNECT ")))
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with fake_server(handler) as url, open_nats_client(url, name="n1", no_echo=True):
            pass
    assert seen[0]["name"] == "n1"
    assert seen[0]["echo"] is False
    assert seen[0]["headers"] is True and seen[0]["no_responders"] is True
    assert seen[0]["verbose"] is False and seen[0]["lang"] == "python-trio"
    assert seen[0]["protocol"] == 1


async def test_err_at_connect_is_a_connection_error() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.send_all(INFO)
        await read_until(stream, b"PING\r\n", bytearray())
        await stream.send_all(b"-ERR 'Authorization Violation'\r\n")
        await stream.aclose()

    with trio.fail_after(5):
        async with fake_server(handler) as url:
            with pytest.raises(NATSConnectionError, match="Authorization Violation"):
                async with open_nats_client(url, name="t"):
                    pass  # pragma: no cover


async def test_answers_server_ping_and_reports_fatal_err(caplog: pytest.LogCaptureFixture) -> None:
    answered = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        await greet(stream)
        await stream.send_all(b"PING\r\n")
        buffer = bytearray()
        await read_until(stream, b"PONG\r\n", buffer)
        answered.set()
        await stream.send_all(b"-ERR 'Permissions Violation for Publish to x'\r\n")
        await stream.send_all(b"-ERR 'Slow Consumer'\r\n")
        await stream.aclose()

    caplog.set_level(logging.WARNING, "trio_mqtt.nats")
    with (
        trio.fail_after(5),
        pytest.RaisesGroup(
            pytest.RaisesExc(NATSConnectionClosed, match="'Slow Consumer'"),
            flatten_subgroups=True,
        ),
    ):
        async with fake_server(handler) as url, open_nats_client(url, name="t"):
            await trio.sleep_forever()
    assert answered.is_set()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", "nats server error: Permissions Violation for Publish to x") in messages
    assert ("ERROR", "nats server error (fatal): Slow Consumer") in messages


async def test_a_silent_server_is_detected_as_stale() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await greet(stream)
        await trio.sleep_forever()  # never answers our PINGs

    with (
        trio.fail_after(5),
        pytest.RaisesGroup(
            pytest.RaisesExc(NATSConnectionClosed, match="stale"), flatten_subgroups=True
        ),
    ):
        async with (
            fake_server(handler) as url,
            open_nats_client(url, name="t", ping_interval=0.05) as client,
        ):
            await trio.sleep_forever()
    assert client.is_closed


async def test_malformed_server_bytes_close_the_client() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await greet(stream)
        await stream.send_all(b"MSG a 1 notanumber\r\n")
        await trio.sleep_forever()

    with (
        trio.fail_after(5),
        pytest.RaisesGroup(
            pytest.RaisesExc(NATSProtocolError, match="invalid message line"),
            flatten_subgroups=True,
        ),
    ):
        async with fake_server(handler) as url, open_nats_client(url, name="t") as client:
            await trio.sleep_forever()
    assert client.is_closed
    with pytest.raises(NATSConnectionClosed, match="invalid message line"):
        await client.flush()
