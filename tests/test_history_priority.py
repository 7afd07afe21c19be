"""The history writer, launched at SCHED_IDLE as `hean up` launches it, catches up at normal
priority while it is behind and goes back to idle once it has caught up (hean.history:
CatchUpPriority): at idle priority alone, a machine busy for long would let the stream, and
Redis's memory, grow without bound."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import redis

from hean.affinity import pinned_argv
from hean.history import CATCH_UP_LAG_S, READ_ENTRIES
from hean.redis_server import PrivateRedis
from hean.topology import HISTORY_STREAM_KEY
from support import wait_for


def test_an_idle_writer_behind_catches_up_at_normal_priority_then_goes_back_to_idle(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        # a backlog older than the threshold: three full reads' worth of commands
        first_ms = int((time.time() - CATCH_UP_LAG_S - 10) * 1000)
        count = READ_ENTRIES * 3
        pipe = client.pipeline(transaction=False)
        for i in range(count):
            envelope = {"request_id": f"behind-{i}", "command": "echo", "params": {"text": str(i)},
                        "reply_to": None, "received_at_ms": first_ms + i}  # fmt: skip
            pipe.xadd(HISTORY_STREAM_KEY, {"c": json.dumps(envelope)}, id=f"{first_ms + i}-0")
        pipe.execute()

        database = tmp_path / "hean.db"
        env = dict(
            os.environ,
            REDIS_URL=server.url,
            DATABASE_URL=f"sqlite:///{database}",
            HEAN_HOME=str(tmp_path / "home"),
            HEAN_LOG_LEVEL="info",
        )
        command = [sys.executable, "-m", "hean.history"]
        argv = pinned_argv(sys.executable, "history", command, {}, {"history": "idle"})
        log = tmp_path / "history.log"
        with open(log, "w") as out:
            writer = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: client.xlen(HISTORY_STREAM_KEY) == 0, 60, "the backlog written and trimmed")
            wait_for(lambda: "event=history_caught_up" in log.read_text(), 10, "the writer back at idle")
            text = log.read_text()
            assert "event=history_catching_up" in text and "priority=normal" in text, text
            assert text.index("event=history_catching_up") < text.index("event=history_caught_up")
            assert os.sched_getscheduler(writer.pid) == os.SCHED_IDLE  # the writer's own thread
            with sqlite3.connect(database) as db:
                written = db.execute("SELECT count(*) FROM commands WHERE request_id LIKE 'behind-%'")
                assert written.fetchone() == (count,)
            # caught up, a new entry is written at idle priority, without another catch-up
            envelope = {"request_id": "fresh", "command": "echo", "params": {"text": "now"}, "reply_to": None,
                        "received_at_ms": time.time() * 1000}  # fmt: skip
            client.xadd(HISTORY_STREAM_KEY, {"c": json.dumps(envelope)})
            wait_for(lambda: client.xlen(HISTORY_STREAM_KEY) == 0, 30, "the fresh entry written")
            assert log.read_text().count("event=history_catching_up") == 1
        finally:
            writer.terminate()
            writer.wait(timeout=30)
            client.close()
