"""SQLite persistence of sessions and retained messages (``[broker] persistence = "path"``).

The broker keeps all state in memory (``BrokerCore``); this store mirrors the part that must
survive a restart into one SQLite file, using only the stdlib ``sqlite3`` module:

- retained messages, with who published them (client id, listener, client and proxy
  addresses), so that "who set this retained value" still has an answer after a restart;
- persistent sessions (expiry interval > 0): subscriptions, queued and in-flight messages,
  the QoS 2 packet ids received but not released, the next packet id, the expiry deadline
  and a delayed will.

The core notes what changed (``BrokerCore.take_changes`` hands it over); :meth:`SQLiteStore.flush`
writes exactly those rows in one transaction (a session's queue incrementally: what was queued,
sent or evicted since), so its cost follows the rate of change, not the amount of state.
:meth:`SQLiteStore.write_steps` does the same in steps, for a caller that lets other work run
in between. :meth:`SQLiteStore.load_into` rebuilds the state at startup.

Times: the core's clock restarts with the process, so every deadline and creation time is
stored as wall-clock time (seconds since the epoch) and converted back to the new core clock
on load. Message properties are stored as the MQTT 5 property block of a PUBLISH, encoded by
our own codec; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from trio_mqtt.broker.message import Message
from trio_mqtt.broker.router import SubscriptionOptions
from trio_mqtt.broker.sessions import (
    EVICTED,
    OutboundState,
    QueuedMessage,
    SavedSession,
    Session,
)
from trio_mqtt.errors import ConfigError, LocalProtocolError, RemoteProtocolError, TrioMQTTError
from trio_mqtt.mqtt.packets import NO_PROPERTIES, Properties, ProtocolVersion
from trio_mqtt.mqtt.properties import PropertyContext, decode_properties, encode_properties
from trio_mqtt.mqtt.topics import validate_topic_filter
from trio_mqtt.peer import Endpoint, PeerInfo

if TYPE_CHECKING:
    from trio_mqtt.broker.core import BrokerCore, Restored

__all__ = [
    "SCHEMA_VERSION",
    "FlushBatch",
    "PersistenceError",
    "PersistenceWriteError",
    "SQLiteStore",
]

log = logging.getLogger("trio_mqtt.store")

SCHEMA_VERSION = 2
"""Version of the table layout below; a file with another version is refused."""

# Columns that describe one application message (a retained one, or one held by a session).
_MESSAGE_COLUMNS = (
    "topic",
    "payload",
    "qos",
    "retain",
    "properties",  # MQTT 5 property block of a PUBLISH (our codec), NULL when empty
    "publisher",  # client id of the publisher, NULL for in-process publishes
    "created",  # wall-clock time the broker received it (for Message Expiry)
    "listener",
    "transport",
    "client_host",
    "client_port",
    "proxy_host",
    "proxy_port",
)
_MESSAGE_DDL = """
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties BLOB,
    publisher TEXT,
    created REAL NOT NULL,
    listener TEXT NOT NULL,
    transport TEXT NOT NULL,
    client_host TEXT,
    client_port INTEGER,
    proxy_host TEXT,
    proxy_port INTEGER"""

_SCHEMA = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE retained ({_MESSAGE_DDL},
    PRIMARY KEY (topic)
);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    protocol_version INTEGER NOT NULL,
    expiry_interval INTEGER NOT NULL,
    expires_at REAL,            -- wall clock; NULL while online or when it never expires
    next_packet_id INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    inflight_in TEXT NOT NULL,  -- JSON list of QoS 2 packet ids received, not yet released
    will_due REAL               -- wall clock of the delayed will, NULL if none
);
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    topic_filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    retain_handling INTEGER NOT NULL,
    subscription_identifier INTEGER,
    PRIMARY KEY (client_id, topic_filter)
) WITHOUT ROWID;
CREATE TABLE session_messages (
    client_id TEXT NOT NULL,
    kind TEXT NOT NULL,          -- 'pending' (queued), 'inflight' (sent, not acked), 'will'
    position INTEGER NOT NULL,   -- order within its kind
    packet_id INTEGER,           -- inflight only
    state TEXT,                  -- inflight only: puback | pubrec | pubcomp
    delivery_qos INTEGER,        -- pending / inflight: QoS of this delivery
    delivery_retain INTEGER,     -- pending / inflight: retain flag of this delivery
    subscription_identifiers TEXT,  -- pending / inflight: JSON list
    shared_filters TEXT,         -- pending / inflight: JSON list of $share/g/f (version 2)
    {_MESSAGE_DDL},
    PRIMARY KEY (client_id, kind, position)
);
"""
_TABLES = frozenset({"schema_version", "retained", "sessions", "subscriptions", "session_messages"})

