"""web.intake.celery_frame: the cached message frame is what Celery's own as_task_v2 builds."""

from __future__ import annotations

import json

from web.intake import celery_frame
from workers import app


def message(frame: object, envelopes: list[dict[str, object]]) -> dict[str, object]:
    escaped = ",".join(json.dumps(json.dumps(e))[1:-1] for e in envelopes)
    text = f'{frame.prefix}"{frame.body_head}{escaped}{frame.body_tail}"{frame.suffix}'  # type: ignore[attr-defined]
    return json.loads(text)  # type: ignore[no-any-return]


def test_the_cached_frame_matches_a_fresh_celery_message() -> None:
    envelopes = [{"request_id": 'r"1', "command": "stop", "params": {}}]
    first = message(celery_frame(app, "workers.engine.run_batch", "engine", "batch-a-1", "stop"), envelopes)
    second = message(celery_frame(app, "workers.engine.run_batch", "engine", 'batch-"b-2', "a, b"), envelopes)
    fresh = app.amqp.as_task_v2(
        "batch-a-1", "workers.engine.run_batch", args=(), kwargs={},
        argsrepr="[commands: stop]", kwargsrepr="{}", ignore_result=True,
    )
    assert first["headers"] == fresh.headers
    assert json.loads(first["body"])[0] == [envelopes]  # type: ignore[arg-type]
    props = first["properties"]
    assert props["correlation_id"] == "batch-a-1"  # type: ignore[index]
    assert props["delivery_info"] == {"exchange": "", "routing_key": "engine"}  # type: ignore[index]
    # per message: the ids and summary substituted (JSON-escaped), and a fresh delivery tag
    assert second["headers"]["id"] == second["headers"]["root_id"] == 'batch-"b-2'  # type: ignore[index]
    assert second["headers"]["argsrepr"] == "[commands: a, b]"  # type: ignore[index]
    assert props["delivery_tag"] != second["properties"]["delivery_tag"]  # type: ignore[index]
