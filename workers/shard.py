"""The engine shard: one trading engine and everything that keeps it durable and visible.

An `EngineShard` owns its `TradingEngine`, the command log and snapshots that rebuild it after
a restart (`EngineLog`), and the publisher of its state to the state bus (`StatePublisher`).
The engine queue's one consumer holds exactly one shard (workers/engine.py); nothing about the
engine lives in module globals.

Durability: every command that changes the engine is appended, with the time it was applied,
to the Redis stream ``hean:engine:log`` in the same MULTI/EXEC that records its result (its
JSON params, or for orders the core read into columns those columns in the core's binary form,
``columns``: cpp_ext/wire.hpp); a
snapshot (hash ``hean:engine:snapshot``: ``data``, ``log_id``, ``paused``) is taken after
control commands, every ``SNAPSHOT_EVERY`` logged commands or ``HEAN_SNAPSHOT_INTERVAL_S`` seconds,
and at shutdown, and trims the log (the periodic ones are written by their own thread,
`SnapshotWriter`, while the consumer goes on). A restarted shard restores the snapshot and replays the log
after it, so no applied order is forgotten; a command whose task was not acknowledged is
redelivered, and the command journal (hean/command_journal.py) makes sure it runs once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel

from hean import _core, fastjson, metrics
from hean.celery_wire import IDS_LUA_PATTERN, batch_envelopes, task_marker
from hean.command_journal import KEY_PREFIX, START_LUA, decode_started, journal_key
from hean.commands import CONTROL_COMMANDS
from hean.core.system.redis_state import StateError, StateOp, get_sync_state_manager
from hean.engine import BatchResult, EngineState, OrderBatch, TradingEngine
from hean.group_commit import GroupCommit
from hean.redis_client import (
    TransactionFence,
    execute_transaction,
    hot_connection,
    next_stream_id,
    sync_client,
    text,
)
from hean.snapshot_store import stored_snapshot_data
from hean.topology import (
    BATCH_TASKS,
    ENGINE_INFLIGHT_KEY,
    ENGINE_KEY,
    ENGINE_LOG_KEY,
    ENGINE_OWNER_KEY,
    ENGINE_QUEUE,
    ENGINE_SNAPSHOT_KEY,
    OPEN_ORDERS_KEY,
    OPEN_ORDERS_SHOWN,
    POSITIONS_KEY,
    RISK_LIMITS_KEY,
    SYSTEM_NAMESPACE,
)
from workers.execution import BatchHooks
from workers.shard_owner import Fence, fence_lua, run_fenced

log = logging.getLogger(__name__)

#: The engine snapshot (hash: data, log_id, paused) and the log of commands applied after it.
SNAPSHOT_KEY = ENGINE_SNAPSHOT_KEY
#: Where an engine worker sets aside a snapshot it cannot read, for inspection.
CORRUPT_SNAPSHOT_KEY = SNAPSHOT_KEY + ":corrupt"
#: The kill switch's reason while the engine runs without the snapshot it could not read.
SNAPSHOT_LOST_REASON = "snapshot unreadable, set aside: rebuilt from the log after it"
LOG_KEY = ENGINE_LOG_KEY
SNAPSHOT_EVERY = 5_000
SNAPSHOT_INTERVAL_S = 5.0
#: zlib's fastest level: levels 3 and 6 took 1.0-2.5x its CPU for 3-12% less (bench_engine.py)
SNAPSHOT_ZLIB_LEVEL = 1
#: Messages taken off the queue by `EngineShard.take`, until their batch has committed.
INFLIGHT_KEY = ENGINE_INFLIGHT_KEY
#: Batches waiting behind the one Celery delivered are taken along (up to this many
#: messages), so the shard's batches grow with its backlog.
DRAIN_MAX_MESSAGES = 200
#: Group commit (hean/group_commit.py): a batch that starts within LINGER_WINDOW_S of the
#: previous one's end first waits `Settings.engine_linger_ms`, so that the commands arriving
#: meanwhile are taken along and share its one commit, instead of each paying a whole batch's
#: fixed cost (a Celery delivery, two Redis round trips, a publish) alone.
LINGER_WINDOW_S = 0.010
#: Orders may change positions thousands of times a second: the publisher sends the state at
#: most every PUBLISH_INTERVAL_S; control commands publish at once.
PUBLISH_INTERVAL_S = 0.1


#: How each logged command changes the engine: (engine, JSON params, time applied) ->
#: (outcome, the shard's new paused flag or None to keep it). Replay after a restart calls the
#: same functions with the logged params and time.
Mutation = Callable[[TradingEngine, dict[str, Any], int], tuple[Any, bool | None]]
MUTATIONS: dict[str, Mutation] = {
    "start": lambda e, p, t: (e.start(), False),
    "stop": lambda e, p, t: (e.stop(), False),
    "pause": lambda e, p, t: (e.stop(), True),
    "resume": lambda e, p, t: (e.start(), False),
    "kill_switch": lambda e, p, t: (e.kill_switch(p["reason"]), False),
    "reset_kill_switch": lambda e, p, t: (e.reset_kill_switch(), None),
    "risk_adjust": lambda e, p, t: (e.set_risk_limits(p), None),
    "submit_order": lambda e, p, t: (e.submit_order(**p, now_ns=t), None),
    "submit_orders": lambda e, p, t: (e.submit_batch(p["orders"], now_ns=t), None),
    "cancel_order": lambda e, p, t: (e.cancel_order(p["client_order_id"]), None),
    "update_market": lambda e, p, t: (e.update_market(**p), None),
}


class EngineLog:
    """Snapshot + command log bookkeeping for one shard's engine.

    Entries get explicit, increasing stream ids so that they can be written in the same
    MULTI/EXEC as the commands' results (and so that the snapshot knows where it stands).
    """

    def __init__(self, interval_s: float = SNAPSHOT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.last_id = "0-0"
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.since_snapshot = 0
        self.snapshot_at = time.monotonic()
        self.control_seen = False
        self.control_seen_last = False
        self.writer = SnapshotWriter()

    def _next_id(self) -> str:
        last_ms, last_seq = _log_position(self.pending[-1][0] if self.pending else self.last_id)
        now_ms = time.time_ns() // 1_000_000
        return f"{now_ms}-0" if now_ms > last_ms else f"{last_ms}-{last_seq + 1}"

    def add(self, command: str, params: dict[str, Any], now_ns: int) -> None:
        # bytes: what redis-py sends, with no str between
        self._append({"cmd": command, "params": fastjson.dumpb(params), "now_ns": now_ns})
        self.control_seen |= command in CONTROL_COMMANDS

    def add_orders(self, columns: _core.OrderColumns, now_ns: int) -> None:
        """Log orders the core read into columns as `submit_orders`, in the core's binary form:
        written and read back without a Python object per order (orjson re-encoding the orders'
        params took as much of the worker's CPU as reading them)."""
        self._append({"cmd": "submit_orders", "columns": columns.to_bytes(), "now_ns": now_ns})

    def _append(self, entry: dict[str, Any]) -> None:
        self.pending.append((self._next_id(), entry))

    def write(self, pipe: Any) -> None:
        """Queue the pending entries on `pipe` (committed with the commands' results)."""
        for entry_id, entry in self.pending:
            pipe.xadd(LOG_KEY, entry, id=entry_id)

    def committed(self) -> bool:
        """The pending entries committed; True when a snapshot is due now."""
        if self.pending:
            self.last_id = self.pending[-1][0]
            self.since_snapshot += len(self.pending)
            self.pending.clear()
        due = self.since_snapshot >= SNAPSHOT_EVERY or time.monotonic() - self.snapshot_at >= self.interval_s
        snapshot = self.control_seen or bool(self.since_snapshot and due)
        self.control_seen_last, self.control_seen = self.control_seen, False
        return snapshot

    def write_snapshot(self, engine: TradingEngine, paused: bool, wait: bool = True) -> None:
        """Snapshot `engine` as of the last committed entry; written before returning, or with
        `wait=False` by the writer's thread (SnapshotWriter)."""
        snapshot = Snapshot(engine.snapshot(), self.last_id, paused)
        if wait:
            self.writer.write(snapshot)
        else:
            self.writer.write_soon(snapshot)
        self.since_snapshot, self.snapshot_at = 0, time.monotonic()


@dataclass(frozen=True)
class Snapshot:
    """The engine's state (`TradingEngine.snapshot`) after log entry `log_id`."""

    data: bytes
    log_id: str
    paused: bool


class SnapshotWriter:
    """Writes snapshots, each with the trim of the log entries it holds, in log order: an older
    snapshot never replaces a newer one, whichever thread wrote which.

    Stored compressed (zlib): a snapshot is mostly the idempotency window's client order ids
    and outcomes, 5.6-7.8 MB once it holds 100,000 of them, and each one written is also
    appended to Redis's AOF and fsynced before any later ack can be; compressed it is 0.3-2.6
    MB, for 10-56 ms of this thread's CPU (``benchmarks/bench_engine.py`` measures it).

    Under 25,000 orders/s the snapshot is about 5.6 MB. `write_soon` hands it to this writer's
    thread, so that the engine's consumer does not wait while it crosses to Redis and Redis
    stores it; a snapshot still waiting there when a newer one comes is dropped (the newer holds
    all of it, and the log keeps every entry until a snapshot that holds it is written).
    """

    def __init__(self, client: Callable[[], Any] = sync_client) -> None:
        self._client = client
        #: What a write runs under (workers.shard_owner.Fence, unchained: pooled connections)
        self.fence: TransactionFence | None = None
        self._write_lock = threading.Lock()
        self._written: tuple[int, int] = (-1, -1)
        self._pending: Snapshot | None = None
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def write(self, snapshot: Snapshot) -> bool:
        """Write `snapshot` now, unless a newer one is already written; True if written.
        Redis errors are raised."""
        position = _log_position(snapshot.log_id)
        with self._write_lock:
            if position < self._written:
                return False
            pipe = self._client().pipeline(transaction=True)
            pipe.hset(
                SNAPSHOT_KEY,
                mapping={
                    "data": zlib.compress(snapshot.data, SNAPSHOT_ZLIB_LEVEL),
                    "encoding": "zlib",
                    "log_id": snapshot.log_id,
                    "paused": int(snapshot.paused),
                },
            )
            pipe.xtrim(LOG_KEY, minid=next_stream_id(snapshot.log_id))  # what the snapshot holds
            if self.fence is None:
                pipe.execute()
            else:  # only while this process holds the shard: a replaced owner's would go back in time
                execute_transaction(pipe.connection_pool, pipe, self.fence)
            self._written = position
            return True

    def write_soon(self, snapshot: Snapshot) -> None:
        """Have the writer's thread write `snapshot` (replacing one it has not begun)."""
        with self._wake:
            self._pending = snapshot
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hean-snapshot-writer", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None:
                    self._wake.wait()
                snapshot, self._pending = self._pending, None
            try:
                self.write(snapshot)
            except Exception as exc:  # Redis away: the log keeps every entry; the next one is due soon
                log.error("event=snapshot_failed log_id=%s error=%s", snapshot.log_id, exc)


def _log_position(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


@dataclass
class _Dirty:
    engine: bool = False
    positions: bool = False
    risk: bool = False


class StatePublisher:
    """Sends what changed to the state bus: `mark` records a change (any thread), `flush`
    publishes everything marked before it began; a mark made while a flush runs is published
    by the next one, never lost. Flushes run one at a time, so they land in order."""

    def __init__(self, publish_engine: Callable[[bool], object], publish_risk: Callable[[], object]) -> None:
        self._publish_engine = publish_engine
        self._publish_risk = publish_risk
        self._marks_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._dirty = _Dirty()
        self._stop = threading.Event()
        self._marked = threading.Event()  # set by `mark`: the publisher sleeps until then

    def mark(self, positions: bool = False, risk: bool = False) -> None:
        with self._marks_lock:
            self._dirty.engine = True
            self._dirty.positions |= positions
            self._dirty.risk |= risk
        self._marked.set()

    @property
    def risk_pending(self) -> bool:
        return self._dirty.risk

    def flush(self) -> None:
        with self._flush_lock:
            with self._marks_lock:
                taken, self._dirty = self._dirty, _Dirty()
            try:
                if taken.engine:
                    self._publish_engine(taken.positions)
                if taken.risk:
                    self._publish_risk()
            except Exception:  # not published: keep it marked for the next flush
                self.mark(positions=taken.positions, risk=taken.risk)
                raise

    def run(self, interval: float = PUBLISH_INTERVAL_S) -> None:
        """Flush what is marked, at most every `interval` seconds, until `stop()`. While nothing
        is marked it sleeps (it woke ten times a second for nothing while the engine was idle)."""
        while not self._stop.is_set():
            self._marked.wait()
            self._marked.clear()  # before the flush: a mark made during it wakes the next one
            try:
                self.flush()
            except Exception:  # Redis away: flush re-marks it, tried again next period
                log.exception("event=state_publish_failed")
            self._stop.wait(interval)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="hean-state-publisher", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._marked.set()


# Move up to ARGV[1] batch messages from the consuming end of the queue (KEYS[1]) to the
# in-flight list (KEYS[2]) with LMOVE, which the AOF records as the command alone (an RPOP and
# an LPUSH wrote each message into it once more: 88 bytes per order at 25,000 orders/s); stop
# at the first message of another task, which keeps its turn.
# Then mark the delivered batch's commands (journal keys KEYS[4..]) and the commands of the
# messages taken (their request ids in the message's first field: hean.celery_wire.IDS_FIELD)
# started, at ARGV[3]. Returns the whole in-flight list (newest first: what an earlier run left
# plus what it took); per delivered command, its earlier result or false; the request ids of
# the commands taken; and per command taken, its earlier result or false. (A message without
# the ids, from a version before them, is taken all the same: its commands are started later.)
# Fenced first: when ARGV[4] (the last) names this worker and another holds the shard (KEYS[3]),
# it takes and marks nothing (workers.shard_owner.fence_lua); a take inside a commit passes ''
# (its WATCH fences it).
_TAKE = (
    (
        fence_lua(3)
        + START_LUA
        + """
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local message = redis.call('LINDEX', KEYS[1], -1)
  if not message or not string.find(message, ARGV[2], 1, true) then break end
  redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  local ids = string.match(message, IDS_PATTERN)
  if ids then
    for id in string.gmatch(ids, '[^ ]+') do taken[#taken + 1] = id end
  end
end
local keys = {}
for i, id in ipairs(taken) do keys[i] = KEY_PREFIX .. id end
return {redis.call('LRANGE', KEYS[2], 0, -1), start_commands(4, ARGV[3]), taken, start_keys(keys, ARGV[3])}
"""
    )
    .replace("IDS_PATTERN", json.dumps(IDS_LUA_PATTERN))
    .replace("KEY_PREFIX", json.dumps(KEY_PREFIX))
)
_BATCH_MARKER = task_marker(BATCH_TASKS[ENGINE_QUEUE])


class EngineShard:
    """One trading engine with its command log, snapshots and state publisher.

    The engine is built on first use: restored from the snapshot and the log after it, or new.
    `apply` is the one path that changes it.
    """

    def __init__(self, linger_s: float = 0.0, snapshot_interval_s: float = SNAPSHOT_INTERVAL_S) -> None:
        self._lock = threading.Lock()
        self._engine: TradingEngine | None = None
        self.group_commit = GroupCommit(linger_s, LINGER_WINDOW_S)
        self.paused = False
        #: kombu's message of the batch being run, if any: acknowledged within its commit
        self.delivery: Any = None
        self.log = EngineLog(snapshot_interval_s)
        self.publisher = StatePublisher(self.publish_engine, self.publish_risk_limits)
        self.hooks = BatchHooks(
            after=self._commit_writes,
            committed=self._committed,
            published=self._after_commit,
            state_first=self._state_first,
        )
        #: Set while batches run back to back (workers.engine._run_batch): each commit then takes
        #: the batches waiting on the queue along, in the same MULTI (`ahead`).
        self.take_ahead = False
        #: What the last commit took along: the envelopes (oldest first) and, per request id
        #: taken, what the journal said (as `take` returns them); None if it took nothing along.
        self.ahead: tuple[list[dict[str, Any]], dict[str, dict[str, Any] | str | None]] | None = None
        self._ahead_at: int | None = None  # the take's place among the commit's replies
        #: Set while a batch's commands run one at a time, after it raised or its worker died
        #: (workers.engine._run_alone): their commits leave the in-flight list and the delivered
        #: message to the last one.
        self.keep_in_flight = False
        #: The lease's fences (workers.engine.hold_the_shard): for the takes outside a commit, and
        #: (unchained: pooled connections) for the engine's state on the state bus
        self.fence: Fence | None = None
        self.state_fence: Fence | None = None

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> TradingEngine:
        with self._lock:
            if self._engine is None:
                engine = TradingEngine()
                self._recover(engine)
                self._engine = engine
            return self._engine

    def forget(self) -> None:
        """Drop the in-memory engine (a batch did not commit): the next use rebuilds it from
        what did commit."""
        with self._lock:
            self._engine = None
            self.log.pending.clear()
            self.ahead = self._ahead_at = None  # what a failed commit took is in flight: taken again

    def _recover(self, engine: TradingEngine) -> None:
        client = sync_client()
        try:
            self.log.last_id, paused, replayed = restore_engine(engine, client)
        except ValueError as exc:  # kept for inspection; rebuilt as every later restart rebuilds it
            earlier = set_aside_unreadable_snapshot(client)
            log.error(
                "event=snapshot_corrupt error=%s action=halted kept=%s earlier_kept=%s",
                exc,
                CORRUPT_SNAPSHOT_KEY,
                earlier,
            )
            self.log.last_id, paused, replayed = restore_engine(engine, client)
        if paused is not None:
            self.paused = paused
        log.info(
            "event=engine_recovered log_id=%s replayed=%d state=%s", self.log.last_id, replayed, engine.state
        )

    # -- the one path that changes the engine ---------------------------------------------------

    def apply(self, command_name: str, params: BaseModel | None = None) -> Any:
        """Change the engine and log the change (written with the batch's results)."""
        data = params.model_dump(mode="json", exclude_unset=True) if params is not None else {}
        now_ns = time.time_ns()
        outcome, paused = MUTATIONS[command_name](self.engine, data, now_ns)
        metrics.engine_outcome(outcome)
        if paused is not None:
            self.paused = paused
        self.log.add(command_name, data, now_ns)
        self.publisher.mark(
            positions=command_name not in CONTROL_COMMANDS or command_name == "kill_switch",
            risk=command_name == "risk_adjust",
        )
        return outcome

    def apply_order_batch(
        self, orders: list[dict[str, Any]] | None, batch: OrderBatch | _core.OrderColumns
    ) -> BatchResult:
        """Apply orders (given as JSON params, and as `batch`: the same orders in columns; the
        params are needed only when `batch` is not the core's columns) as one core batch,
        logged as one `submit_orders` entry (which replays them the same way).
        Raises ValueError, having applied nothing, if the core refuses the batch."""
        now_ns = time.time_ns()
        outcome = self.engine.submit_batch(batch, now_ns=now_ns)
        metrics.engine_outcome(outcome)
        if isinstance(batch, _core.OrderColumns):
            self.log.add_orders(batch, now_ns)
        else:
            assert orders is not None, "an OrderBatch is logged as its params"
            self.log.add("submit_orders", {"orders": orders}, now_ns)
        self.publisher.mark(positions=True)
        return outcome

    def status(self) -> dict[str, Any]:
        return dict(self.engine.status().to_dict(), paused=self.paused, updated_at=time.time())

    def snapshot(self, wait: bool = True) -> None:
        self.log.write_snapshot(self.engine, self.paused, wait)

    # -- publishing -----------------------------------------------------------------------------

    def publish_engine(self, changed_positions: bool = True) -> dict[str, Any]:
        """Publish the engine's state (status, positions); returns the status."""
        status = self.status()
        ops = [StateOp.set(ENGINE_KEY, status, SYSTEM_NAMESPACE)]
        if changed_positions:
            ops.append(
                StateOp.set(POSITIONS_KEY, [p.to_dict() for p in self.engine.positions()], SYSTEM_NAMESPACE)
            )
            ops.append(StateOp.set(OPEN_ORDERS_KEY, self.open_orders(), SYSTEM_NAMESPACE))
        try:
            get_sync_state_manager().batch_update(ops, self.state_fence)
        except StateError as exc:  # the command ran; only its broadcast failed
            log.error("event=state_publish_failed error=%s", exc)
        return status

    def open_orders(self) -> dict[str, Any]:
        """The resting orders as published on the state bus (the first OPEN_ORDERS_SHOWN)."""
        orders = self.engine.open_orders()
        return {"orders": [o.to_dict() for o in orders[:OPEN_ORDERS_SHOWN]], "total": len(orders)}

    def publish_risk_limits(self) -> dict[str, Any]:
        limits = self.engine.risk_limits().to_dict()
        try:
            manager = get_sync_state_manager()
            manager.set_state(RISK_LIMITS_KEY, limits, namespace=SYSTEM_NAMESPACE, fence=self.state_fence)
        except StateError as exc:
            log.error("event=state_publish_failed key=%s error=%s", RISK_LIMITS_KEY, exc)
        return limits

    # -- taking part in a batch (workers.execution) ---------------------------------------------

    def _state_first(self) -> bool:
        """A batch with control commands (or new risk limits) publishes the state before its
        results: a client told that `start` ran must then read RUNNING."""
        return self.log.control_seen or self.publisher.risk_pending

    def _commit_writes(self, pipe: Any) -> None:
        """Writes that commit with a batch's results: the log, the in-flight list (the batches
        taken along are done exactly when their results are) and the delivered message's
        acknowledgement (workers/transport.py: QoS.ack_within)."""
        self.log.write(pipe)
        self._ahead_at = None
        if self.keep_in_flight:
            return
        pipe.delete(INFLIGHT_KEY)
        if self.delivery is not None:  # the delivered message is done exactly when its batch is
            ack_within = getattr(getattr(self.delivery.channel, "qos", None), "ack_within", None)
            if ack_within is not None:
                ack_within(pipe, self.delivery.delivery_tag)
        if self.take_ahead:  # after the DEL: the in-flight list then holds exactly what it takes
            keys = (ENGINE_QUEUE, INFLIGHT_KEY, ENGINE_OWNER_KEY)
            args = (DRAIN_MAX_MESSAGES, _BATCH_MARKER, time.time(), "")  # the commit's WATCH fences it
            pipe.execute_command("EVAL", _TAKE, len(keys), *keys, *args)
            self._ahead_at = len(pipe.command_stack) - 1

    def _committed(self, replies: list[Any]) -> None:
        at, self._ahead_at = self._ahead_at, None
        if at is None:
            return
        newest_first, _, taken, taken_results = replies[at]
        if newest_first:
            self.ahead = (self._in_flight(sync_client(), newest_first), _started(taken, taken_results))

    def pop_ahead(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any] | str | None]] | None:
        """What the last commit took along (see `take_ahead`), once; None if nothing."""
        ahead, self.ahead = self.ahead, None
        return ahead

    def _after_commit(self) -> None:
        if self.log.committed():
            # after a control command at once (an operator may read it next); while orders
            # flow, written beside the consumer, which takes the next batch meanwhile
            self.snapshot(wait=self.log.control_seen_last)
        if self.log.control_seen_last or self.publisher.risk_pending:
            self.publisher.flush()

    def take(
        self, delivered: list[dict[str, Any]], drain: int = DRAIN_MAX_MESSAGES
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any] | str | None]]:
        """One round trip: take up to `drain` batches waiting on the queue along, read what is
        in flight (a crash or a failed commit may have left some), and mark the delivered
        commands and those taken along started. Returns the in-flight envelopes (oldest first)
        and, per request id started, its earlier result, None, or a marker of
        hean.command_journal.

        Fenced by the lease (`fence`, set once this process holds the shard): a worker that was
        replaced takes nothing, however late its take reaches Redis, and raises ShardLost. The
        holder's next commit empties the in-flight list, so a take landing between its take and
        its commit would lose what it moved there."""
        client = sync_client()
        ids = [rid for envelope in delivered if isinstance(rid := envelope.get("request_id"), str)]
        keys = [ENGINE_QUEUE, INFLIGHT_KEY, ENGINE_OWNER_KEY, *(journal_key(rid) for rid in ids)]
        reply = run_fenced(self.fence, hot_connection(), _TAKE, keys, [drain, _BATCH_MARKER, time.time()])
        newest_first, results, taken, taken_results = reply
        return self._in_flight(client, newest_first), _started(ids, results) | _started(taken, taken_results)

    @staticmethod
    def _in_flight(client: Any, newest_first: list[bytes]) -> list[dict[str, Any]]:
        """The envelopes of the in-flight list's messages (newest first), oldest first."""
        envelopes: list[dict[str, Any]] = []
        for raw in reversed(newest_first):  # oldest first
            try:
                envelopes += batch_envelopes(raw, cut_orders=True)
            except MemoryError:
                raise
            except Exception as exc:  # not ours (or nested past a parser's depth): keep it for people
                client.lpush(INFLIGHT_KEY + ":unreadable", raw)
                log.error("event=unreadable_batch_message error=%s kept=%s:unreadable", exc, INFLIGHT_KEY)
        return envelopes


