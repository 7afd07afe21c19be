"""Engine queue tasks: the shard's one ordered consumer, and the handlers of the trading
engine's commands (their contracts live in hean.commands; the engine, its log and its state
publisher in the `EngineShard`, workers/shard.py)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from typing import Any, Final

from celery.signals import worker_init, worker_ready, worker_shutdown
from redis.exceptions import RedisError

from hean import _core, fastjson, metrics
from hean.celery_wire import OrderListJSON, batch_body_cut, reclaim_unacked, restore_delivering
from hean.command_journal import HistoryUnavailable
from hean.commands import (
    CommandError,
    NoParams,
    Outcome,
    RunRefused,
    implements,
    implements_many,
    reject_code,
)
from hean.commands.params import (
    MAX_ORDERS_PER_COMMAND,
    CancelParams,
    KillSwitchParams,
    MarketParams,
    OrderParams,
    OrdersParams,
    RiskAdjustParams,
)
from hean.config import get_settings
from hean.engine import BatchResult, EngineState, OrderBatch, OrderResult, orders_from_params
from hean.messages import ErrorInfo
from hean.process_wide import ProcessWide
from hean.redis_client import SendAhead, sync_client, text
from hean.topology import BATCH_TASKS, ENGINE_ALONE_KEY, ENGINE_OWNER_KEY, ENGINE_PING_TASK, ENGINE_QUEUE
from workers.app import app, count_deliveries_with, inline_strategy, redeliveries_key
from workers.execution import (
    DROPPED,
    BatchHooks,
    answer_dropped,
    answer_dropped_message,
    answer_failed_batch,
    answer_unrun,
    execute_batch,
    until_committed,
)
from workers.shard import INFLIGHT_KEY, EngineShard
from workers.shard_owner import Fence, ShardOwner, fence_lua, run_fenced
from workers.transport import has_typed_values

log = logging.getLogger(__name__)

#: This worker's shard. The engine queue has exactly one consumer per shard, and it is this
#: process: every task and handler below works on it.
SHARD: Final = EngineShard(
    linger_s=get_settings().engine_linger_ms / 1000.0, snapshot_interval_s=get_settings().snapshot_interval_s
)


def _control(changed: bool) -> dict[str, Any]:
    return {"changed": changed, **SHARD.status()}


@implements("start")
def start(params: NoParams) -> dict[str, Any]:
    engine = SHARD.engine
    if engine.state is EngineState.HALTED:
        raise CommandError("engine_halted", f"engine is halted ({engine.status().halt_reason}); reset first")
    return _control(SHARD.apply("start", params))


@implements("stop")
def stop(params: NoParams) -> dict[str, Any]:
    return _control(SHARD.apply("stop", params))


@implements("pause")
def pause(params: NoParams) -> dict[str, Any]:
    state = SHARD.engine.state
    if state is not EngineState.RUNNING:
        raise CommandError("invalid_state", f"only a RUNNING engine can pause; it is {state}")
    return _control(SHARD.apply("pause", params))


@implements("resume")
def resume(params: NoParams) -> dict[str, Any]:
    state = SHARD.engine.state
    if not SHARD.paused or state is not EngineState.STOPPED:
        raise CommandError("invalid_state", f"nothing to resume: engine is {state}, not paused")
    return _control(SHARD.apply("resume", params))


@implements("kill_switch")
def kill_switch(params: KillSwitchParams) -> dict[str, Any]:
    # the reason is always logged, so a replay halts for the same reason
    return _control(SHARD.apply("kill_switch", KillSwitchParams(reason=params.reason)))


@implements("reset_kill_switch")
def reset_kill_switch(params: NoParams) -> dict[str, Any]:
    return _control(SHARD.apply("reset_kill_switch", params))


@implements("risk_adjust")
def risk_adjust(params: RiskAdjustParams) -> dict[str, Any]:
    try:
        SHARD.apply("risk_adjust", params)
    except ValueError as exc:  # a combination the core refuses (e.g. min above max): nothing logged
        field = str(exc).split(":", 1)[0]
        raise CommandError("invalid_params", str(exc), field=f"params.{field}") from exc
    return {"changed": sorted(params.model_fields_set), "risk_limits": SHARD.engine.risk_limits().to_dict()}


def _order_outcome(result: OrderResult) -> dict[str, Any]:
    if result.reject_reason is not None:
        raise CommandError(
            reject_code(result.reject_reason),
            f"order {result.client_order_id} rejected: {result.reject_reason}",
            "order",
        )
    return result.to_dict()


@implements("submit_order")
def submit_order(params: OrderParams) -> dict[str, Any]:
    return {"order": _order_outcome(SHARD.apply("submit_order", params))}


@implements_many("submit_order")
def submit_order_run(orders: list[dict[str, Any]]) -> list[Outcome]:
    """Single orders in a row, as one core batch: one lock, one log entry, no Python object per
    order, each order's outcome exactly what `submit_order` gives it alone (its result written
    as JSON by the core: hean.fastjson.fragment)."""
    try:
        result = SHARD.apply_order_batch(orders, orders_from_params(orders))
    except (ValueError, KeyError, TypeError) as exc:  # nothing applied: one by one, with its errors
        raise RunRefused(str(exc)) from exc
    outcomes: list[Outcome] = []
    for i in range(result.count):
        reason = result.reject_reason(i)
        if reason is None:
            outcomes.append(({"order": fastjson.fragment(result.result_json(i))}, None))
            continue
        message = f"order {result.client_order_id(i)} rejected: {reason}"
        outcomes.append((None, {"code": reject_code(reason), "message": message, "field": "order"}))
    return outcomes


@implements("submit_orders")
def submit_orders(params: OrdersParams) -> dict[str, Any]:
    """Per-order outcomes come back in `results`, in input order; rejects are not errors here."""
    return SHARD.apply("submit_orders", params).to_dict()


@implements_many("submit_orders")
def submit_orders_run(commands: list[dict[str, Any]]) -> list[Outcome]:
    """`submit_orders` commands in a row: each one's orders straight into the core's columns
    (validated at the edge, not again: no pydantic model, no OrderRequest per order), and the
    per-order results written as JSON by the core (`wire_result`)."""
    batches: list[tuple[list[Any] | None, OrderBatch | _core.OrderColumns]] = []
    try:
        for params in commands:
            orders = params["orders"]
            if isinstance(orders, OrderListJSON):  # read from its text (batch_envelopes)
                columns = orders.columns()
                if columns is not None and 1 <= len(columns) <= MAX_ORDERS_PER_COMMAND:
                    batches.append((None, columns))
                    continue
                orders = orders.load()
            if not isinstance(orders, list) or not 1 <= len(orders) <= MAX_ORDERS_PER_COMMAND:
                raise ValueError("orders: 1 to 1,000 orders")
            batches.append((orders, orders_from_params(orders)))
    except (ValueError, KeyError, TypeError) as exc:  # nothing applied yet: one by one
        raise RunRefused(str(exc)) from exc
    outcomes: list[Outcome] = []
    for orders, batch in batches:
        try:
            outcomes.append((wire_result(SHARD.apply_order_batch(orders, batch)), None))
        except ValueError as exc:  # the core refused this command's orders (it applied none)
            field = str(exc).split(":", 1)[0]
            outcomes.append(
                (None, {"code": "invalid_params", "message": str(exc), "field": f"params.{field}"})
            )
    return outcomes


def wire_result(result: BatchResult) -> dict[str, Any]:
    """`result.to_dict()` as it goes on the wire: the per-order results are the JSON the core
    wrote (hean.fastjson.fragment), encoded into the journal and the result packet as they are."""
    return {**result.to_dict(include_results=False), "results": fastjson.fragment(result.results_json())}


@implements("cancel_order")
def cancel_order(params: CancelParams) -> dict[str, Any]:
    outcome = SHARD.apply("cancel_order", params)
    if not outcome.cancelled:
        raise CommandError(
            "not_found", f"no resting order {params.client_order_id!r}", field="params.client_order_id"
        )
    return outcome.to_dict()


@implements("update_market")
def update_market(params: MarketParams) -> dict[str, Any]:
    return SHARD.apply("update_market", params).to_dict()


# -- tasks --------------------------------------------------------------------------------------


#: What a batch waits out, holding its message: Redis away, restarting or full, or the database
#: unreadable when a command left the window.
BATCH_RETRIED_ON: Final = (RedisError, HistoryUnavailable)
#: How long the engine worker runs the batches that keep queuing up before it hands control back
#: to Celery's consumer (which answers `celery inspect`, heartbeats and shutdown in between).
BACK_TO_BACK_S: Final = 0.25


def _run_batch(envelopes: list[dict[str, Any]], message: Any = None) -> int:
    """Run a delivered batch (and the batches waiting behind it) until it commits; `message`,
    kombu's message that delivered it, is acknowledged within that commit.

    Then, for up to `BACK_TO_BACK_S`, each commit takes the batches that queued meanwhile along
    in the same MULTI (EngineShard.take_ahead), and they run next: while orders keep coming, a
    batch costs one round trip to Redis (the commit) instead of three (the pop, the take and the
    commit), each of which waits for its fsync. When a commit took nothing along and orders were
    arriving back to back (the chain began with the linger), it waits the linger once more and
    takes what queued meanwhile itself (`_take_after_linger`). What a take took is in the
    in-flight list, finished by a restarted worker if this one dies; messages of other tasks
    (the engine ping) stop the take and keep their turn."""

    def attempt(delivered: list[dict[str, Any]]) -> int:
        ahead = SHARD.pop_ahead()
        taken, started = SHARD.take(delivered) if ahead is None else ahead
        # execute_batch marks the commands not yet started; its commit empties the in-flight list
        return execute_batch(delivered + taken, ENGINE_QUEUE, started, SHARD.hooks)

    back_to_back = SHARD.group_commit.wait() > 0
    metrics.engine_batch("delivered")
    SHARD.delivery = message
    if message is not None and (message.delivery_info or {}).get("redelivered"):
        # a worker died holding it (or lost its connection): one command at a time (_run_alone)
        try:
            return _run_alone(envelopes)
        finally:
            SHARD.delivery, SHARD.take_ahead, SHARD.ahead = None, False, None
            SHARD.group_commit.done()
    until = time.monotonic() + BACK_TO_BACK_S
    delivered, ran = envelopes, 0
    # Redis away, restarting or full, or the database unreadable when a command left the
    # window: the batch waits here for it, holding its message (the engine can do nothing
    # meanwhile anyway, and the queue keeps its order). A failed try forgets the in-memory
    # engine, which is rebuilt from what did commit; the journal applies each command once.
    try:
        while True:
            SHARD.take_ahead = time.monotonic() < until
            ran += until_committed(
                functools.partial(attempt, delivered),
                SHARD.forget,
                ENGINE_QUEUE,
                retry_on=BATCH_RETRIED_ON,
            )
            SHARD.delivery, delivered = None, []  # acknowledged within the first commit
            if SHARD.ahead is not None:
                metrics.engine_batch("taken_along")
            elif not (back_to_back and _take_after_linger(until)):
                break
    except Exception as exc:  # a bug in the batch's path, or a MemoryError: undone, run again
        _run_alone(delivered, exc)
        raise  # logged, reported to the error analyzer and acknowledged (workers.app.inline_strategy)
    finally:
        SHARD.delivery, SHARD.take_ahead, SHARD.ahead = None, False, None
    SHARD.group_commit.done()
    return ran


#: The commands an engine worker runs while it finishes what a worker that died left
#: (`_run_alone`), one per line, each with how many workers died running it there before
#: ("<request id> <deaths>"), set before they run: a worker that dies there too names them to
#: the next.
ALONE_KEY: Final = ENGINE_ALONE_KEY
ALONE_TTL_S: Final = 3600
#: A command that this many workers died running after its batch's worker died is answered
#: `dropped` instead of run again. Not one: an operator's or the OOM killer's SIGKILL may fall on
#: any command once.
ALONE_DEATHS_DROPPED: Final = 2
#: What a dead worker held runs in groups of at most this many commands, each group in a commit
#: of its own; only a group that raised or that a worker died running has its commands run one at
#: a time. Per held single order (benchmarks/bench_recovery.py): one at a time 1.7 ms, in groups
#: of 16 0.2-0.4 ms, of 64 0.12-0.13 ms; a group costs about 1.8 ms whatever it holds. A poison
#: command's group then runs one command at a time, about 2 ms each.
RECOVERY_GROUP: Final = 64


def _named_alone(value: bytes | str | None) -> dict[str, int]:
    """ALONE_KEY's value: per request id, how many workers died running it in recovery before
    the one that named it (lines of "<request id> <deaths>"; anything else is ignored)."""
    named: dict[str, int] = {}
    for line in text(value or b"").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            named[parts[0]] = int(parts[1])
    return named


def _recovery_group(envelopes: list[dict[str, Any]], start: int, suspects: dict[str, int]) -> int:
    """How many commands from `start` on run together: up to RECOVERY_GROUP, stopping before a
    suspect (a command a worker died running in recovery), which runs alone."""
    end = start
    while end < len(envelopes) and end - start < RECOVERY_GROUP:
        request_id = envelopes[end].get("request_id")
        if isinstance(request_id, str) and request_id in suspects:
            break
        end += 1
    return end - start


def _run_alone(delivered: list[dict[str, Any]], exc: Exception | None = None) -> int:
    """Finish a batch that did not commit, in groups of at most RECOVERY_GROUP commands, each
    group in a commit of its own: the commands of the delivered message if it has not committed
    (`delivered`), then those taken along, which are in the in-flight list. The last commit
    empties the in-flight list and acknowledges the message, so a worker that dies meanwhile
    leaves both, and its successor runs what has no result, once. A group that raises is undone
    (the in-memory engine forgotten) and its commands run one at a time. Returns how many
    commands there were.

    - After an exception ended the batch before its commit (`exc`: a bug in the batch's path, a
      MemoryError in the core): the in-memory engine is forgotten first (the batch may have
      applied orders that never committed; the next use rebuilds it from what did). A command
      that raises again alone is answered `not run` (answer_failed_batch); the others run as
      they would have. Otherwise the batch's acked commands had no result for good, and a batch
      left in flight ran, and raised, again within every later batch.
    - After a worker died running the batch (`exc` None: a start that finds it in flight, or a
      redelivered message): each group's commands are named in ALONE_KEY before it runs, with
      how many workers died running each in recovery before. The commands of a group a worker
      died running then run one at a time, each named again; one that ALONE_DEATHS_DROPPED
      workers died running in recovery is answered `dropped` without running. So a command
      that kills its worker whenever it runs costs three deaths (its batch's, its group's, then
      alone), and the commands that shared its batch and its group run (MAX_REDELIVERIES and
      the in-flight tries stay, for a worker that dies elsewhere than in a command; they count
      again after each command dropped, so a second such command in the batch costs its own
      deaths, not every held command its answer)."""
    if exc is not None:
        SHARD.forget()
    SHARD.take_ahead = False
    client = sync_client()
    in_flight: list[dict[str, Any]] = []
    suspects: dict[str, int] = {}  # request id -> deaths in recovery before, from ALONE_KEY

    def read() -> int:  # held while Redis fails it, as a batch is
        in_flight[:] = SHARD.take([], drain=0)[0]
        suspects.clear()
        if exc is None:
            suspects.update(_named_alone(client.get(ALONE_KEY)))
        return len(in_flight)

    until_committed(read, lambda: None, ENGINE_QUEUE, retry_on=BATCH_RETRIED_ON)
    envelopes = delivered + in_flight
    counts = {"groups": 0, "alone": 0, "raised_alone": 0, "dropped": 0}

    def name(group: list[dict[str, Any]], deaths: int) -> None:
        """Name `group`'s commands in ALONE_KEY before they run (after a worker died)."""
        ids = [rid for envelope in group if isinstance(rid := envelope.get("request_id"), str)]
        if exc is None and ids:
            named = functools.partial(_name_alone, client, "\n".join(f"{rid} {deaths}" for rid in ids))
            until_committed(named, lambda: None, ENGINE_QUEUE, retry_on=BATCH_RETRIED_ON)

    def one(envelope: dict[str, Any], deaths: int) -> bool:
        """Run `envelope` alone (or answer it `dropped`); False if not even its answer commits."""
        request_id = envelope.get("request_id")
        if exc is None and deaths >= ALONE_DEATHS_DROPPED:  # (or its result again, if it had one)
            log.error("event=command_dropped_alone queue=%s request_id=%s", ENGINE_QUEUE, request_id)
            counts["dropped"] += 1
            answer_unrun([envelope], ENGINE_QUEUE, _DIED_ALONE, SHARD.hooks, SHARD.forget, BATCH_RETRIED_ON)
            _count_deaths_again(client)
            return True
        name([envelope], deaths)
        counts["alone"] += 1
        alone = functools.partial(execute_batch, [envelope], ENGINE_QUEUE, hooks=SHARD.hooks)
        try:
            until_committed(alone, SHARD.forget, ENGINE_QUEUE, retry_on=BATCH_RETRIED_ON)
        except Exception as raised:
            log.exception("event=command_raised_alone request_id=%s", request_id)
            counts["raised_alone"] += 1
            SHARD.forget()
            return answer_failed_batch(
                [envelope],
                ENGINE_QUEUE,
                raised,
                undone=True,
                hooks=SHARD.hooks,
                reset=SHARD.forget,
                retry_on=BATCH_RETRIED_ON,
            )
        return True

    try:
        i = 0
        while i < len(envelopes):
            size = _recovery_group(envelopes, i, suspects)
            SHARD.keep_in_flight = i + max(size, 1) < len(envelopes)
            if size == 0:  # a suspect: alone
                envelope = envelopes[i]
                if not one(envelope, suspects[envelope["request_id"]] + 1):
                    return len(envelopes)  # not even its answer commits: the batch's path is broken
                i += 1
                continue
            group = envelopes[i : i + size]
            counts["groups"] += 1
            name(group, 0)
            together = functools.partial(execute_batch, group, ENGINE_QUEUE, hooks=SHARD.hooks)
            try:
                until_committed(together, SHARD.forget, ENGINE_QUEUE, retry_on=BATCH_RETRIED_ON)
            except Exception:  # undone; one at a time finds the command that raises
                log.warning("event=recovery_group_raised commands=%d action=one_at_a_time", size)
                SHARD.forget()
                for k, envelope in enumerate(group):
                    SHARD.keep_in_flight = i + k + 1 < len(envelopes)
                    if not one(envelope, 0):
                        return len(envelopes)
            i += size
    finally:
        SHARD.keep_in_flight = False
    if exc is None:
        with contextlib.suppress(RedisError):  # if left, it names commands with a result: harmless
            _fenced(client, _FORGET, [ALONE_KEY])
    log.error(
        "event=batch_run_alone queue=%s commands=%d groups=%d alone=%d raised_alone=%d dropped=%d cause=%s",
        ENGINE_QUEUE,
        len(envelopes),
        counts["groups"],
        counts["alone"],
        counts["raised_alone"],
        counts["dropped"],
        type(exc).__name__ if exc is not None else "worker_died",
    )
    return len(envelopes)


