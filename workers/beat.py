"""celery beat's scheduler for HEAN (`beat_scheduler` in celeryconfig.py): the 100 ms pulse on
a fixed-rate clock, each pulse pushed as a pre-built message with one LPUSH.

Why: stock celery beat spent about 9% of a core on a 100 ms entry (benchmarks/bench_idle.py:
its bare floor), nearly all of it Python around the send: `is_due` and `_when` through timezone
-aware datetimes two or three times per pulse (it wakes 10 ms early by design, then again),
`apply_async` building the message and kombu publishing it (about a millisecond). This
scheduler keeps celery beat, its entry in `beat_schedule` and its remote control, and changes
only the pulse entries' send path:

- the message is rendered from a template that Celery's own `as_task_v2` built once
  (hean.celery_wire.task_message; tests/test_celery_wire.py compares it with Celery's publish)
  and pushed with one LPUSH onto the queue's list, as kombu's Redis transport would;
- sends follow a fixed-rate clock (time.monotonic: start + n * period), where stock beat
  schedules the next run from the last send and so drifts later by the send's own time; a
  send more than a period late is skipped (the pulse would have expired), not caught up;
- each pulse is sent PULSE_LEAD_S before its slot on that clock, with the slot as its argument
  and `expires` the entry's expiry (one period) after it (after the send, when beat itself was
  late): the pulse worker begins it at the slot (workers/pulse.py), so that Redis's fsync
  stalls and the worker's wake-up, when shorter than the lead, no longer move the pulse's start;
- it wakes once per pulse, exactly when one is due; any other entry still goes through Celery's
  own path (`PersistentScheduler.tick`), asked only when that path said it would be due;
- the LPUSH's reply is read just before the next send, not waited for (hean.redis_client.
  SendAhead): beat wakes once per pulse, for its timer, instead of twice; a refused or failed
  send is logged one period later.

Every PULSE_SHOWN_EVERY-th pulse is sent as PULSE_TASK, which sends task events, and the others
as QUIET_PULSE_TASK, the same pulse without: Flower shows the pulse queue's tasks without
digesting thirty events a second (workers/pulse.py).
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from celery.beat import PersistentScheduler
from redis.exceptions import RedisError

from hean.celery_wire import TaskMessage, task_message
from hean.redis_client import SendAhead, sync_client
from hean.topology import PULSE_LEAD_S, PULSE_SHOWN_EVERY, PULSE_TASK, QUIET_PULSE_TASK

log = logging.getLogger(__name__)

#: How long Celery's own path is left unasked at most (its entries, if any, are checked then).
OTHER_ENTRIES_MAX_WAIT_S = 1.0


@dataclass
class FixedRateEntry:
    """A pulse entry of `beat_schedule`: its messages, period and expiry, and the next send."""

    name: str
    period: float
    expires: float | None
    quiet: TaskMessage
    shown: TaskMessage
    next_at: float  # the next pulse's slot (time.monotonic); it is sent PULSE_LEAD_S before
    sender: SendAhead
    sent: int = 0

    def send(self, now: float) -> None:
        """Push the pulse of the slot `next_at` (every PULSE_SHOWN_EVERY-th as the task Flower
        shows), its slot as its argument; raises what the previous push's reply raised."""
        message = self.shown if self.sent % PULSE_SHOWN_EVERY == 0 else self.quiet
        self.sent += 1
        wall = time.time()
        slot = wall + (self.next_at - now)  # the slot on the wall clock the worker reads
        # sent late (beat itself held up past the slot), it still has its whole expiry to arrive
        expires = None if self.expires is None else max(slot, wall) + self.expires
        task_id = str(uuid.uuid4())
        self.sender.send("LPUSH", message.queue, message.render(task_id, expires, (round(slot, 6),)))


class PulseScheduler(PersistentScheduler):
    """PersistentScheduler whose pulse entries (task PULSE_TASK, a period in seconds) are sent
    on a fixed-rate clock as pre-built messages; every other entry is Celery's as before."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        now = time.monotonic()
        self._fixed: list[FixedRateEntry] = []
        for name, entry in self.schedule.items():
            run_every = getattr(entry.schedule, "run_every", None)
            if entry.task != PULSE_TASK or run_every is None:
                continue
            options = dict(entry.options or {})
            queue = str(options.get("queue") or self.app.conf.task_default_queue)
            expires = options.get("expires")
            self._fixed.append(
                FixedRateEntry(
                    name=name,
                    period=run_every.total_seconds(),
                    expires=None if expires is None else float(expires),
                    quiet=task_message(self.app, QUIET_PULSE_TASK, queue, celery_beat_task=True),
                    shown=task_message(self.app, PULSE_TASK, queue, celery_beat_task=True),
                    next_at=now + PULSE_LEAD_S,
                    sender=SendAhead(sync_client()),
                )
            )
        self._others_at = now
        self._failing = False

    def populate_heap(self, *args: Any, **kwargs: Any) -> None:
        """Celery's heap, without the entries this scheduler sends itself."""
        super().populate_heap(*args, **kwargs)
        fixed = {entry.name for entry in getattr(self, "_fixed", [])}
        heap: list[Any] = list(getattr(self, "_heap", None) or [])
        if fixed and heap:
            heap = [event for event in heap if event[2].name not in fixed]
            heapq.heapify(heap)
            self._heap = heap

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send what is due; return how long to sleep until something is due again."""
        now = time.monotonic()
        wait = OTHER_ENTRIES_MAX_WAIT_S
        if now >= self._others_at:
            wait = min(wait, max(0.0, float(super().tick(*args, **kwargs))))
            self._others_at = now + wait
        wait = max(0.0, min(wait, self._others_at - now))
        for entry in self._fixed:
            if now >= entry.next_at - PULSE_LEAD_S:
                self._send(entry, now)
                # the next slot of the fixed-rate clock; a slot already past is skipped
                entry.next_at += entry.period
                if entry.next_at <= now:
                    entry.next_at = now + entry.period - (now - entry.next_at) % entry.period
            wait = min(wait, entry.next_at - PULSE_LEAD_S - now)
        return max(wait, 0.0)

    def close(self) -> None:
        for entry in getattr(self, "_fixed", []):
            entry.sender.close()
        super().close()

    def _send(self, entry: FixedRateEntry, now: float) -> None:
        try:
            entry.send(now)
        except (RedisError, OSError) as exc:  # Redis away: the pulse stops until it is back
            if not self._failing:
                log.error("event=pulse_not_sent entry=%s error=%s", entry.name, exc)
            self._failing = True
            return
        if self._failing:
            log.warning("event=pulse_sending_again entry=%s", entry.name)
        self._failing = False

    @property
    def info(self) -> str:
        pulses = ", ".join(
            f"{name} every {float(entry['schedule']) * 1000:.0f} ms"
            for name, entry in (self.app.conf.beat_schedule or {}).items()
            if entry.get("task") == PULSE_TASK and isinstance(entry.get("schedule"), int | float)
        )
        return f"{super().info}\n    . fixed-rate -> {pulses or 'none'}"
