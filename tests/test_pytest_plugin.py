"""The ``mqtt_broker`` fixture, as a user's project sees it through the pytest11 entry point.

pytester runs a small test file in a fresh directory with no conftest: the fixture can
only come from the installed trio_mqtt plugin.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# CONNECT by hand (3.1.1 section 3.1): remaining length 13; protocol name "MQTT", level 4,
# flags 0x02 (clean session), keep alive 60, client id "u". CONNACK: accepted, no session.
USER_TESTS = """
import trio

CONNECT = bytes.fromhex("100d00044d5154540402003c000175")
CONNACK_ACCEPTED = bytes.fromhex("20020000")


async def test_network_client_connects(mqtt_broker):
    stream = await trio.open_tcp_stream("127.0.0.1", mqtt_broker.port)
    async with stream:
        await stream.send_all(CONNECT)
        data = b""
        with trio.fail_after(5):
            while len(data) < 4:
                data += await stream.receive_some(4 - len(data))
        assert data == CONNACK_ACCEPTED


async def test_in_process_roundtrip(mqtt_broker):
    await mqtt_broker.publish("plugin/t", b"kept", retain=True)
    async with mqtt_broker.subscribe("plugin/#") as messages:
        with trio.fail_after(5):
            message = await messages.receive()
    assert (message.topic, message.payload, message.retain) == ("plugin/t", b"kept", True)


async def test_each_test_gets_a_fresh_broker(mqtt_broker):
    assert mqtt_broker.retained("plugin/t") is None
    assert mqtt_broker.addresses()[0].host == "127.0.0.1"
"""


def test_mqtt_broker_fixture_in_user_project(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_user_app=USER_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)


def test_fixture_comes_from_the_trio_mqtt_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_user_app=USER_TESTS)

    listed = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--fixtures")
    listed.stdout.fnmatch_lines(["*mqtt_broker*", "*running trio-mqtt broker*"])

    # disabling the plugin by its entry point name removes the fixture
    disabled = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:trio_mqtt", "-q")
    disabled.assert_outcomes(errors=3)
    disabled.stdout.fnmatch_lines(["*fixture 'mqtt_broker' not found*"])
