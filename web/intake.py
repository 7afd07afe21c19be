"""Command intake: validate a command, reserve its request id, enqueue it, build the ack.

The ack says `accepted: true` only after the command passed validation and its task was
published to the broker. A request id seen before gets the original ack back (with
`duplicate: true`) and nothing is enqueued again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError
from pydantic import ValidationError
from redis.exceptions import RedisError

from hean.command_journal import CommandJournal, Reservation
from hean.messages import (
    CommandAck,
    CommandRequest,
    ErrorInfo,
    TaskEnvelope,
    new_request_id,
    now_ms,
)
from workers.commands import TASK_FOR_QUEUE, command_names, get_command

log = logging.getLogger(__name__)

#: Largest encoded command (params included) accepted for the queue.
MAX_COMMAND_BYTES = 64 * 1024


def first_error(exc: ValidationError, code: str, prefix: str = "") -> ErrorInfo:
    """The first validation error as an ErrorInfo naming the offending field."""
    first = exc.errors()[0]
    field = prefix + ".".join(str(part) for part in first["loc"])
    field = field.rstrip(".")
    return ErrorInfo(code=code, message=f"{field or 'payload'}: {first['msg']}", field=field or None)


@dataclass
class Outcome:
    """What the intake decided: the ack, and for a duplicate the earlier result if any."""

    ack: dict[str, Any]
    earlier_result: dict[str, Any] | None = None
    http_status: int = 202


class CommandIntake:
    def __init__(self, celery_app: Celery, journal: CommandJournal) -> None:
        self._celery = celery_app
        self._journal = journal

    def accept(self, data: Any, reply_to: str | None) -> Outcome:
        """Validate `data`, enqueue it for a worker, and return the ack (accepted or not)."""
        started = time.perf_counter()
        received_ms = now_ms()
        raw_id = data.get("request_id") if isinstance(data, dict) else None
        request_id = raw_id if isinstance(raw_id, str) and raw_id else new_request_id()
        raw_name = data.get("command") if isinstance(data, dict) else None
        name = raw_name if isinstance(raw_name, str) else None

        def reject(error: ErrorInfo, status: int = 400) -> Outcome:
            ack = CommandAck(
                request_id=request_id,
                command=name,
                accepted=False,
                ack_time_ms=round((time.perf_counter() - started) * 1000.0, 3),
                error=error,
            )
            return Outcome(ack.model_dump(mode="json"), http_status=status)

        if not isinstance(data, dict):
            return reject(
                ErrorInfo(
                    code="invalid_payload",
                    message="a command must be an object {command, params, request_id}, "
                    f"got {type(data).__name__}",
                )
            )
        try:
            request = CommandRequest.model_validate(data)
        except ValidationError as exc:
            return reject(first_error(exc, "invalid_payload"))
        spec = get_command(request.command)
        if spec is None:
            return reject(
                ErrorInfo(
                    code="unknown_command",
                    message=f"unknown command {request.command!r}; valid commands: "
                    + ", ".join(command_names()),
                    field="command",
                ),
                status=404,
            )
        try:
            params = spec.params.model_validate(request.params)
        except ValidationError as exc:
            return reject(first_error(exc, "invalid_params", prefix="params."), status=422)

        envelope = TaskEnvelope(
            request_id=request_id,
            command=spec.name,
            params=params.model_dump(mode="json", exclude_unset=True),
            reply_to=reply_to,
            received_at_ms=received_ms,
        )
        encoded = envelope.model_dump_json()
        if len(encoded) > MAX_COMMAND_BYTES:
            return reject(
                ErrorInfo(
                    code="payload_too_large",
                    message=f"params: the command is {len(encoded)} bytes encoded; "
                    f"the limit is {MAX_COMMAND_BYTES}",
                    field="params",
                ),
                status=413,
            )
        try:
            reservation = self._journal.reserve(request_id, encoded)
        except RedisError as exc:
            log.error("event=journal_unavailable request_id=%s error=%s", request_id, type(exc).__name__)
            return reject(ErrorInfo(code="unavailable", message="command store unreachable; retry"), 503)
        if not reservation.new:
            return self._duplicate(reservation, request_id, name, started)
        try:
            self._celery.send_task(
                TASK_FOR_QUEUE[spec.queue],
                args=[envelope.model_dump(mode="json")],
                task_id=request_id,
            )
        except (KombuError, RedisError, OSError) as exc:
            log.error("event=enqueue_failed command=%s request_id=%s error=%s", spec.name, request_id, exc)
            self._journal.release(request_id)
            return reject(ErrorInfo(code="unavailable", message="broker unreachable; retry"), 503)
        ack = CommandAck(
            request_id=request_id,
            command=spec.name,
            accepted=True,
            ack_time_ms=round((time.perf_counter() - started) * 1000.0, 3),
        ).model_dump(mode="json")
        try:
            self._journal.record_ack(request_id, ack)
        except RedisError:  # the command is queued; only the replay copy of its ack is missing
            log.warning("event=ack_not_journaled request_id=%s", request_id)
        return Outcome(ack)

    def _duplicate(
        self, reservation: Reservation, request_id: str, name: str | None, started: float
    ) -> Outcome:
        if reservation.ack is not None:
            ack = dict(reservation.ack, duplicate=True)
        else:  # the first copy is still being enqueued right now
            ack = CommandAck(
                request_id=request_id,
                command=name,
                accepted=True,
                ack_time_ms=round((time.perf_counter() - started) * 1000.0, 3),
                duplicate=True,
            ).model_dump(mode="json")
        return Outcome(ack, earlier_result=reservation.result, http_status=200)
