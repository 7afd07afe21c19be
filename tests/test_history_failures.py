"""A database that refuses the history writer's batch: the writer logs one line that names the
driver's error, never the statement's rows (an order's values, a result's text), and the
entries wait in the stream until the database takes them. Real Redis, real SQLite."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
import redis

from hean.command_journal import CommandJournal
from hean.db import describe_error, open_database
from hean.history import HistoryStore, HistoryWriter
from hean.redis_server import PrivateRedis
from hean.topology import HISTORY_STREAM_KEY

SECRET_LOOKING = "reason-text-that-must-stay-out-of-logs"


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

            with database.begin() as connection:
                connection.exec_driver_sql("DROP TRIGGER refuse")

            def written() -> bool:
                with database.connect() as connection:
                    return connection.exec_driver_sql("SELECT count(*) FROM commands").scalar() == 1

            _wait(written)
            _wait(lambda: client.xlen(HISTORY_STREAM_KEY) == 0)
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
