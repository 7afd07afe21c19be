"""The durable history: every command, ack, order, fill and result in the database, written in
batches by one writer process (`python -m hean.history`, started by `hean up`) off the hot path.

The web process and the workers append to the Redis stream ``hean:history`` in the scripts and
transactions they already run (hean/command_journal.py); `HistoryWriter` copies its entries to
the tables of hean/db.py in one transaction per batch, with its position in the stream (so each
entry is written exactly once, even across a crash), then marks the commands' window keys done
(they expire `HEAN_DEDUP_WINDOW_S` later) and trims what it wrote. `HistoryStore` is the read
side: request ids that left the Redis window, `GET /api/orders` and `GET /api/fills`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import operator
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import sqlalchemy
from redis.exceptions import RedisError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine as Database
from sqlalchemy.exc import SQLAlchemyError

from hean import db_reads, fastjson, metrics
from hean.command_journal import CommandJournal, HistoryUnavailable, rebuild_ack
from hean.db import SQLITE_CACHE_PRAGMA, commands, describe_error, fills, history_cursor, orders, sqlite_file
from hean.logs import FailureLog
from hean.page_cache import CacheTrimmer
from hean.redis_client import entry_time, next_stream_id, text
from hean.retention import Retention
from hean.topology import HISTORY_FAILURE_KEY, HISTORY_FAILURE_TTL_S, HISTORY_STREAM_KEY

log = logging.getLogger(__name__)

#: Most stream entries per read (each holds one batch: up to hundreds of commands).
READ_ENTRIES = 500
#: About how much entry text one read takes: the next read asks for as many entries as fit at the
#: last read's size per entry (READ_ENTRIES at most, MIN_READ_ENTRIES at least). In 100-order
#: commands an entry is 9-49 KB (bigger as the rate grows), and 500 of them at once raised the
#: writer's peak RSS at 60,000 orders/s from 209 MB (200 entries) to 303 MB; bounded by size,
#: 164 MB. Single orders' entries (a few hundred bytes) still come 500 at a time.
READ_BYTES = 2_500_000
MIN_READ_ENTRIES = 20
#: After a read that did not fill its count the writer waits this long, so that the next one is
#: bigger: one database commit per LINGER_S at most while orders trickle in. Each read and
#: commit costs the writer about 3 ms on top of its rows (SQLite writes each page a transaction
#: changed once, however many rows changed it), so fewer, bigger ones cost less per order: with
#: 0.25 s and 500 entries instead of 0.1 s and 200, at 1,000 single orders/s (about 1,500 entries
#: a second) the writer used 0.81x the CPU per order, and 0.7x in 100-order commands at the same
#: rate (README, "The history writer's batches"); the database lags by up to this much more.
LINGER_S = 0.25
#: How long a read waits for entries while a retention pass (hean.retention) is under way: when
#: none arrive, the pass's next chunk follows this soon, not after LINGER_S and a 500 ms read.
PRUNING_BLOCK_MS = 50
#: Most ids one SQL `IN (...)` takes.
CHUNK = 500
#: How long the web's lookups (`HistoryStore.answered`) wait on a locked SQLite file before the
#: command is refused "unavailable; retry": the whole web process waits meanwhile. In WAL mode a
#: reader waits only while a connection recovers the log or holds the file exclusively.
READER_BUSY_TIMEOUT_MS = 250
#: Most keys one compaction script takes: Redis runs nothing else meanwhile, so a script stays
#: short (about 10 us a key; 500 keys held it for 5 ms, in the tail of every command in flight).
COMPACT_CHUNK = 100
#: The writer runs at SCHED_IDLE by default (hean.affinity), so on a machine busy for long it
#: would fall behind without bound, with Redis holding the stream and every result not yet in
#: the database meanwhile. While a full read's oldest entry is older than this, it runs at normal
#: priority, and goes back to idle once a read finds less than a full batch waiting. Not less:
#: at 25,000 orders/s in 100-order commands the idle writer's lag touched 5 s in a 30 s run,
#: and at normal priority it takes its CPU from the web and the engine (hean.affinity); 30 s of
#: that load is about 0.5 GB of Redis memory.
CATCH_UP_LAG_S = 30.0
#: The error codes of an order the engine refused (hean.commands.reject_code's codes).
_ORDER_COMMANDS = ("submit_order", "submit_orders")


@functools.cache  # asked per batch written (HistoryStore._insert_many_ignoring)
def _insert_columns(table: sqlalchemy.Table) -> tuple[str, ...]:
    """The columns a row of `table` gives values for: all but its autoincrement id."""
    return tuple(column.name for column in table.columns if not column.primary_key)


#: The order of the values in the history writer's order and fill rows.
ORDER_COLUMNS, FILL_COLUMNS = _insert_columns(orders), _insert_columns(fills)
#: 0 written into the SQL (a bound 0 would be a parameter of its own: HistoryStore._execute_many)
_ZERO: sqlalchemy.ColumnElement[int] = sqlalchemy.literal_column("0", sqlalchemy.Integer)


@dataclass(frozen=True)
class CommandRecord:
    """What the database knows of one command."""

    request_id: str
    command: str | None
    envelope: dict[str, Any] | None
    ack: dict[str, Any] | None
    result: dict[str, Any] | None


class HistoryStore:
    """The history tables of one database: reads for the window's misses and REST, and the
    writer's batches."""

    def __init__(self, db: Database | Callable[[], Database]) -> None:
        # a function (hean.db.database) is asked each time: the health probe may replace it
        self._db = db
        self._reader: Any = None  # a DB-API connection of its own for `answered`
        self._reader_lock = threading.Lock()
        self._queries: dict[int, str] = {}
        #: (statement, dialect) -> its SQL and, for a positional paramstyle, where each of its
        #: parameters is in the rows (_execute_many)
        self._compiled: dict[tuple[str, str], tuple[str, tuple[int, ...]]] = {}

    @property
    def db(self) -> Database:
        return self._db() if callable(self._db) else self._db

    def read(self, statements: Sequence[sqlalchemy.Select[Any]]) -> list[db_reads.Rows]:
        """The rows of `statements`, in one transaction (hean.db_reads.read: off the web's hub on
        SQLite). Raises HistoryUnavailable when the database cannot be opened or read."""
        try:
            db = self.db
        except (SQLAlchemyError, OSError) as exc:  # opened (and its schema made) on first use
            raise HistoryUnavailable(f"history unreadable: {type(exc).__name__}") from exc
        return db_reads.read(db, statements)

    @property
    def waits_in_c(self) -> bool:
        """Whether this database's calls wait in C, where a green deadline cannot interrupt them
        (SQLite's: its busy timeout bounds them instead). psycopg waits green under eventlet."""
        return self.db.dialect.name == "sqlite"

    # -- request ids that left the window ---------------------------------------------------------

    def lookup(self, request_ids: Sequence[str], answered_only: bool = False) -> dict[str, CommandRecord]:
        """The records of those `request_ids` the database has (with `answered_only`, those
        with a result). Raises HistoryUnavailable when the database cannot be read."""
        found: dict[str, CommandRecord] = {}
        ids = list(dict.fromkeys(request_ids))
        if not ids:
            return found
        queries = []
        for start in range(0, len(ids), CHUNK):
            query = select(commands).where(commands.c.request_id.in_(ids[start : start + CHUNK]))
            queries.append(query.where(commands.c.result.is_not(None)) if answered_only else query)
        for rows in self.read(queries):
            for record in db_reads.records(commands, rows):
                found[record["request_id"]] = _record(record)
        return found

    def answered(self, request_ids: Sequence[str]) -> dict[str, CommandRecord]:
        """`lookup(request_ids, answered_only=True)` for the web's hot path: one query on a
        connection kept for it, by a plain DB-API cursor. Through a pooled SQLAlchemy
        connection the same query cost ~600 us of CPU per call (checkout, pre-ping, compile);
        this way ~20-40 us on SQLite (benchmarks/bench_history.py measures the web's CPU)."""
        ids = list(dict.fromkeys(request_ids))
        if not ids:
            return {}
        if len(ids) > CHUNK:
            found: dict[str, CommandRecord] = {}
            for start in range(0, len(ids), CHUNK):
                found.update(self.answered(ids[start : start + CHUNK]))
            return found
        with self._reader_lock:
            try:
                if self._reader is None:
                    self._reader = self._open_reader()
                cursor = self._reader.cursor()
                try:
                    cursor.execute(self._answered_sql(len(ids)), ids)
                    rows = cursor.fetchall()
                finally:
                    cursor.close()
                self._reader.rollback()  # end the read transaction (PostgreSQL opens one)
            except Exception as exc:  # the driver's own errors: start over with a new connection
                self._drop_reader()
                raise HistoryUnavailable(f"history unreadable: {type(exc).__name__}") from exc
            except BaseException:  # interrupted mid-query (a deadline, an exit): its state is unknown
                self._drop_reader()
                raise
        names = ("request_id", "command", "params", "reply_to", "received_at", "ack_ms", "result")
        return {row[0]: _record(dict(zip(names, row, strict=True))) for row in rows}

    def _answered_sql(self, count: int) -> str:
        query = self._queries.get(count)
        if query is None:
            mark = "?" if self.db.dialect.paramstyle == "qmark" else "%s"
            query = self._queries[count] = (
                "SELECT request_id, command, params, reply_to, received_at, ack_ms, result FROM commands "
                f"WHERE result IS NOT NULL AND request_id IN ({', '.join([mark] * count)})"
            )
        return query

    def _open_reader(self) -> Any:
        """The `answered` lookups' own DB-API connection. On SQLite it is opened with a busy
        timeout of READER_BUSY_TIMEOUT_MS (the pool's connections wait 5 s to connect, then
        10 s): SQLite waits in C, which the web process's deadline (eventlet) cannot interrupt,
        and every client of that process waited with it."""
        if self.db.dialect.name != "sqlite":
            return self.db.raw_connection()
        args, kwargs = self.db.dialect.create_connect_args(self.db.url)
        kwargs.update(timeout=READER_BUSY_TIMEOUT_MS / 1000.0, check_same_thread=False)
        reader = sqlite3.connect(*args, **kwargs)  # type: ignore[call-overload]  # SQLAlchemy gives them as a plain dict
        reader.execute(SQLITE_CACHE_PRAGMA)  # the file is in WAL mode already: its writers set it
        return reader

    def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                # a pooled connection is discarded by its pool; the SQLite reader is ours
                reader.invalidate() if hasattr(reader, "invalidate") else reader.close()

    # -- the writer's side ------------------------------------------------------------------------

    def cursor(self, stream: str = HISTORY_STREAM_KEY) -> str:
        """The last stream entry written to the database ("0-0" when none)."""
        with self.db.connect() as connection:
            row = connection.execute(
                select(history_cursor.c.last_id).where(history_cursor.c.stream == stream)
            ).first()
        return str(row[0]) if row else "0-0"

    def write(self, entries: Sequence[tuple[str, dict[str, str]]], stream: str = HISTORY_STREAM_KEY) -> Batch:
        """Write stream entries (id, fields) in one transaction, with the stream position."""
        batch = Batch.parse(entries)
        if not entries:
            return batch
        with self.db.begin() as connection:
            if batch.commands:
                self._upsert_commands(connection, batch.commands)
            envelopes = self._order_params(connection, batch)
            order_rows, fill_runs, updates = batch.orders_and_fills(envelopes)
            if order_rows:
                self._insert_many_ignoring(connection, orders, order_rows)
            for copied, rows in fill_runs:  # in the order they happened: the ids keep it
                if copied:
                    self._insert_fills_of_orders(connection, rows)
                else:
                    self._insert_many_ignoring(connection, fills, rows)
            for values, where in updates:
                connection.execute(orders.update().where(where).values(**values))
            self._set_cursor(connection, stream, entries[-1][0])
        batch.order_rows, batch.fill_rows = len(order_rows), sum(len(rows) for _, rows in fill_runs)
        return batch

    def _insert_fills_of_orders(self, connection: Any, order_rows: list[tuple[Any, ...]]) -> None:
        """The fills of orders filled on submission (`order_rows`, written already, in order):
        runs of COPY_RUN or more of a command's consecutive orders copied (`_copy_fills`), the
        rest bound from Python, in the same order."""
        for ranged, part in _copy_ranges(order_rows):
            if ranged:
                self._copy_fills(connection, part)
            else:
                self._insert_many_ignoring(connection, fills, [_fill_of_order(row) for row in part])

    def _copy_fills(self, connection: Any, ranges: list[tuple[Any, ...]]) -> None:
        """The fill rows of orders filled on submission, copied in SQL from their order rows,
        one statement per run of a command's consecutive orders (`ranges`: request id, first
        and last seq), skipping fills already written. An order row and its fill hold the same
        values; copying them costs a fraction of binding them again from Python (orders and
        fills in 0.67x the CPU, 11% fewer instructions: benchmarks/bench_history_insert.py;
        the writer's instructions per order on a captured stream, 14% fewer). Not a statement
        per fill: each runs with a statement journal of its own, which cost twice what binding
        the row did."""

        def build(values: dict[str, Any]) -> Any:  # once per database: _execute_many compiles it
            source = [orders.c[_ORDER_COLUMN_OF_FILL.get(name, name)] for name in FILL_COLUMNS]
            chosen = select(*source).where(
                orders.c.request_id == values["request_id"],
                orders.c.seq.between(values["first"], values["last"]),
            )
            return (
                self._insert()(fills)
                .from_select(list(FILL_COLUMNS), chosen)
                .on_conflict_do_nothing(index_elements=["request_id", "seq"])
            )

        self._execute_many(connection, "fills copied", build, ("request_id", "first", "last"), ranges)

    def _insert(self) -> Any:
        """The dialect's INSERT, which has ON CONFLICT (SQLite and PostgreSQL alike)."""
        from sqlalchemy.dialects import postgresql, sqlite

        return postgresql.insert if self.db.dialect.name == "postgresql" else sqlite.insert

    def _insert_ignoring(self, table: sqlalchemy.Table, keys: list[str]) -> Any:
        return self._insert()(table).on_conflict_do_nothing(index_elements=keys)

    def _insert_many_ignoring(
        self, connection: Any, table: sqlalchemy.Table, rows: list[tuple[Any, ...]]
    ) -> None:
        """`connection.execute(self._insert_ignoring(table, ["request_id", "seq"]), rows)`, by
        `_execute_many`; each row holds every column but the id, in the table's order
        (ORDER_COLUMNS, FILL_COLUMNS: Batch.orders_and_fills)."""
        columns = _insert_columns(table)

        def build(values: dict[str, Any]) -> Any:
            return self._insert_ignoring(table, ["request_id", "seq"]).values(values)

        self._execute_many(connection, table.name, build, columns, rows)

    def _upsert_commands(self, connection: Any, rows: dict[str, dict[str, Any]]) -> None:
        columns = tuple(c.name for c in commands.columns)

        def build(values: dict[str, Any]) -> Any:
            statement = self._insert()(commands).values(values)
            # a later entry fills in what an earlier one left empty; nothing known is overwritten
            return statement.on_conflict_do_update(
                index_elements=["request_id"],
                set_={
                    name: func.coalesce(statement.excluded[name], commands.c[name])
                    for name in columns
                    if name not in ("request_id", "runs")
                }
                | {
                    "runs": func.coalesce(commands.c.runs, _ZERO)
                    + func.coalesce(statement.excluded.runs, _ZERO)
                },
            )

        complete = [tuple(map(row.get, columns)) for row in rows.values()]
        self._execute_many(connection, commands.name, build, columns, complete)

    def _execute_many(
        self,
        connection: Any,
        name: str,
        build: Callable[[dict[str, Any]], Any],
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """`connection.execute(build(values), rows)` through the driver's executemany: the same
        statement, compiled by SQLAlchemy once per `name` and dialect, without SQLAlchemy's
        statement building and parameter processing per call and row, which took half of the
        history writer's CPU (the columns need none: text, numbers and booleans, which sqlite3
        and psycopg take as they are). Each row holds the values of `columns`, in that order."""
        key = (name, connection.dialect.name)
        compiled = self._compiled.get(key)
        if compiled is None:
            statement = build({column: sqlalchemy.bindparam(column) for column in columns})
            done = statement.compile(dialect=connection.dialect)
            if set(done.binds) - set(columns):  # a literal became a parameter: render it inline
                raise ValueError(
                    f"{name}: parameters other than its columns: {set(done.binds) - set(columns)}"
                )
            positions = tuple(columns.index(bound) for bound in done.positiontup or ())
            compiled = self._compiled[key] = (done.string, positions)
        sql, positions = compiled
        if not positions:  # a named paramstyle (psycopg: pyformat)
            connection.exec_driver_sql(sql, [dict(zip(columns, row, strict=True)) for row in rows])
        elif positions == tuple(range(len(columns))):  # positional, in the columns' order (sqlite3)
            connection.exec_driver_sql(sql, rows)
        else:
            connection.exec_driver_sql(sql, list(map(operator.itemgetter(*positions), rows)))

    def _order_params(self, connection: Any, batch: Batch) -> dict[str, dict[str, Any]]:
        """The envelopes of the order commands whose results are in `batch` (from the batch
        itself, else from the database)."""
        wanted = [r["request_id"] for _, r in batch.results if r.get("command") in _ORDER_COMMANDS]
        known = {rid: batch.envelopes[rid] for rid in wanted if rid in batch.envelopes}
        missing = [rid for rid in wanted if rid not in known]
        for start in range(0, len(missing), CHUNK):
            query = select(commands.c.request_id, commands.c.params, commands.c.received_at).where(
                commands.c.request_id.in_(missing[start : start + CHUNK])
            )
            for rid, params, received_at in connection.execute(query):
                if params:
                    received_ms = (received_at or 0) * 1000
                    known[rid] = {"params": fastjson.loads(params), "received_at_ms": received_ms}
        return known

    def _set_cursor(self, connection: Any, stream: str, last_id: str) -> None:
        statement = self._insert()(history_cursor).values(
            stream=stream, last_id=last_id, written_at=time.time()
        )
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["stream"],
                set_={"last_id": statement.excluded.last_id, "written_at": statement.excluded.written_at},
            )
        )

    # -- REST ---------------------------------------------------------------------------------------

    def orders(self, filters: HistoryFilter) -> tuple[list[dict[str, Any]], int | None]:
        """Orders newest first, filtered; and the cursor of the next page (None at the end)."""
        return self._page(orders, filters, status=orders.c.status)

    def fills(self, filters: HistoryFilter) -> tuple[list[dict[str, Any]], int | None]:
        """Fills newest first, filtered; and the cursor of the next page (None at the end)."""
        return self._page(fills, filters)

    def _page(
        self, table: sqlalchemy.Table, filters: HistoryFilter, status: Any = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        conditions = []
        for column, value in (
            (table.c.symbol, filters.symbol),
            (table.c.side, filters.side),
            (table.c.request_id, filters.request_id),
            (table.c.client_order_id, filters.client_order_id),
            (status, filters.status),
        ):
            if value is not None and column is not None:
                conditions.append(column == value)
        if filters.since is not None:
            conditions.append(table.c.executed_at >= filters.since)
        if filters.until is not None:
            conditions.append(table.c.executed_at < filters.until)
        # Newest first, in the order of the index the filters use, so that a page reads about
        # `limit` rows of it: with a symbol or a time range, by execution time then id (the time
        # indexes' order: their entries end with the row id on SQLite); otherwise by id (the
        # table's own order). Ordered by id alone, SQLite read and sorted every order of a symbol
        # for each page (1.1-1.6 s for a symbol of 3 million); ordered by time alone, a status no
        # order has went through the time index and a lookup of every row (5.5 s against 0.4).
        by_time = filters.symbol is not None or filters.since is not None or filters.until is not None
        if filters.cursor is not None and by_time:  # after the row `cursor` (its id) in this order
            at = select(table.c.executed_at).where(table.c.id == filters.cursor).scalar_subquery()
            conditions.append(table.c.executed_at <= at)  # a range of the time index
            conditions.append(or_(table.c.executed_at < at, table.c.id < filters.cursor))
        elif filters.cursor is not None:
            conditions.append(table.c.id < filters.cursor)
        by_id = filters.request_id is not None or filters.client_order_id is not None
        if status is not None and filters.status not in (None, "FILLED") and not by_id:
            # the condition of ix_orders_status (ix_orders_symbol_status with a symbol,
            # ix_orders_status_time with times alone), true of every such row, stated for SQLite
            # to use them (PostgreSQL finds it implied). Not with a request or client order id,
            # whose own index finds their few rows
            conditions.append(status != sqlalchemy.literal_column("'FILLED'"))
        order = (table.c.executed_at.desc(), table.c.id.desc()) if by_time else (table.c.id.desc(),)
        query = select(table).order_by(*order).limit(filters.limit + 1)
        if conditions:
            query = query.where(and_(*conditions))
        rows = db_reads.records(table, self.read([query])[0])
        more = len(rows) > filters.limit
        rows = rows[: filters.limit]
        return rows, (int(rows[-1]["id"]) if more and rows else None)


def parse_time(raw: str) -> float:
    """Epoch seconds from epoch seconds or an ISO 8601 time (UTC unless it says otherwise), as
    the history's filters take them; ValueError says what is wrong (NaN would match no row)."""
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"must be a finite time, got {raw!r}")
        return seconds
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"must be epoch seconds or an ISO 8601 time, got {raw!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class HistoryFilter:
    """Filters and paging of `GET /api/orders` and `GET /api/fills` (validated by the caller)."""

    symbol: str | None = None
    side: str | None = None
    status: str | None = None
    request_id: str | None = None
    client_order_id: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    cursor: int | None = None


