"""workers.shard.SnapshotWriter: snapshots land in log order, from either thread, each with
the trim of the log entries it holds (real Redis)."""

from __future__ import annotations

import time

import redis

from workers.shard import LOG_KEY, SNAPSHOT_KEY, Snapshot, SnapshotWriter


def _log(client: redis.Redis, ids: list[str]) -> None:
    for entry_id in ids:
        client.xadd(LOG_KEY, {"cmd": "noop"}, id=entry_id)


def _stored(client: redis.Redis) -> dict[bytes, bytes]:
    return client.hgetall(SNAPSHOT_KEY)  # type: ignore[return-value]


def _until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_a_snapshot_written_soon_lands_and_trims_what_it_holds(redis_client: redis.Redis) -> None:
    _log(redis_client, ["5-0", "5-1", "9-0"])
    writer = SnapshotWriter(lambda: redis_client)
    writer.write_soon(Snapshot(b"state after 5-1", "5-1", paused=True))
    _until(lambda: _stored(redis_client))
    assert _stored(redis_client) == {b"data": b"state after 5-1", b"log_id": b"5-1", b"paused": b"1"}
    # the entry after it stays (the trim is approximate: whole stream nodes go, or none)
    assert [entry_id for entry_id, _ in redis_client.xrange(LOG_KEY)][-1] == b"9-0"
    writer.write_soon(Snapshot(b"state after 9-0", "9-0", paused=False))
    _until(lambda: redis_client.xlen(LOG_KEY) == 0)
    assert _stored(redis_client)[b"log_id"] == b"9-0"
    assert redis_client.xlen(LOG_KEY) == 0


def test_an_older_snapshot_never_replaces_a_newer_one(redis_client: redis.Redis) -> None:
    _log(redis_client, ["5-0", "7-0", "9-0"])
    writer = SnapshotWriter(lambda: redis_client)
    assert writer.write(Snapshot(b"after 7-0", "7-0", paused=False))
    assert not writer.write(Snapshot(b"after 5-0", "5-0", paused=False))
    assert _stored(redis_client)[b"data"] == b"after 7-0"
    # one handed to the thread, then a newer written at once (shutdown, a control command):
    # whichever the thread gets to first, the newer one stays
    for _ in range(20):
        writer.write_soon(Snapshot(b"after 8-0", "8-0", paused=False))
        writer.write(Snapshot(b"after 9-0", "9-0", paused=False))
    time.sleep(0.2)
    _until(lambda: writer._pending is None)
    with writer._write_lock:  # the thread's last write, if any, is over
        assert _stored(redis_client)[b"data"] == b"after 9-0"
    assert redis_client.xlen(LOG_KEY) == 0
