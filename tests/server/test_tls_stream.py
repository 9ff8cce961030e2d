"""TLSStream (trio_mqtt/server/tls_stream.py): server-side TLS on ssl.MemoryBIO.

The client side is trio's own SSLStream, a TLS implementation we did not write. Most
tests run on a real socket pair (the stream then reads and writes the descriptor itself,
as in the broker); some on ``trio.testing`` memory streams (every byte through the
transport's methods: the path without a descriptor). They check the stream's contract
(handshake, records larger than 16 KiB, bounded reads, EOF with and without
close_notify, a peer closing mid-record, garbage instead of TLS, close_notify on a
forceful close) and, through ``run_connection``, that TLS answers go out without the
writer task.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers import (
    PEER,
    V5,
    V311,
    GatedStream,
    SocketReads,
    make_core,
    read_packets,
    socket_stream_pair,
)
from tools import require_tool

from trio_mqtt.config import ListenerConfig
from trio_mqtt.mqtt.codec import PacketReader, encode
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionRequest,
)
from trio_mqtt.peer import PeerInfo
from trio_mqtt.server import connection
from trio_mqtt.server.connection import run_connection
from trio_mqtt.server.idle_park import idle_park_for
from trio_mqtt.server.prefixed_stream import PrefixedStream
from trio_mqtt.server.rejection import TLSHandshakeRejected
from trio_mqtt.server.tls import ServerTLS, tls_handshake
from trio_mqtt.server.tls_stream import TLSStream
from trio_mqtt.server.watched_stream import WatchedSocketStream
from trio_mqtt.testing import open_test_broker

from .certs import CertFiles, TestPKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(tmp_path_factory.mktemp("pki"))


def socket_pair(*, small: bool = False) -> tuple[trio.SocketStream, WatchedSocketStream]:
    """(client, server) over a socketpair; the server side wrapped as the listener does."""
    client, server = socket_stream_pair(small_buffers=small)
    return client, WatchedSocketStream(server.socket)


async def tcp_pair() -> tuple[trio.SocketStream, WatchedSocketStream]:
    """(client, server) over TCP on 127.0.0.1 (which, unlike a socketpair, can reset)."""
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, _address = await listener.accept()
    return trio.SocketStream(client), WatchedSocketStream(server)


class HeldWrites(GatedStream):
    """A client transport whose writes can be held and then sent in one write: records
    the client's SSLStream produced one by one reach the server in one socket read."""

    held: bytearray | None = None

    def hold(self) -> None:
        self.held = bytearray()

    async def release(self) -> None:
        held, self.held = self.held, None
        assert held is not None
        await super().send_all(held)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.held is None:
            await super().send_all(data)
        else:
            self.held += data


@asynccontextmanager
async def tls_pair(
    pki: TestPKI,
    *,
    client_cert: CertFiles | None = None,
    small: bool = False,
    memory: bool = False,
    held: bool = False,
    tcp: bool = False,
    **tls_options: bool,
) -> AsyncIterator[tuple[trio.SSLStream[Any], TLSStream, PeerInfo]]:
    """A client SSLStream and our server TLSStream with the handshake done, and the peer.
    ``held``: the client's transport is a ``HeldWrites`` (its ``transport_stream``);
    ``tcp``: over TCP (``tcp_pair``) rather than a socketpair."""
    transport: trio.abc.Stream
    client_transport: trio.abc.Stream
    if memory:
        client_transport, transport = trio.testing.memory_stream_pair()
    elif tcp:
        client_transport, transport = await tcp_pair()
    else:
        client_transport, transport = socket_pair(small=small)
    if held:
        client_transport = HeldWrites(client_transport)
    client = trio.SSLStream(
        client_transport, pki.client_context(client_cert), server_hostname="localhost"
    )
    tls = ServerTLS.load(pki.tls_config(**tls_options))
    result: list[tuple[TLSStream, PeerInfo]] = []

    async def serve() -> None:
        result.append(await tls_handshake(PrefixedStream(transport, b""), tls, PEER, 5))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.do_handshake()
    server, peer = result[0]
    try:
        yield client, server, peer
    finally:
        await trio.aclose_forcefully(server)
        await trio.aclose_forcefully(client)