def _record(row: Any) -> CommandRecord:
    envelope = None
    if row["params"] is not None:
        envelope = {
            "request_id": row["request_id"],
            "command": row["command"],
            "params": json.loads(row["params"]),
            "reply_to": row["reply_to"],
            "received_at_ms": (row["received_at"] or 0.0) * 1000.0,
        }
    return CommandRecord(
        request_id=row["request_id"],
        command=row["command"],
        envelope=envelope,
        ack=rebuild_ack(row["request_id"], row["command"], row["ack_ms"]),
        result=json.loads(row["result"]) if row["result"] else None,
    )


#: Fills in the order they happened, in runs of one kind: (False, rows in FILL_COLUMNS order),
#: fills of resting orders; (True, rows in ORDER_COLUMNS order), orders filled on submission,
#: whose fills hold their order rows' values (HistoryStore._copy_fills, _fill_of_order).
FillRuns = list[tuple[bool, list[tuple[Any, ...]]]]
#: The fewest consecutive orders of one command filled on submission whose fills are copied in
#: SQL by one statement (HistoryStore._copy_fills); fewer are bound from Python.
COPY_RUN = 8
#: The order column a fill's column holds the value of, where the names differ.
_ORDER_COLUMN_OF_FILL = {"quantity": "filled_quantity", "price": "fill_price"}
#: A fill's values (FILL_COLUMNS) from its order row's (ORDER_COLUMNS).
_fill_of_order = operator.itemgetter(
    *(ORDER_COLUMNS.index(_ORDER_COLUMN_OF_FILL.get(name, name)) for name in FILL_COLUMNS)
)


