"""How the engine worker takes batches off its queue besides the one Celery delivers: the take
script (in one step: move the waiting batch messages into the in-flight list, mark their
commands started, say which already ran) and, while batches keep coming, each commit taking the
next ones along, or the take after the linger when it found none (workers.engine._run_batch). On
a real Redis, and through the whole system."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Any

import redis
from test_engine_commands import ok, position, results_in_order_sent, running, send_without_waiting, symbol

from hean.celery_wire import batch_frame, escape_envelope, redelivered
from hean.command_journal import CommandJournal, decode_started, journal_key
from hean.messages import envelope_json
from hean.redis_client import run_script, text
from hean.topology import BATCH_TASKS, ENGINE_QUEUE
from support import Client, scrape, total, wait_for
from workers.app import app
from workers.shard import _BATCH_MARKER, _TAKE, INFLIGHT_KEY


def envelope(request_id: str) -> str:
    params = {"client_order_id": request_id, "symbol": "BTC/USDT", "side": "BUY", "quantity": "1"}
    return envelope_json(request_id, "submit_order", json.dumps(params), "sid-1", 1.5)


def test_the_take_marks_the_commands_it_takes_along_started(redis_client: redis.Redis) -> None:
    journal = CommandJournal(redis_client)
    queue, inflight = f"take-{uuid.uuid4().hex[:8]}", f"inflight-{uuid.uuid4().hex[:8]}"
    frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], queue, "batch-1", "submit_order")
    delivered = f"d-{uuid.uuid4().hex}"
    first = [f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"]
    second = [f"c-{uuid.uuid4().hex}"]
    journal.reserve_and_enqueue([(delivered, "submit_order", envelope(delivered))], queue + ":other", frame)
    for ids in (first, second):
        journal.reserve_and_enqueue([(rid, "submit_order", envelope(rid)) for rid in ids], queue, frame)
    # the second as a restart puts a message back (hean.celery_wire.redelivered: decoded, marked,
    # encoded again by the standard library, with its spacing): its ids are still read
    raw = redis_client.lindex(queue, 0)
    assert raw is not None
    redis_client.lset(queue, 0, redelivered(raw))
    assert redis_client.lindex(queue, 0) != raw
    # a batch without the ids (as Celery itself, or a version before them, pushes it): taken, not
    # started here; then a message of another task, which keeps its turn
    unmarked = f"e-{uuid.uuid4().hex}"
    redis_client.lpush(queue, frame.message([escape_envelope(envelope(unmarked))]))
    redis_client.lpush(queue, json.dumps({"headers": {"task": "workers.engine.ping"}, "body": "[]"}))
    # one of the commands taken already ran: its result comes back, and it is not started again
    redis_client.hset(journal_key(second[0]), "r", json.dumps({"request_id": second[0], "success": True}))

    keys = [queue, inflight, f"{queue}:owner", journal_key(delivered)]
    reply = run_script(redis_client.connection_pool, _TAKE, keys, [10, _BATCH_MARKER, 1234.5, ""])

    newest_first, delivered_said, taken, taken_said = reply
    assert len(newest_first) == 3 and redis_client.lrange(inflight, 0, -1) == newest_first
    assert redis_client.llen(queue) == 1  # the other task's message
    assert [text(rid) for rid in taken] == first + second
    assert decode_started(delivered_said) == [None]
    assert decode_started(taken_said) == [None, None, {"request_id": second[0], "success": True}]
    for rid in (delivered, *first):
        assert redis_client.hget(journal_key(rid), "s") == b"1234.5"
    assert redis_client.hget(journal_key(second[0]), "s") is None  # it ran: not started again
    assert not redis_client.exists(journal_key(unmarked))


def test_batches_that_queue_up_meanwhile_are_taken_along_by_each_commit(
    client: Client, system_redis_url: str
) -> None:
    """Orders sent without waiting queue up in many batch messages while the engine worker runs
    the first: each commit takes the waiting ones along (an EVAL inside the commit's MULTI, the
    only EVAL in the system), and every order runs once, in the order sent."""
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="10", ask="10", last="10")
    stats = redis.Redis.from_url(system_redis_url)
    evals_before = stats.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)
    ids = [f"{sym}-t{i}" for i in range(600)]
    acks = send_without_waiting(client, sym, ids)
    results = results_in_order_sent(client, ids)
    assert all(r["success"] and r["result"]["order"]["status"] == "FILLED" for r in results)
    order_ids = [r["result"]["order"]["order_id"] for r in results]
    assert order_ids == sorted(order_ids) and len(set(order_ids)) == len(ids)
    try:
        assert stats.info("commandstats").get("cmdstat_eval", {}).get("calls", 0) > evals_before
        assert stats.llen(ENGINE_QUEUE) == 0 and stats.llen(INFLIGHT_KEY) == 0
    finally:
        stats.close()
    wait_for(lambda: len(acks) == len(ids), 30, "every ack")
    wait_for(
        lambda: (p := position(system_redis_url, sym)) and Decimal(p["quantity"]) == 600 - 2 * 200,
        5,
        "the position",
    )


def test_orders_closer_than_the_linger_are_taken_after_it_not_delivered_one_by_one(
    client: Client, system: dict[str, Any]
) -> None:
    """Single orders 2 ms apart, closer than the engine's 4 ms linger, yet too far apart for a
    commit to find the next one waiting: the engine worker waits the linger and takes what came
    itself, instead of handing back to Celery's consumer for each batch
    (hean_engine_batches_total{source}). Every order runs once, in the order sent."""
    running(client)
    sym = symbol()
    ok(client, "update_market", symbol=sym, bid="10", ask="10", last="10")
    metrics_url = str(system["url"]) + "/metrics"
    before = scrape(metrics_url)
    ids = [f"{sym}-p{i}" for i in range(400)]
    for i, request_id in enumerate(ids):
        params = {
            "client_order_id": request_id,
            "symbol": sym,
            "side": "SELL" if i % 3 == 0 else "BUY",
            "quantity": "1",
        }
        client.sio.emit("command", {"command": "submit_order", "params": params, "request_id": request_id})
        time.sleep(0.002)
    results = results_in_order_sent(client, ids)
    assert all(r["success"] and r["result"]["order"]["status"] == "FILLED" for r in results)
    order_ids = [r["result"]["order"]["order_id"] for r in results]
    assert order_ids == sorted(order_ids) and len(set(order_ids)) == len(ids)

    def grew(source: str) -> float:
        return total(scrape(metrics_url), "hean_engine_batches_total", source=source) - total(
            before, "hean_engine_batches_total", source=source
        )

    wait_for(lambda: grew("after_linger") >= 20, 10, "batches taken after the linger")
    assert grew("delivered") < grew("after_linger") + grew("taken_along")