def _count_deaths_again(client: Any) -> None:
    """A command was answered `dropped` in recovery (ALONE_DEATHS_DROPPED workers died running
    it): the deaths counted so far were its doing, so the caps for a worker that dies elsewhere
    than in a command (the in-flight tries, the delivered message's redeliveries) count again
    from this start. Each reset answers one more held command, so the deaths stay bounded; a
    second command that kills the worker in the same batch no longer takes every other held
    command down with it past the caps."""
    delivery = SHARD.delivery
    task_id = (getattr(delivery, "headers", None) or {}).get("id")
    counts = [LEFTOVER_TRIES_KEY, *([redeliveries_key(task_id)] if isinstance(task_id, str) else [])]
    try:
        _fenced(client, _RECOUNT, counts)
    except RedisError as exc:  # the caps count on: they may drop the rest sooner, never loop
        log.warning("event=death_count_not_reset error=%s", exc)


# Recovery's bookkeeping (the in-flight tries, a redelivered message's count and the restart of
# the death counts, the names of the commands run alone) is written under the lease too, by
# `_fenced`: a replaced worker in recovery could otherwise count a death too many, start the
# holder's counts over, or forget the holder's names.
#: While this worker holds the shard (KEYS[1]): INCR KEYS[2], which expires ARGV[1] s later.
_COUNT = (
    fence_lua(1) + "local n = redis.call('INCR', KEYS[2])\nredis.call('EXPIRE', KEYS[2], ARGV[1])\nreturn n\n"
)
#: While this worker holds the shard (KEYS[1]): each of the other KEYS that exists set to 1, TTL kept.
_RECOUNT = (
    fence_lua(1) + "for i = 2, #KEYS do\n  redis.call('SET', KEYS[i], 1, 'XX', 'KEEPTTL')\nend\nreturn 1\n"
)
#: While this worker holds the shard (KEYS[1]): DEL the other KEYS.
_FORGET = fence_lua(1) + "return redis.call('DEL', unpack(KEYS, 2))\n"
#: While this worker holds the shard (KEYS[1]): SET KEYS[2] to ARGV[1] for ARGV[2] s.
_NAME_ALONE = fence_lua(1) + "redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])\nreturn 1\n"


