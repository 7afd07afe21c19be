"""The project's database (SQLAlchemy): DATABASE_URL, SQLite under .hean/ by default."""

from __future__ import annotations

import threading

import sqlalchemy
from sqlalchemy.engine import Engine, make_url

from hean.config import get_settings

_engine: Engine | None = None
_lock = threading.Lock()


def get_engine() -> Engine:
    global _engine
    with _lock:
        if _engine is None:
            url = get_settings().effective_database_url()
            if url.startswith("sqlite:///"):
                get_settings().home.mkdir(parents=True, exist_ok=True)
            _engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        return _engine


def ping() -> None:
    """`SELECT 1`, and for SQLite also a read of the schema, which a damaged file fails."""
    engine = get_engine()
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))
        if engine.dialect.name == "sqlite":
            connection.execute(sqlalchemy.text("SELECT count(*) FROM sqlite_master"))


def reset() -> None:
    """Drop every pooled connection (the reconnect action of the health probe)."""
    global _engine
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None


def redacted_url() -> str:
    return make_url(get_settings().effective_database_url()).render_as_string(hide_password=True)
