"""The Celery app, configured from celeryconfig.py; tasks live in one module per queue."""

from __future__ import annotations

import functools
import logging
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from celery import Celery, Task, signals
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown
from celery.worker.consumer import Consumer as CeleryConsumer
from redis.exceptions import RedisError

from hean.celery_wire import LEASE_S, holder_id, lease_key
from hean.commands import load_command_modules
from hean.config import get_settings
from hean.logs import FailureLog

log = logging.getLogger(__name__)


def redeliveries_key(task_id: str) -> str:
    """Where a redelivered message's deliveries are counted (redeliveries_exhausted)."""
    return f"hean:redeliveries:{task_id}"


def _count_delivery(task: Any, key: str, ttl: int) -> int:
    with task.app.pool.acquire(block=True) as conn:
        pipe = conn.default_channel.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, ttl)
        return int(pipe.execute()[0])


#: How a redelivery is counted: INCR `key`, which expires `ttl` s later; the new count.
_counter: list[Callable[[Any, str, int], int]] = [_count_delivery]


def count_deliveries_with(counter: Callable[[Any, str, int], int]) -> None:
    """Count redeliveries with `counter` in this process: the engine worker counts under its
    lease (workers.engine.hold_the_shard), so that a replaced one counts nothing of the holder's."""
    _counter[0] = counter


def redeliveries_exhausted(task: Any, task_id: str | None, delivery_info: dict[str, Any] | None) -> bool:
    """Count a redelivered message's delivery (in Redis); True once it was delivered more than
    MAX_REDELIVERIES times again: a message that keeps killing its worker stops looping.
    Only redelivered messages pay for the bookkeeping; first deliveries cost nothing."""
    import celeryconfig

    if not (task_id and (delivery_info or {}).get("redelivered")):
        return False
    key = redeliveries_key(task_id)
    ttl = get_settings().visibility_timeout * (celeryconfig.MAX_REDELIVERIES + 2)
    try:
        redeliveries = _counter[0](task, key, ttl)
    except RedisError as exc:
        # Redis full or away: uncounted, it runs (the journal runs each command once);
        # failing here would drop the message, and with it commands already acked
        log.warning("event=redelivery_not_counted id=%s error=%s", task_id, type(exc).__name__)
        return False
    if redeliveries <= celeryconfig.MAX_REDELIVERIES:
        return False
    log.error(
        "event=task_dropped task=%s id=%s redeliveries=%d reason=max_redeliveries",
        task.name,
        task_id,
        redeliveries,
    )
    return True


#: How a worker's consumer tries a broker it lost again: after BROKER_RETRY_START_S, each wait
#: BROKER_RETRY_STEP_S longer, at most BROKER_RETRY_MAX_S. Celery's own schedule (kombu's: 2 s,
#: 2 s more each time, up to 30 s) kept the engine's results and the pulse stopped for up to
#: 30 s after Redis was back (10 s after a 20 s outage), while the web took commands again at
#: once. An attempt is one refused connect. The first comes later than the web process
#: subscribes again to the results' channel (web.bus.LISTEN_RETRY_S): after a restart of the
#: private Redis (back in well under a second) the web listens before a worker publishes.
BROKER_RETRY_START_S, BROKER_RETRY_STEP_S, BROKER_RETRY_MAX_S = 1.0, 0.5, 2.0


class Consumer(CeleryConsumer):
    """Celery's consumer (`worker_consumer` in celeryconfig.py), reconnecting to the broker on
    the BROKER_RETRY_* schedule, for as long as it takes, and logging an outage as FailureLog
    does (Celery logged every attempt in two lines)."""

    def ensure_connected(self, conn: Any) -> Any:
        # the class's own method (never a wrapper of an earlier call on the same connection)
        ensure, failures = functools.partial(type(conn).ensure_connection, conn), FailureLog(log)

        def failed(exc: Exception, interval: float) -> None:
            failures.failed("event=broker_unreachable error=%s retry_in_s=%.1f", exc, interval)

        def ensure_connection(errback: Any = None, max_retries: int | None = None, **options: Any) -> Any:
            # Celery's errback logs each attempt in two lines: `failed` logs as FailureLog does
            connected = ensure(
                failed,
                max_retries,
                interval_start=BROKER_RETRY_START_S,
                interval_step=BROKER_RETRY_STEP_S,
                interval_max=BROKER_RETRY_MAX_S,
                **options,
            )
            failures.recovered("event=broker_reconnected")
            return connected

        conn.ensure_connection = ensure_connection
        return super().ensure_connected(conn)


