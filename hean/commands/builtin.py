"""The built-in commands' contracts: the trading engine's (run by the engine worker, which
binds their handlers) and `list_commands` (run here, on the default queue)."""

from __future__ import annotations

from typing import Any

from hean.commands.params import (
    MAX_ORDERS_PER_COMMAND,
    CancelParams,
    KillSwitchParams,
    MarketParams,
    OrderParams,
    OrdersParams,
    RiskAdjustParams,
)
from hean.commands.registry import NoParams, command, declare, describe_commands
from hean.topology import DEFAULT_QUEUE, ENGINE_QUEUE

#: Commands that change how the engine runs (not its orders); a batch holding one publishes
#: the engine state before its results.
CONTROL_COMMANDS = frozenset(
    {"start", "stop", "pause", "resume", "kill_switch", "reset_kill_switch", "risk_adjust"}
)

for _name, _params, _description in (
    ("start", NoParams, "Start the trading engine (STOPPED -> RUNNING)."),
    ("stop", NoParams, "Stop taking orders (RUNNING -> STOPPED); resting orders stay."),
    ("pause", NoParams, "Pause a running engine; `resume` continues it."),
    ("resume", NoParams, "Resume an engine that `pause` paused."),
    ("kill_switch", KillSwitchParams, "Cancel every open order and halt."),
    ("reset_kill_switch", NoParams, "Leave HALTED (-> STOPPED) after a kill switch."),
    ("risk_adjust", RiskAdjustParams, "Change risk limits by name."),
    ("submit_order", OrderParams, "Submit one order to the engine."),
    (
        "submit_orders",
        OrdersParams,
        f"Submit up to {MAX_ORDERS_PER_COMMAND} orders at once (one batch in the core).",
    ),
    ("cancel_order", CancelParams, "Cancel a resting order."),
    ("update_market", MarketParams, "Feed the paper market a new top of book."),
):
    declare(_name, params=_params, queue=ENGINE_QUEUE, description=_description)


@command("list_commands", queue=DEFAULT_QUEUE, description="Every registered command and its params schema.")
def list_commands(_: NoParams) -> dict[str, Any]:
    return {"commands": describe_commands()}
