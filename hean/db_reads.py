"""Reads of the history database that can take long (the REST listings of orders and fills,
reconcile's counts, a command's record), run where they do not stall the web process.

Under eventlet a SQLite query runs in C on the hub's own thread, and while it runs every
connection of the web process waits: acks, results, health checks. A listing of orders filtered
by symbol, over a history of 3 million orders, held them 1-4.5 s (probed every 5 ms; filtered by
a status no order has, 3-4.5 s). psycopg waits green instead (web/__main__.py), so PostgreSQL
never held them.

So on SQLite, in a process eventlet patched, `read` runs the statements in a native thread
(`eventlet.tpool`) on a sqlite3 connection of its own, and does nothing else there: no logging
and no SQLAlchemy pool, whose locks eventlet made green (a native thread that waits on one is
never woken). SQLAlchemy compiles the statements on the calling green thread, which waits
green, and types the rows there. Everywhere else SQLAlchemy runs them as usual.

A read on SQLite that runs longer than READ_BUDGET_S (searching, or waiting for a lock) is
interrupted: ReadTooLong. The thread would otherwise keep one of the machine's CPUs busy for as
long as the query takes, beside the order path. For the same reason at most READS_AT_ONCE run at
a time; the others wait their turn (green), within their budget.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

import sqlalchemy
from sqlalchemy.exc import SQLAlchemyError

from hean.command_journal import HistoryUnavailable
from hean.db import SQLITE_CACHE_PRAGMA, Database

#: The longest a read on SQLite may run (its lock waits included) before it is interrupted.
READ_BUDGET_S: Final = 10.0
#: How many SQLite virtual machine steps run between two looks at the clock.
_STEPS_PER_CHECK: Final = 20_000
#: How many reads run at once in a process (each may keep a CPU busy for READ_BUDGET_S; the
#: order path shares the machine's CPUs with them); the others wait their turn, within their
#: budget.
READS_AT_ONCE: Final = 2

_turns: list[Any] = []  # the green semaphore of READS_AT_ONCE, made in the patched process
#: Reads running off the hub now, and the most that ever ran at once (tests read it).
running = [0, 0]


class ReadTooLong(HistoryUnavailable):
    """A read of the history ran past READ_BUDGET_S and was interrupted."""


def eventlet_patched() -> bool:
    """True in a process that eventlet monkey-patched (the web process)."""
    patcher = sys.modules.get("eventlet.patcher")
    return patcher is not None and bool(patcher.is_monkey_patched("thread"))


Rows = list[tuple[Any, ...]]


def read(
    db: Database, statements: Sequence[sqlalchemy.Select[Any]], budget_s: float = READ_BUDGET_S
) -> list[Rows]:
    """The rows of each of `statements` (tuples in their selected columns' order, typed as
    SQLAlchemy types them), read in one transaction. Raises HistoryUnavailable when the database
    cannot be read, ReadTooLong (one) when a read on SQLite ran past `budget_s`."""
    try:
        if db.dialect.name == "sqlite" and eventlet_patched():
            return _read_off_the_hub(db, statements, budget_s)
        with db.connect() as connection:
            return [[tuple(row) for row in connection.execute(statement)] for statement in statements]
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise HistoryUnavailable(f"history unreadable: {type(exc).__name__}") from exc


def records(table: sqlalchemy.Table, rows: Rows) -> list[dict[str, Any]]:
    """`rows` of `select(table)` as dicts by column name."""
    names = [column.name for column in table.columns]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _read_off_the_hub(
    db: Database, statements: Sequence[sqlalchemy.Select[Any]], budget_s: float
) -> list[Rows]:
    from eventlet import tpool

    dialect = db.dialect
    compiled = [_compiled(statement, dialect) for statement in statements]
    args, kwargs = dialect.create_connect_args(db.url)
    if not _turns:
        from eventlet.semaphore import Semaphore

        _turns.append(Semaphore(READS_AT_ONCE))
    began = time.monotonic()
    if not _turns[0].acquire(timeout=budget_s):
        raise ReadTooLong(f"history reads busy for {budget_s:g} s: {READS_AT_ONCE} at a time; retry")
    try:
        running[0] += 1
        running[1] = max(running)
        left = budget_s - (time.monotonic() - began)
        statements_sql = [(sql, params) for sql, params, _ in compiled]
        raw = tpool.execute(_run_sqlite, args, kwargs, statements_sql, left) if left > 0 else None
    finally:
        running[0] -= 1
        _turns[0].release()
    if raw is None:
        raise ReadTooLong(f"history read took over {budget_s:g} s: narrow it (a time range, a symbol)")
    return [_typed(rows, processors) for rows, (_, _, processors) in zip(raw, compiled, strict=True)]


def _compiled(statement: sqlalchemy.Select[Any], dialect: Any) -> tuple[str, tuple[Any, ...], list[Any]]:
    """`statement`'s SQL for sqlite3 (qmark), its parameters in order, and each selected
    column's result processor."""
    done = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    values = done.construct_params()
    params = []
    for name in done.positiontup or ():
        value = values[name]
        # an IN list's values are bound as <its parameter>_<n> (render_postcompile)
        bind = done.binds[name if name in done.binds else name.rsplit("_", 1)[0]]
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        params.append(processor(value) if processor is not None and value is not None else value)
    processors = [
        c.type.dialect_impl(dialect).result_processor(dialect, None) for c in statement.selected_columns
    ]
    return done.string, tuple(params), processors


def _typed(rows: Rows, processors: list[Any]) -> Rows:
    if not any(processors):
        return rows
    return [
        tuple(value if p is None else p(value) for p, value in zip(processors, row, strict=True))
        for row in rows
    ]


def _run_sqlite(
    args: Sequence[Any],
    kwargs: dict[str, Any],
    statements: list[tuple[str, tuple[Any, ...]]],
    budget_s: float,
) -> list[Rows] | None:
    """In a native thread: sqlite3 calls only. None when the budget ran out."""
    deadline = time.monotonic() + budget_s
    connection = sqlite3.connect(*args, **dict(kwargs, timeout=budget_s, check_same_thread=False))
    try:
        connection.set_progress_handler(lambda: time.monotonic() > deadline, _STEPS_PER_CHECK)
        connection.execute(SQLITE_CACHE_PRAGMA)
        connection.execute("BEGIN")  # one snapshot for all of them
        try:
            return [connection.execute(sql, params).fetchall() for sql, params in statements]
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:  # interrupted by the handler, or a lock waited out
                return None
            raise
    finally:
        connection.close()
