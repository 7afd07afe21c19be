"""Issue 15 item 1: when the engine worker dies mid-batch (SIGKILL) under load, every acked
order gets its result soon after the restart, applied exactly once: the new engine worker takes
back the batch its dead predecessor had been delivered, without waiting for the visibility
timeout (one hour here)."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from hean.celery_wire import (
    UNACKED_KEY,
    NotTheOwner,
    batch_frame,
    delivering_key,
    holder_id,
    reclaim_unacked,
    redelivered,
    restore_delivering,
    restore_held,
)
from hean.command_journal import CommandJournal
from hean.core.system.redis_state import get_sync_state_manager
from hean.db import open_database
from hean.history import HistoryStore
from hean.messages import envelope_json
from hean.topology import BATCH_TASKS, ENGINE_QUEUE, POSITIONS_KEY, SYSTEM_NAMESPACE
from support import Client, start_engine_worker, stop_engine_worker, wait_for
from workers.app import app
from workers.shard import INFLIGHT_KEY

#: Generous: results come within seconds of the restart; without the reclaim they would wait
#: for the visibility timeout (3,600 s), so this still tells the two apart.
RESULTS_AFTER_RESTART_S = 60


def command_ok(client: Client, command: str, **params: Any) -> dict[str, Any]:
    request_id = uuid.uuid4().hex
    ack = client.command({"command": command, "params": params, "request_id": request_id})
    assert ack["accepted"], ack
    result = client.result_for(request_id)
    assert result["success"], (result["error"], result)
    return result


def open_market(client: Client, prefix: str) -> str:
    """The engine running (whatever earlier tests left) and a new symbol quoted at 10: its name."""
    command_ok(client, "reset_kill_switch")
    command_ok(client, "start")
    sym = f"{prefix}{uuid.uuid4().hex[:6].upper()}"
    command_ok(client, "update_market", symbol=sym, bid="10", ask="10", last="10")
    return sym


def make_way(arrives: str, napper: Client, store: redis.Redis) -> None:
    """Get the engine worker ready for what is sent next to arrive as asked: "delivered" by
    Celery (the worker idle), or, any other way, taken along by the commit of a batch running
    meanwhile (a 1 s `engine_nap`, started when this returns), into one batch."""
    if arrives == "delivered":
        time.sleep(1.0)
        return
    nap_id = uuid.uuid4().hex
    napper.command({"command": "engine_nap", "params": {"seconds": 1}, "request_id": nap_id})
    wait_for(lambda: CommandJournal(store).state(nap_id) == "started", 30, "the nap to start")


def engine_held(client: redis.Redis) -> int:
    """Engine queue messages taken off the queue and not done: delivered and held in the
    delivering list (the atomic pop's record) or, from an older worker, in kombu's unacked hash;
    or taken along into the in-flight list (by a take, or by a commit taking the next batches)."""
    unacked = sum(1 for raw in client.hvals(UNACKED_KEY) if f'"{ENGINE_QUEUE}"]' in raw.decode())
    return unacked + int(client.llen(delivering_key(ENGINE_QUEUE))) + int(client.llen(INFLIGHT_KEY))


def restart_until_answered(system: dict[str, Any], store: redis.Redis, logs_dir: Any, request_id: str) -> int:
    """Start a new engine worker each time one dies, until `request_id` has its result; returns
    how many died."""
    deaths, deadline = 0, time.monotonic() + 180
    while CommandJournal(store).state(request_id) != "done":
        assert time.monotonic() < deadline, f"no answer after {deaths} deaths"
        worker = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        if not worker.alive():
            deaths += 1
            worker.stop()
            system["processes"].remove(worker)
            start_engine_worker(system, logs_dir)
        time.sleep(0.05)
    return deaths


def wait_for_position(redis_url: str, sym: str, quantity: int) -> None:
    """Wait until the published positions show `quantity` of `sym`."""
    manager = get_sync_state_manager(redis_url)
    wait_for(
        lambda: any(
            p["symbol"] == sym and Decimal(p["quantity"]) == quantity
            for p in manager.get_state(POSITIONS_KEY, namespace=SYSTEM_NAMESPACE) or []
        ),
        30,
        f"the {sym} position to equal {quantity}",
    )


@contextlib.contextmanager
def redis_that_fills(
    system: dict[str, Any], redis_url: str
) -> Iterator[tuple[Client, Callable[[bool], None]]]:
    """A client of the shared system, and `full(on)`: the system's Redis full (its maxmemory
    below what it holds; noeviction) or back at its own limit, as it is again at the end."""
    store = redis.Redis.from_url(redis_url)
    client = Client(str(system["url"]), str(system["token"]))
    limit = store.config_get("maxmemory")["maxmemory"]

    def full(on: bool) -> None:
        store.config_set("maxmemory", 1 if on else limit)

    try:
        yield client, full
    finally:
        full(False)
        client.close()
        store.close()


def fill_one(client: Client, sym: str, quantity: str = "1") -> dict[str, Any]:
    """Submit a market BUY of `sym` and check that it filled; the order's params."""
    order = {"client_order_id": uuid.uuid4().hex, "symbol": sym, "side": "BUY", "quantity": quantity}
    assert command_ok(client, "submit_order", **order)["result"]["order"]["status"] == "FILLED"
    return order


