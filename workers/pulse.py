"""Pulse queue tasks: the heartbeat celery beat sends every 100 ms.

Each pulse probes every module concurrently (hean.core.system.health_monitor: one thread per
probe, at most 80 ms of waiting per pulse), stores the result on the state bus (namespace
``health``: one key per module, and ``pulse``, the summary) and sends the summary to the
``operators`` room (not to everyone) as a ``health_pulse`` event, unless the web process's
heartbeat says it has no client at all. Every pulse worker (node) also reports itself each
period to ``health/nodes``: in the same write as the pulse it stored, or, when it stored none
for a period and a half (beat stopped, another node took the pulses), from its report thread.
The aggregate view marks a node silent for 3 periods DISCONNECTED, and a node silent for
NODE_RETENTION_S (10 minutes) is dropped. With several nodes, a pulse is stored only if no
newer one is (`store_pulse`).

What a pulse costs, idle, ten times a second (benchmarks/bench_idle.py): the engine worker's
ping is one pipelined round trip (LPUSH of a message pre-built by hean.celery_wire, then BLPOP
of the answer; Celery's `send_task` took about a millisecond of CPU); the pulse and the node
report are one script call, with no read first while the stored pulse is this node's last;
the probes that only read Redis share one thread; the pulses run in the consumer as they
arrive (workers.app.inline_strategy); and task events are sent, after it ran, for one pulse in
PULSE_SHOWN_EVERY only: beat (workers/beat.py) sends that one as PULSE_TASK and the others as
QUIET_PULSE_TASK, the same body without events.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery.signals import beat_init, worker_ready
from redis.exceptions import RedisError

from hean import metrics
from hean.celery_wire import task_message
from hean.core.system.health_monitor import (
    HealthMonitor,
    Probe,
    StoredPulse,
    Unreachable,
    report_node,
    store_pulse,
)
from hean.core.system.probes import db_probe, exchange_probe, redis_probes
from hean.core.system.redis_state import StateError, get_sync_state_manager
from hean.logs import FailureLog
from hean.messages import OPERATORS_ROOM
from hean.redis_client import sync_client, text
from hean.topology import (
    ENGINE_PING_TASK,
    ENGINE_QUEUE,
    PULSE_LEAD_S,
    PULSE_PERIOD_S,
    PULSE_QUEUE,
    PULSE_TASK,
    QUIET_PULSE_TASK,
)
from workers.app import app, inline_strategy

log = logging.getLogger(__name__)

#: How long the cpp_core probe waits for the engine worker's answer. A ping normally returns
#: in a few ms; one stuck behind queued engine commands shows DEGRADED/UNHEALTHY while it
#: waits (the monitor reports a pending check), and one unanswered for this long is dropped
#: (the task expires) and the module is DISCONNECTED: a dead engine worker shows DEGRADED
#: within one pulse and DISCONNECTED within about 300 ms.
PING_WAIT_S = 0.25


#: A ping whose answer has not come this long after it was sent is given up (its connection is
#: dropped): Redis answers an unanswered BLPOP itself after PING_WAIT_S, so only a Redis that
#: hangs gets here (the blocking pool's socket timeout).
PING_GIVE_UP_S = 5.0


def cpp_core_probe() -> Probe:
    """A ping task through the engine queue to the engine worker's C++ core and back, run by the
    pulse itself in two steps (`Probe.start`): the ping and the wait for its answer (LPUSH and
    BLPOP) go out in one send on a connection of their own, and the pulse reads the answer
    when it comes, waiting no longer than its budget; an answer still out is looked for by the
    next pulses. (A thread of its own cost a hand-off each pulse, ten times a second.)"""
    ping = task_message(app, ENGINE_PING_TASK, ENGINE_QUEUE)

    def start() -> Callable[[float], dict[str, Any] | None]:
        reply_key = f"hean:pong:{uuid.uuid4().hex}"
        sent = time.time()
        pool = sync_client().connection_pool
        connection = pool.get_connection()
        message = ping.render(str(uuid.uuid4()), sent + PING_WAIT_S, [sent, reply_key])
        replies: list[Any] = []
        give_up = time.monotonic() + PING_GIVE_UP_S

        def drop() -> None:
            connection.disconnect()  # a reply may still be owed on it: never reused
            pool.release(connection)

        def answer(timeout: float) -> dict[str, Any] | None:
            try:
                while len(replies) < 2:
                    if not connection.can_read(timeout=timeout):
                        if time.monotonic() > give_up:
                            raise Unreachable(f"no answer from Redis within {PING_GIVE_UP_S:.0f} s")
                        return None
                    replies.append(connection.read_response())
            except BaseException:
                drop()
                raise
            pool.release(connection)
            if replies[1] is None:
                raise Unreachable(f"engine worker did not answer a ping within {PING_WAIT_S * 1000:.0f} ms")
            return {"state": text(replies[1][1])}

        try:
            connection.send_packed_command(
                connection.pack_commands([("LPUSH", ping.queue, message), ("BLPOP", reply_key, PING_WAIT_S)])
            )
        except BaseException:
            drop()
            raise
        return answer

    def check() -> dict[str, Any]:
        found = start()(PING_WAIT_S + 1.0)
        if found is None:
            raise Unreachable(f"no answer from Redis within {PING_WAIT_S + 1.0:.2f} s")
        return found

    return Probe("cpp_core", check, timeout=PING_WAIT_S, start=start)


@functools.cache
def monitor() -> HealthMonitor:
    """This pulse worker's monitor (it keeps failure counts and reconnects across pulses)."""
    # the pulse runs the Redis reads itself (it writes the pulse to Redis right after: a Redis
    # that hangs holds the pulse up anyway) and the engine ping in two steps; with an unchanged
    # SQLite file and the paper exchange, no thread takes part in a pulse
    client = sync_client()
    redis_reads = redis_probes(client, inline=True)
    return HealthMonitor([cpp_core_probe(), *redis_reads, db_probe(client), exchange_probe()])


