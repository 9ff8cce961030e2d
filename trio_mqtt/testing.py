"""Helpers for testing applications against a real trio-mqtt broker.

Installed as a pytest plugin (entry point ``trio_mqtt``), it provides the async fixture
``mqtt_broker``: a running broker with one TCP listener on 127.0.0.1 and a free port,
for tests run by pytest-trio::

    async def test_my_app(mqtt_broker):
        async with mqtt_broker.subscribe("app/#") as messages:
            await run_my_app(port=mqtt_broker.port)
            message = await messages.receive()

Outside pytest, ``open_test_broker()`` gives the same broker as an async context manager.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from trio_mqtt.config import BrokerConfig, ListenerConfig
from trio_mqtt.server.app import Broker, open_broker

TEST_LISTENER = ListenerConfig(name="test", host="127.0.0.1", port=0)


@asynccontextmanager
async def open_test_broker(**broker_settings: Any) -> AsyncIterator[Broker]:
    """A broker on 127.0.0.1, port 0, short shutdown; ``broker_settings`` override config."""
    settings: dict[str, Any] = {"listeners": (TEST_LISTENER,), "shutdown_timeout": 1.0}
    settings.update(broker_settings)
    config = BrokerConfig(**settings)
    async with open_broker(config) as broker:
        yield broker


@pytest.fixture
async def mqtt_broker() -> AsyncIterator[Broker]:
    """A running trio-mqtt broker on 127.0.0.1 (``mqtt_broker.port`` is its port)."""
    async with open_test_broker() as broker:
        yield broker


__all__ = ["TEST_LISTENER", "mqtt_broker", "open_test_broker"]
