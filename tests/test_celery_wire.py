"""hean.celery_wire: the batch messages HEAN pushes and reads, and the pulse and ping messages
that beat and the pulse push, are the ones Celery and kombu themselves publish, for the
installed versions (headers, properties and body)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from hean.celery_wire import (
    IDS_FIELD,
    MessageFrame,
    batch_envelopes,
    batch_frame,
    delivery_tag,
    escape_envelope,
    task_marker,
    task_message,
)
from hean.topology import BATCH_TASKS, ENGINE_PING_TASK, ENGINE_QUEUE, PULSE_TASK, QUIET_PULSE_TASK
from workers.app import app

TASK = BATCH_TASKS[ENGINE_QUEUE]
ENVELOPES = [
    {"request_id": 'r"1', "command": "stop", "params": {}},
    {"request_id": "r-2", "command": "submit_order", "params": {"symbol": "BTC/USDT", "note": "é\\n"}},
]


def ours(frame: MessageFrame, envelopes: list[dict[str, Any]], ids: Sequence[str] = ()) -> str:
    return frame.message([escape_envelope(json.dumps(e)) for e in envelopes], ids)


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
    frame = batch_frame(
        app, TASK, theirs["properties"]["delivery_info"]["routing_key"], task_id, "stop, submit_order"
    )
    mine = json.loads(ours(frame, ENVELOPES))
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
    # and one field kombu and Celery do not know and ignore: the request ids, for Lua to read
    assert mine.pop(IDS_FIELD) == ""
    assert next(iter(json.loads(ours(frame, ENVELOPES[1:], ["r-2"])).items())) == (IDS_FIELD, "r-2")
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


def test_delivery_tags_differ_between_messages_processes_and_forked_children() -> None:
    """kombu keys the unacknowledged messages of every consumer by their tags: a repeated tag
    would make one message's acknowledgement take away another's."""
    mine = [delivery_tag() for _ in range(10_000)]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a forked web or worker process: a prefix of its own
        os.write(write, json.dumps([delivery_tag() for _ in range(100)]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        forked = json.loads(pipe.read())
    os.waitpid(child, 0)
    elsewhere = subprocess.run(
        [sys.executable, "-c", "from hean.celery_wire import delivery_tag; print(delivery_tag())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tags = [*mine, *forked, elsewhere]
    assert len(set(tags)) == len(tags)
    assert len({tag.rsplit("-", 1)[0] for tag in tags}) == 3  # one prefix per process
    assert delivery_tag() not in tags


@pytest.mark.parametrize("raw", ["not json", "{}", '{"body": "[]"}', '{"body": "[1]"}'])
def test_a_message_that_is_not_a_batch_is_refused(raw: str) -> None:
    with pytest.raises((ValueError, KeyError, IndexError, TypeError)):
        batch_envelopes(raw)


# -- the small messages of the background: beat's pulse, the pulse's ping of the engine --------


def _published(redis_client: redis.Redis, own_db_url: str, task: str, **options: Any) -> dict[str, Any]:
    """The message Celery + kombu publish for `task` onto a fresh queue, decoded."""
    queue = f"wire-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write(own_db_url) as connection:
        app.send_task(
            task,
            queue=queue,
            routing_key=queue,
            exchange="",
            ignore_result=True,
            connection=connection,
            **options,
        )
    raw = redis_client.rpop(queue)
    assert raw is not None, "kombu published nothing"
    return dict(json.loads(raw), queue=queue)


@pytest.mark.parametrize(
    ("task", "args", "headers"),
    [
        # beat's pulse: no arguments, beat's own header (celery.beat.Scheduler.apply_async adds it)
        (PULSE_TASK, [], {"celery_beat_task": True}),
        (QUIET_PULSE_TASK, [], {"celery_beat_task": True}),
        # the pulse's ping of the engine worker: when it was sent, where to answer
        (ENGINE_PING_TASK, [1764659000.25, 'hean:pong:"quoted"é'], {}),
    ],
)
def test_a_rendered_task_message_is_the_one_celery_and_kombu_publish(
    redis_client: redis.Redis, own_db_url: str, task: str, args: list[Any], headers: dict[str, Any]
) -> None:
    task_id = str(uuid.uuid4())
    expires = datetime.now(UTC) + timedelta(seconds=0.1)
    theirs = _published(
        redis_client, own_db_url, task, args=args, task_id=task_id, expires=expires, headers=headers or None
    )
    template = task_message(app, task, theirs.pop("queue"), **headers)
    mine = json.loads(template.render(task_id, expires.timestamp(), args))
    assert mine["headers"] == theirs["headers"]
    assert mine["headers"]["expires"] == expires.isoformat()
    assert json.loads(mine["body"]) == json.loads(base64.b64decode(theirs["body"]))
    # besides what the batch test names: `expiration`, the AMQP per-message TTL that send_task
    # derives from `expires`, which kombu's Redis transport never reads (the worker reads the
    # `expires` header)
    only_theirs = {"body_encoding", "reply_to", "delivery_tag", "expiration"}
    assert {k: v for k, v in mine["properties"].items() if k not in only_theirs} == {
        k: v for k, v in theirs["properties"].items() if k not in only_theirs
    }
    assert {k: v for k, v in mine.items() if k not in ("headers", "body", "properties")} == {
        k: v for k, v in theirs.items() if k not in ("headers", "body", "properties")
    }


def test_each_rendered_message_gets_its_own_id_expiry_arguments_and_delivery_tag() -> None:
    template = task_message(app, ENGINE_PING_TASK, ENGINE_QUEUE)
    first = json.loads(template.render("ping-1", 1764659000.5, [1.0, "hean:pong:a"]))
    second = json.loads(template.render("ping-2", None, ["__HEAN_TASK_ID__"]))
    assert (
        first["headers"]["id"]
        == first["headers"]["root_id"]
        == first["properties"]["correlation_id"]
        == "ping-1"
    )
    assert first["headers"]["expires"] == "2025-12-02T07:03:20.500000+00:00"
    assert json.loads(first["body"])[0] == [1.0, "hean:pong:a"]
    assert second["headers"]["id"] == "ping-2" and second["headers"]["expires"] is None
    # an argument that looks like a placeholder is carried as it is
    assert json.loads(second["body"])[0] == ["__HEAN_TASK_ID__"]
    assert second["headers"]["argsrepr"] == "['__HEAN_TASK_ID__']"
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    assert first["properties"]["delivery_info"] == {"exchange": "", "routing_key": ENGINE_QUEUE}
