"""The Pulse against real processes: celery beat every 100 ms, a pulse worker probing the real
modules, the REST views, and faults injected into the real things (engine worker killed,
database file damaged) that the status must show and recover from."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hean.config import reload_settings
from hean.core.system.health_monitor import (
    HEALTH_NAMESPACE,
    MODULES,
    NODE_RETENTION_S,
    NODES_KEY,
    SUMMARY_KEY,
    HealthMonitor,
    HealthStatus,
    Probe,
    Unreachable,
    classify,
)
from hean.core.system.probes import WORKER_HEARTBEATS_KEY
from hean.core.system.redis_state import get_sync_state_manager
from hean.processes import PROCESSES
from support import (
    Client,
    ManagedProcess,
    http_json,
    recorded,
    start_engine_worker,
    stop_engine_worker,
    system_journal,
    wait_for,
)


@pytest.fixture(scope="module")
def pulse(system: dict[str, Any], logs_dir: Path) -> Iterator[dict[str, Any]]:
    """A pulse worker and celery beat joined to the shared system."""
    specs = {spec.name: spec for spec in PROCESSES}
    started = [
        ManagedProcess(name, specs[name].argv(sys.executable), system["env"], logs_dir)
        for name in ("worker-pulse", "beat")
    ]
    try:
        wait_for(lambda: all_healthy(system), 60, "every module HEALTHY")
        yield system
    finally:
        for process in started:
            process.stop()


def modules(system: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = http_json(system["url"] + "/api/system/health/pulse")
    return body["modules"] if status == 200 else {}


def all_healthy(system: dict[str, Any]) -> bool:
    """Every module HEALTHY in a fresh pulse (not one an earlier test's pulse worker left)."""
    status, body, _ = http_json(system["url"] + "/api/system/health/pulse")
    if status != 200 or body.get("stale") or (body.get("age_ms") or 0) > 1_000:
        return False
    found = body["modules"]
    return set(found) == set(MODULES) and all(m["status"] == "HEALTHY" for m in found.values())


def module_status(system: dict[str, Any], name: str) -> str | None:
    return modules(system).get(name, {}).get("status")


def test_the_docs_api_runs_as_written(pulse: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", pulse["env"]["REDIS_URL"])
    reload_settings()

    async def docs() -> dict[str, Any]:
        from hean.core.system.health_monitor import get_health_monitor

        monitor = await get_health_monitor()
        status = monitor.get_health_status()
        from hean.core.system.redis_state import get_redis_state_manager

        await (await get_redis_state_manager()).aclose()
        return status

    try:
        status = asyncio.run(docs())
    finally:
        monkeypatch.undo()
        reload_settings()
    assert set(status["modules"]) == set(MODULES)
    assert status["age_ms"] is not None and status["age_ms"] < 5_000
    for module in status["modules"].values():
        assert {
            "status",
            "latency_ms",
            "last_check",
            "consecutive_failures",
            "reconnects",
            "last_error",
        } <= set(module)


def test_rest_views_answer_from_the_last_pulse(pulse: dict[str, Any]) -> None:
    status, body, _ = http_json(pulse["url"] + "/api/system/health")
    assert status == 200 and set(body["modules"]) == set(MODULES) and body["pulse_age_ms"] is not None
    assert body["engine"]["state"] in {"RUNNING", "STOPPED", "HALTED"} and body["redis"]["ok"] is True
    assert body["overall"] in {s.value for s in HealthStatus} and body["pulse_stale"] in {True, False}
    status, every, _ = http_json(pulse["url"] + "/api/system/health/pulse")
    assert status == 200 and set(every["modules"]) == set(MODULES) and every["nodes"]
    assert every["period_s"] == 0.1 and every["age_ms"] >= 0
    status, redis_module, _ = http_json(pulse["url"] + "/api/system/health/module/redis")
    assert status == 200 and redis_module["name"] == "redis" and redis_module["age_ms"] >= 0
    status, missing, _ = http_json(pulse["url"] + "/api/system/health/module/flux_capacitor")
    assert status == 404 and missing["error"]["modules"] == list(MODULES)
    status, web, _ = http_json(pulse["url"] + "/api/system/health/module/frontend_socket")
    assert status == 200 and web["detail"]["clients"] >= 0 and web["detail"]["age_ms"] < 300


def test_pulses_reach_operators(pulse: dict[str, Any]) -> None:
    operator = Client(str(pulse["url"]), str(pulse["token"]), operator=True)
    beats: queue.Queue[dict[str, Any]] = queue.Queue()
    operator.sio.on("health_pulse", beats.put)
    try:
        first, second = beats.get(timeout=10), beats.get(timeout=10)
        assert set(first["modules"]) == set(MODULES)
        # two pulses (the client may hand events to its threads out of order)
        assert second["at"] != first["at"]
    finally:
        operator.close()


def test_each_pulse_is_sent_ahead_of_its_slot_and_begins_at_it(pulse: dict[str, Any]) -> None:
    """Beat sends each pulse PULSE_LEAD_S before its slot on its fixed-rate clock (so slots are
    whole periods apart), and the pulse worker begins it at that slot, never before: a delivery
    quicker than the lead does not move the pulse (workers/beat.py, workers/pulse.py)."""
    from hean.topology import PULSE_LEAD_S, PULSE_PERIOD_S

    operator = Client(str(pulse["url"]), str(pulse["token"]), operator=True)
    beats: queue.Queue[dict[str, Any]] = queue.Queue()
    operator.sio.on("health_pulse", beats.put)
    try:
        seen = [beats.get(timeout=10) for _ in range(30)]
    finally:
        operator.close()
    assert all(p["slot"] is not None for p in seen), seen[0]
    for p in seen:
        assert p["at"] >= p["slot"] and p["late_ms"] >= 0, p  # never begun before its slot
    slots = sorted({p["slot"] for p in seen})
    periods = [(b - a) / PULSE_PERIOD_S for a, b in itertools.pairwise(slots)]
    assert all(abs(n - round(n)) < 0.01 and round(n) >= 1 for n in periods), periods
    # the message came before its slot (beat -> worker quicker than the lead), most times
    ahead = [p for p in seen if p["delivery_ms"] < PULSE_LEAD_S * 1000.0]
    assert len(ahead) >= len(seen) // 2, [p["delivery_ms"] for p in seen]


def test_engine_pings_are_acknowledged_with_their_answers(pulse: dict[str, Any]) -> None:
    """Ten pings a second go through the engine queue; each is acknowledged in its answer's own
    round trip (QoS.ack_within), so none is left in the delivering list behind it."""
    import redis

    from hean.celery_wire import delivering_key
    from hean.topology import ENGINE_QUEUE

    client = redis.Redis.from_url(pulse["env"]["REDIS_URL"])
    try:
        wait_for(lambda: module_status(pulse, "cpp_core") == "HEALTHY", 30, "cpp_core HEALTHY")
        lengths = []
        for _ in range(20):  # two seconds: about twenty pings answered
            lengths.append(int(client.llen(delivering_key(ENGINE_QUEUE))))
            time.sleep(0.1)
        assert max(lengths) <= 1, lengths  # at most the ping being answered at that moment
        assert module_status(pulse, "cpp_core") == "HEALTHY"
    finally:
        client.close()


def test_a_killed_engine_worker_is_flagged_and_recovers(pulse: dict[str, Any], logs_dir: Path) -> None:
    stop_engine_worker(pulse, crash=True)
    wait_for(lambda: module_status(pulse, "cpp_core") == "DISCONNECTED", 10, "cpp_core DISCONNECTED")
    found = modules(pulse)["cpp_core"]
    assert found["consecutive_failures"] >= 1 and "ms" in found["last_error"]
    start_engine_worker(pulse, logs_dir)
    wait_for(lambda: module_status(pulse, "cpp_core") == "HEALTHY", 60, "cpp_core HEALTHY again")


def test_a_damaged_database_is_flagged_reconnected_and_recovers(pulse: dict[str, Any]) -> None:
    # Root reads any file whatever its mode, so the damage is real bytes: a non-SQLite file.
    # In WAL mode the newest pages may live in the -wal file (another process wrote them), and a
    # reader takes them from there: the log is damaged too, or the damage would not show.
    db_file = Path(pulse["env"]["HEAN_HOME"]) / "hean.db"
    wait_for(lambda: db_file.exists(), 10, "the database file")
    saved = {f: f.read_bytes() for f in (db_file, db_file.with_name("hean.db-wal")) if f.exists()}
    for damaged in saved:
        damaged.write_bytes(b"this is not a database" * 100)
    try:
        wait_for(lambda: module_status(pulse, "db") == "UNHEALTHY", 10, "db UNHEALTHY")
        wait_for(lambda: modules(pulse)["db"]["reconnects"] >= 1, 10, "a db reconnect")
        # SQLite's words for it: "not a database", "malformed", or an I/O error on a damaged log
        error = modules(pulse)["db"]["last_error"]
        assert any(m in error for m in ("not a database", "malformed", "disk I/O error")), error
    finally:
        for damaged, original in saved.items():
            damaged.write_bytes(original)
    wait_for(lambda: module_status(pulse, "db") == "HEALTHY", 30, "db HEALTHY again")


def test_a_database_that_refuses_the_history_writer_is_flagged_and_recovers(pulse: dict[str, Any]) -> None:
    """Reads still work (the db module's own probe passes), but the history writer's inserts
    fail, as on a full disk: the db module says so, with the writer's error, until it writes."""
    import sqlite3

    db_file = Path(pulse["env"]["HEAN_HOME"]) / "hean.db"
    wait_for(lambda: db_file.exists(), 10, "the database file")
    with contextlib.closing(sqlite3.connect(db_file, timeout=10)) as database:
        database.execute(
            "CREATE TRIGGER refuse_history BEFORE INSERT ON commands "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        database.commit()
        request_id = "refused-" + os.urandom(6).hex()
        try:
            with Client(str(pulse["url"]), str(pulse["token"])) as client:
                command = {"command": "list_commands", "params": {}, "request_id": request_id}
                refusals: list[dict[str, Any]] = []

                def send() -> dict[str, Any] | None:
                    ack = client.command(command)
                    if not ack["accepted"] and (ack.get("error") or {}).get("code") == "unavailable":
                        refusals.append(ack)  # resent, as the README tells clients to
                        time.sleep(0.2)
                        return None
                    return ack

                # the web's reader may still read the file the test before damaged and restored:
                # it drops its connection at each error; CI once saw two refusals in a row
                ack = wait_for(send, 30, "the command accepted")
                assert ack["accepted"] is True, (ack, refusals)
                assert client.result_for(request_id)["success"] is True  # results do not wait for it
            wait_for(lambda: module_status(pulse, "db") == "UNHEALTHY", 20, "db UNHEALTHY")
            found = modules(pulse)["db"]
            assert "history writer failing" in found["last_error"], found
            assert "IntegrityError: database or disk is full" in found["last_error"], found
            assert found["detail"]["history_lag_s"] >= 0, found
        finally:
            database.execute("DROP TRIGGER refuse_history")
            database.commit()
    wait_for(lambda: module_status(pulse, "db") == "HEALTHY", 30, "db HEALTHY again")
    assert recorded(system_journal(pulse), request_id)["result"]["success"] is True


# -- the monitor itself, on real probes that are slow or fail on purpose ----------------------


def test_classification_thresholds() -> None:
    assert classify(50.0) is HealthStatus.HEALTHY
    assert classify(50.1) is HealthStatus.DEGRADED
    assert classify(200.0) is HealthStatus.DEGRADED
    assert classify(200.1) is HealthStatus.UNHEALTHY


def test_slow_failing_and_unreachable_modules_are_told_apart_and_reconnected() -> None:
    reconnects: list[str] = []
    release = threading.Event()

    def slow() -> dict[str, Any]:
        time.sleep(0.07)
        return {}

    def failing() -> dict[str, Any]:
        raise RuntimeError("boom")

    def gone() -> dict[str, Any]:
        raise Unreachable("no route")

    def hung() -> dict[str, Any]:
        release.wait(30)
        return {}

    monitor = HealthMonitor(
        [
            Probe("fast", lambda: {}),
            Probe("slow", slow, reconnect=lambda: reconnects.append("slow")),
            Probe("failing", failing, reconnect=lambda: reconnects.append("failing")),
            Probe("gone", gone),
            Probe("hung", hung),
        ],
        timeout=0.2,
    )
    try:
        for _ in range(4):
            status = monitor.check_all()
        assert status is not None
        found = status["modules"]
        assert found["fast"]["status"] == "HEALTHY"
        assert found["slow"]["status"] == "DEGRADED" and found["slow"]["reconnects"] >= 1
        assert found["failing"]["status"] == "UNHEALTHY" and found["failing"]["consecutive_failures"] == 4
        assert found["failing"]["last_error"] == "RuntimeError: boom" and found["failing"]["reconnects"] == 1
        assert found["gone"]["status"] == "DISCONNECTED" and found["gone"]["last_error"] == "no route"
        # the hung check never answered, yet every pulse returned: it is reported, not awaited
        assert found["hung"]["status"] == "DISCONNECTED" and found["hung"]["pending"] is True
        assert found["hung"]["last_error"] == "no answer within 200 ms"
        assert status["overall"] == "DISCONNECTED"
        assert reconnects.count("failing") == 1 and "slow" in reconnects
        release.set()  # the hung module answers: the next pulses collect it and check it anew
        wait_for(
            lambda: (monitor.check_all() or {"modules": found})["modules"]["hung"]["status"] == "HEALTHY",
            10,
            "the hung module HEALTHY once it answers",
        )
    finally:
        release.set()
        monitor.close()


def test_a_waiting_check_is_degraded_then_unhealthy_then_disconnected() -> None:
    """A check that has not answered is reported by its wait; one check in flight at a time."""
    release = threading.Event()
    calls: list[int] = []

    def waiting() -> dict[str, Any]:
        calls.append(1)
        release.wait(30)
        return {}

    monitor = HealthMonitor([Probe("waiting", waiting, timeout=0.5)], budget=0.06)
    seen: list[str] = []

    def disconnected() -> bool:
        status = monitor.check_all()
        assert status is not None
        seen.append(status["modules"]["waiting"]["status"])
        return seen[-1] == "DISCONNECTED"

    try:
        wait_for(disconnected, 10, "DISCONNECTED after 500 ms without an answer", interval=0.0)
        assert seen[0] == "DEGRADED" and "UNHEALTHY" in seen  # in that order, never back
        assert seen.index("UNHEALTHY") < seen.index("DISCONNECTED")
        assert calls == [1]  # pulses never piled up checks on the hung module
    finally:
        release.set()
        monitor.close()


def test_a_group_of_probes_runs_in_one_thread_in_order_and_waits_together() -> None:
    """Grouped probes share one thread, run one after another each pulse, and a member that
    hangs leaves the members after it waiting (reported as such) until it answers."""
    release = threading.Event()
    ran: list[tuple[str, str]] = []

    def check(name: str, hang: bool = False) -> Any:
        def run() -> dict[str, Any]:
            ran.append((name, threading.current_thread().name))
            if hang and not release.is_set():
                release.wait(30)
            return {}

        return run

    monitor = HealthMonitor(
        [
            Probe("first", check("first"), group="g"),
            Probe("alone", check("alone")),
            Probe("second", check("second", hang=True), group="g"),
            Probe("third", check("third"), group="g"),
        ],
        timeout=0.3,
        budget=0.02,
    )

    def modules() -> dict[str, Any]:
        status = monitor.check_all()
        assert status is not None
        return dict(status["modules"])

    try:
        # the group stops at its hung member: the members behind it wait with it
        found = wait_for(
            lambda: (m := modules())["second"]["status"] == "DISCONNECTED" and m,
            10,
            "the hung member DISCONNECTED",
            interval=0.0,
        )
        assert found["third"]["status"] == "DISCONNECTED" and found["third"]["pending"]
        # a member before the hung one was recorded as soon as it answered, not held up with it
        assert found["first"]["status"] == "HEALTHY" and not found["first"]["pending"]
        assert found["alone"]["status"] == "HEALTHY"  # its own thread, not held up
        group = [(name, thread) for name, thread in ran if name != "alone"]
        assert [name for name, _ in group] == ["first", "second"]  # in order, one check in flight
        assert group[0][1] == group[1][1] != dict(ran)["alone"]  # one thread for the group
        release.set()
        wait_for(
            lambda: all(m["status"] == "HEALTHY" for m in modules().values()),
            10,
            "every member HEALTHY once it answers",
        )
        assert [name for name, _ in ran if name != "alone"][:3] == ["first", "second", "third"]
    finally:
        release.set()
        monitor.close()


def test_inline_and_quick_answers_take_no_thread() -> None:
    """An `inline` probe runs in the pulse's own thread; a probe with a `quick` answer is
    recorded from it without its thread, and its full check runs (in its thread) only when the
    quick answer is None or raises."""
    ran: list[tuple[str, str]] = []
    quick_answer: list[Any] = [{"quick": True}]

    def check(name: str) -> Any:
        def run() -> dict[str, Any]:
            ran.append((name, threading.current_thread().name))
            return {"full": True}

        return run

    def quick() -> dict[str, Any] | None:
        answer = quick_answer[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monitor = HealthMonitor(
        [Probe("clock", check("clock"), inline=True), Probe("file", check("file"), quick=quick)],
        budget=1.0,
    )
    try:
        here = threading.current_thread().name
        status = monitor.check_all()
        assert status is not None
        assert ran == [("clock", here)]  # inline, and the file answered quickly: no thread
        assert status["modules"]["file"]["detail"] == {"quick": True}
        assert status["modules"]["file"]["status"] == "HEALTHY"
        for answer in (None, RuntimeError("no quick answer")):
            quick_answer[0] = answer
            ran.clear()
            status = monitor.check_all()
            assert status is not None
            file_runs = [thread for name, thread in ran if name == "file"]
            assert len(file_runs) == 1 and file_runs[0] != here  # the full check, in its thread
            assert status["modules"]["file"]["detail"] == {"full": True}
    finally:
        monitor.close()


def test_a_stopped_web_process_is_flagged_and_recovers(pulse: dict[str, Any], logs_dir: Path) -> None:
    from hean.core.system.health_monitor import get_sync_health
    from support import http_ok

    def web_status() -> str | None:
        found = get_sync_health(pulse["env"]["REDIS_URL"]).get_health_status()["modules"]
        return found.get("frontend_socket", {}).get("status")

    processes: list[ManagedProcess] = pulse["processes"]
    web = next(p for p in processes if p.name.startswith("web"))
    web.stop()
    processes.remove(web)
    wait_for(lambda: web_status() == "DISCONNECTED", 10, "frontend_socket DISCONNECTED")
    spec = next(s for s in PROCESSES if s.name == "web")
    processes.append(ManagedProcess("web-restarted", spec.argv(sys.executable), pulse["env"], logs_dir))
    wait_for(lambda: http_ok(str(pulse["url"]) + "/api/system/health"), 60, "the web process again")
    wait_for(lambda: web_status() == "HEALTHY", 30, "frontend_socket HEALTHY again")


def test_every_pulse_node_reports_and_a_silent_one_is_disconnected(
    pulse: dict[str, Any], logs_dir: Path
) -> None:
    spec = next(s for s in PROCESSES if s.name == "worker-pulse")
    argv = [("second@%h" if arg == "pulse@%h" else arg) for arg in spec.argv(sys.executable)]
    second = ManagedProcess("worker-pulse-second", argv, pulse["env"], logs_dir)

    def nodes() -> dict[str, Any]:
        status, body, _ = http_json(pulse["url"] + "/api/system/health/pulse")
        return body.get("nodes", {}) if status == 200 else {}

    def names(prefix: str) -> list[str]:
        return [n for n in nodes() if n.startswith(prefix)]

    try:
        wait_for(lambda: names("second@") and names("pulse@"), 60, "two pulse nodes")
        node = names("second@")[0]
        wait_for(lambda: nodes()[node]["status"] != "DISCONNECTED", 30, "the second node reporting")
        assert all(
            v["status"] != "DISCONNECTED" for k, v in nodes().items() if k.startswith(("pulse@", "second@"))
        )
    finally:
        second.stop()
    wait_for(lambda: nodes()[node]["status"] == "DISCONNECTED", 10, "the stopped node DISCONNECTED")
    assert nodes()[node]["age_ms"] > 300
    first = names("pulse@")[0]
    assert nodes()[first]["status"] != "DISCONNECTED"


def test_a_long_silent_pulse_node_is_dropped(pulse: dict[str, Any]) -> None:
    """A node that stopped reporting long ago (its host is gone) is pruned by the live node."""
    manager = get_sync_state_manager(pulse["env"]["REDIS_URL"])
    ghost = "ghost@a-host-long-gone"
    silent_since = time.time() - NODE_RETENTION_S - 60
    manager.merge_state(NODES_KEY, {ghost: {"at": silent_since, "overall": "HEALTHY"}}, HEALTH_NAMESPACE)
    wait_for(
        lambda: ghost not in manager.get_state(NODES_KEY, HEALTH_NAMESPACE), 10, "the silent node dropped"
    )
    status, body, _ = http_json(pulse["url"] + "/api/system/health/pulse")
    assert status == 200 and body["nodes"] and ghost not in body["nodes"]


def test_a_newer_pulse_is_never_replaced_by_an_older_one(pulse: dict[str, Any]) -> None:
    """Another node stores a pulse begun 250 ms from now: every pulse this node begins before
    then is older and must not replace it; the pulse then moves on from it."""
    manager = get_sync_state_manager(pulse["env"]["REDIS_URL"])
    newer = dict(manager.get_state(SUMMARY_KEY, HEALTH_NAMESPACE), at=time.time() + 0.25)
    manager.set_state(SUMMARY_KEY, newer, HEALTH_NAMESPACE)
    seen = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        seen.append(float(manager.get_state(SUMMARY_KEY, HEALTH_NAMESPACE)["at"]))
        time.sleep(0.005)
    assert min(seen) == newer["at"]  # never an older pulse after it
    assert max(seen) > newer["at"]  # and newer pulses replaced it


def test_a_vanished_worker_shows_disconnected_and_a_stopped_one_disappears(
    pulse: dict[str, Any], logs_dir: Path
) -> None:
    spec = next(s for s in PROCESSES if s.name == "worker-llm")

    def argv(node: str) -> list[str]:
        args = spec.argv(sys.executable)
        args[args.index("-Q") + 1] = "health-test-idle"  # a queue nobody sends to
        args[args.index("-n") + 1] = f"{node}@%h"
        return args

    def worker(prefix: str) -> dict[str, Any] | None:
        found = modules(pulse).get("workers", {}).get("detail", {}).get("workers", {})
        return next((w for name, w in found.items() if name.startswith(prefix)), None)

    def healthy(prefix: str) -> bool:
        return (worker(prefix) or {}).get("status") == "HEALTHY"

    vanishing = ManagedProcess("worker-vanishing", argv("vanishing"), pulse["env"], logs_dir)
    stopping = ManagedProcess("worker-stopping", argv("stopping"), pulse["env"], logs_dir)
    client = redis.Redis.from_url(pulse["env"]["REDIS_URL"])
    try:
        wait_for(lambda: healthy("vanishing@") and healthy("stopping@"), 60, "both workers HEALTHY")
        os.killpg(vanishing.pid, signal.SIGKILL)  # no shutdown at all: it vanishes
        stopping.stop()  # SIGTERM: a warm shutdown, which removes its heartbeat
        assert not [n for n in client.hkeys(WORKER_HEARTBEATS_KEY) if n.startswith(b"stopping@")]
        wait_for(lambda: worker("stopping@") is None, 10, "the stopped worker gone from the status")
        wait_for(lambda: (worker("vanishing@") or {}).get("status") == "DISCONNECTED", 15, "DISCONNECTED")
        found = modules(pulse)["workers"]
        assert found["status"] == "UNHEALTHY" and "vanishing@" in found["last_error"]
        # still listed after the 10 s its heartbeat key used to live, with its last-seen age
        wait_for(lambda: (worker("vanishing@") or {}).get("age_ms", 0) > 11_000, 30, "11 s of silence")
        gone = worker("vanishing@")
        assert gone is not None and gone["status"] == "DISCONNECTED" and gone["last_seen"] < time.time() - 11
    finally:
        vanishing.stop()
        stopping.stop()
        # the rest of the session should not see these two for the next 10 minutes
        for name in client.hkeys(WORKER_HEARTBEATS_KEY):
            if name.startswith((b"vanishing@", b"stopping@")):
                client.hdel(WORKER_HEARTBEATS_KEY, name)
        client.close()
    wait_for(lambda: module_status(pulse, "workers") == "HEALTHY", 10, "workers HEALTHY again")


def test_redis_stopped_and_restarted_is_flagged_reconnected_and_recovers(tmp_path: Path) -> None:
    """Our own Redis on a fixed port, probed through a blocking pool like hean.redis_client's."""
    from hean.core.system.probes import redis_probe
    from hean.redis_server import PrivateRedis, free_port

    server = PrivateRedis(tmp_path / "redis", port=free_port())
    server.start()
    pool = redis.BlockingConnectionPool.from_url(
        server.url, max_connections=4, timeout=1, socket_connect_timeout=0.1, socket_timeout=0.1
    )
    client = redis.Redis(connection_pool=pool)
    monitor = HealthMonitor([redis_probe(client)])

    def redis_module() -> dict[str, Any]:
        status = monitor.check_all()
        assert status is not None
        return status["modules"]["redis"]  # type: ignore[no-any-return]

    try:
        wait_for(lambda: redis_module()["status"] == "HEALTHY", 10, "redis HEALTHY")
        server.stop()
        wait_for(lambda: redis_module()["status"] == "DISCONNECTED", 10, "redis DISCONNECTED")
        wait_for(lambda: redis_module()["consecutive_failures"] >= 3, 10, "three failures in a row")
        failing = wait_for(lambda: (m := redis_module())["reconnects"] >= 1 and m, 10, "a reconnect")
        assert isinstance(failing, dict) and "redis" in failing["last_error"]
        server.start()
        wait_for(lambda: redis_module()["status"] == "HEALTHY", 10, "redis HEALTHY again")
        assert redis_module()["consecutive_failures"] == 0
    finally:
        monitor.close()
        client.close()
        server.stop()
