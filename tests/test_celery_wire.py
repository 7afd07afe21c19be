"""hean.celery_wire: the batch messages HEAN pushes and reads are the ones Celery and kombu
themselves publish, for the installed versions (headers, properties and body)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from hean.celery_wire import MessageFrame, batch_envelopes, batch_frame, escape_envelope, task_marker
from hean.topology import BATCH_TASKS, ENGINE_QUEUE
from workers.app import app

TASK = BATCH_TASKS[ENGINE_QUEUE]
ENVELOPES = [
    {"request_id": 'r"1', "command": "stop", "params": {}},
    {"request_id": "r-2", "command": "submit_order", "params": {"symbol": "BTC/USDT", "note": "é\\n"}},
]


def ours(frame: MessageFrame, envelopes: list[dict[str, Any]]) -> str:
    return frame.message([escape_envelope(json.dumps(e)) for e in envelopes])


@pytest.fixture
def kombu_message(redis_client: redis.Redis, own_db_url: str) -> Iterator[tuple[str, str]]:
    """(task id, raw message) of the batch task as Celery + kombu publish it onto a real queue."""
    queue = f"wire-{uuid.uuid4().hex[:8]}"
    task_id = "batch-r-1-2"
    with app.connection_for_write(own_db_url) as connection:
        app.send_task(
            TASK,
            args=[ENVELOPES],
            task_id=task_id,
            queue=queue,
            routing_key=queue,
            exchange="",
            argsrepr="[commands: stop, submit_order]",
            kwargsrepr="{}",
            ignore_result=True,
            connection=connection,
        )
    raw = redis_client.rpop(queue)
    assert raw is not None, "kombu published nothing"
    yield task_id, raw.decode()


def test_our_message_is_the_one_celery_and_kombu_publish(kombu_message: tuple[str, str]) -> None:
    task_id, raw = kombu_message
    theirs = json.loads(raw)
    mine = json.loads(
        ours(
            batch_frame(
                app, TASK, theirs["properties"]["delivery_info"]["routing_key"], task_id, "stop, submit_order"
            ),
            ENVELOPES,
        )
    )
    # headers: every protocol-2 header, byte for byte
    assert mine["headers"] == theirs["headers"]
    # body: kombu base64-encodes it; ours is the same JSON text, unencoded
    assert theirs["properties"]["body_encoding"] == "base64"
    assert json.loads(base64.b64decode(theirs["body"])) == json.loads(mine["body"])
    # properties: the same but for the per-message delivery tag and what only a publish by
    # send_task carries (the body encoding, its options echoed, and the app's reply queue,
    # which a task that ignores its result never uses); any other change fails here
    only_theirs = {"body_encoding", "argsrepr", "kwargsrepr", "reply_to"}
    their_props = {k: v for k, v in theirs["properties"].items() if k not in {"delivery_tag", *only_theirs}}
    my_props = {k: v for k, v in mine["properties"].items() if k != "delivery_tag"}
    assert mine["properties"]["reply_to"] == ""
    my_props.pop("reply_to")
    assert my_props == their_props
    assert set(theirs["properties"]) - set(mine["properties"]) == only_theirs - {"reply_to"}
    assert {k: v for k, v in mine.items() if k not in ("headers", "body", "properties")} == {
        k: v for k, v in theirs.items() if k not in ("headers", "body", "properties")
    }


def test_both_encodings_read_back_as_the_envelopes(kombu_message: tuple[str, str]) -> None:
    task_id, raw = kombu_message
    assert batch_envelopes(raw) == ENVELOPES
    assert batch_envelopes(ours(batch_frame(app, TASK, ENGINE_QUEUE, task_id, "x"), ENVELOPES)) == ENVELOPES
    # the marker the engine worker's take script looks for is in both
    assert task_marker(TASK) in raw
    assert task_marker(TASK) in ours(batch_frame(app, TASK, ENGINE_QUEUE, task_id, "x"), ENVELOPES)
    assert task_marker(BATCH_TASKS["default"]) not in raw


def test_each_frame_gets_its_ids_summary_and_a_fresh_delivery_tag() -> None:
    first = json.loads(ours(batch_frame(app, TASK, ENGINE_QUEUE, "batch-a-1", "stop"), ENVELOPES))
    second = json.loads(ours(batch_frame(app, TASK, ENGINE_QUEUE, 'batch-"b-2', "a, b"), ENVELOPES))
    assert first["headers"]["id"] == first["properties"]["correlation_id"] == "batch-a-1"
    assert second["headers"]["id"] == second["headers"]["root_id"] == 'batch-"b-2'
    assert second["headers"]["argsrepr"] == "[commands: a, b]"
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    assert first["properties"]["delivery_info"] == {"exchange": "", "routing_key": ENGINE_QUEUE}


@pytest.mark.parametrize("raw", ["not json", "{}", '{"body": "[]"}', '{"body": "[1]"}'])
def test_a_message_that_is_not_a_batch_is_refused(raw: str) -> None:
    with pytest.raises((ValueError, KeyError, IndexError, TypeError)):
        batch_envelopes(raw)
