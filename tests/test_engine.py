"""Tests of the trading engine through its Python API (hean.engine over the compiled core):
risk rejects, kill switch, idempotency, snapshots, validation, concurrency, lead-lag."""

from __future__ import annotations

import json
import math
import random
import threading
from decimal import Decimal

import pytest
from pydantic import ValidationError

from hean import _core
from hean.commands.params import KillSwitchParams
from hean.engine import (
    SCALE,
    EngineState,
    OrderBatch,
    OrderRequest,
    OrderStatus,
    PriceGraph,
    RejectReason,
    RiskLimits,
    TradingEngine,
    from_units,
    units_text,
)


def running(**limits: object) -> TradingEngine:
    engine = TradingEngine(risk_limits={"max_orders_per_second": 0, **limits})
    engine.start()
    engine.update_market("BTC", 100, 100, 100)
    engine.update_market("ETH", 10, 10, 10)
    return engine


def test_core_engine_keeps_the_worker_api() -> None:
    core = _core.Engine()
    assert core.state == _core.EngineState.STOPPED
    assert core.start() is True
    assert core.start() is False
    assert core.state.name == "RUNNING"
    assert core.stop() is True
    assert core.command_count == 3
    assert _core.EngineState.HALTED.name == "HALTED"


def test_each_engine_object_owns_its_state() -> None:
    a, b = running(), TradingEngine()
    a.submit_order("x", "BTC", "BUY", 1)
    assert b.state is EngineState.STOPPED
    assert b.positions() == []
    assert a.positions()[0].quantity == Decimal(1)


def test_market_and_limit_fills_positions_and_fees() -> None:
    engine = running()
    engine.update_market("BTC", "99.5", "100.5", 100)
    r = engine.submit_order("a", "BTC", "BUY", "2")
    assert (r.status, r.fill_price, r.fee) == (OrderStatus.FILLED, Decimal("100.5"), Decimal("0.201"))
    # A crossing sell limit fills at the bid; a non-crossing IOC expires.
    assert engine.submit_order("b", "BTC", "SELL", 1, "LIMIT", 99).fill_price == Decimal("99.5")
    assert engine.submit_order("c", "BTC", "SELL", 1, "LIMIT", 101, "IOC").status is (OrderStatus.EXPIRED)
    pos = engine.positions()[0]
    assert pos.quantity == Decimal(1)
    assert pos.average_entry_price == Decimal("100.5")
    assert pos.realized_pnl == Decimal(-1)
    assert pos.unrealized_pnl == Decimal("-0.5")
    assert pos.fees == Decimal("0.201") + Decimal("0.0995")
    account = engine.account()
    assert account.equity == Decimal(10_000) - 1 - Decimal("0.5") - pos.fees


def test_flip_through_zero_is_exact() -> None:
    engine = running(fee_rate=0)
    engine.submit_order("a", "BTC", "BUY", 3)
    engine.update_market("BTC", 110, 110, 110)
    engine.submit_order("b", "BTC", "SELL", 5)
    pos = engine.positions()[0]
    assert (pos.quantity, pos.cost_basis, pos.realized_pnl) == (-2, 220, 30)
    assert pos.average_entry_price == 110


def test_resting_orders_fill_in_price_time_priority() -> None:
    engine = running(fee_rate=0)
    for cid, price in [("b1", 95), ("b2", 97), ("b3", 97), ("b4", 90)]:
        assert engine.submit_order(cid, "BTC", "BUY", "0.1", "LIMIT", price).status is (OrderStatus.RESTING)
    assert [o.client_order_id for o in engine.open_orders()] == ["b2", "b3", "b1", "b4"]
    fills = engine.update_market("BTC", 94, 95, 95).fills
    assert [(f.client_order_id, f.price) for f in fills] == [("b2", 97), ("b3", 97), ("b1", 95)]
    assert [o.client_order_id for o in engine.open_orders()] == ["b4"]
    assert engine.cancel_order("b4").cancelled is True
    assert engine.cancel_order("b4").cancelled is False
    assert engine.account().open_orders == 0


