"""Running commands in a worker: a batch of enqueued commands, each at most once per request
id, its results committed and published in one round trip. The contract (registry, params,
error codes) lives in hean.commands."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hean import metrics
from hean.celery_wire import loaded_params
from hean.command_journal import CommandJournal, History, resolve_started
from hean.commands import RunRefused, error_from, get_command
from hean.logs import FailureLog
from hean.messages import OPERATORS_ROOM, CommandResult, ErrorInfo, QueuedEnvelope, read_envelope
from hean.redis_client import (
    TRANSIENT_ERRORS,
    TransactionFence,
    commit_client,
    durability,
    execute_transaction,
    hot_connection,
    sync_client,
    wait_durable,
)

log = logging.getLogger(__name__)


#: How a queue's consumer takes part in a batch: `before()` runs ahead of the handlers,
#: `after(pipe)` queues writes that must commit together with the results (the engine's log),
#: `committed(replies)` gets the commit's replies (as many as the MULTI queued, in order) once
#: it is durable, `published()` runs once everything is committed. The results are published by
#: the commit, unless `state_first()` says this batch changed state that `published()` must
#: publish before anyone sees a result (control commands).
@dataclass
class BatchHooks:
    before: Callable[[], None] = lambda: None
    after: Callable[[Any], None] = lambda pipe: None
    committed: Callable[[list[Any]], None] = lambda replies: None
    published: Callable[[], None] = lambda: None
    state_first: Callable[[], bool] = lambda: False
    #: What the commit runs under (workers.shard_owner.Fence: the engine's lease), if anything
    fence: TransactionFence | None = None


NO_HOOKS = BatchHooks()


def _report(exc: BaseException, origin: str) -> None:
    """Queue an unexpected handler exception for the error analyzer (the llm queue); the
    handler's task caught it, so Celery's task_failure signal never sees it. Never raises."""
    try:
        from hean.core.system.error_analyzer import reporting_analyzer
        from workers.app import app

        reporting_analyzer(app).report(exc, origin)
    except Exception:  # reporting must never add a second failure to the first
        log.warning("event=command_failure_not_reported origin=%s", origin)


def _run_one(envelope: QueuedEnvelope, queue: str, started: float) -> dict[str, Any]:
    spec = get_command(envelope.command)
    result: Any = None
    error: ErrorInfo | None = None
    if spec is None or spec.queue != queue or spec.handler is None:
        error = ErrorInfo(code="unknown_command", message=f"no command {envelope.command!r} here")
    else:
        try:
            result = spec.handler(spec.params.model_validate(loaded_params(envelope.params)))
        except Exception as exc:  # a failing command is reported, never kills the worker
            error = error_from(exc)
            if error.code == "command_failed":  # not a CommandError: a bug, sent for analysis
                log.exception("event=command_failed command=%s request_id=%s", spec.name, envelope.request_id)
                _report(exc, f"command:{spec.name}")
    return CommandResult(
        request_id=envelope.request_id,
        command=envelope.command,
        success=error is None,
        result=result,
        error=error,
        execution_time_ms=round((time.perf_counter() - started) * 1000.0, 3),
    ).model_dump(mode="json")


def _refused(envelope: QueuedEnvelope, error: ErrorInfo) -> dict[str, Any]:
    return CommandResult(
        request_id=envelope.request_id,
        command=envelope.command,
        success=False,
        error=error,
        execution_time_ms=0.0,
    ).model_dump(mode="json")


#: The error of the commands of a message dropped after it was delivered more than
#: MAX_REDELIVERIES times again (celeryconfig.py): each time, the worker died running it.
DROPPED = "dropped"


def answer_dropped_message(args: list[Any], queue: str, hooks: BatchHooks = NO_HOOKS) -> None:
    """A batch message of `queue` dropped past the redelivery cap: answer each of its commands
    that has no result `dropped` (answer_dropped), so that no sender waits for ever and the
    journal holds no command started for good."""
    import celeryconfig

    if not args or not isinstance(args[0], list):
        return
    answered = answer_dropped(args[0], queue, celeryconfig.MAX_REDELIVERIES + 1, hooks)
    log.error("event=dropped_commands_answered queue=%s commands=%d", queue, answered)


def _failed_batch_error(queue: str, exc: Exception, undone: bool) -> ErrorInfo:
    """The error of the commands of a batch that an exception ended before its results were
    recorded (a bug in the batch's path, not in one command's handler, whose exceptions fail
    that command only). `undone`: the worker dropped whatever the batch changed in memory (the
    engine's), so none of it ran; otherwise a command's handler may have run."""
    cause = f"{type(exc).__name__}: {exc}"[:200]
    what = f"the {queue} worker failed running the batch that carried this command ({cause})"
    if undone:
        message = f"not run: {what}; send it again with a new request_id"
    else:
        message = (
            f"no result: {what} before its result was recorded, so it may have run; "
            "send it again with a new request_id"
        )
    return ErrorInfo(code="command_failed", message=message)


def answer_unrun(
    envelopes_data: list[dict[str, Any]],
    queue: str,
    error: ErrorInfo,
    hooks: BatchHooks = NO_HOOKS,
    reset: Callable[[], None] = lambda: None,
    retry_on: tuple[type[BaseException], ...] = TRANSIENT_ERRORS,
) -> int:
    """Answer every command of `envelopes_data` that has no result yet with `error`, without
    running any (those with a result get it again), in one commit with `hooks`' writes, held
    while Redis fails it (`retry_on`, `reset` as for `until_committed`). Returns how many."""
    answer = functools.partial(execute_batch, envelopes_data, queue, hooks=hooks, refuse=error)
    return until_committed(answer, reset, queue, retry_on)


def answer_failed_batch(
    envelopes_data: list[dict[str, Any]],
    queue: str,
    exc: Exception,
    undone: bool,
    hooks: BatchHooks = NO_HOOKS,
    reset: Callable[[], None] = lambda: None,
    retry_on: tuple[type[BaseException], ...] = TRANSIENT_ERRORS,
) -> bool:
    """After an exception ended a batch before its results were recorded: answer each command
    of `envelopes_data` that has no result with `_failed_batch_error` (`answer_unrun`).
    Otherwise the batch's acked commands would stay without a result for good. Never raises:
    False when the answer failed too (logged)."""
    error = _failed_batch_error(queue, exc, undone)
    try:
        answered = answer_unrun(envelopes_data, queue, error, hooks, reset, retry_on)
    except Exception:  # the answer's own path failed too: its commands stay as they are
        log.exception("event=failed_batch_not_answered queue=%s", queue)
        return False
    log.error(
        "event=failed_batch_answered queue=%s commands=%d error=%s", queue, answered, type(exc).__name__
    )
    return True


def answer_dropped(
    envelopes_data: list[dict[str, Any]], queue: str, deliveries: int, hooks: BatchHooks = NO_HOOKS
) -> int:
    """Answer every command of a dropped batch that has no result yet with a `dropped` error,
    without running it: its sender learns the command did not run, and may send it again under
    a new request id (the same one gets this answer). Held until Redis takes the commit, which
    runs with `hooks` (the engine's: its lease's fence only)."""
    error = ErrorInfo(
        code=DROPPED,
        message=(
            f"not run: the {queue} worker stopped {deliveries} times while running the batch "
            "that carried this command (one of its commands may kill the worker); send it "
            "again with a new request_id"
        ),
    )
    return answer_unrun(envelopes_data, queue, error, hooks)


def _run_of(
    envelopes: list[QueuedEnvelope], start: int, queue: str, outcome: dict[str, dict[str, Any] | None]
) -> list[QueuedEnvelope]:
    """The envelopes from `start` on that one many-handler can run at once: the same command,
    each not run before and not repeated within the run (a repeat must see the first's result)."""
    spec = get_command(envelopes[start].command)
    if spec is None or spec.many is None or spec.queue != queue:
        return []
    run: list[QueuedEnvelope] = []
    ids: set[str] = set()
    for envelope in envelopes[start:]:
        if (
            envelope.command != spec.name
            or envelope.request_id in ids
            or outcome[envelope.request_id] is not None
        ):
            break
        run.append(envelope)
        ids.add(envelope.request_id)
    return run


def result_message(
    envelope: QueuedEnvelope, result: Any, error: dict[str, Any] | None, execution_time_ms: float
) -> dict[str, Any]:
    """What `CommandResult(...).model_dump(mode="json")` gives, built as a dict (a many-handler's
    results are JSON already; tests/test_order_runs.py holds the two equal)."""
    return {
        "request_id": envelope.request_id,
        "command": envelope.command,
        "success": error is None,
        "result": result,
        "error": None
        if error is None
        else {"code": error["code"], "message": error["message"], "field": error.get("field")},
        "execution_time_ms": execution_time_ms,
    }


def _run_many(run: list[QueuedEnvelope], queue: str) -> list[dict[str, Any]]:
    """Run `run` through its command's many-handler, or one by one if it refuses the run."""
    spec = get_command(run[0].command)
    assert spec is not None and spec.many is not None
    started = time.perf_counter()
    try:
        outcomes = spec.many([envelope.params for envelope in run])
    except RunRefused as exc:  # nothing changed: each gets the one-by-one path (and its errors)
        log.info("event=run_refused command=%s size=%d reason=%s", spec.name, len(run), exc)
        return [_run_one(envelope, queue, time.perf_counter()) for envelope in run]
    share_ms = round((time.perf_counter() - started) * 1000.0 / len(run), 3)
    return [
        result_message(envelope, result, error, share_ms)
        for envelope, (result, error) in zip(run, outcomes, strict=True)
    ]


@functools.cache
def _history() -> History:
    """The database's records, opened at the first lookup (resolve_started asks only for request
    ids that left the window): a worker that never needs it never imports SQLAlchemy, about
    0.14 s of each engine worker's start."""
    from hean.db import database
    from hean.history import HistoryStore

    return HistoryStore(database)


def _publish(client: Any, emits: list[tuple[str, Any, Any]]) -> None:
    from workers.emit import publish_on

    pipe = client.pipeline(transaction=False)
    publish_on(pipe, emits)
    pipe.execute()


#: A batch that resends earlier results logs one line naming at most this many of their ids.
RESENT_IDS_LOGGED = 5
#: Pauses between attempts at a batch while Redis is away or out of memory: first and most.
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 1.0


def until_committed(
    attempt: Callable[[], int],
    reset: Callable[[], None],
    what: str,
    retry_on: tuple[type[BaseException], ...] = TRANSIENT_ERRORS,
) -> int:
    """Run `attempt` (one try at a batch, ending in its commit) until it commits, as long as
    Redis fails it only for a while (unreachable, restarting, out of memory, not durable in
    time: `retry_on`); `reset()` after each failure drops whatever in-memory state the failed
    try changed.

    Retried here, holding the delivered message, rather than by Celery's `retry()`: that
    publishes a new message, and when the publish fails too (Redis still away or still full)
    Celery rejects the delivered one without requeueing it, and its acked commands are lost.
    The journal runs each command once, however many tries it takes.
    """
    delay, failures = RETRY_FIRST_S, None  # a FailureLog from the first failure on (not per batch)
    while True:
        try:
            ran = attempt()
        except retry_on as exc:
            reset()
            # the first at once, then one line per 10 s (Redis full for minutes: not 1 a second)
            failures = failures or FailureLog(log)
            failures.failed(
                "event=batch_not_committed queue=%s error=%s action=retry delay_s=%.1f",
                what,
                f"{type(exc).__name__}: {exc}"[:200],
                delay,
            )
            time.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)
        else:
            if failures is not None:
                failures.recovered("event=batch_committed_after_retries queue=%s", what)
            return ran


def execute_batch(
    envelopes_data: list[dict[str, Any]],
    queue: str,
    started: dict[str, dict[str, Any] | str | None] | None = None,
    hooks: BatchHooks = NO_HOOKS,
    refuse: ErrorInfo | None = None,
) -> int:
    """Run a batch of enqueued commands in order, each at most once per request id.

    Results are committed together with the queue's own writes in one MULTI/EXEC, and
    published to each sender and to the operators room as one pub/sub message. When writes
    must be durable (HEAN_ACK_FSYNC, as for acks), the results are published only once
    WAITAOF confirmed the commit: a client never hears of a result that a Redis crash could
    take back. Otherwise the publish rides in the MULTI/EXEC (one round trip). A batch whose
    state must be published first publishes its results after that.
    `started` maps request ids the caller already marked started to what the journal said
    (hean.command_journal.start_many); the others are marked here. A request id the window
    no longer holds is looked up in the database (raises HistoryUnavailable if it cannot be
    read: the caller retries).
    With `refuse`, no command runs: each one without an earlier result is answered with that
    error (`answer_unrun`).
    """
    from workers.emit import publish_on

    envelopes = [read_envelope(data) for data in envelopes_data]
    client = sync_client()
    journal = CommandJournal(client)
    said: dict[str, dict[str, Any] | str | None] = dict(started or {})
    missing = [e.request_id for e in envelopes if e.request_id not in said]
    if missing:
        said.update(zip(missing, journal.start_many(missing), strict=True))
    # per request id, its result so far: from the journal (or the database), then from this
    # very batch (a redelivered message may sit in the batch that already ran it)
    outcome = resolve_started(list(said), list(said.values()), _history)
    hooks.before()
    fresh: list[dict[str, Any]] = []
    messages: list[tuple[dict[str, Any], str | None]] = []
    resent: list[str] = []
    i = 0
    while i < len(envelopes):
        envelope = envelopes[i]
        previous = outcome[envelope.request_id]
        if previous is not None:
            resent.append(envelope.request_id)
            messages.append((previous, envelope.reply_to))
            i += 1
            continue
        if refuse is not None:
            run, ran = [envelope], [_refused(envelope, refuse)]
        elif run := _run_of(envelopes, i, queue, outcome):  # one or more for a many-handler: at once
            ran = _run_many(run, queue)
        else:
            run, ran = [envelope], [_run_one(envelope, queue, time.perf_counter())]
        for done, message in zip(run, ran, strict=True):
            outcome[done.request_id] = message
            fresh.append(message)
            messages.append((message, done.reply_to))
        i += len(run)
    if resent:  # one line a batch: a recovery that reads a long in-flight list again had one each
        log.warning(
            "event=commands_already_ran queue=%s count=%d request_ids=%s action=resend_result",
            queue,
            len(resent),
            ",".join(resent[:RESENT_IDS_LOGGED])
            + (f",+{len(resent) - RESENT_IDS_LOGGED}" if len(resent) > RESENT_IDS_LOGGED else ""),
        )
    emits = [
        ("command_result", message, [reply_to, OPERATORS_ROOM] if reply_to else OPERATORS_ROOM)
        for message, reply_to in messages
    ]
    state_first = hooks.state_first()
    durable = durability()
    publish_in_commit = not state_first and not durable.required
    committer = commit_client() if durable.required else client
    pipe = committer.pipeline(transaction=True)
    hooks.after(pipe)
    CommandJournal.record_results(pipe, fresh)
    if publish_in_commit:
        publish_on(pipe, emits)
    replies = execute_transaction(
        committer.connection_pool if durable.required else hot_connection(), pipe, hooks.fence
    )
    wait_durable(committer, durable)
    if hooks.fence is not None and hooks.fence.lost_after_commit:
        # it ran while this process held the shard, whose new holder will not send its results:
        # they go out now, and the process stops (no state of an engine no longer the one)
        if not publish_in_commit:
            _publish(committer, emits)
        hooks.fence.settle()
    hooks.committed(replies)
    if not publish_in_commit and not state_first:
        _publish(committer, emits)
    hooks.published()
    if state_first:
        _publish(committer, emits)
    metrics.batch_ran(queue, (e.received_at_ms for e in envelopes), fresh)
    return len(messages)