@asynccontextmanager
async def tls_connection(
    pki: TestPKI, *, memory: bool = False, held: bool = False
) -> AsyncIterator[tuple[trio.SSLStream[Any], TLSStream]]:
    """A client connected over TLS to ``run_connection`` (a fresh core); the server's
    TLSStream too. The connection is cancelled at the end."""
    async with (
        tls_pair(pki, memory=memory, held=held) as (client, server, peer),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(run_connection, server, make_core(trio.current_time), peer, nursery)
        yield client, server
        nursery.cancel_scope.cancel()


async def receive_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF after {len(data)} of {count} bytes"
        data += chunk
    return bytes(data)


# ------------------------------------------------------------------ handshake and facts


@pytest.mark.parametrize("memory", [False, True], ids=["socket", "memory"])
async def test_handshake_gives_the_tls_facts_and_carries_data_both_ways(
    pki: TestPKI, memory: bool
) -> None:
    async with tls_pair(pki, memory=memory) as (client, server, peer):
        assert server.direct is not memory  # a descriptor only under a real socket
        assert peer.tls is not None
        assert peer.tls.version in ("TLSv1.2", "TLSv1.3")
        assert peer.tls.cipher == client.cipher()[0]
        assert peer.tls.sni == "localhost"
        assert not peer.tls.peer_verified and peer.tls.peer_cn is None
        await client.send_all(b"hello")
        assert await server.receive_some() == b"hello"
        await server.send_all(b"world")
        assert await receive_exactly(client, 5) == b"world"


async def test_client_certificate_identity_becomes_the_username(pki: TestPKI) -> None:
    async with tls_pair(pki, client_cert=pki.alice, use_identity_as_username=True) as (
        _client,
        _server,
        peer,
    ):
        assert peer.tls is not None
        assert peer.tls.peer_verified and peer.tls.peer_cn == "alice"
        assert peer.username == "alice" and peer.identity_error is None


async def test_a_required_client_certificate_that_is_missing_fails_the_handshake(
    pki: TestPKI,
) -> None:
    client_transport, transport = socket_pair()
    client = trio.SSLStream(client_transport, pki.client_context(), server_hostname="localhost")
    tls = ServerTLS.load(pki.tls_config(require_client_cert=True))
    rejected: list[TLSHandshakeRejected] = []

    async def serve() -> None:
        try:
            await tls_handshake(transport, tls, PEER, 5)
        except TLSHandshakeRejected as exc:
            rejected.append(exc)
        await trio.aclose_forcefully(transport)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                await client.do_handshake()
                await client.receive_some(100)  # TLS 1.3: the refusal comes after
            except trio.BrokenResourceError:
                pass
    assert rejected and rejected[0].result == "failed"
    assert "CERTIFICATE" in rejected[0].detail.upper()


async def test_garbage_instead_of_tls_is_a_failed_handshake(pki: TestPKI) -> None:
    client, transport = socket_pair()
    tls = ServerTLS.load(pki.tls_config())
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5), pytest.raises(TLSHandshakeRejected) as caught:
        await tls_handshake(transport, tls, PEER, 5)
    assert caught.value.result == "failed"
    assert "not a TLS client?" in caught.value.detail