def _fenced(client: Any, script: str, keys: list[str], args: tuple[Any, ...] = ()) -> Any:
    """`script` (one of the above) on `keys`, while this worker holds the shard (ShardLost, and
    this worker stops, otherwise: workers.shard_owner.run_fenced)."""
    return run_fenced(SHARD.fence, client.connection_pool, script, [ENGINE_OWNER_KEY, *keys], args)


def _name_alone(client: Any, named: str) -> int:
    """Name the commands about to run in recovery in ALONE_KEY (durably, before they run), under
    the lease: a replaced worker in recovery would overwrite the holder's names."""
    return int(_fenced(client, _NAME_ALONE, [ALONE_KEY], (named, ALONE_TTL_S)))


#: The error of a command named in ALONE_KEY when a worker starts on its batch again.
_DIED_ALONE = ErrorInfo(
    code=DROPPED,
    message=(
        f"not run: the engine worker stopped {ALONE_DEATHS_DROPPED} times while running this "
        "command again (in a small group, then alone), after a worker had stopped while running "
        "the batch that carried it (it may kill the worker); send it again with a new request_id"
    ),
)


def _take_after_linger(until: float) -> bool:
    """When a commit took nothing along: wait the linger, then take what queued meanwhile in one
    round trip (EngineShard.take) as the chain's next batch, instead of handing control back to
    Celery's consumer, whose delivery of the next message (its pop, the unacked bookkeeping, the
    decoding; then the linger and the take all the same) is saved: at 1,000 single orders/s the
    engine worker's CPU per order fell by a fifth (README, "When a commit finds nothing waiting").
    True if it took a batch (SHARD.ahead); False when nothing queued (or the next message is
    another task's, which keeps its turn), when the chain has run `BACK_TO_BACK_S`, or when Redis
    failed the take: then Celery's consumer delivers the next message, and the next take finds
    what this one may have moved in flight."""
    linger = SHARD.group_commit.linger_s
    if linger <= 0 or time.monotonic() + linger >= until:
        return False
    time.sleep(linger)
    try:
        taken, started = SHARD.take([])
    except RedisError as exc:
        log.warning("event=take_failed error=%s", exc)
        return False
    if not taken:
        return False
    SHARD.ahead = (taken, started)
    metrics.engine_batch("after_linger")
    return True


