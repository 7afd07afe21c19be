"""Reconciliation: does every acked command have exactly one run and an answer? It compares the
journal (the Redis window: what is acked and still in flight), the engine (its counters) and the
database (the history: acks, results and how many times each command ran), per time range.

`hean reconcile` and `GET /api/reconcile` print it; the fault tests call `reconcile()` after a
fault under load and expect `ok` (nothing missing, nothing duplicated).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis
from sqlalchemy import and_, func, select

from hean.command_journal import KEY_PREFIX
from hean.db import commands
from hean.history import HistoryStore
from hean.redis_client import text
from hean.topology import ENGINE_KEY, HISTORY_STREAM_KEY, SYSTEM_NAMESPACE

#: Most request ids listed per kind (the counts are always complete).
LISTED = 1000


@dataclass
class Reconciliation:
    """Counts per kind over commands received in [since, until) (None: unbounded).

    acked: commands accepted, i.e. reserved and queued (one atomic step, before the ack is
    sent), each of which must run exactly once; `ack_journaled` of them have their sent ack on
    record (a web process that dies between the enqueue and the ack's journaling leaves a
    command accepted without one; its sender resends and runs it once all the same);
    applied: commands a worker ran (a result recorded); answered: commands with a result;
    in_flight: accepted commands the window holds unanswered (queued or running); missing:
    accepted commands with no result that are not in flight; duplicated: commands a worker ran
    more than once. `history_lag_s` is the age of the oldest
    entry not yet in the database when the counts were taken.
    """

    since: float | None
    until: float | None
    acked: int = 0
    ack_journaled: int = 0
    applied: int = 0
    answered: int = 0
    in_flight: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    missing_count: int = 0
    duplicated_count: int = 0
    history_lag_s: float = 0.0
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing acked is missing and nothing ran twice."""
        return self.missing_count == 0 and self.duplicated_count == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _history_lag(client: redis.Redis) -> float:
    oldest = client.xrange(HISTORY_STREAM_KEY, count=1)
    if not oldest:
        return 0.0
    entry_id = cast(bytes, oldest[0][0])
    return max(0.0, time.time() - int(text(entry_id).split("-")[0]) / 1000.0)


def _window(client: redis.Redis) -> dict[str, dict[str, str]]:
    """The window's records that are not done: request id -> fields (c, a, s, r)."""
    found: dict[str, dict[str, str]] = {}
    keys = [text(k) for k in client.scan_iter(match=KEY_PREFIX + "*", count=1000) if k is not None]
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.hgetall(key)
        for key, fields in zip(chunk, pipe.execute(), strict=True):
            record = {text(k): text(v) for k, v in fields.items()}
            if record and "d" not in record:
                found[key[len(KEY_PREFIX) :]] = record
    return found


def _engine(client: redis.Redis) -> dict[str, Any]:
    """The engine's published counters (system/engine on the state bus)."""
    from hean.core.system import _state_core as core

    try:
        update = core.parse_hash(
            SYSTEM_NAMESPACE,
            ENGINE_KEY,
            client.hmget(core.state_key(SYSTEM_NAMESPACE, ENGINE_KEY), *core.HASH_FIELDS),
        )
    except Exception:  # unreadable or never published: the other counts still stand
        return {}
    status = update.value if isinstance(update.value, dict) else {}
    names = ("state", "command_count", "orders_submitted", "orders_filled", "orders_rejected")
    return {name: status.get(name) for name in names if name in status}


def reconcile(
    client: redis.Redis,
    store: HistoryStore,
    since: float | None = None,
    until: float | None = None,
    settle_s: float = 0.0,
) -> Reconciliation:
    """Reconcile the commands received in [since, until) (epoch seconds; None: unbounded).

    With `settle_s`, first waits up to that long for the history to catch up and for acked
    commands to be answered (after a fault, while the system recovers). Raises
    HistoryUnavailable when the database cannot be read, redis.RedisError for Redis.
    """
    deadline = time.monotonic() + settle_s
    while True:
        report = _once(client, store, since, until)
        if (
            report.ok and report.in_flight == 0 and report.history_lag_s == 0.0
        ) or time.monotonic() >= deadline:
            return report
        time.sleep(0.25)


def _once(
    client: redis.Redis, store: HistoryStore, since: float | None, until: float | None
) -> Reconciliation:
    report = Reconciliation(since=since, until=until, history_lag_s=_history_lag(client))
    window = _window(client)
    conditions = []
    if since is not None:
        conditions.append(commands.c.received_at >= since)
    if until is not None:
        conditions.append(commands.c.received_at < until)
    where = and_(*conditions) if conditions else None

    def counted(*extra: Any) -> Any:
        query = select(func.count()).select_from(commands)
        clauses = [c for c in (where, *extra) if c is not None]
        return query.where(and_(*clauses)) if clauses else query

    def listed(*extra: Any) -> Any:
        query = select(commands.c.request_id).order_by(commands.c.received_at).limit(LISTED)
        clauses = [c for c in (where, *extra) if c is not None]
        return query.where(and_(*clauses)) if clauses else query

    unanswered = commands.c.result.is_(None)
    twice = commands.c.runs > 1
    statements = [
        counted(),
        counted(commands.c.ack_ms.is_not(None)),
        counted(commands.c.runs >= 1),
        counted(commands.c.result.is_not(None)),
        listed(unanswered),
        listed(twice),
        counted(twice),
        counted(unanswered),
    ]
    # one read, one snapshot (off the web's hub on SQLite: hean.db_reads)
    acked, journaled, applied, answered, gone_rows, twice_rows, twice_count, unanswered_count = store.read(
        statements
    )
    report.acked, report.ack_journaled = int(acked[0][0] or 0), int(journaled[0][0] or 0)
    report.applied, report.answered = int(applied[0][0] or 0), int(answered[0][0] or 0)
    gone = [row[0] for row in gone_rows]
    report.duplicated = [row[0] for row in twice_rows]
    report.duplicated_count = int(twice_count[0][0] or 0)
    # accepted commands of the window the database does not have yet (no time known: they are
    # the newest, counted when the range is open-ended)
    fresh = list(window)
    known = store.lookup(fresh) if fresh and until is None else {}
    if until is None:
        extra = [rid for rid in fresh if rid not in known]
        report.acked += len(extra)
        report.ack_journaled += sum(1 for rid in extra if "a" in window[rid])
        report.answered += sum(1 for rid in extra if "r" in window[rid])
    in_flight = {rid for rid, fields in window.items() if "r" not in fields}
    report.in_flight = len(in_flight)
    report.missing = [rid for rid in gone if rid not in in_flight and "r" not in window.get(rid, {})]
    report.missing_count = int(unanswered_count[0][0] or 0) - (len(gone) - len(report.missing))
    report.engine = _engine(client)
    return report
