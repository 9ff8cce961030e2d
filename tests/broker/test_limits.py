"""trio_mqtt.broker.limits: token buckets and per-address bookkeeping, times as arguments."""

from __future__ import annotations

import pytest

from trio_mqtt.broker.limits import (
    REASON_CONNECTIONS,
    REASON_RATE,
    AddressLimiter,
    PublishBudget,
    TokenBucket,
    address_key,
)


def test_bucket_take_is_all_or_nothing_and_refills_at_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.4)  # 0.8 tokens
    assert bucket.take(100.5)  # 1.0 token
    assert bucket.is_full(110.0)  # never more than burst
    assert bucket.tokens == 3


def test_bucket_charge_goes_into_debt_and_delay_says_for_how_long() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=10, now=0.0)
    bucket.charge(0.0, 25)  # 15 in debt
    assert bucket.delay(0.0) == pytest.approx(1.5)
    assert bucket.delay(1.0) == pytest.approx(0.5)
    assert bucket.delay(1.5) == 0.0


@pytest.mark.parametrize(
    ("host", "prefix", "key"),
    [
        ("203.0.113.7", 64, "203.0.113.7"),
        ("::ffff:203.0.113.7", 64, "203.0.113.7"),  # IPv4-mapped: the IPv4 address
        ("2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6"),
        ("2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"),
        ("/run/lb.sock", 64, "/run/lb.sock"),
    ],
)
def test_address_key(host: str, prefix: int, key: str) -> None:
    assert address_key(host, prefix) == key


def test_max_connections_per_address() -> None:
    limiter = AddressLimiter(max_connections=2)
    assert limiter.admit("203.0.113.7", 0.0) == ("203.0.113.7", None)
    assert limiter.admit("203.0.113.7", 0.0) == ("203.0.113.7", None)
    assert limiter.admit("203.0.113.7", 0.0) == ("203.0.113.7", REASON_CONNECTIONS)
    assert limiter.admit("203.0.113.8", 0.0) == ("203.0.113.8", None)  # another address
    limiter.release("203.0.113.7", 0.0)
    assert limiter.admit("203.0.113.7", 0.0) == ("203.0.113.7", None)
    assert limiter.connections("203.0.113.7") == 2


def test_connect_rate_per_address_with_burst() -> None:
    limiter = AddressLimiter(rate=1.0, burst=2)
    answers = [limiter.admit("203.0.113.7", 10.0)[1] for _ in range(3)]
    assert answers == [None, None, REASON_RATE]
    assert limiter.admit("203.0.113.9", 10.0)[1] is None  # its own bucket
    assert limiter.admit("203.0.113.7", 10.5)[1] == REASON_RATE
    assert limiter.admit("203.0.113.7", 11.0)[1] is None  # one token a second


def test_refused_attempts_take_tokens_too() -> None:
    limiter = AddressLimiter(max_connections=1, rate=1.0, burst=3)
    assert limiter.admit("203.0.113.7", 0.0)[1] is None
    assert limiter.admit("203.0.113.7", 0.0)[1] == REASON_CONNECTIONS
    assert limiter.admit("203.0.113.7", 0.0)[1] == REASON_CONNECTIONS
    assert limiter.admit("203.0.113.7", 0.0)[1] == REASON_RATE


def test_ipv6_clients_share_a_prefix() -> None:
    limiter = AddressLimiter(max_connections=1, ipv6_prefix_length=64)
    assert limiter.admit("2001:db8::1", 0.0) == ("2001:db8::/64", None)
    assert limiter.admit("2001:db8::ffff:2", 0.0) == ("2001:db8::/64", REASON_CONNECTIONS)
    assert limiter.admit("2001:db8:0:1::1", 0.0)[1] is None  # the next /64


def test_memory_is_bounded_idle_addresses_are_forgotten() -> None:
    limiter = AddressLimiter(max_connections=5, rate=10.0, burst=10)
    for index in range(1000):
        key, reason = limiter.admit(f"10.0.{index // 256}.{index % 256}", index * 0.01)
        assert reason is None
        limiter.release(key, index * 0.01)
    # a bucket refills in burst / rate = 1 s: only the last second's addresses are kept
    assert len(limiter) <= 101
    limiter.admit("192.0.2.1", 100.0)
    assert len(limiter) == 1


def test_open_connections_are_never_forgotten() -> None:
    limiter = AddressLimiter(max_connections=1, rate=10.0, burst=10)
    limiter.admit("203.0.113.7", 0.0)
    limiter.admit("203.0.113.8", 1000.0)
    assert limiter.admit("203.0.113.7", 2000.0)[1] == REASON_CONNECTIONS


def test_connection_limit_alone_keeps_only_open_addresses() -> None:
    limiter = AddressLimiter(max_connections=3)
    key, _ = limiter.admit("203.0.113.7", 0.0)
    assert len(limiter) == 1
    limiter.release(key, 0.0)
    assert len(limiter) == 0
    limiter.release(key, 0.0)  # twice: harmless


def test_publish_budget_delays_until_repaid() -> None:
    budget = PublishBudget.create(messages_per_second=100, bytes_per_second=1000, now=0.0)
    assert budget.enabled
    budget.charge(0.0, messages=50, size=500)
    assert budget.delay(0.0) == 0.0  # within one second's worth
    budget.charge(0.0, messages=100, size=600)  # 50 messages, 100 bytes in debt
    assert budget.delay(0.0) == pytest.approx(0.5)  # the messages take longest
    assert budget.delay(0.5) == 0.0


def test_publish_budget_off() -> None:
    budget = PublishBudget.create(0, 0, now=0.0)
    assert not budget.enabled
    budget.charge(0.0, messages=10**6, size=10**9)
    assert budget.delay(0.0) == 0.0


def test_a_refunded_attempt_is_given_back() -> None:
    limiter = AddressLimiter(rate=1.0, burst=1)
    key, reason = limiter.admit("203.0.113.7", 0.0)
    assert reason is None
    limiter.release(key, 0.0, refund=True)  # it was a health check
    assert limiter.admit("203.0.113.7", 0.0)[1] is None
    assert limiter.admit("203.0.113.7", 0.0)[1] == REASON_RATE
