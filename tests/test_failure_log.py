"""hean.logs.FailureLog: a failure that recurs is logged once, then at most once per interval
with the count so far, and its end once; not a line per failure (a PostgreSQL restart under a
client resending 200 orders a second wrote 6,500 lines in 15 s)."""

from __future__ import annotations

import logging

import pytest

from hean.logs import FailureLog


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records]


def test_a_recurring_failure_is_one_line_per_interval_and_its_end_one_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("hean.test.failure_log")
    quiet = FailureLog(logger, every_s=3600.0)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for size in range(1, 1001):
            quiet.failed("event=enqueue_failed size=%d", size)
        assert _lines(caplog) == ["ERROR event=enqueue_failed size=1 failures=1"]
        quiet.recovered("event=enqueue_recovered reason=%s", "db")
        quiet.recovered("event=enqueue_recovered reason=%s", "db")  # once: nothing failed since
        assert _lines(caplog)[1:] == ["WARNING event=enqueue_recovered reason=db failures=1000"]
        quiet.failed("event=enqueue_failed size=%d", 7)  # a new outage: its first line at once
        assert _lines(caplog)[2:] == ["ERROR event=enqueue_failed size=7 failures=1"]

    caplog.clear()
    every = FailureLog(logger, every_s=0.0)
    with caplog.at_level(logging.INFO, logger=logger.name):
        every.failed("event=x", level=logging.WARNING)
        every.failed("event=x", level=logging.WARNING)
        assert _lines(caplog) == ["WARNING event=x failures=1", "WARNING event=x failures=2"]
