"""TLSStream: server-side TLS on ``ssl.MemoryBIO``, reading and writing the socket itself.

trio's ``SSLStream`` is general (any transport, renegotiation, concurrent handshakes
from either direction), and every call pays for that: conflict detectors, a lock per
direction, its ``_retry`` loop, a transport ``send_all`` or ``receive_some`` through
every layer below. Over TLS that was most of a QoS 1 round trip (docs/performance.md).
This stream does what a server connection needs and no more, the way the plain-TCP
path of ``server/connection.py`` does:

- it reads ciphertext from the socket's descriptor itself (``os.read``, then
  ``wait_readable`` only when nothing is there), decrypts it with an ``ssl.SSLObject``,
  and returns at most ``max_bytes`` of plaintext: the records that came in one socket
  read, as plain TCP returns the bytes there (what is not all here yet waits with
  OpenSSL for the rest); ``receive_nowait`` is the same without the waits, for the
  connection's reader, which waits for the socket itself as it does on plain TCP;
- ``send_nowait`` encrypts and writes with one non-blocking ``os.write``, so the
  connection's reader can answer what it just read without a writer task (the
  direct-write shortcut); what the socket does not take stays here (``backlog``) until
  ``send_all`` flushes it. ``send_all`` writes directly too, and only what the socket
  refuses goes through the transport's ``send_all`` (``WatchedSocketStream``: the
  ``on_blocked`` report and the wait for room are as for plain TCP);
- ``aclose`` writes a ``close_notify`` without waiting (so it is sent even when the
  close is forceful), then closes the transport; ``send_eof`` sends it and shuts the
  socket's write side, and receiving goes on (a half-close, as TCP's FIN).

The handshake, and every read while the PROXY preamble's leftover is pending, go
through the transport's ``receive_some``, so the leftover reaches OpenSSL first. Under
a transport that is not a socket (``trio.testing`` memory streams, Windows) every read
and write goes through the transport: slower, the same bytes.

A peer that closes without ``close_notify`` (or mid-record), or sends what is not TLS,
makes ``receive_some`` raise ``trio.BrokenResourceError`` (its ``__cause__`` the
``ssl.SSLError``), as ``SSLStream`` does; a ``close_notify`` is the end of the stream
(``b""``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import ssl
from typing import Any

import trio

from trio_mqtt.server.prefixed_stream import PrefixedStream, send_eof_beneath_prefix
from trio_mqtt.server.watched_stream import socket_fd

__all__ = ["RECEIVE_SIZE", "TLSStream"]

#: Ciphertext read from the socket at once (the same as the connection's plaintext reads).
RECEIVE_SIZE = 65536
# Records the reader itself produces (TLS 1.3 KeyUpdate answers) wait in the backlog
# when the socket is full; a peer that keeps asking for them without reading is cut off
# beyond this much, so it cannot grow our memory.
MAX_READER_BACKLOG = 65536
# Without a socket descriptor, how long aclose() waits to hand the close_notify over.
CLOSE_NOTIFY_TIMEOUT = 1.0


class _State(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    BROKEN = "broken"
    CLOSED = "closed"


# (read once: on 3.11 a member read from its enum class goes through the attribute hook
# that EnumType's __getattr__ gives every enum class, ~0.9k instructions; the
# per-record paths ask this one)
_OPEN = _State.OPEN


class TLSStream(trio.abc.HalfCloseableStream):
    """A server-side TLS connection over ``transport_stream`` (see the module docstring).

    ``do_handshake()`` must complete before anything else is called. One task may
    receive while another sends; two concurrent receives or two concurrent sends raise
    ``trio.BusyResourceError``, as trio's streams do.
    """

    def __init__(self, transport_stream: trio.abc.Stream, context: ssl.SSLContext) -> None:
        self.transport_stream = transport_stream
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._state = _State.HANDSHAKING
        self.backlog = bytearray()  # ciphertext produced, not yet taken by the socket
        self._delayed = b""  # TLS 1.3 session tickets: sent with our first record
        self._reader_backlog = 0  # of the backlog, bytes the reader's records added
        self._receiving = False
        self._sending = False  # a send_all is flushing the backlog through the transport
        self._eof_sent = False  # send_eof: our close_notify went; no more sending
        self._drained = False  # the last socket read left the socket empty, most likely
        self._ahead = True  # the last record read may have plaintext left in the SSL object
        self._again = False  # reading ahead met a close_notify or an error: the next call says it
        self._error_ahead: Exception | None = None  # that error, raised by the next call
        # receive_nowait's word to a reader that waits for the socket itself: wait first
        self.wait_first = False
        # while a PROXY preamble's leftover is pending, reads go through the layers
        self._prefix = transport_stream if isinstance(transport_stream, PrefixedStream) else None
        self.fd = socket_fd(transport_stream)  # -1: no socket, every byte via the transport

    # ------------------------------------------------------------------ TLS facts

    def cipher(self) -> tuple[str, str, int] | None:
        """The negotiated cipher suite (``ssl.SSLObject.cipher``)."""
        return self.ssl_object.cipher()

    def version(self) -> str | None:
        """The negotiated protocol version, e.g. ``"TLSv1.3"``."""
        return self.ssl_object.version()

    def getpeercert(self) -> Any:
        """The client's certificate as ``ssl`` decodes it: only when it was verified."""
        return self.ssl_object.getpeercert()

    @property
    def direct(self) -> bool:
        """Whether ``send_nowait`` can write to a socket (else the writer must send)."""
        return self.fd >= 0

    # ------------------------------------------------------------------ handshake

    async def do_handshake(self) -> None:
        """Run the server side of the handshake; ``trio.BrokenResourceError`` if it fails.

        The error's ``__cause__`` is the ``ssl.SSLError`` (or, if the transport broke,
        the transport's own cause), as with ``SSLStream``: ``tls._rejection`` reads it.
        """
        if self._state is not _State.HANDSHAKING:
            raise trio.BrokenResourceError("TLS handshake already run")
        ssl_object = self.ssl_object
        try:
            while True:
                try:
                    ssl_object.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                except (ssl.SSLError, ssl.CertificateError) as exc:
                    raise trio.BrokenResourceError from exc
                out = self._outgoing.read()
                if done and ssl_object.version() == "TLSv1.3":
                    # OpenSSL sends the session tickets right after the handshake; a
                    # client that waits for our first record may not expect them then
                    # (trio's SSLStream delays them the same way, trio issue 819).
                    self._delayed, out = out, b""
                if out:
                    await self.transport_stream.send_all(out)
                if done:
                    break
                data = await self.transport_stream.receive_some(RECEIVE_SIZE)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
        except BaseException:
            self._state = _State.BROKEN
            raise
        self._state = _State.OPEN

    # ------------------------------------------------------------------ receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Up to ``max_bytes`` of plaintext (the whole records here), b"" after close_notify."""
        if max_bytes is None:
            max_bytes = RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._check_usable()
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            data = self.receive_nowait(max_bytes)
            if data is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            while data is None:
                self._feed(await self._read_waiting())
                data = self.receive_nowait(max_bytes)
            return data
        finally:
            self._receiving = False

    def reads_socket(self) -> bool:
        """Whether reads go to the socket itself now (no PROXY leftover pending): then
        the connection's reader may call ``receive_nowait`` and wait for the socket
        itself, as it does on plain TCP."""
        return self.fd >= 0 and (self._prefix is None or not self._prefix_pending())

    def receive_nowait(self, max_bytes: int, socket_ready: bool = False) -> bytes | None:
        """Plaintext now: the whole records buffered, decrypted, after reading the
        socket when it may have more (or ``socket_ready``: it was just seen readable);
        b"" after close_notify. None: no whole record here; wait until the socket is
        readable (``reads_socket``; else ``receive_some`` reads the transport), then
        call again with ``socket_ready``.

        ``receive_some`` waits around this; the connection's reader on a socket calls
        it itself and waits for the socket as on plain TCP, which saves it two
        coroutine frames resumed per record. No checkpoint: the caller owns those. One
        reader at a time (not checked here: nothing here awaits).
        """
        if self._state is not _OPEN:
            self._check_usable()
        read_socket = socket_ready or not self._drained
        incoming = self._incoming
        # With nothing buffered the SSL object is not asked: it could only raise
        # SSLWantReadError, an exception per record. Plaintext decrypted ahead is left
        # only by a read that filled max_bytes (a read ends with its record).
        if self._again:  # a close_notify or an error met reading ahead: say it now
            self._again = False
            if (error := self._error_ahead) is not None:
                self._error_ahead = None
                self._state = _State.BROKEN
                raise trio.BrokenResourceError from error
            decrypt = True
        elif self._ahead:
            decrypt = bool(incoming.pending or incoming.eof or self.ssl_object.pending())
        else:
            decrypt = bool(incoming.pending or incoming.eof)
        while True:
            if decrypt:
                try:
                    data = self.ssl_object.read(max_bytes)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    data = b""  # close_notify
                    break
                except (ssl.SSLError, ssl.CertificateError) as exc:
                    self._state = _State.BROKEN
                    raise trio.BrokenResourceError from exc
                else:
                    if incoming.pending and data and len(data) < max_bytes:
                        data = self._read_ahead(data, max_bytes)
                    self._ahead = len(data) >= max_bytes
                    break
            # No whole record decrypted: more ciphertext first. After a socket read
            # that took less than the socket could give, wait rather than read once
            # more for EAGAIN (as server/connection.py does). None: none yet, or no
            # socket to read (reads_socket() written out: this runs for every read).
            fd = self.fd
            if not read_socket or fd < 0 or (self._prefix is not None and self._prefix_pending()):
                return None
            try:
                chunk = os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                return None
            except OSError as exc:
                raise self._socket_broken(exc) from exc
            self._feed(chunk)
            read_socket = not self._drained
            decrypt = True
        # the next call would find nothing: no ciphertext here, none decrypted ahead,
        # and the last socket read took less than the socket could give
        self.wait_first = self._drained and not (
            incoming.pending or incoming.eof or self._ahead or self._again
        )
        if self._outgoing.pending:
            self._reader_output()
        return data

    def _read_ahead(self, data: bytes, max_bytes: int) -> bytes:
        """*data* and the records that came with its record, up to ``max_bytes``: the
        connection handles what arrived together in one pass (one parse, one scheduler
        step), as on plain TCP. A record not all here stays with OpenSSL, which has
        taken its start; a close_notify or an error is left for the next call
        (``_again``), after the plaintext before it."""
        parts = [data]
        size = len(data)
        incoming = self._incoming
        while incoming.pending and size < max_bytes:
            try:
                more = self.ssl_object.read(max_bytes - size)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                more = b""  # close_notify (raised rather than returned after our own)
            except (ssl.SSLError, ssl.CertificateError) as exc:
                self._again = True
                self._error_ahead = exc  # (asked again, OpenSSL would say only "EOF")
                break
            if not more:
                self._again = True  # close_notify: b"" from the next call
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts) if len(parts) > 1 else data

    def _feed(self, chunk: bytes) -> None:
        """Hand ciphertext read from the socket (b"": its EOF) to OpenSSL."""
        self._drained = len(chunk) < RECEIVE_SIZE
        if chunk:
            self._incoming.write(chunk)
        else:
            self._incoming.write_eof()  # the next read says clean or not

    async def _read_waiting(self) -> bytes:
        """Ciphertext, waiting for it (a checkpoint); b"" at EOF."""
        fd = self.fd
        if not self.reads_socket():
            try:
                return bytes(await self.transport_stream.receive_some(RECEIVE_SIZE))
            except trio.BrokenResourceError:
                self._state = _State.BROKEN
                raise
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    return os.read(fd, RECEIVE_SIZE)
                except BlockingIOError:
                    pass  # woken, yet nothing to read after all: wait again
        except OSError as exc:
            raise self._socket_broken(exc) from exc

    def _socket_broken(self, exc: OSError) -> trio.BrokenResourceError:
        """The stream is broken: its socket failed under a read (``exc``); the error to
        raise, as trio's SocketStream words it."""
        self._state = _State.BROKEN
        return trio.BrokenResourceError(f"socket connection broken: {exc}")

    def _prefix_pending(self) -> bool:
        """Whether the PROXY preamble's leftover still has bytes for us; once it has
        none it never will again, and is not asked on every read after that."""
        if self._prefix is not None and self._prefix.prefix_pending:
            return True
        self._prefix = None
        return False

    def _reader_output(self) -> None:
        """Records a read produced (a TLS 1.3 KeyUpdate answer): write them, never wait.

        The reader must not wait for the socket to take bytes (a client may be blocked
        writing to us until we read); what the socket does not take now goes with the
        next send. A peer that makes us produce more than MAX_READER_BACKLOG that way
        without reading is cut off.
        """
        before = len(self.backlog)
        self._take_outgoing()
        self._reader_backlog += len(self.backlog) - before
        if not self._sending:
            self._write_backlog()
        if self._reader_backlog > MAX_READER_BACKLOG:
            self._state = _State.BROKEN
            raise trio.BrokenResourceError("the TLS peer does not read what it asks for")

    # ------------------------------------------------------------------ sending

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Encrypt ``data`` and write it without blocking; True if the socket took it all.

        False: part of it (or of an earlier backlog) waits in ``backlog``, and a
        ``send_all`` (with ``b""``, if nothing else is to be sent) must flush it; or the
        stream is broken or closed, and that ``send_all`` will say so.
        """
        if self._state is not _OPEN or self._eof_sent:
            return False
        try:
            self.ssl_object.write(data)
        except (ssl.SSLError, ssl.CertificateError):
            self._state = _State.BROKEN
            return False  # (the send_all that follows raises BrokenResourceError)
        backlog = self.backlog
        if backlog or self._delayed or self._sending or self.fd < 0:
            self._take_outgoing()  # behind what waits already
            if not self._sending:
                self._write_backlog()
            return not backlog
        # nothing waits: the records go straight to the socket (one call, not three)
        records = self._outgoing.read()
        try:
            sent = os.write(self.fd, records)
        except OSError:
            sent = 0  # would block, or broken: the transport's send_all says which
        if sent < len(records):
            backlog += memoryview(records)[sent:]
            return False
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and send it with what the backlog holds before it.

        ``send_all(b"")`` flushes the backlog. Cancelled while the socket was full, the
        stream is broken (how much of a record went out is unknown), as with SSLStream.
        """
        self._check_usable()
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        if self._eof_sent:
            raise trio.ClosedResourceError("this TLS stream sent its close_notify (send_eof)")
        await trio.lowlevel.checkpoint_if_cancelled()
        if data:
            self._encrypt(data)
        await self._flush()

    async def _flush(self) -> None:
        """Send the backlog: what the socket takes now, the rest through the transport."""
        self._write_backlog()
        if not self.backlog:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._sending = True
        try:
            while self.backlog:
                chunk = bytes(self.backlog)
                self.backlog.clear()
                await self.transport_stream.send_all(chunk)  # waits for room, on_blocked
            self._reader_backlog = 0
        except BaseException:
            self._state = _State.BROKEN
            raise
        finally:
            self._sending = False

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.ssl_object.write(data)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._state = _State.BROKEN
            raise trio.BrokenResourceError from exc
        self._take_outgoing()

    def _take_outgoing(self) -> None:
        """Move what OpenSSL produced into the backlog (the delayed tickets first)."""
        if self._delayed:
            self.backlog += self._delayed
            self._delayed = b""
        self.backlog += self._outgoing.read()

    def _write_backlog(self) -> None:
        """Write as much of the backlog as the socket takes now (nothing without one)."""
        fd = self.fd
        backlog = self.backlog
        if fd < 0 or not backlog:
            return
        try:
            sent = os.write(fd, backlog)
        except OSError:
            return  # would block, or broken: the transport's send_all says which
        del backlog[:sent]
        if not backlog:
            self._reader_backlog = 0

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    # ------------------------------------------------------------------ closing

    async def send_eof(self) -> None:
        """Send close_notify (after the backlog), then shut the socket's write side.

        The client's reads end there, as a plain-TCP client's do at our FIN; ours go on
        (after its own close_notify, ``receive_some`` returns b""). So a connection that
        said its last word (a DISCONNECT, a CONNACK refusal) can tell the client at once
        that nothing more comes, and still read until the client closes
        (``server/connection._linger``). TLS 1.3 defines close_notify as closing one
        direction only; OpenSSL reads on after sending it under TLS 1.2 as well.
        """
        self._check_usable()
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        if self._eof_sent:
            await trio.lowlevel.checkpoint()
            return
        # writes close_notify; SSLWantReadError: the client's has not come yet
        with contextlib.suppress(ssl.SSLError):
            self.ssl_object.unwrap()
        self._eof_sent = True  # (before the wait below: nothing may be encrypted now)
        self._take_outgoing()
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._flush()
        await send_eof_beneath_prefix(self.transport_stream)  # then the socket's FIN

    async def aclose(self) -> None:
        """Send close_notify without waiting for the socket or the peer, then close.

        Without a socket descriptor the close_notify is handed to the transport within
        CLOSE_NOTIFY_TIMEOUT, shielded (so it goes out under ``aclose_forcefully`` too).
        """
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        was_open = self._state is _State.OPEN and not self._sending and not self._eof_sent
        self._state = _State.CLOSED
        try:
            if was_open:
                # writes close_notify; SSLWantReadError: the peer's has not come (nor
                # is it awaited)
                with contextlib.suppress(ssl.SSLError):
                    self.ssl_object.unwrap()
                self._take_outgoing()
                if self.fd >= 0:
                    self._write_backlog()
                elif self.backlog:
                    gone = (trio.BrokenResourceError, trio.ClosedResourceError)
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(CLOSE_NOTIFY_TIMEOUT),
                        contextlib.suppress(*gone),
                    ):
                        await self.transport_stream.send_all(bytes(self.backlog))
                self.backlog.clear()
        finally:
            await self.transport_stream.aclose()

    def _check_usable(self) -> None:
        state = self._state
        if state is _OPEN:
            return
        if state is _State.CLOSED:
            raise trio.ClosedResourceError("the TLS stream is closed")
        if state is _State.BROKEN:
            raise trio.BrokenResourceError("the TLS stream is broken")
        raise trio.BrokenResourceError("the TLS handshake has not completed")
