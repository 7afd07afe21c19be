"""The one engine worker (workers/shard_owner.py): a lease on the engine shard in Redis. A second
engine worker on the same Redis waits for it instead of consuming beside the first (two engines
in memory would part); it takes over when the first stops cleanly, at once when the first's
process on this host is gone, and after the lease's TTL otherwise. Real Redis, real workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from redis.exceptions import WatchError
from test_engine_crash import command_ok, open_market

from hean.celery_wire import delivering_key
from hean.command_journal import CommandJournal, journal_key
from hean.core.system.redis_state import StateOp, SyncRedisStateManager
from hean.redis_client import OwnConnection, execute_transaction
from hean.topology import ENGINE_ALONE_KEY, ENGINE_INFLIGHT_KEY, ENGINE_OWNER_KEY, ENGINE_QUEUE
from support import Client, child_report, start_engine_worker, wait_for
from workers import shard_owner
from workers.shard_owner import OWNER_ALIVE_KEY, Fence, ShardLost, ShardOwner, gone, host_and_pid

HOST = socket.gethostname()


def _owner_pid(store: redis.Redis) -> int | None:
    """The pid of the engine shard's lease holder."""
    named = host_and_pid((store.get(ENGINE_OWNER_KEY) or b"").decode())
    return named[1] if named else None


def test_a_holder_is_gone_only_when_that_is_certain() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while child.poll() is None:
        time.sleep(0.01)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not reaped yet: a zombie
    try:
        assert gone(f"{HOST}:{child.pid}:abcd1234")  # its process is gone
        assert gone(f"{HOST}:{zombie.pid}:abcd1234")
        assert gone(f"{HOST}:{os.getpid()}:not-me", pid=os.getpid())  # this pid in an earlier life
        assert not gone(f"{HOST}:{os.getppid()}:abcd1234")  # alive
        assert not gone(f"elsewhere:{child.pid}:abcd1234")  # another host: only its TTL tells
        assert not gone("not a holder") and not gone(f"{HOST}:x:abcd")
    finally:
        zombie.wait()


def test_a_second_owner_waits_then_takes_the_lease_and_a_lost_lease_stops_its_holder(
    redis_client: redis.Redis,
) -> None:
    first = ShardOwner(lambda: redis_client)
    assert first.acquire(on_lost=lambda: None) is None and first.held
    # the lease's TTL is on a key of its own: the holder's key changes on a takeover or a release only
    assert redis_client.ttl(OWNER_ALIVE_KEY) > 0 and redis_client.ttl(ENGINE_OWNER_KEY) == -1
    second = ShardOwner(lambda: redis_client, me=f"elsewhere:1:{uuid.uuid4().hex[:8]}")
    took: list[str | None] = []
    waiting = threading.Thread(target=lambda: took.append(second.acquire(on_lost=lambda: None)))
    waiting.start()
    time.sleep(1.5)
    assert not took and redis_client.get(ENGINE_OWNER_KEY) == first.me.encode()  # it waits
    first.release()
    waiting.join(timeout=5)
    assert took == [None] and redis_client.get(ENGINE_OWNER_KEY) == second.me.encode()
    assert not first.held and second.held

    # a holder on this host whose process is gone: taken over at once
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = f"{HOST}:{child.pid}:{uuid.uuid4().hex[:8]}"
    second.release()
    assert not redis_client.exists(ENGINE_OWNER_KEY, OWNER_ALIVE_KEY)
    redis_client.set(ENGINE_OWNER_KEY, dead)
    redis_client.set(OWNER_ALIVE_KEY, dead, ex=shard_owner.OWNER_TTL_S)
    third = ShardOwner(lambda: redis_client)
    began = time.monotonic()
    assert third.acquire(on_lost=lambda: None) == dead
    assert time.monotonic() - began < 2 and redis_client.get(ENGINE_OWNER_KEY) == third.me.encode()

    # its lease taken by another meanwhile (it was frozen past the TTL): it is told, and stops renewing
    lost = threading.Event()
    third.release()
    fourth = ShardOwner(lambda: redis_client)
    fourth.acquire(on_lost=lost.set)
    redis_client.set(ENGINE_OWNER_KEY, f"elsewhere:2:{uuid.uuid4().hex[:8]}")
    assert lost.wait(5 * shard_owner.OWNER_RENEW_S)

    # a holder on another host that stopped renewing: taken over once its lease lapsed
    elsewhere = f"elsewhere:3:{uuid.uuid4().hex[:8]}"
    redis_client.set(ENGINE_OWNER_KEY, elsewhere)
    redis_client.set(OWNER_ALIVE_KEY, elsewhere, px=1500)
    fifth = ShardOwner(lambda: redis_client)
    lost.clear()
    began = time.monotonic()
    assert fifth.acquire(on_lost=lost.set) == elsewhere
    assert time.monotonic() - began >= 1.0 and redis_client.get(ENGINE_OWNER_KEY) == fifth.me.encode()
    # the renewal keeps the lease alive well past its TTL's start
    assert redis_client.ttl(OWNER_ALIVE_KEY) > shard_owner.OWNER_TTL_S - 3
    # released by another that had taken it over meanwhile (its engine ran batches this one did
    # not see): lost too, never taken again
    redis_client.delete(ENGINE_OWNER_KEY, OWNER_ALIVE_KEY)
    assert lost.wait(5 * shard_owner.OWNER_RENEW_S)
    assert not redis_client.exists(ENGINE_OWNER_KEY)
    fifth.release()
    # a lease as the version before kept it (a TTL on the holder's key): alive until it expires
    redis_client.set(ENGINE_OWNER_KEY, f"elsewhere:4:{uuid.uuid4().hex[:8]}", px=1500)
    sixth = ShardOwner(lambda: redis_client)
    began = time.monotonic()
    assert sixth.acquire(on_lost=lambda: None) is None  # it expired: nobody held it any more
    assert time.monotonic() - began >= 1.0 and redis_client.ttl(ENGINE_OWNER_KEY) == -1
    sixth.release()


