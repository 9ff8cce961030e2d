"""A scripted stand-in for nats-server, for what a real one will not do on demand: PING
us, send -ERR, go silent, send bad bytes, lose a JetStream delivery."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio

INFO = b'INFO {"server_id":"FAKE","version":"0.0.0","headers":true,"max_payload":1048576}\r\n'

Handler = Callable[[trio.SocketStream], Awaitable[None]]


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, handler, listeners))
        yield f"nats://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def read_until(stream: trio.SocketStream, marker: bytes, buffer: bytearray) -> None:
    while marker not in buffer:
        data = await stream.receive_some(4096)
        if not data:
            raise EOFError
        buffer += data


async def greet(stream: trio.SocketStream) -> bytearray:
    """INFO, then read CONNECT and PING and answer PONG (a successful handshake)."""
    await stream.send_all(INFO)
    buffer = bytearray()
    await read_until(stream, b"PING\r\n", buffer)
    await stream.send_all(b"PONG\r\n")
    return buffer


class ScriptedJetStream:
    """Just enough of a NATS server to answer CONSUMER.CREATE and push deliveries."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.sids: dict[str, int] = {}  # subject -> sid
        self.creates: list[dict[str, object]] = []

    async def command(self) -> tuple[str, list[str], bytes]:
        """The next command from the client: (op, arguments, payload)."""
        while b"\r\n" not in self.buffer:
            self.buffer += await self.stream.receive_some(4096)
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        op, *args = line.decode().split()
        payload = b""
        if op in ("PUB", "HPUB"):
            size = int(args[-1])
            while len(self.buffer) < size + 2:
                self.buffer += await self.stream.receive_some(4096)
            payload, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
        return op, args, payload

    async def until_consumer_create(self) -> tuple[str, dict[str, object]]:
        """Handle SUB/PING until a CONSUMER.CREATE request: (its reply subject, config)."""
        while True:
            op, args, payload = await self.command()
            if op == "SUB":
                self.sids[args[0]] = int(args[-1])
            elif op == "PING":
                await self.stream.send_all(b"PONG\r\n")
            elif op == "PUB" and args[0].startswith("$JS.API.CONSUMER.CREATE."):
                config = json.loads(payload)["config"]
                self.creates.append(config)
                return args[1], config

    async def send(self, subject: str, reply: str | None, payload: bytes) -> None:
        sid = self.sids.get(subject)
        if sid is None:  # a reply to the request inbox, subscribed as "<prefix>.*"
            sid = next(s for pattern, s in self.sids.items() if subject.startswith(pattern[:-1]))
        target = f"{subject} {sid}" if reply is None else f"{subject} {sid} {reply}"
        await self.stream.send_all(f"MSG {target} {len(payload)}\r\n".encode() + payload + b"\r\n")

    async def deliver(self, config: dict[str, object], consumer: str, sseq: int, cseq: int) -> None:
        deliver = str(config["deliver_subject"])
        reply = f"$JS.ACK.KV_b.{consumer}.1.{sseq}.{cseq}.0.0"
        await self.send(deliver, reply, f"v{sseq}".encode())