def test_duplicate_client_order_id_returns_first_outcome_and_never_fills_twice() -> None:
    engine = running()
    first = engine.submit_order("dup", "BTC", "BUY", 1)
    engine.update_market("BTC", 200, 200, 200)
    again = engine.submit_order("dup", "BTC", "SELL", 5)
    assert again.duplicate is True
    assert (again.order_id, again.fill_price, again.filled_quantity) == (
        first.order_id,
        first.fill_price,
        first.filled_quantity,
    )
    assert engine.positions()[0].quantity == 1
    # Within one batch too, and for a resting order.
    batch = engine.submit_batch(
        [
            OrderRequest("r1", "BTC", "BUY", 1, "LIMIT", 150),
            OrderRequest("r1", "BTC", "BUY", 1, "LIMIT", 150),
        ]
    )
    assert [r.duplicate for r in batch.results()] == [False, True]
    assert len(engine.open_orders()) == 1


def test_idempotency_window_is_bounded_fifo() -> None:
    engine = TradingEngine(idempotency_capacity=3, risk_limits={"max_orders_per_second": 0})
    engine.start()
    engine.update_market("BTC", 100, 100, 100)
    for cid in ["a", "b", "c", "d"]:
        engine.submit_order(cid, "BTC", "BUY", "0.1")
    assert engine.submit_order("b", "BTC", "BUY", "0.1").duplicate is True
    assert engine.submit_order("a", "BTC", "BUY", "0.1").duplicate is False  # evicted


@pytest.mark.parametrize(
    ("reason", "setup", "order"),
    [
        (RejectReason.NO_MARKET_DATA, {}, ("SOL", "BUY", 1, "MARKET", None)),
        (RejectReason.MIN_NOTIONAL, {}, ("BTC", "BUY", "0.01", "MARKET", None)),
        (RejectReason.MAX_NOTIONAL, {"max_trade_risk_pct": 100}, ("BTC", "BUY", 600, "MARKET", None)),
        (RejectReason.MAX_TRADE_RISK, {}, ("BTC", "BUY", 60, "MARKET", None)),
        (RejectReason.MAX_LEVERAGE, {"max_trade_risk_pct": 100}, ("BTC", "BUY", 400, "MARKET", None)),
    ],
)
def test_risk_reject_reasons(
    reason: RejectReason, setup: dict[str, object], order: tuple[object, ...]
) -> None:
    engine = running(**setup)
    symbol, side, qty, kind, price = order
    result = engine.submit_order("x", symbol, side, qty, kind, price)  # type: ignore[arg-type]
    assert result.status is OrderStatus.REJECTED
    assert result.reject_reason is reason
    assert engine.positions() == []


def test_reject_engine_stopped_and_halted() -> None:
    engine = TradingEngine()
    engine.update_market("BTC", 100, 100, 100)
    assert engine.submit_order("a", "BTC", "BUY", 1).reject_reason is RejectReason.ENGINE_STOPPED
    engine.start()
    assert engine.kill_switch("operator") is True
    assert engine.submit_order("b", "BTC", "BUY", 1).reject_reason is RejectReason.ENGINE_HALTED


def test_reject_max_open_orders_only_for_orders_that_would_rest() -> None:
    engine = running(max_open_orders=2)
    for cid in ["a", "b"]:
        assert engine.submit_order(cid, "BTC", "BUY", 1, "LIMIT", 90).status is OrderStatus.RESTING
    third = engine.submit_order("c", "BTC", "BUY", 1, "LIMIT", 90)
    assert third.reject_reason is RejectReason.MAX_OPEN_ORDERS
    assert engine.submit_order("d", "BTC", "BUY", 1, "LIMIT", 100).status is OrderStatus.FILLED


def test_reject_max_open_positions_but_allow_reducing() -> None:
    engine = running(max_open_positions=1)
    assert engine.submit_order("a", "BTC", "BUY", 1).status is OrderStatus.FILLED
    second = engine.submit_order("b", "ETH", "BUY", 1)
    assert second.reject_reason is RejectReason.MAX_OPEN_POSITIONS
    assert engine.submit_order("c", "BTC", "SELL", 1).status is OrderStatus.FILLED
    assert engine.submit_order("d", "ETH", "BUY", 1).status is OrderStatus.FILLED


