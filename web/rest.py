"""REST endpoints; health GETs are open and read-only."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError

from hean.redis_client import sync_client
from workers.engine import ENGINE_STATUS_KEY
from workers.pulse import PULSE_KEY

blueprint = Blueprint("rest", __name__)


@blueprint.get("/api/system/health")
def system_health() -> ResponseReturnValue:
    """Overall status plus the engine's, as the engine worker last published it."""
    started = time.perf_counter()
    client = sync_client()
    try:
        engine_raw, pulse_raw = client.mget(ENGINE_STATUS_KEY, PULSE_KEY)
    except RedisError as exc:
        body: dict[str, Any] = {
            "status": "down",
            "redis": {"ok": False, "error": type(exc).__name__},
            "engine": None,
        }
        return jsonify(body), 503
    redis_ms = (time.perf_counter() - started) * 1000.0
    engine = json.loads(engine_raw) if engine_raw else None
    pulse_age_ms = (time.time() - float(pulse_raw)) * 1000.0 if pulse_raw else None
    status = "ok" if engine is not None else "degraded"
    return jsonify(
        {
            "status": status,
            "engine": engine or {"state": "UNKNOWN"},
            "redis": {"ok": True, "latency_ms": round(redis_ms, 3)},
            "pulse_age_ms": None if pulse_age_ms is None else round(pulse_age_ms, 1),
            "timestamp": time.time(),
        }
    )


@blueprint.get("/")
def dashboard() -> ResponseReturnValue:
    return current_app.send_static_file("index.html")
