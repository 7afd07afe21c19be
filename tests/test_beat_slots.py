"""Beat's pulse entries (workers/beat.py) against a real Redis: each pulse is pushed with its slot
on the fixed-rate clock as its argument, PULSE_LEAD_S before that slot, and expires one period
after it; one sent after its slot (beat itself held up) still has a whole period to arrive."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
import redis

from hean.celery_wire import task_message
from hean.redis_client import SendAhead
from hean.topology import PULSE_LEAD_S, PULSE_PERIOD_S, PULSE_TASK, QUIET_PULSE_TASK
from workers.app import app
from workers.beat import FixedRateEntry


def make_entry(own_db_url: str, queue: str, next_at: float) -> FixedRateEntry:
    return FixedRateEntry(
        name="pulse",
        period=PULSE_PERIOD_S,
        expires=PULSE_PERIOD_S,
        quiet=task_message(app, QUIET_PULSE_TASK, queue, celery_beat_task=True),
        shown=task_message(app, PULSE_TASK, queue, celery_beat_task=True),
        next_at=next_at,
        sender=SendAhead(redis.Redis.from_url(own_db_url)),
    )


def pushed(redis_client: redis.Redis, queue: str) -> tuple[float, float, dict[str, Any]]:
    """The slot argument, the expiry (epoch s) and the headers of the message `queue` holds."""
    raw = redis_client.rpop(queue)
    assert raw is not None, "beat pushed nothing"
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(message["body"])
    headers = message["headers"]
    return float(args[0]), datetime.fromisoformat(headers["expires"]).timestamp(), headers


@pytest.mark.parametrize("late_s", [0.0, 0.25])
def test_a_pulse_carries_its_slot_and_expires_a_period_after_it_or_after_a_late_send(
    own_db_url: str, redis_client: redis.Redis, late_s: float
) -> None:
    queue = f"beat-slots-{uuid.uuid4().hex[:8]}"
    now = time.monotonic()
    # the slot is PULSE_LEAD_S ahead (the send on time), or late_s behind (beat held up)
    next_at = now + PULSE_LEAD_S if late_s == 0 else now - late_s
    entry = make_entry(own_db_url, queue, next_at)
    wall_before = time.time()
    entry.send(now)
    entry.sender.close()
    wall_after = time.time()
    slot, expires, headers = pushed(redis_client, queue)
    assert headers["task"] == PULSE_TASK  # the first pulse of an entry is the one Flower shows
    assert headers["argsrepr"] == repr([round(slot, 6)])
    # the slot on the wall clock: where next_at is on the monotonic one
    assert wall_before + (next_at - now) - 0.005 <= slot <= wall_after + (next_at - now) + 0.005
    if late_s == 0:
        assert expires == pytest.approx(slot + PULSE_PERIOD_S, abs=1e-5)
    else:  # not expired on arrival: a period after the send
        assert slot < wall_before - late_s + 0.01
        assert wall_before + PULSE_PERIOD_S - 0.005 <= expires <= wall_after + PULSE_PERIOD_S + 0.005
