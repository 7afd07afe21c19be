"""The command registry: every control command has a name, a params schema and a queue.

Projects add their own with the `command` decorator in a module named in
HEAN_COMMAND_MODULES (imported by the web process and every worker), and they appear in
`list_commands`. The web process validates against this registry before enqueuing.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from celeryconfig import DEFAULT_QUEUE, ENGINE_QUEUE
from hean.command_journal import CommandJournal
from hean.config import get_settings
from hean.messages import (
    NAME_PATTERN,
    OPERATORS_ROOM,
    CommandError,
    CommandResult,
    ErrorInfo,
    TaskEnvelope,
)
from hean.redis_client import sync_client

log = logging.getLogger(__name__)


class NoParams(BaseModel):
    """Params schema of a command that takes none."""

    model_config = ConfigDict(extra="forbid")


Handler = Callable[[Any], Any]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    params: type[BaseModel]
    queue: str
    handler: Handler
    description: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queue": self.queue,
            "description": self.description,
            "params": self.params.model_json_schema(),
        }


#: The Celery task that runs commands for each queue (its route is declared in celeryconfig).
TASK_FOR_QUEUE = {
    ENGINE_QUEUE: "workers.engine.run_batch",
    DEFAULT_QUEUE: "workers.default.run_batch",
}

_REGISTRY: dict[str, CommandSpec] = {}


def command(
    name: str,
    *,
    params: type[BaseModel] = NoParams,
    queue: str = ENGINE_QUEUE,
    description: str = "",
) -> Callable[[Handler], Handler]:
    """Register `handler(params) -> JSON-serializable result` as command `name` on `queue`.

    The handler runs in a worker consuming `queue`; raise `hean.messages.CommandError` to fail
    with a stable error code.
    """
    import re

    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"command name {name!r} must match {NAME_PATTERN}")
    if queue not in TASK_FOR_QUEUE:
        raise ValueError(f"command {name!r}: queue must be one of {sorted(TASK_FOR_QUEUE)}")

    def register(handler: Handler) -> Handler:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.handler.__qualname__ != handler.__qualname__:
            raise ValueError(f"command {name!r} is already registered")
        summary = description or next(iter((handler.__doc__ or "").strip().splitlines()), "")
        _REGISTRY[name] = CommandSpec(name, params, queue, handler, summary)
        return handler

    return register


def get_command(name: str) -> CommandSpec | None:
    return _REGISTRY.get(name)


def command_names() -> list[str]:
    return sorted(_REGISTRY)


def load_command_modules() -> None:
    """Import the project modules named in HEAN_COMMAND_MODULES (they register commands)."""
    for module in get_settings().command_module_list:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f"HEAN_COMMAND_MODULES names {module!r}, which cannot be imported: {exc}"
            ) from exc


@command(
    "list_commands",
    queue=DEFAULT_QUEUE,
    description="Every registered command and its params schema.",
)
def list_commands(_: NoParams) -> dict[str, Any]:
    return {"commands": [_REGISTRY[name].describe() for name in command_names()]}


def _error_from(exc: Exception) -> ErrorInfo:
    if isinstance(exc, CommandError):
        return ErrorInfo(code=exc.code, message=exc.message, field=exc.field)
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        return ErrorInfo(code="invalid_params", message=f"{field}: {first['msg']}", field=field)
    return ErrorInfo(code="command_failed", message=f"{type(exc).__name__}: {exc}")


#: Hooks a queue's module registers to take part in a batch: `before()` runs ahead of the
#: handlers, `after(pipe)` queues writes that must commit together with the results (the
#: engine's command log), `published()` runs once everything is committed. The results are
#: published by the commit itself, unless `state_first()` says this batch changed state that
#: `published()` must publish before anyone sees a result (control commands).
@dataclass
class BatchHooks:
    before: Callable[[], None] = lambda: None
    after: Callable[[Any], None] = lambda pipe: None
    published: Callable[[], None] = lambda: None
    state_first: Callable[[], bool] = lambda: False


_HOOKS: dict[str, BatchHooks] = {}


def set_batch_hooks(queue: str, hooks: BatchHooks) -> None:
    _HOOKS[queue] = hooks


def _run_one(envelope: TaskEnvelope, queue: str, started: float) -> dict[str, Any]:
    spec = _REGISTRY.get(envelope.command)
    result: Any = None
    error: ErrorInfo | None = None
    if spec is None or spec.queue != queue:
        error = ErrorInfo(code="unknown_command", message=f"no command {envelope.command!r} here")
    else:
        try:
            result = spec.handler(spec.params.model_validate(envelope.params))
        except Exception as exc:  # a failing command is reported, never kills the worker
            error = _error_from(exc)
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


def execute_batch(
    envelopes_data: list[dict[str, Any]],
    queue: str,
    started: dict[str, dict[str, Any] | None] | None = None,
) -> int:
    """Run a batch of enqueued commands in order, each at most once per request id.

    Results are committed together with the queue's own writes and published to each sender
    and to the operators room as one pub/sub message, all in one MULTI/EXEC (one round trip).
    A batch whose state must be published first publishes its results after that.
    `started` maps request ids the caller already marked started to their earlier result
    (or None); the others are marked here.
    """
    from workers.emit import publish_on

    envelopes = [TaskEnvelope.model_validate(data) for data in envelopes_data]
    client = sync_client()
    journal = CommandJournal(client)
    # per request id, its result so far: from the journal, then from this very batch (a
    # redelivered message may sit in the batch that already ran it)
    outcome: dict[str, dict[str, Any] | None] = dict(started or {})
    missing = [e.request_id for e in envelopes if e.request_id not in outcome]
    if missing:
        outcome.update(zip(missing, journal.start_many(missing), strict=True))
    hooks = _HOOKS.get(queue, BatchHooks())
    hooks.before()
    fresh: list[dict[str, Any]] = []
    messages: list[tuple[dict[str, Any], str | None]] = []
    for envelope in envelopes:
        previous = outcome[envelope.request_id]
        if previous is not None:
            log.warning("event=command_already_ran request_id=%s action=resend_result", envelope.request_id)
            messages.append((previous, envelope.reply_to))
            continue
        message = _run_one(envelope, queue, time.perf_counter())
        outcome[envelope.request_id] = message
        fresh.append(message)
        messages.append((message, envelope.reply_to))
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
    return len(messages)
