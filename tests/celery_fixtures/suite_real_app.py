"""HEAN's own Celery app under Celery's pytest fixtures (`celery.contrib.pytest`): its
`celery_session_worker`, a real worker in this process, consuming the default queue of the real
app from a real Redis. Run by tests/test_celery_fixtures.py in a child pytest (REDIS_URL set
before anything imports the app, the plugin loaded with `-p celery.contrib.pytest`); not
collected by the main run (its name does not start with test_)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from celery import Celery

from hean.celery_wire import batch_frame
from hean.command_journal import CommandJournal
from hean.messages import envelope_json
from hean.redis_client import sync_client
from hean.topology import BATCH_TASKS, DEFAULT_QUEUE


@pytest.fixture(scope="session")
def celery_session_app() -> Celery:
    """HEAN's app (workers.app), not the fixtures' test app: its queues, routing, transport and
    batch task as `hean up` runs them."""
    from workers.app import app

    return app


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "solo"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    # the default queue only; the fixtures' ping task is not one of HEAN's
    return {"queues": (DEFAULT_QUEUE,), "perform_ping_check": False}


def _submit(app: Celery, command: str, params: str) -> str:
    """Enqueue `command` on the default queue as the web does: reserved in the journal and one
    broker message carrying its envelope."""
    journal = CommandJournal(sync_client())
    request_id = f"fixture-{uuid.uuid4().hex}"
    frame = batch_frame(app, BATCH_TASKS[DEFAULT_QUEUE], DEFAULT_QUEUE, uuid.uuid4().hex, command)
    envelope = envelope_json(request_id, command, params, None, time.time() * 1000)
    [reservation] = journal.reserve_and_enqueue([(request_id, command, envelope)], DEFAULT_QUEUE, frame)
    assert reservation.new, reservation
    return request_id


def _result(request_id: str, timeout: float = 30.0) -> dict[str, Any]:
    journal = CommandJournal(sync_client())
    deadline = time.monotonic() + timeout
    while (record := journal.get(request_id)) is None or record.get("result") is None:
        assert time.monotonic() < deadline, f"no result for {request_id}: {record}"
        time.sleep(0.02)
    result: dict[str, Any] = record["result"]
    return result


def test_a_command_runs_on_celerys_session_worker_and_its_result_is_journaled(
    celery_session_app: Celery, celery_session_worker: Any
) -> None:
    request_id = _submit(celery_session_app, "list_commands", "{}")
    result = _result(request_id)
    assert result["success"] is True, result
    names = {command["name"] for command in result["result"]["commands"]}
    assert {"submit_order", "list_commands", "start"} <= names, names


def test_a_command_the_default_queue_does_not_run_is_answered_unknown_there(
    celery_session_app: Celery, celery_session_worker: Any
) -> None:
    """An engine command put on the default queue (no web would): answered, not run, not lost."""
    request_id = _submit(celery_session_app, "start", "{}")
    result = _result(request_id)
    assert result["success"] is False and result["error"]["code"] == "unknown_command", result
