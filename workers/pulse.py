"""Pulse queue tasks: the heartbeat that celery beat sends every 100 ms."""

from __future__ import annotations

import time

from hean.redis_client import sync_client
from workers.app import app

#: The time of the last pulse the pulse worker ran, for the health endpoint.
PULSE_KEY = "hean:pulse:last"


@app.task(name="workers.pulse.pulse", ignore_result=True)
def pulse() -> None:
    sync_client().set(PULSE_KEY, repr(time.time()))