#: This process's pulse node name (once it consumes the pulse queue) and when it last reported
#: (time.monotonic), by a stored pulse or by the report thread.
_node: list[str] = []
_last_report = [0.0]
#: The pulse this process stored last (store_pulse then skips its read while it is still there).
_stored = StoredPulse()


def _report_node(node: str) -> None:
    """Report this node whenever it stored no pulse (with its report) for a period and a half,
    which also drops long-silent nodes from health/nodes."""
    manager = get_sync_state_manager()
    failures = FailureLog(log)
    while True:
        due = _last_report[0] + 1.5 * PULSE_PERIOD_S
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
            continue
        seen = monitor().get_health_status()["overall"]
        try:
            report_node(manager, node, seen)
            _last_report[0] = time.monotonic()
        except (StateError, RedisError, OSError) as exc:
            failures.failed("event=node_report_failed node=%s error=%s", node, exc, level=logging.WARNING)
            time.sleep(PULSE_PERIOD_S)
        else:
            failures.recovered("event=node_report_recovered node=%s", node)


@beat_init.connect
def _beat_sends_no_task_sent_events(sender: Any = None, **_: Any) -> None:
    """Beat sends pulses: a task-sent event for each, ten a second, tells nothing (its own
    scheduler sends pulses without Celery's publish path; this covers any other entry)."""
    sender.app.conf.task_send_sent_event = False


