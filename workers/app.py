"""The Celery app, configured from celeryconfig.py; tasks live in one module per queue."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import Celery, Task
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown
from redis.exceptions import RedisError

from hean.commands import load_command_modules
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
            try:
                with self.app.pool.acquire(block=True) as conn:
                    pipe = conn.default_channel.client.pipeline()
                    pipe.incr(key)
                    pipe.expire(key, ttl)
                    redeliveries = int(pipe.execute()[0])
            except RedisError as exc:
                # Redis full or away: uncounted, it runs (the journal runs each command once);
                # failing here would drop the message, and with it commands already acked
                log.warning("event=redelivery_not_counted id=%s error=%s", request.id, type(exc).__name__)
                redeliveries = 0
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


def inline_strategy(run: Callable[[dict[str, Any], list[Any]], None]) -> Callable[..., Any]:
    """A Celery task strategy (`Task.Strategy`) that runs `run(headers, args)` in the consumer
    itself as the message arrives, then acknowledges it; an expired message is dropped unrun.

    For the background's tiny tasks that arrive ten times a second (the pulse, the engine ping):
    Celery's default strategy builds a Request, hands it to the pool and traces it (signals,
    state, result handling), which cost more than the task. What they lose: task events (they
    send none anyway), revokes, time limits and a pool (the pulse already never overlaps, and
    the engine worker's solo pool runs everything in the consumer too). Errors are logged.
    """

    def strategy(task: Any, app: Any, consumer: Any, **_: Any) -> Callable[..., None]:
        errors = consumer.connection_errors

        def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **__: Any) -> None:
            headers = message.headers
            try:
                expires = headers.get("expires")
                if not (expires and datetime.fromisoformat(expires).timestamp() < time.time()):
                    args, _kwargs, _embed = body if body is not None else message.decode()
                    run(headers, list(args))
            except Exception:  # a task's failure is logged; the consumer goes on
                log.exception("event=inline_task_failed task=%s id=%s", task.name, headers.get("id"))
            finally:
                ack(log, errors)

        return handle

    return strategy


#: Every worker sets its field of the hash hean:workers (probes.WORKER_HEARTBEATS_KEY) to the
#: time every second (read by the pulse), and removes it on a warm shutdown: a worker that
#: disappears without one (killed) stays listed, DISCONNECTED, for the pulse to show.
WORKER_HEARTBEAT_S = 1.0
_heartbeat_stop = threading.Event()
_heartbeat: dict[str, Any] = {}  # this process's heartbeat: its node name and thread


@celeryd_after_setup.connect
def _quiet_cancel_warning(**_: Any) -> None:
    """Celery 5 warns at every reconnect while worker_cancel_long_running_tasks_on_connection_loss
    is off, which celeryconfig.py sets on purpose. Installed after Celery's logging setup, which
    makes its deprecation warnings "always" shown."""
    warnings.filterwarnings(
        "ignore",
        message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
        category=CPendingDeprecationWarning,
    )


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    from hean.core.system.probes import WORKER_HEARTBEATS_KEY
    from hean.redis_client import sync_client

    node = str(getattr(sender, "hostname", "worker"))

    def beat() -> None:
        while not _heartbeat_stop.is_set():
            try:
                sync_client().hset(WORKER_HEARTBEATS_KEY, node, repr(time.time()))
            except Exception as exc:  # Redis away: the pulse will notice; keep trying
                log.warning("event=worker_heartbeat_failed error=%s", type(exc).__name__)
            _heartbeat_stop.wait(WORKER_HEARTBEAT_S)

    thread = threading.Thread(target=beat, name="hean-worker-heartbeat", daemon=True)
    thread.start()
    _heartbeat.update(node=node, thread=thread)


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    """A clean shutdown: stop beating, then remove this worker so it is not reported as gone."""
    thread = _heartbeat.get("thread")
    if thread is None:
        return
    from hean.core.system.probes import WORKER_HEARTBEATS_KEY
    from hean.redis_client import sync_client

    _heartbeat_stop.set()
    thread.join(timeout=2 * WORKER_HEARTBEAT_S)  # let a beat in flight land before the removal
    try:
        sync_client().hdel(WORKER_HEARTBEATS_KEY, _heartbeat["node"])
    except Exception as exc:  # Redis away: the worker shows DISCONNECTED until retention ends
        log.warning("event=worker_heartbeat_not_removed error=%s", type(exc).__name__)


app = Celery("hean", task_cls=HeanTask)
app.config_from_object("celeryconfig")
# Imported by each worker at start (not by a process that only sends tasks, like the web).
app.conf.include = ["workers.engine", "workers.default", "workers.pulse", "workers.llm"]
load_command_modules()  # a project's own commands, named in HEAN_COMMAND_MODULES
