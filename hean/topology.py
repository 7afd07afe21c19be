"""The names every HEAN process shares: queues, the tasks that consume them, the pulse period,
and the state-bus keys the system publishes. celeryconfig.py, the web and the workers import
them from here, so each has one home."""

from __future__ import annotations

from typing import Final

# -- queues -----------------------------------------------------------------------------------
ENGINE_QUEUE: Final = "engine"  # exactly one consumer per shard: commands and orders apply in order
PULSE_QUEUE: Final = "pulse"  # the 100 ms health heartbeat
LLM_QUEUE: Final = "llm"  # slow LLM error analysis, kept away from everything else
DEFAULT_QUEUE: Final = "default"
ALL_QUEUES: Final = (ENGINE_QUEUE, PULSE_QUEUE, LLM_QUEUE, DEFAULT_QUEUE)

#: The Celery task that runs a batch of commands, per queue that takes commands.
BATCH_TASKS: Final = {
    ENGINE_QUEUE: "workers.engine.run_batch",
    DEFAULT_QUEUE: "workers.default.run_batch",
}
#: The health probe's round trip through the engine queue to the trading engine.
ENGINE_PING_TASK: Final = "workers.engine.ping"
#: The pulse, sent by celery beat every PULSE_PERIOD_S to the pulse queue. Beat's scheduler
#: (workers/beat.py) sends every PULSE_SHOWN_EVERY-th pulse as this task, which sends task
#: events (so that Flower shows the pulse queue's tasks), and the others as QUIET_PULSE_TASK,
#: the same pulse without events (thirty a second would tell Flower nothing new).
PULSE_TASK: Final = "workers.pulse.pulse"
QUIET_PULSE_TASK: Final = "workers.pulse.quiet_pulse"
PULSE_PERIOD_S: Final = 0.1
#: Beat sends each pulse this long before its slot (the task's argument), and the pulse worker
#: begins it at the slot: a delivery late by less than this no longer moves the pulse
#: (workers/beat.py, workers/pulse.py; README, "The pulse on its slot").
PULSE_LEAD_S: Final = 0.01
#: One pulse in this many is shown to Flower: one every 10 s, so that pulses alone would take
#: about 28 hours to fill Flower's memory of 10,000 tasks (every pulse would in 17 minutes).
PULSE_SHOWN_EVERY: Final = 100
#: One error report analysed by the llm worker (workers/llm.py; hean.core.system.error_analyzer).
ANALYZE_TASK: Final = "workers.llm.analyze"

# -- system state on the state bus (namespace/key) --------------------------------------------
SYSTEM_NAMESPACE: Final = "system"
#: The trading engine's status and account (`system/engine`).
ENGINE_KEY: Final = "engine"
#: Its risk limits (`system/risk_limits`).
RISK_LIMITS_KEY: Final = "risk_limits"
#: Its open positions (`system/positions`).
POSITIONS_KEY: Final = "positions"
#: Its resting orders for dashboards (`system/open_orders`: {"orders": the first
#: OPEN_ORDERS_SHOWN, "total": n}).
OPEN_ORDERS_KEY: Final = "open_orders"
OPEN_ORDERS_SHOWN: Final = 200

# -- the engine shard's own Redis keys (workers/shard.py), read by /metrics ---------------------
#: The log of commands applied since the last snapshot (a stream).
ENGINE_LOG_KEY: Final = "hean:engine:log"
#: Messages the shard took off its queue whose batch has not committed yet (a list).
ENGINE_INFLIGHT_KEY: Final = "hean:engine:inflight"
#: The engine's latest snapshot (a hash: data, encoding, log_id, paused; hean/snapshot_store.py).
ENGINE_SNAPSHOT_KEY: Final = "hean:engine:snapshot"
#: The commands an engine worker runs while it finishes what a worker that died left (a group,
#: or one alone; workers.engine._run_alone), a line each: the request id and how many workers
#: died running it there before.
ENGINE_ALONE_KEY: Final = "hean:engine:alone"
#: Which process owns the engine shard (a string: host:pid:random, with a TTL it renews): the one
#: engine worker that consumes the engine queue; another waits (workers/shard_owner.py).
ENGINE_OWNER_KEY: Final = "hean:engine:owner"

# -- the history (hean/command_journal.py, hean/history.py) -----------------------------------
#: Every command, ack and result on its way to the database (a stream the history writer trims).
HISTORY_STREAM_KEY: Final = "hean:history"
#: While the history writer's writes fail: {"error", "since", "failures"} (JSON), refreshed at
#: every failed attempt, gone once a write succeeds or HISTORY_FAILURE_TTL_S after the last
#: attempt (a writer that stopped trying). The health pulse's db module reads it.
HISTORY_FAILURE_KEY: Final = "hean:history:failure"
HISTORY_FAILURE_TTL_S: Final = 30

# -- Redis's memory (hean/core/system/probes.py: MemoryCheck) -----------------------------------
#: Room the web keeps for a command that stops trading and meets a full Redis: a string of zero
#: bytes it deletes when such a command is refused "out of memory", and makes again once there
#: is room (a string, so that Redis frees it at once).
MEMORY_RESERVE_KEY: Final = "hean:memory-reserve"