def _run_batch_inline(headers: dict[str, Any], args: list[Any], message: Any) -> int:
    return _run_batch(args[0], message)


def _delivered_body(message: Any) -> Any:
    """A delivered batch message's body as kombu decodes it, with its `submit_orders` order
    lists left as text for the core to read (hean.celery_wire.batch_body_cut), as the batches
    taken along are read: when kombu's JSON reader gives the same values (a JSON body without
    kombu's typed values, workers/transport.py). At 25,000 orders/s in 100-order commands about
    a quarter of the batch messages arrive this way, the rest taken along.

    kombu's Redis transport hands the body over as UTF-8 bytes (its Message encodes the text it
    read); it is read back as text here, as kombu's own reader does."""
    body = message.body
    plain = isinstance(body, str | bytes) and not has_typed_values(body)
    if message.content_type != "application/json" or not plain:
        return message.decode()
    if isinstance(body, bytes) and message.content_encoding == "utf-8":
        try:
            body = body.decode()
        except UnicodeDecodeError:  # kombu's reader raises its own error for it
            return message.decode()
    cut = batch_body_cut(body)
    return cut if cut is not None else message.decode()


#: One engine batch a second shows in Flower (task events); the others send none. Every batch
#: is counted in HEAN's own metrics (hean_submit_to_result_seconds, hean_commands_total).
BATCH_SHOWN_EVERY_S: Final = 1.0


