"""Health REST endpoints (open, read-only): they answer from the last pulse and say its age.

- ``GET /api/system/health``: overall status, the engine's status (state bus
  ``system/engine``), Redis reachability, and a one-word summary per module;
- ``GET /api/system/health/pulse``: every module and every pulse node as last measured;
- ``GET /api/system/health/module/<name>``: one module (404 lists the valid names).

None of them probes anything but a Redis PING: the pulse worker measures, these read.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError

from hean.core.system.health_monitor import HEALTH_NAMESPACE, MODULES, NODES_KEY, get_sync_health, nodes_view
from hean.core.system.redis_state import StateError, get_sync_state_manager
from hean.redis_client import sync_client
from hean.topology import ENGINE_KEY, PULSE_PERIOD_S, SYSTEM_NAMESPACE

blueprint = Blueprint("health", __name__)

_UNAVAILABLE = {"error": {"code": "unavailable", "message": "state store unreachable"}}


def _pulse() -> dict[str, Any] | None:
    """The last pulse plus every pulse node (multi-node: each pulse worker reports)."""
    try:
        status = get_sync_health().get_health_status()
        nodes = get_sync_state_manager().get_state(NODES_KEY, namespace=HEALTH_NAMESPACE)
    except (RedisError, StateError):
        return None
    status["nodes"] = nodes_view(nodes, PULSE_PERIOD_S)
    return status


@blueprint.get("/api/system/health")
def system_health() -> ResponseReturnValue:
    """Overall status plus the engine's (as the engine worker last published it) and a
    summary of the last pulse. `status`: ok (engine known, every module HEALTHY, pulse
    fresh), degraded (anything else that answers), down (Redis unreachable: 503)."""
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
    modules = {name: m["status"] for name, m in pulse["modules"].items()}
    all_healthy = bool(modules) and not pulse["stale"] and pulse["overall"] == "HEALTHY"
    return jsonify(
        {
            "status": "ok" if engine is not None and all_healthy else "degraded",
            "engine": engine or {"state": "UNKNOWN"},
            "engine_state_version": version,
            "engine_state_age_ms": round((time.time() - published_at) * 1000.0, 1) if version else None,
            "redis": {"ok": True, "latency_ms": round(redis_ms, 3)},
            "overall": pulse["overall"],
            "modules": modules,
            "pulse_age_ms": pulse["age_ms"],
            "pulse_stale": pulse["stale"],
            "timestamp": time.time(),
        }
    )


@blueprint.get("/api/system/health/pulse")
def pulse() -> ResponseReturnValue:
    """Every module and pulse node as the last pulse saw them."""
    status = _pulse()
    if status is None:
        return jsonify(_UNAVAILABLE), 503
    return jsonify(status)


@blueprint.get("/api/system/health/module/<name>")
def module(name: str) -> ResponseReturnValue:
    """One module as the last pulse saw it; 404 (with the valid names) for an unknown one."""
    if name not in MODULES:
        message = f"unknown module {name!r}; modules: {', '.join(MODULES)}"
        return jsonify({"error": {"code": "not_found", "message": message, "modules": list(MODULES)}}), 404
    status = _pulse()
    if status is None:
        return jsonify(_UNAVAILABLE), 503
    found = status["modules"].get(name)
    if found is None:
        return jsonify({"error": {"code": "not_found", "message": f"no pulse has checked {name} yet"}}), 404
    return jsonify(dict(found, age_ms=status["age_ms"], stale=status["stale"]))