def _fenced_set(client: redis.Redis, source: Any, fence: Fence, value: str) -> None:
    """SET hean:test:fenced to `value` in a transaction under `fence`, on a connection of `source`."""
    pipe = client.pipeline(transaction=True)
    pipe.set("hean:test:fenced", value)
    execute_transaction(source, pipe, fence)


def test_a_commit_under_the_fence_runs_only_while_its_process_holds_the_shard(
    redis_client: redis.Redis,
) -> None:
    """The engine's commits (chained: each ends with the WATCH for the next) and its snapshots
    (unchained, on pooled connections) land while this process holds the shard; once another
    took it over (this one frozen or cut off past the lease), Redis runs none of them, on the
    connection watched since, on a new one, and on a pooled one, and the owner is told."""
    lost: list[str] = []
    owner = ShardOwner(lambda: redis_client)
    owner.acquire(on_lost=lambda: lost.append("lost"))
    chained, conn = Fence(owner), OwnConnection(redis_client.connection_pool)
    unchained = Fence(owner, chained=False)

    def commit(fence: Fence, value: str, source: Any = conn) -> None:
        _fenced_set(redis_client, source, fence, value)

    for value in ("1", "2", "3"):
        commit(chained, value)
        assert redis_client.get("hean:test:fenced") == value.encode()
    commit(unchained, "4", redis_client.connection_pool)
    assert redis_client.get("hean:test:fenced") == b"4"
    # no WATCH stays on a pooled connection: another holder meanwhile fails nobody else's MULTI
    redis_client.set(ENGINE_OWNER_KEY, owner.me)
    assert redis_client.pipeline(transaction=True).set("hean:test:other", "1").execute() == [True]

    redis_client.set(ENGINE_OWNER_KEY, f"elsewhere:7:{uuid.uuid4().hex[:8]}")  # a takeover
    with pytest.raises(ShardLost):
        commit(chained, "late")  # on the connection watched since the last commit
    with pytest.raises(ShardLost):
        commit(Fence(owner), "late", OwnConnection(redis_client.connection_pool))  # a new one
    with pytest.raises(ShardLost):
        commit(unchained, "late", redis_client.connection_pool)
    redis_client.delete(ENGINE_OWNER_KEY)  # released by the one that took over
    with pytest.raises(ShardLost):
        commit(chained, "late")
    assert redis_client.get("hean:test:fenced") == b"4"
    assert lost[:4] == ["lost"] * 4
    owner.release()


