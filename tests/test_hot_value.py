"""``hot_value`` classes: immutable to the type checker, equal and hashable by value.

At run time they are ``attrs.define`` (cheap to build, see trio_mqtt/hot_value.py), so
their immutability is mypy's to enforce: the first test runs ``mypy --strict`` on code
that assigns their fields and expects it refused. ``mypy`` comes with the ``dev`` extra;
without it that test is skipped, or fails under ``TRIO_MQTT_REQUIRE_TOOLS=1`` as CI sets it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import attrs
import pytest

from tests.tools import require_module
from trio_mqtt.broker.core import Accepted, ConnectPlan
from trio_mqtt.broker.message import Message, StoredMessage
from trio_mqtt.mqtt.packets import (
    Connack,
    Connect,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
)
from trio_mqtt.peer import SocketEnds
from trio_mqtt.proxy import TLV, Address, ProxyHeader, SSLInfo, UnixAddress
from trio_mqtt.server.proxy_policy import Preamble

# per message, then per connection
HOT_VALUES = (
    *(Publish, Puback, Pubrec, Pubrel, Pubcomp, Message, StoredMessage, Properties),
    *(Connect, Connack, ConnectPlan, Accepted, Preamble, SocketEnds),
    *(ProxyHeader, Address, UnixAddress, TLV, SSLInfo),
)


def test_mypy_refuses_assigning_a_field(tmp_path: Path) -> None:
    require_module("mypy")
    from mypy import api

    source = tmp_path / "assigns.py"
    source.write_text(
        textwrap.dedent(
            """
            from trio_mqtt.broker.core import ConnectPlan
            from trio_mqtt.broker.message import Message, StoredMessage
            from trio_mqtt.mqtt.packets import Connack, Connect, Properties, Puback, Publish
            from trio_mqtt.proxy import Address, ProxyHeader
            from trio_mqtt.server.proxy_policy import Preamble

            message = Message("a/b")
            message.topic = "c"
            StoredMessage.of(message, 7).sequence = 8
            packet = Publish("a/b", b"x", qos=1, packet_id=1)
            packet.qos = 0
            Puback(1).reason_code = 0x80
            Connect("client").username = "admin"
            Connack().reason_code = 0
            ConnectPlan("client", None, 60, None).keep_alive = 0
            def leftover(preamble: Preamble) -> None:
                preamble.leftover = b""
            Properties().message_expiry_interval = 0
            def source(header: ProxyHeader) -> None:
                header.source = Address("10.0.0.1", 1)
            Address("10.0.0.1", 1).host = "10.0.0.2"
            """
        )
    )
    out, _err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    assert status == 1, out
    refused = {line.split(":")[1] for line in out.splitlines() if "is read-only" in line}
    assert refused == {"9", "10", "12", "13", "14", "15", "16", "18", "19", "21", "22"}, out


@pytest.mark.parametrize("cls", HOT_VALUES, ids=lambda cls: cls.__name__)
def test_equal_and_hashable_by_value(cls: type) -> None:
    fields = attrs.fields(cls)
    first = cls(*[_sample(field.name) for field in fields if field.default is attrs.NOTHING])
    second = cls(*[_sample(field.name) for field in fields if field.default is attrs.NOTHING])
    assert first is not second
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1
    other = attrs.evolve(first, **{fields[0].name: _other(fields[0].name)})
    assert other != first


def test_a_stored_message_is_a_message_with_its_sequence() -> None:
    message = Message("a/b", b"x", qos=1, publisher="p", created=5.0)
    stored = StoredMessage.of(message, 42)
    assert isinstance(stored, Message)
    assert stored.sequence == 42 and message.sequence == 0
    assert attrs.astuple(stored)[:-1] == attrs.astuple(message)
    assert stored != message


def _sample(name: str) -> object:
    return {"topic": "a/b", "packet_id": 1}.get(name, f"sample {name}")


def _other(name: str) -> object:
    return {"topic": "c/d", "packet_id": 2}.get(name, f"other {name}")
