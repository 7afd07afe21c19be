"""Celery configuration: queues, routes, beat schedule and reliability knobs, in one place.

The names it uses (queues, tasks, the pulse period) live in hean/topology.py, which the web
and the workers import too; nothing imports this module but Celery and the workers.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from hean.config import get_settings
from hean.topology import (
    ALL_QUEUES,
    DEFAULT_QUEUE,
    ENGINE_OWNER_KEY,
    ENGINE_QUEUE,
    LLM_QUEUE,
    PULSE_PERIOD_S,
    PULSE_QUEUE,
    PULSE_TASK,
)

_settings = get_settings()

# -- queues ---------------------------------------------------------------------------------
# The nameless default exchange: kombu's Redis transport then pushes straight onto the queue's
# list, instead of first reading the exchange's binding table (one round trip per publish).
DIRECT = Exchange("")
# The pulse queue's messages are not acknowledged: a pulse lost with its worker is replaced by
# the next one 100 ms later (it would have expired by then), and kombu's bookkeeping of
# unacknowledged messages cost two Redis round trips per pulse (workers/transport.py).
task_queues = tuple(Queue(name, DIRECT, routing_key=name, no_ack=name == PULSE_QUEUE) for name in ALL_QUEUES)
task_default_queue = DEFAULT_QUEUE
task_default_exchange = ""
task_default_routing_key = DEFAULT_QUEUE

task_routes = {
    "workers.engine.*": {"queue": ENGINE_QUEUE, "routing_key": ENGINE_QUEUE},
    "workers.pulse.*": {"queue": PULSE_QUEUE, "routing_key": PULSE_QUEUE},
    "workers.llm.*": {"queue": LLM_QUEUE, "routing_key": LLM_QUEUE},
}

# -- broker and results ---------------------------------------------------------------------
broker_url = _settings.effective_redis_url()
result_backend = broker_url
broker_connection_retry_on_startup = True
# a worker waits for a lost broker for as long as it is away (Celery gives up after 100
# attempts and stops the worker, which supervisord then gives up on too), trying again on the
# schedule of workers.app.Consumer
broker_connection_max_retries = None
worker_consumer = "workers.app:Consumer"
# kombu's Redis transport, made to reconnect instead of dying when Redis goes away while a task
# is unacknowledged (see workers/transport.py). Other schemes (rediss, sentinel) keep kombu's own.
if broker_url.startswith("redis://"):
    broker_transport = "workers.transport:Transport"

# An acks_late task that runs past the visibility timeout is delivered twice: the broker, the
# result backend and every process must agree on one value.
# The engine queue's one consumer pops atomically (workers/transport.py: a message is never only
# in the consumer's memory), and an ordered queue takes no priorities: every priority maps onto
# each queue's one list.
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    "hean_atomic_queues": [ENGINE_QUEUE],
    # its one consumer is the engine shard's lease holder: only it puts back what its delivering
    # list holds that it was not delivered (a replaced worker's pops)
    "hean_atomic_owner_keys": {ENGINE_QUEUE: ENGINE_OWNER_KEY},
    "priority_steps": [0],
    # how often each consumer checks for messages whose holder died (workers/transport.py:
    # QoS.restore_visible; kombu's own visibility-timeout restore runs every 10th check)
    "unacked_restore_interval": 5,
}
result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout}
result_expires = _settings.result_expires

# -- serialization --------------------------------------------------------------------------
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# -- reliability ----------------------------------------------------------------------------
task_acks_late = True  # a task is acknowledged after it ran, so a crash re-delivers it
task_reject_on_worker_lost = True  # ... including a worker killed mid-task
worker_prefetch_multiplier = 1  # the engine worker holds at most one unacknowledged command
# A late-ack task still running when the broker connection drops runs to its end rather than
# being cancelled: its ack fails, the message comes back after the visibility timeout, and the
# journal resends its result instead of running it again (tests/test_broker_reconnect.py).
# Celery 6 turns this on by default; workers.app silences 5.x's warning about that change.
worker_cancel_long_running_tasks_on_connection_loss = False
# Redeliveries of one message are capped in workers.app (a poison command must not loop).
MAX_REDELIVERIES = 3

# -- monitoring (Flower) --------------------------------------------------------------------
worker_send_task_events = True
task_send_sent_event = True

# -- beat -----------------------------------------------------------------------------------
# Celery's PersistentScheduler, but the pulse goes out on a fixed-rate clock as a pre-built
# message with one LPUSH (about a twentieth of stock beat's CPU; see workers/beat.py).
beat_scheduler = "workers.beat:PulseScheduler"
beat_schedule_filename = str(_settings.home / "celerybeat-schedule")
beat_schedule = {
    "pulse": {
        "task": PULSE_TASK,
        "schedule": PULSE_PERIOD_S,
        # A pulse older than one period is useless: drop it rather than run it late.
        "options": {"expires": PULSE_PERIOD_S, "queue": PULSE_QUEUE},
    },
}

worker_hijack_root_logger = False
timezone = "UTC"
enable_utc = True