# The order batches the web pushes: run in the consumer as they arrive, in queue order, without
# Celery's Request, pool hand-off and tracing, which cost as much CPU as the batch (workers/app.py:
# inline_strategy); the message is acknowledged after the batch committed.
@app.task(
    name=BATCH_TASKS[ENGINE_QUEUE],
    ignore_result=True,
    Strategy=staticmethod(
        inline_strategy(
            _run_batch_inline,
            with_message=True,
            events_every_s=BATCH_SHOWN_EVERY_S,
            failures_reported=True,
            capped=True,
            on_dropped=lambda args: answer_dropped_message(args, ENGINE_QUEUE, fenced_only()),
            decode=_delivered_body,
        )
    ),
)
def run_batch(envelopes: list[dict[str, Any]]) -> int:
    return _run_batch(envelopes)


def _ping_inline(headers: dict[str, Any], args: list[Any], message: Any) -> None:
    # the function itself: no task call (request stack, redelivery bookkeeping)
    sent_at, reply_key = [*args, None, None][:2]
    _ping(sent_at, reply_key, message)


#: The answers to the pulse's pings go out without waiting for their replies (read at the next
#: answer: hean.redis_client.SendAhead), made on first use.
_pong_sender: ProcessWide[SendAhead] = ProcessWide(lambda: SendAhead(sync_client()))


