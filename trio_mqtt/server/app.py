"""The running broker: ``open_broker`` / ``serve`` and the embedding API ``Broker``.

``open_broker`` opens one nursery for the broker's services (the listeners' accept
loops, housekeeping, persistence, $SYS) and one, shielded, for the connections: the
listeners' handler nursery. Leaving it, or cancelling it, shuts down gracefully: the
listeners stop accepting, every client is asked to close (MQTT 5 clients get DISCONNECT
0x8B), and the connection nursery gets ``shutdown_timeout`` seconds as its deadline, after
which trio cancels whatever is still open.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
from prometheus_client.registry import CollectorRegistry

from trio_mqtt.auth import AuthFiles, install_auth
from trio_mqtt.broker.core import (
    BrokerCore,
    ClientSummary,
    ConnectHook,
    PublishHook,
    ReadHook,
    SubscribeHook,
)
from trio_mqtt.broker.enhanced_auth import Authenticator
from trio_mqtt.broker.message import Message, publish_size
from trio_mqtt.broker.stats import DROP_LOCAL_BUFFER_FULL, BrokerStats
from trio_mqtt.broker.sys_topics import SysTopics
from trio_mqtt.cluster.counters import ClusterCounters, ClusterFigures
from trio_mqtt.cluster.node import CatchUp, ClusterNode, DetachedLink, open_cluster_node
from trio_mqtt.config import BrokerConfig, ClusterConfig, HttpConfig
from trio_mqtt.config_reload import ReloadReport, changed_keys, plan_reload
from trio_mqtt.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from trio_mqtt.mqtt.packets import NO_PROPERTIES, Properties
from trio_mqtt.mqtt.properties import PropertyContext, encode_properties
from trio_mqtt.mqtt.topics import validate_topic_name
from trio_mqtt.nats import NATSError
from trio_mqtt.peer import Endpoint
from trio_mqtt.persistence.sqlite import PersistenceWriteError, SQLiteStore
from trio_mqtt.server.backpressure import relief_for
from trio_mqtt.server.exception_groups import UnwrapGroups
from trio_mqtt.server.idle_park import parked_in
from trio_mqtt.server.listener import ListenerHandle, serve_listener
from trio_mqtt.server.metrics import (
    CONTENT_TYPE,
    LoopLag,
    make_registry,
    measure_loop_lag,
    render,
)
from trio_mqtt.server.operations import Endpoints, HttpHandle, serve_http

log = logging.getLogger("trio_mqtt")

HOUSEKEEPING_INTERVAL = 1.0
# How often what changed is saved (persistence): a crash loses about this much plus twice
# a save's length (the one under way and the next; docs/persistence.md). Saves are one
# SQLite transaction each, without an fsync (WAL, synchronous=NORMAL), so frequent small
# ones are cheap.
SAVE_INTERVAL = 0.1
# How long a cluster node may take to leave (its last writes) once the clients are gone.
LEAVE_TIMEOUT = 3.0
# After losing NATS: the first wait before joining again, and the longest.
REJOIN_DELAY = 0.5
MAX_REJOIN_DELAY = 10.0
# A save longer than this is logged: it adds to what a crash can lose.
SLOW_SAVE = 0.5
# A save lets clients be served between its steps for this long; then it writes the rest in
# one go. Under load that stalls the event loop for a few ms and so pushes back on the
# publishers, keeping the crash window bounded (docs/persistence.md) instead of letting a
# save stretch out while new, unsaved messages keep being acknowledged.
SAVE_SHARING_BUDGET = 0.05


class MessageStream:
    """The async iterator of messages an in-process subscription receives.

    Messages wait in a buffer bounded like a network client's queue: at most
    ``max_bytes`` of them (the broker's ``max_queued_bytes``; each counted as the size of
    its PUBLISH), and at most ``max_messages`` if that is given. When the consumer falls
    that far behind, new messages are dropped and counted in ``dropped`` rather than
    stalling the publishers. ``buffered_bytes`` is what waits now.
    """

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[Message],
        *,
        max_bytes: int,
        max_messages: int | None = None,
    ) -> None:
        self._receive = receive
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.buffered_bytes = 0
        self.dropped = 0

    def admits(self, message: Message) -> bool:
        """Whether ``message`` fits the buffer; counts it in if so."""
        size = publish_size(message)
        if self.buffered_bytes + size > self.max_bytes or (
            self.max_messages is not None
            and self._receive.statistics().current_buffer_used >= self.max_messages
        ):
            return False
        self.buffered_bytes += size
        return True

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def receive(self) -> Message:
        message = await self._receive.receive()
        self.buffered_bytes -= publish_size(message)
        return message


@attrs.define(eq=False)
class Broker:
    """A running broker, as seen by the application that embeds it."""

    config: BrokerConfig
    core: BrokerCore
    listeners: dict[str, ListenerHandle] = attrs.Factory(dict)
    # the password and ACL files (None when the config names neither)
    auth_files: AuthFiles | None = None
    # this broker's membership of a cluster (None without [cluster], or while cut off)
    cluster: ClusterNode | None = None
    # what its cluster nodes did, added up (/metrics)
    cluster_counters: ClusterCounters = attrs.Factory(ClusterCounters)
    # the operators' HTTP endpoint (None without [http])
    http: HttpHandle | None = None
    # how late the event loop runs (measured every LAG_INTERVAL; /metrics)
    loop_lag: LoopLag = attrs.Factory(LoopLag)
    # "starting" until every listener is up, "serving", then "stopping" from the moment
    # the graceful shutdown begins (readiness())
    _phase: str = "starting"
    # why the last persistence save failed (None: it worked, or none was tried yet)
    _persistence_error: str | None = None
    _registry: CollectorRegistry | None = None
    # the nursery the connections run in (None until the broker has started)
    _connections: trio.Nursery | None = None

    @property
    def stats(self) -> BrokerStats:
        return self.core.stats

    def parked_connections(self) -> int:
        """How many connections are parked now: their client is quiet, and they have no
        task of their own until it sends again (``server/idle_park.py``)."""
        return 0 if self._connections is None else parked_in(self._connections)

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """This broker's own Prometheus registry (its counters, read when collected)."""
        if self._registry is None:
            self._registry = make_registry(
                self.core,
                self.listeners,
                self.loop_lag,
                self.cluster_figures if self.config.cluster is not None else None,
                self.parked_connections,
            )
        return self._registry

    def cluster_figures(self) -> ClusterFigures:
        """The cluster counters for ``/metrics``: the ended nodes' totals and the current
        node's own counts."""
        totals = self.cluster_counters
        node = self.cluster
        return ClusterFigures(
            connected=node is not None and not node.nats.is_closed,
            joins=totals.joins,
            losses=totals.losses,
            forwarded=totals.forwarded + (node.forwarded if node else 0),
            received=totals.received + (node.received if node else 0),
            not_forwarded=totals.not_forwarded + (node.dropped if node else 0),
            caught_up=totals.caught_up + (node.caught_up if node else 0),
            refilled=totals.refilled + (node.refilled if node else 0),
            kept=node.kept() if node else 0,
        )

    def metrics_text(self) -> str:
        """The metrics in the Prometheus text format: what ``GET /metrics`` answers."""
        return render(self.metrics_registry).decode()

    def readiness(self) -> tuple[bool, list[str]]:
        """Whether new clients should be sent here, and if not, why (``GET /readyz``).

        Ready: started, not shutting down, every listener accepting, the last
        persistence save (if any) written, and the cluster node (if any) on NATS.
        """
        if self._phase == "starting":
            return False, ["starting up"]
        if self._phase == "stopping":
            return False, ["shutting down"]
        problems: list[str] = []
        for listener_config in self.config.listeners:
            handle = self.listeners.get(listener_config.name)
            if handle is None or not handle.accepting:
                problems.append(f"listener {listener_config.name!r} is not accepting")
        if self._persistence_error is not None:
            problems.append(f"persistence: the last save failed: {self._persistence_error}")
        if self.config.cluster is not None and (
            self.cluster is None or self.cluster.nats.is_closed
        ):
            problems.append("cluster: not connected to NATS")
        return not problems, problems

    def addresses(self, listener: str | None = None) -> list[Endpoint]:
        """Bound addresses of one listener (by name), or of all of them."""
        if listener is not None:
            return list(self.listeners[listener].addresses)
        return [a for handle in self.listeners.values() for a in handle.addresses]

    @property
    def port(self) -> int:
        """The port of the first listener (handy with ``port = 0`` in tests)."""
        return self.addresses()[0].port

    def clients(self) -> list[ClientSummary]:
        """Every connected client, with its PeerInfo."""
        return self.core.client_summaries()

    def reload_tls(self) -> list[str]:
        """Re-read the certificate files of every ``tls``/``wss`` listener (SIGHUP does this).

        New connections get the new certificates; open ones keep theirs. Every listener
        is tried; one whose files fail to load keeps its previous certificates, and then
        ConfigError lists each failure. Returns the names of the listeners reloaded.
        """
        reloaded: list[str] = []
        failures: list[str] = []
        for name, handle in self.listeners.items():
            try:
                if handle.reload_tls():
                    reloaded.append(name)
            except ConfigError as exc:
                failures.append(str(exc))  # raised below: the caller logs it, once
        if failures:
            raise ConfigError("; ".join(failures))
        return reloaded

    def reload_auth(self) -> bool:
        """Re-read ``password_file`` and ``acl_file`` (SIGHUP does this too).

        Later CONNECT, PUBLISH and SUBSCRIBE packets are checked against the new files,
        and so is every message delivered from now on (a subscription whose read grant
        was removed delivers nothing more); connected clients stay connected. If either
        file fails to load, ConfigError names it and both files stay as they were.
        Returns False when the config names neither file (nothing to reload).
        """
        if self.auth_files is None:
            return False
        self.auth_files.reload()
        self.core.auth_changed()
        return True

    def reload_config(self, config: BrokerConfig) -> ReloadReport:
        """Use *config* from now on, for what can change while the broker runs (SIGHUP).

        The password and ACL files and the listeners' certificates are read again
        (changed or not). The limits apply to connections opened from now on (the queue
        limits to every session at once); a listener's own settings (its limits, PROXY
        protocol, TLS, WebSocket options) to its new connections. What needs a restart
        (listeners added, removed or moved, persistence, [cluster], [http], workers,
        sys_interval, log_format) keeps its running value and is listed in
        ``needs_restart``. What fails to load (a password file, a certificate) keeps its
        previous value and is listed in ``errors``; the rest is applied all the same.
        ``log_level`` is only recorded: the ``trio-mqtt`` command applies it.
        """
        running = self.config
        effective, needs_restart = plan_reload(running, config)
        errors: list[str] = []
        try:
            if self.auth_files is None:
                self.auth_files = install_auth(self.core, effective)
            else:
                self.auth_files.reconfigure(effective)
                self.auth_files.hook_into(self.core)
            self.core.auth_changed()
        except ConfigError as exc:
            errors.append(f"password/ACL files not reloaded, the previous stay in use: {exc}")
            effective = attrs.evolve(
                effective,
                password_file=running.password_file,
                acl_file=running.acl_file,
                acl_topics_before_user=running.acl_topics_before_user,
            )
        listeners = list(effective.listeners)
        for index, listener_config in enumerate(listeners):
            handle = self.listeners.get(listener_config.name)
            if handle is None:
                continue
            try:
                handle.apply_config(listener_config)
            except ConfigError as exc:
                errors.append(str(exc))
                listeners[index] = handle.config
        effective = attrs.evolve(effective, listeners=tuple(listeners))
        self.core.apply_config(effective)
        self.config = effective
        return ReloadReport(
            config=effective,
            changed=changed_keys(running, effective),
            needs_restart=needs_restart,
            errors=tuple(errors),
        )

    def add_connect_hook(self, hook: ConnectHook) -> None:
        """Check every CONNECT (after the hooks added before)."""
        self.core.add_connect_hook(hook)

    def add_publish_hook(self, hook: PublishHook) -> None:
        """Check every PUBLISH a client sends."""
        self.core.add_publish_hook(hook)

    def add_subscribe_hook(self, hook: SubscribeHook) -> None:
        """Check every topic filter a client subscribes to."""
        self.core.add_subscribe_hook(hook)

    def add_read_hook(self, hook: ReadHook) -> None:
        """Check every delivery: a message on a topic the hook refuses is not sent."""
        self.core.add_read_hook(hook)

    def add_authenticator(self, authenticator: Authenticator) -> None:
        """Serve one MQTT 5 enhanced Authentication Method (see ``enhanced_auth``).

        Raises ValueError for an empty method name or one served already.
        """
        self.core.add_authenticator(authenticator)

    def retained(self, topic: str) -> Message | None:
        """The retained message on ``topic`` (with who published it), if any."""
        return self.core.retained.get(topic)

    async def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        *,
        qos: int = 0,
        retain: bool = False,
        properties: Properties = NO_PROPERTIES,
    ) -> int:
        """Publish from inside the process; returns how many subscribers it was routed to.

        Returns once the message is queued for every subscriber; if that made a
        subscriber's writer fall behind, it first waits for it to catch up (the
        backpressure a network publisher gets by not being read from).
        """
        try:
            validate_topic_name(topic)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc), exc.reason_code) from None
        if qos not in (0, 1, 2):
            raise LocalProtocolError(f"qos must be 0, 1 or 2, not {qos!r}")
        encode_properties(properties, PropertyContext.PUBLISH, "PUBLISH")  # raises if unsendable
        if isinstance(payload, str):
            payload = payload.encode()
        message = Message(
            topic=topic,
            payload=payload,
            qos=qos,
            retain=retain,
            properties=properties,
            created=self.core.now(),
        )
        await trio.lowlevel.checkpoint()
        routed = self.core.publish(message)
        congested = self.core.take_congestion_hits()
        if congested:
            # like a network publisher: go on once the subscribers have caught up
            await relief_for(self.core).wait_while(lambda: any(c.congested for c in congested))
        return routed

    @asynccontextmanager
    async def subscribe(
        self, topic_filter: str, *, max_buffer: int | None = None
    ) -> AsyncIterator[MessageStream]:
        """Subscribe in-process: ``async with broker.subscribe("a/+") as messages:``.

        What waits for the consumer is bounded by ``max_queued_bytes`` like a network
        client's queue, and by ``max_buffer`` messages if given (see ``MessageStream``).
        In a cluster, the block is entered once NATS has the subscription, as a SUBACK
        is sent: a message published on another node from then on arrives.
        """
        send, receive = trio.open_memory_channel[Message](math.inf)
        stream = MessageStream(
            receive, max_bytes=self.config.max_queued_bytes, max_messages=max_buffer
        )

        def on_message(message: Message) -> None:
            if stream.admits(message):
                send.send_nowait(message)
            else:
                stream.dropped += 1
                self.core.stats.dropped(DROP_LOCAL_BUFFER_FULL)

        try:
            local_id = self.core.local_subscribe(topic_filter, on_message)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc), exc.reason_code) from None
        try:
            link = self.core.cluster
            if link is not None:
                # as a SUBACK does: from here on, messages published on other nodes
                # reach this subscription (one NATS round trip if the filter is new here)
                confirm = link.subscribed("(in-process)", [topic_filter])
                if confirm is not None:
                    await confirm()
            async with send, receive:
                yield stream
        finally:
            self.core.local_unsubscribe(local_id)

    async def _drain(self) -> None:
        """Not ready from here on (``/readyz`` answers 503); then wait ``[http] drain``
        seconds, still serving, so that load balancers stop sending new clients before
        the listeners close. Shielded: it runs when the broker is being cancelled."""
        self._phase = "stopping"
        drain = 0.0 if self.config.http is None else self.config.http.drain
        if drain > 0:
            log.info("shutdown: not ready; draining for %g s before closing the listeners", drain)
            with trio.CancelScope(shield=True):
                await trio.sleep(drain)

    def _begin_shutdown(self, connections: trio.Nursery) -> None:
        """Stop accepting, ask every client to leave, give them shutdown_timeout to go."""
        self._phase = "stopping"
        for handle in self.listeners.values():
            handle.stop_accepting()
        self.core.shutdown()
        connections.cancel_scope.deadline = trio.current_time() + self.config.shutdown_timeout