def _copy_ranges(rows: list[tuple[Any, ...]]) -> list[tuple[bool, list[tuple[Any, ...]]]]:
    """Order rows (ORDER_COLUMNS) of orders filled on submission, in order, split into runs:
    (True, [(request_id, first seq, last seq), ...]) for runs of at least COPY_RUN consecutive
    orders of one command, (False, [order rows]) for the rest; in the same order."""
    out: list[tuple[bool, list[tuple[Any, ...]]]] = []
    start = 0
    while start < len(rows):
        request_id, first = rows[start][0], rows[start][1]
        end = start + 1
        while end < len(rows) and rows[end][0] == request_id and rows[end][1] == first + end - start:
            end += 1
        ranged = end - start >= COPY_RUN
        if not out or out[-1][0] is not ranged:
            out.append((ranged, []))
        if ranged:
            out[-1][1].append((request_id, first, rows[end - 1][1]))
        else:
            out[-1][1].extend(rows[start:end])
        start = end
    return out


@dataclass
class Batch:
    """Stream entries parsed: command rows by request id, the results with their entry times."""

    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    envelopes: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    order_rows: int = 0
    fill_rows: int = 0

    @property
    def answered(self) -> list[str]:
        return [r["request_id"] for _, r in self.results]

    def _row(self, request_id: str) -> dict[str, Any]:
        row = self.commands.get(request_id)
        if row is None:
            row = self.commands[request_id] = {"request_id": request_id}
        return row

    @classmethod
    def parse(cls, entries: Iterable[tuple[str, dict[str, str]]]) -> Batch:
        batch = cls()
        for entry_id, fields in entries:
            at = entry_time(entry_id)
            if "c" in fields:
                for line in fields["c"].split("\n"):
                    envelope = fastjson.loads(line)
                    batch.envelopes[envelope["request_id"]] = envelope
                    batch._row(envelope["request_id"]).update(
                        command=envelope["command"],
                        params=fastjson.dumps(envelope["params"]),
                        reply_to=envelope.get("reply_to"),
                        received_at=envelope["received_at_ms"] / 1000.0,
                    )
            if "a" in fields:
                for line in fields["a"].split("\n"):
                    request_id, ack_ms = line.split(" ", 1)
                    batch._row(request_id).update(ack_ms=float(ack_ms), acked_at=at)
            if "r" in fields:
                for line in fields["r"].split("\n"):
                    result = fastjson.loads(line)
                    error = result.get("error")
                    row = batch._row(result["request_id"])
                    row.update(
                        command=result.get("command"),
                        finished_at=at,
                        success=bool(result.get("success")),
                        error_code=error.get("code") if error else None,
                        result=line,
                        runs=(row.get("runs") or 0) + 1,
                    )
                    batch.results.append((at, result))
        return batch

    def orders_and_fills(
        self, envelopes: dict[str, dict[str, Any]]
    ) -> tuple[list[tuple[Any, ...]], FillRuns, list[tuple[dict[str, Any], Any]]]:
        """Order rows (tuples in ORDER_COLUMNS order) from the results (the orders' params from
        `envelopes`); the fills, in the order they happened (FillRuns); and the updates of
        earlier orders (cancelled, or filled while resting)."""
        order_rows: list[tuple[Any, ...]] = []
        fill_runs: FillRuns = []
        updates: list[tuple[dict[str, Any], Any]] = []

        def add_fill(copied: bool, row: tuple[Any, ...]) -> None:
            if not fill_runs or fill_runs[-1][0] is not copied:
                fill_runs.append((copied, []))
            fill_runs[-1][1].append(row)

        for at, result in self.results:
            request_id, command = result["request_id"], result.get("command")
            envelope = envelopes.get(request_id) or {}
            params = envelope.get("params") or {}
            received = envelope.get("received_at_ms")
            received_at = received / 1000.0 if received else None
            body = result.get("result") or {}
            if command == "submit_order":
                outcomes = [_order_outcome(body.get("order"), result.get("error"), params)]
                requested = [params]
            elif command == "submit_orders":
                outcomes = list(body.get("results") or [])
                requested = list(params.get("orders") or [])
                if not outcomes and result.get("error"):  # the core refused the whole command
                    outcomes = [_order_outcome(None, result["error"], p) for p in requested]
            elif command == "update_market":
                for seq, fill in enumerate(body.get("fills") or []):
                    add_fill(False, _fill_row(request_id, seq, fill, at))
                    updates.append(
                        (
                            {
                                "status": "FILLED",
                                "filled_quantity": fill.get("quantity"),
                                "fill_price": fill.get("price"),
                                "fee": fill.get("fee"),
                            },
                            orders.c.order_id == fill.get("order_id"),
                        )
                    )
                continue
            elif command == "cancel_order" and result.get("success") and body.get("cancelled"):
                updates.append(
                    (
                        {"status": "CANCELLED"},
                        and_(
                            orders.c.client_order_id == body.get("client_order_id"),
                            orders.c.status == "RESTING",
                        ),
                    )
                )
                continue
            else:
                continue
            for seq, outcome in enumerate(outcomes):
                order = requested[seq] if seq < len(requested) else {}
                got, asked = outcome.get, order.get
                client_order_id = got("client_order_id") or asked("client_order_id")
                order_id, symbol, side = got("order_id"), asked("symbol"), asked("side")
                filled, fill_price, fee = got("filled_quantity"), got("fill_price"), got("fee")
                duplicate = bool(got("duplicate"))
                # ORDER_COLUMNS, in order
                order_rows.append(
                    (
                        request_id,
                        seq,
                        client_order_id,
                        order_id,
                        symbol,
                        side,
                        asked("order_type", "MARKET" if order else None),
                        asked("time_in_force", "GTC" if order else None),
                        _decimal_text(asked("quantity")),
                        _decimal_text(asked("price")),
                        got("status"),
                        got("reject_reason"),
                        filled,
                        fill_price,
                        fee,
                        duplicate,
                        received_at,
                        at,
                    )
                )
                if not duplicate and _nonzero(filled):  # its fill holds its order row's values
                    add_fill(True, order_rows[-1])
        return order_rows, fill_runs, updates


