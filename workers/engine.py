"""Engine queue tasks: the one ordered consumer that owns this worker's trading engine.

Durability: every command that changes the engine is appended, with the time it was applied,
to the Redis stream ``hean:engine:log`` before its result is sent; a snapshot (hash
``hean:engine:snapshot``: ``data``, ``log_id``) is taken after control commands, every
``SNAPSHOT_EVERY`` logged commands or ``SNAPSHOT_INTERVAL_S`` seconds, and at shutdown, and
trims the log. A restarted worker restores the snapshot and replays the log after it, so no
applied order is forgotten; a command whose task was not acknowledged is redelivered, and the
command journal (hean/command_journal.py) makes sure it is applied once.

After each command the system state goes to the state bus (namespace ``system``: keys
``engine``, ``risk_limits``, ``positions``), which dashboards follow with `subscribe_state`.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

from celery.signals import worker_ready, worker_shutdown
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from redis.exceptions import RedisError

from celeryconfig import ENGINE_QUEUE
from hean.command_journal import RETENTION_S, START_LUA, decode_started, journal_key
from hean.core.system.redis_state import StateError, StateOp, get_sync_state_manager
from hean.engine import EngineState, OrderResult, RejectReason, TradingEngine
from hean.messages import CommandError
from hean.redis_client import run_script, sync_client
from workers.app import app
from workers.commands import BatchHooks, NoParams, command, execute_batch, set_batch_hooks

log = logging.getLogger(__name__)

#: The engine snapshot (hash: data, log_id) and the log of commands applied after it.
SNAPSHOT_KEY = "hean:engine:snapshot"
LOG_KEY = "hean:engine:log"
SNAPSHOT_EVERY = 5_000
SNAPSHOT_INTERVAL_S = 5.0
#: State bus namespace and keys of the system state the engine worker publishes.
SYSTEM_NAMESPACE = "system"
ENGINE_KEY, RISK_KEY, POSITIONS_KEY = "engine", "risk_limits", "positions"

_engine: TradingEngine | None = None
_paused = False
_engine_lock = threading.Lock()


class EngineLog:
    """Snapshot + command log bookkeeping for this worker's engine.

    Entries get explicit, increasing stream ids so that they can be written in the same
    MULTI/EXEC as the commands' results (and so that the snapshot knows where it stands).
    """

    def __init__(self) -> None:
        self.last_id = "0-0"
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.since_snapshot = 0
        self.snapshot_at = time.monotonic()
        self.control_seen = False
        self.control_seen_last = False

    def _next_id(self) -> str:
        last_ms, last_seq = (
            int(part) for part in (self.pending[-1][0] if self.pending else self.last_id).split("-")
        )
        now_ms = time.time_ns() // 1_000_000
        return f"{now_ms}-0" if now_ms > last_ms else f"{last_ms}-{last_seq + 1}"

    def add(self, command: str, params: dict[str, Any], now_ns: int) -> None:
        entry = {"cmd": command, "params": json.dumps(params, separators=(",", ":")), "now_ns": now_ns}
        self.pending.append((self._next_id(), entry))
        self.control_seen |= command in CONTROL

    def write(self, pipe: Any) -> None:
        """Queue the pending entries on `pipe` (committed with the commands' results)."""
        for entry_id, entry in self.pending:
            pipe.xadd(LOG_KEY, entry, id=entry_id)

    def committed(self) -> None:
        if self.pending:
            self.last_id = self.pending[-1][0]
            self.since_snapshot += len(self.pending)
            self.pending.clear()
        due = (
            self.since_snapshot >= SNAPSHOT_EVERY
            or time.monotonic() - self.snapshot_at >= SNAPSHOT_INTERVAL_S
        )
        if self.control_seen or (self.since_snapshot and due):
            self.snapshot()
        self.control_seen_last, self.control_seen = self.control_seen, False

    def snapshot(self) -> None:
        engine = get_engine()
        ms, seq = (int(part) for part in self.last_id.split("-"))
        pipe = sync_client().pipeline(transaction=True)
        pipe.hset(
            SNAPSHOT_KEY, mapping={"data": engine.snapshot(), "log_id": self.last_id, "paused": int(_paused)}
        )
        pipe.xtrim(LOG_KEY, minid=f"{ms}-{seq + 1}")  # drop what the snapshot now contains
        pipe.execute()
        self.since_snapshot, self.snapshot_at = 0, time.monotonic()


_log = EngineLog()


def _id_text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def get_engine() -> TradingEngine:
    """This worker process's engine: restored from snapshot + log, or new."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = TradingEngine()
            _recover(_engine)
        return _engine


def _recover(engine: TradingEngine) -> None:
    client = sync_client()
    try:
        stored = client.hgetall(SNAPSHOT_KEY)
        if stored.get(b"data"):
            engine.restore(stored[b"data"])
            _log.last_id = _id_text(stored[b"log_id"])
            _set_paused(stored.get(b"paused") == b"1")
        replayed = 0
        for entry_id, fields in client.xrange(LOG_KEY, min=f"({_log.last_id}", max="+"):
            _replay(engine, fields)
            _log.last_id = _id_text(entry_id)
            replayed += 1
    except ValueError as exc:  # a corrupt snapshot: keep it for inspection, start fresh
        client.rename(SNAPSHOT_KEY, SNAPSHOT_KEY + ":corrupt")
        log.error("event=snapshot_corrupt error=%s action=start_fresh kept=%s:corrupt", exc, SNAPSHOT_KEY)
        return
    log.info("event=engine_recovered log_id=%s replayed=%d state=%s", _log.last_id, replayed, engine.state)


def engine_status() -> dict[str, Any]:
    engine = get_engine()
    return dict(engine.status().to_dict(), paused=_paused, updated_at=time.time())


_dirty = {"engine": False, "positions": False, "risk": False}


def _mark_dirty(positions: bool = False, risk: bool = False) -> None:
    _dirty["engine"] = True
    _dirty["positions"] |= positions
    _dirty["risk"] |= risk


def publish(changed_positions: bool = True) -> dict[str, Any]:
    """Publish the engine's state (status, positions); returns the status."""
    engine = get_engine()
    status = engine_status()
    ops = [StateOp.set(ENGINE_KEY, status, SYSTEM_NAMESPACE)]
    if changed_positions:
        ops.append(StateOp.set(POSITIONS_KEY, [p.to_dict() for p in engine.positions()], SYSTEM_NAMESPACE))
    try:
        get_sync_state_manager().batch_update(ops)
    except StateError as exc:  # the command ran; only its broadcast failed
        log.error("event=state_publish_failed error=%s", exc)
    return status


def _publish_risk_limits() -> dict[str, Any]:
    limits = get_engine().risk_limits().to_dict()
    try:
        get_sync_state_manager().set_state(RISK_KEY, limits, namespace=SYSTEM_NAMESPACE)
    except StateError as exc:
        log.error("event=state_publish_failed key=%s error=%s", RISK_KEY, exc)
    return limits


# -- the one path that changes the engine -------------------------------------------------------


def _set_paused(value: bool) -> None:
    global _paused
    _paused = value


def _apply_pause(engine: TradingEngine, paused: bool) -> bool:
    changed = engine.stop() if paused else engine.start()
    _set_paused(paused)
    return changed


#: How each logged command changes the engine: (engine, JSON params, time applied) -> outcome.
#: Replay after a restart calls the same functions with the logged params and time.
MUTATIONS: dict[str, Callable[[TradingEngine, dict[str, Any], int], Any]] = {
    "start": lambda e, p, t: (_set_paused(False), e.start())[1],
    "stop": lambda e, p, t: (_set_paused(False), e.stop())[1],
    "pause": lambda e, p, t: _apply_pause(e, True),
    "resume": lambda e, p, t: _apply_pause(e, False),
    "kill_switch": lambda e, p, t: (_set_paused(False), e.kill_switch(p["reason"]))[1],
    "reset_kill_switch": lambda e, p, t: e.reset_kill_switch(),
    "risk_adjust": lambda e, p, t: e.set_risk_limits(p),
    "submit_order": lambda e, p, t: e.submit_order(**p, now_ns=t),
    "submit_orders": lambda e, p, t: e.submit_batch(p["orders"], now_ns=t),
    "cancel_order": lambda e, p, t: e.cancel_order(p["client_order_id"]),
    "update_market": lambda e, p, t: e.update_market(**p),
}
CONTROL = frozenset({"start", "stop", "pause", "resume", "kill_switch", "reset_kill_switch", "risk_adjust"})


def apply(command_name: str, params: BaseModel | None = None) -> Any:
    """Change the engine and log the change (written with the batch's results)."""
    data = params.model_dump(mode="json", exclude_unset=True) if params is not None else {}
    now_ns = time.time_ns()
    outcome = MUTATIONS[command_name](get_engine(), data, now_ns)
    _log.add(command_name, data, now_ns)
    _mark_dirty(positions=command_name not in CONTROL or command_name == "kill_switch")
    return outcome


def _replay(engine: TradingEngine, fields: dict[bytes, bytes]) -> None:
    name = fields[b"cmd"].decode()
    try:
        MUTATIONS[name](engine, json.loads(fields[b"params"]), int(fields[b"now_ns"]))
    except ValueError as exc:  # it failed the same way the first time; the log keeps order
        log.warning("event=replay_refused command=%s error=%s", name, exc)


# -- control ------------------------------------------------------------------------------------


def _control(changed: bool) -> dict[str, Any]:
    return {"changed": changed, **engine_status()}


@command("start", description="Start the trading engine (STOPPED -> RUNNING).")
def start(params: NoParams) -> dict[str, Any]:
    engine = get_engine()
    if engine.state is EngineState.HALTED:
        raise CommandError("engine_halted", f"engine is halted ({engine.status().halt_reason}); reset first")
    return _control(apply("start", params))


@command("stop", description="Stop taking orders (RUNNING -> STOPPED); resting orders stay.")
def stop(params: NoParams) -> dict[str, Any]:
    return _control(apply("stop", params))


@command("pause", description="Pause a running engine; `resume` continues it.")
def pause(params: NoParams) -> dict[str, Any]:
    engine = get_engine()
    if engine.state is not EngineState.RUNNING:
        raise CommandError("invalid_state", f"only a RUNNING engine can pause; it is {engine.state}")
    return _control(apply("pause", params))


@command("resume", description="Resume an engine that `pause` paused.")
def resume(params: NoParams) -> dict[str, Any]:
    engine = get_engine()
    if not _paused or engine.state is not EngineState.STOPPED:
        raise CommandError("invalid_state", f"nothing to resume: engine is {engine.state}, not paused")
    return _control(apply("resume", params))


class KillSwitchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "operator command"


@command("kill_switch", params=KillSwitchParams, description="Cancel every open order and halt.")
def kill_switch(params: KillSwitchParams) -> dict[str, Any]:
    # the reason is always logged, so a replay halts for the same reason
    changed = apply("kill_switch", KillSwitchParams(reason=params.reason))
    return {"changed": changed, **engine_status()}


@command("reset_kill_switch", description="Leave HALTED (-> STOPPED) after a kill switch.")
def reset_kill_switch(params: NoParams) -> dict[str, Any]:
    return _control(apply("reset_kill_switch", params))


Pct = Annotated[Decimal, Field(gt=0, le=100)]


class RiskAdjustParams(BaseModel):
    """Any subset of the engine's risk limits; percentages in percent (1 = 1%)."""

    model_config = ConfigDict(extra="forbid")

    min_notional: Annotated[Decimal, Field(ge=0, le=1_000_000)] | None = None
    max_notional: Annotated[Decimal, Field(gt=0, le=1_000_000_000)] | None = None
    max_open_orders: Annotated[int, Field(ge=1, le=100_000)] | None = None
    max_open_positions: Annotated[int, Field(ge=1, le=10_000)] | None = None
    max_leverage: Annotated[Decimal, Field(gt=0, le=100)] | None = None
    max_trade_risk_pct: Pct | None = None
    stop_distance_pct: Pct | None = None
    max_daily_drawdown_pct: Pct | None = None
    kill_switch_drawdown_pct: Pct | None = None
    max_orders_per_second: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    fee_rate: Annotated[Decimal, Field(ge=0, le=Decimal("0.1"))] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> RiskAdjustParams:
        if not self.model_fields_set:
            raise ValueError("name at least one risk limit to change")
        return self


@command("risk_adjust", params=RiskAdjustParams, description="Change risk limits by name.")
def risk_adjust(params: RiskAdjustParams) -> dict[str, Any]:
    try:
        apply("risk_adjust", params)
    except ValueError as exc:  # a combination the core refuses (e.g. min above max): nothing logged
        field = str(exc).split(":", 1)[0]
        raise CommandError("invalid_params", str(exc), field=f"params.{field}") from exc
    _mark_dirty(risk=True)
    return {"changed": sorted(params.model_fields_set), "risk_limits": get_engine().risk_limits().to_dict()}


# -- orders and market --------------------------------------------------------------------------

Text = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")]
Amount = Annotated[Decimal, Field(gt=0, le=Decimal("1e9"), allow_inf_nan=False)]


class OrderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_order_id: Text
    symbol: Text
    side: Literal["BUY", "SELL"]
    quantity: Amount
    order_type: Literal["MARKET", "LIMIT"] = "MARKET"
    price: Amount | None = None
    time_in_force: Literal["GTC", "IOC"] = "GTC"

    @model_validator(mode="after")
    def _price_matches_type(self) -> OrderParams:
        if self.order_type == "LIMIT" and self.price is None:
            raise ValueError("price is required for a LIMIT order")
        if self.order_type == "MARKET" and self.price is not None:
            raise ValueError("price must be omitted for a MARKET order")
        return self


_REJECT_CODES = {
    RejectReason.ENGINE_HALTED: "engine_halted",
    RejectReason.ENGINE_STOPPED: "engine_stopped",
    RejectReason.THROTTLED: "rate_limited",
}


def _order_outcome(result: OrderResult) -> dict[str, Any]:
    body = result.to_dict()
    if result.reject_reason is not None:
        code = _REJECT_CODES.get(result.reject_reason, "order_rejected")
        raise CommandError(code, f"order {result.client_order_id} rejected: {result.reject_reason}", "order")
    return body


@command("submit_order", params=OrderParams, description="Submit one order to the engine.")
def submit_order(params: OrderParams) -> dict[str, Any]:
    return {"order": _order_outcome(apply("submit_order", params))}


#: Most orders one `submit_orders` command may carry.
MAX_ORDERS_PER_COMMAND = 1000


class OrdersParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    orders: Annotated[list[OrderParams], Field(min_length=1, max_length=MAX_ORDERS_PER_COMMAND)]


@command(
    "submit_orders",
    params=OrdersParams,
    description=f"Submit up to {MAX_ORDERS_PER_COMMAND} orders at once (one batch in the core).",
)
def submit_orders(params: OrdersParams) -> dict[str, Any]:
    """Per-order outcomes come back in `results`, in input order; rejects are not errors here."""
    return apply("submit_orders", params).to_dict()  # type: ignore[no-any-return]


class CancelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_order_id: Text


@command("cancel_order", params=CancelParams, description="Cancel a resting order.")
def cancel_order(params: CancelParams) -> dict[str, Any]:
    outcome = apply("cancel_order", params)
    if not outcome.cancelled:
        raise CommandError(
            "not_found", f"no resting order {params.client_order_id!r}", field="params.client_order_id"
        )
    return outcome.to_dict()  # type: ignore[no-any-return]


class MarketParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: Text
    bid: Amount
    ask: Amount
    last: Amount

    @model_validator(mode="after")
    def _ordered(self) -> MarketParams:
        if self.bid > self.ask:
            raise ValueError("bid must not exceed ask")
        return self


@command("update_market", params=MarketParams, description="Feed the paper market a new top of book.")
def update_market(params: MarketParams) -> dict[str, Any]:
    return apply("update_market", params).to_dict()  # type: ignore[no-any-return]


# -- tasks --------------------------------------------------------------------------------------


#: Orders may change positions thousands of times a second: a publisher thread sends the
#: state at most every PUBLISH_INTERVAL_S; control commands publish at once.
PUBLISH_INTERVAL_S = 0.1
_publish_lock = threading.Lock()


def _publish_dirty() -> None:
    with _publish_lock:
        dirty = dict(_dirty)
        _dirty.update(engine=False, positions=False, risk=False)
        if dirty["engine"]:
            publish(changed_positions=dirty["positions"])
        if dirty["risk"]:
            _publish_risk_limits()


def _state_publisher() -> None:
    while True:
        time.sleep(PUBLISH_INTERVAL_S)
        try:
            _publish_dirty()
        except Exception:  # Redis away: try again next period
            log.exception("event=state_publish_failed")


def _state_first() -> bool:
    """A batch with control commands (or new risk limits) publishes the state before results:
    a client told that `start` ran must then read RUNNING."""
    return _log.control_seen or bool(_dirty["risk"])


def _after_commit() -> None:
    _log.committed()
    if _log.control_seen_last or _dirty["risk"]:
        _publish_dirty()


def _commit_writes(pipe: Any) -> None:
    """Engine writes that commit with a batch's results: its log, and the in-flight list (the
    batches it took along are done exactly when their results are)."""
    _log.write(pipe)
    pipe.delete(INFLIGHT_KEY)


set_batch_hooks(
    ENGINE_QUEUE, BatchHooks(after=_commit_writes, published=_after_commit, state_first=_state_first)
)


#: Batches waiting behind the one Celery delivered are taken along (up to this many
#: messages), so the engine worker's batches grow with its backlog.
DRAIN_MAX_MESSAGES = 200
#: Messages taken off the queue by the drain, until their batch has committed.
INFLIGHT_KEY = "hean:engine:inflight"
_BATCH_MARKER = '"task": "workers.engine.run_batch"'

# Move up to ARGV[1] batch messages from the consuming end of the queue (KEYS[1]) to the
# in-flight list (KEYS[2]); stop at the first message of another task, which keeps its turn.
# Then mark the delivered batch's commands (journal keys KEYS[3..]) started, at ARGV[3], kept
# ARGV[4] s. Returns the whole in-flight list (newest first: what an earlier run left plus
# what it took) and, per delivered command, its earlier result or false.
_TAKE = (
    START_LUA
    + """
for _ = 1, tonumber(ARGV[1]) do
  local message = redis.call('LINDEX', KEYS[1], -1)
  if not message or not string.find(message, ARGV[2], 1, true) then break end
  redis.call('RPOP', KEYS[1])
  redis.call('LPUSH', KEYS[2], message)
end
return {redis.call('LRANGE', KEYS[2], 0, -1), start_commands(3, ARGV[3], ARGV[4])}
"""
)


def _envelopes_of(raw: bytes) -> list[dict[str, Any]]:
    """The envelopes a queued `run_batch` message carries (kombu's Redis message format)."""
    message = json.loads(raw)
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return list(args[0])


def _take(
    delivered: list[dict[str, Any]], drain: int = DRAIN_MAX_MESSAGES
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any] | None]]:
    """One round trip: take up to `drain` batches waiting on the queue along, read what is in
    flight (a crash or a failed commit may have left some), and mark the delivered commands
    started. Returns the in-flight envelopes (oldest first) and, per delivered request id, its
    earlier result or None."""
    client = sync_client()
    ids = [rid for envelope in delivered if isinstance(rid := envelope.get("request_id"), str)]
    keys = [ENGINE_QUEUE, INFLIGHT_KEY, *(journal_key(rid) for rid in ids)]
    args = [drain, _BATCH_MARKER, time.time(), RETENTION_S]
    newest_first, results = run_script(client.connection_pool, _TAKE, keys, args)
    envelopes: list[dict[str, Any]] = []
    for raw in reversed(newest_first):  # oldest first
        try:
            envelopes += _envelopes_of(raw)
        except (ValueError, KeyError, IndexError, TypeError) as exc:  # not ours: keep it for people
            client.lpush(INFLIGHT_KEY + ":unreadable", raw)
            log.error("event=unreadable_batch_message error=%s kept=%s:unreadable", exc, INFLIGHT_KEY)
    return envelopes, dict(zip(ids, decode_started(results), strict=True))


