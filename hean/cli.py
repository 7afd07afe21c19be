"""The `hean` command line: `hean up` runs the whole system; `hean token` prints the token;
`hean reconcile` checks that every acked command ran exactly once; `hean prune-history` deletes
the history older than a retention (hean/retention.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from hean.config import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        names = ", ".join(str(p) for p in first["loc"])  # none for a check across settings
        message = first["msg"].removeprefix("Value error, ")
        raise SystemExit(f"hean: invalid configuration: {f'{names}: ' if names else ''}{message}") from None


def _redis_trouble(settings: Settings, exc: Exception) -> str:
    """`exc` in words, with what to do when no Redis answers: without REDIS_URL these commands
    talk to the private server of a running `hean up`, which stops with it."""
    import redis as redis_py

    words = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, redis_py.ConnectionError) or settings.redis_url:
        return words
    where = f"`hean up` in HEAN_HOME={settings.home}"
    if settings.redis_url_file.exists():
        return words + f" (the private Redis of {where} does not answer: is it running?)"
    return words + f" (no REDIS_URL, and no {where}: start it, or set REDIS_URL)"


def cmd_up(_: argparse.Namespace) -> int:
    from hean.launcher import Launcher
    from hean.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level)
    return Launcher(settings).run()


def cmd_token(_: argparse.Namespace) -> int:
    from hean.auth import ensure_token

    print(ensure_token(_settings()))
    return 0


def cmd_processes(_: argparse.Namespace) -> int:
    from hean.launcher import describe_processes

    print("\n".join(describe_processes()))
    return 0


def _no_database(url: str) -> str | None:
    """The path of an SQLite file `url` names that does not exist (opening it would create an
    empty one: the sign of a wrong HEAN_HOME or DATABASE_URL), else None."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    path = parsed.database if parsed.drivername.startswith("sqlite") else None
    if not path or path == ":memory:":
        return None
    try:
        Path(path).parent.stat()  # raises for a directory it cannot be in (a home under a file)
    except FileNotFoundError:
        return path
    return None if Path(path).exists() else path


def cmd_analyses(args: argparse.Namespace) -> int:
    import json
    import time

    from sqlalchemy.exc import SQLAlchemyError

    from hean.analyzer.history import AnalysisHistory
    from hean.db import open_database

    if args.limit < 1:
        print("hean: --limit must be at least 1", file=sys.stderr)
        return 2
    settings = _settings()
    url = settings.effective_database_url()
    if missing := _no_database(url):
        print(
            f"hean: no database at {missing}: nothing analysed there (HEAN_HOME? DATABASE_URL?)",
            file=sys.stderr,
        )
        return 1
    db = None
    try:
        db = open_database(url, build_in_background=False)
        history = AnalysisHistory(db, settings.logs_dir / "fix_suggestions.log")
        rows = history.recent(limit=args.limit, status=args.status)
        counts = history.counts()
    except SQLAlchemyError as exc:
        print(f"hean: cannot read the analysis history: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        if db is not None:
            db.dispose()
    if args.json:
        print(json.dumps({"analyses": rows, "counts": counts}, indent=2, default=str))
        return 0
    print(
        f"analyses={counts['analyses']} occurrences={counts['occurrences']} "
        f"model_calls={counts['model_calls']} (last hour {counts['model_calls_last_hour']}) "
        f"tokens={counts['input_tokens']}+{counts['output_tokens']} cost_usd~{counts['cost_usd']:.4f}"
    )
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["last_seen"]))
        fix = row["suggestion"] or {}
        print(f"#{row['id']} {when} x{row['count']} {row['status']} {row['exc_type']} ({row['origin']})")
        if fix:
            where = f"{fix.get('suspect_file')}:{fix.get('suspect_line')}" if fix.get("suspect_file") else "-"
            print(
                f"    cause: {fix.get('root_cause')}\n    at: {where} risk={fix.get('risk')} "
                f"confidence={fix.get('confidence')}\n    fix: {fix.get('fix_description')}"
            )
        elif row["error"]:
            print(f"    error: {row['error']}")
        if row["autodev"]:
            auto = row["autodev"]
            print(
                f"    auto-dev: {'applied' if auto.get('applied') else 'not applied'} ({auto.get('stage')}: "
                f"{auto.get('reason')})"
            )
    return 0


def _when(raw: str | None) -> float | None:
    """Epoch seconds or an ISO 8601 time (UTC unless it says otherwise)."""
    from hean.history import parse_time

    return None if raw is None else parse_time(raw)


def cmd_reconcile(args: argparse.Namespace) -> int:
    import json

    import redis as redis_py

    from hean.db import open_database
    from hean.history import HistoryStore, HistoryUnavailable
    from hean.reconcile import reconcile

    try:
        since, until = _when(args.since), _when(args.until)
    except ValueError as exc:
        print(f"hean: --from/--to: {exc}", file=sys.stderr)
        return 2
    settings = _settings()
    url = settings.effective_database_url()
    missing = _no_database(url)
    client = redis_py.Redis.from_url(settings.effective_redis_url(), socket_timeout=10)
    db = None
    try:
        client.ping()  # Redis first: why it does not answer says more than a database not found
        if missing:
            print(
                f"hean: cannot reconcile: no database at {missing} (HEAN_HOME? DATABASE_URL?)",
                file=sys.stderr,
            )
            return 2
        db = open_database(url, build_in_background=False)
        report = reconcile(client, HistoryStore(db), since, until, settle_s=args.settle)
    except (HistoryUnavailable, redis_py.RedisError) as exc:
        print(f"hean: cannot reconcile: {_redis_trouble(settings, exc)}", file=sys.stderr)
        return 2
    finally:
        client.close()
        if db is not None:
            db.dispose()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(
            f"acked={report.acked} (ack journaled: {report.ack_journaled}) applied={report.applied} "
            f"answered={report.answered} "
            f"in_flight={report.in_flight} missing={report.missing_count} "
            f"duplicated={report.duplicated_count} history_lag_s={report.history_lag_s:.2f} "
            f"engine={report.engine}"
        )
        for kind, ids in (("missing", report.missing), ("duplicated", report.duplicated)):
            for request_id in ids:
                print(f"{kind} {request_id}")
        print("ok" if report.ok else "NOT OK: acked commands missing or run twice")
    return 0 if report.ok else 1


