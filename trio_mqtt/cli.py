"""The ``trio-mqtt`` command: parse arguments, load the config, run the broker.

The broker runs until SIGINT or SIGTERM, then shuts down gracefully (bounded by
``broker.shutdown_timeout``) and the command exits 0. SIGHUP reloads the config file
for what can change while the broker runs (``Broker.reload_config``: the limits, the
password and ACL files, the listeners' certificates and settings, ``log_level``), logs
at WARNING each change that needs a restart, re-reads the certificate, password and ACL
files, and keeps the broker running; a config file that fails to load changes nothing.

``--workers N`` (or ``[broker] workers``) with N > 1 runs N broker processes on the same
port instead, as nodes of one cluster, under a supervisor (trio_mqtt/supervisor.py).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any, Protocol, TextIO

import attrs
import trio

from trio_mqtt._version import __version__
from trio_mqtt.config import (
    LOG_LEVELS,
    MAX_WORKERS,
    BrokerConfig,
    ListenerConfig,
    load_config,
    url_advice,
)
from trio_mqtt.errors import ConfigError
from trio_mqtt.logformat import LOG_FORMATS, TEXT_FORMAT, make_formatter

__all__ = ["build_config", "build_parser", "configure_logging", "main", "run_broker"]

logger = logging.getLogger("trio_mqtt.cli")

PROG = "trio-mqtt"
LOG_FORMAT = TEXT_FORMAT

#: Exit codes: 2 for a bad command line or config (as argparse does), 1 when the broker
#: cannot start (e.g. the port is in use).
EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``trio-mqtt``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="An MQTT 3.1.1 and 5.0 broker on Trio. With no arguments it listens on "
        "127.0.0.1:1883 (plain TCP, anonymous access, in-memory state).",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (see the 'Configuration' page of the docs)",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="listen on HOST:PORT ([IPV6]:PORT for IPv6) with plain TCP; repeatable; "
        "replaces the listeners of the config file",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="log level; replaces [broker] log_level (default: info)",
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        help="text (the default) or json: one JSON object per line, with time, level, "
        "logger, message and, where known, event, listener, client_id, client_address, "
        "proxy_address and reason; replaces [broker] log_format",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        type=_workers,
        help=f"run N broker processes (1..{MAX_WORKERS}) on the same port(s), as nodes of "
        "one cluster, e.g. one per core; replaces [broker] workers (default: 1)",
    )
    parser.add_argument(
        "--log-name",
        metavar="NAME",
        help="put NAME in every log line (what --workers gives each worker: its node name)",
    )
    # The --workers supervisor's pid, given to its workers: they exit when it is gone.
    parser.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--from-mosquitto",
        metavar="MOSQUITTO_CONF",
        help="print the trio-mqtt TOML config equivalent to a mosquitto.conf (and the files "
        "of its include_dir) and exit; the lines that do not map are listed as comments at "
        "the top and on stderr",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def _workers(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{count} is out of range (allowed: 1..{MAX_WORKERS})")
    return count


def build_config(args: argparse.Namespace) -> BrokerConfig:
    """The BrokerConfig that *args* ask for; raises ConfigError naming the bad input."""
    overrides: dict[str, Any] = {} if args.workers is None else {"workers": args.workers}
    if args.log_format is not None:
        overrides["log_format"] = args.log_format
    if args.config:
        config = load_config(args.config, overrides=overrides)
    else:
        config = BrokerConfig(**overrides)
    if args.listen:
        listeners = []
        for bind in args.listen:  # named listener0, listener1, ... (as in a config file)
            if "://" in bind:  # tcp://0.0.0.0:1883, mqtt://...: not the IPv6-brackets hint
                raise ConfigError(f"--listen takes HOST:PORT, not a URL: {url_advice(bind)}")
            try:
                listeners.append(ListenerConfig.from_bind(bind))
            except ConfigError as exc:
                raise ConfigError(str(exc), key="--listen") from None
        config = attrs.evolve(config, listeners=tuple(listeners))
    return config


def configure_logging(
    level: str,
    stream: TextIO | None = None,
    *,
    name: str | None = None,
    log_format: str = "text",
) -> logging.Handler:
    """Send log records at *level* and above to *stream* (stderr); returns the handler.

    A *name* (a worker's node name) goes into every line, in brackets after the level
    (as ``node`` in JSON). *log_format* is "text" or "json" (trio_mqtt/logformat.py).
    For the ``trio-mqtt`` command, which owns its process's logging: it also turns off,
    for the whole process, the caller, thread and process lookups of every record.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(log_format, node=name))
    # Neither format shows where a log call was made, nor its thread or process: the
    # command owns the process's logging, so it lets records skip finding them out
    # (the logging HOWTO's "Optimization"; 11.2 -> 8.9 us per connect line)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


