"""Default queue tasks: commands that need no engine and no ordering."""

from __future__ import annotations

from typing import Any

from celeryconfig import DEFAULT_QUEUE
from workers.app import app
from workers.commands import execute


@app.task(name="workers.default.run_command")
def run_command(envelope: dict[str, Any]) -> dict[str, Any]:
    return execute(envelope, DEFAULT_QUEUE)
