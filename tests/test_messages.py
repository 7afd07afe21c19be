"""The hot path's hand-built messages are the typed models' documents: acks, task envelopes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from hean.messages import (
    CommandAck,
    ErrorInfo,
    QueuedEnvelope,
    TaskEnvelope,
    ack_message,
    envelope_json,
    read_envelope,
)


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
        request_id="r-1",
        command=command,
        accepted=accepted,
        ack_time_ms=0.125,
        error=error,
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
        request_id="r-1",
        command="submit_order",
        params=params,
        reply_to=reply_to,
        received_at_ms=1733130000123.25,
    )
    params_json = json.dumps(params, separators=(",", ":"), ensure_ascii=False)
    encoded = envelope_json("r-1", "submit_order", params_json, reply_to, 1733130000123.25)
    assert json.loads(encoded) == json.loads(model.model_dump_json())
    assert len(encoded.encode()) == len(model.model_dump_json().encode())  # the size limit's measure
    # the same fields the model has, read without it
    assert read_envelope(json.loads(encoded)) == QueuedEnvelope(**model.model_dump())
    assert QueuedEnvelope._fields == tuple(TaskEnvelope.model_fields)


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
    model = TaskEnvelope.model_validate(data)  # the unknown field dropped, the time made a float
    read = read_envelope(data)
    assert read == QueuedEnvelope(**model.model_dump()) and isinstance(read.received_at_ms, float)


def test_validated_order_params_encode_as_the_envelope_carried_them_before() -> None:
    """The intake encodes params with their model's serializer; the document is what
    `model_dump(mode="json", exclude_unset=True)` gave, which the engine's handlers read."""
    from hean.commands import get_command

    for name, raw in [
        ("submit_order", {"client_order_id": "c-1", "symbol": "BTCUSDT", "side": "BUY", "quantity": "0.5"}),
        (
            "submit_order",
            {
                "client_order_id": "c-2",
                "symbol": "BTCUSDT",
                "side": "SELL",
                "quantity": "1",
                "order_type": "LIMIT",
                "price": "50000.5",
                "time_in_force": "IOC",
            },
        ),
        (
            "submit_orders",
            {"orders": [{"client_order_id": "c-3", "symbol": "ETHUSDT", "side": "BUY", "quantity": "2"}]},
        ),
        ("risk_adjust", {"max_leverage": "10", "max_open_orders": 5}),
    ]:
        spec = get_command(name)
        assert spec is not None
        params = spec.params.model_validate(raw)
        assert json.loads(params.model_dump_json(exclude_unset=True)) == params.model_dump(
            mode="json", exclude_unset=True
        )
