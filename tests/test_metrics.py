"""Prometheus: the web process's `/metrics` merges every HEAN process's series (multiprocess
mode), Flower's `/metrics` keeps the Celery task series, and both move when orders flow. Flower
runs as `hean up` runs it (127.0.0.1, basic auth from the token) and its REST API sees every
worker and the tasks of each queue. Real processes only."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from hean.core.system.probes import memory_reserve_size
from hean.processes import PROCESSES
from hean.redis_server import free_port
from hean.topology import ANALYZE_TASK, PULSE_TASK, QUIET_PULSE_TASK
from support import Client, ManagedProcess, http_ok, samples, scrape, total, wait_for

FLOWER_USER = "hean"


@pytest.fixture(scope="module")
def flower(system: dict[str, Any], logs_dir: Path) -> Iterator[dict[str, Any]]:
    """The pulse worker, beat and Flower joined to the shared system; Flower configured as
    `hean up` configures it (hean/launcher.py)."""
    port = free_port()
    specs = {spec.name: spec for spec in PROCESSES}
    env = dict(
        system["env"],
        FLOWER_ADDRESS="127.0.0.1",
        FLOWER_PORT=str(port),
        FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{system['token']}",
    )
    started = [
        ManagedProcess(f"{name}-metrics", specs[name].argv(sys.executable), env, logs_dir)
        for name in ("worker-pulse", "beat", "flower")
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: flower_get(url, "/api/workers", str(system["token"])) is not None, 90, "Flower")
        yield {"url": url, "token": system["token"]}
    finally:
        for process in started:
            process.stop()


def flower_get(url: str, path: str, password: str, raw: bool = False) -> Any:
    auth = base64.b64encode(f"{FLOWER_USER}:{password}".encode()).decode()
    request = urllib.request.Request(url + path, headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
    except (urllib.error.URLError, OSError):
        return None
    return body.decode() if raw else json.loads(body)


def run(client: Client, command: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    request_id = uuid.uuid4().hex
    assert client.command({"command": command, "params": params or {}, "request_id": request_id})["accepted"]
    return client.result_for(request_id)


def flow_orders(system: dict[str, Any]) -> str:
    """Start the engine, give a new symbol a market, and send orders that fill, expire and are
    rejected (below the minimum notional); stop the engine again. Returns the symbol."""
    symbol = "PM" + uuid.uuid4().hex[:6].upper()
    client = Client(str(system["url"]), str(system["token"]))
    try:
        run(client, "reset_kill_switch")
        assert run(client, "start")["success"]
        market = {"symbol": symbol, "bid": "100", "ask": "100.5", "last": "100.2"}
        assert run(client, "update_market", market)["success"]
        base = {"symbol": symbol, "side": "BUY", "quantity": "1"}
        orders = [
            {
                **base,
                "client_order_id": f"{symbol}-ioc-{i}",
                "order_type": "LIMIT",
                "price": "50",
                "time_in_force": "IOC",
            }
            for i in range(20)
        ]
        orders.append(
            {**base, "client_order_id": f"{symbol}-tiny", "quantity": "0.001", "order_type": "MARKET"}
        )
        result = run(client, "submit_orders", {"orders": orders})
        assert result["success"] and result["result"]["expired"] == 20 and result["result"]["rejected"] == 1
        filled = run(
            client, "submit_order", {**base, "client_order_id": f"{symbol}-fill", "order_type": "MARKET"}
        )
        assert filled["result"]["order"]["status"] == "FILLED"
        run(
            client,
            "submit_order",
            {**base, "client_order_id": f"{symbol}-sell", "side": "SELL", "order_type": "MARKET"},
        )
        assert run(client, "stop")["success"]
    finally:
        client.close()
    return symbol


def test_metrics_merge_every_process_and_move_when_orders_flow(
    system: dict[str, Any], flower: dict[str, Any]
) -> None:
    metrics_url = str(system["url"]) + "/metrics"
    wait_for(lambda: total(scrape(metrics_url), "hean_pulses_total") > 0, 30, "a pulse in /metrics")
    before = scrape(metrics_url)
    client = Client(str(system["url"]), str(system["token"]))
    try:  # a command the web refuses, counted by its reason
        ack = client.command({"command": "no_such_command", "params": {}, "request_id": uuid.uuid4().hex})
        assert not ack["accepted"] and ack["error"]["code"] == "unknown_command", ack
    finally:
        client.close()
    flow_orders(system)

    def moved() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        after = scrape(metrics_url)
        done = total(after, "hean_commands_total", command="stop") > total(
            before, "hean_commands_total", command="stop"
        )
        return after if done else None

    after = wait_for(moved, 30, "the commands in /metrics")
    assert isinstance(after, dict)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # the engine worker: orders by outcome, rejects by reason, fills
    assert grew("hean_orders_total", status="EXPIRED") >= 20
    assert grew("hean_orders_total", status="FILLED") >= 2
    assert grew("hean_order_rejects_total", reason="MIN_NOTIONAL") >= 1
    assert grew("hean_fills_total") >= 2
    # the workers: commands by name and code; the batch's latency, per queue
    assert grew("hean_commands_total", command="submit_orders", code="ok") >= 1
    assert grew("hean_commands_total", command="start", code="ok") >= 1
    assert grew("hean_submit_to_result_seconds_count", queue="engine") >= 1
    # the web process: commands enqueued and the ack histogram
    assert grew("hean_commands_enqueued_total", queue="engine") >= 6
    assert grew("hean_commands_refused_total", reason="unknown_command") >= 1
    assert grew("hean_ack_seconds_count") >= 1
    assert total(after, "hean_ack_seconds_bucket", le="+Inf") == total(after, "hean_ack_seconds_count")
    # the state bus, the pulse (per module), the queues and the engine log, read at scrape time
    assert grew("hean_state_updates_total") >= 1
    for module in ("cpp_core", "redis", "db", "exchange_api", "frontend_socket", "workers"):
        assert ("hean_pulse_status", (("module", module),)) in after
        assert ("hean_pulse_latency_seconds", (("module", module),)) in after
    assert total(after, "hean_redis_up") == 1
    for queue in ("engine", "pulse", "llm", "default"):
        assert ("hean_queue_depth", (("queue", queue),)) in after
    assert ("hean_redis_length", (("key", "engine_log"),)) in after
    # Redis's memory: this server has a limit, and the web made its reserve at warm-up
    used, limit = (
        total(after, "hean_redis_memory_bytes", kind="used"),
        total(after, "hean_redis_memory_bytes", kind="maxmemory"),
    )
    assert 0 < used < limit, (used, limit)
    assert total(after, "hean_redis_memory_bytes", kind="reserve") == memory_reserve_size(int(limit)) > 0
    # Flower's series stay in Flower's /metrics
    assert not any(name.startswith("flower_") for name, _ in after)

    # Flower's own /metrics: the Celery task series, moved by the same orders
    flower_text = flower_get(flower["url"], "/metrics", str(flower["token"]), raw=True)
    flower_samples = samples(flower_text)
    received = total(
        flower_samples, "flower_events_total", task="workers.engine.run_batch", type="task-received"
    )
    assert received >= 1
    assert (
        total(flower_samples, "flower_events_total", task="workers.engine.run_batch", type="task-succeeded")
        >= 1
    )


def test_flower_sees_every_worker_and_the_tasks_of_each_queue(
    system: dict[str, Any], flower: dict[str, Any]
) -> None:
    url, token = flower["url"], str(flower["token"])
    # Flower answers only with the token as password; and only on the loopback
    assert flower_get(url, "/api/workers", "not-the-token") is None
    assert flower["url"].startswith("http://127.0.0.1:")
    assert not http_ok(url + "/api/workers")  # no credentials: 401
    flow_orders(system)
    client = Client(str(system["url"]), str(system["token"]))
    try:
        assert run(client, "list_commands")["success"]  # the default queue (llm worker)
        # a command that raises: its exception is analysed on the llm queue (llm worker)
        assert run(client, "crash")["error"]["code"] == "command_failed"
    finally:
        client.close()

    def seen() -> dict[str, set[str]] | None:
        tasks = flower_get(url, "/api/tasks?limit=2000", token) or {}
        by_worker: dict[str, set[str]] = {}
        for task in tasks.values():
            by_worker.setdefault(str(task.get("worker", "")).split("@")[0], set()).add(task.get("name"))
        wanted = {
            "engine": {"workers.engine.run_batch"},  # the pushed order batches, from "received" on
            # one pulse in PULSE_SHOWN_EVERY (every 10 s) sends task events, the others none
            # (thirty events a second for Flower to digest, workers/beat.py)
            "pulse": {PULSE_TASK},
            # the llm worker consumes the default queue and the llm queue (the crash's analysis)
            "llm": {"workers.default.run_batch", ANALYZE_TASK},
        }
        return by_worker if all(tasks <= by_worker.get(w, set()) for w, tasks in wanted.items()) else None

    by_worker = wait_for(seen, 60, "Flower to list the tasks of each queue", interval=1)
    assert QUIET_PULSE_TASK not in by_worker["pulse"]  # the other pulses stay out of Flower
    # a shown pulse runs as it arrives and sends its events after it ran, stamped with the times
    # it arrived and started (workers.app.inline_strategy): Flower has them in that order
    pulses = [
        t for t in (flower_get(url, "/api/tasks?limit=2000", token) or {}).values() if t["name"] == PULSE_TASK
    ]
    assert pulses and all(t["state"] == "SUCCESS" for t in pulses), pulses
    for task in pulses:
        assert task["received"] <= task["started"] <= task["succeeded"], task

    def workers() -> set[str] | None:  # from the workers' heartbeats (every 2 s)
        names = {name.split("@")[0] for name in flower_get(url, "/api/workers?refresh=true", token) or {}}
        return names if {"engine", "pulse", "llm"} <= names else None

    wait_for(workers, 60, "Flower to list the engine, pulse and llm workers", interval=1)


GRAFANA = Path(__file__).resolve().parent.parent / "grafana" / "hean-dashboard.json"


def test_the_grafana_dashboard_charts_every_hean_series_and_only_real_ones() -> None:
    import re

    from prometheus_client.metrics import MetricWrapperBase

    from hean import metrics

    defined = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    # SystemCollector's
    defined |= {
        "hean_queue_depth",
        "hean_redis_length",
        "hean_redis_up",
        "hean_history_lag_seconds",
        "hean_redis_memory_bytes",
    }
    flower_series = {"flower_events", "flower_worker_online"}
    dashboard = json.loads(GRAFANA.read_text())
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\b((?:hean|flower)_[a-z_]+)\b", target["expr"]):
                used.add(re.sub(r"_(bucket|total|count|sum)$", "", name))
    assert used <= defined | flower_series, used - defined - flower_series
    # every series HEAN writes has a panel (hean_redis_up is the scrape's own health)
    assert defined - {"hean_redis_up", "hean_pulses"} <= used, defined - used


def test_each_process_writes_its_own_files_named_by_host_and_pid_and_a_fork_its_own(tmp_path: Path) -> None:
    """Multiprocess mode: a process's series go to files named by host and pid (containers
    sharing one metrics volume reuse pids), and a forked child starts files of its own rather
    than write into its parent's."""
    script = """
import os, socket, sys
from hean import metrics
metrics.engine_batch("delivered")
child = os.fork()
if child == 0:
    metrics.engine_batch("taken_along")
    os._exit(0)
os.waitpid(child, 0)
metrics.engine_batch("delivered")
print(socket.gethostname().replace("_", "-"), os.getpid(), child)
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    host, parent, child = done.stdout.split()
    assert sorted(path.name for path in tmp_path.glob("counter_*")) == sorted(
        [f"counter_{host}-{parent}.db", f"counter_{host}-{child}.db"]
    )
    assert {path.name.rsplit("_", 1)[1] for path in tmp_path.iterdir()} == {
        f"{host}-{parent}.db",
        f"{host}-{child}.db",
    }
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    found = {
        sample.labels["source"]: sample.value
        for family in registry.collect()
        if family.name == "hean_engine_batches"
        for sample in family.samples
        if sample.name == "hean_engine_batches_total"
    }
    assert found == {"delivered": 2.0, "taken_along": 1.0}, found


def test_the_scrape_reads_redis_memory_and_goes_on_without_it_when_info_is_refused(
    redis_client: redis.Redis, own_db_url: str
) -> None:
    """SystemCollector's Redis memory series: used, maxmemory and the reserve's bytes; a server
    that refuses INFO (an ACL, some managed servers) gives the other series without them."""
    from hean import metrics
    from hean.topology import MEMORY_RESERVE_KEY

    def families(client: redis.Redis) -> dict[str, Any]:
        collector = metrics.SystemCollector(client, queues=["q"], memory_reserve=MEMORY_RESERVE_KEY)
        return {family.name: family for family in collector.collect()}

    redis_client.rpush("q", "a", "b")
    redis_client.setrange(MEMORY_RESERVE_KEY, 1023, b"\0")
    found = families(redis_client)
    assert [s.value for s in found["hean_redis_up"].samples] == [1]
    memory = {s.labels["kind"]: s.value for s in found["hean_redis_memory_bytes"].samples}
    assert memory["reserve"] == 1024 and 0 < memory["used"] < memory["maxmemory"], memory
    user = f"no-info-{uuid.uuid4().hex[:8]}"
    redis_client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-info"])
    try:
        parts = urlsplit(own_db_url)
        limited = redis.Redis(host=parts.hostname, port=parts.port, db=1, username=user, password="pw")
        found = families(limited)
        limited.close()
    finally:
        redis_client.acl_deluser(user)
    assert [s.value for s in found["hean_redis_up"].samples] == [1]
    assert [s.value for s in found["hean_queue_depth"].samples] == [2]
    assert "hean_redis_memory_bytes" not in found
