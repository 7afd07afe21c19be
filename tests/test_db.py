"""The schema, created by every process at once: `hean up` starts them together on a database
that may not exist yet, and each opens it (hean.db.open_database creates what is missing)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
import sqlalchemy

from hean.db import metadata, open_database
from postgres_server import PostgresServer

PROCESSES = 4
ROUNDS = 6


def open_at(url: str, start: float) -> str:
    """Open `url` at `start` (time.time()) and read a table; "ok" or the error, in words."""
    while time.time() < start:
        pass
    try:
        db = open_database(url)
        with db.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT count(*) FROM commands")).scalar_one()
        db.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return "ok"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_processes_opening_a_new_database_at_once_all_get_the_whole_schema(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    urls = []
    for n in range(ROUNDS):
        if kind == "sqlite":
            urls.append(f"sqlite:///{tmp_path / f'round{n}.db'}")
        else:
            postgres: PostgresServer = request.getfixturevalue("postgres_server")
            urls.append(postgres.create_database(f"schema_race_{n}"))
    # each process imports hean first (about a second): the rounds start together after that
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        for url in urls:
            start = time.time() + 0.3
            outcomes = pool.starmap(open_at, [(url, start)] * PROCESSES, chunksize=1)
            assert outcomes == ["ok"] * PROCESSES, (url, outcomes)
            db = sqlalchemy.create_engine(url)
            try:
                inspector = sqlalchemy.inspect(db)
                assert set(inspector.get_table_names()) == set(metadata.tables)
                for name, table in metadata.tables.items():
                    indexes = {index["name"] for index in inspector.get_indexes(name)}
                    assert {index.name for index in table.indexes} <= indexes, name
            finally:
                db.dispose()


def test_the_registered_adapters_store_what_sqlite3s_own_lookup_stored(tmp_path: Path) -> None:
    """hean.db registers sqlite3 adapters for None and bools (a shortcut past the driver's
    adapter lookup): the history rows they write, read back raw and through SQLAlchemy, equal
    those written without them."""
    import sqlite3

    from hean.db import orders
    from hean.history import ORDER_COLUMNS, HistoryStore

    adapted = [(type(None), sqlite3.PrepareProtocol), (bool, sqlite3.PrepareProtocol)]
    assert all(key in sqlite3.adapters for key in adapted)
    values: list[object] = ["r", 0, None, 7, "BTCUSDT", "BUY", "LIMIT", "GTC", "0.5", None, "REJECTED",
                            None, None, None, None, True, None, 1.5]  # fmt: skip
    assert len(values) == len(ORDER_COLUMNS)
    rows = [tuple(values), (*values[:1], 1, *values[2:15], False, *values[16:])]
    read: dict[str, tuple[list[tuple[object, ...]], list[dict[str, object]]]] = {}
    for way in ("registered", "lookup"):
        saved = {key: sqlite3.adapters.pop(key) for key in adapted} if way == "lookup" else {}
        try:
            db = open_database(f"sqlite:///{tmp_path / way}.db")
            store = HistoryStore(db)
            with db.begin() as connection:
                store._insert_many_ignoring(connection, orders, rows)
            with db.connect() as connection:
                raw = connection.exec_driver_sql(
                    "SELECT *, typeof(duplicate), typeof(price) FROM orders ORDER BY id"
                ).all()
                typed = connection.execute(sqlalchemy.select(orders).order_by(orders.c.id)).all()
            db.dispose()
        finally:
            sqlite3.adapters.update(saved)
        read[way] = ([tuple(row) for row in raw], [dict(row._mapping) for row in typed])
    assert read["registered"] == read["lookup"]
    raw, typed = read["registered"]
    assert [row[-2:] for row in raw] == [("integer", "null"), ("integer", "null")]
    assert [(row["duplicate"], row["price"], row["seq"]) for row in typed] == [
        (True, None, 0),
        (False, None, 1),
    ]
