"""The history writer's inserts: orders and their fills into the database, the way
`HistoryStore.write` does it (statements compiled once, the driver's executemany for the order
rows, the fills of orders filled on submission copied from them in SQL:
`HistoryStore._insert_fills_of_orders`), in turns with what it did before, in one run, on a
fresh SQLite file (or DATABASE_URL):
- `sqlalchemy`: SQLAlchemy's own execute of the same statements, orders and fills;
- `lookup`: the driver's executemany of both, through sqlite3's own lookup of adapters for
  None and bools (hean.db registers its own);
- `bound`: the driver's executemany of both, the fill rows bound from Python;
- `now`: as the writer does it.

Prints CPU microseconds per order (an order row and its fill row), min and median over the
rounds, and how the cost grows with the tables when the ids are random, as clients' ids are.
Never fails on speed.

    .venv/bin/python benchmarks/bench_history_insert.py [--rounds N] [--orders-per-round N] [--ways W]

CPU time here moves 10% and more between rounds; for a few percent, count instructions of
one way at a time: `valgrind --tool=callgrind .venv/bin/python
benchmarks/bench_history_insert.py --rounds 4 --ways bound` (then `--ways now`), and compare
the totals less a run with `--rounds 0`.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
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

NOW = "executemany, fills copied (now)"
#: The adapters hean.db registers (for None and bools), removed in the "adapter lookup" way.
_ADAPTED = [(type(None), sqlite3.PrepareProtocol), (bool, sqlite3.PrepareProtocol)]


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
    parser.add_argument(
        "--ways",
        default="sqlalchemy,lookup,bound,now",
        help="which ways, in turns: sqlalchemy, lookup, bound, now (one alone under valgrind: see above)",
    )
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="hean-bench-")  # removed at exit
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{scratch.name}/history.db"
    db = open_database(url)
    store = HistoryStore(db)
    n = args.orders_per_round

    def bound(order_rows: list[tuple[Any, ...]], fill_rows: list[tuple[Any, ...]]) -> None:
        with db.begin() as connection:
            store._insert_many_ignoring(connection, orders, order_rows)
            store._insert_many_ignoring(connection, fills, fill_rows)

    def copied(order_rows: list[tuple[Any, ...]], fill_rows: list[tuple[Any, ...]]) -> None:
        """As HistoryStore.write: the orders bound, their fills (all filled: one run per
        command) copied from them in SQL."""
        with db.begin() as connection:
            store._insert_many_ignoring(connection, orders, order_rows)
            store._insert_fills_of_orders(connection, order_rows)

    def sqlalchemy_execute(order_rows: list[tuple[Any, ...]], fill_rows: list[tuple[Any, ...]]) -> None:
        with db.begin() as connection:
            for table, columns, table_rows in (
                (orders, ORDER_COLUMNS, order_rows),
                (fills, FILL_COLUMNS, fill_rows),
            ):
                statement = store._insert_ignoring(table, ["request_id", "seq"])
                connection.execute(statement, [dict(zip(columns, row, strict=True)) for row in table_rows])

    def adapter_lookup(order_rows: list[tuple[Any, ...]], fill_rows: list[tuple[Any, ...]]) -> None:
        """`bound`, with sqlite3's adapter lookup for None and bools (before hean.db registered
        its own)."""
        saved = {key: sqlite3.adapters.pop(key) for key in _ADAPTED if key in sqlite3.adapters}
        try:
            bound(order_rows, fill_rows)
        finally:
            sqlite3.adapters.update(saved)

    every = {
        "sqlalchemy": ("SQLAlchemy's execute (before)", sqlalchemy_execute),
        "lookup": ("executemany, adapter lookup (before)", adapter_lookup),
        "bound": ("executemany, fills bound (before)", bound),
        "now": (NOW, copied),
    }
    chosen = args.ways.split(",")
    if not chosen or set(chosen) - set(every):
        parser.error(f"--ways: a comma-separated list of {', '.join(every)}")
    ways = dict(every[key] for key in chosen)
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
    total = len(ways) * args.rounds * n
    print(f"\nCPU us per order and its fill (this process; the tables grew to {total:,} orders)")
    print(f"{'way':38} {'min':>7} {'median':>7} {'first 5':>8} {'last 5':>7}")
    for name, values in took.items():
        if not values:
            continue
        print(
            f"{name:38} {min(values):7.1f} {statistics.median(values):7.1f} "
            f"{statistics.median(values[:5]):8.1f} {statistics.median(values[-5:]):7.1f}"
        )
    now = statistics.median(took[NOW]) if took.get(NOW) else None
    for name, values in took.items():
        if now is not None and values and name.endswith("(before)"):
            print(f"now / {name.removesuffix(' (before)')} (medians): {now / statistics.median(values):.2f}x")
    db.dispose()


if __name__ == "__main__":
    main()
