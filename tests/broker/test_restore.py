"""BrokerCore.restore: what a persistence backend kept comes back through the core."""

from __future__ import annotations

from helpers import V311, FakeClock, make_core

from trio_mqtt.broker.message import Message
from trio_mqtt.broker.router import SubscriptionOptions
from trio_mqtt.broker.sessions import NEVER_EXPIRES, QueuedMessage, SavedSession
from trio_mqtt.mqtt.packets import Properties


def test_restore_brings_back_what_did_not_expire_and_publishes_due_wills(
    clock: FakeClock,
) -> None:
    core = make_core(clock, max_session_expiry=3600)
    will = Message("wills/gone", b"gone", qos=1, created=clock.now - 100)
    kept = SavedSession(
        "kept",
        V311,
        NEVER_EXPIRES,
        None,
        subscriptions=(("wills/#", SubscriptionOptions(qos=1)),),
        pending=(QueuedMessage(Message("wills/old", b"queued", qos=1), 1, False),),
    )
    gone = SavedSession("gone", V311, 60, clock.now - 1, delayed_will=will, will_due=clock.now + 30)
    fresh = Message("r/fresh", b"f", retain=True, created=clock.now)
    stale = Message(
        "r/stale",
        b"s",
        retain=True,
        created=clock.now - 20,
        properties=Properties(message_expiry_interval=10),
    )
    # the expired session comes first: its will must still reach "kept", restored after it
    restored = core.restore([gone, kept], [fresh, stale])

    assert restored.sessions == ("kept",)
    assert restored.expired_sessions == ("gone",)
    assert restored.expired_topics == ("r/stale",)
    assert core.retained.get("r/fresh") is fresh and core.retained.get("r/stale") is None
    session = core.sessions["kept"]
    assert not session.online
    assert session.expires_at == clock.now + 3600  # never, capped by max_session_expiry
    assert [item.message.payload for item in session.queued_items()] == [b"queued", b"gone"]
    assert core.stats.wills_published == 1
    assert not core.dirty_sessions and not core.dirty_retained  # restoring is no change


def test_a_live_session_is_not_replaced_by_the_stored_one(clock: FakeClock) -> None:
    core = make_core(clock)
    core.restore([SavedSession("c", V311, 60, None)], [])
    live = core.sessions["c"]
    restored = core.restore([SavedSession("c", V311, 120, None)], [])
    assert restored.skipped_sessions == ("c",)
    assert core.sessions["c"] is live
