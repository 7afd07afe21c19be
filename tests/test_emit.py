"""A worker's pre-encoded Socket.IO packet is the one python-socketio builds, and the web
process delivers it to the rooms python-socketio's own emit would."""

from __future__ import annotations

import json
from typing import Any

import pytest
from socketio.packet import EVENT, Packet

from workers.emit import packet_message

DATA: list[Any] = [
    {"request_id": "r", "success": True, "result": {"fills": [{"price": "1.5"}]}, "error": None},
    [1, "two", None],
    "text ✓ \u2028",
]


@pytest.mark.parametrize("to", ["sid-1", ["sid-1", "operators"], None])
@pytest.mark.parametrize("data", DATA)
def test_a_packet_message_carries_python_socketios_packet(to: Any, data: Any) -> None:
    message = packet_message("command_result", data, to)
    expected = Packet(EVENT, namespace="/", data=["command_result", data]).encode()
    assert isinstance(expected, str) and expected.startswith("2[")
    assert message["packet"][0] == "2" and json.loads(message["packet"][1:]) == json.loads(expected[1:])
    assert message["room"] == to and message["method"] == "hean_packet"
