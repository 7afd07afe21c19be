"""Issue 15 item 6: faults under load, each ending in a reconciliation that shows nothing acked
lost and nothing applied twice. One `hean up` (private Redis, every process supervised) serves
the module; 500 single orders a second (a coalescing `hean.client`) and 500 more a second in
100-order `submit_orders` commands (another client) flow while the engine worker is SIGKILLed,
Redis is SIGKILLed, the web process is SIGKILLed, and Redis runs out of memory.

The loaders are the clients a trader would use: they reconnect, resend what was not answered
with the same request ids, and resend what the server refused as `unavailable`. What they were
told is then held against what the system kept (`support.reconcile`)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from hean.client import Client as HeanClient
from hean.client import CommandHandle, OrderHandle, OrderRejected
from hean.command_journal import CommandJournal
from hean.core.system.probes import REDIS_MEMORY_FAULT_SHARE, REDIS_MEMORY_ORDERS_SHARE, memory_reserve_size
from hean.processes import process_names
from hean.topology import MEMORY_RESERVE_KEY
from support import (
    REPO_ROOT,
    SHARED_RISK_LIMITS,
    Client,
    UpProcess,
    assert_reconciled,
    hean_up_env,
    http_json,
    http_ok,
    scrape,
    total,
    wait_for,
)

#: Orders a second from each loader (single orders; 100-order commands).
RATE = 500
BATCH = 100
#: Hang guards, not targets: every acked order's result, and a restarted process.
RESULTS_S, RESTART_S = 90, 60
PRICE = "10"
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
#: 2 MiB values the nearly-full test puts in Redis, so that its last 5% is room enough for a
#: kill switch and the commands after it (a few MB would not be).
BALLAST_PARTS = 48


@dataclass
class UpSystem:
    up: UpProcess
    url: str
    token: str
    redis_url: str
    database_url: str
    env: dict[str, str]

    def pid(self, name: str) -> int:
        return self.up.pids()[name]

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=5)


@pytest.fixture(scope="module")
def up_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpSystem]:
    home = tmp_path_factory.mktemp("faults") / "hean-home"
    env = hean_up_env(home)
    # the test command `engine_nap` holds the engine worker mid-batch for the kill
    env["HEAN_COMMAND_MODULES"] = "custom_commands"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS_DIR), env.get("PYTHONPATH")]))
    up = UpProcess(env, home.parent / "up.log")
    try:
        match = wait_for(
            lambda: re.search(r"ready: dashboard (http://\S+)/#token=(\S+)", up.output()), 120, "hean up"
        )
        assert isinstance(match, re.Match)
        wait_for(lambda: set(up.pids()) == set(process_names()), 60, "every process RUNNING")
        database_url = env.get("DATABASE_URL") or f"sqlite:///{home.resolve() / 'hean.db'}"
        system = UpSystem(
            up, match.group(1), match.group(2), (home / "redis.url").read_text().strip(), database_url, env
        )
        with HeanClient(system.url, system.token) as client:
            limits = {**SHARED_RISK_LIMITS, "max_orders_per_second": 0}
            client.command("risk_adjust", limits).wait(30)
            client.command("start").wait(30)
        yield system
    finally:
        up.stop()


class Load:
    """RATE single orders a second through one coalescing hean.client, and RATE more in
    BATCH-order `submit_orders` commands through another, on a symbol of its own (market
    BUY orders of 1 at PRICE: each fills once)."""

    def __init__(self, system: UpSystem, symbol: str) -> None:
        self.symbol = symbol
        options: dict[str, Any] = {
            "reconnection_delay": 0.05,
            "reconnection_delay_max": 0.5,
            "result_recheck": 2.0,
        }
        self.single = HeanClient(system.url, system.token, **options)
        self.batched = HeanClient(system.url, system.token, **options)
        self.single.connect()
        self.batched.connect()
        market = {"symbol": symbol, "bid": PRICE, "ask": PRICE, "last": PRICE}
        self.single.command("update_market", market).wait(30)
        self.orders: list[OrderHandle[Any]] = []
        self.batches: list[tuple[CommandHandle[Any], list[str]]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._pace, args=(self._send_single, 0.01), daemon=True),
            threading.Thread(target=self._pace, args=(self._send_batch, BATCH / RATE), daemon=True),
        ]

    def _pace(self, send: Callable[[], None], period: float) -> None:
        started, sent = time.monotonic(), 0
        while not self._stop.is_set():
            if sent < (time.monotonic() - started) / period:
                send()
                sent += 1
            else:
                self._stop.wait(period / 2)

    def _send_single(self) -> None:
        for _ in range(int(RATE * 0.01)):
            self.orders.append(self.single.submit_order(self.symbol, "BUY", "1"))

    def _send_batch(self) -> None:
        ids = [f"{self.symbol}-b{uuid.uuid4().hex[:12]}" for _ in range(BATCH)]
        orders = [
            {"client_order_id": cid, "symbol": self.symbol, "side": "BUY", "quantity": "1"} for cid in ids
        ]
        self.batches.append((self.batched.submit_orders(orders), ids))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def sent(self) -> int:
        return len(self.orders) + BATCH * len(self.batches)

    def acked(self) -> int:
        done = sum(1 for h in self.orders if h.ack.done() and not h.ack.exception())
        return done + BATCH * sum(1 for h, _ in self.batches if h.ack.done() and not h.ack.exception())

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def record(self) -> tuple[dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
        """Once every order is answered: per acked request id its orders, per order what the
        client was told. Closes the clients."""
        deadline = time.monotonic() + RESULTS_S
        acked: dict[str, list[str]] = {}
        heard: dict[str, list[dict[str, Any]]] = {}
        try:
            for order in self.orders:
                ack = order.ack.result(max(0.1, deadline - time.monotonic()))
                try:
                    outcome = order.wait(max(0.1, deadline - time.monotonic()))
                except OrderRejected as exc:
                    outcome = exc.order or {}
                assert ack["accepted"], ack
                acked.setdefault(order.request_id, []).append(order.client_order_id)
                heard.setdefault(order.client_order_id, []).append(outcome)
            for command, ids in self.batches:
                ack = command.ack.result(max(0.1, deadline - time.monotonic()))
                result = command.wait(max(0.1, deadline - time.monotonic()))
                assert ack["accepted"], ack
                acked[command.request_id] = ids
                for outcome in result["results"]:
                    heard.setdefault(outcome["client_order_id"], []).append(outcome)
        finally:
            self.single.close()
            self.batched.close()
        return acked, heard


def symbol() -> str:
    return "F" + uuid.uuid4().hex[:8].upper()


def run_under_load(system: UpSystem, fault: Callable[[Load], None], before: int = 500) -> None:
    """Load, `fault` once `before` orders were acked, load a little longer, then reconcile."""
    started, since = time.monotonic(), time.time()
    with Load(system, symbol()) as load:
        wait_for(lambda: load.acked() >= before, 60, f"{before} orders acked")
        at_fault = time.monotonic()
        fault(load)
        recovered = time.monotonic()
        sent = load.sent
        wait_for(lambda: load.sent >= sent + 2 * RATE, 30, "the load to go on after the fault")
    acked, heard = load.record()
    answered = time.monotonic()
    print(
        f"{load.symbol}: {load.sent} orders sent, {sum(map(len, acked.values()))} acked; load "
        f"{at_fault - started:.1f} s before the fault, fault {recovered - at_fault:.1f} s, every "
        f"result {answered - recovered:.1f} s after it"
    )
    assert sum(map(len, acked.values())) == load.sent  # every one acked in the end
    assert_reconciled(system.redis_url, system.database_url, acked, heard)
    # and as an operator checks it: `hean reconcile` over the same time range
    report = hean_reconcile(system, since)
    assert report["ok"] and report["missing_count"] == report["duplicated_count"] == 0, report
    assert report["in_flight"] == 0 and report["acked"] == report["applied"] == report["answered"], report
    assert report["acked"] >= len(acked), (report, len(acked))


def hean_reconcile(system: UpSystem, since: float) -> dict[str, Any]:
    """`hean reconcile --from SINCE --json`, run the way an operator runs it (exit 0: all well)."""
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "hean"),
            "reconcile",
            "--from",
            f"{since:.3f}",
            "--settle",
            "10",
            "--json",
        ],
        env=system.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    report: dict[str, Any] = json.loads(done.stdout)
    print(
        f"hean reconcile: acked={report['acked']} applied={report['applied']} answered={report['answered']}"
    )
    return report


def _server_pid(url: str) -> int | None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def test_engine_worker_sigkill_under_load(up_system: UpSystem) -> None:
    def kill(load: Load) -> None:
        # mid-batch, for sure: while it runs a command that holds it, orders queue behind it
        napper = Client(up_system.url, up_system.token)
        store = up_system.redis()
        try:
            nap = uuid.uuid4().hex
            napper.command({"command": "engine_nap", "params": {"seconds": 2}, "request_id": nap})
            wait_for(lambda: CommandJournal(store).state(nap) == "started", 30, "the nap to start")
        finally:
            napper.close()
            store.close()
        old = up_system.pid("worker-engine")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: up_system.up.pids().get("worker-engine", old) != old, RESTART_S, "a new worker")
        # then again at whatever moment it is in under load (popping, recording, applying,
        # committing): the atomic delivery and the journal leave no moment that loses or doubles
        acked = load.acked()
        wait_for(lambda: load.acked() >= acked + RATE, 60, "orders flowing through the new worker")
        time.sleep(random.uniform(0.0, 0.2))
        again = up_system.pid("worker-engine")
        os.kill(again, signal.SIGKILL)
        wait_for(lambda: up_system.up.pids().get("worker-engine", again) != again, RESTART_S, "a new worker")

    run_under_load(up_system, kill)


def test_redis_sigkill_under_load(up_system: UpSystem) -> None:
    def kill(load: Load) -> None:
        old = _server_pid(up_system.redis_url)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        wait_for(
            lambda: (pid := _server_pid(up_system.redis_url)) not in (None, old) and pid,
            RESTART_S,
            "hean up to restart Redis from its AOF",
        )

    run_under_load(up_system, kill)
    assert up_system.up.process.poll() is None
    wait_for(lambda: http_ok(up_system.url + "/api/system/health"), 60, "health to answer 200 again")


def test_web_process_sigkill_under_load(up_system: UpSystem) -> None:
    def kill(load: Load) -> None:
        old = up_system.pid("web")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: up_system.up.pids().get("web", old) != old, RESTART_S, "a new web process")
        wait_for(lambda: load.single.reconnects and load.batched.reconnects, RESTART_S, "the reconnects")

    run_under_load(up_system, kill)


def test_a_kill_switch_is_taken_while_redis_is_nearly_full(up_system: UpSystem) -> None:
    """From 95% of Redis's maxmemory on, orders are refused `unavailable` with nothing enqueued,
    and the commands that stop trading are still taken and run (the room left is theirs): a
    kill switch, and the reset and start after it. Full anyway (a limit lowered by hand), a kill
    switch frees the web's memory reserve and is taken; with the reserve gone, every command is
    refused. Once there is room again orders are taken within about a second (the web reads the
    memory once a second), and the reserve is made again. Full while the engine worker holds a
    batch it cannot commit, the kill switch's room lets that batch and the order behind it
    commit, and the kill switch runs after them."""
    store = up_system.redis()
    probe = Client(up_system.url, up_system.token)
    own = symbol()
    limit = int(store.config_get("maxmemory")["maxmemory"])
    web_log = Path(up_system.env["HEAN_HOME"]) / "logs" / "web.log"

    def fill_up() -> None:
        # a limit 4 MiB under what Redis holds, not counting its clients' buffers (MBs for a
        # moment, then gone): every write refused, still after a few seconds of the history
        # writer compacting what it wrote, and not once the reserve (16 MiB) is freed
        memory = store.info("memory")
        held = int(memory["used_memory"]) - int(memory.get("mem_clients_normal", 0))
        store.config_set("maxmemory", max(held - 4 * 2**20, 2**20))

    def run(name: str, params: dict[str, Any]) -> str:
        ack = send(name, params)
        assert ack["accepted"], ack
        result = probe.result_for(ack["request_id"])
        assert result["success"], result
        return str(result["result"]["state"])

    def send(name: str, params: dict[str, Any]) -> dict[str, Any]:
        return probe.command({"command": name, "params": params, "request_id": uuid.uuid4().hex})

    def order() -> dict[str, Any]:
        return send(
            "submit_order",
            {
                "client_order_id": uuid.uuid4().hex,
                "symbol": own,
                "side": "BUY",
                "quantity": "2",
                "order_type": "LIMIT",
                "price": "9",
            },
        )

    def refused_order() -> dict[str, Any] | None:
        ack = order()
        return None if ack["accepted"] else ack

    try:
        # made by the web as it started, under hean up's limit (half of this machine's memory)
        assert store.strlen(MEMORY_RESERVE_KEY) == memory_reserve_size(limit) > 0
        market = send("update_market", {"symbol": own, "bid": PRICE, "ask": PRICE, "last": PRICE})
        assert market["accepted"] and probe.result_for(market["request_id"])["success"], market
        resting = order()  # a resting order, which the kill switch cancels
        placed = probe.result_for(resting["request_id"])
        assert resting["accepted"] and placed["success"], placed["error"]
        assert placed["result"]["order"]["status"] == "RESTING", placed
        # Redis holds a few MB here, whose 5% a snapshot or a few commands' entries outgrow:
        # ballast (96 MiB) first, then a limit that puts it all at 96%, about 4 MiB short of full
        for part in range(BALLAST_PARTS):
            store.set(f"ballast:{part}", b"x" * 2**21)
        used = int(store.info("memory")["used_memory"])
        store.config_set("maxmemory", int(used / (REDIS_MEMORY_ORDERS_SHARE + 0.01)))
        refused = wait_for(refused_order, 10, "an order refused")
        assert refused["error"]["code"] == "unavailable", refused
        assert re.search(
            r"Redis memory at 9[5-9]% of its maxmemory: from 95% on only control commands "
            r"and cancels are taken",
            refused["error"]["message"],
        ), refused
        assert store.exists(f"hean:cmd:{refused['request_id']}") == 0  # nothing enqueued for it
        # what an operator's alert would watch
        found = scrape(f"{up_system.url}/metrics")
        assert total(found, "hean_commands_refused_total", reason="redis_memory") >= 1
        states = []
        for name, params in (
            ("kill_switch", {"reason": "Redis nearly full"}),
            ("reset_kill_switch", {}),
            ("start", {}),
        ):
            ack = send(name, params)
            assert ack["accepted"], ack
            result = probe.result_for(ack["request_id"])
            assert result["success"], result
            states.append(result["result"]["state"])
            if name == "kill_switch":  # the resting order cancelled
                assert result["result"]["account"]["open_orders"] == 0, result
        assert states == ["HALTED", "STOPPED", "RUNNING"], states
        # full: the kill switch frees the reserve (16 MiB) and is taken, and run
        fill_up()
        assert run("kill_switch", {"reason": "Redis full"}) == "HALTED"
        assert store.exists(MEMORY_RESERVE_KEY) == 0
        logged = web_log.read_text()
        assert re.search(r"event=memory_reserve_released bytes=\d+ commands=kill_switch", logged)
        assert "event=enqueue_failed reason=redis_memory error=" in logged  # its first try
        # full again, no reserve left: every command refused, control commands too
        fill_up()
        ack = send("reset_kill_switch", {})
        assert not ack["accepted"] and "out of memory" in ack["error"]["message"], ack
        store.config_set("maxmemory", limit)
        store.delete(*(f"ballast:{part}" for part in range(BALLAST_PARTS)))
        assert [run("reset_kill_switch", {}), run("start", {})] == ["STOPPED", "RUNNING"]
        wait_for(lambda: order()["accepted"], 10, "orders taken again")
        wait_for(lambda: order() and store.strlen(MEMORY_RESERVE_KEY) > 0, 10, "the reserve made again")
        # full while acked commands wait: the engine worker, mid-batch (a nap), finds Redis full
        # at its commit and holds the batch, an order acked behind it; the kill switch's room
        # lets them commit too, and then it runs
        nap = send("engine_nap", {"seconds": 2})
        wait_for(lambda: CommandJournal(store).state(nap["request_id"]) == "started", 30, "the nap")
        behind = order()
        assert nap["accepted"] and behind["accepted"], (nap, behind)
        fill_up()
        time.sleep(2.5)  # the nap over: its commit refused, the batch held
        assert CommandJournal(store).state(nap["request_id"]) == "started"
        assert run("kill_switch", {"reason": "Redis full, orders held"}) == "HALTED"
        for ack in (nap, behind):
            assert probe.result_for(ack["request_id"])["success"], ack
            # and journaled: the refused commit ran none of its writes (it once acknowledged the
            # nap's message and published its result, but its journal write was refused)
            assert CommandJournal(store).state(ack["request_id"]) == "done", ack
        assert len(re.findall("event=memory_reserve_released", web_log.read_text())) == 2
        store.config_set("maxmemory", limit)
        assert [run("reset_kill_switch", {}), run("start", {})] == ["STOPPED", "RUNNING"]
    finally:
        store.config_set("maxmemory", limit)
        store.delete(*(f"ballast:{part}" for part in range(BALLAST_PARTS)))
        store.close()
        probe.close()


def redis_module(system: UpSystem) -> dict[str, Any]:
    """The redis module in the latest pulse."""
    status, body, _ = http_json(system.url + "/api/system/health/pulse")
    return dict(body["modules"].get("redis", {})) if status == 200 else {}


def test_redis_fills_while_the_history_cannot_be_written_and_recovers_within_its_limit(
    up_system: UpSystem,
) -> None:
    """The database refuses the history writer (as a full disk does) under load: what it has not
    written stays in Redis, which fills up to its maxmemory (noeviction). The redis module says
    so, new commands are refused `unavailable` ("out of memory") with nothing enqueued, and once
    the database takes writes again the writer frees Redis: commands are accepted again within
    the same limit, and nothing acked is lost."""
    assert up_system.database_url.startswith("sqlite:///")
    database_file = up_system.database_url.removeprefix("sqlite:///")

    def fill_up(load: Load) -> None:
        store = up_system.redis()
        probe = Client(up_system.url, up_system.token)
        database = sqlite3.connect(database_file, timeout=10)
        refused: list[dict[str, Any]] = []
        accepted: list[str] = []

        own = symbol()  # the probe's orders are not the load's, which the end reconciles
        market = {"symbol": own, "bid": PRICE, "ask": PRICE, "last": PRICE}
        ack = probe.command({"command": "update_market", "params": market, "request_id": uuid.uuid4().hex})
        assert ack["accepted"] and probe.result_for(ack["request_id"])["success"], ack

        def probe_order() -> dict[str, Any]:
            request_id = uuid.uuid4().hex
            order = {"client_order_id": request_id, "symbol": own, "side": "BUY", "quantity": "1"}
            ack = probe.command({"command": "submit_order", "params": order, "request_id": request_id})
            if ack["accepted"]:
                accepted.append(request_id)  # its result may wait for room in Redis
            else:
                refused.append(ack)
                assert store.exists(f"hean:cmd:{request_id}") == 0  # nothing enqueued for it
            return ack

        try:
            database.execute(
                "CREATE TRIGGER refuse_history BEFORE INSERT ON commands "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
            database.commit()
            # room for a few seconds of the load's unwritten history above the redis module's
            # 90% (REDIS_MEMORY_FAULT_SHARE), so that what Redis holds now is below it again
            used = int(store.info("memory")["used_memory"])
            limit = int(used / REDIS_MEMORY_FAULT_SHARE) + 4 * 2**20
            store.config_set("maxmemory", limit)
            wait_for(lambda: not probe_order()["accepted"], 60, "an order refused: Redis nearly full")
            ack = refused[-1]
            # from 95% of the limit on, orders are refused; full, everything is (the order may
            # find either, as the web reads the memory once a second)
            message = ack["error"]["message"]
            assert ack["error"]["code"] == "unavailable", ack
            assert "only control commands and cancels" in message or "out of memory" in message, ack
            full = re.compile(r"memory at \d+% of its maxmemory")
            said = lambda: full.search(redis_module(up_system).get("last_error") or "")  # noqa: E731
            wait_for(said, 30, "the redis module to say Redis is full")
            assert redis_module(up_system)["status"] == "UNHEALTHY"
            time.sleep(1.5)  # the loaders are refused meanwhile, and resend
            database.execute("DROP TRIGGER refuse_history")
            database.commit()
            # the writer writes what waited, and frees it from Redis: room again, same limit
            wait_for(lambda: probe_order()["accepted"], 60, "a command accepted again")
            assert int(store.config_get("maxmemory")["maxmemory"]) == limit
            for request_id in accepted:  # every one acked, before the limit and after
                assert probe.result_for(request_id)["success"] is True
            healthy = lambda: redis_module(up_system).get("status") == "HEALTHY"  # noqa: E731
            wait_for(healthy, 30, "the redis module HEALTHY")
        finally:
            database.execute("DROP TRIGGER IF EXISTS refuse_history")
            database.commit()
            database.close()
            store.config_set("maxmemory", 0)
            store.close()
            probe.close()

    run_under_load(up_system, fill_up)
