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
from hean.command_journal import CommandJournal, resolve_started
from hean.commands import RunRefused, error_from, get_command
from hean.history import HistoryStore
from hean.messages import OPERATORS_ROOM, CommandResult, ErrorInfo, TaskEnvelope, read_envelope
from hean.redis_client import sync_client

log = logging.getLogger(__name__)


#: How a queue's consumer takes part in a batch: `before()` runs ahead of the handlers,
#: `after(pipe)` queues writes that must commit together with the results (the engine's log),
#: `published()` runs once everything is committed. The results are published by the commit,
#: unless `state_first()` says this batch changed state that `published()` must publish before
#: anyone sees a result (control commands).
@dataclass
class BatchHooks:
    before: Callable[[], None] = lambda: None
    after: Callable[[Any], None] = lambda pipe: None
    published: Callable[[], None] = lambda: None
    state_first: Callable[[], bool] = lambda: False


NO_HOOKS = BatchHooks()


def _run_one(envelope: TaskEnvelope, queue: str, started: float) -> dict[str, Any]:
    spec = get_command(envelope.command)
    result: Any = None
    error: ErrorInfo | None = None
    if spec is None or spec.queue != queue or spec.handler is None:
        error = ErrorInfo(code="unknown_command", message=f"no command {envelope.command!r} here")
    else:
        try:
            result = spec.handler(spec.params.model_validate(envelope.params))
        except Exception as exc:  # a failing command is reported, never kills the worker
            error = error_from(exc)
            if error.code == "command_failed":
                log.exception("event=command_failed command=%s request_id=%s", spec.name, envelope.request_id)
    return CommandResult(
        request_id=envelope.request_id,
        command=envelope.command,
        success=error is None,
        result=result,
        error=error,
        execution_time_ms=round((time.perf_counter() - started) * 1000.0, 3),
    ).model_dump(mode="json")


def _run_of(
    envelopes: list[TaskEnvelope], start: int, queue: str, outcome: dict[str, dict[str, Any] | None]
) -> list[TaskEnvelope]:
    """The envelopes from `start` on that one many-handler can run at once: the same command,
    each not run before and not repeated within the run (a repeat must see the first's result)."""
    spec = get_command(envelopes[start].command)
    if spec is None or spec.many is None or spec.queue != queue:
        return []
    run: list[TaskEnvelope] = []
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
    envelope: TaskEnvelope, result: Any, error: dict[str, Any] | None, execution_time_ms: float
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


def _run_many(run: list[TaskEnvelope], queue: str) -> list[dict[str, Any]]:
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
def _history() -> HistoryStore:
    from hean.db import database

    return HistoryStore(database)


def execute_batch(
    envelopes_data: list[dict[str, Any]],
    queue: str,
    started: dict[str, dict[str, Any] | str | None] | None = None,
    hooks: BatchHooks = NO_HOOKS,
) -> int:
    """Run a batch of enqueued commands in order, each at most once per request id.

    Results are committed together with the queue's own writes and published to each sender
    and to the operators room as one pub/sub message, all in one MULTI/EXEC (one round trip).
    A batch whose state must be published first publishes its results after that.
    `started` maps request ids the caller already marked started to what the journal said
    (hean.command_journal.start_many); the others are marked here. A request id the window
    no longer holds is looked up in the database (raises HistoryUnavailable if it cannot be
    read: the caller retries).
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
    outcome = resolve_started(list(said), list(said.values()), _history())
    hooks.before()
    fresh: list[dict[str, Any]] = []
    messages: list[tuple[dict[str, Any], str | None]] = []
    i = 0
    while i < len(envelopes):
        envelope = envelopes[i]
        previous = outcome[envelope.request_id]
        if previous is not None:
            log.warning("event=command_already_ran request_id=%s action=resend_result", envelope.request_id)
            messages.append((previous, envelope.reply_to))
            i += 1
            continue
        run = _run_of(envelopes, i, queue, outcome)
        if run:  # one or several in a row for a many-handler: at once
            ran = _run_many(run, queue)
        else:
            run, ran = [envelope], [_run_one(envelope, queue, time.perf_counter())]
        for done, message in zip(run, ran, strict=True):
            outcome[done.request_id] = message
            fresh.append(message)
            messages.append((message, done.reply_to))
        i += len(run)
    emits = [
        ("command_result", message, [reply_to, OPERATORS_ROOM] if reply_to else OPERATORS_ROOM)
        for message, reply_to in messages
    ]
    state_first = hooks.state_first()
    pipe = client.pipeline(transaction=True)
    hooks.after(pipe)
    CommandJournal.record_results(pipe, fresh)
    if not state_first:
        publish_on(pipe, emits)
    pipe.execute()
    hooks.published()
    if state_first:
        results = client.pipeline(transaction=False)
        publish_on(results, emits)
        results.execute()
    metrics.batch_ran(queue, (e.received_at_ms for e in envelopes), fresh)
    return len(messages)
