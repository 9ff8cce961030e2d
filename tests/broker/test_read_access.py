"""Read hooks: asked on delivery, cached per connection and topic, dropped on reload."""

from __future__ import annotations

from helpers import V311, Client, FakeClock, make_core

from trio_mqtt.broker.message import Message
from trio_mqtt.peer import PeerInfo


def test_read_hook_is_asked_once_per_topic_until_auth_changes(clock: FakeClock) -> None:
    asked: list[tuple[str, str]] = []
    denied = {"secret/a"}

    def read_hook(peer: PeerInfo, client_id: str, username: str | None, topic: str) -> bool:
        asked.append((client_id, topic))
        return topic not in denied

    core = make_core(clock)
    core.add_read_hook(read_hook)
    client = Client(core, V311)
    client.connect("c")
    client.subscribe(("#", 0))
    for n in range(3):
        core.publish(Message("secret/a", b"%d" % n))
        core.publish(Message("public/b", b"%d" % n))
    assert [(p.topic, p.payload) for p in client.publishes()] == [
        ("public/b", b"0"),
        ("public/b", b"1"),
        ("public/b", b"2"),
    ]
    assert asked == [("c", "secret/a"), ("c", "public/b")]  # cached after the first

    denied.clear()
    core.auth_changed()  # a reload: the cached answers go
    core.publish(Message("secret/a", b"now"))
    assert [(p.topic, p.payload) for p in client.publishes()] == [("secret/a", b"now")]
    assert asked[-1] == ("c", "secret/a")


def test_unreadable_in_flight_messages_are_not_resent_to_a_new_owner(clock: FakeClock) -> None:
    core = make_core(clock)
    owner = {"first"}
    core.add_read_hook(lambda peer, client_id, username, topic: username in owner)
    first = Client(core, V311)
    first.connect("shared", clean_start=False, username="first")
    first.subscribe(("t", 1))
    core.publish(Message("t", b"unacknowledged", qos=1))
    (sent,) = first.publishes()
    assert sent.payload == b"unacknowledged"
    first.conn.connection_lost()  # no PUBACK: it stays in flight

    second = Client(core, V311)
    second.connect("shared", clean_start=False, username="second")
    assert second.packets() == []  # not resent: "second" may not read it
    assert not core.sessions["shared"].inflight_out
