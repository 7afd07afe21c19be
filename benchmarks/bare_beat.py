"""The floor of a 100 ms Celery heartbeat: a bare celery beat sending a no-op task every 100 ms
to a solo worker, configured the way a Celery user would start (task events on, as Flower
needs them). Benchmarks start it with `celery -A bare_beat worker|beat` and REDIS_URL set."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bare_beat", broker=os.environ["REDIS_URL"])
app.conf.update(
    task_default_queue="bare",
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_ignore_result=True,
    beat_schedule={"noop": {"task": "bare_beat.noop", "schedule": 0.1, "options": {"expires": 0.1}}},
    beat_schedule_filename=os.path.join(os.environ.get("BARE_BEAT_HOME", "/tmp"), "bare-beat-schedule"),
    worker_hijack_root_logger=False,
)


@app.task(name="bare_beat.noop")
def noop() -> None:
    """Does nothing: what is left is Celery's own cost of a 100 ms heartbeat."""
