"""The hot path's hand-built messages are the typed models' documents: acks, task envelopes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from hean.messages import CommandAck, ErrorInfo, TaskEnvelope, ack_message, envelope_json, read_envelope


@pytest.mark.parametrize(
    ("command", "accepted", "error", "duplicate"),
    [
        ("submit_order", True, None, False),
        ("start", True, None, True),
        (None, False, ErrorInfo(code="invalid_payload", message="bad"), False),
        ("risk_adjust", False, ErrorInfo(code="invalid_params", message="m", field="params.x"), False),
    ],
)
def test_an_ack_message_is_the_command_ack_document(
    command: str | None, accepted: bool, error: ErrorInfo | None, duplicate: bool
) -> None:
    expected = CommandAck(
        request_id="r-1", command=command, accepted=accepted, ack_time_ms=0.125, error=error,
        duplicate=duplicate,
    ).model_dump(mode="json")
    assert ack_message("r-1", command, accepted, 0.125, error, duplicate) == expected


@pytest.mark.parametrize(
    "params",
    [{}, {"symbol": "BTCUSDT", "quantity": "0.5"}, {"reason": "müde ✓", "nested": {"a": [1, 2.5, None]}}],
)
@pytest.mark.parametrize("reply_to", [None, "sid-1"])
def test_an_envelope_json_is_the_task_envelope_document(params: dict[str, Any], reply_to: str | None) -> None:
    model = TaskEnvelope(
        request_id="r-1", command="submit_order", params=params, reply_to=reply_to,
        received_at_ms=1733130000123.25,
    )
    encoded = envelope_json("r-1", "submit_order", params, reply_to, 1733130000123.25)
    assert json.loads(encoded) == json.loads(model.model_dump_json())
    assert len(encoded.encode()) == len(model.model_dump_json().encode())  # the size limit's measure
    assert read_envelope(json.loads(encoded)) == model


@pytest.mark.parametrize(
    "data",
    [
        {"request_id": "r", "command": "c", "params": {}, "reply_to": None},  # no time
        {"request_id": 1, "command": "c", "params": {}, "reply_to": None, "received_at_ms": 1.0},
        {"request_id": "r", "command": "c", "params": [], "reply_to": None, "received_at_ms": 1.0},
        "not an object",
    ],
)
def test_a_malformed_envelope_gets_the_models_error(data: Any) -> None:
    with pytest.raises(ValidationError):
        read_envelope(data)


def test_an_envelope_with_unknown_fields_is_read_by_the_model() -> None:
    data = {"request_id": "r", "command": "c", "params": {}, "reply_to": None, "received_at_ms": 1, "x": 1}
    assert read_envelope(data) == TaskEnvelope.model_validate(data)
