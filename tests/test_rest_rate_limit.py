"""The REST rate limit's table of client addresses (web.socket_handlers.AddressBuckets) stays
bounded without resetting anyone's limit: past its size it drops only buckets that refilled,
which are the same as new ones. Before, it cleared every bucket once it tracked 10,000
addresses, so a client that spoke from that many addresses reset every other client's limit."""

from __future__ import annotations

import time

from web.socket_handlers import AddressBuckets


def test_an_address_gets_its_burst_then_the_rate() -> None:
    buckets = AddressBuckets(rate=50.0, burst=5)
    assert [buckets.take("a") for _ in range(6)] == [True] * 5 + [False]
    assert buckets.take("b")  # another address has a bucket of its own
    time.sleep(0.05)  # 2.5 tokens at 50 a second, or more on a slow machine: never over the burst
    taken = [buckets.take("a") for _ in range(6)]
    assert taken[0] and not taken[-1] and taken == sorted(taken, reverse=True)


def test_a_full_table_drops_refilled_buckets_and_keeps_spent_ones() -> None:
    buckets = AddressBuckets(rate=1.0, burst=3, most=100)
    for _ in range(3):
        assert buckets.take("flooder")  # spent: 3 s to refill
    for i in range(99):
        assert buckets.take(f"10.0.0.{i}")  # 2 tokens left of 3: 1 s to refill
    assert len(buckets) == 100
    time.sleep(1.2)  # the 99 have refilled; the flooder holds 1.2 tokens (2 only after 2 s)
    assert buckets.take("newcomer")
    assert len(buckets) == 2  # the flooder and the newcomer: the refilled 99 were dropped
    assert buckets.take("flooder")
    assert not buckets.take("flooder")  # its limit kept: a new bucket would have given 3


def test_a_table_full_of_buckets_in_use_starts_over() -> None:
    buckets = AddressBuckets(rate=1.0, burst=3, most=100)
    for i in range(100):
        assert buckets.take(f"10.0.0.{i}")
    assert buckets.take("newcomer")  # none refilled: all are dropped, the table stays bounded
    assert len(buckets) == 1
