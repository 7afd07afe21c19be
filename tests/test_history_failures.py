"""A database that refuses the history writer's batch: the writer logs one line that names the
driver's error, never the statement's rows (an order's values, a result's text), and the
entries wait in the stream until the database takes them. Real Redis, real SQLite."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from hean.command_journal import CommandJournal
from hean.core.system.health_monitor import ModuleFault
from hean.core.system.probes import HistoryCheck
from hean.db import describe_error, open_database
from hean.history import HistoryStore, HistoryUnavailable, HistoryWriter
from hean.redis_server import PrivateRedis
from hean.topology import HISTORY_FAILURE_KEY, HISTORY_FAILURE_TTL_S, HISTORY_STREAM_KEY

SECRET_LOOKING = "reason-text-that-must-stay-out-of-logs"
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"  # a project's own commands (conftest.py)


def _wait(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_refused_batch_is_logged_in_one_line_without_its_rows_and_written_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        database = open_database(f"sqlite:///{tmp_path / 'history.db'}")
        with database.begin() as connection:
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON commands "
                "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
            )
        writer = HistoryWriter(CommandJournal(client), HistoryStore(database), window_s=600)
        stop = threading.Event()
        thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
        try:
            envelope = {
                "request_id": "r-refused",
                "command": "kill_switch",
                "params": {"reason": SECRET_LOOKING},
                "reply_to": None,
                "received_at_ms": time.time() * 1000,
            }
            client.xadd(HISTORY_STREAM_KEY, {"c": json.dumps(envelope)})
            with caplog.at_level(logging.ERROR, logger="hean.history"):
                thread.start()
                _wait(lambda: any("history_write_failed" in r.getMessage() for r in caplog.records))
            failed = [r.getMessage() for r in caplog.records if "history_write_failed" in r.getMessage()]
            assert "error=IntegrityError: disk says no retry_in_s=" in failed[0]
            for message in failed:
                assert "\n" not in message and SECRET_LOOKING not in message and "INSERT" not in message
            assert client.xlen(HISTORY_STREAM_KEY) == 1  # it waits in the stream
            # ... and the health pulse learns why (HISTORY_FAILURE_KEY), for as long as it lasts
            published = json.loads(client.get(HISTORY_FAILURE_KEY))
            assert published["error"] == "IntegrityError: disk says no" and published["failures"] >= 1
            assert 0 < client.ttl(HISTORY_FAILURE_KEY) <= HISTORY_FAILURE_TTL_S
            check = HistoryCheck(client, every_s=0.0)
            check.read()
            with pytest.raises(ModuleFault, match=r"history writer failing for .*: IntegrityError"):
                check.verdict({})

            with database.begin() as connection:
                connection.exec_driver_sql("DROP TRIGGER refuse")

            def written() -> bool:
                with database.connect() as connection:
                    return connection.exec_driver_sql("SELECT count(*) FROM commands").scalar() == 1

            with caplog.at_level(logging.WARNING, logger="hean.history"):
                _wait(written)
                _wait(lambda: client.xlen(HISTORY_STREAM_KEY) == 0)
                _wait(lambda: client.get(HISTORY_FAILURE_KEY) is None)
            recovered = [m for r in caplog.records if "history_write_recovered" in (m := r.getMessage())]
            assert len(recovered) == 1 and "failures=" in recovered[0], recovered
            check.read()
            assert check.verdict({}) == {"history_lag_s": 0.0}
        finally:
            stop.set()
            thread.join(10)
            client.close()
            database.dispose()


def test_describe_error_gives_the_drivers_first_line_or_the_errors_own() -> None:
    database = open_database("sqlite://")
    try:
        with pytest.raises(Exception) as caught, database.connect() as connection:
            connection.exec_driver_sql("SELECT * FROM nowhere WHERE x = ?", ("a value",))
        assert describe_error(caught.value) == "OperationalError: no such table: nowhere"
        assert "a value" not in str(caught.value)  # hide_parameters: not in the wrapper's text either
    finally:
        database.dispose()
    assert describe_error(ValueError("first\nsecond")) == "ValueError: first"
    assert describe_error(KeyError()) == "KeyError"


def test_a_history_far_behind_its_results_is_a_fault_and_a_current_one_is_not(tmp_path: Path) -> None:
    """The lag is the age of the oldest entry the writer has not written (its stream id's time),
    whether or not the writer says anything: it may not be running at all."""
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        try:
            check = HistoryCheck(client, every_s=0.0, lag_fault_s=60.0)
            check.read()
            assert check.verdict({"url": "u"}) == {"url": "u", "history_lag_s": 0.0}  # nothing waits

            client.xadd(HISTORY_STREAM_KEY, {"c": "{}"}, id=f"{int((time.time() - 30) * 1000)}-0")
            check.read()
            assert 29.0 <= check.verdict({})["history_lag_s"] <= 40.0  # behind, within the limit

            client.delete(HISTORY_STREAM_KEY)
            client.xadd(HISTORY_STREAM_KEY, {"c": "{}"}, id=f"{int((time.time() - 120) * 1000)}-0")
            check.read()
            with pytest.raises(ModuleFault, match=r"history 1[12][0-9] s behind the results") as caught:
                check.verdict({"url": "u"})
            assert caught.value.detail is not None and caught.value.detail["history_lag_s"] >= 119.0

            # read at most every `every_s`: until then the last verdict stands
            slow = HistoryCheck(client, every_s=3600.0)
            assert slow.due
            slow.read()
            client.delete(HISTORY_STREAM_KEY)
            assert not slow.due
            with pytest.raises(ModuleFault):
                slow.verdict({})
        finally:
            client.close()


def test_a_locked_sqlite_file_refuses_a_lookup_at_once_instead_of_holding_the_web(tmp_path: Path) -> None:
    """The web's lookups (HistoryStore.answered) wait on a locked SQLite file at most
    READER_BUSY_TIMEOUT_MS, then the command is refused "unavailable; retry". SQLite waits in
    C, and the web process (eventlet) waited with it, every client included: its lookups went
    through the pool, whose connections waited 5 s to connect and 10 s per statement."""
    path = tmp_path / "history.db"
    database = open_database(f"sqlite:///{path}")
    database.dispose()  # the pool's connections closed: another may take the file alone
    store = HistoryStore(database)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # held until it says otherwise
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("SELECT count(*) FROM commands").fetchall()  # the file's lock taken, and held
    try:
        started = time.monotonic()
        with pytest.raises(HistoryUnavailable, match="history unreadable: OperationalError"):
            store.answered(["locked-1"])
        assert time.monotonic() - started < 2.0  # a guard, not a target: 5 s and more before
    finally:
        holder.execute("COMMIT")
        holder.execute("PRAGMA locking_mode=NORMAL")
        holder.execute("SELECT 1 FROM commands LIMIT 1").fetchall()  # the lock goes at the next read
        holder.close()
    assert store.answered(["locked-1"]) == {}  # a new reader, once the file is free
    database.dispose()


_DEFAULT_BATCH_SCRIPT = """
import json, os, sys, threading, time
from pathlib import Path

from hean.command_journal import CommandJournal
from hean.redis_client import sync_client
from workers.default import run_batch

database, aside = Path(sys.argv[1]), Path(sys.argv[2])


def readable_again() -> None:  # the database comes back a second later
    time.sleep(1.0)
    database.rmdir()
    aside.rename(database)


threading.Thread(target=readable_again, daemon=True).start()
envelopes = [
    {"request_id": rid, "command": "echo", "params": {"text": rid}, "reply_to": None,
     "received_at_ms": time.time() * 1000}
    for rid in ("left-window-1", "left-window-2")
]
began = time.monotonic()
ran = run_batch.run(envelopes)
journal = CommandJournal(sync_client())
print(json.dumps({
    "ran": ran,
    "waited_s": time.monotonic() - began,
    "results": [journal.get(e["request_id"])["result"] for e in envelopes],
}))
"""


def test_a_default_batch_waits_for_an_unreadable_history_and_then_runs_its_commands(tmp_path: Path) -> None:
    """A default-queue batch whose request ids the window no longer knows (redelivered after they
    left it) must ask the database whether they ran; while it cannot be read, the batch is held
    and tried again (as the engine's are), then runs each command once. Before, it was answered
    "failed", which needed the database too: the commands stayed without an answer."""
    path = tmp_path / "history.db"
    open_database(f"sqlite:///{path}").dispose()  # the schema, then set aside: unreadable
    aside = tmp_path / "history-aside.db"
    path.rename(aside)
    path.mkdir()  # "unable to open database file"
    with PrivateRedis(tmp_path / "redis") as server:
        env = dict(
            os.environ,
            REDIS_URL=server.url,
            DATABASE_URL=f"sqlite:///{path}",
            HEAN_HOME=str(tmp_path / "home"),
            HEAN_COMMAND_MODULES="custom_commands",
            PYTHONPATH=os.pathsep.join(filter(None, [str(PLUGINS_DIR), os.environ.get("PYTHONPATH")])),
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        done = subprocess.run(
            [sys.executable, "-c", _DEFAULT_BATCH_SCRIPT, str(path), str(aside)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ran"] == 2
    assert [r["success"] for r in report["results"]] == [True, True], report
    assert [r["result"] for r in report["results"]] == [{"echo": "left-window-1"}, {"echo": "left-window-2"}]
    assert report["waited_s"] >= 0.9  # it did wait for the database
    assert "event=batch_not_committed" in done.stderr and "HistoryUnavailable" in done.stderr
