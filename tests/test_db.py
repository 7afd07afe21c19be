"""The schema, created by every process at once: `hean up` starts them together on a database
that may not exist yet, and each opens it (hean.db.open_database creates what is missing)."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy
from test_history import STATUS_INDEXES

from hean import cli
from hean.db import INDEX_BUILD_LOCK, metadata, open_database, orders, wait_for_index_builds
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


def _status_index_build_setup(postgres: PostgresServer, name: str) -> tuple[str, sqlalchemy.Engine]:
    """A PostgreSQL database as an older version made it (without the two status indexes), with
    some orders in it; its URL and an engine of the test's own on it."""
    url = postgres.create_database(f"{name}_{uuid.uuid4().hex[:8]}")
    open_database(url).dispose()
    db = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with db.begin() as connection:
        for index in STATUS_INDEXES:
            connection.execute(sqlalchemy.text(f"DROP INDEX {index}"))
        connection.execute(
            orders.insert(), [_order(f"old-{i}", "REJECTED" if i % 2 else "FILLED") for i in range(50)]
        )
    return url, db


def _order(request_id: str, status: str) -> dict[str, object]:
    return {"request_id": request_id, "seq": 0, "symbol": "BTC/USDT", "side": "BUY", "status": status,
            "duplicate": False, "executed_at": time.time()}  # fmt: skip


def _valid_indexes(db: sqlalchemy.Engine) -> dict[str, bool]:
    with db.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname LIKE 'ix_orders_%status%'"
            )
        ).all()
    return {str(name): bool(valid) for name, valid in rows}


def test_postgresql_builds_an_added_index_while_the_history_writer_inserts_on(
    postgres_server: PostgresServer,
) -> None:
    """An index a newer version added is built CONCURRENTLY on PostgreSQL, in a thread of the
    process that opened the database: that process and every other write on. Here the build waits
    for a transaction that wrote to the table and is still open (as a history batch being
    written); meanwhile the opener has its database at once, and inserts through it and through
    another connection land at once. A plain CREATE INDEX held the opener until the build was
    done, queued for its lock behind that transaction, and every insert after it queued behind it
    (it failed on its 3 s lock timeout), for as long as the build."""
    url, db = _status_index_build_setup(postgres_server, "concurrent")
    opened: list[sqlalchemy.Engine] = []

    def building() -> bool:
        with db.connect() as connection:
            return bool(
                connection.execute(
                    sqlalchemy.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX%' "
                        "AND wait_event_type = 'Lock'"
                    )
                ).scalar()
            )

    try:
        with db.connect() as writing:
            writing.execute(orders.insert(), [_order("open-1", "REJECTED")])  # its transaction stays open
            opener = threading.Thread(target=lambda: opened.append(open_database(url)))
            opener.start()
            opener.join(timeout=20)  # it does not wait for the build, which cannot end yet
            assert opened, "open_database waited for the index build"
            deadline = time.monotonic() + 30
            while not building():
                assert time.monotonic() < deadline, "the build never began"
                time.sleep(0.05)
            for n, engine in enumerate(
                (opened[0], db)
            ):  # the builder's process (the history writer), another
                with engine.begin() as inserting:
                    inserting.execute(sqlalchemy.text("SET LOCAL lock_timeout = '3s'"))
                    inserting.execute(orders.insert(), [_order(f"during-{n}", "REJECTED")])
            assert not any(_valid_indexes(db).values())  # still building
            writing.commit()
        assert wait_for_index_builds(60)
        assert _valid_indexes(db) == dict.fromkeys(STATUS_INDEXES, True)
        with db.connect() as connection:  # every row in the index, all three inserts among them
            count = connection.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM orders WHERE status = 'REJECTED' AND status <> 'FILLED'"
                )
            ).scalar()
        assert count == 25 + 3
    finally:
        if opened:
            opened[0].dispose()
        db.dispose()


def test_postgresql_rebuilds_an_index_a_cut_build_left_invalid_and_builds_one_at_a_time(
    postgres_server: PostgresServer,
) -> None:
    """A concurrent build cut short leaves its index INVALID (never read, always written): the
    next process to open the database drops it and builds it again. While another process holds
    the builders' lock, one that opens the database goes on at once without building."""
    url, db = _status_index_build_setup(postgres_server, "invalid")
    try:
        # a concurrent build that fails half way (the status repeats: not unique) leaves an invalid index
        autocommit = db.connect().execution_options(isolation_level="AUTOCOMMIT")
        with autocommit as connection, pytest.raises(sqlalchemy.exc.IntegrityError):
            connection.execute(
                sqlalchemy.text("CREATE UNIQUE INDEX CONCURRENTLY ix_orders_status ON orders (status)")
            )
        assert _valid_indexes(db) == {"ix_orders_status": False}
        with db.connect() as holder:  # another process building
            holder.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": INDEX_BUILD_LOCK})
            started = time.monotonic()
            open_database(url).dispose()
            assert wait_for_index_builds(10)  # its builder did not wait for the lock
            assert time.monotonic() - started < 10
            assert _valid_indexes(db) == {"ix_orders_status": False}
            holder.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": INDEX_BUILD_LOCK})
            holder.commit()
        open_database(url).dispose()
        assert wait_for_index_builds(60)
        assert _valid_indexes(db) == dict.fromkeys(STATUS_INDEXES, True)
        with db.connect() as connection:  # the schema's index, not the unique one the cut build began
            definition = connection.execute(
                sqlalchemy.text("SELECT pg_get_indexdef('ix_orders_status'::regclass)")
            ).scalar()
        assert "UNIQUE" not in str(definition) and "WHERE" in str(definition), definition
    finally:
        db.dispose()


def test_a_command_line_command_leaves_an_added_index_to_the_services(
    postgres_server: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`hean analyses` (as `reconcile` and `prune-history`) reads a PostgreSQL database that lacks
    an index a newer version added, and starts no build: the build runs in a thread that the
    command's exit would cut short, leaving the index INVALID (written on every insert, never
    read) until a service built it again. The next service to open the database builds it."""
    url, db = _status_index_build_setup(postgres_server, "cli")
    try:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("HEAN_HOME", str(tmp_path / "home"))
        assert cli.main(["analyses", "--json"]) == 0
        assert '"analyses": []' in capsys.readouterr().out
        assert wait_for_index_builds(30)  # had one begun, it would have ended by now
        assert _valid_indexes(db) == {}  # neither built nor begun
        open_database(url).dispose()  # a service
        assert wait_for_index_builds(60)
        assert _valid_indexes(db) == dict.fromkeys(STATUS_INDEXES, True)
    finally:
        db.dispose()
