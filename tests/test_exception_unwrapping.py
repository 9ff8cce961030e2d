"""What ``async with open_broker()`` (and ``open_test_broker()``) lets out: exceptions as
themselves, not wrapped in exception groups by the broker's nurseries.

A ``ValueError`` raised in the block comes out as that ``ValueError``; Ctrl-C's
``KeyboardInterrupt`` as a ``KeyboardInterrupt``, so that a program's ``except
KeyboardInterrupt:`` around ``trio.run`` works (checked with a real SIGINT too). When a
broker task fails as well, both come out, in one group.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

import trio_mqtt
from trio_mqtt import BrokerConfig, ListenerConfig, open_broker
from trio_mqtt.server import app
from trio_mqtt.server.app import Broker
from trio_mqtt.server.exception_groups import unwrapped
from trio_mqtt.testing import open_test_broker

REPO_ROOT = Path(trio_mqtt.__file__).resolve().parent.parent


def embedded() -> AbstractAsyncContextManager[Broker]:
    config = BrokerConfig(
        listeners=[ListenerConfig(host="127.0.0.1", port=0)], sys_interval=0, shutdown_timeout=1
    )
    return open_broker(config)


OPENERS: dict[str, Callable[[], AbstractAsyncContextManager[Broker]]] = {
    "open_broker": embedded,
    "open_test_broker": open_test_broker,
}
each_opener = pytest.mark.parametrize("opener", list(OPENERS.values()), ids=list(OPENERS))


@each_opener
async def test_an_error_in_the_block_comes_out_as_itself(
    opener: Callable[[], AbstractAsyncContextManager[Broker]],
) -> None:
    error = ValueError("from the block")
    with pytest.raises(ValueError) as info:
        async with opener():
            raise error
    assert info.value is error
    assert info.value.__context__ is None  # not the group it travelled in
    with trio.move_on_after(0.2) as scope:  # cancelling from outside still just cancels
        async with opener():
            await trio.sleep_forever()
    assert scope.cancelled_caught


@each_opener
def test_keyboard_interrupt_in_the_block_reaches_the_caller_of_trio_run(
    opener: Callable[[], AbstractAsyncContextManager[Broker]],
) -> None:
    async def main() -> None:
        async with opener() as broker:
            assert broker.port
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trio.run(main)


def test_ctrl_c_reaches_except_keyboard_interrupt_around_trio_run(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import trio
            from trio_mqtt.testing import open_test_broker

            async def main():
                async with open_test_broker() as broker:
                    print("ready", broker.port, flush=True)
                    await trio.sleep_forever()

            try:
                trio.run(main)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(3)
            """
        )
    )
    with subprocess.Popen(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().startswith("ready ")
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=15)
        finally:
            process.kill()
    assert (process.returncode, out) == (3, "interrupted\n"), err
    assert "Traceback" not in err


async def failing_housekeeping(core: object) -> None:
    await trio.lowlevel.checkpoint()
    raise RuntimeError("from a broker task")


async def test_a_broker_task_failure_comes_out_as_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "_housekeeping", failing_housekeeping)
    with trio.fail_after(10), pytest.raises(RuntimeError, match="from a broker task"):
        async with embedded():
            await trio.sleep_forever()  # cancelled by the failure


async def test_the_block_error_is_kept_when_a_broker_task_fails_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "_housekeeping", failing_housekeeping)
    with trio.fail_after(10), pytest.raises(ExceptionGroup) as info:
        async with embedded():
            try:
                await trio.sleep_forever()
            finally:
                raise ValueError("from the block")
    assert sorted(str(exc) for exc in info.value.exceptions) == [
        "from a broker task",
        "from the block",
    ]


def group(*exceptions: BaseException) -> BaseExceptionGroup[BaseException]:
    return BaseExceptionGroup("outer", [BaseExceptionGroup("inner", list(exceptions))])


def test_unwrapped_choices() -> None:
    error, other, interrupt = ValueError("a"), RuntimeError("b"), KeyboardInterrupt("c")
    assert unwrapped(group(error), error) is error
    assert unwrapped(group(error), None) is error
    several = unwrapped(group(error, other), error)
    assert isinstance(several, ExceptionGroup)
    assert several.exceptions == (error, other)
    chosen = unwrapped(group(other, interrupt), interrupt)
    assert isinstance(chosen, KeyboardInterrupt)
    assert isinstance(chosen.__cause__, BaseExceptionGroup)
    assert chosen.__cause__.exceptions == (other, interrupt)


async def _a_cancelled() -> trio.Cancelled:
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            return exc
    raise AssertionError("not cancelled")


async def test_unwrapped_sets_cancelled_aside() -> None:
    cancelled = await _a_cancelled()
    error = ValueError("a")
    assert unwrapped(group(cancelled, error), None) is error
    assert unwrapped(group(cancelled), None) is cancelled
