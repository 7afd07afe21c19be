"""Benchmark of the C++ order engine: orders/s and ns/order for single calls and for
batches of 1k / 10k, side by side with the pure-Python reference model (the baseline) in
the same run; then the engine worker's own steps for a 100-order `submit_orders` command
(reading its queued message's orders into columns, straight from the text against the message
parsed whole and its order dicts read; reading the orders' JSON params into columns, applying
them, encoding them for the engine log, writing the results as JSON), through the core's
columnar entry points and through the Python code they replaced (the baseline), min of many
runs in CPU time; then the engine snapshot's size and what compressing it costs, and its
checksum (format 2's XXH3) and restore against format 1's FNV-1a. Prints tables and exits 0;
it never fails on speed.

    .venv/bin/python benchmarks/bench_engine.py
"""

from __future__ import annotations

import sys
import time
import uuid
import zlib
from array import array
from collections.abc import Callable
from typing import Any

from hean import _core, fastjson
from hean.celery_wire import batch_envelopes, batch_frame, escape_envelope
from hean.engine import OrderBatch, TradingEngine, orders_from_params, snapshot_as_format_1
from hean.messages import envelope_json
from hean.testing.reference_engine import DEFAULT_LIMITS, SCALE, ReferenceEngine
from hean.topology import BATCH_TASKS, ENGINE_QUEUE
from workers.app import app

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


# -- the engine worker's steps for one 100-order command ------------------------------------------


def command_orders(tag: str, n: int = 100) -> list[dict[str, Any]]:
    """The params of a 100-order command as the edge forwards them: per 10 orders, seven market
    orders, a resting limit, an IOC limit that expires and one under the minimum notional."""
    orders: list[dict[str, Any]] = []
    for i in range(n):
        order: dict[str, Any] = {
            "client_order_id": f"{tag}-{i}",
            "symbol": "BTCUSDT",
            "side": "BUY" if i % 2 else "SELL",
            "quantity": "0.001",
        }
        if i % 10 == 7:
            order.update(order_type="LIMIT", price="49000.5", time_in_force="GTC")
        elif i % 10 == 8:
            order.update(order_type="LIMIT", price="52000", time_in_force="IOC", side="SELL")
        elif i % 10 == 9:
            order["quantity"] = "0.00001"
        orders.append(order)
    return orders


def worker_engine() -> TradingEngine:
    engine = TradingEngine(
        risk_limits={
            "max_orders_per_second": 0,
            "max_open_orders": 1_000_000,
            "max_trade_risk_pct": 100,
            "max_leverage": 1000,
        }
    )
    engine.update_market("BTCUSDT", "50000", "50001", "50000.5")
    engine.start()
    return engine


def min_cpu_us(
    run: Callable[[Any], object],
    prepare: Callable[[list[dict[str, Any]]], Any] = lambda orders: orders,
    repeat: int = 300,
    n: int = 100,
) -> float:
    """Least process CPU time of `run(prepare(orders))` (only `run` timed) over `repeat` fresh
    commands, in us per order."""
    best = float("inf")
    for r in range(repeat):
        prepared = prepare(command_orders(f"r{r}-{time.monotonic_ns()}", n))
        started = time.process_time()
        run(prepared)
        best = min(best, time.process_time() - started)
    return best / n * 1e6


def worker_rows() -> list[tuple[str, float, float]]:
    """(step, us per order through the core's columns, us per order the Python way)."""
    engine = worker_engine()

    def python_read(orders: list[dict[str, Any]]) -> OrderBatch:
        batch = OrderBatch()
        for params in orders:
            batch.append_params(params)
        return batch

    def python_all(orders: list[dict[str, Any]]) -> bytes:
        result = engine.submit_batch(python_read(orders))
        fastjson.dumpb({"orders": orders})
        return fastjson.dumpb(result.to_dict())

    def core_read(orders: list[dict[str, Any]]) -> _core.OrderColumns:
        columns = _core.read_order_params(orders)
        assert columns is not None
        return columns

    def core_all(orders: list[dict[str, Any]]) -> bytes:
        columns = core_read(orders)
        result = engine.submit_batch(columns)
        columns.to_bytes()
        return fastjson.dumpb({**result.to_dict(False), "results": fastjson.fragment(result.results_json())})

    def queued(orders: list[dict[str, Any]]) -> str:
        """The batch message the web queues for one submit_orders command of `orders`."""
        params = fastjson.dumps({"orders": orders})
        encoded = envelope_json("r-1", "submit_orders", params, "sid-1", time.time() * 1e3)
        return frame.message([escape_envelope(encoded)], ["r-1"])

    def message_parsed(raw: str) -> object:
        return orders_from_params(batch_envelopes(raw)[0]["params"]["orders"])

    def message_cut(raw: str) -> object:
        return batch_envelopes(raw, cut_orders=True)[0]["params"]["orders"].columns()

    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], ENGINE_QUEUE, "batch-1", "x")
    applied = engine.submit_batch(python_read(command_orders("warm")))
    return [
        (
            "the queued message into columns",
            min_cpu_us(message_cut, queued),
            min_cpu_us(message_parsed, queued),
        ),
        ("read the params into columns", min_cpu_us(orders_from_params), min_cpu_us(python_read)),
        (
            "the orders for the engine log",
            min_cpu_us(lambda columns: columns.to_bytes(), core_read),
            min_cpu_us(lambda orders: fastjson.dumpb({"orders": orders})),
        ),
        (
            "results of an applied batch as JSON",
            min_cpu_us(lambda _: applied.results_json()),
            min_cpu_us(lambda _: fastjson.dumps(applied.to_dict()["results"])),
        ),
        ("read, apply, log and result encoded", min_cpu_us(core_all), min_cpu_us(python_all)),
    ]


