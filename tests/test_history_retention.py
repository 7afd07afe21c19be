"""The history's retention (hean/retention.py): orders, fills and answered commands older than
the retention go, a chunk at a time, and nothing newer or unanswered does; SQLite reuses the
pages they held; the history writer runs the passes between its batches; `hean prune-history`
does one pass by hand. On real SQLite and PostgreSQL databases and a real Redis."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy
from history_entries import History
from prometheus_client import REGISTRY
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.engine import Engine as Database

from hean import cli
from hean.command_journal import CommandJournal
from hean.config import Settings
from hean.db import commands, fills, open_database, orders
from hean.history import HistoryStore, HistoryWriter
from hean.redis_server import free_port
from hean.retention import Pruned, Retention, count_old, prune, prune_chunk
from postgres_server import PostgresServer

DAY = 86400.0


@pytest.fixture
def make_db(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Database]]:
    """Opens the test's database ("sqlite", or "postgresql" on the session's server); each is
    disposed of at the end (a psycopg connection left to the garbage collector complains)."""
    opened: list[Database] = []

    def make(kind: str) -> Database:
        if kind == "postgresql":
            postgres: PostgresServer = request.getfixturevalue("postgres_server")
            url = postgres.create_database("hean_keep_" + uuid.uuid4().hex[:8])
        else:
            url = f"sqlite:///{tmp_path}/history.db"
        opened.append(open_database(url))
        return opened[-1]

    yield make
    for db in opened:
        db.dispose()


def rows(db: Database) -> Pruned:
    with db.connect() as connection:
        counted = {
            name: int(connection.execute(select(func.count()).select_from(table)).scalar() or 0)
            for name, table in (("commands", commands), ("orders", orders), ("fills", fills))
        }
    return Pruned(**counted)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_pass_deletes_what_is_older_than_the_cutoff_and_nothing_else(
    kind: str, make_db: Callable[[str], Database]
) -> None:
    db = make_db(kind)
    store = HistoryStore(db)
    now = time.time()
    history = History()
    old = [history.command(now - 3 * DAY + i) for i in range(30)]
    unanswered = history.command(now - 3 * DAY + 40, answered=False)
    near = [history.command(now - DAY + 60 + i) for i in range(4)]  # just inside the retention
    new = [history.command(now - 60 + i) for i in range(20)]
    store.write(history.take())
    assert rows(db) == Pruned(commands=55, orders=270, fills=270)

    before = now - DAY
    assert count_old(db, before) == Pruned(commands=30, orders=150, fills=150)
    chunks = list(prune(db, before, chunk=7))
    assert all(max(c.as_dict().values()) <= 7 for c in chunks)
    assert len(chunks) == 150 // 7 + 1  # until a chunk deletes fewer than 7 of every table
    assert sum(chunks, Pruned()) == Pruned(commands=30, orders=150, fills=150)

    assert rows(db) == Pruned(commands=25, orders=120, fills=120)
    assert count_old(db, before) == Pruned()
    assert store.lookup(old) == {}
    kept = store.lookup([unanswered, *near, *new])
    assert set(kept) == {unanswered, *near, *new}
    assert kept[unanswered].result is None  # acked, never answered: `hean reconcile` still lists it
    with db.connect() as connection:
        oldest_order = connection.execute(select(func.min(orders.c.executed_at))).scalar()
    assert oldest_order is not None and oldest_order >= before
    assert prune_chunk(db, before) == Pruned()  # nothing left: a pass over nothing is harmless


def test_sqlite_fills_the_pages_a_pass_freed_instead_of_growing(
    tmp_path: Path, make_db: Callable[[str], Database]
) -> None:
    db = make_db("sqlite")
    store = HistoryStore(db)
    path = str(tmp_path / "history.db")
    now = time.time()
    history = History()

    def pages() -> tuple[int, int]:
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            count = connection.execute("PRAGMA page_count").fetchone()[0]
            free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        return int(count), int(free)

    def write(at: float) -> None:
        for i in range(60):
            history.command(at + i, orders_per_command=50)
        store.write(history.take())

    empty, _ = pages()
    write(now - 3 * DAY)
    full, _ = pages()
    assert full - empty > 100  # 3,000 orders and fills: the test means something only if they fill pages

    list(prune(db, now - DAY))
    assert rows(db) == Pruned()
    same, free = pages()
    assert same == full and free > (full - empty) // 2  # freed, kept in the file

    write(now - 60)  # as many rows again: into the freed pages
    again, _ = pages()
    assert again - full < (full - empty) // 5, (empty, full, again)


def pruned_so_far(table: str) -> float:
    return REGISTRY.get_sample_value("hean_history_pruned_rows_total", {"table": table}) or 0.0


def test_a_pass_every_so_often_with_its_cutoff_fixed_as_it_starts(make_db: Callable[[str], Database]) -> None:
    db = make_db("sqlite")
    store = HistoryStore(db)
    clock = [1_800_000_000.0]
    retention = Retention(keep_s=DAY, every_s=60.0, chunk=10, clock=lambda: clock[0])
    history = History()
    for i in range(5):  # 25 orders older than a day at the first step
        history.command(clock[0] - DAY - 100 + i)
    for i in range(3):  # 15 that are, 30 s after the first pass starts
        history.command(clock[0] - DAY + 10 + i)
    store.write(history.take())
    orders_before = pruned_so_far("orders")

    steps = []
    while True:
        steps.append(retention.step(db))
        clock[0] += 10.0
        if retention.before is None:
            break
    # orders go 10 a chunk: 10, 10, 5 and the pass ends; the 15 younger ones stay although
    # they are older than a day by the time the pass ends (its cutoff is fixed as it starts)
    assert [s.orders for s in steps] == [10, 10, 5]
    assert rows(db) == Pruned(commands=3, orders=15, fills=15)
    assert pruned_so_far("orders") - orders_before == 25

    while clock[0] < retention.next_pass:  # no pass until a minute after the last one ended
        assert retention.step(db) == Pruned() and retention.before is None
        clock[0] += 10.0
    assert retention.step(db).orders == 10  # the next pass: their turn now
    while retention.before is not None:
        retention.step(db)
    assert rows(db) == Pruned()


def test_a_pass_that_fails_is_logged_and_tried_again_at_the_next(
    make_db: Callable[[str], Database], caplog: pytest.LogCaptureFixture
) -> None:
    db = make_db("sqlite")
    clock = [1_800_000_000.0]
    retention = Retention(keep_s=DAY, every_s=60.0, chunk=10, clock=lambda: clock[0])
    history = History()
    history.command(clock[0] - 2 * DAY)
    HistoryStore(db).write(history.take())
    with db.begin() as connection:  # what the pass needs is not there: the database's own error
        connection.execute(sqlalchemy.text("ALTER TABLE fills RENAME TO fills_away"))
    with caplog.at_level(logging.WARNING, logger="hean.retention"):
        assert retention.step(db) == Pruned()
    assert "event=history_prune_failed" in caplog.text and "OperationalError" in caplog.text
    assert retention.before is None and retention.next_pass == clock[0] + 60.0
    with db.begin() as connection:
        connection.execute(sqlalchemy.text("ALTER TABLE fills_away RENAME TO fills"))
    clock[0] += 60.0
    assert retention.step(db) == Pruned(commands=1, orders=5, fills=5)


def test_the_history_writer_prunes_between_its_batches(
    make_db: Callable[[str], Database], redis_client: redis.Redis
) -> None:
    db = make_db("sqlite")
    stream = "test:history:" + uuid.uuid4().hex[:8]
    writer = HistoryWriter(CommandJournal(redis_client), HistoryStore(db), window_s=600, stream=stream)
    writer.retention = Retention(keep_s=DAY, every_s=0.2)
    now = time.time()
    history = History()
    old = [history.command(now - 5 * DAY + i) for i in range(10)]
    new = [history.command(now - 5 + i * 0.01) for i in range(10)]
    for entry_id, fields in history.take():
        redis_client.xadd(stream, fields, id=entry_id)

    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        until(lambda: rows(db) == Pruned(commands=10, orders=50, fills=50), timeout=30)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    store = HistoryStore(db)
    assert store.lookup(old) == {} and set(store.lookup(new)) == set(new)
    assert redis_client.xlen(stream) == 0  # written, then trimmed: the stream was drained as before


def until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_retention_setting_is_refused_when_it_could_not_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEAN_DEDUP_WINDOW_S", raising=False)
    monkeypatch.delenv("HEAN_HISTORY_KEEP_DAYS", raising=False)
    assert Settings().history_keep_s is None  # by default the history keeps everything
    monkeypatch.setenv("HEAN_HISTORY_KEEP_DAYS", "7")
    assert Settings().history_keep_s == 7 * DAY

    problems = {
        "-1": "greater than or equal to 0",
        "0.01": "less than the shortest, one hour",
    }
    for value, words in problems.items():
        monkeypatch.setenv("HEAN_HISTORY_KEEP_DAYS", value)
        with pytest.raises(ValidationError, match=words):
            Settings()
    monkeypatch.setenv("HEAN_HISTORY_KEEP_DAYS", "0.05")  # 72 minutes
    monkeypatch.setenv("HEAN_DEDUP_WINDOW_S", "7200")
    with pytest.raises(ValidationError, match="not longer than HEAN_DEDUP_WINDOW_S"):
        Settings()


def test_hean_prune_history_counts_then_deletes_with_its_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/prune.db"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("HEAN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HEAN_HISTORY_KEEP_DAYS", raising=False)
    monkeypatch.delenv("HEAN_DEDUP_WINDOW_S", raising=False)
    db = open_database(url)
    now = time.time()
    history = History()
    for i in range(500):  # 25,000 orders: more than 10 chunks, so progress lines are printed
        history.command(now - 10 * DAY + i, orders_per_command=50)
    history.command(now - 60)
    HistoryStore(db).write(history.take())

    assert cli.main(["prune-history"]) == 2  # neither --keep-days nor the setting: nothing assumed
    assert "say how many days to keep" in capsys.readouterr().err
    assert cli.main(["prune-history", "--keep-days", "0.001"]) == 2
    assert "less than the shortest, one hour" in capsys.readouterr().err

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/elsewhere/none.db")  # a wrong path
    assert cli.main(["prune-history", "--keep-days", "7"]) == 1
    assert f"no database at {tmp_path}/elsewhere/none.db: nothing to prune" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()  # not created by looking
    monkeypatch.setenv("DATABASE_URL", f"postgresql://hean:not-to-be-seen@127.0.0.1:{free_port()}/hean")
    assert cli.main(["prune-history", "--keep-days", "7"]) == 1
    err = capsys.readouterr().err
    assert "hean: cannot open the database postgresql://hean:***@" in err and "OperationalError" in err
    assert "not-to-be-seen" not in err
    monkeypatch.setenv("DATABASE_URL", url)

    assert cli.main(["prune-history", "--keep-days", "7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{url}: older than" in out and "commands=500 orders=25000 fills=25000" in out
    assert rows(db) == Pruned(commands=501, orders=25005, fills=25005)

    monkeypatch.setenv("HEAN_HISTORY_KEEP_DAYS", "0.01")  # every hean command refuses it at start
    with pytest.raises(SystemExit, match=r"^hean: invalid configuration: HEAN_HISTORY_KEEP_DAYS: 0.01 days"):
        cli.main(["prune-history", "--keep-days", "7"])
    assert rows(db).orders == 25005

    monkeypatch.setenv("HEAN_HISTORY_KEEP_DAYS", "7")  # the setting serves as the default
    assert cli.main(["prune-history"]) == 0
    out = capsys.readouterr().out
    assert "  deleted commands=500 orders=20000 fills=20000 (80%" in out  # after 10 chunks
    assert "deleted commands=500 orders=25000 fills=25000 in" in out
    assert rows(db) == Pruned(commands=1, orders=5, fills=5)
    db.dispose()


def test_hean_history_keep_days_reaches_the_writer_hean_up_starts(
    make_db: Callable[[str], Database],
    tmp_path: Path,
    base_env: dict[str, str],
    own_db_url: str,
    redis_client: redis.Redis,
) -> None:
    """`python -m hean.history`, as `hean up` starts it, with the setting in its environment."""
    db = make_db("sqlite")
    now = time.time()
    history = History()
    old = [history.command(now - 40 * DAY + i) for i in range(10)]
    new = [history.command(now - 60 + i) for i in range(5)]
    HistoryStore(db).write(history.take())
    env = base_env | {
        "REDIS_URL": own_db_url,  # redis_client's database: its history stream is empty
        "DATABASE_URL": str(db.url),
        "HEAN_HISTORY_KEEP_DAYS": "30",
    }
    log_path = tmp_path / "history.log"
    with log_path.open("w") as log_file:
        writer = subprocess.Popen(
            [sys.executable, "-m", "hean.history"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        until(lambda: rows(db) == Pruned(commands=5, orders=25, fills=25), timeout=60)
    finally:
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(timeout=30) == 0
    text = log_path.read_text()
    assert "event=history_writer_started window_s=600 keep_days=30" in text
    assert "event=history_pruned" in text and "commands=10 orders=50 fills=50" in text
    store = HistoryStore(db)
    assert store.lookup(old) == {} and set(store.lookup(new)) == set(new)
