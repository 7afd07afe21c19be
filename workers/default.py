"""Default queue tasks: commands that need no engine and no ordering."""

from __future__ import annotations

from typing import Any

from hean.topology import BATCH_TASKS, DEFAULT_QUEUE
from workers.app import HeanTask, app
from workers.execution import answer_dropped_message, answer_failed_batch, execute_batch, until_committed


class BatchTask(HeanTask):
    def on_redelivery_exhausted(self, *args: Any, **kwargs: Any) -> Any:
        """Past the redelivery cap (the worker died running it each time): answer `dropped`."""
        answer_dropped_message(list(args), DEFAULT_QUEUE)


@app.task(name=BATCH_TASKS[DEFAULT_QUEUE], base=BatchTask, ignore_result=True)
def run_batch(envelopes: list[dict[str, Any]]) -> int:
    # Redis away or full: held here until it commits (see until_committed), never dropped
    try:
        return until_committed(lambda: execute_batch(envelopes, DEFAULT_QUEUE), lambda: None, DEFAULT_QUEUE)
    except Exception as exc:  # a bug in the batch's path: each command gets an answer
        answer_failed_batch(envelopes, DEFAULT_QUEUE, exc, undone=False)
        raise  # logged and reported, as a failed task is