def cmd_prune_history(args: argparse.Namespace) -> int:
    import time

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from hean.config import history_keep_problem
    from hean.db import describe_error, open_database
    from hean.retention import CHUNK, Pruned, count_old, prune

    settings = _settings()
    keep_days = args.keep_days if args.keep_days is not None else settings.history_keep_days
    if not keep_days:
        print("hean: say how many days to keep: --keep-days, or HEAN_HISTORY_KEEP_DAYS", file=sys.stderr)
        return 2
    problem = history_keep_problem(keep_days * 86400.0, settings.dedup_window_s)
    if problem:
        print(f"hean: --keep-days: {problem}", file=sys.stderr)
        return 2
    before = time.time() - keep_days * 86400.0
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(before))
    url = settings.effective_database_url()
    where = make_url(url).render_as_string(hide_password=True)
    if missing := _no_database(url):
        print(f"hean: no database at {missing}: nothing to prune (HEAN_HOME? DATABASE_URL?)", file=sys.stderr)
        return 1
    try:
        db = open_database(url, build_in_background=False)
    except SQLAlchemyError as exc:
        print(f"hean: cannot open the database {where}: {describe_error(exc)}", file=sys.stderr)
        return 1
    try:
        old = count_old(db, before)
        print(f"{where}: older than {when} ({keep_days:g} days): {old}")
        if args.dry_run or not old.total:
            return 0
        done, started = Pruned(), time.monotonic()
        for chunks, chunk in enumerate(prune(db, before, CHUNK), 1):
            done += chunk
            if chunks % 10 == 0:
                share = 100.0 * done.total / max(1, old.total)
                print(f"  deleted {done} ({share:.0f}%, {time.monotonic() - started:.0f} s)", flush=True)
        print(f"deleted {done} in {time.monotonic() - started:.1f} s")
    except SQLAlchemyError as exc:
        print(f"hean: the history was not pruned: {describe_error(exc)}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    return 0


def cmd_downgrade_snapshot(_: argparse.Namespace) -> int:
    import redis as redis_py

    from hean.snapshot_store import downgrade_snapshot
    from hean.topology import ENGINE_SNAPSHOT_KEY

    settings = _settings()
    client = redis_py.Redis.from_url(settings.effective_redis_url(), socket_timeout=10)
    try:
        done = downgrade_snapshot(client)
    except (ValueError, redis_py.RedisError) as exc:
        trouble = _redis_trouble(settings, exc)
        print(f"hean: the engine snapshot was not rewritten: {trouble}", file=sys.stderr)
        return 2
    finally:
        client.close()
    if done is None:
        print(f"no engine snapshot stored ({ENGINE_SNAPSHOT_KEY}): nothing to rewrite")
    else:
        log_id, size = done
        print(
            f"engine snapshot (log id {log_id}) rewritten as format 1, {size:,} bytes uncompressed: "
            "versions before snapshot format 2 read it. Stop the system before any command runs "
            "(an engine worker's next snapshot is format 2 again)."
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hean", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start Redis (if needed) and every HEAN process; Ctrl-C stops all")
    sub.add_parser("token", help="print the control token (generated on first use)")
    sub.add_parser("processes", help="list the processes `hean up` supervises")
    analyses = sub.add_parser("analyses", help="list the error analyzer's analyses, newest first")
    analyses.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    analyses.add_argument("--status", choices=["ok", "failed", "capped", "not_configured", "pending"])
    analyses.add_argument("--json", action="store_true", help="print JSON instead of text")
    rec = sub.add_parser(
        "reconcile",
        help="compare journal, engine and database: acked, applied, answered, missing, duplicated "
        "(exit 1 when anything is missing or ran twice)",
    )
    rec.add_argument("--from", dest="since", help="received at or after (epoch s or ISO 8601)")
    rec.add_argument("--to", dest="until", help="received before (epoch s or ISO 8601)")
    rec.add_argument("--settle", type=float, default=0.0, help="seconds to wait for in-flight commands")
    rec.add_argument("--json", action="store_true", help="print JSON instead of text")
    prune_history = sub.add_parser(
        "prune-history",
        help="delete the history's orders, fills and answered commands older than --keep-days "
        "(what HEAN_HISTORY_KEEP_DAYS makes the history writer do every minute)",
    )
    prune_history.add_argument(
        "--keep-days", type=float, help="days to keep (default HEAN_HISTORY_KEEP_DAYS; at least one hour)"
    )
    prune_history.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    sub.add_parser(
        "downgrade-snapshot",
        help="rewrite the stored engine snapshot for versions before snapshot format 2 (to roll back)",
    )
    args = parser.parse_args(argv)
    handler = {
        "up": cmd_up,
        "token": cmd_token,
        "processes": cmd_processes,
        "analyses": cmd_analyses,
        "reconcile": cmd_reconcile,
        "prune-history": cmd_prune_history,
        "downgrade-snapshot": cmd_downgrade_snapshot,
    }[args.command]
    try:
        return handler(args)
    except OSError as exc:  # HEAN_HOME or a file in it unusable: say which, not a traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(f"hean: {args.command}:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