_PENDING = "pending"
_INFLIGHT = "inflight"
_WILL = "will"

#: Rows written between two steps of ``SQLiteStore.write_steps`` (a few ms of work).
ROWS_PER_STEP = 2000

_MESSAGE_PLACEHOLDERS = ", ".join("?" * len(_MESSAGE_COLUMNS))
_INSERT_RETAINED = (
    f"INSERT OR REPLACE INTO retained ({', '.join(_MESSAGE_COLUMNS)}) "
    f"VALUES ({_MESSAGE_PLACEHOLDERS})"
)
_INSERT_SESSION = (
    "INSERT OR REPLACE INTO sessions (client_id, protocol_version, expiry_interval, expires_at, "
    "next_packet_id, dropped, inflight_in, will_due) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SUBSCRIPTION = (
    "INSERT INTO subscriptions (client_id, topic_filter, qos, no_local, retain_as_published, "
    "retain_handling, subscription_identifier) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SESSION_MESSAGE_HEAD = (
    "client_id",
    "kind",
    "position",
    "packet_id",
    "state",
    "delivery_qos",
    "delivery_retain",
    "subscription_identifiers",
    "shared_filters",
)
_INSERT_SESSION_MESSAGE = (
    f"INSERT INTO session_messages ({', '.join(_SESSION_MESSAGE_HEAD + _MESSAGE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(_SESSION_MESSAGE_HEAD) + len(_MESSAGE_COLUMNS)))})"
)

Row = tuple[Any, ...]
_T = TypeVar("_T")


