"""Where the pulse keeps its state, on a real Redis (this test's own database): a pulse is stored
only if no newer one is, silent pulse nodes and vanished workers are kept for a retention window
and then dropped. The same functions run in the pulse worker (see test_health.py for them
against real processes)."""

from __future__ import annotations

import random
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from hean.core.system.health_monitor import (
    HEALTH_NAMESPACE,
    NODES_KEY,
    SUMMARY_KEY,
    HealthMonitor,
    ModuleFault,
    StoredPulse,
    nodes_view,
    report_node,
    store_pulse,
)
from hean.core.system.probes import WORKER_HEARTBEATS_KEY, WORKER_STALE_S, workers_probe
from hean.core.system.redis_state import SyncRedisStateManager


@pytest.fixture
def manager(sync_manager: SyncRedisStateManager) -> SyncRedisStateManager:
    return sync_manager


def pulse_at(at: float, node: str = "a") -> dict[str, Any]:
    """A pulse summary as the pulse task builds it, begun at `at` by `node`."""
    module = {"name": "redis", "status": "HEALTHY", "latency_ms": 0.1, "detail": {"node": node, "at": at}}
    return {"overall": "HEALTHY", "modules": {"redis": module}, "at": at, "took_ms": 1.0, "period_s": 0.1}


def stored_at(manager: SyncRedisStateManager) -> float:
    return float(manager.get_state(SUMMARY_KEY, HEALTH_NAMESPACE)["at"])


# -- a pulse never replaces a newer one --------------------------------------------------------


def test_an_older_pulse_never_replaces_a_newer_one(manager: SyncRedisStateManager) -> None:
    now = time.time()
    assert store_pulse(manager, pulse_at(now, "fast")) is True
    # the slow node finishes the previous period's pulse after the fast node stored this one
    assert store_pulse(manager, pulse_at(now - 0.1, "slow")) is False
    assert stored_at(manager) == now
    # nothing of the older pulse landed: its module keys are the newer pulse's too
    assert manager.get_state("redis", HEALTH_NAMESPACE)["detail"] == {"node": "fast", "at": now}
    assert store_pulse(manager, pulse_at(now, "same")) is False  # not newer either
    assert store_pulse(manager, pulse_at(now + 0.1, "slow")) is True
    assert stored_at(manager) == now + 0.1
    assert manager.get_state("redis", HEALTH_NAMESPACE)["detail"]["node"] == "slow"


def test_a_node_that_skips_its_read_still_never_replaces_a_newer_pulse(
    manager: SyncRedisStateManager,
) -> None:
    """With `last`, a node's store compares with its own last pulse without reading it first;
    another node's pulse in between fails that compare, and the read decides as before."""
    now = time.time()
    mine = StoredPulse()
    assert store_pulse(manager, pulse_at(now, "a"), node="a", last=mine) is True
    version = mine.version
    assert version > 0 and mine.at == now
    assert store_pulse(manager, pulse_at(now + 0.1, "a"), node="a", last=mine) is True  # no read
    assert mine.version > version and stored_at(manager) == now + 0.1
    # another node stores a newer pulse: this node's older one is refused, its newer one lands
    assert store_pulse(manager, pulse_at(now + 0.3, "b"), node="b") is True
    assert store_pulse(manager, pulse_at(now + 0.2, "a"), node="a", last=mine) is False
    assert stored_at(manager) == now + 0.3
    assert manager.get_state("redis", HEALTH_NAMESPACE)["detail"]["node"] == "b"
    assert store_pulse(manager, pulse_at(now + 0.4, "a"), node="a", last=mine) is True
    assert stored_at(manager) == now + 0.4 and mine.at == now + 0.4
    # each store was also its node's report
    assert set(manager.get_state(NODES_KEY, HEALTH_NAMESPACE)) == {"a", "b"}


