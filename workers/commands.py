"""The command registry: every control command has a name, a params schema and a queue.

Projects add their own with the `command` decorator; the web process validates against
this registry before anything is enqueued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from celeryconfig import DEFAULT_QUEUE, ENGINE_QUEUE
from hean.messages import CommandResult, ErrorInfo, TaskEnvelope

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


#: The Celery task that runs commands for each queue (its route is declared in celeryconfig).
TASK_FOR_QUEUE = {
    ENGINE_QUEUE: "workers.engine.run_command",
    DEFAULT_QUEUE: "workers.default.run_command",
}

_REGISTRY: dict[str, CommandSpec] = {}


def command(
    name: str,
    *,
    params: type[BaseModel] = NoParams,
    queue: str = ENGINE_QUEUE,
    description: str = "",
) -> Callable[[Handler], Handler]:
    """Register `handler(params_model_instance) -> JSON-serializable result` as command `name`."""
    if queue not in TASK_FOR_QUEUE:
        raise ValueError(f"command {name!r}: queue must be one of {sorted(TASK_FOR_QUEUE)}")

    def register(handler: Handler) -> Handler:
        if name in _REGISTRY and _REGISTRY[name].handler is not handler:
            raise ValueError(f"command {name!r} is already registered")
        summary = description or next(iter((handler.__doc__ or "").strip().splitlines()), "")
        _REGISTRY[name] = CommandSpec(name, params, queue, handler, summary)
        return handler

    return register


def get_command(name: str) -> CommandSpec | None:
    return _REGISTRY.get(name)


def command_names() -> list[str]:
    return sorted(_REGISTRY)


def execute(envelope_data: dict[str, Any], queue: str) -> dict[str, Any]:
    """Run one enqueued command and send its result to the client that asked for it."""
    from workers.emit import emit

    started = time.perf_counter()
    envelope = TaskEnvelope.model_validate(envelope_data)
    spec = _REGISTRY.get(envelope.command)
    result: Any = None
    error: ErrorInfo | None = None
    if spec is None or spec.queue != queue:
        error = ErrorInfo(code="unknown_command", message=f"no command {envelope.command!r} here")
    else:
        try:
            result = spec.handler(spec.params.model_validate(envelope.params))
        except ValidationError as exc:
            first = exc.errors()[0]
            error = ErrorInfo(
                code="invalid_params",
                message=first["msg"],
                field=".".join(str(p) for p in first["loc"]) or None,
            )
        except Exception as exc:  # a failing command is reported, never kills the worker
            log.exception(
                "event=command_failed command=%s request_id=%s", spec.name, envelope.request_id
            )
            error = ErrorInfo(code="command_failed", message=f"{type(exc).__name__}: {exc}")
    message = CommandResult(
        request_id=envelope.request_id,
        command=envelope.command,
        success=error is None,
        result=result,
        error=error,
        execution_time_ms=round((time.perf_counter() - started) * 1000.0, 3),
    ).model_dump(mode="json")
    if envelope.reply_to:
        emit("command_result", message, to=envelope.reply_to)
    return message
