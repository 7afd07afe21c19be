"""`GET /api/orders` and `GET /api/fills` (bearer token): the order and fill history from the
database (hean/history.py), newest first, filtered, paged by cursor; and `GET /api/reconcile`,
the REST twin of `hean reconcile` (hean/reconcile.py)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from hean.db import database
from hean.db_reads import ReadTooLong
from hean.history import HistoryFilter, HistoryStore, HistoryUnavailable, parse_time
from hean.messages import REQUEST_ID_PATTERN
from web.commands_api import error_response, require_token

blueprint = Blueprint("history_api", __name__)

MAX_LIMIT = 1000
SIDES = ("BUY", "SELL")
STATUSES = ("FILLED", "RESTING", "EXPIRED", "REJECTED", "CANCELLED")
_TEXT = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
_FILTERS = ("symbol", "side", "status", "request_id", "client_order_id", "from", "to", "limit", "cursor")


class BadFilter(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _time(name: str) -> float | None:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_time(raw)
    except ValueError as exc:
        raise BadFilter(name, f"{name} {exc}") from None


def _int(name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadFilter(name, f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise BadFilter(name, f"{name} must be between {low} and {high}")
    return value


def _choice(name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw.upper() not in choices:
        raise BadFilter(name, f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw.upper()


def _text(name: str, pattern: re.Pattern[str] = _TEXT) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if not pattern.match(raw):
        raise BadFilter(name, f"{name} has characters or a length no {name} has")
    return raw


def _filters(with_status: bool) -> HistoryFilter:
    allowed = [f for f in _FILTERS if with_status or f != "status"]
    for name in request.args:
        if name not in allowed:
            raise BadFilter(name, f"unknown filter {name!r}; filters: {', '.join(allowed)}")
    since, until = _time("from"), _time("to")
    if since is not None and until is not None and since > until:
        raise BadFilter("from", "from must not be after to")
    return HistoryFilter(
        symbol=_text("symbol"),
        side=_choice("side", SIDES),
        status=_choice("status", STATUSES) if with_status else None,
        request_id=_text("request_id", re.compile(REQUEST_ID_PATTERN)),
        client_order_id=_text("client_order_id"),
        since=since,
        until=until,
        limit=_int("limit", 100, 1, MAX_LIMIT) or 100,
        cursor=_int("cursor", None, 1, 2**62),
    )


def _listing(kind: str) -> ResponseReturnValue:
    try:
        filters = _filters(with_status=kind == "orders")
    except BadFilter as exc:
        return error_response(400, "invalid_params", str(exc), exc.name)
    store = HistoryStore(database)
    try:
        rows, next_cursor = store.orders(filters) if kind == "orders" else store.fills(filters)
    except ReadTooLong as exc:  # a search through much of the history: interrupted (hean.db_reads)
        return error_response(503, "too_long", str(exc))
    except HistoryUnavailable:
        return error_response(503, "unavailable", "history database unreachable; retry")
    body: dict[str, Any] = {kind: rows, "next_cursor": next_cursor, "limit": filters.limit}
    return jsonify(body)


@blueprint.get("/api/reconcile")
@require_token
def get_reconcile() -> ResponseReturnValue:
    """`hean reconcile`'s twin: `from`, `to` (received time), `settle` (seconds, at most 10)."""
    from redis.exceptions import RedisError

    from hean.reconcile import reconcile
    from hean.redis_client import sync_client

    try:
        for name in request.args:
            if name not in ("from", "to", "settle"):
                raise BadFilter(name, f"unknown parameter {name!r}; parameters: from, to, settle")
        since, until = _time("from"), _time("to")
        settle = _int("settle", 0, 0, 10) or 0
    except BadFilter as exc:
        return error_response(400, "invalid_params", str(exc), exc.name)
    try:
        report = reconcile(sync_client(), HistoryStore(database), since, until, settle_s=settle)
    except ReadTooLong as exc:
        return error_response(503, "too_long", str(exc))
    except (HistoryUnavailable, RedisError):
        return error_response(503, "unavailable", "journal or history unreachable; retry")
    return jsonify(report.to_dict())


@blueprint.get("/api/orders")
@require_token
def list_orders() -> ResponseReturnValue:
    return _listing("orders")


@blueprint.get("/api/fills")
@require_token
def list_fills() -> ResponseReturnValue:
    return _listing("fills")
