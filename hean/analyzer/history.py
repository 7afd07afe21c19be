"""Analysis history: the database (hean.db's `analyses` and `llm_calls`) plus a JSON-lines log."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from hean.analyzer.models import ErrorReport
from hean.db import Database, analyses, llm_calls
from hean.db_reads import read, records

HOUR_S = 3600.0


def _row_dict(row: Any) -> dict[str, Any]:
    """A row (SQLAlchemy's, or a dict of one) as the API gives it."""
    data = dict(getattr(row, "_mapping", row))
    for name in ("suggestion", "autodev"):
        data[name] = json.loads(data[name]) if data.get(name) else None
    return data


class AnalysisHistory:
    """Reads and writes analyses and model calls; every write of a result is also a log line."""

    def __init__(self, database: Database, log_path: Path) -> None:
        self.database = database
        self.log_path = log_path
        self._log_lock = threading.Lock()

    # -- groups ------------------------------------------------------------------------------
    def find_group(self, fingerprint: str, source_hash: str) -> dict[str, Any] | None:
        query = select(analyses).where(
            analyses.c.fingerprint == fingerprint, analyses.c.source_hash == source_hash
        )
        with self.database.connect() as conn:
            row = conn.execute(query).first()
        return _row_dict(row) if row is not None else None

    def open_group(self, report: ErrorReport, status: str) -> tuple[dict[str, Any], bool]:
        """The group of `report`, created with `status` if new; (row, created)."""
        existing = self.find_group(report.fingerprint, report.source_hash)
        if existing is not None:
            return existing, False
        values = {
            "fingerprint": report.fingerprint,
            "source_hash": report.source_hash,
            "origin": report.origin[:200],
            "exc_type": report.exc_type[:300],
            "message": report.message,
            "status": status,
            "count": 0,
            "first_seen": report.occurred_at,
            "last_seen": report.occurred_at,
            "process": report.process[:200],
        }
        try:
            with self.database.begin() as conn:
                conn.execute(analyses.insert().values(**values))
        except IntegrityError:  # another thread opened it first
            pass
        row = self.find_group(report.fingerprint, report.source_hash)
        assert row is not None
        return row, True

    def count_occurrence(self, analysis_id: int, at: float) -> int:
        """One more occurrence of a group; returns its new count."""
        with self.database.begin() as conn:
            conn.execute(
                analyses.update()
                .where(analyses.c.id == analysis_id)
                .values(count=analyses.c.count + 1, last_seen=func.max(analyses.c.last_seen, at))
            )
            return int(
                conn.execute(select(analyses.c.count).where(analyses.c.id == analysis_id)).scalar_one()
            )

    def update(self, analysis_id: int, **values: Any) -> dict[str, Any]:
        for name in ("suggestion", "autodev"):
            if name in values and values[name] is not None and not isinstance(values[name], str):
                values[name] = json.dumps(values[name])
        with self.database.begin() as conn:
            conn.execute(analyses.update().where(analyses.c.id == analysis_id).values(**values))
            row = conn.execute(select(analyses).where(analyses.c.id == analysis_id)).one()
        return _row_dict(row)

    def get(self, analysis_id: int) -> dict[str, Any] | None:
        with self.database.connect() as conn:
            row = conn.execute(select(analyses).where(analyses.c.id == analysis_id)).first()
        return _row_dict(row) if row is not None else None

    def recent(self, limit: int = 50, offset: int = 0, status: str | None = None) -> list[dict[str, Any]]:
        query = select(analyses).order_by(analyses.c.last_seen.desc(), analyses.c.id.desc())
        if status:
            query = query.where(analyses.c.status == status)
        rows = read(self.database, [query.limit(limit).offset(offset)])[0]  # off the web's hub on SQLite
        return [_row_dict(row) for row in records(analyses, rows)]

    def counts(self) -> dict[str, Any]:
        """Totals: groups, occurrences, per status, model calls and cost (all time and last hour)."""
        since = time.time() - HOUR_S
        statuses, totals, model_calls, hour = read(  # one read, off the web's hub on SQLite
            self.database,
            [
                select(analyses.c.status, func.count()).group_by(analyses.c.status),
                select(func.count(), func.coalesce(func.sum(analyses.c.count), 0)),
                select(
                    func.count(),
                    func.coalesce(func.sum(llm_calls.c.input_tokens), 0),
                    func.coalesce(func.sum(llm_calls.c.output_tokens), 0),
                    func.coalesce(func.sum(llm_calls.c.cost_usd), 0.0),
                ),
                select(func.count()).where(llm_calls.c.at >= since),
            ],
        )
        by_status: dict[str, int] = dict(statuses)
        (groups, occurrences), (calls, tokens_in, tokens_out, cost) = totals[0], model_calls[0]
        last_hour = hour[0][0]
        return {
            "analyses": int(groups),
            "occurrences": int(occurrences),
            "by_status": {str(k): int(v) for k, v in by_status.items()},
            "model_calls": int(calls),
            "model_calls_last_hour": int(last_hour),
            "input_tokens": int(tokens_in),
            "output_tokens": int(tokens_out),
            "cost_usd": round(float(cost), 6),
        }

    # -- model calls and the hourly cap --------------------------------------------------------
    def reserve_call(self, cap: int, provider: str, model: str, analysis_id: int) -> int | None:
        """Record a model call about to be made, or None when `cap` calls were made this hour.

        Insert first, then count the calls up to ours: two workers racing for the last slot
        cannot both get it.
        """
        now = time.time()
        with self.database.begin() as conn:
            call_id = int(
                conn.execute(
                    llm_calls.insert().values(at=now, analysis_id=analysis_id, provider=provider, model=model)
                ).inserted_primary_key[0]  # type: ignore[index]  # always set after an INSERT
            )
            before = conn.execute(
                select(func.count()).where(llm_calls.c.at >= now - HOUR_S, llm_calls.c.id <= call_id)
            ).scalar_one()
            if before > cap:
                conn.execute(llm_calls.delete().where(llm_calls.c.id == call_id))
                return None
        return call_id

    def finish_call(
        self, call_id: int, outcome: str, input_tokens: int, output_tokens: int, cost: float
    ) -> None:
        with self.database.begin() as conn:
            conn.execute(
                llm_calls.update()
                .where(llm_calls.c.id == call_id)
                .values(
                    outcome=outcome, input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost
                )
            )

    def calls_for(self, analysis_id: int) -> list[dict[str, Any]]:
        with self.database.connect() as conn:
            rows = conn.execute(
                select(llm_calls).where(llm_calls.c.analysis_id == analysis_id).order_by(llm_calls.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    # -- the log ---------------------------------------------------------------------------------
    def append_log(self, entry: dict[str, Any]) -> None:
        """One JSON line in logs/fix_suggestions.log (created with its directory)."""
        line = json.dumps(entry, sort_keys=True, default=str)
        with self._log_lock:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")


def clear(database: Database) -> None:
    """Forget every analysis and call (tests, and `hean analyses --clear` if ever wanted)."""
    with database.begin() as conn:
        conn.execute(sqlalchemy.delete(llm_calls))
        conn.execute(sqlalchemy.delete(analyses))