def test_daily_drawdown_blocks_new_exposure_until_reset_daily() -> None:
    engine = running(max_trade_risk_pct=100, fee_rate=0)
    engine.submit_order("a", "BTC", "BUY", 90)  # 9,000 USD
    engine.update_market("BTC", 80, 80, 80)  # -1,800 = 18% down on the day
    assert engine.account().daily_drawdown_pct == Decimal(18)
    assert engine.state is EngineState.RUNNING  # below the 30% kill switch
    blocked = engine.submit_order("b", "ETH", "BUY", 10)
    assert blocked.reject_reason is RejectReason.DAILY_DRAWDOWN
    assert engine.submit_order("c", "BTC", "SELL", 10).status is OrderStatus.FILLED  # reduces
    engine.reset_daily()
    assert engine.submit_order("d", "ETH", "BUY", 10).status is OrderStatus.FILLED


def test_throttle_limits_orders_per_second() -> None:
    engine = running(max_orders_per_second=3)
    second = 1_000_000_000
    outcomes = [
        engine.submit_order(f"o{i}", "BTC", "BUY", "0.1", now_ns=5 * second).reject_reason for i in range(4)
    ]
    assert outcomes == [None, None, None, RejectReason.THROTTLED]
    assert engine.submit_order("o9", "BTC", "BUY", "0.1", now_ns=6 * second).accepted


def test_kill_switch_on_drawdown_halts_cancels_and_resets() -> None:
    engine = running(max_trade_risk_pct=100, fee_rate=0)
    engine.submit_order("a", "BTC", "BUY", 90)
    engine.submit_order("rest", "ETH", "BUY", 10, "LIMIT", 5)
    result = engine.update_market("BTC", 70, 70, 70)  # -2,700 = 27% below the peak
    assert result.state is EngineState.RUNNING
    engine.update_market("BTC", 72, 72, 72)  # recovers a little: the peak stays 10,000
    result = engine.update_market("BTC", 65, 65, 65)  # -3,150 = 31.5%
    assert result.state is EngineState.HALTED
    status = engine.status()
    assert status.halt_reason == "drawdown"
    assert engine.open_orders() == []
    assert engine.submit_order("b", "BTC", "SELL", 1).reject_reason is RejectReason.ENGINE_HALTED
    assert engine.start() is False
    assert engine.reset_kill_switch() is True
    assert engine.state is EngineState.STOPPED
    assert engine.start() is True
    assert engine.submit_order("c", "BTC", "SELL", 90).status is OrderStatus.FILLED


def test_risk_limits_adjust_by_name_and_validate() -> None:
    engine = TradingEngine()
    before = engine.command_count
    limits = engine.set_risk_limits({"max_leverage": "2.5"}, max_open_orders=5)
    assert limits.max_leverage == Decimal("2.5")
    assert engine.risk_limits() == limits
    assert engine.command_count == before + 1
    with pytest.raises(ValueError, match="max_leverage"):
        engine.set_risk_limits(max_leverage=-1)
    with pytest.raises(ValueError, match="bogus"):
        engine.set_risk_limits(bogus=1)
    with pytest.raises(ValueError, match="min_notional"):
        engine.set_risk_limits(min_notional=100, max_notional=50)
    with pytest.raises(ValueError, match="max_open_orders"):
        engine.set_risk_limits(max_open_orders="2.5")
    assert engine.risk_limits() == limits  # nothing changed by the failed calls
    assert RiskLimits().max_open_positions == 10


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"quantity": -1}, "quantity"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": "1e-9"}, "quantity"),
        ({"order_type": "LIMIT", "price": float("nan")}, "price"),
        ({"order_type": "LIMIT", "price": math.inf}, "price"),
        ({"order_type": "LIMIT"}, "price"),
        ({"side": "sideways"}, "side"),
        ({"symbol": ""}, "symbol"),
        ({"client_order_id": ""}, "client_order_id"),
        ({"time_in_force": "FOK"}, "time_in_force"),
        ({"quantity": True}, "quantity"),
    ],
)
def test_invalid_input_raises_value_error_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    engine = running()
    order: dict[str, object] = {
        "client_order_id": "x",
        "symbol": "BTC",
        "side": "BUY",
        "quantity": 1,
        **kwargs,
    }
    with pytest.raises(ValueError, match=field):
        engine.submit_order(**order)  # type: ignore[arg-type]
    assert engine.status().orders_submitted == 0