def _order_outcome(order: Any, error: Any, params: dict[str, Any]) -> dict[str, Any]:
    """One order's outcome: the engine's, or for an order it refused, REJECTED with the reason
    its error names ("order X rejected: REASON")."""
    if isinstance(order, dict):
        return order
    message = str((error or {}).get("message") or "")
    reason = message.rsplit(": ", 1)[-1] if " rejected: " in message else (error or {}).get("code")
    return {"client_order_id": params.get("client_order_id"), "status": "REJECTED", "reject_reason": reason}


def _fill_row(request_id: str, seq: int, fill: dict[str, Any], at: float) -> tuple[Any, ...]:
    """A fill of a resting order (FILL_COLUMNS, in order)."""
    got = fill.get
    return (
        request_id,
        seq,
        got("order_id"),
        got("client_order_id"),
        got("symbol"),
        got("side"),
        got("quantity"),
        got("price"),
        got("fee"),
        at,
    )


def _decimal_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _nonzero(value: Any) -> bool:
    try:
        return value is not None and float(value) != 0.0
    except (TypeError, ValueError):
        return False


class CatchUpPriority:
    """The writer loop's scheduling (the calling thread's): SCHED_IDLE as launched, normal
    priority while it is behind (CATCH_UP_LAG_S). Does nothing unless it started at SCHED_IDLE."""

    def __init__(self) -> None:
        idle = getattr(os, "SCHED_IDLE", None)
        self._idle = idle is not None and os.sched_getscheduler(0) == idle
        self.catching_up = False

    def read(self, lag_s: float, full: bool) -> None:
        """After a read: `lag_s`, the age of its oldest entry; `full`, more may be waiting."""
        if not self._idle:
            return
        if not self.catching_up and full and lag_s > CATCH_UP_LAG_S:
            try:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            except PermissionError as exc:  # not allowed here: stay idle, and say so once
                self._idle = False
                log.warning("event=history_behind lag_s=%.1f priority=idle reason=%s", lag_s, exc)
                return
            self.catching_up = True
            log.warning("event=history_catching_up lag_s=%.1f priority=normal", lag_s)
        elif self.catching_up and not full:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            self.catching_up = False
            log.info("event=history_caught_up priority=idle")