@worker_ready.connect
def _start_node_reports(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if PULSE_QUEUE in queues:
        node = str(getattr(sender, "hostname", "pulse"))
        _node.append(node)
        monitor()  # build the probes before the first pulse arrives
        threading.Thread(target=_report_node, args=(node,), name="hean-node-report", daemon=True).start()


_publish_lock = threading.Lock()


def _slot(slot: Any, expires: Any) -> tuple[float | None, float]:
    """The pulse's slot, and how long before it it was sent: its argument, PULSE_LEAD_S ahead
    (workers/beat.py); else (a pulse sent some other way, `expires` one period after its send,
    as `beat_schedule` asks) the send itself."""
    if isinstance(slot, int | float) and not isinstance(slot, bool) and math.isfinite(slot):
        return float(slot), PULSE_LEAD_S
    if isinstance(expires, datetime):
        return expires.timestamp() - PULSE_PERIOD_S, 0.0
    if isinstance(expires, str):
        return datetime.fromisoformat(expires).timestamp() - PULSE_PERIOD_S, 0.0
    return None, 0.0


def _wait_for_slot(slot: float | None, arrived: float) -> None:
    """Sleep until the pulse's slot, never longer than the lead beat sends it with (a worker
    whose clock runs behind beat's waits no more than that); a pulse that came late runs now."""
    if slot is not None and slot > arrived:
        time.sleep(min(slot - arrived, PULSE_LEAD_S))


def _nobody_listens(status: dict[str, Any]) -> bool:
    """True when this pulse read the web process's heartbeat and it has no client connected."""
    web = status["modules"].get("frontend_socket", {})
    return web.get("status") == "HEALTHY" and web.get("detail", {}).get("clients") == 0


def run_pulse(expires: Any, slot: Any = None) -> None:
    """One pulse, begun at its slot: probe every module, store the result, tell the operators."""
    arrived = time.time()
    slot, lead = _slot(slot, expires)
    _wait_for_slot(slot, arrived)
    started = time.time()
    status = monitor().check_all()
    if status is None:  # the previous pulse is still running: never pile up
        return
    status["at"] = started  # when the pulse began (its period is measured between these)
    status["took_ms"] = round((time.time() - started) * 1000.0, 2)
    status["period_s"] = PULSE_PERIOD_S
    # diagnostics for the period's jitter: the slot, how late the pulse began after it, and how
    # long the message took from beat's send (PULSE_LEAD_S before the slot) to this worker
    status["slot"] = slot
    status["late_ms"] = None if slot is None else round((started - slot) * 1000.0, 2)
    status["delivery_ms"] = None if slot is None else round((arrived - slot + lead) * 1000.0, 2)
    from workers.emit import emit

    node = _node[0] if _node else None
    # Pool threads publish one at a time, so emits leave in the order pulses were stored; a
    # pulse older than the stored one (this node's other thread, or another node) is dropped.
    with _publish_lock:
        try:
            if not store_pulse(get_sync_state_manager(), status, node=node, last=_stored):
                return
            if node is not None:
                _last_report[0] = time.monotonic()
            metrics.pulse_stored(status)
        except (StateError, RedisError, OSError) as exc:
            log.error("event=pulse_not_stored error=%s", exc)
            return
        if _nobody_listens(status):  # the web process would parse it only to drop it
            return
        try:
            emit("health_pulse", status, to=OPERATORS_ROOM)
        except (RedisError, OSError) as exc:
            log.error("event=pulse_not_emitted error=%s", exc)


def _pulse_inline(headers: dict[str, Any], args: list[Any]) -> None:
    run_pulse(headers.get("expires"), args[0] if args else None)


# Every pulse runs in the consumer as it arrives, without Celery's per-task machinery
# (workers/app.py: inline_strategy). One in PULSE_SHOWN_EVERY is sent as this task, with task
# events (Flower shows it), sent after it ran: through Celery's pool, with its events sent
# first, that pulse began about 0.9 ms late at the median (3.6 ms at p99), which put 2 gaps in
# every 100 where the period's jitter p99 falls (benchmarks/bench_pulse.py).
@app.task(
    name=PULSE_TASK,
    ignore_result=True,
    Strategy=staticmethod(inline_strategy(_pulse_inline, events_every_s=0.0)),
)
def pulse(slot: float | None = None) -> None:
    """One pulse, with task events (this body runs only when called directly)."""
    run_pulse(None, slot)


# The other pulses: no task events (ten pulses a second would be thirty, and as many for
# Flower to process, saying nothing the pulse itself does not).
@app.task(
    name=QUIET_PULSE_TASK,
    ignore_result=True,
    send_events=False,
    Strategy=staticmethod(inline_strategy(_pulse_inline)),
)
def quiet_pulse(slot: float | None = None) -> None:
    """One pulse without task events (this body runs only when called directly)."""
    run_pulse(None, slot)
