"""Default queue tasks: commands that need no engine and no ordering."""

from __future__ import annotations

from typing import Any

from celeryconfig import DEFAULT_QUEUE
from workers.app import app
from workers.commands import execute_batch


@app.task(name="workers.default.run_batch", ignore_result=True)
def run_batch(envelopes: list[dict[str, Any]]) -> int:
    return execute_batch(envelopes, DEFAULT_QUEUE)
