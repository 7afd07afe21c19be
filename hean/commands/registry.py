"""The command registry: every command has a name, a params schema, a queue and, in the
worker that consumes that queue, a handler.

The web process validates against the specs here before enqueuing, without importing any
worker code; a worker binds handlers to the built-in commands with `implements`. Projects add
their own commands with `command` in a module named in HEAN_COMMAND_MODULES (imported by the
web process and every worker), and they appear in `list_commands`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from hean.config import get_settings
from hean.messages import NAME_PATTERN
from hean.topology import BATCH_TASKS, ENGINE_QUEUE

Handler = Callable[[Any], Any]
H = TypeVar("H", bound=Handler)
#: What a run of one command's invocations yields, per invocation: (result, None) or (None,
#: error as a dict: code, message, field).
Outcome = tuple[Any, dict[str, Any] | None]
#: Runs consecutive invocations of one command at once, from their params as the edge validated
#: them (JSON); raises `RunRefused`, having changed nothing, when it cannot.
ManyHandler = Callable[[list[dict[str, Any]]], list[Outcome]]
M = TypeVar("M", bound=ManyHandler)


class RunRefused(Exception):
    """A many-handler cannot take this run (nothing was changed): run it one by one instead."""


class NoParams(BaseModel):
    """Params schema of a command that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class CommandSpec:
    """A command's contract: its params schema and queue; `handler` is set only in a worker
    that runs it (None in the web process for the built-in commands)."""

    name: str
    params: type[BaseModel]
    queue: str
    description: str
    handler: Handler | None = None
    #: Optional: runs consecutive invocations at once (e.g. single orders as one core batch).
    many: ManyHandler | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queue": self.queue,
            "description": self.description,
            "params": self.params.model_json_schema(),
        }


_REGISTRY: dict[str, CommandSpec] = {}


def declare(
    name: str, *, params: type[BaseModel] = NoParams, queue: str = ENGINE_QUEUE, description: str
) -> None:
    """Declare command `name` (its contract, no handler yet: see `implements`)."""
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"command name {name!r} must match {NAME_PATTERN}")
    if queue not in BATCH_TASKS:
        raise ValueError(f"command {name!r}: queue must be one of {sorted(BATCH_TASKS)}")
    existing = _REGISTRY.get(name)
    if existing is not None and (existing.params, existing.queue) != (params, queue):
        raise ValueError(f"command {name!r} is already registered")
    if existing is None:
        _REGISTRY[name] = CommandSpec(name, params, queue, description)


def implements(name: str) -> Callable[[H], H]:
    """Bind `handler(params) -> JSON-serializable result` to the declared command `name`.

    The handler runs in a worker consuming the command's queue; raise
    `hean.messages.CommandError` to fail with a stable error code.
    """

    def bind(handler: H) -> H:
        spec = _REGISTRY.get(name)
        if spec is None:
            raise ValueError(f"command {name!r} is not declared")
        if spec.handler is not None and spec.handler.__qualname__ != handler.__qualname__:
            raise ValueError(f"command {name!r} already has a handler ({spec.handler.__qualname__})")
        _REGISTRY[name] = replace(spec, handler=handler)
        return handler

    return bind


def implements_many(name: str) -> Callable[[M], M]:
    """Bind a handler that runs consecutive invocations of the declared command `name` at once.

    Given each invocation's params as JSON (validated at the edge, not again), it returns one
    Outcome per invocation, in order, each exactly what the one-by-one handler would have
    given; or raises RunRefused, having changed nothing, and the run goes one by one.
    """

    def bind(handler: M) -> M:
        spec = _REGISTRY.get(name)
        if spec is None:
            raise ValueError(f"command {name!r} is not declared")
        _REGISTRY[name] = replace(spec, many=handler)
        return handler

    return bind


def command(
    name: str,
    *,
    params: type[BaseModel] = NoParams,
    queue: str = ENGINE_QUEUE,
    description: str = "",
) -> Callable[[H], H]:
    """Declare command `name` and bind the decorated handler to it, in one step (a project's
    own commands). The description defaults to the handler docstring's first line."""

    def register(handler: H) -> H:
        summary = description or next(iter((handler.__doc__ or "").strip().splitlines()), "")
        declare(name, params=params, queue=queue, description=summary)
        return implements(name)(handler)

    return register


def get_command(name: str) -> CommandSpec | None:
    return _REGISTRY.get(name)


def command_names() -> list[str]:
    return sorted(_REGISTRY)


def describe_commands() -> list[dict[str, Any]]:
    """Every command's name, queue, description and params JSON schema (with its bounds)."""
    return [_REGISTRY[name].describe() for name in command_names()]


def load_command_modules() -> None:
    """Import the project modules named in HEAN_COMMAND_MODULES (they register commands)."""
    for module in get_settings().command_module_list:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f"HEAN_COMMAND_MODULES names {module!r}, which cannot be imported: {exc}"
            ) from exc