def test_racing_nodes_only_ever_move_the_pulse_forward(manager: SyncRedisStateManager) -> None:
    """Eight writers store pulses in shuffled order at once; a subscriber (what operators see
    through the state bus) gets strictly newer pulses only, and the newest one is stored."""
    updates = manager.subscribe_state(SUMMARY_KEY, HEALTH_NAMESPACE)
    assert updates.get(timeout=10).version == 0
    base = time.time() - 1.0  # pulses begin before they are stored
    pulses = [base + n * 0.001 for n in range(800)]
    random.Random(7).shuffle(pulses)
    start = threading.Barrier(8)
    stored: list[float] = []

    def writer(ats: list[float]) -> None:
        start.wait(10)
        for at in ats:
            if store_pulse(manager, pulse_at(at, threading.current_thread().name)):
                stored.append(at)

    threads = [threading.Thread(target=writer, args=(pulses[n::8],), name=f"node-{n}") for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    newest = max(pulses)
    assert stored_at(manager) == newest and newest in stored
    seen = []
    while not seen or seen[-1] < newest:
        item = updates.get(timeout=10)
        seen.append(float(item.value["at"]))
    assert seen == sorted(set(seen))  # never an older pulse after a newer one
    module = manager.get_state("redis", HEALTH_NAMESPACE)
    assert module["detail"]["at"] == newest  # the module keys moved with the summary


def test_a_pulse_from_a_clock_far_ahead_does_not_freeze_the_pulse(manager: SyncRedisStateManager) -> None:
    """A stored pulse more than 3 periods in our future cannot come from an agreeing clock."""
    now = time.time()
    assert store_pulse(manager, pulse_at(now + 3600, "clock-ahead")) is True
    assert store_pulse(manager, pulse_at(now)) is True
    assert stored_at(manager) == now
    assert store_pulse(manager, pulse_at(now + 0.2, "slightly-ahead")) is True
    assert store_pulse(manager, pulse_at(now + 0.05)) is False  # within 3 periods: it is newer


# -- pulse nodes: DISCONNECTED after 3 periods, dropped after the retention window -------------


def test_silent_pulse_nodes_are_dropped_after_the_retention_window(manager: SyncRedisStateManager) -> None:
    retention_s = 0.5
    assert report_node(manager, "stays", "HEALTHY", retention_s) == []
    assert report_node(manager, "goes", "DEGRADED", retention_s) == []
    nodes = manager.get_state(NODES_KEY, HEALTH_NAMESPACE)
    assert set(nodes) == {"stays", "goes"}
    time.sleep(0.35)  # "goes" is silent for 3 periods, but not for the retention window
    assert report_node(manager, "stays", "HEALTHY", retention_s) == []
    view = nodes_view(manager.get_state(NODES_KEY, HEALTH_NAMESPACE), 0.1, retention_s=retention_s)
    assert view["goes"]["status"] == "DISCONNECTED" and view["goes"]["age_ms"] > 300
    assert view["stays"]["status"] == "HEALTHY"
    time.sleep(0.3)
    # past the window: the view leaves it out even before anyone prunes, and the next report prunes
    view = nodes_view(manager.get_state(NODES_KEY, HEALTH_NAMESPACE), 0.1, retention_s=retention_s)
    assert set(view) == {"stays"}
    assert report_node(manager, "stays", "HEALTHY", retention_s) == ["goes"]
    assert set(manager.get_state(NODES_KEY, HEALTH_NAMESPACE)) == {"stays"}
    assert report_node(manager, "goes", "HEALTHY", retention_s) == []  # a node that comes back
    assert set(manager.get_state(NODES_KEY, HEALTH_NAMESPACE)) == {"stays", "goes"}


def test_the_default_retention_keeps_a_node_silent_for_minutes(manager: SyncRedisStateManager) -> None:
    manager.merge_state(
        NODES_KEY,
        {"minutes": {"at": time.time() - 300, "overall": "HEALTHY"}, "hours": {"at": time.time() - 7200}},
        namespace=HEALTH_NAMESPACE,
    )
    assert report_node(manager, "alive", "HEALTHY") == ["hours"]
    view = nodes_view(manager.get_state(NODES_KEY, HEALTH_NAMESPACE), 0.1)
    assert set(view) == {"alive", "minutes"} and view["minutes"]["status"] == "DISCONNECTED"


# -- Celery workers: DISCONNECTED with their last-seen age, then forgotten --------------------


def test_workers_probe_shows_a_silent_worker_disconnected_until_the_retention_window(
    redis_client: redis.Redis,
) -> None:
    """Heartbeats as workers write them (hean:workers = {node: time}): one beating, one that
    stopped beating 12 s ago (longer than the old 10 s key expiry), one silent for longer than
    the window."""
    monitor = HealthMonitor([workers_probe(redis_client, retention_s=60.0)])
    now = time.time()
    redis_client.hset(
        WORKER_HEARTBEATS_KEY,
        mapping={"alive@h": repr(now), "killed@h": repr(now - 12.0), "ancient@h": repr(now - 61.0)},
    )
    try:
        status = monitor.check_all()
        assert status is not None
        module = status["modules"]["workers"]
        workers = module["detail"]["workers"]
        assert set(workers) == {"alive@h", "killed@h"}
        assert workers["alive@h"]["status"] == "HEALTHY"
        assert workers["killed@h"]["status"] == "DISCONNECTED" and workers["killed@h"]["age_ms"] >= 12_000
        assert workers["killed@h"]["last_seen"] == pytest.approx(now - 12.0)
        assert module["status"] == "UNHEALTHY" and "killed@h (last seen 12." in module["last_error"]
        assert redis_client.hkeys(WORKER_HEARTBEATS_KEY) and not redis_client.hexists(
            WORKER_HEARTBEATS_KEY, "ancient@h"
        )  # forgotten for good
        redis_client.hset(WORKER_HEARTBEATS_KEY, "killed@h", repr(time.time()))  # it came back
        status = monitor.check_all()
        assert status is not None and status["modules"]["workers"]["status"] == "HEALTHY"
        assert status["modules"]["workers"]["detail"]["workers"]["killed@h"]["status"] == "HEALTHY"
        redis_client.hset(WORKER_HEARTBEATS_KEY, "alive@h", repr(time.time() - WORKER_STALE_S - 1))
        redis_client.hset(WORKER_HEARTBEATS_KEY, "killed@h", repr(time.time() - WORKER_STALE_S - 1))
        status = monitor.check_all()
        assert status is not None
        module = status["modules"]["workers"]
        assert module["status"] == "DISCONNECTED" and "no Celery worker heartbeat" in module["last_error"]
        assert {w["status"] for w in module["detail"]["workers"].values()} == {"DISCONNECTED"}
    finally:
        monitor.close()


# -- the fixture these tests stand on -----------------------------------------------------------


def test_redis_client_flushes_its_own_database_not_the_systems(
    redis_url: str, request: pytest.FixtureRequest
) -> None:
    """`redis_client` flushes its own database: the session's web process and workers (database
    0 of the same server) keep their queues and state whatever order the test files run in."""
    system_db = redis.Redis.from_url(redis_url)
    sentinel = "hean:test:system-key"
    system_db.set(sentinel, "kept")
    try:
        client: redis.Redis = request.getfixturevalue("redis_client")
        assert client.dbsize() == 0
        assert system_db.get(sentinel) == b"kept"
    finally:
        system_db.delete(sentinel)
        system_db.close()


# -- the Redis-only probes read in one round trip ----------------------------------------------


def _beat(clients: int) -> str:
    """The web process's heartbeat as web/heartbeat.py writes it (this process stands for it)."""
    import json
    import os
    import socket

    beat = {"ts": time.time(), "clients": clients, "pid": os.getpid(), "host": socket.gethostname()}
    return json.dumps(beat)


def test_the_redis_probes_take_the_groups_one_read_once_and_only_while_fresh(
    redis_client: redis.Redis,
) -> None:
    from hean.core.system.probes import WEB_HEARTBEAT_KEY, RedisReads, redis_probes

    redis_probe, web, workers = redis_probes(redis_client)
    assert {p.group for p in (redis_probe, web, workers)} == {"redis"}
    redis_client.set(WEB_HEARTBEAT_KEY, _beat(clients=1))
    redis_client.hset(WORKER_HEARTBEATS_KEY, "w@h", repr(time.time()))
    # memory: once a second
    assert set(redis_probe.check()) == {"used_memory_mb", "maxmemory_mb", "memory_reserve_mb"}
    # what changes after the group's read is not seen by the probes that took that read ...
    redis_client.set(WEB_HEARTBEAT_KEY, _beat(clients=2))
    redis_client.hset(WORKER_HEARTBEATS_KEY, "late@h", repr(time.time()))
    assert web.check()["clients"] == 1
    assert set(workers.check()["workers"]) == {"w@h"}
    # ... and each reply is taken once: without a new group read, each probe reads for itself
    assert web.check()["clients"] == 2
    assert set(workers.check()["workers"]) == {"w@h", "late@h"}
    # a reply older than MAX_AGE_S is not taken
    redis_probe.check()
    redis_client.set(WEB_HEARTBEAT_KEY, _beat(clients=3))
    time.sleep(RedisReads.MAX_AGE_S + 0.02)
    assert web.check()["clients"] == 3


def test_a_failed_read_in_the_groups_round_trip_fails_its_own_probe_only(redis_client: redis.Redis) -> None:
    from hean.core.system.probes import WEB_HEARTBEAT_KEY, redis_probes

    monitor = HealthMonitor(redis_probes(redis_client))
    redis_client.rpush(WEB_HEARTBEAT_KEY, "not a heartbeat")  # GET of a list: WRONGTYPE
    redis_client.hset(WORKER_HEARTBEATS_KEY, "w@h", repr(time.time()))
    try:
        status = monitor.check_all()
        assert status is not None
        modules = status["modules"]
        assert modules["redis"]["status"] == "HEALTHY"
        assert modules["workers"]["status"] == "HEALTHY"
        assert modules["frontend_socket"]["status"] == "UNHEALTHY"
        assert "WRONGTYPE" in modules["frontend_socket"]["last_error"]
    finally:
        monitor.close()


# -- the database probe reads the schema again only when the file changed ----------------------


def test_the_database_ping_reads_the_schema_again_only_when_the_file_changed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3
    import types

    import sqlalchemy

    from hean import db

    path = tmp_path / "hean.db"
    monkeypatch.setattr(db, "_database", db.open_database(f"sqlite:///{path}"))
    monkeypatch.setattr(db, "_verified", [None, 0.0])
    opened: list[str] = []

    def connect(target: str, **kwargs: Any) -> sqlite3.Connection:
        opened.append(target)
        return sqlite3.connect(target, **kwargs)

    monkeypatch.setattr(db, "sqlite3", types.SimpleNamespace(connect=connect))
    try:
        db.ping()
        for _ in range(5):
            db.ping()
        assert len(opened) == 1  # the file is as it was: no fresh connection
        with db.database().begin() as connection:  # a write lands in the log (WAL)
            connection.execute(sqlalchemy.text("INSERT INTO history_cursor VALUES ('s', '1-0', 1.0)"))
        db.ping()
        assert len(opened) == 2
        monkeypatch.setattr(db, "UNCHANGED_RECHECK_S", 0.05)
        time.sleep(0.06)
        db.ping()  # unchanged, but not read for longer than UNCHANGED_RECHECK_S
        assert len(opened) == 3
        db.database().dispose()
        saved = {f: f.read_bytes() for f in (path, path.with_name("hean.db-wal")) if f.exists()}
        for damaged in saved:
            damaged.write_bytes(b"this is not a database" * 100)
        with pytest.raises(sqlite3.DatabaseError):
            db.ping()
        with pytest.raises(sqlite3.DatabaseError):  # a failed read is never taken for a good one
            db.ping()
        assert len(opened) == 5
    finally:
        db.reset()


def test_a_module_key_is_rewritten_when_its_status_changes_else_once_a_second(
    manager: SyncRedisStateManager,
) -> None:
    """With `last`, the summary is written every pulse, a module's own key at once when its
    status changes and otherwise once every MODULE_REFRESH_S."""
    from hean.core.system.health_monitor import MODULE_REFRESH_S

    mine = StoredPulse()
    now = time.time()

    def pulse(at: float, status: str = "HEALTHY") -> dict[str, Any]:
        body = pulse_at(at)
        body["modules"]["redis"]["status"] = status
        body["modules"]["redis"]["latency_ms"] = round(at - now, 3)
        return body

    def module_version() -> int:
        return manager.get_state_versioned("redis", namespace=HEALTH_NAMESPACE)[1]

    assert store_pulse(manager, pulse(now), node="a", last=mine)
    first = module_version()
    assert store_pulse(manager, pulse(now + 0.1), node="a", last=mine)
    assert module_version() == first  # same status, within the refresh: only the summary
    assert stored_at(manager) == now + 0.1
    assert store_pulse(manager, pulse(now + 0.2, "DEGRADED"), node="a", last=mine)
    assert module_version() == first + 1  # a status change is written at once
    assert manager.get_state("redis", HEALTH_NAMESPACE)["status"] == "DEGRADED"
    time.sleep(MODULE_REFRESH_S + 0.05)
    assert store_pulse(manager, pulse(now + 0.3, "DEGRADED"), node="a", last=mine)
    assert module_version() == first + 2  # refreshed once the second has passed
    assert manager.get_state("redis", HEALTH_NAMESPACE)["latency_ms"] == 0.3
    assert store_pulse(manager, pulse(now + 0.4, "DEGRADED"), node="a")  # no memory: every key
    assert module_version() == first + 3


def test_the_disk_under_the_data_is_a_fault_when_short_of_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redis and db modules read the free space under their data every few seconds: a fault
    below HEAN_DISK_MIN_FREE_MB (Redis stops when it cannot append, the history writer fails),
    while there is still room to act. A real disk: this one, with the bar set above what it has."""
    from hean import db
    from hean.config import reload_settings
    from hean.core.system.probes import DiskCheck, db_probe

    roomy = DiskCheck(tmp_path, "it stops", min_free_bytes=0, every_s=0.0)
    roomy.read()
    detail = roomy.verdict({"url": "u"})
    assert detail["url"] == "u" and detail["disk_free_mb"] > 0, detail
    free = shutil.disk_usage(tmp_path).free
    short = DiskCheck(tmp_path, "it stops", min_free_bytes=free + 2**30, every_s=0.0)
    short.read()
    said = rf"[\d,]+ MiB free on the disk under {re.escape(str(tmp_path))} \(less than [\d,]+, "
    with pytest.raises(ModuleFault, match=said + r"HEAN_DISK_MIN_FREE_MB\): it stops when it is full"):
        short.verdict({})
    elsewhere = DiskCheck(tmp_path / "on-another-host", "it stops", every_s=0.0)
    elsewhere.read()
    assert elsewhere.verdict({}) == {}  # nothing to say about a disk it cannot see

    # the db module on an SQLite file, its bar above what the disk has
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'history.db'}")
    monkeypatch.setenv("HEAN_DISK_MIN_FREE_MB", str(free // 2**20 + 1024))
    reload_settings()
    db.reset()
    try:
        with pytest.raises(ModuleFault, match="the history writer's writes fail") as fault:
            db_probe().check()
        assert fault.value.detail["disk_free_mb"] > 0 and "url" in fault.value.detail
        monkeypatch.setenv("HEAN_DISK_MIN_FREE_MB", "0")
        reload_settings()
        assert db_probe().check()["disk_free_mb"] > 0
    finally:
        monkeypatch.delenv("DATABASE_URL")
        monkeypatch.delenv("HEAN_DISK_MIN_FREE_MB")
        reload_settings()
        db.reset()
