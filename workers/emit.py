"""Write-only Socket.IO emitter: workers reach browsers through the Redis message queue."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import socketio

from hean import fastjson
from hean.config import get_settings
from hean.messages import BULK_METHOD


class BufferedRedisManager(socketio.RedisManager):
    """A write-only RedisManager that can gather emits for the caller to publish.

    python-socketio publishes one message per emit (one round trip each, and one message for
    the web process to parse); a batch of results should cost one of each, inside the batch's
    own transaction (:func:`publish_on`). Several gathered emits go out as one BULK_METHOD
    message, which the web process's manager (web/bus.py) fans out. Gathering is per thread
    (the default worker runs threads).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local = threading.local()

    def _publish(self, data: Any) -> Any:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            return super()._publish(data)
        buffer.append(data)
        return None

    @contextlib.contextmanager
    def collected(self) -> Iterator[list[Any]]:
        """Gather this thread's emits (python-socketio messages) instead of publishing them."""
        buffer: list[Any] = []
        self._local.buffer = buffer
        try:
            yield buffer
        finally:
            self._local.buffer = None

    def encode(self, messages: list[Any]) -> str:
        """The pub/sub payload carrying `messages` (one message, or one bulk message)."""
        bulk = messages[0] if len(messages) == 1 else {"method": BULK_METHOD, "messages": messages}
        return str(self.json.dumps(bulk))


@functools.cache
def _manager() -> BufferedRedisManager:
    settings = get_settings()
    # Same channel as the web process's manager (web/app.py), or messages go nowhere.
    return BufferedRedisManager(
        settings.effective_redis_url(), channel=settings.socketio_channel, write_only=True, json=fastjson
    )


def emit(event: str, data: Any, to: str | list[str] | None = None, namespace: str = "/") -> None:
    """Send `event` to clients and rooms (sids or room names), or with `to=None` to everyone."""
    _manager().emit(event, data, namespace=namespace, room=to)


def emit_message(host_id: str, event: str, data: Any, to: str | list[str] | None) -> dict[str, Any]:
    """The message python-socketio's ``PubSubManager.emit`` publishes for `data` made of JSON
    values only (no bytes, no callback), built directly: its generic path (a walk of `data`
    looking for bytes, a manager-side emit) cost the engine worker a tenth of its CPU per order.
    tests/test_emit.py holds it equal to what the installed python-socketio publishes."""
    return {
        "method": "emit",
        "event": event,
        "data": [data],
        "binary": False,
        "namespace": "/",
        "room": to,
        "skip_sid": None,
        "callback": None,
        "host_id": host_id,
    }


def publish_on(pipe: Any, emits: Sequence[tuple[str, Any, str | list[str] | None]]) -> None:
    """Queue `emits` (event, data as JSON values, to) on `pipe` as one pub/sub message, so
    they are published exactly when, and only if, the pipeline's transaction commits."""
    if not emits:
        return
    manager = _manager()
    messages = [emit_message(manager.host_id, event, data, to) for event, data, to in emits]
    pipe.publish(manager.channel, manager.encode(messages))
