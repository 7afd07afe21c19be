"""Tests of the pure-Python reference model of the C++ order engine (hean.testing.reference_engine)
on cases worked out by hand."""

from __future__ import annotations

from hean.testing.reference_engine import (
    BUY,
    DEFAULT_LIMITS,
    FILLED,
    GTC,
    MARKET,
    SCALE,
    SELL,
    ReferenceEngine,
    fee_for,
)


def test_model_flip_through_zero_by_hand() -> None:
    m = ReferenceEngine(limits={**DEFAULT_LIMITS, "fee_rate": 0})
    m.start()
    m.update_market("X", 100 * SCALE, 100 * SCALE, 100 * SCALE)
    assert m.submit("a", "X", BUY, MARKET, 3 * SCALE, 0, GTC)[1] == FILLED
    m.update_market("X", 90 * SCALE, 90 * SCALE, 90 * SCALE)
    m.submit("b", "X", SELL, MARKET, 5 * SCALE, 0, GTC)
    s = m.symbols["X"]
    # Closed 3 long at 90 (-30), opened 2 short at 90.
    assert (s.qty, s.cost, s.realized) == (-2 * SCALE, 180 * SCALE, -30 * SCALE)


def test_model_partial_close_removes_floor_of_basis() -> None:
    limits = {**DEFAULT_LIMITS, "fee_rate": 0, "min_notional": 0}
    m = ReferenceEngine(limits=limits)
    m.start()
    m.update_market("X", 1 * SCALE, 1 * SCALE, 1 * SCALE)
    m.submit("a", "X", BUY, MARKET, 1 * SCALE, 0, GTC)
    m.update_market("X", 2 * SCALE, 2 * SCALE, 2 * SCALE)
    m.submit("b", "X", BUY, MARKET, 2 * SCALE, 0, GTC)  # qty 3, cost 5 USD
    m.submit("c", "X", SELL, MARKET, 1 * SCALE, 0, GTC)
    s = m.symbols["X"]
    removed = 166_666_666  # floor(5 USD * 1 / 3)
    assert s.cost == 5 * SCALE - removed
    assert s.realized == 2 * SCALE - removed


def test_model_fee_rounds_up() -> None:
    assert fee_for(1, 1, 1) == 1
    assert fee_for(100 * SCALE, SCALE, 100_000) == 10_000_000
