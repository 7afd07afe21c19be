"""Engine commands end to end: Socket.IO -> web -> Celery engine worker -> C++ core, and the
results, state and snapshots that come back. Real processes only."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery import Celery

from hean.core.system.redis_state import get_sync_state_manager
from support import (
    SHARED_RISK_LIMITS,
    Client,
    start_engine_worker,
    stop_engine_worker,
    system_journal,
    wait_for,
)
from workers.shard import INFLIGHT_KEY, LOG_KEY


def run(client: Client, command: str, **params: Any) -> dict[str, Any]:
    """Send a command, check it was accepted, and return its result message."""
    request_id = uuid.uuid4().hex
    ack = client.command({"command": command, "params": params, "request_id": request_id})
    assert ack["accepted"] is True, ack
    return client.result_for(request_id)


def ok(client: Client, command: str, **params: Any) -> dict[str, Any]:
    result = run(client, command, **params)
    assert result["success"] is True, result["error"]
    return result["result"]  # type: ignore[no-any-return]


def fail(client: Client, command: str, code: str, **params: Any) -> dict[str, Any]:
    result = run(client, command, **params)
    assert result["success"] is False and result["error"]["code"] == code, result
    return result


def running(client: Client) -> None:
    """Bring the shared engine to RUNNING whatever earlier tests left it in."""
    state = ok(client, "stop")["state"]
    if state == "HALTED":
        ok(client, "reset_kill_switch")
    assert ok(client, "start")["state"] == "RUNNING"


def position(redis_url: str, sym: str) -> dict[str, Any] | None:
    """The published position of `sym` (the state is published every 100 ms under load)."""
    positions = get_sync_state_manager(redis_url).get_state("positions", namespace="system") or []
    return next((p for p in positions if p["symbol"] == sym), None)


def symbol() -> str:
    return "T" + uuid.uuid4().hex[:8].upper() + "USDT"


def send_without_waiting(client: Client, sym: str, ids: list[str]) -> list[dict[str, Any]]:
    """One market order of 1 `sym` per request id, every third a SELL (the position's path
    depends on the order of execution), sent without waiting for acks; returns the list the
    acks fill as they come."""
    acks: list[dict[str, Any]] = []
    for i, request_id in enumerate(ids):
        side = "BUY" if i % 3 else "SELL"
        params = {"client_order_id": request_id, "symbol": sym, "side": side, "quantity": "1"}
        command = {"command": "submit_order", "params": params, "request_id": request_id}
        client.sio.emit("command", command, callback=acks.append)
    return acks


def results_in_order_sent(client: Client, ids: list[str]) -> list[dict[str, Any]]:
    """The results of `ids`, in the order sent (python-socketio hands each packet to a thread
    of its own, so they arrive in any order)."""
    by_id: dict[str, dict[str, Any]] = {}
    while len(by_id) < len(ids):
        result = client.results.get(timeout=30)
        if result["request_id"] in ids:
            by_id[result["request_id"]] = result
    return [by_id[request_id] for request_id in ids]


def test_market_order_fills_at_the_ask_and_moves_the_position(client: Client) -> None:
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="99.5", ask="100.5", last="100")
    order = ok(client, "submit_order", client_order_id=uuid.uuid4().hex, symbol=sym, side="BUY", quantity="2")
    assert order["order"]["status"] == "FILLED"
    assert Decimal(order["order"]["fill_price"]) == Decimal("100.5")
    assert Decimal(order["order"]["filled_quantity"]) == Decimal(2)
    assert Decimal(order["order"]["fee"]) == Decimal("100.5") * 2 * Decimal("0.001")


def test_submit_orders_applies_a_batch_in_order(client: Client, system_redis_url: str) -> None:
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="10", ask="10", last="10")
    orders = [
        {"client_order_id": f"{sym}-{i}", "symbol": sym, "side": "BUY", "quantity": "1"} for i in range(50)
    ]
    orders.append(dict(orders[0]))  # a repeated client order id inside the batch
    orders.append({"client_order_id": f"{sym}-tiny", "symbol": sym, "side": "BUY", "quantity": "0.01"})
    result = ok(client, "submit_orders", orders=orders)
    # the repeated id reports its first outcome (FILLED) again, flagged duplicate: it did not fill twice
    assert result["count"] == 52 and result["filled"] == 51
    assert result["duplicates"] == 1 and result["rejected"] == 1
    assert [r["client_order_id"] for r in result["results"]] == [o["client_order_id"] for o in orders]
    assert result["results"][-1]["reject_reason"] == "MIN_NOTIONAL"
    mine = wait_for(
        lambda: (p := position(system_redis_url, sym)) and Decimal(p["quantity"]) == 50 and p,
        5,
        "the position",
    )
    assert Decimal(mine["average_entry_price"]) == 10  # type: ignore[index]


def test_commands_sent_without_waiting_are_acked_and_run_in_the_order_sent(
    client: Client, system_redis_url: str
) -> None:
    """One connection's commands are acked as the writer enqueues them, while the connection
    keeps reading: a client that does not wait shares the batches, and order is kept."""
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="10", ask="10", last="10")
    ids = [f"{sym}-p{i}" for i in range(300)]
    acks = send_without_waiting(client, sym, ids)
    wait_for(lambda: len(acks) == len(ids), 30, "every ack")
    # every command acked once (python-socketio runs each packet's callback on a thread of its
    # own, so the order in which `acks` fills is not the order the server sent them in)
    assert sorted(a["request_id"] for a in acks) == sorted(ids) and all(a["accepted"] for a in acks)
    results = results_in_order_sent(client, ids)
    assert all(r["success"] and r["result"]["order"]["status"] == "FILLED" for r in results)
    # run in the order sent: the engine numbers orders as it applies them (the order in which
    # results arrive here is python-socketio's: it hands each packet to a thread of its own)
    order_ids = [r["result"]["order"]["order_id"] for r in results]
    assert order_ids == sorted(order_ids) and len(set(order_ids)) == len(ids), order_ids
    expected = 300 - 2 * 100  # 200 buys, 100 sells
    wait_for(
        lambda: (p := position(system_redis_url, sym)) and Decimal(p["quantity"]) == expected,
        5,
        "the position",
    )


def test_submit_orders_is_bounded(client: Client) -> None:
    order = {"client_order_id": "x", "symbol": "S", "side": "BUY", "quantity": "1"}
    for orders, field in (([], "params.orders"), ([order] * 1001, "params.orders")):
        ack = client.command({"command": "submit_orders", "params": {"orders": orders}})
        assert ack["accepted"] is False and ack["error"]["field"] == field, ack


def test_limit_order_rests_then_cancels_once(client: Client) -> None:
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="10", ask="10.1", last="10.05")
    cid = uuid.uuid4().hex
    placed = ok(
        client,
        "submit_order",
        client_order_id=cid,
        symbol=sym,
        side="BUY",
        quantity="1",
        order_type="LIMIT",
        price="9",
    )
    assert placed["order"]["status"] == "RESTING"
    assert ok(client, "cancel_order", client_order_id=cid) == {"client_order_id": cid, "cancelled": True}
    result = fail(client, "cancel_order", "not_found", client_order_id=cid)
    assert result["error"]["field"] == "params.client_order_id"


def test_resubmitting_a_client_order_id_never_fills_twice(client: Client, system_redis_url: str) -> None:
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="50", ask="51", last="50.5")
    cid = uuid.uuid4().hex
    first = ok(client, "submit_order", client_order_id=cid, symbol=sym, side="BUY", quantity="1")
    again = ok(client, "submit_order", client_order_id=cid, symbol=sym, side="BUY", quantity="1")
    assert again["order"]["duplicate"] is True
    assert again["order"]["order_id"] == first["order"]["order_id"]
    mine = wait_for(lambda: position(system_redis_url, sym), 5, "the positions state")
    assert Decimal(mine["quantity"]) == Decimal(1)  # type: ignore[index]
    assert ok(client, "stop")["orders_filled"] >= 1


def test_kill_switch_halts_cancels_and_rejects_until_reset(client: Client) -> None:
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="10", ask="10.1", last="10.05")
    ok(
        client,
        "submit_order",
        client_order_id=uuid.uuid4().hex,
        symbol=sym,
        side="BUY",
        quantity="1",
        order_type="LIMIT",
        price="9",
    )
    halted = ok(client, "kill_switch", reason="test drill")
    assert halted["state"] == "HALTED" and halted["halt_reason"] == "test drill"
    assert halted["account"]["open_orders"] == 0
    result = fail(
        client,
        "submit_order",
        "engine_halted",
        client_order_id=uuid.uuid4().hex,
        symbol=sym,
        side="BUY",
        quantity="1",
    )
    assert result["error"]["field"] == "order" and "ENGINE_HALTED" in result["error"]["message"]
    fail(client, "start", "engine_halted")
    assert ok(client, "reset_kill_switch")["state"] == "STOPPED"
    assert ok(client, "start")["state"] == "RUNNING"


def test_a_stopped_engine_rejects_orders(client: Client) -> None:
    running(client)
    ok(client, "stop")
    fail(
        client,
        "submit_order",
        "engine_stopped",
        client_order_id=uuid.uuid4().hex,
        symbol=symbol(),
        side="SELL",
        quantity="1",
    )


def test_pause_and_resume(client: Client) -> None:
    running(client)
    paused = ok(client, "pause")
    assert paused["state"] == "STOPPED" and paused["paused"] is True
    resumed = ok(client, "resume")
    assert resumed["state"] == "RUNNING" and resumed["paused"] is False
    fail(client, "resume", "invalid_state")
    ok(client, "stop")
    fail(client, "pause", "invalid_state")


def test_a_control_command_publishes_its_state_before_its_result(
    client: Client, system_redis_url: str
) -> None:
    """Orders' results are published by their batch's commit; a control command's result
    waits until the state is published, so a client that got it reads the new state."""
    running(client)
    for command in ("pause", "resume", "stop", "start", "stop", "start"):
        result = ok(client, command)
        engine = get_sync_state_manager(system_redis_url).get_state("engine", namespace="system")
        published = (engine["state"], engine["command_count"])
        assert published == (result["state"], result["command_count"]), command


def test_a_batch_delivered_twice_runs_its_commands_once(
    client: Client, system: dict[str, Any], system_redis_url: str
) -> None:
    """Commands that reach the engine worker again (a redelivered message, or one taken along
    into the batch that already holds them), sent by a plain Celery producer: they do not run
    again, their first results are resent; nothing fills twice."""
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="10", ask="10", last="10")
    before = ok(client, "stop")["orders_filled"]
    ok(client, "start")
    order = {"client_order_id": uuid.uuid4().hex, "symbol": sym, "side": "BUY", "quantity": "2"}
    commands = [("submit_order", order), ("pause", {})]  # a second pause would fail: invalid_state
    now_ms = time.time() * 1000
    envelopes = [
        {"request_id": uuid.uuid4().hex, "command": name, "params": params, "received_at_ms": now_ms}
        for name, params in commands
    ]
    producer = Celery(broker=system_redis_url)
    for _ in range(2):  # each command twice in the message, and the message twice
        producer.send_task(
            "workers.engine.run_batch", args=[envelopes + envelopes], queue="engine", routing_key="engine"
        )
    # the engine queue is first in, first out: this runs after both copies
    assert ok(client, "resume")["orders_filled"] == before + 1  # a second run would fill again
    journal = system_journal(system)  # the window, or the database once the history has them
    results: list[Any] = [
        wait_for(lambda e=e: (journal.get(e["request_id"]) or {}).get("result"), 30, "a result")
        for e in envelopes
    ]
    assert all(result["success"] is True for result in results), results  # not "invalid_state"
    assert results[0]["result"]["order"]["status"] == "FILLED"
    wait_for(
        lambda: (p := position(system_redis_url, sym)) and Decimal(p["quantity"]) == 2,
        5,
        "the published position",
    )


def test_risk_adjust_changes_limits_the_engine_enforces(client: Client, system_redis_url: str) -> None:
    running(client)
    try:
        changed = ok(client, "risk_adjust", max_notional="150", max_leverage="2")
        assert changed["changed"] == ["max_leverage", "max_notional"]
        assert Decimal(changed["risk_limits"]["max_notional"]) == 150
        published = get_sync_state_manager(system_redis_url).get_state("risk_limits", namespace="system")
        assert Decimal(published["max_notional"]) == 150
        sym = symbol()
        ok(client, "update_market", symbol=sym, bid="100", ask="100", last="100")
        result = fail(
            client,
            "submit_order",
            "order_rejected",
            client_order_id=uuid.uuid4().hex,
            symbol=sym,
            side="BUY",
            quantity="2",
        )
        assert "MAX_NOTIONAL" in result["error"]["message"]
        # the core's own cross-field rule: min above max is refused, nothing changes
        refused = fail(client, "risk_adjust", "invalid_params", min_notional="200")
        assert refused["error"]["field"].startswith("params.")
    finally:
        ok(client, "risk_adjust", max_notional="50000", **SHARED_RISK_LIMITS)


@pytest.mark.parametrize(
    ("command", "params", "field"),
    [
        ("risk_adjust", {}, "params"),
        ("risk_adjust", {"max_leverage": 0}, "params.max_leverage"),
        ("risk_adjust", {"max_open_orders": 1.5}, "params.max_open_orders"),
        ("risk_adjust", {"leverage": 2}, "params.leverage"),
        (
            "submit_order",
            {"client_order_id": "a", "symbol": "X", "side": "HOLD", "quantity": 1},
            "params.side",
        ),
        (
            "submit_order",
            {"client_order_id": "a", "symbol": "X", "side": "BUY", "quantity": -1},
            "params.quantity",
        ),
        (
            "submit_order",
            {"client_order_id": "a", "symbol": "X", "side": "BUY", "quantity": "NaN"},
            "params.quantity",
        ),
        (
            "submit_order",
            {"client_order_id": "a", "symbol": "X", "side": "BUY", "quantity": 1, "order_type": "LIMIT"},
            "params",
        ),
        ("update_market", {"symbol": "X", "bid": 2, "ask": 1, "last": 1}, "params"),
        ("kill_switch", {"reason": ""}, "params.reason"),
    ],
)
def test_engine_commands_validate_params_before_anything_is_queued(
    client: Client, command: str, params: dict[str, Any], field: str
) -> None:
    ack = client.command({"command": command, "params": params})
    assert ack["accepted"] is False
    assert ack["error"]["code"] == "invalid_params"
    assert ack["error"]["field"] == field


def test_engine_state_streams_to_subscribers(client: Client) -> None:
    reply = client.sio.call("subscribe_state", {"key": "engine", "namespace": "system"}, timeout=5)
    assert reply["subscribed"] is True
    current = client.states.get(timeout=5)
    assert current["namespace"] == "system" and current["key"] == "engine"
    running(client)
    ok(client, "stop")
    states = []
    while not states or states[-1]["value"]["state"] != "STOPPED":
        states.append(client.states.get(timeout=10))
    versions = [current["version"]] + [s["version"] for s in states]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_orders_survive_a_worker_crash_between_snapshots(
    system: dict[str, Any], client: Client, logs_dir: Any, system_redis_url: str
) -> None:
    running(client)  # control commands snapshot; what follows lives only in the command log
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="20", ask="20", last="20")
    for _ in range(3):
        ok(client, "submit_order", client_order_id=uuid.uuid4().hex, symbol=sym, side="SELL", quantity="1")
    wait_for(
        lambda: (p := position(system_redis_url, sym)) and Decimal(p["quantity"]) == -3,
        5,
        "the published position",
    )
    before = get_sync_state_manager(system_redis_url).get_state("engine", namespace="system")
    log = redis.Redis.from_url(system_redis_url)
    assert log.xlen(LOG_KEY) >= 4  # the market update and 3 orders are not in the snapshot
    log.close()
    stop_engine_worker(system, crash=True)
    start_engine_worker(system, logs_dir)
    after = ok(client, "stop")
    assert after["command_count"] == before["command_count"] + 1
    assert after["orders_filled"] == before["orders_filled"]
    assert after["account"] == {**before["account"], **{k: after["account"][k] for k in ("leverage",)}}
    mine = wait_for(lambda: position(system_redis_url, sym), 10, "the restored position")
    assert Decimal(mine["quantity"]) == Decimal(-3)  # type: ignore[index]


def test_a_backlog_is_drained_in_order_after_the_engine_worker_returns(
    system: dict[str, Any], client: Client, logs_dir: Any, system_redis_url: str
) -> None:
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="10", ask="10", last="10")
    stop_engine_worker(system, crash=False)  # warm shutdown: nothing consumes the engine queue now
    request_ids = []
    for i in range(60):
        request_id = f"{sym}-backlog-{i}"
        side = "BUY" if i % 3 else "SELL"
        params = {"client_order_id": request_id, "symbol": sym, "side": side, "quantity": "1"}
        ack = client.command({"command": "submit_order", "params": params, "request_id": request_id})
        assert ack["accepted"] is True
        request_ids.append(request_id)
    queued = redis.Redis.from_url(system_redis_url)
    try:
        assert queued.llen("engine") >= 1
        start_engine_worker(system, logs_dir)
        results = [client.result_for(rid) for rid in request_ids]  # in the order they were sent
        assert [r for r in results if not r["success"]] == []
        assert queued.llen("engine") == 0 and queued.llen(INFLIGHT_KEY) == 0
    finally:
        queued.close()
    buys, sells = sum(1 for i in range(60) if i % 3), sum(1 for i in range(60) if not i % 3)
    wait_for(  # fails the test unless the published position reaches buys - sells
        lambda: (p := position(system_redis_url, sym)) and Decimal(p["quantity"]) == buys - sells,
        10,
        "the published position",
    )