def _ping(sent_at: float | None = None, reply_key: str | None = None, message: Any = None) -> dict[str, Any]:
    engine = SHARD.engine
    state = str(engine.state)
    answer = {"state": state, "command_count": engine.command_count, "sent_at": sent_at}
    if reply_key is not None and reply_key.startswith("hean:pong:"):
        pipe = sync_client().pipeline(transaction=False)  # only collects the commands
        pipe.lpush(reply_key, state)
        pipe.expire(reply_key, 5)
        # the ping's own acknowledgement goes in the same write (workers/transport.py:
        # QoS.ack_within): one fsync fewer, ten times a second
        ack_within = getattr(getattr(getattr(message, "channel", None), "qos", None), "ack_within", None)
        if ack_within is not None:
            ack_within(pipe, message.delivery_tag)
        commands = [args for args, _options in pipe.command_stack]
        pipe.reset()
        try:
            _pong_sender.get().send_all(commands)
        except (RedisError, OSError) as exc:  # Redis away: the pulse sees no answer, as it should
            log.warning("event=ping_answer_failed error=%s", exc)
    return answer


# Ten a second, from the pulse (workers/pulse.py): run in the consumer as it arrives, behind
# whatever the queue held before it, without Celery's per-task machinery (workers/app.py).
@app.task(
    name=ENGINE_PING_TASK,
    ignore_result=True,
    send_events=False,
    Strategy=staticmethod(inline_strategy(_ping_inline, with_message=True)),
)
def ping(sent_at: float | None = None, reply_key: str | None = None) -> dict[str, Any]:
    """Round trip through the engine queue to this worker's C++ core (the health probe).

    With `reply_key`, the engine state is pushed onto that list (kept 5 s) for the prober.
    """
    return _ping(sent_at, reply_key)