def test_core_rejects_bad_integers_with_value_error() -> None:
    core = _core.Engine()
    with pytest.raises(ValueError, match="quantity"):
        core.submit_order("x", "BTC", _core.Side.BUY, _core.OrderType.MARKET, -5)
    with pytest.raises(ValueError, match="bid"):
        core.update_market("BTC", 0, 1, 1)
    with pytest.raises(ValueError, match="quantities"):
        core.submit_batch(["a"], ["BTC"], b"\x00", b"\x00", [1, 2], [0], b"\x00")
    with pytest.raises(ValueError, match="side"):
        core.submit_batch(["a"], ["BTC"], b"\x07", b"\x00", [SCALE], [0], b"\x00")
    with pytest.raises(TypeError, match="symbols"):
        core.submit_batch(["a"], [3], b"\x00", b"\x00", [SCALE], [0], b"\x00")


def test_invalid_batch_applies_nothing() -> None:
    engine = running()
    batch = OrderBatch.from_orders([OrderRequest("a", "BTC", "BUY", 1), OrderRequest("b", "BTC", "BUY", 1)])
    batch.quantities[1] = -1
    with pytest.raises(ValueError, match="quantity"):
        engine.submit_batch(batch)
    assert engine.positions() == []
    assert engine.submit_order("a", "BTC", "BUY", 1).duplicate is False


def test_snapshot_round_trips_exactly_and_rejects_corruption() -> None:
    engine = running()
    rng = random.Random(3)
    for i in range(200):
        side = rng.choice(["BUY", "SELL"])
        if i % 4 == 0:
            engine.submit_order(f"l{i}", "BTC", side, "0.1", "LIMIT", rng.choice([90, 110]))
        else:
            engine.submit_order(f"m{i}", rng.choice(["BTC", "ETH"]), side, "0.7")
        if i % 25 == 0:
            engine.update_market("BTC", 99 + i % 3, 100 + i % 3, 100)
    data = engine.snapshot()
    clone = TradingEngine.from_snapshot(data)
    assert clone.snapshot() == data
    assert clone.status() == engine.status()
    assert clone.positions() == engine.positions()
    assert clone.open_orders() == engine.open_orders()
    for e in (engine, clone):
        assert e.submit_order("m1", "BTC", "BUY", 1).duplicate is True
    assert engine.update_market("BTC", 80, 81, 80) == clone.update_market("BTC", 80, 81, 80)
    assert engine.snapshot() == clone.snapshot()
    with pytest.raises(ValueError, match="snapshot"):
        clone.restore(data[:-3])
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="snapshot"):
        clone.restore(bytes(corrupt))
    with pytest.raises(ValueError, match="snapshot"):
        clone.restore(b"not a snapshot at all")
    assert clone.snapshot() == engine.snapshot()  # failed restores change nothing


def test_every_kill_switch_reason_the_command_accepts_is_kept_whole() -> None:
    """The kill_switch command takes up to 200 characters (KillSwitchParams); the core keeps
    every one of them, through a snapshot too (it kept 64 bytes once, and cut the rest)."""
    longest = "\U0001f6d1" * 200  # 4 bytes each in UTF-8: the most bytes the command lets through
    assert KillSwitchParams(reason=longest).reason == longest
    with pytest.raises(ValidationError):
        KillSwitchParams(reason=longest + "x")
    engine = running()
    assert engine.kill_switch(longest)
    assert engine.status().halt_reason == longest
    assert TradingEngine.from_snapshot(engine.snapshot()).status().halt_reason == longest


def test_a_reason_longer_than_the_core_keeps_is_cut_between_characters() -> None:
    """Past bounds::kMaxReasonBytes (800; only a caller of the engine itself can go past the
    command's 200 characters) the core keeps the first 800 bytes; cut inside a character, the
    engine's status could not be read at all (UnicodeDecodeError) until it was reset."""
    engine = running()
    assert engine.kill_switch("a" + "é" * 500)  # the 800th byte is the first half of an é
    assert engine.status().halt_reason == "a" + "é" * 399
    assert TradingEngine.from_snapshot(engine.snapshot()).status().halt_reason == "a" + "é" * 399
    other = running()
    assert other.kill_switch("x" * 1000)
    assert other.status().halt_reason == "x" * 800


