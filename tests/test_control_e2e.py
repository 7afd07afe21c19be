"""End to end: python-socketio client → web (eventlet) → Redis → Celery engine worker → C++ core,
and the result back through Flask-SocketIO's Redis message queue. Real processes only."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import socketio

from support import Client, http_json


@pytest.mark.parametrize("auth", [None, {"token": "not-the-token"}, {"token": 42}, "a string"])
def test_a_connection_without_the_token_is_refused_and_told_why(system: dict[str, Any], auth: Any) -> None:
    sio = socketio.Client(reconnection=False)
    reasons: list[Any] = []
    sio.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        sio.connect(str(system["url"]), auth=auth, transports=["websocket"], wait_timeout=10)
    # the client learns why, not only "Connection refused by server"
    assert reasons and "unauthorized: connect with auth=" in reasons[0]["message"], reasons


def test_start_and_stop_run_in_the_engine_worker(client: Client) -> None:
    for name, state in (("start", "RUNNING"), ("stop", "STOPPED"), ("start", "RUNNING")):
        request_id = uuid.uuid4().hex
        ack = client.command({"command": name, "params": {}, "request_id": request_id})
        assert ack["accepted"] is True
        assert ack["request_id"] == request_id and ack["command"] == name
        assert isinstance(ack["ack_time_ms"], float) and ack["ack_time_ms"] >= 0
        result = client.result_for(request_id)
        assert result["success"] is True, result
        assert result["command"] == name
        assert result["result"]["state"] == state
        assert result["execution_time_ms"] >= 0


def test_command_counter_counts_every_command(client: Client) -> None:
    counts = []
    for _ in range(3):
        request_id = uuid.uuid4().hex
        client.command({"command": "stop", "params": {}, "request_id": request_id})
        counts.append(client.result_for(request_id)["result"]["command_count"])
    assert counts[1] == counts[0] + 1 and counts[2] == counts[1] + 1


def test_health_reports_the_engine_state(system: dict[str, Any], client: Client) -> None:
    request_id = uuid.uuid4().hex
    client.command({"command": "start", "params": {}, "request_id": request_id})
    client.result_for(request_id)
    status, body, _ = http_json(str(system["url"]) + "/api/system/health")
    assert status == 200, body
    assert body["engine"]["state"] == "RUNNING"
    assert body["redis"]["ok"] is True


def test_unknown_command_names_the_valid_ones(client: Client) -> None:
    ack = client.command({"command": "launch_rockets", "params": {}, "request_id": "x1"})
    assert ack["accepted"] is False
    assert ack["error"]["code"] == "unknown_command"
    assert "start" in ack["error"]["message"] and "stop" in ack["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ([1, 2, 3], "invalid_payload", None),
        ("start", "invalid_payload", None),
        (None, "invalid_payload", None),
        ({"params": {}}, "invalid_payload", "command"),
        ({"command": 42}, "invalid_payload", "command"),
        ({"command": "start", "params": "fast"}, "invalid_payload", "params"),
        ({"command": "start", "request_id": "bad id with spaces"}, "invalid_payload", "request_id"),
        ({"command": "start", "surprise": 1}, "invalid_payload", "surprise"),
        ({"command": "start", "params": {"speed": 1}}, "invalid_params", "params.speed"),
    ],
)
def test_malformed_payloads_get_clear_errors_and_the_connection_stays_usable(
    client: Client, payload: Any, code: str, field: str | None
) -> None:
    ack = client.command(payload)
    assert ack["accepted"] is False
    assert ack["error"]["code"] == code
    assert ack["error"]["field"] == field
    assert ack["error"]["message"]
    # the same connection still works
    request_id = uuid.uuid4().hex
    assert client.command({"command": "start", "request_id": request_id})["accepted"] is True
    assert client.result_for(request_id)["success"] is True
