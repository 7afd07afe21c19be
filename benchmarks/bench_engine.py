"""Benchmark of the C++ order engine: orders/s and ns/order for single calls and for
batches of 1k / 10k, side by side with the pure-Python reference model (the baseline) in
the same run. Prints a table and exits 0; it never fails on speed.

    .venv/bin/python benchmarks/bench_engine.py
"""

from __future__ import annotations

import sys
import time
from array import array
from collections.abc import Callable

from hean import _core
from hean.engine import TradingEngine
from hean.testing.reference_engine import DEFAULT_LIMITS, SCALE, ReferenceEngine

LIMITS = {**DEFAULT_LIMITS, "max_trade_risk_pct": 100 * SCALE, "max_orders_per_second": 0}


def workload(n: int, tag: str) -> tuple[list[str], list[str], bytes, bytes, array, array, bytes]:
    """n orders: per 10, six market orders (buy/sell alternating), two IOC limits that
    expire and two crossing limits that fill. Columns as the core takes them."""
    ids = [f"{tag}-{i}" for i in range(n)]
    symbols = ["BTC"] * n
    sides, kinds, tifs = bytearray(), bytearray(), bytearray()
    qtys, prices = array("q"), array("q")
    for i in range(n):
        k, side = i % 10, i % 2
        sides.append(side)
        qtys.append(SCALE // 10)
        if k <= 5:
            kinds.append(0), tifs.append(0), prices.append(0)
        elif k <= 7:
            kinds.append(1), tifs.append(1), prices.append((50 if side == 0 else 150) * SCALE)
        else:
            kinds.append(1), tifs.append(0), prices.append(100 * SCALE)
    return ids, symbols, bytes(sides), bytes(kinds), qtys, prices, bytes(tifs)


def new_core() -> _core.Engine:
    engine = _core.Engine()
    limits = _core.RiskLimits()
    for name, value in LIMITS.items():
        setattr(limits, name, value)
    engine.set_risk_limits(limits)
    engine.start()
    engine.update_market("BTC", 100 * SCALE, 100 * SCALE, 100 * SCALE)
    return engine


def new_model() -> ReferenceEngine:
    model = ReferenceEngine(limits=LIMITS)
    model.start()
    model.update_market("BTC", 100 * SCALE, 100 * SCALE, 100 * SCALE)
    return model


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def model_rate(n: int) -> float:
    model = new_model()
    ids, symbols, sides, kinds, qtys, prices, tifs = workload(n, "m")
    submit = model.submit

    def run() -> None:
        for i in range(n):
            submit(ids[i], symbols[i], sides[i], kinds[i], qtys[i], prices[i], tifs[i])

    return n / timed(run)


def core_single_rate(n: int) -> float:
    engine = new_core()
    ids, symbols, sides, kinds, qtys, prices, tifs = workload(n, "s")
    side_enum = [_core.Side(s) for s in sides]
    kind_enum = [_core.OrderType(k) for k in kinds]
    tif_enum = [_core.TimeInForce(t) for t in tifs]
    submit = engine.submit_order

    def run() -> None:
        for i in range(n):
            submit(ids[i], symbols[i], side_enum[i], kind_enum[i], qtys[i], prices[i], tif_enum[i])

    return n / timed(run)


def typed_single_rate(n: int) -> float:
    engine = TradingEngine(risk_limits={"max_trade_risk_pct": 100, "max_orders_per_second": 0})
    engine.start()
    engine.update_market("BTC", 100, 100, 100)

    def run() -> None:
        for i in range(n):
            engine.submit_order(f"t-{i}", "BTC", "BUY" if i % 2 == 0 else "SELL", "0.1")

    return n / timed(run)


def core_batch_rate(batch: int, total: int) -> float:
    engine = new_core()
    batches = [workload(batch, f"b{b}") for b in range(total // batch)]
    warm = workload(batch, "warm")
    engine.submit_batch(*warm)

    def run() -> None:
        for columns in batches:
            engine.submit_batch(*columns)

    return total / timed(run)


def main() -> int:
    model_single = model_rate(50_000)
    rows = [
        ("single call, hean._core binding", core_single_rate(200_000), model_single),
        ("single call, hean.engine typed API", typed_single_rate(50_000), model_single),
        ("batch of 1,000 (submit_batch)", core_batch_rate(1_000, 2_000_000), model_single),
        ("batch of 10,000 (submit_batch)", core_batch_rate(10_000, 2_000_000), model_single),
    ]
    print("HEAN order engine: mixed market/IOC/limit flow, one symbol, one core")
    print("baseline: pure-Python reference model (hean/testing/reference_engine.py), same orders")
    header = f"{'figure':38} {'orders/s':>12} {'ns/order':>9} {'baseline/s':>11} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for name, rate, base in rows:
        print(f"{name:38} {rate:12,.0f} {1e9 / rate:9,.0f} {base:11,.0f} {rate / base:6,.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
