"""Group commit: while work arrives back to back, wait a moment so that what arrives meanwhile
shares the next commit; work that arrives alone never waits.

The engine worker (workers/shard.py) waits before taking its queue, the web process's command
writer (web/intake.py) before reserving and enqueueing a batch: at 1,000 single orders/s each
batch otherwise carries about one command and pays a whole batch's fixed cost (round trips,
an fsync wait, a Celery delivery) alone. Like PostgreSQL's commit_delay, it only applies while
the previous batch ended less than `window_s` ago.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class GroupCommit:
    """`wait()` before a batch, `done()` after it."""

    def __init__(
        self, linger_s: float, window_s: float, sleep: Callable[[float], object] | None = None
    ) -> None:
        self.linger_s, self.window_s = linger_s, window_s
        self._sleep = sleep
        self._last_end = float("-inf")

    def wait(self) -> float:
        """Wait `linger_s` if the previous batch ended within `window_s`; returns the wait."""
        if self.linger_s <= 0 or time.monotonic() - self._last_end > self.window_s:
            return 0.0
        # time.sleep looked up now: under eventlet (the web process) it is the green sleep
        (self._sleep or time.sleep)(self.linger_s)
        return self.linger_s

    def done(self) -> None:
        self._last_end = time.monotonic()
