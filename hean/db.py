"""The project's database (SQLAlchemy): DATABASE_URL, SQLite under .hean/ by default.

"Engine" in HEAN means the trading engine; SQLAlchemy's `Engine` (its connection pool and
dialect) is called the database here.

One `metadata` holds every table of the project, and `open_database` creates the schema on
first use (SQLite in WAL mode, so readers never wait for the writer): new tables go in this
module.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, UniqueConstraint, event
from sqlalchemy.engine import Engine as Database
from sqlalchemy.engine import make_url

from hean.config import get_settings

metadata = MetaData()

#: One row per error group (fingerprint + the involved source as it was): repeats count here.
analyses = Table(
    "analyses",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("source_hash", String(64), nullable=False),
    Column("origin", String(200), nullable=False),
    Column("exc_type", String(300), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("status", String(20), nullable=False),  # hean.analyzer.models.STATUSES
    Column("error", Text),  # why an analysis failed, when it did
    Column("count", Integer, nullable=False, default=1),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("provider", String(40)),
    Column("model", String(200)),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("suggestion", Text),  # FixSuggestion as JSON
    Column("autodev", Text),  # the auto-dev attempt's outcome as JSON
    Column("process", String(200), nullable=False, default=""),
    UniqueConstraint("fingerprint", "source_hash", name="uq_analyses_group"),
)

#: Every request to a model (the hourly cap counts these), with its token usage and cost.
llm_calls = Table(
    "llm_calls",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False, index=True),
    Column("analysis_id", Integer),
    Column("provider", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("outcome", String(40), nullable=False, default="pending"),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
)

_database: Database | None = None
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_database(url: str) -> Database:
    """A database on `url` with the project's schema created (SQLite: WAL mode, directory made)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
    db = sqlalchemy.create_engine(url, pool_pre_ping=True)
    if db.dialect.name == "sqlite":
        event.listen(db, "connect", _sqlite_pragmas)
    metadata.create_all(db)
    return db


def database() -> Database:
    """This process's database (a SQLAlchemy Engine: pooled connections to DATABASE_URL)."""
    global _database
    with _lock:
        if _database is None:
            _database = open_database(get_settings().effective_database_url())
        return _database


def ping() -> None:
    """`SELECT 1`; for an SQLite file, a read of its schema on a connection opened just now,
    which a damaged file fails (a pooled connection in WAL mode may answer from its page cache
    long after the file was damaged)."""
    db = database()
    path = db.url.database if db.dialect.name == "sqlite" else None
    if path and path != ":memory:" and not path.startswith("file:"):
        with contextlib.closing(sqlite3.connect(path, timeout=1.0)) as fresh:
            fresh.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return
    with db.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))


def reset() -> None:
    """Drop every pooled connection (the reconnect action of the health probe)."""
    global _database
    with _lock:
        if _database is not None:
            _database.dispose()
        _database = None


def redacted_url() -> str:
    return make_url(get_settings().effective_database_url()).render_as_string(hide_password=True)
