"""The history database's retention: rows older than `HEAN_HISTORY_KEEP_DAYS` deleted, a chunk
at a time, by the history writer between its batches (`Retention`) or by `hean prune-history`.

Without it the history grows for ever: about 1 MB per 1,000 single orders in SQLite, 3.7 GB an
hour at 1,000 orders/s (README, "A long run, and the files a rewrite deletes"). By default it
keeps everything, as before: trade records are often kept by law, and only the operator knows
for how long.

What goes, once older than the retention:
- orders and fills, by the time they were executed;
- commands, by the time they were received, once they have their result. A command acked and
  never answered stays: `hean reconcile` lists it, and it is the operator's to look into.

A request id whose command row is gone is unknown again: sent once more, it runs once more. So
the retention is also the longest time a resent request id is answered with its first ack and
result, and it must be longer than `HEAN_DEDUP_WINDOW_S` (the time a request id stays in
Redis after its result reached the database) and at least an hour (hean.config).

Each chunk (at most CHUNK rows of each table, oldest first, found through the tables' time
indexes) is a short transaction of its own: the writer's batches and the web's reads never wait
long for it. SQLite keeps the pages it frees and fills them again: the file stops growing once
the retention is reached, and does not shrink (`VACUUM`, run while HEAN is stopped, gives the
space back). PostgreSQL's autovacuum does the same for its tables.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import sqlalchemy
from sqlalchemy import func, select
from sqlalchemy.engine import Engine as Database
from sqlalchemy.exc import SQLAlchemyError

from hean import metrics
from hean.db import commands, fills, orders

log = logging.getLogger(__name__)

#: Most rows of each table one chunk deletes. benchmarks/bench_retention.py on SQLite here: a
#: chunk of single-order commands (2,000 commands, orders and fills) took 21 ms (median; at most
#: 100), of 100-order commands 9 ms (at most 111, a checkpoint); a pass cost the writer 0.23x
#: (single orders) and 0.47x (100-order commands) the CPU of writing the same rows.
CHUNK = 2000
#: How often the writer starts a pass once the last one has finished.
EVERY_S = 60.0
#: A long pass (the first one after turning retention on, over a big database) logs its
#: progress every this many chunks.
LOG_EVERY_CHUNKS = 50


@dataclass
class Pruned:
    """Rows per table: deleted, or (hean prune-history --dry-run) old enough to be."""

    commands: int = 0
    orders: int = 0
    fills: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def __str__(self) -> str:
        return f"commands={self.commands} orders={self.orders} fills={self.fills}"

    def filled(self, chunk: int) -> bool:
        """Whether a table gave a whole `chunk`: more of it may be left."""
        return max(self.as_dict().values()) >= chunk


#: What a row must also meet to go, besides its age.
_Also = list[sqlalchemy.ColumnElement[bool]]
#: Each table by name, with the time its rows are aged by and its `_Also`.
_TABLES: dict[str, tuple[sqlalchemy.Table, sqlalchemy.Column[float], _Also]] = {
    "commands": (commands, commands.c.received_at, [commands.c.result.is_not(None)]),
    "orders": (orders, orders.c.executed_at, []),
    "fills": (fills, fills.c.executed_at, []),
}


def prune_chunk(db: Database, before: float, chunk: int = CHUNK) -> Pruned:
    """Delete, in one transaction, at most `chunk` rows of each table older than `before` (epoch
    seconds), oldest first; returns how many went from each (also counted in the metrics)."""
    done = Pruned()
    with db.begin() as connection:
        for name, (table, at, also) in _TABLES.items():
            key = next(iter(table.primary_key.columns))
            oldest = select(key).where(at < before, *also).order_by(at).limit(chunk)
            deleted = connection.execute(table.delete().where(key.in_(oldest))).rowcount
            setattr(done, name, max(0, deleted or 0))
    metrics.history_pruned(done.as_dict())
    return done


def count_old(db: Database, before: float) -> Pruned:
    """How many rows of each table are older than `before`: what a pass would delete."""
    counted = Pruned()
    with db.connect() as connection:
        for name, (table, at, also) in _TABLES.items():
            query = select(func.count()).select_from(table).where(at < before, *also)
            setattr(counted, name, int(connection.execute(query).scalar() or 0))
    return counted


def prune(db: Database, before: float, chunk: int = CHUNK) -> Iterator[Pruned]:
    """Every row older than `before`, deleted a chunk at a time: yields each chunk's counts."""
    while True:
        done = prune_chunk(db, before, chunk)
        yield done
        if not done.filled(chunk):
            return


class Retention:
    """The history writer's passes: one every EVERY_S, with its cutoff fixed as it starts,
    deleted a chunk per `step` so that the writer's own batches go on between them."""

    def __init__(
        self,
        keep_s: float,
        every_s: float = EVERY_S,
        chunk: int = CHUNK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keep_s, self.every_s, self.chunk, self.clock = keep_s, every_s, chunk, clock
        self.next_pass = 0.0  # the first pass starts at the first step
        self.before: float | None = None  # the cutoff of the pass under way
        self.pass_done = Pruned()
        self.chunks = 0

    @property
    def under_way(self) -> bool:
        """Whether a pass has started and not finished."""
        return self.before is not None

    def step(self, db: Database) -> Pruned:
        """One chunk of the pass under way or due; nothing when none is."""
        now = self.clock()
        if self.before is None:
            if now < self.next_pass:
                return Pruned()
            self.before, self.pass_done, self.chunks = now - self.keep_s, Pruned(), 0
        try:
            done = prune_chunk(db, self.before, self.chunk)
        except SQLAlchemyError as exc:  # the next pass tries again; the writer's batches go on
            log.warning("event=history_prune_failed before=%.0f error=%s", self.before, type(exc).__name__)
            self.before, self.next_pass = None, now + self.every_s
            return Pruned()
        self.pass_done += done
        self.chunks += 1
        if done.filled(self.chunk):  # more left
            if self.chunks % LOG_EVERY_CHUNKS == 0:
                log.info("event=history_pruning before=%.0f %s", self.before, self.pass_done)
            return done
        if self.pass_done.total:
            log.info(
                "event=history_pruned before=%.0f %s chunks=%d", self.before, self.pass_done, self.chunks
            )
        self.before, self.next_pass = None, now + self.every_s
        return done
