"""The project's database (SQLAlchemy): DATABASE_URL, SQLite under .hean/ by default.

"Engine" in HEAN means the trading engine; SQLAlchemy's `Engine` (its connection pool and
dialect) is called the database here.
"""

from __future__ import annotations

import threading

import sqlalchemy
from sqlalchemy.engine import Engine as Database
from sqlalchemy.engine import make_url

from hean.config import get_settings

_database: Database | None = None
_lock = threading.Lock()


def database() -> Database:
    """This process's database (a SQLAlchemy Engine: pooled connections to DATABASE_URL)."""
    global _database
    with _lock:
        if _database is None:
            url = get_settings().effective_database_url()
            if url.startswith("sqlite:///"):
                get_settings().home.mkdir(parents=True, exist_ok=True)
            _database = sqlalchemy.create_engine(url, pool_pre_ping=True)
        return _database


def ping() -> None:
    """`SELECT 1`, and for SQLite also a read of the schema, which a damaged file fails."""
    db = database()
    with db.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))
        if db.dialect.name == "sqlite":
            connection.execute(sqlalchemy.text("SELECT count(*) FROM sqlite_master"))


def reset() -> None:
    """Drop every pooled connection (the reconnect action of the health probe)."""
    global _database
    with _lock:
        if _database is not None:
            _database.dispose()
        _database = None


def redacted_url() -> str:
    return make_url(get_settings().effective_database_url()).render_as_string(hide_password=True)
