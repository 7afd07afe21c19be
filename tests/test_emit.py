"""A worker's hand-built Socket.IO queue message is what python-socketio itself publishes."""

from __future__ import annotations

from typing import Any

import pytest

from workers.emit import BufferedRedisManager, emit_message


@pytest.mark.parametrize("to", ["sid-1", ["sid-1", "operators"], None])
@pytest.mark.parametrize(
    "data",
    [
        {"request_id": "r", "success": True, "result": {"fills": [{"price": "1.5"}]}, "error": None},
        [1, "two", None],
        "text",
    ],
)
def test_an_emit_message_is_the_one_python_socketio_publishes(to: Any, data: Any) -> None:
    manager = BufferedRedisManager("redis://127.0.0.1:9/0", write_only=True)  # never connects here
    with manager.collected() as published:
        manager.emit("command_result", data, namespace="/", room=to)
    assert published == [emit_message(manager.host_id, "command_result", data, to)]
