"""`GET /metrics`: every HEAN process's Prometheus series (hean/metrics.py), plus queue depths,
the engine log's length, the history's lag and Redis's memory read from Redis at scrape time.
Open, like the health GETs."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from hean import metrics
from hean.redis_client import sync_client
from hean.topology import (
    DEFAULT_QUEUE,
    ENGINE_INFLIGHT_KEY,
    ENGINE_LOG_KEY,
    ENGINE_QUEUE,
    HISTORY_STREAM_KEY,
    LLM_QUEUE,
    MEMORY_RESERVE_KEY,
    PULSE_QUEUE,
)

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def scrape() -> Response:
    collector = metrics.SystemCollector(
        sync_client(),
        queues=[ENGINE_QUEUE, PULSE_QUEUE, LLM_QUEUE, DEFAULT_QUEUE],
        # batches the engine worker took along and has not committed; commands applied since
        # the last snapshot (what a restarted engine worker would replay)
        lists={"engine_inflight": ENGINE_INFLIGHT_KEY},
        streams={"engine_log": ENGINE_LOG_KEY, "history": HISTORY_STREAM_KEY},
        history=HISTORY_STREAM_KEY,
        memory_reserve=MEMORY_RESERVE_KEY,
    )
    return Response(metrics.render(collector), mimetype=CONTENT_TYPE_LATEST)
