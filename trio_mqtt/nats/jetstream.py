"""JetStream and key-value buckets on top of :class:`~trio_mqtt.nats.client.NATSClient`.

JetStream's API is JSON request/reply on ``$JS.API.>`` subjects; a publish to a
stream's subject answers with a PubAck (``{"stream", "seq", "duplicate"}``) or an error
(``{"error": {"code", "err_code", "description"}}``). A key-value bucket follows the
KV conventions (ADR-8) so that other clients (nats-py, the ``nats`` CLI) share it:
stream ``KV_<bucket>``, subjects ``$KV.<bucket>.<key>``, one message per key
(``max_msgs_per_subject`` = history), deletes as messages with a ``KV-Operation``
header, gets through DIRECT.GET (ADR-31).

Per-key TTL (``per_key_ttl=True``, nats-server >= 2.11, ADR-43): the stream allows the
``Nats-TTL`` header and writes a *delete marker* (``Nats-Marker-Reason``) when a key
expires, so that watchers see the expiry as an entry of its own.

Watchers are ordered push consumers: the server numbers each delivery and we check
that the numbers follow each other (and the idle heartbeats' last-delivered number); a
gap or silence recreates the consumer from the next stream sequence.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs
import trio

from trio_mqtt.nats.client import HeadersArg, NATSClient
from trio_mqtt.nats.protocol import Headers, Msg, NATSError, NATSLocalError

log = logging.getLogger("trio_mqtt.nats")

API: Final = "$JS.API."
NANOSECONDS: Final = 1_000_000_000
DEFAULT_DUPLICATE_WINDOW: Final = 120.0
DEFAULT_MARKER_TTL: Final = 60.0
"""How long an expiry's delete marker stays in a per-key-TTL bucket."""
MAX_HISTORY: Final = 64
MULTI_LAST_LIMIT: Final = 1024
"""DIRECT.GET ``multi_last`` refuses (413) a filter matching more subjects than this."""
GET_MANY_BATCH: Final = 256
"""Keys per ``multi_last`` request of ``KeyValue.get_many`` (well under the limit)."""

ERR_STREAM_NAME_IN_USE: Final = 10058
ERR_WRONG_LAST_SEQUENCE: Final = 10071

Operation = Literal["PUT", "DEL", "PURGE"]

_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
_KEY_FILTER = re.compile(r"[-/_=.a-zA-Z0-9*>]+")
_BUCKET = re.compile(r"[a-zA-Z0-9_-]+")


class JetStreamError(NATSError):
    """JetStream refused a request: HTTP-like *code*, JetStream *err_code*, description."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


class WrongRevisionError(JetStreamError):
    """The key's latest revision is not the expected one (``update()``; err_code 10071)."""


class KeyExistsError(WrongRevisionError):
    """``create()`` found the key present (not deleted)."""


class InvalidKeyError(NATSLocalError):
    """A key, key filter or bucket name that KV does not allow."""


@attrs.frozen
class PubAck:
    """JetStream stored a message: in *stream* at sequence *seq* (or had it: duplicate)."""

    stream: str
    seq: int
    duplicate: bool = False


@attrs.frozen
class Entry:
    """One revision of a key: a value (PUT), a delete (DEL) or a purge (PURGE).

    ``reason`` is set for the server's delete markers (``Nats-Marker-Reason``:
    ``MaxAge`` when a key's TTL expired, ``Purge``, ``Remove``).
    """

    key: str
    value: bytes
    revision: int
    operation: Operation
    headers: Headers | None = None
    reason: str | None = None


# -- JSON API ---------------------------------------------------------------------------


def _decode_reply(msg: Msg, what: str) -> dict[str, Any]:
    if msg.status is not None:
        raise JetStreamError(msg.status, 0, f"{what}: {msg.description or 'status'}")
    try:
        data = json.loads(msg.payload)
    except ValueError:
        raise JetStreamError(0, 0, f"{what}: reply is not JSON: {msg.payload[:200]!r}") from None
    if not isinstance(data, dict):
        raise JetStreamError(0, 0, f"{what}: reply is not a JSON object")
    error = data.get("error")
    if error is not None:
        if not isinstance(error, dict):
            error = {"description": str(error)}
        raise JetStreamError(
            int(error.get("code", 0)),
            int(error.get("err_code", 0)),
            str(error.get("description", "unknown JetStream error")),
        )
    return data