#: This process's lease on the engine shard (workers/shard_owner.py): taken before it consumes.
OWNER: Final = ShardOwner(sync_client)


def _shard_lost() -> None:
    """Another engine worker holds the shard now (this one was frozen or cut off for longer than
    the lease): stop before running one more batch on an engine that is no longer the one."""
    logging.shutdown()
    os._exit(3)


def hold_the_shard() -> None:
    """Take the shard's lease (waiting while another holds it); from then on Redis runs this
    process's batch commits and snapshots only while it holds the shard (its fences)."""
    OWNER.acquire(on_lost=_shard_lost)
    SHARD.hooks.fence = SHARD.fence = Fence(OWNER)
    SHARD.log.writer.fence = SHARD.state_fence = Fence(OWNER, chained=False)
    count_deliveries_with(_count_delivery_fenced)


def _count_delivery_fenced(task: Any, key: str, ttl: int) -> int:
    """A redelivered batch message's delivery, counted under the lease (workers.app)."""
    return int(_fenced(sync_client(), _COUNT, [key], (ttl,)))


def fenced_only(*deleting: str) -> BatchHooks:
    """Hooks for a commit of this worker that carries none of the engine's own writes (commands
    answered `dropped`): fenced by the lease all the same, so that a replaced worker answers
    nothing of what the holder runs now (and stops). The commit also deletes the keys
    `deleting` (the in-flight list it answered), under the same fence."""
    if not deleting:
        return BatchHooks(fence=SHARD.hooks.fence)
    return BatchHooks(fence=SHARD.hooks.fence, after=lambda pipe: pipe.delete(*deleting))


