"""Write-only Socket.IO emitter: workers reach browsers through the Redis message queue."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import socketio

from hean.config import get_settings
from hean.messages import BULK_METHOD

Emit = Callable[..., None]


class BufferedRedisManager(socketio.RedisManager):  # type: ignore[misc]
    """A write-only RedisManager that can gather emits and publish them in one pipeline.

    python-socketio publishes one message per emit (one round trip each, and one message for
    the web process to parse); a batch of results should cost one of each. Several buffered
    emits go out as one BULK_METHOD message, which the web process's manager
    (web/bus.py) fans out. Buffers are per thread (the default worker runs threads).
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
    def buffered(self) -> Iterator[None]:
        self._local.buffer = []
        try:
            yield
        finally:
            buffer, self._local.buffer = self._local.buffer, None
            if buffer:
                self._publish_many(buffer)

    def _publish_many(self, messages: list[Any]) -> None:
        for attempt in (1, 2):
            try:
                if not self.connected:
                    self._redis_connect()
                bulk = messages[0] if len(messages) == 1 else {"method": BULK_METHOD, "messages": messages}
                self.redis.publish(self.channel, self.json.dumps(bulk))
                return
            except Exception:
                self.connected = False
                if attempt == 2:
                    raise


@functools.cache
def _manager() -> BufferedRedisManager:
    settings = get_settings()
    # Same channel as the web process's manager (web/app.py), or messages go nowhere.
    return BufferedRedisManager(
        settings.effective_redis_url(), channel=settings.socketio_channel, write_only=True
    )


def emit(event: str, data: Any, to: str | list[str] | None = None, namespace: str = "/") -> None:
    """Send `event` to clients and rooms (sids or room names), or with `to=None` to everyone."""
    _manager().emit(event, data, namespace=namespace, room=to)


@contextlib.contextmanager
def buffered_emits() -> Iterator[Emit]:
    """`emit` whose messages go out together, in order, when the block ends."""
    manager = _manager()
    with manager.buffered():
        yield emit
