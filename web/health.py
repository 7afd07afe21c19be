"""Health REST endpoints (open, read-only): they answer from the last pulse and say its age."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError

from hean.core.system.health_monitor import HEALTH_NAMESPACE, MODULES, get_sync_health
from hean.core.system.redis_state import StateError, get_sync_state_manager
from workers.pulse import NODES_KEY, nodes_view

blueprint = Blueprint("health", __name__)


def _pulse() -> dict[str, Any] | None:
    """The last pulse plus every pulse node (multi-node: each pulse worker reports)."""
    try:
        status = get_sync_health().get_health_status()
        nodes = get_sync_state_manager().get_state(NODES_KEY, namespace=HEALTH_NAMESPACE)
    except (RedisError, StateError):
        return None
    status["nodes"] = nodes_view(nodes)
    return status


@blueprint.get("/api/system/health/pulse")
def pulse() -> ResponseReturnValue:
    """Every module as the last pulse saw it."""
    status = _pulse()
    if status is None:
        return jsonify({"error": {"code": "unavailable", "message": "state store unreachable"}}), 503
    return jsonify(status)


@blueprint.get("/api/system/health/module/<name>")
def module(name: str) -> ResponseReturnValue:
    if name not in MODULES:
        message = f"unknown module {name!r}; modules: {', '.join(MODULES)}"
        return jsonify({"error": {"code": "not_found", "message": message, "modules": list(MODULES)}}), 404
    status = _pulse()
    if status is None:
        return jsonify({"error": {"code": "unavailable", "message": "state store unreachable"}}), 503
    found = status["modules"].get(name)
    if found is None:
        return jsonify({"error": {"code": "not_found", "message": f"no pulse has checked {name} yet"}}), 404
    return jsonify(dict(found, age_ms=status["age_ms"]))
