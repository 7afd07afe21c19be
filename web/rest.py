"""REST endpoints; health GETs are open and read-only."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError

from hean.core.system.health_monitor import get_sync_health
from hean.core.system.redis_state import StateError, get_sync_state_manager
from hean.redis_client import sync_client
from workers.engine import ENGINE_KEY, SYSTEM_NAMESPACE

blueprint = Blueprint("rest", __name__)


@blueprint.get("/api/system/health")
def system_health() -> ResponseReturnValue:
    """Overall status plus the engine's, as the engine worker last published it (state bus
    `system/engine`)."""
    started = time.perf_counter()
    try:
        sync_client().ping()
        redis_ms = (time.perf_counter() - started) * 1000.0
        engine, version, published_at = get_sync_state_manager().get_state_versioned(
            ENGINE_KEY, namespace=SYSTEM_NAMESPACE
        )
        pulse = get_sync_health().get_health_status()
    except (RedisError, StateError) as exc:
        body: dict[str, Any] = {
            "status": "down",
            "redis": {"ok": False, "error": type(exc).__name__},
            "engine": None,
        }
        return jsonify(body), 503
    status = "ok" if engine is not None else "degraded"
    return jsonify(
        {
            "status": status,
            "engine": engine or {"state": "UNKNOWN"},
            "engine_state_version": version,
            "engine_state_age_ms": round((time.time() - published_at) * 1000.0, 1) if version else None,
            "redis": {"ok": True, "latency_ms": round(redis_ms, 3)},
            "pulse_age_ms": pulse["age_ms"],
            "modules": {name: m["status"] for name, m in pulse["modules"].items()},
            "modules_overall": pulse["overall"],
            "timestamp": time.time(),
        }
    )


@blueprint.get("/")
def dashboard() -> ResponseReturnValue:
    return current_app.send_static_file("index.html")
