"""The Celery app, configured from celeryconfig.py; tasks live in one module per queue."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery, Task
from celery.signals import worker_ready

from hean.config import get_settings

log = logging.getLogger(__name__)


class HeanTask(Task):
    """Base task: caps redeliveries so a command that keeps killing its worker stops looping."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import celeryconfig

        request = self.request
        delivery_info = request.delivery_info or {}
        if request.id and delivery_info.get("redelivered"):
            # Only redelivered messages pay for the bookkeeping; first deliveries cost nothing.
            key = f"hean:redeliveries:{request.id}"
            ttl = get_settings().visibility_timeout * (celeryconfig.MAX_REDELIVERIES + 2)
            with self.app.pool.acquire(block=True) as conn:
                pipe = conn.default_channel.client.pipeline()
                pipe.incr(key)
                pipe.expire(key, ttl)
                redeliveries = int(pipe.execute()[0])
            if redeliveries > celeryconfig.MAX_REDELIVERIES:
                log.error(
                    "event=task_dropped task=%s id=%s redeliveries=%d reason=max_redeliveries",
                    self.name,
                    request.id,
                    redeliveries,
                )
                return self.on_redelivery_exhausted(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def on_redelivery_exhausted(self, *args: Any, **kwargs: Any) -> Any:
        """Called instead of the task body once the delivery cap is reached."""
        return None


#: Every worker writes hean:worker:<node name> = time every second (read by the pulse).
WORKER_HEARTBEAT_S = 1.0


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    from hean.core.system.probes import WORKER_HEARTBEAT_PREFIX
    from hean.redis_client import sync_client

    key = WORKER_HEARTBEAT_PREFIX + str(getattr(sender, "hostname", "worker"))

    def beat() -> None:
        while True:
            try:
                sync_client().set(key, repr(time.time()), ex=10)
            except Exception as exc:  # Redis away: the pulse will notice; keep trying
                log.warning("event=worker_heartbeat_failed error=%s", type(exc).__name__)
            time.sleep(WORKER_HEARTBEAT_S)

    threading.Thread(target=beat, name="hean-worker-heartbeat", daemon=True).start()


app = Celery("hean", task_cls=HeanTask)
app.config_from_object("celeryconfig")
app.conf.include = ["workers.engine", "workers.default", "workers.pulse"]