def test_orders_a_killed_engine_worker_held_are_applied_once_after_the_restart(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client, napper = Client(url, token), Client(url, token)
    acked: dict[str, dict[str, Any]] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    stop_sending = threading.Event()
    sym = open_market(client, "CRASH")

    client.sio.on("command_result", lambda r: results.setdefault(r["request_id"], []).append(r))

    def send() -> None:  # about 300 single orders a second until told to stop
        while not stop_sending.is_set():
            request_id = f"{sym}-{uuid.uuid4().hex[:10]}"
            params = {"client_order_id": request_id, "symbol": sym, "side": "BUY", "quantity": "1"}
            ack = client.sio.call(
                "command", {"command": "submit_order", "params": params, "request_id": request_id}, timeout=30
            )
            if ack.get("accepted"):
                acked[request_id] = ack
            time.sleep(1 / 300)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        # kill it mid-batch: while it runs a command that holds it for a while (a batch that
        # was delivered and will never be acknowledged nor committed), orders queue behind
        wait_for(lambda: len(acked) > 100, 60, "orders flowing")
        nap_id = uuid.uuid4().hex
        napper.command({"command": "engine_nap", "params": {"seconds": 3}, "request_id": nap_id})
        wait_for(lambda: CommandJournal(store).state(nap_id) == "started", 30, "the nap to start")
        stop_engine_worker(system, crash=True)
        try:
            held, nap_state = engine_held(store), CommandJournal(store).state(nap_id)
            time.sleep(0.5)  # orders keep coming while no engine worker runs
        finally:  # the tests after this one need an engine worker, whatever this one finds
            start_engine_worker(system, logs_dir)
        time.sleep(0.5)
    finally:
        stop_sending.set()
        sender.join(timeout=60)
    assert held > 0, "the dead worker left nothing unacknowledged to take back"
    assert nap_state == "started"  # no result
    restarted = time.monotonic()
    try:
        wait_for(
            lambda: all(rid in results for rid in list(acked)),
            RESULTS_AFTER_RESTART_S,
            "a result for every acked order",
        )
        waited = time.monotonic() - restarted
        print(f"every one of {len(acked)} acked orders answered {waited:.1f} s after the restart")
        assert engine_held(store) == 0
        # applied exactly once: each order filled once, and the position is their sum
        for request_id in acked:
            outcomes = {r["result"]["order"]["order_id"] for r in results[request_id] if r["success"]}
            assert len(outcomes) == 1, (request_id, results[request_id])
        wait_for_position(system_redis_url, sym, len(acked))
    finally:
        client.close()
        napper.close()
        store.close()


def test_a_batch_popped_by_a_worker_killed_right_after_the_pop_is_applied_once_after_the_restart(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    """The worst moment: the worker has taken the message off the queue and done nothing else
    with it. kombu's BRPOP lost it there (popped, recorded nowhere); the atomic pop keeps it in
    the delivering list, which is its record until the batch commits."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client = Client(url, token)
    delivering = delivering_key(ENGINE_QUEUE)
    try:
        sym = open_market(client, "POP")
        stop_engine_worker(system, crash=False)
        spec_env = dict(system["env"])
        spec_env["HEAN_COMMAND_MODULES"] = spec_env.get("HEAN_COMMAND_MODULES", "") + ",die_after_pop"
        start_engine_worker(dict(system, env=spec_env), logs_dir)
        dying = next(p for p in system["processes"] if p.name.startswith("worker-engine"))

        request_id = f"{sym}-{uuid.uuid4().hex[:10]}"
        params = {"client_order_id": request_id, "symbol": sym, "side": "BUY", "quantity": "2"}
        ack = client.command({"command": "submit_order", "params": params, "request_id": request_id})
        assert ack["accepted"], ack
        wait_for(lambda: not dying.alive(), 60, "the worker to kill itself right after the pop")
        dying.stop()
        system["processes"].remove(dying)
        # the popped message is not queued, and not in kombu's unacked hash: the delivering list
        # holds it (with BRPOP it was nowhere, and the acked order was lost)
        assert store.llen(delivering) == 1
        assert request_id.encode() in store.lindex(delivering, 0)
        assert not any(request_id.encode() in raw for raw in store.hvals(UNACKED_KEY))
        assert CommandJournal(store).state(request_id) != "done"

        start_engine_worker(system, logs_dir)
        result = client.result_for(request_id)
        assert result["success"], result
        assert store.llen(delivering) == 0
        manager = get_sync_state_manager(system_redis_url)
        wait_for(
            lambda: any(
                p["symbol"] == sym and Decimal(p["quantity"]) == 2
                for p in manager.get_state(POSITIONS_KEY, namespace=SYSTEM_NAMESPACE) or []
            ),
            30,
            f"the {sym} position to hold the one order, applied once",
        )
    finally:
        client.close()
        store.close()


def test_a_batch_cut_short_by_a_hard_shutdown_is_applied_once_after_the_restart(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    """Ctrl+C pressed again and again (or SIGQUIT three times) makes Celery's third signal
    handler raise WorkerTerminate wherever the worker's main thread is: in the engine worker,
    most often inside a batch. The batch's message must stay held, to run after the restart,
    not be acknowledged on the way out with nothing committed (the acked command was lost)."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client = Client(url, token)
    try:
        command_ok(client, "reset_kill_switch")
        nap_id = uuid.uuid4().hex
        ack = client.command({"command": "engine_nap", "params": {"seconds": 5}, "request_id": nap_id})
        assert ack["accepted"], ack
        wait_for(lambda: CommandJournal(store).state(nap_id) == "started", 30, "the nap to start")
        worker = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        for _ in range(3):  # cold shutdown, then its soft part, then the hard one: it raises
            worker.process.send_signal(signal.SIGQUIT)
            time.sleep(0.3)
        wait_for(lambda: not worker.alive(), 30, "the worker to stop on the third signal")
        stopped_after_s = time.monotonic()
        worker.stop()
        system["processes"].remove(worker)
        try:
            held, nap_state = engine_held(store), CommandJournal(store).state(nap_id)
            waiting = store.llen(ENGINE_QUEUE)
        finally:
            start_engine_worker(system, logs_dir)
        assert nap_state == "started"  # cut short: no result
        assert held + waiting == 1, "the cut-short batch's message was acknowledged and is gone"
        result = client.result_for(nap_id)
        assert result["success"] and result["result"] == {"slept": 5}, result
        assert time.monotonic() - stopped_after_s < 60  # not the visibility timeout's hour
        assert engine_held(store) == 0
        assert CommandJournal(store).state(nap_id) == "done"
    finally:
        client.close()
        store.close()


@pytest.mark.parametrize("arrives", ["delivered", "taken along"])
def test_a_command_that_kills_the_engine_worker_each_time_is_answered_dropped_and_its_batch_runs(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any, arrives: str
) -> None:
    """A command that ends the engine worker's process whenever it runs, arriving alone (Celery
    delivers its message, which comes back after the death) or behind a batch that takes it
    along (into the in-flight list, which each start finishes first), with an order queued
    right behind it: after the first death, the next worker runs what the dead one held one
    command at a time, naming each before it runs; it dies on the poison command, and so does
    the next, and the worker after those answers it `dropped` (it never ran) without running
    it. Three deaths, the order filled once. Before, the redelivery cap took four deaths and
    answered the order `dropped` too; before that, the poison command went unanswered, or
    killed every start."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client, napper = Client(url, token), Client(url, token)
    try:
        sym = open_market(client, "POISON")
        poison, order_id = uuid.uuid4().hex, uuid.uuid4().hex
        make_way(arrives, napper, store)
        order = {"client_order_id": uuid.uuid4().hex, "symbol": sym, "side": "BUY", "quantity": "1"}
        for request_id, command, params in ((poison, "engine_exit", {}), (order_id, "submit_order", order)):
            ack = client.command({"command": command, "params": params, "request_id": request_id})
            assert ack["accepted"], ack
        deaths = restart_until_answered(system, store, logs_dir, poison)
        result = client.result_for(poison)
        assert not result["success"] and result["error"]["code"] == "dropped", result
        assert (
            "stopped 2 times while running this command again (in a small group, then alone)"
            in result["error"]["message"]
        ), result
        assert deaths == 3
        filled = client.result_for(order_id)
        assert filled["success"] and filled["result"]["order"]["status"] == "FILLED", filled
        assert filled["result"]["order"]["duplicate"] is False, filled
        wait_for(lambda: engine_held(store) == 0, 30, "nothing held")
        answered_by = next(p for p in system["processes"] if p.name.startswith("worker-engine")).log_text()
        assert f"event=command_dropped_alone queue=engine request_id={poison}" in answered_by
        # the same request id again: the same answer, nothing runs
        again = client.command({"command": "engine_exit", "params": {}, "request_id": poison})
        assert again["duplicate"], again
        assert client.result_for(poison)["error"]["code"] == "dropped"
        fresh = {**order, "client_order_id": uuid.uuid4().hex}
        assert command_ok(client, "submit_order", **fresh)["result"]["order"]["status"] == "FILLED"
    finally:
        client.close()
        napper.close()
        store.close()


def test_held_commands_run_again_in_groups_and_only_a_dead_group_one_at_a_time(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    """What a dead worker held runs in groups (workers.engine.RECOVERY_GROUP), each named before
    it runs; only the commands of the group a worker died in run one at a time. A poison command
    with 20 orders before it and 20 after, all taken along: it costs three deaths (its batch's,
    its group's, then alone), each of the 40 orders fills once, and the worker that answers the
    poison `dropped` runs the rest in groups, not one at a time (before: 41 commits of one)."""
    from workers.engine import RECOVERY_GROUP

    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client, napper = Client(url, token), Client(url, token)
    try:
        sym = open_market(client, "GROUPS")
        poison = uuid.uuid4().hex
        orders = [uuid.uuid4().hex for _ in range(40)]
        make_way("taken along", napper, store)
        for k, request_id in enumerate([*orders[:20], poison, *orders[20:]]):
            command, params = (
                ("engine_exit", {})
                if request_id == poison
                else (
                    "submit_order",
                    {"client_order_id": request_id, "symbol": sym, "side": "BUY", "quantity": "1"},
                )
            )
            ack = client.command({"command": command, "params": params, "request_id": request_id})
            assert ack["accepted"], (k, ack)
        assert restart_until_answered(system, store, logs_dir, poison) == 3
        assert client.result_for(poison)["error"]["code"] == "dropped"
        for request_id in orders:
            filled = client.result_for(request_id)
            assert filled["success"] and filled["result"]["order"]["status"] == "FILLED", filled
        wait_for(lambda: engine_held(store) == 0, 30, "nothing held")
        log_text = next(p for p in system["processes"] if p.name.startswith("worker-engine")).log_text()
        line = next(x for x in log_text.splitlines() if "event=batch_run_alone" in x and "dropped=1" in x)
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        commands, groups, alone = int(fields["commands"]), int(fields["groups"]), int(fields["alone"])
        assert commands >= 41, line  # the 41 (and whatever else the nap's commit took along)
        # the poison answered without running, the rest in groups around it, none alone
        assert alone == 0, line
        fewest = -(-(commands - 1) // RECOVERY_GROUP)  # the groups the others fill, at the fewest
        assert fewest <= groups <= fewest + 1, line
        # the orders before the poison (20) ran alone before it (the worker before died on it): their
        # results are resent, logged in one line for their group, not one line each
        resent = [x for x in log_text.splitlines() if "already_ran" in x]
        assert (
            len(resent) == 1
            and f"event=commands_already_ran queue=engine count={commands - 21} " in resent[0]
        ), resent
        wait_for_position(system_redis_url, sym, len(orders))
    finally:
        client.close()
        napper.close()
        store.close()


def test_recovery_groups_hold_at_most_recovery_group_and_stop_before_a_suspect() -> None:
    """How `_run_alone` cuts what a dead worker held: groups of at most RECOVERY_GROUP, each
    ending before a command a worker died running in recovery (named in ALONE_KEY), which runs
    alone; ALONE_KEY's lines read back as named, an older single line included, and anything
    else in it is ignored."""
    from workers.engine import RECOVERY_GROUP, _named_alone, _recovery_group

    envelopes: list[dict[str, Any]] = [{"request_id": f"r{i}"} for i in range(2 * RECOVERY_GROUP + 20)]
    envelopes.append({"request_id": None})  # not named, not a suspect: it runs in a group
    suspect = RECOVERY_GROUP + 6
    suspects = {f"r{suspect}": 0}
    cut, i = [], 0
    while i < len(envelopes):
        size = _recovery_group(envelopes, i, suspects)
        cut.append(size)
        i += max(size, 1)
    assert cut == [RECOVERY_GROUP, 6, 0, RECOVERY_GROUP, len(envelopes) - suspect - 1 - RECOVERY_GROUP]
    assert _named_alone(b"r1 0\nr2 1\nnot a line\nr3 x\n\n") == {"r1": 0, "r2": 1}
    assert _named_alone(b"abc 1") == {"abc": 1}  # as a worker before groups named one command
    assert _named_alone(None) == {} and _named_alone(b"") == {}


@pytest.mark.parametrize("held", ["a redelivered message", "an in-flight list"])
def test_past_the_caps_behind_it_every_command_held_is_answered_dropped(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any, held: str
) -> None:
    """The caps behind the one-command-at-a-time runs, for a worker that dies elsewhere than in
    a command: a message delivered more than MAX_REDELIVERIES times again, or an in-flight list
    that more than MAX_REDELIVERIES starts died finishing, has each command without a result
    answered `dropped`, without running, and is gone."""
    import celeryconfig

    store = redis.Redis.from_url(system_redis_url)
    # the result may have left the window for the database by the time it is read
    env = system["env"]
    database = open_database(env.get("DATABASE_URL") or f"sqlite:///{Path(env['HEAN_HOME']) / 'hean.db'}")
    journal = CommandJournal(store, history=HistoryStore(database))
    cap = celeryconfig.MAX_REDELIVERIES
    request_id, scratch = uuid.uuid4().hex, f"held-{uuid.uuid4().hex[:8]}"
    params = {"client_order_id": request_id, "symbol": "CAPPED", "side": "BUY", "quantity": "1"}
    envelope = envelope_json(request_id, "submit_order", json.dumps(params), "sid-1", 1.5)
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], scratch, "batch-1", "submit_order")
    journal.reserve_and_enqueue([(request_id, "submit_order", envelope)], scratch, frame)
    try:
        if held == "a redelivered message":  # delivered cap + 1 times already: counted so
            raw = store.rpop(scratch)
            assert isinstance(raw, bytes)
            store.set(f"hean:redeliveries:{json.loads(raw)['headers']['id']}", cap)
            store.rpush(ENGINE_QUEUE, redelivered(raw))  # next at the consuming end
        else:  # left in flight, and cap starts died finishing it already
            stop_engine_worker(system, crash=False)
            store.lmove(scratch, INFLIGHT_KEY, "RIGHT", "LEFT")
            store.set("hean:engine:inflight-tries", cap)
            start_engine_worker(system, logs_dir)
        wait_for(lambda: journal.state(request_id) == "done", 60, "the held command's answer")
        result = (journal.get(request_id) or {})["result"]
        assert not result["success"] and result["error"]["code"] == "dropped", result
        assert f"stopped {cap + 1} times" in result["error"]["message"], result
        assert engine_held(store) == 0 and not store.exists("hean:engine:inflight-tries")
    finally:
        store.delete(scratch)
        store.close()
        database.dispose()


@pytest.mark.parametrize("held", ["a redelivered message", "an in-flight list"])
def test_two_commands_that_kill_the_worker_in_one_held_batch_are_dropped_and_the_rest_run(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any, held: str
) -> None:
    """Two commands that end the engine worker whenever they run, in one batch that a worker
    died running (a redelivered message, or an in-flight list), between 40 orders: its group
    dies, then the first poison alone; the next worker answers it `dropped` and runs the rest
    in a group again, which dies on the second; then the second alone, and the worker after
    that answers it `dropped`. Four deaths after the first, each poison answered after its
    two in recovery, every order filled once: each command dropped lets the caps for a worker
    that dies elsewhere count again (workers.engine._count_deaths_again). Before, the start
    after the third death was past the caps, and all 40 orders were answered `dropped`."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client = Client(url, token)
    env = system["env"]
    database = open_database(env.get("DATABASE_URL") or f"sqlite:///{Path(env['HEAN_HOME']) / 'hean.db'}")
    journal = CommandJournal(store, history=HistoryStore(database))
    scratch = f"held-{uuid.uuid4().hex[:8]}"
    try:
        sym = open_market(client, "TWICE")
        poisons = [uuid.uuid4().hex, uuid.uuid4().hex]
        orders = [uuid.uuid4().hex for _ in range(40)]
        commands = []
        for request_id in [*orders[:10], poisons[0], *orders[10:30], poisons[1], *orders[30:]]:
            if request_id in poisons:
                commands.append(
                    (request_id, "engine_exit", envelope_json(request_id, "engine_exit", "{}", None, 1.0))
                )
                continue
            params = {"client_order_id": request_id, "symbol": sym, "side": "BUY", "quantity": "1"}
            envelope = envelope_json(request_id, "submit_order", json.dumps(params), None, 1.0)
            commands.append((request_id, "submit_order", envelope))
        frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], scratch, "batch-twice", "submit_order")
        journal.reserve_and_enqueue(commands, scratch, frame)  # one message, as a web batch
        stop_engine_worker(system, crash=False)
        if held == "a redelivered message":  # as when its worker died running it
            raw = store.rpop(scratch)
            assert isinstance(raw, bytes)
            store.rpush(ENGINE_QUEUE, redelivered(raw))
        else:
            store.lmove(scratch, INFLIGHT_KEY, "RIGHT", "LEFT")
        start_engine_worker(system, logs_dir)
        assert restart_until_answered(system, store, logs_dir, poisons[1]) == 4
        for request_id in poisons:
            wait_for(lambda rid=request_id: journal.state(rid) == "done", 60, "the poison's answer")
            result = (journal.get(request_id) or {})["result"]
            assert not result["success"] and result["error"]["code"] == "dropped", result
            assert "stopped 2 times" in result["error"]["message"], result
        for request_id in orders:
            wait_for(lambda rid=request_id: journal.state(rid) == "done", 60, "the order's answer")
            result = (journal.get(request_id) or {})["result"]
            assert result["success"] and result["result"]["order"]["status"] == "FILLED", result
            assert result["result"]["order"]["duplicate"] is False, result
        wait_for(lambda: engine_held(store) == 0, 30, "nothing held")
        assert not store.exists("hean:engine:inflight-tries")
        log_text = next(p for p in system["processes"] if p.name.startswith("worker-engine")).log_text()
        assert f"event=command_dropped_alone queue=engine request_id={poisons[1]}" in log_text
        wait_for_position(system_redis_url, sym, len(orders))
    finally:
        client.close()
        store.delete(scratch)
        store.close()
        database.dispose()


@pytest.mark.parametrize("arrives", ["delivered", "taken along", "left in flight by a crash"])
def test_a_batch_that_raises_is_undone_and_run_again_one_command_at_a_time(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any, arrives: str
) -> None:
    """An exception out of a whole engine batch (a bug in its path, a MemoryError in the core:
    `engine_raise`, run with the commands beside it), after the batch applied an order in
    memory: the engine forgets what did not commit and runs the batch's commands again one at a
    time. The order fills once (not a duplicate of the order that never committed), the command
    that raises again alone is answered `not run`, and later batches run. Before, the batch's
    commands stayed without a result, its order stayed applied in memory, and a batch taken
    along stayed in flight, where every later batch ran it again: every later order went
    unanswered. The third way in: the batch was in flight when its worker was killed, and the
    next worker's start finishes it."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client, napper = Client(url, token), Client(url, token)
    journal = CommandJournal(store)
    try:
        sym = open_market(client, "RAISE")
        make_way(arrives, napper, store)
        cid, order_id, bug_id, held_id = (uuid.uuid4().hex for _ in range(4))
        order = {"client_order_id": cid, "symbol": sym, "side": "BUY", "quantity": "1"}
        sends = [(order_id, "submit_order", order), (bug_id, "engine_raise", {})]
        if arrives == "left in flight by a crash":  # ahead of them, a nap to kill the worker in
            sends.insert(0, (held_id, "engine_nap", {"seconds": 3}))
        for request_id, command, params in sends:
            ack = client.command({"command": command, "params": params, "request_id": request_id})
            assert ack["accepted"], ack
        if arrives == "left in flight by a crash":
            wait_for(lambda: journal.state(held_id) == "started", 30, "the batch to be taken along")
            time.sleep(0.5)  # into the second nap, the batch in the in-flight list
            stop_engine_worker(system, crash=True)
            assert int(store.llen(INFLIGHT_KEY)) > 0
            start_engine_worker(system, logs_dir)
            assert client.result_for(held_id)["result"] == {"slept": 3}
        bug = client.result_for(bug_id)
        assert not bug["success"] and bug["error"]["code"] == "command_failed", bug
        assert "not run" in bug["error"]["message"] and "RuntimeError" in bug["error"]["message"], bug
        filled = client.result_for(order_id)
        assert filled["success"], filled
        assert filled["result"]["order"]["status"] == "FILLED", filled
        assert filled["result"]["order"]["duplicate"] is False, filled  # the first one was undone
        again = command_ok(client, "submit_order", **order)["result"]["order"]  # a new request id
        assert again["duplicate"] is True, again
        fresh = {**order, "client_order_id": uuid.uuid4().hex}
        assert command_ok(client, "submit_order", **fresh)["result"]["order"]["duplicate"] is False
        assert engine_held(store) == 0
        worker = next(p for p in system["processes"] if p.name.startswith("worker-engine")).log_text()
        assert "event=batch_run_alone" in worker and "raised_alone=1" in worker, worker[-3000:]
        assert "event=failed_batch_answered" in worker
    finally:
        client.close()
        napper.close()
        store.close()


def test_an_unreadable_message_taken_along_is_set_aside_and_the_batch_runs(
    system: dict[str, Any], system_redis_url: str
) -> None:
    """A message on the engine queue that looks like a batch and cannot be read (here nested
    deeper than any JSON parser goes: a RecursionError, not a ValueError), taken along into the
    in-flight list, is moved aside to `<in-flight>:unreadable` for people to read, and the
    commands taken with it run. Before, it stayed in flight and every later batch failed on it:
    no order was answered after it."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client, napper = Client(url, token), Client(url, token)
    unreadable = INFLIGHT_KEY + ":unreadable"
    try:
        sym = open_market(client, "DEEP")
        nap_id = uuid.uuid4().hex
        napper.command({"command": "engine_nap", "params": {"seconds": 1}, "request_id": nap_id})
        wait_for(lambda: CommandJournal(store).state(nap_id) == "started", 30, "the nap to start")
        deep = "[" * 100_000 + "]" * 100_000
        raw = json.dumps({"body": deep, "headers": {"task": BATCH_TASKS[ENGINE_QUEUE]}, "properties": {}})
        store.lpush(ENGINE_QUEUE, raw)  # behind the nap: its commit takes it along
        order = {"client_order_id": uuid.uuid4().hex, "symbol": sym, "side": "BUY", "quantity": "1"}
        filled = command_ok(client, "submit_order", **order)["result"]["order"]
        assert filled["status"] == "FILLED" and filled["duplicate"] is False, filled
        assert [item.decode() for item in store.lrange(unreadable, 0, -1)] == [raw]
        assert engine_held(store) == 0
        again = {**order, "client_order_id": uuid.uuid4().hex}
        assert command_ok(client, "submit_order", **again)["result"]["order"]["status"] == "FILLED"
    finally:
        store.delete(unreadable)
        client.close()
        napper.close()
        store.close()


def test_an_idle_engine_worker_waits_out_a_full_redis_and_runs_on(
    system: dict[str, Any], system_redis_url: str
) -> None:
    """Redis full (maxmemory, noeviction) for a few seconds while the engine worker waits for
    work: its pop (BLMOVE) is refused. It stopped there ("Unrecoverable error"), and nothing
    ran what the web acked once Redis had room; now it waits, and the same process fills the
    next order."""
    with redis_that_fills(system, system_redis_url) as (client, full):
        sym = open_market(client, "ROOM")
        worker = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        full(True)
        wait_for(lambda: "event=pop_refused" in worker.log_text(), 10, "the pop to be refused")
        time.sleep(2.0)
        full(False)
        fill_one(client, sym)
        assert worker.alive() and "Unrecoverable error" not in worker.log_text()
        assert "event=pop_recovered queue=engine" in worker.log_text()
        # the LLM worker's refresh of its remote-control binding, if due meanwhile, was refused
        # every second: one line at most (kombu logged a traceback each time; tests/test_transport.py)
        llm = next(p for p in system["processes"] if p.name.startswith("worker-llm")).log_text()
        assert "maybe_refresh_binding_expiry" not in llm
        assert llm.count("event=binding_refresh_refused error=OutOfMemoryError") <= 1, llm[-3000:]


def test_an_engine_worker_started_while_redis_is_full_waits_and_then_runs(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    """Started (after a crash) while Redis is full: it cannot take the shard's lease, and waits
    for room, saying so once (it said so twice a second), then takes the shard and runs."""
    with redis_that_fills(system, system_redis_url) as (client, full):
        sym = open_market(client, "WAIT")
        stop_engine_worker(system, crash=True)
        full(True)
        start_engine_worker(system, logs_dir)
        worker = system["processes"][0]
        wait_for(lambda: "event=engine_shard_unreachable" in worker.log_text(), 30, "the lease refused")
        time.sleep(3.0)
        assert worker.alive()
        assert worker.log_text().count("event=engine_shard_unreachable error=OutOfMemoryError") == 1
        full(False)
        fill_one(client, sym)
        assert "event=engine_shard_reachable failures=" in worker.log_text()


def test_an_engine_worker_stopped_while_redis_is_full_says_so_and_its_successor_replays_the_log(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    """Stopped (SIGTERM) while Redis is full: its last snapshot is refused. One line says so
    (it was a traceback); the successor, started once Redis has room, restores the snapshot
    before and replays the log: an order filled before the stop is in its positions and its
    client order id is still known."""
    with redis_that_fills(system, system_redis_url) as (client, full):
        sym = open_market(client, "SHUT")
        order = fill_one(client, sym, quantity="2")
        worker = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        full(True)
        stop_engine_worker(system, crash=False)
        assert worker.process.returncode == 0
        text = worker.log_text()
        assert "event=engine_snapshot_failed reason=shutdown" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        full(False)
        start_engine_worker(system, logs_dir)
        wait_for_position(system_redis_url, sym, 2)
        again = command_ok(client, "submit_order", **order)["result"]["order"]
        assert again["duplicate"] is True, again


def test_restore_delivering_puts_leftovers_back_oldest_first(redis_client: redis.Redis) -> None:
    delivering = delivering_key(ENGINE_QUEUE)
    redis_client.lpush(ENGINE_QUEUE, "waiting")
    redis_client.lpush(delivering, "old", "new")  # moved there in this order (BLMOVE ... LEFT)
    assert restore_delivering(redis_client, ENGINE_QUEUE) == 2
    assert restore_delivering(redis_client, ENGINE_QUEUE) == 0
    # consumers pop from the right: the oldest popped comes back first
    assert [redis_client.rpop(ENGINE_QUEUE) for _ in range(3)] == [b"old", b"new", b"waiting"]


def test_restore_delivering_keeps_the_callers_own_and_runs_only_for_the_queues_owner(
    redis_client: redis.Redis,
) -> None:
    """The one consumer's periodic check (workers.transport) keeps what it was delivered and has
    not acknowledged yet, and, fenced by the queue's owner key, moves nothing for a process the
    key does not name (a replaced consumer that runs again)."""
    delivering = delivering_key(ENGINE_QUEUE)
    owner = "hean:test:owner"
    redis_client.lpush(delivering, "stray", "mine")
    redis_client.set(owner, "someone-else")
    with pytest.raises(NotTheOwner):
        restore_delivering(redis_client, ENGINE_QUEUE, [b"mine"], owner_key=owner)
    assert redis_client.lrange(delivering, 0, -1) == [b"mine", b"stray"]  # nothing moved
    redis_client.set(owner, holder_id())
    assert restore_delivering(redis_client, ENGINE_QUEUE, [b"mine"], owner_key=owner) == 1
    assert redis_client.lrange(delivering, 0, -1) == [b"mine"]
    assert redis_client.lrange(ENGINE_QUEUE, 0, -1) == [b"stray"]
    assert restore_delivering(redis_client, ENGINE_QUEUE, [b"mine"], owner_key=owner) == 0
    redis_client.delete(owner, delivering, ENGINE_QUEUE)


def test_restored_messages_are_marked_redelivered_and_restored_once(redis_client: redis.Redis) -> None:
    """What comes back from the delivering list counts as a redelivery (the cap on a message
    that keeps killing its worker counts those), and a message no longer held (acknowledged
    meanwhile) is not put back."""
    delivering = delivering_key(ENGINE_QUEUE)
    delivery_info = {"routing_key": ENGINE_QUEUE}
    message = {"body": "", "headers": {"id": "t1"}, "properties": {"delivery_info": delivery_info}}
    raw = json.dumps(message).encode()
    redis_client.lpush(delivering, raw)
    assert restore_held(redis_client, ENGINE_QUEUE, raw, b"acknowledged meanwhile") == 1
    assert restore_held(redis_client, ENGINE_QUEUE, raw) == 0  # once only
    back = json.loads(redis_client.rpop(ENGINE_QUEUE))
    assert back["headers"] == {"id": "t1", "redelivered": True}
    assert back["properties"]["delivery_info"] == {"routing_key": ENGINE_QUEUE, "redelivered": True}
    assert redis_client.llen(delivering) == 0 and redis_client.llen(ENGINE_QUEUE) == 0


def test_reclaim_takes_back_only_the_named_queues_messages_oldest_first(redis_client: redis.Redis) -> None:
    def unacked(tag: str, queue: str, n: int, at: float) -> None:
        message = {"body": str(n), "headers": {}, "properties": {"delivery_info": {"routing_key": queue}}}
        redis_client.hset(UNACKED_KEY, tag, json.dumps([message, "", queue]))
        redis_client.zadd("unacked_index", {tag: at})

    unacked("t-new", ENGINE_QUEUE, 2, 200.0)
    unacked("t-old", ENGINE_QUEUE, 1, 100.0)
    unacked("t-other", "default", 3, 150.0)
    redis_client.lpush(ENGINE_QUEUE, "waiting")
    assert reclaim_unacked(redis_client, ENGINE_QUEUE) == 2
    assert reclaim_unacked(redis_client, ENGINE_QUEUE) == 0  # once only

    # consumers pop from the right: the oldest delivery comes back first, then the newer one
    queued = [json.loads(m) if m != b"waiting" else m for m in redis_client.lrange(ENGINE_QUEUE, 0, -1)]
    assert queued[0] == b"waiting"
    assert [m["body"] for m in reversed(queued[1:])] == ["1", "2"]
    assert all(
        m["headers"]["redelivered"] and m["properties"]["delivery_info"]["redelivered"] for m in queued[1:]
    )
    assert redis_client.hkeys(UNACKED_KEY) == [b"t-other"]
    assert redis_client.zrange("unacked_index", 0, -1) == [b"t-other"]
