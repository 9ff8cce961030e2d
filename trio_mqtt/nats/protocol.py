"""Sans-IO NATS client protocol: bytes in, events out; commands in, bytes out.

Modelled on h11: :class:`NATSConnection` holds no socket. The I/O layer feeds what it
read to ``receive_data()`` and pulls events with ``next_event()`` until it returns
:data:`NEED_DATA`; it sends whatever the serializers (``pub()``, ``sub()``, ...) return.

The server's side of the protocol (docs.nats.io, "Client Protocol"):
``INFO {json}``, ``MSG <subject> <sid> [reply] <#bytes>``, ``HMSG <subject> <sid>
[reply] <#header bytes> <#total bytes>``, ``PING``, ``PONG``, ``+OK``, ``-ERR '<msg>'``.
A header block is ``NATS/1.0[ <status>[ <description>]]\\r\\n`` then ``Name: value``
lines and an empty line; the status line carries what core NATS and JetStream say in
band (503 no responders, 100 idle heartbeat or flow control, 404, 408, 204 EOB).

Buffering is bounded: a control line longer than :data:`MAX_CONTROL_LINE` or a payload
larger than the server's ``max_payload`` raises :class:`NATSProtocolError`. The parser
is the cluster's hot path, so a ``MSG`` is parsed with one ``find`` and one ``split``
and the buffer is not copied when a read ends on a message boundary; a ``MSG`` line
seen before is not parsed again, and ``deliver_msgs()`` hands such messages straight
to a handler per subscription, without an event object.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Literal

import attrs

from trio_mqtt.errors import TrioMQTTError

MAX_CONTROL_LINE: Final = 4096
"""Longest control line we accept (the server's default ``max_control_line``)."""
DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
"""The payload bound until the server's INFO says otherwise (its default, 1 MiB)."""
HEADER_VERSION: Final = "NATS/1.0"

_BAD_HEADER_NAME: Final = re.compile(r"[:\s]")


class NATSError(TrioMQTTError):
    """Base class of the NATS client's errors."""


class NATSProtocolError(NATSError):
    """The server sent bytes that break the NATS protocol or our bounds."""


class NATSLocalError(NATSError):
    """We were asked to send something the protocol forbids (bad subject, too large)."""


# -- events -----------------------------------------------------------------------------


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event()`` needs more bytes before it can return another event."""


@attrs.frozen
class Headers:
    """An immutable multi-map of message headers, in the order they came.

    ``get()`` is case-insensitive (nats-py and nats.go canonicalise names differently,
    so a peer's ``Nats-Msg-Id`` may come back as ``NATS-MSG-ID`` elsewhere).
    """

    items: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, headers: Mapping[str, str] | Iterable[tuple[str, str]] | Headers) -> Headers:
        """A ``Headers`` from a mapping, pairs or another ``Headers``."""
        if isinstance(headers, Headers):
            return headers
        if isinstance(headers, Mapping):
            return cls(tuple((str(k), str(v)) for k, v in headers.items()))
        return cls(tuple((str(k), str(v)) for k, v in headers))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of *name* (any case), or *default*."""
        for key, value in self.items:
            if key == name:
                return value
        folded = name.lower()
        for key, value in self.items:
            if key.lower() == folded:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of *name* (any case), in order."""
        folded = name.lower()
        return [value for key, value in self.items if key.lower() == folded]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def as_dict(self) -> dict[str, str]:
        """A plain dict (the first value of each name wins)."""
        result: dict[str, str] = {}
        for key, value in self.items:
            result.setdefault(key, value)
        return result


@attrs.frozen
class Info:
    """The server's INFO: at connect, and again when the cluster changes."""

    data: dict[str, Any]


@attrs.define
class Msg:
    """A message delivered to subscription *sid* (MSG, or HMSG with headers/status).

    ``headers`` is None for a plain MSG; ``status`` and ``description`` come from the
    header block's first line (``NATS/1.0 503`` -> 503, ``""``). Treat it as read-only:
    it is not frozen only because a frozen class costs each received message about
    three times as much to make (this is the cluster's hot path).
    """

    subject: str
    sid: int
    reply: str | None
    payload: bytes
    headers: Headers | None = None
    status: int | None = None
    description: str = ""


@attrs.frozen
class Ping:
    """The server asks for a PONG (answer it or be disconnected as stale)."""


@attrs.frozen
class Pong:
    """The answer to one of our PINGs: everything we sent before it was processed."""


@attrs.frozen
class Ok:
    """``+OK`` (only sent in verbose mode, which we do not ask for)."""


@attrs.frozen
class Err:
    """``-ERR '<message>'``: most are fatal and the server then closes the connection."""

    message: str

    @property
    def is_fatal(self) -> bool:
        """Whether the server closes the connection after it (all but a few do)."""
        lowered = self.message.lower()
        return not lowered.startswith(("permissions violation", "invalid subject"))


@attrs.frozen
class Closed:
    """The server closed the connection (after ``receive_data(b"")``), cleanly."""


Event = Info | Msg | Ping | Pong | Ok | Err | Closed

_MSG_FIRST_BYTES: Final = frozenset(b"MHmh")
#: How many distinct MSG control lines a connection remembers parsed (then it starts over).
MSG_LINE_CACHE_SIZE: Final = 1024
"""First bytes of MSG and HMSG lines (everything else is a rarer control line)."""
_PING = Ping()
_PONG = Pong()
_OK = Ok()
_CLOSED = Closed()

# -- header blocks ----------------------------------------------------------------------


def _check_header_field(name: str, value: str) -> None:
    if _BAD_HEADER_NAME.search(name) or not name:
        raise NATSLocalError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value:
        raise NATSLocalError(f"invalid header value for {name!r}: {value!r}")


def encode_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]] | Headers) -> bytes:
    """The ``NATS/1.0`` header block for *headers* (ends with the empty line)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    parts = [HEADER_VERSION, "\r\n"]
    for name, value in pairs:
        _check_header_field(name, value)
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


# One "Name: value" line of a header block without a status (the common case), where
# no name or value ends in blanks (checked before: those take the careful path).
_HEADER_LINE = re.compile(r"([^:\r\n \t][^:\r\n]*):[ \t]*([^\r\n]*)\r\n")
_PLAIN_BLOCK_START = HEADER_VERSION.encode() + b"\r\n"


def decode_headers(block: bytes) -> tuple[Headers, int | None, str]:
    """Parse a header block: ``(headers, status or None, description)``."""
    if block.startswith(_PLAIN_BLOCK_START) and block.endswith(b"\r\n\r\n"):
        # fast path (every message between cluster nodes): one regex pass, checked to
        # have covered every line; anything odd takes the careful path below
        body = block[len(_PLAIN_BLOCK_START) : -2].decode("utf-8", "surrogateescape")
        if not (" \r" in body or "\t\r" in body or " :" in body or "\t:" in body):
            items = _HEADER_LINE.findall(body)
            if len(items) == body.count("\r\n") == body.count("\n"):
                return Headers(tuple(items)), None, ""
    text = block.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    # "NATS/1.0[ status...]", the header lines, then the empty line: two "" at the end.
    if len(lines) < 3 or lines[-1] or lines[-2]:
        raise NATSProtocolError(f"header block does not end with an empty line: {block[:200]!r}")
    first = lines[0]
    status: int | None = None
    description = ""
    if first != HEADER_VERSION:
        if not first.startswith(HEADER_VERSION):
            raise NATSProtocolError(
                f"header block does not start with {HEADER_VERSION}: {first[:100]!r}"
            )
        code, _, description = first[len(HEADER_VERSION) :].strip().partition(" ")
        if not (len(code) == 3 and code.isdigit()):
            raise NATSProtocolError(f"invalid status in header block: {first[:100]!r}")
        status = int(code)
        description = description.strip()
    items = []
    for line in lines[1:-2]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[0] in " \t":
            raise NATSProtocolError(f"invalid header line: {line[:200]!r}")
        items.append((name.rstrip(), value.strip()))
    return Headers(tuple(items)), status, description


# -- validation ---------------------------------------------------------------------------


def check_subject(subject: str, what: str = "subject") -> None:
    """Raise :class:`NATSLocalError` unless *subject* is non-empty and has no whitespace."""
    if (
        not subject
        or " " in subject
        or "\t" in subject
        or "\r" in subject
        or "\n" in subject
        or "\x0b" in subject
        or "\x0c" in subject
    ):
        raise NATSLocalError(f"invalid {what} {subject!r}: empty or contains whitespace")


def _check_queue(queue: str) -> None:
    check_subject(queue, "queue group")


# -- the connection -----------------------------------------------------------------------


_PendingMsg = tuple[str, int, str | None, int, int]
"""A parsed MSG/HMSG line waiting for its payload: subject, sid, reply, header size
(-1 for MSG) and total size."""


class NATSConnection:
    """The client side of one NATS connection, without I/O.

    Feed received bytes to :meth:`receive_data` (``b""`` at EOF) and pull events from
    :meth:`next_event`. The serializers validate their arguments against the protocol
    and the server's INFO (``max_payload``, ``headers``) and return the bytes to send.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._more: list[bytes] = []
        self._more_len = 0
        self._pending: _PendingMsg | None = None
        # MSG control lines already parsed -> (subject, sid, reply, size): a subscriber
        # of a few subjects sees the same few lines again and again (bounded)
        self._msg_lines: dict[bytes, tuple[str, int, str | None, int]] = {}
        self._eof = False
        self.server_info: dict[str, Any] | None = None
        self.max_payload = DEFAULT_MAX_PAYLOAD

    # -- input ------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buf) - self._pos + self._more_len

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the socket; ``b""`` means the server closed it."""
        if self._eof:
            raise NATSLocalError("receive_data() after EOF")
        if not data:
            self._eof = True
            return
        if self._pos >= len(self._buf) and not self._more:
            self._buf = bytes(data)
            self._pos = 0
        else:
            self._more.append(bytes(data))
            self._more_len += len(data)

    def _merge(self) -> None:
        """Join the unread part of the buffer with what arrived since (rarely needed)."""
        self._buf = b"".join([self._buf[self._pos :], *self._more])
        self._pos = 0
        self._more = []
        self._more_len = 0

    def next_event(self) -> Event | Literal[_Sentinel.NEED_DATA]:
        """The next complete event, or :data:`NEED_DATA`; raises NATSProtocolError."""
        while True:
            pending = self._pending
            if pending is None:
                buf = self._buf
                pos = self._pos
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > MAX_CONTROL_LINE + 1:
                        raise NATSProtocolError(
                            f"control line longer than {MAX_CONTROL_LINE} bytes"
                        )
                    # No complete line in _buf: pull in what arrived since, or wait.
                    if self._more:
                        self._merge()
                        continue
                    return self._at_eof() if self._eof else NEED_DATA
                if end - pos > MAX_CONTROL_LINE:
                    raise NATSProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes")
                self._pos = end + 2
                if buf[pos] not in _MSG_FIRST_BYTES:
                    return self._parse_control(buf[pos:end])
                line = buf[pos:end]
                known = self._msg_lines.get(line)
                if known is not None:  # the hot path: a MSG line seen before
                    subject, sid, reply, size = known
                    start = end + 2
                    stop = start + size
                    if buf.startswith(b"\r\n", stop):
                        self._pos = stop + 2
                        return Msg(subject, sid, reply, buf[start:stop])
                parts = line.split()
                count = len(parts)
                if parts[0] == b"MSG" and count in (4, 5):  # the hot path, inline
                    try:
                        start = end + 2
                        size = int(parts[-1])
                        stop = start + size
                        # (startswith: no slice to compare)
                        if 0 <= size <= self.max_payload and buf.startswith(b"\r\n", stop):
                            self._pos = stop + 2
                            subject = parts[1].decode()
                            sid = int(parts[2])
                            reply = parts[3].decode() if count == 5 else None
                            if reply is None:  # (replies are unique: not worth keeping)
                                lines = self._msg_lines
                                if len(lines) >= MSG_LINE_CACHE_SIZE:
                                    lines.clear()
                                lines[line] = (subject, sid, reply, size)
                            return Msg(subject, sid, reply, buf[start:stop])
                    except (ValueError, UnicodeDecodeError):
                        pass  # _parse_msg says what is wrong
                elif parts[0] == b"HMSG" and count in (5, 6):  # cluster traffic, inline
                    try:
                        header_size = int(parts[-2])
                        start = end + 2
                        stop = start + int(parts[-1])
                        if (
                            0 <= header_size <= stop - start <= self.max_payload
                            and buf[stop : stop + 2] == b"\r\n"
                        ):
                            split = start + header_size
                            headers, status, description = decode_headers(buf[start:split])
                            self._pos = stop + 2
                            return Msg(
                                parts[1].decode(),
                                int(parts[2]),
                                parts[3].decode() if count == 6 else None,
                                buf[split:stop],
                                headers,
                                status,
                                description,
                            )
                    except (ValueError, UnicodeDecodeError):
                        pass  # _parse_msg says what is wrong
                pending = self._parse_msg(buf[pos:end])
            # A MSG or HMSG: its payload, if it has all arrived.
            subject, sid, reply, header_size, total = pending
            buf = self._buf
            start = self._pos
            stop = start + total
            if stop + 2 > len(buf):
                if len(buf) - start + self._more_len >= total + 2:
                    self._merge()
                    self._pending = pending
                    continue
                self._pending = pending
                return self._at_eof() if self._eof else NEED_DATA
            if buf[stop : stop + 2] != b"\r\n":
                raise NATSProtocolError(f"message payload on {subject!r} is not followed by CRLF")
            self._pos = stop + 2
            self._pending = None
            if header_size < 0:
                return Msg(subject, sid, reply, buf[start:stop])
            split = start + header_size
            headers, status, description = decode_headers(buf[start:split])
            return Msg(subject, sid, reply, buf[split:stop], headers, status, description)

    def deliver_msgs(self, handlers: Mapping[int, Callable[[str, bytes], object]]) -> None:
        """Hand the plain MSGs at the front of the buffer to their subscriptions' handlers.

        The receiving fast path, ahead of :meth:`next_event`: for each complete ``MSG``
        whose control line was seen before (so: no reply subject, no headers) and whose
        sid has a handler in *handlers*, ``handler(subject, payload)`` is called, and no
        :class:`Msg` is built. It stops at anything else (another command, a message with
        a reply or headers, a line seen for the first time, an incomplete message, an
        unknown sid), which ``next_event()`` then returns as usual; so the caller loops
        over both, and gets the same messages in the same order as from ``next_event()``
        alone. A message is consumed before its handler runs: if the handler raises, the
        exception propagates and the next call goes on after that message.
        """
        if self._pending is not None:
            return
        buf = self._buf
        lines = self._msg_lines
        pos = self._pos
        try:
            while True:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    return
                known = lines.get(buf[pos:end])
                if known is None:
                    return
                subject, sid, _reply, size = known
                start = end + 2
                stop = start + size
                handler = handlers.get(sid)
                if handler is None or not buf.startswith(b"\r\n", stop):
                    return
                pos = stop + 2
                handler(subject, buf[start:stop])
        finally:
            self._pos = pos

    def _at_eof(self) -> Event | Literal[_Sentinel.NEED_DATA]:
        if self._pending is not None or self._pos < len(self._buf):
            what = "a message payload" if self._pending is not None else "a control line"
            raise NATSProtocolError(f"connection closed in the middle of {what}")
        return _CLOSED

    def _parse_msg(self, line: bytes) -> _PendingMsg:
        """``(subject, sid, reply, header size or -1, total size)`` of a MSG/HMSG line."""
        parts = line.split()
        count = len(parts)
        op = parts[0]
        try:
            if count == 4 and op == b"MSG":
                header_size = -1
                total = int(parts[3])
                reply = None
            elif count == 5 and op == b"MSG":
                header_size = -1
                total = int(parts[4])
                reply = parts[3].decode()
            elif count == 5 and op == b"HMSG":
                header_size = int(parts[3])
                total = int(parts[4])
                reply = None
            elif count == 6 and op == b"HMSG":
                header_size = int(parts[4])
                total = int(parts[5])
                reply = parts[3].decode()
            elif op.upper() not in (b"MSG", b"HMSG"):
                raise NATSProtocolError(f"unknown protocol line: {line[:200]!r}")
            elif op not in (b"MSG", b"HMSG"):  # lowercase: legal, never sent by servers
                return self._parse_msg(op.upper() + line[len(op) :])
            else:
                raise ValueError
            result = (parts[1].decode(), int(parts[2]), reply, header_size, total)
        except (ValueError, UnicodeDecodeError):
            raise NATSProtocolError(f"invalid message line: {line[:200]!r}") from None
        if total < 0 or header_size > total or (header_size < 0 and op == b"HMSG"):
            raise NATSProtocolError(f"invalid message line: {line[:200]!r}")
        if total > self.max_payload:
            raise NATSProtocolError(
                f"message of {total} bytes on {result[0]!r} exceeds max_payload {self.max_payload}"
            )
        return result

    def _parse_control(self, line: bytes) -> Event:
        upper = line[:5].upper()
        if upper == b"PING" and len(line) == 4:
            return _PING
        if upper == b"PONG" and len(line) == 4:
            return _PONG
        if upper.startswith(b"+OK") and len(line) == 3:
            return _OK
        if upper.startswith(b"-ERR"):
            message = line[4:].strip().decode("utf-8", "replace")
            if len(message) >= 2 and message[0] == message[-1] == "'":
                message = message[1:-1]
            return Err(message)
        if upper in (b"INFO ", b"INFO\t"):
            try:
                data = json.loads(line[5:])
            except ValueError as exc:
                raise NATSProtocolError(f"INFO is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise NATSProtocolError("INFO is not a JSON object")
            self._apply_info(data)
            return Info(data)
        raise NATSProtocolError(f"unknown protocol line: {line[:200]!r}")

    def _apply_info(self, data: dict[str, Any]) -> None:
        if self.server_info is None:
            self.server_info = data
        else:  # an async INFO carries only what changed
            self.server_info = {**self.server_info, **data}
        max_payload = self.server_info.get("max_payload")
        if isinstance(max_payload, int) and max_payload > 0:
            self.max_payload = max_payload

    # -- output -----------------------------------------------------------------------

    def connect(self, options: Mapping[str, object]) -> bytes:
        """``CONNECT {json}``."""
        return b"CONNECT " + json.dumps(dict(options), separators=(",", ":")).encode() + b"\r\n"

    def pub(
        self,
        subject: str,
        payload: bytes,
        *,
        reply: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | Headers | None = None,
    ) -> bytes:
        """``PUB`` (or ``HPUB`` with *headers*) of *payload* to *subject*."""
        check_subject(subject)
        target = subject if reply is None else f"{subject} {reply}"
        if reply is not None:
            check_subject(reply, "reply subject")
        size = len(payload)
        if headers is None:
            if size > self.max_payload:
                raise NATSLocalError(
                    f"payload of {size} bytes exceeds the server's max_payload {self.max_payload}"
                )
            line = f"PUB {target} {size}\r\n".encode()
            if len(line) > MAX_CONTROL_LINE:  # (inline: the cluster's per-message path)
                raise _too_long(line)
            return b"".join((line, payload, b"\r\n"))
        if self.server_info is not None and not self.server_info.get("headers", False):
            raise NATSLocalError("the server does not support headers")
        block = encode_headers(headers)
        total = len(block) + size
        if total > self.max_payload:
            raise NATSLocalError(
                f"headers and payload of {total} bytes exceed the server's max_payload "
                f"{self.max_payload}"
            )
        return b"".join(
            (_control_line(f"HPUB {target} {len(block)} {total}\r\n"), block, payload, b"\r\n")
        )

    def sub(self, subject: str, sid: int, queue: str | None = None) -> bytes:
        """``SUB <subject> [queue] <sid>``."""
        check_subject(subject)
        if queue is None:
            return _control_line(f"SUB {subject} {sid}\r\n")
        _check_queue(queue)
        return _control_line(f"SUB {subject} {queue} {sid}\r\n")

    def unsub(self, sid: int, max_msgs: int | None = None) -> bytes:
        """``UNSUB <sid> [max_msgs]``: now, or after *max_msgs* more messages."""
        if max_msgs is None:
            return f"UNSUB {sid}\r\n".encode()
        if max_msgs < 0:
            raise NATSLocalError(f"max_msgs must not be negative: {max_msgs}")
        return f"UNSUB {sid} {max_msgs}\r\n".encode()

    def ping(self) -> bytes:
        """``PING``."""
        return b"PING\r\n"

    def pong(self) -> bytes:
        """``PONG``."""
        return b"PONG\r\n"


def _control_line(line: str) -> bytes:
    """``line`` encoded; NATSLocalError if it is longer than the server takes.

    nats-server answers a control line over its ``max_control_line`` (4 KiB unless
    configured) with ``-ERR 'Maximum Control Line Exceeded'`` and closes the connection:
    one such line would cut the client off, and every command queued behind it.
    """
    data = line.encode()
    if len(data) > MAX_CONTROL_LINE:
        raise _too_long(data)
    return data


def _too_long(line: bytes) -> NATSLocalError:
    subject = line.split(b" ", 2)[1][:60].decode(errors="replace")
    return NATSLocalError(
        f"a control line of {len(line)} bytes exceeds the server's max_control_line "
        f"({MAX_CONTROL_LINE}): subject {subject!r}..."
    )