@asynccontextmanager
async def open_broker(config: BrokerConfig | None = None) -> AsyncIterator[Broker]:
    """Run a broker for the duration of the ``async with`` block.

    What the block raises comes out as itself (a ``ValueError``, Ctrl-C's
    ``KeyboardInterrupt``), not wrapped in an exception group, and so does a startup
    failure (a listener that cannot bind). Only when the broker's own tasks fail too
    does a group come out, with the block's exception in it (``UnwrapGroups``).
    """
    unwrap = UnwrapGroups()
    started = False
    try:
        with unwrap:
            async with _run_broker(config) as broker:
                started = True
                try:
                    yield broker
                except BaseException as exc:
                    unwrap.body = exc
                    raise
    finally:
        if started:  # not for a broker that never started (its error says why)
            log.info("broker stopped")


@asynccontextmanager
async def _run_broker(config: BrokerConfig | None) -> AsyncIterator[Broker]:
    if config is None:
        config = BrokerConfig()
    # The run's clock itself: the same time as trio.current_time(), without two wrapper
    # calls (the core reads it for every PUBLISH)
    core = BrokerCore(config=config, clock=trio.lowlevel.current_clock().current_time)
    auth_files = install_auth(core, config)  # password_file / acl_file, if named
    broker = Broker(config=config, core=core, auth_files=auth_files)
    store: SQLiteStore | None = None
    if config.persistence:
        store = SQLiteStore.open(config.persistence)
        core.record_changes()
        store.load_into(core)  # logs what it restored
    closing = trio.Event()
    leaving = trio.Event()
    try:
        async with trio.open_nursery() as cluster_nursery:
            if config.http is not None:
                # up first (/readyz says 503 while starting), down last: it answers 503
                # while the clients are closed, until ``leaving``
                broker.http = await cluster_nursery.start(
                    _serve_operations, broker, config.http, leaving
                )
            if config.cluster is not None:
                # joined before the listeners open, left after the last client went (so
                # that its will and session still reach the other nodes)
                try:
                    await cluster_nursery.start(_be_cluster_node, broker, config.cluster, leaving)
                except BaseException:
                    leaving.set()  # the HTTP endpoint stops too
                    raise
            try:
                async with trio.open_nursery() as nursery:
                    connections: trio.Nursery = await nursery.start(
                        _hold_connections, closing, config.shutdown_timeout
                    )
                    broker._connections = connections
                    try:
                        for listener_config in config.listeners:
                            handle = await nursery.start(
                                serve_listener, core, listener_config, connections
                            )
                            broker.listeners[listener_config.name] = handle
                        nursery.start_soon(_housekeeping, core)
                        nursery.start_soon(measure_loop_lag, broker.loop_lag)
                        if store is not None:
                            nursery.start_soon(_persist, broker, store)
                        if config.sys_interval > 0:
                            nursery.start_soon(_sys_topics, core, config.sys_interval)
                        broker._phase = "serving"
                        try:
                            yield broker
                        finally:
                            await broker._drain()
                    finally:
                        # the nursery waits for _hold_connections, which waits for the
                        # connections (shielded) until the deadline set here
                        broker._begin_shutdown(connections)
                        closing.set()
                        nursery.cancel_scope.cancel()
            finally:
                leaving.set()
    finally:
        if store is not None:
            try:
                store.flush(core)  # the last save, after every client has gone
            except PersistenceWriteError as exc:
                log.error("persistence: final save failed: %s", exc)
            finally:
                store.close()