def _fnv1a(data: bytes) -> int:
    """Format 1's checksum, written out here so the test does not trust the core's own."""
    h = 1469598103934665603
    for byte in data:
        h = ((h ^ byte) * 1099511628211) % 2**64
    return h


def test_a_format_1_snapshot_still_restores() -> None:
    """Snapshots stored by versions before format 2 (FNV-1a checksum; the same bytes
    otherwise) restore, and are written back as format 2."""
    engine = running()
    for i in range(40):
        engine.submit_order(f"m{i}", "BTC", "BUY" if i % 2 else "SELL", "0.3")
    engine.submit_order("rest", "BTC", "BUY", "0.1", "LIMIT", 90)
    data = engine.snapshot()
    assert int.from_bytes(data[8:16], "little") == 2
    assert _core.snapshot_checksum(data[:-8], 2) == int.from_bytes(data[-8:], "little")
    body = data[:8] + (1).to_bytes(8, "little") + data[16:-8]
    assert _core.snapshot_checksum(body, 1) == _fnv1a(body)
    old = body + _fnv1a(body).to_bytes(8, "little")
    clone = TradingEngine.from_snapshot(old)
    assert clone.snapshot() == data
    assert clone.open_orders() == engine.open_orders()
    assert clone.submit_order("m3", "BTC", "BUY", 1).duplicate is True
    before = clone.snapshot()
    with pytest.raises(ValueError, match="checksum mismatch"):
        clone.restore(body + (_fnv1a(body) ^ 1).to_bytes(8, "little"))
    with pytest.raises(ValueError, match="checksum mismatch"):  # format 1 bytes, format 2's sum
        clone.restore(body + _core.snapshot_checksum(body, 2).to_bytes(8, "little"))
    future = data[:8] + (3).to_bytes(8, "little") + data[16:]
    with pytest.raises(ValueError, match="unsupported version"):
        clone.restore(future)
    assert clone.snapshot() == before  # failed restores change nothing


def test_results_are_json_friendly() -> None:
    engine = running()
    payloads = [
        engine.submit_order("a", "BTC", "BUY", 1).to_dict(),
        engine.submit_batch(
            [{"client_order_id": "b", "symbol": "BTC", "side": "SELL", "quantity": "0.5"}]
        ).to_dict(),
        engine.update_market("BTC", 101, 102, 101).to_dict(),
        engine.status().to_dict(),
        engine.risk_limits().to_dict(),
        engine.cancel_order("zzz").to_dict(),
        *[p.to_dict() for p in engine.positions()],
    ]
    text = json.dumps(payloads)
    assert '"status": "FILLED"' in text
    assert Decimal(json.loads(text)[3]["account"]["equity"]) == engine.account().equity


def test_batch_results_dict_matches_each_result() -> None:
    """BatchResult.to_dict() builds its results from the columns; each must equal the
    OrderResult's own to_dict(): fills, expiries, rejects with reasons, duplicates."""
    engine = running(max_notional=150)
    orders = []
    for i in range(60):
        order: dict[str, object] = {
            "client_order_id": f"o{i}",
            "symbol": "BTC" if i % 2 else "ETH",
            "side": "BUY" if i % 3 else "SELL",
            "quantity": ["0.00000001", "0.5", "1.23456789", "2"][i % 4],
        }
        if i % 5 == 0:  # limit orders: some cross and fill, some expire
            order.update(order_type="LIMIT", price=["99", "101", "10.5"][i % 3], time_in_force="IOC")
        orders.append(order)
    orders += [dict(orders[0]), dict(orders[7])]  # duplicates
    batch = engine.submit_batch(orders)
    produced = batch.to_dict()
    assert produced["results"] == [r.to_dict() for r in batch.results()]
    statuses = {r["status"] for r in produced["results"]}
    assert {"FILLED", "EXPIRED", "REJECTED"} <= statuses
    assert any(r["reject_reason"] for r in produced["results"])
    assert sum(r["duplicate"] for r in produced["results"]) == 2
    assert batch.to_dict(include_results=False) == {k: v for k, v in produced.items() if k != "results"}


