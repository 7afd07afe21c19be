"""Property tests: random order/market sequences give identical results in the C++ core and
in the pure-Python reference model (outcomes, fills, positions, fees, equity, state)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hean import _core
from hean.testing.reference_engine import DEFAULT_LIMITS, SCALE, ReferenceEngine

SYMBOLS = ["BTC", "ETH", "SOL"]
CLIENT_IDS = [f"c{i}" for i in range(40)]  # a small pool, so ids repeat (idempotency)

prices = st.integers(min_value=70 * SCALE, max_value=130 * SCALE)
quantities = st.one_of(
    st.integers(min_value=SCALE // 50, max_value=3 * SCALE),  # odd sizes exercise rounding
    st.sampled_from([SCALE // 10, SCALE // 2, SCALE, 2 * SCALE]),
)

market_op = st.tuples(
    st.just("market"),
    st.sampled_from(SYMBOLS),
    prices,
    st.integers(min_value=0, max_value=2 * SCALE),  # spread
)
order_op = st.tuples(
    st.just("order"),
    st.sampled_from(CLIENT_IDS),
    st.sampled_from(SYMBOLS),
    st.sampled_from([0, 1]),  # side
    st.sampled_from([0, 1]),  # type
    quantities,
    prices,
    st.sampled_from([0, 1]),  # tif
)
cancel_op = st.tuples(st.just("cancel"), st.sampled_from(CLIENT_IDS))
control_op = st.sampled_from([("kill",), ("reset",), ("reset",), ("stop",), *[("start",)] * 6])
operations = st.lists(
    st.one_of(*[order_op] * 12, *[market_op] * 6, cancel_op, cancel_op, control_op),
    min_size=30,
    max_size=100,
)

limit_sets = st.fixed_dictionaries(
    {
        "min_notional": st.sampled_from([0, 5 * SCALE]),
        "max_notional": st.sampled_from([300 * SCALE, 50_000 * SCALE]),
        "max_open_orders": st.sampled_from([2, 20]),
        "max_open_positions": st.sampled_from([1, 2, 10]),
        "max_leverage": st.sampled_from([SCALE // 2, 3 * SCALE, 50 * SCALE]),
        "max_trade_risk_pct": st.sampled_from([SCALE // 10, 1 * SCALE, 100 * SCALE]),
        "stop_distance_pct": st.sampled_from([1, 2 * SCALE]),
        "max_daily_drawdown_pct": st.sampled_from([SCALE, 15 * SCALE]),
        "kill_switch_drawdown_pct": st.sampled_from([2 * SCALE, 30 * SCALE]),
        "max_orders_per_second": st.just(0),
        "fee_rate": st.sampled_from([0, 7, 100_000, 1_000_000]),
    }
)


def core_limits(values: dict[str, int]) -> _core.RiskLimits:
    limits = _core.RiskLimits()
    for name, value in values.items():
        setattr(limits, name, value)
    return limits


def outcome(r: _core.OrderResult) -> tuple[int, int, int, int, int, int, bool]:
    return (
        r.order_id,
        int(r.status),
        int(r.reason),
        r.filled_qty,
        r.fill_price,
        r.fee,
        r.duplicate,
    )


def fills(raw: list[_core.Fill]) -> list[tuple[Any, ...]]:
    return [(f.order_id, f.client_order_id, f.symbol, int(f.side), f.quantity, f.price, f.fee) for f in raw]


def assert_same_state(core: _core.Engine, model: ReferenceEngine) -> None:
    assert core.state.name == model.state
    positions = [
        (p.symbol, p.quantity, p.cost, p.realized_pnl, p.unrealized_pnl, p.fees) for p in core.positions()
    ]
    assert positions == model.positions()
    account = core.account()
    assert account.equity == model.equity()
    assert account.peak_equity == model.peak_equity
    assert account.open_positions == model.open_positions()
    assert account.open_order_notional == model.open_order_notional()
    assert account.fees == sum(s.fees for s in model.symbols.values())
    opened = [
        (o.order_id, o.client_order_id, o.symbol, int(o.side), o.price, o.quantity)
        for o in core.open_orders()
    ]
    assert opened == model.open_orders()


def run_sequence(
    ops: list[tuple[Any, ...]], limits: dict[str, int], starting_equity: int
) -> tuple[_core.Engine, ReferenceEngine]:
    core = _core.Engine(starting_equity=starting_equity)
    core.set_risk_limits(core_limits(limits))
    model = ReferenceEngine(starting_equity=starting_equity, limits=limits)
    assert core.start() == model.start()
    for symbol in SYMBOLS[:2]:  # the third symbol starts without market data
        core.update_market(symbol, 100 * SCALE, 100 * SCALE, 100 * SCALE)
        model.update_market(symbol, 100 * SCALE, 100 * SCALE, 100 * SCALE)
    for op in ops:
        kind = op[0]
        if kind == "market":
            _, symbol, price, spread = op
            bid, ask = price, price + spread
            got = fills(core.update_market(symbol, bid, ask, price + spread // 2))
            assert got == model.update_market(symbol, bid, ask, price + spread // 2)
        elif kind == "order":
            _, cid, symbol, side, order_type, qty, price, tif = op
            limit_price = price if order_type == 1 else 0
            got_result = core.submit_order(
                cid,
                symbol,
                _core.Side(side),
                _core.OrderType(order_type),
                qty,
                limit_price,
                _core.TimeInForce(tif),
            )
            want = model.submit(cid, symbol, side, order_type, qty, limit_price, tif)
            assert outcome(got_result) == want
        elif kind == "cancel":
            assert core.cancel_order(op[1]) == model.cancel(op[1])
        elif kind == "kill":
            assert core.kill_switch("command") == model.kill_switch()
        elif kind == "reset":
            assert core.reset_kill_switch() == model.reset_kill_switch()
        elif kind == "start":
            assert core.start() == model.start()
        else:
            assert core.stop() == model.stop()
        assert_same_state(core, model)
    return core, model


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_core_matches_reference_model_with_default_limits(ops: list[tuple[Any, ...]]) -> None:
    run_sequence(ops, DEFAULT_LIMITS, 10_000 * SCALE)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=operations,
    limits=limit_sets,
    starting_equity=st.sampled_from([200 * SCALE, 1_000 * SCALE, 10_000 * SCALE]),
)
def test_core_matches_reference_model_with_random_limits(
    ops: list[tuple[Any, ...]], limits: dict[str, int], starting_equity: int
) -> None:
    core, _ = run_sequence(ops, limits, starting_equity)
    # Whatever happened, the snapshot round-trips exactly.
    clone = _core.Engine()
    clone.restore(core.snapshot())
    assert clone.snapshot() == core.snapshot()


@settings(max_examples=100, deadline=None)
@given(ops=operations)
def test_batch_matches_single_calls(ops: list[tuple[Any, ...]]) -> None:
    """submit_batch gives exactly the outcomes of the same orders submitted one by one."""
    orders = [op for op in ops if op[0] == "order"]
    single = _core.Engine()
    batched = _core.Engine()
    for engine in (single, batched):
        engine.set_risk_limits(core_limits(DEFAULT_LIMITS))
        engine.start()
        for symbol in SYMBOLS:
            engine.update_market(symbol, 100 * SCALE, 101 * SCALE, 100 * SCALE)
    want = [
        outcome(
            single.submit_order(
                cid,
                sym,
                _core.Side(side),
                _core.OrderType(kind),
                qty,
                price if kind == 1 else 0,
                _core.TimeInForce(tif),
            )
        )
        for _, cid, sym, side, kind, qty, price, tif in orders
    ]
    result = batched.submit_batch(
        [o[1] for o in orders],
        [o[2] for o in orders],
        bytes(o[3] for o in orders),
        bytes(o[4] for o in orders),
        [o[5] for o in orders],
        [o[6] if o[4] == 1 else 0 for o in orders],
        bytes(o[7] for o in orders),
    )
    status = list(result.status)
    reason = list(result.reason)
    filled = memoryview(result.filled_qty).cast("q").tolist()
    price = memoryview(result.fill_price).cast("q").tolist()
    fee = memoryview(result.fee).cast("q").tolist()
    ids = memoryview(result.order_id).cast("Q").tolist()
    dup = [bool(d) for d in result.duplicate]
    got = list(zip(ids, status, reason, filled, price, fee, dup, strict=True))
    assert got == want
    assert single.snapshot() == batched.snapshot()
