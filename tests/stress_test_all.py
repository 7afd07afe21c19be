"""Stress tests of the compiled engine through its Python binding (run explicitly:
`pytest tests/stress_test_all.py`; tests/test_engine_stress.py also collects them)."""

from __future__ import annotations

import gc
from array import array

import psutil

from hean.engine import OrderBatch, TradingEngine

TOTAL_ORDERS = 10_000_000
BATCH = 10_000
WARMUP_ORDERS = 1_000_000  # > the idempotency window (100,000), so caches are full
MAX_RSS_GROWTH = 5 * 1024 * 1024
QTY = 10_000_000  # 0.1 in 1e-8 units
PRICE = 100 * 100_000_000


def _template() -> tuple[OrderBatch, list[str]]:
    """One batch's columns; only the client order ids change from batch to batch.

    Per 100 orders: 60 market orders (buy/sell alternating), 20 IOC limits that expire,
    20 crossing limits that fill (buy/sell), and order 97 repeats order 96's id.
    """
    batch = OrderBatch()
    symbol = "BTC"
    for i in range(BATCH):
        k = i % 10
        side = i % 2
        if k <= 5:
            kind, tif, price = 0, 0, 0
        elif k <= 7:
            kind, tif, price = 1, 1, 50 * 100_000_000 if side == 0 else 150 * 100_000_000
        else:
            kind, tif, price = 1, 0, PRICE
        batch.symbols.append(symbol)
        batch.sides.append(side)
        batch.order_types.append(kind)
        batch.time_in_force.append(tif)
        batch.quantities.append(QTY)
        batch.prices.append(price)
    suffixes = [str(i if i % 100 != 97 else i - 1) for i in range(BATCH)]
    return batch, suffixes


def test_stress_memory_leak_detection() -> None:
    """10M orders through the binding in batches: RSS after warm-up grows < 5 MB."""
    engine = TradingEngine(risk_limits={"max_orders_per_second": 0, "fee_rate": 0, "max_trade_risk_pct": 100})
    engine.start()
    engine.update_market("BTC", 100, 100, 100)
    template, suffixes = _template()
    process = psutil.Process()
    rss_after_warmup = 0
    for b in range(TOTAL_ORDERS // BATCH):
        if b * BATCH == WARMUP_ORDERS:
            gc.collect()
            rss_after_warmup = process.memory_info().rss
        prefix = f"b{b}-"
        template.client_order_ids = [prefix + s for s in suffixes]
        result = engine.submit_batch(template)
        assert (result.filled, result.expired, result.rejected, result.duplicates) == (
            8_000,
            2_000,
            0,
            100,
        )
        # A resting order per batch, cancelled or filled, so the book is exercised too.
        rest = engine.submit_order(f"r{b}", "BTC", "BUY", "0.1", "LIMIT", 99)
        assert rest.status.value == "RESTING"
        if b % 2:
            assert engine.cancel_order(f"r{b}").cancelled
        else:
            assert len(engine.update_market("BTC", 99, 99, 99).fills) == 1
            engine.submit_order(f"x{b}", "BTC", "SELL", "0.1")  # flatten
            engine.update_market("BTC", 100, 100, 100)
        del result
    gc.collect()
    growth = process.memory_info().rss - rss_after_warmup
    status = engine.status()
    assert status.orders_filled == TOTAL_ORDERS // 100 * 80 + TOTAL_ORDERS // BATCH
    assert status.account.open_orders == 0
    assert all(p.quantity == 0 for p in engine.positions())
    assert growth < MAX_RSS_GROWTH, f"RSS grew {growth / 1e6:.1f} MB after warm-up"
    assert isinstance(template.quantities, array)