def next_read_count(entries: Sequence[tuple[str, dict[str, str]]]) -> int:
    """How many entries the read after `entries` asks for: as many as fit in READ_BYTES at their
    size per entry, within MIN_READ_ENTRIES..READ_ENTRIES."""
    size = sum(len(value) for _, fields in entries for value in fields.values())
    if not size:  # nothing read, or nothing in it: nothing known of the size
        return READ_ENTRIES
    return max(MIN_READ_ENTRIES, min(READ_ENTRIES, READ_BYTES * len(entries) // size))


class HistoryWriter:
    """Copies the history stream to the database, in batches, exactly once (see the module)."""

    def __init__(
        self, journal: CommandJournal, store: HistoryStore, window_s: int, stream: str = HISTORY_STREAM_KEY
    ) -> None:
        self.journal, self.store, self.window_s, self.stream = journal, store, window_s, stream
        self.last_id: str | None = None
        self.reset_database: Callable[[], None] | None = None
        self.priority: CatchUpPriority | None = None  # set by `main` (its own process)
        #: HEAN_HISTORY_KEEP_DAYS's passes, a chunk between batches (set by `main` when it is on)
        self.retention: Retention | None = None
        #: Entries the next read asks for (`next_read_count`); whether the last read filled its count.
        self.read_count = MIN_READ_ENTRIES
        self.read_full = False
        #: The failures of the current run of them (logged once, then every 10 s), and when the
        #: first one happened (published for the health pulse: `_publish_failure`).
        self.failures = FailureLog(log)
        self.failing_since: float | None = None

    def _entries(self, raw: Any) -> list[tuple[str, dict[str, str]]]:
        return [(text(entry_id), {text(k): text(v) for k, v in fields.items()}) for entry_id, fields in raw]

    def recover(self) -> None:
        """At start: the position from the database; entries it wrote but a crash kept from
        compacting and trimming are compacted and trimmed now."""
        self.last_id = self.store.cursor(self.stream)
        if self.last_id == "0-0":
            return
        client = self.journal.client
        written = self._entries(client.xrange(self.stream, min="-", max=self.last_id))
        if written:
            self._settle(Batch.parse(written).answered)
            if self.failing_since is None:  # not again at every retry of a failure
                log.info("event=history_recovered entries=%d last_id=%s", len(written), self.last_id)

    def _settle(self, answered: list[str]) -> None:
        for start in range(0, len(answered), COMPACT_CHUNK):
            self.journal.compact(answered[start : start + COMPACT_CHUNK], self.window_s)
        assert self.last_id is not None
        self.journal.client.xtrim(self.stream, minid=next_stream_id(self.last_id))

    def run_once(self, block_ms: int = 1000) -> int:
        """Read what waits (up to `block_ms` for something), write it, settle it; returns the
        number of entries written."""
        if self.last_id is None:
            self.recover()
        assert self.last_id is not None
        count = self.read_count
        reply = self.journal.client.xread({self.stream: self.last_id}, count=count, block=block_ms)
        if not reply:
            self.read_full = False
            if self.priority is not None:
                self.priority.read(0.0, full=False)
            return 0
        entries = self._entries(cast(list[Any], reply)[0][1])
        self.read_full = len(entries) >= count
        self.read_count = next_read_count(entries)
        if self.priority is not None:
            self.priority.read(time.time() - entry_time(entries[0][0]), full=self.read_full)
        batch = self.store.write(entries, self.stream)
        self.last_id = entries[-1][0]
        metrics.history_written(len(batch.commands), batch.order_rows, batch.fill_rows)
        self._settle(batch.answered)
        return len(entries)

    def _publish_failure(self, error: str) -> None:
        """Tell the health pulse (HISTORY_FAILURE_KEY) that writes fail, and why: a database that
        takes no writes (a full disk) still answers the db module's reads. Best effort: when Redis
        is what failed, the redis module says so."""
        now = time.time()
        if self.failing_since is None:
            self.failing_since = now
        failure = {"error": error, "since": self.failing_since, "failures": self.failures.failures}
        with contextlib.suppress(RedisError):
            self.journal.client.set(HISTORY_FAILURE_KEY, json.dumps(failure), ex=HISTORY_FAILURE_TTL_S)

    def _recovered(self) -> None:
        assert self.failing_since is not None
        self.failures.recovered(
            "event=history_write_recovered failing_s=%.1f", time.time() - self.failing_since
        )
        self.failing_since = None
        with contextlib.suppress(RedisError):  # else it expires on its own
            self.journal.client.delete(HISTORY_FAILURE_KEY)

    def run(self, stop: threading.Event) -> None:
        """Write until `stop` is set; Redis or database trouble is retried (nothing is lost: the
        entries wait in the stream)."""
        delay = 0.0
        while not stop.is_set():
            try:
                # while a retention pass is under way and nothing arrives, its chunks go back to
                # back (each after a short wait for entries); while entries arrive, one a batch
                pruning = self.retention is not None and self.retention.under_way
                written = self.run_once(block_ms=PRUNING_BLOCK_MS if pruning else 500)
                if self.retention is not None:
                    self.retention.step(self.store.db)
                if self.failing_since is not None:
                    self._recovered()
                if not self.read_full and (written or not pruning):
                    stop.wait(LINGER_S)
                delay = 0.0
            except (RedisError, SQLAlchemyError, HistoryUnavailable) as exc:
                delay = min(5.0, delay * 2 or 0.2)
                error = describe_error(exc)
                self.failures.failed("event=history_write_failed error=%s retry_in_s=%.1f", error, delay)
                self._publish_failure(error)
                self.last_id = None  # read the position from the database again
                if not isinstance(exc, RedisError) and self.reset_database is not None:
                    self.reset_database()  # fresh connections: a pooled one may hold a bad state
                stop.wait(delay)


def main() -> int:
    """`python -m hean.history`: the history writer of `hean up`."""
    from hean.config import get_settings
    from hean.db import database, reset
    from hean.gc_policy import freeze_startup_objects
    from hean.logs import configure_logging
    from hean.redis_client import sync_client

    settings = get_settings()
    configure_logging(settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    writer = HistoryWriter(CommandJournal(sync_client()), HistoryStore(database), settings.dedup_window_s)
    writer.reset_database = reset
    writer.priority = CatchUpPriority()
    keep_s = settings.history_keep_s
    if keep_s is not None:
        writer.retention = Retention(keep_s)
    log.info(
        "event=history_writer_started window_s=%d keep_days=%s",
        settings.dedup_window_s,
        f"{settings.history_keep_days:g}" if keep_s else "all",
    )
    trimmer = _database_trimmer(database()) if settings.drop_written_pages else None
    freeze_startup_objects("history")
    try:
        writer.run(stop)
    finally:
        if trimmer is not None:
            trimmer.stop()
    return 0


def _database_trimmer(db: Database) -> CacheTrimmer | None:
    """For an SQLite file: its pages dropped from the page cache once on disk (hean.page_cache).
    Only the main file, which a checkpoint writes and fsyncs: SQLite's own cache serves the
    writer's reads, and the log (`-wal`) is written over and over in place, so it stays. The
    descriptor is held (`hold`): closing one would drop this process's SQLite locks."""
    path = sqlite_file(db)
    return CacheTrimmer("history-db", lambda: [Path(path)], hold=True).start() if path else None


if __name__ == "__main__":
    raise SystemExit(main())