async def test_a_peer_closing_during_the_handshake_is_a_closed_handshake(pki: TestPKI) -> None:
    client, transport = socket_pair()
    tls = ServerTLS.load(pki.tls_config())
    await client.send_all(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
    await client.aclose()
    with trio.fail_after(5), pytest.raises(TLSHandshakeRejected) as caught:
        await tls_handshake(transport, tls, PEER, 5)
    assert caught.value.result == "closed"


async def test_the_handshake_has_a_timeout(pki: TestPKI) -> None:
    _client, transport = socket_pair()
    tls = ServerTLS.load(pki.tls_config())
    with trio.fail_after(5), pytest.raises(TLSHandshakeRejected) as caught:
        await tls_handshake(transport, tls, PEER, 0.2)
    assert caught.value.result == "timeout"


# ------------------------------------------------------------------ data


@pytest.mark.parametrize("memory", [False, True], ids=["socket", "memory"])
async def test_large_writes_span_many_records_and_reads_stay_bounded(
    pki: TestPKI, memory: bool
) -> None:
    blob = bytes(range(256)) * 1200  # 300 KiB: about 19 records of 16 KiB
    async with tls_pair(pki, memory=memory, small=True) as (client, server, _peer):
        # (a record's plaintext left after a bounded read must be found without more
        # ciphertext coming: otherwise the last record's rest is never read)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, blob)
                received = bytearray()
                while len(received) < len(blob):
                    chunk = await server.receive_some(1000)
                    assert 0 < len(chunk) <= 1000  # never more plaintext than asked for
                    received += chunk
        assert received == blob
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, blob)
            assert await receive_exactly(client, len(blob)) == blob


async def test_send_nowait_leaves_what_a_full_socket_refuses_for_send_all(pki: TestPKI) -> None:
    blob = bytes(range(256)) * 1024  # 256 KiB: far more than the small socket buffers
    async with tls_pair(pki, small=True) as (client, server, _peer):
        assert not server.send_nowait(blob)  # encrypted; most of it waits in the backlog
        assert server.backlog
        assert not server.send_nowait(b"tail")  # queued behind it, in order
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"")  # flushes the backlog
            assert await receive_exactly(client, len(blob) + 4) == blob + b"tail"
        assert not server.backlog
        assert server.send_nowait(b"small")  # room again: all written at once
        assert await receive_exactly(client, 5) == b"small"


async def test_receive_nowait_reads_what_is_there_and_says_when_to_wait(pki: TestPKI) -> None:
    # The connection's reader on a socket calls receive_nowait and waits for the socket
    # itself: records that came in one socket read come back together, as plain TCP's
    # bytes do (one pass of the connection for them), never more than max_bytes; and it
    # is told to wait only when nothing is left.
    async with tls_pair(pki) as (client, server, _peer):
        assert server.reads_socket()
        assert server.receive_nowait(65536) is None  # nothing sent yet
        for data in (b"first", b"second", b"third"):  # three records, in the socket together
            await client.send_all(data)
        await trio.testing.wait_all_tasks_blocked()
        assert server.receive_nowait(8, socket_ready=True) == b"firstsec"
        assert not server.wait_first  # the rest is here: no wait for it
        assert server.receive_nowait(65536) == b"ondthird"
        assert server.wait_first  # all read, and the socket read was short
        assert server.receive_nowait(65536) is None
        await client.send_all(b"fourth")
        await trio.testing.wait_all_tasks_blocked()
        assert server.receive_nowait(65536, socket_ready=True) == b"fourth"
        await client.aclose()  # close_notify
        await trio.testing.wait_all_tasks_blocked()
        assert server.receive_nowait(65536, socket_ready=True) == b""


@pytest.mark.parametrize("after", ["close_notify", "close_notify_after_ours", "garbage"])
async def test_what_ends_records_read_together_is_said_by_the_next_read(
    pki: TestPKI, after: str
) -> None:
    # Records read ahead of the first one stop at a close_notify or at a record OpenSSL
    # rejects; the plaintext before it comes first, and the next read says what it was,
    # without waiting for a socket that brings nothing more (the client keeps it open).
    # After our own close_notify (send_eof), OpenSSL reports the client's by raising
    # SSLZeroReturnError instead of returning b"": still the end, not a broken stream.
    async with tls_pair(pki, held=True) as (client, server, _peer), trio.open_nursery() as nursery:
        held = client.transport_stream
        assert isinstance(held, HeldWrites)
        if after == "close_notify_after_ours":
            await server.send_eof()
        held.hold()
        await client.send_all(b"one")
        await client.send_all(b"two")
        if after != "garbage":
            nursery.start_soon(client.unwrap)  # sends close_notify, then waits for ours
            await trio.testing.wait_all_tasks_blocked()
        else:
            assert held.held is not None
            held.held += bytes([23, 3, 3, 0, 20]) + bytes(20)  # application data, bad MAC
        await held.release()
        await trio.testing.wait_all_tasks_blocked()
        assert server.receive_nowait(65536, socket_ready=True) == b"onetwo"
        assert not server.wait_first
        if after != "garbage":
            assert server.receive_nowait(65536) == b""
        else:
            with pytest.raises(trio.BrokenResourceError) as caught:
                server.receive_nowait(65536)
            cause = caught.value.__cause__
            assert isinstance(cause, ssl.SSLError)
            assert "BAD_RECORD_MAC" in str(cause.reason)  # what OpenSSL found, not a later EOF
        nursery.cancel_scope.cancel()