async def api_request(
    client: NATSClient,
    endpoint: str,
    body: Mapping[str, object] | None = None,
    *,
    timeout: float = 2.0,  # noqa: ASYNC109 - a request is always bounded
) -> dict[str, Any]:
    """Call ``$JS.API.<endpoint>`` with a JSON body; the reply, or JetStreamError."""
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    msg = await client.request(API + endpoint, payload, timeout=timeout)
    return _decode_reply(msg, endpoint)


async def ensure_stream(
    client: NATSClient,
    config: Mapping[str, object],
    *,
    timeout: float = 2.0,  # noqa: ASYNC109 - a request is always bounded
) -> dict[str, Any]:
    """Create the stream ``config["name"]``, or update it if its config differs.

    Returns the stream info. Creating with an identical config is a no-op for the
    server, so calling this at every start is cheap.
    """
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise NATSLocalError("a stream config needs a name")
    try:
        return await api_request(client, f"STREAM.CREATE.{name}", config, timeout=timeout)
    except JetStreamError as exc:
        if exc.err_code != ERR_STREAM_NAME_IN_USE:
            raise
    return await api_request(client, f"STREAM.UPDATE.{name}", config, timeout=timeout)


async def publish_acked(
    client: NATSClient,
    subject: str,
    payload: bytes,
    *,
    headers: HeadersArg | None = None,
    msg_id: str | None = None,
    timeout: float = 2.0,  # noqa: ASYNC109 - a request is always bounded
) -> PubAck:
    """Publish to a stream's subject and wait for JetStream's acknowledgement.

    *msg_id* (``Nats-Msg-Id``) lets the stream drop a repeat within its duplicate
    window. Raises :class:`JetStreamError` (e.g. a failed expected-sequence check) or
    :class:`~trio_mqtt.nats.client.NoRespondersError` (no stream has this subject).
    """
    if msg_id is not None:
        pairs = list(Headers.of(headers or {}).items)
        pairs.append(("Nats-Msg-Id", msg_id))
        headers = Headers(tuple(pairs))
    msg = await client.request(subject, payload, headers=headers, timeout=timeout)
    data = _decode_reply(msg, f"publish to {subject!r}")
    try:
        return PubAck(str(data["stream"]), int(data["seq"]), bool(data.get("duplicate", False)))
    except (KeyError, TypeError, ValueError):
        raise JetStreamError(0, 0, f"publish to {subject!r}: invalid PubAck {data!r}") from None


# -- key-value --------------------------------------------------------------------------


def check_key(key: str) -> None:
    """Raise :class:`InvalidKeyError` unless *key* is a valid KV key (ADR-8)."""
    if not _KEY.fullmatch(key) or key[0] == "." or key[-1] == ".":
        raise InvalidKeyError(f"invalid key {key!r}: [-/_=.a-zA-Z0-9]+, no dot at either end")


def check_key_filter(key_filter: str) -> None:
    """Like :func:`check_key`, allowing the ``*`` and ``>`` wildcards as whole tokens."""
    if (
        not _KEY_FILTER.fullmatch(key_filter)
        or key_filter[0] == "."
        or key_filter[-1] == "."
        or any(
            ("*" in token or ">" in token) and len(token) != 1 for token in key_filter.split(".")
        )
        or (">" in key_filter and not key_filter.endswith(">"))
    ):
        raise InvalidKeyError(f"invalid key filter {key_filter!r}")


def _ttl_header(ttl: float) -> str:
    """``Nats-TTL`` in whole seconds (the server's resolution), at least one."""
    if not ttl > 0:
        raise NATSLocalError(f"a TTL must be positive, not {ttl!r}")
    return f"{max(1, math.ceil(ttl))}s"


def _nanos(seconds: float) -> int:
    return round(seconds * NANOSECONDS)


def _operation(headers: Headers | None) -> tuple[Operation, str | None]:
    """What a stored message means for its key: PUT, DEL or PURGE, and a marker's reason."""
    if headers is None:
        return "PUT", None
    reason = headers.get("Nats-Marker-Reason")
    if reason is not None:
        return ("DEL" if reason == "Remove" else "PURGE"), reason
    op = headers.get("KV-Operation")
    if op == "DEL":
        return "DEL", None
    if op == "PURGE":
        return "PURGE", None
    return "PUT", None


