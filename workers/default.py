"""Default queue tasks: commands that need no engine and no ordering."""

from __future__ import annotations

from typing import Any, Final

from hean.command_journal import HistoryUnavailable
from hean.redis_client import TRANSIENT_ERRORS
from hean.topology import BATCH_TASKS, DEFAULT_QUEUE
from workers.app import HeanTask, app
from workers.execution import answer_dropped_message, answer_failed_batch, execute_batch, until_committed

#: What a batch waits out, holding its message (as the engine's do): Redis away, restarting or
#: full, or the database unreadable when a command left the window (whether it ran before, only
#: the database can say). Answering such a batch "failed" needed the database too: its commands
#: stayed unanswered.
BATCH_RETRIED_ON: Final = (*TRANSIENT_ERRORS, HistoryUnavailable)


class BatchTask(HeanTask):
    def on_redelivery_exhausted(self, *args: Any, **kwargs: Any) -> Any:
        """Past the redelivery cap (the worker died running it each time): answer `dropped`."""
        answer_dropped_message(list(args), DEFAULT_QUEUE)


@app.task(name=BATCH_TASKS[DEFAULT_QUEUE], base=BatchTask, ignore_result=True)
def run_batch(envelopes: list[dict[str, Any]]) -> int:
    # Redis away or full, the database unreadable: held here until it commits (see
    # until_committed), never dropped
    try:
        return until_committed(
            lambda: execute_batch(envelopes, DEFAULT_QUEUE), lambda: None, DEFAULT_QUEUE, BATCH_RETRIED_ON
        )
    except Exception as exc:  # a bug in the batch's path: each command gets an answer
        answer_failed_batch(envelopes, DEFAULT_QUEUE, exc, undone=False)
        raise  # logged and reported, as a failed task is
