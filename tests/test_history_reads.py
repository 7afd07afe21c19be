"""The history writer's reads are bounded by size as well as by count (hean.history:
READ_BYTES): small entries (single orders) come READ_ENTRIES at a time, so that the writer
commits less often; big ones (100-order commands) come fewer at a time, so that what one read
holds, parsed, stays bounded. Real Redis, real SQLite."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from hean.command_journal import CommandJournal
from hean.db import open_database
from hean.history import (
    MIN_READ_ENTRIES,
    READ_BYTES,
    READ_ENTRIES,
    HistoryStore,
    HistoryWriter,
    next_read_count,
)
from hean.redis_server import PrivateRedis
from hean.topology import HISTORY_STREAM_KEY


def _add(client: redis.Redis, prefix: str, count: int, text_bytes: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        envelope = {"request_id": f"{prefix}-{i}", "command": "echo", "params": {"text": "x" * text_bytes},
                    "reply_to": None, "received_at_ms": time.time() * 1000}  # fmt: skip
        pipe.xadd(HISTORY_STREAM_KEY, {"c": json.dumps(envelope)})
    pipe.execute()


def test_reads_take_many_small_entries_and_few_big_ones(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        database = open_database(f"sqlite:///{tmp_path / 'history.db'}")
        writer = HistoryWriter(CommandJournal(client), HistoryStore(database), window_s=600)
        try:
            _add(client, "small", 1_200, 100)
            # the first read is a small one (nothing is known of the entries' size yet), then
            # READ_ENTRIES at a time; the last one did not fill its count
            reads = [writer.run_once(block_ms=10) for _ in range(4)]
            assert reads == [
                MIN_READ_ENTRIES,
                READ_ENTRIES,
                READ_ENTRIES,
                1_200 - MIN_READ_ENTRIES - 2 * READ_ENTRIES,
            ]
            assert not writer.read_full

            big = 50_000  # bytes of text per command: about 50 fit in READ_BYTES
            _add(client, "big", 60, big)
            assert writer.run_once(block_ms=10) == 60  # asked for READ_ENTRIES: the last were small
            per_read = writer.read_count
            assert READ_BYTES // (big + 1_000) <= per_read <= READ_BYTES // big  # the envelope's own bytes
            _add(client, "big-more", 200, big)
            reads = [writer.run_once(block_ms=10) for _ in range(6)]
            assert reads == [per_read] * (200 // per_read) + [200 % per_read] + [0] * (5 - 200 // per_read)
            assert client.xlen(HISTORY_STREAM_KEY) == 0  # written and trimmed: nothing waits
            with database.connect() as connection:
                written = connection.exec_driver_sql("SELECT count(*) FROM commands").scalar()
            assert written == 1_460
        finally:
            client.close()
            database.dispose()


def test_the_next_read_count_follows_the_size_per_entry_within_its_bounds() -> None:
    def entries(count: int, size: int) -> list[tuple[str, dict[str, str]]]:
        return [(f"{i}-0", {"c": "x" * size}) for i in range(count)]

    assert next_read_count([]) == READ_ENTRIES
    assert next_read_count(entries(10, 100)) == READ_ENTRIES  # small: as many as allowed
    assert next_read_count(entries(10, 12_500)) == READ_BYTES // 12_500  # 200
    assert next_read_count(entries(3, 10_000_000)) == MIN_READ_ENTRIES  # huge: never fewer
