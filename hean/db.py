"""The project's database (SQLAlchemy): DATABASE_URL, SQLite under .hean/ by default, or
PostgreSQL (`postgresql://...`, through psycopg 3).

"Engine" in HEAN means the trading engine; SQLAlchemy's `Engine` (its connection pool and
dialect) is called the database here.

One `metadata` holds every table of the project, and `open_database` creates the schema on
first use (SQLite in WAL mode, so readers never wait for the writer): new tables go in this
module.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Engine as Database
from sqlalchemy.engine import make_url

from hean.config import get_settings

log = logging.getLogger(__name__)

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

# -- the history (hean/history.py writes it from the Redis stream, in batches) ------------------

#: One row per command that passed validation: its envelope, ack and result. Times in epoch s.
commands = Table(
    "commands",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("command", String(64)),
    Column("params", Text),  # JSON
    Column("reply_to", String(128)),
    Column("received_at", Float, index=True),
    Column("ack_ms", Float),  # the ack's ack_time_ms (accepted commands only are journaled)
    Column("acked_at", Float),
    Column("finished_at", Float),
    Column("success", Boolean),
    Column("error_code", String(64)),
    Column("result", Text),  # the command_result message as JSON
    Column("runs", Integer),  # results a worker recorded for it: 1, or more if it ever ran twice
)

#: The condition of the orders in `ix_orders_status` and `ix_orders_symbol_status`.
NOT_FILLED = sqlalchemy.text("status <> 'FILLED'")

#: One row per order outcome (a `submit_order`, or each order of a `submit_orders`).
orders = Table(
    "orders",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    # found by request id through uq_orders_command_seq (its first column): no index of its own,
    # which cost every insert another B-tree
    Column("request_id", String(128), nullable=False),
    Column("seq", Integer, nullable=False),  # position within its command
    Column("client_order_id", String(128), index=True),
    Column("order_id", BigInteger),
    Column("symbol", String(64)),
    Column("side", String(8)),
    Column("order_type", String(16)),
    Column("time_in_force", String(8)),
    Column("quantity", String(40)),  # decimals as text, exactly as the engine gave them
    Column("price", String(40)),
    Column("status", String(16)),
    Column("reject_reason", String(40)),
    Column("filled_quantity", String(40)),
    Column("fill_price", String(40)),
    Column("fee", String(40)),
    Column("duplicate", Boolean),
    Column("received_at", Float),
    Column("executed_at", Float, nullable=False),
    UniqueConstraint("request_id", "seq", name="uq_orders_command_seq"),
    Index("ix_orders_symbol_time", "symbol", "executed_at"),
    Index("ix_orders_time", "executed_at"),
    # The listing filtered by a status other than FILLED (the dashboard's status choice) reads
    # this index: without it a status no recent order has read the table from its newest row to
    # its oldest (3.7-4.1 s for 3 million orders read from the disk). FILLED orders, most of any
    # history, are left out of it, so the history writer's inserts of them cost nothing more;
    # a FILLED page is found near the table's newest rows. SQLite uses a partial index only for
    # a query that states its condition (hean.history.HistoryStore._page adds it).
    Index("ix_orders_status", "status", "id", sqlite_where=NOT_FILLED, postgresql_where=NOT_FILLED),
    # The same with a symbol, in the order of a symbol's page (by time): without it a status no
    # order of the symbol has read all of the symbol's orders (0.26 s for 750,000 cached).
    Index(
        "ix_orders_symbol_status",
        "symbol",
        "status",
        "executed_at",
        sqlite_where=NOT_FILLED,
        postgresql_where=NOT_FILLED,
    ),
    # The same by time, for a status with a time range and no symbol, in the order of such a page:
    # without it the page went through the time index and checked every row of the range (0.8 s
    # for 3 million orders cached; a day at 1,000 orders/s ran past the listing's 10 s).
    Index(
        "ix_orders_status_time", "status", "executed_at", sqlite_where=NOT_FILLED, postgresql_where=NOT_FILLED
    ),
)

#: One row per execution: an order filled on submission, or a resting order filled by a market
#: update (`request_id` is the command that caused it).
fills = Table(
    "fills",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),  # uq_fills_command_seq finds it
    Column("seq", Integer, nullable=False),
    Column("order_id", BigInteger),
    Column("client_order_id", String(128), index=True),
    Column("symbol", String(64)),
    Column("side", String(8)),
    Column("quantity", String(40)),
    Column("price", String(40)),
    Column("fee", String(40)),
    Column("executed_at", Float, nullable=False),
    UniqueConstraint("request_id", "seq", name="uq_fills_command_seq"),
    Index("ix_fills_symbol_time", "symbol", "executed_at"),
    Index("ix_fills_time", "executed_at"),
)

#: How far the history writer got in each Redis stream (written with the rows: exactly once).
history_cursor = Table(
    "history_cursor",
    metadata,
    Column("stream", String(64), primary_key=True),
    Column("last_id", String(64), nullable=False),
    Column("written_at", Float, nullable=False),
)

_database: Database | None = None
_lock = threading.Lock()


def _same(value: None) -> None:
    return value


# sqlite3 binds str, int, float and bytearray parameters as they are, and sends every other value
# through its adapter lookup first: the registry, then `__adapt__` on its protocol type (whose
# miss formats an AttributeError message) and `__conform__` on the value, only to bind None
# and bools as they are after all. That was about 5% of the history writer's instructions, for
# the NULLs and `duplicate` of every order row (valgrind; benchmarks/bench_history_insert.py,
# its `lookup` way). A registered adapter is found first; these give the same values the lookup
# ended with (None binds as NULL, a bool as its int).
sqlite3.register_adapter(type(None), _same)
sqlite3.register_adapter(bool, int)


SQLITE_CACHE_PRAGMA = "PRAGMA cache_size=-65536"


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL's recommended setting: no fsync per commit (the log is synced at checkpoints); a commit
    # survives any crash of the process, the last ones may be lost only with the machine
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    # a page cache of up to 64 MiB (SQLite's default is 2 MiB), filled only as pages are read:
    # inserts into the indexes of random ids (request and client order ids) missed the small
    # one more and more as the tables grew (150,000 orders: 78 -> 58 us per order and fill)
    cursor.execute(SQLITE_CACHE_PRAGMA)
    # statement journals in memory: the history writer's copy of a command's fills from its
    # orders (one INSERT ... SELECT: hean.history.HistoryStore._copy_fills) keeps the pages it
    # changes there until it ends, and SQLite spilled them to a temporary file past 64 KiB
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def open_database(url: str, build_in_background: bool = True) -> Database:
    """A database on `url` with the project's schema created (SQLite: WAL mode, directory made).

    `build_in_background=False` (the command line's short-lived commands): an index a newer
    version added is not built on PostgreSQL, where the build runs in a thread of this process
    (`_create_added_indexes_concurrently`) that the process's exit would cut short, leaving the
    index INVALID; the services build it. SQLite builds it before returning either way."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):  # SQLAlchemy's default is psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
        url = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
    # hide_parameters: an error's text (logged by the history writer) names the statement but
    # not the rows' values
    db = sqlalchemy.create_engine(url, pool_pre_ping=True, hide_parameters=True)
    if db.dialect.name == "sqlite":
        event.listen(db, "connect", _sqlite_pragmas)
    create_schema(db, build_in_background)
    return db


def describe_error(exc: BaseException) -> str:
    """One line for a log or a message: the error's type and its text's first line; for a
    database error, the driver's own (never the statement or its values)."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def create_schema(db: Database, build_in_background: bool = True) -> None:
    """Create the tables and indexes `db` lacks, while other processes may do the same.

    `hean up` starts every process at once, and each opens the database: `create_all` checks
    which tables exist, then creates the others, so a process that checked before another
    created a table fails on it ("table ... already exists" on SQLite, a unique violation in
    PostgreSQL's catalog). It is asked again: each failure of that kind means one more table or
    index exists for good, so this ends within one try per table and index; any other error
    (a database that cannot be written) is raised as the last try raised it.

    `create_all` creates a missing table with its indexes, never an index added later to a table
    that exists: those are created here, once, on a database an older version made (on
    PostgreSQL only if `build_in_background`: see `open_database`)."""
    tries = 1 + len(metadata.tables) + sum(len(table.indexes) for table in metadata.tables.values())
    for attempt in range(tries):
        try:
            metadata.create_all(db)
            _create_added_indexes(db, build_in_background)
            return
        except sqlalchemy.exc.DBAPIError:
            if attempt == tries - 1:
                raise
            time.sleep(0.01)


def _create_added_indexes(db: Database, build_in_background: bool) -> None:
    if db.dialect.name == "postgresql":
        if build_in_background:
            _create_added_indexes_concurrently(db)
        return
    inspector = sqlalchemy.inspect(db)
    have = {
        table.name: {index["name"] for index in inspector.get_indexes(table.name)}
        for table in metadata.tables.values()
    }
    for table, index in _schema_indexes():
        if index.name not in have[table.name]:
            _create_logged(table, index, functools.partial(index.create, db))


def _schema_indexes() -> list[tuple[Table, Index]]:
    """The schema's indexes with their tables, table by table (as they are created), by name."""
    return [
        (table, index)
        for table in metadata.sorted_tables
        for index in sorted(table.indexes, key=lambda index: str(index.name))
    ]


def _create_logged(
    table: Table, index: Index, create: Callable[[], object], concurrently: bool = False
) -> None:
    """`create()` `index`, said before and after. It reads the whole table (a few seconds for
    tens of millions of rows): a warning, so that it shows in the workers' logs too (they log
    from warnings up)."""
    log.warning(
        "event=db_index_creating index=%s table=%s%s",
        index.name,
        table.name,
        " concurrently=1" if concurrently else "",
    )
    started = time.monotonic()
    create()
    log.warning("event=db_index_created index=%s seconds=%.1f", index.name, time.monotonic() - started)


#: The key of the PostgreSQL advisory lock that one process at a time holds to build the indexes
#: a database lacks ("HEAN" in ASCII).
INDEX_BUILD_LOCK = 0x4845414E


def _create_added_indexes_concurrently(db: Database) -> None:
    """PostgreSQL: build the indexes `db` lacks with CREATE INDEX CONCURRENTLY, in a thread of
    this process's own, so that every write goes on meanwhile, this process's too (the history
    writer is often the first to open the database, and so the builder); a plain CREATE INDEX
    held the table's writes for the whole build, a scan of the table. One process builds (the
    advisory lock INDEX_BUILD_LOCK); another that finds it taken goes on (queries work without
    the index, only slower until it is there). A build cut short (the process stopped, the
    connection lost) leaves its index INVALID, which PostgreSQL keeps up to date and never reads:
    the next builder drops it and builds it again. A build that fails is logged, and tried again
    at the next start."""
    with db.connect() as connection:
        if not _lacking_on_postgresql(connection)[0]:
            return
    builder = threading.Thread(target=_build_lacking, args=(db,), name="hean-index-build", daemon=True)
    with _lock:
        _index_builds.append(builder)
    builder.start()


#: This process's index builders (_create_added_indexes_concurrently), for `wait_for_index_builds`
_index_builds: list[threading.Thread] = []


def wait_for_index_builds(timeout: float) -> bool:
    """Wait until this process's index builders have ended; False if one still runs after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with _lock:
        builders = list(_index_builds)
    for builder in builders:
        builder.join(max(0.0, deadline - time.monotonic()))
    return not any(builder.is_alive() for builder in builders)


def _build_lacking(db: Database) -> None:
    # a connection of its own, closed at the end: not one of the process's pool for minutes, and
    # none left behind in a pool disposed meanwhile
    own = sqlalchemy.create_engine(db.url, poolclass=sqlalchemy.pool.NullPool, hide_parameters=True)
    try:
        with own.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if not connection.execute(
                sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"), {"key": INDEX_BUILD_LOCK}
            ).scalar():
                log.warning("event=db_index_building_elsewhere action=continue")
                return
            try:
                lacking, invalid = _lacking_on_postgresql(connection)  # again: another may have built them
                for table, index in lacking:
                    if index.name in invalid:
                        log.warning("event=db_index_invalid index=%s action=drop_and_build", index.name)
                        connection.execute(
                            sqlalchemy.text(f'DROP INDEX CONCURRENTLY IF EXISTS "{index.name}"')
                        )
                    ddl = sqlalchemy.text(_concurrently(index, db))
                    _create_logged(
                        table, index, functools.partial(connection.execute, ddl), concurrently=True
                    )
            finally:
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": INDEX_BUILD_LOCK}
                )
    except Exception as exc:  # the indexes only speed reads up: never a reason to stop this process
        log.error("event=db_index_build_failed error=%s action=retry_at_next_start", describe_error(exc))
    finally:
        own.dispose()


def _lacking_on_postgresql(connection: Any) -> tuple[list[tuple[Table, Index]], set[str]]:
    """The schema's indexes that the database has no valid index of the same name for (in the
    tables' and names' order), and the names of its invalid indexes."""
    found = connection.execute(
        sqlalchemy.text(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
        )
    ).all()
    valid = {name for name, ok in found if ok}
    lacking = [(table, index) for table, index in _schema_indexes() if index.name not in valid]
    return lacking, {name for name, ok in found if not ok}


def _concurrently(index: Index, db: Database) -> str:
    """`index`'s CREATE INDEX as SQLAlchemy writes it for `db`, built CONCURRENTLY."""
    ddl = str(sqlalchemy.schema.CreateIndex(index, if_not_exists=True).compile(dialect=db.dialect))
    plain = "UNIQUE INDEX IF NOT EXISTS " if index.unique else "INDEX IF NOT EXISTS "
    if not ddl.startswith("CREATE " + plain):
        raise RuntimeError(f"unexpected DDL for {index.name}: {ddl[:80]}")
    return "CREATE " + plain.replace("INDEX ", "INDEX CONCURRENTLY ", 1) + ddl[len("CREATE " + plain) :]


def database() -> Database:
    """This process's database (a SQLAlchemy Engine: pooled connections to DATABASE_URL)."""
    global _database
    with _lock:
        if _database is None:
            _database = open_database(get_settings().effective_database_url())
        return _database


#: An SQLite file whose database and log are as they were at the last good read of its schema
#: is read again only this often (`ping`, which the pulse asks ten times a second: a fresh
#: connection and a schema read cost the idle pulse worker about 2% of a core).
UNCHANGED_RECHECK_S = 1.0
#: (the files' signature, time.monotonic()) of the last good read of the schema
_verified: list[Any] = [None, 0.0]


def _file_signature(path: str) -> tuple[Any, ...] | None:
    """What a change of the database file or its log changes (None when the file is not there:
    a schema read decides)."""
    signature: list[Any] = []
    for name in (path, f"{path}-wal"):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            if name == path:
                return None
            signature.append(None)
        except OSError:
            return None
        else:
            # not the change time: SQLite, run as root, chowns the log on every open
            signature.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid))
    return tuple(signature)