class PersistenceError(ConfigError):
    """The persistence file cannot be used (not SQLite, not ours, another schema, corrupt).

    The message names the file and says what to do; the broker should refuse to start.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(
            f"persistence file {problem}; fix or move the file away, or set "
            "[broker] persistence to another path",
            file=path,
        )
        self.path = path


@attrs.define
class _RowReader:
    """Turns stored rows back into messages for one load.

    Messages are immutable, so equal property blocks and equal peers decode to one shared
    object: less work, and less memory for a million restored messages.
    """

    path: str
    offset: float  # wall clock = core clock + offset
    _properties: dict[bytes, Properties] = attrs.Factory(dict)
    _peers: dict[Row, PeerInfo] = attrs.Factory(dict)

    def message(self, row: Row) -> Message:
        topic, payload, qos, retain, properties, publisher, created = row[:7]
        return Message(
            topic=topic,
            payload=bytes(payload),
            qos=int(qos),
            retain=bool(retain),
            properties=self._decode_properties(properties, topic),
            publisher=publisher,
            peer=self._peer(row[7:]),
            created=float(created) - self.offset,
        )

    def _peer(self, columns: Row) -> PeerInfo:
        peer = self._peers.get(columns)
        if peer is None:
            listener, transport, client_host, client_port, proxy_host, proxy_port = columns
            client = None if client_host is None else Endpoint(client_host, int(client_port))
            proxy = None if proxy_host is None else Endpoint(proxy_host, int(proxy_port))
            peer = self._peers[columns] = PeerInfo(
                listener=listener,
                transport=transport,
                remote=proxy if proxy is not None else client,
                client=client,
                proxy=proxy,
            )
        return peer

    def _decode_properties(self, blob: bytes | None, topic: str) -> Properties:
        if blob is None:
            return NO_PROPERTIES
        blob = bytes(blob)
        cached = self._properties.get(blob)
        if cached is not None:
            return cached
        try:
            properties, end = decode_properties(
                blob, 0, len(blob), PropertyContext.PUBLISH, "stored message"
            )
        except RemoteProtocolError as exc:
            raise PersistenceError(
                self.path, f"has unreadable properties for topic {topic!r} ({exc})"
            ) from exc
        if end != len(blob):
            raise PersistenceError(
                self.path, f"has {len(blob) - end} stray byte(s) after the properties of {topic!r}"
            )
        self._properties[blob] = properties
        return properties


class PersistenceWriteError(TrioMQTTError):
    """Saving to the persistence file failed (disk full, file removed, I/O error).

    Nothing of the failed flush was written and the change sets are kept, so the next
    flush tries again with everything that is still to be saved.
    """


@attrs.frozen
class _QueueSlice:
    """Queued messages of one session to write from ``position`` on (a snapshot)."""

    client_id: str
    position: int
    items: list[QueuedMessage]


@attrs.frozen(eq=False)
class FlushBatch:
    """What one flush writes, taken from the core by :meth:`SQLiteStore.collect`.

    Small rows are made at once; queued and retained messages are kept as the immutable
    objects they are and turned into rows while they are written (``write_steps``), so
    that taking the snapshot costs the event loop next to nothing.
    """

    session_ids: frozenset[str]  # every dirty client id (written or deleted)
    topics: frozenset[str]  # every dirty retained topic (written or deleted)
    gone_sessions: list[tuple[str]]
    session_rows: list[Row]
    # sessions whose queued messages are all written again (else only what changed)
    rewritten: list[tuple[str]]
    # sessions whose subscriptions, in-flight messages and will are written again
    refreshed: list[tuple[str]]
    pending_cuts: list[tuple[str, int]]  # (client id, first position still queued)
    pending_evicted: list[tuple[str, int]]  # (client id, position of an evicted message)
    subscription_rows: list[Row]
    message_rows: list[Row]  # in-flight messages and delayed wills
    pending: list[_QueueSlice]
    gone_topics: list[tuple[str]]
    retained: list[Message]
    writer: _RowWriter

    def requeue(self, core: BrokerCore) -> None:
        """Give this batch's sessions and topics back to the core as changed (after a
        failed write): the next flush saves them."""
        core.give_back_changes(self.session_ids, self.topics)


@attrs.define
class _SavedQueue:
    """How far the file holds a session's queue (positions as ``Session`` counts them)."""

    session: Session  # the same object, or the file holds another session's queue
    upto: int  # positions below this are in the file (unless taken or evicted since)
    evicted_upto: int  # evictions at positions up to this one are in the file too