@attrs.frozen(eq=False)
class KeyValue:
    """A handle on the key-value bucket *bucket*; make it with :meth:`open`."""

    client: NATSClient
    bucket: str
    stream: str
    prefix: str  # "$KV.<bucket>."
    timeout: float = 2.0

    @classmethod
    async def open(
        cls,
        client: NATSClient,
        bucket: str,
        *,
        history: int = 1,
        ttl: float | None = None,
        per_key_ttl: bool = False,
        marker_ttl: float = DEFAULT_MARKER_TTL,
        replicas: int = 1,
        storage: Literal["file", "memory"] = "file",
        timeout: float = 2.0,  # noqa: ASYNC109 - a request is always bounded
    ) -> KeyValue:
        """Create the bucket, or update it to this configuration, and return a handle.

        *ttl* expires every value after that long (the stream's ``max_age``).
        *per_key_ttl* lets ``put``/``create`` give a value its own TTL; an expiry then
        leaves a delete marker (kept *marker_ttl* seconds) that watchers receive.
        Enabling it cannot be undone on an existing bucket (a server rule).
        """
        if not _BUCKET.fullmatch(bucket):
            raise InvalidKeyError(f"invalid bucket name {bucket!r}: [a-zA-Z0-9_-]+")
        if not 1 <= history <= MAX_HISTORY:
            raise NATSLocalError(f"history must be 1..{MAX_HISTORY}, not {history}")
        duplicate_window = DEFAULT_DUPLICATE_WINDOW
        if ttl is not None:
            if not ttl > 0:
                raise NATSLocalError(f"a bucket TTL must be positive, not {ttl!r}")
            duplicate_window = min(duplicate_window, ttl)
        config: dict[str, object] = {
            "name": f"KV_{bucket}",
            "subjects": [f"$KV.{bucket}.>"],
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": _nanos(ttl) if ttl is not None else 0,
            "max_msgs_per_subject": history,
            "max_msg_size": -1,
            "storage": storage,
            "discard": "new",
            "num_replicas": replicas,
            "duplicate_window": _nanos(duplicate_window),
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "allow_direct": True,
        }
        if per_key_ttl:
            config["allow_msg_ttl"] = True
            config["subject_delete_marker_ttl"] = _nanos(max(1.0, marker_ttl))
        await ensure_stream(client, config, timeout=timeout)
        return cls(client, bucket, f"KV_{bucket}", f"$KV.{bucket}.", timeout)

    # -- reads ------------------------------------------------------------------------

    def _entry(self, subject: str, revision: int, msg: Msg) -> Entry:
        operation, reason = _operation(msg.headers)
        key = subject[len(self.prefix) :] if subject.startswith(self.prefix) else subject
        return Entry(key, msg.payload, revision, operation, msg.headers, reason)

    def _entry_from_direct(self, msg: Msg) -> Entry:
        """An Entry from a DIRECT.GET reply (stream facts in ``Nats-*`` headers)."""
        headers = msg.headers
        subject = headers.get("Nats-Subject") if headers is not None else None
        sequence = headers.get("Nats-Sequence") if headers is not None else None
        if subject is None or sequence is None or not sequence.isdigit():
            raise JetStreamError(0, 0, f"{self.stream}: direct get reply without subject/seq")
        return self._entry(subject, int(sequence), msg)

    async def last(self, key: str) -> Entry | None:
        """The latest revision of *key*, whatever its operation; None if none is kept."""
        check_key(key)
        msg = await self.client.request(
            f"{API}DIRECT.GET.{self.stream}.{self.prefix}{key}", b"", timeout=self.timeout
        )
        if msg.status == 404:
            return None
        if msg.status is not None:
            raise JetStreamError(msg.status, 0, f"get {key!r}: {msg.description}")
        return self._entry_from_direct(msg)

    async def get(self, key: str) -> Entry | None:
        """The current value of *key*, or None if it has none (never set, deleted, expired).

        Reads go through DIRECT.GET, which any replica answers: with replicas > 1 a read
        right after a write may miss it (ADR-31).
        """
        entry = await self.last(key)
        if entry is None or entry.operation != "PUT":
            return None
        return entry

    async def entries(self, key_filter: str = ">") -> list[Entry]:
        """The current value of every key matching *key_filter*, in revision order.

        One DIRECT.GET ``multi_last`` request when it can (no server-side state, any
        replica answers); a filter matching more than 1,024 keys (the server answers
        413) or more than one batch falls back to an ordered consumer delivering the
        last message per subject. Deleted and expired keys are left out.
        """
        check_key_filter(key_filter)
        entries, end = await self._multi_last([self.prefix + key_filter])
        if entries is None:
            if end.status not in (204, 413):
                raise JetStreamError(end.status or 0, 0, f"entries: {end.description}")
            return await self._entries_by_consumer(key_filter)
        return entries

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """The current value of each of *keys* that has one, by key.

        One DIRECT.GET ``multi_last`` request per GET_MANY_BATCH keys (instead of a
        request per key); a batch the server does not answer in full is read key by key.
        """
        for key in keys:
            check_key(key)
        found: dict[str, Entry] = {}
        for start in range(0, len(keys), GET_MANY_BATCH):
            batch = keys[start : start + GET_MANY_BATCH]
            entries, _end = await self._multi_last([self.prefix + key for key in batch])
            if entries is None:
                for key in batch:  # (not answered as one batch)
                    entry = await self.get(key)
                    if entry is not None:
                        found[key] = entry
                continue
            found.update((entry.key, entry) for entry in entries)
        return found

    async def _multi_last(self, subjects: list[str]) -> tuple[list[Entry] | None, Msg]:
        """One DIRECT.GET ``multi_last`` request for the last message of each of
        *subjects* (filters allowed): the PUT entries among them (deleted and expired
        keys left out; none on 404), or None if the server did not answer them all in
        this one batch; and the batch's closing reply (its status says why)."""
        replies = await self.client.request_many(
            f"{API}DIRECT.GET.{self.stream}",
            json.dumps({"multi_last": subjects}).encode(),
            timeout=self.timeout,
        )
        end = replies[-1]
        if end.status == 404:
            return [], end
        if (
            end.status != 204
            or end.headers is None
            or end.headers.get("Nats-Num-Pending", "0") != "0"
        ):
            return None, end
        entries = [self._entry_from_direct(msg) for msg in replies[:-1]]
        return [entry for entry in entries if entry.operation == "PUT"], end

    async def _entries_by_consumer(self, key_filter: str) -> list[Entry]:
        latest: dict[str, Entry] = {}

        def collect(entry: Entry) -> None:
            latest[entry.key] = entry

        watcher = await self.watch(key_filter, collect, include_current=True)
        try:
            with trio.fail_after(max(self.timeout, 10.0)):
                await watcher.initial_done.wait()
        finally:
            await watcher.stop()
        ordered = sorted(latest.values(), key=lambda entry: entry.revision)
        return [entry for entry in ordered if entry.operation == "PUT"]

    # -- writes -----------------------------------------------------------------------

    async def _publish(self, key: str, value: bytes, headers: dict[str, str] | None) -> int:
        check_key(key)
        ack = await publish_acked(
            self.client, self.prefix + key, value, headers=headers, timeout=self.timeout
        )
        return ack.seq

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Set *key* to *value*; returns its revision. *ttl* needs a per_key_ttl bucket."""
        headers = None if ttl is None else {"Nats-TTL": _ttl_header(ttl)}
        return await self._publish(key, value, headers)

    async def create(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Set *key* only if it has no value (never set, deleted, purged or expired).

        Raises :class:`KeyExistsError` if it has one.
        """
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        if ttl is not None:
            headers["Nats-TTL"] = _ttl_header(ttl)
        try:
            return await self._publish(key, value, headers)
        except JetStreamError as exc:
            if exc.err_code != ERR_WRONG_LAST_SEQUENCE:
                raise
            first_error = exc
        # The key has messages: fine if the latest is a delete, purge or expiry marker.
        last = await self.last(key)
        if last is not None and last.operation != "PUT":
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last.revision)
            try:
                return await self._publish(key, value, headers)
            except JetStreamError as exc:
                if exc.err_code != ERR_WRONG_LAST_SEQUENCE:
                    raise
                first_error = exc
        raise KeyExistsError(
            first_error.code, first_error.err_code, f"key {key!r} exists in {self.bucket!r}"
        )

    async def update(
        self, key: str, value: bytes, last_revision: int, *, ttl: float | None = None
    ) -> int:
        """Set *key* only if its latest revision is *last_revision* (compare-and-set).

        Raises :class:`WrongRevisionError` otherwise.
        """
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last_revision)}
        if ttl is not None:
            headers["Nats-TTL"] = _ttl_header(ttl)
        try:
            return await self._publish(key, value, headers)
        except JetStreamError as exc:
            if exc.err_code != ERR_WRONG_LAST_SEQUENCE:
                raise
            raise WrongRevisionError(
                exc.code,
                exc.err_code,
                f"key {key!r} in {self.bucket!r} is not at revision {last_revision}",
            ) from None

    async def delete(self, key: str) -> int:
        """Delete *key*, keeping its history (a ``KV-Operation: DEL`` entry)."""
        return await self._publish(key, b"", {"KV-Operation": "DEL"})

    async def purge(self, key: str) -> int:
        """Delete *key* and its history (``KV-Operation: PURGE`` with a subject rollup)."""
        return await self._publish(key, b"", {"KV-Operation": "PURGE", "Nats-Rollup": "sub"})

    # -- watching ---------------------------------------------------------------------

    async def watch(
        self,
        key_filter: str,
        callback: Callable[[Entry], None],
        *,
        include_current: bool = True,
        idle_heartbeat: float = 5.0,
    ) -> Watcher:
        """Call *callback* (from the client's reader task) with every change of a key
        matching *key_filter* (``>`` for all): puts, deletes, purges, expiry markers.

        With *include_current* the current entry of every matching key comes first
        (``Watcher.initial_done`` is set once they all have); otherwise only changes
        made from now on.
        """
        check_key_filter(key_filter)
        watcher = Watcher(self, key_filter, callback, include_current, idle_heartbeat)
        await watcher._start()
        return watcher