def _started(ids: list[str] | list[bytes], reply: list[Any]) -> dict[str, dict[str, Any] | str | None]:
    """Per request id, what the take's start said of it (hean.command_journal.decode_started)."""
    return dict(zip((text(rid) for rid in ids), decode_started(reply), strict=True))


def set_aside_unreadable_snapshot(client: Any) -> str | None:
    """Move the snapshot to CORRUPT_SNAPSHOT_KEY; one set aside before it (after a reset, a later
    snapshot could not be read either) moves on to CORRUPT_SNAPSHOT_KEY:<ms now> instead of being
    overwritten. Returns that key, if there was one."""
    earlier = None
    if client.exists(CORRUPT_SNAPSHOT_KEY):
        earlier = f"{CORRUPT_SNAPSHOT_KEY}:{time.time_ns() // 1_000_000}"
        client.rename(CORRUPT_SNAPSHOT_KEY, earlier)
    client.rename(SNAPSHOT_KEY, CORRUPT_SNAPSHOT_KEY)
    return earlier


def restore_engine(engine: TradingEngine, client: Any) -> tuple[str, bool | None, int]:
    """Rebuild `engine` from what committed on `client`'s Redis: the snapshot, then the log
    after it (reads only). Returns the last log id applied, the shard's paused flag (None if
    nothing said) and how many entries were replayed; ValueError if the snapshot is corrupt.
    With no snapshot because the last one was set aside unread (CORRUPT_SNAPSHOT_KEY), the
    engine ends halted (SNAPSHOT_LOST_REASON). A restarted engine worker starts from exactly
    this (so can a reconciliation)."""
    # One read of the snapshot and the whole log (MULTI): a snapshot that the writer's thread
    # writes meanwhile, with the trim of the entries it holds, lands before or after it, never
    # between (read apart, the log read after such a write lacked the entries between the two
    # snapshots, and the engine rebuilt without them). HEAN's clients do not decode replies.
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(SNAPSHOT_KEY)
        pipe.exists(CORRUPT_SNAPSHOT_KEY)
        pipe.xrange(LOG_KEY, min="-", max="+")
        stored, corrupt, log_entries = pipe.execute()
    stored = cast(dict[bytes, bytes], stored)
    last_id, paused = "0-0", None
    if stored.get(b"data"):
        engine.restore(stored_snapshot_data(stored))
        last_id = text(stored[b"log_id"])
        paused = stored.get(b"paused") == b"1"
    # No snapshot, and the last one could not be read: what it held (positions, resting orders,
    # the client order ids seen) is missing, so the engine starts halted until an operator resets
    # it (that control command writes a snapshot: later restarts restore it as usual)
    lost = not stored.get(b"data") and bool(corrupt)
    # the trim is approximate (whole stream nodes): entries the snapshot holds may remain
    after = _log_position(last_id)
    entries = [
        (entry_id, fields)
        for entry_id, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], log_entries)
        if _log_position(text(entry_id)) > after
    ]
    for entry_id, fields in entries:
        try:
            _, changed = replay_entry(engine, fields)
        except ValueError as exc:  # it failed the same way the first time; the log keeps order
            log.warning("event=replay_refused command=%s error=%s", fields[b"cmd"].decode(), exc)
        else:
            paused = changed if changed is not None else paused
        last_id = text(entry_id)
    if lost and engine.state != EngineState.HALTED:
        engine.kill_switch(SNAPSHOT_LOST_REASON)
    return last_id, paused, len(entries)


def replay_entry(engine: TradingEngine, fields: dict[bytes, bytes]) -> tuple[Any, bool | None]:
    """Apply one log entry (its stream fields, as Redis returns them) to `engine` again, at the
    time it was first applied: its outcome and the shard's new paused flag (see MUTATIONS)."""
    now_ns = int(fields[b"now_ns"])
    if b"columns" in fields:  # orders logged in the core's binary form (EngineLog.add_orders)
        return engine.submit_batch(_core.OrderColumns.from_bytes(fields[b"columns"]), now_ns=now_ns), None
    return MUTATIONS[fields[b"cmd"].decode()](engine, json.loads(fields[b"params"]), now_ns)