async def test_a_pending_proxy_leftover_keeps_the_reader_off_the_socket(pki: TestPKI) -> None:
    # While the PROXY preamble's leftover holds bytes, they must reach OpenSSL before
    # anything read from the socket: reads_socket() says no until it is drained, and the
    # reader (_read_loop) goes through receive_some until then.
    client_transport, transport = socket_pair()
    prefixed = PrefixedStream(transport, b"leftover")
    server = TLSStream(prefixed, ServerTLS.load(pki.tls_config()).context)
    assert not server.reads_socket()
    await prefixed.receive_some(8)  # the leftover taken
    assert server.reads_socket()
    await trio.aclose_forcefully(client_transport)
    await trio.aclose_forcefully(server)


# ------------------------------------------------------------------ ends


@pytest.mark.parametrize("memory", [False, True], ids=["socket", "memory"])
async def test_close_notify_from_the_peer_is_the_end_of_the_stream(
    pki: TestPKI, memory: bool
) -> None:
    async with tls_pair(pki, memory=memory) as (client, server, _peer):
        await client.send_all(b"last")
        await client.aclose()  # close_notify, then the transport closes
        assert await receive_exactly(server, 4) == b"last"
        assert await server.receive_some() == b""


async def test_eof_without_close_notify_breaks_the_stream(pki: TestPKI) -> None:
    async with tls_pair(pki) as (client, server, _peer):
        await client.transport_stream.aclose()  # TCP FIN, no close_notify
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            await server.send_all(b"x")


