"""Typed messages that cross process boundaries (Socket.IO, REST, Celery), validated on entry."""

from __future__ import annotations

import time
import uuid
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from hean import fastjson

#: Command names and request ids: short, printable, safe in Redis keys and logs.
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

#: Socket.IO room that dashboards join to see every command's result.
OPERATORS_ROOM = "operators"
#: A Socket.IO message-queue message that carries several emits ({"method": ..., "messages":
#: [...]}): workers publish a batch's results as one, the web process fans them out.
BULK_METHOD = "hean_bulk"
#: A message-queue message carrying one emit as its Socket.IO packet, already encoded by the
#: worker ({"method": ..., "packet": "2[event, data]", "room": sid, room name, list or None}):
#: the web process sends it as it is, without decoding and re-encoding the data.
PACKET_METHOD = "hean_packet"


class CommandError(Exception):
    """Raised by a command handler to fail with a stable error code (e.g. `engine_halted`)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def new_request_id() -> str:
    return uuid.uuid4().hex


def now_ms() -> float:
    return time.time() * 1000.0


class ErrorInfo(BaseModel):
    """An error as a value: a stable code, a message for people, the offending field if any."""

    code: str
    message: str
    field: str | None = None


class CommandRequest(BaseModel):
    """What a client sends as a `command` event (or POST /api/commands)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    command: str = Field(pattern=NAME_PATTERN)
    params: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)


class TaskEnvelope(BaseModel):
    """A validated command on its way to a worker."""

    request_id: str
    command: str
    params: dict[str, Any]
    reply_to: str | None = None  # the sender's Socket.IO sid
    received_at_ms: float


class CommandAck(BaseModel):
    """Sent at once: the command was validated and durably enqueued (or why it was not)."""

    request_id: str
    command: str | None
    accepted: bool
    ack_time_ms: float
    error: ErrorInfo | None = None
    duplicate: bool = False  # True when this request id was seen before: the original ack


def ack_message(
    request_id: str,
    command: str | None,
    accepted: bool,
    ack_time_ms: float,
    error: ErrorInfo | None = None,
    duplicate: bool = False,
) -> dict[str, Any]:
    """``CommandAck(...).model_dump(mode="json")`` without building the model: every command's
    ack is built on the web process's hot path (tests/test_messages.py keeps the two equal)."""
    return {
        "request_id": request_id,
        "command": command,
        "accepted": accepted,
        "ack_time_ms": ack_time_ms,
        "error": None
        if error is None
        else {"code": error.code, "message": error.message, "field": error.field},
        "duplicate": duplicate,
    }


def envelope_json(
    request_id: str, command: str, params_json: str, reply_to: str | None, received_at_ms: float
) -> str:
    """A :class:`TaskEnvelope` as JSON, from values already validated and the params already
    encoded (by their model's serializer: ``model_dump_json``), for the hot path. The same
    document as the model's ``model_dump_json``; tests/test_messages.py checks it."""
    head = fastjson.dumps({"request_id": request_id, "command": command})
    tail = fastjson.dumps({"reply_to": reply_to, "received_at_ms": received_at_ms})
    return f'{head[:-1]},"params":{params_json},{tail[1:]}'


class QueuedEnvelope(NamedTuple):
    """A TaskEnvelope as a worker reads it off the queue: the same fields, in a tuple. Built per
    command on the engine's hot path, where a pydantic model (even unvalidated, through
    `model_construct`) cost four times as much."""

    request_id: str
    command: str
    params: dict[str, Any]
    reply_to: str | None
    received_at_ms: float


def read_envelope(data: Any) -> QueuedEnvelope:
    """A queued message's envelope dict, read. The web process built it from a validated
    command, so this checks only its shape (full validation cost a tenth of the engine
    worker's CPU per order); raises ValueError (the model's ValidationError) on a malformed one."""
    if not (
        isinstance(data, dict)
        and isinstance(data.get("request_id"), str)
        and isinstance(data.get("command"), str)
        and isinstance(data.get("params"), dict)
        and isinstance(data.get("reply_to"), str | None)
        and isinstance(data.get("received_at_ms"), int | float)
        and len(data) == 5
    ):
        model = TaskEnvelope.model_validate(data)  # raises the full, readable error
        return QueuedEnvelope(**model.model_dump())
    return QueuedEnvelope(
        data["request_id"], data["command"], data["params"], data["reply_to"], data["received_at_ms"]
    )


class CommandResult(BaseModel):
    """Sent when a worker has run the command."""

    request_id: str
    command: str
    success: bool
    result: Any = None
    error: ErrorInfo | None = None
    execution_time_ms: float