@attrs.define(eq=False)
class SQLiteStore:
    """Sessions and retained messages in one SQLite file (WAL mode, synchronous=NORMAL).

    Everything runs on the core's thread (``write_steps`` in steps, so that the broker can
    serve clients in between). ``wall_clock`` gives seconds since the epoch (tests pass a
    fake one).
    """

    path: str
    _db: sqlite3.Connection
    _wall_clock: Callable[[], float] = time.time
    # how far the file holds each session's queue (collect writes only what changed)
    _saved_queues: dict[str, _SavedQueue] = attrs.field(factory=dict, init=False)

    @classmethod
    def open(cls, path: str, *, wall_clock: Callable[[], float] = time.time) -> SQLiteStore:
        """Open (creating it if needed) the store at ``path``; raises ``PersistenceError``."""
        directory = os.path.dirname(os.path.abspath(path))
        if path != ":memory:" and not os.path.isdir(directory):
            raise PersistenceError(path, f"cannot be created: directory {directory} does not exist")
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise PersistenceError(path, f"cannot be opened ({exc})") from exc
        try:
            _prepare(db, path)
        except BaseException:
            db.close()
            raise
        return cls(path, db, wall_clock)

    def close(self) -> None:
        """Close the file (idempotent). Call ``flush`` first to keep the latest changes."""
        self._db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------------- writing

    def flush(self, core: BrokerCore) -> int:
        """Save every dirty session and retained topic in one transaction.

        Takes what the core noted as changed (``BrokerCore.take_changes``). Sessions that ended, or
        whose expiry interval is 0, are deleted from the file; so are retained topics that
        no longer hold a message. Returns the number of session and retained rows written
        or deleted. On ``PersistenceWriteError`` nothing was written and the change sets
        are restored, so the next flush retries.
        """
        batch = self.collect(core)
        try:
            return self.write(batch)
        except PersistenceWriteError:
            batch.requeue(core)
            raise

    def collect(self, core: BrokerCore) -> FlushBatch:
        """First half of ``flush``: snapshot what changed, taking the core's change sets.

        Runs on the core's thread (it reads the core), and costs it little: a session's
        queue is written incrementally (only the messages queued since the last flush,
        and deletions for those that left it), and messages are turned into rows later,
        by ``write_steps``.
        """
        writer = _RowWriter(offset=self._wall_clock() - core.now())
        gone_sessions: list[tuple[str]] = []
        session_rows: list[Row] = []
        rewritten: list[tuple[str]] = []
        refreshed: list[tuple[str]] = []
        cuts: list[tuple[str, int]] = []
        evicted: list[tuple[str, int]] = []
        subscription_rows: list[Row] = []
        message_rows: list[Row] = []
        pending: list[_QueueSlice] = []
        saved_queues = self._saved_queues
        changed_sessions, changed_topics = core.take_changes()
        for client_id in changed_sessions:
            session = core.sessions.get(client_id)
            if session is None or session.expiry_interval == 0:
                gone_sessions.append((client_id,))
                saved_queues.pop(client_id, None)
                continue
            session_rows.append(writer.session_row(session))
            refreshed.append((client_id,))
            subscription_rows.extend(
                _subscription_row(client_id, topic_filter, options)
                for topic_filter, options in core.router.subscriptions_of(client_id).items()
            )
            message_rows.extend(writer.inflight_and_will_rows(session))
            first = session.taken_from_front
            end = first + len(session.queued_entries)
            saved = saved_queues.get(client_id)
            if session.has_replays:
                # a retained replay stands for several messages: all written again, and
                # again at the next flush, until it is done
                rewritten.append((client_id,))
                saved_queues.pop(client_id, None)
                pending.append(_QueueSlice(client_id, first, list(session.queued_items())))
            elif saved is None or saved.session is not session or saved.upto < first:
                rewritten.append((client_id,))
                last_evicted = _last(session.evicted_entries)
                saved_queues[client_id] = _SavedQueue(session, end, last_evicted)
                pending.append(_QueueSlice(client_id, first, list(session.queued_entries)))  # type: ignore[arg-type]
            else:
                cuts.append((client_id, first))
                for position in reversed(session.evicted_entries):
                    if position <= saved.evicted_upto:
                        break
                    if first <= position < saved.upto:
                        evicted.append((client_id, position))
                saved.evicted_upto = max(saved.evicted_upto, _last(session.evicted_entries))
                new = list(itertools.islice(session.queued_entries, saved.upto - first, None))
                pending.append(_QueueSlice(client_id, saved.upto, new))  # type: ignore[arg-type]
                saved.upto = end

        gone_topics: list[tuple[str]] = []
        retained: list[Message] = []
        for topic in changed_topics:
            message = core.retained.get(topic)
            if message is None:
                gone_topics.append((topic,))
            else:
                retained.append(message)

        return FlushBatch(
            session_ids=frozenset(changed_sessions),
            topics=frozenset(changed_topics),
            gone_sessions=gone_sessions,
            session_rows=session_rows,
            rewritten=rewritten,
            refreshed=refreshed,
            pending_cuts=cuts,
            pending_evicted=evicted,
            subscription_rows=subscription_rows,
            message_rows=message_rows,
            pending=pending,
            gone_topics=gone_topics,
            retained=retained,
            writer=writer,
        )

    def write(self, batch: FlushBatch) -> int:
        """Second half of ``flush``: write a batch in one transaction; returns rows changed.

        On failure it raises ``PersistenceWriteError`` having written nothing; call
        ``batch.requeue(core)`` so that the next flush saves those rows again.
        """
        steps = self.write_steps(batch)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return int(done.value)

    def write_steps(
        self, batch: FlushBatch, rows_per_step: int = ROWS_PER_STEP
    ) -> Generator[None, None, int]:
        """``write`` in steps of about ``rows_per_step`` rows, one transaction for all.

        The broker drives it from its event loop and lets other tasks run between steps:
        SQLite in a worker thread crawled under load (the GIL changes hands for every
        row), while 20,000 rows take about 30 ms here. Closing the generator before it
        ends rolls the transaction back. On failure ``PersistenceWriteError`` comes out
        of the step that failed, nothing is written, and the sessions of the batch are
        written in full next time.
        """
        if not batch.session_ids and not batch.topics:
            return 0
        try:
            with self._transaction():
                db = self._db
                deleted = _delete(db, "sessions", "client_id", batch.gone_sessions)
                gone_or_rewritten = batch.gone_sessions + batch.rewritten
                db.executemany("DELETE FROM subscriptions WHERE client_id = ?", gone_or_rewritten)
                db.executemany(
                    "DELETE FROM session_messages WHERE client_id = ?", gone_or_rewritten
                )
                db.executemany("DELETE FROM subscriptions WHERE client_id = ?", batch.refreshed)
                db.executemany(
                    # IN, not != 'pending': an index search, not a scan of a long queue
                    f"DELETE FROM session_messages WHERE client_id = ? "
                    f"AND kind IN ('{_INFLIGHT}', '{_WILL}')",
                    batch.refreshed,
                )
                db.executemany(
                    "DELETE FROM session_messages "
                    "WHERE client_id = ? AND kind = 'pending' AND position < ?",
                    batch.pending_cuts,
                )
                db.executemany(
                    "DELETE FROM session_messages "
                    "WHERE client_id = ? AND kind = 'pending' AND position = ?",
                    batch.pending_evicted,
                )
                db.executemany(_INSERT_SESSION, batch.session_rows)
                db.executemany(_INSERT_SUBSCRIPTION, batch.subscription_rows)
                db.executemany(_INSERT_SESSION_MESSAGE, batch.message_rows)
                deleted += _delete(db, "retained", "topic", batch.gone_topics)
                writer = batch.writer
                for retained in _chunks(batch.retained, rows_per_step):
                    db.executemany(
                        _INSERT_RETAINED,
                        [writer.message_columns(m, cache=False) for m in retained],
                    )
                    yield
                for part in batch.pending:
                    for first, items in _chunked_positions(part, rows_per_step):
                        db.executemany(
                            _INSERT_SESSION_MESSAGE,
                            writer.pending_rows(part.client_id, first, items),
                        )
                        yield
        except sqlite3.Error as exc:
            self._forget(batch.session_ids)
            raise PersistenceWriteError(
                f"{self.path}: saving {len(batch.session_ids)} session(s) and "
                f"{len(batch.topics)} retained topic(s) failed: {exc}; "
                "nothing was written"
            ) from exc
        except BaseException:
            self._forget(batch.session_ids)  # closed before the end: rolled back
            raise
        return deleted + len(batch.session_rows) + len(batch.retained)

    def _forget(self, client_ids: Iterable[str]) -> None:
        """The file does not hold what ``_saved_queues`` says: write these in full next."""
        for client_id in client_ids:
            self._saved_queues.pop(client_id, None)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---------------------------------------------------------------------- loading

    def load_into(self, core: BrokerCore) -> None:
        """Restore retained messages and persistent sessions into a freshly started core.

        The store only reads its rows into values (``SavedSession``, ``Message``); the
        core decides what to make of them (``BrokerCore.restore``: what expired while the
        broker was down is not restored, and the delayed will of an expired session is
        published). What expired is deleted from the file. A session id already present in
        the core (a client that connected first) keeps its live session.
        """
        offset = self._wall_clock() - core.now()  # wall clock = core clock + offset
        try:
            with self._transaction():
                reader = _RowReader(self.path, offset)
                retained = self._read_retained(reader)
                sessions, numbered = self._read_sessions(reader)
                restored = core.restore(sessions, retained)
                self._note_restored_queues(core, sessions, numbered, restored)
                db = self._db
                db.executemany(
                    "DELETE FROM retained WHERE topic = ?",
                    [(topic,) for topic in restored.expired_topics],
                )
                expired_ids = [(client_id,) for client_id in restored.expired_sessions]
                for table in ("sessions", "subscriptions", "session_messages"):
                    db.executemany(f"DELETE FROM {table} WHERE client_id = ?", expired_ids)
        except sqlite3.Error as exc:
            raise PersistenceError(self.path, _problem(exc, "cannot be read")) from exc
        except (TypeError, ValueError) as exc:  # a value of the wrong type or range in a row
            raise PersistenceError(self.path, f"has an invalid row ({exc})") from exc
        log.info(
            "persistence: %s: restored %d session(s) and %d retained message(s); "
            "dropped %d expired session(s) and %d expired retained message(s)",
            self.path,
            len(restored.sessions),
            len(core.retained),
            len(restored.expired_sessions),
            len(restored.expired_topics),
        )

    def _note_restored_queues(
        self,
        core: BrokerCore,
        sessions: list[SavedSession],
        numbered: set[str],
        restored: Restored,
    ) -> None:
        """The file holds each restored queue as numbered: save only what changes.

        Without this the first save after a restart rewrote every queued message (a
        100,000-message backlog took most of a second, stalling the clients).
        """
        kept = numbered.intersection(restored.sessions)
        for saved in sessions:
            session = core.sessions.get(saved.client_id)
            if saved.client_id not in kept or session is None or session.has_replays:
                continue
            upto = saved.first_position + len(saved.pending)
            if session.taken_from_front + len(session.queued_entries) == upto:
                self._saved_queues[saved.client_id] = _SavedQueue(session, upto, -1)

    def _read_retained(self, reader: _RowReader) -> list[Message]:
        query = f"SELECT {', '.join(_MESSAGE_COLUMNS)} FROM retained"
        return [reader.message(row) for row in self._db.execute(query)]

    def _read_sessions(self, reader: _RowReader) -> tuple[list[SavedSession], set[str]]:
        """The saved sessions, and the ids of those whose queue has no gaps in its positions
        (evicted messages leave gaps: such a queue is written in full at the next save)."""
        db = self._db
        offset = reader.offset
        fields: dict[str, dict[str, Any]] = {}
        for row in db.execute(
            "SELECT client_id, protocol_version, expiry_interval, expires_at, next_packet_id, "
            "dropped, inflight_in, will_due FROM sessions"
        ):
            client_id, version, interval, expires_wall, next_id, dropped, inflight_in, due = row
            fields[client_id] = {
                "client_id": client_id,
                "protocol_version": self._decode(ProtocolVersion, version, "protocol version"),
                "expiry_interval": int(interval),
                "expires_at": None if expires_wall is None else float(expires_wall) - offset,
                "next_packet_id": int(next_id),
                "dropped": int(dropped),
                "inflight_in": tuple(self._json_ints(inflight_in, "inflight_in")),
                "will_due": None if due is None else float(due) - offset,
                "subscriptions": [],
                "pending": [],
                "inflight": [],
            }

        for row in db.execute(
            "SELECT client_id, topic_filter, qos, no_local, retain_as_published, "
            "retain_handling, subscription_identifier FROM subscriptions"
        ):
            client_id, topic_filter, qos, no_local, as_published, handling, sub_id = row
            if client_id not in fields:
                continue
            try:
                validate_topic_filter(topic_filter)
                options = SubscriptionOptions(
                    qos=qos,
                    no_local=bool(no_local),
                    retain_as_published=bool(as_published),
                    retain_handling=handling,
                    subscription_identifier=sub_id,
                )
            except (ValueError, RemoteProtocolError) as exc:
                raise PersistenceError(
                    self.path, f"has an invalid subscription {topic_filter!r} ({exc})"
                ) from exc
            fields[client_id]["subscriptions"].append((topic_filter, options))

        columns = ", ".join(_SESSION_MESSAGE_HEAD + _MESSAGE_COLUMNS)
        for row in db.execute(
            f"SELECT {columns} FROM session_messages ORDER BY client_id, kind, position"
        ):
            client_id, kind, position, packet_id, state, qos, retain, sub_ids, shared = row[:9]
            values = fields.get(client_id)
            if values is None:
                continue
            message = reader.message(row[9:])
            if kind == _WILL:
                values["delayed_will"] = message
                continue
            item = QueuedMessage(
                message=message,
                qos=int(qos),
                retain=bool(retain),
                subscription_identifiers=tuple(self._json_ints(sub_ids, "subscription ids")),
                shared_filters=tuple(self._json_strings(shared, "shared subscription")),
            )
            if kind == _PENDING:
                if not values["pending"]:
                    values["first_position"] = int(position)
                values["pending"].append(item)
                values["last_position"] = int(position)
            elif kind == _INFLIGHT:
                outbound = self._decode(OutboundState, state, "in-flight state")
                values["inflight"].append((int(packet_id), item, outbound))
            else:
                raise PersistenceError(self.path, f"has an unknown session message kind {kind!r}")

        saved: list[SavedSession] = []
        numbered: set[str] = set()
        for values in fields.values():
            for name in ("subscriptions", "pending", "inflight"):
                values[name] = tuple(values[name])
            last = values.pop("last_position", None)
            if last is None or last - values["first_position"] + 1 == len(values["pending"]):
                numbered.add(values["client_id"])  # no gaps: the positions can go on
            saved.append(SavedSession(**values))
        return saved, numbered

    def _json_ints(self, text: str | None, what: str) -> list[int]:
        return self._json_list(text, what, int, "integers")

    def _json_strings(self, text: str | None, what: str) -> list[str]:
        return self._json_list(text, what, str, "strings")

    def _json_list(self, text: str | None, what: str, kind: type[_T], kinds: str) -> list[_T]:
        """A JSON list column (None: empty) whose items are all ``kind``."""
        if text is None:
            return []
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise PersistenceError(self.path, f"has an unreadable {what} list ({exc})") from exc
        if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
            raise PersistenceError(self.path, f"has an invalid {what} list (not {kinds}): {text!r}")
        return values

    def _decode(self, kind: Callable[[Any], _T], value: object, what: str) -> _T:
        try:
            return kind(value)
        except ValueError as exc:
            raise PersistenceError(self.path, f"has an invalid {what} {value!r}") from exc