async def test_a_peer_closing_mid_record_breaks_the_stream_cleanly(pki: TestPKI) -> None:
    client_transport, transport = socket_pair()
    outgoing = ssl.MemoryBIO()
    incoming = ssl.MemoryBIO()
    # a client on memory BIOs too, so that we can cut its records
    client = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    tls = ServerTLS.load(pki.tls_config())
    result: list[TLSStream] = []

    async def serve() -> None:
        result.append((await tls_handshake(transport, tls, PEER, 5))[0])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            while True:
                try:
                    client.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await client_transport.send_all(outgoing.read())
                    incoming.write(await client_transport.receive_some(65536))
            await client_transport.send_all(outgoing.read())
    server = result[0]
    client.write(b"x" * 1000)
    record = outgoing.read()
    await client_transport.send_all(record[: len(record) // 2])
    await client_transport.aclose()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as caught:
        await server.receive_some()
    assert isinstance(caught.value.__cause__, ssl.SSLError)
    await server.aclose()


async def test_garbage_after_the_handshake_breaks_the_stream(pki: TestPKI) -> None:
    async with tls_pair(pki) as (client, server, _peer):
        await client.transport_stream.send_all(b"\x17\x03\x03\x00\x10" + bytes(16))  # bad MAC
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as caught:
            await server.receive_some()
        assert isinstance(caught.value.__cause__, ssl.SSLError)


@pytest.mark.parametrize("memory", [False, True], ids=["socket", "memory"])
async def test_a_forceful_close_still_sends_close_notify(pki: TestPKI, memory: bool) -> None:
    async with tls_pair(pki, memory=memory) as (client, server, _peer):
        await server.send_all(b"bye")
        await trio.aclose_forcefully(server)  # cancelled: nothing may wait
        assert await receive_exactly(client, 3) == b"bye"
        assert await client.receive_some(100) == b""  # a clean end, not BrokenResourceError
        with pytest.raises(trio.ClosedResourceError):
            await server.receive_some()


async def test_a_second_concurrent_receive_is_busy(pki: TestPKI) -> None:
    async with tls_pair(pki) as (_client, server, _peer), trio.open_nursery() as nursery:
        nursery.start_soon(server.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await server.receive_some()
        nursery.cancel_scope.cancel()


async def test_a_cancelled_receive_loses_nothing(pki: TestPKI) -> None:
    async with tls_pair(pki) as (client, server, _peer):
        with trio.move_on_after(0.05):
            await server.receive_some()
        await client.send_all(b"after")
        assert await server.receive_some() == b"after"


# ------------------------------------------------------------------ the connection on top


async def test_tls_answers_go_out_without_the_writer_task(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PINGREQ -> PINGRESP and PUBLISH -> PUBACK + own delivery, one at a time: the reader
    # encrypts and writes every answer itself (with trio's SSLStream every one of them
    # went through a writer task).
    writers = 0
    real_write_loop = connection._write_loop

    async def counting_write_loop(*args: Any) -> None:
        nonlocal writers
        writers += 1
        await real_write_loop(*args)

    monkeypatch.setattr(connection, "_write_loop", counting_write_loop)
    reader = PacketReader(protocol_version=V311, server_side=False)
    async with tls_pair(pki) as (client, server, peer), trio.open_nursery() as nursery:
        nursery.start_soon(run_connection, server, make_core(trio.current_time), peer, nursery)
        await client.send_all(encode(Connect(client_id="tls", keep_alive=60), V311))
        subscribe = Subscribe(packet_id=1, subscriptions=(SubscriptionRequest("t/#", 1),))
        await client.send_all(encode(subscribe, V311))
        assert await read_packets(client, reader, 2) == [
            Connack(),
            Suback(packet_id=1, reason_codes=(1,)),
        ]
        for n in range(1, 21):
            await client.send_all(encode(Pingreq(), V311))
            assert await read_packets(client, reader, 1) == [Pingresp()]
            publish = Publish(topic="t/x", payload=b"%d" % n, qos=1, packet_id=n)
            await client.send_all(encode(publish, V311))
            got = await read_packets(client, reader, 2)
            assert Puback(n) in got
        nursery.cancel_scope.cancel()
    assert writers == 0


@pytest.mark.parametrize("memory", [False, True], ids=["socket", "memory"])
async def test_send_eof_is_close_notify_and_receiving_goes_on(pki: TestPKI, memory: bool) -> None:
    async with tls_pair(pki, memory=memory) as (client, server, _peer):
        await server.send_all(b"last word")
        await server.send_eof()
        with trio.fail_after(5):
            assert await client.receive_some(100) == b"last word"
            assert await client.receive_some(100) == b""  # close_notify: a clean EOF
        with pytest.raises(trio.ClosedResourceError):
            await server.send_all(b"more")
        assert not server.send_nowait(b"more")
        await client.send_all(b"still listening?")
        with trio.fail_after(5):
            assert await server.receive_some(100) == b"still listening?"


@pytest.mark.parametrize("read", ["receive_nowait", "receive_some"])
async def test_a_socket_that_fails_under_a_read_breaks_the_stream(pki: TestPKI, read: str) -> None:
    # A reset (the client gone without a TLS goodbye) makes the socket read fail: the
    # stream is broken from then on, whether the reader read the socket itself
    # (receive_nowait, as the connection's reader does) or waited in receive_some.
    async with tls_pair(pki, tcp=True) as (client, server, _peer), trio.open_nursery() as nursery:
        raw = client.transport_stream
        assert isinstance(raw, trio.SocketStream)
        caught: list[BaseException] = []
        received = trio.Event()

        async def receive() -> None:
            with pytest.raises(trio.BrokenResourceError) as broken:
                await server.receive_some(100)
            caught.append(broken.value)
            received.set()

        if read == "receive_some":
            nursery.start_soon(receive)  # waits: nothing sent
            await trio.testing.wait_all_tasks_blocked()
        raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.socket.close()  # SO_LINGER 0: a reset, not a FIN
        if read == "receive_nowait":
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(server.fd)
            with pytest.raises(trio.BrokenResourceError) as broken:
                server.receive_nowait(65536, socket_ready=True)
            caught.append(broken.value)
        else:
            with trio.fail_after(5):
                await received.wait()
        (error,) = caught
        assert "socket connection broken" in str(error)
        assert isinstance(error.__cause__, ConnectionResetError)
        with pytest.raises(trio.BrokenResourceError, match="the TLS stream is broken"):
            await server.receive_some(100)


@pytest.mark.parametrize("close", ["send_eof", "aclose"])
async def test_a_close_notify_before_any_record_reaches_the_client_cleanly(
    pki: TestPKI, close: str
) -> None:
    # Under TLS 1.3 the session tickets wait for our first record; they are records of
    # their own, numbered, so a close_notify sent before anything else must follow
    # them: without them the client cannot decrypt it (a bad record MAC, not an EOF).
    async with tls_pair(pki) as (client, server, _peer):
        assert server.version() == "TLSv1.3"
        if close == "send_eof":
            await server.send_eof()
        else:
            await server.aclose()
        with trio.fail_after(5):
            assert await client.receive_some(100) == b""  # close_notify: a clean EOF


@pytest.mark.parametrize("memory", [False, True], ids=["socket", "memory"])
async def test_after_its_last_word_the_broker_closes_a_tls_connection_at_once(
    pki: TestPKI, autojump_clock: trio.testing.MockClock, memory: bool
) -> None:
    # A client that reads until the broker closes (rather than closing itself once it
    # has the refusal) sees the end at once: close_notify then FIN, as a plain-TCP
    # client sees FIN. Without them it waited for the linger's LINGER_TIMEOUT.
    reader = PacketReader(protocol_version=V311, server_side=False)
    async with tls_connection(pki, memory=memory) as (client, _server):
        # 3.1.1: an empty client id needs a clean session (CONNACK 2, identifier rejected)
        await client.send_all(encode(Connect(client_id="", clean_start=False), V311))
        [connack] = await read_packets(client, reader, 1)
        assert isinstance(connack, Connack) and connack.reason_code != 0  # refused
        start = trio.current_time()
        with trio.fail_after(100):
            assert await client.receive_some(100) == b""
        assert trio.current_time() - start < connection.LINGER_TIMEOUT / 10


@pytest.mark.parametrize("memory", [False, True], ids=["socket", "memory"])
async def test_tls_keep_alive_timeout_closes_on_time(
    pki: TestPKI, autojump_clock: trio.testing.MockClock, memory: bool
) -> None:
    # On a socket the reader waits inside TLSStream for the socket in no cancel scope of
    # its own: the KeepAliveWatch rings it (notify_closing) at 1.5 x keep alive, and the
    # DISCONNECT still goes out through the TLS stream. On memory streams: a scope.
    reader = PacketReader(protocol_version=V5, server_side=False)
    async with tls_connection(pki, memory=memory) as (client, _server):
        connect = Connect(client_id="tls-ka", protocol_version=V5, keep_alive=4)
        await client.send_all(encode(connect, V5))
        [connack] = await read_packets(client, reader, 1)
        assert isinstance(connack, Connack) and connack.reason_code == 0
        start = trio.current_time()
        with trio.fail_after(100):
            assert await read_packets(client, reader, 1) == [Disconnect(reason_code=0x8D)]
        assert trio.current_time() - start == 6


async def test_a_quiet_tls_connection_parks_and_is_still_answered(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    # As on plain TCP (test_idle_park.py): the reader, waiting inside TLSStream, is rung
    # to park; its socket waits in the IdlePark; the client's next record resumes it.
    reader = PacketReader(protocol_version=V5, server_side=False)
    core = make_core(trio.current_time)
    async with tls_pair(pki) as (client, server, peer), trio.open_nursery() as nursery:
        park = idle_park_for(nursery, connection._resume)
        nursery.start_soon(run_connection, server, core, peer, nursery)
        connect = Connect(client_id="tls-quiet", protocol_version=V5, keep_alive=4)
        await client.send_all(encode(connect, V5))
        [connack] = await read_packets(client, reader, 1)
        assert isinstance(connack, Connack) and connack.reason_code == 0
        start = trio.current_time()
        await trio.sleep(connection.PARK_AFTER + connection.PARK_GRAIN)
        assert len(park) == 1
        await client.send_all(encode(Pingreq(), V5))
        assert await read_packets(client, reader, 1) == [Pingresp()]
        assert len(park) == 0
        await trio.sleep(2 * connection.PARK_AFTER + connection.PARK_GRAIN)
        assert len(park) == 1  # and its keep alive still runs out on time (1.5 x 4 s)
        with trio.fail_after(100):
            assert await read_packets(client, reader, 1) == [Disconnect(reason_code=0x8D)]
        pinged = connection.PARK_AFTER + connection.PARK_GRAIN
        assert trio.current_time() - start == pytest.approx(pinged + 6)


async def test_tls_reads_wait_after_a_short_read_instead_of_finding_nothing(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on plain TCP: in a request/response exchange, the socket read after a record
    # found nothing (EAGAIN) every time; a short read is now followed by a wait.
    reads = SocketReads()
    reader = PacketReader(protocol_version=V311, server_side=False)
    async with tls_connection(pki) as (client, _server):
        await client.send_all(encode(Connect(client_id="tls-reads", keep_alive=60), V311))
        assert await read_packets(client, reader, 1) == [Connack()]
        reads.install(monkeypatch)
        for _ in range(10):
            await client.send_all(encode(Pingreq(), V311))
            assert await read_packets(client, reader, 1) == [Pingresp()]
        monkeypatch.undo()
    assert reads.eagain == 0


async def test_the_reader_of_a_tls_socket_reads_records_as_plain_tcp_reads_bytes(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a socket the connection's reader waits for the socket itself and takes records
    # with receive_nowait (receive_some's coroutines are not resumed per record); records
    # that came together are all answered, without a wait between them.
    received_some = 0
    real_receive_some = TLSStream.receive_some

    async def counting_receive_some(self: TLSStream, max_bytes: int | None = None) -> Any:
        nonlocal received_some
        received_some += 1
        return await real_receive_some(self, max_bytes)

    read_at_once: list[int] = []  # plaintext bytes per receive_nowait that read some
    real_receive_nowait = TLSStream.receive_nowait

    def counting_receive_nowait(self: TLSStream, max_bytes: int, socket_ready: bool = False) -> Any:
        data = real_receive_nowait(self, max_bytes, socket_ready)
        if data:
            read_at_once.append(len(data))
        return data

    reader = PacketReader(protocol_version=V311, server_side=False)
    async with tls_connection(pki, held=True) as (client, _server):
        held = client.transport_stream
        assert isinstance(held, HeldWrites)
        await client.send_all(encode(Connect(client_id="tls-direct", keep_alive=60), V311))
        assert await read_packets(client, reader, 1) == [Connack()]
        monkeypatch.setattr(TLSStream, "receive_some", counting_receive_some)
        monkeypatch.setattr(TLSStream, "receive_nowait", counting_receive_nowait)
        with trio.fail_after(10):
            for _ in range(5):
                await client.send_all(encode(Pingreq(), V311))
                assert await read_packets(client, reader, 1) == [Pingresp()]
            for _ in range(5):  # three records in one socket write each time
                held.hold()
                for _ in range(3):
                    await client.send_all(encode(Pingreq(), V311))
                await held.release()
                assert await read_packets(client, reader, 3) == [Pingresp()] * 3
    assert received_some == 0
    # each PINGREQ is 2 bytes: five alone, then five times three handled in one pass
    assert read_at_once == [2] * 5 + [6] * 5


async def test_a_tls_read_with_nothing_buffered_goes_for_ciphertext_first(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Asking the SSL object for plaintext with no ciphertext given to it could only
    # raise SSLWantReadError: an exception per record, in a request/response exchange.
    want_read = 0
    reader = PacketReader(protocol_version=V311, server_side=False)
    async with tls_connection(pki) as (client, server):
        real_read = server.ssl_object.read

        def read(size: int = 1024, buffer: Any = None) -> bytes:
            nonlocal want_read
            try:
                return real_read(size)
            except ssl.SSLWantReadError:
                want_read += 1
                raise

        await client.send_all(encode(Connect(client_id="tls-decrypt", keep_alive=60), V311))
        assert await read_packets(client, reader, 1) == [Connack()]
        monkeypatch.setattr(server.ssl_object, "read", read)
        for _ in range(10):
            await client.send_all(encode(Pingreq(), V311))
            assert await read_packets(client, reader, 1) == [Pingresp()]
    assert want_read == 0


async def test_tls_connection_under_back_pressure_loses_and_reorders_nothing(
    pki: TestPKI,
) -> None:
    # Each PUBLISH gives a PUBACK and a delivery to the publisher itself; the client reads
    # only once all are sent, so the small socket fills and the direct write leaves
    # ciphertext in the backlog for the writer, part of the time.
    count = 500
    padding = bytes(200)
    reader = PacketReader(protocol_version=V311, server_side=False)
    async with tls_pair(pki, small=True) as (client, server, peer):
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    run_connection, server, make_core(trio.current_time), peer, nursery
                )
                await client.send_all(encode(Connect(client_id="bp", keep_alive=60), V311))
                subscribe = Subscribe(packet_id=1, subscriptions=(SubscriptionRequest("p/#", 0),))
                await client.send_all(encode(subscribe, V311))
                assert len(await read_packets(client, reader, 2)) == 2
                publishes = b"".join(
                    encode(
                        Publish(
                            topic="p/t", payload=n.to_bytes(4, "big") + padding, qos=1, packet_id=n
                        ),
                        V311,
                    )
                    for n in range(1, count + 1)
                )
                nursery.start_soon(client.send_all, publishes + encode(Pingreq(), V311))
                packets = await read_packets(client, reader, 2 * count + 1)
                nursery.cancel_scope.cancel()
    acks = [p for p in packets if isinstance(p, Puback)]
    delivered = [p for p in packets if isinstance(p, Publish)]
    assert acks == [Puback(n) for n in range(1, count + 1)]
    assert [int.from_bytes(p.payload[:4], "big") for p in delivered] == list(range(1, count + 1))
    assert packets.count(Pingresp()) == 1


async def test_garbage_on_a_tls_connection_closes_it_without_a_crash(pki: TestPKI) -> None:
    async with tls_pair(pki) as (client, server, peer):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    run_connection, server, make_core(trio.current_time), peer, nursery
                )
                await client.transport_stream.send_all(b"\x17\x03\x03\x00\x10" + bytes(16))
        # run_connection returned on its own, and closed the stream
        with pytest.raises(trio.ClosedResourceError):
            await server.receive_some()


# ------------------------------------------------------------------ another TLS stack


async def test_mosquitto_clients_over_tls_with_a_large_retained_message(
    pki: TestPKI, tmp_path: Path
) -> None:
    # OpenSSL's C client side (libmosquitto) against our stream: a 200 KiB QoS 1
    # PUBLISH in (many records), the same as a retained message out, client
    # certificates as usernames.
    pub, sub = require_tool("mosquitto_pub"), require_tool("mosquitto_sub")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 800)
    listener = ListenerConfig(
        name="tls",
        host="127.0.0.1",
        port=0,
        transport="tls",
        tls=pki.tls_config(require_client_cert=True, use_identity_as_username=True),
    )
    async with open_test_broker(listeners=(listener,)) as broker:
        common = ["-h", "127.0.0.1", "-p", str(broker.port), "--cafile", pki.ca_file]
        common += ["--cert", pki.alice.certfile, "--key", pki.alice.keyfile, "-q", "1"]
        with trio.fail_after(20):
            published = await trio.run_process(
                [pub, *common, "-t", "big", "-r", "-f", str(payload)],
                capture_stderr=True,
                check=False,
            )
            assert published.returncode == 0, published.stderr
            received = await trio.run_process(
                [sub, *common, "-t", "big", "-C", "1", "-F", "%l %r"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert received.returncode == 0, received.stderr
        assert received.stdout.split() == [str(len(payload.read_bytes())).encode(), b"1"]
