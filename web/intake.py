"""Command intake: validate a command, enqueue it durably, and build the ack."""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.exceptions import KombuError
from pydantic import ValidationError
from redis.exceptions import RedisError

from hean.messages import (
    CommandAck,
    CommandRequest,
    ErrorInfo,
    TaskEnvelope,
    new_request_id,
    now_ms,
)
from workers import app as celery_app
from workers.commands import TASK_FOR_QUEUE, command_names, get_command

log = logging.getLogger(__name__)


def _first_error(exc: ValidationError, prefix: str = "") -> ErrorInfo:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    field = f"{prefix}{field}" if field else (prefix.rstrip(".") or None)
    return ErrorInfo(code="", message=f"{field or 'payload'}: {first['msg']}", field=field or None)


def accept_command(data: Any, reply_to: str | None) -> dict[str, Any]:
    """Validate `data`, enqueue it for a worker, and return the ack (accepted or not)."""
    started = time.perf_counter()
    received_ms = now_ms()
    raw_id = data.get("request_id") if isinstance(data, dict) else None
    request_id = raw_id if isinstance(raw_id, str) and raw_id else new_request_id()
    name = data.get("command") if isinstance(data, dict) else None

    def ack(accepted: bool, error: ErrorInfo | None = None) -> dict[str, Any]:
        return CommandAck(
            request_id=request_id,
            command=name if isinstance(name, str) else None,
            accepted=accepted,
            ack_time_ms=round((time.perf_counter() - started) * 1000.0, 3),
            error=error,
        ).model_dump(mode="json")

    if not isinstance(data, dict):
        return ack(
            False,
            ErrorInfo(
                code="invalid_payload",
                message=f"a command must be an object {{command, params, request_id}}, "
                f"got {type(data).__name__}",
            ),
        )
    try:
        request = CommandRequest.model_validate(data)
    except ValidationError as exc:
        error = _first_error(exc)
        error.code = "invalid_payload"
        return ack(False, error)
    spec = get_command(request.command)
    if spec is None:
        return ack(
            False,
            ErrorInfo(
                code="unknown_command",
                message=f"unknown command {request.command!r}; valid commands: "
                + ", ".join(command_names()),
                field="command",
            ),
        )
    try:
        params = spec.params.model_validate(request.params)
    except ValidationError as exc:
        error = _first_error(exc, prefix="params.")
        error.code = "invalid_params"
        return ack(False, error)

    envelope = TaskEnvelope(
        request_id=request_id,
        command=spec.name,
        params=params.model_dump(mode="json"),
        reply_to=reply_to,
        received_at_ms=received_ms,
    )
    try:
        celery_app.send_task(
            TASK_FOR_QUEUE[spec.queue], args=[envelope.model_dump(mode="json")], task_id=request_id
        )
    except (KombuError, RedisError, OSError) as exc:
        log.error(
            "event=enqueue_failed command=%s request_id=%s error=%s", spec.name, request_id, exc
        )
        return ack(False, ErrorInfo(code="broker_unavailable", message="command was not queued"))
    return ack(True)
