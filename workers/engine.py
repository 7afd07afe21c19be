"""Engine queue tasks: the one ordered consumer that owns this worker's trading engine.

Every command that changes the engine is followed by a snapshot to Redis (restored when the
worker restarts) and by the system state on the state bus (namespace ``system``: keys
``engine``, ``risk_limits``, ``positions``), which dashboards follow with `subscribe_state`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from decimal import Decimal
from typing import Annotated, Any, Literal

from celery.signals import worker_ready
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from celeryconfig import ENGINE_QUEUE
from hean.core.system.redis_state import StateError, StateOp, get_sync_state_manager
from hean.engine import EngineState, OrderResult, RejectReason, TradingEngine
from hean.messages import CommandError
from hean.redis_client import sync_client
from workers.app import app
from workers.commands import NoParams, command, execute

log = logging.getLogger(__name__)

#: Where the engine worker keeps the engine snapshot it restores on restart.
SNAPSHOT_KEY = "hean:engine:snapshot"
#: State bus namespace and keys of the system state the engine worker publishes.
SYSTEM_NAMESPACE = "system"
ENGINE_KEY, RISK_KEY, POSITIONS_KEY = "engine", "risk_limits", "positions"
#: Legacy plain key read by the health endpoint (the engine status as JSON).
ENGINE_STATUS_KEY = "hean:engine:status"

_engine: TradingEngine | None = None
_paused = False
_engine_lock = threading.Lock()


def get_engine() -> TradingEngine:
    """This worker process's engine: restored from the last snapshot, or new."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _restore_or_new()
        return _engine


def _restore_or_new() -> TradingEngine:
    engine = TradingEngine()
    try:
        snapshot = sync_client().get(SNAPSHOT_KEY)
    except Exception as exc:  # Redis down at start: run, and say so
        log.error("event=snapshot_unavailable error=%s", type(exc).__name__)
        return engine
    if snapshot:
        try:
            engine.restore(snapshot)
            log.info("event=engine_restored bytes=%d state=%s", len(snapshot), engine.state)
        except ValueError as exc:
            sync_client().set(SNAPSHOT_KEY + ":corrupt", snapshot)
            log.error("event=snapshot_corrupt error=%s action=start_fresh kept=%s:corrupt", exc, SNAPSHOT_KEY)
    return engine


def engine_status() -> dict[str, Any]:
    engine = get_engine()
    return dict(engine.status().to_dict(), paused=_paused, updated_at=time.time())


def publish(changed_positions: bool = True) -> dict[str, Any]:
    """Snapshot the engine and publish its state; returns the engine status."""
    engine = get_engine()
    status = engine_status()
    ops = [StateOp.set(ENGINE_KEY, status, SYSTEM_NAMESPACE)]
    if changed_positions:
        ops.append(StateOp.set(POSITIONS_KEY, [p.to_dict() for p in engine.positions()], SYSTEM_NAMESPACE))
    client = sync_client()
    pipe = client.pipeline(transaction=False)
    pipe.set(SNAPSHOT_KEY, engine.snapshot())
    pipe.set(ENGINE_STATUS_KEY, json.dumps(status, separators=(",", ":")))
    pipe.execute()
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


# -- control ------------------------------------------------------------------------------------


def _control(changed: bool) -> dict[str, Any]:
    return {"changed": changed, **publish(changed_positions=False)}


@command("start", description="Start the trading engine (STOPPED -> RUNNING).")
def start(_: NoParams) -> dict[str, Any]:
    global _paused
    engine = get_engine()
    if engine.state is EngineState.HALTED:
        raise CommandError("engine_halted", f"engine is halted ({engine.status().halt_reason}); reset first")
    _paused = False
    return _control(engine.start())


@command("stop", description="Stop taking orders (RUNNING -> STOPPED); resting orders stay.")
def stop(_: NoParams) -> dict[str, Any]:
    global _paused
    _paused = False
    return _control(get_engine().stop())


@command("pause", description="Pause a running engine; `resume` continues it.")
def pause(_: NoParams) -> dict[str, Any]:
    global _paused
    engine = get_engine()
    if engine.state is not EngineState.RUNNING:
        raise CommandError("invalid_state", f"only a RUNNING engine can pause; it is {engine.state}")
    _paused = True
    return _control(engine.stop())


@command("resume", description="Resume an engine that `pause` paused.")
def resume(_: NoParams) -> dict[str, Any]:
    global _paused
    engine = get_engine()
    if not _paused or engine.state is not EngineState.STOPPED:
        raise CommandError("invalid_state", f"nothing to resume: engine is {engine.state}, not paused")
    _paused = False
    return _control(engine.start())


class KillSwitchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "operator command"


@command("kill_switch", params=KillSwitchParams, description="Cancel every open order and halt.")
def kill_switch(params: KillSwitchParams) -> dict[str, Any]:
    global _paused
    _paused = False
    changed = get_engine().kill_switch(params.reason)
    return {"changed": changed, **publish()}


@command("reset_kill_switch", description="Leave HALTED (-> STOPPED) after a kill switch.")
def reset_kill_switch(_: NoParams) -> dict[str, Any]:
    return _control(get_engine().reset_kill_switch())


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
    changes = params.model_dump(exclude_unset=True)
    try:
        get_engine().set_risk_limits(changes)
    except ValueError as exc:  # a combination the core refuses (e.g. min above max)
        field = str(exc).split(":", 1)[0]
        raise CommandError("invalid_params", str(exc), field=f"params.{field}") from exc
    publish(changed_positions=False)
    return {"changed": sorted(changes), "risk_limits": _publish_risk_limits()}


# -- orders and market --------------------------------------------------------------------------

Text = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")]
Amount = Annotated[Decimal, Field(gt=0, le=Decimal("1e12"), allow_inf_nan=False)]


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
    engine = get_engine()
    try:
        result = engine.submit_order(**params.model_dump())
    finally:
        publish()
    return {"order": _order_outcome(result)}


class CancelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_order_id: Text


@command("cancel_order", params=CancelParams, description="Cancel a resting order.")
def cancel_order(params: CancelParams) -> dict[str, Any]:
    outcome = get_engine().cancel_order(params.client_order_id)
    publish(changed_positions=False)
    if not outcome.cancelled:
        raise CommandError(
            "not_found", f"no resting order {params.client_order_id!r}", field="params.client_order_id"
        )
    return outcome.to_dict()


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
    outcome = get_engine().update_market(params.symbol, params.bid, params.ask, params.last)
    publish()
    return outcome.to_dict()


# -- tasks --------------------------------------------------------------------------------------


@app.task(name="workers.engine.run_command")
def run_command(envelope: dict[str, Any]) -> dict[str, Any]:
    return execute(envelope, ENGINE_QUEUE)


@app.task(name="workers.engine.ping")
def ping(sent_at: float | None = None) -> dict[str, Any]:
    """Round trip through the engine queue to this worker's C++ core (the health probe)."""
    engine = get_engine()
    return {
        "state": str(engine.state),
        "command_count": engine.command_count,
        "sent_at": sent_at,
        "answered_at": time.time(),
    }


@worker_ready.connect
def _announce_engine(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if ENGINE_QUEUE in queues:
        status = publish()
        _publish_risk_limits()
        log.info("event=engine_ready state=%s", status["state"])
