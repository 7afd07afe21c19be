"""The floor of a 100 ms Celery heartbeat: a bare celery beat sending a no-op task every 100 ms
to a solo worker, configured the way a Celery user would start (task events on, as Flower
needs them). Benchmarks start it with `spawn_bare_heartbeat` (`celery -A bare_beat worker|beat`
with REDIS_URL set), beside the HEAN processes they measure.

Its events and remote-control messages go to exchanges of their own, so HEAN's Flower, which
shares the Redis server, does not spend CPU on the floor's events. With BARE_BEAT_TIMES set, the
no-op task appends its start time to that Redis list (bench_pulse times its period the way it
times HEAN's pulse: start to start, in the worker).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

app = Celery("bare_beat", broker=os.environ["REDIS_URL"])
app.conf.update(
    task_default_queue="bare",
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_ignore_result=True,
    event_exchange="bare_celeryev",
    control_exchange="bare_control",
    beat_schedule={"noop": {"task": "bare_beat.noop", "schedule": 0.1, "options": {"expires": 0.1}}},
    beat_schedule_filename=os.path.join(os.environ.get("BARE_BEAT_HOME", "/tmp"), "bare-beat-schedule"),
    worker_hijack_root_logger=False,
)

_TIMES_KEY = os.environ.get("BARE_BEAT_TIMES", "")
_client = redis.Redis.from_url(os.environ["REDIS_URL"]) if _TIMES_KEY else None


@app.task(name="bare_beat.noop")
def noop() -> None:
    """Does nothing (but note when it started, if asked): what is left is Celery's own cost."""
    if _client is not None:
        _client.rpush(_TIMES_KEY, repr(time.time()))