# --------------------------------------------------------------------------- helpers


def _prepare(db: sqlite3.Connection, path: str) -> None:
    """Check that ``db`` is empty or a store of our schema version; set WAL; create tables."""
    try:
        tables = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    except sqlite3.DatabaseError as exc:
        raise PersistenceError(path, f"is not a readable SQLite database ({exc})") from exc
    try:
        if tables:
            _check_schema(db, path, tables)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        if not tables:
            db.executescript(
                f"BEGIN IMMEDIATE;\n{_SCHEMA}\n"
                f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION});\nCOMMIT;"
            )
    except sqlite3.Error as exc:
        raise PersistenceError(path, _problem(exc, "cannot be set up")) from exc


def _problem(exc: sqlite3.Error, otherwise: str) -> str:
    """Say "damaged" for corruption (a plain ``DatabaseError``), else what failed."""
    if type(exc) is sqlite3.DatabaseError:
        return f"is damaged ({exc})"
    return f"{otherwise} ({exc})"


def _check_schema(db: sqlite3.Connection, path: str, tables: set[str]) -> None:
    if "schema_version" not in tables:
        found = ", ".join(sorted(tables))
        raise PersistenceError(
            path, f"is an SQLite database of another program (tables: {found}), not trio-mqtt's"
        )
    versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
    if versions == [1]:
        _migrate_from_1(db)
        versions = [SCHEMA_VERSION]
    if versions != [SCHEMA_VERSION]:
        raise PersistenceError(
            path,
            f"has schema version {versions[0] if len(versions) == 1 else versions!r}; "
            f"this trio-mqtt reads version {SCHEMA_VERSION}",
        )
    missing = _TABLES - tables
    if missing:
        raise PersistenceError(path, f"lacks the table(s) {', '.join(sorted(missing))}")


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Version 1 -> 2: queued messages remember their shared subscriptions."""
    db.executescript(
        "BEGIN IMMEDIATE;\n"
        "ALTER TABLE session_messages ADD COLUMN shared_filters TEXT;\n"
        f"UPDATE schema_version SET version = {SCHEMA_VERSION};\n"
        "COMMIT;"
    )


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _chunked_positions(part: _QueueSlice, size: int) -> Iterator[tuple[int, list[QueuedMessage]]]:
    """The messages of ``part`` in chunks, each with the queue position of its first."""
    for start in range(0, len(part.items), size):
        yield part.position + start, part.items[start : start + size]


def _last(positions: Sequence[int]) -> int:
    return positions[-1] if positions else -1


def _delete(db: sqlite3.Connection, table: str, key: str, keys: list[tuple[str]]) -> int:
    """Delete the rows whose ``key`` is in ``keys``; returns how many existed."""
    if not keys:
        return 0
    return max(db.executemany(f"DELETE FROM {table} WHERE {key} = ?", keys).rowcount, 0)


def _endpoint_columns(endpoint: Endpoint | None) -> tuple[str | None, int | None]:
    return (None, None) if endpoint is None else (endpoint.host, endpoint.port)


@attrs.define
class _RowWriter:
    """Turns core state into rows for one flush.

    A message fanned out to many sessions is one object queued many times, and many
    messages carry equal properties: both encodings are cached for the flush (keyed by
    object id for messages, which the core keeps alive meanwhile; by value for properties).
    """

    offset: float  # wall clock = core clock + offset
    _messages: dict[int, Row] = attrs.Factory(dict)
    _properties: dict[Properties, bytes | None] = attrs.Factory(dict)

    def message_columns(self, message: Message, *, cache: bool = True) -> Row:
        """The ``_MESSAGE_COLUMNS`` values of ``message`` (times on the wall clock).

        ``cache=False`` for messages seen once per flush (retained ones).
        """
        row = self._messages.get(id(message)) if cache else None
        if row is None:
            peer = message.peer
            row = (
                message.topic,
                message.payload,
                message.qos,
                int(message.retain),
                self._encode_properties(message),
                message.publisher,
                message.created + self.offset,
                peer.listener,
                peer.transport,
                *_endpoint_columns(peer.client),
                *_endpoint_columns(peer.proxy),
            )
            if cache:
                self._messages[id(message)] = row
        return row

    def _encode_properties(self, message: Message) -> bytes | None:
        properties = message.properties
        if properties is NO_PROPERTIES:
            return None
        try:
            return self._properties[properties]
        except (KeyError, TypeError):  # TypeError: an unhashable value slipped in
            pass
        encoded: bytes | None = None
        if properties:
            try:
                encoded = encode_properties(properties, PropertyContext.PUBLISH, "stored message")
            except LocalProtocolError as exc:
                log.warning(
                    "properties of a message on %r cannot be stored (%s); saving it without them",
                    message.topic,
                    exc,
                )
        with contextlib.suppress(TypeError):
            self._properties[properties] = encoded
        return encoded

    def session_row(self, session: Session) -> Row:
        offset = self.offset
        return (
            session.client_id,
            int(session.protocol_version),
            session.expiry_interval,
            None if session.expires_at is None else session.expires_at + offset,
            session.next_packet_id,
            session.dropped,
            json.dumps(sorted(session.inflight_in)),
            None if session.will_due is None else session.will_due + offset,
        )

    def pending_rows(self, client_id: str, first: int, items: list[QueuedMessage]) -> list[Row]:
        """Rows of queued messages at positions ``first``, ``first + 1``, ...

        An EVICTED entry (a QoS 0 message dropped to make room) has no row.
        """
        return [
            (client_id, _PENDING, position, None, None, *self._item_columns(item))
            for position, item in enumerate(items, first)
            if item is not EVICTED
        ]

    def inflight_and_will_rows(self, session: Session) -> Iterator[Row]:
        client_id = session.client_id
        for position, inflight in enumerate(session.inflight_out.values()):
            yield (
                client_id,
                _INFLIGHT,
                position,
                inflight.packet_id,
                inflight.state.value,
                *self._item_columns(inflight.item),
            )
        if session.delayed_will is not None:
            will = self.message_columns(session.delayed_will)
            yield (client_id, _WILL, 0, None, None, None, None, None, None, *will)

    def _item_columns(self, item: QueuedMessage) -> Row:
        ids = item.subscription_identifiers
        shared = item.shared_filters
        return (
            int(item.qos),
            int(item.retain),
            json.dumps(list(ids)) if ids else None,
            json.dumps(list(shared)) if shared else None,
            *self.message_columns(item.message),
        )


def _subscription_row(client_id: str, topic_filter: str, options: SubscriptionOptions) -> Row:
    return (
        client_id,
        topic_filter,
        options.qos,
        int(options.no_local),
        int(options.retain_as_published),
        options.retain_handling,
        options.subscription_identifier,
    )
