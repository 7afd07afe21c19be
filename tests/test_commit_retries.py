"""A batch that cannot commit is retried, holding its message, until it does
(workers.execution.until_committed); its log says so in a few lines, however long it takes."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import redis

from hean.redis_server import PrivateRedis
from workers import execution


def test_a_batch_held_by_a_full_redis_logs_its_first_failure_and_its_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis full (maxmemory, noeviction) for 40 tries: one line when it starts, one when the
    commit goes through (it was one line per try, one a second for as long as Redis was full)."""
    monkeypatch.setattr(execution, "RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(execution, "RETRY_MAX_S", 0.001)
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory", 1)  # below what it holds: full
        tries: list[int] = []
        resets: list[int] = []

        def attempt() -> int:
            tries.append(1)
            if len(tries) == 40:  # room again (the history writer freed what it wrote)
                client.config_set("maxmemory", server.maxmemory)
            client.set("hean:result", b"r" * 1000)
            return 7

        with caplog.at_level(logging.INFO, logger=execution.log.name):
            assert execution.until_committed(attempt, lambda: resets.append(1), "engine") == 7
        assert len(tries) == 40 and len(resets) == 39 and client.get("hean:result") == b"r" * 1000
        lines = [record.getMessage() for record in caplog.records]
        assert len(lines) == 2, lines
        assert re.fullmatch(
            r"event=batch_not_committed queue=engine error=OutOfMemoryError: command not allowed when "
            r"used memory > 'maxmemory'\. action=retry delay_s=0\.0 failures=1",
            lines[0],
        ), lines
        assert lines[1] == "event=batch_committed_after_retries queue=engine failures=39", lines
        client.close()