def sqlite_file(db: Database) -> str | None:
    """The file of an SQLite database given by path (None for any other database, an in-memory
    one or a `file:` URI)."""
    path = db.url.database if db.dialect.name == "sqlite" else None
    return path if path and path != ":memory:" and not path.startswith("file:") else None


def unchanged_since_verified() -> bool:
    """True when the database is an SQLite file that `ping` read within UNCHANGED_RECHECK_S and
    that has not changed since (two stat calls, no connection): `ping` would return at once."""
    db = _database
    path = sqlite_file(db) if db is not None else None
    if not path or _verified[0] is None or time.monotonic() - _verified[1] >= UNCHANGED_RECHECK_S:
        return False
    return _file_signature(path) == _verified[0]


def ping() -> None:
    """`SELECT 1`; for an SQLite file, a read of its schema on a connection opened just now,
    which a damaged file fails (a pooled connection in WAL mode may answer from its page cache
    long after the file was damaged). That read is skipped while neither the file nor its log
    changed (inode, size, modification time, mode, owner) since the last good one, for
    UNCHANGED_RECHECK_S."""
    db = database()
    path = sqlite_file(db)
    if path:
        signature, now = _file_signature(path), time.monotonic()
        if signature is not None and _verified[0] == signature and now - _verified[1] < UNCHANGED_RECHECK_S:
            return
        _verified[0] = None
        with contextlib.closing(sqlite3.connect(path, timeout=1.0)) as fresh:
            fresh.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _verified[:] = [signature, now]
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
        _verified[0] = None


def redacted_url() -> str:
    return make_url(get_settings().effective_database_url()).render_as_string(hide_password=True)