async def serve(
    config: BrokerConfig,
    *,
    task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a broker until cancelled (``nursery.start(serve, config)`` gives the Broker)."""
    async with open_broker(config) as broker:
        task_status.started(broker)
        await trio.sleep_forever()


async def _hold_connections(
    closing: trio.Event,
    shutdown_timeout: float,
    *,
    task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own the nursery every connection task runs in: the listeners' handler nursery.

    It is shielded: cancelling the broker does not cut clients off before they are asked
    to close. It lives in a task of its own so that the shield covers only the
    connections, never the code inside ``async with open_broker()``. Once ``closing`` is
    set it waits for the connections to end, until the deadline the shutdown gave it.
    """
    async with trio.open_nursery() as connections:
        connections.cancel_scope.shield = True
        task_status.started(connections)
        await closing.wait()
    if connections.cancel_scope.cancelled_caught:
        log.warning("shutdown: connections still open after %.1fs were cancelled", shutdown_timeout)


async def _serve_operations(
    broker: Broker,
    config: HttpConfig,
    leaving: trio.Event,
    *,
    task_status: trio.TaskStatus[HttpHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The ``[http]`` endpoint, from start-up until ``leaving`` (after the last client).

    Cancelling the broker does not stop it (``serve_http`` is shielded): during the
    graceful shutdown it goes on answering, ``/readyz`` with 503.
    """
    endpoints = Endpoints(
        metrics=lambda: (CONTENT_TYPE, render(broker.metrics_registry)),
        readiness=broker.readiness,
    )
    async with trio.open_nursery() as nursery:
        handle: HttpHandle = await nursery.start(serve_http, config, endpoints)
        task_status.started(handle)
        with trio.CancelScope(shield=True):
            await leaving.wait()
        handle.stop()


async def _be_cluster_node(
    broker: Broker,
    config: ClusterConfig,
    leaving: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Be a node of the cluster from before the listeners open until the broker leaves.

    Shielded, like the connections: cancelling the broker must not cut the node off NATS
    while its clients are still being closed (their wills and sessions go to the other
    nodes). It leaves once ``leaving`` is set, within LEAVE_TIMEOUT.

    Losing NATS later does not stop the broker: it serves its own clients alone
    (``DetachedLink``: QoS 1/2 publishers are disconnected with 0x89, to send again
    later) and joins again, with a growing delay, until it is back.
    """
    core = broker.core
    started = False
    delay = REJOIN_DELAY
    # what the next node catches up on: set when a node lost NATS, kept until one joins
    catch_up: CatchUp | None = None
    with trio.CancelScope(shield=True) as scope:
        while not leaving.is_set():
            node: ClusterNode | None = None
            try:
                async with open_cluster_node(
                    core, config, catch_up, broker.cluster_counters
                ) as node:
                    catch_up = None
                    broker.cluster = node
                    broker.cluster_counters.joins += 1
                    if not started:
                        task_status.started()
                        started = True
                    else:
                        log.warning("cluster: joined again")
                    delay = REJOIN_DELAY
                    await leaving.wait()
                    scope.deadline = trio.current_time() + LEAVE_TIMEOUT
                broker.cluster = None  # (left: its counts are in cluster_counters now)
            except* (NATSError, trio.TooSlowError, OSError) as group:
                if not started:
                    raise  # cannot join at startup: the broker does not start
                if node is not None:
                    catch_up = node.catch_up_point()
                    broker.cluster_counters.losses += 1
                broker.cluster = None
                if not isinstance(core.cluster, DetachedLink):
                    core.leave_cluster(stand_in=DetachedLink(core, broker.cluster_counters))
                log.error(
                    "cluster: lost NATS (%s): serving this node's clients alone, joining "
                    "again in %.0f s",
                    "; ".join(str(exc) for exc in group.exceptions),
                    delay,
                )
                with trio.move_on_after(delay):
                    await leaving.wait()
                delay = min(delay * 2, MAX_REJOIN_DELAY)
        core.leave_cluster()


async def _housekeeping(core: BrokerCore) -> None:
    while True:
        await trio.sleep(HOUSEKEEPING_INTERVAL)
        core.tick()


async def _persist(broker: Broker, store: SQLiteStore) -> None:
    """Save what changed every SAVE_INTERVAL (the next save starts that long after one ends).

    A failed save makes the broker not ready (``readiness``) until one works again.
    """
    while True:
        await trio.sleep(SAVE_INTERVAL)
        broker._persistence_error = await _save(broker.core, store)


async def _sys_topics(core: BrokerCore, interval: float) -> None:
    """Publish the ``$SYS/broker/...`` statistics now and every ``interval`` seconds."""
    sys_topics = SysTopics(started=core.now() - core.uptime())
    while True:
        sys_topics.publish(core)
        await trio.sleep(interval)


async def _save(core: BrokerCore, store: SQLiteStore) -> str | None:
    """Write what changed, on the event loop, letting other tasks run between steps.

    Returns why the save failed (it is tried again with the next one), or None.

    Not in a worker thread: under load the GIL changes hands for every row there, and a
    save of 20,000 rows took 6 s instead of 30 ms, so a crash lost far more than the
    documented second. Here each step writes about ROWS_PER_STEP rows (a few ms); after
    SAVE_SHARING_BUDGET the remaining steps run without yielding.
    """
    batch = store.collect(core)
    if not batch.session_ids and not batch.topics:
        return None
    started = trio.current_time()
    steps = store.write_steps(batch)
    try:
        for _step in steps:
            if trio.current_time() - started < SAVE_SHARING_BUDGET:
                await trio.lowlevel.checkpoint()
    except PersistenceWriteError as exc:
        log.error("persistence: save failed, will retry: %s", exc)
        batch.requeue(core)
        return str(exc)
    finally:
        steps.close()  # rolls back if we were cancelled between steps
    took = trio.current_time() - started
    if took > SLOW_SAVE:
        log.warning("persistence: a save took %.2f s (the crash-loss bound grows with it)", took)
    return None