#: SIGHUP where the platform has it (not on Windows).
_SIGHUP: int | None = getattr(signal, "SIGHUP", None)


#: How SIGHUP gets the new config: the config file read again (and the command line
#: applied to it), or None for "the running one" (no --config: only the files it names
#: are read again).
ConfigLoader = Callable[[], BrokerConfig]


@attrs.define
class _Running:
    """What ``serve`` reported once started (the Broker), for the signal handler."""

    broker: Any = None
    load_config: ConfigLoader | None = None
    # --log-level was given: it wins over [broker] log_level, also after a reload
    log_level_fixed: bool = False


async def _handle_signals(
    signals: AsyncIterator[int], cancel_scope: trio.CancelScope, running: _Running
) -> None:
    async for signum in signals:
        if _SIGHUP is not None and signum == _SIGHUP:
            _reload(running)
            continue
        logger.info("shutting down (%s)", signal.Signals(signum).name)
        cancel_scope.cancel()
        return


def _reload(running: _Running) -> None:
    """SIGHUP: reload the config file and what it names; the broker runs on.

    A config file that fails to load is logged and the running config stays (its
    certificate, password and ACL files are still read again); a change that needs a
    restart is logged at WARNING, naming its key and the value kept.
    """
    broker = running.broker
    logger.info("reloading the config (SIGHUP)")
    if broker is None:
        logger.warning("the broker is still starting; SIGHUP ignored")
        return
    config: BrokerConfig = broker.config
    if running.load_config is not None:
        try:
            config = running.load_config()
        except ConfigError as exc:
            logger.error(
                "config reload failed, the running config stays (its certificate, password "
                "and ACL files are read again): %s",
                exc,
            )
    report = broker.reload_config(config)
    for change in report.needs_restart:
        logger.warning("%s", change)
    for error in report.errors:
        logger.error("config reload: %s", error)
    if report.changed:
        logger.info("config reloaded; in use now: %s", ", ".join(report.changed))
    else:
        logger.info("config reloaded; no changes in use")
    if not running.log_level_fixed:
        logging.getLogger().setLevel(report.config.log_level.upper())


class ServeFunction(Protocol):
    """The shape of :func:`trio_mqtt.server.app.serve`."""

    async def __call__(
        self, config: BrokerConfig, *, task_status: trio.TaskStatus[Any] = ...
    ) -> None: ...


async def _watch_supervisor(pid: int, cancel_scope: trio.CancelScope) -> None:
    """Stop the broker (gracefully) once the process *pid*, our parent, is gone."""
    # No event tells us a parent died: once it has, we are someone else's child.
    while os.getppid() == pid:  # noqa: ASYNC110
        await trio.sleep(SUPERVISOR_CHECK_INTERVAL)
    logger.warning("shutting down: the supervisor (pid %d) is gone", pid)
    cancel_scope.cancel()


#: How often a worker checks that its supervisor still runs, in seconds.
SUPERVISOR_CHECK_INTERVAL = 1.0


async def _run(
    config: BrokerConfig,
    *,
    serve: ServeFunction | None = None,
    supervisor_pid: int | None = None,
    load_config: ConfigLoader | None = None,
    log_level_fixed: bool = False,
) -> None:
    """Serve *config* until the first SIGINT or SIGTERM; SIGHUP reloads (``_reload``).

    *serve* is replaceable for tests. With *supervisor_pid* (a ``--workers`` worker) the
    broker also stops when that process, its parent, is gone. *load_config* gives
    SIGHUP the new config (None: the running one); with *log_level_fixed* a reload leaves
    the log level alone (``--log-level`` was given).
    """
    if serve is None:
        # Imported late so that the CLI (and --version) loads without the server.
        from trio_mqtt.server.app import serve as serve_app

        serve = serve_app

    handled = [signal.SIGINT, signal.SIGTERM] + ([] if _SIGHUP is None else [_SIGHUP])
    running = _Running(load_config=load_config, log_level_fixed=log_level_fixed)
    with trio.open_signal_receiver(*handled) as signals:
        async with trio.open_nursery() as nursery:
            # Started first, so a signal during startup also stops the broker.
            nursery.start_soon(_handle_signals, signals, nursery.cancel_scope, running)
            if supervisor_pid is not None:
                nursery.start_soon(_watch_supervisor, supervisor_pid, nursery.cancel_scope)
            running.broker = await nursery.start(serve, config)


# The broker allocates a great many short-lived objects that form no reference cycles
# (packets, messages, queue entries); at CPython's default generation-0 threshold of 700
# the cyclic collector runs thousands of times a second for nothing (measured: QoS 0
# fan-in went from ~117k to ~138k msg/s with this setting). Cycles (e.g. exceptions with
# tracebacks) are still collected, just less often. The standalone broker owns its
# process, so it may set this; embedding applications keep their own GC settings.
GC_THRESHOLDS = (50_000, 20, 100)


