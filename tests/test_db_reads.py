"""Reads of the history that can take long (hean/db_reads.py): under eventlet, on SQLite, they
run in a native thread and the web process's other green threads run meanwhile; their rows are
those SQLAlchemy reads, typed the same; a read past its budget is interrupted. Real SQLite files,
a real eventlet hub (in a child process: the test process is not monkey-patched). At most
READS_AT_ONCE run at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hean import db_reads
from hean.command_journal import HistoryUnavailable
from hean.db import commands, open_database, orders
from hean.history import HistoryFilter, HistoryStore
from support import child_report

_ROWS = 3000


def _filled(path: Path) -> None:
    """A history of _ROWS orders of 3 symbols (every 7th a duplicate, every 5th without a price)
    and 600 commands, half of them answered."""
    db = open_database(f"sqlite:///{path}")
    with db.begin() as connection:
        connection.execute(
            orders.insert(),
            [
                {
                    "request_id": f"r-{i // 10}",
                    "seq": i % 10,
                    "client_order_id": f"c-{i}",
                    "order_id": i,
                    "symbol": ("BTC/USDT", "ETH/USDT", "SOL/USDT")[i % 3],
                    "side": "BUY" if i % 2 else "SELL",
                    "status": "REJECTED" if i % 11 == 0 else "FILLED",
                    "quantity": "1.5",
                    "price": None if i % 5 == 0 else "100.25",
                    "duplicate": i % 7 == 0,
                    "received_at": 1_700_000_000.0 + i / 10,
                    "executed_at": 1_700_000_000.0 + i / 10 + 0.001,
                }
                for i in range(_ROWS)
            ],
        )
        connection.execute(
            commands.insert(),
            [
                {
                    "request_id": f"q-{i}",
                    "command": "submit_order",
                    "params": json.dumps({"symbol": "BTC/USDT"}),
                    "received_at": 1_700_000_000.0 + i,
                    "ack_ms": 1.5,
                    "result": json.dumps({"request_id": f"q-{i}", "success": True}) if i % 2 else None,
                    "runs": 1 if i % 2 else 0,
                }
                for i in range(600)
            ],
        )
    db.dispose()


def _statements() -> list[object]:
    return [
        select(orders).where(orders.c.symbol == "ETH/USDT").order_by(orders.c.id.desc()).limit(50),
        select(orders).where(orders.c.duplicate.is_(True), orders.c.price.is_(None)).order_by(orders.c.id),
        select(orders.c.id, orders.c.executed_at).where(orders.c.executed_at >= 1_700_000_100.05).limit(20),
        select(commands).where(commands.c.request_id.in_([f"q-{i}" for i in range(0, 600, 3)] + ["nope"])),
        select(func.count()).select_from(commands).where(commands.c.result.is_(None)),
        select(func.count()).select_from(orders).where(orders.c.status == "REJECTED"),
    ]


#: A count of every pair of orders, an expression evaluated for each: about a second of SQLite.
_SLOW = (
    "select(func.count()).select_from(a.join(b, true()))"
    ".where(func.length(a.c.client_order_id + b.c.symbol) > 3)"
)

_UNDER_EVENTLET = f"""
import eventlet
eventlet.monkey_patch()
import json, pickle, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from sqlalchemy import func, select, true
from hean import db_reads
from hean.db import open_database, orders
from hean.history import HistoryFilter, HistoryStore
from test_db_reads import _statements

db = open_database("sqlite:///" + sys.argv[1])
a, b = orders.alias("a"), orders.alias("b")
report = {{"patched": db_reads.eventlet_patched()}}
report["off_the_hub"] = [[list(map(repr, row)) for row in rows] for rows in db_reads.read(db, _statements())]
store = HistoryStore(db)
page, cursor = store.orders(HistoryFilter(symbol="SOL/USDT", limit=5))
report["page"] = [[page[0]["id"], page[0]["duplicate"], page[0]["price"]], cursor]
report["lookup"] = sorted(store.lookup(["q-1", "q-2", "nope"]))

ticks = []
def ticker():
    while True:
        ticks.append(time.monotonic())
        eventlet.sleep(0.001)
eventlet.spawn(ticker)
eventlet.sleep(0.01)
began = time.monotonic()
slow = db_reads.read(db, [{_SLOW}])
report["slow"] = [slow[0][0][0], time.monotonic() - began, sum(1 for t in ticks if t > began)]
ticks.clear()
try:
    db_reads.read(db, [{_SLOW}], budget_s=0.05)
except db_reads.ReadTooLong as exc:
    report["too_long"] = str(exc)
report["after"] = db_reads.read(db, [orders.select().where(orders.c.id == 1)])[0][0][:3]

# four at once: READS_AT_ONCE run, the others wait their turn; all are answered
db_reads.running[1] = 0
pool = eventlet.GreenPool()
counts = list(pool.imap(lambda _: db_reads.read(db, [{_SLOW}])[0][0][0], range(4)))
report["at_once"] = [counts, db_reads.running[1], db_reads.READS_AT_ONCE]
print(json.dumps(report))
"""


def test_a_read_under_eventlet_runs_off_the_hub_and_reads_what_sqlalchemy_reads(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    _filled(path)
    report = child_report(_UNDER_EVENTLET, str(path))
    assert report["patched"] is True

    # the same rows, typed the same (reprs: True is not 1, None is not ''), as SQLAlchemy gives
    db = open_database(f"sqlite:///{path}")
    assert not db_reads.eventlet_patched()
    with db.connect() as connection:
        expected = [[list(map(repr, row)) for row in connection.execute(s)] for s in _statements()]
    assert report["off_the_hub"] == expected
    assert [len(rows) for rows in expected] == [50, 86, 20, 200, 1, 1] and expected[4] == [["300"]]
    assert "True" in {row[orders.columns.keys().index("duplicate")] for row in expected[1]}
    store = HistoryStore(db)
    page, cursor = store.orders(HistoryFilter(symbol="SOL/USDT", limit=5))
    assert report["page"] == [[page[0]["id"], page[0]["duplicate"], page[0]["price"]], cursor]
    assert report["lookup"] == sorted(store.lookup(["q-1", "q-2", "nope"])) == ["q-1", "q-2"]

    # the hub ran other green threads while SQLite counted (on the hub, none ran)
    count, took, ticks = report["slow"]
    assert count == _ROWS**2
    assert ticks >= 10, report["slow"]
    assert took > 0.05  # so the budget below is what stops the same read
    assert "took over 0.05 s" in report["too_long"]
    assert report["after"] == [1, "r-0", 0]  # the next read runs as usual
    counts, most, allowed = report["at_once"]
    assert counts == [_ROWS**2] * 4 and most == allowed == 2
    db.dispose()


def test_a_read_without_eventlet_goes_through_sqlalchemy_and_an_unreadable_file_is_unavailable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    _filled(path)
    db = open_database(f"sqlite:///{path}")
    assert db_reads.read(db, [select(func.count()).select_from(orders)]) == [[(_ROWS,)]]
    db.dispose()
    path.rename(tmp_path / "aside.db")
    path.mkdir()  # "unable to open database file"
    with pytest.raises(HistoryUnavailable):
        db_reads.read(db, [select(func.count()).select_from(orders)])