def test_units_text_is_the_decimal_text() -> None:
    rng = random.Random(11)
    values = [0, 1, -1, SCALE - 1, SCALE, -SCALE - 1, 2**63 - 1, -(2**63) + 1]
    values += [rng.randint(-(2**63) + 1, 2**63 - 1) for _ in range(20_000)]
    for units in values:
        assert units_text(units) == format(from_units(units), "f")


def test_concurrent_threads_lose_nothing() -> None:
    engine = running(fee_rate=0, max_trade_risk_pct=100)
    threads_n, batches, per_batch = 6, 20, 500
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for b in range(batches):
                batch = OrderBatch()
                for i in range(per_batch):
                    side = "BUY" if i % 2 == 0 else "SELL"
                    batch.append(OrderRequest(f"t{t}-{b}-{i}", "BTC", side, "0.1"))
                result = engine.submit_batch(batch)
                assert result.filled == per_batch
                engine.submit_order(f"s{t}-{b}", "ETH", "BUY", 1)
                engine.submit_order(f"s{t}-{b}", "ETH", "BUY", 1)  # duplicate
                engine.update_market("BTC", 100, 100, 100)
                engine.account()
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    status = engine.status()
    assert status.orders_filled == threads_n * batches * (per_batch + 1)
    assert status.duplicates == threads_n * batches
    quantities = {p.symbol: p.quantity for p in engine.positions()}
    assert quantities.get("BTC", 0) == 0
    assert quantities["ETH"] == threads_n * batches


def _lagged_series(lag: int, n: int = 600, seed: int = 11) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    returns = [rng.gauss(0, 0.01) for _ in range(n)]
    a, b, pa, pb = [], [], 100.0, 100.0
    for t in range(n):
        pa *= math.exp(returns[t])
        pb *= math.exp((returns[t - lag] if t >= lag else 0.0) + rng.gauss(0, 0.003))
        a.append(pa)
        b.append(pb)
    return a, b


@pytest.mark.parametrize("lag", [1, 4, 7])
def test_lead_lag_sign_means_a_leads_b(lag: int) -> None:
    a, b = _lagged_series(lag)
    graph = PriceGraph()
    graph.add_prices("A", range(len(a)), a)
    graph.add_prices("B", range(len(b)), b)
    forward = graph.lead_lag("A", "B", max_lag=10)
    assert forward.lag == lag
    assert forward.correlation > 0.9
    assert graph.lead_lag("B", "A", max_lag=10).lag == -lag
    assert abs(graph.correlation("A", "B")) < 0.3  # unaligned returns barely correlate


def test_lead_lag_uses_time_alignment() -> None:
    a, b = _lagged_series(2)
    graph = PriceGraph()
    graph.add_prices("A", [2 * t for t in range(len(a))], a)
    # B also has a junk tick between every two of A's; only common timestamps count.
    rng = random.Random(1)
    for t, price in enumerate(b):
        graph.add_price("B", 2 * t, price)
        graph.add_price("B", 2 * t + 1, price * rng.uniform(0.5, 1.5))
    graph.add_prices("C", [len(b) + 5], [1.0])
    assert graph.lead_lag("A", "B", 5).lag == 2
    assert math.isnan(graph.correlation("A", "C"))


def test_leader_detection_across_symbols() -> None:
    rng = random.Random(5)
    n = 800
    base = [rng.gauss(0, 0.01) for _ in range(n)]
    graph = PriceGraph()
    lags = {"LEAD": 0, "F1": 1, "F2": 2, "F3": 3}
    for symbol, lag in lags.items():
        price, prices = 100.0, []
        for t in range(n):
            price *= math.exp((base[t - lag] if t >= lag else 0.0) + rng.gauss(0, 0.002))
            prices.append(price)
        graph.add_prices(symbol, range(n), prices)
    ranking = graph.leaders(["F2", "F3", "LEAD", "F1"], max_lag=5)
    assert ranking[0].symbol == "LEAD"
    assert ranking[0].leads == 3
    assert [s.symbol for s in ranking] == ["LEAD", "F1", "F2", "F3"]
    with pytest.raises(ValueError, match="symbol"):
        graph.leaders(["LEAD", "NOPE"], max_lag=2)
