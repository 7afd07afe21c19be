"""REST twins of the control channel: same schemas, same error codes, bearer token required."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from hean.auth import ensure_token, token_matches
from hean.command_journal import CommandJournal
from hean.config import Settings
from hean.db import database
from hean.history import HistoryStore, HistoryUnavailable
from hean.redis_client import sync_client
from web.socket_handlers import AddressBuckets

blueprint = Blueprint("commands_api", __name__)

F = TypeVar("F", bound=Callable[..., ResponseReturnValue])


def error_response(status: int, code: str, message: str, field: str | None = None) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "field": field}}), status


#: The error code of an HTTP error that no view answered itself, by status. A 500 is an
#: exception no view caught: Flask has logged it (and the analyzer got it); its answer says only
#: werkzeug's generic description, never the exception.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 500: "internal_error"}


#: A body over MAX_CONTENT_LENGTH up to this size is read (and dropped) before its 413 answer:
#: a client that sends its whole body before reading (urllib, one request per connection)
#: would otherwise find the connection reset under it and never see the answer.
DRAIN_BYTES = 64 << 20


def _drain_body() -> None:
    length = request.content_length or 0
    if length > DRAIN_BYTES:
        return
    body = request.environ["wsgi.input"]
    while length > 0:
        chunk = body.read(min(length, 64 << 10))
        if not chunk:
            return
        length -= len(chunk)


def _api_http_error(exc: HTTPException) -> ResponseReturnValue:
    """An HTTP error under /api/ as the API's JSON error (Flask's HTML page elsewhere)."""
    if not request.path.startswith("/api/"):
        return exc
    status = exc.code or 500
    if status == 413:
        _drain_body()
    return error_response(status, _HTTP_CODES.get(status, "http_error"), exc.description or exc.name)


def install_json_errors(app: Flask) -> None:
    """JSON errors under /api/ for what no view answers: unknown paths and methods, a body over
    the app's MAX_CONTENT_LENGTH, and exceptions (Flask hands those over as InternalServerError,
    an HTTPException)."""
    app.register_error_handler(HTTPException, _api_http_error)


def _settings() -> Settings:
    settings: Settings = current_app.config["HEAN_SETTINGS"]
    return settings


def require_token(view: F) -> F:
    """401 unless `Authorization: Bearer <token>` matches (constant-time)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        header = request.headers.get("Authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not token_matches(ensure_token(_settings()), supplied.strip()):
            response = error_response(401, "unauthorized", "send Authorization: Bearer <HEAN token>")
            body, status = response
            return body, status, {"WWW-Authenticate": 'Bearer realm="hean"'}
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]  # the wrapper keeps the view's signature


def _rate_limited() -> bool:
    """Per-client-address rate limit, the REST counterpart of the per-connection one."""
    buckets = current_app.extensions.get("hean_rest_buckets")
    if buckets is None:
        settings = _settings()
        buckets = AddressBuckets(settings.command_rate, settings.command_burst)
        buckets = current_app.extensions.setdefault("hean_rest_buckets", buckets)
    return not buckets.take(request.remote_addr or "?")


@blueprint.post("/api/commands")
@require_token
def post_command() -> ResponseReturnValue:
    if _rate_limited():
        return error_response(429, "rate_limited", "too many commands from this client; slow down")
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the JSON reader goes: not a command either
        data = None
    if data is None:
        return error_response(400, "invalid_payload", "body must be JSON: {command, params, request_id}")
    outcome = current_app.extensions["hean_intake"].accept(data, reply_to=None)
    body = dict(outcome.ack)
    if outcome.earlier_result is not None:
        body["result"] = outcome.earlier_result
    return jsonify(body), outcome.http_status


@blueprint.get("/api/commands/<request_id>")
@require_token
def get_command(request_id: str) -> ResponseReturnValue:
    # an ack sent moments ago may still wait for the next batch to journal it: asked first, since
    # the intake forgets it once journaled, which may happen while the journal is read
    unjournaled = current_app.extensions["hean_intake"].unjournaled_ack(request_id)
    try:
        record = CommandJournal(sync_client(), HistoryStore(database)).get(request_id)
    except (RedisError, HistoryUnavailable):
        return error_response(503, "unavailable", "command store unreachable; retry")
    if record is None:
        return error_response(404, "not_found", f"no command with request_id {request_id!r}")
    status = "done" if record["result"] else ("running" if record["started_at"] else "queued")
    return jsonify(
        {
            "request_id": request_id,
            "command": record["command"],
            "status": status,
            "ack": record["ack"] or unjournaled,
            "result": record["result"],
        }
    )


@blueprint.get("/api/state/<namespace>/<key>")
@require_token
def get_state(namespace: str, key: str) -> ResponseReturnValue:
    from hean.core.system.redis_state import (
        StateUnavailableError,
        StateValidationError,
        get_sync_state_manager,
    )

    try:
        value, version, timestamp = get_sync_state_manager().get_state_versioned(key, namespace=namespace)
    except StateValidationError as exc:
        return error_response(400, "invalid_params", str(exc))
    except StateUnavailableError:
        return error_response(503, "unavailable", "state store unreachable; retry")
    if version == 0:
        return error_response(404, "not_found", f"no state {namespace}/{key}")
    return jsonify(
        {
            "namespace": namespace,
            "key": key,
            "value": value,
            "version": version,
            "timestamp": timestamp,
        }
    )