def test_the_fence_sees_a_takeover_between_the_watch_and_the_commit(redis_client: redis.Redis) -> None:
    """The holder's key written after the chained WATCH stood and back to this process's id (no
    one else noticed a thing): Redis still runs none of the commit, which is refused with
    WatchError, and the next one, watched again, lands."""
    owner = ShardOwner(lambda: redis_client)
    owner.acquire(on_lost=lambda: None)
    fence, conn = Fence(owner), OwnConnection(redis_client.connection_pool)

    def commit(value: str) -> None:
        _fenced_set(redis_client, conn, fence, value)

    commit("1")
    touched = redis_client.pipeline(transaction=True)
    touched.set(ENGINE_OWNER_KEY, "elsewhere:8:x").set(ENGINE_OWNER_KEY, owner.me).execute()
    with pytest.raises(WatchError):
        commit("2")
    assert redis_client.get("hean:test:fenced") == b"1"
    commit("3")
    assert redis_client.get("hean:test:fenced") == b"3"
    owner.release()


def test_a_second_engine_worker_waits_and_takes_over_when_the_first_stops(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    """Started beside the running engine worker (by hand, a scaled compose service), a second
    one waits for the shard and consumes nothing; the first stops cleanly (its last snapshot,
    then the lease given back), and the second takes over at once, from that snapshot: an order
    sent again with the same client order id is a duplicate, a new one fills."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client = Client(url, token)
    try:
        sym = open_market(client, "OWNER")
        first = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        assert _owner_pid(store) == first.pid
        start_engine_worker(system, logs_dir)
        second = system["processes"][0]
        wait_for(lambda: "event=engine_shard_waiting" in second.log_text(), 60, "the second worker to wait")
        order = {"client_order_id": uuid.uuid4().hex, "symbol": sym, "side": "BUY", "quantity": "1"}
        for _ in range(3):  # run by the first, once
            assert command_ok(client, "submit_order", **order)["result"]["order"]["status"] == "FILLED"
        assert _owner_pid(store) == first.pid
        assert second.alive() and "event=engine_shard_owned" not in second.log_text()
        first.stop()
        system["processes"].remove(first)
        wait_for(
            lambda: "event=engine_shard_owned" in second.log_text(), 30, "the second worker to take over"
        )
        assert _owner_pid(store) == second.pid
        again = command_ok(client, "submit_order", **order)["result"]["order"]
        assert again["duplicate"] is True, again  # the first's last snapshot, restored
        fresh = {**order, "client_order_id": uuid.uuid4().hex}
        filled = command_ok(client, "submit_order", **fresh)["result"]["order"]
        assert filled["status"] == "FILLED" and filled["duplicate"] is False, filled
    finally:
        client.close()
        store.close()


def test_an_engine_worker_whose_lease_was_taken_stops_and_its_successor_runs_on(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    """Another holder in the lease (as after this worker was frozen past its TTL and replaced):
    the engine worker stops at once (exit code 3) instead of running one more batch; once the
    lease is free again, a new engine worker takes it and orders fill."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client = Client(url, token)
    try:
        sym = open_market(client, "LOST")
        worker = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        store.set(ENGINE_OWNER_KEY, f"elsewhere:1:{uuid.uuid4().hex[:8]}", ex=60)
        wait_for(lambda: not worker.alive(), 10, "the engine worker to stop")
        assert worker.process.wait(timeout=10) == 3
        assert "event=engine_shard_lost" in worker.log_text()
        worker.stop()  # its log closed
        system["processes"].remove(worker)
        store.delete(ENGINE_OWNER_KEY)  # the other holder gone, cleanly
        start_engine_worker(system, logs_dir)
        order = {"client_order_id": uuid.uuid4().hex, "symbol": sym, "side": "BUY", "quantity": "1"}
        assert command_ok(client, "submit_order", **order)["result"]["order"]["status"] == "FILLED"
        successor = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        assert _owner_pid(store) == successor.pid
    finally:
        client.close()
        store.close()


def test_a_message_a_replaced_engine_worker_popped_runs_on_the_holder(
    system: dict[str, Any], system_redis_url: str
) -> None:
    """A replaced engine worker that runs again (frozen past its lease while another took over)
    can pop messages into the engine queue's delivering list before it sees the takeover and
    stops: messages the holder was never delivered, acked commands among them. The holder puts
    them back and runs them within seconds, not only at its next start. Here the holder is
    frozen for a moment instead (its pop times out meanwhile), and the test pops as the replaced
    worker would."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client = Client(url, token)
    delivering = delivering_key(ENGINE_QUEUE)
    try:
        sym = open_market(client, "STRAY")
        worker = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        request_id = uuid.uuid4().hex
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            time.sleep(2.0)  # its blocked pop timed out in Redis (1 s): what is sent now stays queued
            order = {"client_order_id": uuid.uuid4().hex, "symbol": sym, "side": "BUY", "quantity": "1"}
            ack = client.command({"command": "submit_order", "params": order, "request_id": request_id})
            assert ack["accepted"], ack
            wait_for(lambda: bool(store.llen(ENGINE_QUEUE)), 5, "the order to be queued")
            popped = 0  # the replaced worker's pops, one message each, into the same list
            while store.lmove(ENGINE_QUEUE, delivering, "RIGHT", "LEFT") is not None:
                popped += 1
            assert popped >= 1 and store.llen(delivering) == popped
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        result = client.result_for(request_id)
        assert result["success"] and result["result"]["order"]["status"] == "FILLED", result
        wait_for(lambda: not store.llen(delivering), 10, "the delivering list to empty")
        assert "event=delivering_restored" in worker.log_text()
        assert worker.alive()
    finally:
        client.close()
        store.close()


def test_a_frozen_engine_worker_is_replaced_by_a_standby_and_every_acked_order_runs_once(
    system: dict[str, Any], system_redis_url: str, logs_dir: Any
) -> None:
    """Orders flowing, the engine worker frozen (SIGSTOP: a stalled VM, a debugger) past its
    lease beside a standby: the standby takes over, the frozen one exits with code 3 once it
    runs again, and every order acked before, during and after ran exactly once (filled, none
    a duplicate of itself)."""
    url, token = str(system["url"]), str(system["token"])
    client = Client(url, token)
    sent: list[str] = []
    stop = threading.Event()

    def send(sym: str) -> None:
        while not stop.is_set():
            request_id = uuid.uuid4().hex
            order = {"client_order_id": request_id, "symbol": sym, "side": "BUY", "quantity": "1"}
            ack = client.command({"command": "submit_order", "params": order, "request_id": request_id})
            assert ack["accepted"], ack
            sent.append(request_id)
            time.sleep(0.01)

    try:
        sym = open_market(client, "FROZEN")
        first = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        start_engine_worker(system, logs_dir)
        second = system["processes"][0]
        wait_for(lambda: "event=engine_shard_waiting" in second.log_text(), 60, "the standby to wait")
        sender = threading.Thread(target=send, args=(sym,), daemon=True)
        sender.start()
        time.sleep(1.0)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: "event=engine_shard_taken_over" in second.log_text(), 30, "the takeover")
            time.sleep(1.0)  # orders run on the standby meanwhile
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert first.process.wait(timeout=15) == 3
        first.stop()
        system["processes"].remove(first)
        time.sleep(1.0)
        stop.set()
        sender.join(timeout=15)
        assert not sender.is_alive() and len(sent) > 100
        for request_id in sent:
            result = client.result_for(request_id)
            assert result["success"], result
            order = result["result"]["order"]
            assert order["status"] == "FILLED" and order["duplicate"] is False, order
        assert "event=engine_shard_lost" in first.log_text()
    finally:
        stop.set()
        client.close()


def test_the_engine_workers_commit_is_fenced_by_its_lease(
    system: dict[str, Any], system_redis_url: str
) -> None:
    """The running engine worker's batch commit is fenced (workers.shard_owner.Fence): the
    holder's key written while a batch runs, even back to the worker's own id in the same
    transaction (so that its renewal sees nothing), makes Redis refuse that batch's commit; the
    worker tries again, watched afresh, and the command runs once."""
    url, token = str(system["url"]), str(system["token"])
    store = redis.Redis.from_url(system_redis_url)
    client = Client(url, token)
    try:
        command_ok(client, "reset_kill_switch")
        worker = next(p for p in system["processes"] if p.name.startswith("worker-engine"))
        holder = store.get(ENGINE_OWNER_KEY)
        assert holder and _owner_pid(store) == worker.pid
        nap_id = uuid.uuid4().hex
        assert client.command({"command": "engine_nap", "params": {"seconds": 2}, "request_id": nap_id})[
            "accepted"
        ]
        wait_for(lambda: CommandJournal(store).state(nap_id) == "started", 30, "the nap to start", 0.01)
        touched = store.pipeline(transaction=True)
        touched.set(ENGINE_OWNER_KEY, "elsewhere:9:x").set(ENGINE_OWNER_KEY, holder).execute()
        result = client.result_for(nap_id)
        assert result["success"] and result["result"] == {"slept": 2}, result
        log = worker.log_text()
        assert "event=batch_not_committed" in log and "WatchError" in log, log[-2000:]
        assert worker.alive() and store.get(ENGINE_OWNER_KEY) == holder
        assert command_ok(client, "engine_nap", seconds=0.1)["result"] == {"slept": 0.1}
    finally:
        client.close()
        store.close()


def test_the_fence_holds_on_a_durable_commits_one_connection_pool(redis_client: redis.Redis) -> None:
    """When acks wait for WAITAOF (`HEAN_ACK_FSYNC`, appendfsync everysec, replicas), the engine
    commits through `commit_client()`'s pool of one connection, and WAITAOF and the publish follow
    on it: the WATCH chained by each commit stands through them, and a takeover is still seen."""
    owner = ShardOwner(lambda: redis_client)
    owner.acquire(on_lost=lambda: None)
    kwargs = redis_client.connection_pool.connection_kwargs
    committer = redis.Redis(connection_pool=redis.ConnectionPool(max_connections=1, **kwargs))
    fence = Fence(owner)
    try:
        for value in ("1", "2"):
            _fenced_set(committer, committer.connection_pool, fence, value)
            committer.execute_command("WAITAOF", 0, 0, 100)  # as wait_durable, on the same connection
            committer.publish("hean:test:channel", value)
        assert redis_client.get("hean:test:fenced") == b"2"
        redis_client.set(ENGINE_OWNER_KEY, f"elsewhere:6:{uuid.uuid4().hex[:8]}")
        with pytest.raises(ShardLost):
            _fenced_set(committer, committer.connection_pool, fence, "late")
        assert redis_client.get("hean:test:fenced") == b"2"
    finally:
        committer.close()
        owner.release()


def test_the_engines_state_is_published_only_while_its_worker_holds_the_shard(
    redis_client: redis.Redis, sync_manager: SyncRedisStateManager
) -> None:
    """The engine worker publishes its state (positions, status, risk limits) under the lease's
    fence: a replaced worker, whose engine in memory may hold a batch Redis refused to commit,
    publishes nothing, however late; its state would stand until the new holder's next batch.
    No WATCH stays on the pooled connection; other writers' transactions are not refused."""
    lost: list[str] = []
    owner = ShardOwner(lambda: redis_client)
    owner.acquire(on_lost=lambda: lost.append("lost"))
    fence = Fence(owner, chained=False)
    try:
        ops = [StateOp.set("positions", [{"qty": "1"}], "test"), StateOp.set("status", "RUNNING", "test")]
        first = sync_manager.batch_update(ops, fence)
        assert [item.version for item in first] == [1, 1]
        assert sync_manager.set_state("risk", {"max": 1}, "test", fence=fence).version == 1
        assert sync_manager.get_state("positions", "test") == [{"qty": "1"}]
        redis_client.set(ENGINE_OWNER_KEY, owner.me)  # no WATCH stays on a pooled connection
        assert sync_manager.set_state("other", 1, "test").version == 1

        redis_client.set(ENGINE_OWNER_KEY, f"elsewhere:5:{uuid.uuid4().hex[:8]}")  # a takeover
        with pytest.raises(ShardLost):
            sync_manager.batch_update([StateOp.set("positions", [{"qty": "2"}], "test")], fence)
        with pytest.raises(ShardLost):
            sync_manager.set_state("risk", {"max": 2}, "test", fence=fence)
        assert sync_manager.get_state_versioned("positions", "test").version == 1
        assert sync_manager.get_state("positions", "test") == [{"qty": "1"}]
        assert sync_manager.get_state("risk", "test") == {"max": 1}
        assert lost == ["lost", "lost"]
        assert sync_manager.set_state("other", 2, "test").version == 2  # unfenced writes go on
    finally:
        owner.release()


_REPLACED_TAKE_SCRIPT = """
import json, sys

from hean.celery_wire import batch_frame, escape_envelope
from hean.command_journal import journal_key
from hean.redis_client import sync_client
from hean.topology import BATCH_TASKS, ENGINE_OWNER_KEY, ENGINE_QUEUE
from test_engine_take import envelope
from workers.app import app, count_deliveries_with, redeliveries_exhausted, redeliveries_key
from workers.engine import (
    _COUNT, _FORGET, _RECOUNT, INFLIGHT_KEY, LEFTOVER_TRIES_KEY, SHARD, _count_deaths_again,
    _count_delivery_fenced, _fenced, _name_alone, fenced_only,
)
from workers.execution import answer_dropped
from workers.shard_owner import Fence, ShardLost, ShardOwner

lost, seen = [], []  # what it saw, printed at the end


class Owner(ShardOwner):  # the lease as held, without the renewal thread (which races the take)
    def lost(self):
        lost.append(1)


client = sync_client()
owner = Owner(sync_client, me="here:1:" + sys.argv[1])
client.set(ENGINE_OWNER_KEY, owner.me)
SHARD.hooks.fence = SHARD.fence = Fence(owner)  # as workers.engine.hold_the_shard sets them
count_deliveries_with(_count_delivery_fenced)  # as hold_the_shard does
task, redelivered = app.tasks[BATCH_TASKS[ENGINE_QUEUE]], {"redelivered": True}
_name_alone(client, "held-1 0")  # while it holds the shard
# recovery's counts, while it holds the shard: counted, started over (TTL kept), forgotten
client.delete(LEFTOVER_TRIES_KEY)
counted = [_fenced(client, _COUNT, [LEFTOVER_TRIES_KEY], (3600,)) for _ in range(3)]
_fenced(client, _RECOUNT, [LEFTOVER_TRIES_KEY, "hean:test:no-such-count"])
recounted = [
    client.get(LEFTOVER_TRIES_KEY).decode(),
    client.ttl(LEFTOVER_TRIES_KEY) > 3000,
    client.exists("hean:test:no-such-count"),
]
client.set("hean:test:forget-me", 1)
_fenced(client, _FORGET, ["hean:test:forget-me"])
exhausted = redeliveries_exhausted(task, sys.argv[1], redelivered)  # counted: 1
forgotten = client.exists("hean:test:forget-me")
held = [counted, recounted, forgotten, exhausted, client.get(redeliveries_key(sys.argv[1])).decode()]
seen.append({"held": held})
_fenced(client, _COUNT, [LEFTOVER_TRIES_KEY], (3600,))  # 2, for the replaced worker to leave alone
frame = batch_frame(app, BATCH_TASKS[ENGINE_QUEUE], ENGINE_QUEUE, "batch-1", "submit_order")
for batch in sys.argv[2:]:
    rids = batch.split(",")
    for rid in rids:  # reserved, as the web does: a take marks them started
        client.hset(journal_key(rid), "c", "submit_order")
    client.lpush(ENGINE_QUEUE, frame.message([escape_envelope(envelope(rid)) for rid in rids], rids))
    if len(sys.argv) > 3 and batch == sys.argv[-1]:
        client.set(ENGINE_OWNER_KEY, "elsewhere:2:y")  # taken over while this worker was frozen
    try:
        taken, started = SHARD.take([])
        seen.append({"taken": sorted(started)})
    except ShardLost as exc:
        unstarted = [client.hget(journal_key(rid), "s") for rid in rids].count(None)
        seen.append({"lost": str(exc), "told": len(lost), "unstarted": unstarted})
# in recovery, a worker names the commands it runs alone next (for its successor), fenced too
try:
    _name_alone(client, rids[0] + " 0")
    seen.append({"alone": "named"})
except ShardLost:
    seen.append({"alone": "refused", "told": len(lost)})
# past its caps, a worker answers what it held `dropped` (a commit of its own, fenced too)
try:
    answer_dropped([json.loads(envelope(rid)) for rid in rids], ENGINE_QUEUE, 9, fenced_only())
    seen.append({"dropped": "answered"})
except ShardLost:
    seen.append({"dropped": "refused", "told": len(lost)})
# nor count the holder's deaths, start them over or forget the holder's names
for what, call in (
    ("count", lambda: _fenced(client, _COUNT, [LEFTOVER_TRIES_KEY], (3600,))),
    ("recount", lambda: _count_deaths_again(client)),
    ("redelivery", lambda: redeliveries_exhausted(task, sys.argv[1], redelivered)),
    ("forget", lambda: _fenced(client, _FORGET, [LEFTOVER_TRIES_KEY, "hean:engine:alone"])),
    # an in-flight list past its tries: answered `dropped`, and deleted in the same commit
    ("inflight", lambda: answer_dropped([json.loads(envelope(rids[0]))], ENGINE_QUEUE, 9,
                                        fenced_only(INFLIGHT_KEY, LEFTOVER_TRIES_KEY))),
):
    try:
        call()
        seen.append({what: "done"})
    except ShardLost:
        seen.append({what: "refused"})
print(json.dumps(seen))
"""


def test_a_replaced_engine_workers_take_moves_nothing(
    redis_client: redis.Redis, own_db_url: str, tmp_path: Any
) -> None:
    """The engine worker's take outside a commit (the first of a batch, the take after the
    linger, recovery's read) is fenced too: once another worker holds the shard, Redis takes
    nothing and starts nothing for a replaced one, however late its take arrives, and the worker
    is told. Unfenced, its take moved batches into the in-flight list just before the holder's
    next commit emptied that list: acked commands, never run. So are recovery's writes: the
    names of the commands run alone, the `dropped` answers (with the in-flight list they delete),
    the in-flight tries, a redelivered message's count and the restart of the death counts."""
    first, second = [f"t-{uuid.uuid4().hex}" for _ in range(2)], [f"u-{uuid.uuid4().hex}"]
    env = dict(os.environ, REDIS_URL=own_db_url, HEAN_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    batches = (",".join(first), ",".join(second))
    holder = uuid.uuid4().hex[:8]  # also the task id of the redelivered message it counts
    lines = child_report(_REPLACED_TAKE_SCRIPT, holder, *batches, env=env)
    assert lines[0] == {"held": [[1, 2, 3], ["1", True, 0], 0, False, "1"]}, lines
    lines = lines[1:]
    assert lines[0] == {"taken": sorted(first)}  # while it held the shard
    assert lines[1]["told"] == 1 and "held by another" in lines[1]["lost"], lines
    assert lines[2] == {"alone": "refused", "told": 2}, lines
    assert lines[3] == {"dropped": "refused", "told": 3}, lines
    assert lines[4:] == [
        {"count": "refused"},
        {"recount": "refused"},
        {"redelivery": "refused"},
        {"forget": "refused"},
        {"inflight": "refused"},
    ]
    assert redis_client.get("hean:engine:inflight-tries") == b"2"  # counted while held, left alone
    assert redis_client.get(f"hean:redeliveries:{holder}") == b"1"
    assert redis_client.get(ENGINE_ALONE_KEY) == b"held-1 0"  # named while held, kept
    assert redis_client.llen(ENGINE_QUEUE) == 1  # the second batch, still queued
    assert second[0].encode() in (redis_client.lindex(ENGINE_QUEUE, 0) or b"")
    assert redis_client.llen(ENGINE_INFLIGHT_KEY) == 1  # the first only
    assert lines[1]["unstarted"] == len(second)  # none of its commands marked started
    assert redis_client.hget(journal_key(second[0]), "r") is None  # nor answered `dropped`
    assert all(redis_client.hget(journal_key(rid), "s") for rid in first)


_LOST_AFTER_COMMIT_SCRIPT = """
import json, sys

from hean.command_journal import journal_key
from hean.config import get_settings
from hean.messages import envelope_json
from hean.redis_client import OwnConnection, sync_client
from hean.topology import DEFAULT_QUEUE, ENGINE_OWNER_KEY
from workers import execution
from workers.execution import BatchHooks, execute_batch
from workers.shard_owner import Fence, ShardLost, ShardOwner

lost = []


class Owner(ShardOwner):  # the lease as held, without the renewal thread
    def lost(self):
        lost.append(1)


client = sync_client()
owner = Owner(sync_client, me="here:1:" + sys.argv[1])
client.set(ENGINE_OWNER_KEY, owner.me)
fence = Fence(owner)
execution.hot_connection = lambda conn=OwnConnection(client.connection_pool): conn  # the engine's own
listener = client.pubsub()
listener.subscribe(get_settings().socketio_channel)
listener.get_message(timeout=5)  # the subscription's confirmation


def batch(rid, takeover, state_first):
    after = (lambda pipe: pipe.set(ENGINE_OWNER_KEY, "elsewhere:3:z")) if takeover else (lambda pipe: None)
    hooks = BatchHooks(fence=fence, after=after, state_first=lambda: state_first)
    data = json.loads(envelope_json(rid, "list_commands", "{}", "sid-1", 1.5))
    try:
        execute_batch([data], DEFAULT_QUEUE, hooks=hooks)
        outcome = "ran"
    except ShardLost as exc:
        outcome = "lost: " + str(exc)
    sent = []
    while (message := listener.get_message(timeout=1)) is not None:
        sent.append(rid in message["data"].decode(errors="replace"))
    return {"outcome": outcome, "told": len(lost), "sent": sent,
            "recorded": client.hget(journal_key(rid), "r") is not None}


seen = [batch("held-" + sys.argv[1], False, False)]  # held throughout; the next one is chained
# taken over inside the commit, as when Redis ran its EXEC and only then, in a turn of its own,
# another worker's takeover, before the tail's GET: results published after the commit (a batch
# with control commands, or acks that wait for WAITAOF) must still go out
seen.append(batch("late-" + sys.argv[1], True, True))
seen.append(batch("after-" + sys.argv[1], False, True))  # the next commit: refused, nothing runs
print(json.dumps(seen))
"""


def test_a_commit_that_ran_before_a_takeover_still_sends_its_results_then_stops(
    redis_client: redis.Redis, own_db_url: str, tmp_path: Any
) -> None:
    """A chained commit whose EXEC ran while this worker held the shard, whose tail then reads
    another holder (a takeover that landed between the two): the commit is durable and its
    results are the holder's, which no successor sends; they go out before the worker is told
    it lost the shard. Before, the worker stopped with them recorded and unsent. Its next commit
    runs nothing."""
    env = dict(os.environ, REDIS_URL=own_db_url, HEAN_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    held, late, after = child_report(_LOST_AFTER_COMMIT_SCRIPT, uuid.uuid4().hex[:8], env=env)
    assert held == {"outcome": "ran", "told": 0, "sent": [True], "recorded": True}, held
    assert late["recorded"] and late["sent"] == [True], late
    assert late["outcome"].startswith("lost: ") and "after a commit that ran" in late["outcome"], late
    assert late["told"] == 1, late
    assert after["outcome"].startswith("lost: ") and after["told"] == 2, after
    assert after["sent"] == [] and not after["recorded"], after
    assert redis_client.get(ENGINE_OWNER_KEY) == b"elsewhere:3:z"
