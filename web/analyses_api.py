"""`GET /api/analyses` (bearer token): the error analyzer's history, newest first, with counts."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError

from hean.analyzer.models import STATUSES
from hean.command_journal import HistoryUnavailable
from web.commands_api import error_response, require_token

blueprint = Blueprint("analyses_api", __name__)

MAX_LIMIT = 500


def _int_arg(name: str, default: int, low: int, high: int) -> int | ResponseReturnValue:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return error_response(400, "invalid_params", f"{name} must be an integer", name)
    if not low <= value <= high:
        return error_response(400, "invalid_params", f"{name} must be between {low} and {high}", name)
    return value


@blueprint.get("/api/analyses")
@require_token
def list_analyses() -> ResponseReturnValue:
    limit = _int_arg("limit", 50, 1, MAX_LIMIT)
    if not isinstance(limit, int):
        return limit
    offset = _int_arg("offset", 0, 0, 10**9)
    if not isinstance(offset, int):
        return offset
    status = request.args.get("status") or None
    if status is not None and status not in (*STATUSES, "pending"):
        return error_response(400, "invalid_params", f"status must be one of {', '.join(STATUSES)}", "status")
    from hean.core.system.error_analyzer import get_error_analyzer

    history = get_error_analyzer().history
    try:
        rows = history.recent(limit=limit, offset=offset, status=status)
        counts = history.counts()
    except (SQLAlchemyError, HistoryUnavailable):  # (hean.db_reads: too long a read too)
        return error_response(503, "unavailable", "analysis history unreachable; retry")
    return jsonify({"analyses": rows, "counts": counts, "limit": limit, "offset": offset})
