"""The web process's end of the Socket.IO message queue (Redis pub/sub)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import socketio

from hean.messages import BULK_METHOD


class FanOutRedisManager(socketio.RedisManager):
    """python-socketio's RedisManager that also reads the workers' bulk messages.

    A worker publishes a batch's results as one message (workers/emit.py); this listener
    decodes it once and hands its emits to python-socketio one by one, yielding to other
    greenlets between them, so a burst of 500 results never holds up a client's command.
    """

    def _listen(self) -> Iterator[Any]:
        for raw in super()._listen():
            try:
                data = self.json.loads(raw)
            except ValueError:
                continue  # not a Socket.IO message; python-socketio ignores these too
            if not isinstance(data, dict):
                continue
            if data.get("method") != BULK_METHOD:
                yield data
                continue
            for message in data.get("messages") or ():
                if isinstance(message, dict):
                    yield message
                    self.server.sleep(0)
