"""Engine queue tasks: the one ordered consumer that owns this worker's C++ engine."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from celery.signals import worker_ready

from celeryconfig import ENGINE_QUEUE
from hean import _core
from hean.redis_client import sync_client
from workers.app import app
from workers.commands import NoParams, command, execute

log = logging.getLogger(__name__)

#: Where the engine worker publishes the engine's status for the health endpoint.
ENGINE_STATUS_KEY = "hean:engine:status"

_engine: _core.Engine | None = None
_engine_lock = threading.Lock()


def get_engine() -> _core.Engine:
    """This worker process's engine, created on first use (never shared across processes)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _core.Engine()
        return _engine


def engine_status() -> dict[str, Any]:
    engine = get_engine()
    return {
        "state": engine.state.name,
        "command_count": engine.command_count,
        "updated_at": time.time(),
    }


def publish_engine_status() -> dict[str, Any]:
    status = engine_status()
    sync_client().set(ENGINE_STATUS_KEY, json.dumps(status))
    return status


@command("start", description="Start the trading engine.")
def start(_: NoParams) -> dict[str, Any]:
    changed = get_engine().start()
    return {"changed": changed, **publish_engine_status()}


@command("stop", description="Stop the trading engine.")
def stop(_: NoParams) -> dict[str, Any]:
    changed = get_engine().stop()
    return {"changed": changed, **publish_engine_status()}


@app.task(name="workers.engine.run_command")
def run_command(envelope: dict[str, Any]) -> dict[str, Any]:
    return execute(envelope, ENGINE_QUEUE)


@app.task(name="workers.engine.ping")
def ping(sent_at: float | None = None) -> dict[str, Any]:
    """Round trip through the engine queue to this worker's C++ core (the health probe)."""
    engine = get_engine()
    return {
        "state": engine.state.name,
        "command_count": engine.command_count,
        "sent_at": sent_at,
        "answered_at": time.time(),
    }


@worker_ready.connect
def _announce_engine(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if ENGINE_QUEUE in queues:
        status = publish_engine_status()
        log.info("event=engine_ready state=%s", status["state"])