@app.task(name="workers.engine.run_batch", bind=True, ignore_result=True, max_retries=None)
def run_batch(self: Any, envelopes: list[dict[str, Any]]) -> int:
    try:
        taken, started = _take(envelopes)
        # execute_batch marks the taken commands started; its commit empties the in-flight list
        return execute_batch(envelopes + taken, ENGINE_QUEUE, started)
    except RedisError as exc:
        # Results and log did not commit: forget the in-memory engine (it will be rebuilt from
        # what did commit) and run the batch again; the journal applies each command once.
        global _engine
        with _engine_lock:
            _engine = None
            _log.pending.clear()
        log.error("event=batch_not_committed size=%d error=%s action=retry", len(envelopes), exc)
        raise self.retry(exc=exc, countdown=min(5.0, 0.2 * 2 ** min(self.request.retries, 5))) from exc


@app.task(name="workers.engine.ping", ignore_result=True)
def ping(sent_at: float | None = None, reply_key: str | None = None) -> dict[str, Any]:
    """Round trip through the engine queue to this worker's C++ core (the health probe).

    With `reply_key`, the engine state is pushed onto that list (kept 5 s) for the prober.
    """
    engine = get_engine()
    answer = {"state": str(engine.state), "command_count": engine.command_count, "sent_at": sent_at}
    if reply_key is not None and reply_key.startswith("hean:pong:"):
        pipe = sync_client().pipeline(transaction=False)
        pipe.lpush(reply_key, answer["state"])
        pipe.expire(reply_key, 5)
        pipe.execute()
    return answer


@worker_shutdown.connect
def _snapshot_on_shutdown(**_: Any) -> None:
    if _engine is not None:
        _log.snapshot()
        log.info("event=engine_snapshot reason=shutdown log_id=%s", _log.last_id)


@worker_ready.connect
def _announce_engine(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if ENGINE_QUEUE in queues:
        leftover, _ = _take([], drain=0)
        if leftover:  # drained before a crash: finish them first (each runs at most once)
            execute_batch(leftover, ENGINE_QUEUE)  # its commit empties the in-flight list
            log.warning("event=inflight_recovered commands=%d", len(leftover))
        status = publish()
        _publish_risk_limits()
        threading.Thread(target=_state_publisher, name="hean-state-publisher", daemon=True).start()
        log.info("event=engine_ready state=%s", status["state"])
