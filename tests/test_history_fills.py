"""The fills of orders filled on submission are copied in SQL from their order rows, a statement
per run of a command's consecutive orders (hean.history.HistoryStore._copy_fills), and shorter
runs are bound from Python: whatever the pattern, the fills table holds what one row per fill
bound from the results held before, in the order the fills happened, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hean.db import fills, open_database, orders
from hean.history import COPY_RUN, FILL_COLUMNS, HistoryStore, _copy_ranges
from postgres_server import PostgresServer

SYMBOL = "BTCUSDT"


def outcome(rng: random.Random, seq: int, pattern: str, order_id: int) -> dict[str, Any]:
    """One order's outcome as the engine reports it: filled, rejected or a duplicate."""
    if pattern == "all":
        kind = "filled"
    elif pattern == "alternate":
        kind = "filled" if seq % 2 else "rejected"
    elif pattern == "zero":
        kind = "zero"
    else:  # runs around COPY_RUN long, rejections and duplicates between
        kind = rng.choice(["filled"] * 8 + ["rejected", "duplicate", "zero"])
    base = {"client_order_id": f"c{order_id}", "order_id": order_id, "duplicate": kind == "duplicate"}
    if kind == "rejected":
        return base | {
            "status": "REJECTED",
            "reject_reason": "MAX_TRADE_RISK",
            "filled_quantity": "0.00000000",
            "fill_price": None,
            "fee": "0.00000000",
            "order_id": 0,
        }
    filled = "0.00000000" if kind == "zero" else f"0.{seq + 1:08d}"
    return base | {
        "status": "FILLED" if kind != "zero" else "EXPIRED",
        "reject_reason": None,
        "filled_quantity": filled,
        "fill_price": "50001.00000000",
        "fee": "0.00000500",
    }


def test_copy_ranges_split_runs_of_one_command_in_order() -> None:
    rows = [("a", s) for s in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10)] + [("b", s) for s in range(COPY_RUN)]
    assert _copy_ranges(rows) == [
        (True, [("a", 0, 7)]),
        (False, [("a", 9), ("a", 10)]),
        (True, [("b", 0, COPY_RUN - 1)]),
    ]
    assert _copy_ranges([]) == []
    assert _copy_ranges([("a", 3), ("b", 4)]) == [(False, [("a", 3), ("b", 4)])]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_fills_copied_from_their_order_rows_are_the_fills_bound_before(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        url = postgres.create_database("hean_fills_" + uuid.uuid4().hex[:8])
    else:
        url = f"sqlite:///{tmp_path}/fills.db"
    rng = random.Random(7)
    entries: list[tuple[str, dict[str, str]]] = []
    expected: list[tuple[Any, ...]] = []  # FILL_COLUMNS, in the order the fills happened
    known: set[tuple[str, int]] = set()
    order_ids = iter(range(1, 10**6))
    ms = 1_796_000_000_000

    def entry(field: str, line: str) -> float:
        nonlocal ms
        ms += 7
        entries.append((f"{ms}-0", {field: line}))
        return ms / 1000.0

    def command(request_id: str, name: str, params: dict[str, Any], body: dict[str, Any]) -> float:
        """Its envelope, then its result; returns the result's time."""
        envelope = {"request_id": request_id, "command": name, "params": params, "received_at_ms": ms}
        entry("c", json.dumps(envelope))
        result = {"request_id": request_id, "command": name, "success": True, "result": body, "error": None}
        return entry("r", json.dumps(result))

    patterns = ["all", "alternate", "mixed", "zero", "mixed", "all", "market", "mixed", "twice"]
    for number, pattern in enumerate(patterns):
        request_id = f"r{number}"
        if pattern == "market":  # a market update filling two resting orders, between the others
            filled = [(oid, f"rest-{oid}") for oid in (900_001, 900_002)]
            at = command(
                request_id,
                "update_market",
                {"symbol": SYMBOL, "bid": "49998", "ask": "49999"},
                {"fills": [{"order_id": oid, "client_order_id": coid, "symbol": SYMBOL, "side": "BUY",
                            "quantity": "1", "price": "49999", "fee": "0.1"} for oid, coid in filled]},
            )  # fmt: skip
            for seq, (oid, coid) in enumerate(filled):
                expected.append((request_id, seq, oid, coid, SYMBOL, "BUY", "1", "49999", "0.1", at))
            continue
        if pattern == "twice":  # the first command's result again: nothing new is written
            entry("r", entries[1][1]["r"])
            continue
        count = rng.randint(30, 60)
        sides = ["BUY" if seq % 2 else "SELL" for seq in range(count)]
        asked = [{"client_order_id": f"c{number}-{seq}", "symbol": SYMBOL, "side": sides[seq],
                  "quantity": f"0.{seq + 1:08d}"} for seq in range(count)]  # fmt: skip
        outcomes = [outcome(rng, seq, pattern, next(order_ids)) for seq in range(count)]
        at = command(request_id, "submit_orders", {"orders": asked}, {"results": outcomes})
        for seq, got in enumerate(outcomes):
            if not got["duplicate"] and float(got["filled_quantity"]) != 0 and (request_id, seq) not in known:
                known.add((request_id, seq))
                expected.append((request_id, seq, got["order_id"], got["client_order_id"], SYMBOL, sides[seq],
                                 got["filled_quantity"], got["fill_price"], got["fee"], at))  # fmt: skip
    db = open_database(url)
    try:
        store = HistoryStore(db)
        written = 0
        for start in range(0, len(entries), 5):  # batches that split commands' entries
            written += store.write(entries[start : start + 5]).fill_rows
        with db.connect() as connection:
            rows = [
                tuple(row)
                for row in connection.execute(
                    select(*(fills.c[n] for n in FILL_COLUMNS)).order_by(fills.c.id)
                )
            ]
            order_count = connection.execute(select(orders.c.id)).all()
    finally:
        db.dispose()
    # both ways ran: runs copied in SQL and short runs bound from Python
    submitted = [row for row in expected if row[0] != "r6"]
    kinds = {ranged for ranged, _ in _copy_ranges(submitted)}
    assert kinds == {True, False}
    assert [row[:9] for row in rows] == [row[:9] for row in expected]
    assert [row[9] for row in rows] == pytest.approx([row[9] for row in expected])
    # the repeated result's fills were offered again, and ignored; so were its orders
    first = sum(1 for row in expected if row[0] == "r0")
    assert written == len(expected) + first
    assert len(order_count) == sum(
        len(json.loads(e["c"])["params"].get("orders", [])) for _, e in entries if "c" in e
    )
