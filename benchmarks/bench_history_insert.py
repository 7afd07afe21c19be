"""The history writer's inserts: orders and their fills into the database, the way
`HistoryStore.write` does it (the statement compiled once, the driver's executemany:
`HistoryStore._insert_many_ignoring`) against SQLAlchemy's own execute of the same statement,
in turns, in one run, on a fresh SQLite file (or DATABASE_URL).

Prints CPU microseconds per order (an order row and its fill row), min and median over the
rounds, and how the cost grows with the tables when the ids are random, as clients' ids are.
Never fails on speed.

    .venv/bin/python benchmarks/bench_history_insert.py [--rounds N] [--orders-per-round N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hean.db import fills, open_database, orders
from hean.history import FILL_COLUMNS, ORDER_COLUMNS, HistoryStore


def rows(count: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """`count` filled market orders with random ids, 100 per command, and their fills."""
    at = time.time()
    order_rows, fill_rows = [], []
    for i in range(count):
        request_id = uuid.uuid4().hex if i % 100 == 0 else order_rows[-1][0]
        client_order_id = uuid.uuid4().hex
        order = dict(
            request_id=request_id,
            seq=i % 100,
            client_order_id=client_order_id,
            order_id=i,
            symbol="BTCUSDT",
            side="BUY",
            order_type="MARKET",
            time_in_force="GTC",
            quantity="0.001",
            price=None,
            status="FILLED",
            reject_reason=None,
            filled_quantity="0.00100000",
            fill_price="50001.00000000",
            fee="0.05000100",
            duplicate=False,
            received_at=at,
            executed_at=at,
        )
        order_rows.append(tuple(order[name] for name in ORDER_COLUMNS))
        fill = dict(order, quantity=order["filled_quantity"], price=order["fill_price"])
        fill_rows.append(tuple(fill[name] for name in FILL_COLUMNS))
    return order_rows, fill_rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20, help="rounds per way (they alternate)")
    parser.add_argument("--orders-per-round", type=int, default=2500)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="hean-bench-")  # removed at exit
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{scratch.name}/history.db"
    db = open_database(url)
    store = HistoryStore(db)
    n = args.orders_per_round

    def compiled_once(order_rows: list[tuple[Any, ...]], fill_rows: list[tuple[Any, ...]]) -> None:
        with db.begin() as connection:
            store._insert_many_ignoring(connection, orders, order_rows)
            store._insert_many_ignoring(connection, fills, fill_rows)

    def sqlalchemy_execute(order_rows: list[tuple[Any, ...]], fill_rows: list[tuple[Any, ...]]) -> None:
        with db.begin() as connection:
            for table, columns, table_rows in (
                (orders, ORDER_COLUMNS, order_rows),
                (fills, FILL_COLUMNS, fill_rows),
            ):
                statement = store._insert_ignoring(table, ["request_id", "seq"])
                connection.execute(statement, [dict(zip(columns, row, strict=True)) for row in table_rows])

    ways = {
        "SQLAlchemy's execute (before)": sqlalchemy_execute,
        "compiled once, executemany (now)": compiled_once,
    }
    took: dict[str, list[float]] = {name: [] for name in ways}
    print(f"{db.dialect.name}: {args.rounds} rounds of {n:,} orders (+ fills) per way, in turns", flush=True)
    for round_no in range(args.rounds):
        for name, way in ways.items():
            order_rows, fill_rows = rows(n)
            started = time.process_time()
            way(order_rows, fill_rows)
            took[name].append((time.process_time() - started) / n * 1e6)
        if (round_no + 1) % 5 == 0:
            print(f"  round {round_no + 1}/{args.rounds}", flush=True)
    total = 2 * args.rounds * n
    print(f"\nCPU us per order and its fill (this process; the tables grew to {total:,} orders)")
    print(f"{'way':36} {'min':>7} {'median':>7} {'first 5':>8} {'last 5':>7}")
    for name, values in took.items():
        print(
            f"{name:36} {min(values):7.1f} {statistics.median(values):7.1f} "
            f"{statistics.median(values[:5]):8.1f} {statistics.median(values[-5:]):7.1f}"
        )
    before, now = (statistics.median(v) for v in took.values())
    print(f"\nnow / before (medians): {now / before:.2f}x")
    db.dispose()


if __name__ == "__main__":
    main()