def _ack_metadata(reply: str | None) -> tuple[int, int, int] | None:
    """``(stream sequence, consumer sequence, pending)`` from a JetStream ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>`` or the
    newer form with domain and account hash after ``$JS.ACK`` (and a random token).
    """
    if reply is None or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    if len(tokens) == 9:
        base = 4
    elif len(tokens) >= 11:
        base = 6
    else:
        return None
    try:
        return int(tokens[base + 1]), int(tokens[base + 2]), int(tokens[base + 4])
    except (ValueError, IndexError):
        return None


class Watcher:
    """An ordered push consumer on a bucket; made by :meth:`KeyValue.watch`.

    It checks that the consumer's delivery numbers follow each other; on a gap, a
    heartbeat reporting deliveries we did not see, or no heartbeat for three intervals,
    it recreates the consumer from the stream sequence after the last entry it passed on
    (``resets`` counts this). Flow-control requests are answered as they come.
    """

    def __init__(
        self,
        kv: KeyValue,
        key_filter: str,
        callback: Callable[[Entry], None],
        include_current: bool,
        idle_heartbeat: float,
    ) -> None:
        self.kv = kv
        self.key_filter = key_filter
        self._callback = callback
        self._include_current = include_current
        self._idle_heartbeat = idle_heartbeat
        self.initial_done = trio.Event()
        """Set once the current entries (include_current) have all been passed on."""
        self.resets = 0
        """How many times the consumer was recreated after a gap or silence."""
        self.stream_seq = 0
        """The stream sequence of the last entry passed on (or where watching began)."""
        self.consumer: str | None = None
        self.deliver_subject: str | None = None
        self.flow_controls = 0
        """How many flow-control requests were answered."""
        self._consumer_seq = 0
        self._generation = 0
        self._sid: int | None = None
        self._reset = trio.Event()
        self._stopped = False
        self._last_activity = trio.current_time()

    # -- consumer lifecycle ----------------------------------------------------------

    async def _start(self) -> None:
        await self._create()
        self.kv.client.start_soon(self._supervise)

    async def _create(self) -> None:
        client = self.kv.client
        self._generation += 1
        generation = self._generation
        self._consumer_seq = 0
        config: dict[str, object] = {
            "ack_policy": "none",
            "max_deliver": 1,
            "filter_subject": self.kv.prefix + self.key_filter,
            "flow_control": True,
            "idle_heartbeat": _nanos(self._idle_heartbeat),
            "inactive_threshold": _nanos(max(5.0, 3 * self._idle_heartbeat)),
            "mem_storage": True,
            "num_replicas": 1,
            "replay_policy": "instant",
        }
        if self.stream_seq > 0:
            config["deliver_policy"] = "by_start_sequence"
            config["opt_start_seq"] = self.stream_seq + 1
        elif self._include_current:
            config["deliver_policy"] = "last_per_subject"
        else:
            config["deliver_policy"] = "new"
        deliver = client.new_inbox()
        config["deliver_subject"] = deliver

        def on_msg(msg: Msg) -> None:
            self._on_msg(generation, msg)

        sid = client.subscribe(deliver, on_msg)
        try:
            info = await api_request(
                client,
                f"CONSUMER.CREATE.{self.kv.stream}",
                {"stream_name": self.kv.stream, "config": config},
                timeout=self.kv.timeout,
            )
        except BaseException:
            client.unsubscribe(sid)
            raise
        self._sid = sid
        self.deliver_subject = deliver
        self.consumer = str(info.get("name", ""))
        self._last_activity = trio.current_time()
        delivered = info.get("delivered", {})
        if self.stream_seq == 0 and not self._include_current:
            # Deliver "new" starts after the stream's last message at creation time.
            self.stream_seq = int(delivered.get("stream_seq", 0))
        # Deliveries may overtake this reply: only "nothing at all to deliver" is final
        # here; otherwise the delivery that says 0 pending sets initial_done.
        if not self._include_current or (
            int(delivered.get("consumer_seq", 0)) + int(info.get("num_pending", 0)) == 0
        ):
            self.initial_done.set()

    async def _delete_consumer(self, name: str | None) -> None:
        if not name:
            return
        try:
            await api_request(
                self.kv.client,
                f"CONSUMER.DELETE.{self.kv.stream}.{name}",
                timeout=min(self.kv.timeout, 1.0),
            )
        except NATSError as exc:  # it expires by itself (inactive_threshold)
            log.debug("watcher: could not delete consumer %s: %s", name, exc)

    async def _recreate(self) -> None:
        """Replace the consumer, starting after the last entry passed on."""
        old_sid, old_consumer = self._sid, self.consumer
        if old_sid is not None:
            self.kv.client.unsubscribe(old_sid)
        self._sid = None
        delay = 0.1
        while not self._stopped:
            try:
                await self._create()
                break
            except NATSError as exc:
                log.warning("watcher on %s: could not recreate: %s", self.kv.bucket, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.resets += 1
        await self._delete_consumer(old_consumer)

    async def _supervise(self) -> None:
        """Recreate the consumer when asked (gap) or when heartbeats stop coming."""
        silence = 3 * self._idle_heartbeat
        while True:
            with trio.move_on_at(self._last_activity + silence):
                await self._reset.wait()
            if self._stopped:
                return
            if not self._reset.is_set():
                if trio.current_time() < self._last_activity + silence:
                    continue  # something arrived meanwhile
                log.warning(
                    "watcher on %s: no heartbeat for %.1f s, recreating", self.kv.bucket, silence
                )
                self._generation += 1  # drop whatever the old consumer still sends
            self._reset = trio.Event()
            await self._recreate()

    def _request_reset(self, why: str) -> None:
        log.warning("watcher on %s: %s; recreating from %d", self.kv.bucket, why, self.stream_seq)
        self._generation += 1  # ignore the rest of this consumer's deliveries
        self._reset.set()

    async def stop(self) -> None:
        """Stop watching: unsubscribe and delete the consumer."""
        if self._stopped:
            return
        self._stopped = True
        self._generation += 1
        self._reset.set()
        if self._sid is not None and not self.kv.client.is_closed:
            self.kv.client.unsubscribe(self._sid)
        if not self.kv.client.is_closed:
            await self._delete_consumer(self.consumer)

    # -- deliveries (in the reader task) ----------------------------------------------

    def _on_msg(self, generation: int, msg: Msg) -> None:
        if generation != self._generation:
            return
        self._last_activity = trio.current_time()
        client = self.kv.client
        if msg.status is not None:
            if msg.status != 100:  # e.g. 409 Consumer Deleted
                self._request_reset(f"status {msg.status} {msg.description!r}")
                return
            if msg.reply:  # a flow-control request: answer to let deliveries go on
                client.publish(msg.reply, b"")
                self.flow_controls += 1
                return
            if msg.headers is not None:
                stalled = msg.headers.get("Nats-Consumer-Stalled")
                if stalled:
                    client.publish(stalled, b"")
                last = msg.headers.get("Nats-Last-Consumer")
                if last is not None and last.isdigit() and int(last) != self._consumer_seq:
                    self._request_reset(
                        f"heartbeat says {last} delivered, {self._consumer_seq} seen"
                    )
            return
        metadata = _ack_metadata(msg.reply)
        if metadata is None:
            log.warning("watcher on %s: delivery without metadata: %r", self.kv.bucket, msg.reply)
            return
        stream_seq, consumer_seq, pending = metadata
        if consumer_seq != self._consumer_seq + 1:
            self._request_reset(f"delivery {consumer_seq} after {self._consumer_seq}")
            return
        self._consumer_seq = consumer_seq
        self.stream_seq = stream_seq
        self._callback(self.kv._entry(msg.subject, stream_seq, msg))
        if pending == 0:
            self.initial_done.set()