def run_broker(
    config: BrokerConfig,
    *,
    supervisor_pid: int | None = None,
    load_config: ConfigLoader | None = None,
    log_level_fixed: bool = False,
) -> None:
    """Run the broker in a new Trio event loop until SIGINT or SIGTERM.

    A ``--workers`` worker gives its *supervisor_pid*: it also stops when that is gone.
    SIGHUP reloads the config *load_config* gives (see ``_run``).
    """
    gc.freeze()  # what startup allocated is long-lived: keep it out of every collection
    gc.set_threshold(*GC_THRESHOLDS)
    trio.run(
        partial(
            _run,
            config,
            supervisor_pid=supervisor_pid,
            load_config=load_config,
            log_level_fixed=log_level_fixed,
        )
    )


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or *exc* itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _error(message: object) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-mqtt`` and ``python -m trio_mqtt``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.version:
        print(f"{PROG} {__version__}")
        return EXIT_OK
    if args.from_mosquitto is not None:
        return _from_mosquitto(args.from_mosquitto)
    try:
        config = build_config(args)
    except ConfigError as exc:
        _error(exc)
        return EXIT_USAGE

    log_level = args.log_level or config.log_level  # --log-level wins
    handler = configure_logging(log_level, name=args.log_name, log_format=config.log_format)
    if args.supervisor_pid is None:  # a --workers worker: its supervisor said it already
        logger.info("%s", _starting_line(args.config))
    try:
        if config.workers > 1:
            return _run_workers(config, log_level)
        # SIGHUP reads the config file again (with the command line applied to it)
        reloading: dict[str, Any] = {}
        if args.config:
            reloading = {
                "load_config": partial(build_config, args),
                "log_level_fixed": args.log_level is not None,
            }
        if args.supervisor_pid is None:
            run_broker(config, **reloading)
        else:
            run_broker(config, supervisor_pid=args.supervisor_pid, **reloading)
        return EXIT_OK
    except Exception as exc:
        return _startup_failure(exc, expected=(ConfigError, OSError))
    finally:
        logging.getLogger().removeHandler(handler)


def _starting_line(config_file: str | None) -> str:
    """The first log line: the version, and the config file (absolute) or that none is."""
    if config_file:
        return f"{PROG} {__version__} starting (config {os.path.abspath(config_file)})"
    return f"{PROG} {__version__} starting (no config file: defaults)"


def _from_mosquitto(path: str) -> int:
    """``--from-mosquitto``: the TOML on stdout, what is not mapped on stderr; exit 0, or
    2 when the file cannot be read (trio_mqtt/mosquitto_conf.py does the conversion)."""
    from trio_mqtt.mosquitto_conf import convert, include_order

    def read_include_dir(directory: str) -> list[tuple[str, str]]:
        names = sorted(
            (name for name in os.listdir(directory) if name.endswith(".conf")), key=include_order
        )
        files = []
        for name in names:
            with open(os.path.join(directory, name), encoding="utf-8") as stream:
                files.append((name, stream.read()))
        return files

    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
        conversion = convert(text, file=path, read_include_dir=read_include_dir)
    except OSError as exc:
        _error(f"{path}: cannot read: {exc.strerror}")
        return EXIT_USAGE
    except UnicodeDecodeError as exc:
        _error(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})")
        return EXIT_USAGE
    except ConfigError as exc:
        _error(exc)
        return EXIT_USAGE
    sys.stdout.write(conversion.toml)
    for item in conversion.unmapped:
        print(f"{PROG}: not mapped: {item}", file=sys.stderr)
    return EXIT_OK


def _run_workers(config: BrokerConfig, log_level: str) -> int:
    """The ``--workers`` supervisor (imported late, like the server)."""
    from trio_mqtt.supervisor import SupervisorError, run_workers

    try:
        return run_workers(config, log_level=log_level)
    except Exception as exc:
        return _startup_failure(exc, expected=(ConfigError, OSError, SupervisorError))


def _startup_failure(exc: Exception, *, expected: tuple[type[Exception], ...]) -> int:
    """Startup failures the user can fix (bad certificate, port in use) get one line each
    instead of a traceback: the exit code; anything else is a bug: raised again."""
    leaves = _leaves(exc)
    if not all(isinstance(leaf, expected) for leaf in leaves):
        raise exc
    for leaf in leaves:
        _error(leaf)
    if all(isinstance(leaf, ConfigError) for leaf in leaves):
        return EXIT_USAGE
    return EXIT_STARTUP_FAILED