class HeanTask(Task):
    """Base task: caps redeliveries so a command that keeps killing its worker stops looping."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if redeliveries_exhausted(self, request.id, request.delivery_info):
            return self.on_redelivery_exhausted(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def on_redelivery_exhausted(self, *args: Any, **kwargs: Any) -> Any:
        """Called instead of the task body once the delivery cap is reached (a batch task
        answers its commands `dropped`: workers.default)."""
        return None


def inline_strategy(
    run: Callable[..., object],
    *,
    with_message: bool = False,
    events_every_s: float | None = None,
    failures_reported: bool = False,
    capped: bool = False,
    on_dropped: Callable[[list[Any]], object] | None = None,
    decode: Callable[[Any], Any] | None = None,
) -> Callable[..., Any]:
    """A Celery task strategy (`Task.Strategy`) that runs `run(headers, args)` in the consumer
    itself as the message arrives, then acknowledges it; an expired message is dropped unrun.

    Celery's default strategy builds a Request, hands it to the pool and traces it (signals,
    state, result handling, task events): for the background's tiny tasks that arrive ten
    times a second (the pulse, the engine ping) that costs more than the task, and for the
    engine worker's order batches it was half the worker's CPU (issue 14). What they lose:
    revokes, time limits, retries by `Task.retry` (an inline task holds its message and retries
    itself) and a pool (the pulse never overlaps, and the engine worker's solo pool runs
    everything in the consumer anyway). Options:

    - `events_every_s`: send the task events Flower reads (received, started, succeeded or
      failed) for one message in that many seconds, when the worker sends events at all (the
      first message is always shown; 0: every one); None sends none. They are sent once the
      task has run, stamped with the times it arrived and started: each is a round trip to
      Redis, and sent before, they started the shown pulse about 0.9 ms late at the median.
    - `failures_reported`: a task that raises sends Celery's `task_failure` signal, as a traced
      task does (the error analyzer listens to it); otherwise it is only logged.
    - `capped`: count redeliveries like `HeanTask` and drop a message past the cap, after
      `on_dropped(args)` (a batch answers its commands `dropped`).
    - `with_message`: call `run(headers, args, message)`, with kombu's message (its channel's
      QoS can acknowledge it within the task's own commit: workers/transport.py, `ack_within`).
    - `decode`: read the body as `decode(message)` (args, kwargs, embed) instead of kombu's
      `message.decode()`.

    A task that raises is logged and acknowledged, as Celery acknowledges a failed acks_late
    task; a run cut short by the worker stopping (a BaseException that is no Exception) is not
    acknowledged.
    """

    def strategy(task: Any, app: Any, consumer: Any, **_: Any) -> Callable[..., None]:
        errors = consumer.connection_errors
        eventer = consumer.event_dispatcher
        sampled = events_every_s is not None and eventer is not None and eventer.enabled and task.send_events
        last_shown = [float("-inf")]

        def send(kind: str, **fields: Any) -> None:  # Flower's view must never fail a task
            try:
                eventer.send(kind, **fields)
            except Exception as exc:
                log.warning("event=task_event_not_sent type=%s error=%s", kind, type(exc).__name__)

        def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **__: Any) -> None:
            headers = message.headers
            task_id = headers.get("id")
            shown, began, arrived = False, time.monotonic(), time.time()
            started, finished = arrived, True

            def received_and_started() -> None:  # after the run, at the times they happened
                send(
                    "task-received",
                    uuid=task_id,
                    name=task.name,
                    args=headers.get("argsrepr", ""),
                    kwargs=headers.get("kwargsrepr", ""),
                    root_id=headers.get("root_id"),
                    parent_id=headers.get("parent_id"),
                    retries=headers.get("retries", 0),
                    eta=None,
                    expires=headers.get("expires"),
                    timestamp=arrived,
                )
                send("task-started", uuid=task_id, timestamp=started)

            try:
                expires = headers.get("expires")
                if expires and datetime.fromisoformat(expires).timestamp() < time.time():
                    return
                if body is None:
                    body = decode(message) if decode is not None else message.decode()
                args, _kwargs, _embed = body
                if capped and redeliveries_exhausted(task, task_id, message.delivery_info):
                    if on_dropped is not None:
                        on_dropped(list(args))
                    return
                if sampled and began - last_shown[0] >= cast(float, events_every_s):
                    shown, last_shown[0] = True, began
                started = time.time()
                outcome = run(headers, list(args), message) if with_message else run(headers, list(args))
                if shown:
                    runtime = time.monotonic() - began
                    received_and_started()
                    send("task-succeeded", uuid=task_id, result=repr(outcome), runtime=runtime)
            except Exception as exc:  # a task's failure is logged; the consumer goes on
                log.exception("event=inline_task_failed task=%s id=%s", task.name, task_id)
                if shown:
                    received_and_started()
                    send("task-failed", uuid=task_id, exception=repr(exc), traceback="")
                if failures_reported:
                    signals.task_failure.send(
                        sender=task,
                        task_id=task_id,
                        exception=exc,
                        args=[],
                        kwargs={},
                        traceback=exc.__traceback__,
                        einfo=None,
                    )
            except BaseException:
                # not the task's failure: the worker stops mid-run (Celery's hard shutdown raises
                # WorkerTerminate wherever the main thread is). Unacknowledged, the message is
                # delivered again (the engine's batch, maybe half run, runs once by its journal)
                finished = False
                raise
            finally:
                if finished:
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
def _freeze_startup_objects(sender: Any = None, **_: Any) -> None:
    from hean.gc_policy import freeze_startup_objects

    freeze_startup_objects(str(getattr(sender, "hostname", "worker")))


@signals.beat_init.connect
def _freeze_beat_startup_objects(**_: Any) -> None:
    from hean.gc_policy import freeze_startup_objects

    freeze_startup_objects("beat")


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    from hean.core.system.probes import WORKER_HEARTBEATS_KEY
    from hean.redis_client import sync_client

    node = str(getattr(sender, "hostname", "worker"))

    def beat() -> None:
        failures = FailureLog(log)
        while not _heartbeat_stop.is_set():
            try:
                # and the lease of the messages this process holds (hean.celery_wire.HOLDERS_KEY)
                with sync_client().pipeline(transaction=False) as pipe:
                    pipe.hset(WORKER_HEARTBEATS_KEY, node, repr(time.time()))
                    pipe.set(lease_key(holder_id()), "1", ex=LEASE_S)
                    pipe.execute()
            except Exception as exc:  # Redis away: the pulse will notice; keep trying
                failures.failed(
                    "event=worker_heartbeat_failed error=%s", type(exc).__name__, level=logging.WARNING
                )
            else:
                failures.recovered("event=worker_heartbeat_recovered")
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
