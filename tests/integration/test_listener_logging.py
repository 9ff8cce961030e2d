"""What a listener logs about refusals and risky settings: once per episode, not per event."""

from __future__ import annotations

import logging

import pytest
from helpers import wait_until
from rawclient import RawClient

from trio_mqtt.config import ListenerConfig, ProxyPolicy
from trio_mqtt.testing import open_test_broker


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_max_connections_is_logged_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = ListenerConfig(name="small", host="127.0.0.1", port=0, max_connections=1)
    caplog.set_level(logging.WARNING, logger="trio_mqtt")
    async with open_test_broker(listeners=(listener,)) as broker:
        handle = broker.listeners["small"]
        first = await RawClient.open(broker.port)
        await first.connect("first")
        for _ in range(3):
            refused = await RawClient.open(broker.port)
            assert await refused.expect_closed() == []
            await refused.aclose()
        assert handle.rejections["max-connections"] == 3
        (reached,) = messages(caplog, "max_connections (1) reached")
        assert "'small'" in reached

        await first.aclose()
        await wait_until(lambda: handle.connections == 0)
        second = await RawClient.open(broker.port)
        await second.connect("second")
        (again,) = messages(caplog, "below max_connections again")
        assert "3 connection(s) were closed" in again
        await second.aclose()


@pytest.mark.parametrize(
    ("trusted", "warned"), [((), True), (("10.0.0.0/8",), False)], ids=["anyone", "trusted"]
)
async def test_cn_as_username_without_trusted_sources_is_warned_about(
    caplog: pytest.LogCaptureFixture, trusted: tuple[str, ...], warned: bool
) -> None:
    policy = ProxyPolicy(mode="required", trusted_sources=trusted, use_cn_as_username=True)
    listener = ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=policy)
    caplog.set_level(logging.WARNING, logger="trio_mqtt")
    async with open_test_broker(listeners=(listener,)):
        pass
    found = messages(caplog, "use_cn_as_username with an empty trusted_sources")
    assert len(found) == (1 if warned else 0), found


@pytest.mark.parametrize(
    ("options", "trusted", "expected"),
    [
        ({"require_tls": True}, (), "require_tls with"),
        ({"require_verified_client_cert": True}, (), "require_verified_client_cert with"),
        (
            {"require_tls": True, "require_verified_client_cert": True},
            (),
            "require_tls and require_verified_client_cert with",
        ),
        ({"require_tls": True, "require_verified_client_cert": True}, ("10.0.0.0/8",), None),
    ],
    ids=["tls", "cert", "both", "trusted"],
)
async def test_require_options_without_trusted_sources_are_warned_about(
    caplog: pytest.LogCaptureFixture,
    options: dict[str, bool],
    trusted: tuple[str, ...],
    expected: str | None,
) -> None:
    policy = ProxyPolicy(mode="required", trusted_sources=trusted, **options)
    listener = ListenerConfig(name="lb", host="127.0.0.1", port=0, proxy_protocol=policy)
    caplog.set_level(logging.WARNING, logger="trio_mqtt")
    async with open_test_broker(listeners=(listener,)):
        pass
    found = messages(caplog, "with an empty trusted_sources is met by anyone")
    if expected is None:
        assert found == []
    else:
        [warning] = found
        assert warning.startswith(f"listener 'lb': {expected} an empty trusted_sources")