def full_window_engine(client_ids: Callable[[int], str]) -> TradingEngine:
    """An engine whose idempotency window is full (100,000 client order ids, the default),
    as it is after 4 s at 25,000 orders/s."""
    engine = worker_engine()
    for k in range(1_000):
        batch = OrderBatch()
        for i in range(100):
            batch.append_params(
                {
                    "client_order_id": client_ids(k * 100 + i),
                    "symbol": "BTCUSDT",
                    "side": "BUY" if i % 2 else "SELL",
                    "quantity": "0.001",
                }
            )
        engine.submit_batch(batch)
    return engine


def snapshot_rows() -> list[tuple[str, int, int, float, float]]:
    """(ids, level, bytes, CPU ms to compress, CPU ms to decompress) per zlib level; level 0 is
    the snapshot as the core writes it (its CPU: taking it)."""
    rows = []
    for name, ids in (("uuid4", lambda i: str(uuid.uuid4())), ("numbered", lambda i: f"bot-7-{i}")):
        engine = full_window_engine(ids)
        taken = min_cpu_ms(engine.snapshot)
        data = engine.snapshot()
        rows.append((name, 0, len(data), taken, 0.0))
        for level in (1, 3, 6):
            packed = zlib.compress(data, level)
            rows.append(
                (
                    name,
                    level,
                    len(packed),
                    min_cpu_ms(lambda data=data, level=level: zlib.compress(data, level)),
                    min_cpu_ms(lambda packed=packed: zlib.decompress(packed)),
                )
            )
    return rows


def checksum_rows() -> list[tuple[str, float, float]]:
    """(step, format 2 ms, format 1 ms) for one snapshot with 100,000 UUID client order ids:
    its checksum alone, and a whole restore (which checks it). Format 1 is the same snapshot
    with FNV-1a's checksum, as versions before format 2 wrote it."""
    engine = full_window_engine(lambda i: str(uuid.uuid4()))
    data = engine.snapshot()
    old = snapshot_as_format_1(data)
    summed, body = data[:-8], old[:-8]
    return [
        (
            "checksum",
            min_cpu_ms(lambda: _core.snapshot_checksum(summed, 2)),
            min_cpu_ms(lambda: _core.snapshot_checksum(body, 1)),
        ),
        (
            "restore (checks it)",
            min_cpu_ms(lambda: engine.restore(data)),
            min_cpu_ms(lambda: engine.restore(old)),
        ),
    ]


def min_cpu_ms(run: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best * 1e3


def table(title: str, header: str, lines: list[str]) -> None:
    """One of this benchmark's tables: its title lines, the header, a rule, the rows."""
    print(title)
    print(header)
    print("-" * len(header))
    for line in lines:
        print(line)
    print()


def main() -> int:
    model_single = model_rate(50_000)
    rows = [
        ("single call, hean._core binding", core_single_rate(200_000), model_single),
        ("single call, hean.engine typed API", typed_single_rate(50_000), model_single),
        ("batch of 1,000 (submit_batch)", core_batch_rate(1_000, 2_000_000), model_single),
        ("batch of 10,000 (submit_batch)", core_batch_rate(10_000, 2_000_000), model_single),
    ]
    table(
        "HEAN order engine: mixed market/IOC/limit flow, one symbol, one core\n"
        "baseline: pure-Python reference model (hean/testing/reference_engine.py), same orders",
        f"{'figure':38} {'orders/s':>12} {'ns/order':>9} {'baseline/s':>11} {'ratio':>7}",
        [
            f"{name:38} {rate:12,.0f} {1e9 / rate:9,.0f} {base:11,.0f} {rate / base:6,.1f}x"
            for name, rate, base in rows
        ],
    )
    table(
        "Engine worker, one 100-order submit_orders command (min of 300, process CPU)\n"
        "baseline: the message parsed whole, then its order dicts read by the core (read_order_params);\n"
        "the Python reader (OrderBatch.append_params) and BatchResult.to_dict + orjson",
        f"{'step':38} {'us/order':>9} {'baseline':>9} {'ratio':>7}",
        [f"{name:38} {ours:9.3f} {base:9.3f} {base / ours:6.1f}x" for name, ours, base in worker_rows()],
    )
    lines, raw = [], 0
    for name, level, size, cpu, unpack in snapshot_rows():
        raw = size if level == 0 else raw
        label = "(raw: taking it)" if level == 0 else str(level)
        lines.append(f"{name:17} {label:>16} {size / 1e6:6.2f} {size / raw:6.2f}x {cpu:7.1f} {unpack:9.1f}")
    table(
        "Engine snapshot with a full idempotency window (100,000 client order ids), as stored\n"
        "(workers.shard.SnapshotWriter: zlib level 1); baseline: the snapshot uncompressed (min of 5)",
        f"{'client order ids':17} {'zlib level':>16} {'MB':>6} {'vs raw':>7} {'CPU ms':>7} {'unpack ms':>9}",
        lines,
    )
    table(
        "Snapshot checksum: format 2 (XXH3) against format 1 (FNV-1a), the same 7.8 MB snapshot\n"
        "(100,000 UUID client order ids), CPU ms, min of 5",
        f"{'step':22} {'XXH3':>7} {'FNV-1a':>7} {'ratio':>7}",
        [
            f"{step:22} {new_ms:7.2f} {old_ms:7.2f} {old_ms / new_ms:6.1f}x"
            for step, new_ms, old_ms in checksum_rows()
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
