"""A project's own commands, registered the way users do it (HEAN_COMMAND_MODULES=custom_commands)."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hean.commands import CommandError, command, implements_many
from hean.topology import DEFAULT_QUEUE, ENGINE_QUEUE


class EchoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=100_000)
    times: int = Field(default=1, ge=1, le=10)


@command("echo", params=EchoParams, queue=DEFAULT_QUEUE, description="Repeat a text (test command).")
def echo(params: EchoParams) -> dict[str, Any]:
    return {"echo": params.text * params.times}


class NoCrashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = "custom_failure"


@command("always_fail", params=FailParams, queue=DEFAULT_QUEUE)
def always_fail(params: FailParams) -> None:
    """Fail with the given error code (test command)."""
    raise CommandError(params.code, f"failed on purpose with {params.code}")


class NapParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(gt=0, le=10)


@command("nap", params=NapParams, queue=DEFAULT_QUEUE)
def nap(params: NapParams) -> dict[str, Any]:
    """Sleep, then answer: a task still running when something breaks (test command)."""
    time.sleep(params.seconds)
    return {"slept": params.seconds}


@command("engine_nap", params=NapParams, queue=ENGINE_QUEUE)
def engine_nap(params: NapParams) -> dict[str, Any]:
    """Hold the engine queue's consumer mid-batch for a while (test command)."""
    time.sleep(params.seconds)
    return {"slept": params.seconds}


@command("crash", params=NoCrashParams, queue=DEFAULT_QUEUE)
def crash(params: NoCrashParams) -> None:
    """Raise something a command should not (test command): the command fails as
    `command_failed` and the exception goes to the error analyzer's llm queue."""
    raise RuntimeError("crashed on purpose")


@command("engine_exit", params=NoCrashParams, queue=ENGINE_QUEUE)
def engine_exit(params: NoCrashParams) -> None:
    """End the engine worker's process as it runs, as a command that keeps killing its worker
    would (a native crash, the OOM killer) (test command)."""
    os._exit(70)


def _raising(name: str, queue: str) -> None:
    """Declare command `name` on `queue`: run one by one it fails as `command_failed`, as any
    handler's bug does; run with the commands beside it (a many-handler), it raises past the
    handlers' own error handling, out of the whole batch, as a bug in the batch's path (or a
    MemoryError in the engine's core) would, after the batch may have run other commands."""

    def one(params: NoCrashParams) -> None:
        raise RuntimeError("raised on purpose")

    def many(params: list[dict[str, Any]]) -> list[Any]:
        raise RuntimeError("the batch path raised on purpose")

    described = "Raise out of its batch (test command)."
    command(name, params=NoCrashParams, queue=queue, description=described)(one)
    implements_many(name)(many)


_raising("engine_raise", ENGINE_QUEUE)
_raising("default_raise", DEFAULT_QUEUE)