@worker_shutdown.connect
def _snapshot_on_shutdown(**_: Any) -> None:
    if SHARD.loaded:
        SHARD.publisher.stop()
        try:
            SHARD.snapshot()
            log.info("event=engine_snapshot reason=shutdown log_id=%s", SHARD.log.last_id)
        except RedisError as exc:  # full, away: the next start replays the log since the last one
            log.warning(
                "event=engine_snapshot_failed reason=shutdown log_id=%s error=%s action=replay_at_next_start",
                SHARD.log.last_id,
                type(exc).__name__,
            )
    if OWNER.held:
        OWNER.release()  # after the last snapshot: the next engine worker starts from it


@worker_init.connect
def _reclaim_from_a_dead_predecessor(sender: Any = None, **_: Any) -> None:
    """Before consuming: a batch the previous engine worker had been delivered and never
    acknowledged (it died) goes back to the queue now, not after the visibility timeout.
    Safe because the engine queue has exactly one consumer (the shard's lease, taken first: any
    other engine worker waits for it); the journal runs each command once."""
    if ENGINE_QUEUE not in sender.app.amqp.queues.consume_from:  # sender: the WorkController
        return
    hold_the_shard()  # the one engine worker: another waits here
    try:
        # popped and never recorded first (the transport would restore those itself, but behind
        # these), then delivered and unacknowledged: the older goes back nearer the consuming end
        restored = restore_delivering(sync_client(), ENGINE_QUEUE)
        reclaimed = reclaim_unacked(sync_client(), ENGINE_QUEUE)
    except RedisError as exc:  # Redis away: kombu restores them after the visibility timeout
        log.error("event=reclaim_failed queue=%s error=%s", ENGINE_QUEUE, exc)
        return
    if restored or reclaimed:
        log.warning(
            "event=unacked_reclaimed queue=%s messages=%d popped_unrecorded=%d",
            ENGINE_QUEUE,
            reclaimed,
            restored,
        )


#: How many starts of the engine worker began finishing the in-flight list it found (deleted
#: once one finished): a command that kills the worker must not make it die at every start.
LEFTOVER_TRIES_KEY: Final = "hean:engine:inflight-tries"
#: A count left behind (Redis failed its deletion) is forgotten after this long.
LEFTOVER_TRIES_TTL_S: Final = 3600


@worker_ready.connect
def _announce_engine(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if ENGINE_QUEUE not in queues:
        return

    import celeryconfig

    tries: list[int] = []  # this start's count, taken once (not again at each retry below)

    def finish_leftover() -> int:
        leftover, _ = SHARD.take([], drain=0)
        client = sync_client()
        if not leftover:  # nothing left over: no count carries over to a later crash
            _fenced(client, _FORGET, [LEFTOVER_TRIES_KEY])
            return 0
        # drained before a crash: finish them first (each runs at most once), unless the worker
        # died finishing them MAX_REDELIVERIES times already: then one of them kills it, and all
        # are answered `dropped` instead of looping for ever
        if not tries:
            tries.append(int(_fenced(client, _COUNT, [LEFTOVER_TRIES_KEY], (LEFTOVER_TRIES_TTL_S,))))
        if tries[0] > celeryconfig.MAX_REDELIVERIES:
            # the in-flight list goes in the answers' commit: a worker replaced meanwhile deletes
            # nothing (the holder's in-flight list may hold what it took since)
            done = fenced_only(INFLIGHT_KEY, LEFTOVER_TRIES_KEY)
            answered = answer_dropped(leftover, ENGINE_QUEUE, tries[0], done)
            log.error(
                "event=inflight_dropped commands=%d answered=%d tries=%d", len(leftover), answered, tries[0]
            )
            return len(leftover)
        _run_alone([])  # one at a time; the last commit empties the in-flight list
        _fenced(client, _FORGET, [LEFTOVER_TRIES_KEY])
        log.warning("event=inflight_recovered commands=%d", len(leftover))
        return len(leftover)

    until_committed(finish_leftover, SHARD.forget, ENGINE_QUEUE)
    status = SHARD.publish_engine()
    SHARD.publish_risk_limits()
    SHARD.publisher.start()
    log.info("event=engine_ready state=%s", status["state"])
