"""State bus across processes: exact totals under contention, subscribers in other processes,
and a Redis restart in the middle of a stream (real Redis, 'spawn' processes)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue as queue_module
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hean.core.system.redis_state import (
    RedisStateManager,
    StateUnavailableError,
    SyncRedisStateManager,
)
from hean.redis_server import PrivateRedis, free_port

WRITERS = 8
UPDATES_PER_WRITER = 2_000
RESULT_TIMEOUT = 180.0  # anti-hang only
WATCH_PATIENCE = 100_000  # lost WATCH races one update may take
CTX = mp.get_context("spawn")


def _increment_worker(url: str, key: str, mode: str, count: int, start: Any, out: Any) -> None:
    manager = SyncRedisStateManager(url)
    versions: list[int] = []
    start.wait(60)
    try:
        for _ in range(count):
            if mode == "watch":
                # Eight writers on two cores can starve one of them for longer than the
                # default give-up limit; this test is about exact totals, not that limit.
                _, version = manager.update_state_atomic(
                    key,
                    lambda current: {"n": (current or {}).get("n", 0) + 1},
                    "load",
                    max_retries=WATCH_PATIENCE,
                )
            else:
                version = manager.increment_state(key, {"n": 1}, "load").version
            versions.append(version)
    except Exception as exc:  # reported to the test at once instead of a silent exit
        out.put(repr(exc))
        raise
    finally:
        manager.close()
    out.put((versions, manager.stats.watch_conflicts))


def _subscriber_worker(url: str, key: str, face: str, target: Any, ready: Any, out: Any) -> None:
    """Collect every item of `key` until the writer says which version is the last."""
    items: list[tuple[Any, int]] = []
    deadline = time.monotonic() + RESULT_TIMEOUT

    def done() -> bool:
        return bool(target.value) and bool(items) and items[-1][1] >= target.value

    if face == "sync":
        manager = SyncRedisStateManager(url)
        queue = manager.subscribe_state(key, "bus")
        ready.set()
        while not done() and time.monotonic() < deadline:
            try:
                item = queue.get(timeout=0.2)
            except queue_module.Empty:
                continue
            items.append((item.value, item.version))
        reconnects = manager.stats.reconnects
        manager.close()
    else:

        async def run() -> int:
            async with RedisStateManager(url) as manager:
                queue = await manager.subscribe_state(key, "bus")
                ready.set()
                while not done() and time.monotonic() < deadline:
                    try:
                        item = await asyncio.wait_for(queue.get(), 0.2)
                    except TimeoutError:
                        continue
                    items.append((item.value, item.version))
                return manager.stats.reconnects

        reconnects = asyncio.run(run())
    out.put((items, reconnects))


def _run_writers(url: str, key: str, mode: str) -> tuple[list[list[int]], int]:
    start, out = CTX.Event(), CTX.Queue()
    procs = [
        CTX.Process(target=_increment_worker, args=(url, key, mode, UPDATES_PER_WRITER, start, out))
        for _ in range(WRITERS)
    ]
    for proc in procs:
        proc.start()
    start.set()
    try:
        results = [out.get(timeout=RESULT_TIMEOUT) for _ in procs]
        failures = [result for result in results if isinstance(result, str)]
        assert not failures, f"writers failed: {failures}"
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in procs)
    return [versions for versions, _ in results], sum(conflicts for _, conflicts in results)


@pytest.mark.parametrize("mode", ["watch", "lua"])
def test_concurrent_writers_lose_nothing_and_versions_have_no_gaps(
    own_db_url: str, redis_client: redis.Redis, mode: str
) -> None:
    per_writer, conflicts = _run_writers(own_db_url, f"counter-{mode}", mode)
    total = WRITERS * UPDATES_PER_WRITER
    manager = SyncRedisStateManager(own_db_url)
    try:
        value, version, _ = manager.get_state_versioned(f"counter-{mode}", "load")
    finally:
        manager.close()
    assert value == {"n": total}
    assert version == total
    for versions in per_writer:
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert sorted(v for versions in per_writer for v in versions) == list(range(1, total + 1))
    if mode == "lua":
        assert conflicts == 0


def _start_subscribers(url: str, key: str, faces: list[str]) -> tuple[list[Any], Any, Any]:
    target, out = CTX.Value("q", 0), CTX.Queue()
    procs = []
    for face in faces:
        ready = CTX.Event()
        proc = CTX.Process(target=_subscriber_worker, args=(url, key, face, target, ready, out))
        proc.start()
        assert ready.wait(60), "subscriber did not start"
        procs.append(proc)
    return procs, target, out


def _collect(procs: list[Any], out: Any) -> list[tuple[list[tuple[Any, int]], int]]:
    try:
        return [out.get(timeout=RESULT_TIMEOUT) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def test_subscribers_in_other_processes_see_every_version_in_order(
    own_db_url: str, redis_client: redis.Redis
) -> None:
    procs, target, out = _start_subscribers(own_db_url, "stream", ["sync", "async"])
    manager = SyncRedisStateManager(own_db_url)
    try:
        for n in range(1, 1001):
            if n % 2:
                manager.set_state("stream", {"n": n}, "bus")
            else:
                manager.increment_state("stream", {"n": 1}, "bus")
    finally:
        manager.close()
    target.value = 1000
    for items, reconnects in _collect(procs, out):
        assert items[0] == (None, 0)
        assert [version for _, version in items] == list(range(0, 1001))
        assert [value for value, _ in items[1:]] == [{"n": n} for n in range(1, 1001)]
        assert reconnects == 0


def _write_through_restart(manager: SyncRedisStateManager, value: dict[str, int]) -> int:
    """Retry only when the server is not up yet (connection refused: nothing was applied)."""
    for _ in range(200):
        try:
            return manager.set_state("restart", value, "bus").version
        except StateUnavailableError:
            time.sleep(0.05)
    raise AssertionError("Redis did not come back")


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "restartable", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_subscribers_resync_after_redis_restarts_mid_stream(
    restartable_redis: PrivateRedis,
) -> None:
    url = restartable_redis.url
    procs, target, out = _start_subscribers(url, "restart", ["sync", "async"])
    manager = SyncRedisStateManager(url)
    try:
        for n in range(1, 201):
            manager.set_state("restart", {"n": n}, "bus")
        time.sleep(1.1)  # appendfsync everysec: let the AOF catch up before the restart
        restartable_redis.stop()
        restartable_redis.start()
        last = 0
        for n in range(201, 401):
            last = _write_through_restart(manager, {"n": n})
    finally:
        manager.close()
    assert last == 400
    target.value = last
    for items, reconnects in _collect(procs, out):
        versions = [version for _, version in items]
        assert versions == sorted(set(versions))  # strictly increasing
        assert versions[:201] == list(range(0, 201))  # everything before the restart
        assert items[-1] == ({"n": 400}, 400)  # and the newest version at the end
        assert reconnects >= 1
